//! The copy workflow: validate the request, know the source, apply its engine's rules, build
//! a presigned URL where AWS needs one, and start the copy exactly once however often it is
//! asked for; read a copy's state (from the watch hub's observation when it is fresh, else
//! from AWS); cancel a copy in progress.

mod source_rules;
mod validate;

use std::sync::Arc;
use std::time::Duration;

pub(crate) use validate::CopyRequest;
use validate::{ValidCopy, parse_copy_name, validate};

use crate::auth::policy::CopyContext;
use crate::aws::{Accounts, AwsErrorKind, CopyInput, Rds, presign};
use crate::error::{Error, FieldViolation};
use crate::watch::WatchHub;
use snapgate_domain::rules::SnapshotRef;
use snapgate_domain::{Arn, ClusterSnapshot, CopyState, Engine};

/// How long a described source is trusted, so a burst of copies of one source costs one call.
const SOURCE_TTL: Duration = Duration::from_secs(5);
/// How long a finished copy answers identical requests that waited for it; later retries go
/// through AWS's AlreadyExists and a describe, which also sees a copy deleted since.
const RECENT_TTL: Duration = Duration::from_secs(5);
/// Entries each cache holds at most (they live seconds; this bounds a burst's memory).
const CACHE_CAPACITY: u64 = 100_000;

/// A copy started (or found already started by the same request).
pub(crate) struct Copied {
    pub snapshot: ClusterSnapshot,
    /// The request id of the AWS call that started it, for the audit trail.
    pub aws_request_id: Option<String>,
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

/// A copy in flight or just made, shared by identical requests: the source it came from and
/// the snapshot AWS answered.
type Made = Arc<(String, ClusterSnapshot, Option<String>)>;

pub(crate) struct CopyService {
    accounts: Arc<Accounts>,
    hub: Arc<WatchHub>,
    /// Described sources, by (account, region, reference): concurrent requests for one
    /// source share one describe (moka's single flight), and the answer serves for seconds.
    sources: moka::future::Cache<String, ClusterSnapshot>,
    /// Copies by (account, region, target): identical concurrent requests share one
    /// CopyDBClusterSnapshot call.
    made: moka::future::Cache<String, Made>,
}

impl CopyService {
    pub(crate) fn new(accounts: Arc<Accounts>, hub: Arc<WatchHub>) -> CopyService {
        CopyService { accounts, hub, sources: cache(SOURCE_TTL), made: cache(RECENT_TTL) }
    }

    /// Validates and starts a copy; returns the new snapshot as AWS reports it. Repeating a
    /// request that succeeded returns the same copy; concurrent identical requests make one.
    ///
    /// `authorize` decides once the source is known (its engine, tags and encryption are what
    /// policies look at) and before the engine's rules or any call that changes anything.
    pub(crate) async fn copy(
        &self,
        request: &CopyRequest,
        authorize: impl FnOnce(&ClusterSnapshot, &CopyContext) -> Result<(), Error>,
    ) -> Result<Copied, Error> {
        let valid = tracing::info_span!("validate", otel.name = "validate")
            .in_scope(|| validate(request, self.accounts.default_region()))
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

        let key =
            format!("{}/{}/{}", destination_account.as_deref().unwrap_or(""), valid.destination_region, valid.target);
        let made = self
            .made
            .try_get_with_by_ref(&key, async {
                let (snapshot, request_id) = self.start(&rds, &valid, &source).await?;
                Ok::<_, Error>(Arc::new((source.arn.clone(), snapshot, request_id)))
            })
            .await
            .map_err(unshare)?;
        if made.0 == source.arn {
            return Ok(Copied { snapshot: made.1.clone(), aws_request_id: made.2.clone() });
        }
        // Another source made (or is making) this target: AWS decides, and answers that the
        // snapshot exists, which is ALREADY_EXISTS for this request.
        let (snapshot, aws_request_id) = self.start(&rds, &valid, &source).await?;
        Ok(Copied { snapshot, aws_request_id })
    }

    /// Presigns where AWS needs it and calls CopyDBClusterSnapshot. A target that exists
    /// already, copied from the same source, is that copy (a retry after success: AWS has no
    /// client token for this action); from another source, it is ALREADY_EXISTS.
    async fn start(
        &self,
        rds: &Rds,
        valid: &ValidCopy,
        source: &ClusterSnapshot,
    ) -> Result<(ClusterSnapshot, Option<String>), Error> {
        let family = Engine::parse(&source.engine).family();
        let kms = valid.kms_key.as_ref().map(|(text, _)| text.as_str());
        let presigned_url = if family.needs_presigned_url(&source.region, &valid.destination_region) {
            let credentials = rds.credentials().await?;
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
            kms_key_id: kms.map(str::to_owned),
            copy_tags: valid.copy_tags,
            tags: valid.tags.clone(),
            presigned_url,
        };
        match rds.copy_cluster_snapshot(&valid.destination_region, &input).await {
            Ok(copied) => Ok(copied),
            Err(e) if e.kind == AwsErrorKind::AlreadyExists => {
                let existing = rds.describe_cluster_snapshot(&valid.destination_region, &valid.target).await?;
                match existing {
                    Some(existing) if existing.source_arn.as_deref() == Some(source.arn.as_str()) => {
                        let request_id = e.request_id.clone();
                        Ok((existing, request_id))
                    }
                    _ => Err(e.into()),
                }
            }
            Err(e) => Err(e.into()),
        }
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
        self.sources
            .try_get_with_by_ref(&key, async {
                rds.describe_cluster_snapshot(&valid.source_region, &reference)
                    .await?
                    .ok_or_else(|| Error::NotFound { what: "snapshot", name: reference.clone() })
            })
            .await
            .map_err(unshare)
    }

    /// The current state of a copy, by name: the watch hub's observation when a poller saw it
    /// within the shortest poll interval (no AWS call), else a describe.
    pub(crate) async fn get(&self, name: &str) -> Result<ClusterSnapshot, Error> {
        let located = self.locate(name)?;
        if let Some(snapshot) = self.hub.fresh(&located.account, &located.region, &located.id)
            && located.is(&snapshot)
        {
            return Ok(snapshot);
        }
        self.describe(&located, name).await
    }

    /// A describe of the copy, never a cached observation.
    async fn describe(&self, located: &Located, name: &str) -> Result<ClusterSnapshot, Error> {
        let snapshot = located.rds.describe_cluster_snapshot(&located.region, &located.id).await?;
        // An identifier that exists in another account than the ARN names is not this copy.
        snapshot.filter(|s| located.is(s)).ok_or_else(|| Error::NotFound { what: "copy", name: name.to_owned() })
    }

    /// Where a copy is, by name.
    pub(crate) fn locate(&self, name: &str) -> Result<Located, Error> {
        let (region, id, arn) =
            parse_copy_name(name, self.accounts.default_region()).map_err(Error::InvalidArgument)?;
        let account = arn.as_deref().and_then(Arn::parse).map(|a| a.account).unwrap_or_default();
        Ok(Located { rds: self.accounts.for_snapshot_account(&account), account, region, id, arn })
    }

    /// Cancels a copy in progress the way the AWS documentation prescribes: by deleting the
    /// target snapshot while it is `copying`; `authorize` decides on the snapshot before
    /// anything else is said about it. Its watchers are told it was cancelled.
    ///
    /// AWS offers no conditional delete, so the check and the delete are two calls. The
    /// window between them is kept to one round trip: the check is a fresh describe (never a
    /// cached observation) and the delete follows at once. Should the copy finish inside that
    /// window, the delete's own answer shows it, and the result says DELETED, not CANCELLED.
    pub(crate) async fn cancel(
        &self,
        name: &str,
        authorize: impl FnOnce(&ClusterSnapshot) -> Result<(), Error>,
    ) -> Result<(ClusterSnapshot, CopyState), Error> {
        let located = self.locate(name)?;
        let current = self.describe(&located, name).await?;
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
        let deleted = located.rds.delete_cluster_snapshot(&current.region, &current.id).await?;
        if deleted.status == "copying" {
            self.hub.record_cancelled(&deleted);
            Ok((deleted, CopyState::Cancelled))
        } else {
            tracing::warn!(snapshot = %deleted.arn, status = %deleted.status, "the copy finished between the check and the delete");
            Ok((deleted, CopyState::Deleted))
        }
    }
}

/// A bounded cache whose entries live `ttl`.
fn cache<V: Clone + Send + Sync + 'static>(ttl: Duration) -> moka::future::Cache<String, V> {
    moka::future::Cache::builder().max_capacity(CACHE_CAPACITY).time_to_live(ttl).build()
}

/// An error shared by the requests that waited on one call, as each one's own.
fn unshare(error: Arc<Error>) -> Error {
    Arc::unwrap_or_clone(error)
}
