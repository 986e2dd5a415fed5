//! Watching copies that wait in the gateway's queue. One follower (a task of the gateway's)
//! reads each followed job once a round and publishes how it stands through a `watch` channel
//! per job, as the pollers do for snapshots: a thousand watchers of one queued copy cost one
//! read of the store a round, not a thousand, and no watcher has a task of its own. A round
//! comes every `jobs.dispatch_interval_ms` (within 50 ms and 1 s) and at once when the
//! dispatcher says the queue moved (`QueueFollower::nudge`).
//!
//! Once AWS copies the job, its watchers go on with the hub's events for the snapshot (the first
//! of them shown as a change of state); a copy that ends without AWS (cancelled in the queue, or
//! refused for good) ends its watchers with its terminal event.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use futures_util::stream::{self, StreamExt};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::stream::Events;
use super::{Change, WatchEvent, WatchHub, WatchStream, WatchTarget};
use crate::error::Error;
use crate::tasks::Tasks;
use snapgate_domain::{ClusterSnapshot, CopyState};

/// How a queued job stands, as the copy workflow reads it from the store.
#[derive(Debug, Clone)]
pub(crate) enum QueuedLook {
    /// Waiting (or ended before AWS copied it): what its events show.
    Waiting { snapshot: Arc<ClusterSnapshot>, state: CopyState, queue: Option<(i64, u32)> },
    /// AWS is copying it, as snapshot `target` of `account` in `region`.
    Copying { account: String, region: String, target: String },
    /// The job is no longer in the store.
    Gone,
}

/// Reads how a job stands; the copy workflow's, so that the hub knows no store.
pub(crate) trait QueueReader: Send + Sync + 'static {
    fn look<'a>(&'a self, job_id: &'a str) -> BoxFuture<'a, Result<QueuedLook, Error>>;
}

struct Followed {
    tx: watch::Sender<Option<QueuedLook>>,
    watchers: usize,
}

/// The one follower of queued jobs.
pub(crate) struct QueueFollower {
    followed: Mutex<HashMap<String, Followed>>,
    /// Notified when the queue moved (a job admitted, started, cancelled or ended): a round now.
    wake: Arc<Notify>,
    interval: Duration,
    hub: Arc<WatchHub>,
    stop: CancellationToken,
}

impl QueueFollower {
    /// Starts the follower as a task of `tasks`: a round every `interval` while any job is
    /// followed, and whenever `wake` is notified.
    pub(crate) fn start(
        reader: Arc<dyn QueueReader>,
        hub: Arc<WatchHub>,
        interval: Duration,
        wake: Arc<Notify>,
        tasks: &Tasks,
    ) -> Arc<QueueFollower> {
        let interval = interval.clamp(Duration::from_millis(50), Duration::from_secs(1));
        let stop = tasks.stopping();
        let follower =
            Arc::new(QueueFollower { followed: Mutex::new(HashMap::new()), wake, interval, hub, stop: stop.clone() });
        let running = follower.clone();
        tasks.spawn(async move { running.run(reader, stop).await });
        follower
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Followed>> {
        self.followed.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn follow(self: &Arc<Self>, job_id: &str) -> Following {
        let rx = {
            let mut followed = self.lock();
            let entry = followed
                .entry(job_id.to_owned())
                .or_insert_with(|| Followed { tx: watch::channel(None).0, watchers: 0 });
            entry.watchers += 1;
            entry.tx.subscribe()
        };
        Following { follower: self.clone(), id: job_id.to_owned(), rx }
    }

    async fn run(self: Arc<Self>, reader: Arc<dyn QueueReader>, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(self.interval) => {}
            }
            let ids: Vec<String> = self.lock().keys().cloned().collect();
            // A round that panics is a round lost, not the follower: the next one runs as usual.
            let round = AssertUnwindSafe(self.round(&*reader, ids)).catch_unwind().await;
            if round.is_err() {
                tracing::error!("a round of the queued-copy follower panicked; following on");
            }
        }
    }

    async fn round(&self, reader: &dyn QueueReader, ids: Vec<String>) {
        for id in ids {
            match reader.look(&id).await {
                Ok(look) => {
                    if let Some(entry) = self.lock().get(&id) {
                        entry.tx.send_replace(Some(look));
                    }
                }
                Err(error) => tracing::warn!(%error, job = %id, "reading a queued copy failed; retrying"),
            }
        }
    }
}

/// A watcher's hold on a job's looks; the last one dropped stops the following.
struct Following {
    follower: Arc<QueueFollower>,
    id: String,
    rx: watch::Receiver<Option<QueuedLook>>,
}

impl Drop for Following {
    fn drop(&mut self) {
        let mut followed = self.follower.lock();
        if let Some(entry) = followed.get_mut(&self.id) {
            entry.watchers -= 1;
            if entry.watchers == 0 {
                followed.remove(&self.id);
            }
        }
    }
}

/// What a queued watch needs besides its job.
pub(crate) struct QueuedWatch<'a> {
    pub job_id: &'a str,
    /// The copy's name as the caller gave it.
    pub name: &'a str,
    /// How it stands now: the stream's first event.
    pub first: QueuedLook,
    pub deadline: Option<tokio::time::Instant>,
}

enum State {
    Queued { following: Following, last: (CopyState, Option<(i64, u32)>) },
    Hub(Events),
    Done,
}

impl QueueFollower {
    /// The events of a copy that waits: its first look, its place as it changes, then, once
    /// AWS copies it, the hub's events; an error at shutdown or the caller's deadline.
    pub(crate) fn watch(self: &Arc<Self>, watch: QueuedWatch<'_>) -> WatchStream {
        let QueuedLook::Waiting { snapshot, state, queue } = watch.first else {
            // Started or gone since it was read: the caller's next look at it says which.
            return WatchStream::from_stream(stream::iter([Err(Error::Unavailable(
                "the copy left the queue while its watch opened; watch it again".into(),
            ))]));
        };
        let first = event(&snapshot, state, queue, Change::Initial);
        if state.is_terminal() {
            return WatchStream::from_stream(stream::iter([Ok(first)]));
        }
        let following = self.follow(watch.job_id);
        let (hub, name, deadline, stop) = (self.hub.clone(), watch.name.to_owned(), watch.deadline, self.stop.clone());
        let rest = stream::unfold(State::Queued { following, last: (state, queue) }, move |state| {
            let (hub, name, stop) = (hub.clone(), name.clone(), stop.clone());
            async move { next(state, &hub, &name, deadline, &stop).await }
        });
        WatchStream::from_stream(stream::iter([Ok(first)]).chain(rest))
    }
}

fn event(snapshot: &Arc<ClusterSnapshot>, state: CopyState, queue: Option<(i64, u32)>, change: Change) -> WatchEvent {
    WatchEvent {
        snapshot: snapshot.clone(),
        state,
        observed: SystemTime::now(),
        change,
        terminal: state.is_terminal(),
        queue,
    }
}

type Item = Result<WatchEvent, Error>;

async fn next(
    state: State,
    hub: &WatchHub,
    name: &str,
    deadline: Option<tokio::time::Instant>,
    stop: &CancellationToken,
) -> Option<(Item, State)> {
    match state {
        State::Done => None,
        State::Hub(mut events) => {
            let item = events.next().await?;
            Some((item, State::Hub(events)))
        }
        State::Queued { mut following, last } => loop {
            let until = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = stop.cancelled() => return Some((Err(Error::ShuttingDown), State::Done)),
                () = until => return Some((Err(Error::DeadlineExceeded), State::Done)),
                changed = following.rx.changed() => {
                    if changed.is_err() {
                        return Some((Err(Error::ShuttingDown), State::Done));
                    }
                }
            }
            let look = following.rx.borrow_and_update().clone();
            match look {
                None => {}
                Some(QueuedLook::Gone) => {
                    return Some((Err(Error::NotFound { what: "copy", name: name.to_owned() }), State::Done));
                }
                Some(QueuedLook::Waiting { snapshot, state, queue }) => {
                    let change = if state != last.0 {
                        if state.is_terminal() { Change::Terminal } else { Change::State }
                    } else if queue != last.1 {
                        Change::Progress
                    } else {
                        continue;
                    };
                    let item = Ok(event(&snapshot, state, queue, change));
                    let then = if state.is_terminal() {
                        State::Done
                    } else {
                        State::Queued { following, last: (state, queue) }
                    };
                    return Some((item, then));
                }
                Some(QueuedLook::Copying { account, region, target }) => {
                    drop(following);
                    // From here the hub's events; the stream already showed the copy.
                    let target =
                        WatchTarget { account: &account, region: &region, id: &target, name, arn: None, turn: None };
                    return match hub.watch(target, deadline, |_| Ok(())).await {
                        Ok(events) => {
                            let mut events: Events = Box::pin(events.map(|item| {
                                item.map(|e| {
                                    if e.change == Change::Initial {
                                        WatchEvent { change: Change::State, ..e }
                                    } else {
                                        e
                                    }
                                })
                            }));
                            let first = events.next().await?;
                            Some((first, State::Hub(events)))
                        }
                        Err(error) => Some((Err(error), State::Done)),
                    };
                }
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A job that waits at place `place`, read `reads` times.
    struct Script {
        looks: Mutex<Vec<QueuedLook>>,
        reads: AtomicUsize,
    }

    impl QueueReader for Script {
        fn look<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<QueuedLook, Error>> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            let mut looks = self.looks.lock().unwrap();
            let look = if looks.len() > 1 { looks.remove(0) } else { looks[0].clone() };
            Box::pin(async move { Ok(look) })
        }
    }

    fn waiting(place: i64, state: CopyState) -> QueuedLook {
        let snapshot = Arc::new(ClusterSnapshot { id: "q".into(), ..ClusterSnapshot::default() });
        QueuedLook::Waiting { snapshot, state, queue: Some((place, 5)) }
    }

    #[tokio::test(start_paused = true)]
    async fn many_watchers_of_a_queued_copy_share_one_read_a_round_and_see_it_move() {
        let tasks = Tasks::new();
        let script = Arc::new(Script {
            looks: Mutex::new(vec![
                waiting(2, CopyState::Queued),
                waiting(1, CopyState::Queued),
                waiting(1, CopyState::Cancelled),
            ]),
            reads: AtomicUsize::new(0),
        });
        let hub = Arc::new(crate::watch::tests::hub().await);
        let follower =
            QueueFollower::start(script.clone(), hub, Duration::from_millis(100), Arc::new(Notify::new()), &tasks);
        let mut held: Vec<_> = (0..50).map(|_| follower.follow("job-1")).collect();
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(script.reads.load(Ordering::SeqCst), 1, "fifty watchers, one read");
        for following in &mut held {
            following.rx.changed().await.unwrap();
        }
        // The last watcher gone, the job is no longer read.
        drop(held);
        let reads = script.reads.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(script.reads.load(Ordering::SeqCst), reads);
        assert!(follower.lock().is_empty());
        assert!(tasks.stop(Duration::from_secs(1)).await);
    }
}
