//! Pacing a connection that costs the gateway more than a caller should: the gateway stops
//! reading from it for as long as it is over its budget, so its frames wait in the kernel's
//! buffers (and TCP's flow control holds the peer back) instead of taking the CPU that other
//! connections' calls need. Refusing is not enough on its own: a refusal is cheap, but a peer
//! that sends tens of thousands of calls a second only to be refused, resets every stream it
//! opens (CVE-2023-44487) or sends header blocks far over the limit (which HTTP/2 must decode
//! all the same) keeps the gateway's CPU busy with the refusing. Closing such a connection is
//! not enough either: the peer reconnects and starts again with a fresh budget.
//!
//! Two budgets, each a token bucket that may go into debt:
//! - *strikes*: calls refused or failed (any gRPC status but OK, any HTTP 4xx or 5xx) and calls
//!   the peer reset before their answer ended. A well-behaved caller that is refused backs off;
//!   one that keeps at it past `paced_refusals_burst` is read at `paced_refusals_per_sec`.
//!   On the gRPC listener a header block over half of `max_header_list_bytes` (compressed:
//!   no real caller comes near) counts as `OVERSIZED_STRIKES` strikes (see `frames`): HTTP/2
//!   must decode such a block before it can refuse its stream, and never shows the refusal
//!   to the service.
//! - *bytes read*: `max_read_bytes_per_sec` (a second's worth of burst). Requests here are a
//!   few hundred bytes, so this is far above any real caller; it bounds what a connection can
//!   make the gateway parse at all (on the HTTP/JSON listener, which may speak HTTP/1.1, it is
//!   also what bounds oversized header blocks).
//!
//! Behind a sidecar all callers share a connection, so one abusive caller slows the others on
//! it: they are not refused, only read more slowly, and the abuser is over its fair share anyway.
//!
//! A peer can also abuse the protocol so fast that HTTP/2 itself ends the connection (hyper's
//! guard against rapid reset sends GOAWAY ENHANCE_YOUR_CALM after 20 streams reset before they
//! were accepted), then reconnect at once, thousands of times a second. `PeerPenalties` counts
//! such closes by peer address; past a few, the peer's next connections are held before their
//! handshake for as long as it is in debt (up to the handshake timeout), which costs the
//! gateway a descriptor and no CPU, and costs the peer its reconnecting pace. This is not a
//! per-peer cap: a peer that keeps to the protocol is never penalised, however many callers it
//! carries.

use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

/// Now on tokio's clock, which tests can pause.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

use snapgate_domain::TokenBucket;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::Sleep;

use super::frames::FrameWatch;
use super::{EdgeLimits, Listener};
use crate::call::WaitingOpenings;
use crate::metrics::Metrics;

/// A connection's budgets.
pub(crate) struct Pace {
    strikes: TokenBucket,
    bytes: TokenBucket,
    /// A header block larger than this (compressed) is a strike of `OVERSIZED_STRIKES`.
    oversized: usize,
    /// The connection's stream openings waiting for their turns: at the limit, it is not read.
    waiting: WaitingOpenings,
}

/// What one oversized header block counts for: with the default budget, a connection sending
/// them is read at one every two seconds once it has sent two.
const OVERSIZED_STRIKES: f64 = 100.0;

impl Pace {
    pub(crate) fn new(limits: &EdgeLimits) -> Pace {
        let (now, limits) = (now(), &limits.server);
        let bytes_per_sec = limits.max_read_bytes_per_sec.max(1);
        Pace {
            strikes: TokenBucket::new(limits.paced_refusals_per_sec, limits.paced_refusals_burst, now),
            bytes: TokenBucket::new(bytes_per_sec as f64, u32::try_from(bytes_per_sec).unwrap_or(u32::MAX), now),
            oversized: usize::try_from(limits.max_header_list_bytes / 2).unwrap_or(usize::MAX),
            waiting: WaitingOpenings::default(),
        }
    }

    /// The connection's waiting openings, for its requests' extensions.
    pub(crate) fn waiting(&self) -> &WaitingOpenings {
        &self.waiting
    }

    /// A call refused, failed or reset by the peer.
    pub(crate) fn strike(&self) {
        self.strikes.spend(1.0, now());
    }

    fn read(&self, bytes: &[u8], frames: Option<&mut FrameWatch>, now: Instant) {
        self.bytes.spend(bytes.len() as f64, now);
        if let Some(frames) = frames {
            frames.feed(bytes, |block| {
                if block > self.oversized {
                    self.strikes.spend(OVERSIZED_STRIKES, now);
                }
            });
        }
    }

    /// How long reading must wait, and which budget it waits for.
    pub(super) fn behind(&self, now: Instant) -> Option<(Duration, &'static str)> {
        let (strikes, bytes) = (self.strikes.behind(now), self.bytes.behind(now));
        match (strikes.is_zero(), bytes.is_zero()) {
            (true, true) => None,
            _ if strikes >= bytes => Some((strikes, "refusals")),
            _ => Some((bytes, "bytes")),
        }
    }
}

/// Connections of one peer that the gateway may close for breaking HTTP/2's rules, a second and
/// at once, before the peer's next connections are held back.
const PENALTY_CLOSES_PER_SEC: f64 = 2.0;
const PENALTY_CLOSES_BURST: u32 = 10;

/// Peers whose connections the gateway closed for breaking the protocol, with their debts.
pub(crate) struct PeerPenalties(moka::sync::Cache<IpAddr, Arc<TokenBucket>>);

impl std::fmt::Debug for PeerPenalties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("PeerPenalties").field(&self.0.entry_count()).finish()
    }
}

impl PeerPenalties {
    pub(crate) fn new() -> PeerPenalties {
        PeerPenalties(moka::sync::Cache::builder().max_capacity(100_000).time_to_idle(Duration::from_secs(60)).build())
    }

    /// The gateway closed a connection of `peer`'s for breaking the protocol.
    pub(crate) fn strike(&self, peer: IpAddr) {
        let bucket =
            self.0.get_with(peer, || Arc::new(TokenBucket::new(PENALTY_CLOSES_PER_SEC, PENALTY_CLOSES_BURST, now())));
        bucket.spend(1.0, now());
    }

    /// How long `peer`'s next connection is held before its handshake.
    pub(crate) fn wait(&self, peer: IpAddr) -> Duration {
        self.0.get(&peer).map_or(Duration::ZERO, |bucket| bucket.behind(now()))
    }
}

/// Whether a connection ended because the gateway found the peer breaking HTTP/2's rules: a
/// GOAWAY of h2's own with an error (ENHANCE_YOUR_CALM for resets, PROTOCOL_ERROR, ...).
pub(crate) fn broke_the_protocol(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(error) = source {
        if let Some(h2) = error.downcast_ref::<h2::Error>() {
            return h2.is_go_away() && !h2.is_remote() && h2.reason().is_some_and(|r| r != h2::Reason::NO_ERROR);
        }
        source = error.source();
    }
    false
}

/// A connection read at its pace.
pub(crate) struct Paced<T> {
    io: T,
    pace: Arc<Pace>,
    pause: Option<Pin<Box<Sleep>>>,
    metrics: Arc<Metrics>,
    listener: Listener,
    /// A connection once paced is read in small steps from then on, each after a yield.
    small: bool,
    /// The last read was a small step, or ended a batch: the next one yields first.
    yield_next: bool,
    /// Bytes read since the connection last yielded.
    unyielded: usize,
    /// Where the peer is in its HTTP/2 frames (on the gRPC listener, which speaks only HTTP/2).
    frames: Option<FrameWatch>,
    /// Reading is held back for the connection's waiting openings (counted once a hold).
    held: bool,
}

/// How much a connection once paced is read at a time: a few calls' worth. Each read is
/// followed by a yield, so the calls it brought run (and their refusals count) before the
/// next is read. Otherwise one turn of the connection's task could read hundreds of calls
/// before the first of them is refused and counted, and serving them at once delays every
/// other connection's calls. It stays so for the connection's life: a connection that leaves
/// small steps while within its budget would flood the gateway with its backlog at once.
const SMALL_READ: usize = 256;

/// How much any connection reads before it lets the tasks its reads started run: a few dozen
/// stream openings. HTTP/2 queues each stream's frames in the connection's receive buffer
/// until the stream's task takes them, and that buffer (a slab) keeps the room of its busiest
/// moment for the connection's life, so a burst of openings read in one go keeps twice the room
/// it keeps read in turns of 16 KiB, and 16 KiB turns kept 0.2–0.4 KiB a stream more than these
/// (the README's `bench watch` figures; `bench unary` and `bench flood` keep their targets).
/// The yield also keeps one connection's burst from holding a worker while other connections
/// wait.
const READ_BATCH: usize = 4 * 1024;

/// Ends the connection task's turn. A read that returns Pending is not enough on its own:
/// hyper's accept loop drives the connection again for each stream it accepts, in the same
/// turn, and the next read would go ahead. Spending the task's cooperative budget (tokio's own
/// measure of a turn) makes every read and write of this turn wait until the task has gone
/// to the back of the run queue, behind the streams its reads started.
fn yield_task(cx: &mut Context<'_>) -> Poll<io::Result<()>> {
    // The budget is 128 units a turn; a task run unconstrained has none to spend.
    for _ in 0..256 {
        match tokio::task::coop::poll_proceed(cx) {
            Poll::Ready(spent) => spent.made_progress(),
            Poll::Pending => return Poll::Pending,
        }
    }
    cx.waker().wake_by_ref();
    Poll::Pending
}

impl<T> Paced<T> {
    pub(crate) fn new(io: T, pace: Arc<Pace>, metrics: Arc<Metrics>, listener: Listener) -> Paced<T> {
        let frames = (listener == Listener::Grpc).then(FrameWatch::new);
        Paced {
            io,
            pace,
            pause: None,
            metrics,
            listener,
            small: false,
            yield_next: false,
            unyielded: 0,
            frames,
            held: false,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Paced<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if std::mem::take(&mut this.yield_next) {
            return yield_task(cx);
        }
        // Enough of its openings wait for their turns: the rest wait outside (`WaitingOpenings`).
        if this.pace.waiting.poll_room(cx).is_pending() {
            if !std::mem::replace(&mut this.held, true) {
                this.metrics.connection_paced(this.listener.as_str(), this.pace.waiting.reason());
            }
            return Poll::Pending;
        }
        this.held = false;
        loop {
            if let Some(pause) = this.pause.as_mut() {
                ready!(pause.as_mut().poll(cx));
                this.pause = None;
            }
            match this.pace.behind(now()) {
                None => break,
                Some((wait, reason)) => {
                    this.metrics.connection_paced(this.listener.as_str(), reason);
                    this.small = true;
                    this.pause = Some(Box::pin(tokio::time::sleep(wait)));
                }
            }
        }
        let small = this.small;
        if !small || buf.remaining() <= SMALL_READ {
            let before = buf.filled().len();
            ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
            let read = &buf.filled()[before..];
            this.pace.read(read, this.frames.as_mut(), now());
            this.unyielded += read.len();
            this.yield_next = small || this.unyielded >= READ_BATCH;
            if this.yield_next {
                this.unyielded = 0;
            }
            return Poll::Ready(Ok(()));
        }
        let mut step = [0u8; SMALL_READ];
        let mut part = ReadBuf::new(&mut step);
        ready!(Pin::new(&mut this.io).poll_read(cx, &mut part))?;
        buf.put_slice(part.filled());
        this.pace.read(part.filled(), this.frames.as_mut(), now());
        this.yield_next = true;
        Poll::Ready(Ok(()))
    }
}

// Writing is never held back.
super::write_through!(Paced<T>, T);

/// Whether a response refuses or fails its call: a gRPC status other than OK in its headers
/// (a trailers-only answer; a stream that fails later is not counted), or an HTTP error.
pub(crate) fn is_refusal<B>(response: &http::Response<B>) -> bool {
    let status = response.status();
    if status.is_client_error() || status.is_server_error() {
        return true;
    }
    response.headers().get("grpc-status").is_some_and(|code| code.as_bytes() != b"0")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServerSettings;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn settings(refusals_per_sec: f64, burst: u32, bytes_per_sec: u64) -> EdgeLimits {
        EdgeLimits::new(&ServerSettings {
            paced_refusals_per_sec: refusals_per_sec,
            paced_refusals_burst: burst,
            max_read_bytes_per_sec: bytes_per_sec,
            ..ServerSettings::default()
        })
    }

    #[test]
    fn refusals_answers_and_errors_are_told_apart() {
        let ok = http::Response::builder().header("grpc-status", "0").body(()).unwrap();
        let plain = http::Response::builder().body(()).unwrap();
        let refused = http::Response::builder().header("grpc-status", "8").body(()).unwrap();
        let too_large = http::Response::builder().status(431).body(()).unwrap();
        let unavailable = http::Response::builder().status(503).body(()).unwrap();
        assert!(!is_refusal(&ok) && !is_refusal(&plain));
        assert!(is_refusal(&refused) && is_refusal(&too_large) && is_refusal(&unavailable));
    }

    #[test]
    fn a_peer_is_held_back_only_after_repeated_protocol_abuse() {
        let penalties = PeerPenalties::new();
        let (abuser, other): (IpAddr, IpAddr) = ([127, 0, 0, 7].into(), [127, 0, 0, 8].into());
        for _ in 0..PENALTY_CLOSES_BURST {
            penalties.strike(abuser);
        }
        assert_eq!(penalties.wait(abuser), Duration::ZERO);
        for _ in 0..4 {
            penalties.strike(abuser);
        }
        let wait = penalties.wait(abuser);
        assert!(wait > Duration::from_millis(1500) && wait <= Duration::from_secs(2), "{wait:?}");
        assert_eq!(penalties.wait(other), Duration::ZERO);
    }

    #[test]
    fn only_the_gateways_own_goaway_with_an_error_is_abuse() {
        let calm = h2::Error::from(h2::Reason::ENHANCE_YOUR_CALM);
        // A reset of one stream (what `From<Reason>` makes) is not a GOAWAY.
        assert!(!broke_the_protocol(&calm));
        let io = io::Error::other("peer went away");
        assert!(!broke_the_protocol(&io));
    }

    #[test]
    fn oversized_header_blocks_count_as_many_strikes() {
        let pace = Pace::new(&EdgeLimits::new(&ServerSettings::default()));
        let mut frames = FrameWatch::new();
        let block = |len: usize| {
            let mut frame = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, 1, 4, 0, 0, 0, 1];
            frame.resize(9 + len, 0);
            frame
        };
        pace.read(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Some(&mut frames), now());
        // Header blocks of real callers (a JWT included), however many, are no strike.
        for _ in 0..2_000 {
            pace.read(&block(2_000), Some(&mut frames), now());
        }
        assert!(pace.behind(now()).is_none());
        // Blocks over half the limit spend the strike budget a hundred at a time.
        let oversized = block(20_000);
        let mut frame = oversized.clone();
        frame[4] = 0;
        for _ in 0..21 {
            pace.read(&frame, Some(&mut frames), now());
            let mut continuation = oversized.clone();
            continuation[3] = 9;
            pace.read(&continuation, Some(&mut frames), now());
        }
        assert_eq!(pace.behind(now()).map(|(_, reason)| reason), Some("refusals"));
    }

    #[test]
    fn strikes_past_the_burst_hold_reading_back() {
        let pace = Pace::new(&settings(100.0, 10, 1 << 20));
        let now = Instant::now();
        for _ in 0..10 {
            pace.strike();
        }
        assert!(pace.behind(now).is_none());
        for _ in 0..20 {
            pace.strike();
        }
        let (wait, reason) = pace.behind(Instant::now()).unwrap();
        assert_eq!(reason, "refusals");
        assert!(wait > Duration::from_millis(150) && wait <= Duration::from_millis(200), "{wait:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_over_its_byte_budget_is_read_no_faster_than_the_budget() {
        let (mut peer, io) = tokio::io::duplex(1 << 20);
        let pace = Arc::new(Pace::new(&settings(100.0, 10, 1000)));
        let metrics = Metrics::new();
        let mut paced = Paced::new(io, pace, metrics.clone(), Listener::Grpc);
        peer.write_all(&[7u8; 3000]).await.unwrap();
        let started = tokio::time::Instant::now();
        let (mut got, mut chunk) = (0, [0u8; 500]);
        while got < 3000 {
            got += paced.read(&mut chunk).await.unwrap();
        }
        // A second's burst of 1000 bytes, then 2000 more at 1000 a second; a read may overdraw
        // the budget by what it takes, and the wait comes after it.
        let took = started.elapsed();
        assert!(took >= Duration::from_secs(1) && took <= Duration::from_secs(2), "{took:?}");
        assert!(metrics.render(0, 0).contains(r#"snapgate_connections_paced_total{listener="grpc",reason="bytes"}"#));
        // Paced lately, it is read in small steps, each after a yield.
        peer.write_all(&[9u8; 4 * SMALL_READ]).await.unwrap();
        tokio::time::advance(Duration::from_secs(5)).await;
        paced.small = true;
        let mut large = vec![0u8; 4 * SMALL_READ];
        assert_eq!(paced.read(&mut large).await.unwrap(), SMALL_READ);
        let next = futures_util::poll!(std::pin::pin!(paced.read(&mut large)));
        assert!(next.is_pending(), "a yield before the next step");
        assert_eq!(paced.read(&mut large).await.unwrap(), SMALL_READ);
        // Writing is never held back.
        paced.write_all(b"answer").await.unwrap();
        let mut answer = [0u8; 6];
        peer.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"answer");
    }

    #[tokio::test]
    async fn a_connection_whose_openings_wait_at_the_limit_is_not_read_until_one_has_its_turn() {
        let (mut peer, io) = tokio::io::duplex(1 << 20);
        let pace = Arc::new(Pace::new(&settings(100.0, 10, 1 << 30)));
        let metrics = Metrics::new();
        let mut paced = Paced::new(io, pace.clone(), metrics.clone(), Listener::Grpc);
        peer.write_all(b"more openings").await.unwrap();
        let waiting = pace.waiting().clone();
        let mut holds: Vec<_> = (0..crate::call::MAX_WAITING_OPENINGS).map(|_| waiting.wait()).collect();
        let mut chunk = [0u8; 64];
        let mut read = std::pin::pin!(paced.read(&mut chunk));
        assert!(futures_util::poll!(read.as_mut()).is_pending(), "held while the limit's worth wait");
        assert!(
            metrics.render(0, 0).contains(r#"snapgate_connections_paced_total{listener="grpc",reason="openings"}"#)
        );
        // One has its turn (or is refused): the reader is woken and reads on.
        holds.pop();
        let got = tokio::time::timeout(Duration::from_secs(5), read).await.expect("woken").unwrap();
        assert_eq!(&chunk[..got], b"more openings");
        assert_eq!(waiting.count(), crate::call::MAX_WAITING_OPENINGS - 1);
        drop(holds);
        assert_eq!(waiting.count(), 0);
    }

    #[tokio::test]
    async fn a_connection_ends_its_tasks_turn_after_a_batch_of_reads() {
        let (mut peer, io) = tokio::io::duplex(1 << 20);
        let pace = Arc::new(Pace::new(&settings(100.0, 10, 1 << 30)));
        let mut paced = Paced::new(io, pace, Metrics::new(), Listener::Http);
        peer.write_all(&vec![1u8; 3 * READ_BATCH]).await.unwrap();
        // Read as hyper's accept loop does: on and on within one turn of the task.
        async fn turn(paced: &mut Paced<tokio::io::DuplexStream>) -> usize {
            std::future::poll_fn(|cx| {
                let (mut total, mut chunk) = (0, [0u8; 4096]);
                loop {
                    let mut buf = ReadBuf::new(&mut chunk);
                    match Pin::new(&mut *paced).poll_read(cx, &mut buf) {
                        Poll::Ready(read) => {
                            read.unwrap();
                            total += buf.filled().len();
                        }
                        Poll::Pending => break,
                    }
                }
                // Every further read of this turn waits too.
                let mut buf = ReadBuf::new(&mut chunk);
                assert!(Pin::new(&mut *paced).poll_read(cx, &mut buf).is_pending());
                Poll::Ready(total)
            })
            .await
        }
        assert_eq!(turn(&mut paced).await, READ_BATCH);
        tokio::task::yield_now().await;
        assert_eq!(turn(&mut paced).await, READ_BATCH, "the next turn reads on");
    }
}
