//! Copy jobs against the emulator with AWS's limit of 5 cross-region copies in progress per
//! destination: fleets that all finish without a caller seeing the limit, on SQLite and on a
//! real PostgreSQL; the queue seen through GetCopy, WatchCopy, ListCopies and CancelCopy; and
//! gateways killed with SIGKILL mid-run whose copies are finished by a restart or a replica.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::gateway::{self, Gateway};
use common::*;
use snapgate_emulator::{EmulatorConfig, EmulatorHandle};
use snapgate_gateway::config::{Secret, Settings, StoreSettings};
use snapgate_proto::{self as pb, CancelCopyRequest, GetCopyRequest, ListCopiesRequest, WatchCopyRequest};
use tonic_types::StatusExt;

/// An unencrypted snapshot in us-west-2: copies of it into us-east-1 count against the limit.
const WEST: &str = "arn:aws:rds:us-west-2:123456789012:cluster-snapshot:orders-aurora-west-snap";

fn quick_jobs(mut settings: Settings) -> Settings {
    settings.jobs.dispatch_interval_ms = 100;
    settings.jobs.retry_initial_ms = 200;
    settings.jobs.retry_max_ms = 1000;
    settings.jobs.lease_secs = 2;
    settings
}

/// Copies of the 150 GiB west snapshot take 150 / `gib_per_sec` seconds.
fn emulator_config(gib_per_sec: f64) -> EmulatorConfig {
    EmulatorConfig { copy_gib_per_sec: gib_per_sec, snapshot_quota: 1000, ..seeded() }
}

async fn list(client: &mut gateway::Client, states: &[pb::copy::State]) -> Vec<pb::Copy> {
    let request =
        ListCopiesRequest { page_size: 500, states: states.iter().map(|s| *s as i32).collect(), ..Default::default() };
    client.list_copies(request).await.unwrap().into_inner().copies
}

fn us_east(emu: &EmulatorHandle) -> snapgate_emulator::CopiesInProgress {
    emu.emulator.copies().into_iter().find(|c| c.account == ACCOUNT && c.region == "us-east-1").unwrap_or(
        snapgate_emulator::CopiesInProgress {
            account: ACCOUNT.into(),
            region: "us-east-1".into(),
            cross_region_in_progress: 0,
            in_progress: 0,
            peak_cross_region_in_progress: 0,
            copies_made: 0,
        },
    )
}

/// Waits (bounded) until `n` copies are AVAILABLE, sampling the emulator's copies in progress;
/// returns the most seen at once.
async fn all_available(client: &gateway::Client, emu: &EmulatorHandle, n: usize, within: Duration) -> usize {
    let mut most = 0;
    let done = eventually(within, || {
        most = most.max(us_east(emu).cross_region_in_progress);
        let mut client = client.clone();
        async move { list(&mut client, &[pb::copy::State::Available]).await.len() >= n }
    })
    .await;
    assert!(done, "all {n} copies available within {within:?}");
    most
}

/// Fifty cross-region copies asked for at once, while another client of the account copies
/// into the same region too: all end AVAILABLE, no caller sees AWS's limit, the emulator never
/// has more than 5 in progress, and each copy is made once.
async fn a_fleet_of_fifty(store: StoreSettings) {
    let emu = emulator_with(emulator_config(300.0)).await;
    let settings = Settings { store, ..quick_jobs(gateway::settings()) };
    let mut gw = gateway::start(settings, &emu.endpoint_url(), "AKIDTEST").await;
    // Someone else (the console, a script) copies into the same region first.
    let other = rds_client(&emu.endpoint_url(), "us-east-1", "AKIDTEST");
    for target in ["outside-1", "outside-2"] {
        other
            .copy_db_cluster_snapshot()
            .source_db_cluster_snapshot_identifier(WEST)
            .target_db_cluster_snapshot_identifier(target)
            .send()
            .await
            .unwrap();
    }
    let mut calls = Vec::new();
    for i in 0..50 {
        let mut client = gw.client.clone();
        calls.push(tokio::spawn(
            async move { client.copy_cluster_snapshot(copy_req(WEST, &format!("fleet-{i}"))).await },
        ));
    }
    let mut queued = 0;
    for call in calls {
        let copy = call.await.unwrap().expect("every copy is admitted; none sees AWS's limit").into_inner();
        assert!(matches!(copy.state(), pb::copy::State::Copying | pb::copy::State::Queued), "{copy:?}");
        if copy.state() == pb::copy::State::Queued {
            queued += 1;
            assert!(copy.queue_position >= 1 && copy.queue_limit == 5, "{copy:?}");
        }
    }
    // Copies finish while the fifty are admitted, so how many start at once is the emulator's
    // peak below, not this count.
    assert!(queued > 0, "copies beyond the limit wait in the queue");
    let most = all_available(&gw.client, &emu, 50, Duration::from_secs(120)).await;
    let east = us_east(&emu);
    assert!(most <= 5 && east.peak_cross_region_in_progress <= 5, "{most} sampled, {east:?}");
    assert_eq!(east.copies_made, 52, "each copy made once (and the other client's two)");
    assert!(list(&mut gw.client, &[pb::copy::State::Failed]).await.is_empty());
}

on_each_store!(fifty_cross_region_copies_all_finish_within_aws_limit, a_fleet_of_fifty);

#[tokio::test]
async fn a_queued_copy_is_watched_listed_and_cancelled_without_an_aws_call() {
    let emu = emulator_with(emulator_config(100.0)).await; // 1.5 s a copy
    let mut settings = quick_jobs(gateway::settings());
    settings.jobs.cross_region_limit = 1;
    let mut gw: Gateway = gateway::start(settings, &emu.endpoint_url(), "AKIDTEST").await;
    let first = gw.client.copy_cluster_snapshot(copy_req(WEST, "q-first")).await.unwrap().into_inner();
    let second = gw.client.copy_cluster_snapshot(copy_req(WEST, "q-second")).await.unwrap().into_inner();
    let third = gw.client.copy_cluster_snapshot(copy_req(WEST, "q-third")).await.unwrap().into_inner();
    assert_eq!(first.state(), pb::copy::State::Copying);
    assert_eq!((second.state(), second.queue_position, second.queue_limit), (pb::copy::State::Queued, 1, 1));
    assert_eq!((third.state(), third.queue_position), (pb::copy::State::Queued, 2));
    assert_eq!(third.name, "arn:aws:rds:us-east-1:123456789012:cluster-snapshot:q-third");
    assert_eq!(third.requested_by, "tester");
    // A retry of the same request is the same copy, still queued.
    let again = gw.client.copy_cluster_snapshot(copy_req(WEST, "q-third")).await.unwrap().into_inner();
    assert_eq!((again.name.as_str(), again.state()), (third.name.as_str(), pb::copy::State::Queued));
    let got = gw.client.get_copy(GetCopyRequest { name: "q-third".into(), fresh: false }).await.unwrap().into_inner();
    assert_eq!((got.state(), got.queue_position), (pb::copy::State::Queued, 2));
    assert_eq!(list(&mut gw.client, &[pb::copy::State::Queued]).await.len(), 2);

    // Cancelling a queued copy calls no AWS API.
    let copies_before = emu.emulator.calls().get("CopyDBClusterSnapshot");
    let cancelled = gw.client.cancel_copy(CancelCopyRequest { name: third.name.clone() }).await.unwrap().into_inner();
    assert_eq!(cancelled.state(), pb::copy::State::Cancelled);
    assert_eq!(emu.emulator.calls().get("DeleteDBClusterSnapshot"), 0);

    // The second copy's watch: queued, then copying, then available.
    let mut stream = gw.client.watch_copy(WatchCopyRequest { name: second.name.clone() }).await.unwrap().into_inner();
    let mut states = Vec::new();
    let watched = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(event) = stream.message().await.unwrap() {
            let copy = event.copy.unwrap();
            states.push((copy.state(), copy.queue_position));
            if event.terminal {
                break;
            }
        }
    })
    .await;
    assert!(watched.is_ok(), "the watch ends: {states:?}");
    assert_eq!(states.first(), Some(&(pb::copy::State::Queued, 1)), "{states:?}");
    assert!(states.iter().any(|(s, _)| *s == pb::copy::State::Copying), "{states:?}");
    assert_eq!(states.last().map(|s| s.0), Some(pb::copy::State::Available), "{states:?}");
    assert_eq!(
        emu.emulator.calls().get("CopyDBClusterSnapshot"),
        copies_before + 1,
        "the cancelled copy never started"
    );

    // Pages: one copy a page, newest first, filtered by caller.
    let mut names = Vec::new();
    let mut token = String::new();
    loop {
        let page = gw
            .client
            .list_copies(ListCopiesRequest {
                page_size: 1,
                page_token: token.clone(),
                requested_by: "tester".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        names.extend(page.copies.into_iter().map(|c| c.snapshot_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(names, ["q-third", "q-second", "q-first"]);
    let status = gw.client.list_copies(ListCopiesRequest { page_size: 9999, ..Default::default() }).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
}

/// The queue takes callers in turn, the fewest in progress first: a team's one copy gets the
/// next free slot ahead of another team's fleet, whatever the fleet's size, on SQLite and on
/// PostgreSQL.
async fn a_team_is_not_queued_behind_another_teams_fleet(store: StoreSettings) {
    const PAYMENTS_TOKEN: &str = "payments-token-0123456789";
    let emu = emulator_with(emulator_config(1.0)).await; // 150 s a copy: nothing ends by itself
    let mut settings = Settings { store, ..quick_jobs(gateway::settings()) };
    settings.jobs.cross_region_limit = 2;
    settings.auth.static_tokens.push(snapgate_gateway::config::StaticToken {
        token: Secret::new(PAYMENTS_TOKEN),
        principal: "payments".into(),
        groups: Vec::new(),
        team: None,
    });
    settings.authz.policies = Some("permit(principal, action, resource);".into());
    let mut gw: Gateway = gateway::start(settings, &emu.endpoint_url(), "AKIDTEST").await;
    let mut payments = gateway::client_with(gw.channel.clone(), Some(PAYMENTS_TOKEN));
    let mut fleet = Vec::new();
    for i in 0..4 {
        fleet.push(gw.client.copy_cluster_snapshot(copy_req(WEST, &format!("fleet-{i}"))).await.unwrap().into_inner());
    }
    let theirs = payments.copy_cluster_snapshot(copy_req(WEST, "payments-1")).await.unwrap().into_inner();
    fleet.push(gw.client.copy_cluster_snapshot(copy_req(WEST, "fleet-4")).await.unwrap().into_inner());
    assert_eq!((fleet[0].state(), fleet[1].state()), (pb::copy::State::Copying, pb::copy::State::Copying));
    // The fleet has both slots and payments none: payments' copy is next, then the fleet's in
    // order.
    assert_eq!((theirs.state(), theirs.queue_position), (pb::copy::State::Queued, 1), "{theirs:?}");
    assert_eq!((fleet[4].state(), fleet[4].queue_position), (pb::copy::State::Queued, 4), "{:?}", fleet[4]);
    let reader = gw.client.clone();
    let position = |name: String| {
        let mut client = reader.clone();
        async move {
            let copy = client.get_copy(GetCopyRequest { name, fresh: false }).await.unwrap().into_inner();
            (copy.state(), copy.queue_position)
        }
    };
    assert_eq!(position(fleet[2].name.clone()).await, (pb::copy::State::Queued, 2));
    assert_eq!(position(fleet[3].name.clone()).await, (pb::copy::State::Queued, 3));

    // A slot freed by a cancel goes to payments; the next one to the fleet (payments has one
    // in progress now, the fleet one).
    for (running, next) in [(&fleet[0], &theirs), (&fleet[1], &fleet[2])] {
        gw.client.cancel_copy(CancelCopyRequest { name: running.name.clone() }).await.unwrap();
        let copying = eventually(Duration::from_secs(10), || {
            let check = position(next.name.clone());
            async move { check.await.0 == pb::copy::State::Copying }
        })
        .await;
        assert!(copying, "{} starts next", next.snapshot_id);
    }
    assert_eq!(position(fleet[3].name.clone()).await, (pb::copy::State::Queued, 1));
    assert_eq!(position(fleet[4].name.clone()).await, (pb::copy::State::Queued, 2));
    assert_eq!(us_east(&emu).copies_made, 4, "fleet-0, fleet-1, payments-1 and fleet-2 only");
}

on_each_store!(a_team_is_not_queued_behind_another_teams_fleet, a_team_is_not_queued_behind_another_teams_fleet);

#[tokio::test]
async fn a_gateway_killed_mid_run_finishes_its_copies_after_a_restart() {
    let emu = emulator_with(emulator_config(100.0)).await; // 1.5 s a copy
    let dir = scratch_dir("restart");
    let store = format!("data_dir = \"{}\"", dir.join("data").display());
    let config = serve::config(&emu.endpoint_url(), &store);
    let first = serve::spawn(&config, &dir, "first").await;
    let mut client = gateway::connect(first.addr).await;
    for i in 0..12 {
        client.copy_cluster_snapshot(copy_req(WEST, &format!("restart-{i}"))).await.unwrap();
    }
    assert!(!list(&mut client, &[pb::copy::State::Queued]).await.is_empty(), "some copies wait");
    first.kill().await;

    let second = serve::spawn(&config, &dir, "second").await;
    let mut client = gateway::connect(second.addr).await;
    // A watcher that reconnects sees the copy's current state at once.
    let mut stream = client.watch_copy(WatchCopyRequest { name: "restart-11".into() }).await.unwrap().into_inner();
    let current = stream.message().await.unwrap().unwrap().copy.unwrap();
    assert!(matches!(current.state(), pb::copy::State::Queued | pb::copy::State::Copying), "{current:?}");
    let most = all_available(&client, &emu, 12, Duration::from_secs(90)).await;
    let east = us_east(&emu);
    assert!(most <= 5 && east.peak_cross_region_in_progress <= 5, "{east:?}");
    assert_eq!(east.copies_made, 12, "each copy made once across the restart");
    second.kill().await;
}

#[tokio::test]
async fn two_replicas_share_a_postgres_queue_and_one_killed_loses_nothing() {
    let pg = postgres::start();
    let emu = emulator_with(emulator_config(150.0)).await; // 1 s a copy
    let dir = scratch_dir("replicas");
    let config = serve::config(&emu.endpoint_url(), &format!("url = \"{}\"", pg.url));
    let a = serve::spawn(&config, &dir, "a").await;
    let b = serve::spawn(&config, &dir, "b").await;
    let (mut to_a, mut to_b) = (gateway::connect(a.addr).await, gateway::connect(b.addr).await);
    for i in 0..20 {
        let client = if i % 2 == 0 { &mut to_a } else { &mut to_b };
        client.copy_cluster_snapshot(copy_req(WEST, &format!("replica-{i}"))).await.unwrap();
    }
    // Replica A dies with copies it started still copying and its queue not done.
    a.kill().await;
    let most = all_available(&to_b, &emu, 20, Duration::from_secs(120)).await;
    let east = us_east(&emu);
    assert!(most <= 5 && east.peak_cross_region_in_progress <= 5, "{east:?}");
    assert_eq!(east.copies_made, 20, "each copy started exactly once across the replicas");
    b.kill().await;
}

/// Faults together, over a fleet: AWS answers a fifth of calls with 500s, throttles hard and
/// slowly, while thirty cross-region copies are asked for (callers retry what they are told to
/// retry, as the CLI does). Every copy a caller was told was accepted ends AVAILABLE, none is
/// made twice, and callers see nothing but OK or a retryable status with RetryInfo.
#[tokio::test]
async fn a_fleet_under_5xx_throttling_latency_and_dropped_answers_finishes_once_each() {
    let emu = emulator_with(emulator_config(300.0)).await;
    emu.emulator
        .set_faults(snapgate_emulator::Faults {
            throttle: Some(snapgate_emulator::Throttle { burst: 4, per_second: 8.0 }),
            internal_failure_rate: 0.2,
            latency_ms: 30,
            copy_answer_delay_ms: 0,
            drop_rate: 0.1,
            fail_copies: Vec::new(),
        })
        .unwrap();
    let mut settings = quick_jobs(gateway::settings());
    settings.aws.max_attempts = 3;
    let gw = gateway::start(settings, &emu.endpoint_url(), "AKIDTEST").await;
    let mut calls = Vec::new();
    for i in 0..30 {
        let mut client = gw.client.clone();
        calls.push(tokio::spawn(async move {
            let mut retries = 0;
            loop {
                match client.copy_cluster_snapshot(copy_req(WEST, &format!("soak-{i}"))).await {
                    Ok(copy) => return (copy.into_inner(), retries),
                    Err(status) => {
                        // Only what the API documents as retryable, and it says when.
                        assert!(
                            matches!(status.code(), tonic::Code::Unavailable | tonic::Code::ResourceExhausted),
                            "{status:?}"
                        );
                        let delay = status.get_details_retry_info().and_then(|r| r.retry_delay);
                        assert!(delay.is_some(), "a retryable refusal says when: {status:?}");
                        retries += 1;
                        assert!(retries < 50, "soak-{i} never admitted");
                        tokio::time::sleep(delay.unwrap_or_default().min(Duration::from_millis(200))).await;
                    }
                }
            }
        }));
    }
    for call in calls {
        let (copy, _retries) = call.await.unwrap();
        // A retried request returns the copy its first attempt admitted, which may be done.
        let accepted = [pb::copy::State::Copying, pb::copy::State::Queued, pb::copy::State::Available];
        assert!(accepted.contains(&copy.state()), "{copy:?}");
    }
    all_available(&gw.client, &emu, 30, Duration::from_secs(120)).await;
    let east = us_east(&emu);
    assert_eq!(east.copies_made, 30, "each copy made once: {east:?}");
    assert!(east.peak_cross_region_in_progress <= 5, "{east:?}");
    let calls = emu.emulator.calls();
    assert!(calls.internal_failures > 0 && calls.throttled > 0 && calls.dropped > 0, "the faults happened: {calls:?}");
}

/// A copy whose answer is lost (the attempt timed out after AWS made the copy) is recognised by
/// the retry as the copy asked for: one copy, AVAILABLE, and the caller told it was accepted.
#[tokio::test]
async fn a_copy_made_by_an_attempt_that_timed_out_is_found_by_the_retry_not_made_twice() {
    let emu = emulator_with(emulator_config(300.0)).await;
    emu.emulator
        .set_faults(snapgate_emulator::Faults { throttle: None, copy_answer_delay_ms: 1_500, ..Default::default() })
        .unwrap();
    let mut settings = quick_jobs(gateway::settings());
    settings.aws.attempt_timeout_ms = 400;
    settings.aws.max_attempts = 3;
    let gw = gateway::start(settings, &emu.endpoint_url(), "AKIDTEST").await;
    let copy = gw.client.clone().copy_cluster_snapshot(copy_req(WEST, "lost-answer")).await.unwrap().into_inner();
    // Accepted (the half-second copy may even have finished while the retries ran).
    assert!(
        matches!(copy.state(), pb::copy::State::Copying | pb::copy::State::Queued | pb::copy::State::Available),
        "{copy:?}"
    );
    all_available(&gw.client, &emu, 1, Duration::from_secs(60)).await;
    let calls = emu.emulator.calls().get("CopyDBClusterSnapshot");
    assert!(calls >= 2, "the first attempt's answer was lost and the call retried: {calls} calls");
    assert_eq!(us_east(&emu).copies_made, 1, "made once");
}
