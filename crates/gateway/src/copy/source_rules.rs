//! The rules that depend on the source snapshot, checked once it is known: its state, its
//! encryption, whether it is shared, and its engine's tag character set.

use super::ValidCopy;
use crate::error::{Error, FieldViolation};
use snapgate_domain::{ClusterSnapshot, Engine, rules, source};

pub(super) fn check(
    valid: &ValidCopy,
    source: &ClusterSnapshot,
    destination_account: Option<&str>,
) -> Result<(), Error> {
    let family = Engine::parse(&source.engine).family();
    let invalid: Vec<FieldViolation> = rules::check_tags(&valid.tags, family)
        .into_iter()
        .map(|tv| {
            let field = tv.index.map_or_else(|| "tags".to_owned(), |i| format!("tags[{i}].{}", tv.part));
            FieldViolation::new(field, format!("{} (the source is a {} snapshot)", tv.rule, source.engine))
        })
        .collect();
    if !invalid.is_empty() {
        return Err(Error::InvalidArgument(invalid));
    }

    let broken = source::check(
        source::Source {
            status: &source.status,
            encrypted: source.encrypted,
            region: &source.region,
            account: &source.account,
        },
        source::Copy {
            destination_region: &valid.destination_region,
            destination_account,
            kms_key: valid.kms_key.is_some(),
        },
    );
    if broken.is_empty() {
        Ok(())
    } else {
        Err(Error::FailedPrecondition(broken.iter().map(|r| FieldViolation::new(r.field(), r.describe())).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::copy::CopyRequest;
    use crate::copy::validate::validate;

    fn source(engine: &str, encrypted: bool, region: &str, account: &str) -> ClusterSnapshot {
        ClusterSnapshot {
            status: "available".into(),
            engine: engine.into(),
            encrypted,
            region: region.into(),
            account: account.into(),
            ..ClusterSnapshot::default()
        }
    }

    fn valid(kms: &str, tags: &[(&str, &str)], destination_region: &str) -> ValidCopy {
        let req = CopyRequest {
            source_snapshot: "arn:aws:rds:us-east-1:123456789012:cluster-snapshot:s".into(),
            target_snapshot_id: "t".into(),
            kms_key_id: kms.into(),
            tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            destination_region: destination_region.into(),
            ..CopyRequest::default()
        };
        validate(&req, "us-east-1", &crate::copy::validate::Served(&["us-east-1".to_owned(), "us-west-2".to_owned()]))
            .unwrap()
    }

    fn fields(r: Result<(), Error>) -> (String, Vec<String>) {
        match r.unwrap_err() {
            Error::InvalidArgument(v) => ("INVALID_ARGUMENT".into(), v.into_iter().map(|v| v.field).collect()),
            Error::FailedPrecondition(v) => ("FAILED_PRECONDITION".into(), v.into_iter().map(|v| v.field).collect()),
            other => (format!("{other:?}"), vec![]),
        }
    }

    #[test]
    fn neptune_sources_refuse_at_signs_in_tags() {
        let r = check(&valid("", &[("owner", "a@b")], "us-east-1"), &source("neptune", false, "us-east-1", "1"), None);
        assert_eq!(fields(r), ("INVALID_ARGUMENT".into(), vec!["tags[0].value".into()]));
        assert!(
            check(&valid("", &[("owner", "a@b")], "us-east-1"), &source("aurora-mysql", false, "us-east-1", "1"), None)
                .is_ok()
        );
    }

    #[test]
    fn encryption_rules_follow_the_source() {
        let acct = Some("123456789012");
        let plain = source("aurora-mysql", false, "us-east-1", "123456789012");
        assert_eq!(fields(check(&valid("alias/k", &[], "us-east-1"), &plain, acct)).1, ["kms_key_id"]);
        let enc_east = source("aurora-mysql", true, "us-east-1", "123456789012");
        assert!(check(&valid("", &[], "us-east-1"), &enc_east, acct).is_ok());
        assert_eq!(fields(check(&valid("", &[], "us-west-2"), &enc_east, acct)).1, ["kms_key_id"]);
        assert!(check(&valid("alias/k", &[], "us-west-2"), &enc_east, acct).is_ok());
        let shared_enc = source("aurora-mysql", true, "us-east-1", "210987654321");
        assert_eq!(fields(check(&valid("", &[], "us-east-1"), &shared_enc, acct)).1, ["kms_key_id"]);
        assert_eq!(fields(check(&valid("alias/k", &[], "us-west-2"), &shared_enc, acct)).1, ["source_snapshot"]);
    }

    #[test]
    fn a_source_that_is_not_available_is_a_failed_precondition() {
        let mut s = source("docdb", false, "us-east-1", "1");
        s.status = "copying".into();
        assert_eq!(
            fields(check(&valid("", &[], "us-east-1"), &s, None)),
            ("FAILED_PRECONDITION".into(), vec!["source_snapshot".into()])
        );
    }
}
