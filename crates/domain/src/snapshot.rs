//! A DB cluster snapshot as snapgate sees it, independent of the SDK's types.

use std::time::SystemTime;

use crate::Arn;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterSnapshot {
    pub arn: String,
    pub id: String,
    pub region: String,
    pub account: String,
    /// The AWS status verbatim.
    pub status: String,
    pub percent_progress: i32,
    pub source_arn: Option<String>,
    pub cluster_id: String,
    pub engine: String,
    pub engine_version: String,
    pub allocated_storage_gib: i32,
    pub encrypted: bool,
    pub kms_key_id: Option<String>,
    pub create_time: Option<SystemTime>,
    pub cluster_create_time: Option<SystemTime>,
    pub tags: Vec<(String, String)>,
    pub snapshot_type: String,
}

/// The states snapgate reports, derived from the AWS status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyState {
    Unknown,
    /// Waiting in snapgate's queue for a slot within AWS's limit of copies in progress.
    Queued,
    Copying,
    Available,
    Failed,
    Cancelled,
    Deleted,
}

impl CopyState {
    pub fn from_aws_status(status: &str) -> CopyState {
        match status {
            "creating" | "copying" => CopyState::Copying,
            "available" => CopyState::Available,
            "failed" | "incompatible-restore" | "incompatible-parameters" => CopyState::Failed,
            "deleting" | "deleted" => CopyState::Deleted,
            _ => CopyState::Unknown,
        }
    }

    /// Whether nothing more will happen to the copy.
    pub fn is_terminal(self) -> bool {
        matches!(self, CopyState::Available | CopyState::Failed | CopyState::Cancelled | CopyState::Deleted)
    }
}

impl ClusterSnapshot {
    pub fn state(&self) -> CopyState {
        CopyState::from_aws_status(&self.status)
    }

    /// Region and account from the ARN, when AWS gave one.
    pub fn fill_location_from_arn(&mut self) {
        if let Some(arn) = Arn::parse(&self.arn) {
            self.region = arn.region;
            self.account = arn.account;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aws_statuses_map_to_copy_states() {
        assert_eq!(CopyState::from_aws_status("copying"), CopyState::Copying);
        assert_eq!(CopyState::from_aws_status("available"), CopyState::Available);
        assert_eq!(CopyState::from_aws_status("incompatible-restore"), CopyState::Failed);
        assert_eq!(CopyState::from_aws_status("deleting"), CopyState::Deleted);
        assert_eq!(CopyState::from_aws_status("something-new"), CopyState::Unknown);
        assert!(CopyState::Failed.is_terminal());
        assert!(!CopyState::Copying.is_terminal());
    }
}
