//! `snapgate bench copy-queue`: a fleet of cross-region copies asked for at once, against the
//! emulator with AWS's limit of 5 copies in progress per destination and RDS's throttling (300
//! burst, 12/s). It reports the time to the last copy against the ideal (ceil(N/5) rounds of
//! one copy's duration), the most copies ever in progress at the emulator, AWS calls per copy,
//! and what callers saw.

use std::time::{Duration, Instant};

use snapgate_emulator::EmulatorConfig;
use snapgate_gateway::config::{JobSettings, Settings, WatchSettings};
use snapgate_proto::{self as pb, CopyClusterSnapshotRequest, ListCopiesRequest};

use super::{bench_client, bench_settings};
use crate::cli::ScratchDir;

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct CopyQueueArgs {
    /// Copies asked for at once.
    #[arg(long, default_value_t = 500)]
    pub copies: usize,
    /// How long one copy takes at the emulator, in seconds.
    #[arg(long, default_value_t = 2.0)]
    pub copy_secs: f64,
}

/// The source: 150 GiB in us-west-2, copied into us-east-1.
const SOURCE: &str = "arn:aws:rds:us-west-2:123456789012:cluster-snapshot:orders-aurora-west-snap";
const SOURCE_GIB: f64 = 150.0;
const LIMIT: usize = 5;

pub(crate) async fn copy_queue(args: CopyQueueArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.copies > 0 && args.copy_secs > 0.0, "--copies and --copy-secs must be positive");
    let scratch = ScratchDir::new("bench")?;
    let emu = super::loopback_emulator(EmulatorConfig {
        seed: true,
        copy_gib_per_sec: SOURCE_GIB / args.copy_secs,
        snapshot_quota: args.copies + 100,
        cross_region_copy_limit: LIMIT,
        ..EmulatorConfig::default()
    })
    .await?;
    // Below RDS's 12/s, so that the gateway's own calls leave the account some room.
    let aws = super::bench_aws(10.0, 40);
    let watch = WatchSettings { min_poll_interval_ms: 200, max_poll_interval_ms: 1_000, ..WatchSettings::default() };
    let jobs =
        JobSettings { dispatch_interval_ms: 200, retry_initial_ms: 500, retry_max_ms: 5_000, ..JobSettings::default() };
    let addr = super::start_gateway(&emu, aws, Settings { watch, jobs, ..bench_settings(&scratch) }).await?;
    let client = bench_client(&addr.to_string()).await?;

    println!(
        "snapgate bench copy-queue: {} cross-region copies at once, {} s each, AWS limit {LIMIT} in progress, RDS throttling on",
        args.copies, args.copy_secs
    );
    let started = Instant::now();
    let mut calls = Vec::with_capacity(args.copies);
    for i in 0..args.copies {
        let mut client = client.clone();
        let request = CopyClusterSnapshotRequest {
            source_snapshot: SOURCE.into(),
            target_snapshot_id: format!("queue-{i}"),
            ..Default::default()
        };
        calls.push(tokio::spawn(async move { client.copy_cluster_snapshot(request).await }));
    }
    let (mut admitted, mut refused) = (0, std::collections::BTreeMap::<String, usize>::new());
    for call in calls {
        match call.await? {
            Ok(_) => admitted += 1,
            Err(status) => *refused.entry(format!("{:?}", status.code())).or_default() += 1,
        }
    }
    let admitted_in = started.elapsed();
    let mut most = 0;
    let mut lister = client.clone();
    let deadline = started + Duration::from_secs_f64(args.copy_secs * (args.copies as f64) * 2.0 + 120.0);
    let done = loop {
        for destination in emu.emulator.copies() {
            most = most.max(destination.cross_region_in_progress);
        }
        let request = ListCopiesRequest {
            page_size: 500,
            states: vec![pb::copy::State::Available as i32, pb::copy::State::Failed as i32],
            ..Default::default()
        };
        let mut finished = 0;
        let mut page = lister.list_copies(request.clone()).await?.into_inner();
        loop {
            finished += page.copies.len();
            if page.next_page_token.is_empty() {
                break;
            }
            let next = ListCopiesRequest { page_token: page.next_page_token.clone(), ..request.clone() };
            page = lister.list_copies(next).await?.into_inner();
        }
        if finished >= admitted {
            break Some(started.elapsed());
        }
        if Instant::now() > deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let Some(elapsed) = done else {
        anyhow::bail!("the copies did not finish within {:?}", deadline - started);
    };
    let counts = emu.emulator.calls();
    let total: u64 = counts.calls.values().sum();
    let made: usize = emu.emulator.copies().iter().map(|d| d.copies_made).sum();
    let peak = emu.emulator.copies().iter().map(|d| d.peak_cross_region_in_progress).max().unwrap_or(0);
    let ideal = (args.copies.div_ceil(LIMIT) as f64) * args.copy_secs;
    println!(
        "  admitted {admitted} in {:.2} s; refused: {refused:?} (quota errors to callers: {})",
        admitted_in.as_secs_f64(),
        refused.get("ResourceExhausted").copied().unwrap_or(0)
    );
    println!(
        "  all done in {:.1} s; ideal ceil({}/{LIMIT}) x {} s = {ideal:.1} s; ratio {:.3} (target <= 1.1)",
        elapsed.as_secs_f64(),
        args.copies,
        args.copy_secs,
        elapsed.as_secs_f64() / ideal
    );
    println!(
        "  most copies in progress at the emulator: sampled {most}, its own peak {peak} (target <= {LIMIT}); copies made {made}"
    );
    println!(
        "  AWS calls: {total} ({:?}); {:.2} per copy (target <= 4); throttled by AWS {}; refused for AWS's limit {}",
        counts.calls,
        total as f64 / args.copies as f64,
        counts.throttled,
        emu.emulator.calls().calls.get("CopyDBClusterSnapshot").copied().unwrap_or(0).saturating_sub(made as u64)
    );
    emu.stop().await;
    Ok(())
}
