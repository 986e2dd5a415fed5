//! The `snapgate` command line: its subcommands and flags are the product's interface, so
//! their names stay stable once released.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use snapgate_emulator::{self as emulator, EmulatorConfig};
use snapgate_gateway::config::{
    AdminSettings, AuthSettings, AuthzSettings, AwsSettings, HttpSettings, Secret, Settings, StaticToken, StoreSettings,
};
use snapgate_gateway::telemetry::{self, LogFormat, TelemetryGuard};
use snapgate_gateway::{Application, fixed_sdk_config, load_sdk_config};

#[derive(Debug, Parser)]
#[command(
    name = "snapgate",
    version,
    about = "gRPC gateway for copying AWS DB cluster snapshots and watching the copies finish"
)]
pub(crate) struct Cli {
    /// Log lines for people, or JSON for log pipelines; `RUST_LOG` sets the filter.
    #[arg(long, global = true, value_enum, default_value = "human", env = "SNAPGATE_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the gateway against AWS (or any RDS endpoint), configured as AWS users expect.
    Serve(ServeArgs),
    /// Run the gateway on the embedded RDS emulator with seed data: no AWS account needed.
    Dev(DevArgs),
    /// Run the local RDS query-API emulator on its own.
    Emulator(EmulatorArgs),
    /// Cedar policies: print the schema, validate files, decide a call offline.
    #[command(subcommand)]
    Policy(crate::policy_cmd::PolicyCommand),
    /// DR plans: apply a plan file, run plans, see what runs did and how fresh each cluster's
    /// recovery point is.
    #[command(subcommand)]
    Plan(crate::plan_cmd::PlanCommand),
    /// Benchmarks that print a report.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Copy snapshots through a gateway (one, or many with --from-file); --wait follows them
    /// to the end and the exit code says how they ended.
    Copy(crate::client_cmd::CopyArgs),
    /// Wait for copies to end (exit 0 available, 1 failed, 3 cancelled or deleted, 4 timed
    /// out, 5 not found, 6 refused, 7 gateway unreachable).
    Wait(crate::client_cmd::NamesArgs),
    /// Follow copies' progress until they end (as wait).
    Watch(crate::client_cmd::NamesArgs),
    /// Show a copy's state.
    Get(crate::client_cmd::GetArgs),
    /// Cancel a copy (a queued one leaves the queue; one in progress is deleted).
    Cancel(crate::client_cmd::NameArgs),
    /// List the gateway's copies, newest first.
    List(crate::client_cmd::ListArgs),
}

#[derive(Debug, Subcommand)]
pub(crate) enum BenchCommand {
    /// Many WatchCopy streams over many copies: AWS calls per round, memory, event lag.
    Watch(crate::bench::watch::WatchBenchArgs),
    /// A burst of copies at once: all succeed, none throttled, time against the limit.
    CopyBurst(crate::bench::CopyBurstArgs),
    /// A fleet of cross-region copies at once, queued within AWS's limit of 5 in progress.
    CopyQueue(crate::bench::queue::CopyQueueArgs),
    /// The cost of authentication and authorization per call, next to a whole call's.
    Auth(crate::bench::auth::AuthBenchArgs),
    /// Throughput with trace export on against off, in one run.
    Trace(crate::bench::trace::TraceBenchArgs),
    /// The gateway under transport abuse: idle connections, slowloris, rapid reset, oversized
    /// headers, call and stream floods, against a well-behaved client's latency.
    Flood(crate::bench::flood::FloodBenchArgs),
    /// N callers polling GetCopy over M copies: their requests per second against AWS's calls.
    Reads(crate::bench::reads::ReadsBenchArgs),
    /// GetCopy through the whole gateway against a bare tonic server, each in its own process:
    /// each one's CPU per call, the ratios, calls per second.
    Unary(crate::bench::unary::UnaryBenchArgs),
    /// A fleet with its watches and readers under throttling, 500s, late and dropped answers:
    /// every accepted copy ends, none is made twice, callers see only documented codes.
    Soak(crate::bench::soak::SoakBenchArgs),
    /// A DR plan over a fleet: describes per run, time against the ideal, copies once, expiries.
    Plans(crate::bench::plans::PlansBenchArgs),
    /// Replicas on one PostgreSQL: describes per round against one replica's, the fleet's AWS
    /// pace, event lag on the followers, failover of the poll holder.
    Replicas(crate::bench::replicas::ReplicasBenchArgs),
    /// One attack of `bench flood`, in a child process.
    #[command(hide = true)]
    FloodAttack(crate::bench::flood::FloodAttackArgs),
    /// The floor server `bench unary` measures the gateway against, in a child process.
    #[command(hide = true)]
    UnaryFloor(crate::bench::unary::UnaryFloorArgs),
    /// The load generator `bench watch` starts in a child process.
    #[command(hide = true)]
    WatchClients(crate::bench::watch::WatchClientsArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Address of the gRPC server [default: 127.0.0.1:50051, or `listen` in the config].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Address of the HTTP/JSON listener [default: off, or `http.listen` in the config].
    #[arg(long)]
    pub http_listen: Option<SocketAddr>,
    /// TOML configuration file; `SNAPGATE_`-prefixed variables override it.
    #[arg(long, env = "SNAPGATE_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct DevArgs {
    /// Address of the gRPC server.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Simulated copy throughput of the embedded emulator, in GiB per second.
    #[arg(long, default_value_t = 2.0)]
    pub copy_gib_per_sec: f64,
    /// Address of the plaintext admin listener (/metrics, /healthz).
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub admin_listen: SocketAddr,
    /// Address of the HTTP/JSON listener (curl, workflow engines).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http_listen: SocketAddr,
    /// Cedar policies to run with instead of the dev policy (which lets the dev token do
    /// everything); reloaded when the file changes.
    #[arg(long)]
    pub policy_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct EmulatorArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:4566", env = "SNAPGATE_EMULATOR_LISTEN")]
    pub listen: SocketAddr,
    /// TOML file with emulator settings (accounts, throughput, quota, faults).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Start empty instead of loading the seed clusters and snapshots.
    #[arg(long)]
    pub no_seed: bool,
    /// Simulated copy throughput in GiB per second.
    #[arg(long)]
    pub copy_gib_per_sec: Option<f64>,
}

/// Runs a command. Each sets up its own logs and traces: the servers log at `info`, the
/// benchmarks at `warn` (their calls' log lines, audit events among them, would bury the
/// report), and `bench trace` exports its traces to its own sink.
pub(crate) async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let format = cli.log_format;
    let done = match cli.command {
        Command::Serve(args) => with_telemetry("info", format, run_serve(args)).await,
        Command::Dev(args) => with_telemetry("info", format, run_dev(args)).await,
        Command::Emulator(args) => with_telemetry("info", format, run_emulator(args)).await,
        Command::Policy(command) => return crate::policy_cmd::run(command),
        Command::Copy(args) => return client(format, crate::client_cmd::copy(args)).await,
        Command::Wait(args) | Command::Watch(args) => return client(format, crate::client_cmd::wait(args)).await,
        Command::Get(args) => return client(format, crate::client_cmd::get(args)).await,
        Command::Cancel(args) => return client(format, crate::client_cmd::cancel(args)).await,
        Command::List(args) => return client(format, crate::client_cmd::list(args)).await,
        Command::Plan(command) => return client(format, crate::plan_cmd::run(command)).await,
        Command::Bench(BenchCommand::Watch(args)) => {
            with_telemetry("warn", format, crate::bench::watch::watch(args)).await
        }
        Command::Bench(BenchCommand::CopyBurst(args)) => {
            with_telemetry("warn", format, crate::bench::copy_burst(args)).await
        }
        Command::Bench(BenchCommand::CopyQueue(args)) => {
            with_telemetry("warn", format, crate::bench::queue::copy_queue(args)).await
        }
        Command::Bench(BenchCommand::Auth(args)) => {
            with_telemetry("warn", format, crate::bench::auth::auth(args)).await
        }
        Command::Bench(BenchCommand::Flood(args)) => {
            with_telemetry("warn", format, crate::bench::flood::flood(args)).await
        }
        Command::Bench(BenchCommand::Reads(args)) => {
            with_telemetry("warn", format, crate::bench::reads::reads(args)).await
        }
        Command::Bench(BenchCommand::Plans(args)) => {
            with_telemetry("warn", format, crate::bench::plans::plans(args)).await
        }
        Command::Bench(BenchCommand::Replicas(args)) => {
            with_telemetry("warn", format, crate::bench::replicas::replicas(args)).await
        }
        Command::Bench(BenchCommand::Unary(args)) => {
            with_telemetry("warn", format, crate::bench::unary::unary(args)).await
        }
        Command::Bench(BenchCommand::UnaryFloor(args)) => {
            with_telemetry("warn", format, crate::bench::unary::unary_floor(args)).await
        }
        Command::Bench(BenchCommand::Soak(args)) => {
            with_telemetry("warn", format, crate::bench::soak::soak(args)).await
        }
        Command::Bench(BenchCommand::FloodAttack(args)) => {
            with_telemetry("error", format, crate::bench::flood::flood_attack(args)).await
        }
        Command::Bench(BenchCommand::Trace(args)) => crate::bench::trace::trace(args, format).await,
        Command::Bench(BenchCommand::WatchClients(args)) => {
            with_telemetry("warn", format, crate::bench::watch::watch_clients(args)).await
        }
    };
    done.map(|()| ExitCode::SUCCESS)
}

/// Runs a client command: its own output is the report, so only warnings are logged.
async fn client(
    format: LogFormat,
    command: impl Future<Output = anyhow::Result<ExitCode>>,
) -> anyhow::Result<ExitCode> {
    let _telemetry: TelemetryGuard = telemetry::init("warn", format).map_err(anyhow::Error::msg)?;
    command.await
}

/// Runs `command` with logs (and traces, when the `OTEL_*` variables ask for them); traces
/// still queued are flushed when it ends.
async fn with_telemetry(
    default_filter: &str,
    format: LogFormat,
    command: impl Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let _telemetry: TelemetryGuard = telemetry::init(default_filter, format).map_err(anyhow::Error::msg)?;
    command.await
}

async fn run_serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut settings = Settings::load(args.config.as_deref())?;
    if let Some(listen) = args.listen {
        settings.listen = listen;
    }
    if let Some(listen) = args.http_listen {
        settings.http.listen = Some(listen);
    }
    let sdk = load_sdk_config(&settings.aws).await;
    let app = Application::build(settings, sdk).await?;
    tracing::info!(addr = %app.local_addr(), http = ?app.http_addr(), admin = ?app.admin_addr(), "snapgate listening");
    app.run_until_stopped(shutdown_signal()).await
}

/// The access key `dev` signs with; the emulator maps it to its default account.
const DEV_ACCESS_KEY: &str = "AKIASNAPGATEDEV00001";
/// Its secret, which the emulator knows so that it can verify presigned URLs.
const DEV_SECRET_KEY: &str = "dev-secret-key";
/// The bearer token of `dev`'s one caller, "dev": a static token, so calls take the same
/// authentication and authorization path as in production.
pub(crate) const DEV_TOKEN: &str = "snapgate-dev-token";
/// The policy `dev` runs with unless given another.
const DEV_POLICY: &str = include_str!("../deploy/policies/dev.cedar");

async fn run_dev(args: DevArgs) -> anyhow::Result<()> {
    let emulator_config = EmulatorConfig {
        seed: true,
        copy_gib_per_sec: args.copy_gib_per_sec,
        // So that the emulator can verify the URLs the gateway presigns (DocumentDB across regions).
        secret_keys: [(DEV_ACCESS_KEY.to_owned(), DEV_SECRET_KEY.to_owned())].into_iter().collect(),
        ..EmulatorConfig::default()
    };
    let emulator = emulator::spawn(emulator_config, SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    // The emulator's world lives in memory, so do dev's jobs: a scratch store, removed at exit.
    let scratch = ScratchDir::new("dev")?;
    let settings = Settings {
        listen: args.listen,
        store: StoreSettings { data_dir: scratch.path().to_owned(), ..StoreSettings::default() },
        aws: AwsSettings {
            region: Some("us-east-1".into()),
            account_id: Some(emulator::DEFAULT_ACCOUNT.into()),
            ..AwsSettings::default()
        },
        admin: AdminSettings { listen: Some(args.admin_listen) },
        http: HttpSettings { listen: Some(args.http_listen) },
        auth: AuthSettings {
            static_tokens: vec![StaticToken {
                token: Secret::new(DEV_TOKEN),
                principal: "dev".into(),
                groups: vec!["dev".into()],
                team: Some("dev".into()),
            }],
            ..AuthSettings::default()
        },
        authz: AuthzSettings {
            policies: args.policy_file.is_none().then(|| DEV_POLICY.to_owned()),
            policy_file: args.policy_file,
            ..AuthzSettings::default()
        },
        ..Settings::default()
    };
    let sdk = fixed_sdk_config(&settings.aws, &emulator.endpoint_url(), DEV_ACCESS_KEY, DEV_SECRET_KEY).await;
    let app = Application::build(settings, sdk).await?;
    let addr = app.local_addr();
    println!(
        "snapgate dev: gateway on {addr}, RDS emulator on {} (seed data, region us-east-1)",
        emulator.endpoint_url()
    );
    println!("calls authenticate as \"dev\" with: -H 'authorization: Bearer {DEV_TOKEN}'");
    println!("try:");
    println!("  grpcurl -plaintext {addr} list snapgate.v1.SnapshotCopyService");
    println!(
        "  grpcurl -plaintext -H 'authorization: Bearer {DEV_TOKEN}' -d '{{\"source_snapshot\": \"billing-pg-daily\", \"target_snapshot_id\": \"billing-pg-copy\"}}' {addr} snapgate.v1.SnapshotCopyService/CopyClusterSnapshot"
    );
    println!(
        "  grpcurl -plaintext -H 'authorization: Bearer {DEV_TOKEN}' -d '{{\"name\": \"billing-pg-copy\"}}' {addr} snapgate.v1.SnapshotCopyService/WatchCopy"
    );
    if let Some(http) = app.http_addr() {
        println!("HTTP/JSON on http://{http}:");
        println!(
            "  curl -H 'authorization: Bearer {DEV_TOKEN}' -d '{{\"sourceSnapshot\": \"billing-pg-daily\", \"targetSnapshotId\": \"billing-pg-copy\"}}' http://{http}/v1/copies"
        );
        println!("  curl -N -H 'authorization: Bearer {DEV_TOKEN}' http://{http}/v1/copies/billing-pg-copy:watch");
    }
    app.run_until_stopped(shutdown_signal()).await?;
    emulator.stop().await;
    Ok(())
}

async fn run_emulator(args: EmulatorArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            toml::from_str::<EmulatorConfig>(&text).with_context(|| format!("parsing {}", path.display()))?
        }
        None => EmulatorConfig { seed: true, ..EmulatorConfig::default() },
    };
    if args.no_seed {
        config.seed = false;
    }
    if let Some(rate) = args.copy_gib_per_sec {
        config.copy_gib_per_sec = rate;
    }
    let handle = emulator::spawn(config, args.listen).await?;
    println!("RDS emulator listening on {}", handle.endpoint_url());
    println!("admin: {}/_emulator/calls, {}/_emulator/faults", handle.endpoint_url(), handle.endpoint_url());
    shutdown_signal().await;
    handle.stop().await;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// A directory for a run's scratch files (dev's and the benchmarks' job stores), removed when
/// dropped.
pub(crate) struct ScratchDir(PathBuf);

impl ScratchDir {
    pub(crate) fn new(what: &str) -> anyhow::Result<ScratchDir> {
        let dir = std::env::temp_dir().join(format!("snapgate-{what}-{}-{}", std::process::id(), uuid_like()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(ScratchDir(dir))
    }

    pub(crate) fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A name part no other run uses at the same time.
fn uuid_like() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}
