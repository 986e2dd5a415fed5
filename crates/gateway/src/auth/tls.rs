//! TLS on the listeners with certificates that reload from disk: the accept loop
//! (`edge::accept`) takes the current rustls configuration for each new connection, so a
//! renewed certificate or CA bundle applies to new connections without a restart and without
//! touching open ones. The client certificate's identity is read once per connection.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};

use crate::config::{ClientCertificates, TlsSettings};
use crate::reload::{Reload, WatchedFiles};

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

    /// An acceptor with the current certificates, offering `alpn`.
    pub(crate) fn acceptor(&self, alpn: Alpn) -> TlsAcceptor {
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
