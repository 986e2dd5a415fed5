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

/// What one watch stream saw: the states of its events, and how it ended.
struct Watched {
    states: Vec<pb::copy::State>,
    ended: Result<pb::copy::State, tonic::Status>,
}

/// Watches `name` through `addr` to its end (bounded).
fn watch(
    addr: std::net::SocketAddr,
    name: String,
    opened: tokio::sync::mpsc::UnboundedSender<()>,
) -> tokio::task::JoinHandle<Watched> {
    tokio::spawn(async move {
        let mut client = gateway::connect(addr).await;
        let mut states = Vec::new();
        let mut stream = match client.watch_copy(WatchCopyRequest { name }).await {
            Ok(stream) => stream.into_inner(),
            Err(status) => return Watched { states, ended: Err(status) },
        };
        let mut first = true;
        let ended = tokio::time::timeout(Duration::from_secs(120), async {
            loop {
                match stream.message().await {
                    Ok(Some(event)) => {
                        let state = event.copy.map(|c| c.state()).unwrap_or_default();
                        states.push(state);
                        if first {
                            first = false;
                            let _ = opened.send(());
                        }
                        if event.terminal {
                            return Ok(state);
                        }
                    }
                    Ok(None) => return Err(tonic::Status::aborted("the stream ended without a terminal event")),
                    Err(status) => return Err(status),
                }
            }
        })
        .await
        .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("no end within 120 s")));
        Watched { states, ended }
    })
}

/// Three replicas, 100 copies in progress, each watched on every replica: the emulator's
/// describes are those of one replica (one a round of the poll holder, not three), and the
/// others' watchers are served from its rounds. The holder is SIGKILLed mid-copy: no stream on
/// the others ends, another replica takes the poll within the lease and a poll interval, every
/// watcher there sees its copy AVAILABLE, and each copy is made once.
#[tokio::test]
async fn three_replicas_poll_each_region_once_and_survive_the_holders_death() {
    // 120 GiB at 4 GiB/s: 30 s a copy.
    let emu = emulator_with(EmulatorConfig { copy_gib_per_sec: 4.0, snapshot_quota: 1000, ..seeded() }).await;
    let pg = common::postgres::start();
    let store_toml = format!("url = \"{}\"", pg.url);
    let config = serve::config(&emu.endpoint_url(), &store_toml)
        .replace("max_poll_interval_ms = 300", "max_poll_interval_ms = 300\nmax_streams = 1000\npoll_lease_secs = 3")
        + "[fair_share]\ncalls_per_sec = 10000.0\nburst = 10000\nin_flight = 256\n";
    let dir = scratch_dir("replicas-poll");
    let mut replicas = Vec::new();
    for name in ["a", "b", "c"] {
        replicas.push(serve::spawn(&config, &dir, name).await);
    }
    let mut on_a = gateway::connect(replicas[0].addr).await;
    let mut names = Vec::new();
    for i in 0..100 {
        let copy = on_a.copy_cluster_snapshot(copy_req("billing-pg-daily", &format!("fleet-watch-{i}"))).await.unwrap();
        names.push(copy.into_inner().name);
    }
    let (opened_tx, mut opened) = tokio::sync::mpsc::unbounded_channel();
    let mut streams: Vec<Vec<tokio::task::JoinHandle<Watched>>> = Vec::new();
    for replica in &replicas {
        streams.push(names.iter().map(|name| watch(replica.addr, name.clone(), opened_tx.clone())).collect());
    }
    let all_open = tokio::time::timeout(Duration::from_secs(30), async {
        for _ in 0..300 {
            opened.recv().await;
        }
    })
    .await;
    assert!(all_open.is_ok(), "all 300 streams had their first event within 30 s");

    // 5 s of the three polling together: the describes are the holder's rounds, one each.
    let leader = |replicas: &[serve::Process]| {
        let admins: Vec<_> = replicas.iter().map(|r| r.admin).collect();
        async move {
            for (i, admin) in admins.into_iter().enumerate() {
                let probe = serve::Process::probe(admin);
                if probe.metric("snapgate_poll_leader{region=\"us-east-1\"}").await == 1.0 {
                    return Some(i);
                }
            }
            None
        }
    };
    let holder = leader(&replicas).await.expect("a replica holds the poll of us-east-1");
    let rounds = |i: usize| replicas[i].metric("snapgate_watch_poll_rounds_total");
    let (describes_before, rounds_before) =
        (emu.emulator.calls().get("DescribeDBClusterSnapshots"), rounds(holder).await);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let describes = emu.emulator.calls().get("DescribeDBClusterSnapshots") - describes_before;
    let holder_rounds = rounds(holder).await - rounds_before;
    let in_progress = us_east_in_progress(&emu);
    eprintln!("in 5 s: {describes} describes, {holder_rounds} rounds of the holder; {in_progress} copies in progress");
    assert_eq!(in_progress, 100, "the premise: every copy still in progress");
    assert!(holder_rounds >= 5.0, "the holder polled: {holder_rounds} rounds");
    assert!(
        describes as f64 <= holder_rounds * 1.1 + 2.0,
        "the fleet's describes are one replica's: {describes} for {holder_rounds} rounds of the holder"
    );
    for (i, replica) in replicas.iter().enumerate() {
        if i != holder {
            assert!(
                replica.metric("snapgate_fleet_observations_total").await > 0.0,
                "replica {i} read the holder's rounds"
            );
        }
    }

    // The holder dies mid-copy.
    let dead = replicas.remove(holder);
    let dead_streams = streams.remove(holder);
    dead.kill().await;
    let killed = Instant::now();
    let taken = eventually(Duration::from_secs(20), || {
        let probe = leader(&replicas);
        async move { probe.await.is_some() }
    })
    .await;
    let failover = killed.elapsed();
    eprintln!("another replica took the poll {failover:?} after the holder's death");
    assert!(taken, "another replica holds the poll");
    assert!(failover <= Duration::from_secs(3) + Duration::from_secs(2), "within the lease and a round: {failover:?}");
    for (r, replica_streams) in streams.into_iter().enumerate() {
        for (i, stream) in replica_streams.into_iter().enumerate() {
            let watched = stream.await.unwrap();
            let ended = watched.ended.unwrap_or_else(|status| panic!("stream {i} on survivor {r} failed: {status:?}"));
            assert_eq!(ended, pb::copy::State::Available, "{:?}", watched.states);
            assert!(watched.states.contains(&pb::copy::State::Copying), "{:?}", watched.states);
        }
    }
    for stream in dead_streams {
        stream.abort();
    }
    let made: usize = emu.emulator.copies().iter().map(|d| d.copies_made).sum();
    assert_eq!(made, 100, "each copy made once");
    for replica in replicas {
        replica.kill().await;
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Copies in progress in us-east-1 of the tests' account.
fn us_east_in_progress(emu: &EmulatorHandle) -> usize {
    emu.emulator.copies().iter().filter(|c| c.region == "us-east-1").map(|c| c.in_progress).sum()
}
