//! WatchCopy, GetCopy and CancelCopy against the emulator, whose copies take time.
// A test reports failure by panicking: unwrapping in its helpers is that report.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::gateway::Gateway;
use common::*;
use snapgate_emulator::{EmulatorConfig, FailCopies, Faults};
use snapgate_proto::{
    self as pb, CancelCopyRequest, CopyClusterSnapshotRequest, CopyEvent, GetCopyRequest, WatchCopyRequest,
};
use tonic::Code;
use tonic_types::StatusExt;

/// The seeded emulator, copying at `gib_per_sec`.
fn copying_at(gib_per_sec: f64) -> EmulatorConfig {
    EmulatorConfig { copy_gib_per_sec: gib_per_sec, ..seeded() }
}

async fn start_copy(gw: &mut Gateway, source: &str, target: &str) -> pb::Copy {
    let req = CopyClusterSnapshotRequest {
        source_snapshot: source.into(),
        target_snapshot_id: target.into(),
        ..Default::default()
    };
    gw.client.copy_cluster_snapshot(req).await.expect("copy starts").into_inner()
}

async fn watch(gw: &mut Gateway, name: &str) -> tonic::Streaming<CopyEvent> {
    gw.client.watch_copy(WatchCopyRequest { name: name.into() }).await.expect("watch opens").into_inner()
}

/// Reads events until the stream ends (OK) or errs, within 30 s.
async fn drain(stream: &mut tonic::Streaming<CopyEvent>) -> (Vec<CopyEvent>, Option<tonic::Status>) {
    let mut events = vec![];
    let read = async {
        loop {
            match stream.message().await {
                Ok(Some(e)) => events.push(e),
                Ok(None) => return None,
                Err(status) => return Some(status),
            }
        }
    };
    let end = tokio::time::timeout(Duration::from_secs(30), read).await.expect("the stream ends within 30 s");
    (events, end)
}

fn state_of(e: &CopyEvent) -> pb::copy::State {
    e.copy.as_ref().expect("events carry the copy").state()
}

#[tokio::test]
async fn a_copy_streams_from_copying_to_available_with_rising_percentages() {
    let (_emu, mut gw) = setup(copying_at(60.0), |_| {}).await;
    let copy = start_copy(&mut gw, "billing-pg-daily", "streamed").await; // 120 GiB: 2 s
    let mut stream = watch(&mut gw, &copy.name).await;
    let (events, end) = drain(&mut stream).await;
    assert!(end.is_none(), "ends with OK: {end:?}");
    let first = &events[0];
    assert_eq!(first.change(), pb::copy_event::Change::Initial);
    assert_eq!(state_of(first), pb::copy::State::Copying);
    let last = events.last().unwrap();
    assert!(last.terminal);
    assert_eq!(last.change(), pb::copy_event::Change::Terminal);
    assert_eq!((state_of(last), last.copy.as_ref().unwrap().percent_progress), (pb::copy::State::Available, 100));
    let percents: Vec<i32> = events.iter().map(|e| e.copy.as_ref().unwrap().percent_progress).collect();
    assert!(percents.windows(2).all(|w| w[0] <= w[1]), "{percents:?}");
    assert!(events.iter().any(|e| e.change() == pb::copy_event::Change::Progress), "{percents:?}");
    assert!(events.iter().all(|e| e.observe_time.is_some()));
}

#[tokio::test]
async fn cancel_deletes_a_copy_in_progress_and_watchers_see_it_cancelled() {
    let (emu, mut gw) = setup(copying_at(0.01), |_| {}).await;
    let copy = start_copy(&mut gw, "billing-pg-daily", "to-cancel").await;
    let mut stream = watch(&mut gw, &copy.name).await;
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(state_of(&first), pb::copy::State::Copying);

    let cancelled = gw.client.cancel_copy(CancelCopyRequest { name: copy.name.clone() }).await.unwrap().into_inner();
    assert_eq!(cancelled.state(), pb::copy::State::Cancelled);
    let (events, end) = drain(&mut stream).await;
    assert!(end.is_none(), "{end:?}");
    let last = events.last().expect("a terminal event");
    assert!(last.terminal);
    assert_eq!(state_of(last), pb::copy::State::Cancelled);

    // The snapshot is gone from AWS; the copy's job remembers how it ended.
    let after =
        gw.client.get_copy(GetCopyRequest { name: copy.name.clone(), fresh: false }).await.unwrap().into_inner();
    assert_eq!(after.state(), pb::copy::State::Cancelled);

    // A finished snapshot is never deleted.
    emu.emulator.reset_calls();
    let status = gw.client.cancel_copy(CancelCopyRequest { name: "ledger-mysql-snap".into() }).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(status.get_error_details().bad_request().unwrap().field_violations[0].field, "name");
    assert_eq!(emu.emulator.calls().get("DeleteDBClusterSnapshot"), 0);
}

#[tokio::test]
async fn a_failing_copy_ends_the_stream_with_a_failed_event() {
    let faults = Faults {
        throttle: None,
        fail_copies: vec![FailCopies { target_prefix: "doomed".into(), at_percent: 20 }],
        ..Faults::default()
    };
    let (_emu, mut gw) =
        setup(EmulatorConfig { seed: true, copy_gib_per_sec: 60.0, faults, ..EmulatorConfig::default() }, |_| {}).await;
    let copy = start_copy(&mut gw, "billing-pg-daily", "doomed-copy").await;
    let (events, end) = drain(&mut watch(&mut gw, &copy.name).await).await;
    assert!(end.is_none());
    let last = events.last().unwrap();
    assert_eq!((state_of(last), last.copy.as_ref().unwrap().percent_progress), (pb::copy::State::Failed, 20));
}

#[tokio::test]
async fn a_snapshot_deleted_under_a_watcher_is_reported_deleted() {
    let (emu, mut gw) = setup(copying_at(0.01), |_| {}).await;
    let copy = start_copy(&mut gw, "billing-pg-daily", "vanishing").await;
    let mut stream = watch(&mut gw, &copy.name).await;
    stream.message().await.unwrap().unwrap();
    // Someone else deletes it, straight through the AWS API.
    let rds = rds_client(&emu.endpoint_url(), "us-east-1", "AKIDTEST");
    rds.delete_db_cluster_snapshot().db_cluster_snapshot_identifier("vanishing").send().await.unwrap();
    let (events, end) = drain(&mut stream).await;
    assert!(end.is_none());
    assert_eq!(state_of(events.last().unwrap()), pb::copy::State::Deleted);
}

#[tokio::test]
async fn watching_a_missing_copy_is_not_found() {
    let (_emu, mut gw) = setup(copying_at(1.0), |_| {}).await;
    let status = gw.client.watch_copy(WatchCopyRequest { name: "no-such-copy".into() }).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = gw.client.watch_copy(WatchCopyRequest { name: "bad--name".into() }).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn a_client_that_goes_away_frees_its_watcher() {
    let (_emu, mut gw) = setup(copying_at(0.01), |_| {}).await;
    let copy = start_copy(&mut gw, "billing-pg-daily", "abandoned").await;
    let mut stream = watch(&mut gw, &copy.name).await;
    stream.message().await.unwrap().unwrap();
    assert_eq!((gw.hub.open_streams(), gw.hub.watched_snapshots()), (1, 1));
    drop(stream);
    let hub = gw.hub.clone();
    let released = eventually(Duration::from_secs(5), || {
        let held = hub.open_streams();
        async move { held == 0 }
    });
    assert!(released.await, "watcher still held");
    // The gateway itself follows its copy to the end: that one subscription stays.
    assert_eq!(hub.watched_snapshots(), 1);
}

#[tokio::test]
async fn transient_aws_errors_and_throttling_do_not_end_the_stream() {
    let (emu, mut gw) = setup(copying_at(40.0), |_| {}).await; // 120 GiB: 3 s
    let copy = start_copy(&mut gw, "billing-pg-daily", "bumpy").await;
    let mut stream = watch(&mut gw, &copy.name).await;
    stream.message().await.unwrap().unwrap();
    emu.emulator.set_faults(Faults { throttle: None, internal_failure_rate: 1.0, ..Faults::default() }).unwrap();
    // Several poll rounds fail before AWS recovers.
    let failed = eventually(Duration::from_secs(10), || {
        let n = emu.emulator.calls().internal_failures;
        async move { n >= 3 }
    });
    assert!(failed.await, "the pollers kept polling through the failures");
    emu.emulator
        .set_faults(Faults {
            throttle: Some(snapgate_emulator::Throttle { burst: 1, per_second: 0.01 }),
            ..Faults::default()
        })
        .unwrap();
    let throttled = eventually(Duration::from_secs(10), || {
        let n = emu.emulator.calls().throttled;
        async move { n >= 2 }
    });
    assert!(throttled.await, "the pollers kept polling while throttled");
    emu.emulator.set_faults(Faults { throttle: None, ..Faults::default() }).unwrap();
    let (events, end) = drain(&mut stream).await;
    assert!(end.is_none(), "{end:?}");
    assert_eq!(state_of(events.last().unwrap()), pb::copy::State::Available);
    let calls = emu.emulator.calls();
    assert!(calls.internal_failures > 0 && calls.throttled > 0, "{calls:?}");
}

#[tokio::test]
async fn errors_that_persist_end_the_stream_unavailable_with_retry_info() {
    let (emu, mut gw) = setup(copying_at(0.01), |_| {}).await;
    let copy = start_copy(&mut gw, "billing-pg-daily", "stuck").await;
    let mut stream = watch(&mut gw, &copy.name).await;
    stream.message().await.unwrap().unwrap();
    emu.emulator.set_faults(Faults { throttle: None, internal_failure_rate: 1.0, ..Faults::default() }).unwrap();
    let (_, end) = drain(&mut stream).await; // error budget: 5 s
    let status = end.expect("the stream ends with an error");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.get_error_details().retry_info().is_some());
}

#[tokio::test]
async fn two_hundred_watchers_of_twenty_copies_cost_one_describe_per_round() {
    let (emu, mut gw) = setup(copying_at(0.001), |_| {}).await;
    let mut names = vec![];
    for i in 0..20 {
        names.push(start_copy(&mut gw, "billing-pg-daily", &format!("fanout-{i}")).await.name);
    }
    let mut streams = vec![];
    for i in 0..200 {
        let mut stream = watch(&mut gw, &names[i % 20]).await;
        stream.message().await.unwrap().unwrap();
        streams.push(stream);
    }
    assert_eq!((gw.hub.open_streams(), gw.hub.watched_snapshots()), (200, 20));
    emu.emulator.reset_calls();
    let rounds_before = gw.hub.poll_rounds();
    let hub = gw.hub.clone();
    let polled = eventually(Duration::from_secs(30), || {
        let rounds = hub.poll_rounds();
        async move { rounds >= rounds_before + 10 }
    });
    assert!(polled.await, "ten poll rounds");
    let rounds = gw.hub.poll_rounds() - rounds_before;
    let describes = emu.emulator.calls().get("DescribeDBClusterSnapshots");
    // A round counts itself when it starts and the emulator when its call lands: the round in
    // flight at either end may be counted on one side only. Were the cost per watcher, it
    // would be 200 describes a round.
    assert!(describes.abs_diff(rounds) <= 1, "{describes} describes in {rounds} rounds");
    drop(streams);
}

#[tokio::test]
async fn openings_past_a_connections_waiting_limit_hold_its_reading_and_all_open() {
    // Two turns for the whole gateway, and 400 openings at once on the tests' one connection:
    // far more than MAX_WAITING_OPENINGS (64) wait, so the connection is not read further
    // until some have their turns, and yet every one opens.
    let (_emu, mut gw) = setup(copying_at(0.001), |s| s.server.max_stream_openings = 2).await;
    let copy = start_copy(&mut gw, "billing-pg-daily", "held-openings").await;
    let openings = (0..400).map(|_| {
        let mut client = gw.client.clone();
        let name = copy.name.clone();
        async move { client.watch_copy(WatchCopyRequest { name }).await.map(|r| r.into_inner()) }
    });
    let opened = tokio::time::timeout(Duration::from_secs(60), futures_util::future::join_all(openings))
        .await
        .expect("every opening is answered within a minute");
    let streams: Vec<_> = opened.into_iter().collect::<Result<_, _>>().expect("every stream opens");
    assert_eq!(gw.hub.open_streams(), 400);
    let metrics = common::serve::Process::probe(gw.admin).metrics().await;
    assert!(
        metrics.contains(r#"snapgate_connections_paced_total{listener="grpc",reason="openings"}"#),
        "the connection was held back for its waiting openings"
    );
    drop(streams);
}

#[tokio::test]
async fn streams_over_the_cap_are_resource_exhausted() {
    let (_emu, mut gw) = setup(copying_at(0.01), |s| s.watch.max_streams = 2).await;
    let copy = start_copy(&mut gw, "billing-pg-daily", "capped").await;
    let _a = watch(&mut gw, &copy.name).await;
    let _b = watch(&mut gw, &copy.name).await;
    let status = gw.client.watch_copy(WatchCopyRequest { name: copy.name.clone() }).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
}

#[tokio::test]
async fn idle_streams_get_heartbeats_and_honour_the_callers_deadline() {
    let (_emu, mut gw) = setup(copying_at(0.0001), |s| s.watch.heartbeat_secs = 1).await;
    let copy = start_copy(&mut gw, "billing-pg-daily", "idle").await;
    let mut request = tonic::Request::new(WatchCopyRequest { name: copy.name.clone() });
    request.metadata_mut().insert("grpc-timeout", "2500m".parse().unwrap());
    let mut stream = gw.client.watch_copy(request).await.unwrap().into_inner();
    let (events, end) = drain(&mut stream).await;
    assert!(events.iter().any(|e| e.change() == pb::copy_event::Change::Heartbeat), "{events:?}");
    let code = end.map(|s| s.code());
    assert_eq!(code, Some(Code::DeadlineExceeded));
}

#[tokio::test]
async fn shutdown_ends_open_streams_with_unavailable_and_a_hint_to_reconnect() {
    let (_emu, mut gw) = setup(copying_at(0.01), |_| {}).await;
    let copy = start_copy(&mut gw, "billing-pg-daily", "interrupted").await;
    let mut stream = watch(&mut gw, &copy.name).await;
    stream.message().await.unwrap().unwrap();
    gw.shut_down();
    let (_, end) = drain(&mut stream).await;
    let status = end.expect("an error status");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().contains("reconnect"));
    assert!(status.get_error_details().retry_info().is_some());
}

#[tokio::test]
async fn get_copy_answers_from_a_fresh_poll_without_an_aws_call() {
    let (emu, mut gw) = setup(copying_at(0.01), |_| {}).await;
    let copy = start_copy(&mut gw, "billing-pg-daily", "fresh").await;
    let mut stream = watch(&mut gw, &copy.name).await;
    stream.message().await.unwrap().unwrap();
    // Within the shortest poll interval of a round, GetCopy needs no call of its own; retry
    // until a call lands inside that window.
    let mut answered_locally = false;
    for _ in 0..50 {
        let before = emu.emulator.calls().get("DescribeDBClusterSnapshots");
        let rounds = gw.hub.poll_rounds();
        let got =
            gw.client.get_copy(GetCopyRequest { name: copy.name.clone(), fresh: false }).await.unwrap().into_inner();
        assert_eq!(got.name, copy.name);
        let after = emu.emulator.calls().get("DescribeDBClusterSnapshots");
        if after == before && gw.hub.poll_rounds() == rounds {
            answered_locally = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert!(answered_locally);

    // A caller that asks for AWS's latest state gets one call of its own, every time, even
    // while the observation is fresh.
    for _ in 0..3 {
        let before = emu.emulator.calls().get("DescribeDBClusterSnapshots");
        let rounds = gw.hub.poll_rounds();
        let got =
            gw.client.get_copy(GetCopyRequest { name: copy.name.clone(), fresh: true }).await.unwrap().into_inner();
        assert_eq!(got.name, copy.name);
        let own_calls = emu.emulator.calls().get("DescribeDBClusterSnapshots") - before;
        let polls = gw.hub.poll_rounds() - rounds;
        assert!(own_calls >= 1 && own_calls - polls == 1, "{own_calls} calls, {polls} poll rounds");
    }
}

#[tokio::test]
async fn reads_of_one_snapshot_share_a_call_and_reads_of_many_share_a_batch() {
    let (emu, gw) = setup(copying_at(1.0), |_| {}).await;
    emu.emulator.reset_calls();
    let mut reads = Vec::new();
    for _ in 0..20 {
        let mut client = gw.client.clone();
        reads.push(tokio::spawn(async move {
            client.get_copy(GetCopyRequest { name: "ledger-mysql-snap".into(), fresh: false }).await
        }));
    }
    for read in reads {
        assert_eq!(read.await.unwrap().unwrap().into_inner().snapshot_id, "ledger-mysql-snap");
    }
    assert_eq!(emu.emulator.calls().get("DescribeDBClusterSnapshots"), 1, "twenty reads, one call");

    // Reads of different snapshots arriving together share the poller's batched describe.
    let names = ["billing-pg-daily", "orders-aurora-2026-11-20", "graph-neptune-snap", "catalog-docdb-snap"];
    emu.emulator.reset_calls();
    let mut reads = Vec::new();
    for name in names {
        let mut client = gw.client.clone();
        reads.push(tokio::spawn(
            async move { client.get_copy(GetCopyRequest { name: name.into(), fresh: false }).await },
        ));
    }
    for read in reads {
        read.await.unwrap().unwrap();
    }
    let describes = emu.emulator.calls().get("DescribeDBClusterSnapshots");
    assert!(describes <= 2, "{} reads, {describes} calls", names.len());
}
