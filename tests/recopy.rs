//! A copy asked for again: the same copy while its job waits or copies, or while the snapshot it
//! made exists; a new copy once that snapshot is gone (deleted outside snapgate), as AWS would
//! make it, on SQLite and PostgreSQL, across a restart of `serve` and across two replicas.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::gateway::{self, Gateway};
use common::*;
use snapgate_emulator::{EmulatorConfig, EmulatorHandle};
use snapgate_gateway::config::StoreSettings;
use snapgate_proto::{self as pb, GetCopyRequest, ListCopiesRequest, WatchCopyRequest};

/// 120 GiB, in us-east-1: a same-region copy of it.
const SOURCE: &str = "billing-pg-daily";
const SOURCE_ARN: &str = "arn:aws:rds:us-east-1:123456789012:cluster-snapshot:billing-pg-daily";

/// Copies of the 120 GiB source take 120 / `gib_per_sec` seconds.
fn emulator_config(gib_per_sec: f64) -> EmulatorConfig {
    EmulatorConfig { copy_gib_per_sec: gib_per_sec, ..seeded() }
}

fn copy_calls(emu: &EmulatorHandle) -> u64 {
    emu.emulator.calls().get("CopyDBClusterSnapshot")
}

/// Deletes a snapshot the way a console or a clean-up script would: straight at AWS.
async fn delete_outside(emu: &EmulatorHandle, id: &str) {
    rds_client(&emu.endpoint_url(), "us-east-1", "AKIDTEST")
        .delete_db_cluster_snapshot()
        .db_cluster_snapshot_identifier(id)
        .send()
        .await
        .unwrap();
}

/// The snapshot's status as AWS describes it, or `None` when it is not there.
async fn aws_status(emu: &EmulatorHandle, id: &str) -> Option<String> {
    let out = rds_client(&emu.endpoint_url(), "us-east-1", "AKIDTEST")
        .describe_db_cluster_snapshots()
        .db_cluster_snapshot_identifier(id)
        .send()
        .await;
    out.ok()?.db_cluster_snapshots().first().and_then(|s| s.status().map(str::to_owned))
}

/// Watches `name` to its end (bounded); returns the last state.
async fn watch_to_end(client: &mut gateway::Client, name: &str) -> pb::copy::State {
    let mut stream = client.watch_copy(WatchCopyRequest { name: name.into() }).await.unwrap().into_inner();
    let mut last = pb::copy::State::Unspecified;
    let ended = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(event) = stream.message().await.unwrap() {
            if let Some(copy) = event.copy {
                last = copy.state();
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the watch of {name} ends within 60 s (last {last:?})");
    last
}

async fn copy(client: &mut gateway::Client, target: &str) -> pb::Copy {
    client.copy_cluster_snapshot(copy_req(SOURCE, target)).await.unwrap().into_inner()
}

/// The jobs ListCopies shows for `target`, newest first.
async fn jobs_of(client: &mut gateway::Client, target: &str) -> Vec<pb::Copy> {
    let request = ListCopiesRequest { page_size: 500, ..Default::default() };
    let copies = client.list_copies(request).await.unwrap().into_inner().copies;
    copies.into_iter().filter(|c| c.snapshot_id == target).collect()
}

async fn started(emu: &EmulatorHandle, store: StoreSettings) -> Gateway {
    let mut settings = gateway::settings();
    settings.store = store;
    settings.jobs.dispatch_interval_ms = 100;
    gateway::start(settings, &emu.endpoint_url(), "AKIDTEST").await
}

/// Copy, wait, delete the copy outside snapgate, ask again: a second copy, made and available,
/// and the first job kept as history that says it was deleted. Then once more through GetCopy,
/// which finds the snapshot gone first.
async fn a_deleted_copy_asked_for_again_is_made_again(store: StoreSettings) {
    let emu = emulator_with(emulator_config(240.0)).await; // 0.5 s a copy
    let mut gw = started(&emu, store).await;
    let client = &mut gw.client;
    copy(client, "rc-a").await;
    assert_eq!(watch_to_end(client, "rc-a").await, pb::copy::State::Available);
    assert_eq!(copy_calls(&emu), 1);

    // While the snapshot is there, a repeat is the same copy: no copy call.
    let again = copy(client, "rc-a").await;
    assert_eq!(again.state(), pb::copy::State::Available);
    assert_eq!(copy_calls(&emu), 1);

    delete_outside(&emu, "rc-a").await;
    let again = copy(client, "rc-a").await;
    assert!(matches!(again.state(), pb::copy::State::Queued | pb::copy::State::Copying), "{again:?}");
    assert_eq!(watch_to_end(client, "rc-a").await, pb::copy::State::Available);
    assert_eq!(copy_calls(&emu), 2, "exactly one more copy");
    assert_eq!(aws_status(&emu, "rc-a").await.as_deref(), Some("available"));
    let current = client.get_copy(GetCopyRequest { name: "rc-a".into(), ..Default::default() }).await.unwrap();
    assert_eq!(current.into_inner().state(), pb::copy::State::Available);
    let history: Vec<_> = jobs_of(client, "rc-a").await.iter().map(pb::Copy::state).collect();
    assert_eq!(history, [pb::copy::State::Available, pb::copy::State::Deleted], "the current job, then the earlier");

    // GetCopy of a made copy whose snapshot is gone says DELETED (fresh: the gateway's last
    // observation may be from just before the deletion); asked again, it is made again.
    delete_outside(&emu, "rc-a").await;
    let gone = client.get_copy(GetCopyRequest { name: "rc-a".into(), fresh: true }).await.unwrap();
    assert_eq!(gone.into_inner().state(), pb::copy::State::Deleted);
    copy(client, "rc-a").await;
    assert_eq!(watch_to_end(client, "rc-a").await, pb::copy::State::Available);
    assert_eq!(copy_calls(&emu), 3);
    assert_eq!(jobs_of(client, "rc-a").await.len(), 3);
}

on_each_store!(a_deleted_copy_asked_for_again_is_made_again, a_deleted_copy_asked_for_again_is_made_again);

/// Ten repeats at once after the deletion share one decision and make one copy.
async fn concurrent_repeats_make_one_new_copy(store: StoreSettings) {
    let emu = emulator_with(emulator_config(240.0)).await;
    let mut gw = started(&emu, store).await;
    copy(&mut gw.client, "rc-many").await;
    assert_eq!(watch_to_end(&mut gw.client, "rc-many").await, pb::copy::State::Available);
    let deleted =
        gw.client.get_copy(GetCopyRequest { name: "rc-many".into(), fresh: true }).await.unwrap().into_inner();
    delete_outside(&emu, "rc-many").await;

    let repeats = (0..10).map(|_| {
        let mut client = gw.client.clone();
        async move { copy(&mut client, "rc-many").await }
    });
    let answers = futures_util::future::join_all(repeats).await;
    for answer in &answers {
        // A fast copy may be made already; it is never the deleted one.
        assert_ne!(answer.create_time, deleted.create_time, "no repeat answers with the deleted copy: {answer:?}");
        assert_ne!(answer.request_time, deleted.request_time, "{answer:?}");
        assert_eq!(answer.request_time, answers[0].request_time, "one job answers them all: {answers:#?}");
    }
    assert_eq!(watch_to_end(&mut gw.client, "rc-many").await, pb::copy::State::Available);
    assert_eq!(copy_calls(&emu), 2, "ten repeats, one new copy");
    assert_eq!(jobs_of(&mut gw.client, "rc-many").await.len(), 2);
}

on_each_store!(concurrent_repeats_after_a_deletion_make_one_new_copy, concurrent_repeats_make_one_new_copy);

#[tokio::test]
async fn a_repeat_while_the_copy_is_in_progress_makes_no_call() {
    let emu = emulator_with(emulator_config(2.0)).await; // a minute a copy: still copying
    // The gateway's own polls of the copy (for its job and watchers) come a minute apart, so
    // any describe during the test would be the repeat's.
    let mut settings = gateway::settings();
    settings.store = gateway::scratch_store();
    settings.jobs.dispatch_interval_ms = 100;
    (settings.watch.min_poll_interval_ms, settings.watch.max_poll_interval_ms) = (60_000, 60_000);
    let mut gw = gateway::start(settings, &emu.endpoint_url(), "AKIDTEST").await;
    let first = copy(&mut gw.client, "rc-slow").await;
    assert_eq!(first.state(), pb::copy::State::Copying);
    let describes = emu.emulator.calls().get("DescribeDBClusterSnapshots");
    let again = copy(&mut gw.client, "rc-slow").await;
    assert_eq!(again.state(), pb::copy::State::Copying);
    assert_eq!(copy_calls(&emu), 1);
    // The source's describe is shared for seconds and the job says how the copy stands.
    assert_eq!(emu.emulator.calls().get("DescribeDBClusterSnapshots"), describes, "no AWS call at all");
}

#[tokio::test]
async fn a_repeat_from_another_source_of_a_copy_that_exists_is_already_exists() {
    let emu = emulator_with(emulator_config(240.0)).await;
    let mut gw = started(&emu, gateway::scratch_store()).await;
    copy(&mut gw.client, "rc-other").await;
    assert_eq!(watch_to_end(&mut gw.client, "rc-other").await, pb::copy::State::Available);
    let other = gw.client.copy_cluster_snapshot(copy_req("ledger-mysql-snap", "rc-other")).await.unwrap_err();
    // AWS answers, as it would without the gateway: its fault, with its request id.
    assert_eq!(
        (other.code(), error_reason(&other).as_str()),
        (tonic::Code::AlreadyExists, "DBClusterSnapshotAlreadyExistsFault"),
        "{other:?}"
    );
    assert_eq!(copy_calls(&emu), 2, "the first copy, then the one AWS refused");
    let listed = jobs_of(&mut gw.client, "rc-other").await;
    assert_eq!(listed.len(), 1, "the refused request left no job: {listed:#?}");
    let kept = gw.client.get_copy(GetCopyRequest { name: "rc-other".into(), fresh: true }).await.unwrap().into_inner();
    assert_eq!((kept.state(), kept.source_snapshot_arn.as_str()), (pb::copy::State::Available, SOURCE_ARN));
    // Once it is gone, the target is free for a copy of the other source.
    delete_outside(&emu, "rc-other").await;
    let made = gw.client.copy_cluster_snapshot(copy_req("ledger-mysql-snap", "rc-other")).await.unwrap().into_inner();
    assert!(made.source_snapshot_arn.ends_with(":ledger-mysql-snap"), "{made:?}");
    assert_eq!(watch_to_end(&mut gw.client, "rc-other").await, pb::copy::State::Available);
    assert_eq!(copy_calls(&emu), 3);
}

#[tokio::test]
async fn a_deleted_copy_is_made_again_after_a_restart_of_serve() {
    let emu = emulator_with(emulator_config(240.0)).await;
    let dir = scratch_dir("recopy-restart");
    let config = serve::config(&emu.endpoint_url(), &format!("data_dir = \"{}\"", dir.join("data").display()));
    let first = serve::spawn(&config, &dir, "first").await;
    let mut client = gateway::connect(first.addr).await;
    copy(&mut client, "rc-restart").await;
    assert_eq!(watch_to_end(&mut client, "rc-restart").await, pb::copy::State::Available);
    // The job records the end a moment after watchers see it; the gateway is killed after.
    let recorded = eventually(Duration::from_secs(10), || {
        let mut client = client.clone();
        async move {
            jobs_of(&mut client, "rc-restart").await.first().map(pb::Copy::state) == Some(pb::copy::State::Available)
        }
    })
    .await;
    assert!(recorded, "the job's end is recorded");
    first.kill().await;

    delete_outside(&emu, "rc-restart").await;
    let second = serve::spawn(&config, &dir, "second").await;
    let mut client = gateway::connect(second.addr).await;
    copy(&mut client, "rc-restart").await;
    assert_eq!(watch_to_end(&mut client, "rc-restart").await, pb::copy::State::Available);
    assert_eq!(copy_calls(&emu), 2);
    assert_eq!(aws_status(&emu, "rc-restart").await.as_deref(), Some("available"));
    second.kill().await;
}

#[tokio::test]
async fn two_replicas_asked_at_once_after_a_deletion_make_one_copy() {
    let pg = postgres::start();
    let emu = emulator_with(emulator_config(240.0)).await;
    let dir = scratch_dir("recopy-replicas");
    let config = serve::config(&emu.endpoint_url(), &format!("url = \"{}\"", pg.url));
    let a = serve::spawn(&config, &dir, "a").await;
    let b = serve::spawn(&config, &dir, "b").await;
    let (mut to_a, to_b) = (gateway::connect(a.addr).await, gateway::connect(b.addr).await);
    copy(&mut to_a, "rc-replicas").await;
    assert_eq!(watch_to_end(&mut to_a, "rc-replicas").await, pb::copy::State::Available);
    delete_outside(&emu, "rc-replicas").await;

    let repeats = (0..10).map(|i| {
        let mut client = if i % 2 == 0 { to_a.clone() } else { to_b.clone() };
        async move { copy(&mut client, "rc-replicas").await }
    });
    futures_util::future::join_all(repeats).await;
    assert_eq!(watch_to_end(&mut to_a, "rc-replicas").await, pb::copy::State::Available);
    assert_eq!(copy_calls(&emu), 2, "one new copy across both replicas");
    assert_eq!(aws_status(&emu, "rc-replicas").await.as_deref(), Some("available"));
    a.kill().await;
    b.kill().await;
}
