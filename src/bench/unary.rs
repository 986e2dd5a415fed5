//! `snapgate bench unary`: what a call costs the gateway's own process, against the floor of a
//! bare tonic server.
//!
//! Three processes: the gateway (`snapgate serve`, a child, with `serve`'s default logging and
//! the audit trail on), the floor (`bench unary-floor`, another child: tonic answering GetCopy
//! with a stored copy of the gateway's own answer, no authentication, no layers) and this one,
//! the load generator (many concurrent calls over a few HTTP/2 connections, as a service mesh
//! sends them) with the emulator, which is idle while the calls are measured: the copy read is
//! in progress and watched, so GetCopy is answered from the poll's observation. Each server's
//! CPU per call is its own process's CPU time (`/proc/PID/stat`) over the calls it answered in
//! the window; the load generator's is in neither.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use anyhow::Context;
use prost::Message;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

use super::child::{ChildGateway, common_config, cpu_us, free_port};
use super::{BENCH_TOKEN, bench_client, loopback_emulator, make_copies};
use crate::cli::ScratchDir;
use snapgate_emulator::{EmulatorConfig, Faults};
use snapgate_proto::snapshot_copy_service_client::SnapshotCopyServiceClient;
use snapgate_proto::{self as pb, GetCopyRequest};

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct UnaryBenchArgs {
    /// Calls in flight at once, spread over the connections.
    #[arg(long, default_value_t = 128)]
    pub concurrency: usize,
    /// HTTP/2 connections the calls share.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// How long each server is measured (after a second of warm-up).
    #[arg(long, default_value_t = 8)]
    pub seconds: u64,
    /// Runs of the three measurements (floor, static token, JWT); each run's ratios are its own.
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// The gateway's log filter (`RUST_LOG`), to see what logging costs [default: `serve`'s].
    #[arg(long)]
    pub gateway_log: Option<String>,
}

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct UnaryFloorArgs {
    /// Loopback port to serve on.
    #[arg(long)]
    pub port: u16,
    /// The encoded `Copy` message to answer every GetCopy with.
    #[arg(long)]
    pub response: PathBuf,
}

/// The floor: GetCopy answered with a stored message through tonic's own server and the
/// gateway's codec, nothing else; any other method is UNIMPLEMENTED.
#[derive(Clone)]
struct Floor {
    answer: Arc<pb::Copy>,
}

impl tonic::server::NamedService for Floor {
    const NAME: &'static str = "snapgate.v1.SnapshotCopyService";
}

struct Echo(Arc<pb::Copy>);

impl tonic::server::UnaryService<GetCopyRequest> for Echo {
    type Response = pb::Copy;
    type Future = std::future::Ready<Result<tonic::Response<pb::Copy>, tonic::Status>>;

    fn call(&mut self, _request: tonic::Request<GetCopyRequest>) -> Self::Future {
        std::future::ready(Ok(tonic::Response::new((*self.0).clone())))
    }
}

impl tower::Service<http::Request<tonic::body::Body>> for Floor {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let answer = self.answer.clone();
        Box::pin(async move {
            if request.uri().path() != "/snapgate.v1.SnapshotCopyService/GetCopy" {
                return Ok(tonic::Status::unimplemented("the floor answers GetCopy only").into_http());
            }
            let mut grpc =
                tonic::server::Grpc::new(snapgate_proto::SnapgateCodec::<pb::Copy, GetCopyRequest>::default());
            Ok(grpc.unary(Echo(answer), request).await)
        })
    }
}

/// `bench unary-floor`: serves the floor until killed.
pub(crate) async fn unary_floor(args: UnaryFloorArgs) -> anyhow::Result<()> {
    let bytes = std::fs::read(&args.response).with_context(|| format!("reading {}", args.response.display()))?;
    let answer = Arc::new(pb::Copy::decode(bytes.as_slice())?);
    let addr = SocketAddr::from(([127, 0, 0, 1], args.port));
    tonic::transport::Server::builder().add_service(Floor { answer }).serve(addr).await?;
    Ok(())
}

/// Adds `authorization` to every call.
#[derive(Clone)]
struct Authorization(MetadataValue<Ascii>);

impl tonic::service::Interceptor for Authorization {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// One server's measurement: calls per second and its process's CPU per call in the window.
#[derive(Debug, Clone, Copy)]
struct Measured {
    rate: f64,
    cpu_us: f64,
    errors: u64,
}

/// Drives GetCopy of `name` at `addr` from `args.concurrency` tasks over `args.connections`
/// connections: a second of warm-up, then `args.seconds` measured against `pid`'s CPU time.
async fn drive(
    args: &UnaryBenchArgs,
    addr: SocketAddr,
    pid: u32,
    name: &str,
    authorization: &str,
) -> anyhow::Result<Measured> {
    let header: MetadataValue<Ascii> = authorization.parse()?;
    let mut clients = Vec::with_capacity(args.connections);
    for _ in 0..args.connections.max(1) {
        let channel = Channel::from_shared(format!("http://{addr}"))?.connect().await?;
        clients.push(SnapshotCopyServiceClient::with_interceptor(channel, Authorization(header.clone())));
    }
    let (calls, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::with_capacity(args.concurrency);
    for i in 0..args.concurrency.max(1) {
        let mut client = clients[i % clients.len()].clone();
        let (calls, errors, stop, name) = (calls.clone(), errors.clone(), stop.clone(), name.to_owned());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let request = GetCopyRequest { name: name.clone(), fresh: false };
                match client.get_copy(request).await {
                    Ok(_) => calls.fetch_add(1, Ordering::Relaxed),
                    Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pid = pid.to_string();
    let (cpu_before, calls_before, errors_before) =
        (cpu_us(&pid), calls.load(Ordering::Relaxed), errors.load(Ordering::Relaxed));
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let (cpu, n, failed) = (
        cpu_us(&pid) - cpu_before,
        calls.load(Ordering::Relaxed) - calls_before,
        errors.load(Ordering::Relaxed) - errors_before,
    );
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    Ok(Measured { rate: n as f64 / elapsed, cpu_us: cpu as f64 / n.max(1) as f64, errors: failed })
}

/// The gateway's configuration: the bench caller and the JWT subject with fair shares far above
/// the load, the emulator as AWS, and the issuer's keys.
fn gateway_config(port: u16, admin_port: u16, endpoint: &str, scratch: &ScratchDir, jwks: &std::path::Path) -> String {
    let mut shares = String::new();
    for principal in ["bench", "svc-payments"] {
        shares.push_str(&format!(
            "[[fair_share.overrides]]\nprincipal = \"{principal}\"\ncalls_per_sec = 1000000000.0\nburst = 4000000000\nin_flight = 4000000000\n"
        ));
    }
    format!(
        r#"listen = "127.0.0.1:{port}"
[fair_share]
{shares}[aws]
region = "us-east-1"
endpoint_url = "{endpoint}"
account_id = "{account}"
rate_limit_per_sec = 10000.0
rate_limit_burst = 10000
{common}[auth.jwt]
issuer = "https://idp.bench"
audiences = ["snapgate"]
jwks_file = "{jwks}"
algorithms = ["ES256"]
"#,
        account = snapgate_emulator::DEFAULT_ACCOUNT,
        common = common_config(admin_port, "", &scratch.path().join("data")),
        jwks = jwks.display(),
    )
}

pub(crate) async fn unary(args: UnaryBenchArgs) -> anyhow::Result<()> {
    let scratch = ScratchDir::new("bench-unary")?;
    // Copies that take a million seconds: the one read stays in progress through every run.
    let emu = loopback_emulator(EmulatorConfig {
        seed: true,
        copy_gib_per_sec: 1e-6,
        faults: Faults { throttle: None, ..Faults::default() },
        ..EmulatorConfig::default()
    })
    .await?;
    let issuer = super::auth::BenchIssuer::new(scratch.path())?;
    let jwks = issuer.settings.jwks_file.clone().context("the issuer keeps its keys in a file")?;
    let (port, admin_port) = (free_port()?, free_port()?);
    let config = gateway_config(port, admin_port, &emu.endpoint_url(), &scratch, &jwks);
    let mut gateway =
        ChildGateway::spawn_logging(&config, port, admin_port, &scratch, None, args.gateway_log.as_deref()).await?;

    // The copy read: made, watched (so the poller keeps its observation fresh), in progress.
    let client = bench_client(&gateway.addr.to_string()).await?;
    let name = make_copies(&client, "billing-pg-daily", "unary", 1).await?.remove(0);
    let mut watch = client.clone().watch_copy(pb::WatchCopyRequest { name: name.clone() }).await?.into_inner();
    let watching = tokio::spawn(async move { while let Ok(Some(_)) = watch.message().await {} });
    let answer = client.clone().get_copy(GetCopyRequest { name: name.clone(), fresh: false }).await?.into_inner();
    let response = scratch.path().join("floor-answer.pb");
    std::fs::write(&response, answer.encode_to_vec())?;

    let floor_port = free_port()?;
    let mut floor = tokio::process::Command::new(std::env::current_exe()?)
        .args(["bench", "unary-floor", "--port", &floor_port.to_string(), "--response"])
        .arg(&response)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(scratch.path().join("floor.log"))?)
        .kill_on_drop(true)
        .spawn()
        .context("starting the floor")?;
    let floor_pid = floor.id().context("the floor exited at once")?;
    let floor_addr = SocketAddr::from(([127, 0, 0, 1], floor_port));
    tokio::time::timeout(Duration::from_secs(10), async {
        while tokio::net::TcpStream::connect(floor_addr).await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .context("the floor did not listen within 10 s")?;

    let token = format!("Bearer {BENCH_TOKEN}");
    let jwt = format!("Bearer {}", issuer.token("svc-payments", None)?);
    let mut out = String::new();
    let mut held = Vec::new();
    let describes_before = emu.emulator.calls().get("DescribeDBClusterSnapshots");
    let started = Instant::now();
    for run in 1..=args.runs.max(1) {
        let floor_run = drive(&args, floor_addr, floor_pid, &name, &token).await?;
        let static_run = drive(&args, gateway.addr, gateway.pid, &name, &token).await?;
        let jwt_run = drive(&args, gateway.addr, gateway.pid, &name, &jwt).await?;
        let line = |what: &str, m: Measured| {
            format!("    {what:<26} {:>9.0} calls/s, {:>6.1} us CPU per call, {} errors\n", m.rate, m.cpu_us, m.errors)
        };
        out.push_str(&format!("  run {run}:\n"));
        out.push_str(&line("floor (bare tonic)", floor_run));
        out.push_str(&line("GetCopy, static token", static_run));
        out.push_str(&line("GetCopy, JWT ES256", jwt_run));
        let floor_cpu = floor_run.cpu_us.max(0.001);
        out.push_str(&format!(
            "    static token / floor: {:.2}x the CPU per call (target <= 2.0); JWT / floor: {:.2}x (target <= 2.5); throughput {:.2}x and {:.2}x\n",
            static_run.cpu_us / floor_cpu,
            jwt_run.cpu_us / floor_cpu,
            static_run.rate / floor_run.rate.max(0.001),
            jwt_run.rate / floor_run.rate.max(0.001),
        ));
        held.extend([floor_run, static_run, jwt_run]);
    }
    let describes = emu.emulator.calls().get("DescribeDBClusterSnapshots") - describes_before;
    let state =
        client.clone().get_copy(GetCopyRequest { name: name.clone(), fresh: false }).await?.into_inner().state();
    let audit_dropped =
        super::child::metric(&super::child::metrics(gateway.admin).await, "snapgate_audit_records_dropped_total");
    watching.abort();
    let _ = floor.kill().await;
    let _ = gateway.child.kill().await;
    emu.stop().await;

    let errors: u64 = held.iter().map(|m| m.errors).sum();
    if errors > 0 || state != pb::copy::State::Copying {
        println!(
            "PREMISE NOT HELD: {errors} calls failed; the copy read was {} at the end (it must still be copying, answered from the poll)",
            state.as_str_name()
        );
    }
    println!(
        "snapgate bench unary: {} calls in flight over {} connections, {} s per server per run, {} run(s); gateway, floor and load generator in three processes on {} cores; CPU per call is each server's own",
        args.concurrency,
        args.connections,
        args.seconds,
        args.runs.max(1),
        std::thread::available_parallelism().map_or(1, usize::from)
    );
    print!("{out}");
    println!(
        "  AWS describes in {:.0} s of calls: {describes} (the poller's, for the watched copy; no call made one); audit records dropped: {audit_dropped}",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
