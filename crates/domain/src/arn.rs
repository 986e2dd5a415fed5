//! Amazon Resource Names of cluster snapshots, clusters and KMS keys.

use std::fmt;

/// A parsed ARN: `arn:PARTITION:SERVICE:REGION:ACCOUNT:RESOURCE`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Arn {
    pub partition: String,
    pub service: String,
    pub region: String,
    pub account: String,
    /// The resource part, e.g. `cluster-snapshot:my-snap` or `key/1234`.
    pub resource: String,
}

impl Arn {
    /// Parses an ARN; `None` when the text is not one.
    pub fn parse(text: &str) -> Option<Arn> {
        let mut parts = text.splitn(6, ':');
        if parts.next()? != "arn" {
            return None;
        }
        let partition = parts.next()?;
        let service = parts.next()?;
        let region = parts.next()?;
        let account = parts.next()?;
        let resource = parts.next()?;
        let valid_partition = matches!(partition, "aws" | "aws-us-gov" | "aws-cn" | "aws-iso" | "aws-iso-b");
        if !valid_partition
            || service.is_empty()
            || resource.is_empty()
            || !(account.is_empty() || crate::AccountId::is_valid(account))
        {
            return None;
        }
        Some(Arn {
            partition: partition.to_owned(),
            service: service.to_owned(),
            region: region.to_owned(),
            account: account.to_owned(),
            resource: resource.to_owned(),
        })
    }

    /// The ARN of a DB cluster snapshot.
    pub fn cluster_snapshot(region: &str, account: &str, id: &str) -> Arn {
        Arn {
            partition: partition_for_region(region).to_owned(),
            service: "rds".to_owned(),
            region: region.to_owned(),
            account: account.to_owned(),
            resource: format!("cluster-snapshot:{id}"),
        }
    }

    /// The ARN of a DB cluster.
    pub fn cluster(region: &str, account: &str, id: &str) -> Arn {
        Arn {
            partition: partition_for_region(region).to_owned(),
            service: "rds".to_owned(),
            region: region.to_owned(),
            account: account.to_owned(),
            resource: format!("cluster:{id}"),
        }
    }

    /// The snapshot identifier when this is an RDS cluster-snapshot ARN.
    pub fn cluster_snapshot_id(&self) -> Option<&str> {
        if self.service != "rds" {
            return None;
        }
        self.resource.strip_prefix("cluster-snapshot:").filter(|id| !id.is_empty())
    }

    /// The cluster identifier when this is an RDS cluster ARN.
    pub fn cluster_id(&self) -> Option<&str> {
        if self.service != "rds" {
            return None;
        }
        self.resource.strip_prefix("cluster:").filter(|id| !id.is_empty())
    }
}

impl fmt::Display for Arn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "arn:{}:{}:{}:{}:{}", self.partition, self.service, self.region, self.account, self.resource)
    }
}

/// The AWS partition a region belongs to.
pub fn partition_for_region(region: &str) -> &'static str {
    if region.starts_with("us-gov-") {
        "aws-us-gov"
    } else if region.starts_with("cn-") {
        "aws-cn"
    } else if region.starts_with("us-isob-") {
        "aws-iso-b"
    } else if region.starts_with("us-iso-") {
        "aws-iso"
    } else {
        "aws"
    }
}

/// A region name as AWS spells them (`us-east-1`, `us-gov-west-1`, `ap-southeast-4`).
/// Checked without allocating: every read of a copy by its ARN checks one.
pub fn is_region_name(region: &str) -> bool {
    let (mut parts, mut last) = (0, "");
    for part in region.split('-') {
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
            return false;
        }
        (parts, last) = (parts + 1, part);
    }
    parts >= 3 && last.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_snapshot_arn_round_trips() {
        let text = "arn:aws:rds:us-west-2:123456789012:cluster-snapshot:aurora-cluster1-snapshot-20161115";
        let arn = Arn::parse(text).expect("parses");
        assert_eq!(arn.region, "us-west-2");
        assert_eq!(arn.account, "123456789012");
        assert_eq!(arn.cluster_snapshot_id(), Some("aurora-cluster1-snapshot-20161115"));
        assert_eq!(arn.to_string(), text);
    }

    #[test]
    fn text_that_is_not_an_arn_is_refused() {
        for text in [
            "",
            "my-snap",
            "arn:aws:rds",
            "arn:bogus:rds:us-east-1:123456789012:x",
            "arn:aws:rds:us-east-1:12:cluster-snapshot:a",
        ] {
            assert_eq!(Arn::parse(text), None, "{text}");
        }
    }

    #[test]
    fn govcloud_regions_are_their_own_partition() {
        assert_eq!(partition_for_region("us-gov-west-1"), "aws-us-gov");
        assert_eq!(Arn::cluster_snapshot("us-gov-east-1", "123456789012", "s").partition, "aws-us-gov");
        assert_eq!(partition_for_region("eu-west-1"), "aws");
    }

    #[test]
    fn region_names_are_recognised() {
        assert!(is_region_name("us-east-1"));
        assert!(is_region_name("us-gov-west-1"));
        assert!(!is_region_name("us-east"));
        assert!(!is_region_name("US-EAST-1"));
        assert!(!is_region_name(""));
        assert!(is_region_name("ap-southeast-4"));
        assert!(!is_region_name("us--east-1") && !is_region_name("us-east-1a") && !is_region_name("-us-east-1"));
    }
}
