//! `snapgate bench soak`: a fleet of cross-region copies, their watches and readers polling
//! them, while the emulator throttles, fails a share of calls with 500s, adds latency, answers
//! every copy later than the gateway's per-attempt timeout (AWS made the copy, the gateway
//! did not hear) and drops a share of answers half way; and while some watchers drop their
//! own connections and come back. The gateway is a child process, so its memory is its own.
//!
//! It reports copies asked, accepted, available, failed (with AWS's reason), made twice (must
//! be 0) and lost (accepted but never ended: must be 0), every status callers saw by code
//! (and whether a retryable one said when to retry), AWS calls and faults, and the gateway's
//! resident memory before, at its peak and after the load.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use snapgate_emulator::{EmulatorConfig, Faults, Throttle};
use snapgate_proto::{self as pb, CopyClusterSnapshotRequest, GetCopyRequest, ListCopiesRequest, WatchCopyRequest};
use tonic::Code;
use tonic_types::StatusExt;

use super::child::{ChildGateway, common_config, free_port, proc_kib};
use super::{BenchClient, bench_client, loopback_emulator};
use crate::cli::ScratchDir;

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct SoakBenchArgs {
    /// Cross-region copies asked for at once (AWS allows 5 in progress; the rest queue).
    #[arg(long, default_value_t = 100)]
    pub copies: usize,
    /// How long one copy takes at the emulator, in seconds.
    #[arg(long, default_value_t = 2.0)]
    pub copy_secs: f64,
    /// Callers polling GetCopy, each every 100 ms, on the copies in turn.
    #[arg(long, default_value_t = 20)]
    pub readers: usize,
    /// Share of AWS calls answered with a 500 InternalFailure.
    #[arg(long, default_value_t = 0.1)]
    pub failure_rate: f64,
    /// Share of AWS answers dropped half way.
    #[arg(long, default_value_t = 0.05)]
    pub drop_rate: f64,
    /// Fleets, one after another (memory must not grow from one to the next).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Give up on a fleet after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
}

/// The source: 150 GiB in us-west-2, copied into us-east-1.
const SOURCE: &str = "arn:aws:rds:us-west-2:123456789012:cluster-snapshot:orders-aurora-west-snap";
const SOURCE_GIB: f64 = 150.0;
/// The gateway's per-attempt timeout, below the emulator's delayed copy answers.
const ATTEMPT_TIMEOUT_MS: u64 = 1_000;
const COPY_ANSWER_DELAY_MS: u64 = 1_500;

/// Every status callers saw, by code: how many, and how many of the retryable ones carried
/// RetryInfo.
#[derive(Default)]
struct Seen {
    codes: BTreeMap<String, (u64, u64)>,
}

impl Seen {
    fn record(&mut self, code: Code, retry_info: bool) {
        let entry = self.codes.entry(format!("{code:?}")).or_default();
        entry.0 += 1;
        entry.1 += u64::from(retry_info);
    }
}

type Shared = Arc<Mutex<Seen>>;

fn note(seen: &Shared, status: &tonic::Status) -> Option<Duration> {
    let delay = status.get_details_retry_info().and_then(|r| r.retry_delay);
    seen.lock().unwrap_or_else(|p| p.into_inner()).record(status.code(), delay.is_some());
    delay
}

fn note_ok(seen: &Shared) {
    seen.lock().unwrap_or_else(|p| p.into_inner()).record(Code::Ok, false);
}

/// Asks for one copy until it is accepted, waiting as refusals say; `None` if never.
async fn ask(mut client: BenchClient, target: String, seen: Shared) -> Option<String> {
    let request =
        CopyClusterSnapshotRequest { source_snapshot: SOURCE.into(), target_snapshot_id: target, ..Default::default() };
    for _ in 0..100 {
        match client.copy_cluster_snapshot(request.clone()).await {
            Ok(copy) => {
                note_ok(&seen);
                return Some(copy.into_inner().name);
            }
            Err(status) => {
                let delay = note(&seen, &status);
                if !matches!(status.code(), Code::Unavailable | Code::ResourceExhausted) {
                    return None;
                }
                tokio::time::sleep(delay.unwrap_or(Duration::from_millis(500)).min(Duration::from_secs(2))).await;
            }
        }
    }
    None
}

/// Watches a copy to its terminal event, reconnecting after errors; with `drop_once`, drops its
/// own connection after the first event and comes back on a new one. Returns the last state.
async fn follow(addr: String, name: String, drop_once: bool, seen: Shared, until: Instant) -> Option<pb::copy::State> {
    let mut dropped = !drop_once;
    while Instant::now() < until {
        let Ok(mut client) = bench_client(&addr).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let mut stream = match client.watch_copy(WatchCopyRequest { name: name.clone() }).await {
            Ok(stream) => stream.into_inner(),
            Err(status) => {
                let delay = note(&seen, &status);
                tokio::time::sleep(delay.unwrap_or(Duration::from_millis(200)).min(Duration::from_secs(2))).await;
                continue;
            }
        };
        loop {
            match stream.message().await {
                Ok(Some(event)) => {
                    let state = event.copy.as_ref().map(pb::Copy::state);
                    if event.terminal {
                        note_ok(&seen);
                        return state;
                    }
                    if !dropped {
                        // Drops the stream and its connection (the client was its only user).
                        dropped = true;
                        break;
                    }
                }
                Ok(None) => break,
                Err(status) => {
                    let delay = note(&seen, &status);
                    tokio::time::sleep(delay.unwrap_or(Duration::from_millis(200)).min(Duration::from_secs(2))).await;
                    break;
                }
            }
        }
    }
    None
}

/// Polls GetCopy on the copies in turn, every 100 ms, until `done`.
async fn read(
    mut client: BenchClient,
    names: Arc<Vec<String>>,
    offset: usize,
    seen: Shared,
    mut done: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    for i in offset.. {
        tokio::select! {
            _ = done.wait_for(|done| *done) => return,
            _ = tick.tick() => {}
        }
        if names.is_empty() {
            return;
        }
        let name = names[i % names.len()].clone();
        match client.get_copy(GetCopyRequest { name, fresh: false }).await {
            Ok(_) => note_ok(&seen),
            Err(status) => {
                note(&seen, &status);
            }
        }
    }
}

async fn listed(client: &mut BenchClient) -> anyhow::Result<Vec<pb::Copy>> {
    let mut copies = Vec::new();
    let mut request = ListCopiesRequest { page_size: 500, ..Default::default() };
    loop {
        let page = client.list_copies(request.clone()).await?.into_inner();
        copies.extend(page.copies);
        if page.next_page_token.is_empty() {
            return Ok(copies);
        }
        request.page_token = page.next_page_token;
    }
}

/// What one round came to.
struct Round {
    accepted: usize,
    admitted_in: Duration,
    available: usize,
    failed: BTreeMap<String, usize>,
    lost: usize,
    ended: BTreeMap<String, usize>,
    finished_in: Duration,
}

/// One fleet: asked for at once, read and watched to its end.
async fn run_round(
    args: &SoakBenchArgs,
    round: usize,
    addr: &str,
    client: &BenchClient,
    seen: &Shared,
    peak: &Arc<std::sync::atomic::AtomicU64>,
    pid: u32,
) -> anyhow::Result<Round> {
    let started = Instant::now();
    let until = started + Duration::from_secs(args.timeout_secs);
    let (done, done_rx) = tokio::sync::watch::channel(false);
    let sampler = {
        let (peak, mut stop) = (peak.clone(), done_rx.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tokio::select! {
                    _ = stop.wait_for(|done| *done) => return,
                    _ = tick.tick() => { peak.fetch_max(proc_kib(pid, "VmRSS:"), std::sync::atomic::Ordering::Relaxed); }
                }
            }
        })
    };
    let asks: Vec<_> = (0..args.copies)
        .map(|i| tokio::spawn(ask(client.clone(), format!("soak-{round}-{i}"), seen.clone())))
        .collect();
    let mut accepted = Vec::with_capacity(args.copies);
    for ask in asks {
        if let Some(name) = ask.await? {
            accepted.push(name);
        }
    }
    let admitted_in = started.elapsed();
    let names = Arc::new(accepted.clone());
    let readers: Vec<_> = (0..args.readers)
        .map(|r| tokio::spawn(read(client.clone(), names.clone(), r, seen.clone(), done_rx.clone())))
        .collect();
    let watches: Vec<_> = accepted
        .iter()
        .enumerate()
        .map(|(i, name)| tokio::spawn(follow(addr.to_owned(), name.clone(), i % 4 == 0, seen.clone(), until)))
        .collect();
    let mut ended: BTreeMap<String, usize> = BTreeMap::new();
    for watch in watches {
        let state = watch.await?.map_or_else(|| "none (timed out)".to_owned(), |s| format!("{s:?}"));
        *ended.entry(state).or_default() += 1;
    }
    let finished_in = started.elapsed();
    let _ = done.send(true);
    for reader in readers {
        reader.await?;
    }
    sampler.await?;
    let copies = listed(&mut client.clone()).await?;
    let by_name: BTreeMap<&str, &pb::Copy> = copies.iter().map(|c| (c.name.as_str(), c)).collect();
    let (mut available, mut failed, mut lost) = (0, BTreeMap::<String, usize>::new(), 0);
    for name in &accepted {
        match by_name.get(name.as_str()).map(|c| (c.state(), c.failure_reason.clone())) {
            Some((pb::copy::State::Available, _)) => available += 1,
            Some((pb::copy::State::Failed, reason)) => *failed.entry(reason).or_default() += 1,
            _ => lost += 1,
        }
    }
    Ok(Round { accepted: accepted.len(), admitted_in, available, failed, lost, ended, finished_in })
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

pub(crate) async fn soak(args: SoakBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.copies > 0 && args.copy_secs > 0.0 && args.rounds > 0,
        "--copies, --copy-secs and --rounds must be positive"
    );
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.failure_rate) && (0.0..=1.0).contains(&args.drop_rate),
        "--failure-rate and --drop-rate are shares between 0 and 1"
    );
    let scratch = ScratchDir::new("bench-soak")?;
    let emu = loopback_emulator(EmulatorConfig {
        seed: true,
        copy_gib_per_sec: SOURCE_GIB / args.copy_secs,
        snapshot_quota: args.copies * args.rounds + 100,
        faults: Faults {
            // Tighter than RDS's own (300 burst, 12/s), so the gateway is throttled too.
            throttle: Some(Throttle { burst: 20, per_second: 10.0 }),
            internal_failure_rate: args.failure_rate,
            latency_ms: 20,
            copy_answer_delay_ms: COPY_ANSWER_DELAY_MS,
            drop_rate: args.drop_rate,
            fail_copies: Vec::new(),
        },
        ..EmulatorConfig::default()
    })
    .await?;
    let (port, admin_port) = (free_port()?, free_port()?);
    let config = format!(
        r#"listen = "127.0.0.1:{port}"
[server]
shutdown_grace_secs = 2
[watch]
min_poll_interval_ms = 200
max_poll_interval_ms = 1000
[jobs]
dispatch_interval_ms = 200
retry_initial_ms = 300
retry_max_ms = 3000
lease_secs = 5
[fair_share]
[[fair_share.overrides]]
principal = "bench"
calls_per_sec = 100000.0
burst = 100000
in_flight = 100000
[aws]
region = "us-east-1"
endpoint_url = "{endpoint}"
account_id = "{account}"
rate_limit_per_sec = 10.0
rate_limit_burst = 20
attempt_timeout_ms = {ATTEMPT_TIMEOUT_MS}
max_attempts = 3
{common}"#,
        endpoint = emu.endpoint_url(),
        account = snapgate_emulator::DEFAULT_ACCOUNT,
        common = common_config(admin_port, "", &scratch.path().join("data")),
    );
    let mut gateway = ChildGateway::spawn(&config, port, admin_port, &scratch, None).await?;
    let addr = gateway.addr.to_string();
    let client = bench_client(&addr).await?;
    // One call so the baseline includes a connection and a warmed stack.
    let _ = client.clone().list_copies(ListCopiesRequest::default()).await;
    let rss_before = proc_kib(gateway.pid, "VmRSS:");
    println!(
        "snapgate bench soak: {} rounds of {} cross-region copies of {} s each (AWS allows 5 in progress), {} readers, a watch per copy (a quarter drop their connection once)",
        args.rounds, args.copies, args.copy_secs, args.readers
    );
    println!(
        "  faults: throttling 20 burst / 10 per s, {:.0}% 500s, 20 ms latency, copy answers {} ms late (the gateway's attempt timeout is {} ms), {:.0}% of answers dropped half way",
        args.failure_rate * 100.0,
        COPY_ANSWER_DELAY_MS,
        ATTEMPT_TIMEOUT_MS,
        args.drop_rate * 100.0
    );

    let seen: Shared = Arc::default();
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(rss_before));
    let mut after_rounds = Vec::with_capacity(args.rounds);
    let (mut twice_total, mut lost_total, mut refused_total) = (0, 0, 0);
    let mut made_before = 0;
    for round in 1..=args.rounds {
        let report = run_round(&args, round, &addr, &client, &seen, &peak, gateway.pid).await?;
        let made: usize = emu.emulator.copies().iter().map(|d| d.copies_made).sum();
        let twice = (made - made_before).saturating_sub(report.accepted);
        made_before = made;
        twice_total += twice;
        lost_total += report.lost;
        refused_total += args.copies - report.accepted;
        // After the load: streams closed, readers gone; the gateway settles.
        let settle = Instant::now();
        let mut rss_after = proc_kib(gateway.pid, "VmRSS:");
        while settle.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(500)).await;
            rss_after = proc_kib(gateway.pid, "VmRSS:");
        }
        after_rounds.push(rss_after);
        println!(
            "  round {round}: asked {}, accepted {} (in {:.1} s), available {}, failed {:?}, made twice {twice}, lost {}; watches ended {:?} after {:.1} s; RSS 5 s later {:.1} MiB",
            args.copies,
            report.accepted,
            report.admitted_in.as_secs_f64(),
            report.available,
            report.failed,
            report.lost,
            report.ended,
            report.finished_in.as_secs_f64(),
            mib(rss_after)
        );
    }
    let calls = emu.emulator.calls();
    let seen = std::mem::take(&mut *seen.lock().unwrap_or_else(|p| p.into_inner()));
    let unannounced: u64 = seen
        .codes
        .iter()
        .filter(|(code, _)| code.as_str() == "Unavailable" || code.as_str() == "ResourceExhausted")
        .map(|(_, (n, with))| n - with)
        .sum();
    let undocumented: Vec<&String> = seen
        .codes
        .keys()
        .filter(|c| !matches!(c.as_str(), "Ok" | "Unavailable" | "ResourceExhausted" | "DeadlineExceeded"))
        .collect();
    println!(
        "  made twice {twice_total} (target 0), lost {lost_total} (target 0), never accepted {refused_total} (target 0)"
    );
    println!("  callers saw (code: count, of which with RetryInfo): {:?}", seen.codes);
    println!(
        "  retryable refusals without RetryInfo: {unannounced} (target 0); codes outside the documented ones: {undocumented:?} (target none)"
    );
    println!(
        "  AWS calls {:?}; throttled {}, 500s {}, answers dropped {}; copies made by the emulator {made_before}",
        calls.calls, calls.throttled, calls.internal_failures, calls.dropped
    );
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    let first = after_rounds.first().copied().unwrap_or(rss_before);
    let last = after_rounds.last().copied().unwrap_or(rss_before);
    println!(
        "  gateway RSS: before {:.1} MiB, peak {:.1} MiB, after each round {:?} MiB; last round against the first {:+.1} MiB (target: no growth beyond 4 MiB)",
        mib(rss_before),
        mib(peak),
        after_rounds.iter().map(|k| (mib(*k) * 10.0).round() / 10.0).collect::<Vec<_>>(),
        mib(last) - mib(first)
    );
    let met = twice_total == 0
        && lost_total == 0
        && refused_total == 0
        && unannounced == 0
        && undocumented.is_empty()
        && last <= first + 4 * 1024
        && gateway.child.try_wait()?.is_none();
    println!(
        "  targets (every accepted copy ended, none made twice, only documented codes, memory flat across rounds): {}",
        if met { "met" } else { "MISSED" }
    );
    let _ = gateway.child.kill().await;
    emu.stop().await;
    Ok(())
}
