//! Presigned `CopyDBClusterSnapshot` URLs, built the way botocore's `inject_presigned_url_rds`
//! does: the same request, with `DestinationRegion`, as a GET to the source region's endpoint,
//! signed with SigV4 query authentication for the source region, with a bounded expiry.
//! A presigned URL is a credential: it is never logged, traced or put in an error.

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SignatureLocation, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;

use snapgate_domain::partition_for_region;

/// How long a presigned URL stays valid (botocore's default).
pub(crate) const PRESIGNED_URL_EXPIRY: Duration = Duration::from_secs(3600);

/// The query API endpoint of a region.
pub(crate) fn endpoint_host(region: &str) -> String {
    let suffix = if partition_for_region(region) == "aws-cn" { "amazonaws.com.cn" } else { "amazonaws.com" };
    format!("rds.{region}.{suffix}")
}

/// The parameters of the presigned copy request, in the order they are sent.
pub(crate) fn copy_params(
    source_arn: &str,
    destination_region: &str,
    kms_key_id: Option<&str>,
) -> Vec<(String, String)> {
    let mut params = vec![
        ("Action".to_owned(), "CopyDBClusterSnapshot".to_owned()),
        ("Version".to_owned(), "2014-10-31".to_owned()),
        ("SourceDBClusterSnapshotIdentifier".to_owned(), source_arn.to_owned()),
        ("DestinationRegion".to_owned(), destination_region.to_owned()),
    ];
    if let Some(kms) = kms_key_id {
        params.push(("KmsKeyId".to_owned(), kms.to_owned()));
    }
    params
}

/// Signs `params` as a GET to `https://HOST/?...` for `region`, valid for `expires_in` from `time`.
pub(crate) fn sign_query(
    host: &str,
    params: &[(String, String)],
    credentials: &Credentials,
    region: &str,
    time: SystemTime,
    expires_in: Duration,
) -> Result<String, String> {
    let query = form_urlencoded::Serializer::new(String::new()).extend_pairs(params).finish();
    let url = format!("https://{host}/?{query}");
    let identity: Identity = credentials.clone().into();
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(expires_in);
    let signing_params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("rds")
        .time(time)
        .settings(settings)
        .build()
        .map_err(|e| e.to_string())?
        .into();
    let headers = [("host", host)];
    let signable =
        SignableRequest::new("GET", &url, headers.into_iter(), SignableBody::Bytes(&[])).map_err(|e| e.to_string())?;
    let (instructions, _signature) = sign(signable, &signing_params).map_err(|e| e.to_string())?.into_parts();
    let mut request = http::Request::get(&url).body(()).map_err(|e| e.to_string())?;
    instructions.apply_to_request_http1x(&mut request);
    Ok(request.uri().to_string())
}

/// The presigned URL for copying `source_arn` from `source_region` into `destination_region`.
pub fn presign_copy(
    credentials: &Credentials,
    source_arn: &str,
    source_region: &str,
    destination_region: &str,
    kms_key_id: Option<&str>,
) -> Result<String, String> {
    let params = copy_params(source_arn, destination_region, kms_key_id);
    sign_query(
        &endpoint_host(source_region),
        &params,
        credentials,
        source_region,
        SystemTime::now(),
        PRESIGNED_URL_EXPIRY,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_presigned_url_carries_the_request_and_a_query_signature_for_the_source_region() {
        let creds = Credentials::new("AKIDEXAMPLE", "secret", None, None, "test");
        let url = presign_copy(
            &creds,
            "arn:aws:rds:us-east-1:123456789012:cluster-snapshot:s1",
            "us-east-1",
            "us-west-2",
            Some("alias/backup"),
        )
        .unwrap();
        assert!(url.starts_with("https://rds.us-east-1.amazonaws.com/?Action=CopyDBClusterSnapshot"), "{url}");
        for part in [
            "DestinationRegion=us-west-2",
            "KmsKeyId=alias%2Fbackup",
            "X-Amz-Expires=3600",
            "X-Amz-Signature=",
            "%2Fus-east-1%2Frds%2Faws4_request",
        ] {
            assert!(url.contains(part), "{part} in {url}");
        }
    }

    #[test]
    fn the_same_inputs_sign_the_same_and_other_inputs_do_not() {
        let creds = Credentials::new("AKIDEXAMPLE", "secret", None, None, "test");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let params = copy_params("arn:aws:rds:us-east-1:123456789012:cluster-snapshot:s1", "us-west-2", None);
        let a =
            sign_query("rds.us-east-1.amazonaws.com", &params, &creds, "us-east-1", t, PRESIGNED_URL_EXPIRY).unwrap();
        let b =
            sign_query("rds.us-east-1.amazonaws.com", &params, &creds, "us-east-1", t, PRESIGNED_URL_EXPIRY).unwrap();
        assert_eq!(a, b);
        let other = Credentials::new("AKIDEXAMPLE", "other", None, None, "test");
        let c =
            sign_query("rds.us-east-1.amazonaws.com", &params, &other, "us-east-1", t, PRESIGNED_URL_EXPIRY).unwrap();
        assert_ne!(a, c);
    }
}
