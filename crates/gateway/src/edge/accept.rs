//! The accept loop. Each connection takes a permit of the listener's cap (and of its peer's,
//! when that cap is on) the moment it is accepted, so silent connections count; over a cap it is
//! closed at once. It then has `handshake_timeout` to complete TLS and open the protocol: on
//! the gRPC listener the HTTP/2 preface and the client's first SETTINGS frame, on the HTTP/JSON
//! listener its first bytes (hyper's header timeout takes it from there). A peer that stays
//! silent is closed when the deadline passes (each deadline up to a quarter early, at random,
//! so that a crowd of silent peers is not closed all at once). A peer penalised for breaking HTTP/2's rules
//! (`pace::PeerPenalties`) waits out its penalty first, within the same deadline. Accept errors (out of file descriptors) back off
//! and are logged at a bounded rate.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{EdgeLimits, Listener};
use crate::auth::tls::{Alpn, TlsReloader};
use crate::call::ConnInfo;
use crate::metrics::Metrics;

/// The client's HTTP/2 connection preface (RFC 9113 §3.4), followed by its SETTINGS frame.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The share of the handshake timeout by which a connection's deadline may come early.
const DEADLINE_JITTER: f64 = 0.25;
/// Connections the accept loop takes before it lets other tasks run.
const ACCEPTS_PER_TURN: u32 = 8;
/// A SETTINGS frame larger than this is no client's (six bytes a setting).
const MAX_SETTINGS_PAYLOAD: usize = 1024;

/// One accepted connection, plain or TLS, with the bytes its handshake read (served first) and
/// its places under the caps (given back when it is dropped).
pub(crate) struct Conn {
    io: Either<TcpStream, Box<tokio_rustls::server::TlsStream<TcpStream>>>,
    prefix: Bytes,
    info: ConnInfo,
    _slot: Slot,
}

impl Conn {
    pub(crate) fn info(&self) -> &ConnInfo {
        &self.info
    }
}

/// A connection's place under the caps; counted open until dropped.
struct Slot {
    _permit: OwnedSemaphorePermit,
    peer: Option<(Arc<PeerCounts>, IpAddr)>,
    metrics: Arc<Metrics>,
    listener: Listener,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some((peers, ip)) = &self.peer {
            peers.release(*ip);
        }
        self.metrics.connection(self.listener.as_str(), -1);
    }
}

/// Open connections per peer address.
#[derive(Default)]
struct PeerCounts(Mutex<HashMap<IpAddr, usize>>);

impl PeerCounts {
    fn try_take(&self, ip: IpAddr, cap: usize) -> bool {
        let mut counts = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = counts.entry(ip).or_default();
        if *count >= cap {
            return false;
        }
        *count += 1;
        true
    }

    fn release(&self, ip: IpAddr) {
        let mut counts = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&ip);
            }
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

// Writes go straight through.
super::write_through!(Conn);

/// Logs accept errors at most once per interval, with how many were not logged.
struct RateLimitedLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimitedLog {
    const INTERVAL: Duration = Duration::from_secs(10);

    fn error(&mut self, listener: Listener, error: &io::Error) {
        if self.last.is_some_and(|t| t.elapsed() < Self::INTERVAL) {
            self.suppressed += 1;
            return;
        }
        let suppressed = std::mem::take(&mut self.suppressed);
        tracing::warn!(listener = listener.as_str(), %error, suppressed, "accept failed; backing off");
        self.last = Some(Instant::now());
    }
}

/// Accepts connections on `listener` until `stop` fires, and yields those that completed their
/// handshake. The accept loop and the handshakes are `tasks`'.
#[allow(clippy::too_many_arguments)]
pub(crate) fn incoming(
    listener: TcpListener,
    kind: Listener,
    tls: Option<Arc<TlsReloader>>,
    limits: &EdgeLimits,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    tasks: &TaskTracker,
) -> mpsc::Receiver<Conn> {
    let (tx, rx) = mpsc::channel(64);
    let handshakes = tasks.clone();
    let cap = Arc::new(Semaphore::new(limits.max_connections));
    let per_peer = limits.server.max_connections_per_peer;
    let peers = Arc::new(PeerCounts::default());
    let deadline = limits.server.handshake_timeout();
    let penalties = limits.penalties.clone();
    let accepts = snapgate_domain::TokenBucket::new(
        limits.server.max_accepts_per_sec,
        (limits.server.max_accepts_per_sec / 4.0).clamp(1.0, f64::from(u32::MAX)) as u32,
        tokio::time::Instant::now().into_std(),
    );
    let alpn = match kind {
        Listener::Grpc => Alpn::Grpc,
        Listener::Http => Alpn::Http,
    };
    tasks.spawn(async move {
        let mut backoff = Duration::from_millis(5);
        let mut log = RateLimitedLog { last: None, suppressed: 0 };
        let mut accepted_in_turn = 0u32;
        loop {
            // A storm of connections (thousands at once) is taken at `max_accepts_per_sec`, a
            // few at a time, so that the calls of connections already open are served in
            // between; the rest wait in the kernel's backlog.
            let wait = accepts.reserve(tokio::time::Instant::now().into_std());
            if !wait.is_zero() {
                metrics.connection_paced(kind.as_str(), "accept_rate");
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = stop.cancelled() => break,
                }
            }
            accepted_in_turn += 1;
            if accepted_in_turn.is_multiple_of(ACCEPTS_PER_TURN) {
                tokio::task::yield_now().await;
            }
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = stop.cancelled() => break,
                () = tx.closed() => break,
            };
            let (stream, remote) = match accepted {
                Ok(pair) => {
                    backoff = Duration::from_millis(5);
                    pair
                }
                Err(error) => {
                    // Out of file descriptors and the like: back off (up to a second) rather
                    // than spin; connections wait in the kernel's backlog meanwhile.
                    log.error(kind, &error);
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = stop.cancelled() => break,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            let Ok(permit) = cap.clone().try_acquire_owned() else {
                metrics.connection_refused(kind.as_str(), "cap");
                drop(stream);
                continue;
            };
            let peer = match per_peer {
                Some(limit) if !peers.try_take(remote.ip(), limit) => {
                    metrics.connection_refused(kind.as_str(), "per_peer");
                    drop(stream);
                    continue;
                }
                Some(_) => Some((peers.clone(), remote.ip())),
                None => None,
            };
            metrics.connection(kind.as_str(), 1);
            let slot = Slot { _permit: permit, peer, metrics: metrics.clone(), listener: kind };
            let _ = stream.set_nodelay(true);
            let acceptor = tls.as_ref().map(|t| t.acceptor(alpn));
            let tx = tx.clone();
            let metrics = metrics.clone();
            let stop = stop.clone();
            // A peer that keeps breaking HTTP/2's rules waits before its handshake (see `pace`).
            let held = penalties.wait(remote.ip());
            if !held.is_zero() {
                metrics.connection_paced(kind.as_str(), "peer");
            }
            // Each deadline a little short of the timeout, at random: thousands of silent
            // connections opened at once are then closed over a spread, not all in one instant.
            let deadline = deadline.mul_f64(1.0 - rand::random::<f64>() * DEADLINE_JITTER);
            handshakes.spawn(async move {
                let handshake = async {
                    tokio::time::sleep(held).await;
                    handshake(stream, remote, acceptor, kind).await
                };
                let outcome = tokio::select! {
                    outcome = tokio::time::timeout(deadline, handshake) => outcome,
                    () = stop.cancelled() => return,
                };
                match outcome {
                    Ok(Ok((io, prefix, info))) => {
                        let _ = tx.send(Conn { io, prefix, info, _slot: slot }).await;
                    }
                    Ok(Err(why)) => {
                        tracing::debug!(%remote, listener = kind.as_str(), why, "handshake refused");
                        metrics.connection_refused(kind.as_str(), "bad_handshake");
                    }
                    Err(_) if held >= deadline => {
                        tracing::debug!(%remote, listener = kind.as_str(), "held past the handshake timeout");
                        metrics.connection_refused(kind.as_str(), "penalty");
                    }
                    Err(_) => {
                        tracing::debug!(%remote, listener = kind.as_str(), "handshake timed out");
                        metrics.connection_refused(kind.as_str(), "handshake_timeout");
                    }
                }
            });
        }
    });
    rx
}

type Io = Either<TcpStream, Box<tokio_rustls::server::TlsStream<TcpStream>>>;

/// TLS (when on), then the opening bytes of the protocol.
async fn handshake(
    stream: TcpStream,
    remote: SocketAddr,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    kind: Listener,
) -> Result<(Io, Bytes, ConnInfo), String> {
    let (mut io, certificate) = match acceptor {
        None => (Either::Left(stream), None),
        Some(acceptor) => {
            // A refused client certificate ends here: the peer sees the TLS alert.
            let stream = acceptor.accept(stream).await.map_err(|e| format!("TLS: {e}"))?;
            let certificate = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .map(|leaf| crate::auth::identity::from_certificate(leaf));
            (Either::Right(Box::new(stream)), certificate)
        }
    };
    let prefix = opening(&mut io, kind).await?;
    Ok((io, prefix, ConnInfo { remote: Some(remote), certificate }))
}

/// Reads what the peer must send first: the HTTP/2 preface and its SETTINGS frame (gRPC; the
/// HTTP/JSON listener too when the peer speaks HTTP/2 without TLS), else any first bytes.
async fn opening<R: AsyncRead + Unpin>(io: &mut R, kind: Listener) -> Result<Bytes, String> {
    let mut buffer = BytesMut::with_capacity(64);
    loop {
        match needed(&buffer, kind)? {
            0 => return Ok(buffer.freeze()),
            _ => {
                let n = io.read_buf(&mut buffer).await.map_err(|e| e.to_string())?;
                if n == 0 {
                    return Err("closed before the handshake ended".into());
                }
            }
        }
    }
}

/// How many more bytes the opening needs (0: complete), or why it is not a valid one.
fn needed(buffer: &[u8], kind: Listener) -> Result<usize, String> {
    let preface_seen = buffer.len().min(PREFACE.len());
    if buffer[..preface_seen] != PREFACE[..preface_seen] {
        return match kind {
            // HTTP/1.1 on the HTTP/JSON listener: hyper reads the request from here.
            Listener::Http if !buffer.is_empty() => Ok(0),
            _ => Err("not an HTTP/2 connection preface".into()),
        };
    }
    if buffer.len() < PREFACE.len() + 9 {
        return Ok(PREFACE.len() + 9 - buffer.len());
    }
    let frame = &buffer[PREFACE.len()..];
    let length = usize::from(frame[0]) << 16 | usize::from(frame[1]) << 8 | usize::from(frame[2]);
    if frame[3] != 0x4 || length > MAX_SETTINGS_PAYLOAD {
        return Err("the preface is not followed by a SETTINGS frame".into());
    }
    Ok((PREFACE.len() + 9 + length).saturating_sub(buffer.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(payload: usize) -> Vec<u8> {
        let mut frame = PREFACE.to_vec();
        frame.extend_from_slice(&[0, 0, u8::try_from(payload).unwrap(), 4, 0, 0, 0, 0, 0]);
        frame.extend(std::iter::repeat_n(0, payload));
        frame
    }

    #[test]
    fn the_http2_opening_is_the_preface_and_a_settings_frame() {
        let whole = settings(12);
        assert_eq!(needed(&[], Listener::Grpc), Ok(33));
        assert_eq!(needed(&whole[..10], Listener::Grpc), Ok(23));
        assert_eq!(needed(&whole[..33], Listener::Grpc), Ok(12));
        assert_eq!(needed(&whole, Listener::Grpc), Ok(0));
        assert!(needed(b"GET / HTTP/1.1\r\n", Listener::Grpc).is_err());
        let mut ping = PREFACE.to_vec();
        ping.extend_from_slice(&[0, 0, 8, 6, 0, 0, 0, 0, 0]);
        assert!(needed(&ping, Listener::Grpc).is_err());
    }

    #[test]
    fn the_http_listener_also_takes_http1() {
        assert_eq!(needed(b"G", Listener::Http), Ok(0));
        assert_eq!(needed(b"PRI * HT", Listener::Http), Ok(25));
        assert_eq!(needed(&settings(0), Listener::Http), Ok(0));
        assert_eq!(needed(b"POST /v1", Listener::Http), Ok(0));
    }

    #[tokio::test]
    async fn the_opening_read_is_served_again_first() {
        let whole = settings(6);
        let mut reader = &whole[..];
        let prefix = opening(&mut reader, Listener::Grpc).await.unwrap();
        assert_eq!(&prefix[..], &whole[..]);
        let mut short = &whole[..20];
        assert!(opening(&mut short, Listener::Grpc).await.is_err());
    }

    #[test]
    fn peers_are_counted_until_released() {
        let peers = PeerCounts::default();
        let ip: IpAddr = [127, 0, 0, 2].into();
        assert!(peers.try_take(ip, 2) && peers.try_take(ip, 2));
        assert!(!peers.try_take(ip, 2));
        peers.release(ip);
        assert!(peers.try_take(ip, 2));
        peers.release(ip);
        peers.release(ip);
        assert!(peers.0.lock().unwrap().is_empty());
    }
}

/// Property test: whatever a peer sends first, the handshake reader asks for more, accepts or
/// refuses, without a panic, on both listeners.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn any_opening_bytes_are_judged(bytes in proptest::collection::vec(any::<u8>(), 0..128), prefix in 0usize..=24) {
            let mut opening = PREFACE[..prefix].to_vec();
            opening.extend_from_slice(&bytes);
            for kind in [Listener::Grpc, Listener::Http] {
                if let Ok(more) = needed(&opening, kind) {
                    prop_assert!(more <= PREFACE.len() + 9 + MAX_SETTINGS_PAYLOAD);
                }
            }
        }
    }
}
