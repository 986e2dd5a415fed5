//! `snapgate bench plans`: a DR plan over a fleet, against the emulator with AWS's limit of 5
//! copies in progress per destination and RDS's throttling. The fleet has `--clusters`
//! production clusters among a quarter more that the plan does not select, and the plan copies
//! to two regions. Each night every selected cluster gets a new snapshot and the plan runs once;
//! with `keep_last = 1`, every night after the first expires the previous night's copies. At a
//! destination, snapshots tagged as the plan's by hand (never recorded as its copies) must stay.
//!
//! It reports per night: the describes a run's selection and its destination looks cost
//! (measured on a preview, which makes exactly those calls, by region), the run's time against the ideal (ceil(N/5)
//! rounds of one copy's duration: the destinations copy in parallel), copies made against asked,
//! and expiries; and at the end, foreign snapshots deleted (target 0). The first line says when a
//! run did not hold the bench's premise (every copy made once, nothing foreign deleted).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use snapgate_emulator::{EmulatorConfig, Faults};
use snapgate_gateway::config::{JobSettings, PlanSettings, Settings, WatchSettings};
use snapgate_proto::{self as pb, plan_run_item::Outcome};

use super::{bench_client, bench_settings};
use crate::cli::ScratchDir;

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct PlansBenchArgs {
    /// Production clusters the plan selects.
    #[arg(long, default_value_t = 200)]
    pub clusters: usize,
    /// Nights: each a new snapshot of every cluster and one run.
    #[arg(long, default_value_t = 2)]
    pub nights: usize,
    /// How long one copy takes at the emulator, in seconds.
    #[arg(long, default_value_t = 1.0)]
    pub copy_secs: f64,
}

const LIMIT: usize = 5;
const PLAN: &str = "bench-dr";
const DESTINATIONS: [&str; 2] = ["us-west-2", "eu-west-1"];
/// Clusters' size in the emulator (Aurora's default there).
const CLUSTER_GIB: f64 = 10.0;
/// Snapshots tagged as the plan's by hand at each destination.
const FOREIGN: usize = 20;
/// The gateway's pace toward AWS per region (below RDS's 12/s), and its burst.
const PACE: f64 = 10.0;
const BURST: u32 = 40;
/// Describes a run's selection may cost.
const DESCRIBES_TARGET: u64 = 12;

pub(crate) async fn plans(args: PlansBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.clusters > 0 && args.nights > 0 && args.copy_secs > 0.0,
        "--clusters, --nights and --copy-secs must be positive"
    );
    let scratch = ScratchDir::new("bench")?;
    let quota = args.clusters * (args.nights + 2) + 200;
    let emu = super::loopback_emulator(EmulatorConfig {
        copy_gib_per_sec: CLUSTER_GIB / args.copy_secs,
        snapshot_quota: quota,
        cross_region_copy_limit: LIMIT,
        ..EmulatorConfig::default()
    })
    .await?;
    let throttling = emu.emulator.faults();
    // The fleet is made without RDS's throttling, which is on again for the runs.
    emu.emulator.set_faults(Faults { throttle: None, ..throttling.clone() }).map_err(anyhow::Error::msg)?;
    let aws = super::bench_aws(PACE, BURST);
    let sdk = snapgate_gateway::fixed_sdk_config(&aws, &emu.endpoint_url(), "AKIDBENCH", "bench-secret").await;
    let rds = |region: &str| {
        aws_sdk_rds::Client::from_conf(
            aws_sdk_rds::config::Builder::from(&sdk)
                .region(aws_sdk_rds::config::Region::new(region.to_owned()))
                .build(),
        )
    };
    let east = rds("us-east-1");
    let others = args.clusters.div_ceil(4);
    for i in 0..args.clusters + others {
        let (id, env) =
            if i < args.clusters { (format!("prod-{i:04}"), "prod") } else { (format!("dev-{i:04}"), "dev") };
        east.create_db_cluster()
            .db_cluster_identifier(&id)
            .engine("aurora-postgresql")
            .master_username("admin")
            .tags(aws_sdk_rds::types::Tag::builder().key("env").value(env).build())
            .send()
            .await?;
    }
    let mut foreign = BTreeSet::new();
    for region in DESTINATIONS {
        let client = rds(region);
        client
            .create_db_cluster()
            .db_cluster_identifier("dr-standby")
            .engine("aurora-postgresql")
            .master_username("admin")
            .send()
            .await?;
        for i in 0..FOREIGN {
            let id = format!("hand-tagged-{i:02}");
            client
                .create_db_cluster_snapshot()
                .db_cluster_identifier("dr-standby")
                .db_cluster_snapshot_identifier(&id)
                .tags(aws_sdk_rds::types::Tag::builder().key("snapgate:plan").value(PLAN).build())
                .send()
                .await?;
            foreign.insert(format!("{region}/{id}"));
        }
    }
    emu.emulator.set_faults(throttling.clone()).map_err(anyhow::Error::msg)?;

    let watch = WatchSettings { min_poll_interval_ms: 200, max_poll_interval_ms: 1_000, ..WatchSettings::default() };
    let jobs =
        JobSettings { dispatch_interval_ms: 200, retry_initial_ms: 500, retry_max_ms: 5_000, ..JobSettings::default() };
    let plans = PlanSettings { scheduler: false, follow_interval_ms: 500, ..PlanSettings::default() };
    let addr = super::start_gateway(&emu, aws, Settings { watch, jobs, plans, ..bench_settings(&scratch) }).await?;
    let mut client = bench_client(&addr.to_string()).await?;
    let plan = pb::Plan {
        name: PLAN.into(),
        schedule: "0 3 * * *".into(),
        select: Some(pb::PlanSelect {
            engines: vec!["aurora-postgresql".into()],
            cluster_tags: [("env".to_owned(), "prod".to_owned())].into(),
            ..Default::default()
        }),
        copy: DESTINATIONS
            .iter()
            .map(|r| pb::PlanCopyAction { destination_region: (*r).into(), keep_last: Some(1), ..Default::default() })
            .collect(),
        ..Default::default()
    };
    client.apply_plan(pb::ApplyPlanRequest { plan: Some(plan) }).await?;

    let mut lines = Vec::new();
    let mut premise = Vec::new();
    let mut worst_ratio: f64 = 0.0;
    let mut most_describes = 0;
    for night in 1..=args.nights {
        if night > 1 {
            emu.emulator.set_faults(Faults { throttle: None, ..throttling.clone() }).map_err(anyhow::Error::msg)?;
            for i in 0..args.clusters {
                east.create_db_cluster_snapshot()
                    .db_cluster_identifier(format!("prod-{i:04}"))
                    .db_cluster_snapshot_identifier(format!("prod-{i:04}-night-{night}"))
                    .send()
                    .await?;
            }
            emu.emulator.set_faults(throttling.clone()).map_err(anyhow::Error::msg)?;
        }
        emu.emulator.reset_calls();
        client.preview_plan(pb::PreviewPlanRequest { name: PLAN.into(), plan: None }).await?;
        let looked = emu.emulator.calls();
        let describes = looked.in_region("us-east-1", "DescribeDBClusters")
            + looked.in_region("us-east-1", "DescribeDBClusterSnapshots");
        let looks: u64 = DESTINATIONS.iter().map(|r| looked.in_region(r, "DescribeDBClusterSnapshots")).sum();
        most_describes = most_describes.max(describes);

        emu.emulator.reset_calls();
        let made_before: usize = emu.emulator.copies().iter().map(|d| d.copies_made).sum();
        let started = Instant::now();
        let run = client.run_plan(pb::RunPlanRequest { name: PLAN.into() }).await?.into_inner();
        let deadline = started + Duration::from_secs_f64(args.copy_secs * args.clusters as f64 * 2.0 + 300.0);
        let ended = loop {
            let runs = client
                .list_plan_runs(pb::ListPlanRunsRequest { name: PLAN.into(), page_size: 10 })
                .await?
                .into_inner()
                .runs;
            if let Some(r) = runs.into_iter().find(|r| r.id == run.id)
                && r.state() != pb::plan_run::State::Running
            {
                break r;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "night {night}: the run did not end within {:?}",
                deadline - started
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let elapsed = started.elapsed().as_secs_f64();
        let made: usize = emu.emulator.copies().iter().map(|d| d.copies_made).sum::<usize>() - made_before;
        let count = |o: Outcome| ended.items.iter().filter(|i| i.outcome() == o).count();
        let asked = args.clusters * DESTINATIONS.len();
        // The copies, in rounds of the limit (destinations in parallel); then each destination's
        // expiries (one a cluster after the first night) at the pace, past the burst.
        let expiries = if night > 1 { args.clusters } else { 0 };
        let ideal = args.clusters.div_ceil(LIMIT) as f64 * args.copy_secs
            + expiries.saturating_sub(BURST as usize) as f64 / PACE;
        let ratio = elapsed / ideal;
        worst_ratio = worst_ratio.max(ratio);
        let calls = emu.emulator.calls();
        if made != asked || count(Outcome::Copied) != asked {
            premise.push(format!("night {night}: {made} copies made of {asked} asked"));
        }
        if ended.state() != pb::plan_run::State::Succeeded {
            premise.push(format!("night {night}: the run ended {:?}: {}", ended.state(), ended.reason));
        }
        lines.push(format!(
            "  night {night}: run {:?} in {elapsed:.1} s; ideal ceil({}/{LIMIT}) x {} s + {expiries} expiries at {PACE}/s past a burst of {BURST} = {ideal:.1} s; ratio {ratio:.3} (target <= 1.1)\n    \
             selection: {describes} describes (target <= {DESCRIBES_TARGET}); destination looks: {looks} describes; copies made {made} of {asked}; expired {}; \
             AWS calls in the run {} ({} describes, {} deletes), throttled by AWS {}",
            ended.state(),
            args.clusters,
            args.copy_secs,
            count(Outcome::Expired),
            calls.calls.values().sum::<u64>(),
            calls.get("DescribeDBClusterSnapshots") + calls.get("DescribeDBClusters"),
            calls.get("DeleteDBClusterSnapshot"),
            calls.throttled,
        ));
    }

    let mut still = BTreeSet::new();
    for region in DESTINATIONS {
        let out = rds(region).describe_db_cluster_snapshots().db_cluster_identifier("dr-standby").send().await?;
        for s in out.db_cluster_snapshots() {
            still.insert(format!("{region}/{}", s.db_cluster_snapshot_identifier().unwrap_or_default()));
        }
    }
    let foreign_deleted = foreign.difference(&still).count();
    if foreign_deleted > 0 {
        premise.push(format!("{foreign_deleted} snapshots the plan did not make were deleted"));
    }
    if !premise.is_empty() {
        println!("snapgate bench plans: PREMISE NOT HELD: {}", premise.join("; "));
    }
    println!(
        "snapgate bench plans: {} of {} clusters to {} regions, {} nights, keep_last 1, {} s a copy, AWS limit {LIMIT} in progress, RDS throttling on",
        args.clusters,
        args.clusters + others,
        DESTINATIONS.len(),
        args.nights,
        args.copy_secs
    );
    for line in lines {
        println!("{line}");
    }
    println!(
        "  worst: ratio {worst_ratio:.3} (target <= 1.1), {most_describes} selection describes (target <= {DESCRIBES_TARGET}); foreign snapshots deleted {foreign_deleted} of {} (target 0)",
        foreign.len()
    );
    emu.stop().await;
    Ok(())
}
