//! Verifies the presigned URL a cross-region copy carries, as the source region would, from
//! the SigV4 specification for query-string authentication ("Authenticating Requests: Using
//! Query Parameters"), not with any SDK's signer:
//! - the canonical request is `GET`, the path `/`, the URL's whole query as given (every
//!   parameter but `X-Amz-Signature`, each name and value URI-encoded, sorted), the signed
//!   headers (`host` only), and the SHA-256 of the empty payload;
//! - the signing key is derived from the secret of the access key in `X-Amz-Credential`, for
//!   the credential scope's date, region and service;
//! - what the URL asks for must be the copy it rides on (action, source, destination region,
//!   KMS key), signed for the source region, within its expiry.
//!
//! Every parameter the signer included is covered by the signature, so a URL presigned by
//! botocore (which also signs `TargetDBClusterSnapshotIdentifier`, tags and the like) verifies
//! exactly as one presigned by snapgate. Input is untrusted text: nothing here slices by byte
//! offsets that might fall inside a character.

use std::time::SystemTime;

use aws_lc_rs::{constant_time, digest, hmac};

use crate::actions::PresignedExpectation;
use crate::query::{CredentialScope, Params};

/// Longest validity SigV4 query authentication allows (7 days).
const MAX_EXPIRES_SECS: i64 = 604_800;
/// How far in the future a signing time may be (clock skew).
const MAX_SKEW_SECS: i64 = 300;
/// The hex SHA-256 of an empty payload: a presigned GET has no body.
const EMPTY_PAYLOAD_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Checks a presigned URL as the source region would; the error says what is wrong with it
/// (never the URL itself, which is a credential).
/// What verifying a URL came to, when it passed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verified {
    /// Every check, the signature included.
    Signed,
    /// Every check but the signature: the signing key's secret is not known here.
    UnknownKey(String),
}

pub(crate) fn verify(
    url: &str,
    expected: &PresignedExpectation,
    now: SystemTime,
    secret_for: &dyn Fn(&str) -> Option<String>,
) -> Result<Verified, String> {
    let url = Url::parse(url)?;
    let get = |name: &str| url.params.peek(name).ok_or(format!("it lacks {name}"));
    if get("Action")? != "CopyDBClusterSnapshot" {
        return Err("it is not a CopyDBClusterSnapshot request".into());
    }
    if get("SourceDBClusterSnapshotIdentifier")? != expected.source_arn {
        return Err("it names another source snapshot".into());
    }
    if get("DestinationRegion")? != expected.destination_region {
        return Err("its DestinationRegion is not the region of this call".into());
    }
    if url.params.peek("KmsKeyId") != expected.kms_key_id.as_deref() {
        return Err("its KmsKeyId differs from the request's".into());
    }
    if get("X-Amz-Algorithm")? != "AWS4-HMAC-SHA256" {
        return Err("it is not signed with AWS4-HMAC-SHA256".into());
    }
    let scope = CredentialScope::parse(get("X-Amz-Credential")?).ok_or("its credential scope is malformed")?;
    if scope.region != expected.source_region {
        return Err("it is not signed for the source region".into());
    }
    if scope.service != "rds" {
        return Err("it is not signed for the rds service".into());
    }
    let amz_date = get("X-Amz-Date")?;
    let signed_at = parse_amz_date(amz_date).ok_or("its X-Amz-Date is malformed")?;
    if !amz_date.starts_with(&scope.date) {
        return Err("its X-Amz-Date is not the date of its credential scope".into());
    }
    let expires: i64 = get("X-Amz-Expires")?.parse().map_err(|_| "its X-Amz-Expires is not a number")?;
    if !(1..=MAX_EXPIRES_SECS).contains(&expires) {
        return Err("its X-Amz-Expires is out of range".into());
    }
    let now = unix_secs(now);
    if now > signed_at + expires {
        return Err("it has expired".into());
    }
    if signed_at > now + MAX_SKEW_SECS {
        return Err("it is signed in the future".into());
    }
    if get("X-Amz-SignedHeaders")? != "host" {
        return Err("it must sign exactly the host header".into());
    }
    let signature = get("X-Amz-Signature")?;
    if signature.len() != 64 || !signature.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("its X-Amz-Signature is not a SigV4 signature".into());
    }
    let Some(secret) = secret_for(&scope.access_key) else {
        return Ok(Verified::UnknownKey(scope.access_key));
    };
    let expected_signature = signature_of(&url, &scope, amz_date, &secret);
    match constant_time::verify_slices_are_equal(expected_signature.as_bytes(), signature.as_bytes()) {
        Ok(()) => Ok(Verified::Signed),
        Err(_) => Err("its signature does not match".into()),
    }
}

/// A presigned URL taken apart: its host and its decoded query.
struct Url {
    host: String,
    params: Params,
}

impl Url {
    fn parse(text: &str) -> Result<Url, String> {
        let rest =
            text.strip_prefix("https://").or_else(|| text.strip_prefix("http://")).ok_or("it is not an http(s) URL")?;
        let (authority, query) = rest.split_once('?').ok_or("it has no query string")?;
        let (host, path) = match authority.split_once('/') {
            Some((host, path)) => (host, path),
            None => (authority, ""),
        };
        if host.is_empty() || !path.is_empty() {
            return Err("it must be a request to the path / of a host".into());
        }
        let mut params = Params::default();
        params.decode_into(query.as_bytes()).map_err(|e| e.message)?;
        Ok(Url { host: host.to_ascii_lowercase(), params })
    }
}

/// The SigV4 signature of the URL's request, in lowercase hex.
fn signature_of(url: &Url, scope: &CredentialScope, amz_date: &str, secret: &str) -> String {
    let mut query: Vec<(String, String)> = url
        .params
        .iter()
        .filter(|(name, _)| *name != "X-Amz-Signature")
        .map(|(name, value)| (uri_encode(name), uri_encode(value)))
        .collect();
    query.sort();
    let canonical_query: Vec<String> = query.into_iter().map(|(n, v)| format!("{n}={v}")).collect();
    let canonical_request =
        format!("GET\n/\n{}\nhost:{}\n\nhost\n{EMPTY_PAYLOAD_SHA256}", canonical_query.join("&"), url.host);
    let scope_text = format!("{}/{}/{}/aws4_request", scope.date, scope.region, scope.service);
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope_text}\n{}",
        hex(digest::digest(&digest::SHA256, canonical_request.as_bytes()).as_ref())
    );
    let mut key = format!("AWS4{secret}").into_bytes();
    for part in [scope.date.as_str(), scope.region.as_str(), scope.service.as_str(), "aws4_request"] {
        key = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &key), part.as_bytes()).as_ref().to_vec();
    }
    hex(hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &key), string_to_sign.as_bytes()).as_ref())
}

/// SigV4's URI encoding: every byte but the unreserved characters (`A-Z a-z 0-9 - _ . ~`) as
/// `%XX` with upper-case hex.
fn uri_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// `YYYYMMDDTHHMMSSZ` (the basic ISO 8601 form SigV4 uses) as seconds since the epoch. Only
/// ASCII digits in their places are accepted, so no multibyte text reaches an index.
fn parse_amz_date(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<i64> {
        let digits = &b[range];
        if !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(digits.iter().fold(0, |n, d| n * 10 + i64::from(d - b'0')))
    };
    let (year, month, day) = (number(0..4)?, number(4..6)?, number(6..8)?);
    let (hour, minute, second) = (number(9..11)?, number(11..13)?, number(13..15)?);
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => return None,
    };
    if !(1..=days_in_month).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
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

    const SIGNED_AT: i64 = 1_795_255_200; // 2026-11-21T10:00:00Z

    fn unsigned(date: &str) -> String {
        format!(
            "https://rds.us-east-1.amazonaws.com/?Action=CopyDBClusterSnapshot&Version=2014-10-31\
             &SourceDBClusterSnapshotIdentifier=arn%3Aaws%3Ards%3Aus-east-1%3A123456789012%3Acluster-snapshot%3As1\
             &TargetDBClusterSnapshotIdentifier=t1&DestinationRegion=us-west-2&KmsKeyId=alias%2Fbackup\
             &X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKID%2F20261121%2Fus-east-1%2Frds%2Faws4_request\
             &X-Amz-Date={date}&X-Amz-Expires=3600&X-Amz-SignedHeaders=host"
        )
    }

    /// Signs `url` the way the specification says (the same function the verifier uses, so
    /// this only checks the checks around it; botocore's URLs are verified by the Python tests).
    fn signed(url: &str) -> String {
        let parsed = Url::parse(url).unwrap();
        let scope = CredentialScope::parse(parsed.params.peek("X-Amz-Credential").unwrap()).unwrap();
        let date = parsed.params.peek("X-Amz-Date").unwrap().to_owned();
        format!("{url}&X-Amz-Signature={}", signature_of(&parsed, &scope, &date, "secret"))
    }

    fn at(secs: i64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64)
    }

    fn secret(key: &str) -> Option<String> {
        (key == "AKID").then(|| "secret".to_owned())
    }

    #[test]
    fn a_signed_url_verifies_and_every_change_to_it_does_not() {
        let url = signed(&unsigned("20261121T100000Z"));
        assert_eq!(verify(&url, &expectation(), at(SIGNED_AT + 60), &secret), Ok(Verified::Signed));
        let tampered = url.replace("TargetDBClusterSnapshotIdentifier=t1", "TargetDBClusterSnapshotIdentifier=t2");
        assert_eq!(
            verify(&tampered, &expectation(), at(SIGNED_AT + 60), &secret),
            Err("its signature does not match".into())
        );
        assert_eq!(verify(&url, &expectation(), at(SIGNED_AT + 7200), &secret), Err("it has expired".into()));
        let other_key = |_: &str| Some("other".to_owned());
        assert!(verify(&url, &expectation(), at(SIGNED_AT + 60), &other_key).is_err());
        let unknown = |_: &str| None;
        assert_eq!(verify(&url, &expectation(), at(SIGNED_AT + 60), &unknown), Ok(Verified::UnknownKey("AKID".into())));
        // Everything but the signature is still checked for an unknown key.
        assert!(verify(&url, &expectation(), at(SIGNED_AT + 7200), &unknown).is_err());
    }

    #[test]
    fn a_url_for_another_destination_or_region_is_refused() {
        let url = signed(&unsigned("20261121T100000Z"));
        let mut e = expectation();
        e.destination_region = "eu-west-1".into();
        assert!(verify(&url, &e, at(SIGNED_AT), &secret).unwrap_err().contains("DestinationRegion"));
        let mut e = expectation();
        e.source_region = "us-east-2".into();
        assert!(verify(&url, &e, at(SIGNED_AT), &secret).unwrap_err().contains("source region"));
    }

    #[test]
    fn malformed_dates_are_refused_without_panicking() {
        for date in [
            "2026112110000Z",
            "20261121T1000é",
            "é0261121T100000Z",
            "20261321T100000Z",
            "20260230T100000Z",
            "２0261121T100000Z",
            "",
        ] {
            let url = signed(&unsigned(date));
            assert!(verify(&url, &expectation(), at(SIGNED_AT), &secret).is_err(), "{date}");
        }
        assert_eq!(parse_amz_date("20261121T100000Z"), Some(SIGNED_AT));
        assert_eq!(parse_amz_date("19700101T000000Z"), Some(0));
        assert_eq!(parse_amz_date("20240229T000000Z").map(|s| s % 86_400), Some(0));
    }

    #[test]
    fn uri_encoding_follows_sigv4() {
        assert_eq!(uri_encode("arn:aws:rds/a b~c"), "arn%3Aaws%3Ards%2Fa%20b~c");
        assert_eq!(uri_encode("é"), "%C3%A9");
    }
}
