#![forbid(unsafe_code)]
//! The `snapgate` binary: parse the command line and run it.

use clap::Parser;
use snapgate::cli::{BenchCommand, Command};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = snapgate::cli::Cli::parse();
    // Benchmarks print a report; their calls' log lines (audit events among them) would bury it.
    let default_filter = if matches!(cli.command, Command::Bench(_)) { "warn" } else { "info" };
    // `bench trace` installs its own telemetry, exporting to its sink.
    let own_telemetry = matches!(cli.command, Command::Bench(BenchCommand::Trace(_)));
    let init =
        if own_telemetry { Ok(None) } else { snapgate::telemetry::init(default_filter, cli.log_format).map(Some) };
    let _telemetry = match init {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("snapgate: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match snapgate::cli::run(cli).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("snapgate: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
