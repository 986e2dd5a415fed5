//! The real gateway on port 0, called over gRPC, against the emulator and against moto's server.
// A test reports failure by panicking: unwrapping in its helpers is that report.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::gateway;
use common::*;
use snapgate_emulator::{EmulatorConfig, Faults, Throttle};
use snapgate_proto::{self as pb, CopyClusterSnapshotRequest, GetCopyRequest};
use tonic::Code;
use tonic_types::StatusExt;

#[tokio::test]
async fn a_copy_starts_and_get_copy_reports_it() {
    let (_emu, mut gw) = setup(seeded(), |_| {}).await;
    let mut req = copy_req("billing-pg-daily", "Billing-Copy");
    req.tags = vec![pb::Tag { key: "purpose".into(), value: "dr".into() }];
    let copy = gw.client.copy_cluster_snapshot(req).await.expect("copy starts").into_inner();
    assert_eq!(copy.name, "arn:aws:rds:us-east-1:123456789012:cluster-snapshot:billing-copy");
    assert_eq!(copy.state(), pb::copy::State::Copying);
    assert_eq!(copy.aws_status, "copying");
    assert_eq!(copy.engine, "aurora-postgresql");
    assert_eq!(copy.source_snapshot_arn, "arn:aws:rds:us-east-1:123456789012:cluster-snapshot:billing-pg-daily");
    assert_eq!((copy.region.as_str(), copy.account_id.as_str()), ("us-east-1", ACCOUNT));
    assert_eq!(copy.tags, vec![pb::Tag { key: "purpose".into(), value: "dr".into() }]);
    assert!(copy.create_time.is_some());

    let by_name =
        gw.client.get_copy(GetCopyRequest { name: copy.name.clone(), fresh: false }).await.unwrap().into_inner();
    assert_eq!(by_name.name, copy.name);
    let by_id =
        gw.client.get_copy(GetCopyRequest { name: "billing-copy".into(), fresh: false }).await.unwrap().into_inner();
    assert_eq!(by_id.name, copy.name);
}

#[tokio::test]
async fn aws_faults_map_to_grpc_codes_with_error_info() {
    let (emu, mut gw) = setup(EmulatorConfig { snapshot_quota: 8, copy_gib_per_sec: 0.001, ..seeded() }, |_| {}).await;
    gw.client.copy_cluster_snapshot(copy_req("billing-pg-daily", "first")).await.unwrap();

    let cases = [
        // The same target from another source is a conflict (the same source is a retry).
        (copy_req("ledger-mysql-snap", "first"), Code::AlreadyExists, "DBClusterSnapshotAlreadyExistsFault"),
        (copy_req("no-such-snapshot", "t1"), Code::NotFound, "DBClusterSnapshotNotFoundFault"),
        (
            CopyClusterSnapshotRequest {
                kms_key_id: "alias/missing".into(),
                ..copy_req("orders-aurora-2026-11-20", "t3")
            },
            Code::FailedPrecondition,
            "KMSKeyNotAccessibleFault",
        ),
    ];
    for (req, code, reason) in cases {
        let status = gw.client.copy_cluster_snapshot(req).await.unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
        let info = status.get_error_details().error_info().cloned().expect("ErrorInfo");
        assert_eq!(info.reason, reason);
        assert_eq!(info.domain, "rds.amazonaws.com");
        assert!(info.metadata.get("aws_request_id").is_some_and(|id| !id.is_empty()), "{info:?}");
    }

    // The seed has 6 manual snapshots of the default account in us-east-1 and one copy was
    // made: the quota of 8 allows one more.
    gw.client.copy_cluster_snapshot(copy_req("billing-pg-daily", "second")).await.unwrap();
    let status = gw.client.copy_cluster_snapshot(copy_req("billing-pg-daily", "third")).await.unwrap_err();
    assert_eq!((status.code(), error_reason(&status).as_str()), (Code::ResourceExhausted, "SnapshotQuotaExceeded"));

    emu.emulator.set_cluster_status(ACCOUNT, "us-east-1", "ledger-mysql", "inaccessible-encryption-credentials");
    let status = gw.client.copy_cluster_snapshot(copy_req("ledger-mysql-snap", "t4")).await.unwrap_err();
    assert_eq!(
        (status.code(), error_reason(&status).as_str()),
        (Code::FailedPrecondition, "InvalidDBClusterStateFault")
    );

    let status = gw.client.get_copy(GetCopyRequest { name: "never-made".into(), fresh: false }).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}

#[tokio::test]
async fn invalid_requests_are_refused_before_any_aws_call() {
    let (emu, mut gw) = setup(seeded(), |_| {}).await;
    let cases = [
        (copy_req("", "target"), vec!["source_snapshot"]),
        (copy_req("billing-pg-daily", ""), vec!["target_snapshot_id"]),
        (copy_req("billing-pg-daily", "1-starts-with-digit"), vec!["target_snapshot_id"]),
        (copy_req("billing-pg-daily", "double--hyphen"), vec!["target_snapshot_id"]),
        (copy_req("billing-pg-daily", &"a".repeat(64)), vec!["target_snapshot_id"]),
        (copy_req("arn:aws:rds:us-east-1:123456789012:cluster:not-a-snapshot", "t"), vec!["source_snapshot"]),
        (
            CopyClusterSnapshotRequest { destination_region: "moon-1".into(), ..copy_req("s", "t") },
            vec!["destination_region"],
        ),
        (CopyClusterSnapshotRequest { kms_key_id: "not a key".into(), ..copy_req("s", "t") }, vec!["kms_key_id"]),
        (
            CopyClusterSnapshotRequest { destination_account: "12".into(), ..copy_req("s", "t") },
            vec!["destination_account"],
        ),
        (
            CopyClusterSnapshotRequest { destination_account: "999999999999".into(), ..copy_req("s", "t") },
            vec!["destination_account"],
        ),
    ];
    for (req, fields) in cases {
        let status = gw.client.copy_cluster_snapshot(req.clone()).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{req:?}");
        let details = status.get_error_details();
        let got: Vec<&str> =
            details.bad_request().expect("BadRequest").field_violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(got, fields, "{req:?}");
    }
    let status = gw.client.get_copy(GetCopyRequest { name: String::new(), fresh: false }).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(emu.emulator.calls().calls.values().sum::<u64>(), 0, "no AWS call was made");
}

#[tokio::test]
async fn the_callers_deadline_bounds_the_aws_call() {
    let faults = Faults { throttle: None, latency_ms: 3000, ..Faults::default() };
    let (_emu, mut gw) = setup(EmulatorConfig { faults, ..seeded() }, |_| {}).await;
    let mut request = tonic::Request::new(GetCopyRequest { name: "billing-pg-daily".into(), fresh: false });
    // Sent as the header alone: a client-side timer would fire first and hide the server's answer.
    request.metadata_mut().insert("grpc-timeout", "300m".parse().unwrap());
    let started = std::time::Instant::now();
    let status = gw.client.get_copy(request).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "answered before the AWS call would have");
}

#[tokio::test]
async fn throttling_that_outlives_the_retries_is_unavailable_with_retry_info() {
    let faults = Faults { throttle: Some(Throttle { burst: 1, per_second: 0.001 }), ..Faults::default() };
    let (emu, mut gw) = setup(EmulatorConfig { faults, ..seeded() }, |_| {}).await;
    gw.client
        .get_copy(GetCopyRequest { name: "billing-pg-daily".into(), fresh: false })
        .await
        .expect("first call fits the burst");
    // Another snapshot: a read of the first one within the freshness window costs no call.
    let status =
        gw.client.get_copy(GetCopyRequest { name: "ledger-mysql-snap".into(), fresh: false }).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(error_reason(&status), "ThrottlingException");
    assert!(status.get_error_details().retry_info().is_some());
    assert_eq!(emu.emulator.calls().get("DescribeDBClusterSnapshots"), 3, "one call, then two attempts");
}

#[tokio::test]
async fn unreachable_aws_is_unavailable() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut gw = gateway::start(gateway::settings(), &format!("http://{closed}"), "AKIDTEST").await;
    let status = gw.client.get_copy(GetCopyRequest { name: "anything".into(), fresh: false }).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
}

#[tokio::test]
async fn the_gateway_copies_through_motos_rds_api() {
    let moto = common::moto::start().await;
    let rds = rds_client(&moto.endpoint, "us-east-1", "AKIDTEST");
    rds.create_db_cluster()
        .db_cluster_identifier("moto-src")
        .engine("neptune")
        .master_username("admin")
        .master_user_password("password123")
        .send()
        .await
        .unwrap();
    rds.create_db_cluster_snapshot()
        .db_cluster_identifier("moto-src")
        .db_cluster_snapshot_identifier("moto-snap")
        .send()
        .await
        .unwrap();

    let mut gw = gateway::start(gateway::settings(), &moto.endpoint, "AKIDTEST").await;
    let copy = gw.client.copy_cluster_snapshot(copy_req("moto-snap", "moto-copy")).await.unwrap().into_inner();
    assert_eq!(copy.snapshot_id, "moto-copy");
    assert_eq!(copy.engine, "neptune");
    // moto finishes copies at once.
    let got = gw.client.get_copy(GetCopyRequest { name: copy.name.clone(), fresh: false }).await.unwrap().into_inner();
    assert_eq!(got.state(), pb::copy::State::Available);

    let again = gw.client.copy_cluster_snapshot(copy_req("moto-snap", "moto-copy")).await.unwrap().into_inner();
    assert_eq!(again.name, copy.name, "a retry returns the same copy");
    rds.create_db_cluster_snapshot()
        .db_cluster_identifier("moto-src")
        .db_cluster_snapshot_identifier("moto-other")
        .send()
        .await
        .unwrap();
    let status = gw.client.copy_cluster_snapshot(copy_req("moto-other", "moto-copy")).await.unwrap_err();
    assert_eq!(
        (status.code(), error_reason(&status).as_str()),
        (Code::AlreadyExists, "DBClusterSnapshotAlreadyExistsFault")
    );
    let status = gw.client.copy_cluster_snapshot(copy_req("missing", "x")).await.unwrap_err();
    assert_eq!((status.code(), error_reason(&status).as_str()), (Code::NotFound, "DBClusterSnapshotNotFoundFault"));
}

#[tokio::test]
async fn metrics_move_with_calls() {
    let (_emu, mut gw) = setup(seeded(), |_| {}).await;
    let admin = gw.admin.expect("admin listener");
    let scrape = || async move {
        let (status, body) = raw_http(admin, b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await;
        assert_eq!(status, 200);
        body
    };
    let before = scrape().await;
    assert!(!before.contains(r#"method="CopyClusterSnapshot""#), "{before}");
    gw.client.copy_cluster_snapshot(copy_req("billing-pg-daily", "metered")).await.unwrap();
    gw.client.copy_cluster_snapshot(copy_req("", "x")).await.unwrap_err();
    let after = scrape().await;
    assert!(after.contains(r#"snapgate_rpc_requests_total{method="CopyClusterSnapshot",code="Ok"} 1"#), "{after}");
    assert!(after.contains(r#"snapgate_rpc_requests_total{method="CopyClusterSnapshot",code="InvalidArgument"} 1"#));
    assert!(after.contains(r#"snapgate_aws_calls_total{action="CopyDBClusterSnapshot",outcome="ok"} 1"#));
    assert!(after.contains(r#"snapgate_aws_calls_total{action="DescribeDBClusterSnapshots",outcome="ok"} 1"#));
    // A call refused before any handler is counted too, by the layer outside authentication.
    let mut stranger = gateway::client_with(gw.channel.clone(), None);
    stranger.get_copy(GetCopyRequest { name: "metered".into(), fresh: false }).await.unwrap_err();
    let refused = scrape().await;
    assert!(refused.contains(r#"snapgate_rpc_requests_total{method="GetCopy",code="Unauthenticated"} 1"#), "{refused}");
    let (status, body) = raw_http(admin, b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await;
    assert_eq!((status, body.trim()), (200, "SERVING"));
}

#[tokio::test]
async fn every_region_a_request_names_is_checked_before_any_aws_call() {
    let (emu, mut gw) = setup(seeded(), |_| {}).await;
    emu.emulator.reset_calls();
    let with = |f: &dyn Fn(&mut pb::CopyClusterSnapshotRequest)| {
        let mut r = copy_req("billing-pg-daily", "regions");
        f(&mut r);
        r
    };
    let cases = [
        (
            with(&|r| r.source_snapshot = "arn:aws:rds:us-east!:123456789012:cluster-snapshot:s".into()),
            "source_snapshot",
        ),
        (
            with(&|r| r.source_snapshot = "arn:aws:rds:mars-north-9:123456789012:cluster-snapshot:s".into()),
            "source_snapshot",
        ),
        (with(&|r| r.destination_region = "mars-north-9".into()), "destination_region"),
        (with(&|r| r.destination_region = "US-EAST-1".into()), "destination_region"),
        (with(&|r| r.source_region = "mars-north-9".into()), "source_region"),
        (with(&|r| r.destination_region = "cn-north-1".into()), "destination_region"),
    ];
    for (request, field) in cases {
        let status = gw.client.copy_cluster_snapshot(request.clone()).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{request:?}: {status:?}");
        let violations = status.get_error_details().bad_request().cloned().unwrap().field_violations;
        assert!(violations.iter().any(|v| v.field == field), "{field} in {violations:?}");
    }
    let status = gw
        .client
        .get_copy(GetCopyRequest {
            name: "arn:aws:rds:mars-north-9:123456789012:cluster-snapshot:c".into(),
            fresh: false,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(emu.emulator.calls().calls.values().sum::<u64>(), 0, "no AWS call for any of them");
}
