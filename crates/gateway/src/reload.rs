//! Reloading from files without a restart: policies and TLS certificates are re-read when
//! their files change (checked every so often by modification time) and on SIGHUP. A reload
//! that fails keeps what is in force; each reloader says so in the log.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

/// Files whose modification times tell when what was read from them is stale.
pub(crate) struct WatchedFiles {
    paths: Vec<PathBuf>,
    stamps: Mutex<Vec<Option<SystemTime>>>,
}

impl WatchedFiles {
    /// Watches `paths`, taking their current times as seen.
    pub(crate) fn new(paths: Vec<PathBuf>) -> WatchedFiles {
        let stamps = Mutex::new(stamps(&paths));
        WatchedFiles { paths, stamps }
    }

    /// Whether any file changed since the last call (always when `force`); either way the
    /// current times are taken as seen, so a file that fails to load is retried only when it
    /// changes again.
    pub(crate) fn changed(&self, force: bool) -> bool {
        let now = stamps(&self.paths);
        let mut seen = self.stamps.lock().unwrap_or_else(|p| p.into_inner());
        let changed = force || *seen != now;
        *seen = now;
        changed
    }
}

fn stamps(paths: &[PathBuf]) -> Vec<Option<SystemTime>> {
    paths.iter().map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok()).collect()
}

/// Something read from files that can be read again.
pub(crate) trait Reload: Send + Sync {
    /// Re-reads when the files changed, or always when `force`.
    fn reload(&self, force: bool);
    /// How often the files are checked.
    fn interval(&self) -> Duration;
}

/// Checks each reloader at its interval, and reloads them all on SIGHUP, until `stop`.
pub(crate) async fn run(reloaders: Vec<Arc<dyn Reload>>, stop: CancellationToken) {
    if reloaders.is_empty() {
        return;
    }
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut ticks: Vec<tokio::time::Interval> = reloaders
        .iter()
        .map(|r| {
            let mut tick = tokio::time::interval(r.interval());
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick
        })
        .collect();
    loop {
        #[cfg(unix)]
        let hup = async {
            match hangup.as_mut() {
                Some(signal) => signal.recv().await,
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let hup = std::future::pending::<Option<()>>();
        let tick = futures_util::future::select_all(ticks.iter_mut().map(|t| Box::pin(t.tick())));
        tokio::select! {
            () = stop.cancelled() => return,
            _ = hup => {
                tracing::info!("SIGHUP: reloading policies and certificates");
                for reloader in &reloaders {
                    reloader.reload(true);
                }
            }
            (_, due, _) = tick => reloaders[due].reload(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_file_is_noticed_once() {
        let dir = std::env::temp_dir().join(format!("snapgate-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("watched");
        std::fs::write(&path, "1").unwrap();
        let files = WatchedFiles::new(vec![path.clone()]);
        assert!(!files.changed(false));
        assert!(files.changed(true));
        std::fs::remove_file(&path).unwrap();
        assert!(files.changed(false), "a file that went away is a change");
        assert!(!files.changed(false));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
