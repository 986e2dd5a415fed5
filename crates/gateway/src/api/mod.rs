//! The tonic service, thin: each handler decodes the request, calls one function of the core
//! (copy workflow or watch hub), and encodes the answer. Deadlines, metrics, the server span
//! and authentication are layers around it (`startup`); errors become statuses in one place,
//! `crate::error`. What is here besides: authorization decisions with their audit events.

mod convert;
mod revocable;

use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::audit::DecisionEvent;
use crate::auth::Caller;
use crate::auth::jwt::SigningKeyHold;
use crate::auth::policy::{Action, CopyContext, Decision, PolicyStore};
use crate::call::CallerDeadline;
use crate::copy::CopyWorkflow;
use crate::error::Error;
use revocable::Revocable;
use snapgate_domain::ClusterSnapshot;
use snapgate_proto as pb;
use snapgate_proto::snapshot_copy_service_server::SnapshotCopyService;

pub(crate) struct Api {
    copies: Arc<CopyWorkflow>,
    policies: Arc<PolicyStore>,
}

impl Api {
    pub(crate) fn new(copies: Arc<CopyWorkflow>, policies: Arc<PolicyStore>) -> Api {
        Api { copies, policies }
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
        let copied = self.copies.copy(&convert::copy_request(message), &caller, authorize).await;
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
        Ok(Response::new(convert::view(&copied?)))
    }

    async fn get_copy(&self, request: Request<pb::GetCopyRequest>) -> Result<Response<pb::Copy>, Status> {
        let (_, extensions, message) = request.into_parts();
        let caller = caller(&extensions)?;
        let copy = self.copies.get(&message.name, message.fresh, &caller).await?;
        self.authorize(&caller, Action::GetCopy, &copy.snapshot)?;
        Ok(Response::new(convert::view(&copy)))
    }

    type WatchCopyStream = EventStream;

    async fn watch_copy(&self, request: Request<pb::WatchCopyRequest>) -> Result<Response<EventStream>, Status> {
        let (_, extensions, message) = request.into_parts();
        let caller = caller(&extensions)?;
        // The gateway's request timeout does not bound a stream; the caller's deadline does.
        let deadline = extensions.get::<CallerDeadline>().and_then(|d| d.0);
        let authorize = |snapshot: &ClusterSnapshot| self.authorize(&caller, Action::WatchCopy, snapshot);
        let turn = extensions.get::<crate::call::OpeningTurn>();
        let events = self.copies.watch(&message.name, deadline, turn, authorize).await?;
        let key = extensions.get::<SigningKeyHold>().cloned();
        let stream = Revocable::new(events, self.policies.clone(), caller, key);
        Ok(Response::new(Box::pin(stream) as EventStream))
    }

    async fn cancel_copy(&self, request: Request<pb::CancelCopyRequest>) -> Result<Response<pb::Copy>, Status> {
        let (_, extensions, message) = request.into_parts();
        let caller = caller(&extensions)?;
        let authorize = |snapshot: &ClusterSnapshot| self.authorize(&caller, Action::CancelCopy, snapshot);
        let copy = self.copies.cancel(&message.name, &caller, authorize).await?;
        Ok(Response::new(convert::view(&copy)))
    }

    async fn list_copies(
        &self,
        request: Request<pb::ListCopiesRequest>,
    ) -> Result<Response<pb::ListCopiesResponse>, Status> {
        let (_, extensions, message) = request.into_parts();
        let caller = caller(&extensions)?;
        let (copies, next_page_token) = self.copies.list(&convert::list_request(message)).await?;
        // Each copy is shown only where a policy permits it (audited as one event a page).
        let mut shown = Vec::with_capacity(copies.len());
        let mut hidden = 0;
        for copy in &copies {
            let own = copy.requested_by.as_deref() == Some(caller.id.as_str());
            if self.policies.decide_list(&caller, &copy.snapshot, own).allowed {
                shown.push(convert::view(copy));
            } else {
                hidden += 1;
            }
        }
        crate::audit::list_decision(&caller, shown.len(), hidden);
        Ok(Response::new(pb::ListCopiesResponse { copies: shown, next_page_token }))
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
