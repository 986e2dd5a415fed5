//! `[plans]`: how DR plans are scheduled, followed and taken over between replicas.

use serde::{Deserialize, Serialize};

use super::Violations;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlanSettings {
    /// Whether this gateway runs plans on their schedules (every replica may; each slot runs
    /// once). RunPlan works either way.
    pub scheduler: bool,
    /// How often the scheduler looks at the plans even when nothing wakes it (another
    /// replica's apply, a run taken over).
    pub check_interval_ms: u64,
    /// How often a run looks at the copies it waits for (read from the watch hub's shared
    /// observations: no AWS call of its own).
    pub follow_interval_ms: u64,
    /// A run still waiting for its copies after this ends PARTIAL, naming them.
    pub run_timeout_secs: u64,
    /// A replica running a run marks it alive this often; a run not marked for
    /// `takeover_after_secs` (its replica died) is run again by another, which makes no copy twice.
    pub heartbeat_secs: u64,
    pub takeover_after_secs: u64,
}

impl Default for PlanSettings {
    fn default() -> PlanSettings {
        PlanSettings {
            scheduler: true,
            check_interval_ms: 15_000,
            follow_interval_ms: 2_000,
            run_timeout_secs: 24 * 3600,
            heartbeat_secs: 10,
            takeover_after_secs: 45,
        }
    }
}

impl PlanSettings {
    pub(crate) fn validate(&self, v: &mut Violations) {
        v.at_least("plans.check_interval_ms", self.check_interval_ms, 10);
        v.at_least("plans.follow_interval_ms", self.follow_interval_ms, 10);
        v.positive("plans.run_timeout_secs", self.run_timeout_secs);
        v.positive("plans.heartbeat_secs", self.heartbeat_secs);
        v.check(
            self.takeover_after_secs >= 2 * self.heartbeat_secs,
            "plans.takeover_after_secs",
            "must be at least twice plans.heartbeat_secs",
        );
    }
}
