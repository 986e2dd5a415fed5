//! The copy workflow: validate, then start the copy through the AWS adapter.

pub mod validate;

use std::sync::Arc;

pub use validate::{CopyRequest, ValidCopy, parse_copy_name, validate};

use crate::aws::{CopyInput, Rds};
use crate::error::{Error, FieldViolation};
use crate::rds::{ClusterSnapshot, CopyState};

pub struct CopyService {
    rds: Arc<Rds>,
}

impl CopyService {
    pub fn new(rds: Arc<Rds>) -> CopyService {
        CopyService { rds }
    }

    pub fn default_region(&self) -> &str {
        self.rds.default_region()
    }

    /// Validates and starts a copy; returns the new snapshot as AWS reports it.
    pub async fn copy(&self, request: &CopyRequest) -> Result<ClusterSnapshot, Error> {
        let valid = validate(request, self.rds.default_region()).map_err(Error::InvalidArgument)?;
        if let Some(account) = &valid.destination_account {
            return Err(Error::InvalidArgument(vec![FieldViolation::new(
                "destination_account",
                format!(
                    "no role is configured for account {account}; leave it empty to copy into the gateway's own account"
                ),
            )]));
        }
        let input = CopyInput {
            source: match &valid.source {
                crate::rds::rules::SnapshotRef::Id(id) => id.clone(),
                crate::rds::rules::SnapshotRef::Arn(arn) => arn.to_string(),
            },
            target: valid.target.clone(),
            kms_key_id: valid.kms_key.as_ref().map(|(text, _)| text.clone()),
            copy_tags: valid.copy_tags,
            tags: valid.tags.clone(),
            presigned_url: None,
        };
        Ok(self.rds.copy_cluster_snapshot(&valid.destination_region, &input).await?)
    }

    /// The current state of a copy, by name.
    pub async fn get(&self, name: &str) -> Result<ClusterSnapshot, Error> {
        let (region, id, arn) = parse_copy_name(name, self.rds.default_region()).map_err(Error::InvalidArgument)?;
        let snapshot = self.rds.describe_cluster_snapshot(&region, &id).await?;
        if let Some(arn) = arn
            && snapshot.arn != arn
        {
            // The identifier exists, but in another account than the ARN names.
            return Err(Error::Aws(crate::aws::AwsError {
                kind: crate::aws::AwsErrorKind::NotFound,
                action: "DescribeDBClusterSnapshots",
                code: Some("DBClusterSnapshotNotFoundFault".into()),
                message: format!("DBClusterSnapshot {arn} not found."),
                request_id: None,
            }));
        }
        Ok(snapshot)
    }

    /// Cancels a copy in progress the way the AWS documentation prescribes: by deleting the
    /// target snapshot while it is `copying`.
    ///
    /// AWS offers no conditional delete, so the check and the delete are two calls. The
    /// window between them is kept to one round trip: the check is a fresh describe (never a
    /// cached observation) and the delete follows at once. Should the copy finish inside that
    /// window, the delete's own answer shows it, and the result says DELETED, not CANCELLED.
    pub async fn cancel(&self, name: &str) -> Result<(ClusterSnapshot, CopyState), Error> {
        let current = self.get(name).await?;
        if current.status != "copying" {
            return Err(Error::FailedPrecondition(vec![FieldViolation::new(
                "name",
                format!(
                    "the snapshot is {}; only a copy in progress can be cancelled, and a finished snapshot is never deleted",
                    current.status
                ),
            )]));
        }
        let deleted = self.rds.delete_cluster_snapshot(&current.region, &current.id).await?;
        if deleted.status == "copying" {
            Ok((deleted, CopyState::Cancelled))
        } else {
            tracing::warn!(snapshot = %deleted.arn, status = %deleted.status, "the copy finished between the check and the delete");
            Ok((deleted, CopyState::Deleted))
        }
    }
}
