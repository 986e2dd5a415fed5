//! The audit trail: one structured event per authentication failure and per authorization
//! decision, on the `snapgate::audit` log target (route it with `RUST_LOG` or a log
//! pipeline). CloudTrail shows only the gateway's role; this is the record of who asked.
//! Events carry identities, resources and decisions, never a token, key or presigned URL.

use std::net::SocketAddr;

use crate::auth::policy::{Action, Decision};
use crate::auth::{AuthError, Caller};
use crate::telemetry::AUDIT_TARGET;

/// A call refused before it reached a handler.
pub(crate) fn unauthenticated(method: &str, error: &AuthError, remote: Option<SocketAddr>) {
    tracing::info!(
        target: AUDIT_TARGET,
        event = "authentication",
        method,
        decision = "unauthenticated",
        reason = %error,
        remote = remote.map(|r| r.to_string()),
        trace_id = crate::telemetry::current_trace_id(),
        "call refused: not authenticated"
    );
}

/// An authorization decision about `resource` (a snapshot ARN); for copies, where it goes
/// and, once AWS answered, its request id and outcome.
pub(crate) struct DecisionEvent<'a> {
    pub caller: &'a Caller,
    pub action: Action,
    pub resource: &'a str,
    pub destination: Option<String>,
    pub decision: &'a Decision,
    pub aws_request_id: Option<&'a str>,
    /// "ok" or the error the call ended with, for allowed calls that went to AWS.
    pub outcome: Option<&'a str>,
}

impl DecisionEvent<'_> {
    /// Records a decision that is not (yet) followed by an AWS call of its own.
    pub(crate) fn decided(
        caller: &Caller,
        action: Action,
        resource: &str,
        destination: Option<String>,
        decision: &Decision,
    ) {
        DecisionEvent { caller, action, resource, destination, decision, aws_request_id: None, outcome: None }.emit();
    }

    pub(crate) fn emit(&self) {
        tracing::info!(
            target: AUDIT_TARGET,
            event = "authorization",
            caller = %self.caller.id,
            authn = self.caller.method.as_str(),
            action = self.action.name(),
            resource = self.resource,
            destination = self.destination.as_deref(),
            decision = if self.decision.allowed { "allow" } else { "deny" },
            policies = %self.decision.policies.join(","),
            aws_request_id = self.aws_request_id,
            outcome = self.outcome,
            trace_id = crate::telemetry::current_trace_id(),
            "authorization decision"
        );
    }
}

/// A ListCopies page: how many of its copies policies let the caller see, and how many not
/// (one event a page, not one a copy).
pub(crate) fn list_decision(caller: &Caller, shown: usize, hidden: usize) {
    list_decision_of(Action::ListCopies, caller, shown, hidden);
}

/// A listing (ListCopies, ListPlans): how many entries policies let the caller see, and how
/// many not.
pub(crate) fn list_decision_of(action: Action, caller: &Caller, shown: usize, hidden: usize) {
    tracing::info!(
        target: AUDIT_TARGET,
        event = "authorization",
        caller = %caller.id,
        authn = caller.method.as_str(),
        action = action.name(),
        shown,
        hidden,
        trace_id = crate::telemetry::current_trace_id(),
        "list decision"
    );
}

/// A copy job's start or end, with the AWS request id that started it.
pub(crate) fn job_event(event: &str, job: &crate::store::Job, aws_request_id: Option<&str>, failure: Option<&str>) {
    let j = &job.new;
    tracing::info!(
        target: AUDIT_TARGET,
        event = "copy_job",
        job_event = event,
        job = %j.id,
        caller = %j.caller,
        source = %j.source_arn,
        destination = %format!("{}/{}/{}", j.account, j.region, j.target),
        aws_request_id,
        failure,
        "copy job {event}"
    );
}

/// A DR plan's run deleting one of its own old copies (or finding it gone), with the request id
/// of the delete: the audit trail of every snapshot the gateway ever deletes by retention.
pub(crate) fn plan_expiry(plan: &str, run: &str, owner: &str, copy: &str, aws_request_id: Option<&str>, how: &str) {
    tracing::info!(
        target: AUDIT_TARGET,
        event = "plan_expiry",
        plan,
        run,
        caller = owner,
        resource = copy,
        aws_request_id,
        outcome = how,
        "plan copy expired"
    );
}

/// A DR plan applied or deleted.
pub(crate) fn plan_event(event: &str, plan: &str, caller: &Caller, generation: i64) {
    tracing::info!(
        target: AUDIT_TARGET,
        event = "plan",
        plan_event = event,
        plan,
        caller = %caller.id,
        generation,
        "plan {event}"
    );
}
