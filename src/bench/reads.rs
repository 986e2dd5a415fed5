//! `snapgate bench reads`: what reads cost AWS.
//!
//! N callers each polling GetCopy once a second over M copies in progress, as internal
//! services poll; it prints the callers' requests per second against the
//! DescribeDBClusterSnapshots calls per second the emulator received, and the reads' latency.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{bench_aws, bench_client, bench_settings, loopback_emulator, make_copies, start_gateway};
use crate::cli::ScratchDir;
use snapgate_emulator::{EmulatorConfig, Faults};
use snapgate_proto::GetCopyRequest;

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ReadsBenchArgs {
    /// Callers, each polling one copy a second.
    #[arg(long, default_value_t = 1_000)]
    pub callers: usize,
    /// Copies in progress the callers poll.
    #[arg(long, default_value_t = 100)]
    pub copies: usize,
    /// How long the callers poll.
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[(((p / 100.0) * (sorted.len() - 1) as f64).round() as usize).min(sorted.len() - 1)]
}

pub(crate) async fn reads(args: ReadsBenchArgs) -> anyhow::Result<()> {
    let scratch = ScratchDir::new("bench-reads")?;
    let emu = loopback_emulator(EmulatorConfig {
        seed: true,
        copy_gib_per_sec: 0.001,
        snapshot_quota: args.copies + 100,
        faults: Faults { throttle: None, ..Faults::default() },
        ..EmulatorConfig::default()
    })
    .await?;
    let addr = start_gateway(&emu, bench_aws(100_000.0, 100_000), bench_settings(&scratch)).await?;
    let client = bench_client(&addr.to_string()).await?;
    let names = Arc::new(make_copies(&client, "billing-pg-daily", "read", args.copies).await?);
    emu.emulator.reset_calls();
    let started = Instant::now();
    let until = started + Duration::from_secs(args.seconds);
    let errors = Arc::new(AtomicU64::new(0));
    let mut callers = Vec::with_capacity(args.callers);
    for i in 0..args.callers {
        let (client, names, errors) = (client.clone(), names.clone(), errors.clone());
        callers.push(tokio::spawn(async move {
            // Spread over the second, as independent services would be.
            let offset = Duration::from_micros((i as u64 * 1_000_000 / args.callers.max(1) as u64) % 1_000_000);
            tokio::time::sleep(offset).await;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut latencies = Vec::new();
            let mut n = i;
            while Instant::now() < until {
                tick.tick().await;
                let name = names[n % names.len()].clone();
                n += 7;
                let began = Instant::now();
                match client.clone().get_copy(GetCopyRequest { name, fresh: false }).await {
                    Ok(_) => latencies.push(began.elapsed().as_micros() as u64),
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for caller in callers {
        latencies.extend(caller.await?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let describes = emu.emulator.calls().get("DescribeDBClusterSnapshots");
    latencies.sort_unstable();
    let requests = latencies.len() as f64 + errors.load(Ordering::Relaxed) as f64;
    println!(
        "snapgate bench reads: {} callers polling GetCopy once a second over {} copies in progress, {:.0} s",
        args.callers, args.copies, elapsed
    );
    println!(
        "  callers' requests: {:.0}/s ({} errors); AWS DescribeDBClusterSnapshots calls: {:.2}/s ({} in all); {:.0} requests per AWS call",
        requests / elapsed,
        errors.load(Ordering::Relaxed),
        describes as f64 / elapsed,
        describes,
        requests / (describes.max(1) as f64)
    );
    println!(
        "  GetCopy latency: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        percentile(&latencies, 50.0) as f64 / 1000.0,
        percentile(&latencies, 99.0) as f64 / 1000.0,
        latencies.last().copied().unwrap_or(0) as f64 / 1000.0
    );
    emu.stop().await;
    Ok(())
}
