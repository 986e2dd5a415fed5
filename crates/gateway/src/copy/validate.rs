//! The rules a copy request must meet before any AWS call: each broken rule becomes a field
//! violation naming the proto field and the rule.

use crate::error::FieldViolation;
use crate::store::{JobFilter, JobState};
use snapgate_domain::is_region_name;
use snapgate_domain::rules::{self, KmsKeyRef, SnapshotRef};
use snapgate_domain::{AccountId, EngineFamily};

/// A copy request in the gateway's terms, decoded from the proto.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct CopyRequest {
    pub source_snapshot: String,
    pub target_snapshot_id: String,
    pub kms_key_id: String,
    pub copy_tags: bool,
    pub tags: Vec<(String, String)>,
    pub source_region: String,
    pub destination_region: String,
    pub destination_account: String,
}

/// A copy request that passed every rule that does not depend on the source snapshot.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ValidCopy {
    pub source: SnapshotRef,
    /// The source's region: the ARN's, else `source_region`, else the destination's.
    pub source_region: String,
    /// Lowercased, as AWS stores it.
    pub target: String,
    pub kms_key: Option<(String, KmsKeyRef)>,
    pub copy_tags: bool,
    pub tags: Vec<(String, String)>,
    pub destination_region: String,
    pub destination_account: Option<String>,
}

/// The regions the gateway serves (`aws.regions`): every region a request names must be one.
pub(crate) struct Served<'a>(pub &'a [String]);

impl Served<'_> {
    /// The rule a region breaks, if any.
    pub(crate) fn check(&self, region: &str) -> Option<String> {
        if !is_region_name(region) {
            Some("must be a region name such as us-east-1".to_owned())
        } else if !self.0.iter().any(|r| r == region) {
            Some(format!("{region} is not a region this gateway serves (aws.regions)"))
        } else {
            None
        }
    }
}

pub(super) fn validate(
    req: &CopyRequest,
    default_region: &str,
    served: &Served<'_>,
) -> Result<ValidCopy, Vec<FieldViolation>> {
    let mut v = Vec::new();
    let source = SnapshotRef::parse(&req.source_snapshot)
        .map_err(|rule| {
            v.push(FieldViolation::new(
                "source_snapshot",
                format!("{rule} (an identifier, or the ARN of a DB cluster snapshot)"),
            ))
        })
        .ok();
    if let Err(rule) = rules::check_snapshot_identifier(&req.target_snapshot_id) {
        v.push(FieldViolation::new(
            "target_snapshot_id",
            format!("{rule} (1 to 63 letters, digits or hyphens; first a letter; no trailing or double hyphen)"),
        ));
    }
    let destination_region = if req.destination_region.is_empty() {
        default_region.to_owned()
    } else {
        if let Some(rule) = served.check(&req.destination_region) {
            v.push(FieldViolation::new("destination_region", rule));
        }
        req.destination_region.clone()
    };
    if !req.source_region.is_empty()
        && let Some(rule) = served.check(&req.source_region)
    {
        v.push(FieldViolation::new("source_region", rule));
    }
    if let Some(SnapshotRef::Arn(arn)) = &source
        && let Some(rule) = served.check(&arn.region)
    {
        v.push(FieldViolation::new("source_snapshot", format!("names region {}: {rule}", arn.region)));
    }
    let source_region = match &source {
        Some(SnapshotRef::Arn(arn)) => {
            if !req.source_region.is_empty() && req.source_region != arn.region {
                v.push(FieldViolation::new(
                    "source_region",
                    format!("names {} but the source ARN is in {}", req.source_region, arn.region),
                ));
            }
            arn.region.clone()
        }
        _ if !req.source_region.is_empty() => req.source_region.clone(),
        _ => destination_region.clone(),
    };
    if is_region_name(&source_region)
        && is_region_name(&destination_region)
        && !snapgate_domain::region::same_partition(&source_region, &destination_region)
    {
        v.push(FieldViolation::new(
            "destination_region",
            format!(
                "{destination_region} is in another AWS partition than the source's {source_region}; a copy never crosses partitions"
            ),
        ));
    }
    if matches!(source, Some(SnapshotRef::Id(_))) && source_region != destination_region {
        v.push(FieldViolation::new(
            "source_snapshot",
            "a source in another region than the copy must be given as its ARN",
        ));
    }
    let kms_key = if req.kms_key_id.is_empty() {
        None
    } else {
        match check_kms_key(&req.kms_key_id, &destination_region) {
            Err(rule) => {
                v.push(FieldViolation::new("kms_key_id", rule));
                None
            }
            Ok(key) => Some((req.kms_key_id.clone(), key)),
        }
    };
    // The engine's own character set is checked once the source is known; here the widest.
    v.extend(tag_violations("tags", &req.tags));
    let destination_account = (!req.destination_account.is_empty()).then(|| req.destination_account.clone());
    if let Some(Err(rule)) = destination_account.as_deref().map(AccountId::parse) {
        v.push(FieldViolation::new("destination_account", rule));
    }
    match source {
        Some(source) if v.is_empty() => Ok(ValidCopy {
            source,
            source_region,
            target: req.target_snapshot_id.to_ascii_lowercase(),
            kms_key,
            copy_tags: req.copy_tags,
            tags: req.tags.clone(),
            destination_region,
            destination_account,
        }),
        _ => Err(v),
    }
}

/// A KMS key for a copy into `destination_region`: its form, and an ARN's region.
pub(crate) fn check_kms_key(text: &str, destination_region: &str) -> Result<KmsKeyRef, String> {
    let key = KmsKeyRef::parse(text)?;
    match key.region() {
        Some(region) if region != destination_region => {
            Err(format!("a KMS key ARN must name the destination region {destination_region}, not {region}"))
        }
        _ => Ok(key),
    }
}

/// The tag rules `tags` break (the widest character set, RDS's), as violations of the fields
/// under `prefix` (`tags`, `plan[0].copy[1].tags`).
pub(crate) fn tag_violations(prefix: &str, tags: &[(String, String)]) -> Vec<FieldViolation> {
    rules::check_tags(tags, EngineFamily::Rds)
        .into_iter()
        .map(|tv| {
            let field = match tv.index {
                Some(i) => format!("{prefix}[{i}].{}", tv.part),
                None => prefix.to_owned(),
            };
            FieldViolation::new(field, tv.rule)
        })
        .collect()
}

/// A copy's name as read: where it is, and its ARN when the name was one.
#[derive(Debug)]
pub(super) struct CopyName {
    pub region: String,
    pub id: String,
    /// The account the ARN names ("" for a bare identifier: the gateway's own).
    pub account: String,
    pub arn: Option<String>,
}

/// Reads a copy's name: a cluster-snapshot ARN, or a bare identifier in the default region.
/// The name is parsed once: a read by ARN is the hottest call.
pub(super) fn parse_copy_name(
    name: &str,
    default_region: &str,
    served: &Served<'_>,
) -> Result<CopyName, Vec<FieldViolation>> {
    match SnapshotRef::parse(name) {
        Ok(SnapshotRef::Arn(arn)) if served.check(&arn.region).is_some() => Err(vec![FieldViolation::new(
            "name",
            format!("names region {}: {}", arn.region, served.check(&arn.region).unwrap_or_default()),
        )]),
        Ok(SnapshotRef::Arn(arn)) => {
            let id = arn.cluster_snapshot_id().unwrap_or_default().to_owned();
            // The ARN's parts joined again are the name itself (its resource is the rest).
            Ok(CopyName { id, region: arn.region, account: arn.account, arn: Some(name.to_owned()) })
        }
        Ok(SnapshotRef::Id(id)) => {
            Ok(CopyName { region: default_region.to_owned(), id, account: String::new(), arn: None })
        }
        Err(rule) => Err(vec![FieldViolation::new(
            "name",
            format!("{rule} (the copy's name is its snapshot ARN, or a snapshot identifier)"),
        )]),
    }
}

/// A ListCopies request in the gateway's terms, decoded from the proto; a state the proto
/// does not define is `None`.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ListRequest {
    pub page_size: i32,
    pub page_token: String,
    pub states: Vec<Option<JobState>>,
    pub destination_region: String,
    pub account_id: String,
    pub requested_by: String,
}

/// Copies a page holds when the request says nothing, and at most.
const PAGE_SIZE: (i64, i64) = (100, 500);

/// The filter and page a ListCopies request asks for.
pub(crate) fn list_filter(req: &ListRequest) -> Result<JobFilter, Vec<FieldViolation>> {
    let mut violations = Vec::new();
    let limit = match i64::from(req.page_size) {
        0 => PAGE_SIZE.0,
        n if (1..=PAGE_SIZE.1).contains(&n) => n,
        _ => {
            violations.push(FieldViolation::new("page_size", "must be between 1 and 500 (0: 100)"));
            PAGE_SIZE.0
        }
    };
    let after = if req.page_token.is_empty() {
        None
    } else {
        let parsed = parse_page_token(&req.page_token);
        if parsed.is_none() {
            violations.push(FieldViolation::new("page_token", "is not a token this service gave out"));
        }
        parsed
    };
    let mut states = Vec::new();
    for (i, state) in req.states.iter().enumerate() {
        match state {
            // A queued copy being started is still queued to the caller.
            Some(JobState::Queued) => states.extend([JobState::Queued, JobState::Starting]),
            Some(state) => states.push(*state),
            None => violations.push(FieldViolation::new(format!("states[{i}]"), "is not a state of a copy")),
        }
    }
    if !req.destination_region.is_empty() && !is_region_name(&req.destination_region) {
        violations.push(FieldViolation::new("destination_region", "must be a region name such as us-east-1"));
    }
    if !req.account_id.is_empty()
        && let Err(rule) = AccountId::parse(&req.account_id)
    {
        violations.push(FieldViolation::new("account_id", rule));
    }
    if !violations.is_empty() {
        return Err(violations);
    }
    let given = |text: &str| (!text.is_empty()).then(|| text.to_owned());
    Ok(JobFilter {
        states,
        region: given(&req.destination_region),
        account: given(&req.account_id),
        caller: given(&req.requested_by),
        after,
        limit,
    })
}

/// The page token that continues a listing after the job created at `created_ms` with `id`
/// (the listing's order): opaque to callers, `CREATED.ID`.
pub(crate) fn page_token((created_ms, id): &(i64, String)) -> String {
    format!("{created_ms}.{id}")
}

fn parse_page_token(token: &str) -> Option<(i64, String)> {
    let (created, id) = token.split_once('.')?;
    Some((created.parse().ok()?, id.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Served<'static> {
        static REGIONS: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| {
            snapgate_domain::region::COMMERCIAL_REGIONS.iter().map(|r| (*r).to_owned()).collect()
        });
        Served(&REGIONS)
    }

    #[test]
    fn every_region_a_request_names_must_be_served_and_in_one_partition() {
        let mut r = req("arn:aws:rds:mars-north-9:123456789012:cluster-snapshot:s", "c");
        assert_eq!(fields(validate(&r, "us-east-1", &all())), ["source_snapshot"]);
        r.source_snapshot = "arn:aws:rds:us-east!:123456789012:cluster-snapshot:s".into();
        assert!(fields(validate(&r, "us-east-1", &all())).contains(&"source_snapshot".to_owned()));
        let mut r = req("s", "c");
        r.destination_region = "mars-north-9".into();
        assert_eq!(fields(validate(&r, "us-east-1", &all())), ["destination_region"]);
        let mut r = req("arn:aws:rds:us-west-2:123456789012:cluster-snapshot:s", "c");
        r.source_region = "mars-north-9".into();
        assert!(fields(validate(&r, "us-east-1", &all())).contains(&"source_region".to_owned()));
        let r = req("arn:aws-cn:rds:cn-north-1:123456789012:cluster-snapshot:s", "c");
        let china = vec!["cn-north-1".to_owned(), "us-east-1".to_owned()];
        assert_eq!(fields(validate(&r, "us-east-1", &Served(&china))), ["destination_region"]);
        assert!(
            parse_copy_name("arn:aws:rds:mars-north-9:123456789012:cluster-snapshot:c1", "us-east-1", &all()).is_err()
        );
    }

    fn req(source: &str, target: &str) -> CopyRequest {
        CopyRequest { source_snapshot: source.into(), target_snapshot_id: target.into(), ..CopyRequest::default() }
    }

    fn fields(r: Result<ValidCopy, Vec<FieldViolation>>) -> Vec<String> {
        r.unwrap_err().into_iter().map(|v| v.field).collect()
    }

    #[test]
    fn a_plain_same_region_copy_is_valid_and_lowercased() {
        let ok = validate(&req("snap-1", "Copy-1"), "us-east-1", &all()).unwrap();
        assert_eq!(ok.target, "copy-1");
        assert_eq!((ok.source_region.as_str(), ok.destination_region.as_str()), ("us-east-1", "us-east-1"));
    }

    #[test]
    fn required_fields_are_named() {
        assert_eq!(fields(validate(&req("", ""), "us-east-1", &all())), ["source_snapshot", "target_snapshot_id"]);
    }

    #[test]
    fn cross_region_sources_must_be_arns_that_agree_with_source_region() {
        let mut r = req("snap-1", "c");
        r.source_region = "us-west-2".into();
        assert_eq!(fields(validate(&r, "us-east-1", &all())), ["source_snapshot"]);
        let mut r = req("arn:aws:rds:us-west-2:123456789012:cluster-snapshot:s", "c");
        r.source_region = "eu-west-1".into();
        assert_eq!(fields(validate(&r, "us-east-1", &all())), ["source_region"]);
        r.source_region = "us-west-2".into();
        assert_eq!(validate(&r, "us-east-1", &all()).unwrap().source_region, "us-west-2");
    }

    #[test]
    fn kms_key_arns_must_name_the_destination_region() {
        let mut r = req("s", "c");
        r.kms_key_id = "arn:aws:kms:us-west-2:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab".into();
        assert_eq!(fields(validate(&r, "us-east-1", &all())), ["kms_key_id"]);
        r.destination_region = "us-west-2".into();
        assert!(validate(&r, "us-east-1", &all()).is_ok());
    }

    #[test]
    fn tag_violations_name_the_tag() {
        let mut r = req("s", "c");
        r.tags = vec![("ok".into(), "1".into()), ("aws:x".into(), "2".into())];
        assert_eq!(fields(validate(&r, "us-east-1", &all())), ["tags[1].key"]);
    }

    #[test]
    fn copy_names_are_arns_or_identifiers() {
        let arn = "arn:aws:rds:eu-west-1:123456789012:cluster-snapshot:c1";
        let name = parse_copy_name(arn, "us-east-1", &all()).unwrap();
        assert_eq!((name.region.as_str(), name.id.as_str()), ("eu-west-1", "c1"));
        assert_eq!((name.account.as_str(), name.arn.as_deref()), ("123456789012", Some(arn)));
        assert_eq!(snapgate_domain::Arn::parse(arn).map(|a| a.to_string()).as_deref(), Some(arn));
        let bare = parse_copy_name("c1", "us-east-1", &all()).unwrap();
        assert_eq!((bare.region.as_str(), bare.account.as_str(), bare.arn), ("us-east-1", "", None));
        assert_eq!(parse_copy_name("", "us-east-1", &all()).unwrap_err()[0].field, "name");
    }

    #[test]
    fn a_listing_is_checked_field_by_field_and_its_page_token_round_trips() {
        let token = page_token(&(1_700_000_000_000, "job-1".into()));
        let filter = list_filter(&ListRequest {
            page_token: token,
            states: vec![Some(JobState::Queued)],
            ..ListRequest::default()
        })
        .unwrap();
        assert_eq!(filter.after, Some((1_700_000_000_000, "job-1".into())));
        assert_eq!(filter.states, [JobState::Queued, JobState::Starting]);
        assert_eq!(filter.limit, 100);
        let bad = list_filter(&ListRequest {
            page_size: 501,
            page_token: "nonsense".into(),
            states: vec![None],
            destination_region: "mars".into(),
            account_id: "12".into(),
            requested_by: String::new(),
        })
        .unwrap_err();
        let fields: Vec<_> = bad.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["page_size", "page_token", "states[0]", "destination_region", "account_id"]);
    }
}
