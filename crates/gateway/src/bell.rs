//! Telling many streams that something changed, each waiting inline in its own (pinned)
//! state: an open WatchCopy stream waits on its snapshot's observations and on reloads of the
//! policies, and 100,000 of them each waiting in a future that tokio-stream's `WatchStream`
//! boxes cost ~180 bytes a wait. A `Bell` is rung after the state it tells of has changed
//! (a `watch` channel's value, a generation); a `Ringing` is one stream's wait for its next
//! ring, which it follows by looking at that state.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::sync::Notify;
use tokio::sync::futures::OwnedNotified;

/// Rung after a change, by whoever made it.
#[derive(Clone, Default)]
pub(crate) struct Bell(Arc<Notify>);

impl Bell {
    /// Wakes every `Ringing` made before now.
    pub(crate) fn ring(&self) {
        self.0.notify_waiters();
    }

    /// A wait for the rings from now on: made before the state is looked at, it sees every
    /// ring after the look.
    pub(crate) fn ringing(&self) -> Ringing {
        Ringing { bell: self.0.clone(), next: self.0.clone().notified_owned() }
    }
}

pin_project_lite::pin_project! {
    /// One waiter's wait for the next ring of its bell.
    pub(crate) struct Ringing {
        bell: Arc<Notify>,
        #[pin]
        next: OwnedNotified,
    }
}

impl Ringing {
    /// Ready once the bell rang since the last `Ready` (or since this was made); then waits
    /// for the next ring. The waiter looks at the state after each `Ready`.
    pub(crate) fn poll_rung(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        std::task::ready!(this.next.as_mut().poll(cx));
        this.next.set(this.bell.clone().notified_owned());
        Poll::Ready(())
    }
}

/// A count of changes (the policies' reloads, the JWKS's), and the bell rung after each.
#[derive(Default)]
pub(crate) struct Generation {
    count: AtomicU64,
    bell: Bell,
}

impl Generation {
    /// Counts a change made (its effects in place before), and rings.
    pub(crate) fn bump(&self) {
        self.count.fetch_add(1, Ordering::AcqRel);
        self.bell.ring();
    }

    /// Changes so far.
    pub(crate) fn now(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }

    /// A wait for the changes after now.
    pub(crate) fn since_now(&self) -> Since {
        let ringing = self.bell.ringing();
        Since { seen: self.now(), ringing }
    }
}

pin_project_lite::pin_project! {
    /// One waiter's wait for the next change of a `Generation`.
    pub(crate) struct Since {
        seen: u64,
        #[pin]
        ringing: Ringing,
    }
}

impl Since {
    /// Ready once `generation` changed since the last `Ready` (or since this was made),
    /// however many times.
    pub(crate) fn poll_changed(self: Pin<&mut Self>, generation: &Generation, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        loop {
            let now = generation.now();
            if now != *this.seen {
                *this.seen = now;
                return Poll::Ready(());
            }
            std::task::ready!(this.ringing.as_mut().poll_rung(cx));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poll(ringing: Pin<&mut Ringing>) -> Poll<()> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        ringing.poll_rung(&mut cx)
    }

    #[test]
    fn a_ring_after_the_wait_was_made_is_seen_even_before_it_is_polled() {
        let bell = Bell::default();
        let mut ringing = std::pin::pin!(bell.ringing());
        bell.ring();
        assert!(poll(ringing.as_mut()).is_ready());
        // Once: the next poll waits for another ring.
        assert!(poll(ringing.as_mut()).is_pending());
        bell.ring();
        assert!(poll(ringing.as_mut()).is_ready());
        assert!(poll(ringing.as_mut()).is_pending());
    }

    #[test]
    fn a_waiter_sees_changes_made_after_it_was_made_once_however_many() {
        let generation = Generation::default();
        generation.bump();
        let mut since = std::pin::pin!(generation.since_now());
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(since.as_mut().poll_changed(&generation, &mut cx).is_pending());
        generation.bump();
        generation.bump();
        assert!(since.as_mut().poll_changed(&generation, &mut cx).is_ready());
        assert!(since.as_mut().poll_changed(&generation, &mut cx).is_pending());
        assert_eq!(generation.now(), 3);
    }

    #[tokio::test]
    async fn every_waiter_wakes_and_sees_the_change() {
        let bell = Bell::default();
        let generation = Arc::new(AtomicU64::new(0));
        let waiters: Vec<_> = (0..32)
            .map(|_| {
                let (bell, generation) = (bell.clone(), generation.clone());
                // The wait is made before the state is looked at.
                let ringing = bell.ringing();
                tokio::spawn(async move {
                    let mut ringing = std::pin::pin!(ringing);
                    loop {
                        if generation.load(Ordering::Acquire) == 3 {
                            return;
                        }
                        std::future::poll_fn(|cx| ringing.as_mut().poll_rung(cx)).await;
                    }
                })
            })
            .collect();
        for _ in 0..3 {
            generation.fetch_add(1, Ordering::AcqRel);
            bell.ring();
            tokio::task::yield_now().await;
        }
        for waiter in waiters {
            let ended = tokio::time::timeout(std::time::Duration::from_secs(10), waiter).await;
            assert!(matches!(ended, Ok(Ok(()))), "a waiter missed the last ring");
        }
    }
}
