//! The gateway's metrics, in Prometheus text format on the plaintext admin listener: RPCs by
//! method and code with latency, AWS calls by action and outcome, throttling, watch streams,
//! watched snapshots and poll rounds.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    method: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AwsLabels {
    action: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    action: String,
    decision: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DestinationLabels {
    account: String,
    region: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    listener: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PlanRunLabels {
    plan: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PlanLabels {
    plan: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PlanCopyLabels {
    plan: String,
    cluster: String,
    destination: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BudgetLabels {
    account: String,
    region: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RegionLabels {
    region: String,
}

pub struct Metrics {
    poll_leader: Family<RegionLabels, Gauge>,
    fleet_observations: Counter,
    aws_budget_share: Family<BudgetLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    plan_runs: Family<PlanRunLabels, Counter>,
    plan_last_success: Family<PlanLabels, Gauge>,
    plan_copy_age: Family<PlanCopyLabels, Gauge>,
    jobs_queued: Family<DestinationLabels, Gauge>,
    jobs_in_progress: Family<DestinationLabels, Gauge>,
    job_queued_seconds: Histogram,
    jobs_finished: Family<OutcomeLabels, Counter>,
    registry: Registry,
    rpc_requests: Family<RpcLabels, Counter>,
    rpc_seconds: Family<MethodLabels, Histogram>,
    aws_calls: Family<AwsLabels, Counter>,
    aws_seconds: Family<MethodLabels, Histogram>,
    pub poll_rounds: Counter,
    poll_round_seconds: Histogram,
    watch_streams: Gauge,
    watched_snapshots: Gauge,
    authz_decisions: Family<DecisionLabels, Counter>,
    aws_retries: Family<MethodLabels, Counter>,
    authn_failures: Family<ReasonLabels, Counter>,
    policy_reloads: Family<ReasonLabels, Counter>,
    connections_open: Family<ListenerLabels, Gauge>,
    connections_refused: Family<RefusalLabels, Counter>,
    connections_paced: Family<RefusalLabels, Counter>,
    calls_shed: Family<ReasonLabels, Counter>,
    calls_waited: Family<ReasonLabels, Counter>,
    resident_bytes: Gauge,
    log_lines_dropped: Counter,
    audit_records: Counter,
    audit_records_dropped: Counter,
}

fn latency_buckets() -> Histogram {
    // 1 ms to about 33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("snapgate");
        let rpc_requests = Family::<RpcLabels, Counter>::default();
        registry.register("rpc_requests", "gRPC calls by method and status code", rpc_requests.clone());
        let rpc_seconds = Family::<MethodLabels, Histogram>::new_with_constructor(latency_buckets as fn() -> Histogram);
        registry.register(
            "rpc_duration_seconds",
            "Latency of unary gRPC calls and of opening streams",
            rpc_seconds.clone(),
        );
        let aws_calls = Family::<AwsLabels, Counter>::default();
        registry.register(
            "aws_calls",
            "AWS calls by action and outcome (ok, or the error kind: throttled, unavailable, not_found, ...)",
            aws_calls.clone(),
        );
        let aws_seconds = Family::<MethodLabels, Histogram>::new_with_constructor(latency_buckets as fn() -> Histogram);
        registry.register("aws_call_duration_seconds", "AWS call latency, retries included", aws_seconds.clone());
        let poll_rounds = Counter::default();
        registry.register("watch_poll_rounds", "Poll rounds of the progress pollers", poll_rounds.clone());
        let poll_round_seconds = latency_buckets();
        registry.register("watch_poll_round_seconds", "Duration of one poll round", poll_round_seconds.clone());
        let watch_streams = Gauge::default();
        registry.register("watch_open_streams", "Open WatchCopy streams", watch_streams.clone());
        let watched_snapshots = Gauge::default();
        registry.register("watch_polled_snapshots", "Snapshots in the pollers' sets", watched_snapshots.clone());
        let authz_decisions = Family::<DecisionLabels, Counter>::default();
        registry.register("authz_decisions", "Authorization decisions by action and outcome", authz_decisions.clone());
        let aws_retries = Family::<MethodLabels, Counter>::default();
        registry.register(
            "aws_retries",
            "AWS call attempts after the first (the SDK's retries), by action",
            aws_retries.clone(),
        );
        let authn_failures = Family::<ReasonLabels, Counter>::default();
        registry.register("authn_failures", "Calls refused as UNAUTHENTICATED, by reason", authn_failures.clone());
        let policy_reloads = Family::<ReasonLabels, Counter>::default();
        registry.register("policy_reloads", "Policy reloads by outcome (ok, failed)", policy_reloads.clone());
        let connections_open = Family::<ListenerLabels, Gauge>::default();
        registry.register("connections_open", "Open connections by listener (grpc, http)", connections_open.clone());
        let connections_refused = Family::<RefusalLabels, Counter>::default();
        registry.register(
            "connections_refused",
            "Connections refused or closed by the edge, by listener and reason (cap, per_peer, handshake_timeout, bad_handshake, idle, protocol, penalty)",
            connections_refused.clone(),
        );
        let connections_paced = Family::<RefusalLabels, Counter>::default();
        registry.register(
            "connections_paced",
            "Pauses in reading a connection over its budget, by listener and reason (refusals, bytes; openings: 64 of its stream openings wait for their turns; peer: a connection held before its handshake; accept_rate: the listener waited before taking the next connection)",
            connections_paced.clone(),
        );
        let calls_shed = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "calls_shed",
            "Calls refused at once to shed load, by reason (in_flight, connection_in_flight, streams, memory, fair_share, openings, aws_share; caller_in_flight: waited past the request timeout for a turn)",
            calls_shed.clone(),
        );
        let calls_waited = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "calls_waited",
            "Calls that waited for a turn, by reason (caller_in_flight: their caller had fair_share.in_flight calls in progress)",
            calls_waited.clone(),
        );
        let resident_bytes = Gauge::default();
        registry.register(
            "resident_memory_bytes",
            "Resident set size of the gateway, as the shedder reads it",
            resident_bytes.clone(),
        );
        let log_lines_dropped = Counter::default();
        registry.register(
            "log_lines_dropped",
            "Log lines dropped because the log sink fell behind (lines are never allowed to stall a call)",
            log_lines_dropped.clone(),
        );
        let audit_records = Counter::default();
        registry.register("audit_records", "Audit records written", audit_records.clone());
        let audit_records_dropped = Counter::default();
        registry.register(
            "audit_records_dropped",
            "Audit records dropped because the audit queue was full or its sink failed (a record never delays a call)",
            audit_records_dropped.clone(),
        );
        let jobs_queued = Family::<DestinationLabels, Gauge>::default();
        registry.register(
            "jobs_queued",
            "Copies waiting in the queue, per destination account and region",
            jobs_queued.clone(),
        );
        let jobs_in_progress = Family::<DestinationLabels, Gauge>::default();
        registry.register(
            "jobs_in_progress",
            "Copies being started or copied by AWS, per destination account and region",
            jobs_in_progress.clone(),
        );
        // 0.1 s to about 2 days.
        let job_queued_seconds = Histogram::new(exponential_buckets(0.1, 2.0, 21));
        registry.register(
            "job_queued_seconds",
            "Time from admission to AWS starting the copy",
            job_queued_seconds.clone(),
        );
        let jobs_finished = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "jobs_finished",
            "Copy jobs ended, by outcome (available, failed, cancelled, deleted)",
            jobs_finished.clone(),
        );
        let plan_runs = Family::<PlanRunLabels, Counter>::default();
        registry.register("plan_runs", "DR plan runs ended, by plan and state", plan_runs.clone());
        let plan_last_success = Family::<PlanLabels, Gauge>::default();
        registry.register(
            "plan_last_success_timestamp_seconds",
            "When each DR plan's latest SUCCEEDED run ended (Unix time)",
            plan_last_success.clone(),
        );
        let plan_copy_age = Family::<PlanCopyLabels, Gauge>::default();
        registry.register(
            "plan_copy_age_seconds",
            "Age of the recovery point each DR plan's newest available copy holds, per cluster and destination, as of the plan's latest run",
            plan_copy_age.clone(),
        );
        let aws_budget_share = Family::<BudgetLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "aws_budget_share",
            "This replica's share of the fleet's AWS budget per account and region (tokens it drew over the last 10 s against the pace's; replicas on PostgreSQL)",
            aws_budget_share.clone(),
        );
        let poll_leader = Family::<RegionLabels, Gauge>::default();
        registry.register(
            "poll_leader",
            "1 where this replica holds the fleet's poll of a region (replicas on PostgreSQL), 0 where another does",
            poll_leader.clone(),
        );
        let fleet_observations = Counter::default();
        registry.register(
            "fleet_observations",
            "Observations of snapshots this replica read from the fleet's poll holder instead of asking AWS",
            fleet_observations.clone(),
        );
        Arc::new(Metrics {
            poll_leader,
            fleet_observations,
            aws_budget_share,
            plan_runs,
            plan_last_success,
            plan_copy_age,
            jobs_queued,
            jobs_in_progress,
            job_queued_seconds,
            jobs_finished,
            registry,
            rpc_requests,
            rpc_seconds,
            aws_calls,
            aws_seconds,
            poll_rounds,
            poll_round_seconds,
            watch_streams,
            watched_snapshots,
            authz_decisions,
            aws_retries,
            authn_failures,
            policy_reloads,
            connections_open,
            connections_refused,
            connections_paced,
            calls_shed,
            calls_waited,
            resident_bytes,
            log_lines_dropped,
            audit_records,
            audit_records_dropped,
        })
    }

    pub fn rpc(&self, method: &str, code: tonic::Code, elapsed: Duration) {
        let code = format!("{code:?}");
        self.rpc_requests.get_or_create(&RpcLabels { method: method.to_owned(), code }).inc();
        self.rpc_seconds.get_or_create(&MethodLabels { method: method.to_owned() }).observe(elapsed.as_secs_f64());
    }

    pub fn aws_call(&self, action: &str, outcome: &str, elapsed: Duration) {
        self.aws_calls.get_or_create(&AwsLabels { action: action.to_owned(), outcome: outcome.to_owned() }).inc();
        self.aws_seconds.get_or_create(&MethodLabels { method: action.to_owned() }).observe(elapsed.as_secs_f64());
    }

    pub fn authz_decision(&self, action: &str, allowed: bool) {
        let decision = if allowed { "allow" } else { "deny" }.to_owned();
        self.authz_decisions.get_or_create(&DecisionLabels { action: action.to_owned(), decision }).inc();
    }

    pub fn aws_retry(&self, action: &str) {
        self.aws_retries.get_or_create(&MethodLabels { method: action.to_owned() }).inc();
    }

    pub fn authn_failure(&self, reason: &str) {
        self.authn_failures.get_or_create(&ReasonLabels { reason: reason.to_owned() }).inc();
    }

    pub fn policy_reload(&self, ok: bool) {
        let reason = if ok { "ok" } else { "failed" }.to_owned();
        self.policy_reloads.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// A connection of `listener` opened (+1) or closed (-1).
    pub(crate) fn connection(&self, listener: &str, delta: i64) {
        self.connections_open.get_or_create(&ListenerLabels { listener: listener.to_owned() }).inc_by(delta);
    }

    pub(crate) fn connection_refused(&self, listener: &str, reason: &str) {
        let labels = RefusalLabels { listener: listener.to_owned(), reason: reason.to_owned() };
        self.connections_refused.get_or_create(&labels).inc();
    }

    pub(crate) fn connection_paced(&self, listener: &str, reason: &str) {
        let labels = RefusalLabels { listener: listener.to_owned(), reason: reason.to_owned() };
        self.connections_paced.get_or_create(&labels).inc();
    }

    pub(crate) fn call_shed(&self, reason: &str) {
        self.calls_shed.get_or_create(&ReasonLabels { reason: reason.to_owned() }).inc();
    }

    pub(crate) fn call_waited(&self, reason: &str) {
        self.calls_waited.get_or_create(&ReasonLabels { reason: reason.to_owned() }).inc();
    }

    pub(crate) fn resident_bytes(&self, bytes: u64) {
        self.resident_bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// Queued and in-progress copies of one destination, as the store counts them.
    pub(crate) fn job_depths(&self, account: &str, region: &str, queued: i64, active: i64) {
        let labels = DestinationLabels { account: account.to_owned(), region: region.to_owned() };
        self.jobs_queued.get_or_create(&labels).set(queued);
        self.jobs_in_progress.get_or_create(&labels).set(active);
    }

    /// A job started after waiting `queued_ms` since its admission.
    pub(crate) fn job_started(&self, queued_ms: i64) {
        self.job_queued_seconds.observe(queued_ms.max(0) as f64 / 1000.0);
    }

    pub(crate) fn job_finished(&self, outcome: &str) {
        self.jobs_finished.get_or_create(&OutcomeLabels { outcome: outcome.to_owned() }).inc();
    }

    /// A DR plan's run ended in `state` at `at_secs` (Unix time).
    pub(crate) fn plan_run(&self, plan: &str, state: &str, at_secs: i64) {
        self.plan_runs.get_or_create(&PlanRunLabels { plan: plan.to_owned(), state: state.to_owned() }).inc();
        if state == "SUCCEEDED" {
            self.plan_last_success.get_or_create(&PlanLabels { plan: plan.to_owned() }).set(at_secs);
        }
    }

    /// The age of the recovery point a plan's newest available copy of `cluster` holds at `destination`.
    pub(crate) fn plan_copy_age(&self, plan: &str, cluster: &str, destination: &str, secs: i64) {
        let labels =
            PlanCopyLabels { plan: plan.to_owned(), cluster: cluster.to_owned(), destination: destination.to_owned() };
        self.plan_copy_age.get_or_create(&labels).set(secs);
    }

    pub(crate) fn poll_leader(&self, region: &str, holds: bool) {
        self.poll_leader.get_or_create(&RegionLabels { region: region.to_owned() }).set(i64::from(holds));
    }

    pub(crate) fn fleet_observations(&self, n: usize) {
        self.fleet_observations.inc_by(n as u64);
    }

    pub(crate) fn aws_budget_share(&self, account: &str, region: &str, share: f64) {
        let labels = BudgetLabels { account: account.to_owned(), region: region.to_owned() };
        self.aws_budget_share.get_or_create(&labels).set(share);
    }

    pub fn poll_round(&self, elapsed: Duration) {
        self.poll_rounds.inc();
        self.poll_round_seconds.observe(elapsed.as_secs_f64());
    }

    /// The text exposition, with the gauges read at scrape time.
    pub fn render(&self, open_streams: usize, watched_snapshots: usize) -> String {
        self.watch_streams.set(open_streams as i64);
        self.watched_snapshots.set(watched_snapshots as i64);
        let dropped = crate::telemetry::log_lines_dropped();
        self.log_lines_dropped.inc_by(dropped.saturating_sub(self.log_lines_dropped.get()));
        let (written, dropped) = (crate::audit::records_written(), crate::audit::records_dropped());
        self.audit_records.inc_by(written.saturating_sub(self.audit_records.get()));
        self.audit_records_dropped.inc_by(dropped.saturating_sub(self.audit_records_dropped.get()));
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_calls_appear_in_the_exposition() {
        let m = Metrics::new();
        m.rpc("CopyClusterSnapshot", tonic::Code::Ok, Duration::from_millis(3));
        m.aws_call("CopyDBClusterSnapshot", "throttled", Duration::from_millis(40));
        let text = m.render(7, 2);
        assert!(text.contains(r#"snapgate_rpc_requests_total{method="CopyClusterSnapshot",code="Ok"} 1"#), "{text}");
        assert!(text.contains(r#"snapgate_aws_calls_total{action="CopyDBClusterSnapshot",outcome="throttled"} 1"#));
        assert!(text.contains("snapgate_watch_open_streams 7"));
        assert!(text.contains("snapgate_watch_polled_snapshots 2"));
        assert!(text.contains("snapgate_rpc_duration_seconds_bucket"));
    }
}
