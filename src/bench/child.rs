//! The gateway as a child process (`snapgate serve`) for benchmarks that measure its own
//! memory and descriptors, apart from the load generator's and the emulator's.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cli::ScratchDir;

/// The gateway child: its pid, gRPC and admin addresses.
pub(super) struct ChildGateway {
    pub child: tokio::process::Child,
    pub pid: u32,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
}

pub(super) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl ChildGateway {
    /// Runs `snapgate serve` with the TOML `config` (which listens on `port`, admin on
    /// `admin_port`) until it says it listens; killed when dropped.
    pub(super) async fn spawn(
        config: &str,
        port: u16,
        admin_port: u16,
        scratch: &ScratchDir,
        cpus: Option<&str>,
    ) -> anyhow::Result<ChildGateway> {
        Self::spawn_logging(config, port, admin_port, scratch, cpus, Some("warn,snapgate=info")).await
    }

    /// [`ChildGateway::spawn`] with the log filter `rust_log` (`None`: `serve`'s default).
    pub(super) async fn spawn_logging(
        config: &str,
        port: u16,
        admin_port: u16,
        scratch: &ScratchDir,
        cpus: Option<&str>,
        rust_log: Option<&str>,
    ) -> anyhow::Result<ChildGateway> {
        let path = scratch.path().join("serve.toml");
        std::fs::write(&path, config)?;
        // A profiler to run the gateway under, if asked: SNAPGATE_BENCH_GATEWAY_WRAPPER="heaptrack -o /tmp/gw".
        let wrapper = std::env::var("SNAPGATE_BENCH_GATEWAY_WRAPPER").unwrap_or_default();
        let mut argv: Vec<std::ffi::OsString> = Vec::new();
        if let Some(cpus) = cpus {
            argv.extend(["taskset".into(), "-c".into(), cpus.into()]);
        }
        argv.extend(wrapper.split_whitespace().map(Into::into));
        argv.push(std::env::current_exe()?.into());
        let mut command = tokio::process::Command::new(&argv[0]);
        command.args(&argv[1..]);
        // Its log goes to a file, never through this process: the measuring clients share this
        // process's runtime (and, in `bench flood`, the gateway's CPU), and reading a log line
        // a call (the audit) from a pipe delayed the calls they measure by milliseconds.
        let log = std::env::var_os("SNAPGATE_BENCH_GATEWAY_LOG")
            .map_or_else(|| scratch.path().join("gateway.log"), std::path::PathBuf::from);
        match rust_log {
            Some(filter) => command.env("RUST_LOG", filter),
            None => command.env_remove("RUST_LOG"),
        };
        let mut child = command
            .args(["--log-format", "json", "serve", "--config"])
            .arg(&path)
            .env("AWS_ACCESS_KEY_ID", "AKIDBENCH")
            .env("AWS_SECRET_ACCESS_KEY", "bench-secret")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?)
            .kill_on_drop(true)
            .spawn()?;
        let pid = child.id().context("the gateway exited at once")?;
        // Until it says it listens, or exits, or 30 s have passed: its log, read every 20 ms.
        let started = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let said = std::fs::read_to_string(&log).unwrap_or_default();
                if said.contains("snapgate listening") {
                    return Ok(());
                }
                if let Some(status) = child.try_wait()? {
                    let tail: Vec<&str> = said.lines().rev().take(5).collect();
                    anyhow::bail!("the gateway exited ({status}) before it listened: {}", tail.join(" | "));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        started.context("the gateway did not start within 30 s")??;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        Ok(ChildGateway { child, pid, addr, admin: SocketAddr::from(([127, 0, 0, 1], admin_port)) })
    }
}

/// The sections every child gateway's configuration ends with: its admin listener, the bench
/// caller (and `more_tokens`, further `{ token, principal }` entries), a policy that permits
/// them everything, and the store's directory.
pub(super) fn common_config(admin_port: u16, more_tokens: &str, data: &std::path::Path) -> String {
    let token = super::BENCH_TOKEN;
    format!(
        r#"[admin]
listen = "127.0.0.1:{admin_port}"
[auth]
static_tokens = [{{ token = "{token}", principal = "bench" }}{more_tokens}]
[authz]
policies = 'permit(principal, action, resource);'
[store]
data_dir = "{data}"
"#,
        data = data.display()
    )
}

/// A field of `/proc/PID/status` in KiB (`VmRSS:`, `VmHWM:`).
pub(super) fn proc_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

pub(super) fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// A process's CPU time (user + system) in microseconds, from `/proc/PID/stat` (`"self"` for
/// this one).
pub(super) fn cpu_us(pid: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at ") ".
    let fields: Vec<&str> = stat.rsplit_once(") ").map(|(_, rest)| rest.split(' ').collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 (11 and 12 after the name), in 1/100 s on Linux.
    (ticks(11) + ticks(12)) * 10_000
}

/// The gateway's `/metrics` text from its admin listener (empty if it cannot be read).
pub(super) async fn metrics(admin: SocketAddr) -> String {
    let Ok(mut stream) = tokio::net::TcpStream::connect(admin).await else { return String::new() };
    if stream.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.is_err() {
        return String::new();
    }
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text).await;
    text
}

/// The sum of a metric's samples (every label set) in a `/metrics` text.
pub(super) fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with([' ', '{'])))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum::<f64>()
        // An empty sum is -0.0.
        + 0.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_metric_is_summed_over_its_label_sets_and_not_confused_with_longer_names() {
        let text = "# HELP x\nsnapgate_a_total{reason=\"x\"} 2\nsnapgate_a_total{reason=\"y\"} 3\nsnapgate_a_total_more 7\nsnapgate_b 1.5\n";
        assert_eq!(metric(text, "snapgate_a_total"), 5.0);
        assert_eq!(metric(text, "snapgate_b"), 1.5);
        assert_eq!(metric(text, "snapgate_c"), 0.0);
    }
}
