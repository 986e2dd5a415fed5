//! The tonic service, thin: each handler decodes the request, calls one function of the core
//! (copy workflow or watch hub), and encodes the answer. Deadlines, metrics, the server span
//! and authentication are layers around it (`startup`); errors become statuses in one place,
//! `crate::error`. What is here besides: authorization decisions with their audit events.

mod convert;
pub(crate) mod deadline;

use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::audit::DecisionEvent;
use crate::auth::Caller;
use crate::auth::policy::{Action, CopyContext, Decision, PolicyStore};
use crate::copy::{CopyService, Located};
use crate::error::Error;
use crate::watch::{Change, WatchHub, WatchTarget};
use deadline::CallerDeadline;
use snapgate_domain::ClusterSnapshot;
use snapgate_proto as pb;
use snapgate_proto::snapshot_copy_service_server::SnapshotCopyService;

pub(crate) struct Api {
    copies: Arc<CopyService>,
    hub: Arc<WatchHub>,
    policies: Arc<PolicyStore>,
}

impl Api {
    pub(crate) fn new(copies: Arc<CopyService>, hub: Arc<WatchHub>, policies: Arc<PolicyStore>) -> Api {
        Api { copies, hub, policies }
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
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::CopyEvent, Status>> + Send>>;

#[tonic::async_trait]
impl SnapshotCopyService for Api {
    async fn copy_cluster_snapshot(
        &self,
        request: Request<pb::CopyClusterSnapshotRequest>,
    ) -> Result<Response<pb::Copy>, Status> {
        let (_, extensions, message) = request.into_parts();
        let caller = caller(&extensions)?;
        let action = Action::CopyClusterSnapshot;
        // The decision is made inside the workflow, once the source is known; it is audited
        // here, after AWS answered, with the request id.
        let mut decided: Option<(Decision, String, String)> = None;
        let authorize = |source: &ClusterSnapshot, context: &CopyContext| {
            let decision = self.policies.decide(&caller, action, source, Some(context));
            let destination =
                format!("{}/{}/{}", context.destination_account, context.destination_region, context.target);
            let verdict = permitted(action, decision.clone());
            decided = Some((decision, source.arn.clone(), destination));
            verdict
        };
        let copied = self.copies.copy(&convert::copy_request(message), authorize).await;
        if let Some((decision, resource, destination)) = &decided {
            let (aws_request_id, outcome) = match &copied {
                Ok(c) => (c.aws_request_id.clone(), "ok".to_owned()),
                Err(error) => (None, format!("{:?}", Status::from(error.clone()).code())),
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

    async fn get_copy(&self, request: Request<pb::GetCopyRequest>) -> Result<Response<pb::Copy>, Status> {
        let (_, extensions, message) = request.into_parts();
        let caller = caller(&extensions)?;
        let snapshot = self.copies.get(&message.name).await?;
        self.authorize(&caller, Action::GetCopy, &snapshot)?;
        Ok(Response::new(convert::copy(&snapshot)))
    }

    type WatchCopyStream = EventStream;

    async fn watch_copy(&self, request: Request<pb::WatchCopyRequest>) -> Result<Response<EventStream>, Status> {
        let (_, extensions, message) = request.into_parts();
        let caller = caller(&extensions)?;
        let Located { account, region, id, arn, .. } = self.copies.locate(&message.name)?;
        let target =
            WatchTarget { account: &account, region: &region, id: &id, name: &message.name, arn: arn.as_deref() };
        // The gateway's request timeout does not bound a stream; the caller's deadline does.
        let deadline = extensions.get::<CallerDeadline>().and_then(|d| d.0);
        let authorize = |snapshot: &ClusterSnapshot| self.authorize(&caller, Action::WatchCopy, snapshot);
        let events = self.hub.watch(target, deadline, authorize).await?;
        // The server span lasts as long as the stream; each change is an event on it.
        let span = tracing::Span::current();
        let trace_id = crate::telemetry::trace_id_of(&span).unwrap_or_default();
        let stream = events.map(move |item| {
            let event = item.map_err(Status::from)?;
            if event.change != Change::Heartbeat {
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

    async fn cancel_copy(&self, request: Request<pb::CancelCopyRequest>) -> Result<Response<pb::Copy>, Status> {
        let (_, extensions, message) = request.into_parts();
        let caller = caller(&extensions)?;
        let authorize = |snapshot: &ClusterSnapshot| self.authorize(&caller, Action::CancelCopy, snapshot);
        let (snapshot, state) = self.copies.cancel(&message.name, authorize).await?;
        Ok(Response::new(convert::copy_in_state(&snapshot, state)))
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
