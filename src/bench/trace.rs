//! `snapgate bench trace`: GetCopy throughput through the gateway with trace export on and
//! off, in one process and one run (phases alternate off, on, off, on), exporting over
//! http/protobuf to a sink on loopback that accepts and counts what it gets.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use opentelemetry_otlp::Protocol;

use snapgate_gateway::telemetry::{self, LogFormat, TelemetryGuard, TraceExport};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{FilterExt, dynamic_filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Whether spans go to the exporter now: the phases turn it on and off. The benchmark's own
/// filter on the gateway's trace layer, so the gateway carries no switch for it.
static EXPORTING: AtomicBool = AtomicBool::new(true);

#[derive(Debug, clap::Args)]
pub(crate) struct TraceBenchArgs {
    /// Seconds per phase (four phases).
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Concurrent callers.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
}

/// Runs the benchmark; installs its own telemetry: the gateway's log and trace layers, the
/// latter exporting to the sink while a phase has export on.
pub(crate) async fn trace(args: TraceBenchArgs, format: LogFormat) -> anyhow::Result<()> {
    let received = Arc::new(AtomicU64::new(0));
    let sink = {
        let received = received.clone();
        axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| {
                received.fetch_add(body.len() as u64, Ordering::Relaxed);
                async { ([("content-type", "application/x-protobuf")], Vec::<u8>::new()) }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let sink_addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, sink).await });
    let export =
        TraceExport { protocol: Protocol::HttpBinary, endpoint: Some(format!("http://{sink_addr}/v1/traces")) };
    let provider = telemetry::tracer_provider(&export).map_err(anyhow::Error::msg)?;
    let gate = dynamic_filter_fn(|_, _| EXPORTING.load(Ordering::Relaxed));
    let traces = telemetry::trace_layer(&provider).with_filter(telemetry::trace_targets().and(gate));
    tracing_subscriber::registry()
        .with(telemetry::log_layer("warn", format, std::io::stderr, telemetry::CallSpans::Logged))
        .with(traces)
        .try_init()?;
    let _guard = TelemetryGuard::new(Some(provider));

    let (emu, client, _scratch) = crate::bench::unthrottled_gateway().await?;

    println!(
        "snapgate bench trace: GetCopy through the gateway and the emulator, {} callers, 4 phases of {} s",
        args.concurrency, args.seconds
    );
    let mut rates = [Vec::new(), Vec::new()];
    for (phase, on) in [false, true, false, true].into_iter().enumerate() {
        EXPORTING.store(on, Ordering::Relaxed);
        let before = received.load(Ordering::Relaxed);
        let rate = phase_rate(&client, args.concurrency, Duration::from_secs(args.seconds)).await?;
        // Let the batch processor send what the phase made before the next one starts.
        tokio::time::sleep(Duration::from_secs(6)).await;
        let exported = received.load(Ordering::Relaxed) - before;
        println!(
            "  phase {}: export {:<3} {:>8.0} calls/s, {} KiB of spans received",
            phase + 1,
            if on { "on" } else { "off" },
            rate,
            exported / 1024
        );
        rates[usize::from(on)].push(rate);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (off, on) = (mean(&rates[0]), mean(&rates[1]));
    println!("  throughput with export on / off: {:.3} (target >= 0.9)", on / off);
    emu.stop().await;
    Ok(())
}

async fn phase_rate(client: &crate::bench::BenchClient, callers: usize, length: Duration) -> anyhow::Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + length;
    let mut tasks = Vec::new();
    for _ in 0..callers.max(1) {
        let (mut client, done) = (client.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until {
                if client
                    .get_copy(snapgate_proto::GetCopyRequest { name: "billing-pg-daily".into(), fresh: false })
                    .await
                    .is_ok()
                {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / length.as_secs_f64())
}
