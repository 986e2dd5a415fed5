//! Changes to the jobs reach the other replicas at once (PostgreSQL): every change this process
//! makes is announced on a channel (`NOTIFY`), and a listener of this process's (`LISTEN`, its
//! own connection) hears the others', forgets the lookups kept for reads and tells those who
//! subscribed — the dispatcher and the follower of queued copies — so that a copy admitted,
//! cancelled or ended on one replica is seen by the others' dispatchers, readers and watchers
//! without waiting for a timer. The timers stay, as the net under a notification lost while the
//! listener reconnects (it then tells its subscribers too: something may have changed). The same
//! listener hears the fleet's pollers (`store::polls`): a holder asked for a round, a round
//! recorded.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;

use super::{Dialect, Store};
use crate::tasks::Tasks;

/// The channel of the jobs' changes.
const CHANNEL: &str = "snapgate_jobs";

/// How long to wait before connecting the listener again after a failure.
const RECONNECT: Duration = Duration::from_secs(1);

impl Store {
    /// Announces a change this process made to the other replicas (PostgreSQL). A failure is
    /// logged: the others see the change at their next periodic look.
    pub(super) async fn announce(&self) {
        if self.dialect != Dialect::Postgres {
            return;
        }
        let sent = sqlx::query("SELECT pg_notify($1, $2)").bind(CHANNEL).bind(&self.name).execute(&self.pool).await;
        if let Err(error) = sent {
            tracing::debug!(%error, "a job change could not be announced to the other replicas");
        }
    }

    /// Changes other replicas made: the count of them heard so far, to wait on.
    pub(crate) fn remote_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.remote.subscribe()
    }

    /// The other replicas' pollers' notices: (`ask` or `observed`, scope).
    pub(crate) fn poll_notices(&self) -> tokio::sync::broadcast::Receiver<(String, String)> {
        self.poll_notices.subscribe()
    }

    /// Listens to the other replicas' changes as a task of `tasks` (PostgreSQL; nothing to
    /// hear otherwise).
    pub(crate) fn listen(self: &Arc<Self>, tasks: &Tasks) {
        let Some(url) = self.url.clone().filter(|_| self.dialect == Dialect::Postgres) else { return };
        let store = self.clone();
        let stopping = tasks.stopping();
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    () = stopping.cancelled() => return,
                    () = store.hear(&url) => {}
                }
                tokio::select! {
                    () = stopping.cancelled() => return,
                    () = tokio::time::sleep(RECONNECT) => {}
                }
            }
        });
    }

    /// Hears changes until the listener's connection fails.
    async fn hear(&self, url: &str) {
        let mut listener = match PgListener::connect(url).await {
            Ok(listener) => listener,
            Err(error) => {
                tracing::warn!(%error, "cannot listen to the other replicas' job changes; trying again");
                return;
            }
        };
        if let Err(error) = listener.listen_all([CHANNEL, super::polls::POLLS]).await {
            tracing::warn!(%error, "cannot listen to the other replicas' job changes; trying again");
            return;
        }
        // What was missed while not listening is looked at now.
        self.heard();
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) if notification.channel() == super::polls::POLLS => {
                    let mut parts = notification.payload().splitn(3, ' ');
                    if let (Some(sender), Some(kind), Some(scope)) = (parts.next(), parts.next(), parts.next())
                        && sender != self.name
                    {
                        // No receiver (no poller yet) or one behind: its timer serves it.
                        let _ = self.poll_notices.send((kind.to_owned(), scope.to_owned()));
                    }
                }
                Ok(Some(notification)) if notification.payload() == self.name => {}
                Ok(Some(_)) => self.heard(),
                // The connection was lost; the next receive connects again.
                Ok(None) => self.heard(),
                Err(error) => {
                    tracing::warn!(%error, "listening to the other replicas' job changes failed; trying again");
                    return;
                }
            }
        }
    }

    fn heard(&self) {
        self.lookups.forget();
        self.remote.send_modify(|n| *n += 1);
    }
}
