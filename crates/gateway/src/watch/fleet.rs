//! One poller per account and region for replicas sharing a PostgreSQL store. Every replica's
//! poller goes on with its own rounds, watchers and readers as when alone, but a round is one of
//! two things:
//! - on the replica holding the region's lease (`watch.poll_lease_secs`, renewed every round):
//!   a describe of what every replica watches — its own set and the sets the others keep in the
//!   store — recorded in the store for the others, who are notified;
//! - on the others: their set kept in the store, and the latest observations read from it. When
//!   what they hold is stale or missing (a new watcher, a reader), they ask the holder for a
//!   round and wait for it (at most `ASK_WAIT`) before reading.
//!
//! The holder that dies stops renewing its lease; the first replica to look after it lapses
//! takes it (within a lease and one poll interval). Watchers keep their streams on every replica
//! throughout: they never knew which replica asked AWS. Should the store not answer, a replica
//! polls alone (logged) until it does.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::{Observation, Poller};
use crate::aws::{AwsError, AwsErrorKind, Rds};
use crate::metrics::Metrics;
use snapgate_domain::ClusterSnapshot;

/// The fleet's pollers, as the store keeps them (PostgreSQL).
pub(crate) trait FleetPolls: Send + Sync {
    /// Takes or keeps the lease of `scope` for this replica for `lease`; whether it holds it.
    fn hold<'a>(&'a self, scope: &'a str, lease: Duration) -> BoxFuture<'a, Result<bool, String>>;
    /// Keeps `ids` as what this replica watches in `scope`, for `lease`; others it had go.
    fn register<'a>(&'a self, scope: &'a str, ids: &'a [String], lease: Duration) -> BoxFuture<'a, Result<(), String>>;
    /// What the live replicas watch in `scope`.
    fn watched<'a>(&'a self, scope: &'a str) -> BoxFuture<'a, Result<Vec<String>, String>>;
    /// Leaves a round's observations (id, encoded) for the others, and tells them.
    fn record<'a>(&'a self, scope: &'a str, observations: &'a [(String, String)]) -> BoxFuture<'a, Result<(), String>>;
    /// The latest observations of `ids`: (id, encoded, age in milliseconds).
    #[allow(clippy::type_complexity)]
    fn observations<'a>(
        &'a self,
        scope: &'a str,
        ids: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<(String, String, i64)>, String>>;
    /// Asks the holder of `scope` for a round now.
    fn ask<'a>(&'a self, scope: &'a str) -> BoxFuture<'a, Result<(), String>>;
}

/// The hub's link to the fleet.
pub(crate) struct Fleet {
    pub polls: Arc<dyn FleetPolls>,
    pub lease: Duration,
}

/// How long a replica that asked the holder for a round waits for it before reading anyway.
const ASK_WAIT: Duration = Duration::from_secs(3);

/// A snapshot as the store keeps an observation of it.
#[derive(Debug, Serialize, Deserialize)]
struct Wire {
    arn: String,
    id: String,
    region: String,
    account: String,
    status: String,
    percent_progress: i32,
    source_arn: Option<String>,
    cluster_id: String,
    engine: String,
    engine_version: String,
    allocated_storage_gib: i32,
    encrypted: bool,
    kms_key_id: Option<String>,
    create_ms: Option<i64>,
    cluster_create_ms: Option<i64>,
    tags: Vec<(String, String)>,
    snapshot_type: String,
}

/// An observation as the store keeps it.
#[derive(Debug, Serialize, Deserialize)]
enum Recorded {
    Present(Wire),
    Gone { last: Option<Wire>, cancelled: bool },
}

fn ms(t: Option<SystemTime>) -> Option<i64> {
    t.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok()).and_then(|d| i64::try_from(d.as_millis()).ok())
}

fn time(ms: Option<i64>) -> Option<SystemTime> {
    ms.and_then(|ms| u64::try_from(ms).ok()).map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
}

impl From<&ClusterSnapshot> for Wire {
    fn from(s: &ClusterSnapshot) -> Wire {
        Wire {
            arn: s.arn.clone(),
            id: s.id.clone(),
            region: s.region.clone(),
            account: s.account.clone(),
            status: s.status.clone(),
            percent_progress: s.percent_progress,
            source_arn: s.source_arn.clone(),
            cluster_id: s.cluster_id.clone(),
            engine: s.engine.clone(),
            engine_version: s.engine_version.clone(),
            allocated_storage_gib: s.allocated_storage_gib,
            encrypted: s.encrypted,
            kms_key_id: s.kms_key_id.clone(),
            create_ms: ms(s.create_time),
            cluster_create_ms: ms(s.cluster_create_time),
            tags: s.tags.clone(),
            snapshot_type: s.snapshot_type.clone(),
        }
    }
}

impl From<Wire> for ClusterSnapshot {
    fn from(w: Wire) -> ClusterSnapshot {
        ClusterSnapshot {
            arn: w.arn,
            id: w.id,
            region: w.region,
            account: w.account,
            status: w.status,
            percent_progress: w.percent_progress,
            source_arn: w.source_arn,
            cluster_id: w.cluster_id,
            engine: w.engine,
            engine_version: w.engine_version,
            allocated_storage_gib: w.allocated_storage_gib,
            encrypted: w.encrypted,
            kms_key_id: w.kms_key_id,
            create_time: time(w.create_ms),
            cluster_create_time: time(w.cluster_create_ms),
            tags: w.tags,
            snapshot_type: w.snapshot_type,
        }
    }
}

/// What the store keeps of an observation (a failing poll is each replica's own to tell).
fn encode(observation: &Observation) -> Option<String> {
    let recorded = match observation {
        Observation::Present { snapshot, .. } => Recorded::Present(Wire::from(snapshot.as_ref())),
        Observation::Gone { last, cancelled, .. } => {
            Recorded::Gone { last: last.as_deref().map(Wire::from), cancelled: *cancelled }
        }
        Observation::Failing { .. } => return None,
    };
    serde_json::to_string(&recorded).ok()
}

/// An observation read from the store, `age` old; `cancelled_here` when this replica cancelled
/// the copy.
fn decode(body: &str, age: Duration, cancelled_here: bool) -> Option<Observation> {
    let observed = SystemTime::now().checked_sub(age)?;
    let at = Instant::now().checked_sub(age)?;
    Some(match serde_json::from_str::<Recorded>(body).ok()? {
        Recorded::Present(wire) => Observation::Present { snapshot: Arc::new(wire.into()), observed, at },
        Recorded::Gone { last, cancelled } => Observation::Gone {
            last: last.map(|w| Arc::new(ClusterSnapshot::from(w))),
            cancelled: cancelled || cancelled_here,
            observed,
        },
    })
}

fn unavailable(message: String) -> AwsError {
    AwsError {
        kind: AwsErrorKind::Unavailable,
        action: "DescribeDBClusterSnapshots",
        code: None,
        message: format!("the fleet's observations cannot be read: {message}"),
        request_id: None,
    }
}

/// One round of a fleet's poller: returns whether anything changed here.
pub(super) async fn round(
    poller: &Poller,
    rds: &Rds,
    fleet: &Fleet,
    ids: Vec<String>,
    freshness: Duration,
    metrics: &Metrics,
) -> Result<bool, AwsError> {
    register(poller, fleet, &ids).await;
    let holds = match fleet.polls.hold(&poller.scope, fleet.lease).await {
        Ok(holds) => holds,
        Err(error) => {
            tracing::warn!(%error, region = %poller.region, "the fleet's poll lease cannot be read; polling alone");
            true
        }
    };
    metrics.poll_leader(&poller.region, holds);
    if holds {
        let mut all = ids;
        match fleet.polls.watched(&poller.scope).await {
            Ok(others) => all.extend(others),
            Err(error) => {
                tracing::warn!(%error, region = %poller.region, "the fleet's watched snapshots cannot be read")
            }
        }
        all.sort();
        all.dedup();
        if all.is_empty() {
            return Ok(false);
        }
        let (changed, seen) = super::poller::poll(poller, rds, &all).await?;
        let recorded: Vec<(String, String)> =
            seen.iter().filter_map(|(id, o)| encode(o).map(|body| (id.clone(), body))).collect();
        if let Err(error) = fleet.polls.record(&poller.scope, &recorded).await {
            tracing::warn!(%error, region = %poller.region, "a poll round could not be recorded for the fleet");
        }
        return Ok(changed);
    }
    if ids.is_empty() {
        return Ok(false);
    }
    if !poller.all_fresh(freshness) {
        // Something here is new or stale: the holder polls now, and this replica reads then.
        let recorded = poller.observed.notified();
        tokio::pin!(recorded);
        recorded.as_mut().enable();
        match fleet.polls.ask(&poller.scope).await {
            Ok(()) => {
                let _ = tokio::time::timeout(ASK_WAIT, recorded).await;
            }
            Err(error) => tracing::warn!(%error, region = %poller.region, "the fleet's poll holder cannot be asked"),
        }
    }
    let rows = fleet.polls.observations(&poller.scope, &ids).await.map_err(unavailable)?;
    metrics.fleet_observations(rows.len());
    let cancelled = poller.cancelled.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut changed = false;
    for (id, body, age_ms) in rows {
        let age = Duration::from_millis(u64::try_from(age_ms).unwrap_or(0));
        let Some(observation) = decode(&body, age, cancelled.contains(&id)) else { continue };
        let asked = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
        changed |= super::poller::publish(poller, &id, observation, asked);
    }
    Ok(changed)
}

/// Keeps this replica's set in the store when it changed, or half a lease after it was kept.
async fn register(poller: &Poller, fleet: &Fleet, ids: &[String]) {
    let due = {
        let kept = poller.registered.lock().unwrap_or_else(|p| p.into_inner());
        kept.0 != ids || kept.1.is_none_or(|at| at.elapsed() >= fleet.lease / 2)
    };
    if !due {
        return;
    }
    match fleet.polls.register(&poller.scope, ids, fleet.lease).await {
        Ok(()) => *poller.registered.lock().unwrap_or_else(|p| p.into_inner()) = (ids.to_vec(), Some(Instant::now())),
        Err(error) => {
            tracing::warn!(%error, region = %poller.region, "this replica's watched snapshots cannot be kept")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_observation_reads_back_as_it_was_recorded() {
        let snapshot = ClusterSnapshot {
            arn: "arn:aws:rds:us-east-1:123456789012:cluster-snapshot:copy".into(),
            id: "copy".into(),
            status: "copying".into(),
            percent_progress: 40,
            create_time: Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123)),
            tags: vec![("team".into(), "billing".into())],
            ..Default::default()
        };
        let present = Observation::Present {
            snapshot: Arc::new(snapshot.clone()),
            observed: SystemTime::now(),
            at: Instant::now(),
        };
        let body = encode(&present).unwrap();
        match decode(&body, Duration::from_millis(300), false).unwrap() {
            Observation::Present { snapshot: back, at, .. } => {
                assert_eq!(*back, snapshot);
                assert!(at.elapsed() >= Duration::from_millis(300), "as old as the store says");
            }
            other => panic!("{other:?}"),
        }
        let gone = Observation::Gone { last: Some(Arc::new(snapshot)), cancelled: false, observed: SystemTime::now() };
        let body = encode(&gone).unwrap();
        assert!(matches!(decode(&body, Duration::ZERO, true), Some(Observation::Gone { cancelled: true, .. })));
        let failing = Observation::Failing { error: crate::error::Error::ShuttingDown };
        assert!(encode(&failing).is_none(), "each replica tells its own failures");
        assert!(decode("not json", Duration::ZERO, false).is_none());
    }
}
