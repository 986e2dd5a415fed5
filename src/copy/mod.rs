//! The copy workflow: validate the request, know the source, apply its engine's rules, build
//! a presigned URL where AWS needs one, and start the copy exactly once however often it is
//! asked for.

mod source_rules;
pub mod validate;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use validate::{CopyRequest, ValidCopy, parse_copy_name, validate};

pub use crate::auth::policy::CopyContext;
use crate::aws::{Accounts, AwsErrorKind, CopyInput, Rds, presign};
use crate::error::{Error, FieldViolation};
use crate::rds::rules::SnapshotRef;
use crate::rds::{Arn, ClusterSnapshot, CopyState, Engine};

/// How long a described source is trusted, so a burst of copies of one source costs one call.
const SOURCE_TTL: Duration = Duration::from_secs(5);
/// How long a finished copy answers identical requests that waited for it; later retries go
/// through AWS's AlreadyExists and a describe, which also sees a copy deleted since.
const RECENT_TTL: Duration = Duration::from_secs(5);

type SourceSlot = Arc<tokio::sync::Mutex<Option<(ClusterSnapshot, Instant)>>>;
type Recent = Arc<tokio::sync::Mutex<Option<(String, ClusterSnapshot, Instant)>>>;

/// A copy started (or found already started by the same request).
pub struct Copied {
    pub snapshot: ClusterSnapshot,
    /// The request id of the AWS call that started it, for the audit trail.
    pub aws_request_id: Option<String>,
}

/// Where a copy named by a request lives.
pub struct Located {
    /// The clients that can see it.
    pub rds: Arc<Rds>,
    /// The account its ARN names, or "" for a bare identifier (the gateway's own).
    pub account: String,
    pub region: String,
    pub id: String,
    pub arn: Option<String>,
}

pub struct CopyService {
    accounts: Arc<Accounts>,
    sources: Mutex<HashMap<String, SourceSlot>>,
    inflight: Mutex<HashMap<String, Recent>>,
}

impl CopyService {
    pub fn new(accounts: Arc<Accounts>) -> CopyService {
        CopyService { accounts, sources: Mutex::new(HashMap::new()), inflight: Mutex::new(HashMap::new()) }
    }

    pub fn default_region(&self) -> &str {
        self.accounts.default_region()
    }

    /// Validates and starts a copy; returns the new snapshot as AWS reports it. Repeating a
    /// request that succeeded returns the same copy; concurrent identical requests make one.
    ///
    /// `authorize` decides once the source is known (its engine, tags and encryption are what
    /// policies look at) and before the engine's rules or any call that changes anything.
    pub async fn copy(
        &self,
        request: &CopyRequest,
        authorize: impl FnOnce(&ClusterSnapshot, &CopyContext) -> Result<(), Error>,
    ) -> Result<Copied, Error> {
        let valid = tracing::info_span!("validate", otel.name = "validate")
            .in_scope(|| validate(request, self.accounts.default_region()))
            .map_err(Error::InvalidArgument)?;
        let rds = self.accounts.destination(valid.destination_account.as_deref())?;
        let destination_account =
            valid.destination_account.clone().or_else(|| self.accounts.own_account().map(str::to_owned));
        let source = self.resolve_source(&rds, &valid, destination_account.as_deref()).await?;
        let destination = destination_account.clone().unwrap_or_default();
        authorize(
            &source,
            &CopyContext {
                cross_account: !destination.is_empty() && !source.account.is_empty() && destination != source.account,
                destination_account: destination,
                destination_region: valid.destination_region.clone(),
                target: valid.target.clone(),
                kms_key: valid.kms_key.as_ref().map(|(text, _)| text.clone()),
                tags: valid.tags.clone(),
                copy_tags: valid.copy_tags,
                cross_region: source.region != valid.destination_region,
            },
        )?;
        source_rules::check(&valid, &source, destination_account.as_deref())?;

        let family = Engine::parse(&source.engine).family();
        let presigned_url = if family.needs_presigned_url(&source.region, &valid.destination_region) {
            let credentials = rds.credentials().await?;
            let kms = valid.kms_key.as_ref().map(|(text, _)| text.as_str());
            Some(
                presign::presign_copy(&credentials, &source.arn, &source.region, &valid.destination_region, kms)
                    .map_err(|e| Error::Internal(format!("presigning failed: {e}")))?,
            )
        } else {
            None
        };
        let input = CopyInput {
            source: match &valid.source {
                SnapshotRef::Id(id) => id.clone(),
                SnapshotRef::Arn(arn) => arn.to_string(),
            },
            target: valid.target.clone(),
            kms_key_id: valid.kms_key.as_ref().map(|(text, _)| text.clone()),
            copy_tags: valid.copy_tags,
            tags: valid.tags.clone(),
            presigned_url,
        };

        let key =
            format!("{}/{}/{}", destination_account.as_deref().unwrap_or(""), valid.destination_region, valid.target);
        let slot = self.inflight_slot(&key);
        let mut recent = slot.lock().await;
        if let Some((source_arn, snapshot, at)) = recent.as_ref()
            && *source_arn == source.arn
            && at.elapsed() < RECENT_TTL
        {
            return Ok(Copied { snapshot: snapshot.clone(), aws_request_id: None });
        }
        let (copy, aws_request_id) = match rds.copy_cluster_snapshot(&valid.destination_region, &input).await {
            Ok(copied) => copied,
            Err(e) if e.kind == AwsErrorKind::AlreadyExists => {
                // A retry of a copy that succeeded: the same target from the same source is that
                // copy, not a conflict. AWS has no client token for this action.
                let existing = rds.describe_cluster_snapshot(&valid.destination_region, &valid.target).await?;
                if existing.source_arn.as_deref() != Some(source.arn.as_str()) {
                    return Err(e.into());
                }
                (existing, e.request_id.clone())
            }
            Err(e) => return Err(e.into()),
        };
        *recent = Some((source.arn.clone(), copy.clone(), Instant::now()));
        Ok(Copied { snapshot: copy, aws_request_id })
    }

    fn inflight_slot(&self, key: &str) -> Recent {
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        // Forget finished entries nobody waits on, so the map stays as small as the traffic.
        inflight.retain(|_, slot| {
            Arc::strong_count(slot) > 1
                || slot
                    .try_lock()
                    .map(|r| r.as_ref().is_some_and(|(_, _, at)| at.elapsed() < RECENT_TTL))
                    .unwrap_or(true)
        });
        inflight.entry(key.to_owned()).or_default().clone()
    }

    /// Describes the source in its own region, as the destination account sees it. Requests
    /// for one source share one describe: the first describes, the others wait for it.
    async fn resolve_source(
        &self,
        rds: &Rds,
        valid: &ValidCopy,
        account: Option<&str>,
    ) -> Result<ClusterSnapshot, Error> {
        let reference = match &valid.source {
            SnapshotRef::Id(id) => id.to_ascii_lowercase(),
            SnapshotRef::Arn(arn) => arn.to_string(),
        };
        let key = format!("{}|{}|{}", account.unwrap_or(""), valid.source_region, reference);
        let slot = {
            let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
            sources.retain(|_, slot| {
                Arc::strong_count(slot) > 1
                    || slot
                        .try_lock()
                        .map(|s| s.as_ref().is_some_and(|(_, at)| at.elapsed() < SOURCE_TTL))
                        .unwrap_or(true)
            });
            sources.entry(key).or_default().clone()
        };
        let mut cached = slot.lock().await;
        if let Some((snapshot, at)) = cached.as_ref()
            && at.elapsed() < SOURCE_TTL
        {
            return Ok(snapshot.clone());
        }
        let snapshot = rds.describe_cluster_snapshot(&valid.source_region, &reference).await?;
        *cached = Some((snapshot.clone(), Instant::now()));
        Ok(snapshot)
    }

    /// The current state of a copy, by name.
    pub async fn get(&self, name: &str) -> Result<ClusterSnapshot, Error> {
        let Located { rds, region, id, arn, .. } = self.locate(name)?;
        let snapshot = rds.describe_cluster_snapshot(&region, &id).await?;
        if let Some(arn) = arn
            && snapshot.arn != arn
        {
            // The identifier exists, but in another account than the ARN names.
            return Err(Error::Aws(crate::aws::AwsError {
                kind: AwsErrorKind::NotFound,
                action: "DescribeDBClusterSnapshots",
                code: Some("DBClusterSnapshotNotFoundFault".into()),
                message: format!("DBClusterSnapshot {arn} not found."),
                request_id: None,
            }));
        }
        Ok(snapshot)
    }

    /// Where a copy is, by name.
    pub fn locate(&self, name: &str) -> Result<Located, Error> {
        let (region, id, arn) =
            parse_copy_name(name, self.accounts.default_region()).map_err(Error::InvalidArgument)?;
        let account = arn.as_deref().and_then(Arn::parse).map(|a| a.account).unwrap_or_default();
        Ok(Located { rds: self.accounts.for_snapshot_account(&account), account, region, id, arn })
    }

    /// Cancels a copy in progress the way the AWS documentation prescribes: by deleting the
    /// target snapshot while it is `copying`.
    ///
    /// AWS offers no conditional delete, so the check and the delete are two calls. The
    /// window between them is kept to one round trip: the check is a fresh describe (never a
    /// cached observation) and the delete follows at once. Should the copy finish inside that
    /// window, the delete's own answer shows it, and the result says DELETED, not CANCELLED.
    /// Cancels a copy in progress; `authorize` decides on the snapshot before anything else
    /// is said about it.
    pub async fn cancel(
        &self,
        name: &str,
        authorize: impl FnOnce(&ClusterSnapshot) -> Result<(), Error>,
    ) -> Result<(ClusterSnapshot, CopyState), Error> {
        let rds = self.locate(name)?.rds;
        let current = self.get(name).await?;
        authorize(&current)?;
        if current.status != "copying" {
            return Err(Error::FailedPrecondition(vec![FieldViolation::new(
                "name",
                format!(
                    "the snapshot is {}; only a copy in progress can be cancelled, and a finished snapshot is never deleted",
                    current.status
                ),
            )]));
        }
        let deleted = rds.delete_cluster_snapshot(&current.region, &current.id).await?;
        if deleted.status == "copying" {
            Ok((deleted, CopyState::Cancelled))
        } else {
            tracing::warn!(snapshot = %deleted.arn, status = %deleted.status, "the copy finished between the check and the delete");
            Ok((deleted, CopyState::Deleted))
        }
    }
}
