//! The tonic service: decode the request, call the core under the caller's deadline, encode
//! the answer. Errors become statuses in one place, `crate::error`.

mod convert;
pub mod deadline;

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::audit::DecisionEvent;
use crate::auth::Caller;
use crate::auth::policy::{Action, Decision, PolicyStore};
use crate::aws::{AwsError, AwsErrorKind};
use crate::copy::{CopyService, Located};
use crate::error::Error;
use crate::metrics::Metrics;
use crate::pb;
use crate::pb::snapshot_copy_service_server::SnapshotCopyService;
use crate::rds::{ClusterSnapshot, CopyState};
use crate::watch::{Observation, WatchHub};

pub struct Api {
    copies: Arc<CopyService>,
    hub: Arc<WatchHub>,
    policies: Arc<PolicyStore>,
    request_timeout: Duration,
    metrics: Arc<Metrics>,
}

impl Api {
    pub fn new(
        copies: Arc<CopyService>,
        hub: Arc<WatchHub>,
        policies: Arc<PolicyStore>,
        request_timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Api {
        Api { copies, hub, policies, request_timeout, metrics }
    }

    /// Decides `action` on `snapshot` for `caller`, with its audit event.
    fn authorize(&self, caller: &Caller, action: Action, snapshot: &ClusterSnapshot) -> Result<(), Error> {
        let decision = self.policies.decide(caller, action, snapshot, None);
        DecisionEvent {
            caller,
            action,
            resource: &snapshot.arn,
            destination: None,
            decision: &decision,
            aws_request_id: None,
            outcome: None,
        }
        .emit();
        permitted(action, decision)
    }

    /// Counts a call by method and status code, with its latency (for WatchCopy: until the
    /// stream opened).
    fn observed<T>(&self, method: &str, started: Instant, result: Result<T, Status>) -> Result<T, Status> {
        let code = result.as_ref().map_or_else(Status::code, |_| tonic::Code::Ok);
        self.metrics.rpc(method, code, started.elapsed());
        result
    }

    /// Runs `work` within the call's budget; a call that outlives it is DEADLINE_EXCEEDED.
    async fn within_deadline<T>(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        work: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Status> {
        let budget = deadline::call_budget(metadata, self.request_timeout);
        match tokio::time::timeout(budget, work).await {
            Ok(result) => result.map_err(Status::from),
            Err(_) => Err(Error::DeadlineExceeded.into()),
        }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::CopyEvent, Status>> + Send>>;

#[tonic::async_trait]
impl SnapshotCopyService for Api {
    async fn copy_cluster_snapshot(
        &self,
        request: Request<pb::CopyClusterSnapshotRequest>,
    ) -> Result<Response<pb::Copy>, Status> {
        let started = Instant::now();
        let result = async {
            let (metadata, extensions, message) = request.into_parts();
            let caller = caller(&extensions)?;
            let copy_request = convert::copy_request(message);
            let action = Action::CopyClusterSnapshot;
            // The decision is made inside the workflow, once the source is known; it is
            // audited here, after AWS answered, with the request id.
            let mut decided: Option<(Decision, String, String)> = None;
            let authorize = |source: &ClusterSnapshot, context: &crate::copy::CopyContext| {
                let decision = self.policies.decide(&caller, action, source, Some(context));
                let destination =
                    format!("{}/{}/{}", context.destination_account, context.destination_region, context.target);
                let verdict = permitted(action, decision.clone());
                decided = Some((decision, source.arn.clone(), destination));
                verdict
            };
            let copied = self.within_deadline(&metadata, self.copies.copy(&copy_request, authorize)).await;
            if let Some((decision, resource, destination)) = &decided {
                let (aws_request_id, outcome) = match &copied {
                    Ok(c) => (c.aws_request_id.clone(), "ok".to_owned()),
                    Err(status) => (None, format!("{:?}", status.code())),
                };
                DecisionEvent {
                    caller: &caller,
                    action,
                    resource,
                    destination: Some(destination.clone()),
                    decision,
                    aws_request_id: aws_request_id.as_deref(),
                    outcome: decision.allowed.then_some(outcome.as_str()),
                }
                .emit();
            }
            Ok(Response::new(convert::copy(&copied?.snapshot)))
        }
        .await;
        self.observed("CopyClusterSnapshot", started, result)
    }

    async fn get_copy(&self, request: Request<pb::GetCopyRequest>) -> Result<Response<pb::Copy>, Status> {
        let started = Instant::now();
        let result = async {
            let (metadata, extensions, message) = request.into_parts();
            let caller = caller(&extensions)?;
            let Located { account, region, id, arn, .. } = self.copies.locate(&message.name)?;
            // A poller watching this snapshot saw it within the shortest poll interval: no AWS call.
            let snapshot = match self.hub.fresh(&account, &region, &id) {
                Some(snapshot) if arn.as_ref().is_none_or(|a| *a == snapshot.arn) => snapshot,
                _ => self.within_deadline(&metadata, self.copies.get(&message.name)).await?,
            };
            self.authorize(&caller, Action::GetCopy, &snapshot)?;
            Ok(Response::new(convert::copy(&snapshot)))
        }
        .await;
        self.observed("GetCopy", started, result)
    }

    type WatchCopyStream = EventStream;

    async fn watch_copy(&self, request: Request<pb::WatchCopyRequest>) -> Result<Response<EventStream>, Status> {
        let started = Instant::now();
        let result = async {
            let (metadata, extensions, message) = request.into_parts();
            let caller = caller(&extensions)?;
            let Located { account, region, id, arn, .. } = self.copies.locate(&message.name)?;
            let permit = self.hub.stream_permit()?;
            // The gateway's request timeout does not bound a stream; the caller's deadline does.
            let deadline = deadline::caller_deadline(&metadata).map(|d| tokio::time::Instant::now() + d);
            let mut subscription = self.hub.subscribe(&account, &region, &id);
            let first = self
                .within_deadline(&metadata, async { subscription.first().await.ok_or(Error::ShuttingDown) })
                .await?;
            match &*first {
                Observation::Gone { cancelled: false, .. } => return Err(not_found(&message.name).into()),
                Observation::Present { snapshot, .. } if arn.as_ref().is_some_and(|a| *a != snapshot.arn) => {
                    return Err(not_found(&message.name).into());
                }
                Observation::Present { snapshot, .. } | Observation::Gone { last: Some(snapshot), .. } => {
                    self.authorize(&caller, Action::WatchCopy, snapshot)?;
                }
                // Cancelled before anyone saw it, or polling failing: nothing to decide on.
                Observation::Gone { last: None, .. } => return Err(not_found(&message.name).into()),
                Observation::Failing { error } => return Err(Error::Aws(error.clone()).into()),
            }
            let events = self.hub.stream(subscription, first, permit, deadline);
            // The server span lasts as long as the stream; each change is an event on it.
            let span = tracing::Span::current();
            let trace_id = crate::telemetry::trace_id_of(&span).unwrap_or_default();
            let stream = events.map(move |item| {
                let event = item.map_err(Status::from)?;
                if event.change != crate::watch::Change::Heartbeat {
                    tracing::debug!(
                        target: crate::telemetry::STREAM_EVENTS,
                        parent: &span,
                        change = ?event.change,
                        state = ?event.state,
                        percent = event.snapshot.percent_progress,
                        "copy progress"
                    );
                }
                Ok(convert::event(event, &trace_id))
            });
            Ok(Response::new(Box::pin(stream) as EventStream))
        }
        .await;
        self.observed("WatchCopy", started, result)
    }

    async fn cancel_copy(&self, request: Request<pb::CancelCopyRequest>) -> Result<Response<pb::Copy>, Status> {
        let started = Instant::now();
        let result = async {
            let (metadata, extensions, message) = request.into_parts();
            let caller = caller(&extensions)?;
            let authorize = |snapshot: &ClusterSnapshot| self.authorize(&caller, Action::CancelCopy, snapshot);
            let (snapshot, state) =
                self.within_deadline(&metadata, self.copies.cancel(&message.name, authorize)).await?;
            if state == CopyState::Cancelled {
                self.hub.record_cancelled(&snapshot);
            }
            Ok(Response::new(convert::copy_in_state(&snapshot, state)))
        }
        .await;
        self.observed("CancelCopy", started, result)
    }
}

/// The caller the authentication layer established.
fn caller(extensions: &tonic::Extensions) -> Result<Caller, Error> {
    extensions
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Error::Internal("a call reached a handler unauthenticated".into()))
}

fn permitted(action: Action, decision: Decision) -> Result<(), Error> {
    if decision.allowed {
        Ok(())
    } else {
        Err(Error::PermissionDenied { action: action.name(), policies: decision.policies })
    }
}

fn not_found(name: &str) -> Error {
    Error::Aws(AwsError {
        kind: AwsErrorKind::NotFound,
        action: "DescribeDBClusterSnapshots",
        code: Some("DBClusterSnapshotNotFoundFault".into()),
        message: format!("DBClusterSnapshot {name} not found."),
        request_id: None,
    })
}
