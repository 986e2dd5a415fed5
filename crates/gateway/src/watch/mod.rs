//! The progress hub: one poller per region polls every watched snapshot in batches, and any
//! number of watchers share what it sees through `tokio::sync::watch` channels. AWS calls per
//! round grow with the number of watched snapshots / 100, not with the number of watchers.
//! Copies still waiting in the gateway's queue are watched through one follower of the store
//! (`queued`), the same way, and join the hub's streams once AWS copies them.

mod fleet;
mod poller;
mod queued;
mod stream;

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::tasks::Tasks;
use futures_util::FutureExt;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;

pub(crate) use fleet::{Fleet, FleetPolls};
pub(crate) use queued::{QueueFollower, QueueReader, QueuedLook, QueuedWatch};
pub(crate) use stream::{Change, WatchEvent, WatchStream};

use crate::aws::{Accounts, AwsError, Rds};
use crate::bell::Bell;
use crate::config::WatchSettings;
use crate::error::Error;
use crate::metrics::Metrics;
use snapgate_domain::{ClusterSnapshot, CopyState};

/// What a poll saw of one snapshot.
#[derive(Debug, Clone)]
pub enum Observation {
    Present {
        snapshot: Arc<ClusterSnapshot>,
        observed: SystemTime,
        at: Instant,
    },
    /// The snapshot no longer exists; `cancelled` when snapgate deleted it to cancel the copy.
    Gone {
        last: Option<Arc<ClusterSnapshot>>,
        cancelled: bool,
        observed: SystemTime,
    },
    /// Polling has failed for longer than the error budget, or the poller stopped.
    Failing {
        error: Error,
    },
}

impl Observation {
    /// The snapshot as a poll saw it within `freshness`.
    fn present_within(&self, freshness: Duration) -> Option<&Arc<ClusterSnapshot>> {
        match self {
            Observation::Present { snapshot, at, .. } if at.elapsed() < freshness => Some(snapshot),
            _ => None,
        }
    }
}

/// A snapshot's latest observation: a `watch` channel its readers look at, and a bell its
/// streams wait on (see `bell`), rung after each change the channel's receivers are told of.
/// It lives as long as its entry, which outlives every subscription to it (a subscription
/// holds its poller, and an entry leaves it with its last watcher).
struct Slot {
    tx: watch::Sender<Option<Arc<Observation>>>,
    bell: Bell,
}

impl Slot {
    fn new(observation: Option<Arc<Observation>>) -> Slot {
        Slot { tx: watch::channel(observation).0, bell: Bell::default() }
    }

    fn borrow(&self) -> watch::Ref<'_, Option<Arc<Observation>>> {
        self.tx.borrow()
    }

    fn send_replace(&self, observation: Option<Arc<Observation>>) {
        self.tx.send_replace(observation);
        self.bell.ring();
    }

    /// `modify` says whether the watchers are told of what it did.
    fn send_if_modified(&self, modify: impl FnOnce(&mut Option<Arc<Observation>>) -> bool) -> bool {
        let told = self.tx.send_if_modified(modify);
        if told {
            self.bell.ring();
        }
        told
    }
}

struct Entry {
    slot: Slot,
    watchers: usize,
    /// Watchers that keep the poller polling (all but the readers' lingering holds).
    active: usize,
    /// Spans of the latest watchers (a few), linked from the poll rounds that serve them.
    watcher_spans: std::collections::VecDeque<opentelemetry::trace::SpanContext>,
}

/// How old an observation a read takes, in shortest poll intervals. A watched snapshot's poller
/// comes back every interval ±10% (`poller::jitter`), and its describe takes time too: with a
/// window of exactly one interval, a read in the gap before a late round waited for a round of
/// its own (a 20 ms coalescing window and a describe, every few seconds for a snapshot read
/// all the time) although the next scheduled round was due.
pub(crate) const READ_FRESHNESS: f64 = 1.25;

/// How old an observation a read takes (`READ_FRESHNESS` shortest poll intervals).
fn read_freshness(settings: &WatchSettings) -> Duration {
    Duration::from_millis(settings.min_poll_interval_ms).mul_f64(READ_FRESHNESS)
}

/// Watcher spans remembered per snapshot, and links per poll round: enough to find the
/// watchers from a round in a trace viewer without making rounds heavy.
const LINKS_PER_SNAPSHOT: usize = 4;
const LINKS_PER_ROUND: usize = 32;

/// One region's poller and the snapshots it watches.
struct Poller {
    region: String,
    /// `CREDENTIALS/REGION`: the poller's name in the fleet's store.
    scope: String,
    /// By snapshot id (lowercased); each subscription shares its entry's key.
    entries: Mutex<HashMap<Arc<str>, Entry>>,
    cancelled: Mutex<HashSet<String>>,
    wake: Notify,
    /// Another replica asked for a round, or recorded one: the next round is not skipped
    /// for what this replica holds being fresh.
    asked: std::sync::atomic::AtomicBool,
    /// Notified when the fleet's holder recorded a round.
    observed: Notify,
    /// The set this replica last kept in the fleet's store, and when.
    registered: Mutex<(Vec<String>, Option<Instant>)>,
    /// (rounds begun, rounds ended, the last round's error): a reader that joined when
    /// `begun` was n has its answer once `ended` passes n.
    rounds: watch::Sender<(u64, u64, Option<AwsError>)>,
    /// Makes the next round panic: how the tests prove a poller's failure is survived.
    #[cfg(test)]
    crash: std::sync::atomic::AtomicBool,
}

impl Poller {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every snapshot in the set was seen within `freshness` (none is new or failing).
    fn all_fresh(&self, freshness: Duration) -> bool {
        self.lock().values().all(|entry| match entry.slot.borrow().as_deref() {
            Some(Observation::Gone { .. }) => true,
            Some(observation) => observation.present_within(freshness).is_some(),
            None => false,
        })
    }

    /// Nothing keeps it polling: it waits to be woken (a lingering read joins others' rounds).
    fn idle(&self) -> bool {
        self.lock().values().all(|entry| entry.active == 0)
    }
}

/// The watcher spans a poll round links to.
fn watcher_links(poller: &Poller) -> Vec<opentelemetry::trace::SpanContext> {
    poller.lock().values().flat_map(|e| e.watcher_spans.iter().cloned()).take(LINKS_PER_ROUND).collect()
}

pub struct WatchHub {
    accounts: Arc<Accounts>,
    settings: WatchSettings,
    /// One poller per (credentials, region): see `Accounts::credentials_key`.
    pollers: Mutex<HashMap<(String, String), Arc<Poller>>>,
    streams: Arc<Semaphore>,
    /// Cancelled at shutdown: streams end, pollers stop.
    shutdown: CancellationToken,
    /// Owns the pollers and the streams' tasks; shutdown waits for them.
    tasks: Tasks,
    /// Reads in flight, by (credentials, region, id): concurrent reads of one snapshot share
    /// one wait for a round, and its answer serves for the shortest poll interval.
    reads: moka::future::Cache<(String, String, String), Option<ClusterSnapshot>>,
    /// Snapshots read lately, held in their pollers' sets for a freshness window after their
    /// last read, without making the pollers poll for them: a round that another read (or a
    /// watcher) causes refreshes them too, in its batches. Copies read now and then by many
    /// callers then cost one batched describe a window, not a round for each that goes stale.
    lingering: moka::sync::Cache<(String, String, String), Arc<Subscription>>,
    metrics: Arc<Metrics>,
    /// Replicas on PostgreSQL: one poller per region for the fleet (see `fleet`).
    fleet: Option<Arc<Fleet>>,
}

/// What a watch is of: snapshot `id` of `account` ("" for the gateway's own) in `region`, as
/// the caller named it (`name`, and the ARN when the name is one).
pub(crate) struct WatchTarget<'a> {
    pub account: &'a str,
    pub region: &'a str,
    pub id: &'a str,
    pub name: &'a str,
    pub arn: Option<&'a str>,
    /// The opening's turn, given back when it waits for the first poll of a new snapshot.
    pub turn: Option<&'a crate::call::OpeningTurn>,
}

/// A watcher's hold on a snapshot's observations; dropping it lets the snapshot leave the poll
/// set once nobody else watches it.
pub struct Subscription {
    poller: Arc<Poller>,
    id: Arc<str>,
    rx: watch::Receiver<Option<Arc<Observation>>>,
    /// Rung after each change `rx` is told of.
    bell: Bell,
    /// This subscription added the snapshot to the poll set.
    added: bool,
    /// It keeps the poller polling (see `Entry::active`).
    active: bool,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut entries = self.poller.lock();
        if let Some(entry) = entries.get_mut(&*self.id) {
            entry.watchers -= 1;
            entry.active -= usize::from(self.active);
            if entry.watchers == 0 {
                entries.remove(&*self.id);
                self.poller.cancelled.lock().unwrap_or_else(|p| p.into_inner()).remove(&*self.id);
            }
        }
    }
}

impl Subscription {
    /// Waits for the first observation (the poller is woken when the snapshot is new to it).
    pub async fn first(&mut self) -> Option<Arc<Observation>> {
        let seen = self.rx.wait_for(Option::is_some).await.ok()?;
        seen.clone()
    }
}

impl WatchHub {
    pub(crate) fn new(
        accounts: Arc<Accounts>,
        settings: WatchSettings,
        tasks: Tasks,
        metrics: Arc<Metrics>,
        fleet: Option<Arc<Fleet>>,
    ) -> WatchHub {
        let streams = Arc::new(Semaphore::new(settings.max_streams));
        let shutdown = tasks.stopping();
        let reads = moka::future::Cache::builder()
            .max_capacity(100_000)
            .time_to_live(Duration::from_millis(settings.min_poll_interval_ms))
            .build();
        let lingering = moka::sync::Cache::builder()
            .max_capacity(100_000)
            .time_to_idle(Duration::from_millis(settings.min_poll_interval_ms))
            .build();
        WatchHub {
            accounts,
            settings,
            pollers: Mutex::new(HashMap::new()),
            streams,
            shutdown,
            tasks,
            reads,
            lingering,
            metrics,
            fleet,
        }
    }

    /// Another replica's poller asked for a round (`ask`) or recorded one (`observed`) of
    /// `scope`: this replica's poller of it, if it has one, looks now.
    pub(crate) fn fleet_notice(&self, kind: &str, scope: &str) {
        let pollers = self.pollers.lock().unwrap_or_else(|p| p.into_inner());
        let Some(poller) = pollers.values().find(|p| p.scope == scope) else { return };
        poller.asked.store(true, std::sync::atomic::Ordering::Release);
        if kind == "observed" {
            poller.observed.notify_waiters();
        }
        poller.wake.notify_one();
    }

    /// Poll rounds made so far, by every poller (the `watch_poll_rounds` metric).
    pub fn poll_rounds(&self) -> u64 {
        self.metrics.poll_rounds.get()
    }

    /// Streams open now.
    pub fn open_streams(&self) -> usize {
        self.settings.max_streams - self.streams.available_permits()
    }

    /// Snapshots in the poll sets now.
    pub fn watched_snapshots(&self) -> usize {
        let pollers = self.pollers.lock().unwrap_or_else(|p| p.into_inner());
        pollers.values().map(|p| p.lock().len()).sum()
    }

    /// A permit for one more stream, or RESOURCE_EXHAUSTED over the cap.
    fn stream_permit(&self) -> Result<OwnedSemaphorePermit, Error> {
        self.streams.clone().try_acquire_owned().map_err(|_| {
            self.metrics.call_shed("streams");
            Error::TooManyStreams(self.settings.max_streams)
        })
    }

    fn poller(&self, account: &str, region: &str) -> Arc<Poller> {
        let key = (self.accounts.credentials_key(account), region.to_owned());
        let rds = self.accounts.for_snapshot_account(account);
        let mut pollers = self.pollers.lock().unwrap_or_else(|p| p.into_inner());
        pollers
            .entry(key.clone())
            .or_insert_with(|| {
                let poller = Arc::new(Poller {
                    region: region.to_owned(),
                    scope: format!("{}/{}", key.0, key.1),
                    entries: Mutex::new(HashMap::new()),
                    cancelled: Mutex::new(HashSet::new()),
                    wake: Notify::new(),
                    asked: std::sync::atomic::AtomicBool::new(false),
                    observed: Notify::new(),
                    registered: Mutex::new((Vec::new(), None)),
                    rounds: watch::channel((0, 0, None)).0,
                    #[cfg(test)]
                    crash: std::sync::atomic::AtomicBool::new(false),
                });
                self.supervise(poller.clone(), rds);
                poller
            })
            .clone()
    }

    /// Runs a region's poller, owned by the hub's task tracker. A poller that panics or ends
    /// before shutdown tells its watchers at once (their streams end UNAVAILABLE with a hint
    /// to reconnect) and is started again after a pause, so new watchers are served.
    fn supervise(&self, poller: Arc<Poller>, rds: Arc<Rds>) {
        let (settings, shutdown, metrics) = (self.settings.clone(), self.shutdown.clone(), self.metrics.clone());
        let fleet = self.fleet.clone();
        self.tasks.spawn(async move {
            loop {
                let run = poller::run(
                    poller.clone(),
                    rds.clone(),
                    settings.clone(),
                    shutdown.clone(),
                    metrics.clone(),
                    fleet.clone(),
                );
                let outcome = AssertUnwindSafe(run).catch_unwind().await;
                if shutdown.is_cancelled() {
                    break;
                }
                let how = if outcome.is_err() { "panicked" } else { "ended" };
                tracing::error!(region = %poller.region, how, "a poller stopped; its watchers are told and it restarts");
                let error = Error::Unavailable(format!("the progress poller of {} stopped", poller.region));
                poller::publish_all(&poller, Observation::Failing { error });
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(RESTART_PAUSE) => {}
                }
            }
            // Shutdown is the last observation of every snapshot: each stream sends it as its
            // error and ends, with no wait for shutdown of its own (see `subscribe_with` for a
            // snapshot first watched after this).
            poller::publish_all(&poller, Observation::Failing { error: Error::ShuttingDown });
        });
    }

    /// Watches snapshot `id` (lowercased) of `account` ("" for the gateway's own) in `region`.
    pub fn subscribe(&self, account: &str, region: &str, id: &str) -> Subscription {
        self.subscribe_with(account, region, id, true)
    }

    /// Subscribes; `eager` wakes the poller for a first observation now (a watcher waits for
    /// it), otherwise the snapshot joins the poller's next round (the gateway following its own
    /// copy to the end needs no extra call).
    fn subscribe_with(&self, account: &str, region: &str, id: &str, eager: bool) -> Subscription {
        self.subscribe_as(account, region, id, eager, true)
    }

    /// Subscribes; an `active` subscription keeps the poller polling, a lingering read's does
    /// not (it never wakes it either).
    fn subscribe_as(&self, account: &str, region: &str, id: &str, eager: bool, active: bool) -> Subscription {
        let id = id.to_ascii_lowercase();
        let poller = self.poller(account, region);
        let ((rx, bell), fresh, alone, added, id) = {
            let mut entries = poller.lock();
            // An idle poller sleeps until woken: the first snapshot always wakes it.
            let alone = active && entries.values().all(|entry| entry.active == 0);
            // The entry's key, shared by its subscriptions.
            let key = match entries.get_key_value(id.as_str()) {
                Some((key, _)) => key.clone(),
                None => Arc::from(id),
            };
            let entry = entries.entry(key.clone()).or_insert_with(|| Entry {
                // After shutdown (its poller has told its watchers so), a new watcher is told too.
                slot: Slot::new(
                    self.shutdown.is_cancelled().then(|| Arc::new(Observation::Failing { error: Error::ShuttingDown })),
                ),
                watchers: 0,
                active: 0,
                watcher_spans: std::collections::VecDeque::new(),
            });
            entry.watchers += 1;
            entry.active += usize::from(active);
            let watcher = {
                use opentelemetry::trace::TraceContextExt;
                use tracing_opentelemetry::OpenTelemetrySpanExt;
                tracing::Span::current().context().span().span_context().clone()
            };
            if watcher.is_valid() {
                if entry.watcher_spans.len() == LINKS_PER_SNAPSHOT {
                    entry.watcher_spans.pop_front();
                }
                entry.watcher_spans.push_back(watcher);
            }
            let changes = (entry.slot.tx.subscribe(), entry.slot.bell.clone());
            (changes, entry.slot.borrow().is_some(), alone, entry.watchers == 1, key)
        };
        // The first active subscription wakes an idle poller even when the snapshot's
        // observation is fresh (a lingering read's, or a copy's start just recorded): asleep
        // with no timer, the poller would not poll it again.
        if active && (alone || (eager && !fresh)) {
            poller.wake.notify_one();
        }
        Subscription { poller, id, rx, bell, added, active }
    }

    /// The poller's observation of a snapshot if a read may take it (see `READ_FRESHNESS`).
    pub(crate) fn fresh(&self, account: &str, region: &str, id: &str) -> Option<ClusterSnapshot> {
        let key = (self.accounts.credentials_key(account), region.to_owned());
        let poller = self.pollers.lock().unwrap_or_else(|p| p.into_inner()).get(&key).cloned()?;
        let entries = poller.lock();
        let observation = entries.get(id.to_ascii_lowercase().as_str())?.slot.borrow().clone()?;
        observation.present_within(read_freshness(&self.settings)).map(|snapshot| ClusterSnapshot::clone(snapshot))
    }

    /// Tells the watchers of a snapshot that AWS started copying it: an observation of an
    /// earlier snapshot of the same name (gone, or cancelled) is not this copy's.
    pub(crate) fn record_started(&self, snapshot: &ClusterSnapshot) {
        let id = snapshot.id.to_ascii_lowercase();
        let poller = self.poller(&snapshot.account, &snapshot.region);
        poller.cancelled.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        if let Some(entry) = poller.lock().get(id.as_str()) {
            entry.slot.send_replace(Some(Arc::new(Observation::Present {
                snapshot: Arc::new(snapshot.clone()),
                observed: SystemTime::now(),
                at: Instant::now(),
            })));
        }
    }

    /// Tells the watchers of a snapshot that snapgate cancelled its copy.
    pub(crate) fn record_cancelled(&self, snapshot: &ClusterSnapshot) {
        let id = snapshot.id.to_ascii_lowercase();
        let poller = self.poller(&snapshot.account, &snapshot.region);
        // Remembered only while someone watches: the poll that finds the snapshot gone then
        // reports it cancelled, not deleted.
        if let Some(entry) = poller.lock().get(id.as_str()) {
            poller.cancelled.lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone());
            entry.slot.send_replace(Some(Arc::new(Observation::Gone {
                last: Some(Arc::new(snapshot.clone())),
                cancelled: true,
                observed: SystemTime::now(),
            })));
        }
    }

    /// Reads snapshot `id` of `account` in `region` the cheap way: the poller's observation
    /// when it is fresh; otherwise the snapshot joins its poller's next round (reads of other
    /// snapshots in that region arriving together share the round's one batched describe), and
    /// concurrent reads of one snapshot share one wait. `Ok(None)`: the poll did not see it (the
    /// caller asks AWS itself for its exact answer); `Err` with AWS's error when the round
    /// failed, or UNAVAILABLE when none ended in time.
    pub(crate) async fn read(&self, account: &str, region: &str, id: &str) -> Result<Option<ClusterSnapshot>, Error> {
        let key = (self.accounts.credentials_key(account), region.to_owned(), id.to_ascii_lowercase());
        // Read again within a window: held in the poll set for others' rounds to refresh (a
        // hit refreshes the hold without a second copy of the key).
        if self.lingering.get(&key).is_none() {
            self.lingering.get_with(key.clone(), || Arc::new(self.subscribe_as(account, region, id, false, false)));
        }
        if let Some(snapshot) = self.fresh(account, region, id) {
            return Ok(Some(snapshot));
        }
        let freshness = read_freshness(&self.settings);
        let read = async {
            let subscription = self.subscribe(account, region, id);
            let poller = subscription.poller.clone();
            let mut rounds = poller.rounds.subscribe();
            let (begun, ended) = {
                let r = rounds.borrow_and_update();
                (r.0, r.1)
            };
            poller.wake.notify_one();
            // A round under way may serve the read (a lingering snapshot is in it, see
            // `lingering`): its end answers if it left the observation fresh; otherwise, or
            // with no round under way, the next round's end does. A read that always waited
            // for the next round made every round that stale reads arrived during cost a
            // second one.
            let wait = async {
                if ended < begun {
                    let under_way = rounds.wait_for(|r| r.1 >= begun).await.map(|r| r.2.clone()).map_err(|_| ())?;
                    if under_way.is_some() {
                        return Ok(under_way);
                    }
                }
                // Also when a round ended between the read's first look and its joining.
                if subscription.rx.borrow().as_deref().and_then(|o| o.present_within(freshness)).is_some() {
                    return Ok(None);
                }
                rounds.wait_for(|r| r.1 > begun).await.map(|r| r.2.clone()).map_err(|_| ())
            };
            let failure = match tokio::time::timeout(READ_WAIT, wait).await {
                Ok(Ok(failure)) => failure,
                _ => return Err(Error::Unavailable(format!("no poll of {region} completed within {READ_WAIT:?}"))),
            };
            if let Some(error) = failure {
                return Err(Error::Aws(error));
            }
            let observation = subscription.rx.borrow().clone();
            match observation.as_deref() {
                Some(Observation::Present { snapshot, .. }) => Ok(Some(ClusterSnapshot::clone(snapshot))),
                _ => Ok(None),
            }
        };
        self.reads.try_get_with(key, read).await.map_err(Arc::unwrap_or_clone)
    }

    /// Waits until a poll sees snapshot `id` of `account` in `region` in a final state (or
    /// gone), and returns that observation; `None` at shutdown. Failing polls are waited out.
    /// The subscription comes with it: held while the caller records the end, it keeps the
    /// observation readable (`fresh`) until the record says the same.
    pub(crate) async fn final_observation(
        &self,
        account: &str,
        region: &str,
        id: &str,
    ) -> Option<(Arc<Observation>, Subscription)> {
        let mut subscription = self.subscribe_with(account, region, id, false);
        let is_terminal = |o: &Option<Arc<Observation>>| match o.as_deref() {
            Some(Observation::Present { snapshot, .. }) => snapshot.state().is_terminal(),
            Some(Observation::Gone { .. }) => true,
            _ => false,
        };
        let seen = tokio::select! {
            () = self.shutdown.cancelled() => None,
            seen = subscription.rx.wait_for(is_terminal) => seen.ok().and_then(|o| o.clone()),
        };
        seen.map(|o| (o, subscription))
    }

    /// Opens a watch of `target`. The first observation decides: a copy that is not there is
    /// NOT_FOUND, a failing poll the error it failed with, and a copy that is there is shown
    /// to `authorize` before any event is sent. The stream ends at the copy's terminal state,
    /// at `deadline`, or at shutdown.
    pub(crate) async fn watch(
        &self,
        target: WatchTarget<'_>,
        deadline: Option<tokio::time::Instant>,
        authorize: impl FnOnce(&ClusterSnapshot) -> Result<(), Error>,
    ) -> Result<WatchStream, Error> {
        let permit = self.stream_permit()?;
        let mut subscription = self.subscribe(target.account, target.region, target.id);
        // An opening that added the snapshot to the poll set gives its turn back at once, so the
        // watchers of many snapshots all join the next round; one waiting for a round already
        // asked for keeps its turn for a short while (the round is usually that quick), then
        // gives it back too, so a round slowed by AWS's throttling holds up no other opening.
        let first = match target.turn {
            Some(turn) if subscription.added => {
                turn.give_back();
                subscription.first().await
            }
            Some(turn) => match tokio::time::timeout(TURN_HOLD, subscription.first()).await {
                Ok(first) => first,
                Err(_) => {
                    turn.give_back();
                    subscription.first().await
                }
            },
            None => subscription.first().await,
        };
        let first = first.ok_or(Error::ShuttingDown)?;
        let not_found = || Error::NotFound { what: "copy", name: target.name.to_owned() };
        let is_it = |s: &ClusterSnapshot| target.arn.is_none_or(|arn| arn == s.arn);
        match &*first {
            Observation::Present { snapshot, .. } if is_it(snapshot) => authorize(snapshot)?,
            // Cancelled by snapgate while watched: the last sight of it is what is decided on.
            Observation::Gone { last: Some(snapshot), cancelled: true, .. } => authorize(snapshot)?,
            Observation::Present { .. } | Observation::Gone { .. } => return Err(not_found()),
            Observation::Failing { error } => return Err(error.clone()),
        }
        Ok(stream::stream(stream::StreamTask {
            subscription,
            first,
            permit,
            deadline,
            heartbeat: Duration::from_secs(self.settings.heartbeat_secs),
        }))
    }
}

/// The state an observation shows.
pub(crate) fn observed_state(observation: &Observation) -> Option<(CopyState, i32)> {
    match observation {
        Observation::Present { snapshot, .. } => Some((snapshot.state(), snapshot.percent_progress)),
        Observation::Gone { cancelled: true, .. } => Some((CopyState::Cancelled, 0)),
        Observation::Gone { .. } => Some((CopyState::Deleted, 0)),
        Observation::Failing { .. } => None,
    }
}

/// How long an opening waiting for a poll round already asked for keeps its turn.
const TURN_HOLD: Duration = Duration::from_millis(500);

/// How long a read waits for a poll round before it gives up on the poller.
const READ_WAIT: Duration = Duration::from_secs(10);

/// How long a stopped poller waits before it starts again.
const RESTART_PAUSE: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AwsSettings;

    /// A hub whose AWS side refuses connections: polls fail fast, and never for long enough
    /// to use up the error budget within the test.
    pub(super) async fn hub() -> WatchHub {
        let aws = AwsSettings { region: Some("us-east-1".into()), max_attempts: 1, ..AwsSettings::default() };
        let sdk = crate::aws::fixed_sdk_config(&aws, "http://127.0.0.1:1", "AKIDTEST", "secret").await;
        let metrics = Metrics::new();
        let accounts = Arc::new(Accounts::new(sdk, &aws, None, metrics.clone()).await.expect("accounts"));
        let settings = WatchSettings {
            min_poll_interval_ms: 50,
            max_poll_interval_ms: 100,
            error_budget_secs: 3600,
            ..WatchSettings::default()
        };
        WatchHub::new(accounts, settings, Tasks::new(), metrics, None)
    }

    async fn rounds_reach(hub: &WatchHub, n: u64) {
        let wait = async {
            while hub.poll_rounds() < n {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), wait).await.expect("the poller polls");
    }

    #[tokio::test]
    async fn a_copy_started_again_under_a_deleted_snapshots_name_is_not_ended_by_an_older_round() {
        let hub = hub().await;
        let subscription = hub.subscribe("", "us-east-1", "rc-a");
        let gone = || Observation::Gone { last: None, cancelled: false, observed: SystemTime::now() };
        let state = |s: &Subscription| s.rx.borrow().as_deref().and_then(observed_state).map(|(state, _)| state);
        // The first snapshot of that name was deleted: a round saw it gone.
        let before = Instant::now();
        assert!(poller::publish(&subscription.poller, "rc-a", gone(), before));
        assert_eq!(state(&subscription), Some(CopyState::Deleted));
        // A new copy of that name starts while a round asked before it is under way.
        let asked = Instant::now();
        let copying = ClusterSnapshot {
            id: "rc-a".into(),
            region: "us-east-1".into(),
            status: "copying".into(),
            ..ClusterSnapshot::default()
        };
        hub.record_started(&copying);
        assert_eq!(state(&subscription), Some(CopyState::Copying));
        // That round's answer is of the deleted snapshot: it does not end the new copy.
        assert!(!poller::publish(&subscription.poller, "rc-a", gone(), asked));
        assert_eq!(state(&subscription), Some(CopyState::Copying));
        // A round asked after the start does, should the copy be deleted.
        assert!(poller::publish(&subscription.poller, "rc-a", gone(), Instant::now()));
        assert_eq!(state(&subscription), Some(CopyState::Deleted));
    }

    #[tokio::test]
    async fn only_the_subscription_that_adds_a_snapshot_to_the_poll_set_says_so() {
        let hub = hub().await;
        let first = hub.subscribe("", "us-east-1", "copy-1");
        let second = hub.subscribe("", "us-east-1", "COPY-1");
        let other = hub.subscribe("", "us-east-1", "copy-2");
        assert!(first.added && !second.added && other.added);
        // Once nobody watches it, the next watcher adds it again.
        drop((first, second));
        assert!(hub.subscribe("", "us-east-1", "copy-1").added);
    }

    #[tokio::test]
    async fn shutdown_is_every_watchers_last_observation_and_a_later_watchers_first() {
        let hub = hub().await;
        let mut watcher = hub.subscribe("", "us-east-1", "copy-1");
        let is_shutdown = |o: &Option<Arc<Observation>>| {
            matches!(o.as_deref(), Some(Observation::Failing { error: Error::ShuttingDown }))
        };
        hub.shutdown.cancel();
        let told = tokio::time::timeout(Duration::from_secs(5), watcher.rx.wait_for(is_shutdown)).await;
        assert!(matches!(told, Ok(Ok(_))), "the watcher is told of the shutdown");
        // A snapshot first watched after the poller said so is told too.
        let later = hub.subscribe("", "us-east-1", "copy-2");
        assert!(is_shutdown(&later.rx.borrow()));
    }

    #[tokio::test]
    async fn a_poller_that_panics_tells_its_watchers_and_starts_again() {
        let hub = hub().await;
        let mut watcher = hub.subscribe("", "us-east-1", "copy-1");
        rounds_reach(&hub, 1).await;
        let poller = hub.pollers.lock().unwrap_or_else(|p| p.into_inner()).values().next().cloned().expect("a poller");
        poller.crash.store(true, std::sync::atomic::Ordering::Relaxed);
        // The watcher hears of it at once, as UNAVAILABLE.
        let told = tokio::time::timeout(
            Duration::from_secs(5),
            watcher
                .rx
                .wait_for(|o| matches!(o.as_deref(), Some(Observation::Failing { error: Error::Unavailable(_) }))),
        )
        .await;
        assert!(matches!(told, Ok(Ok(_))), "the watcher was told the poller stopped");
        // And the poller runs again for those who watch on.
        let before = hub.poll_rounds();
        rounds_reach(&hub, before + 2).await;
    }
}
