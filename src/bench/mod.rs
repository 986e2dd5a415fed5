//! `snapgate bench`: benchmarks that print a report. Each starts what it measures (the
//! emulator, the gateway in process or as a child) on loopback.

pub(crate) mod auth;
mod child;
pub(crate) mod flood;
pub(crate) mod plans;
pub(crate) mod queue;
pub(crate) mod reads;
pub(crate) mod replicas;
pub(crate) mod soak;
pub(crate) mod trace;
pub(crate) mod unary;
pub(crate) mod watch;

use std::net::SocketAddr;
use std::time::Instant;

use tonic::transport::Channel;

use crate::cli::ScratchDir;
use snapgate_emulator::{self as emulator, EmulatorConfig, Faults};
use snapgate_gateway::Application;
use snapgate_gateway::config::{AwsSettings, Settings};
use snapgate_proto::CopyClusterSnapshotRequest;
use snapgate_proto::snapshot_copy_service_client::SnapshotCopyServiceClient;

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
    let aws = bench_aws(defaults.rate_limit_per_sec, defaults.rate_limit_burst);
    let (rate, burst) = (aws.rate_limit_per_sec, aws.rate_limit_burst);
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
            in_flight: u32::MAX,
            overrides: Vec::new(),
        },
        ..Settings::default()
    }
}

pub(crate) fn bearer(mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
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
        rate_limit_per_sec: per_second,
        rate_limit_burst: burst,
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

/// Asks for `count` copies of `source` named `{prefix}-{i}`, one after another; their names.
pub(crate) async fn make_copies(
    client: &BenchClient,
    source: &str,
    prefix: &str,
    count: usize,
) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::with_capacity(count);
    for i in 0..count {
        let request = CopyClusterSnapshotRequest {
            source_snapshot: source.into(),
            target_snapshot_id: format!("{prefix}-{i}"),
            ..Default::default()
        };
        names.push(client.clone().copy_cluster_snapshot(request).await?.into_inner().name);
    }
    Ok(names)
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
