//! The pace of AWS calls per account and region (`aws.rate_limit_per_sec`, `rate_limit_burst`).
//! One gateway process keeps it in a token bucket of its own. Replicas sharing a PostgreSQL
//! store hold it together: one bucket per account and region in the database, from which a
//! replica *reserves* tokens — one statement for all of its calls waiting at that moment (at most
//! the burst), each token with the time it is due by the bucket's refill, in the order replicas
//! asked: the bucket may go into debt (up to five seconds of the pace beyond the burst), which
//! callers wait out locally, so a busy fleet makes one round trip per batch and never polls.
//! When the bucket is more than half full a replica also takes a quarter second's worth ahead,
//! so a quiet fleet makes no round trip per call. The fleet's calls so keep to the configured
//! pace whatever the number of replicas. A replica that dies holds at most one batch (tokens
//! drawn ahead and not spent lapse within a quarter second), so the others have the whole rate
//! again within `burst / rate` seconds. Should the database not answer, the replica paces
//! itself with a bucket of its own until it answers again (logged).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use snapgate_domain::TokenBucket;
use tokio::time::Instant;

use crate::metrics::Metrics;

/// What the fleet's shared bucket granted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Draw {
    /// Tokens reserved: each is one AWS call. The k-th is due once the bucket, which held
    /// `available` before the draw, has refilled to k (now, for k <= available).
    pub granted: u32,
    /// Tokens in the bucket before this draw (fractional; below zero, a debt).
    pub available: f64,
}

/// How far into debt the fleet's bucket may go, in seconds of the pace beyond the burst.
pub(crate) const DEBT_SECS: f64 = 5.0;

/// A bucket kept for the fleet (the store, on PostgreSQL).
pub(crate) trait FleetBudget: Send + Sync {
    /// Reserves `want` tokens of the bucket of `scope` (refilled at `rate` a second up to
    /// `burst`), or none when that would take it beyond its debt; when it is more than half
    /// full, up to `ahead` of the tokens there now.
    fn draw(&self, scope: &str, want: u32, ahead: u32, rate: f64, burst: u32) -> BoxFuture<'_, Result<Draw, String>>;
}

/// How long tokens drawn ahead stay this replica's.
const HELD_FOR: Duration = Duration::from_millis(250);

/// The window of `snapgate_aws_budget_share`.
const SHARE_WINDOW: Duration = Duration::from_secs(10);

/// The pace of one account's calls, region by region.
pub(crate) struct Pacer {
    rate: f64,
    burst: u32,
    /// The account, as the fleet's bucket and the metrics name it.
    account: String,
    fleet: Option<Arc<dyn FleetBudget>>,
    lanes: Mutex<HashMap<String, Arc<Lane>>>,
    metrics: Arc<Metrics>,
}

/// One region's pace.
struct Lane {
    region: String,
    /// This process's bucket: the pace itself without a fleet, the fallback with one.
    local: TokenBucket,
    /// Tokens reserved from the fleet's bucket and not yet spent, by when each is due.
    held: tokio::sync::Mutex<VecDeque<Instant>>,
    /// Calls waiting for a token here now.
    waiting: AtomicUsize,
    /// Tokens this replica drew lately, for its share.
    drawn: Mutex<VecDeque<(Instant, u32)>>,
}

impl Pacer {
    pub(crate) fn new(
        rate: f64,
        burst: u32,
        account: String,
        fleet: Option<Arc<dyn FleetBudget>>,
        metrics: Arc<Metrics>,
    ) -> Pacer {
        Pacer { rate, burst: burst.max(1), account, fleet, lanes: Mutex::new(HashMap::new()), metrics }
    }

    fn lane(&self, region: &str) -> Arc<Lane> {
        let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        lanes
            .entry(region.to_owned())
            .or_insert_with(|| {
                Arc::new(Lane {
                    region: region.to_owned(),
                    local: TokenBucket::new(self.rate, self.burst, Instant::now().into_std()),
                    held: tokio::sync::Mutex::new(VecDeque::new()),
                    waiting: AtomicUsize::new(0),
                    drawn: Mutex::new(VecDeque::new()),
                })
            })
            .clone()
    }

    /// Waits for `region`'s turn to call AWS. The clock is tokio's, so tests can pause it.
    pub(crate) async fn turn(&self, region: &str) {
        let lane = self.lane(region);
        match &self.fleet {
            None => local_turn(&lane).await,
            Some(fleet) => self.fleet_turn(&lane, fleet.as_ref()).await,
        }
    }

    async fn fleet_turn(&self, lane: &Lane, fleet: &dyn FleetBudget) {
        lane.waiting.fetch_add(1, Ordering::AcqRel);
        // One draw at a time per lane; the lock is fair, so calls go in the order they came,
        // each waiting (holding it) until its token is due.
        let mut held = lane.held.lock().await;
        let scope = format!("{}/{}", self.account, lane.region);
        let ahead = (self.rate / 4.0).floor().clamp(0.0, f64::from(self.burst)) as u32;
        loop {
            let now = Instant::now();
            // A token drawn ahead that nobody took lapses.
            while held.front().is_some_and(|due| now > *due + HELD_FOR) {
                held.pop_front();
            }
            if let Some(due) = held.pop_front() {
                tokio::time::sleep_until(due).await;
                break;
            }
            let want = u32::try_from(lane.waiting.load(Ordering::Acquire)).unwrap_or(u32::MAX).clamp(1, self.burst);
            match fleet.draw(&scope, want, want.max(ahead), self.rate, self.burst).await {
                Ok(draw) if draw.granted > 0 => {
                    let now = Instant::now();
                    for k in 1..=draw.granted {
                        let behind = (f64::from(k) - draw.available).max(0.0) / self.rate;
                        held.push_back(now + Duration::from_secs_f64(behind.min(3600.0)));
                    }
                    self.drew(lane, draw.granted);
                }
                Ok(draw) => {
                    // The bucket is as far in debt as it may go: wait until it could take this
                    // batch.
                    let floor = -(f64::from(self.burst) + self.rate * DEBT_SECS);
                    let short = (floor + f64::from(want) - draw.available).max(0.0);
                    let wait = (short / self.rate + 0.002).min(60.0);
                    tokio::time::sleep(Duration::from_secs_f64(wait)).await;
                }
                Err(error) => {
                    tracing::warn!(%error, region = %lane.region, "the fleet's AWS budget cannot be drawn from; pacing this replica alone");
                    local_turn(lane).await;
                    break;
                }
            }
        }
        drop(held);
        lane.waiting.fetch_sub(1, Ordering::AcqRel);
    }

    /// Counts tokens this replica drew, and its share of the fleet's budget over the window.
    fn drew(&self, lane: &Lane, tokens: u32) {
        let now = Instant::now();
        let mut drawn = lane.drawn.lock().unwrap_or_else(|p| p.into_inner());
        drawn.push_back((now, tokens));
        while drawn.front().is_some_and(|(at, _)| now.duration_since(*at) > SHARE_WINDOW) {
            drawn.pop_front();
        }
        let total: u32 = drawn.iter().map(|(_, n)| n).sum();
        let budget = self.rate * SHARE_WINDOW.as_secs_f64() + f64::from(self.burst);
        self.metrics.aws_budget_share(&self.account, &lane.region, (f64::from(total) / budget).min(1.0));
    }
}

async fn local_turn(lane: &Lane) {
    let wait = lane.local.reserve(Instant::now().into_std());
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fleet's bucket, in memory: what PostgreSQL's statement does, on tokio's clock.
    struct Shared {
        bucket: Mutex<Option<(f64, Instant)>>,
        draws: AtomicUsize,
        fail: std::sync::atomic::AtomicBool,
    }

    impl FleetBudget for Shared {
        fn draw(&self, _: &str, want: u32, ahead: u32, rate: f64, burst: u32) -> BoxFuture<'_, Result<Draw, String>> {
            Box::pin(async move {
                // A round trip: calls that come meanwhile queue behind this one.
                tokio::task::yield_now().await;
                self.draws.fetch_add(1, Ordering::SeqCst);
                if self.fail.load(Ordering::SeqCst) {
                    return Err("the database is down".into());
                }
                let now = Instant::now();
                let mut bucket = self.bucket.lock().unwrap();
                let (tokens, at) = bucket.unwrap_or((f64::from(burst), now));
                let available = (tokens + now.duration_since(at).as_secs_f64() * rate).min(f64::from(burst));
                let floor = -(f64::from(burst) + rate * DEBT_SECS);
                let granted = if available - f64::from(want) < floor {
                    0
                } else if available > f64::from(burst) / 2.0 {
                    want.max((available.floor() as u32).min(ahead))
                } else {
                    want
                };
                *bucket = Some((available - f64::from(granted), now));
                Ok(Draw { granted, available })
            })
        }
    }

    fn shared() -> Arc<Shared> {
        Arc::new(Shared { bucket: Mutex::new(None), draws: AtomicUsize::new(0), fail: Default::default() })
    }

    fn replica(fleet: &Arc<Shared>) -> Arc<Pacer> {
        let fleet: Arc<dyn FleetBudget> = fleet.clone();
        Arc::new(Pacer::new(4.0, 4, "123456789012".into(), Some(fleet), Metrics::new()))
    }

    /// Three replicas' calls, as fast as they come, over 10 s of tokio's clock.
    async fn calls_in(pacers: &[Arc<Pacer>], window: Duration) -> Vec<usize> {
        let end = Instant::now() + window;
        let mut counts = Vec::new();
        let mut tasks = Vec::new();
        for pacer in pacers {
            for _ in 0..8 {
                let pacer = pacer.clone();
                tasks.push(tokio::spawn(async move {
                    let mut n = 0;
                    loop {
                        pacer.turn("us-east-1").await;
                        if Instant::now() >= end {
                            return n;
                        }
                        n += 1;
                    }
                }));
            }
        }
        for task in tasks {
            counts.push(task.await.unwrap());
        }
        counts
    }

    #[tokio::test(start_paused = true)]
    async fn three_replicas_keep_to_one_pace_together() {
        let fleet = shared();
        let pacers: Vec<_> = (0..3).map(|_| replica(&fleet)).collect();
        let calls: usize = calls_in(&pacers, Duration::from_secs(10)).await.iter().sum();
        // 4 a second for 10 s and the burst of 4: 44, where three alone would make 132.
        assert!((40..=44).contains(&calls), "{calls} calls in 10 s");
        // Three replicas wanting every token: a draw per call and replica at most.
        let draws = fleet.draws.load(Ordering::SeqCst);
        assert!(draws <= 3 * calls, "{draws} draws for {calls} calls");
    }

    #[tokio::test(start_paused = true)]
    async fn calls_that_come_together_are_served_by_one_draw() {
        let fleet = shared();
        let pacer = {
            let fleet: Arc<dyn FleetBudget> = fleet.clone();
            Arc::new(Pacer::new(40.0, 40, "123456789012".into(), Some(fleet), Metrics::new()))
        };
        let calls: Vec<_> = (0..4)
            .map(|_| {
                let pacer = pacer.clone();
                tokio::spawn(async move { pacer.turn("us-east-1").await })
            })
            .collect();
        for call in calls {
            call.await.unwrap();
        }
        let draws = fleet.draws.load(Ordering::SeqCst);
        assert!(draws <= 2, "four calls at once, {draws} draws");
        // A quiet replica's calls within a quarter second take tokens drawn ahead (ten here).
        tokio::time::advance(Duration::from_secs(2)).await;
        for _ in 0..5 {
            pacer.turn("us-east-1").await;
        }
        assert_eq!(fleet.draws.load(Ordering::SeqCst), draws + 1, "five calls, one draw");
        // The five left ahead lapse: the next call after a pause draws again.
        tokio::time::advance(Duration::from_secs(1)).await;
        pacer.turn("us-east-1").await;
        assert_eq!(fleet.draws.load(Ordering::SeqCst), draws + 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_replica_gone_leaves_the_whole_pace_to_the_others() {
        let fleet = shared();
        let pacers: Vec<_> = (0..3).map(|_| replica(&fleet)).collect();
        calls_in(&pacers, Duration::from_secs(5)).await;
        // One replica stops calling (killed): the two left have the whole pace within a draw.
        let calls: usize = calls_in(&pacers[..2], Duration::from_secs(10)).await.iter().sum();
        assert!((39..=44).contains(&calls), "{calls} calls in 10 s by two replicas");
    }

    #[tokio::test(start_paused = true)]
    async fn a_database_that_does_not_answer_leaves_each_replica_its_own_pace() {
        let fleet = shared();
        fleet.fail.store(true, Ordering::SeqCst);
        let calls: usize = calls_in(&[replica(&fleet)], Duration::from_secs(10)).await.iter().sum();
        assert!((40..=44).contains(&calls), "{calls} calls in 10 s");
    }

    #[tokio::test(start_paused = true)]
    async fn one_process_paces_itself() {
        let pacer = Arc::new(Pacer::new(4.0, 4, "own".into(), None, Metrics::new()));
        let calls: usize = calls_in(&[pacer], Duration::from_secs(10)).await.iter().sum();
        assert!((40..=44).contains(&calls), "{calls} calls in 10 s");
    }
}
