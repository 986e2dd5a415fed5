//! Checks the presigned URL that a cross-region copy carries, as the source region would: it
//! must be a `CopyDBClusterSnapshot` request for the same source, destination and KMS key,
//! signed with SigV4 query authentication for the source region, and not expired.

use std::collections::BTreeMap;
use std::time::SystemTime;

use aws_smithy_types::DateTime;
use aws_smithy_types::date_time::Format;

use super::actions::PresignedExpectation;
use super::query::{CredentialScope, Params, SIGV4_QUERY_PARAMS};

/// Longest validity SigV4 query authentication allows (7 days).
const MAX_EXPIRES_SECS: i64 = 604_800;

/// Checks a presigned URL as the source region would: what it asks for, its region and expiry,
/// and its SigV4 signature, recomputed with the secret key of the access key that signed it.
pub fn verify(
    url: &str,
    expected: &PresignedExpectation,
    now: SystemTime,
    secret_for: &dyn Fn(&str) -> Option<String>,
) -> Result<(), String> {
    let host = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .and_then(|rest| rest.split('/').next())
        .filter(|h| !h.is_empty())
        .ok_or("it is not an http(s) URL")?;
    let seen = check(url, expected, now)?;
    let scope = CredentialScope::parse(&seen["X-Amz-Credential"]).ok_or("its credential scope is malformed")?;
    let secret = secret_for(&scope.access_key).ok_or("it is signed with an access key this service does not know")?;
    let signed_at = DateTime::from_str(&seen["X-Amz-Date"], Format::DateTime)
        .or_else(|_| parse_amz_date(&seen["X-Amz-Date"]))
        .map_err(|_| "its X-Amz-Date is malformed".to_string())?;
    let expires: u64 = seen["X-Amz-Expires"].parse().map_err(|_| "its X-Amz-Expires is not a number")?;
    let params: Vec<(String, String)> =
        seen.iter().filter(|(k, _)| !k.starts_with("X-Amz-")).map(|(k, v)| (k.clone(), v.clone())).collect();
    let credentials = aws_credential_types::Credentials::new(
        scope.access_key.clone(),
        secret,
        seen.get("X-Amz-Security-Token").cloned(),
        None,
        "emulator",
    );
    let time = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(signed_at.secs().max(0) as u64);
    let resigned = crate::aws::presign::sign_query(
        host,
        &params,
        &credentials,
        &scope.region,
        time,
        std::time::Duration::from_secs(expires),
    )?;
    let signature =
        |u: &str| u.split("X-Amz-Signature=").nth(1).map(|s| s.split('&').next().unwrap_or_default().to_owned());
    if signature(&resigned) != Some(seen["X-Amz-Signature"].clone()) {
        return Err("its signature does not match".into());
    }
    Ok(())
}

/// Parses the URL's query and checks what it says. Returns its parameters.
pub fn check(url: &str, expected: &PresignedExpectation, now: SystemTime) -> Result<BTreeMap<String, String>, String> {
    let (_, query) = url.split_once('?').ok_or("it has no query string")?;
    let mut params = Params::default();
    params.decode_into(query.as_bytes()).map_err(|e| e.message)?;
    let mut get = |name: &str| params.take(name).ok_or(format!("it lacks {name}"));
    let mut seen = BTreeMap::new();
    let required = ["Action", "SourceDBClusterSnapshotIdentifier", "DestinationRegion"];
    // Every SigV4 query parameter but the security token, which only temporary credentials add.
    for name in required.iter().chain(&SIGV4_QUERY_PARAMS[..6]) {
        seen.insert((*name).to_owned(), get(name)?);
    }
    if seen["Action"] != "CopyDBClusterSnapshot" {
        return Err("it is not a CopyDBClusterSnapshot request".into());
    }
    if seen["SourceDBClusterSnapshotIdentifier"] != expected.source_arn {
        return Err("it names another source snapshot".into());
    }
    if seen["DestinationRegion"] != expected.destination_region {
        return Err("its DestinationRegion is not the region of this call".into());
    }
    let kms = params.take("KmsKeyId");
    if kms != expected.kms_key_id {
        return Err("its KmsKeyId differs from the request's".into());
    }
    if seen["X-Amz-Algorithm"] != "AWS4-HMAC-SHA256" {
        return Err("it is not signed with AWS4-HMAC-SHA256".into());
    }
    let scope = CredentialScope::parse(&seen["X-Amz-Credential"]).ok_or("its credential scope is malformed")?;
    if scope.region != expected.source_region {
        return Err("it is not signed for the source region".into());
    }
    let signed_at = DateTime::from_str(&seen["X-Amz-Date"], Format::DateTime)
        .or_else(|_| parse_amz_date(&seen["X-Amz-Date"]))
        .map_err(|_| "its X-Amz-Date is malformed".to_string())?;
    let expires: i64 = seen["X-Amz-Expires"].parse().map_err(|_| "its X-Amz-Expires is not a number")?;
    if !(1..=MAX_EXPIRES_SECS).contains(&expires) {
        return Err("its X-Amz-Expires is out of range".into());
    }
    let now = DateTime::from(now).secs();
    if now > signed_at.secs() + expires {
        return Err("it has expired".into());
    }
    if signed_at.secs() > now + 300 {
        return Err("it is signed in the future".into());
    }
    for (k, v) in [
        ("Version", params.take("Version")),
        ("CopyTags", params.take("CopyTags")),
        ("X-Amz-Security-Token", params.take("X-Amz-Security-Token")),
    ] {
        if let Some(v) = v {
            seen.insert(k.into(), v);
        }
    }
    if let Some(kms) = kms {
        seen.insert("KmsKeyId".into(), kms);
    }
    Ok(seen)
}

/// `YYYYMMDDTHHMMSSZ`, the basic ISO 8601 form SigV4 uses.
fn parse_amz_date(text: &str) -> Result<DateTime, ()> {
    if text.len() != 16 || &text[8..9] != "T" || !text.ends_with('Z') {
        return Err(());
    }
    let extended = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &text[0..4],
        &text[4..6],
        &text[6..8],
        &text[9..11],
        &text[11..13],
        &text[13..15]
    );
    DateTime::from_str(&extended, Format::DateTime).map_err(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn expectation() -> PresignedExpectation {
        PresignedExpectation {
            source_arn: "arn:aws:rds:us-east-1:123456789012:cluster-snapshot:s1".into(),
            source_region: "us-east-1".into(),
            destination_region: "us-west-2".into(),
            kms_key_id: Some("alias/backup".into()),
        }
    }

    fn url(date: &str) -> String {
        format!(
            "https://rds.us-east-1.amazonaws.com/?Action=CopyDBClusterSnapshot&Version=2014-10-31\
             &SourceDBClusterSnapshotIdentifier=arn%3Aaws%3Ards%3Aus-east-1%3A123456789012%3Acluster-snapshot%3As1\
             &DestinationRegion=us-west-2&KmsKeyId=alias%2Fbackup&X-Amz-Algorithm=AWS4-HMAC-SHA256\
             &X-Amz-Credential=AKID%2F20261121%2Fus-east-1%2Frds%2Faws4_request&X-Amz-Date={date}\
             &X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Signature=abc"
        )
    }

    #[test]
    fn a_well_formed_url_passes_and_an_expired_one_does_not() {
        let signed = DateTime::from_str("2026-11-21T10:00:00Z", Format::DateTime).unwrap();
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(signed.secs() as u64);
        assert!(check(&url("20261121T100000Z"), &expectation(), at + Duration::from_secs(60)).is_ok());
        let err = check(&url("20261121T100000Z"), &expectation(), at + Duration::from_secs(7200)).unwrap_err();
        assert_eq!(err, "it has expired");
    }

    #[test]
    fn a_url_for_another_destination_is_refused() {
        let mut e = expectation();
        e.destination_region = "eu-west-1".into();
        let signed = DateTime::from_str("2026-11-21T10:00:00Z", Format::DateTime).unwrap();
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(signed.secs() as u64);
        assert!(check(&url("20261121T100000Z"), &e, at).unwrap_err().contains("DestinationRegion"));
    }

    #[test]
    fn a_signature_made_with_the_known_secret_verifies_and_a_tampered_url_does_not() {
        let creds = aws_credential_types::Credentials::new("AKIDEXAMPLE", "s3cret", None, None, "test");
        let e = expectation();
        let url =
            crate::aws::presign::presign_copy(&creds, &e.source_arn, "us-east-1", "us-west-2", Some("alias/backup"))
                .unwrap();
        let secret = |key: &str| (key == "AKIDEXAMPLE").then(|| "s3cret".to_owned());
        assert_eq!(verify(&url, &e, SystemTime::now(), &secret), Ok(()));
        let wrong_secret = |_: &str| Some("other".to_owned());
        assert_eq!(verify(&url, &e, SystemTime::now(), &wrong_secret).unwrap_err(), "its signature does not match");
        let tampered = url.replace("X-Amz-Expires=3600", "X-Amz-Expires=7200");
        assert_eq!(verify(&tampered, &e, SystemTime::now(), &secret).unwrap_err(), "its signature does not match");
        let unknown = |_: &str| None;
        assert!(verify(&url, &e, SystemTime::now(), &unknown).is_err());
    }
}
