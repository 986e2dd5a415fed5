//! `snapgate bench watch`: N concurrent WatchCopy streams over M copies in progress on the
//! emulator. It reports AWS describes per poll round, the resident memory of the gateway's
//! process, the lag from the poll that saw a change to the event at the client (p50, p99),
//! and the same watchers run the waiter way (each polling on its own) for the ratio of calls.
//!
//! Three processes share the machine: the gateway (`snapgate serve`, a child), the emulator
//! (in this process) and the load generator (`bench watch-clients`, another child), so the
//! resident memory measured is the gateway's own.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, BufReader};
use tonic::transport::Channel;

use super::child::{ChildGateway, common_config, free_port, metric, metrics, proc_kib};
use super::{bearer, bench_client, loopback_emulator, make_copies};
use crate::cli::ScratchDir;
use snapgate_emulator::{EmulatorConfig, Faults, Throttle};
use snapgate_gateway::config::AwsSettings;
use snapgate_proto::snapshot_copy_service_client::SnapshotCopyServiceClient;
use snapgate_proto::{self as pb, WatchCopyRequest};

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

/// The gateway's configuration: polls every 1–4 s, room for every stream, and a caller with
/// no fair share to hold it to (it is every watcher at once).
fn gateway_config(args: &WatchBenchArgs, port: u16, admin_port: u16, endpoint: &str, data: &std::path::Path) -> String {
    format!(
        r#"listen = "127.0.0.1:{port}"
[server]
shutdown_grace_secs = 2
[watch]
min_poll_interval_ms = 1000
max_poll_interval_ms = 4000
max_streams = {max_streams}
[fair_share]
[[fair_share.overrides]]
principal = "bench"
calls_per_sec = 1000000000.0
burst = 4000000000
in_flight = 4000000000
[aws]
region = "us-east-1"
endpoint_url = "{endpoint}"
account_id = "{account}"
rate_limit_per_sec = 10000.0
rate_limit_burst = 10000
{common}"#,
        max_streams = args.streams + 100,
        account = snapgate_emulator::DEFAULT_ACCOUNT,
        common = common_config(admin_port, "", data),
    )
}

pub(crate) async fn watch(args: WatchBenchArgs) -> anyhow::Result<()> {
    // The report, printed at the end: its first line says whether the run held its premise.
    let mut out = String::new();
    macro_rules! say {
        ($($t:tt)*) => {{
            out.push_str(&format!($($t)*));
            out.push('\n');
        }};
    }
    let scratch = ScratchDir::new("bench")?;
    // A 1000 GiB source, copied slowly enough that every copy is still in progress when the
    // window ends, whatever the machine: the copies' setup (a call each), the streams'
    // opening and the window, with room. A copy then moves a percent every few seconds.
    let copy_secs = args.seconds as f64 * 2.0 + 120.0 + args.copies as f64 / 20.0;
    let emu = loopback_emulator(EmulatorConfig {
        copy_gib_per_sec: 1000.0 / copy_secs,
        snapshot_quota: args.copies + 10,
        faults: Faults { throttle: None, ..Faults::default() },
        ..EmulatorConfig::default()
    })
    .await?;
    let aws = AwsSettings { region: Some("us-east-1".into()), ..AwsSettings::default() };
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

    let (port, admin_port) = (free_port()?, free_port()?);
    let data = scratch.path().join("data");
    let config = gateway_config(&args, port, admin_port, &emu.endpoint_url(), &data);
    let mut gateway = ChildGateway::spawn(&config, port, admin_port, &scratch, None).await?;
    let addr = gateway.addr;
    let started_kib = proc_kib(gateway.pid, "VmRSS:");
    // Setting up a thousand copies does not wait on client-side pacing (10,000/s here); the
    // watch itself makes ten calls a round, far below any limit.
    let client = bench_client(&addr.to_string()).await?;
    let names = make_copies(&client, "bench-src", "bench-copy", args.copies).await?;
    drop(client);
    // From here on, RDS's real throttling applies: the watch must live within it.
    emu.emulator
        .set_faults(Faults { throttle: Some(Throttle::default()), ..Faults::default() })
        .map_err(anyhow::Error::msg)?;
    let names_file = scratch.path().join("names.txt");
    std::fs::write(&names_file, names.join("\n"))?;
    let set_up_kib = proc_kib(gateway.pid, "VmRSS:");

    say!(
        "snapgate bench watch: {} streams over {} copies for {} s ({} connections); gateway, emulator and load generator in three processes on {} cores",
        args.streams,
        args.copies,
        args.seconds,
        args.connections,
        std::thread::available_parallelism().map_or(1, usize::from)
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
    let (mut opening_peak_kib, mut streaming_peak_kib, mut ready) = (0, 0, false);
    let (mut opened, mut refused) = (0usize, 0usize);
    // The emulator's counts at the ends of poll rounds while the streams are open: the first
    // and the last such ends bound whole rounds, so a round cut by the window's start or end
    // does not count its calls without the round.
    let (mut first_end, mut last_end) = (None::<RoundEnd>, None::<RoundEnd>);
    let mut report = None;
    let mut sampler = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            line = lines.next_line() => match line? {
                Some(l) if l.starts_with("ready") => {
                    ready = true;
                    // `ready OPENED REFUSED SECONDS`
                    let mut counts = l.split_whitespace().skip(1);
                    opened = counts.next().and_then(|n| n.parse().ok()).unwrap_or(0);
                    refused = counts.next().and_then(|n| n.parse().ok()).unwrap_or(0);
                    let took: f64 = counts.next().and_then(|n| n.parse().ok()).unwrap_or(0.0);
                    say!("  streams opened: {opened} of {} in {took:.1} s, {refused} refused", args.streams);
                    let text = metrics(gateway.admin).await;
                    say!(
                        "  streams open: {} (watched snapshots: {})",
                        metric(&text, "snapgate_watch_open_streams"),
                        metric(&text, "snapgate_watch_polled_snapshots")
                    );
                }
                Some(l) => report = Some(l),
                None => break,
            },
            _ = sampler.tick() => {
                let kib = proc_kib(gateway.pid, "VmRSS:");
                if ready { streaming_peak_kib = streaming_peak_kib.max(kib) } else { opening_peak_kib = opening_peak_kib.max(kib) }
                if ready {
                    let rounds = metric(&metrics(gateway.admin).await, "snapgate_watch_poll_rounds_total");
                    if last_end.as_ref().is_none_or(|end| rounds > end.rounds) {
                        let calls = emu.emulator.calls();
                        let end = RoundEnd { rounds, describes: calls.get("DescribeDBClusterSnapshots"), throttled: calls.throttled };
                        first_end.get_or_insert(end);
                        last_end = Some(end);
                    }
                }
            }
        }
    }
    child.wait().await?;
    // The premise, checked at the window's end: every copy still in progress.
    let in_progress: usize = emu.emulator.copies().iter().map(|c| c.in_progress).sum();
    let calls = emu.emulator.calls();
    let (first_end, last_end) = (first_end.unwrap_or_default(), last_end.unwrap_or_default());
    let describes = last_end.describes - first_end.describes;
    // RDS's throttling refuses some calls and the SDK retries them: the batching is judged on
    // the calls RDS answered, and the refused ones are printed beside them.
    let throttled = last_end.throttled - first_end.throttled;
    let rounds = last_end.rounds - first_end.rounds;
    // The kernel's own count of the gateway's peak, between samples included.
    let hwm_kib = proc_kib(gateway.pid, "VmHWM:");
    let _ = gateway.child.kill().await;
    let report = report.context("the load generator printed no report")?;
    say!("  load generator: {report}");
    // One round at RDS's pace: a describe per 100 copies at its 12 calls a second.
    let round_secs = args.copies.div_ceil(100) as f64 / Throttle::default().per_second;
    say!(
        "  lag target: p99 <= 100 ms at 10,000 streams; at 100,000, one round at RDS's pace + 1 s = {:.1} s",
        round_secs + 1.0
    );
    say!(
        "  poll rounds: {rounds}; describes answered: {}, per round: {:.2} (target <= {}); refused by RDS's throttling and retried: {throttled}",
        describes - throttled,
        (describes - throttled) as f64 / rounds.max(1.0),
        args.copies.div_ceil(100),
    );
    let mib = |kib: u64| kib as f64 / 1024.0;
    say!(
        "  gateway resident memory: peak {:.1} MiB (target <= 100 MiB at 10,000 streams, <= 400 MiB at 100,000); {:.1} MiB at start, {:.1} MiB with {} copies made, peak {:.1} MiB while the streams opened, {:.1} MiB while they streamed",
        mib(hwm_kib),
        mib(started_kib),
        mib(set_up_kib),
        args.copies,
        mib(opening_peak_kib),
        mib(streaming_peak_kib)
    );
    say!(
        "  per stream beyond the copies' own state: {:.2} KiB at the peak (target <= 4 KiB)",
        hwm_kib.saturating_sub(set_up_kib) as f64 / args.streams.max(1) as f64
    );
    // Every describe while the streams were open, against the waiters' over the same time.
    let describes = calls.get("DescribeDBClusterSnapshots") - first_end.describes;
    let gateway_per_30s = describes as f64 * 30.0 / args.seconds as f64;
    let waiter = waiter_way(&emu.endpoint_url(), &names, args.streams, args.seconds).await;
    say!(
        "  waiter way ({} watchers each describing every 30 s, as botocore's waiter does), one {} s window: {} calls, {} throttled",
        args.streams,
        args.seconds,
        waiter.0,
        waiter.1
    );
    say!(
        "  AWS calls per 30 s: gateway {:.0}, waiters {:.0}: the gateway makes {:.0}x fewer",
        gateway_per_30s,
        waiter.0 as f64 * 30.0 / args.seconds as f64,
        (waiter.0 as f64) / (describes.max(1) as f64)
    );
    emu.stop().await;
    let stream_errors = report
        .rsplit("stream errors ")
        .next()
        .and_then(|n| n.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0);
    if opened < args.streams || in_progress < args.copies || stream_errors > 0 {
        println!(
            "PREMISE NOT HELD: {opened} of {} streams opened ({refused} refused), {in_progress} of {} copies still in progress at the window's end, {stream_errors} stream errors",
            args.streams, args.copies
        );
    }
    print!("{out}");
    Ok(())
}

/// The emulator's counts when the gateway's poll rounds had reached `rounds`.
#[derive(Debug, Clone, Copy, Default)]
struct RoundEnd {
    rounds: f64,
    describes: u64,
    throttled: u64,
}

/// Each watcher polls on its own: one describe per watcher every 30 s, spread over the window.
async fn waiter_way(endpoint: &str, names: &[String], watchers: usize, seconds: u64) -> (u64, u64) {
    let aws = AwsSettings { region: Some("us-east-1".into()), max_attempts: 1, ..AwsSettings::default() };
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

/// The load generator: opens the streams and reads each from the moment it opens (a stream
/// left unread while the others open would queue stale events in its flow-control window),
/// records the lag of every change event received once all are open, prints `ready` then and
/// a one-line report at the end.
pub(crate) async fn watch_clients(args: WatchClientsArgs) -> anyhow::Result<()> {
    let names: Vec<String> = std::fs::read_to_string(&args.names)?.lines().map(str::to_owned).collect();
    let mut channels = Vec::new();
    for _ in 0..args.connections.max(1) {
        channels.push(Channel::from_shared(format!("http://{}", args.addr))?.connect().await?);
    }
    let lags = Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
    // By what failed (an opening refused, an open stream failed) and status: how many, and
    // the first one's message.
    let errors = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::<String, (u64, String)>::new()));
    let events = Arc::new(AtomicU64::new(0));
    // Set once every stream is open (or refused): the window whose lag is measured.
    let measuring = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let opening = Instant::now();
    let (opened_tx, mut opened_rx) = tokio::sync::mpsc::unbounded_channel::<bool>();
    // Becomes true at the window's end: every stream stops reading.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::with_capacity(args.streams);
    for i in 0..args.streams {
        let mut client = SnapshotCopyServiceClient::with_interceptor(channels[i % channels.len()].clone(), bearer);
        let name = names[i % names.len()].clone();
        let (lags, errors, events, measuring) = (lags.clone(), errors.clone(), events.clone(), measuring.clone());
        let (opened_tx, mut stop) = (opened_tx.clone(), stop_rx.clone());
        tasks.push(tokio::spawn(async move {
            let mut stream = match client.watch_copy(WatchCopyRequest { name }).await {
                Ok(response) => {
                    let _ = opened_tx.send(true);
                    response.into_inner()
                }
                Err(status) => {
                    count_error(&errors, "refused", &status);
                    let _ = opened_tx.send(false);
                    return;
                }
            };
            drop(opened_tx);
            loop {
                let next = tokio::select! {
                    m = stream.message() => m,
                    _ = stop.wait_for(|stopped| *stopped) => return,
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
                        if changed
                            && measuring.load(Ordering::Relaxed)
                            && let Some(observed) = event.observe_time.and_then(|t| SystemTime::try_from(t).ok())
                        {
                            let lag = SystemTime::now().duration_since(observed).unwrap_or_default();
                            lags.lock().unwrap_or_else(|p| p.into_inner()).push(lag.as_micros() as u64);
                        }
                    }
                    Ok(None) => return,
                    Err(status) => {
                        count_error(&errors, "failed", &status);
                        return;
                    }
                }
            }
        }));
    }
    drop(opened_tx);
    let (mut open, mut refused) = (0usize, 0usize);
    while open + refused < args.streams {
        match opened_rx.recv().await {
            Some(true) => open += 1,
            Some(false) => refused += 1,
            None => break,
        }
    }
    measuring.store(true, Ordering::Relaxed);
    println!("ready {open} {refused} {:.2}", opening.elapsed().as_secs_f64());
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    let mut lags = lags.lock().unwrap_or_else(|p| p.into_inner()).clone();
    lags.sort_unstable();
    let pct = |p: f64| lags.get(((lags.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(0) as f64 / 1000.0;
    let errors = errors.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let by_status: Vec<String> = errors.iter().map(|(code, (n, first))| format!("{code} {n}: {first:?}")).collect();
    let failed: u64 = errors.iter().filter(|(code, _)| code.starts_with("failed")).map(|(_, (n, _))| n).sum();
    println!(
        "{} events in {:.0} s, {} change events, lag p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; stream errors {}{}",
        events.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64(),
        lags.len(),
        pct(0.5),
        pct(0.99),
        pct(1.0),
        failed,
        if by_status.is_empty() { String::new() } else { format!(" ({})", by_status.join(", ")) }
    );
    Ok(())
}

type Errors = std::sync::Mutex<std::collections::BTreeMap<String, (u64, String)>>;

/// Counts `status` under `what` (refused, failed) and its code, keeping the first message.
fn count_error(errors: &Errors, what: &str, status: &tonic::Status) {
    let mut errors = errors.lock().unwrap_or_else(|p| p.into_inner());
    let entry = errors.entry(format!("{what} {:?}", status.code())).or_insert_with(|| {
        let message: String = status.message().chars().take(120).collect();
        (0, message)
    });
    entry.0 += 1;
}
