//! The regions AWS has, by partition. A copy never crosses a partition (`aws`, `aws-cn`,
//! `aws-us-gov`); a region outside these lists resolves to no endpoint (a DNS failure and
//! retries), so it is refused before any call.

use crate::partition_for_region;

/// The commercial partition's regions (`aws`), as of November 2026.
pub const COMMERCIAL_REGIONS: &[&str] = &[
    "af-south-1",
    "ap-east-1",
    "ap-east-2",
    "ap-northeast-1",
    "ap-northeast-2",
    "ap-northeast-3",
    "ap-south-1",
    "ap-south-2",
    "ap-southeast-1",
    "ap-southeast-2",
    "ap-southeast-3",
    "ap-southeast-4",
    "ap-southeast-5",
    "ap-southeast-6",
    "ap-southeast-7",
    "ca-central-1",
    "ca-west-1",
    "eu-central-1",
    "eu-central-2",
    "eu-north-1",
    "eu-south-1",
    "eu-south-2",
    "eu-west-1",
    "eu-west-2",
    "eu-west-3",
    "il-central-1",
    "me-central-1",
    "me-south-1",
    "mx-central-1",
    "sa-east-1",
    "us-east-1",
    "us-east-2",
    "us-west-1",
    "us-west-2",
];

/// The China partition's regions (`aws-cn`).
pub const CHINA_REGIONS: &[&str] = &["cn-north-1", "cn-northwest-1"];

/// The GovCloud partition's regions (`aws-us-gov`).
pub const GOVCLOUD_REGIONS: &[&str] = &["us-gov-east-1", "us-gov-west-1"];

/// Whether AWS has a region of this name in some partition.
pub fn is_known_region(name: &str) -> bool {
    [COMMERCIAL_REGIONS, CHINA_REGIONS, GOVCLOUD_REGIONS].iter().any(|list| list.contains(&name))
}

/// Whether a copy from `source` into `destination` stays within one partition.
pub fn same_partition(source: &str, destination: &str) -> bool {
    partition_for_region(source) == partition_for_region(destination)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_are_known_by_partition() {
        assert!(is_known_region("us-east-1") && is_known_region("cn-north-1") && is_known_region("us-gov-west-1"));
        assert!(!is_known_region("mars-north-9") && !is_known_region("US-EAST-1") && !is_known_region(""));
        assert!(same_partition("us-east-1", "eu-west-1"));
        assert!(!same_partition("us-east-1", "cn-north-1"));
        assert!(!same_partition("us-gov-west-1", "us-east-1"));
    }
}
