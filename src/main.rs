#![forbid(unsafe_code)]
//! The `snapgate` binary: parse the command line and run it.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = snapgate::cli::Cli::parse();
    // Benchmarks print a report; their calls' log lines (audit events among them) would bury it.
    let default_filter = if matches!(cli.command, snapgate::cli::Command::Bench(_)) { "warn" } else { "info" };
    snapgate::telemetry::init_logging(default_filter, cli.log_format);
    match snapgate::cli::run(cli).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("snapgate: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
