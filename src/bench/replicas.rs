//! `snapgate bench replicas`: replicas of the gateway (`snapgate serve` children) on one
//! PostgreSQL the bench starts, against the emulator in this process. Copies in progress,
//! watched on every replica and read on each: the describes the fleet makes per poll round
//! against one replica's, event lag on the replicas that follow the poll holder against the
//! holder's own, the fleet's peak AWS call rate under fresh reads against its configured pace,
//! and the time another replica takes the poll when the holder is SIGKILLed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;

use super::child::{ChildGateway, common_config, cpu_us, free_port, metric, metrics};
use super::{bench_client, loopback_emulator, make_copies};
use crate::cli::ScratchDir;
use snapgate_emulator::{EmulatorConfig, Faults};
use snapgate_proto::{GetCopyRequest, WatchCopyRequest};

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ReplicasBenchArgs {
    /// Replicas of the gateway on the one PostgreSQL.
    #[arg(long, default_value_t = 3)]
    pub replicas: usize,
    /// Copies in progress, each watched on every replica.
    #[arg(long, default_value_t = 300)]
    pub copies: usize,
    /// Length of each measured phase.
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// Callers reading copies on each replica.
    #[arg(long, default_value_t = 4)]
    pub readers: usize,
}

/// The fleet's AWS pace: per account and region, for all replicas together.
const PACE: f64 = 20.0;
const BURST: u32 = 20;
/// The poll lease; a holder that dies is replaced within it and a poll interval.
const LEASE_SECS: u64 = 5;
const MIN_POLL_MS: u64 = 1000;

/// A private PostgreSQL cluster (Debian's `postgresql`), on a free loopback port, run as the
/// `postgres` user when the bench runs as root; stopped when dropped.
struct Postgres {
    url: String,
    data: PathBuf,
    bin: PathBuf,
    as_postgres: bool,
}

impl Postgres {
    fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<()> {
        let path = self.bin.join(program);
        let mut command = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        let out = command.args(args).output().with_context(|| format!("running {}", path.display()))?;
        anyhow::ensure!(out.status.success(), "{program}: {}", String::from_utf8_lossy(&out.stderr));
        Ok(())
    }

    fn start(dir: &Path) -> anyhow::Result<Postgres> {
        let mut bins: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .context("PostgreSQL is not installed (apt-get install postgresql)")?
            .filter_map(Result::ok)
            .map(|d| d.path().join("bin"))
            .filter(|b| b.join("initdb").exists())
            .collect();
        bins.sort();
        let bin = bins.pop().context("no initdb under /usr/lib/postgresql")?;
        let as_postgres = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        let data = dir.join("pg");
        std::fs::create_dir_all(&data)?;
        if as_postgres {
            let owned = Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir).status()?;
            anyhow::ensure!(owned.success(), "chown of {} to postgres", dir.display());
        }
        let port = free_port()?;
        let pg = Postgres { url: format!("postgres://snapgate@127.0.0.1:{port}/postgres"), data, bin, as_postgres };
        let data = pg.data.display().to_string();
        pg.run("initdb", &["-D", &data, "-A", "trust", "-U", "snapgate", "--no-sync", "-E", "UTF8"])?;
        let options = format!("-p {port} -k {} -h 127.0.0.1 -c fsync=off -c max_connections=200", dir.display());
        let log = dir.join("pg.log").display().to_string();
        pg.run("pg_ctl", &["-D", &data, "-o", &options, "-l", &log, "-w", "-t", "60", "start"])?;
        Ok(pg)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.data.display().to_string();
        let _ = self.run("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
    }
}

fn replica_config(port: u16, admin_port: u16, endpoint: &str, data: &Path, url: &str, streams: usize) -> String {
    format!(
        r#"listen = "127.0.0.1:{port}"
[server]
shutdown_grace_secs = 1
[watch]
min_poll_interval_ms = {MIN_POLL_MS}
max_poll_interval_ms = 4000
max_streams = {max_streams}
poll_lease_secs = {LEASE_SECS}
[fair_share]
aws_in_flight = 1000
[[fair_share.overrides]]
principal = "bench"
calls_per_sec = 1000000000.0
burst = 4000000000
in_flight = 4000000000
aws_calls_per_sec = 1000000.0
aws_burst = 1000000
[aws]
region = "us-east-1"
endpoint_url = "{endpoint}"
account_id = "{account}"
rate_limit_per_sec = {PACE}
rate_limit_burst = {BURST}
{common}url = "{url}"
"#,
        max_streams = streams + 100,
        account = snapgate_emulator::DEFAULT_ACCOUNT,
        common = common_config(admin_port, "", data),
    )
}

/// An event a watcher received: on which replica, and how long after the poll that saw it.
#[derive(Default)]
struct Seen {
    lags_ms: Vec<(usize, u64)>,
    opened: usize,
    errors: Vec<String>,
    /// When each replica's watchers last received an event.
    last_event: Vec<Option<Instant>>,
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The most calls in any `span` of the samples.
fn peak(samples: &[(Instant, u64)], span: Duration) -> u64 {
    let mut most = 0;
    let mut start = 0;
    for (at, n) in samples {
        while *at - samples[start].0 > span {
            start += 1;
        }
        most = most.max(n - samples[start].1);
    }
    most
}

async fn holder(admins: &[SocketAddr]) -> Option<usize> {
    for (i, admin) in admins.iter().enumerate() {
        if metric(&metrics(*admin).await, "snapgate_poll_leader") >= 1.0 {
            return Some(i);
        }
    }
    None
}

pub(crate) async fn replicas(args: ReplicasBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.replicas >= 2, "--replicas: at least 2");
    let scratch = ScratchDir::new("bench-replicas")?;
    let pg = Postgres::start(scratch.path())?;
    // billing-pg-daily is 120 GiB: copies last the three phases and the failover with room.
    let copy_secs = args.seconds as f64 * 3.0 + 120.0;
    let emu = loopback_emulator(EmulatorConfig {
        seed: true,
        copy_gib_per_sec: 120.0 / copy_secs,
        snapshot_quota: args.copies + 100,
        faults: Faults { throttle: None, ..Faults::default() },
        ..EmulatorConfig::default()
    })
    .await?;
    let streams_each = args.copies;
    let mut gateways = Vec::new();
    let mut dirs = Vec::new();
    for i in 0..args.replicas {
        let dir = ScratchDir::new(&format!("bench-replica-{i}"))?;
        let (port, admin_port) = (free_port()?, free_port()?);
        let config =
            replica_config(port, admin_port, &emu.endpoint_url(), &dir.path().join("data"), &pg.url, streams_each);
        gateways.push(ChildGateway::spawn(&config, port, admin_port, &dir, None).await?);
        dirs.push(dir);
    }
    let addrs: Vec<SocketAddr> = gateways.iter().map(|g| g.addr).collect();
    let admins: Vec<SocketAddr> = gateways.iter().map(|g| g.admin).collect();
    let first = bench_client(&addrs[0].to_string()).await?;
    let names = make_copies(&first, "billing-pg-daily", "fleet", args.copies).await?;

    // Every copy watched on every replica.
    let seen = Arc::new(Mutex::new(Seen { last_event: vec![None; args.replicas], ..Seen::default() }));
    let mut tasks = Vec::new();
    for (r, addr) in addrs.iter().enumerate() {
        let client = bench_client(&addr.to_string()).await?;
        for name in &names {
            let (mut client, name, seen) = (client.clone(), name.clone(), seen.clone());
            tasks.push(tokio::spawn(async move {
                let mut stream = match client.watch_copy(WatchCopyRequest { name }).await {
                    Ok(s) => s.into_inner(),
                    Err(status) => {
                        seen.lock().unwrap_or_else(|p| p.into_inner()).errors.push(status.code().to_string());
                        return;
                    }
                };
                let mut first = true;
                loop {
                    match stream.message().await {
                        Ok(Some(event)) => {
                            let now = SystemTime::now();
                            let observed = event.observe_time.and_then(|t| SystemTime::try_from(t).ok());
                            let lag = observed.and_then(|o| now.duration_since(o).ok()).unwrap_or_default();
                            let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
                            if first {
                                seen.opened += 1;
                                first = false;
                            } else {
                                seen.lags_ms.push((r, u64::try_from(lag.as_millis()).unwrap_or(u64::MAX)));
                            }
                            seen.last_event[r] = Some(Instant::now());
                            if event.terminal {
                                return;
                            }
                        }
                        Ok(None) => return,
                        Err(status) => {
                            let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
                            seen.errors.push(format!("replica {r}: {}", status.code()));
                            return;
                        }
                    }
                }
            }));
        }
    }
    let expected = args.copies * args.replicas;
    let opening = Instant::now();
    while seen.lock().unwrap_or_else(|p| p.into_inner()).opened < expected
        && opening.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let open_secs = opening.elapsed().as_secs_f64();
    // Readers on each replica (GetCopy as a dashboard reads it: the hub's observations).
    let stop_readers = Arc::new(std::sync::atomic::AtomicBool::new(false));
    for addr in &addrs {
        for i in 0..args.readers {
            let (mut client, names, stop) =
                (bench_client(&addr.to_string()).await?, names.clone(), stop_readers.clone());
            tokio::spawn(async move {
                let mut k = i;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ =
                        client.get_copy(GetCopyRequest { name: names[k % names.len()].clone(), fresh: false }).await;
                    k += 7;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            });
        }
    }

    // Phase 1: the watch. Describes per round of the poll holder, lag by replica.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let lead = holder(&admins).await.context("no replica holds the poll of us-east-1")?;
    let rounds = |i: usize| {
        let admin = admins[i];
        async move { metric(&metrics(admin).await, "snapgate_watch_poll_rounds_total") }
    };
    seen.lock().unwrap_or_else(|p| p.into_inner()).lags_ms.clear();
    let (describes0, rounds0) = (emu.emulator.calls().get("DescribeDBClusterSnapshots"), rounds(lead).await);
    let cpu0: Vec<u64> = gateways.iter().map(|g| cpu_us(&g.pid.to_string())).collect();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let describes = emu.emulator.calls().get("DescribeDBClusterSnapshots") - describes0;
    let lead_rounds = rounds(lead).await - rounds0;
    let cpu: Vec<f64> = gateways
        .iter()
        .zip(&cpu0)
        .map(|(g, before)| (cpu_us(&g.pid.to_string()) - before) as f64 / 1e6 / args.seconds as f64 * 100.0)
        .collect();
    let in_progress: usize =
        emu.emulator.copies().iter().filter(|c| c.region == "us-east-1").map(|c| c.in_progress).sum();
    let (lags, opened, errors) = {
        let seen = seen.lock().unwrap_or_else(|p| p.into_inner());
        (seen.lags_ms.clone(), seen.opened, seen.errors.clone())
    };
    let lag_of = |holder_side: bool| {
        let mut v: Vec<u64> = lags.iter().filter(|(r, _)| (*r == lead) == holder_side).map(|(_, l)| *l).collect();
        v.sort_unstable();
        v
    };
    let (on_holder, on_followers) = (lag_of(true), lag_of(false));

    // Phase 2: fresh reads on every replica, as fast as 8 callers each can ask.
    let calls = || emu.emulator.calls().calls.values().sum::<u64>();
    let stop_fresh = Arc::new(std::sync::atomic::AtomicBool::new(false));
    for addr in &addrs {
        for i in 0..8 {
            let (mut client, names, stop) = (bench_client(&addr.to_string()).await?, names.clone(), stop_fresh.clone());
            tokio::spawn(async move {
                let mut k = i;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = client.get_copy(GetCopyRequest { name: names[k % names.len()].clone(), fresh: true }).await;
                    k += 13;
                }
            });
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut samples = Vec::new();
    let until = Instant::now() + Duration::from_secs(args.seconds.max(11));
    while Instant::now() < until {
        samples.push((Instant::now(), calls()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop_fresh.store(true, std::sync::atomic::Ordering::Relaxed);
    let (peak1, peak10) = (peak(&samples, Duration::from_secs(1)), peak(&samples, Duration::from_secs(10)));
    let made = samples.last().map_or(0, |s| s.1) - samples.first().map_or(0, |s| s.1);
    let fresh_secs = samples.last().map_or(0.0, |s| (s.0 - samples[0].0).as_secs_f64());

    // Phase 3: the holder is SIGKILLed.
    let mut dead = gateways.remove(lead);
    let survivors: Vec<SocketAddr> = admins.iter().enumerate().filter(|(i, _)| *i != lead).map(|(_, a)| *a).collect();
    let _ = dead.child.kill().await;
    let killed = Instant::now();
    let mut taken = None;
    while killed.elapsed() < Duration::from_secs(LEASE_SECS * 4) {
        if holder(&survivors).await.is_some() {
            taken = Some(killed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The first event on a survivor after the death, from the new holder's rounds.
    let mut next_event = None;
    while killed.elapsed() < Duration::from_secs(LEASE_SECS * 4) {
        let latest = {
            let seen = seen.lock().unwrap_or_else(|p| p.into_inner());
            seen.last_event.iter().enumerate().filter(|(r, _)| *r != lead).filter_map(|(_, t)| *t).max()
        };
        if latest.is_some_and(|t| t > killed + taken.unwrap_or_default()) {
            next_event = latest.map(|t| t - killed);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_readers.store(true, std::sync::atomic::Ordering::Relaxed);
    let survivor_errors: Vec<String> = {
        let seen = seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.errors.iter().filter(|e| !e.starts_with(&format!("replica {lead}:"))).cloned().collect()
    };

    let one_replica = args.copies.div_ceil(100) as f64;
    let per_round = describes as f64 / lead_rounds.max(1.0);
    let premise = in_progress == args.copies && opened == expected && errors.is_empty();
    if !premise {
        println!(
            "PREMISE NOT HELD: {in_progress} of {} copies in progress at the end of the watch, {opened} of {expected} streams opened, {} stream errors",
            args.copies,
            errors.len()
        );
    }
    println!(
        "snapgate bench replicas: {} replicas on one PostgreSQL, {} copies each watched on every replica ({expected} streams, all open in {open_secs:.1} s), {} readers a replica, {} s phases, on {} cores",
        args.replicas,
        args.copies,
        args.readers,
        args.seconds,
        std::thread::available_parallelism().map_or(1, usize::from)
    );
    println!(
        "  describes: {describes} in {} s for {lead_rounds} rounds of the poll holder (replica {lead}): {per_round:.2} a round, one replica's is {one_replica} (target ±10 %)",
        args.seconds
    );
    println!(
        "  event lag p50/p99: on the holder {}/{} ms ({} events), on the followers {}/{} ms ({} events) (target: followers' p99 <= holder's + 50 ms)",
        percentile(&on_holder, 0.5),
        percentile(&on_holder, 0.99),
        on_holder.len(),
        percentile(&on_followers, 0.5),
        percentile(&on_followers, 0.99),
        on_followers.len()
    );
    println!(
        "  replicas' CPU during the watch: {}",
        cpu.iter().enumerate().map(|(i, c)| format!("replica {i} {c:.1} %")).collect::<Vec<_>>().join(", ")
    );
    println!(
        "  fresh reads from 8 callers a replica: {made} AWS calls in {fresh_secs:.1} s; peak {peak1} in 1 s, {peak10} in 10 s, against the fleet's pace {PACE}/s with burst {BURST} (target 10 s <= {})",
        PACE * 10.0 + f64::from(BURST)
    );
    println!(
        "  holder SIGKILLed: another replica held the poll after {}, and its first event reached a watcher after {} (target <= lease {LEASE_SECS} s + a poll interval of 1-4 s); stream errors on the survivors: {}",
        taken.map_or_else(|| "never".to_owned(), |t| format!("{:.2} s", t.as_secs_f64())),
        next_event.map_or_else(|| "never".to_owned(), |t| format!("{:.2} s", t.as_secs_f64())),
        survivor_errors.len()
    );
    for task in tasks {
        task.abort();
    }
    drop(gateways);
    emu.stop().await;
    drop(pg);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peak_is_the_most_calls_in_any_window() {
        let t = Instant::now();
        let at = |ms: u64, n: u64| (t + Duration::from_millis(ms), n);
        let samples = [at(0, 0), at(500, 5), at(1000, 6), at(1500, 20), at(2000, 21)];
        assert_eq!(peak(&samples, Duration::from_secs(1)), 15, "5 at 500 ms, 20 at 1500 ms");
        assert_eq!(peak(&samples, Duration::from_secs(10)), 21);
    }
}
