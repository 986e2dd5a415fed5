//! The emulator driven by aws-sdk-rds, the client snapgate itself uses: if the SDK accepts its
//! answers, the gateway will too.
// A test reports failure by panicking: unwrapping in its helpers is that report.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use aws_sdk_rds::error::ProvideErrorMetadata;
use aws_sdk_rds::types::{Filter, Tag};
use common::*;
use snapgate_emulator::{EmulatorConfig, FailCopies, Faults, SEED_PARTNER_ACCESS_KEY, SEED_PARTNER_ACCOUNT, Throttle};

async fn seed_cluster(rds: &aws_sdk_rds::Client, cluster: &str, engine: &str, gib: i32, encrypted: bool) {
    rds.create_db_cluster()
        .db_cluster_identifier(cluster)
        .engine(engine)
        .allocated_storage(gib)
        .storage_encrypted(encrypted)
        .master_username("admin")
        .master_user_password("password123")
        .send()
        .await
        .expect("cluster created");
}

async fn seed_snapshot(rds: &aws_sdk_rds::Client, cluster: &str, snapshot: &str) {
    rds.create_db_cluster_snapshot()
        .db_cluster_identifier(cluster)
        .db_cluster_snapshot_identifier(snapshot)
        .send()
        .await
        .expect("snapshot created");
}

/// The error code and HTTP status of a failed SDK call.
fn fault<E: ProvideErrorMetadata>(
    err: aws_sdk_rds::error::SdkError<E, aws_sdk_rds::config::http::HttpResponse>,
) -> (String, u16) {
    let status = err.raw_response().map(|r| r.status().as_u16()).unwrap_or(0);
    (err.code().unwrap_or("<none>").to_owned(), status)
}

#[tokio::test]
async fn copy_climbs_from_copying_to_available_with_rising_percentages() {
    let emu = emulator_with(EmulatorConfig { copy_gib_per_sec: 40.0, ..quiet_config() }).await;
    let rds = rds_client(&emu.endpoint_url(), "us-east-1", "AKIDTEST");
    seed_cluster(&rds, "src", "aurora-postgresql", 100, false).await;
    seed_snapshot(&rds, "src", "src-snap").await;

    let out = rds
        .copy_db_cluster_snapshot()
        .source_db_cluster_snapshot_identifier("src-snap")
        .target_db_cluster_snapshot_identifier("Copy-1")
        .send()
        .await
        .expect("copy accepted");
    let copy = out.db_cluster_snapshot().expect("snapshot in response");
    assert_eq!(copy.status(), Some("copying"));
    assert_eq!(copy.db_cluster_snapshot_identifier(), Some("copy-1"), "identifiers are stored lowercased");
    assert_eq!(
        copy.source_db_cluster_snapshot_arn(),
        Some("arn:aws:rds:us-east-1:123456789012:cluster-snapshot:src-snap")
    );
    assert_eq!(copy.engine(), Some("aurora-postgresql"));

    let mut seen = vec![];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let out = rds.describe_db_cluster_snapshots().db_cluster_snapshot_identifier("copy-1").send().await.unwrap();
        let s = &out.db_cluster_snapshots()[0];
        seen.push((s.status().unwrap().to_owned(), s.percent_progress().unwrap()));
        if s.status() == Some("available") || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (last_status, last_percent) = seen.last().unwrap().clone();
    assert_eq!((last_status.as_str(), last_percent), ("available", 100), "{seen:?}");
    assert!(seen.windows(2).all(|w| w[0].1 <= w[1].1), "percent never goes down: {seen:?}");
    assert!(seen.iter().any(|(s, p)| s == "copying" && *p > 0 && *p < 100), "progress observed mid-copy: {seen:?}");
}

#[tokio::test]
async fn describe_filters_by_several_values_and_pages_with_markers() {
    let emu = emulator_with(quiet_config()).await;
    let rds = rds_client(&emu.endpoint_url(), "us-east-1", "AKIDTEST");
    seed_cluster(&rds, "alpha", "aurora-mysql", 10, false).await;
    seed_cluster(&rds, "graph", "neptune", 10, false).await;
    for i in 0..45 {
        seed_snapshot(&rds, "alpha", &format!("alpha-{i:02}")).await;
    }
    seed_snapshot(&rds, "graph", "graph-1").await;

    let mut ids = vec![];
    let mut marker = None;
    let mut pages = 0;
    loop {
        let out = rds
            .describe_db_cluster_snapshots()
            .db_cluster_identifier("alpha")
            .max_records(20)
            .set_marker(marker.clone())
            .send()
            .await
            .unwrap();
        pages += 1;
        ids.extend(out.db_cluster_snapshots().iter().map(|s| s.db_cluster_snapshot_identifier().unwrap().to_owned()));
        marker = out.marker().map(str::to_owned);
        if marker.is_none() {
            break;
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(ids.len(), 46, "45 manual snapshots and the automated one of the new cluster");

    let by_id =
        Filter::builder().name("db-cluster-snapshot-id").values("alpha-01").values("graph-1").values("nope").build();
    let out = rds.describe_db_cluster_snapshots().filters(by_id).send().await.unwrap();
    assert_eq!(out.db_cluster_snapshots().len(), 2);

    let neptune = Filter::builder().name("engine").values("neptune").build();
    let manual = Filter::builder().name("snapshot-type").values("manual").build();
    let out = rds.describe_db_cluster_snapshots().filters(neptune).filters(manual).send().await.unwrap();
    assert_eq!(out.db_cluster_snapshots().len(), 1);
    assert_eq!(out.db_cluster_snapshots()[0].engine(), Some("neptune"));

    let err = rds.describe_db_cluster_snapshots().max_records(10).send().await.unwrap_err();
    assert_eq!(fault(err), ("InvalidParameterValue".into(), 400));
    let bogus = Filter::builder().name("bogus").values("x").build();
    let err = rds.describe_db_cluster_snapshots().filters(bogus).send().await.unwrap_err();
    assert_eq!(fault(err).0, "InvalidParameterValue");
    let err = rds.describe_db_cluster_snapshots().db_cluster_snapshot_identifier("missing").send().await.unwrap_err();
    assert_eq!(fault(err), ("DBClusterSnapshotNotFoundFault".into(), 404));
}

/// What a DR plan selects by: DescribeDBClusters with its tags (TagList), filters by id, ARN
/// and engine, pages of at least 20, and the cluster faults.
#[tokio::test]
async fn clusters_are_described_with_their_tags_filtered_and_paged() {
    let emu = emulator_with(quiet_config()).await;
    let rds = rds_client(&emu.endpoint_url(), "us-east-1", "AKIDTEST");
    let before = rds.describe_db_clusters().send().await.unwrap().db_clusters().len();
    for i in 0..24 {
        seed_cluster(&rds, &format!("prod-pg-{i:02}"), "aurora-postgresql", 10, false).await;
    }
    seed_cluster(&rds, "graph", "neptune", 10, false).await;
    let arn = format!("arn:aws:rds:us-east-1:{ACCOUNT}:cluster:prod-pg-03");
    let env = Tag::builder().key("env").value("prod").build();
    rds.add_tags_to_resource().resource_name(&arn).tags(env).send().await.unwrap();

    let mut ids = vec![];
    let mut marker = None;
    let mut pages = 0;
    loop {
        let out = rds.describe_db_clusters().max_records(20).set_marker(marker.clone()).send().await.unwrap();
        pages += 1;
        ids.extend(out.db_clusters().iter().map(|c| c.db_cluster_identifier().unwrap().to_owned()));
        marker = out.marker().map(str::to_owned);
        if marker.is_none() {
            break;
        }
    }
    assert_eq!(ids.len(), before + 25, "{ids:?}");
    assert_eq!(pages, (before + 25).div_ceil(20));

    let one = rds.describe_db_clusters().db_cluster_identifier(&arn).send().await.unwrap();
    let [cluster] = one.db_clusters() else { panic!("one cluster: {one:?}") };
    assert_eq!(cluster.db_cluster_arn(), Some(arn.as_str()));
    let tags: Vec<_> = cluster.tag_list().iter().map(|t| (t.key().unwrap(), t.value().unwrap())).collect();
    assert_eq!(tags, [("env", "prod")]);

    let neptune = Filter::builder().name("engine").values("neptune").build();
    let out = rds.describe_db_clusters().filters(neptune).send().await.unwrap();
    let engines: Vec<_> = out.db_clusters().iter().map(|c| c.engine().unwrap()).collect();
    assert!(!engines.is_empty() && engines.iter().all(|e| *e == "neptune"), "{engines:?}");
    let by_id = Filter::builder().name("db-cluster-id").values("prod-pg-01").values(&arn).values("nope").build();
    let out = rds.describe_db_clusters().filters(by_id).send().await.unwrap();
    assert_eq!(out.db_clusters().len(), 2);

    let err = rds.describe_db_clusters().db_cluster_identifier("missing").send().await.unwrap_err();
    assert_eq!(fault(err), ("DBClusterNotFoundFault".into(), 404));
    let err = rds.describe_db_clusters().max_records(101).send().await.unwrap_err();
    assert_eq!(fault(err), ("InvalidParameterValue".into(), 400));
    let bogus = Filter::builder().name("snapshot-type").values("manual").build();
    let err = rds.describe_db_clusters().filters(bogus).send().await.unwrap_err();
    assert_eq!(fault(err).0, "InvalidParameterValue");
}

/// Automated snapshots come in each cluster's backup window (here every second, not daily),
/// as the newest source a DR plan's next run takes; off by default.
#[tokio::test]
async fn clusters_take_automated_snapshots_in_their_backup_window() {
    let emu = emulator_with(EmulatorConfig { backup_interval_secs: Some(1), ..quiet_config() }).await;
    let rds = rds_client(&emu.endpoint_url(), "us-east-1", "AKIDTEST");
    seed_cluster(&rds, "nightly", "aurora-postgresql", 10, false).await;
    // The same cluster in an emulator as configured by default, created at the same time.
    let quiet = emulator_with(quiet_config()).await;
    let quiet_rds = rds_client(&quiet.endpoint_url(), "us-east-1", "AKIDTEST");
    seed_cluster(&quiet_rds, "nightly", "aurora-postgresql", 10, false).await;
    let automated = || async {
        let out = rds
            .describe_db_cluster_snapshots()
            .db_cluster_identifier("nightly")
            .snapshot_type("automated")
            .send()
            .await
            .unwrap();
        out.db_cluster_snapshots().to_vec()
    };
    assert!(eventually(Duration::from_secs(10), || async { automated().await.len() >= 3 }).await, "three windows pass");
    let snapshots = automated().await;
    let mut times: Vec<_> = snapshots.iter().map(|s| s.snapshot_create_time().unwrap().secs()).collect();
    times.sort();
    times.dedup();
    assert_eq!(times.len(), snapshots.len(), "one snapshot a window: {snapshots:#?}");
    for s in &snapshots {
        assert!(s.db_cluster_snapshot_identifier().unwrap().starts_with("rds:nightly-"), "{s:?}");
        assert_eq!(s.status(), Some("available"));
    }

    // Off by default: the same windows passed, and the cluster has its first snapshot only.
    let first = quiet_rds.describe_db_cluster_snapshots().db_cluster_identifier("nightly").send().await.unwrap();
    assert_eq!(first.db_cluster_snapshots().len(), 1);
}

#[tokio::test]
async fn every_documented_copy_fault_comes_back_with_its_code_and_status() {
    let emu = emulator_with(EmulatorConfig { snapshot_quota: 5, copy_gib_per_sec: 0.001, ..quiet_config() }).await;
    let rds = rds_client(&emu.endpoint_url(), "us-east-1", "AKIDTEST");
    seed_cluster(&rds, "plain", "aurora-mysql", 10, false).await;
    seed_cluster(&rds, "graph", "neptune", 10, false).await;
    seed_snapshot(&rds, "plain", "plain-snap").await;
    seed_snapshot(&rds, "graph", "graph-snap").await;
    let copy = |source: &str, target: &str| {
        rds.copy_db_cluster_snapshot()
            .source_db_cluster_snapshot_identifier(source)
            .target_db_cluster_snapshot_identifier(target)
    };

    copy("plain-snap", "in-progress").send().await.expect("first copy");
    let cases = vec![
        ("target exists", copy("plain-snap", "in-progress"), "DBClusterSnapshotAlreadyExistsFault", 400),
        ("target exists, other case", copy("plain-snap", "IN-PROGRESS"), "DBClusterSnapshotAlreadyExistsFault", 400),
        ("source missing", copy("nope", "t1"), "DBClusterSnapshotNotFoundFault", 404),
        ("source still copying", copy("in-progress", "t2"), "InvalidDBClusterSnapshotStateFault", 400),
        ("unknown KMS key", copy("plain-snap", "t3").kms_key_id("alias/nope"), "InvalidParameterCombination", 400),
        ("bad target identifier", copy("plain-snap", "1-bad"), "InvalidParameterValue", 400),
        (
            "Neptune tag with @",
            copy("graph-snap", "t5").tags(Tag::builder().key("owner").value("a@b").build()),
            "InvalidParameterValue",
            400,
        ),
        (
            "reserved tag prefix",
            copy("plain-snap", "t6").tags(Tag::builder().key("aws:x").value("1").build()),
            "InvalidParameterValue",
            400,
        ),
        ("other region by plain id", copy("orders-aurora-west-snap", "t7"), "DBClusterSnapshotNotFoundFault", 404),
    ];
    for (name, request, code, status) in cases {
        let err = request.send().await.expect_err(name);
        assert_eq!(fault(err), (code.to_owned(), status), "{name}");
    }
    // Neptune ignores a PreSignedUrl (its SDKs add one whenever SourceRegion is given).
    copy("graph-snap", "t4").pre_signed_url("https://example/").send().await.expect("Neptune ignores PreSignedUrl");

    // The unencrypted source refuses any KmsKeyId, so the KMS lookup needs an encrypted one.
    seed_cluster(&rds, "secret", "aurora-mysql", 10, true).await;
    seed_snapshot(&rds, "secret", "secret-snap").await;
    let err = copy("secret-snap", "t8").kms_key_id("alias/nope").send().await.unwrap_err();
    assert_eq!(fault(err), ("KMSKeyNotAccessibleFault".into(), 400));

    emu.emulator.set_cluster_status(ACCOUNT, "us-east-1", "secret", "inaccessible-encryption-credentials");
    let err = copy("secret-snap", "t9").send().await.unwrap_err();
    assert_eq!(fault(err), ("InvalidDBClusterStateFault".into(), 400));

    // Quota of 5 manual snapshots: plain-snap, graph-snap, in-progress, t4, secret-snap.
    let err = copy("plain-snap", "t10").send().await.unwrap_err();
    assert_eq!(fault(err), ("SnapshotQuotaExceeded".into(), 400));
}

#[tokio::test]
async fn deleting_a_copy_in_progress_cancels_it() {
    let emu = emulator_with(EmulatorConfig { copy_gib_per_sec: 0.01, ..quiet_config() }).await;
    let rds = rds_client(&emu.endpoint_url(), "us-east-1", "AKIDTEST");
    seed_cluster(&rds, "src", "docdb", 50, false).await;
    seed_snapshot(&rds, "src", "src-snap").await;
    rds.copy_db_cluster_snapshot()
        .source_db_cluster_snapshot_identifier("src-snap")
        .target_db_cluster_snapshot_identifier("doomed")
        .send()
        .await
        .unwrap();
    let out = rds.delete_db_cluster_snapshot().db_cluster_snapshot_identifier("doomed").send().await.unwrap();
    assert_eq!(out.db_cluster_snapshot().unwrap().db_cluster_snapshot_identifier(), Some("doomed"));
    let err = rds.describe_db_cluster_snapshots().db_cluster_snapshot_identifier("doomed").send().await.unwrap_err();
    assert_eq!(fault(err).0, "DBClusterSnapshotNotFoundFault");
}

#[tokio::test]
async fn a_copy_set_to_fail_ends_in_failed() {
    let faults = Faults {
        throttle: None,
        fail_copies: vec![FailCopies { target_prefix: "fail-".into(), at_percent: 30 }],
        ..Faults::default()
    };
    let emu = emulator_with(EmulatorConfig { copy_gib_per_sec: 100.0, faults, ..EmulatorConfig::default() }).await;
    let rds = rds_client(&emu.endpoint_url(), "us-east-1", "AKIDTEST");
    seed_cluster(&rds, "src", "mysql", 100, false).await;
    seed_snapshot(&rds, "src", "src-snap").await;
    rds.copy_db_cluster_snapshot()
        .source_db_cluster_snapshot_identifier("src-snap")
        .target_db_cluster_snapshot_identifier("fail-copy")
        .send()
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let (status, percent) = loop {
        let out = rds.describe_db_cluster_snapshots().db_cluster_snapshot_identifier("fail-copy").send().await.unwrap();
        let s = &out.db_cluster_snapshots()[0];
        if s.status() != Some("copying") || tokio::time::Instant::now() > deadline {
            break (s.status().unwrap().to_owned(), s.percent_progress().unwrap());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((status.as_str(), percent), ("failed", 30));
}

#[tokio::test]
async fn throttling_and_injected_failures_look_like_rds() {
    let faults = Faults { throttle: Some(Throttle { burst: 2, per_second: 0.01 }), ..Faults::default() };
    let emu = emulator_with(EmulatorConfig { faults, ..EmulatorConfig::default() }).await;
    let rds = rds_client(&emu.endpoint_url(), "us-east-1", "AKIDTEST");
    rds.describe_db_cluster_snapshots().send().await.unwrap();
    rds.describe_db_cluster_snapshots().send().await.unwrap();
    let err = rds.describe_db_cluster_snapshots().send().await.unwrap_err();
    assert_eq!(fault(err), ("ThrottlingException".into(), 400));
    // Another region has its own bucket.
    rds_client(&emu.endpoint_url(), "us-west-2", "AKIDTEST").describe_db_cluster_snapshots().send().await.unwrap();

    emu.emulator.set_faults(Faults { throttle: None, internal_failure_rate: 1.0, ..Faults::default() }).unwrap();
    let err = rds.describe_db_cluster_snapshots().send().await.unwrap_err();
    assert_eq!(fault(err), ("InternalFailure".into(), 500));
    let calls = emu.emulator.calls();
    assert_eq!(calls.get("DescribeDBClusterSnapshots"), 5);
    assert_eq!((calls.throttled, calls.internal_failures), (1, 1));
}

#[tokio::test]
async fn cross_region_and_shared_snapshots_copy_by_arn() {
    let emu = emulator_with(EmulatorConfig { seed: true, ..quiet_config() }).await;
    let west = rds_client(&emu.endpoint_url(), "us-west-2", "AKIDTEST");
    let east_arn = "arn:aws:rds:us-east-1:123456789012:cluster-snapshot:billing-pg-daily";
    let out = west
        .copy_db_cluster_snapshot()
        .source_db_cluster_snapshot_identifier(east_arn)
        .target_db_cluster_snapshot_identifier("billing-west")
        .send()
        .await
        .unwrap();
    let copy = out.db_cluster_snapshot().unwrap();
    assert_eq!(
        copy.db_cluster_snapshot_arn(),
        Some("arn:aws:rds:us-west-2:123456789012:cluster-snapshot:billing-west")
    );

    // An encrypted cross-region copy needs a key in the destination region.
    let enc = "arn:aws:rds:us-east-1:123456789012:cluster-snapshot:orders-aurora-2026-11-20";
    let err = west
        .copy_db_cluster_snapshot()
        .source_db_cluster_snapshot_identifier(enc)
        .target_db_cluster_snapshot_identifier("o1")
        .send()
        .await
        .unwrap_err();
    assert_eq!(fault(err).0, "InvalidParameterCombination");
    let out = west
        .copy_db_cluster_snapshot()
        .source_db_cluster_snapshot_identifier(enc)
        .target_db_cluster_snapshot_identifier("o1")
        .kms_key_id("alias/snapgate-backup")
        .send()
        .await
        .unwrap();
    assert!(
        out.db_cluster_snapshot().unwrap().kms_key_id().unwrap().starts_with("arn:aws:kms:us-west-2:123456789012:key/")
    );

    // A DocumentDB copy across regions needs a presigned URL.
    let docdb = "arn:aws:rds:us-east-1:123456789012:cluster-snapshot:catalog-docdb-snap";
    let err = west
        .copy_db_cluster_snapshot()
        .source_db_cluster_snapshot_identifier(docdb)
        .target_db_cluster_snapshot_identifier("d1")
        .kms_key_id("alias/snapgate-backup")
        .send()
        .await
        .unwrap_err();
    assert!(fault(err).0 == "InvalidParameterValue");

    let east = rds_client(&emu.endpoint_url(), "us-east-1", "AKIDTEST");
    let shared = format!("arn:aws:rds:us-east-1:{SEED_PARTNER_ACCOUNT}:cluster-snapshot:partner-aurora-share");
    east.copy_db_cluster_snapshot()
        .source_db_cluster_snapshot_identifier(&shared)
        .target_db_cluster_snapshot_identifier("from-partner")
        .send()
        .await
        .unwrap();
    let shared_enc = format!("arn:aws:rds:us-east-1:{SEED_PARTNER_ACCOUNT}:cluster-snapshot:partner-vault-share");
    let err = east
        .copy_db_cluster_snapshot()
        .source_db_cluster_snapshot_identifier(&shared_enc)
        .target_db_cluster_snapshot_identifier("vault")
        .send()
        .await
        .unwrap_err();
    assert_eq!(fault(err).0, "InvalidParameterCombination", "a shared encrypted snapshot needs a KmsKeyId");
    let err = west
        .copy_db_cluster_snapshot()
        .source_db_cluster_snapshot_identifier(&shared_enc)
        .target_db_cluster_snapshot_identifier("vault")
        .kms_key_id("alias/snapgate-backup")
        .send()
        .await
        .unwrap_err();
    assert_eq!(fault(err).0, "InvalidParameterCombination", "a shared encrypted snapshot stays in its region");

    // The partner sees its own snapshots; the default account sees them only as shared.
    let partner = rds_client(&emu.endpoint_url(), "us-east-1", SEED_PARTNER_ACCESS_KEY);
    let own = partner.describe_db_cluster_snapshots().send().await.unwrap();
    assert_eq!(own.db_cluster_snapshots().len(), 2);
    let visible =
        east.describe_db_cluster_snapshots().include_shared(true).snapshot_type("shared").send().await.unwrap();
    assert_eq!(visible.db_cluster_snapshots().len(), 2);
    // An unshared snapshot of another account is simply not found.
    let err = partner
        .copy_db_cluster_snapshot()
        .source_db_cluster_snapshot_identifier("arn:aws:rds:us-east-1:123456789012:cluster-snapshot:billing-pg-daily")
        .target_db_cluster_snapshot_identifier("steal")
        .send()
        .await
        .unwrap_err();
    assert_eq!(fault(err).0, "DBClusterSnapshotNotFoundFault");
}

#[tokio::test]
async fn tags_are_added_listed_and_copied() {
    let emu = emulator_with(quiet_config()).await;
    let rds = rds_client(&emu.endpoint_url(), "us-east-1", "AKIDTEST");
    seed_cluster(&rds, "src", "aurora-mysql", 10, false).await;
    seed_snapshot(&rds, "src", "src-snap").await;
    let arn = "arn:aws:rds:us-east-1:123456789012:cluster-snapshot:src-snap";
    rds.add_tags_to_resource()
        .resource_name(arn)
        .tags(Tag::builder().key("team").value("db").build())
        .send()
        .await
        .unwrap();
    let out = rds
        .copy_db_cluster_snapshot()
        .source_db_cluster_snapshot_identifier("src-snap")
        .target_db_cluster_snapshot_identifier("tagged")
        .copy_tags(true)
        .tags(Tag::builder().key("purpose").value("dr").build())
        .send()
        .await
        .unwrap();
    let tags: Vec<_> =
        out.db_cluster_snapshot().unwrap().tag_list().iter().map(|t| (t.key().unwrap(), t.value().unwrap())).collect();
    assert_eq!(tags, vec![("team", "db"), ("purpose", "dr")]);
    let listed = rds
        .list_tags_for_resource()
        .resource_name("arn:aws:rds:us-east-1:123456789012:cluster-snapshot:tagged")
        .send()
        .await
        .unwrap();
    assert_eq!(listed.tag_list().len(), 2);
}

#[tokio::test]
async fn malformed_requests_get_aws_errors_not_panics() {
    let emu = emulator_with(quiet_config()).await;
    let addr = emu.addr();
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("missing Action", query_post("Version=2014-10-31"), 400, "MissingAction"),
        ("missing Version", query_post("Action=DescribeDBClusterSnapshots"), 400, "MissingParameter"),
        ("bad Version", query_post("Action=DescribeDBClusterSnapshots&Version=2013-01-10"), 400, "InvalidAction"),
        ("unknown action", query_post("Action=RebootDBCluster&Version=2014-10-31"), 400, "InvalidAction"),
        ("bad escape", query_post("Action=DescribeDBClusterSnapshots&Version=2014-10-31&Marker=%zz"), 404, "MalformedQueryString"),
        ("unknown parameter", query_post("Action=DescribeDBClusterSnapshots&Version=2014-10-31&Bogus=1"), 400, "InvalidParameterValue"),
        ("repeated parameter", query_post("Action=DescribeDBClusterSnapshots&Version=2014-10-31&Version=2014-10-31"), 400, "InvalidParameterValue"),
        ("bad boolean", query_post("Action=DescribeDBClusterSnapshots&Version=2014-10-31&IncludeShared=maybe"), 400, "InvalidParameterValue"),
        ("bad list index", query_post("Action=DescribeDBClusterSnapshots&Version=2014-10-31&Filters.Filter.x.Name=engine"), 400, "InvalidParameterValue"),
        ("missing required", query_post("Action=CopyDBClusterSnapshot&Version=2014-10-31"), 400, "MissingParameter"),
        (
            "no credentials",
            b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 46\r\nconnection: close\r\n\r\nAction=DescribeDBClusterSnapshots&Version=2014".to_vec(),
            403,
            "MissingAuthenticationToken",
        ),
    ];
    for (name, request, status, code) in cases {
        let (got_status, body) = raw_http(addr, &request).await;
        assert_eq!(got_status, status, "{name}: {body}");
        assert!(body.contains(&format!("<Code>{code}</Code>")), "{name}: {body}");
        assert!(body.contains("<RequestId>"), "{name}: {body}");
    }

    let body = b"Action=DescribeDBClusterSnapshots&Version=2014-10-31&Marker=\xff\xfe";
    let mut request = String::from_utf8(query_post(""))
        .unwrap()
        .replace("content-length: 0", &format!("content-length: {}", body.len()))
        .into_bytes();
    request.extend_from_slice(body);
    let (status, text) = raw_http(addr, &request).await;
    assert_eq!(status, 404, "{text}");
    assert!(text.contains("MalformedQueryString"), "{text}");

    let huge = format!("Action=DescribeDBClusterSnapshots&Version=2014-10-31&Marker={}", "a".repeat(2 << 20));
    let (status, text) = raw_http(addr, &query_post(&huge)).await;
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("RequestEntityTooLarge"));

    // The emulator still answers after all of that.
    let rds = rds_client(&emu.endpoint_url(), "us-east-1", "AKIDTEST");
    rds.describe_db_cluster_snapshots().send().await.expect("still serving");
}
