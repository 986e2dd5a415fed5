//! The progress hub: one poller per region polls every watched snapshot in batches, and any
//! number of watchers share what it sees through `tokio::sync::watch` channels. AWS calls per
//! round grow with the number of watched snapshots / 100, not with the number of watchers.

mod poller;
mod stream;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;

pub use stream::{Change, WatchEvent, WatchStream};

use crate::aws::{Accounts, AwsError};
use crate::config::WatchSettings;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::rds::{ClusterSnapshot, CopyState};

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
    /// Polling has failed for longer than the error budget.
    Failing {
        error: AwsError,
    },
}

type Slot = watch::Sender<Option<Arc<Observation>>>;

struct Entry {
    slot: Slot,
    watchers: usize,
    /// Spans of the latest watchers (a few), linked from the poll rounds that serve them.
    watcher_spans: std::collections::VecDeque<opentelemetry::trace::SpanContext>,
}

/// Watcher spans remembered per snapshot, and links per poll round: enough to find the
/// watchers from a round in a trace viewer without making rounds heavy.
const LINKS_PER_SNAPSHOT: usize = 4;
const LINKS_PER_ROUND: usize = 32;

/// One region's poller and the snapshots it watches.
struct Poller {
    region: String,
    entries: Mutex<HashMap<String, Entry>>,
    cancelled: Mutex<HashSet<String>>,
    wake: Notify,
}

impl Poller {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The watcher spans a poll round links to.
fn watcher_links(poller: &Poller) -> Vec<opentelemetry::trace::SpanContext> {
    poller.lock().values().flat_map(|e| e.watcher_spans.iter().cloned()).take(LINKS_PER_ROUND).collect()
}

/// Counters for tests and the benchmark.
#[derive(Debug, Default)]
pub struct HubStats {
    pub rounds: AtomicU64,
}

pub struct WatchHub {
    accounts: Arc<Accounts>,
    settings: WatchSettings,
    /// One poller per (credentials, region): see `Accounts::credentials_key`.
    pollers: Mutex<HashMap<(String, String), Arc<Poller>>>,
    streams: Arc<Semaphore>,
    shutdown: CancellationToken,
    pub stats: Arc<HubStats>,
    metrics: Arc<Metrics>,
}

/// A watcher's hold on a snapshot's observations; dropping it lets the snapshot leave the poll
/// set once nobody else watches it.
pub struct Subscription {
    poller: Arc<Poller>,
    id: String,
    rx: watch::Receiver<Option<Arc<Observation>>>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut entries = self.poller.lock();
        if let Some(entry) = entries.get_mut(&self.id) {
            entry.watchers -= 1;
            if entry.watchers == 0 {
                entries.remove(&self.id);
                self.poller.cancelled.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.id);
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
    pub fn new(
        accounts: Arc<Accounts>,
        settings: WatchSettings,
        shutdown: CancellationToken,
        metrics: Arc<Metrics>,
    ) -> WatchHub {
        let streams = Arc::new(Semaphore::new(settings.max_streams));
        WatchHub {
            accounts,
            settings,
            pollers: Mutex::new(HashMap::new()),
            streams,
            shutdown,
            stats: Arc::default(),
            metrics,
        }
    }

    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
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
    pub fn stream_permit(&self) -> Result<OwnedSemaphorePermit, Error> {
        self.streams.clone().try_acquire_owned().map_err(|_| Error::TooManyStreams(self.settings.max_streams))
    }

    fn poller(&self, account: &str, region: &str) -> Arc<Poller> {
        let key = (self.accounts.credentials_key(account), region.to_owned());
        let rds = self.accounts.for_snapshot_account(account);
        let mut pollers = self.pollers.lock().unwrap_or_else(|p| p.into_inner());
        pollers
            .entry(key)
            .or_insert_with(|| {
                let poller = Arc::new(Poller {
                    region: region.to_owned(),
                    entries: Mutex::new(HashMap::new()),
                    cancelled: Mutex::new(HashSet::new()),
                    wake: Notify::new(),
                });
                tokio::spawn(poller::run(
                    poller.clone(),
                    rds,
                    self.settings.clone(),
                    self.shutdown.clone(),
                    self.stats.clone(),
                    self.metrics.clone(),
                ));
                poller
            })
            .clone()
    }

    /// Watches snapshot `id` (lowercased) of `account` ("" for the gateway's own) in `region`.
    pub fn subscribe(&self, account: &str, region: &str, id: &str) -> Subscription {
        let id = id.to_ascii_lowercase();
        let poller = self.poller(account, region);
        let (rx, fresh) = {
            let mut entries = poller.lock();
            let entry = entries.entry(id.clone()).or_insert_with(|| Entry {
                slot: watch::channel(None).0,
                watchers: 0,
                watcher_spans: std::collections::VecDeque::new(),
            });
            entry.watchers += 1;
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
            (entry.slot.subscribe(), entry.slot.borrow().is_some())
        };
        if !fresh {
            poller.wake.notify_one();
        }
        Subscription { poller, id, rx }
    }

    /// The poller's observation of a snapshot if it is younger than the shortest poll interval.
    pub fn fresh(&self, account: &str, region: &str, id: &str) -> Option<ClusterSnapshot> {
        let key = (self.accounts.credentials_key(account), region.to_owned());
        let poller = self.pollers.lock().unwrap_or_else(|p| p.into_inner()).get(&key).cloned()?;
        let entries = poller.lock();
        let observation = entries.get(&id.to_ascii_lowercase())?.slot.borrow().clone()?;
        match &*observation {
            Observation::Present { snapshot, at, .. }
                if at.elapsed() < Duration::from_millis(self.settings.min_poll_interval_ms) =>
            {
                Some(ClusterSnapshot::clone(snapshot))
            }
            _ => None,
        }
    }

    /// Tells the watchers of a snapshot that snapgate cancelled its copy.
    pub fn record_cancelled(&self, snapshot: &ClusterSnapshot) {
        let id = snapshot.id.to_ascii_lowercase();
        let poller = self.poller(&snapshot.account, &snapshot.region);
        // Remembered only while someone watches: the poll that finds the snapshot gone then
        // reports it cancelled, not deleted.
        if let Some(entry) = poller.lock().get(&id) {
            poller.cancelled.lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone());
            entry.slot.send_replace(Some(Arc::new(Observation::Gone {
                last: Some(Arc::new(snapshot.clone())),
                cancelled: true,
                observed: SystemTime::now(),
            })));
        }
    }

    /// Opens a stream of events for a subscription whose first observation showed the copy.
    pub fn stream(
        &self,
        subscription: Subscription,
        first: Arc<Observation>,
        permit: OwnedSemaphorePermit,
        deadline: Option<tokio::time::Instant>,
    ) -> WatchStream {
        stream::spawn(stream::StreamTask {
            subscription,
            first,
            permit,
            deadline,
            heartbeat: Duration::from_secs(self.settings.heartbeat_secs),
            shutdown: self.shutdown.clone(),
        })
    }
}

/// The state an observation shows.
pub fn observed_state(observation: &Observation) -> Option<(CopyState, i32)> {
    match observation {
        Observation::Present { snapshot, .. } => Some((snapshot.state(), snapshot.percent_progress)),
        Observation::Gone { cancelled: true, .. } => Some((CopyState::Cancelled, 0)),
        Observation::Gone { .. } => Some((CopyState::Deleted, 0)),
        Observation::Failing { .. } => None,
    }
}

/// Makes the stats readable as plain numbers.
impl HubStats {
    pub fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::Relaxed)
    }
}
