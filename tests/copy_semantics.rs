//! CopyClusterSnapshot's full AWS semantics: engine rules before any copy call, presigned
//! URLs where AWS needs them, cross-account roles, idempotent retries, and pacing under
//! AWS's throttling.
// A test reports failure by panicking: unwrapping in its helpers is that report.
#![allow(clippy::unwrap_used)]

mod common;

use common::gateway;
use common::*;
use snapgate_emulator::{EmulatorConfig, Faults, SEED_PARTNER_ACCOUNT, Throttle};
use snapgate_proto::{self as pb, CopyClusterSnapshotRequest};
use tonic::Code;
use tonic_types::StatusExt;

/// Seed data with copies slow enough to stay `copying` through a test.
fn slow_seeded() -> EmulatorConfig {
    EmulatorConfig { copy_gib_per_sec: 0.01, ..seeded() }
}

const ORDERS_ENC: &str = "arn:aws:rds:us-east-1:123456789012:cluster-snapshot:orders-aurora-2026-11-20";
const WEST_PLAIN: &str = "arn:aws:rds:us-west-2:123456789012:cluster-snapshot:orders-aurora-west-snap";

#[tokio::test]
async fn forty_bad_requests_are_refused_with_their_field_and_no_copy_call() {
    let (emu, mut gw) = setup(slow_seeded(), |_| {}).await;
    gw.client.copy_cluster_snapshot(copy_req("billing-pg-daily", "in-flight")).await.expect("a copy in progress");
    emu.emulator.reset_calls();

    let partner_vault = format!("arn:aws:rds:us-east-1:{SEED_PARTNER_ACCOUNT}:cluster-snapshot:partner-vault-share");
    let west_key = "arn:aws:kms:us-west-2:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab";
    let fifty_one: Vec<pb::Tag> = (0..51).map(|i| pb::Tag { key: format!("k{i}"), value: String::new() }).collect();
    let with = |r: CopyClusterSnapshotRequest, f: &dyn Fn(&mut CopyClusterSnapshotRequest)| {
        let mut r = r;
        f(&mut r);
        r
    };
    let base = || copy_req("billing-pg-daily", "target");
    let cases: Vec<(&str, CopyClusterSnapshotRequest, Code, &str)> = vec![
        ("no source", copy_req("", "t"), Code::InvalidArgument, "source_snapshot"),
        ("no target", copy_req("billing-pg-daily", ""), Code::InvalidArgument, "target_snapshot_id"),
        (
            "target starts with a digit",
            copy_req("billing-pg-daily", "1abc"),
            Code::InvalidArgument,
            "target_snapshot_id",
        ),
        (
            "target starts with a hyphen",
            copy_req("billing-pg-daily", "-abc"),
            Code::InvalidArgument,
            "target_snapshot_id",
        ),
        (
            "target ends with a hyphen",
            copy_req("billing-pg-daily", "abc-"),
            Code::InvalidArgument,
            "target_snapshot_id",
        ),
        ("target has two hyphens", copy_req("billing-pg-daily", "a--b"), Code::InvalidArgument, "target_snapshot_id"),
        ("target has an underscore", copy_req("billing-pg-daily", "a_b"), Code::InvalidArgument, "target_snapshot_id"),
        ("target has a dot", copy_req("billing-pg-daily", "a.b"), Code::InvalidArgument, "target_snapshot_id"),
        (
            "target of 64 characters",
            copy_req("billing-pg-daily", &"a".repeat(64)),
            Code::InvalidArgument,
            "target_snapshot_id",
        ),
        ("target not ASCII", copy_req("billing-pg-daily", "copié"), Code::InvalidArgument, "target_snapshot_id"),
        (
            "source is a cluster ARN",
            copy_req("arn:aws:rds:us-east-1:123456789012:cluster:orders-aurora", "t"),
            Code::InvalidArgument,
            "source_snapshot",
        ),
        (
            "source ARN without region",
            copy_req("arn:aws:rds::123456789012:cluster-snapshot:x", "t"),
            Code::InvalidArgument,
            "source_snapshot",
        ),
        ("source is an S3 ARN", copy_req("arn:aws:s3:::bucket", "t"), Code::InvalidArgument, "source_snapshot"),
        ("source identifier with symbols", copy_req("bad_id!", "t"), Code::InvalidArgument, "source_snapshot"),
        (
            "other-region source by identifier",
            with(base(), &|r| r.source_region = "us-west-2".into()),
            Code::InvalidArgument,
            "source_snapshot",
        ),
        (
            "source_region disagrees with the ARN",
            with(copy_req(WEST_PLAIN, "t"), &|r| r.source_region = "eu-west-1".into()),
            Code::InvalidArgument,
            "source_region",
        ),
        (
            "source_region not a region",
            with(base(), &|r| r.source_region = "west".into()),
            Code::InvalidArgument,
            "source_region",
        ),
        (
            "destination_region not a region",
            with(base(), &|r| r.destination_region = "moon".into()),
            Code::InvalidArgument,
            "destination_region",
        ),
        (
            "destination_account not 12 digits",
            with(base(), &|r| r.destination_account = "12345".into()),
            Code::InvalidArgument,
            "destination_account",
        ),
        (
            "destination_account with no role",
            with(base(), &|r| r.destination_account = "999999999999".into()),
            Code::InvalidArgument,
            "destination_account",
        ),
        (
            "KMS key of no known form",
            with(base(), &|r| r.kms_key_id = "not a key".into()),
            Code::InvalidArgument,
            "kms_key_id",
        ),
        ("empty KMS alias", with(base(), &|r| r.kms_key_id = "alias/".into()), Code::InvalidArgument, "kms_key_id"),
        (
            "KMS key ARN in another region",
            with(copy_req(ORDERS_ENC, "t"), &|r| r.kms_key_id = west_key.into()),
            Code::InvalidArgument,
            "kms_key_id",
        ),
        (
            "KMS key that is an S3 ARN",
            with(base(), &|r| r.kms_key_id = "arn:aws:s3:::x".into()),
            Code::InvalidArgument,
            "kms_key_id",
        ),
        ("51 tags", with(base(), &|r| r.tags = fifty_one.clone()), Code::InvalidArgument, "tags"),
        ("empty tag key", with(base(), &|r| r.tags = tags(&[("", "v")])), Code::InvalidArgument, "tags[0].key"),
        (
            "tag key of 129 characters",
            with(base(), &|r| r.tags = tags(&[(&"k".repeat(129), "v")])),
            Code::InvalidArgument,
            "tags[0].key",
        ),
        (
            "tag value of 257 characters",
            with(base(), &|r| r.tags = tags(&[("k", &"v".repeat(257))])),
            Code::InvalidArgument,
            "tags[0].value",
        ),
        (
            "tag key with aws: prefix",
            with(base(), &|r| r.tags = tags(&[("aws:team", "x")])),
            Code::InvalidArgument,
            "tags[0].key",
        ),
        (
            "tag value with rds: prefix",
            with(base(), &|r| r.tags = tags(&[("k", "rds:x")])),
            Code::InvalidArgument,
            "tags[0].value",
        ),
        (
            "tag prefix in another case",
            with(base(), &|r| r.tags = tags(&[("AWS:team", "x")])),
            Code::InvalidArgument,
            "tags[0].key",
        ),
        ("tag key with #", with(base(), &|r| r.tags = tags(&[("a#b", "x")])), Code::InvalidArgument, "tags[0].key"),
        (
            "tag value with a tab",
            with(base(), &|r| r.tags = tags(&[("k", "a\tb")])),
            Code::InvalidArgument,
            "tags[0].value",
        ),
        (
            "duplicate tag keys",
            with(base(), &|r| r.tags = tags(&[("k", "1"), ("k", "2")])),
            Code::InvalidArgument,
            "tags[1].key",
        ),
        (
            "@ in a Neptune tag",
            with(copy_req("graph-neptune-snap", "t"), &|r| r.tags = tags(&[("owner", "a@b")])),
            Code::InvalidArgument,
            "tags[0].value",
        ),
        (
            "@ in a DocumentDB tag",
            with(copy_req("catalog-docdb-snap", "t"), &|r| r.tags = tags(&[("a@b", "x")])),
            Code::InvalidArgument,
            "tags[0].key",
        ),
        ("source still copying", copy_req("in-flight", "t"), Code::FailedPrecondition, "source_snapshot"),
        (
            "KMS key for an unencrypted source",
            with(base(), &|r| r.kms_key_id = "alias/snapgate-backup".into()),
            Code::FailedPrecondition,
            "kms_key_id",
        ),
        (
            "encrypted copy to another region without a key",
            with(copy_req(ORDERS_ENC, "t"), &|r| r.destination_region = "us-west-2".into()),
            Code::FailedPrecondition,
            "kms_key_id",
        ),
        (
            "encrypted Multi-AZ copy to another region without a key",
            with(copy_req("arn:aws:rds:us-east-1:123456789012:cluster-snapshot:reports-postgres-snap", "t"), &|r| {
                r.destination_region = "us-west-2".into()
            }),
            Code::FailedPrecondition,
            "kms_key_id",
        ),
        (
            "shared encrypted source without a key",
            copy_req(&partner_vault, "t"),
            Code::FailedPrecondition,
            "kms_key_id",
        ),
        (
            "shared encrypted source to another region",
            with(copy_req(&partner_vault, "t"), &|r| {
                r.destination_region = "us-west-2".into();
                r.kms_key_id = "alias/snapgate-backup".into();
            }),
            Code::FailedPrecondition,
            "source_snapshot",
        ),
    ];
    assert!(cases.len() >= 40, "{} cases", cases.len());
    for (name, request, code, field) in cases {
        let status = gw.client.copy_cluster_snapshot(request).await.expect_err(name);
        assert_eq!(status.code(), code, "{name}: {status:?}");
        let details = status.get_error_details();
        let violations = &details.bad_request().unwrap_or_else(|| panic!("{name}: no BadRequest")).field_violations;
        assert!(violations.iter().any(|v| v.field == field), "{name}: {violations:?}");
        assert!(violations.iter().all(|v| !v.description.is_empty()), "{name}");
    }
    let status = gw.client.copy_cluster_snapshot(copy_req("no-such-snapshot", "t")).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(emu.emulator.calls().get("CopyDBClusterSnapshot"), 0, "no copy was sent for any of them");
}

#[tokio::test]
async fn copies_of_every_engine_go_through() {
    let (_emu, mut gw) = setup(slow_seeded(), |_| {}).await;
    let sources = [
        ("orders-aurora-2026-11-20", "aurora-mysql"),
        ("billing-pg-daily", "aurora-postgresql"),
        ("ledger-mysql-snap", "mysql"),
        ("reports-postgres-snap", "postgres"),
        ("graph-neptune-snap", "neptune"),
        ("catalog-docdb-snap", "docdb"),
    ];
    for (source, engine) in sources {
        let copy = gw
            .client
            .copy_cluster_snapshot(copy_req(source, &format!("{engine}-copy")))
            .await
            .expect(engine)
            .into_inner();
        assert_eq!((copy.engine.as_str(), copy.state()), (engine, pb::copy::State::Copying));
    }
}

#[tokio::test]
async fn a_cross_region_documentdb_copy_carries_a_presigned_url_the_emulator_verifies() {
    let (emu, mut gw) = setup(slow_seeded(), |_| {}).await;
    let mut r = copy_req("arn:aws:rds:us-east-1:123456789012:cluster-snapshot:catalog-docdb-snap", "catalog-west");
    r.destination_region = "us-west-2".into();
    r.kms_key_id = "alias/snapgate-backup".into();
    let copy = gw.client.copy_cluster_snapshot(r).await.expect("the emulator accepted the presigned URL").into_inner();
    assert_eq!(copy.region, "us-west-2");
    assert!(copy.kms_key_id.starts_with("arn:aws:kms:us-west-2:"));

    // Neptune takes no presigned URL: the copy would be refused if one were built.
    let mut r = copy_req("arn:aws:rds:us-east-1:123456789012:cluster-snapshot:graph-neptune-snap", "graph-west");
    r.destination_region = "us-west-2".into();
    r.kms_key_id = "alias/snapgate-backup".into();
    gw.client.copy_cluster_snapshot(r).await.expect("no presigned URL for Neptune");

    // A URL altered after signing is refused by the emulator, as the source region would.
    let creds = aws_credential_types::Credentials::new("AKIDTEST", "test-secret-key", None, None, "test");
    let source = "arn:aws:rds:us-east-1:123456789012:cluster-snapshot:catalog-docdb-snap";
    let url = snapgate_gateway::presign_copy(&creds, source, "us-east-1", "us-west-2", Some("alias/snapgate-backup"))
        .unwrap();
    let west = rds_client(&emu.endpoint_url(), "us-west-2", "AKIDTEST");
    let send = |url: String, target: &'static str| {
        west.copy_db_cluster_snapshot()
            .source_db_cluster_snapshot_identifier(source)
            .target_db_cluster_snapshot_identifier(target)
            .kms_key_id("alias/snapgate-backup")
            .pre_signed_url(url)
            .send()
    };
    send(url.clone(), "direct-ok").await.expect("the untouched URL verifies");
    let tampered = url.replace("X-Amz-Expires=3600", "X-Amz-Expires=3599");
    let err = send(tampered, "direct-tampered").await.unwrap_err();
    assert!(format!("{:?}", err.into_service_error()).contains("signature does not match"));
}

#[tokio::test]
async fn a_retry_returns_the_same_copy_and_twenty_at_once_make_one() {
    let (emu, mut gw) = setup(slow_seeded(), |_| {}).await;
    let first = gw.client.copy_cluster_snapshot(copy_req("billing-pg-daily", "once")).await.unwrap().into_inner();
    let second = gw.client.copy_cluster_snapshot(copy_req("billing-pg-daily", "ONCE")).await.unwrap().into_inner();
    assert_eq!(first.name, second.name);
    let status = gw.client.copy_cluster_snapshot(copy_req("ledger-mysql-snap", "once")).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "another source for the same target is a conflict");

    emu.emulator.reset_calls();
    let mut calls = vec![];
    for _ in 0..20 {
        let mut client = gw.client.clone();
        calls.push(tokio::spawn(async move {
            client.copy_cluster_snapshot(copy_req("billing-pg-daily", "together")).await
        }));
    }
    let mut names = std::collections::BTreeSet::new();
    for call in calls {
        names.insert(call.await.unwrap().expect("every caller gets the copy").into_inner().name);
    }
    assert_eq!(names.len(), 1);
    assert_eq!(emu.emulator.calls().get("CopyDBClusterSnapshot"), 1, "one AWS copy");

    // Long after, a retry still finds the copy (through AWS's AlreadyExists and a describe).
    let mut gw2 = gateway::start(gateway::settings(), &emu.endpoint_url(), "AKIDTEST").await;
    let again = gw2.client.copy_cluster_snapshot(copy_req("billing-pg-daily", "together")).await.unwrap().into_inner();
    assert!(names.contains(&again.name));
}

#[tokio::test]
async fn a_burst_of_two_hundred_copies_stays_under_the_throttle() {
    let faults = Faults { throttle: Some(Throttle { burst: 20, per_second: 60.0 }), ..Faults::default() };
    let config = EmulatorConfig { seed: true, copy_gib_per_sec: 0.01, snapshot_quota: 1000, faults, ..quiet_config() };
    let (emu, gw) = setup(config, |s| {
        s.aws.rate_limit_per_sec = 50.0;
        s.aws.rate_limit_burst = 10;
    })
    .await;
    let mut calls = vec![];
    for i in 0..200 {
        let mut client = gw.client.clone();
        calls.push(tokio::spawn(async move {
            client.copy_cluster_snapshot(copy_req("billing-pg-daily", &format!("burst-{i}"))).await
        }));
    }
    for call in calls {
        let result = call.await.unwrap();
        assert!(result.is_ok(), "{:?}", result.err());
    }
    let counts = emu.emulator.calls();
    assert_eq!(counts.get("CopyDBClusterSnapshot"), 200);
    assert_eq!(counts.throttled, 0, "the gateway paced itself under the emulator's bucket");
    // One describe of the shared source; the others are the pollers following the 200 jobs to
    // their end, 100 snapshots a call.
    let rounds = gw.hub.poll_rounds();
    let describes = counts.get("DescribeDBClusterSnapshots");
    assert!(describes <= 1 + 2 * rounds, "one describe of the shared source: {describes} in {rounds} poll rounds");
}

#[tokio::test]
async fn a_copy_into_another_account_assumes_its_role_against_moto() {
    let moto = common::moto::start().await;
    const OTHER: &str = "111111111111";
    let role = format!("arn:aws:iam::{OTHER}:role/snapgate-copier");
    // Seed a snapshot inside the other account, through the same role.
    let base =
        snapgate_gateway::fixed_sdk_config(&gateway::settings().aws, &moto.endpoint, "AKIDTEST", "test-secret-key")
            .await;
    let provider =
        aws_config::sts::AssumeRoleProvider::builder(&role).session_name("seed").configure(&base).build().await;
    let other = aws_sdk_rds::Client::from_conf(
        aws_sdk_rds::config::Builder::from(&base).credentials_provider(provider).build(),
    );
    other
        .create_db_cluster()
        .db_cluster_identifier("tenant")
        .engine("aurora-postgresql")
        .master_username("admin")
        .master_user_password("password123")
        .send()
        .await
        .unwrap();
    other
        .create_db_cluster_snapshot()
        .db_cluster_identifier("tenant")
        .db_cluster_snapshot_identifier("tenant-snap")
        .send()
        .await
        .unwrap();

    let mut settings = gateway::settings();
    settings.aws.accounts.insert(
        OTHER.into(),
        snapgate_gateway::config::AccountRole {
            role_arn: role.clone(),
            external_id: Some("snapgate-test".into()),
            session_name: "snapgate".into(),
        },
    );
    let mut gw = gateway::start(settings, &moto.endpoint, "AKIDTEST").await;
    let mut r = copy_req("tenant-snap", "tenant-copy");
    r.destination_account = OTHER.into();
    let copy = gw.client.copy_cluster_snapshot(r).await.expect("copied in the other account").into_inner();
    assert_eq!(copy.account_id, OTHER);
    let got =
        gw.client.get_copy(pb::GetCopyRequest { name: copy.name.clone(), fresh: false }).await.unwrap().into_inner();
    assert_eq!(got.account_id, OTHER);

    // The gateway's own account does not see the other account's snapshot.
    let status = gw.client.copy_cluster_snapshot(copy_req("tenant-snap", "stolen")).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let mut r = copy_req("tenant-snap", "x");
    r.destination_account = "222222222222".into();
    let status = gw.client.copy_cluster_snapshot(r).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn cross_region_copies_of_every_engine_pass_an_emulator_that_verifies_strictly() {
    // The emulator knows the gateway's secret and refuses URLs it cannot verify: what the
    // gateway presigns (DocumentDB) is checked exactly as botocore's URLs are.
    let config = EmulatorConfig { strict_presign: true, ..slow_seeded() };
    let (emu, mut gw) = setup(config, |_| {}).await;
    for (source, target) in [
        (ORDERS_ENC, "strict-aurora"),
        ("arn:aws:rds:us-east-1:123456789012:cluster-snapshot:graph-neptune-snap", "strict-neptune"),
        ("arn:aws:rds:us-east-1:123456789012:cluster-snapshot:catalog-docdb-snap", "strict-docdb"),
    ] {
        let mut request = copy_req(source, target);
        request.destination_region = "us-west-2".into();
        request.kms_key_id = "alias/snapgate-backup".into();
        let copy =
            gw.client.copy_cluster_snapshot(request).await.unwrap_or_else(|s| panic!("{target}: {s:?}")).into_inner();
        assert_eq!((copy.region.as_str(), copy.state()), ("us-west-2", pb::copy::State::Copying), "{target}");
    }
    assert_eq!(emu.emulator.calls().get("CopyDBClusterSnapshot"), 3);
}

/// botocore, the reference client, signs the same presigned request: given snapgate's URL's
/// parameters, credentials and time, `SigV4QueryAuth` (what botocore's RDS and DocumentDB
/// presigning uses) produces the identical query, signature included, so the canonical requests
/// are the same. DocumentDB across commercial regions and RDS between GovCloud regions.
#[test]
fn presigned_urls_match_botocores_for_the_same_request_credentials_and_time() {
    let venv = std::env::var_os("SNAPGATE_VENV")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv"));
    let python = venv.join("bin").join("python");
    assert!(python.exists(), "{} is missing: run scripts/venv (scripts/test runs it)", python.display());
    const BOTOCORE: &str = r#"
import datetime, json, sys, urllib.parse
import botocore.auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
a = json.loads(sys.argv[1])
when = datetime.datetime.strptime(a["date"], "%Y%m%dT%H%M%SZ")
botocore.auth.get_current_datetime = lambda *args, **kwargs: when
# As botocore's inject_presigned_url_rds: the request's parameters in the body of a GET to the
# source region's endpoint, presigned for the source region with query authentication.
request = AWSRequest(method="GET", url=f"https://{a['host']}/", data=a["params"])
botocore.auth.SigV4QueryAuth(Credentials(a["key"], a["secret"]), "rds", a["region"], expires=3600).add_auth(request)
print(request.prepare().url)
"#;
    let creds = aws_credential_types::Credentials::new(
        "AKIAIOSFODNN7EXAMPLE",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        None,
        None,
        "test",
    );
    let cases = [
        (
            "arn:aws:rds:us-east-1:123456789012:cluster-snapshot:catalog-docdb-snap",
            "us-east-1",
            "us-west-2",
            Some("alias/snapgate-backup"),
        ),
        (
            "arn:aws-us-gov:rds:us-gov-west-1:123456789012:cluster-snapshot:gov-aurora",
            "us-gov-west-1",
            "us-gov-east-1",
            Some("arn:aws-us-gov:kms:us-gov-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"),
        ),
        ("arn:aws:rds:eu-west-1:123456789012:cluster-snapshot:no-kms", "eu-west-1", "eu-central-1", None),
    ];
    for (source, source_region, destination_region, kms) in cases {
        let ours = snapgate_gateway::presign_copy(&creds, source, source_region, destination_region, kms).unwrap();
        let parts = url_parts(&ours);
        let host = ours.trim_start_matches("https://").split('/').next().unwrap().to_owned();
        let signed: std::collections::BTreeMap<&str, &str> =
            parts.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let params: serde_json::Map<String, serde_json::Value> = parts
            .iter()
            .filter(|(k, _)| !k.starts_with("X-Amz-"))
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        let args = serde_json::json!({
            "date": signed["X-Amz-Date"], "host": host, "params": params, "region": source_region,
            "key": "AKIAIOSFODNN7EXAMPLE", "secret": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        });
        let out = std::process::Command::new(&python).args(["-c", BOTOCORE, &args.to_string()]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let theirs = String::from_utf8(out.stdout).unwrap();
        let theirs = url_parts(theirs.trim());
        let theirs: std::collections::BTreeMap<&str, &str> =
            theirs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(signed, theirs, "{source_region} → {destination_region}");
    }
}

/// The decoded query parameters of a URL.
fn url_parts(url: &str) -> Vec<(String, String)> {
    let query = url.split_once('?').map(|(_, q)| q).unwrap_or_default();
    form_urlencoded::parse(query.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
}
