//! `[jobs]`: how many copies may be in progress at once, and how the queue is worked.

use serde::{Deserialize, Serialize};

use super::Violations;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobSettings {
    /// Copies from another region in progress at once per destination account and region
    /// (AWS allows 5 for cluster snapshots).
    pub cross_region_limit: u32,
    /// Copies within a region in progress at once per account and region; none: no limit.
    pub same_region_limit: Option<u32>,
    /// Other limits for particular destinations.
    pub limits: Vec<DestinationLimit>,
    /// How long a gateway holds a job it is starting; a gateway that dies holding it lets
    /// another take it after this.
    pub lease_secs: u64,
    /// How often the queue is looked at even when nothing wakes the dispatcher (other
    /// replicas' jobs, backoffs that end).
    pub dispatch_interval_ms: u64,
    /// First wait before a job AWS refused for its own limit (or throttling) is tried again;
    /// doubles up to `retry_max_ms`.
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
}

/// The in-progress limit of one destination.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationLimit {
    /// The destination account; none: every account.
    pub account: Option<String>,
    pub region: String,
    /// Cross-region copies in progress at once there.
    pub cross_region_limit: u32,
}

impl Default for JobSettings {
    fn default() -> JobSettings {
        JobSettings {
            cross_region_limit: 5,
            same_region_limit: None,
            limits: Vec::new(),
            lease_secs: 30,
            dispatch_interval_ms: 1000,
            retry_initial_ms: 2000,
            retry_max_ms: 60_000,
        }
    }
}

impl JobSettings {
    /// The cross-region limit of a destination.
    pub fn cross_region_limit_for(&self, account: &str, region: &str) -> u32 {
        self.limits
            .iter()
            .find(|l| l.region == region && l.account.as_deref().is_none_or(|a| a == account))
            .map_or(self.cross_region_limit, |l| l.cross_region_limit)
    }

    pub(crate) fn validate(&self, v: &mut Violations) {
        const LIMIT: &str = "limits of copies in progress must be at least 1";
        v.check(self.cross_region_limit > 0, "jobs.cross_region_limit", LIMIT);
        v.check(self.same_region_limit != Some(0), "jobs.same_region_limit", LIMIT);
        for (i, limit) in self.limits.iter().enumerate() {
            v.check(limit.cross_region_limit > 0, format!("jobs.limits[{i}].cross_region_limit"), LIMIT);
            v.check(
                snapgate_domain::is_region_name(&limit.region),
                format!("jobs.limits[{i}].region"),
                format!("'{}' is not a region name", limit.region),
            );
        }
        v.at_least("jobs.lease_secs", self.lease_secs, 2);
        v.at_least("jobs.dispatch_interval_ms", self.dispatch_interval_ms, 10);
        v.positive("jobs.retry_initial_ms", self.retry_initial_ms);
        v.check(
            self.retry_max_ms >= self.retry_initial_ms,
            "jobs.retry_max_ms",
            "must be at least jobs.retry_initial_ms",
        );
    }
}
