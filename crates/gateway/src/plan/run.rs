//! One run of a plan, and a preview of one. A run selects the plan's clusters and the newest
//! snapshot of each (one DescribeDBClusters per 100 clusters, one DescribeDBClusterSnapshots per
//! 100 snapshots), looks at each destination once (one describe per 100 of the plan's copies
//! there), admits the copies that are missing through the copy workflow (the queue, the rules,
//! the 5-copy limit) as the plan's owner, waits for them, then expires the plan's old copies.
//!
//! Every decision is the owner's, with the policies in force now: `CopyClusterSnapshot` with the
//! plan in its context, and `ExpireCopy`. A copy is deleted only when it is recorded as the
//! plan's, carries the plan's tag, and is not the newest available copy of its cluster there.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use snapgate_domain::{Arn, ClusterSnapshot, CopyState};

use super::decide::{PlanCopy, expiries, newest_source, selects, target_id};
use super::spec::{Destination, PLAN_TAG, ValidPlan};
use super::{Outcome, Plans, QuotaView, item, now_ms, owner_of, store_error};
use crate::audit::DecisionEvent;
use crate::auth::Caller;
use crate::auth::policy::{Action, CopyContext};
use crate::aws::{AwsErrorKind, DbCluster, Rds};
use crate::copy::CopyRequest;
use crate::error::Error;
use crate::store::plans::{PlanCopyRecord, Run, RunItem};

/// A selected cluster and the snapshot a run copies of it (none: it has no available one).
struct Selected {
    cluster: DbCluster,
    source: Option<ClusterSnapshot>,
}

/// One destination as a run sees it.
struct Place {
    /// The account, resolved ("" only when the gateway does not know its own).
    account: String,
    region: String,
    /// `ACCOUNT/REGION`, as items name it and target ids hash it.
    key: String,
    rds: Arc<Rds>,
    /// The plan's copies recorded here, not expired.
    recorded: Vec<PlanCopyRecord>,
    /// What AWS has here of those and of this run's targets, by identifier.
    described: HashMap<String, ClusterSnapshot>,
}

/// Copies a run admits at once.
const ADMIT_AT_ONCE: usize = 16;

/// One admission, boxed so that a run's future stays `Send` across the concurrent admissions.
type AdmitFuture<'a> = std::pin::Pin<Box<dyn Future<Output = Result<(RunItem, Option<Followed>), Error>> + Send + 'a>>;

/// One destination's copies or expiries, boxed for the same reason.
type DestinationFuture<'a> = std::pin::Pin<Box<dyn Future<Output = Result<(), Error>> + Send + 'a>>;

/// A copy a run will ask for.
struct Pending<'a> {
    cluster: String,
    source: &'a ClusterSnapshot,
    target: String,
    name: String,
    record: PlanCopyRecord,
}

/// A copy a run waits for.
struct Followed {
    cluster: String,
    source: ClusterSnapshot,
    destination: String,
    name: String,
}

impl Plans {
    /// The plan's clusters, each with the snapshot a run would copy.
    async fn select(&self, plan: &ValidPlan, owner: &Caller) -> Result<Vec<Selected>, Error> {
        let rds = self.copies.accounts().for_snapshot_account("");
        let region = &plan.source_region;
        let clusters = {
            let _turn = self.turn(owner, region).await?;
            rds.describe_clusters(region).await?
        };
        let mut chosen: Vec<DbCluster> = clusters.into_iter().filter(|c| selects(plan, c)).collect();
        chosen.sort_by(|a, b| a.id.cmp(&b.id));
        let ids: Vec<String> = chosen.iter().map(|c| c.id.clone()).collect();
        let snapshots = if ids.is_empty() {
            Vec::new()
        } else {
            let _turn = self.turn(owner, region).await?;
            rds.describe_snapshots_of_clusters(region, &ids).await?
        };
        Ok(chosen
            .into_iter()
            .map(|cluster| {
                let source = newest_source(plan, &cluster.id, &snapshots).cloned();
                Selected { cluster, source }
            })
            .collect())
    }

    /// A destination, with the plan's copies there and what AWS has of them and of `targets`.
    async fn place(
        &self,
        plan: &ValidPlan,
        destination: &Destination,
        targets: &[String],
        owner: &Caller,
    ) -> Result<Place, Error> {
        let accounts = self.copies.accounts();
        let rds = accounts.destination(destination.account.as_deref()).ok_or_else(|| {
            Error::Unavailable(format!(
                "no role is configured for account {} (aws.accounts)",
                destination.account.as_deref().unwrap_or_default()
            ))
        })?;
        let account = self.account_of(destination);
        let region = destination.region.clone();
        let key = format!("{account}/{region}");
        let recorded = self.store.plan_copies(&plan.name, &account, &region).await.map_err(store_error)?;
        let mut ids: Vec<String> = recorded.iter().map(|c| c.target.clone()).collect();
        ids.extend(targets.iter().cloned());
        ids.sort();
        ids.dedup();
        let described = if ids.is_empty() {
            Vec::new()
        } else {
            let _turn = self.turn(owner, &region).await?;
            rds.describe_cluster_snapshots_by_ids(&region, &ids).await?
        };
        let described = described
            .into_iter()
            // An identifier of another account (a role's client sees its own) is not the plan's copy.
            .filter(|s| account.is_empty() || s.account.is_empty() || s.account == account)
            .map(|s| (s.id.to_ascii_lowercase(), s))
            .collect();
        Ok(Place { account, region, key, rds, recorded, described })
    }

    /// The copy a plan asks for of `source` at `destination`, as the workflow takes it.
    fn copy_request(
        plan: &ValidPlan,
        destination: &Destination,
        source: &ClusterSnapshot,
        target: &str,
    ) -> CopyRequest {
        CopyRequest {
            source_snapshot: source.arn.clone(),
            target_snapshot_id: target.to_owned(),
            kms_key_id: copy_key(destination, source).unwrap_or_default(),
            copy_tags: destination.copy_tags,
            tags: copy_tags(plan, destination),
            source_region: plan.source_region.clone(),
            destination_region: destination.region.clone(),
            destination_account: destination.account.clone().unwrap_or_default(),
        }
    }

    /// What a run now would do, item by item, decided as `owner`; no AWS call changes anything.
    pub(super) async fn look(&self, plan: &ValidPlan, owner: &Caller) -> Result<(Vec<RunItem>, Vec<QuotaView>), Error> {
        let selected = self.select(plan, owner).await?;
        let now = SystemTime::now();
        let mut items = Vec::new();
        let mut quotas = Vec::new();
        for destination in &plan.destinations {
            let targets = targets(plan, &selected, self.key_of(destination));
            let ids: Vec<String> = targets.values().cloned().collect();
            let place = match self.place(plan, destination, &ids, owner).await {
                Ok(place) => place,
                Err(error) => {
                    items.push(item(
                        "",
                        None,
                        &self.key_of(destination),
                        None,
                        Outcome::Failed,
                        Some(error.to_string()),
                    ));
                    quotas.push(QuotaView::unknown(self.key_of(destination), error.to_string()));
                    continue;
                }
            };
            // The copies a run would make join the plan's copies before retention is decided:
            // each is its cluster's newest, so it is never expired itself.
            let mut would_copy: HashMap<String, SystemTime> = HashMap::new();
            let mut expiring = 0;
            for s in &selected {
                let Some(source) = &s.source else {
                    items.push(item(&s.cluster.id, None, &place.key, None, Outcome::NoSnapshot, None));
                    continue;
                };
                let target = &targets[&s.cluster.id];
                let name = copy_name(&place, target);
                match place.described.get(target) {
                    Some(existing) => {
                        let (outcome, detail) = existing_outcome(existing);
                        items.push(item(&s.cluster.id, Some(source), &place.key, Some(&name), outcome, detail));
                    }
                    None => {
                        if let Err(error) =
                            self.copies.check_copy(&Self::copy_request(plan, destination, source, target), source)
                        {
                            items.push(item(
                                &s.cluster.id,
                                Some(source),
                                &place.key,
                                Some(&name),
                                Outcome::Failed,
                                Some(error.to_string()),
                            ));
                            continue;
                        }
                        let context = plan_context(plan, destination, source, &place, target);
                        let decision = self.policies.decide(owner, Action::CopyClusterSnapshot, source, Some(&context));
                        if decision.allowed {
                            would_copy.insert(s.cluster.id.clone(), source.create_time.unwrap_or(now));
                            items.push(item(
                                &s.cluster.id,
                                Some(source),
                                &place.key,
                                Some(&name),
                                Outcome::WouldCopy,
                                None,
                            ));
                        } else {
                            items.push(item(
                                &s.cluster.id,
                                Some(source),
                                &place.key,
                                Some(&name),
                                Outcome::Refused,
                                Some(refusal(owner, "CopyClusterSnapshot", &decision.policies)),
                            ));
                        }
                    }
                }
            }
            for (cluster, mut copies) in plan_copies(plan, &place) {
                if let Some(time) = would_copy.get(&cluster) {
                    copies.push(PlanCopy {
                        id: String::new(),
                        cluster_id: cluster.clone(),
                        recorded: true,
                        tagged: true,
                        status: "available".into(),
                        source_time: *time,
                    });
                }
                for copy in expiries(&destination.retention, &copies, now) {
                    let Some(snapshot) = place.described.get(&copy.id) else { continue };
                    let decision = self.policies.decide_expire(owner, snapshot, &plan.name);
                    let (outcome, detail) = if decision.allowed {
                        expiring += 1;
                        (Outcome::WouldExpire, None)
                    } else {
                        (Outcome::Refused, Some(refusal(owner, "ExpireCopy", &decision.policies)))
                    };
                    items.push(item(&cluster, None, &place.key, Some(&snapshot.arn), outcome, detail));
                }
            }
            quotas.push(self.quota_at(&place, owner, would_copy.len(), expiring).await);
        }
        Ok((items, quotas))
    }

    /// The manual-snapshot quota at a place, and what a run making `copies` and `expiries`
    /// there leaves of it.
    async fn quota_at(&self, place: &Place, owner: &Caller, copies: usize, expiries: usize) -> QuotaView {
        let asked = async {
            let _turn = self.turn(owner, &place.region).await?;
            place.rds.manual_cluster_snapshot_quota(&place.region).await.map_err(Error::from)
        };
        let (quota, detail) = match asked.await {
            Ok(Some(quota)) => (Some(quota), None),
            Ok(None) => (None, Some("AWS did not report the ManualClusterSnapshots quota".to_owned())),
            Err(error) => (None, Some(format!("the quota could not be read: {error}"))),
        };
        QuotaView { destination: place.key.clone(), quota, would_copy: copies, would_expire: expiries, detail }
    }

    /// `ACCOUNT/REGION` of a destination.
    fn key_of(&self, destination: &Destination) -> String {
        format!("{}/{}", self.account_of(destination), destination.region)
    }

    /// A destination's account: its own, or the gateway's ("" when that is not known).
    fn account_of(&self, destination: &Destination) -> String {
        let own = || self.copies.accounts().own_account().map(str::to_owned);
        destination.account.clone().or_else(own).unwrap_or_default()
    }

    /// Runs `run` to its end, marking it alive; stops when the gateway stops or another replica
    /// took the run over (this one was presumed dead), leaving the run to it.
    pub(super) async fn execute(self: Arc<Self>, run: Run) {
        let lost = self.tasks.stopping().child_token();
        let beat = {
            let plans = self.clone();
            let id = run.new.id.clone();
            let lost = lost.clone();
            async move {
                let every = Duration::from_secs(plans.settings.heartbeat_secs);
                loop {
                    tokio::select! {
                        () = lost.cancelled() => return,
                        () = tokio::time::sleep(every) => {}
                    }
                    match plans.store.heartbeat_run(&id, &plans.replica, now_ms()).await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::warn!(run = %id, "another replica took this plan run over; leaving it");
                            lost.cancel();
                            return;
                        }
                        // A store that does not answer: keep running; the next beat tries again.
                        Err(error) => tracing::warn!(run = %id, %error, "cannot mark the plan run alive"),
                    }
                }
            }
        };
        let ended = tokio::select! {
            ended = self.perform(&run) => Some(ended),
            () = lost.cancelled() => None,
            () = beat => None,
        };
        lost.cancel();
        let Some(ended) = ended else { return };
        let (state, reason) = match ended {
            Ok(done) => done,
            Err(error) => ("FAILED", Some(error.to_string())),
        };
        let now = now_ms();
        match self.store.finish_run(&run.new.id, state, reason.as_deref(), now).await {
            Ok(true) => {
                self.metrics.plan_run(&run.new.plan, state, now / 1000);
                tracing::info!(plan = %run.new.plan, run = %run.new.id, state, reason = reason.as_deref(), "plan run ended");
            }
            Ok(false) => {}
            Err(error) => tracing::error!(run = %run.new.id, %error, "cannot record the end of a plan run"),
        }
    }

    /// The run's work; its state and reason at the end.
    async fn perform(&self, run: &Run) -> Result<(&'static str, Option<String>), Error> {
        let record = self
            .store
            .plan(&run.new.plan)
            .await
            .map_err(store_error)?
            .ok_or_else(|| Error::NotFound { what: "plan", name: run.new.plan.clone() })?;
        let plan = self.valid(&record)?;
        let owner = owner_of(&record);
        let selected = self.select(&plan, &owner).await?;
        let mut log = RunLog { plans: self, run: &run.new.id, items: Vec::new(), write: true };
        // Destinations are worked at once: each has its own queue and limit in AWS, and one
        // admitted after the other would start its copies late.
        let mut kept: Vec<(RunLog<'_>, Vec<Followed>)> = plan
            .destinations
            .iter()
            .map(|_| (RunLog { plans: self, run: &run.new.id, items: Vec::new(), write: false }, Vec::new()))
            .collect();
        let copying: Vec<DestinationFuture<'_>> = plan
            .destinations
            .iter()
            .zip(kept.iter_mut())
            .map(|(destination, (buffer, followed))| {
                Box::pin(self.copy_to(&plan, destination, &selected, &owner, run, buffer, followed))
                    as DestinationFuture<'_>
            })
            .collect();
        for copied in futures_util::future::join_all(copying).await {
            copied?;
        }
        let mut followed = Vec::new();
        for (buffer, follow) in kept {
            for item in buffer.items {
                log.add(item).await?;
            }
            followed.extend(follow);
        }
        self.follow(&owner, followed, &mut log).await?;
        // Destinations expire at once (each region has its own pace); their items are logged
        // destination by destination.
        let mut kept: Vec<RunLog<'_>> = plan
            .destinations
            .iter()
            .map(|_| RunLog { plans: self, run: &run.new.id, items: Vec::new(), write: false })
            .collect();
        let expiring: Vec<DestinationFuture<'_>> = plan
            .destinations
            .iter()
            .zip(kept.iter_mut())
            .map(|(destination, buffer)| {
                Box::pin(self.expire_at(&plan, destination, &owner, run, buffer)) as DestinationFuture<'_>
            })
            .collect();
        for expired in futures_util::future::join_all(expiring).await {
            expired?;
        }
        for buffer in kept {
            for item in buffer.items {
                log.add(item).await?;
            }
        }
        Ok(verdict(&log.items))
    }

    /// Admits the copies missing at one destination.
    #[allow(clippy::too_many_arguments)]
    async fn copy_to(
        &self,
        plan: &ValidPlan,
        destination: &Destination,
        selected: &[Selected],
        owner: &Caller,
        run: &Run,
        log: &mut RunLog<'_>,
        followed: &mut Vec<Followed>,
    ) -> Result<(), Error> {
        let targets = targets(plan, selected, self.key_of(destination));
        let ids: Vec<String> = targets.values().cloned().collect();
        let place = match self.place(plan, destination, &ids, owner).await {
            Ok(place) => place,
            Err(error @ (Error::Aws(_) | Error::Unavailable(_))) => {
                return log
                    .add(item("", None, &self.key_of(destination), None, Outcome::Failed, Some(error.to_string())))
                    .await;
            }
            Err(error) => return Err(error),
        };
        let recorded: HashSet<&str> = place.recorded.iter().map(|c| c.target.as_str()).collect();
        let mut pending = Vec::new();
        for s in selected {
            let Some(source) = &s.source else {
                log.add(item(
                    &s.cluster.id,
                    None,
                    &place.key,
                    None,
                    Outcome::NoSnapshot,
                    Some("no available snapshot of the plan's types".into()),
                ))
                .await?;
                continue;
            };
            let target = &targets[&s.cluster.id];
            let name = copy_name(&place, target);
            let record = PlanCopyRecord {
                account: place.account.clone(),
                region: place.region.clone(),
                target: target.clone(),
                plan: plan.name.clone(),
                cluster_id: s.cluster.id.clone(),
                source_arn: source.arn.clone(),
                source_time_ms: source.create_time.map_or(0, ms_of),
                run_id: run.new.id.clone(),
                created_ms: now_ms(),
                expired_ms: None,
            };
            if let Some(existing) = place.described.get(target) {
                // Made by an earlier run (or this one, before a replica died): recorded now if a
                // replica died between the copy and its record, since it carries the plan's tag.
                if !recorded.contains(target.as_str()) && tagged_by(existing, &plan.name) {
                    self.store.record_plan_copy(&record).await.map_err(store_error)?;
                }
                let (outcome, detail) = existing_outcome(existing);
                if outcome == Outcome::SkippedInProgress {
                    followed.push(Followed {
                        cluster: s.cluster.id.clone(),
                        source: source.clone(),
                        destination: place.key.clone(),
                        name: name.clone(),
                    });
                }
                log.add(item(&s.cluster.id, Some(source), &place.key, Some(&name), outcome, detail)).await?;
                continue;
            }
            pending.push(Pending { cluster: s.cluster.id.clone(), source, target: target.clone(), name, record });
        }
        // Admitted a few at once: each costs a describe of its source, a decision and the store;
        // one at a time, a fleet waited on its own admission before its copies could run.
        let admissions: Vec<AdmitFuture<'_>> = pending
            .iter()
            .map(|p| Box::pin(self.admit(plan, destination, owner, &place, p)) as AdmitFuture<'_>)
            .collect();
        let admitted: Vec<Result<(RunItem, Option<Followed>), Error>> =
            futures_util::stream::iter(admissions).buffered(ADMIT_AT_ONCE).collect().await;
        for result in admitted {
            let (item, follow) = result?;
            followed.extend(follow);
            log.add(item).await?;
        }
        Ok(())
    }

    /// Admits one copy a run makes, as the owner; its item, and the copy to wait for.
    async fn admit(
        &self,
        plan: &ValidPlan,
        destination: &Destination,
        owner: &Caller,
        place: &Place,
        p: &Pending<'_>,
    ) -> Result<(RunItem, Option<Followed>), Error> {
        let request = Self::copy_request(plan, destination, p.source, &p.target);
        let mut denied = None;
        let authorize = |snapshot: &ClusterSnapshot, context: &CopyContext| {
            let context = CopyContext { plan: Some(plan.name.clone()), ..context.clone() };
            let decision = self.policies.decide(owner, Action::CopyClusterSnapshot, snapshot, Some(&context));
            let at = Some(format!("{}/{}", place.key, p.target));
            DecisionEvent::decided(owner, Action::CopyClusterSnapshot, &snapshot.arn, at, &decision);
            if decision.allowed {
                Ok(())
            } else {
                denied = Some(decision.policies.clone());
                Err(Error::PermissionDenied { action: Action::CopyClusterSnapshot.name(), policies: decision.policies })
            }
        };
        let copied = self.copy_as_owner(&request, owner, authorize).await;
        let at =
            |name: &str, outcome, detail| item(&p.cluster, Some(p.source), &place.key, Some(name), outcome, detail);
        Ok(match copied {
            Ok(view) => {
                self.store.record_plan_copy(&p.record).await.map_err(store_error)?;
                let name = if view.snapshot.arn.is_empty() { p.name.clone() } else { view.snapshot.arn.clone() };
                let follow = Followed {
                    cluster: p.cluster.clone(),
                    source: p.source.clone(),
                    destination: place.key.clone(),
                    name: name.clone(),
                };
                (at(&name, Outcome::Copied, None), Some(follow))
            }
            Err(Error::PermissionDenied { policies, .. }) => {
                let policies = denied.unwrap_or(policies);
                (at(&p.name, Outcome::Refused, Some(refusal(owner, "CopyClusterSnapshot", &policies))), None)
            }
            Err(error) => (at(&p.name, Outcome::Failed, Some(error.to_string())), None),
        })
    }

    /// The copy workflow's admission, as the owner; the owner's share of AWS calls is waited
    /// out rather than failing the copy.
    async fn copy_as_owner(
        &self,
        request: &CopyRequest,
        owner: &Caller,
        authorize: impl FnMut(&ClusterSnapshot, &CopyContext) -> Result<(), Error>,
    ) -> Result<crate::copy::CopyView, Error> {
        let mut authorize = authorize;
        loop {
            match self.copies.copy(request, owner, &mut authorize).await {
                Err(Error::OverShare { retry_after, .. }) => {
                    tokio::time::sleep(retry_after.max(Duration::from_millis(10))).await;
                }
                other => return other,
            }
        }
    }

    /// Waits for the run's copies to end, reading the watch hub's shared observations.
    async fn follow(&self, owner: &Caller, mut followed: Vec<Followed>, log: &mut RunLog<'_>) -> Result<(), Error> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(self.settings.run_timeout_secs);
        let every = Duration::from_millis(self.settings.follow_interval_ms);
        while !followed.is_empty() {
            let mut still = Vec::new();
            for copy in followed {
                let ended = match self.copies.get(&copy.name, false, owner).await {
                    Ok(view) => match view.state {
                        CopyState::Available => Some((Outcome::Available, None)),
                        CopyState::Queued | CopyState::Copying | CopyState::Unknown => None,
                        state => Some((
                            Outcome::Failed,
                            Some(view.failure.unwrap_or_else(|| format!("the copy ended {state:?}").to_lowercase())),
                        )),
                    },
                    Err(Error::NotFound { .. }) => Some((Outcome::Failed, Some("the copy is gone".to_owned()))),
                    Err(error) => {
                        tracing::debug!(copy = %copy.name, %error, "a plan's copy could not be read; trying again");
                        None
                    }
                };
                match ended {
                    Some((outcome, detail)) => {
                        log.add(item(
                            &copy.cluster,
                            Some(&copy.source),
                            &copy.destination,
                            Some(&copy.name),
                            outcome,
                            detail,
                        ))
                        .await?;
                    }
                    None => still.push(copy),
                }
            }
            followed = still;
            if followed.is_empty() {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                for copy in followed {
                    let detail =
                        format!("still copying after plans.run_timeout_secs ({} s)", self.settings.run_timeout_secs);
                    log.add(item(
                        &copy.cluster,
                        Some(&copy.source),
                        &copy.destination,
                        Some(&copy.name),
                        Outcome::Failed,
                        Some(detail),
                    ))
                    .await?;
                }
                break;
            }
            tokio::time::sleep(every).await;
        }
        Ok(())
    }

    /// Expires the plan's old copies at one destination, as the owner; records each copy's
    /// recovery point age.
    async fn expire_at(
        &self,
        plan: &ValidPlan,
        destination: &Destination,
        owner: &Caller,
        run: &Run,
        log: &mut RunLog<'_>,
    ) -> Result<(), Error> {
        let place = match self.place(plan, destination, &[], owner).await {
            Ok(place) => place,
            Err(error @ (Error::Aws(_) | Error::Unavailable(_))) => {
                return log
                    .add(item(
                        "",
                        None,
                        &self.key_of(destination),
                        None,
                        Outcome::Failed,
                        Some(format!("retention: {error}")),
                    ))
                    .await;
            }
            Err(error) => return Err(error),
        };
        let now = SystemTime::now();
        // Recorded copies AWS no longer has were deleted by someone: they are history.
        for copy in &place.recorded {
            if !place.described.contains_key(&copy.target) {
                let name = copy_name(&place, &copy.target);
                self.record_expiry(&plan.name, &run.new.id, owner, &place, &copy.target, &name, None, "gone").await?;
            }
        }
        for (cluster, copies) in plan_copies(plan, &place) {
            if let Some(newest) = copies.iter().filter(|c| c.status == "available").map(|c| c.source_time).max() {
                let age = now.duration_since(newest).unwrap_or_default().as_secs();
                self.metrics.plan_copy_age(&plan.name, &cluster, &place.key, i64::try_from(age).unwrap_or(i64::MAX));
            }
            for copy in expiries(&destination.retention, &copies, now) {
                let Some(snapshot) = place.described.get(&copy.id) else { continue };
                let decision = self.policies.decide_expire(owner, snapshot, &plan.name);
                DecisionEvent::decided(owner, Action::ExpireCopy, &snapshot.arn, None, &decision);
                if !decision.allowed {
                    log.add(item(
                        &cluster,
                        None,
                        &place.key,
                        Some(&snapshot.arn),
                        Outcome::Refused,
                        Some(refusal(owner, "ExpireCopy", &decision.policies)),
                    ))
                    .await?;
                    continue;
                }
                let deleted = {
                    let _turn = self.turn(owner, &place.region).await?;
                    place.rds.delete_cluster_snapshot(&place.region, &snapshot.id).await
                };
                let (request_id, how) = match deleted {
                    Ok((_, request_id)) => (request_id, "deleted"),
                    Err(error) if error.kind == AwsErrorKind::NotFound => (None, "gone"),
                    Err(error) => {
                        log.add(item(
                            &cluster,
                            None,
                            &place.key,
                            Some(&snapshot.arn),
                            Outcome::Failed,
                            Some(format!("retention: {error}")),
                        ))
                        .await?;
                        continue;
                    }
                };
                self.record_expiry(
                    &plan.name,
                    &run.new.id,
                    owner,
                    &place,
                    &copy.id,
                    &snapshot.arn,
                    request_id.as_deref(),
                    how,
                )
                .await?;
                log.add(item(
                    &cluster,
                    None,
                    &place.key,
                    Some(&snapshot.arn),
                    Outcome::Expired,
                    request_id.map(|id| format!("aws_request_id {id}")),
                ))
                .await?;
            }
        }
        Ok(())
    }
}

impl Plans {
    /// Marks a plan's copy expired (deleted by this run, or found gone) and audits it, once
    /// across replicas.
    #[allow(clippy::too_many_arguments)]
    async fn record_expiry(
        &self,
        plan: &str,
        run: &str,
        owner: &Caller,
        place: &Place,
        target: &str,
        name: &str,
        request_id: Option<&str>,
        how: &str,
    ) -> Result<(), Error> {
        if self.store.expire_plan_copy(&place.account, &place.region, target, now_ms()).await.map_err(store_error)? {
            crate::audit::plan_expiry(plan, run, &owner.id, name, request_id, how);
        }
        Ok(())
    }
}

/// The items of a run, written to the store as they happen.
struct RunLog<'a> {
    plans: &'a Plans,
    run: &'a str,
    items: Vec<RunItem>,
    /// Written to the store as they come; otherwise kept, to be logged in order later.
    write: bool,
}

impl RunLog<'_> {
    async fn add(&mut self, item: RunItem) -> Result<(), Error> {
        if self.write {
            self.plans.store.add_run_item(self.run, &item).await.map_err(store_error)?;
        }
        self.items.push(item);
        Ok(())
    }
}

/// A run's state from its items: SUCCEEDED when every cluster has an available copy at every
/// destination and nothing was refused or failed; PARTIAL when some did; FAILED when none.
/// AWS's code for a full quota of manual snapshots (and for its limit of copies in progress).
const QUOTA_CODE: &str = "SnapshotQuotaExceeded";

fn verdict(items: &[RunItem]) -> (&'static str, Option<String>) {
    let count = |o: Outcome| items.iter().filter(|i| i.outcome == o.as_str()).count();
    let (refused, failed, none) = (count(Outcome::Refused), count(Outcome::Failed), count(Outcome::NoSnapshot));
    let good = count(Outcome::Available) + count(Outcome::UpToDate);
    if refused + failed + none == 0 {
        return ("SUCCEEDED", None);
    }
    let mut why = Vec::new();
    for (n, what) in [(refused, "refused"), (failed, "failed"), (none, "without a snapshot to copy")] {
        if n > 0 {
            why.push(format!("{n} {what}"));
        }
    }
    // AWS answers a full quota of manual snapshots with SnapshotQuotaExceeded; a run says so,
    // and where, rather than leave it to be found in the items.
    let mut full: Vec<&str> = items
        .iter()
        .filter(|i| i.outcome == Outcome::Failed.as_str())
        .filter(|i| i.detail.as_deref().is_some_and(|d| d.contains(QUOTA_CODE) && !d.contains("across region")))
        .map(|i| i.destination.as_str())
        .collect();
    full.sort_unstable();
    full.dedup();
    let mut reason = format!("{} (see the run's items)", why.join(", "));
    if !full.is_empty() {
        reason.push_str(&format!(
            "; the manual cluster snapshot quota is full at {} (expire copies, lower keep_last or raise the quota)",
            full.join(", ")
        ));
    }
    let reason = Some(reason);
    if good > 0 { ("PARTIAL", reason) } else { ("FAILED", reason) }
}

/// The target id of each selected cluster's copy at a destination, by cluster.
fn targets(plan: &ValidPlan, selected: &[Selected], key: String) -> BTreeMap<String, String> {
    selected
        .iter()
        .filter_map(|s| {
            s.source
                .as_ref()
                .map(|source| (s.cluster.id.clone(), target_id(&plan.name, &s.cluster.id, &source.arn, &key)))
        })
        .collect()
}

/// A copy's name at a place: its ARN when the account is known.
fn copy_name(place: &Place, target: &str) -> String {
    place.described.get(target).map(|s| s.arn.clone()).filter(|a| !a.is_empty()).unwrap_or_else(|| {
        if place.account.is_empty() {
            target.to_owned()
        } else {
            Arn::cluster_snapshot(&place.region, &place.account, target).to_string()
        }
    })
}

/// What a run does about a target that exists already.
fn existing_outcome(existing: &ClusterSnapshot) -> (Outcome, Option<String>) {
    match existing.status.as_str() {
        "available" => (Outcome::UpToDate, None),
        "copying" | "creating" => (Outcome::SkippedInProgress, None),
        status => (Outcome::Failed, Some(format!("the copy of this snapshot exists and is {status}"))),
    }
}

fn tagged_by(snapshot: &ClusterSnapshot, plan: &str) -> bool {
    snapshot.tags.iter().any(|(k, v)| k == PLAN_TAG && v == plan)
}

/// The plan's copies at a place, by cluster, as retention sees them.
fn plan_copies(plan: &ValidPlan, place: &Place) -> BTreeMap<String, Vec<PlanCopy>> {
    let mut by_cluster: BTreeMap<String, Vec<PlanCopy>> = BTreeMap::new();
    for record in &place.recorded {
        let Some(snapshot) = place.described.get(&record.target) else { continue };
        by_cluster.entry(record.cluster_id.clone()).or_default().push(PlanCopy {
            id: record.target.clone(),
            cluster_id: record.cluster_id.clone(),
            recorded: true,
            tagged: tagged_by(snapshot, &plan.name),
            status: snapshot.status.clone(),
            source_time: SystemTime::UNIX_EPOCH
                + Duration::from_millis(u64::try_from(record.source_time_ms).unwrap_or(0)),
        });
    }
    by_cluster
}

/// The tags of a plan's copy: the destination's, and the plan's own.
fn copy_tags(plan: &ValidPlan, destination: &Destination) -> Vec<(String, String)> {
    let mut tags = destination.tags.clone();
    tags.push((PLAN_TAG.to_owned(), plan.name.clone()));
    tags
}

/// The KMS key of a plan's copy: the plan's key encrypts the copies of encrypted sources; AWS
/// refuses a key for an unencrypted one, whose copy stays unencrypted.
fn copy_key(destination: &Destination, source: &ClusterSnapshot) -> Option<String> {
    destination.kms_key_id.clone().filter(|_| source.encrypted)
}

/// The context of a plan's copy decision, as the copy workflow will give it.
fn plan_context(
    plan: &ValidPlan,
    destination: &Destination,
    source: &ClusterSnapshot,
    place: &Place,
    target: &str,
) -> CopyContext {
    CopyContext {
        destination_account: place.account.clone(),
        destination_region: place.region.clone(),
        target: target.to_owned(),
        kms_key: copy_key(destination, source),
        tags: copy_tags(plan, destination),
        copy_tags: destination.copy_tags,
        cross_region: source.region != place.region,
        cross_account: !place.account.is_empty() && !source.account.is_empty() && place.account != source.account,
        plan: Some(plan.name.clone()),
    }
}

fn refusal(owner: &Caller, action: &str, policies: &[String]) -> String {
    if policies.is_empty() {
        format!("{action} denied as the plan's owner {}: no policy permits it", owner.id)
    } else {
        format!("{action} denied as the plan's owner {}: forbidden by {}", owner.id, policies.join(", "))
    }
}

pub(super) fn ms_of(time: SystemTime) -> i64 {
    time.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
