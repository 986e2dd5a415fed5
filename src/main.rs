#![forbid(unsafe_code)]
//! The `snapgate` binary: the command line that wires the gateway, the emulator and the
//! benchmarks. Thin: each subcommand builds what it runs from the workspace's libraries.

mod bench;
mod cli;
mod client_cmd;
mod plan_cmd;
mod policy_cmd;

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    match cli::run(cli).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("snapgate: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
