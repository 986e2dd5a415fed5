//! The tonic service, thin: each handler decodes the request, calls one function of the core
//! (copy workflow or watch hub), and encodes the answer. Deadlines, metrics, the server span
//! and authentication are layers around it (`startup`); errors become statuses in one place,
//! `crate::error`. What is here besides: authorization decisions with their audit events.

mod convert;
pub(crate) use convert::plan_message;
mod revocable;
mod wire;
pub(crate) use wire::{WATCH_COPY, WatchCopyRoute};

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
use crate::plan::{Plans, owner_of};
use revocable::Revocable;
use snapgate_domain::ClusterSnapshot;
use snapgate_proto as pb;
use snapgate_proto::snapshot_copy_service_server::SnapshotCopyService;

pub(crate) struct Api {
    copies: Arc<CopyWorkflow>,
    plans: Arc<Plans>,
    policies: Arc<PolicyStore>,
}

impl Api {
    pub(crate) fn new(copies: Arc<CopyWorkflow>, plans: Arc<Plans>, policies: Arc<PolicyStore>) -> Api {
        Api { copies, plans, policies }
    }

    /// Decides `action` on the plan `name` (owned by `owner`; "" while it does not exist) for
    /// `caller`, with its audit event.
    fn authorize_plan(&self, caller: &Caller, action: Action, name: &str, owner: &str) -> Result<(), Error> {
        let decision = self.policies.decide_plan(caller, action, name, owner);
        DecisionEvent::decided(caller, action, &format!("plan/{name}"), None, &decision);
        permitted(action, decision)
    }

    /// Decides `action` on `snapshot` for `caller`, with its audit event.
    fn authorize(&self, caller: &Caller, action: Action, snapshot: &ClusterSnapshot) -> Result<(), Error> {
        let decision = self.policies.decide(caller, action, snapshot, None);
        DecisionEvent::decided(caller, action, &snapshot.arn, None, &decision);
        permitted(action, decision)
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::CopyEvent, Status>> + Send>>;

impl Api {
    /// Opens a WatchCopy stream: its events, authorized again whenever the policies change.
    async fn open_watch(
        &self,
        extensions: tonic::Extensions,
        message: pb::WatchCopyRequest,
    ) -> Result<Revocable, Status> {
        // Shared with the stream for its life, not copied.
        let caller = shared_caller(&extensions)?;
        // The gateway's request timeout does not bound a stream; the caller's deadline does.
        let deadline = extensions.get::<CallerDeadline>().and_then(|d| d.0);
        let authorize = |snapshot: &ClusterSnapshot| self.authorize(&caller, Action::WatchCopy, snapshot);
        let turn = extensions.get::<crate::call::OpeningTurn>();
        let events = self.copies.watch(&message.name, deadline, turn, authorize).await?;
        let key = extensions.get::<SigningKeyHold>().cloned();
        Ok(Revocable::new(events, self.policies.clone(), caller, key))
    }
}

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
        // Borrowed, not cloned: a read is the hottest call.
        let caller = caller_of(&extensions)?;
        let copy = self.copies.get(&message.name, message.fresh, caller).await?;
        self.authorize(caller, Action::GetCopy, &copy.snapshot)?;
        Ok(Response::new(convert::view(&copy)))
    }

    type WatchCopyStream = EventStream;

    async fn watch_copy(&self, request: Request<pb::WatchCopyRequest>) -> Result<Response<EventStream>, Status> {
        // Served by `wire` on the gRPC listener; this is the generated handler's way in.
        let (_, extensions, message) = request.into_parts();
        Ok(Response::new(Box::pin(self.open_watch(extensions, message).await?) as EventStream))
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

    async fn apply_plan(&self, request: Request<pb::ApplyPlanRequest>) -> Result<Response<pb::Plan>, Status> {
        let (_, extensions, message) = request.into_parts();
        let caller = caller(&extensions)?;
        let spec = convert::plan_spec(message.plan.unwrap_or_default());
        let valid = self.plans.validate(&spec)?;
        let owner = self.plans.record(&valid.name).await?.map(|r| r.owner).unwrap_or_default();
        self.authorize_plan(&caller, Action::ApplyPlan, &valid.name, &owner)?;
        let view = self.plans.apply(&valid, &caller).await?;
        Ok(Response::new(convert::plan_view(&view)))
    }

    async fn get_plan(&self, request: Request<pb::GetPlanRequest>) -> Result<Response<pb::Plan>, Status> {
        let (_, extensions, message) = request.into_parts();
        let caller = caller(&extensions)?;
        let record = self.plans.existing(&message.name).await?;
        self.authorize_plan(&caller, Action::GetPlan, &record.name, &record.owner)?;
        Ok(Response::new(convert::plan_view(&self.plans.view(record)?)))
    }

    async fn list_plans(
        &self,
        request: Request<pb::ListPlansRequest>,
    ) -> Result<Response<pb::ListPlansResponse>, Status> {
        let (_, extensions, _) = request.into_parts();
        let caller = caller(&extensions)?;
        let mut plans = Vec::new();
        let mut hidden = 0;
        for record in self.plans.list().await? {
            if self.policies.decide_plan(&caller, Action::ListPlans, &record.name, &record.owner).allowed {
                plans.push(convert::plan_view(&self.plans.view(record)?));
            } else {
                hidden += 1;
            }
        }
        crate::audit::list_decision_of(Action::ListPlans, &caller, plans.len(), hidden);
        Ok(Response::new(pb::ListPlansResponse { plans }))
    }

    async fn delete_plan(&self, request: Request<pb::DeletePlanRequest>) -> Result<Response<pb::Plan>, Status> {
        let (_, extensions, message) = request.into_parts();
        let caller = caller(&extensions)?;
        let record = self.plans.existing(&message.name).await?;
        self.authorize_plan(&caller, Action::DeletePlan, &record.name, &record.owner)?;
        Ok(Response::new(convert::plan_view(&self.plans.delete(&record, &caller).await?)))
    }

    async fn preview_plan(
        &self,
        request: Request<pb::PreviewPlanRequest>,
    ) -> Result<Response<pb::PlanPreview>, Status> {
        let (_, extensions, message) = request.into_parts();
        let caller = caller(&extensions)?;
        // A plan given in the request is previewed as the caller, who would own it; a stored
        // one as its owner.
        let (valid, owner) = match message.plan {
            Some(plan) => {
                let valid = self.plans.validate(&convert::plan_spec(plan))?;
                let owner = self.plans.record(&valid.name).await?.map(|r| r.owner).unwrap_or_default();
                self.authorize_plan(&caller, Action::PreviewPlan, &valid.name, &owner)?;
                (valid, caller.clone())
            }
            None => {
                let record = self.plans.existing(&message.name).await?;
                self.authorize_plan(&caller, Action::PreviewPlan, &record.name, &record.owner)?;
                (self.plans.valid(&record)?, owner_of(&record))
            }
        };
        let preview = self.plans.preview(&valid, &owner).await?;
        Ok(Response::new(pb::PlanPreview {
            plan: Some(convert::plan_message(&preview.spec)),
            items: preview.items.iter().map(convert::run_item).collect(),
            quotas: preview.quotas.iter().map(convert::quota_message).collect(),
        }))
    }

    async fn run_plan(&self, request: Request<pb::RunPlanRequest>) -> Result<Response<pb::PlanRun>, Status> {
        let (_, extensions, message) = request.into_parts();
        let caller = caller(&extensions)?;
        let record = self.plans.existing(&message.name).await?;
        self.authorize_plan(&caller, Action::RunPlan, &record.name, &record.owner)?;
        // Validated now: a plan that no longer holds with the gateway's settings says so here.
        self.plans.valid(&record)?;
        let run = self.plans.run_now(&record).await?;
        Ok(Response::new(convert::run_view(&run)))
    }

    async fn list_plan_runs(
        &self,
        request: Request<pb::ListPlanRunsRequest>,
    ) -> Result<Response<pb::ListPlanRunsResponse>, Status> {
        let (_, extensions, message) = request.into_parts();
        let caller = caller(&extensions)?;
        let record = self.plans.existing(&message.name).await?;
        self.authorize_plan(&caller, Action::ListPlanRuns, &record.name, &record.owner)?;
        let runs = self.plans.runs(&record.name, message.page_size).await?;
        Ok(Response::new(pb::ListPlanRunsResponse { runs: runs.iter().map(convert::run_view).collect() }))
    }
}

/// The caller the authentication layer established.
fn caller(extensions: &tonic::Extensions) -> Result<Caller, Error> {
    caller_of(extensions).cloned()
}

fn caller_of(extensions: &tonic::Extensions) -> Result<&Caller, Error> {
    shared(extensions).map(|caller| &**caller)
}

/// The caller, shared rather than copied (a stream keeps it for its life).
fn shared_caller(extensions: &tonic::Extensions) -> Result<Arc<Caller>, Error> {
    shared(extensions).cloned()
}

fn shared(extensions: &tonic::Extensions) -> Result<&Arc<Caller>, Error> {
    extensions.get::<Arc<Caller>>().ok_or_else(|| Error::Internal("a call reached a handler unauthenticated".into()))
}

fn permitted(action: Action, decision: Decision) -> Result<(), Error> {
    if decision.allowed {
        Ok(())
    } else {
        Err(Error::PermissionDenied { action: action.name(), policies: decision.policies })
    }
}
