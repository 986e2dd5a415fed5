//! Copy a snapshot through snapgate and wait for it, from a Rust service:
//!
//! ```sh
//! cargo run --release -- dev &      # a gateway on 127.0.0.1:50051
//! cargo run --example copy_and_wait -- billing-pg-daily billing-pg-example
//! ```
//!
//! The wait rides out gateway restarts and deploys; it ends when the copy does.

use std::time::Duration;

use snapgate_client::{Client, ClientConfig, pb};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(source), Some(target)) = (args.next(), args.next()) else {
        eprintln!("usage: copy_and_wait SOURCE TARGET");
        std::process::exit(2);
    };
    let addr = std::env::var("SNAPGATE_ADDR").unwrap_or_else(|_| "http://127.0.0.1:50051".into());
    let token = std::env::var("SNAPGATE_TOKEN").unwrap_or_else(|_| "snapgate-dev-token".into());
    let client = Client::connect(&ClientConfig::new(addr).token(token)).await?;
    let copy = client
        .copy(pb::CopyClusterSnapshotRequest {
            source_snapshot: source,
            target_snapshot_id: target,
            ..Default::default()
        })
        .await?;
    println!("{} is {:?}", copy.name, copy.state());
    let done = client
        .wait(&copy.name, Duration::from_secs(6 * 3600), |event| {
            if let Some(copy) = &event.copy {
                println!("  {:?} {}%", copy.state(), copy.percent_progress);
            }
        })
        .await?;
    println!("{} ended {:?}", done.name, done.state());
    Ok(())
}
