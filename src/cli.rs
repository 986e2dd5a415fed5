//! The `snapgate` command line: its subcommands and flags are the product's interface, so
//! their names stay stable once released.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::emulator::{self, EmulatorConfig};

#[derive(Debug, Parser)]
#[command(
    name = "snapgate",
    version,
    about = "gRPC gateway for copying AWS DB cluster snapshots and watching the copies finish"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the local RDS query-API emulator on its own.
    Emulator(EmulatorArgs),
}

#[derive(Debug, Args)]
pub struct EmulatorArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(
        long,
        default_value = "127.0.0.1:4566",
        env = "SNAPGATE_EMULATOR_LISTEN"
    )]
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

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Emulator(args) => run_emulator(args).await,
    }
}

async fn run_emulator(args: EmulatorArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            toml::from_str::<EmulatorConfig>(&text)
                .with_context(|| format!("parsing {}", path.display()))?
        }
        None => EmulatorConfig {
            seed: true,
            ..EmulatorConfig::default()
        },
    };
    if args.no_seed {
        config.seed = false;
    }
    if let Some(rate) = args.copy_gib_per_sec {
        config.copy_gib_per_sec = rate;
    }
    let handle = emulator::spawn(config, args.listen).await?;
    println!("RDS emulator listening on {}", handle.endpoint_url());
    println!(
        "admin: {}/_emulator/calls, {}/_emulator/faults",
        handle.endpoint_url(),
        handle.endpoint_url()
    );
    shutdown_signal().await;
    handle.stop().await;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
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
