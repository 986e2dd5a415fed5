//! The documented parameter rules of `CopyDBClusterSnapshot` (seeds in `shared/seeds/`).
//! Each check returns the rule it broke as a sentence a person can act on.

use std::sync::LazyLock;

use regex::Regex;

use crate::Arn;
use crate::EngineFamily;

/// Most tags a resource may carry.
pub const MAX_TAGS: usize = 50;
pub const MAX_TAG_KEY_CHARS: usize = 128;
pub const MAX_TAG_VALUE_CHARS: usize = 256;

/// The snapshot identifier rule: 1 to 63 letters, digits or hyphens; first a letter; no
/// trailing hyphen and no two hyphens in a row.
pub fn check_snapshot_identifier(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("is required".into());
    }
    if id.len() > 63 {
        return Err("must be at most 63 characters".into());
    }
    if !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err("must contain only ASCII letters, digits and hyphens".into());
    }
    if !id.as_bytes()[0].is_ascii_alphabetic() {
        return Err("must begin with a letter".into());
    }
    if id.ends_with('-') {
        return Err("must not end with a hyphen".into());
    }
    if id.contains("--") {
        return Err("must not contain two consecutive hyphens".into());
    }
    Ok(())
}

/// A reference to a source snapshot: a plain identifier in the caller's region and account, or
/// an ARN that may name another region or account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotRef {
    Id(String),
    Arn(Arn),
}

impl SnapshotRef {
    pub fn parse(text: &str) -> Result<SnapshotRef, String> {
        if text.is_empty() {
            return Err("is required".into());
        }
        if text.starts_with("arn:") {
            let arn = Arn::parse(text).ok_or("is not a valid ARN")?;
            let id = arn
                .cluster_snapshot_id()
                .ok_or("must be the ARN of a DB cluster snapshot (arn:aws:rds:REGION:ACCOUNT:cluster-snapshot:ID)")?;
            if arn.region.is_empty() || arn.account.is_empty() {
                return Err("must name the snapshot's region and account".into());
            }
            // Automated snapshots are named `rds:...`; their ids break the identifier rule.
            let bare = id.strip_prefix("rds:").unwrap_or(id);
            check_snapshot_identifier(bare)?;
            return Ok(SnapshotRef::Arn(arn));
        }
        let bare = text.strip_prefix("rds:").unwrap_or(text);
        check_snapshot_identifier(bare)?;
        Ok(SnapshotRef::Id(text.to_owned()))
    }
}

/// The forms AWS accepts for a KMS key: key ARN, key id, alias ARN or alias name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KmsKeyRef {
    KeyId(String),
    AliasName(String),
    /// A key or alias ARN; `resource` is `key/ID` or `alias/NAME`.
    Arn(Arn),
}

impl KmsKeyRef {
    pub fn parse(text: &str) -> Result<KmsKeyRef, String> {
        if text.is_empty() {
            return Err("must not be empty".into());
        }
        if text.len() > 2048 {
            return Err("must be at most 2048 characters".into());
        }
        if text.starts_with("arn:") {
            let arn = Arn::parse(text).ok_or("is not a valid ARN")?;
            let ok = arn.service == "kms"
                && !arn.region.is_empty()
                && !arn.account.is_empty()
                && (arn.resource.strip_prefix("key/").is_some_and(|k| !k.is_empty())
                    || arn.resource.strip_prefix("alias/").is_some_and(valid_alias_body));
            if !ok {
                return Err("must be a KMS key ARN (arn:aws:kms:REGION:ACCOUNT:key/ID) or alias ARN".into());
            }
            return Ok(KmsKeyRef::Arn(arn));
        }
        if let Some(alias) = text.strip_prefix("alias/") {
            if !valid_alias_body(alias) {
                return Err("alias names contain only letters, digits, '/', '_' and '-'".into());
            }
            return Ok(KmsKeyRef::AliasName(text.to_owned()));
        }
        let key_id_ok = (text.len() == 36 && is_uuid(text))
            || (text.starts_with("mrk-") && text.len() == 36 && text[4..].bytes().all(|b| b.is_ascii_hexdigit()));
        if !key_id_ok {
            return Err("must be a key ARN, key id, alias ARN or alias name (alias/NAME)".into());
        }
        Ok(KmsKeyRef::KeyId(text.to_owned()))
    }

    /// The region an ARN names; ids and alias names live in the region of the call.
    pub fn region(&self) -> Option<&str> {
        match self {
            KmsKeyRef::Arn(arn) => Some(&arn.region),
            _ => None,
        }
    }
}

fn valid_alias_body(alias: &str) -> bool {
    !alias.is_empty() && alias.len() <= 250 && alias.bytes().all(|b| b.is_ascii_alphanumeric() || b"/_-".contains(&b))
}

fn is_uuid(text: &str) -> bool {
    text.bytes().enumerate().all(|(i, b)| match i {
        8 | 13 | 18 | 23 => b == b'-',
        _ => b.is_ascii_hexdigit(),
    })
}

static RDS_TAG_CHARS: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[\p{L}\p{Z}\p{N}_.:/=+\-@]*$").expect("static regex"));
static NEPTUNE_TAG_CHARS: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[\p{L}\p{Z}\p{N}_.:/=+\-]*$").expect("static regex"));

/// A broken tag rule: which tag (index), which part and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagViolation {
    /// `None` for rules about the whole list.
    pub index: Option<usize>,
    /// "key" or "value".
    pub part: &'static str,
    pub rule: String,
}

/// Checks a list of tags against the rules of the engine family.
pub fn check_tags(tags: &[(String, String)], family: EngineFamily) -> Vec<TagViolation> {
    let mut out = Vec::new();
    if tags.len() > MAX_TAGS {
        out.push(TagViolation {
            index: None,
            part: "",
            rule: format!("at most {MAX_TAGS} tags are allowed, got {}", tags.len()),
        });
    }
    let charset = if family.tags_allow_at_sign() { &*RDS_TAG_CHARS } else { &*NEPTUNE_TAG_CHARS };
    let allowed = if family.tags_allow_at_sign() {
        "letters, digits, white space and _ . : / = + - @"
    } else {
        "letters, digits, white space and _ . : / = + - (no @)"
    };
    let mut seen = std::collections::HashSet::new();
    for (i, (key, value)) in tags.iter().enumerate() {
        let mut push = |part, rule: String| out.push(TagViolation { index: Some(i), part, rule });
        let key_chars = key.chars().count();
        if key_chars == 0 {
            push("key", "must not be empty".into());
        } else if key_chars > MAX_TAG_KEY_CHARS {
            push("key", format!("must be at most {MAX_TAG_KEY_CHARS} characters"));
        }
        if value.chars().count() > MAX_TAG_VALUE_CHARS {
            push("value", format!("must be at most {MAX_TAG_VALUE_CHARS} characters"));
        }
        for (part, text) in [("key", key), ("value", value)] {
            let lower = text.to_ascii_lowercase();
            if lower.starts_with("aws:") || lower.starts_with("rds:") {
                push(part, "must not begin with 'aws:' or 'rds:'".into());
            }
            if !charset.is_match(text) {
                push(part, format!("{} allows only {allowed}", family.name()));
            }
        }
        if !seen.insert(key.as_str()) {
            push("key", format!("duplicate tag key '{key}'"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifier_rule_follows_the_api_reference() {
        assert!(check_snapshot_identifier("my-cluster-snapshot2").is_ok());
        assert!(check_snapshot_identifier("a").is_ok());
        assert!(check_snapshot_identifier(&"a".repeat(63)).is_ok());
        for bad in ["", "1abc", "-abc", "abc-", "a--b", "a_b", "a.b", "ab c", "é"] {
            assert!(check_snapshot_identifier(bad).is_err(), "{bad:?}");
        }
        assert!(check_snapshot_identifier(&"a".repeat(64)).is_err());
    }

    #[test]
    fn source_may_be_an_identifier_an_automated_name_or_a_snapshot_arn() {
        assert_eq!(SnapshotRef::parse("snap-1"), Ok(SnapshotRef::Id("snap-1".into())));
        assert!(SnapshotRef::parse("rds:cluster-2024-01-01-00-00").is_ok());
        assert!(matches!(
            SnapshotRef::parse("arn:aws:rds:us-west-2:123456789012:cluster-snapshot:s1"),
            Ok(SnapshotRef::Arn(_))
        ));
        assert!(SnapshotRef::parse("arn:aws:rds:us-west-2:123456789012:cluster:c1").is_err());
        assert!(SnapshotRef::parse("arn:aws:rds::123456789012:cluster-snapshot:s1").is_err());
        assert!(SnapshotRef::parse("").is_err());
    }

    #[test]
    fn kms_key_forms_are_the_four_aws_accepts() {
        assert!(matches!(KmsKeyRef::parse("1234abcd-12ab-34cd-56ef-1234567890ab"), Ok(KmsKeyRef::KeyId(_))));
        assert!(matches!(KmsKeyRef::parse("alias/backup"), Ok(KmsKeyRef::AliasName(_))));
        let arn =
            KmsKeyRef::parse("arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab").unwrap();
        assert_eq!(arn.region(), Some("us-east-1"));
        assert!(KmsKeyRef::parse("arn:aws:kms:us-east-1:123456789012:alias/backup").is_ok());
        for bad in ["", "not-a-key", "alias/", "arn:aws:s3:::bucket", "arn:aws:kms:us-east-1:123456789012:thing/x"] {
            assert!(KmsKeyRef::parse(bad).is_err(), "{bad:?}");
        }
    }

    fn tags(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn neptune_tags_may_not_contain_an_at_sign_but_rds_tags_may() {
        let t = tags(&[("owner", "team@example")]);
        assert!(check_tags(&t, EngineFamily::Rds).is_empty());
        let v = check_tags(&t, EngineFamily::Neptune);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].part, "value");
    }

    #[test]
    fn tag_rules_cover_prefixes_lengths_duplicates_and_count() {
        assert_eq!(check_tags(&tags(&[("aws:x", "1")]), EngineFamily::Rds)[0].part, "key");
        assert_eq!(check_tags(&tags(&[("k", "rds:y")]), EngineFamily::Rds)[0].part, "value");
        assert_eq!(check_tags(&tags(&[("", "v")]), EngineFamily::Rds).len(), 1);
        assert_eq!(check_tags(&[("k".repeat(129), String::new())], EngineFamily::Rds).len(), 1);
        assert_eq!(check_tags(&[("k".into(), "v".repeat(257))], EngineFamily::Rds).len(), 1);
        assert_eq!(check_tags(&tags(&[("a", "1"), ("a", "2")]), EngineFamily::Rds)[0].rule, "duplicate tag key 'a'");
        let many: Vec<_> = (0..51).map(|i| (format!("k{i}"), String::new())).collect();
        assert_eq!(check_tags(&many, EngineFamily::Rds)[0].index, None);
        assert!(check_tags(&tags(&[("Team Name", "Données 1")]), EngineFamily::Neptune).is_empty());
        assert_eq!(check_tags(&tags(&[("k", "tab\there")]), EngineFamily::Rds).len(), 1);
    }
}

/// Property tests: the rules take untrusted text; whatever it is, they answer and never panic,
/// and what they accept is what AWS's rules describe.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;
    use crate::{AccountId, Arn, EngineFamily, is_region_name, partition_for_region};

    proptest! {
        #[test]
        fn any_text_is_judged_without_panicking(text in "\\PC{0,80}", raw in proptest::collection::vec(any::<char>(), 0..80)) {
            let raw: String = raw.into_iter().collect();
            for t in [text.as_str(), raw.as_str()] {
                let _ = Arn::parse(t);
                let _ = SnapshotRef::parse(t);
                let _ = KmsKeyRef::parse(t).map(|k| k.region().map(str::to_owned));
                let _ = AccountId::parse(t);
                let _ = is_region_name(t);
                let _ = partition_for_region(t);
                let _ = check_tags(&[(t.to_owned(), t.to_owned())], EngineFamily::Neptune);
            }
        }

        #[test]
        fn accepted_identifiers_follow_the_documented_rule(id in "[a-zA-Z0-9-]{0,70}") {
            if check_snapshot_identifier(&id).is_ok() {
                prop_assert!((1..=63).contains(&id.len()));
                prop_assert!(id.starts_with(|c: char| c.is_ascii_alphabetic()));
                prop_assert!(!id.ends_with('-') && !id.contains("--"));
            }
        }

        #[test]
        fn snapshot_arns_parse_back_to_their_parts(region in "[a-z]{2}-[a-z]{4,9}-[1-9]", account in "[0-9]{12}", id in "[a-z][a-z0-9]{0,20}") {
            let arn = Arn::cluster_snapshot(&region, &account, &id);
            let parsed = Arn::parse(&arn.to_string()).expect("an ARN this crate made parses");
            prop_assert_eq!(parsed.cluster_snapshot_id(), Some(id.as_str()));
            prop_assert_eq!(parsed.account, account);
        }
    }
}
