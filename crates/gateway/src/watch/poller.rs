//! One region's poll loop: describe every watched snapshot in batches, publish what changed,
//! and pace itself — quick after a change or a new watcher, slower while nothing moves, with
//! jitter so replicas do not poll in step, and backing off while AWS throttles or fails.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{Observation, Poller, observed_state};
use crate::aws::{AwsErrorKind, Rds};
use crate::config::WatchSettings;
use crate::error::Error;
use crate::metrics::Metrics;
use snapgate_domain::ClusterSnapshot;

/// After a wake-up, wait this long so that watchers arriving together share one round.
const COALESCE: Duration = Duration::from_millis(20);

pub(super) async fn run(
    poller: Arc<Poller>,
    rds: Arc<Rds>,
    settings: WatchSettings,
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
    fleet: Option<Arc<super::Fleet>>,
) {
    let min = Duration::from_millis(settings.min_poll_interval_ms);
    let max = Duration::from_millis(settings.max_poll_interval_ms);
    let budget = Duration::from_secs(settings.error_budget_secs);
    let mut interval = min;
    let mut failing_since: Option<Instant> = None;
    loop {
        let idle = poller.idle();
        let woken = if idle {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = poller.wake.notified() => true,
            }
        } else {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = poller.wake.notified() => true,
                () = tokio::time::sleep(jitter(interval)) => false,
            }
        };
        if woken {
            interval = min;
            tokio::time::sleep(COALESCE).await;
            // Woken during the last round by readers it served (their snapshots were in it):
            // nothing is stale, so no round of its own — unless another replica asked for one
            // or recorded one.
            let asked = poller.asked.swap(false, std::sync::atomic::Ordering::AcqRel);
            if !asked && poller.all_fresh(super::read_freshness(&settings)) {
                continue;
            }
        }
        // The round's number is taken with its ids: a reader waits for a round that began
        // after it joined (see `WatchHub::read`).
        let round = poller.rounds.borrow().0 + 1;
        let mut ids: Vec<String> = poller.lock().keys().map(|id| id.to_string()).collect();
        poller.rounds.send_modify(|r| r.0 = round);
        // A fleet's replica with nothing of its own may still hold the poll for the others.
        if ids.is_empty() && fleet.is_none() {
            poller.rounds.send_modify(|r| {
                r.1 = round;
                r.2 = None;
            });
            continue;
        }
        ids.sort();
        let span = tracing::info_span!(
            "poll_round",
            otel.name = "watch.poll_round",
            otel.status_code = tracing::field::Empty,
            cloud.region = %poller.region,
            snapshots = ids.len(),
            changed = tracing::field::Empty,
        );
        // Its own trace, linked to (some of) the watchers it serves.
        let _ = tracing_opentelemetry::OpenTelemetrySpanExt::set_parent(&span, opentelemetry::Context::new());
        for watcher in super::watcher_links(&poller) {
            tracing_opentelemetry::OpenTelemetrySpanExt::add_link(&span, watcher);
        }
        #[cfg(test)]
        if poller.crash.swap(false, std::sync::atomic::Ordering::Relaxed) {
            panic!("a poller crash the test asked for");
        }
        let started = Instant::now();
        let outcome = match &fleet {
            None => poll(&poller, &rds, &ids).instrument(span.clone()).await.map(|(changed, _)| changed),
            Some(fleet) => {
                let freshness = super::read_freshness(&settings);
                super::fleet::round(&poller, &rds, fleet, ids, freshness, &metrics).instrument(span.clone()).await
            }
        };
        match &outcome {
            Ok(changed) => span.record("changed", changed),
            Err(_) => span.record("otel.status_code", "ERROR"),
        };
        metrics.poll_round(started.elapsed());
        let failure = outcome.as_ref().err().cloned();
        poller.rounds.send_modify(|r| {
            r.1 = round;
            r.2 = failure;
        });
        match outcome {
            Ok(changed) => {
                failing_since = None;
                interval = if changed { min } else { (interval.mul_f64(1.5)).min(max) };
            }
            Err(error) => {
                let since = *failing_since.get_or_insert_with(Instant::now);
                tracing::warn!(%error, region = %poller.region, "poll round failed; backing off");
                // Throttling means the account's shared bucket is empty: back off harder.
                let factor = if error.kind == AwsErrorKind::Throttled { 3.0 } else { 2.0 };
                interval = interval.mul_f64(factor).min(max);
                if since.elapsed() >= budget {
                    publish_all(&poller, Observation::Failing { error: Error::Aws(error) });
                }
            }
        }
    }
}

/// ±10 % so that replicas and regions drift apart.
fn jitter(interval: Duration) -> Duration {
    interval.mul_f64(0.9 + rand::random::<f64>() * 0.2)
}

/// One round: returns whether anything changed, and what it saw of each snapshot. Each batch
/// of ids (one describe) is published as soon as AWS answers it, observed at that moment: at
/// RDS's pace a round of 10,000 snapshots is a hundred describes over several seconds, and a
/// watcher of the first batch is not kept waiting for the last one (nor are 100,000 events sent
/// in one burst at the round's end).
pub(super) async fn poll(
    poller: &Poller,
    rds: &Rds,
    ids: &[String],
) -> Result<(bool, Vec<(String, Observation)>), crate::aws::AwsError> {
    let mut changed = false;
    let mut seen = Vec::with_capacity(ids.len());
    for batch in ids.chunks(crate::aws::MAX_FILTER_VALUES) {
        changed |= poll_batch(poller, rds, batch, &mut seen).await?;
    }
    Ok((changed, seen))
}

/// Describes one batch of ids, publishes what it saw and adds it to `seen`.
async fn poll_batch(
    poller: &Poller,
    rds: &Rds,
    ids: &[String],
    seen: &mut Vec<(String, Observation)>,
) -> Result<bool, crate::aws::AwsError> {
    let asked = Instant::now();
    let found = rds.describe_cluster_snapshots_by_ids(&poller.region, ids).await?;
    let now = SystemTime::now();
    let at = Instant::now();
    let mut by_id: HashMap<String, ClusterSnapshot> =
        found.into_iter().map(|s| (s.id.to_ascii_lowercase(), s)).collect();
    let mut changed = false;
    for id in ids {
        let observation = match by_id.remove(id) {
            Some(snapshot) => Observation::Present { snapshot: Arc::new(snapshot), observed: now, at },
            None => {
                // Absent from the batch: confirm by identifier before reporting it gone. This is
                // also the path for engines whose API ignores Filters (Neptune's reference says
                // they are not supported).
                let gone = || {
                    let cancelled = poller.cancelled.lock().unwrap_or_else(|p| p.into_inner()).contains(id);
                    Observation::Gone { last: None, cancelled, observed: now }
                };
                match rds.describe_cluster_snapshot(&poller.region, id).await {
                    Ok(Some(snapshot)) => Observation::Present { snapshot: Arc::new(snapshot), observed: now, at },
                    Ok(None) => gone(),
                    Err(e) if e.kind == AwsErrorKind::NotFound => gone(),
                    Err(e) => return Err(e),
                }
            }
        };
        seen.push((id.clone(), observation.clone()));
        changed |= publish(poller, id, observation, asked);
    }
    Ok(changed)
}

/// Publishes an observation of a round that asked AWS at `asked` if it differs in state or
/// progress from the last one (or refreshes the timestamp silently). An observation newer than
/// the round's question stands (a copy started while the round was under way: what the round
/// saw is of the snapshot deleted before it). Returns whether watchers were told.
pub(super) fn publish(poller: &Poller, id: &str, observation: Observation, asked: Instant) -> bool {
    let entries = poller.lock();
    let Some(entry) = entries.get(id) else { return false };
    let mut told = false;
    entry.slot.send_if_modified(|current| {
        if matches!(current.as_deref(), Some(Observation::Present { at, .. }) if *at > asked) {
            return false;
        }
        let differs = match current.as_deref() {
            None => true,
            Some(Observation::Gone { .. }) => false,
            Some(old) => observed_state(old) != observed_state(&observation),
        };
        let keep_last = match (&observation, current.as_deref()) {
            (Observation::Gone { cancelled, observed, .. }, Some(Observation::Present { snapshot, .. })) => {
                Some(Observation::Gone { last: Some(snapshot.clone()), cancelled: *cancelled, observed: *observed })
            }
            _ => None,
        };
        if matches!(current.as_deref(), Some(Observation::Gone { .. })) {
            return false;
        }
        *current = Some(Arc::new(keep_last.unwrap_or(observation)));
        told = differs;
        differs
    });
    told
}

pub(super) fn publish_all(poller: &Poller, observation: Observation) {
    let observation = Arc::new(observation);
    for entry in poller.lock().values() {
        entry.slot.send_replace(Some(observation.clone()));
    }
}
