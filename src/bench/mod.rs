//! `snapgate bench watch`: N concurrent WatchCopy streams over M copies in progress on the
//! emulator. It reports AWS describes per poll round, the resident memory of the gateway's
//! process, the lag from the poll that saw a change to the event at the client (p50, p99),
//! and the same watchers run the waiter way (each polling on its own) for the ratio of calls.
//!
//! The streams are opened by a child process (`bench watch-clients`), so the resident memory
//! measured is the gateway's (with the in-process emulator), not the load generator's.

pub(crate) mod auth;
mod child;
pub(crate) mod flood;
pub(crate) mod queue;
pub(crate) mod reads;
pub(crate) mod soak;
pub(crate) mod trace;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, BufReader};
use tonic::transport::Channel;

use crate::cli::ScratchDir;
use snapgate_emulator::{self as emulator, EmulatorConfig, Faults, Throttle};
use snapgate_gateway::Application;
use snapgate_gateway::config::{AwsSettings, Settings, WatchSettings};
use snapgate_proto::snapshot_copy_service_client::SnapshotCopyServiceClient;
use snapgate_proto::{self as pb, CopyClusterSnapshotRequest, WatchCopyRequest};

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct WatchBenchArgs {
    /// Concurrent WatchCopy streams.
    #[arg(long, default_value_t = 10_000)]
    pub streams: usize,
    /// Copies in progress that the streams watch.
    #[arg(long, default_value_t = 1_000)]
    pub copies: usize,
    /// How long the streams run.
    #[arg(long, default_value_t = 30)]
    pub seconds: u64,
    /// HTTP/2 connections the streams share.
    #[arg(long, default_value_t = 20)]
    pub connections: usize,
}

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct CopyBurstArgs {
    /// Copies requested at once.
    #[arg(long, default_value_t = 200)]
    pub copies: usize,
}

/// A burst of copies against the emulator with RDS's own throttling (300 burst, 12/s): every
/// copy must succeed, none may surface throttling, and the burst's time is set against the
/// lower bound the gateway's client-side limit implies.
pub(crate) async fn copy_burst(args: CopyBurstArgs) -> anyhow::Result<()> {
    let scratch = ScratchDir::new("bench")?;
    let emu = loopback_emulator(EmulatorConfig {
        seed: true,
        snapshot_quota: args.copies + 100,
        ..EmulatorConfig::default()
    })
    .await?;
    // The gateway's own default pacing, which the report sets against RDS's limit.
    let defaults = AwsSettings::default();
    let aws = bench_aws(defaults.rate_limit_per_sec(), defaults.rate_limit_burst());
    let (rate, burst) = (aws.rate_limit_per_sec(), aws.rate_limit_burst());
    let addr = start_gateway(&emu, aws, bench_settings(&scratch)).await?;
    let client = bench_client(&addr.to_string()).await?;
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(args.copies);
    for i in 0..args.copies {
        let mut client = client.clone();
        let req = CopyClusterSnapshotRequest {
            source_snapshot: "billing-pg-daily".into(),
            target_snapshot_id: format!("burst-{i}"),
            ..Default::default()
        };
        tasks.push(tokio::spawn(async move { client.copy_cluster_snapshot(req).await }));
    }
    let mut failed = 0;
    for t in tasks {
        if !matches!(t.await, Ok(Ok(_))) {
            failed += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let calls = emu.emulator.calls();
    let total: u64 = calls.calls.values().sum();
    let lower_bound = (total as f64 - f64::from(burst)).max(0.0) / rate;
    println!("snapgate bench copy-burst: {} copies at once against RDS's throttling (300 burst, 12/s)", args.copies);
    println!(
        "  succeeded {}, failed {failed}; AWS calls {total} ({:?}); throttled by AWS: {}",
        args.copies - failed,
        calls.calls,
        calls.throttled
    );
    println!(
        "  burst took {elapsed:.2} s; the client-side limit ({rate}/s, burst {burst}) allows it no faster than {lower_bound:.2} s"
    );
    emu.stop().await;
    Ok(())
}

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct WatchClientsArgs {
    #[arg(long)]
    pub addr: SocketAddr,
    #[arg(long)]
    pub names: std::path::PathBuf,
    #[arg(long)]
    pub streams: usize,
    #[arg(long)]
    pub seconds: u64,
    #[arg(long)]
    pub connections: usize,
}

fn rss_kib(pid: u32) -> u64 {
    child::proc_kib(pid, "VmRSS:")
}

pub(crate) async fn watch(args: WatchBenchArgs) -> anyhow::Result<()> {
    let scratch = ScratchDir::new("bench")?;
    let baseline_kib = rss_kib(std::process::id());
    // A 1000 GiB source copied at 10 GiB/s: every copy moves one percent a second.
    let emu = loopback_emulator(EmulatorConfig {
        copy_gib_per_sec: 10.0,
        snapshot_quota: args.copies + 10,
        faults: Faults { throttle: None, ..Faults::default() },
        ..EmulatorConfig::default()
    })
    .await?;
    // Setting up a thousand copies should not wait on the client-side pacing; the watch itself
    // makes ten calls a round, far below any limit.
    let aws = AwsSettings {
        region: Some("us-east-1".into()),
        rate_limit_per_sec: Some(10_000.0),
        rate_limit_burst: Some(10_000),
        ..AwsSettings::default()
    };
    let sdk = snapgate_gateway::fixed_sdk_config(&aws, &emu.endpoint_url(), "AKIDBENCH", "bench-secret").await;
    let rds = aws_sdk_rds::Client::new(&sdk);
    rds.create_db_cluster()
        .db_cluster_identifier("bench")
        .engine("aurora-postgresql")
        .allocated_storage(1000)
        .send()
        .await?;
    rds.create_db_cluster_snapshot()
        .db_cluster_identifier("bench")
        .db_cluster_snapshot_identifier("bench-src")
        .send()
        .await?;

    let watch = WatchSettings {
        min_poll_interval_ms: 1_000,
        max_poll_interval_ms: 4_000,
        max_streams: args.streams + 100,
        ..WatchSettings::default()
    };
    let admin = snapgate_gateway::config::AdminSettings { listen: None };
    let settings =
        Settings { listen: SocketAddr::from(([127, 0, 0, 1], 0)), aws, watch, admin, ..bench_settings(&scratch) };
    let app = Application::build(settings, sdk).await?;
    let addr = app.local_addr();
    let hub = app.watch_hub();
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    let mut client = bench_client(&addr.to_string()).await?;
    let mut names = Vec::with_capacity(args.copies);
    for i in 0..args.copies {
        let req = CopyClusterSnapshotRequest {
            source_snapshot: "bench-src".into(),
            target_snapshot_id: format!("bench-copy-{i}"),
            ..Default::default()
        };
        names.push(client.copy_cluster_snapshot(req).await?.into_inner().name);
    }
    // From here on, RDS's real throttling applies: the watch must live within it.
    emu.emulator
        .set_faults(Faults { throttle: Some(Throttle::default()), ..Faults::default() })
        .map_err(anyhow::Error::msg)?;
    let names_file = std::env::temp_dir().join(format!("snapgate-bench-{}.txt", std::process::id()));
    std::fs::write(&names_file, names.join("\n"))?;

    println!(
        "snapgate bench watch: {} streams over {} copies for {} s ({} connections)",
        args.streams, args.copies, args.seconds, args.connections
    );
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .args(["bench", "watch-clients", "--addr", &addr.to_string(), "--names"])
        .arg(&names_file)
        .args(["--streams", &args.streams.to_string(), "--seconds", &args.seconds.to_string()])
        .args(["--connections", &args.connections.to_string()])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting the load generator")?;
    let mut lines = BufReader::new(child.stdout.take().context("no stdout")?).lines();
    let mut peak_kib = 0;
    let mut describes_at_ready = 0;
    let mut rounds_at_ready = 0;
    let mut report = None;
    let mut sampler = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            line = lines.next_line() => match line? {
                Some(l) if l == "ready" => {
                    describes_at_ready = emu.emulator.calls().get("DescribeDBClusterSnapshots");
                    rounds_at_ready = hub.poll_rounds();
                    println!("  streams open: {} (watched snapshots: {})", hub.open_streams(), hub.watched_snapshots());
                }
                Some(l) => report = Some(l),
                None => break,
            },
            _ = sampler.tick() => peak_kib = peak_kib.max(rss_kib(std::process::id())),
        }
    }
    child.wait().await?;
    let _ = std::fs::remove_file(&names_file);
    let calls = emu.emulator.calls();
    let describes = calls.get("DescribeDBClusterSnapshots") - describes_at_ready;
    let rounds = hub.poll_rounds() - rounds_at_ready;
    let report = report.context("the load generator printed no report")?;
    println!("  load generator: {report}");
    println!(
        "  poll rounds: {rounds}; describes: {describes}; describes per round: {:.2} (target <= {}); throttled: {}",
        describes as f64 / rounds.max(1) as f64,
        args.copies.div_ceil(100),
        calls.throttled
    );
    println!(
        "  resident memory (gateway + emulator process): peak {:.1} MiB, baseline before start {:.1} MiB (target <= 100 MiB at 10,000 streams)",
        peak_kib as f64 / 1024.0,
        baseline_kib as f64 / 1024.0
    );
    let gateway_per_30s = describes as f64 * 30.0 / args.seconds as f64;
    let waiter = waiter_way(&emu.endpoint_url(), &names, args.streams, args.seconds).await;
    println!(
        "  waiter way ({} watchers each describing every 30 s, as botocore's waiter does), one {} s window: {} calls, {} throttled",
        args.streams, args.seconds, waiter.0, waiter.1
    );
    println!(
        "  AWS calls per 30 s: gateway {:.0}, waiters {:.0}: the gateway makes {:.0}x fewer",
        gateway_per_30s,
        waiter.0 as f64 * 30.0 / args.seconds as f64,
        (waiter.0 as f64) / (describes.max(1) as f64)
    );
    emu.stop().await;
    Ok(())
}

/// Each watcher polls on its own: one describe per watcher every 30 s, spread over the window.
async fn waiter_way(endpoint: &str, names: &[String], watchers: usize, seconds: u64) -> (u64, u64) {
    let aws = AwsSettings { region: Some("us-east-1".into()), max_attempts: Some(1), ..AwsSettings::default() };
    let sdk = snapgate_gateway::fixed_sdk_config(&aws, endpoint, "AKIDWAITER", "waiter-secret").await;
    let rds = aws_sdk_rds::Client::new(&sdk);
    let calls = Arc::new(AtomicU64::new(0));
    let throttled = Arc::new(AtomicU64::new(0));
    let window = Duration::from_secs(seconds);
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(watchers);
    for i in 0..watchers {
        let (rds, calls, throttled) = (rds.clone(), calls.clone(), throttled.clone());
        let id = names[i % names.len()].rsplit(':').next().unwrap_or_default().to_owned();
        let offset = Duration::from_secs(30).mul_f64(i as f64 / watchers as f64);
        tasks.push(tokio::spawn(async move {
            let mut at = start + offset;
            while at < start + window {
                tokio::time::sleep_until(at).await;
                calls.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = rds.describe_db_cluster_snapshots().db_cluster_snapshot_identifier(&id).send().await
                    && aws_sdk_rds::error::ProvideErrorMetadata::code(&e) == Some("ThrottlingException")
                {
                    throttled.fetch_add(1, Ordering::Relaxed);
                }
                at += Duration::from_secs(30);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    (calls.load(Ordering::Relaxed), throttled.load(Ordering::Relaxed))
}

/// The benchmarks' one caller: a static token and a policy that lets it do everything, so
/// every call pays for authentication and authorization as in production.
pub(crate) const BENCH_TOKEN: &str = "snapgate-bench-token";

pub(crate) fn bench_settings(scratch: &ScratchDir) -> Settings {
    Settings {
        store: snapgate_gateway::config::StoreSettings { data_dir: scratch.path().to_owned(), ..Default::default() },
        auth: snapgate_gateway::config::AuthSettings {
            static_tokens: vec![snapgate_gateway::config::StaticToken {
                token: snapgate_gateway::config::Secret::new(BENCH_TOKEN),
                principal: "bench".into(),
                groups: Vec::new(),
                team: None,
            }],
            ..Default::default()
        },
        authz: snapgate_gateway::config::AuthzSettings {
            policies: Some(r#"permit(principal == Snapgate::Caller::"bench", action, resource);"#.into()),
            ..Default::default()
        },
        // The benchmarks' one caller is every client at once: no share to hold it to.
        fair_share: snapgate_gateway::config::FairShareSettings {
            calls_per_sec: 1e9,
            burst: u32::MAX,
            aws_calls_per_sec: 1e9,
            aws_burst: u32::MAX,
            aws_in_flight: u32::MAX,
            overrides: Vec::new(),
        },
        ..Settings::default()
    }
}

fn bearer(mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    request
        .metadata_mut()
        .insert("authorization", tonic::metadata::MetadataValue::from_static("Bearer snapgate-bench-token"));
    Ok(request)
}

pub(crate) type BenchClient = SnapshotCopyServiceClient<
    tonic::service::interceptor::InterceptedService<
        Channel,
        fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>,
    >,
>;

/// The emulator with `config` on a free loopback port.
pub(crate) async fn loopback_emulator(config: EmulatorConfig) -> anyhow::Result<snapgate_emulator::EmulatorHandle> {
    emulator::spawn(config, SocketAddr::from(([127, 0, 0, 1], 0))).await
}

/// The AWS side of a benchmark's gateway: the emulator's default account in us-east-1, paced
/// at `per_second` with `burst`.
pub(crate) fn bench_aws(per_second: f64, burst: u32) -> AwsSettings {
    AwsSettings {
        region: Some("us-east-1".into()),
        account_id: Some(emulator::DEFAULT_ACCOUNT.into()),
        rate_limit_per_sec: Some(per_second),
        rate_limit_burst: Some(burst),
        ..AwsSettings::default()
    }
}

/// Starts the gateway on `emulator` as the bench caller's, with `aws` and the rest of
/// `settings` (listen and admin are set here); returns its address.
pub(crate) async fn start_gateway(
    emulator: &snapgate_emulator::EmulatorHandle,
    aws: AwsSettings,
    settings: Settings,
) -> anyhow::Result<SocketAddr> {
    let sdk = snapgate_gateway::fixed_sdk_config(&aws, &emulator.endpoint_url(), "AKIDBENCH", "bench-secret").await;
    let admin = snapgate_gateway::config::AdminSettings { listen: None };
    let settings = Settings { listen: SocketAddr::from(([127, 0, 0, 1], 0)), aws, admin, ..settings };
    let app = Application::build(settings, sdk).await?;
    let addr = app.local_addr();
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    Ok(addr)
}

/// The gateway on an emulator with RDS's throttling off and no client-side pacing: for
/// benchmarks that measure a call, not AWS's rate limit. Returns the emulator (stop it at the
/// end) and a client that authenticates as the bench caller.
pub(crate) async fn unthrottled_gateway() -> anyhow::Result<(snapgate_emulator::EmulatorHandle, BenchClient, ScratchDir)>
{
    let scratch = ScratchDir::new("bench")?;
    let config = EmulatorConfig {
        seed: true,
        faults: Faults { throttle: None, ..Faults::default() },
        ..EmulatorConfig::default()
    };
    let emu = loopback_emulator(config).await?;
    let addr = start_gateway(&emu, bench_aws(1e6, 1_000_000), bench_settings(&scratch)).await?;
    Ok((emu, bench_client(&addr.to_string()).await?, scratch))
}

pub(crate) async fn bench_client(addr: &str) -> anyhow::Result<BenchClient> {
    let channel = Channel::from_shared(format!("http://{addr}"))?.connect().await?;
    Ok(SnapshotCopyServiceClient::with_interceptor(channel, bearer as fn(_) -> _))
}

/// The token of `bench flood`'s attackers: a caller of its own, held to its share.
pub(crate) const ATTACKER_TOKEN: &str = "snapgate-bench-attacker-token";

fn attacker_bearer(mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    request
        .metadata_mut()
        .insert("authorization", tonic::metadata::MetadataValue::from_static("Bearer snapgate-bench-attacker-token"));
    Ok(request)
}

/// A client that authenticates as the attacker.
pub(crate) async fn attacker_client(addr: &str) -> anyhow::Result<BenchClient> {
    let channel = Channel::from_shared(format!("http://{addr}"))?.connect().await?;
    Ok(SnapshotCopyServiceClient::with_interceptor(channel, attacker_bearer as fn(_) -> _))
}

/// The load generator: opens the streams, records the lag of every change event, prints
/// `ready` once all streams are open and a one-line report at the end.
pub(crate) async fn watch_clients(args: WatchClientsArgs) -> anyhow::Result<()> {
    let names: Vec<String> = std::fs::read_to_string(&args.names)?.lines().map(str::to_owned).collect();
    let mut channels = Vec::new();
    for _ in 0..args.connections.max(1) {
        channels.push(Channel::from_shared(format!("http://{}", args.addr))?.connect().await?);
    }
    let lags = Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
    let errors = Arc::new(AtomicU64::new(0));
    let events = Arc::new(AtomicU64::new(0));
    let stop = tokio::time::Instant::now() + Duration::from_secs(args.seconds);
    let mut opened = Vec::with_capacity(args.streams);
    for i in 0..args.streams {
        let mut client = SnapshotCopyServiceClient::with_interceptor(channels[i % channels.len()].clone(), bearer);
        let name = names[i % names.len()].clone();
        opened.push(tokio::spawn(
            async move { client.watch_copy(WatchCopyRequest { name }).await.map(|r| r.into_inner()) },
        ));
    }
    let mut streams = Vec::with_capacity(args.streams);
    for handle in opened {
        match handle.await? {
            Ok(s) => streams.push(s),
            Err(_) => {
                errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    println!("ready");
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(streams.len());
    for mut stream in streams {
        let (lags, errors, events) = (lags.clone(), errors.clone(), events.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    m = stream.message() => m,
                    () = tokio::time::sleep_until(stop) => return,
                };
                match next {
                    Ok(Some(event)) => {
                        events.fetch_add(1, Ordering::Relaxed);
                        let changed = matches!(
                            event.change(),
                            pb::copy_event::Change::Progress
                                | pb::copy_event::Change::State
                                | pb::copy_event::Change::Terminal
                        );
                        if changed && let Some(observed) = event.observe_time.and_then(|t| SystemTime::try_from(t).ok())
                        {
                            let lag = SystemTime::now().duration_since(observed).unwrap_or_default();
                            lags.lock().unwrap_or_else(|p| p.into_inner()).push(lag.as_micros() as u64);
                        }
                    }
                    Ok(None) => return,
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let mut lags = lags.lock().unwrap_or_else(|p| p.into_inner()).clone();
    lags.sort_unstable();
    let pct = |p: f64| lags.get(((lags.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(0) as f64 / 1000.0;
    println!(
        "{} events in {:.0} s, {} change events, lag p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (target p99 <= 100 ms); stream errors {}",
        events.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64(),
        lags.len(),
        pct(0.5),
        pct(0.99),
        pct(1.0),
        errors.load(Ordering::Relaxed)
    );
    Ok(())
}
