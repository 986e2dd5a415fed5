//! The gateway's background work, owned: every task the gateway spawns (pollers, streams,
//! reloaders, the accept loop and its handshakes, the admin listener, JWKS refreshes) is
//! tracked here, `stop` asks them all to end, and shutdown waits for them within its grace.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Clone, Default)]
pub struct Tasks {
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl Tasks {
    pub fn new() -> Tasks {
        Tasks::default()
    }

    /// Runs `task` as one of the gateway's.
    pub(crate) fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(task);
    }

    /// Runs the loop `make` starts as one of the gateway's tasks, supervised: should it end by a
    /// panic, the panic is logged and a new loop started after a backoff (`first`, doubling up
    /// to a minute). A loop that returns, or the gateway stopping, ends the supervision.
    pub(crate) fn supervise<M, F>(&self, what: &'static str, first: Duration, make: M)
    where
        M: Fn() -> F + Send + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let stopping = self.stopping();
        let tracker = self.tracker.clone();
        self.spawn(async move {
            let mut backoff = first;
            loop {
                match tracker.spawn(make()).await {
                    Ok(()) => return,
                    Err(error) => tracing::error!(%error, task = what, "a gateway task died; starting it again"),
                }
                tokio::select! {
                    () = stopping.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(60));
            }
        });
    }

    /// Cancelled when the gateway stops: long-running tasks select on it.
    pub(crate) fn stopping(&self) -> CancellationToken {
        self.stop.clone()
    }

    pub(crate) fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    /// Asks every task to end and waits for them, at most `grace`; returns whether all ended.
    pub(crate) async fn stop(&self, grace: Duration) -> bool {
        self.stop.cancel();
        self.tracker.close();
        tokio::time::timeout(grace, self.tracker.wait()).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_supervised_loop_that_panics_is_started_again_with_backoff() {
        let tasks = Tasks::new();
        let started = Arc::new(AtomicUsize::new(0));
        let (done, mut finished) = tokio::sync::mpsc::unbounded_channel();
        let count = started.clone();
        tasks.supervise("test loop", Duration::from_millis(500), move || {
            let n = count.fetch_add(1, Ordering::SeqCst) + 1;
            let done = done.clone();
            async move {
                assert!(n >= 3, "loop {n} dies");
                let _ = done.send(tokio::time::Instant::now());
            }
        });
        let begun = tokio::time::Instant::now();
        let ended = tokio::time::timeout(Duration::from_secs(10), finished.recv()).await.unwrap().unwrap();
        assert_eq!(started.load(Ordering::SeqCst), 3, "two panics, then a loop that ran to its end");
        assert_eq!(ended - begun, Duration::from_millis(500 + 1000), "backoff 0.5 s, then 1 s");
        assert!(tasks.stop(Duration::from_secs(1)).await, "a loop that returned is not restarted");
        assert_eq!(started.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn stopping_ends_the_supervision_of_a_dying_loop() {
        let tasks = Tasks::new();
        let started = Arc::new(AtomicUsize::new(0));
        let count = started.clone();
        tasks.supervise("dying loop", Duration::from_secs(30), move || {
            count.fetch_add(1, Ordering::SeqCst);
            async { panic!("always") }
        });
        tokio::task::yield_now().await;
        assert!(tasks.stop(Duration::from_secs(1)).await, "stopped within the backoff");
        assert_eq!(started.load(Ordering::SeqCst), 1);
    }
}
