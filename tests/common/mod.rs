//! Helpers shared by the integration tests: AWS SDK clients pointed at a local endpoint, and
//! raw HTTP for requests an SDK would never send.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use aws_sdk_rds::config::{BehaviorVersion, Credentials, Region, retry::RetryConfig};
use snapgate_emulator::{self as emulator, EmulatorConfig, EmulatorHandle, Faults};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const ACCOUNT: &str = "123456789012";

/// An RDS client for `endpoint` in `region`, signing with `access_key`, with retries off so
/// every fault reaches the test.
pub fn rds_client(endpoint: &str, region: &str, access_key: &str) -> aws_sdk_rds::Client {
    let config = aws_sdk_rds::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region.to_owned()))
        .credentials_provider(Credentials::new(access_key, "test-secret-key", None, None, "tests"))
        .endpoint_url(endpoint)
        .retry_config(RetryConfig::disabled())
        .build();
    aws_sdk_rds::Client::from_conf(config)
}

/// An emulator on a free loopback port with no throttling, unless the test sets faults.
pub async fn emulator_with(config: EmulatorConfig) -> EmulatorHandle {
    emulator::spawn(config, SocketAddr::from(([127, 0, 0, 1], 0))).await.expect("emulator starts")
}

pub fn quiet_config() -> EmulatorConfig {
    EmulatorConfig {
        faults: Faults { throttle: None, ..Faults::default() },
        secret_keys: [("AKIDTEST".to_owned(), "test-secret-key".to_owned())].into(),
        ..EmulatorConfig::default()
    }
}

/// The emulator with its seed data (every engine, two regions, shared snapshots), quiet.
pub fn seeded() -> EmulatorConfig {
    EmulatorConfig { seed: true, ..quiet_config() }
}

/// The emulator with `config`, and in front of it the gateway with the tests' settings as
/// `tune` leaves them: how every test that needs both starts them.
pub async fn setup(
    config: EmulatorConfig,
    tune: impl FnOnce(&mut snapgate_gateway::config::Settings),
) -> (EmulatorHandle, gateway::Gateway) {
    let emu = emulator_with(config).await;
    let mut settings = gateway::settings();
    tune(&mut settings);
    let gw = gateway::start(settings, &emu.endpoint_url(), "AKIDTEST").await;
    (emu, gw)
}

/// A copy of `source` named `target`, everything else default.
pub fn copy_req(source: &str, target: &str) -> snapgate_proto::CopyClusterSnapshotRequest {
    snapgate_proto::CopyClusterSnapshotRequest {
        source_snapshot: source.into(),
        target_snapshot_id: target.into(),
        ..Default::default()
    }
}

/// Tags as the proto carries them.
pub fn tags(pairs: &[(&str, &str)]) -> Vec<snapgate_proto::Tag> {
    pairs.iter().map(|(k, v)| snapgate_proto::Tag { key: k.to_string(), value: v.to_string() }).collect()
}

/// The `google.rpc.ErrorInfo` reason of a status, or "".
pub fn error_reason(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    status.get_error_details().error_info().map(|i| i.reason.clone()).unwrap_or_default()
}

/// An empty scratch directory for this test process, `name` telling tests apart.
pub fn scratch_dir(name: &str) -> std::path::PathBuf {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Runs the scenario `$scenario(store: StoreSettings)` as two tests, `$name::on_sqlite` (the
/// embedded store) and `$name::on_postgres` (a private PostgreSQL cluster).
#[macro_export]
macro_rules! on_each_store {
    ($name:ident, $scenario:ident) => {
        mod $name {
            #[tokio::test]
            async fn on_sqlite() {
                super::$scenario($crate::common::gateway::scratch_store()).await;
            }

            #[tokio::test]
            async fn on_postgres() {
                let pg = $crate::common::postgres::start();
                super::$scenario(pg.store()).await;
            }
        }
    };
}

/// Checks `check` every 50 ms until it holds or `within` has passed; returns whether it held.
/// A bounded wait on a condition: how the tests wait for something that happens on its own.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends raw bytes as one HTTP/1.1 request and returns (status, body).
pub async fn raw_http(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connects");
    stream.write_all(request).await.expect("writes");
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buf)).await;
    read.expect("server answers within 10 s").expect("reads");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// A signed-looking query-protocol POST with `body` (the emulator reads the credential scope,
/// it does not check the signature of ordinary calls).
pub fn query_post(body: &str) -> Vec<u8> {
    format!(
        "POST / HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/x-www-form-urlencoded\r\n\
         authorization: AWS4-HMAC-SHA256 Credential=AKIDTEST/20261121/us-east-1/rds/aws4_request, SignedHeaders=host, Signature=00\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{}",
        body.len(),
        body
    )
    .into_bytes()
}

pub mod gateway {
    //! The real gateway on a free port, with a tonic client.

    use super::*;
    use snapgate_gateway::Application;
    use snapgate_gateway::config::{AuthSettings, AuthzSettings, AwsSettings, Secret, Settings, StaticToken};
    use snapgate_proto::snapshot_copy_service_client::SnapshotCopyServiceClient;
    use std::path::PathBuf;
    use tonic::service::interceptor::InterceptedService;
    use tonic::transport::Channel;

    /// The static token of the tests' caller, "tester".
    pub const TOKEN: &str = "test-token-0123456789";

    /// Adds `authorization: Bearer <token>` to every call.
    #[derive(Clone)]
    pub struct Bearer(pub Option<String>);

    impl tonic::service::Interceptor for Bearer {
        fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
            if let Some(token) = &self.0 {
                let value = format!("Bearer {token}").parse().map_err(|_| tonic::Status::internal("bad token"))?;
                request.metadata_mut().insert("authorization", value);
            }
            Ok(request)
        }
    }

    pub type Client = SnapshotCopyServiceClient<InterceptedService<Channel, Bearer>>;

    /// A client of the gateway at `addr` (one started as a process) with the tests' token.
    pub async fn connect(addr: SocketAddr) -> Client {
        let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
        client_with(channel, Some(TOKEN))
    }

    /// A client on `channel` that sends `token` (none: no credentials).
    pub fn client_with(channel: Channel, token: Option<&str>) -> Client {
        SnapshotCopyServiceClient::with_interceptor(channel, Bearer(token.map(str::to_owned)))
    }

    /// A started gateway and what a test reaches it by: its gRPC address and a client with the
    /// tests' token, its HTTP/JSON and admin listeners (when on), its watch hub and its store.
    /// Dropping it shuts the gateway down.
    pub struct Gateway {
        pub addr: SocketAddr,
        pub channel: Channel,
        pub client: Client,
        /// The HTTP/JSON listener, when the settings turn it on.
        pub http: Option<SocketAddr>,
        pub admin: Option<SocketAddr>,
        pub hub: std::sync::Arc<snapgate_gateway::WatchHub>,
        /// Where its jobs are kept.
        pub store: snapgate_gateway::config::StoreSettings,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
    }

    impl Gateway {
        /// Starts the graceful shutdown, as SIGTERM would.
        pub fn shut_down(&mut self) {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
        }
    }

    impl Drop for Gateway {
        fn drop(&mut self) {
            self.shut_down();
        }
    }

    /// A fresh directory for one gateway's job store, under cargo's scratch directory.
    pub fn scratch_store() -> snapgate_gateway::config::StoreSettings {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("store-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        snapgate_gateway::config::StoreSettings { data_dir: dir, ..Default::default() }
    }

    pub fn settings() -> Settings {
        Settings {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            store: scratch_store(),
            aws: AwsSettings {
                region: Some("us-east-1".into()),
                max_attempts: 2,
                account_id: Some(ACCOUNT.into()),
                rate_limit_per_sec: 1000.0,
                rate_limit_burst: 1000,
                ..AwsSettings::default()
            },
            watch: snapgate_gateway::config::WatchSettings {
                min_poll_interval_ms: 100,
                max_poll_interval_ms: 400,
                heartbeat_secs: 15,
                max_streams: 1000,
                error_budget_secs: 5,
                ..Default::default()
            },
            admin: snapgate_gateway::config::AdminSettings { listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))) },
            auth: AuthSettings {
                static_tokens: vec![StaticToken {
                    token: Secret::new(TOKEN),
                    principal: "tester".into(),
                    groups: vec!["tests".into()],
                    team: None,
                }],
                ..AuthSettings::default()
            },
            authz: AuthzSettings {
                policies: Some(r#"@id("tester-may-do-everything") permit(principal == Snapgate::Caller::"tester", action, resource);"#.into()),
                ..AuthzSettings::default()
            },
            // The trail of a test binary's gateways goes to a file of its own, not into the
            // test output (a process holds one trail: the first gateway built decides).
            audit: snapgate_gateway::config::AuditSettings {
                path: Some(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("audit-{}.jsonl", std::process::id()))),
                ..Default::default()
            },
            ..Settings::default()
        }
    }

    /// Builds and runs the gateway against `endpoint`, signing as `access_key`; its client's
    /// channel connects on first use (a TLS gateway's tests connect their own way).
    pub async fn try_start(settings: Settings, endpoint: &str, access_key: &str) -> anyhow::Result<Gateway> {
        let store = settings.store.clone();
        let sdk = snapgate_gateway::fixed_sdk_config(&settings.aws, endpoint, access_key, "test-secret-key").await;
        let app = Application::build(settings, sdk).await?;
        let (addr, hub, admin, http) = (app.local_addr(), app.watch_hub(), app.admin_addr(), app.http_addr());
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(app.run_until_stopped(async move {
            let _ = rx.await;
        }));
        let channel = Channel::from_shared(format!("http://{addr}"))?.connect_lazy();
        let client = client_with(channel.clone(), Some(TOKEN));
        Ok(Gateway { addr, channel, client, http, admin, hub, store, stop: Some(stop) })
    }

    /// Starts the gateway against `endpoint` with `settings`, signing as `access_key`, with its
    /// client connected.
    pub async fn start(settings: Settings, endpoint: &str, access_key: &str) -> Gateway {
        let mut gw = try_start(settings, endpoint, access_key).await.expect("gateway builds");
        gw.channel = Channel::from_shared(format!("http://{}", gw.addr))
            .expect("a URI")
            .connect()
            .await
            .expect("gateway accepts");
        gw.client = client_with(gw.channel.clone(), Some(TOKEN));
        gw
    }
}
pub mod moto {
    //! moto's server, from the project's .venv, on a free loopback port.

    use std::path::PathBuf;
    use std::process::Stdio;

    pub struct Moto {
        pub endpoint: String,
        _child: tokio::process::Child,
    }

    fn moto_server_path() -> PathBuf {
        let venv = std::env::var_os("SNAPGATE_VENV")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv"));
        let path = venv.join("bin").join("moto_server");
        assert!(
            path.exists(),
            "{} is missing: run scripts/venv (scripts/test runs it), which creates .venv with moto[server]",
            path.display()
        );
        path
    }

    pub async fn start() -> Moto {
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let child = tokio::process::Command::new(moto_server_path())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("moto_server starts");
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(tokio::time::Instant::now() < deadline, "moto_server did not listen within 30 s");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        Moto { endpoint: format!("http://127.0.0.1:{port}"), _child: child }
    }
}

pub mod postgres {
    //! A private PostgreSQL cluster from Debian's `postgresql` package, on a free loopback port:
    //! `initdb` in a scratch directory, run as the `postgres` user when the tests run as root
    //! (PostgreSQL refuses root). Stopped and removed when dropped.

    use std::path::{Path, PathBuf};
    use std::process::Command;

    pub struct Postgres {
        pub url: String,
        dir: PathBuf,
        bin: PathBuf,
        as_postgres: bool,
    }

    fn bin_dir() -> PathBuf {
        let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .map(|dirs| {
                dirs.filter_map(Result::ok)
                    .map(|d| d.path().join("bin"))
                    .filter(|b| b.join("initdb").exists())
                    .collect()
            })
            .unwrap_or_default();
        found.sort();
        found.pop().expect(
            "PostgreSQL is missing: scripts/test installs Debian's postgresql package (apt-get install postgresql)",
        )
    }

    fn run(as_postgres: bool, program: &Path, args: &[&str]) {
        let mut command = if as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        };
        let out = command.args(args).output().expect("runs");
        assert!(out.status.success(), "{} {args:?}: {}", program.display(), String::from_utf8_lossy(&out.stderr));
    }

    pub fn start() -> Postgres {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let bin = bin_dir();
        let as_postgres = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("snapgate-pg-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch directory");
        if as_postgres {
            let ok =
                Command::new("chown").args(["-R", "postgres:postgres"]).arg(&dir).status().is_ok_and(|s| s.success());
            assert!(ok, "chown of the scratch directory to postgres");
        }
        let data = dir.join("data");
        let data_text = data.display().to_string();
        run(
            as_postgres,
            &bin.join("initdb"),
            &["-D", &data_text, "-A", "trust", "-U", "snapgate", "--no-sync", "-E", "UTF8"],
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let options = format!("-p {port} -k {} -h 127.0.0.1 -c fsync=off", dir.display());
        let log = dir.join("log").display().to_string();
        run(
            as_postgres,
            &bin.join("pg_ctl"),
            &["-D", &data_text, "-o", &options, "-l", &log, "-w", "-t", "60", "start"],
        );
        Postgres { url: format!("postgres://snapgate@127.0.0.1:{port}/postgres"), dir, bin, as_postgres }
    }

    impl Postgres {
        /// A gateway store on this cluster, its other settings as `gateway::scratch_store`'s.
        pub fn store(&self) -> snapgate_gateway::config::StoreSettings {
            use snapgate_gateway::config::{Secret, StoreSettings};
            StoreSettings { url: Some(Secret::new(self.url.clone())), ..super::gateway::scratch_store() }
        }
    }

    impl Drop for Postgres {
        fn drop(&mut self) {
            let data = self.dir.join("data").display().to_string();
            let mut command = if self.as_postgres {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(self.bin.join("pg_ctl"));
                c
            } else {
                Command::new(self.bin.join("pg_ctl"))
            };
            let _ = command.args(["-D", &data, "-m", "immediate", "-w", "stop"]).output();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

pub mod serve {
    //! `snapgate serve` as its own process, to be killed with SIGKILL and started again.

    use std::net::SocketAddr;
    use std::path::Path;
    use std::process::Stdio;

    use tokio::io::AsyncBufReadExt;

    pub struct Process {
        pub addr: SocketAddr,
        /// Its admin listener (`/metrics`).
        pub admin: Option<SocketAddr>,
        child: tokio::process::Child,
        log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    }

    impl Process {
        /// Its metrics, as Prometheus scrapes them.
        pub async fn metrics(&self) -> String {
            Process::probe(self.admin).metrics().await
        }

        /// The value of the metric line that starts with `series` (0 when absent).
        pub async fn metric(&self, series: &str) -> f64 {
            Process::probe(self.admin).metric(series).await
        }

        /// A reader of the metrics of the admin listener `admin`.
        pub fn probe(admin: Option<SocketAddr>) -> Probe {
            Probe { admin: admin.expect("an admin listener") }
        }

        /// Whether a line of its log of plan runs so far contains every one of `texts`.
        pub fn logged(&self, texts: &[&str]) -> bool {
            let has = |line: &String| texts.iter().all(|text| line.contains(text));
            self.log.lock().map(|log| log.iter().any(has)).unwrap_or(false)
        }

        /// SIGKILL: no shutdown, no flush, as a crash or an OOM kill would end it.
        pub async fn kill(mut self) {
            let _ = self.child.kill().await;
        }
    }

    /// Reads a gateway's metrics from its admin listener.
    pub struct Probe {
        admin: SocketAddr,
    }

    impl Probe {
        pub async fn metrics(&self) -> String {
            let admin = self.admin;
            let request = format!("GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
            super::raw_http(admin, request.as_bytes()).await.1
        }

        /// The value of the metric line that starts with `series` (0 when absent).
        pub async fn metric(&self, series: &str) -> f64 {
            let text = self.metrics().await;
            text.lines()
                .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
                .and_then(|line| line.rsplit(' ').next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0)
        }
    }

    /// The configuration of a gateway in front of `emulator` keeping its jobs in `store`
    /// (a TOML `[store]` body), with the tests' static token and quick queue settings.
    pub fn config(emulator: &str, store: &str) -> String {
        format!(
            r#"listen = "127.0.0.1:0"
[server]
shutdown_grace_secs = 1
[aws]
region = "us-east-1"
endpoint_url = "{emulator}"
account_id = "123456789012"
max_attempts = 2
rate_limit_per_sec = 1000.0
rate_limit_burst = 1000
[watch]
min_poll_interval_ms = 100
max_poll_interval_ms = 300
[admin]
listen = "127.0.0.1:0"
[auth]
static_tokens = [{{ token = "{token}", principal = "tester", groups = ["tests"] }}]
[authz]
policies = 'permit(principal == Snapgate::Caller::"tester", action, resource);'
[store]
{store}
[jobs]
lease_secs = 2
dispatch_interval_ms = 100
retry_initial_ms = 200
retry_max_ms = 1000
"#,
            token = super::gateway::TOKEN
        )
    }

    /// Starts `snapgate serve` with `config` (written to `dir`) and waits for its address.
    pub async fn spawn(config: &str, dir: &Path, name: &str) -> Process {
        std::fs::create_dir_all(dir).expect("config directory");
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, config).expect("config written");
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_snapgate"))
            .arg("serve")
            .arg("--config")
            .arg(&path)
            .env("AWS_ACCESS_KEY_ID", "AKIDTEST")
            .env("AWS_SECRET_ACCESS_KEY", "test-secret-key")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("AWS_PROFILE")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("snapgate serve starts");
        let mut lines = tokio::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
        let (addr, admin) = tokio::time::timeout(std::time::Duration::from_secs(60), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("snapgate listening")
                    && let Some(addr) = line.split(" addr=").nth(1).and_then(|a| a.split_whitespace().next())
                {
                    let admin = line
                        .split(" admin=Some(")
                        .nth(1)
                        .and_then(|a| a.split(')').next())
                        .and_then(|a| a.parse::<SocketAddr>().ok());
                    return addr.parse::<SocketAddr>().ok().map(|addr| (addr, admin));
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .expect("snapgate serve printed its address");
        // Keep reading its log, so it never blocks on a full pipe; plan runs' lines are kept.
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if (line.contains("plan run") || line.contains("plan scheduler"))
                    && let Ok(mut kept) = kept.lock()
                {
                    kept.push(line);
                }
            }
        });
        Process { addr, admin, child, log }
    }
}
