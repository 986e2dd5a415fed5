//! `snapgate bench flood`: the gateway (`snapgate serve`, a child process, so its descriptors
//! and memory are its own) under transport abuse, one attack at a time, while a well-behaved
//! client on its own connection calls GetCopy every few milliseconds. For each attack it
//! reports the client's p50/p99 next to its p99 in the quiet window just before the attack
//! (the first: the run's opening baseline), the edge's refusals by reason, the gateway's peak resident memory and open descriptors, and how long the
//! descriptors take to come back to the baseline once the attack stops.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::child::{ChildGateway, common_config, cpu_us, free_port, metrics, open_fds, proc_kib};
use super::{ATTACKER_TOKEN, BenchClient, attacker_client, bench_client, loopback_emulator};
use crate::cli::ScratchDir;
use snapgate_emulator::{EmulatorConfig, Faults};
use snapgate_gateway::config::FairShareSettings;
use snapgate_proto::{GetCopyRequest, WatchCopyRequest};

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct FloodBenchArgs {
    /// How long each attack (and each quiet window before one) runs.
    #[arg(long, default_value_t = 8)]
    pub attack_secs: u64,
    /// Connections the idle attack opens and never speaks on.
    #[arg(long, default_value_t = 4_000)]
    pub idle_connections: usize,
    /// Connections the slowloris attack trickles its preface on, a byte at a time.
    #[arg(long, default_value_t = 1_000)]
    pub slowloris_connections: usize,
    /// The gateway's handshake timeout for this run (seconds).
    #[arg(long, default_value_t = 3)]
    pub handshake_timeout_secs: u64,
    /// The gateway's idle timeout for this run (seconds).
    #[arg(long, default_value_t = 10)]
    pub idle_timeout_secs: u64,
    /// The gateway's limit of unary calls in progress, which the call flood goes past.
    #[arg(long, default_value_t = 64)]
    pub max_in_flight_calls: usize,
    /// The gateway's limit of open streams, which the stream flood goes past.
    #[arg(long, default_value_t = 1_000)]
    pub max_streams: usize,
    /// The gateway's memory watermark (MiB).
    #[arg(long, default_value_t = 512)]
    pub max_memory_mib: u64,
    /// Run the gateway, the attacker and the measuring client on the same CPUs. By default the
    /// attacker gets half the CPUs to itself and the gateway and this process (the measuring
    /// client and the emulator) share the other half, as if the attacker had its own machine:
    /// otherwise the attacker's own work (and the kernel's, sending its traffic over loopback)
    /// takes the CPU that the gateway and the client need, and the figures measure the
    /// machine, not the gateway.
    #[arg(long)]
    pub shared_cpus: bool,
    /// The attacks to run, in this order (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub attacks: Vec<Attack>,
}

/// CPUs as `taskset -c` names them: the gateway's (with the measuring client and the
/// emulator) and the attacker's, or `None` to share them all.
fn cpu_split(shared: bool) -> Option<(String, String)> {
    let n = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    if shared || n < 2 {
        return None;
    }
    let half = n / 2;
    let range = |from: usize, to: usize| if from == to { from.to_string() } else { format!("{from}-{to}") };
    Some((range(half, n - 1), range(0, half - 1)))
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

async fn start(
    args: &FloodBenchArgs,
    emulator: &str,
    scratch: &ScratchDir,
    cpus: Option<&str>,
) -> anyhow::Result<ChildGateway> {
    let (port, admin_port) = (free_port()?, free_port()?);
    let config = format!(
        r#"listen = "127.0.0.1:{port}"
[server]
shutdown_grace_secs = 2
handshake_timeout_secs = {handshake}
idle_timeout_secs = {idle}
max_in_flight_calls = {in_flight}
max_memory_bytes = {memory}
[watch]
max_streams = {streams}
[fair_share]
calls_per_sec = 100000.0
burst = 100000
[[fair_share.overrides]]
principal = "attacker"
calls_per_sec = {attacker_rate:.1}
burst = {attacker_burst}
[aws]
region = "us-east-1"
endpoint_url = "{emulator}"
account_id = "{account}"
rate_limit_per_sec = 100000.0
rate_limit_burst = 100000
{common}"#,
        handshake = args.handshake_timeout_secs,
        idle = args.idle_timeout_secs,
        in_flight = args.max_in_flight_calls,
        memory = args.max_memory_mib * 1024 * 1024,
        streams = args.max_streams,
        // The attacker has a caller's default share; the measuring client, no limit.
        attacker_rate = FairShareSettings::default().calls_per_sec,
        attacker_burst = FairShareSettings::default().burst,
        account = snapgate_emulator::DEFAULT_ACCOUNT,
        common = common_config(
            admin_port,
            &format!(", {{ token = \"{ATTACKER_TOKEN}\", principal = \"attacker\" }}"),
            &scratch.path().join("data")
        ),
    );
    ChildGateway::spawn(&config, port, admin_port, scratch, cpus).await
}

/// The edge's counters from the gateway's `/metrics`: refusals by reason, shed calls and calls
/// that waited for their caller's turn.
async fn refusals(admin: SocketAddr) -> Vec<(String, u64)> {
    let text = metrics(admin).await;
    text.lines()
        .filter(|l| {
            [
                "snapgate_connections_refused_total",
                "snapgate_connections_paced_total",
                "snapgate_calls_shed_total",
                "snapgate_calls_waited_total",
            ]
            .iter()
            .any(|metric| l.starts_with(metric))
        })
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            let name = name.trim_start_matches("snapgate_").replace("_total", "");
            Some((name, value.parse::<f64>().ok()? as u64))
        })
        .collect()
}

/// The well-behaved client: a GetCopy every 5 ms on its own connection; latencies in µs.
async fn measure(client: &BenchClient, until: Instant) -> (Vec<u64>, u64) {
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    while Instant::now() < until {
        tick.tick().await;
        let started = Instant::now();
        let mut client = client.clone();
        match client.get_copy(GetCopyRequest { name: "billing-pg-daily".into(), fresh: false }).await {
            Ok(_) => latencies.push(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX)),
            Err(_) => errors += 1,
        }
    }
    (latencies, errors)
}

/// The gateway's CPU use since `before` over `over`, in percent of one core.
fn busy(before: u64, gateway: &ChildGateway, over: Duration) -> f64 {
    let used = cpu_us(&gateway.pid.to_string()).saturating_sub(before);
    used as f64 / over.as_micros().max(1) as f64 * 100.0
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(crate) enum Attack {
    Idle,
    Slowloris,
    RapidReset,
    OversizedHeaders,
    CallFlood,
    StreamFlood,
}

impl Attack {
    fn name_arg(self) -> String {
        clap::ValueEnum::to_possible_value(&self).map(|v| v.get_name().to_owned()).unwrap_or_default()
    }

    fn name(self) -> &'static str {
        match self {
            Attack::Idle => "idle connections",
            Attack::Slowloris => "slowloris preface",
            Attack::RapidReset => "rapid reset",
            Attack::OversizedHeaders => "oversized headers",
            Attack::CallFlood => "unary call flood",
            Attack::StreamFlood => "stream flood",
        }
    }
}

/// One attack, run by a child process (`bench flood-attack`) so that its work does not share
/// the measuring client's runtime.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct FloodAttackArgs {
    #[arg(long, value_enum)]
    pub attack: Attack,
    #[arg(long)]
    pub addr: SocketAddr,
    #[arg(long)]
    pub secs: u64,
    #[arg(long)]
    pub idle_connections: usize,
    #[arg(long)]
    pub slowloris_connections: usize,
    #[arg(long)]
    pub callers: usize,
    #[arg(long)]
    pub streams: usize,
    /// The gateway's pid, whose open descriptors this process samples during the attack (on
    /// the attacker's CPUs: reading `/proc/PID/fd` of thousands of descriptors ten times a
    /// second in the measuring process delayed the calls it measures).
    #[arg(long)]
    pub sample_fds_of: Option<u32>,
}

/// Runs one attack and prints what it did.
pub(crate) async fn flood_attack(args: FloodAttackArgs) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(args.secs);
    let sampler = args.sample_fds_of.map(|pid| {
        tokio::spawn(async move {
            let mut peak = 0;
            while Instant::now() < until {
                peak = peak.max(open_fds(pid));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            peak
        })
    });
    println!("{}", run_attack(&args, until).await);
    if let Some(sampler) = sampler {
        println!("{PEAK_FDS}{}", sampler.await?);
    }
    Ok(())
}

/// How the attacker's process reports the gateway's peak of open descriptors.
const PEAK_FDS: &str = "peak descriptors: ";

/// Runs the attack against its address until `until`; returns what it did.
async fn run_attack(args: &FloodAttackArgs, until: Instant) -> String {
    let (attack, addr) = (args.attack, args.addr);
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let connections = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    match attack {
        Attack::Idle => {
            let mut held = Vec::new();
            for _ in 0..args.idle_connections {
                if let Ok(stream) = TcpStream::connect(addr).await {
                    held.push(stream);
                }
            }
            count.store(held.len() as u64, Ordering::Relaxed);
            tokio::time::sleep_until(until.into()).await;
            drop(held);
        }
        Attack::Slowloris => {
            for _ in 0..args.slowloris_connections {
                let count = count.clone();
                tasks.push(tokio::spawn(async move {
                    let Ok(mut stream) = TcpStream::connect(addr).await else { return };
                    count.fetch_add(1, Ordering::Relaxed);
                    for byte in PREFACE.iter().cycle() {
                        if Instant::now() >= until || stream.write_all(&[*byte]).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                }));
            }
        }
        Attack::RapidReset => {
            for _ in 0..4 {
                let (count, connections) = (count.clone(), connections.clone());
                tasks.push(tokio::spawn(async move {
                    while Instant::now() < until {
                        connections.fetch_add(1, Ordering::Relaxed);
                        let _ = rapid_reset(addr, until, &count).await;
                    }
                }));
            }
        }
        Attack::OversizedHeaders => {
            let padding: tonic::metadata::MetadataValue<_> = match "x".repeat(100 * 1024).parse() {
                Ok(value) => value,
                Err(_) => return "no attack: the padding is not a header value".into(),
            };
            for _ in 0..8 {
                let (count, padding) = (count.clone(), padding.clone());
                tasks.push(tokio::spawn(async move {
                    let Ok(client) = attacker_client(&addr.to_string()).await else { return };
                    while Instant::now() < until {
                        let mut request =
                            tonic::Request::new(GetCopyRequest { name: "billing-pg-daily".into(), fresh: false });
                        request.metadata_mut().insert("x-padding", padding.clone());
                        let _ = client.clone().get_copy(request).await;
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }));
            }
        }
        Attack::CallFlood => {
            let Ok(client) = attacker_client(&addr.to_string()).await else {
                return "no attack: cannot connect".into();
            };
            for _ in 0..args.callers {
                let (count, client) = (count.clone(), client.clone());
                tasks.push(tokio::spawn(async move {
                    while Instant::now() < until {
                        let _ = client
                            .clone()
                            .get_copy(GetCopyRequest { name: "ledger-mysql-snap".into(), fresh: false })
                            .await;
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }));
            }
        }
        Attack::StreamFlood => {
            let mut clients = Vec::new();
            for _ in 0..8 {
                if let Ok(client) = attacker_client(&addr.to_string()).await {
                    clients.push(client);
                }
            }
            for i in 0..args.streams {
                let Some(client) = clients.get(i % clients.len().max(1)).cloned() else { break };
                let (count, stop) = (count.clone(), stop.clone());
                tasks.push(tokio::spawn(async move {
                    let watch = WatchCopyRequest { name: "stream-flood-copy".into() };
                    if let Ok(response) = client.clone().watch_copy(watch).await {
                        count.fetch_add(1, Ordering::Relaxed);
                        let mut stream = response.into_inner();
                        while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                            let next = tokio::time::timeout(Duration::from_millis(500), stream.message()).await;
                            if matches!(next, Ok(Err(_)) | Ok(Ok(None))) {
                                break;
                            }
                        }
                    }
                }));
            }
        }
    }
    for task in tasks {
        let _ = task.await;
    }
    stop.store(true, Ordering::Relaxed);
    let n = count.load(Ordering::Relaxed);
    match attack {
        Attack::Idle => format!("{n} connections held silent"),
        Attack::Slowloris => format!("{n} connections trickling"),
        Attack::RapidReset => {
            format!("{n} streams opened and reset on {} connections", connections.load(Ordering::Relaxed))
        }
        Attack::OversizedHeaders => format!("{n} calls with 100 KiB headers"),
        Attack::CallFlood => format!("{n} calls from {} callers", args.callers),
        Attack::StreamFlood => format!("{n} of {} streams opened", args.streams),
    }
}

/// One HTTP/2 connection that opens streams and resets them at once (CVE-2023-44487).
async fn rapid_reset(addr: SocketAddr, until: Instant, count: &AtomicU64) -> anyhow::Result<()> {
    let tcp = TcpStream::connect(addr).await?;
    let (client, connection) = h2::client::handshake(tcp).await?;
    let driver = tokio::spawn(connection);
    let mut client = client;
    while Instant::now() < until {
        let mut ready = client.ready().await?;
        let request = http::Request::post(format!("http://{addr}/snapgate.v1.SnapshotCopyService/GetCopy"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("authorization", format!("Bearer {ATTACKER_TOKEN}"))
            .body(())?;
        let (_response, mut stream) = ready.send_request(request, false)?;
        stream.send_reset(h2::Reason::CANCEL);
        // Let the connection's driver write the frames out: on one worker thread this loop
        // would otherwise only fill h2's buffer.
        if count.fetch_add(1, Ordering::Relaxed).is_multiple_of(32) {
            tokio::task::yield_now().await;
        }
        client = ready;
    }
    driver.abort();
    Ok(())
}

pub(crate) async fn flood(args: FloodBenchArgs) -> anyhow::Result<()> {
    let scratch = ScratchDir::new("bench-flood")?;
    let split = cpu_split(args.shared_cpus);
    if let Some((gateway, _)) = &split {
        // This process (the measuring client and the emulator), every thread of it.
        let pinned = tokio::process::Command::new("taskset")
            .args(["-a", "-p", "-c", gateway])
            .arg(std::process::id().to_string())
            .stdout(Stdio::null())
            .status()
            .await
            .context("taskset (util-linux) pins this process to the gateway's CPUs")?;
        anyhow::ensure!(pinned.success(), "taskset could not pin this process to CPUs {gateway}");
    }
    let emu = loopback_emulator(EmulatorConfig {
        seed: true,
        copy_gib_per_sec: 0.01,
        faults: Faults { throttle: None, ..Faults::default() },
        ..EmulatorConfig::default()
    })
    .await?;
    let mut gateway = start(&args, &emu.endpoint_url(), &scratch, split.as_ref().map(|(g, _)| g.as_str())).await?;
    let client = bench_client(&gateway.addr.to_string()).await?;
    // A copy in progress for the stream flood to watch.
    let copy = snapgate_proto::CopyClusterSnapshotRequest {
        source_snapshot: "billing-pg-daily".into(),
        target_snapshot_id: "stream-flood-copy".into(),
        ..Default::default()
    };
    client.clone().copy_cluster_snapshot(copy).await.context("starting the stream flood's copy")?;
    let attack_time = Duration::from_secs(args.attack_secs);
    let settle = Duration::from_secs(args.idle_timeout_secs + args.handshake_timeout_secs + 5);

    let baseline_fds = open_fds(gateway.pid);
    let cpu_before = cpu_us(&gateway.pid.to_string());
    let (mut base, base_errors) = measure(&client, Instant::now() + attack_time).await;
    let base_cpu = busy(cpu_before, &gateway, attack_time);
    base.sort_unstable();
    let (base_p50, base_p99) = (percentile(&base, 50.0), percentile(&base, 99.0));
    println!(
        "snapgate bench flood: gateway pid {} on {}, handshake timeout {} s, idle timeout {} s, {} unary calls in flight at most, {} streams, memory watermark {} MiB",
        gateway.pid,
        match &split {
            Some((gateway, attacker)) => {
                format!("CPUs {gateway} with the measuring client and the emulator; the attacker on CPUs {attacker}")
            }
            None => "the same CPUs as the attacker, the emulator and the measuring client".to_owned(),
        },
        args.handshake_timeout_secs,
        args.idle_timeout_secs,
        args.max_in_flight_calls,
        args.max_streams,
        args.max_memory_mib
    );
    println!(
        "baseline: {} calls, p50 {:.2} ms, p99 {:.2} ms, {} errors, {} open descriptors, RSS {} MiB, gateway CPU {base_cpu:.0}%",
        base.len(),
        base_p50 as f64 / 1000.0,
        base_p99 as f64 / 1000.0,
        base_errors,
        baseline_fds,
        proc_kib(gateway.pid, "VmRSS:") / 1024
    );
    println!(
        "{:<20} {:>9} {:>9} {:>9} {:>7} {:>6} {:>6} {:>9} {:>9} {:>9}  attack / refusals",
        "attack", "base p99", "p50 ms", "p99 ms", "p99 ×", "errors", "CPU %", "peak fds", "RSS MiB", "fds back"
    );
    let mut all_within = true;
    // The stream flood before the call flood: both are the attacker's, and the call flood spends
    // the attacker's whole share.
    let attacks = if args.attacks.is_empty() {
        vec![
            Attack::Idle,
            Attack::Slowloris,
            Attack::RapidReset,
            Attack::OversizedHeaders,
            Attack::StreamFlood,
            Attack::CallFlood,
        ]
    } else {
        args.attacks.clone()
    };
    // Each attack is measured against the quiet window just before it (the first, against the
    // opening baseline): on a shared machine the same quiet client's p99 was seen to vary
    // from 0.3 to 1.0 ms between runs minutes apart, so a baseline from the start of the run
    // made the later attacks' ratios drift with the machine, not with the attack.
    let mut quiet_p99 = Some(base_p99);
    for attack in attacks {
        let quiet_p99 = match quiet_p99.take() {
            Some(p99) => p99,
            None => {
                let (mut quiet, _) = measure(&client, Instant::now() + attack_time).await;
                quiet.sort_unstable();
                percentile(&quiet, 99.0)
            }
        };
        let before = refusals(gateway.admin).await;
        let cpu_before = cpu_us(&gateway.pid.to_string());
        let until = Instant::now() + attack_time;
        let mut attacker = match &split {
            Some((_, attacker)) => {
                let mut command = tokio::process::Command::new("taskset");
                command.args(["-c", attacker]).arg(std::env::current_exe()?);
                command
            }
            None => tokio::process::Command::new(std::env::current_exe()?),
        };
        let attacker = attacker
            .args(["bench", "flood-attack", "--attack"])
            .arg(attack.name_arg())
            .args(["--addr", &gateway.addr.to_string(), "--secs", &args.attack_secs.to_string()])
            .args(["--idle-connections", &args.idle_connections.to_string()])
            .args(["--slowloris-connections", &args.slowloris_connections.to_string()])
            .args(["--callers", &(args.max_in_flight_calls * 4).to_string()])
            .args(["--streams", &(args.max_streams + args.max_streams / 2).to_string()])
            .args(["--sample-fds-of", &gateway.pid.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .output();
        let measuring = measure(&client, until);
        let (attacked, (mut latencies, errors)) = tokio::join!(attacker, measuring);
        let said = attacked.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_else(|e| e.to_string());
        let peak_fds = said.lines().find_map(|l| l.strip_prefix(PEAK_FDS)?.parse::<usize>().ok());
        let did = said.lines().filter(|l| !l.starts_with(PEAK_FDS)).collect::<Vec<_>>().join("; ");
        let cpu = busy(cpu_before, &gateway, attack_time);
        latencies.sort_unstable();
        let (p50, p99) = (percentile(&latencies, 50.0), percentile(&latencies, 99.0));
        // Descriptors back to the baseline (a few of slack for pooled AWS connections).
        let stopped = Instant::now();
        let mut back = None;
        while stopped.elapsed() < settle {
            if open_fds(gateway.pid) <= baseline_fds + 4 {
                back = Some(stopped.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let after = refusals(gateway.admin).await;
        let delta: Vec<String> = after
            .iter()
            .filter_map(|(name, value)| {
                let old = before.iter().find(|(n, _)| n == name).map_or(0, |(_, v)| *v);
                (*value > old).then(|| format!("{name} +{}", value - old))
            })
            .collect();
        let ratio = if quiet_p99 == 0 { 0.0 } else { p99 as f64 / quiet_p99 as f64 };
        all_within &= ratio <= 2.0 && back.is_some();
        println!(
            "{:<20} {:>9.2} {:>9.2} {:>9.2} {:>7.2} {:>6} {:>6.0} {:>9} {:>9} {:>9}  {did}; {}",
            attack.name(),
            quiet_p99 as f64 / 1000.0,
            p50 as f64 / 1000.0,
            p99 as f64 / 1000.0,
            ratio,
            errors,
            cpu,
            peak_fds.map_or_else(|| "?".to_owned(), |n| n.to_string()),
            proc_kib(gateway.pid, "VmHWM:") / 1024,
            back.map_or_else(|| "never".to_owned(), |d| format!("{:.1} s", d.as_secs_f64())),
            if delta.is_empty() { "no refusals".to_owned() } else { delta.join(", ") }
        );
    }
    let alive = gateway.child.try_wait()?.is_none();
    let peak = proc_kib(gateway.pid, "VmHWM:") / 1024;
    println!(
        "gateway alive: {alive}; peak RSS {peak} MiB against the {} MiB watermark; targets (p99 within 2× the quiet window's before it, descriptors back within {} s): {}",
        args.max_memory_mib,
        settle.as_secs(),
        if all_within && alive && peak < args.max_memory_mib { "met" } else { "MISSED" }
    );
    let _ = gateway.child.kill().await;
    emu.stop().await;
    Ok(())
}
