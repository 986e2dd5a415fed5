//! Logging setup: a `RUST_LOG`-style filter and human-readable lines on stderr.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; later calls (as in tests) are harmless no-ops.
pub fn init_logging(default_filter: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}
