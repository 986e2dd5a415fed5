//! What a call carries between the rooms it passes through, owned by none of them: the
//! connection it came on (`ConnInfo`, put there by `edge`) and its places (`ConnectionCalls`,
//! made by `edge`, taken by `stack::shed`), its openings waiting for their turns
//! (`WaitingOpenings`, made by `edge`, counted by `stack::shed`), a stream opening's turn
//! (`OpeningTurn`, by `stack::shed`), the caller's deadline (`CallerDeadline`, by
//! `stack::deadline`), and the rules on paths every layer agrees on (which calls are open to
//! anyone, which open a stream, which are heavy). The edge, the stack and the core all read
//! these; none imports another for them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// What the gateway knows of a connection's peer; in every request's extensions.
#[derive(Debug, Clone)]
pub(crate) struct ConnInfo {
    pub remote: Option<SocketAddr>,
    /// The verified client certificate's caller id, or why it has none; `None` without one.
    pub certificate: Option<Result<String, String>>,
}

/// The places in progress of one connection's calls, in its requests' extensions: the edge
/// makes them for each connection, the shed layer takes one for each unary call, so no
/// connection holds more than half of the gateway's places.
#[derive(Clone)]
pub(crate) struct ConnectionCalls(pub(crate) Arc<Semaphore>);

impl ConnectionCalls {
    /// Half of the gateway's places (at least one).
    pub(crate) fn new(max_in_flight: usize) -> ConnectionCalls {
        ConnectionCalls(Arc::new(Semaphore::new((max_in_flight / 2).max(1))))
    }
}

/// How many of one connection's stream openings may wait for their turns before the edge stops
/// reading the connection.
pub(crate) const MAX_WAITING_OPENINGS: usize = 64;

/// How many of one connection's calls may have been read and not yet begun (hyper has handed
/// them over; the runtime has not run them yet) before the edge stops reading the connection.
pub(crate) const MAX_UNSTARTED_CALLS: usize = 16;

/// One connection's stream openings waiting for their turns (see `stack::shed::Openings`), in
/// its requests' extensions, and its calls read and not yet begun (see `edge::serve`'s
/// `Answer`). While `MAX_WAITING_OPENINGS` wait, or `MAX_UNSTARTED_CALLS` have not begun, the
/// edge reads no more of the
/// connection: further openings stay in the kernel's buffers and the peer's (TCP holds the peer
/// back), not in the gateway's memory. 100,000 watchers opening at once over 200 connections
/// then cost at most 200 × 64 requests held here at any moment, not 100,000, each with its
/// headers, its task and its HTTP/2 state. The waiters need nothing more from the connection
/// (their messages are read before they wait), and each wait ends within the request timeout;
/// a call stops counting as not begun at its first poll, before it waits for its body.
#[derive(Clone, Default)]
pub(crate) struct WaitingOpenings(Arc<Waiting>);

#[derive(Default)]
struct Waiting {
    count: AtomicUsize,
    unstarted: AtomicUsize,
    /// The connection's reader, held back while a count is at its limit.
    reader: AtomicWaker,
}

impl Waiting {
    fn full(&self) -> bool {
        self.count.load(Ordering::Acquire) >= MAX_WAITING_OPENINGS
            || self.unstarted.load(Ordering::Acquire) >= MAX_UNSTARTED_CALLS
    }
}

impl WaitingOpenings {
    /// One more opening waits, until the returned hold is dropped.
    pub(crate) fn wait(&self) -> WaitingOpening {
        self.0.count.fetch_add(1, Ordering::AcqRel);
        WaitingOpening(self.0.clone())
    }

    /// One more call has been read and not begun, until the returned hold is dropped.
    pub(crate) fn unstarted(&self) -> UnstartedCall {
        self.0.unstarted.fetch_add(1, Ordering::AcqRel);
        UnstartedCall(self.0.clone())
    }

    /// Openings waiting now.
    #[cfg(test)]
    pub(crate) fn count(&self) -> usize {
        self.0.count.load(Ordering::Acquire)
    }

    /// Calls read and not begun now.
    #[cfg(test)]
    pub(crate) fn unstarted_count(&self) -> usize {
        self.0.unstarted.load(Ordering::Acquire)
    }

    /// Why the connection is held back now: its waiting openings, or its calls not begun.
    pub(crate) fn reason(&self) -> &'static str {
        if self.0.count.load(Ordering::Acquire) >= MAX_WAITING_OPENINGS { "openings" } else { "unstarted" }
    }

    /// Ready while fewer than `MAX_WAITING_OPENINGS` wait and fewer than `MAX_UNSTARTED_CALLS`
    /// have not begun; otherwise the reader is woken when one stops waiting or begins.
    pub(crate) fn poll_room(&self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.0.full() {
            return Poll::Ready(());
        }
        self.0.reader.register(cx.waker());
        // An opening may have stopped waiting between the look and the registration.
        if self.0.full() { Poll::Pending } else { Poll::Ready(()) }
    }
}

/// An opening's place among its connection's waiting ones.
pub(crate) struct WaitingOpening(Arc<Waiting>);

impl Drop for WaitingOpening {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) <= MAX_WAITING_OPENINGS {
            self.0.reader.wake();
        }
    }
}

/// A call's place among its connection's calls not yet begun.
pub(crate) struct UnstartedCall(Arc<Waiting>);

impl Drop for UnstartedCall {
    fn drop(&mut self) {
        if self.0.unstarted.fetch_sub(1, Ordering::AcqRel) <= MAX_UNSTARTED_CALLS {
            self.0.reader.wake();
        }
    }
}

/// A WatchCopy opening's turn, in the request's extensions. The watch hub gives it back once
/// the opening waits for the first poll of a snapshot new to the hub, so a storm of watchers of
/// many snapshots (100,000 over 10,000) joins one poll round rather than one round per batch
/// of turns, while watchers of snapshots already being polled still open a batch at a time.
#[derive(Clone)]
pub(crate) struct OpeningTurn(Arc<Mutex<Option<OwnedSemaphorePermit>>>);

impl OpeningTurn {
    pub(crate) fn new(permit: OwnedSemaphorePermit) -> OpeningTurn {
        OpeningTurn(Arc::new(Mutex::new(Some(permit))))
    }

    /// Gives the turn back; later calls do nothing.
    pub(crate) fn give_back(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

/// The caller's deadline, when it set one: the handler of a stream ends it there.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallerDeadline(pub Option<tokio::time::Instant>);

/// Services anyone may call, and that no limit of a caller's applies to: probes and grpcurl's
/// `list` carry no credentials, and neither reveals more than the public proto.
const OPEN_PREFIXES: [&str; 3] =
    ["/grpc.health.v1.Health/", "/grpc.reflection.v1.ServerReflection/", "/grpc.reflection.v1alpha.ServerReflection/"];

/// Calls that open a stream or start a copy: what the memory watermark refuses.
const HEAVY_SUFFIXES: [&str; 2] = ["/WatchCopy", "/CopyClusterSnapshot"];

/// Whether a call to this path is open: no credentials, never shed, no share.
pub(crate) fn is_open(path: &str) -> bool {
    OPEN_PREFIXES.iter().any(|p| path.starts_with(p))
}

/// Whether a call to this path opens a server stream (and so takes an opening's turn, not a
/// unary call's place).
pub(crate) fn opens_stream(path: &str) -> bool {
    path.ends_with("/WatchCopy")
}

/// Whether a call to this path holds memory past its answer: refused above the watermark.
pub(crate) fn is_heavy(path: &str) -> bool {
    HEAVY_SUFFIXES.iter().any(|s| path.ends_with(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_sorted_once_for_every_layer() {
        assert!(is_open("/grpc.health.v1.Health/Check"));
        assert!(is_open("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"));
        assert!(!is_open("/snapgate.v1.SnapshotCopyService/GetCopy"));
        assert!(opens_stream("/snapgate.v1.SnapshotCopyService/WatchCopy"));
        assert!(!opens_stream("/snapgate.v1.SnapshotCopyService/GetCopy"));
        assert!(is_heavy("/snapgate.v1.SnapshotCopyService/CopyClusterSnapshot"));
        assert!(!is_heavy("/snapgate.v1.SnapshotCopyService/ListCopies"));
    }
}
