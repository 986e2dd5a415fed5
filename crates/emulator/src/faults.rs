//! Fault injection and call accounting: RDS-style throttling (a token bucket per account and
//! region), injected `InternalFailure`s, added latency, copies that fail, and a count of calls
//! per action so tests can prove how many AWS calls something cost.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use snapgate_domain::TokenBucket;

/// The faults in force; replaceable at run time through the admin endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// RDS's documented request throttling; `null` turns it off.
    pub throttle: Option<Throttle>,
    /// Share of calls (0.0 to 1.0) answered with a 500 `InternalFailure`.
    pub internal_failure_rate: f64,
    /// Latency added to every call, in milliseconds, before it is carried out.
    pub latency_ms: u64,
    /// Delay, in milliseconds, of the answer to a CopyDBClusterSnapshot that made its copy: a
    /// client that times out meanwhile does not know that AWS did what it asked, and its retry
    /// meets DBClusterSnapshotAlreadyExistsFault (answered at once).
    #[serde(default)]
    pub copy_answer_delay_ms: u64,
    /// Share of calls (0.0 to 1.0) carried out whose connection is then dropped half way
    /// through the answer, as a reset or a dying load balancer would: the client cannot tell
    /// whether AWS did what it asked.
    #[serde(default)]
    pub drop_rate: f64,
    /// Copies whose target identifier starts with `target_prefix` fail at `at_percent`.
    pub fail_copies: Vec<FailCopies>,
}

impl Default for Faults {
    fn default() -> Faults {
        Faults {
            throttle: Some(Throttle::default()),
            internal_failure_rate: 0.0,
            latency_ms: 0,
            copy_answer_delay_ms: 0,
            drop_rate: 0.0,
            fail_copies: vec![],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Throttle {
    pub burst: u32,
    pub per_second: f64,
}

impl Default for Throttle {
    /// "Request throttling for the Amazon RDS API": 300 requests burst, 12 per second.
    fn default() -> Throttle {
        Throttle { burst: 300, per_second: 12.0 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailCopies {
    pub target_prefix: String,
    pub at_percent: i32,
}

impl Faults {
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.internal_failure_rate) {
            return Err("internal_failure_rate must be between 0 and 1".into());
        }
        if !(0.0..=1.0).contains(&self.drop_rate) {
            return Err("drop_rate must be between 0 and 1".into());
        }
        if let Some(t) = &self.throttle
            && (t.burst == 0 || !(t.per_second > 0.0 && t.per_second.is_finite()))
        {
            return Err("throttle.burst and throttle.per_second must be positive".into());
        }
        if self.fail_copies.iter().any(|f| !(0..=99).contains(&f.at_percent)) {
            return Err("fail_copies.at_percent must be between 0 and 99".into());
        }
        Ok(())
    }

    pub fn fail_at_percent(&self, target: &str) -> Option<i32> {
        let target = target.to_ascii_lowercase();
        self.fail_copies
            .iter()
            .find(|f| target.starts_with(&f.target_prefix.to_ascii_lowercase()))
            .map(|f| f.at_percent)
    }
}

/// What a call's fault check decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Proceed,
    Throttled,
    InternalFailure,
}

/// Counters per action, plus the throttled and failed calls.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CallCounts {
    pub calls: BTreeMap<String, u64>,
    /// The same by region: `"us-east-1 DescribeDBClusters"`.
    #[serde(default)]
    pub by_region: BTreeMap<String, u64>,
    pub throttled: u64,
    pub internal_failures: u64,
    /// Answers cut off by `drop_rate`.
    #[serde(default)]
    pub dropped: u64,
    /// The latest requests (at most [`RECENT_REQUESTS`]), oldest first: what a client's logs
    /// or traces can be matched against.
    #[serde(default)]
    pub recent: std::collections::VecDeque<RecentRequest>,
}

pub(crate) const RECENT_REQUESTS: usize = 100;

/// One request the emulator answered, by its `RequestId`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecentRequest {
    pub action: String,
    pub request_id: String,
}

impl CallCounts {
    pub fn get(&self, action: &str) -> u64 {
        self.calls.get(action).copied().unwrap_or(0)
    }

    /// Calls of `action` in `region`.
    pub fn in_region(&self, region: &str, action: &str) -> u64 {
        self.by_region.get(&format!("{region} {action}")).copied().unwrap_or(0)
    }

    pub fn remember(&mut self, action: &str, request_id: &str) {
        if self.recent.len() == RECENT_REQUESTS {
            self.recent.pop_front();
        }
        self.recent.push_back(RecentRequest { action: action.to_owned(), request_id: request_id.to_owned() });
    }
}

#[derive(Debug, Default)]
pub(crate) struct FaultState {
    pub faults: Faults,
    buckets: HashMap<(String, String), TokenBucket>,
    pub counts: CallCounts,
}

impl FaultState {
    pub(crate) fn new(faults: Faults) -> FaultState {
        FaultState { faults, ..FaultState::default() }
    }

    pub(crate) fn set_faults(&mut self, faults: Faults) {
        self.faults = faults;
        self.buckets.clear();
    }

    /// Counts the call and decides whether it is throttled or fails.
    pub(crate) fn admit(&mut self, action: &str, account: &str, region: &str, now: Instant, dice: f64) -> Verdict {
        *self.counts.calls.entry(action.to_owned()).or_default() += 1;
        *self.counts.by_region.entry(format!("{region} {action}")).or_default() += 1;
        if let Some(throttle) = &self.faults.throttle {
            let bucket = self
                .buckets
                .entry((account.to_owned(), region.to_owned()))
                .or_insert_with(|| TokenBucket::new(throttle.per_second, throttle.burst, now));
            if !bucket.try_take(now) {
                self.counts.throttled += 1;
                return Verdict::Throttled;
            }
        }
        if dice < self.faults.internal_failure_rate {
            self.counts.internal_failures += 1;
            return Verdict::InternalFailure;
        }
        Verdict::Proceed
    }

    pub(crate) fn latency(&self) -> Duration {
        Duration::from_millis(self.faults.latency_ms)
    }

    /// Whether the answer to a call carried out is cut off (`dice` in 0..1); counted.
    pub(crate) fn drops(&mut self, dice: f64) -> bool {
        let drop = dice < self.faults.drop_rate;
        if drop {
            self.counts.dropped += 1;
        }
        drop
    }

    pub(crate) fn answer_delay(&self) -> Duration {
        Duration::from_millis(self.faults.copy_answer_delay_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_its_burst_then_refills_at_its_rate() {
        let mut state =
            FaultState::new(Faults { throttle: Some(Throttle { burst: 3, per_second: 2.0 }), ..Faults::default() });
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(state.admit("A", "1", "r", t0, 1.0), Verdict::Proceed);
        }
        assert_eq!(state.admit("A", "1", "r", t0, 1.0), Verdict::Throttled);
        // Another account or region has its own bucket.
        assert_eq!(state.admit("A", "2", "r", t0, 1.0), Verdict::Proceed);
        assert_eq!(state.admit("A", "1", "r", t0 + Duration::from_millis(500), 1.0), Verdict::Proceed);
        assert_eq!(state.counts.get("A"), 6);
        assert_eq!(state.counts.throttled, 1);
    }

    #[test]
    fn failure_rate_uses_the_dice() {
        let mut state = FaultState::new(Faults { throttle: None, internal_failure_rate: 0.5, ..Faults::default() });
        assert_eq!(state.admit("A", "1", "r", Instant::now(), 0.4), Verdict::InternalFailure);
        assert_eq!(state.admit("A", "1", "r", Instant::now(), 0.6), Verdict::Proceed);
    }

    #[test]
    fn fault_settings_are_validated() {
        assert!(Faults { internal_failure_rate: 2.0, ..Faults::default() }.validate().is_err());
        let f = Faults {
            fail_copies: vec![FailCopies { target_prefix: "Fail-".into(), at_percent: 40 }],
            ..Faults::default()
        };
        assert!(f.validate().is_ok());
        assert_eq!(f.fail_at_percent("fail-me"), Some(40));
        assert_eq!(f.fail_at_percent("ok"), None);
    }
}
