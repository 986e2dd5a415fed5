//! The rules of `CopyDBClusterSnapshot` that depend on the source snapshot: its state, its
//! encryption, and whether it is shared from another account or lies in another region (RDS
//! API reference, seeds in `shared/seeds/`). The gateway checks them before calling AWS and
//! reports each as a field violation; the emulator checks them as AWS does and answers the
//! first with AWS's fault. One list, so the two cannot drift apart.

/// What the rules need to know of the source snapshot.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// The AWS status (`available`, `copying`, ...).
    pub status: &'a str,
    pub encrypted: bool,
    pub region: &'a str,
    /// The owning account; empty when unknown.
    pub account: &'a str,
}

/// What the rules need to know of the copy.
#[derive(Debug, Clone, Copy)]
pub struct Copy<'a> {
    pub destination_region: &'a str,
    /// The account the copy is made in; `None` when unknown (then a shared source cannot be
    /// told from an own one, and the rules about shared sources are left to AWS).
    pub destination_account: Option<&'a str>,
    pub kms_key: bool,
}

/// A broken rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceRule {
    /// Only an `available` snapshot can be copied.
    NotAvailable { status: String },
    /// AWS refuses a KMS key for an unencrypted source.
    KmsKeyForUnencrypted,
    /// An encrypted snapshot shared from another account stays in its region.
    SharedEncryptedAcrossRegions { owner: String, region: String },
    /// An encrypted source shared from another account, or copied into another region, needs
    /// a KMS key of the destination.
    KmsKeyRequired { shared: bool, destination_region: String },
}

impl SourceRule {
    /// The request field the rule is about.
    pub fn field(&self) -> &'static str {
        match self {
            SourceRule::NotAvailable { .. } | SourceRule::SharedEncryptedAcrossRegions { .. } => "source_snapshot",
            SourceRule::KmsKeyForUnencrypted | SourceRule::KmsKeyRequired { .. } => "kms_key_id",
        }
    }

    /// The rule as a sentence a person can act on.
    pub fn describe(&self) -> String {
        match self {
            SourceRule::NotAvailable { status } => format!("is {status}; only an available snapshot can be copied"),
            SourceRule::KmsKeyForUnencrypted => {
                "must be empty: the source snapshot is not encrypted, and AWS refuses a KMS key for an unencrypted source"
                    .into()
            }
            SourceRule::SharedEncryptedAcrossRegions { owner, region } => format!(
                "is an encrypted snapshot shared from account {owner}; it can only be copied within its region {region}"
            ),
            SourceRule::KmsKeyRequired { shared, destination_region } => {
                let why = if *shared { "shared from another account" } else { "into another region" };
                format!("is required to copy an encrypted snapshot {why} (a key in {destination_region})")
            }
        }
    }
}

/// Every rule the copy breaks, in the order AWS checks them.
pub fn check(source: Source<'_>, copy: Copy<'_>) -> Vec<SourceRule> {
    let cross_region = source.region != copy.destination_region;
    let shared = copy.destination_account.is_some_and(|a| !source.account.is_empty() && a != source.account);
    let mut broken = Vec::new();
    if source.status != "available" {
        broken.push(SourceRule::NotAvailable { status: source.status.to_owned() });
    }
    if !source.encrypted && copy.kms_key {
        broken.push(SourceRule::KmsKeyForUnencrypted);
    }
    if source.encrypted && shared && cross_region {
        broken.push(SourceRule::SharedEncryptedAcrossRegions {
            owner: source.account.to_owned(),
            region: source.region.to_owned(),
        });
    } else if source.encrypted && !copy.kms_key && (shared || cross_region) {
        broken.push(SourceRule::KmsKeyRequired { shared, destination_region: copy.destination_region.to_owned() });
    }
    broken
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(encrypted: bool, region: &'static str, account: &'static str) -> Source<'static> {
        Source { status: "available", encrypted, region, account }
    }

    fn copy(region: &'static str, kms_key: bool) -> Copy<'static> {
        Copy { destination_region: region, destination_account: Some("123456789012"), kms_key }
    }

    fn fields(rules: Vec<SourceRule>) -> Vec<&'static str> {
        rules.iter().map(SourceRule::field).collect()
    }

    #[test]
    fn encryption_rules_follow_the_source() {
        let own = "123456789012";
        assert_eq!(fields(check(source(false, "us-east-1", own), copy("us-east-1", true))), ["kms_key_id"]);
        assert!(check(source(true, "us-east-1", own), copy("us-east-1", false)).is_empty());
        assert_eq!(fields(check(source(true, "us-east-1", own), copy("us-west-2", false))), ["kms_key_id"]);
        assert!(check(source(true, "us-east-1", own), copy("us-west-2", true)).is_empty());
        let shared = source(true, "us-east-1", "210987654321");
        assert_eq!(fields(check(shared, copy("us-east-1", false))), ["kms_key_id"]);
        assert_eq!(fields(check(shared, copy("us-west-2", true))), ["source_snapshot"]);
        // Without the destination account a shared source is not known to be shared.
        let unknown = Copy { destination_account: None, ..copy("us-east-1", false) };
        assert!(check(shared, unknown).is_empty());
    }

    #[test]
    fn a_source_that_is_not_available_is_named() {
        let s = Source { status: "copying", ..source(false, "us-east-1", "1") };
        let broken = check(s, copy("us-east-1", false));
        assert_eq!(broken, vec![SourceRule::NotAvailable { status: "copying".into() }]);
        assert!(broken[0].describe().contains("copying"));
    }
}
