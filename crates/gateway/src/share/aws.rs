//! Each caller's share of the AWS budget. The gateway paces its calls per account and region
//! (a token bucket, first come first served); without shares, one caller's burst of fresh reads
//! or admissions of distinct sources queues every other caller's AWS call behind it.
//!
//! Two limits, both keyed by caller:
//! - a token bucket of AWS calls its requests may cause (`fair_share.aws_calls_per_sec`,
//!   `aws_burst`, overridable per principal or group); past it the request is refused at once
//!   with RESOURCE_EXHAUSTED and RetryInfo, before any AWS call;
//! - turns at a region: at most `aws_in_flight` of a caller's AWS calls wait for (or are at)
//!   the region's pace at once; the rest wait here, behind nobody else's. Another caller's
//!   call therefore waits for at most `aws_in_flight` of this caller's at the region's rate.
//!
//! The starts of queued copies take turns under their job's caller but are never refused:
//! the queue hands its slots to callers in turn (`store::jobs`).

use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{CallerBuckets, IDLE};
use crate::auth::Caller;
use crate::config::FairShareSettings;
use crate::error::Error;
use crate::metrics::Metrics;

pub(crate) struct AwsShare {
    settings: FairShareSettings,
    buckets: CallerBuckets,
    /// Each caller's turns per region, forgotten after ten idle minutes.
    turns: moka::sync::Cache<(String, String), Arc<Semaphore>>,
    metrics: Arc<Metrics>,
}

/// One of a caller's turns at a region, held until its AWS call has its answer.
pub(crate) struct Turn(#[allow(dead_code)] Option<OwnedSemaphorePermit>);

impl AwsShare {
    pub(crate) fn new(settings: FairShareSettings, metrics: Arc<Metrics>) -> AwsShare {
        let turns = moka::sync::Cache::builder().max_capacity(100_000).time_to_idle(IDLE).build();
        AwsShare { settings, buckets: CallerBuckets::new(), turns, metrics }
    }

    /// For an AWS call `caller`'s request causes in `region`: takes one from the caller's
    /// bucket (or refuses the request), then waits for one of the caller's turns there.
    pub(crate) async fn spend(&self, caller: &Caller, region: &str) -> Result<Turn, Error> {
        if let Err(wait) = self.buckets.take(&caller.id, self.settings.aws_calls_of(&caller.id, &caller.groups)) {
            self.metrics.call_shed("aws_share");
            tracing::debug!(caller = caller.id, ?wait, "request over the caller's share of AWS calls");
            return Err(Error::OverShare { caller: caller.id.clone(), of: "AWS calls", retry_after: wait });
        }
        Ok(self.turn(&caller.id, region).await)
    }

    /// One of `caller`'s turns at `region`, for work of the caller's that is never refused
    /// (a queued copy's start).
    pub(crate) async fn turn(&self, caller: &str, region: &str) -> Turn {
        let limit = usize::try_from(self.settings.aws_in_flight.max(1)).unwrap_or(usize::MAX);
        let turns = self.turns.get_with((caller.to_owned(), region.to_owned()), || Arc::new(Semaphore::new(limit)));
        // The semaphore is never closed, so acquiring cannot fail.
        Turn(turns.acquire_owned().await.ok())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::CallerShare;

    fn caller(id: &str, groups: &[&str]) -> Caller {
        Caller::with_groups(id, groups)
    }

    fn share() -> AwsShare {
        let settings = FairShareSettings {
            aws_calls_per_sec: 1.0,
            aws_burst: 2,
            aws_in_flight: 2,
            overrides: vec![CallerShare { aws_burst: Some(4), ..CallerShare::for_id("dr-runner", false, 200.0, 1000) }],
            ..FairShareSettings::default()
        };
        AwsShare::new(settings, Metrics::new())
    }

    #[tokio::test]
    async fn a_caller_past_its_aws_budget_is_refused_with_when_to_retry_and_others_are_not() {
        let share = share();
        let flood = caller("flood", &[]);
        for _ in 0..2 {
            drop(share.spend(&flood, "us-east-1").await.unwrap());
        }
        let refused = share.spend(&flood, "us-east-1").await.err().unwrap();
        let Error::OverShare { caller: who, of, retry_after } = &refused else { panic!("{refused:?}") };
        assert_eq!((who.as_str(), *of), ("flood", "AWS calls"));
        assert!(*retry_after <= Duration::from_secs(1));
        let status = tonic::Status::from(refused);
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        // Other callers have their own budgets; an override gives more.
        assert!(share.spend(&caller("quiet", &[]), "us-east-1").await.is_ok());
        let runner = caller("dr-runner", &[]);
        for _ in 0..4 {
            drop(share.spend(&runner, "us-east-1").await.unwrap());
        }
        assert!(share.spend(&runner, "us-east-1").await.is_err());
    }

    #[tokio::test]
    async fn a_caller_holds_at_most_its_turns_at_a_region_while_others_go_on() {
        let share = Arc::new(share());
        let first = share.turn("fleet", "us-east-1").await;
        let _second = share.turn("fleet", "us-east-1").await;
        // The fleet's third call waits for one of its own turns...
        let waiting = tokio::spawn({
            let share = share.clone();
            async move { share.turn("fleet", "us-east-1").await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        // ...while another caller, and the fleet in another region, go at once.
        let _other = share.turn("payments", "us-east-1").await;
        let _elsewhere = share.turn("fleet", "eu-west-1").await;
        drop(first);
        assert!(tokio::time::timeout(Duration::from_secs(1), waiting).await.is_ok());
    }
}
