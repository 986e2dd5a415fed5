//! TLS on the gRPC listener with certificates that reload from disk: the accept loop takes
//! the current rustls configuration for each new connection, so a renewed certificate or CA
//! bundle applies to new connections without a restart and without touching open ones. The
//! client certificate's identity is read once per connection.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::server::Connected;

use crate::config::{ClientCertificates, TlsSettings};
use crate::reload::{Reload, WatchedFiles};

/// A TLS handshake that takes longer than this is dropped, so slow or idle peers cannot hold
/// handshake slots.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds the rustls configuration from the files `settings` names.
pub(crate) fn load(settings: &TlsSettings) -> anyhow::Result<ServerConfig> {
    let certs = read_certs(&settings.cert_file).context("auth.tls.cert_file")?;
    let key = PrivateKeyDer::from_pem_file(&settings.key_file)
        .map_err(|e| anyhow::anyhow!("auth.tls.key_file: {}: {e}", settings.key_file.display()))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
    let builder = match &settings.client_ca_file {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(path).context("auth.tls.client_ca_file")? {
                roots.add(cert).with_context(|| format!("auth.tls.client_ca_file: {}", path.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = match settings.client_certificates {
                ClientCertificates::Required => verifier,
                ClientCertificates::Optional => verifier.allow_unauthenticated(),
            };
            builder.with_client_cert_verifier(verifier.build().context("auth.tls.client_ca_file")?)
        }
        None => builder.with_no_client_auth(),
    };
    builder
        .with_single_cert(certs, key)
        .context("auth.tls: the certificate and the key do not make a usable server identity")
}

/// What a listener speaks over TLS, offered by ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Alpn {
    /// gRPC: HTTP/2 only.
    Grpc,
    /// HTTP/JSON: HTTP/2 or HTTP/1.1 (curl and most workflow engines).
    Http,
}

impl Alpn {
    fn protocols(self) -> Vec<Vec<u8>> {
        match self {
            Alpn::Grpc => vec![b"h2".to_vec()],
            Alpn::Http => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        }
    }
}

/// The PEM certificates in a file (at least one).
pub(crate) fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "{}: no PEM certificate in the file", path.display());
    Ok(certs)
}

/// The current TLS configurations (one per ALPN offer), replaced when their files change.
pub(crate) struct TlsReloader {
    settings: TlsSettings,
    grpc: ArcSwap<ServerConfig>,
    http: ArcSwap<ServerConfig>,
    files: WatchedFiles,
}

impl TlsReloader {
    pub(crate) fn new(settings: TlsSettings) -> anyhow::Result<Arc<TlsReloader>> {
        let (grpc, http) = Self::configs(&settings)?;
        let paths = [Some(&settings.cert_file), Some(&settings.key_file), settings.client_ca_file.as_ref()];
        let files = WatchedFiles::new(paths.into_iter().flatten().cloned().collect());
        Ok(Arc::new(TlsReloader {
            settings,
            grpc: ArcSwap::from_pointee(grpc),
            http: ArcSwap::from_pointee(http),
            files,
        }))
    }

    fn configs(settings: &TlsSettings) -> anyhow::Result<(ServerConfig, ServerConfig)> {
        let mut grpc = load(settings)?;
        let mut http = grpc.clone();
        grpc.alpn_protocols = Alpn::Grpc.protocols();
        http.alpn_protocols = Alpn::Http.protocols();
        Ok((grpc, http))
    }

    fn acceptor(&self, alpn: Alpn) -> TlsAcceptor {
        match alpn {
            Alpn::Grpc => TlsAcceptor::from(self.grpc.load_full()),
            Alpn::Http => TlsAcceptor::from(self.http.load_full()),
        }
    }
}

impl Reload for TlsReloader {
    fn interval(&self) -> Duration {
        Duration::from_secs(self.settings.reload_secs)
    }

    /// A configuration that fails to load leaves the last good one in place.
    fn reload(&self, force: bool) {
        if !self.files.changed(force) {
            return;
        }
        match Self::configs(&self.settings) {
            Ok((grpc, http)) => {
                self.grpc.store(Arc::new(grpc));
                self.http.store(Arc::new(http));
                tracing::info!("TLS certificates reloaded");
            }
            Err(error) => {
                tracing::error!(error = format!("{error:#}"), "TLS reload failed; keeping the certificates in use");
            }
        }
    }
}

/// One accepted connection, plain or TLS, with what the server knows of its peer.
pub(crate) struct Conn {
    io: Either<TcpStream, Box<tokio_rustls::server::TlsStream<TcpStream>>>,
    info: ConnInfo,
}

/// Put into every request's extensions by tonic.
#[derive(Debug, Clone)]
pub(crate) struct ConnInfo {
    pub remote: Option<SocketAddr>,
    /// The verified client certificate's caller id, or why it has none; `None` without one.
    pub certificate: Option<Result<String, String>>,
}

impl Conn {
    pub(crate) fn info(&self) -> &ConnInfo {
        &self.info
    }
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

// The connection's bytes are its stream's, plain or TLS (`Either` delegates both ways).
impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Accepts connections on `listener`, doing TLS handshakes (each in its own task, bounded in
/// time, offering the ALPN protocols given) when `tls` is set, until `stop` fires or the server drops the stream. The accept
/// loop and the handshakes are `tasks`'.
pub(crate) fn incoming(
    listener: TcpListener,
    tls: Option<(Arc<TlsReloader>, Alpn)>,
    stop: CancellationToken,
    tasks: &TaskTracker,
) -> ReceiverStream<io::Result<Conn>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let handshakes = tasks.clone();
    tasks.spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = stop.cancelled() => break,
                () = tx.closed() => break,
            };
            let (stream, remote) = match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // Out of file descriptors and the like: back off rather than spin.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let Some((tls, alpn)) = &tls else {
                let info = ConnInfo { remote: Some(remote), certificate: None };
                if tx.send(Ok(Conn { io: Either::Left(stream), info })).await.is_err() {
                    break;
                }
                continue;
            };
            let acceptor = tls.acceptor(*alpn);
            let tx = tx.clone();
            handshakes.spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        let certificate = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|certs| certs.first())
                            .map(|leaf| super::identity::from_certificate(leaf));
                        let info = ConnInfo { remote: Some(remote), certificate };
                        let _ = tx.send(Ok(Conn { io: Either::Right(Box::new(stream)), info })).await;
                    }
                    // A refused client certificate ends here: the peer sees the TLS alert.
                    Ok(Err(error)) => tracing::info!(%remote, %error, "TLS handshake failed"),
                    Err(_) => tracing::info!(%remote, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
