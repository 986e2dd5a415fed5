//! The copy workflow: validate the request, know the source, apply its engine's rules, and
//! admit the copy as a job (`jobs`), started at once when a slot is free; read a copy's state
//! (its job while it waits, then the watch hub's fresh observation or AWS); watch it; cancel
//! it; list the jobs.

mod dispatch;
mod source_rules;
pub(crate) mod validate;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub(crate) use dispatch::Dispatcher;
use dispatch::Started;
pub(crate) use dispatch::{now_ms, store_error};
use validate::{CopyName, ValidCopy, list_filter, page_token, parse_copy_name, validate};
pub(crate) use validate::{CopyRequest, ListRequest, Served, check_kms_key, tag_violations};

use crate::auth::Caller;
use crate::auth::policy::CopyContext;
use crate::aws::{Accounts, AwsErrorKind, Rds};
use crate::call::OpeningTurn;
use crate::error::{Error, FieldViolation};
use crate::store::{Admitted, Job, JobFilter, JobState, NewJob};
use crate::watch::{QueueFollower, QueuedLook, QueuedWatch, WatchHub, WatchStream, WatchTarget};
use snapgate_domain::rules::SnapshotRef;
use snapgate_domain::{Arn, ClusterSnapshot, CopyState};

/// How long a described source is trusted, so a burst of copies of one source costs one call.
const SOURCE_TTL: Duration = Duration::from_secs(5);
/// Entries the source cache holds at most (they live seconds; this bounds a burst's memory).
const CACHE_CAPACITY: u64 = 100_000;
/// How long a request waits for a job another request (or replica) is starting.
const SETTLE: Duration = Duration::from_secs(30);

/// A copy as the API shows it: the snapshot (as AWS describes it, or as it will be while the
/// copy waits), its state, and what the gateway knows of the job behind it.
pub(crate) struct CopyView {
    pub snapshot: ClusterSnapshot,
    pub state: CopyState,
    /// While queued: place (1: next; 0: being started) and the limit it waits on.
    pub queue: Option<(i64, u32)>,
    pub requested_by: Option<String>,
    pub request_time: Option<SystemTime>,
    pub failure: Option<String>,
    /// The request id of the AWS call that started the copy, for the audit trail.
    pub aws_request_id: Option<String>,
}

impl CopyView {
    pub(super) fn of_snapshot(snapshot: ClusterSnapshot) -> CopyView {
        let state = snapshot.state();
        CopyView {
            snapshot,
            state,
            queue: None,
            requested_by: None,
            request_time: None,
            failure: None,
            aws_request_id: None,
        }
    }

    pub(super) fn with_job(mut self, job: &Job) -> CopyView {
        self.requested_by = Some(job.new.caller.clone());
        self.request_time =
            Some(SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(job.new.created_ms).unwrap_or(0)));
        self.failure = job.failure.clone().filter(|_| job.state == JobState::Failed);
        self.aws_request_id = job.aws_request_id.clone();
        self
    }
}

/// Where a copy named by a request lives.
pub(crate) struct Located {
    /// The clients that can see it.
    pub rds: Arc<Rds>,
    /// The account its ARN names, or "" for a bare identifier (the gateway's own).
    pub account: String,
    pub region: String,
    pub id: String,
    pub arn: Option<String>,
}

impl Located {
    /// Whether `snapshot` is the one this name means (an ARN names the account too).
    pub(crate) fn is(&self, snapshot: &ClusterSnapshot) -> bool {
        self.arn.as_ref().is_none_or(|arn| *arn == snapshot.arn)
    }
}

pub(crate) struct CopyWorkflow {
    accounts: Arc<Accounts>,
    hub: Arc<WatchHub>,
    jobs: Arc<Dispatcher>,
    /// Watches of copies still in the queue.
    queued: Arc<QueueFollower>,
    /// Described sources, by (account, region, reference): concurrent requests for one
    /// source share one describe (moka's single flight), and the answer serves for seconds.
    sources: moka::future::Cache<String, ClusterSnapshot>,
    /// Whether finished jobs' snapshots still exist, by job id, while it is being decided.
    made: moka::future::Cache<String, Option<ClusterSnapshot>>,
    /// The regions the gateway serves (`aws.regions`).
    regions: Vec<String>,
}

impl CopyWorkflow {
    pub(crate) fn new(
        accounts: Arc<Accounts>,
        hub: Arc<WatchHub>,
        jobs: Arc<Dispatcher>,
        queued: Arc<QueueFollower>,
        regions: Vec<String>,
    ) -> CopyWorkflow {
        let sources = moka::future::Cache::builder().max_capacity(CACHE_CAPACITY).time_to_live(SOURCE_TTL).build();
        let made = moka::future::Cache::builder().max_capacity(CACHE_CAPACITY).time_to_live(SOURCE_TTL).build();
        CopyWorkflow { accounts, hub, jobs, queued, sources, made, regions }
    }

    /// Validates a copy, admits it as a job for `caller`, and starts it when a slot is free.
    /// Repeating a request returns the same copy while it waits, is copying, or is made and its
    /// snapshot exists; once that snapshot is gone (or the copy failed or was cancelled) the
    /// request is a new job, and the old one is history. A copy whose start fails for good (a
    /// KMS key that is not there, a quota) is this request's error and leaves no job behind.
    ///
    /// `authorize` decides once the source is known (its engine, tags and encryption are what
    /// policies look at) and before the engine's rules or any call that changes anything.
    pub(crate) async fn copy(
        &self,
        request: &CopyRequest,
        caller: &Caller,
        authorize: impl FnOnce(&ClusterSnapshot, &CopyContext) -> Result<(), Error>,
    ) -> Result<CopyView, Error> {
        let valid = tracing::info_span!("validate", otel.name = "validate")
            .in_scope(|| validate(request, self.accounts.default_region(), &Served(&self.regions)))
            .map_err(Error::InvalidArgument)?;
        let rds = self.accounts.destination(valid.destination_account.as_deref()).ok_or_else(|| {
            Error::InvalidArgument(vec![FieldViolation::new(
                "destination_account",
                format!(
                    "no role is configured for account {} (aws.accounts); leave it empty for the gateway's own account",
                    valid.destination_account.as_deref().unwrap_or_default()
                ),
            )])
        })?;
        let destination_account =
            valid.destination_account.clone().or_else(|| self.accounts.own_account().map(str::to_owned));
        let source = self.resolve_source(&rds, &valid, destination_account.as_deref(), caller).await?;
        let destination = destination_account.clone().unwrap_or_default();
        let cross_region = source.region != valid.destination_region;
        authorize(
            &source,
            &CopyContext {
                cross_account: !destination.is_empty() && !source.account.is_empty() && destination != source.account,
                plan: None,
                destination_account: destination.clone(),
                destination_region: valid.destination_region.clone(),
                target: valid.target.clone(),
                kms_key: valid.kms_key.as_ref().map(|(text, _)| text.clone()),
                tags: valid.tags.clone(),
                copy_tags: valid.copy_tags,
                cross_region,
            },
        )?;
        source_rules::check(&valid, &source, destination_account.as_deref())?;

        let new = NewJob {
            id: uuid::Uuid::new_v4().to_string(),
            caller: caller.id.clone(),
            source_ref: match &valid.source {
                SnapshotRef::Id(id) => id.clone(),
                SnapshotRef::Arn(arn) => arn.to_string(),
            },
            source_arn: source.arn.clone(),
            source_region: source.region.clone(),
            engine: source.engine.clone(),
            engine_version: source.engine_version.clone(),
            cluster_id: source.cluster_id.clone(),
            allocated_storage_gib: i64::from(source.allocated_storage_gib),
            encrypted: source.encrypted,
            account: destination,
            region: valid.destination_region.clone(),
            target: valid.target.clone(),
            kms_key_id: valid.kms_key.as_ref().map(|(text, _)| text.clone()),
            copy_tags: valid.copy_tags,
            tags: valid.tags.clone(),
            cross_region,
            created_ms: now_ms(),
        };
        let mut admitted = self.jobs.store.admit(&new).await.map_err(store_error)?;
        // A job that ended AVAILABLE is this request's copy only while its snapshot exists:
        // once it is gone the target is free, as it is for AWS, and the request is a new job.
        // (A failed, cancelled or deleted job gives way in `admit` already.) Bounded: each
        // round retires one job, and only a race with other requests makes another round.
        for _ in 0..3 {
            let Admitted::Existing(job) = &admitted else { break };
            if job.state != JobState::Available {
                break;
            }
            match self.made_copy(&rds, job, caller).await? {
                Some(snapshot) => {
                    // AWS names the source of a copy (moto does not: then the job's is taken).
                    let made_from = snapshot.source_arn.as_deref().unwrap_or(&job.new.source_arn);
                    if made_from != new.source_arn {
                        // AWS answers, as it would without a job (its fault, or a copy if the
                        // snapshot went since the describe).
                        let job = self.jobs.supersede(job, &new).await?;
                        return self.jobs.view(&job).await;
                    }
                    // A concurrent request may have found the copy gone meanwhile, retired this
                    // job and made a new copy: the snapshot described is then the new job's (its
                    // copy exists only once this job is retired), and so is the answer.
                    let current = self.jobs.store.get(&job.new.id).await.map_err(store_error)?;
                    if current.is_some_and(|j| j.state == JobState::Available) {
                        return Ok(CopyView::of_snapshot(snapshot).with_job(job));
                    }
                    admitted = self.jobs.store.admit(&new).await.map_err(store_error)?;
                    continue;
                }
                None => {
                    self.jobs.record_gone(job, true).await?;
                    admitted = self.jobs.store.admit(&new).await.map_err(store_error)?;
                }
            }
        }
        let job = match admitted {
            Admitted::Existing(job) if job.new.source_arn != new.source_arn => {
                if job.snapshot_arn.is_none() {
                    return Err(Error::AlreadyExists(format!(
                        "the copy {} waits in the queue to be made from another source, {}; choose another target_snapshot_id",
                        new.target, job.new.source_arn
                    )));
                }
                // Its snapshot exists (or did): AWS says how it stands.
                let job = self.jobs.supersede(&job, &new).await?;
                return self.jobs.view(&job).await;
            }
            Admitted::Existing(job) => self.jobs.settled(job, SETTLE).await?,
            Admitted::New(job) => {
                let outcomes = self.jobs.dispatch(&job.new.account, &job.new.region).await?;
                match outcomes.into_iter().find(|(id, _)| *id == job.new.id).map(|(_, outcome)| outcome) {
                    Some(Started::Failed(error)) => {
                        self.jobs.store.forget(&job.new.id).await.map_err(store_error)?;
                        return Err(error);
                    }
                    Some(Started::Copying(snapshot)) => {
                        let job = self.jobs.store.get(&job.new.id).await.map_err(store_error)?.unwrap_or(job);
                        return Ok(CopyView::of_snapshot(*snapshot).with_job(&job));
                    }
                    _ => {}
                }
                let job = self.jobs.store.get(&job.new.id).await.map_err(store_error)?.unwrap_or(job);
                self.jobs.settled(job, SETTLE).await?
            }
        };
        self.jobs.view(&job).await
    }

    /// The clients of the accounts copies go to.
    pub(crate) fn accounts(&self) -> &Arc<Accounts> {
        &self.accounts
    }

    /// Waits for `caller`'s turn at an AWS call in `region` (its share of the gateway's AWS
    /// budget); the turn is held while the call is made.
    pub(crate) async fn spend(&self, caller: &Caller, region: &str) -> Result<crate::share::Turn, Error> {
        self.jobs.share.spend(caller, region).await
    }

    /// Whether a copy of `source` as `request` asks would pass the request's rules and the
    /// source engine's, with no AWS call: what a plan's preview says of a copy it would make.
    pub(crate) fn check_copy(&self, request: &CopyRequest, source: &ClusterSnapshot) -> Result<(), Error> {
        let valid = validate(request, self.accounts.default_region(), &Served(&self.regions))
            .map_err(Error::InvalidArgument)?;
        let account = valid.destination_account.clone().or_else(|| self.accounts.own_account().map(str::to_owned));
        source_rules::check(&valid, source, account.as_deref())
    }

    /// The regions the gateway serves.
    pub(crate) fn served(&self) -> Served<'_> {
        Served(&self.regions)
    }

    /// The snapshot a finished job made, as AWS describes it now (`None`: it is gone). One
    /// describe decides for every request that asks about the job at once (moka's single
    /// flight); it is `caller`'s AWS call.
    async fn made_copy(&self, rds: &Rds, job: &Job, caller: &Caller) -> Result<Option<ClusterSnapshot>, Error> {
        let j = &job.new;
        let decided = self
            .made
            .try_get_with_by_ref(&j.id, async {
                let _turn = self.jobs.share.spend(caller, &j.region).await?;
                let snapshot = match rds.describe_cluster_snapshot(&j.region, &j.target).await {
                    Ok(snapshot) => snapshot,
                    Err(error) if error.kind == AwsErrorKind::NotFound => None,
                    Err(error) => return Err(error.into()),
                };
                // The identifier in another account than the job's is not its copy.
                Ok::<_, Error>(snapshot.filter(|s| job.snapshot_arn.as_ref().is_none_or(|arn| *arn == s.arn)))
            })
            .await
            .map_err(Arc::unwrap_or_clone);
        // Shared while it is being decided, not after: the next request asks AWS again.
        self.made.invalidate(&j.id).await;
        decided
    }

    /// Describes the source in its own region, as the destination account sees it. Requests
    /// for one source share one describe: the first describes, the others wait for it.
    async fn resolve_source(
        &self,
        rds: &Rds,
        valid: &ValidCopy,
        account: Option<&str>,
        caller: &Caller,
    ) -> Result<ClusterSnapshot, Error> {
        let reference = match &valid.source {
            SnapshotRef::Id(id) => id.to_ascii_lowercase(),
            SnapshotRef::Arn(arn) => arn.to_string(),
        };
        let key = format!("{}|{}|{}", account.unwrap_or(""), valid.source_region, reference);
        self.sources
            .try_get_with_by_ref(&key, async {
                // Only the caller whose request describes pays; the others wait for its answer.
                let _turn = self.jobs.share.spend(caller, &valid.source_region).await?;
                rds.describe_cluster_snapshot(&valid.source_region, &reference)
                    .await?
                    .ok_or_else(|| Error::NotFound { what: "snapshot", name: reference.clone() })
            })
            .await
            .map_err(Arc::unwrap_or_clone)
    }

    /// The job behind a copy's name, if the gateway made it.
    async fn job_of(&self, located: &Located) -> Result<Option<Job>, Error> {
        let account =
            if located.account.is_empty() { self.accounts.own_account().unwrap_or("") } else { &located.account };
        self.jobs.store.find(account, &located.region, &located.id).await.map_err(store_error)
    }

    /// The current state of a copy, by name: its job while it waits (or when it never
    /// started), then the watch hub's observation (shared by every reader, at most
    /// `watch::READ_FRESHNESS` shortest poll intervals old, no AWS call of the caller's own), or
    /// with `fresh` as AWS describes it now.
    /// The describes are `caller`'s AWS calls.
    pub(crate) async fn get(&self, name: &str, fresh: bool, caller: &Caller) -> Result<CopyView, Error> {
        let located = self.locate(name)?;
        let job = self.job_of(&located).await?;
        if let Some(job) = &job
            && (matches!(job.state, JobState::Queued | JobState::Starting) || job.snapshot_arn.is_none())
        {
            return self.jobs.view(job).await;
        }
        // Through the watch hub: concurrent reads share one call, reads of many snapshots
        // share a batched one. What the poll did not see is asked of AWS, for its exact answer.
        let snapshot = if fresh {
            self.describe(&located, name, caller).await
        } else {
            match self.hub.read(&located.account, &located.region, &located.id).await {
                Ok(Some(snapshot)) if located.is(&snapshot) => Ok(snapshot),
                Ok(_) => self.describe(&located, name, caller).await,
                Err(error) => Err(error),
            }
        };
        match (snapshot, job) {
            (Ok(snapshot), Some(job)) => Ok(CopyView::of_snapshot(snapshot).with_job(&job)),
            (Ok(snapshot), None) => Ok(CopyView::of_snapshot(snapshot)),
            // Gone from AWS since: the job remembers how it ended, and a copy that was made
            // and is gone now was deleted.
            (Err(Error::NotFound { .. }), Some(job)) if job.state.is_terminal() => self.ended(job).await,
            (Err(Error::Aws(e)), Some(job)) if e.kind == AwsErrorKind::NotFound && job.state.is_terminal() => {
                self.ended(job).await
            }
            (Err(error), _) => Err(error),
        }
    }

    /// A finished job whose snapshot AWS no longer has, as the API shows it.
    async fn ended(&self, job: Job) -> Result<CopyView, Error> {
        if job.state != JobState::Available {
            return self.jobs.view(&job).await;
        }
        self.jobs.record_gone(&job, false).await?;
        let job = self.jobs.store.get(&job.new.id).await.map_err(store_error)?.unwrap_or(job);
        self.jobs.view(&job).await
    }

    /// A describe of the copy for `caller`, never a cached observation.
    async fn describe(&self, located: &Located, name: &str, caller: &Caller) -> Result<ClusterSnapshot, Error> {
        let _turn = self.jobs.share.spend(caller, &located.region).await?;
        let snapshot = located.rds.describe_cluster_snapshot(&located.region, &located.id).await?;
        // An identifier that exists in another account than the ARN names is not this copy.
        snapshot.filter(|s| located.is(s)).ok_or_else(|| Error::NotFound { what: "copy", name: name.to_owned() })
    }

    /// Where a copy is, by name.
    pub(crate) fn locate(&self, name: &str) -> Result<Located, Error> {
        let CopyName { region, id, account, arn } =
            parse_copy_name(name, self.accounts.default_region(), &Served(&self.regions))
                .map_err(Error::InvalidArgument)?;
        Ok(Located { rds: self.accounts.for_snapshot_account(&account), account, region, id, arn })
    }

    /// Watches a copy: while it waits in the queue, QUEUED events as its place changes; from
    /// its start, the watch hub's events. `authorize` decides on the copy before any event.
    pub(crate) async fn watch(
        &self,
        name: &str,
        deadline: Option<tokio::time::Instant>,
        turn: Option<&OpeningTurn>,
        authorize: impl FnOnce(&ClusterSnapshot) -> Result<(), Error>,
    ) -> Result<WatchStream, Error> {
        let located = self.locate(name)?;
        match self.job_of(&located).await? {
            Some(job) if matches!(job.state, JobState::Queued | JobState::Starting) || job.snapshot_arn.is_none() => {
                let view = self.jobs.view(&job).await?;
                authorize(&view.snapshot)?;
                let first =
                    QueuedLook::Waiting { snapshot: Arc::new(view.snapshot), state: view.state, queue: view.queue };
                Ok(self.queued.watch(QueuedWatch { job_id: &job.new.id, name, first, deadline }))
            }
            _ => {
                let target = WatchTarget {
                    account: &located.account,
                    region: &located.region,
                    id: &located.id,
                    name,
                    arn: located.arn.as_deref(),
                    turn,
                };
                self.hub.watch(target, deadline, authorize).await
            }
        }
    }

    /// Cancels a copy: a queued one leaves the queue with no AWS call; one in progress is
    /// cancelled the way the AWS documentation prescribes, by deleting the target snapshot
    /// while it is `copying`. `authorize` decides on the copy before anything else is said
    /// about it. Its watchers are told it was cancelled.
    ///
    /// AWS offers no conditional delete, so the check and the delete are two calls. The
    /// window between them is kept to one round trip: the check is a fresh describe (never a
    /// cached observation) and the delete follows at once. Should the copy finish inside that
    /// window, the delete's own answer shows it, and the result says DELETED, not CANCELLED.
    pub(crate) async fn cancel(
        &self,
        name: &str,
        caller: &Caller,
        authorize: impl FnOnce(&ClusterSnapshot) -> Result<(), Error>,
    ) -> Result<CopyView, Error> {
        let located = self.locate(name)?;
        let job = self.job_of(&located).await?;
        if let Some(job) = &job {
            match job.state {
                JobState::Queued => {
                    let view = self.jobs.view(job).await?;
                    authorize(&view.snapshot)?;
                    if self
                        .jobs
                        .store
                        .finish(&job.new.id, JobState::Queued, JobState::Cancelled, None, now_ms())
                        .await
                        .map_err(store_error)?
                    {
                        crate::audit::job_event("cancelled", job, None, None);
                        self.jobs.queue_moved();
                        let ended = Job { state: JobState::Cancelled, ..job.clone() };
                        return self.jobs.view(&ended).await;
                    }
                    return Err(Error::Unavailable("the copy left the queue while it was being cancelled".into()));
                }
                JobState::Starting => {
                    return Err(Error::Unavailable("the copy is being started; cancel it again in a moment".into()));
                }
                _ if job.snapshot_arn.is_none() => {
                    let view = self.jobs.view(job).await?;
                    authorize(&view.snapshot)?;
                    return Err(not_in_progress(&format!("{:?}", view.state).to_ascii_lowercase()));
                }
                _ => {}
            }
        }
        let current = self.describe(&located, name, caller).await?;
        authorize(&current)?;
        if current.status != "copying" {
            return Err(not_in_progress(&current.status));
        }
        let deleted = {
            let _turn = self.jobs.share.spend(caller, &current.region).await?;
            located.rds.delete_cluster_snapshot(&current.region, &current.id).await?.0
        };
        let (state, ended) = if deleted.status == "copying" {
            self.hub.record_cancelled(&deleted);
            (CopyState::Cancelled, JobState::Cancelled)
        } else {
            tracing::warn!(snapshot = %deleted.arn, status = %deleted.status, "the copy finished between the check and the delete");
            (CopyState::Deleted, JobState::Deleted)
        };
        let mut view = CopyView { state, ..CopyView::of_snapshot(deleted) };
        if let Some(job) = &job {
            if self
                .jobs
                .store
                .finish(&job.new.id, JobState::Copying, ended, None, now_ms())
                .await
                .map_err(store_error)?
            {
                crate::audit::job_event(ended.as_str(), job, None, None);
            }
            view = view.with_job(job);
        }
        Ok(view)
    }

    /// A page of the jobs, newest first, as the API shows them, and the token of the next
    /// page ("" after the last).
    pub(crate) async fn list(&self, request: &ListRequest) -> Result<(Vec<CopyView>, String), Error> {
        let filter = list_filter(request).map_err(Error::InvalidArgument)?;
        let limit = filter.limit;
        let jobs = self.jobs.store.list(&JobFilter { limit: limit + 1, ..filter }).await.map_err(store_error)?;
        let more = jobs.len() as i64 > limit;
        let mut views = Vec::with_capacity(jobs.len());
        for job in jobs.iter().take(usize::try_from(limit).unwrap_or(0)) {
            views.push(self.jobs.view(job).await?);
        }
        let next = more
            .then(|| jobs.get(views.len().saturating_sub(1)).map(|j| (j.new.created_ms, j.new.id.clone())))
            .flatten();
        Ok((views, next.as_ref().map(page_token).unwrap_or_default()))
    }
}

fn not_in_progress(status: &str) -> Error {
    Error::FailedPrecondition(vec![FieldViolation::new(
        "name",
        format!(
            "the snapshot is {status}; only a copy in progress can be cancelled, and a finished snapshot is never deleted"
        ),
    )])
}

/// The snapshot a job will make, as far as the gateway knows it before AWS does: what
/// policies decide on and what a queued copy shows.
pub(super) fn planned_snapshot(job: &Job) -> ClusterSnapshot {
    let j = &job.new;
    let arn = if j.account.is_empty() {
        job.snapshot_arn.clone().unwrap_or_default()
    } else {
        Arn::cluster_snapshot(&j.region, &j.account, &j.target).to_string()
    };
    ClusterSnapshot {
        arn,
        id: j.target.clone(),
        region: j.region.clone(),
        account: j.account.clone(),
        status: job.state.as_str().to_owned(),
        percent_progress: 0,
        source_arn: Some(j.source_arn.clone()),
        cluster_id: j.cluster_id.clone(),
        engine: j.engine.clone(),
        engine_version: j.engine_version.clone(),
        allocated_storage_gib: i32::try_from(j.allocated_storage_gib).unwrap_or(i32::MAX),
        encrypted: j.encrypted,
        kms_key_id: j.kms_key_id.clone(),
        create_time: None,
        cluster_create_time: None,
        tags: j.tags.clone(),
        snapshot_type: "manual".into(),
    }
}
