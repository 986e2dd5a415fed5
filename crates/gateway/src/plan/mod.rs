//! DR plans: a policy declared once ("every night at 03:00 Berlin time, copy the newest snapshot
//! of every production cluster to us-west-2, keep the last 7"), validated like a copy request.
//! This module holds the plan as declared and validated (`spec`), when it runs (`schedule`),
//! what a run decides with no AWS call (`decide`), a run itself (`run`) and the scheduler that
//! starts runs and takes over those of a replica that died (`scheduler`). `Plans` is the
//! workflow the API calls: apply, read, delete, preview and run plans.

pub(crate) mod decide;
mod run;
pub(crate) mod schedule;
pub(crate) mod scheduler;
pub(crate) mod spec;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::auth::policy::PolicyStore;
use crate::auth::{AuthMethod, Caller};
use crate::config::PlanSettings;
use crate::copy::CopyWorkflow;
use crate::error::{Error, FieldViolation};
use crate::metrics::Metrics;
use crate::store::Store;
use crate::store::plans::{NewRun, PlanRecord, Run, RunItem};
use crate::tasks::Tasks;
pub(crate) use spec::{PlanSpec, ValidPlan};

/// What a run did (or a preview would do) for one cluster at one destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Copied,
    UpToDate,
    SkippedInProgress,
    Expired,
    Refused,
    Failed,
    WouldCopy,
    WouldExpire,
    Available,
    NoSnapshot,
}

impl Outcome {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::Copied => "COPIED",
            Outcome::UpToDate => "UP_TO_DATE",
            Outcome::SkippedInProgress => "SKIPPED_IN_PROGRESS",
            Outcome::Expired => "EXPIRED",
            Outcome::Refused => "REFUSED",
            Outcome::Failed => "FAILED",
            Outcome::WouldCopy => "WOULD_COPY",
            Outcome::WouldExpire => "WOULD_EXPIRE",
            Outcome::Available => "AVAILABLE",
            Outcome::NoSnapshot => "NO_SNAPSHOT",
        }
    }

    pub(crate) fn parse(text: &str) -> Option<Outcome> {
        [
            Outcome::Copied,
            Outcome::UpToDate,
            Outcome::SkippedInProgress,
            Outcome::Expired,
            Outcome::Refused,
            Outcome::Failed,
            Outcome::WouldCopy,
            Outcome::WouldExpire,
            Outcome::Available,
            Outcome::NoSnapshot,
        ]
        .into_iter()
        .find(|o| o.as_str() == text)
    }
}

/// An item of a run or a preview.
pub(crate) fn item(
    cluster: &str,
    source: Option<&snapgate_domain::ClusterSnapshot>,
    destination: &str,
    copy: Option<&str>,
    outcome: Outcome,
    detail: Option<String>,
) -> RunItem {
    RunItem {
        cluster_id: cluster.to_owned(),
        source_arn: source.map(|s| s.arn.clone()),
        destination: destination.to_owned(),
        copy_name: copy.map(str::to_owned),
        outcome: outcome.as_str().to_owned(),
        detail,
        recovery_ms: source.and_then(|s| s.create_time).map(run::ms_of),
    }
}

/// The facts policies look at of the caller who applied a plan, kept with it: its runs decide as
/// this caller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct OwnerFacts {
    method: String,
    #[serde(default)]
    groups: Vec<String>,
    team: Option<String>,
    issuer: Option<String>,
}

fn owner_facts(caller: &Caller) -> String {
    let facts = OwnerFacts {
        method: caller.method.as_str().to_owned(),
        groups: caller.groups.clone(),
        team: caller.team.clone(),
        issuer: caller.issuer.clone(),
    };
    serde_json::to_string(&facts).unwrap_or_else(|_| "{}".to_owned())
}

/// The owner of a stored plan, as its runs decide.
pub(crate) fn owner_of(record: &PlanRecord) -> Caller {
    let facts: Option<OwnerFacts> = serde_json::from_str(&record.owner_facts).ok();
    let method = match facts.as_ref().map(|f| f.method.as_str()) {
        Some("mtls") => AuthMethod::Mtls,
        Some("jwt") => AuthMethod::Jwt,
        _ => AuthMethod::StaticToken,
    };
    Caller {
        id: record.owner.clone(),
        method,
        groups: facts.as_ref().map(|f| f.groups.clone()).unwrap_or_default(),
        team: facts.as_ref().and_then(|f| f.team.clone()),
        issuer: facts.and_then(|f| f.issuer),
    }
}

/// A plan as the API shows it.
pub(crate) struct PlanView {
    pub record: PlanRecord,
    pub spec: PlanSpec,
    pub next_run: Option<SystemTime>,
}

/// A run as the API shows it, with its items.
pub(crate) struct RunView {
    pub run: Run,
    pub items: Vec<RunItem>,
}

/// What a run now would do.
pub(crate) struct Preview {
    pub spec: PlanSpec,
    pub items: Vec<RunItem>,
    pub quotas: Vec<QuotaView>,
}

/// The manual-snapshot quota at one destination, and what a run now would do to it.
pub(crate) struct QuotaView {
    /// `ACCOUNT/REGION`.
    pub destination: String,
    pub quota: Option<crate::aws::SnapshotQuota>,
    pub would_copy: usize,
    pub would_expire: usize,
    /// Why the quota is not known.
    pub detail: Option<String>,
}

impl QuotaView {
    pub(crate) fn unknown(destination: String, detail: String) -> QuotaView {
        QuotaView { destination, quota: None, would_copy: 0, would_expire: 0, detail: Some(detail) }
    }

    /// Slots left once the run's copies are requested, before its expiries.
    pub(crate) fn left_while_copying(&self) -> Option<i64> {
        self.quota.map(|q| q.max - q.used - i64::try_from(self.would_copy).unwrap_or(i64::MAX))
    }

    /// Slots left after the run's expiries too.
    pub(crate) fn left_after_run(&self) -> Option<i64> {
        self.left_while_copying().map(|left| left + i64::try_from(self.would_expire).unwrap_or(0))
    }
}

/// Runs a plan's API shows at most.
const MAX_RUNS_LISTED: i64 = 100;

pub(crate) struct Plans {
    store: Arc<Store>,
    copies: Arc<CopyWorkflow>,
    policies: Arc<PolicyStore>,
    metrics: Arc<Metrics>,
    tasks: Tasks,
    settings: PlanSettings,
    /// This replica, as the runs it runs name it.
    replica: String,
    /// Wakes the scheduler: a plan was applied here.
    wake: Notify,
}

impl Plans {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        store: Arc<Store>,
        copies: Arc<CopyWorkflow>,
        policies: Arc<PolicyStore>,
        metrics: Arc<Metrics>,
        tasks: Tasks,
        settings: PlanSettings,
    ) -> Arc<Plans> {
        Arc::new(Plans {
            store,
            copies,
            policies,
            metrics,
            tasks,
            settings,
            replica: uuid::Uuid::new_v4().to_string(),
            wake: Notify::new(),
        })
    }

    /// Validates a plan as the API names its fields (`plan.copy[1].kms_key_id`).
    pub(crate) fn validate(&self, spec: &PlanSpec) -> Result<ValidPlan, Error> {
        spec::validate(spec, "plan", self.copies.accounts().default_region(), &self.copies.served())
            .map_err(Error::InvalidArgument)
    }

    /// A stored plan, by name (names are not case-sensitive).
    pub(crate) async fn record(&self, name: &str) -> Result<Option<PlanRecord>, Error> {
        self.store.plan(&name.to_ascii_lowercase()).await.map_err(store_error)
    }

    /// A stored plan, or NOT_FOUND.
    pub(crate) async fn existing(&self, name: &str) -> Result<PlanRecord, Error> {
        if name.is_empty() {
            return Err(Error::InvalidArgument(vec![FieldViolation::new("name", "a plan's name is required")]));
        }
        self.record(name).await?.ok_or_else(|| Error::NotFound { what: "plan", name: name.to_owned() })
    }

    /// Creates or replaces a plan, owned by `caller` from now on.
    pub(crate) async fn apply(&self, plan: &ValidPlan, caller: &Caller) -> Result<PlanView, Error> {
        let spec = PlanSpec { name: plan.name.clone(), ..plan.spec.clone() };
        let text = serde_json::to_string(&spec).map_err(|e| Error::Internal(format!("plan to JSON: {e}")))?;
        let facts = owner_facts(caller);
        // Applying what is applied already changes nothing (a CronJob applying its file hourly).
        if let Some(existing) = self.record(&plan.name).await?
            && existing.spec == text
            && existing.owner == caller.id
            && existing.owner_facts == facts
        {
            return self.view(existing);
        }
        let record = self.store.put_plan(&plan.name, &caller.id, &facts, &text, now_ms()).await.map_err(store_error)?;
        crate::audit::plan_event("applied", &plan.name, caller, record.generation);
        self.wake.notify_one();
        self.view(record)
    }

    /// A stored plan as the API shows it.
    pub(crate) fn view(&self, record: PlanRecord) -> Result<PlanView, Error> {
        let spec: PlanSpec = serde_json::from_str(&record.spec)
            .map_err(|e| Error::Internal(format!("stored plan {} does not read: {e}", record.name)))?;
        let next_run = schedule::Schedule::parse(&spec.schedule, &spec.timezone)
            .ok()
            .and_then(|s| s.next_after(scheduler::utc_now()))
            .map(SystemTime::from);
        Ok(PlanView { record, spec, next_run })
    }

    /// Every stored plan, by name.
    pub(crate) async fn list(&self) -> Result<Vec<PlanRecord>, Error> {
        self.store.plans().await.map_err(store_error)
    }

    /// Deletes a plan: it runs no more. Its copies and runs stay.
    pub(crate) async fn delete(&self, record: &PlanRecord, caller: &Caller) -> Result<PlanView, Error> {
        if !self.store.delete_plan(&record.name).await.map_err(store_error)? {
            return Err(Error::NotFound { what: "plan", name: record.name.clone() });
        }
        crate::audit::plan_event("deleted", &record.name, caller, record.generation);
        self.view(record.clone())
    }

    /// A stored plan, validated again with the gateway's settings of now (a region no longer
    /// served is a violation).
    pub(crate) fn valid(&self, record: &PlanRecord) -> Result<ValidPlan, Error> {
        let spec: PlanSpec = serde_json::from_str(&record.spec)
            .map_err(|e| Error::Internal(format!("stored plan {} does not read: {e}", record.name)))?;
        self.validate(&spec)
    }

    /// What a run of `plan` now would do, decided as `owner`; nothing is changed.
    pub(crate) async fn preview(&self, plan: &ValidPlan, owner: &Caller) -> Result<Preview, Error> {
        let (items, quotas) = self.look(plan, owner).await?;
        Ok(Preview { spec: PlanSpec { name: plan.name.clone(), ..plan.spec.clone() }, items, quotas })
    }

    /// Starts a run of a stored plan now, outside its schedule.
    pub(crate) async fn run_now(self: &Arc<Self>, record: &PlanRecord) -> Result<RunView, Error> {
        let now = now_ms();
        let id = uuid::Uuid::new_v4().to_string();
        let new = NewRun {
            slot_key: format!("{}/manual/{id}", record.name),
            id,
            plan: record.name.clone(),
            slot_ms: None,
            cause: "manual".into(),
            state: "RUNNING".into(),
            started_ms: now,
            reason: None,
            runner: self.replica.clone(),
        };
        let run = self
            .store
            .claim_run(&new)
            .await
            .map_err(store_error)?
            .ok_or_else(|| Error::Internal("a new run's key was taken".into()))?;
        self.start(run.clone());
        Ok(RunView { run, items: Vec::new() })
    }

    /// A plan's runs, newest first, each with its items.
    pub(crate) async fn runs(&self, plan: &str, limit: i32) -> Result<Vec<RunView>, Error> {
        let limit = match limit {
            0 => 20,
            n if (1..=MAX_RUNS_LISTED as i32).contains(&n) => i64::from(n),
            _ => {
                return Err(Error::InvalidArgument(vec![FieldViolation::new(
                    "page_size",
                    format!("must be 1 to {MAX_RUNS_LISTED} (0: 20)"),
                )]));
            }
        };
        let runs = self.store.runs(&plan.to_ascii_lowercase(), limit).await.map_err(store_error)?;
        let ids: Vec<String> = runs.iter().map(|r| r.new.id.clone()).collect();
        let mut items = self.store.items_of_runs(&ids).await.map_err(store_error)?;
        Ok(runs
            .into_iter()
            .map(|run| {
                let items = items.remove(&run.new.id).unwrap_or_default();
                RunView { run, items }
            })
            .collect())
    }

    /// Runs `run` as one of the gateway's tasks.
    fn start(self: &Arc<Self>, run: Run) {
        let plans = self.clone();
        self.tasks.spawn(async move { plans.execute(run).await });
    }

    /// Waits for `caller`'s turn at an AWS call: a plan's run waits out its owner's share
    /// rather than failing, within the run's own time.
    async fn turn(&self, caller: &Caller, region: &str) -> Result<crate::share::Turn, Error> {
        loop {
            match self.copies.spend(caller, region).await {
                Err(Error::OverShare { retry_after, .. }) => {
                    tokio::time::sleep(retry_after.max(Duration::from_millis(10))).await;
                }
                other => return other,
            }
        }
    }
}

pub(crate) fn now_ms() -> i64 {
    crate::copy::now_ms()
}

fn store_error(error: crate::store::StoreError) -> Error {
    crate::copy::store_error(error)
}
