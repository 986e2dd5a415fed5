//! The plaintext admin listener: Prometheus metrics for scrapers and HTTP health for probes
//! that speak neither gRPC nor TLS.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;
use crate::watch::WatchHub;

#[derive(Clone)]
struct Admin {
    metrics: Arc<Metrics>,
    hub: Arc<WatchHub>,
    serving: Arc<AtomicBool>,
}

pub(crate) fn router(metrics: Arc<Metrics>, hub: Arc<WatchHub>, serving: Arc<AtomicBool>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(health))
        .route("/readyz", get(health))
        .with_state(Admin { metrics, hub, serving })
}

async fn metrics_text(State(admin): State<Admin>) -> impl IntoResponse {
    let body = admin.metrics.render(admin.hub.open_streams(), admin.hub.watched_snapshots());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body)
}

async fn health(State(admin): State<Admin>) -> impl IntoResponse {
    if admin.serving.load(Ordering::Relaxed) {
        (StatusCode::OK, "SERVING\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "NOT_SERVING\n")
    }
}
