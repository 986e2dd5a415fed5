//! Writes coalesced across a connection's streams. Each HTTP/2 stream is served by its own task,
//! and tokio runs a task that another one woke next, so when a poll round wakes the 500 watch
//! streams of one connection, the connection's task would run after each of them and write
//! each ~280-byte event with its own system call. On a connection that has flushed several
//! times within the last millisecond, a write waits for one pass of the scheduler instead: the
//! streams woken meanwhile queue their frames, and the connection writes them all at once. A
//! connection that is not that busy writes at once, so a lone answer gains no latency.
//!
//! It also tells h2 the transport has no vectored writes. h2 then copies a DATA payload under
//! 1 KiB into its 16 KiB write buffer (with vectored writes it keeps any payload of 256 bytes or
//! more aside and must flush before it can take the next one), so many events fit in one write.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// A connection that flushed `HOT` times within this long is busy: its next write waits one
/// pass. A lone call's answer (headers, message and trailers, in one flush or a few) never
/// waits; a fan-out of hundreds of events does after its first few.
const BUSY: Duration = Duration::from_millis(1);
const HOT: u32 = 4;

pub(crate) struct Coalesced<T> {
    io: T,
    /// When the current window of flushes began, and how many it has seen.
    window: Option<Instant>,
    flushes: u32,
    /// This batch already waited its pass.
    waited: bool,
}

impl<T> Coalesced<T> {
    pub(crate) fn new(io: T) -> Coalesced<T> {
        Coalesced { io, window: None, flushes: 0, waited: false }
    }

    /// Whether this write waits a pass of the scheduler first (it is woken at once).
    fn waits(&mut self, cx: &mut Context<'_>) -> bool {
        let busy = self.flushes >= HOT && self.window.is_some_and(|at| at.elapsed() < BUSY);
        if self.waited || !busy {
            return false;
        }
        self.waited = true;
        cx.waker().wake_by_ref();
        true
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalesced<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesced<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.waits(cx) {
            return Poll::Pending;
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.waits(cx) {
            return Poll::Pending;
        }
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let flushed = ready!(Pin::new(&mut this.io).poll_flush(cx));
        let now = Instant::now();
        match this.window {
            Some(at) if now.duration_since(at) < BUSY => this.flushes += 1,
            _ => (this.window, this.flushes) = (Some(now), 1),
        }
        this.waited = false;
        Poll::Ready(flushed)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Count(AtomicUsize);

    impl futures_util::task::ArcWake for Count {
        fn wake_by_ref(arc_self: &Arc<Self>) {
            arc_self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn write(io: &mut Coalesced<Vec<u8>>, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(io).poll_write(cx, bytes)
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_connection_writes_at_once_and_a_busy_one_waits_one_pass_per_batch() {
        let wakes = Arc::new(Count(AtomicUsize::new(0)));
        let waker = futures_util::task::waker(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut io = Coalesced::new(Vec::new());
        assert!(!io.is_write_vectored(), "h2 must copy small frames into its buffer");
        // A few flushes in quick succession (a lone call's answer): each written at once.
        for _ in 0..HOT {
            assert!(matches!(write(&mut io, &mut cx, b"a"), Poll::Ready(Ok(1))));
            assert!(Pin::new(&mut io).poll_flush(&mut cx).is_ready());
        }
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0);
        // Past that within the window, the next batch waits one pass, its task woken to go on...
        assert!(write(&mut io, &mut cx, b"second").is_pending());
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        // ...then writes, and the rest of its batch goes through without waiting again.
        assert!(matches!(write(&mut io, &mut cx, b"second"), Poll::Ready(Ok(6))));
        assert!(matches!(write(&mut io, &mut cx, b"third"), Poll::Ready(Ok(5))));
        assert!(Pin::new(&mut io).poll_flush(&mut cx).is_ready());
        assert_eq!(io.io, b"aaaasecondthird");
        // Quiet for longer than the window: at once again.
        tokio::time::advance(BUSY * 2).await;
        assert!(matches!(write(&mut io, &mut cx, b"!"), Poll::Ready(Ok(1))));
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
    }
}
