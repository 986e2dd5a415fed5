//! Replicas on one PostgreSQL acting as one gateway toward AWS: one budget of AWS calls per
//! account and region for the whole fleet, whatever the number of replicas, given back when a
//! replica dies; and a change made on one replica seen by the others at once.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use snapgate_emulator::{EmulatorConfig, EmulatorHandle};
use snapgate_proto::{self as pb, CancelCopyRequest, GetCopyRequest, WatchCopyRequest};
use tokio::time::Instant;

/// Seeded snapshots in us-east-1 that fresh reads ask AWS about.
const READ: [&str; 4] = ["billing-pg-daily", "orders-aurora-2026-11-20", "ledger-mysql-snap", "reports-postgres-snap"];

/// Every call the emulator answered.
fn calls(emu: &EmulatorHandle) -> u64 {
    emu.emulator.calls().calls.values().sum()
}

/// Samples the emulator's call count every 50 ms for `window`.
async fn sample(emu: &EmulatorHandle, window: Duration) -> Vec<(Instant, u64)> {
    let end = Instant::now() + window;
    let mut samples = Vec::new();
    while Instant::now() < end {
        samples.push((Instant::now(), calls(emu)));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    samples
}

/// The most calls between two samples at most `span` apart.
fn peak(samples: &[(Instant, u64)], span: Duration) -> u64 {
    let mut most = 0;
    for (i, (at, n)) in samples.iter().enumerate() {
        for (later, m) in &samples[i..] {
            if *later - *at <= span {
                most = most.max(m - n);
            }
        }
    }
    most
}

/// Fresh reads through `addr` as fast as 8 callers can, until the task is aborted.
fn readers(addr: std::net::SocketAddr) -> Vec<tokio::task::JoinHandle<()>> {
    (0..8)
        .map(|i| {
            tokio::spawn(async move {
                let mut client = gateway::connect(addr).await;
                loop {
                    let request = GetCopyRequest { name: READ[i % READ.len()].into(), fresh: true };
                    if client.get_copy(request).await.is_err() {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            })
        })
        .collect()
}

/// Three replicas, each configured at 4 AWS calls a second with a burst of 4 and each sent
/// fresh reads as fast as its callers can: the emulator sees the fleet keep to one pace (at
/// most 4 × 10 + 4 calls in any 10 s), not three. One replica SIGKILLed: the two left have the
/// whole pace again.
#[tokio::test]
async fn three_replicas_keep_one_aws_budget_and_two_keep_it_whole() {
    let emu = emulator_with(seeded()).await;
    let pg = common::postgres::start();
    let store_toml = format!("url = \"{}\"", pg.url);
    let config = serve::config(&emu.endpoint_url(), &store_toml)
        .replace("rate_limit_per_sec = 1000.0", "rate_limit_per_sec = 4.0")
        .replace("rate_limit_burst = 1000", "rate_limit_burst = 4")
        + "[fair_share]\ncalls_per_sec = 10000.0\nburst = 10000\nin_flight = 64\naws_calls_per_sec = 10000.0\naws_burst = 10000\naws_in_flight = 64\n";
    let dir = scratch_dir("replicas-budget");
    let mut replicas = Vec::new();
    for name in ["a", "b", "c"] {
        replicas.push(serve::spawn(&config, &dir, name).await);
    }
    let mut load: Vec<_> = replicas.iter().flat_map(|r| readers(r.addr)).collect();

    // Settle past the first bursts, then measure 14 s.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let three = sample(&emu, Duration::from_secs(14)).await;
    let made = three.last().unwrap().1 - three[0].1;
    let ten = peak(&three, Duration::from_secs(10));
    eprintln!("three replicas: {made} calls in 14 s, at most {ten} in 10 s");
    assert!(ten <= 4 * 10 + 4, "three replicas made {ten} calls in 10 s; the budget is 44");
    assert!(made >= 4 * 14 * 3 / 4, "the fleet used its pace: {made} calls in 14 s");

    // One replica dies; its callers' load moves to the two left.
    let dead = replicas.remove(0);
    dead.kill().await;
    load.extend(replicas.iter().flat_map(|r| readers(r.addr)));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let two = sample(&emu, Duration::from_secs(10)).await;
    let made = two.last().unwrap().1 - two[0].1;
    eprintln!("two replicas: {made} calls in 10 s");
    assert!(peak(&two, Duration::from_secs(10)) <= 44, "{made} calls");
    assert!(made >= 4 * 10 * 3 / 4, "two replicas have the whole pace: {made} calls in 10 s");

    for task in load {
        task.abort();
    }
    for replica in replicas {
        replica.kill().await;
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// An unencrypted 150 GiB snapshot in us-west-2: its copies into us-east-1 are cross-region.
const WEST: &str = "arn:aws:rds:us-west-2:123456789012:cluster-snapshot:orders-aurora-west-snap";

/// A copy admitted on replica A and queued (one copy in progress at a time here), cancelled on
/// replica B: A's watcher of it ends CANCELLED at once, told by B's notification — not by a
/// timer: the dispatchers here look every minute, the followers of queued copies every second.
#[tokio::test]
async fn a_copy_cancelled_on_one_replica_ends_the_watch_on_another_at_once() {
    // 15 s a copy: the first is copying for the whole test.
    let emu = emulator_with(EmulatorConfig { copy_gib_per_sec: 10.0, snapshot_quota: 1000, ..seeded() }).await;
    let pg = common::postgres::start();
    let store_toml = format!("url = \"{}\"", pg.url);
    let config = serve::config(&emu.endpoint_url(), &store_toml)
        .replace("dispatch_interval_ms = 100", "dispatch_interval_ms = 60000\ncross_region_limit = 1");
    let dir = scratch_dir("replicas-notify");
    let a = serve::spawn(&config, &dir, "a").await;
    let b = serve::spawn(&config, &dir, "b").await;
    let mut on_a = gateway::connect(a.addr).await;
    let mut on_b = gateway::connect(b.addr).await;
    let first = on_a.copy_cluster_snapshot(copy_req(WEST, "notify-first")).await.unwrap().into_inner();
    let second = on_a.copy_cluster_snapshot(copy_req(WEST, "notify-second")).await.unwrap().into_inner();
    assert_eq!(first.state(), pb::copy::State::Copying, "{first:?}");
    assert_eq!(second.state(), pb::copy::State::Queued, "{second:?}");

    let mut stream = on_a.watch_copy(WatchCopyRequest { name: second.name.clone() }).await.unwrap().into_inner();
    let opened = stream.message().await.unwrap().unwrap().copy.unwrap();
    assert_eq!(opened.state(), pb::copy::State::Queued);
    let cancelled = on_b.cancel_copy(CancelCopyRequest { name: second.name.clone() }).await.unwrap().into_inner();
    let since = Instant::now();
    assert_eq!(cancelled.state(), pb::copy::State::Cancelled);
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(event) = stream.message().await.unwrap() {
            if event.terminal {
                return event.copy.unwrap();
            }
        }
        panic!("the watch ended without a terminal event");
    })
    .await
    .expect("A's watcher sees the cancel");
    let lag = since.elapsed();
    eprintln!("A's watcher saw B's cancel {lag:?} after it returned");
    assert_eq!(ended.state(), pb::copy::State::Cancelled, "{ended:?}");
    assert!(lag < Duration::from_millis(100), "seen in {lag:?}: by notification, not the 1 s timer");
    // A's reads see it too: what A kept of the job for reads was forgotten.
    let read = on_a.get_copy(GetCopyRequest { name: second.name.clone(), fresh: false }).await.unwrap().into_inner();
    assert_eq!(read.state(), pb::copy::State::Cancelled);
    a.kill().await;
    b.kill().await;
    let _ = std::fs::remove_dir_all(dir);
}
