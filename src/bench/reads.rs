//! `snapgate bench reads` and `snapgate bench unary`: what reads cost AWS and what a call costs
//! the gateway.
//!
//! `reads`: N callers each polling GetCopy once a second over M copies in progress, as internal
//! services poll; it prints the callers' requests per second against the
//! DescribeDBClusterSnapshots calls per second the emulator received, and the reads' latency.
//!
//! `unary`: the same concurrent load, in turn, against a bare tonic server answering the
//! standard health check (the floor: HTTP/2, gRPC framing, one tiny message) and against
//! GetCopy through the whole gateway (static token, Cedar, tracing layers, metrics, edge),
//! answered from the poll's observation. It prints requests per second and the process's CPU
//! time per call for each, and their ratios. Both servers run in this process with their
//! clients, so CPU per call includes the client's share, the same for both.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tonic::transport::Channel;

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

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct UnaryBenchArgs {
    /// Concurrent callers.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// How long each server is driven.
    #[arg(long, default_value_t = 8)]
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

fn cpu_us() -> u64 {
    super::child::cpu_us("self")
}

/// Drives `call` from `concurrency` tasks for `seconds`; returns (calls per second, CPU us per
/// call, errors).
async fn drive<F, Fut>(concurrency: usize, seconds: u64, call: F) -> (f64, f64, u64)
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = bool> + Send,
{
    // Warm up: connections open, caches filled.
    for _ in 0..200 {
        call().await;
    }
    let calls = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let cpu_before = cpu_us();
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (call, calls, errors) = (call.clone(), calls.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until {
                if call().await {
                    calls.fetch_add(1, Ordering::Relaxed);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = (cpu_us() - cpu_before) as f64;
    let n = calls.load(Ordering::Relaxed).max(1) as f64;
    (n / elapsed, cpu / n, errors.load(Ordering::Relaxed))
}

pub(crate) async fn unary(args: UnaryBenchArgs) -> anyhow::Result<()> {
    // The floor: tonic serving the standard health check, nothing else.
    let (_reporter, health) = tonic_health::server::health_reporter();
    let floor_addr = std::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?.local_addr()?;
    tokio::spawn(tonic::transport::Server::builder().add_service(health).serve(floor_addr));
    let connect = async {
        loop {
            if let Ok(endpoint) = Channel::from_shared(format!("http://{floor_addr}"))
                && let Ok(channel) = endpoint.connect().await
            {
                return channel;
            }
            tokio::task::yield_now().await;
        }
    };
    let channel = tokio::time::timeout(Duration::from_secs(10), connect).await?;
    let health = tonic_health::pb::health_client::HealthClient::new(channel);
    let (floor_rps, floor_cpu, floor_errors) = drive(args.concurrency, args.seconds, move || {
        let mut health = health.clone();
        async move { health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.is_ok() }
    })
    .await;

    // The gateway: GetCopy with a static token, then with a JWT (ES256, from an issuer made for
    // the run), Cedar, every layer, from the poll's observation.
    let scratch = ScratchDir::new("bench-unary")?;
    let issuer = super::auth::BenchIssuer::new(scratch.path())?;
    let mut settings = bench_settings(&scratch);
    settings.auth.jwt = Some(issuer.settings.clone());
    settings.authz.policies = Some(
        r#"permit(principal == Snapgate::Caller::"bench", action, resource);
permit(principal == Snapgate::Caller::"svc-payments", action, resource);"#
            .into(),
    );
    let emu = loopback_emulator(EmulatorConfig {
        seed: true,
        faults: Faults { throttle: None, ..Faults::default() },
        ..EmulatorConfig::default()
    })
    .await?;
    let addr = start_gateway(&emu, bench_aws(100_000.0, 100_000), settings).await?;
    let client = bench_client(&addr.to_string()).await?;
    emu.emulator.reset_calls();
    let (gateway_rps, gateway_cpu, gateway_errors) = drive(args.concurrency, args.seconds, move || {
        let mut client = client.clone();
        async move { client.get_copy(GetCopyRequest { name: "billing-pg-daily".into(), fresh: false }).await.is_ok() }
    })
    .await;
    let bearer: tonic::metadata::MetadataValue<tonic::metadata::Ascii> =
        format!("Bearer {}", issuer.token("svc-payments", None)?).parse()?;
    let channel = Channel::from_shared(format!("http://{addr}"))?.connect().await?;
    let jwt_client = snapgate_proto::snapshot_copy_service_client::SnapshotCopyServiceClient::with_interceptor(
        channel,
        move |mut request: tonic::Request<()>| {
            request.metadata_mut().insert("authorization", bearer.clone());
            Ok(request)
        },
    );
    let (jwt_rps, jwt_cpu, jwt_errors) = drive(args.concurrency, args.seconds, move || {
        let mut client = jwt_client.clone();
        async move { client.get_copy(GetCopyRequest { name: "billing-pg-daily".into(), fresh: false }).await.is_ok() }
    })
    .await;
    let describes = emu.emulator.calls().get("DescribeDBClusterSnapshots");

    println!(
        "snapgate bench unary: {} concurrent callers, {} s each, one process (CPU per call includes the client's)",
        args.concurrency, args.seconds
    );
    println!(
        "  floor, tonic health check:        {floor_rps:>9.0} calls/s, {floor_cpu:>7.1} us CPU per call ({floor_errors} errors)"
    );
    println!(
        "  GetCopy, static token:            {gateway_rps:>9.0} calls/s, {gateway_cpu:>7.1} us CPU per call ({gateway_errors} errors)"
    );
    println!(
        "  GetCopy, JWT ES256:               {jwt_rps:>9.0} calls/s, {jwt_cpu:>7.1} us CPU per call ({jwt_errors} errors; {describes} AWS describes in all)"
    );
    let floor = floor_cpu.max(0.001);
    println!(
        "  static token / floor: {:.2}x the CPU per call (target <= 2), {:.2}x the throughput",
        gateway_cpu / floor,
        gateway_rps / floor_rps.max(0.001)
    );
    println!(
        "  JWT / floor:          {:.2}x the CPU per call (target <= 2.5), {:.2}x the throughput",
        jwt_cpu / floor,
        jwt_rps / floor_rps.max(0.001)
    );
    emu.stop().await;
    Ok(())
}
