//! `[watch]`: how the coalesced pollers pace themselves and how progress streams are kept.

use serde::{Deserialize, Serialize};

use super::Violations;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WatchSettings {
    /// Poll interval right after a change or a new watcher.
    pub min_poll_interval_ms: u64,
    /// Poll interval reached while nothing moves (each quiet round waits 1.5 times longer).
    pub max_poll_interval_ms: u64,
    /// An idle stream gets a HEARTBEAT event this often, to keep proxies from closing it.
    pub heartbeat_secs: u64,
    /// Open WatchCopy streams at most; more are RESOURCE_EXHAUSTED.
    pub max_streams: usize,
    /// How long AWS errors may persist before open streams end with UNAVAILABLE.
    pub error_budget_secs: u64,
    /// Replicas on PostgreSQL: the lease by which one replica polls a region for all of them,
    /// renewed every round; a holder that dies is replaced within this and one poll interval.
    pub poll_lease_secs: u64,
}

impl Default for WatchSettings {
    fn default() -> WatchSettings {
        WatchSettings {
            min_poll_interval_ms: 2_000,
            max_poll_interval_ms: 20_000,
            heartbeat_secs: 15,
            max_streams: 10_000,
            error_budget_secs: 60,
            poll_lease_secs: 10,
        }
    }
}

impl WatchSettings {
    pub(crate) fn validate(&self, v: &mut Violations) {
        v.at_least("watch.min_poll_interval_ms", self.min_poll_interval_ms, 50);
        v.check(
            self.max_poll_interval_ms >= self.min_poll_interval_ms,
            "watch.max_poll_interval_ms",
            "must be at least watch.min_poll_interval_ms",
        );
        v.positive("watch.heartbeat_secs", self.heartbeat_secs);
        v.positive("watch.max_streams", self.max_streams as u64);
        v.positive("watch.error_budget_secs", self.error_budget_secs);
        v.positive("watch.poll_lease_secs", self.poll_lease_secs);
    }
}
