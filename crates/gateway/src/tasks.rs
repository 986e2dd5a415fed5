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
