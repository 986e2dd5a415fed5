//! `[fair_share]`: each caller's share of the gateway and of AWS, by principal id, so one
//! team's flood delays nobody else. Past a share a call is RESOURCE_EXHAUSTED with RetryInfo
//! saying when the next is welcome. The shares are looked up and taken in `share`.

use serde::{Deserialize, Serialize};

use super::Violations;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FairShareSettings {
    /// Calls a second each caller may make, sustained.
    pub calls_per_sec: f64,
    /// Calls a caller may make at once (a fleet's watches open together: keep it above the
    /// largest fleet).
    pub burst: u32,
    /// AWS calls a second each caller's requests may cause, sustained: the source describes of
    /// its copies, its fresh reads and its cancels. The polls every watcher shares, and the
    /// starts of queued copies, are not counted (the queue takes callers in turn instead).
    pub aws_calls_per_sec: f64,
    /// AWS calls a caller's requests may cause at once (a fleet's admissions: keep it above
    /// the largest fleet of distinct sources).
    pub aws_burst: u32,
    /// AWS calls of one caller that may wait for one region's pace at once; its others wait
    /// their turn behind other callers', so one caller's burst delays another's call by at
    /// most this many calls at the region's rate.
    pub aws_in_flight: u32,
    /// Unary calls of one caller the gateway works on at once; its others wait their turn (up
    /// to the request timeout, then RESOURCE_EXHAUSTED with RetryInfo), so one caller's burst
    /// puts at most this many calls ahead of another caller's on the gateway's CPUs. Stream
    /// openings have their own turns (`server.max_stream_openings`).
    pub in_flight: u32,
    /// Other shares for some principals or groups; the first that matches a caller applies.
    pub overrides: Vec<CallerShare>,
}

impl Default for FairShareSettings {
    fn default() -> FairShareSettings {
        FairShareSettings {
            calls_per_sec: 200.0,
            burst: 1000,
            aws_calls_per_sec: 4.0,
            aws_burst: 200,
            aws_in_flight: 4,
            in_flight: 8,
            overrides: Vec::new(),
        }
    }
}

/// The share of the callers a principal id or a group names; what it leaves unset is the
/// default's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallerShare {
    pub principal: Option<String>,
    pub group: Option<String>,
    pub calls_per_sec: f64,
    pub burst: u32,
    /// This caller's `aws_calls_per_sec`.
    #[serde(default)]
    pub aws_calls_per_sec: Option<f64>,
    /// This caller's `aws_burst`.
    #[serde(default)]
    pub aws_burst: Option<u32>,
    /// This caller's `in_flight`.
    #[serde(default)]
    pub in_flight: Option<u32>,
}

#[cfg(test)]
impl CallerShare {
    /// A share of `calls_per_sec` and `burst` for the principal `id`, or the group `id` when
    /// `group`; the rest the default's. Tests set the fields they are about on top.
    pub(crate) fn for_id(id: &str, group: bool, calls_per_sec: f64, burst: u32) -> CallerShare {
        let (principal, group) = if group { (None, Some(id.into())) } else { (Some(id.into()), None) };
        CallerShare {
            principal,
            group,
            calls_per_sec,
            burst,
            aws_calls_per_sec: None,
            aws_burst: None,
            in_flight: None,
        }
    }
}

impl FairShareSettings {
    pub(crate) fn validate(&self, v: &mut Violations) {
        v.rate("fair_share.calls_per_sec", self.calls_per_sec);
        v.at_least("fair_share.burst", u64::from(self.burst), 1);
        v.rate("fair_share.aws_calls_per_sec", self.aws_calls_per_sec);
        v.at_least("fair_share.aws_burst", u64::from(self.aws_burst), 1);
        v.at_least("fair_share.aws_in_flight", u64::from(self.aws_in_flight), 1);
        v.at_least("fair_share.in_flight", u64::from(self.in_flight), 1);
        for (i, o) in self.overrides.iter().enumerate() {
            let field = |name: &str| format!("fair_share.overrides[{i}].{name}");
            v.check(
                o.principal.is_some() != o.group.is_some(),
                format!("fair_share.overrides[{i}]"),
                "names exactly one of principal or group",
            );
            v.rate(field("calls_per_sec"), o.calls_per_sec);
            v.at_least(field("burst"), u64::from(o.burst), 1);
            if let Some(rate) = o.aws_calls_per_sec {
                v.rate(field("aws_calls_per_sec"), rate);
            }
            v.check(o.aws_burst != Some(0), field("aws_burst"), "must be at least 1");
            // A caller with no turns could never be served.
            v.check(o.in_flight != Some(0), field("in_flight"), "fair_share.in_flight must be at least 1");
        }
    }
}
