//! Each caller's share of calls: a token bucket of calls per caller (one caller's flood empties
//! its own bucket and is refused with RESOURCE_EXHAUSTED and RetryInfo; every other caller's
//! calls go on), and `in_flight` turns at the gateway's work.
//!
//! With turns, a caller's unary calls past them wait (in order) for one of its own to end. A
//! rate alone lets a caller's burst (its whole bucket at once) fill the gateway's run queue, and
//! every other caller's call then waits behind all of it; with turns it waits behind at most
//! `in_flight` of them. A call that waits longer than the request timeout is refused
//! (RESOURCE_EXHAUSTED with RetryInfo).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{CallerBuckets, IDLE};
use crate::auth::Caller;
use crate::config::FairShareSettings;
use crate::error::Error;
use crate::metrics::Metrics;

pub(crate) struct CallShare {
    settings: FairShareSettings,
    buckets: CallerBuckets,
    /// Each caller's turns at the gateway's work, made with its `in_flight` on first use.
    turns: moka::sync::Cache<String, Arc<Semaphore>>,
    /// How long a call waits for one of its caller's turns.
    wait: Duration,
    metrics: Arc<Metrics>,
}

/// When a call refused for want of a turn may come back: a turn frees as soon as one of the
/// caller's calls ends, but these have been running for the whole request timeout.
const TURN_RETRY: Duration = Duration::from_secs(1);

impl CallShare {
    /// `wait` bounds a call's wait for one of its caller's turns (the request timeout).
    pub(crate) fn new(settings: FairShareSettings, wait: Duration, metrics: Arc<Metrics>) -> CallShare {
        let turns = moka::sync::Cache::builder().max_capacity(100_000).time_to_idle(IDLE).build();
        CallShare { settings, buckets: CallerBuckets::new(), turns, wait, metrics }
    }

    /// Takes a call from `caller`'s bucket, or refuses it with when to come back.
    pub(crate) fn admit(&self, caller: &Caller) -> Result<(), Error> {
        self.buckets.take(&caller.id, self.settings.calls_of(&caller.id, &caller.groups)).map_err(|wait| {
            self.metrics.call_shed("fair_share");
            tracing::debug!(caller = caller.id, ?wait, "call over the caller's share");
            Error::OverShare { caller: caller.id.clone(), of: "calls", retry_after: wait }
        })
    }

    /// One of `caller`'s turns, at once or after waiting for one of its calls to end.
    pub(crate) async fn turn(&self, caller: &Caller) -> Result<OwnedSemaphorePermit, Error> {
        let turns = self.turns.get_with_by_ref(&caller.id, || {
            let limit = self.settings.in_flight_of(&caller.id, &caller.groups);
            Arc::new(Semaphore::new(usize::try_from(limit).unwrap_or(usize::MAX).min(Semaphore::MAX_PERMITS)))
        });
        if let Ok(turn) = turns.clone().try_acquire_owned() {
            return Ok(turn);
        }
        self.metrics.call_waited("caller_in_flight");
        match tokio::time::timeout(self.wait, turns.acquire_owned()).await {
            // The semaphore is never closed.
            Ok(Ok(turn)) => Ok(turn),
            _ => {
                self.metrics.call_shed("caller_in_flight");
                tracing::debug!(caller = caller.id, "call waited past the request timeout for a turn");
                Err(Error::OverShare { caller: caller.id.clone(), of: "calls in progress", retry_after: TURN_RETRY })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CallerShare;

    fn caller(id: &str, groups: &[&str]) -> Caller {
        Caller::with_groups(id, groups)
    }

    #[test]
    fn each_caller_has_its_own_bucket_and_overrides_apply() {
        let settings = FairShareSettings {
            calls_per_sec: 1.0,
            burst: 2,
            overrides: vec![CallerShare::for_id("backup", true, 1.0, 5)],
            ..FairShareSettings::default()
        };
        let share = CallShare::new(settings, Duration::from_secs(1), Metrics::new());
        let flood = caller("flood", &[]);
        assert!(share.admit(&flood).is_ok() && share.admit(&flood).is_ok());
        let Err(Error::OverShare { retry_after, .. }) = share.admit(&flood) else { panic!("the third is over") };
        assert!(retry_after <= Duration::from_secs(1), "{retry_after:?}");
        // Another caller is untouched by the first one's flood.
        assert!(share.admit(&caller("quiet", &[])).is_ok());
        let backup = caller("dr-runner", &["backup"]);
        for _ in 0..5 {
            assert!(share.admit(&backup).is_ok());
        }
        assert!(share.admit(&backup).is_err());
    }
}
