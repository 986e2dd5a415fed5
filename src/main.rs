#![forbid(unsafe_code)]
//! The `snapgate` binary: parse the command line and run it.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = snapgate::cli::Cli::parse();
    snapgate::telemetry::init_logging("info", cli.log_format);
    match snapgate::cli::run(cli).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("snapgate: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
