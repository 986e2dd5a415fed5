//! Copy jobs: every copy admitted is a job in the store, started when a slot is free within
//! AWS's limit of copies in progress (5 cross-region copies into one region per account),
//! callers in turn and each caller's oldest first, by whichever gateway replica claims it,
//! and followed to its end through the watch hub. A job is started exactly once: its target snapshot is its key, and AWS's
//! `DBClusterSnapshotAlreadyExistsFault` for a copy from the same source is that job's copy.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;

use super::{CopyView, planned_snapshot};
use crate::audit;
use crate::aws::{Accounts, AwsError, AwsErrorKind, CopyInput, presign};
use crate::config::JobSettings;
use crate::error::{Error, FieldViolation};
use crate::metrics::Metrics;
use crate::share::AwsShare;
use crate::store::{Admitted, Job, JobState, NewJob, Store, StoreError};
use crate::tasks::Tasks;
use crate::watch::{Observation, QueueReader, QueuedLook, WatchHub};
use snapgate_domain::{ClusterSnapshot, CopyState, Engine};

/// What starting a job came to.
#[derive(Debug)]
pub(crate) enum Started {
    /// AWS is copying (the snapshot as AWS answered).
    Copying(Box<ClusterSnapshot>),
    /// Back in the queue: AWS's own limit, throttling or an outage. Never an error to callers.
    Requeued,
    /// The copy cannot be made; the job failed with this error.
    Failed(Error),
    /// Another gateway had taken it (its lease was still valid) or it ended meanwhile.
    Lost,
}

pub(crate) struct Dispatcher {
    pub(super) store: Arc<Store>,
    accounts: Arc<Accounts>,
    hub: Arc<WatchHub>,
    pub(super) settings: JobSettings,
    /// This gateway's name in leases.
    owner: String,
    wake: Notify,
    /// Notified when the queue moved, for the follower of queued copies' watchers.
    moved: Arc<Notify>,
    /// Copying jobs this gateway follows to their end.
    followed: Mutex<HashSet<String>>,
    metrics: Arc<Metrics>,
    tasks: Tasks,
    /// Callers' shares of the AWS budget: starts take their job's caller's turns.
    pub(super) share: Arc<AwsShare>,
}

/// Why a job whose snapshot AWS no longer has ends DELETED.
const SNAPSHOT_GONE: &str = "the snapshot was deleted after the copy was made";

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Dispatcher {
    pub(crate) fn new(
        store: Arc<Store>,
        accounts: Arc<Accounts>,
        hub: Arc<WatchHub>,
        settings: JobSettings,
        metrics: Arc<Metrics>,
        tasks: Tasks,
        share: Arc<AwsShare>,
    ) -> Arc<Dispatcher> {
        let owner = uuid::Uuid::new_v4().to_string();
        let jobs = Arc::new(Dispatcher {
            store,
            accounts,
            hub,
            settings,
            owner,
            wake: Notify::new(),
            moved: Arc::new(Notify::new()),
            followed: Mutex::new(HashSet::new()),
            metrics,
            tasks: tasks.clone(),
            share,
        });
        let dispatcher = jobs.clone();
        tasks.spawn(async move { dispatcher.run().await });
        jobs
    }

    /// What is notified when the queue moves.
    pub(crate) fn moved(&self) -> Arc<Notify> {
        self.moved.clone()
    }

    /// Tells the watchers of queued copies that the queue moved.
    pub(crate) fn queue_moved(&self) {
        self.moved.notify_one();
    }

    /// Asks the dispatcher to look at the queue now.
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// The dispatcher: starts what can start, follows what AWS is copying, and keeps the
    /// gauges; woken by admissions and finished copies, and every `dispatch_interval_ms` for
    /// backoffs that end, leases that expire and other replicas' jobs.
    async fn run(self: Arc<Self>) {
        let stop = self.tasks.stopping();
        let every = Duration::from_millis(self.settings.dispatch_interval_ms);
        loop {
            if let Err(error) = self.round().await {
                tracing::warn!(%error, "job dispatch round failed; trying again");
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(every) => {}
            }
        }
    }

    async fn round(self: &Arc<Self>) -> Result<(), Error> {
        let now = now_ms();
        for (account, region) in self.store.destinations_with_work(now).await.map_err(store_error)? {
            self.dispatch(&account, &region).await?;
        }
        // Copies started before a restart or by a replica that went away: each is read whole
        // only when this gateway does not follow it yet.
        let copying = self.store.copying_ids().await.map_err(store_error)?;
        let unfollowed: Vec<String> = {
            let followed = self.followed.lock().unwrap_or_else(|p| p.into_inner());
            copying.into_iter().filter(|id| !followed.contains(id)).collect()
        };
        for id in unfollowed {
            if let Some(job) = self.store.get(&id).await.map_err(store_error)?
                && job.state == JobState::Copying
            {
                self.follow(job);
            }
        }
        for (account, region, queued, active) in self.store.depths().await.map_err(store_error)? {
            self.metrics.job_depths(&account, &region, queued, active);
        }
        self.queue_moved();
        Ok(())
    }

    /// Claims what may start at a destination and starts it; returns each started job's
    /// outcome once AWS answered. The starts run as the gateway's tasks, so a caller that goes
    /// away does not cut one short.
    pub(crate) async fn dispatch(
        self: &Arc<Self>,
        account: &str,
        region: &str,
    ) -> Result<Vec<(String, Started)>, Error> {
        let now = now_ms();
        let cross = i64::from(self.settings.cross_region_limit_for(account, region));
        let same = self.settings.same_region_limit.map_or(i64::MAX, i64::from);
        let lease = now + i64::try_from(self.settings.lease_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        let claimed =
            self.store.claim(account, region, cross, same, &self.owner, now, lease).await.map_err(store_error)?;
        let mut starts = Vec::with_capacity(claimed.len());
        // A start made during a call is part of its trace.
        let span = tracing::Span::current();
        for job in claimed {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let jobs = self.clone();
            let start = async move {
                let id = job.new.id.clone();
                let outcome = jobs.start(job).await;
                let _ = tx.send((id, outcome));
            };
            self.tasks.spawn(tracing::Instrument::instrument(start, span.clone()));
            starts.push(rx);
        }
        let mut outcomes = Vec::with_capacity(starts.len());
        for start in starts {
            if let Ok(outcome) = start.await {
                outcomes.push(outcome);
            }
        }
        Ok(outcomes)
    }

    /// Calls CopyDBClusterSnapshot for a claimed job and records what came of it.
    async fn start(self: &Arc<Self>, job: Job) -> Started {
        let outcome = self.copy(&job).await;
        let now = now_ms();
        let id = job.new.id.as_str();
        let recorded = match &outcome {
            Ok((snapshot, request_id)) => {
                let marked = self.store.mark_copying(id, &snapshot.arn, request_id.as_deref(), now).await;
                if matches!(marked, Ok(true)) {
                    // What watchers and readers saw of an earlier snapshot of this name (one
                    // deleted since) is not this copy's.
                    self.hub.record_started(snapshot);
                    self.metrics.job_started(now - job.new.created_ms);
                    audit::job_event("started", &job, request_id.as_deref(), None);
                    self.follow(Job { state: JobState::Copying, ..job.clone() });
                    return Started::Copying(Box::new(snapshot.clone()));
                }
                marked
            }
            Err(error) if waits(error, job.new.cross_region) => {
                let backoff = self.backoff(job.attempts);
                let why = error.to_string();
                tracing::info!(job = id, target = %job.new.target, ?backoff, reason = %why, "copy back in the queue");
                let requeued =
                    self.store.requeue(id, now + i64::try_from(backoff.as_millis()).unwrap_or(i64::MAX), &why).await;
                if matches!(requeued, Ok(true)) {
                    return Started::Requeued;
                }
                requeued
            }
            Err(error) => {
                let failure = failure_text(error);
                let ended = self.store.finish(id, JobState::Starting, JobState::Failed, Some(&failure), now).await;
                if matches!(ended, Ok(true)) {
                    self.metrics.job_finished("failed");
                    audit::job_event("failed", &job, None, Some(&failure));
                    return Started::Failed(error.clone());
                }
                ended
            }
        };
        if let Err(error) = recorded {
            tracing::error!(%error, job = id, "recording a job's start failed; its lease will let it be retried");
        }
        Started::Lost
    }

    /// The AWS side of a start: presign where AWS needs it, copy, and recognise a copy this
    /// job made already (a start retried after a crash) in AWS's AlreadyExists.
    async fn copy(&self, job: &Job) -> Result<(ClusterSnapshot, Option<String>), Error> {
        let j = &job.new;
        let destination = (!j.account.is_empty() && Some(j.account.as_str()) != self.accounts.own_account())
            .then_some(j.account.as_str());
        let rds = self.accounts.destination(destination).ok_or_else(|| {
            Error::InvalidArgument(vec![FieldViolation::new(
                "destination_account",
                format!("no role is configured for account {}", j.account),
            )])
        })?;
        let family = Engine::parse(&j.engine).family();
        let presigned_url = if family.needs_presigned_url(&j.source_region, &j.region) {
            let credentials = rds.credentials().await?;
            Some(
                presign::presign_copy(
                    &credentials,
                    &j.source_arn,
                    &j.source_region,
                    &j.region,
                    j.kms_key_id.as_deref(),
                )
                .map_err(|e| Error::Internal(format!("presigning failed: {e}")))?,
            )
        } else {
            None
        };
        let input = CopyInput {
            source: j.source_ref.clone(),
            target: j.target.clone(),
            kms_key_id: j.kms_key_id.clone(),
            copy_tags: j.copy_tags,
            tags: j.tags.clone(),
            presigned_url,
        };
        let _turn = self.share.turn(&j.caller, &j.region).await;
        match rds.copy_cluster_snapshot(&j.region, &input).await {
            Ok(copied) => Ok(copied),
            Err(e) if e.kind == AwsErrorKind::AlreadyExists => {
                match rds.describe_cluster_snapshot(&j.region, &j.target).await? {
                    Some(existing) if existing.source_arn.as_deref() == Some(j.source_arn.as_str()) => {
                        Ok((existing, e.request_id.clone()))
                    }
                    _ => Err(e.into()),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Records that a job's snapshot is gone from AWS: the job ends DELETED, audited once
    /// (whichever request or replica gets there first). With `free_target` the job also
    /// becomes history and its target is free for a new job; without, it stays the target's
    /// current job, shown DELETED, until a request for the target replaces it.
    pub(crate) async fn record_gone(&self, job: &Job, free_target: bool) -> Result<(), Error> {
        let (why, now) = (Some(SNAPSHOT_GONE), now_ms());
        let recorded = if free_target {
            self.store.retire(job, JobState::Deleted, why, now).await
        } else {
            self.store.finish(&job.new.id, job.state, JobState::Deleted, why, now).await
        };
        if recorded.map_err(store_error)? {
            audit::job_event("deleted", job, job.aws_request_id.as_deref(), why);
        }
        Ok(())
    }

    /// Starts `new` at once in place of `old`, a job from another source whose snapshot holds
    /// the target name, and lets AWS decide as it would without a job: while that snapshot
    /// exists the answer is AWS's `DBClusterSnapshotAlreadyExistsFault` (with its request id);
    /// once it is gone, AWS is copying `new`, and `old` is history, ended DELETED.
    pub(crate) async fn supersede(self: &Arc<Self>, old: &Job, new: &NewJob) -> Result<Job, Error> {
        let attempt = Job {
            new: new.clone(),
            state: JobState::Starting,
            attempts: 1,
            snapshot_arn: None,
            aws_request_id: None,
            failure: None,
        };
        let (snapshot, request_id) = self.copy(&attempt).await?;
        let now = now_ms();
        self.record_gone(old, true).await?;
        let (Admitted::New(job) | Admitted::Existing(job)) = self.store.admit(new).await.map_err(store_error)?;
        if !self
            .store
            .mark_copying(&job.new.id, &snapshot.arn, request_id.as_deref(), now)
            .await
            .map_err(store_error)?
        {
            // Another request or replica got there first: the job is as it recorded it.
            return Ok(self.store.get(&job.new.id).await.map_err(store_error)?.unwrap_or(job));
        }
        self.hub.record_started(&snapshot);
        audit::job_event("started", &job, request_id.as_deref(), None);
        let job = Job { state: JobState::Copying, snapshot_arn: Some(snapshot.arn), aws_request_id: request_id, ..job };
        self.follow(job.clone());
        Ok(job)
    }

    /// How long a job waits before its next try: doubling from `retry_initial_ms` to
    /// `retry_max_ms`, with jitter so that waiting jobs do not come back in step.
    fn backoff(&self, attempts: i64) -> Duration {
        let doublings = u32::try_from(attempts.clamp(1, 16) - 1).unwrap_or(0);
        let ms = self.settings.retry_initial_ms.saturating_mul(1 << doublings).min(self.settings.retry_max_ms);
        Duration::from_millis(ms).mul_f64(0.8 + rand::random::<f64>() * 0.4)
    }

    /// Follows a copying job to its end through the watch hub (whose pollers batch every
    /// watched snapshot), then records the end and frees its slot. A task a copy in progress:
    /// while it waits it holds the job's id and destination alone (the whole job is read back
    /// at the end) and the recording's future is boxed then, so that 10,000 copies in progress
    /// cost ~0.5 KiB each here rather than ~2 KiB.
    fn follow(self: &Arc<Self>, job: Job) {
        if !self.followed.lock().unwrap_or_else(|p| p.into_inner()).insert(job.new.id.clone()) {
            return;
        }
        let jobs = self.clone();
        let NewJob { id, account, region, target, .. } = job.new;
        self.tasks.spawn(async move {
            let end = jobs.hub.final_observation(&account, &region, &target).await;
            // `_held` keeps the end readable until the store has it.
            if let Some((end, _held)) = end
                && let Err(error) = Box::pin(jobs.record_end(&id, &end)).await
            {
                tracing::warn!(%error, job = %id, "recording a job's end failed; it is followed again");
            }
            jobs.followed.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        });
    }

    /// Records the end a poll saw of copying job `id`, once: the job's metrics, audit record and
    /// the dispatcher's wake-up come from the replica whose record took.
    async fn record_end(&self, id: &str, end: &Observation) -> Result<(), StoreError> {
        let (state, failure) = match end {
            Observation::Present { snapshot, .. } if snapshot.state() == CopyState::Available => {
                (JobState::Available, None)
            }
            Observation::Present { snapshot, .. } => {
                (JobState::Failed, Some(format!("AWS reports the copy {}", snapshot.status)))
            }
            Observation::Gone { cancelled: true, .. } => (JobState::Cancelled, None),
            _ => (JobState::Deleted, Some("the copy was deleted while it was copying".to_owned())),
        };
        let Some(job) = self.store.get(id).await? else { return Ok(()) };
        if self.store.finish(id, JobState::Copying, state, failure.as_deref(), now_ms()).await? {
            self.metrics.job_finished(state.as_str());
            audit::job_event(state.as_str(), &job, job.aws_request_id.as_deref(), failure.as_deref());
            self.wake();
        }
        Ok(())
    }

    /// A job as the API shows it, with no AWS call.
    pub(crate) async fn view(&self, job: &Job) -> Result<CopyView, Error> {
        let j = &job.new;
        let queue = match job.state {
            JobState::Queued => Some((
                self.store.queue_position(job, now_ms()).await.map_err(store_error)?,
                if j.cross_region {
                    self.settings.cross_region_limit_for(&j.account, &j.region)
                } else {
                    self.settings.same_region_limit.unwrap_or(0)
                },
            )),
            JobState::Starting => Some((0, self.settings.cross_region_limit_for(&j.account, &j.region))),
            _ => None,
        };
        let state = match job.state {
            JobState::Queued | JobState::Starting => CopyState::Queued,
            JobState::Copying => CopyState::Copying,
            JobState::Available => CopyState::Available,
            JobState::Failed => CopyState::Failed,
            JobState::Cancelled => CopyState::Cancelled,
            JobState::Deleted => CopyState::Deleted,
        };
        let fresh =
            (job.state == JobState::Copying).then(|| self.hub.fresh(&j.account, &j.region, &j.target)).flatten();
        // A copy the poll saw end is shown ended, although its job records the end a moment
        // later (its follower is woken by that same poll).
        let state = fresh.as_ref().map_or(state, ClusterSnapshot::state);
        let snapshot = fresh.unwrap_or_else(|| planned_snapshot(job));
        Ok(CopyView { state, queue, ..CopyView::of_snapshot(snapshot) }.with_job(job))
    }

    /// Waits while a job is being started (by this gateway or another), at most `within`;
    /// returns the job as it is then.
    pub(crate) async fn settled(&self, job: Job, within: Duration) -> Result<Job, Error> {
        let deadline = tokio::time::Instant::now() + within;
        let mut job = job;
        while job.state == JobState::Starting && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(25)).await;
            match self.store.get(&job.new.id).await.map_err(store_error)? {
                Some(now) => job = now,
                None => break,
            }
        }
        Ok(job)
    }
}

/// How a queued job stands, for the one follower of queued copies' watchers.
impl QueueReader for Dispatcher {
    fn look<'a>(&'a self, job_id: &'a str) -> BoxFuture<'a, Result<QueuedLook, Error>> {
        Box::pin(async move {
            let Some(job) = self.store.get(job_id).await.map_err(store_error)? else {
                return Ok(QueuedLook::Gone);
            };
            if job.state == JobState::Copying {
                let j = job.new;
                return Ok(QueuedLook::Copying { account: j.account, region: j.region, target: j.target });
            }
            let view = self.view(&job).await?;
            Ok(QueuedLook::Waiting { snapshot: Arc::new(view.snapshot), state: view.state, queue: view.queue })
        })
    }
}

/// Whether an error means "wait and try again" rather than "this copy cannot be made": AWS's
/// limit of copies in progress (for a cross-region copy), throttling, an outage.
fn waits(error: &Error, cross_region: bool) -> bool {
    match error {
        Error::Aws(aws) => match aws.kind {
            AwsErrorKind::Throttled | AwsErrorKind::Unavailable => true,
            AwsErrorKind::QuotaExceeded => cross_region && is_in_progress_limit(aws),
            _ => false,
        },
        _ => false,
    }
}

/// AWS answers both of its snapshot limits with `SnapshotQuotaExceeded`; the message tells
/// the limit of copies in progress ("Cannot copy more than 5 snapshots across regions") from
/// the quota of manual snapshots, which waiting does not help.
pub(crate) fn is_in_progress_limit(error: &AwsError) -> bool {
    let message = error.message.to_ascii_lowercase();
    message.contains("across region") || message.contains("in progress") || message.contains("concurrent")
}

fn failure_text(error: &Error) -> String {
    match error {
        Error::Aws(aws) => format!("{}: {}", aws.code.as_deref().unwrap_or("AWS"), aws.message),
        other => other.to_string(),
    }
}

pub(crate) fn store_error(error: StoreError) -> Error {
    Error::Unavailable(error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(message: &str) -> Error {
        Error::Aws(AwsError {
            kind: AwsErrorKind::QuotaExceeded,
            action: "CopyDBClusterSnapshot",
            code: Some("SnapshotQuotaExceeded".into()),
            message: message.into(),
            request_id: None,
        })
    }

    #[test]
    fn the_in_progress_limit_waits_and_the_snapshot_quota_fails() {
        assert!(waits(&quota("Cannot copy more than 5 snapshots across regions"), true));
        assert!(!waits(&quota("Cannot copy more than 5 snapshots across regions"), false));
        assert!(!waits(&quota("Cannot create more than the allowed number of DB cluster snapshots."), true));
        assert!(!waits(&Error::InvalidArgument(vec![]), true));
    }
}
