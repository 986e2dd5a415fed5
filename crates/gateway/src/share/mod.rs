//! Fair share: what each caller may take of the gateway and of AWS, so that one caller's flood
//! costs the others nothing. Two shares, both keyed by caller and both looked up here from
//! `fair_share` settings (the first override naming the caller or one of its groups, else the
//! default):
//! - calls (`calls`): a token bucket of calls per caller and its turns at the gateway's work,
//!   taken by the `stack::fair_share` layer once the caller is known;
//! - AWS calls (`aws`): a token bucket of the AWS calls a caller's requests may cause and its
//!   turns at a region's pace, taken by the copy workflow before each AWS call.

mod aws;
mod calls;

use std::sync::Arc;
use std::time::Duration;

use snapgate_domain::TokenBucket;

use crate::config::{CallerShare, FairShareSettings};

pub(crate) use aws::{AwsShare, Turn};
pub(crate) use calls::CallShare;

/// A token bucket per caller id, made with the caller's share on first use and forgotten
/// after ten idle minutes (a caller back after that starts full). The clock is tokio's.
#[derive(Clone)]
pub(crate) struct CallerBuckets(moka::sync::Cache<String, Arc<TokenBucket>>);

impl CallerBuckets {
    pub(crate) fn new() -> CallerBuckets {
        CallerBuckets(moka::sync::Cache::builder().max_capacity(100_000).time_to_idle(IDLE).build())
    }

    /// Takes one of `id`'s tokens (its bucket holds `burst` and refills at `rate` a second),
    /// or says how long until the next one.
    pub(crate) fn take(&self, id: &str, (rate, burst): (f64, u32)) -> Result<(), Duration> {
        let now = || tokio::time::Instant::now().into_std();
        let bucket = self.0.get_with_by_ref(id, || Arc::new(TokenBucket::new(rate, burst, now())));
        bucket.take_or_wait(now())
    }
}

/// How long a caller's bucket and turns are kept unused.
const IDLE: Duration = Duration::from_secs(600);

impl FairShareSettings {
    fn share_of(&self, id: &str, groups: &[String]) -> Option<&CallerShare> {
        self.overrides
            .iter()
            .find(|o| o.principal.as_deref() == Some(id) || o.group.as_ref().is_some_and(|g| groups.contains(g)))
    }

    /// The calls a second and burst of the caller `id` in `groups`.
    pub(crate) fn calls_of(&self, id: &str, groups: &[String]) -> (f64, u32) {
        self.share_of(id, groups).map_or((self.calls_per_sec, self.burst), |o| (o.calls_per_sec, o.burst))
    }

    /// The unary calls of caller `id` in `groups` the gateway works on at once.
    pub(crate) fn in_flight_of(&self, id: &str, groups: &[String]) -> u32 {
        self.share_of(id, groups).and_then(|o| o.in_flight).unwrap_or(self.in_flight)
    }

    /// The AWS calls a second and burst the requests of caller `id` in `groups` may cause.
    pub(crate) fn aws_calls_of(&self, id: &str, groups: &[String]) -> (f64, u32) {
        let share = self.share_of(id, groups);
        (
            share.and_then(|o| o.aws_calls_per_sec).unwrap_or(self.aws_calls_per_sec),
            share.and_then(|o| o.aws_burst).unwrap_or(self.aws_burst),
        )
    }
}
