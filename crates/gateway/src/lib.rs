#![forbid(unsafe_code)]
#![warn(unreachable_pub)]
//! The snapgate gateway: a gRPC service through which internal services copy AWS DB cluster
//! snapshots and watch the copies finish. [`Application`] builds it from [`config::Settings`]
//! and serves it; the `snapgate` binary wires it to its command line.
//!
//! The path of a request, one module a stage: `observe` (metrics and the server span) →
//! `auth` (authentication layer) → `api::deadline` → `api` (decode, authorize, encode) →
//! `copy` / `watch` (the core) → `aws` (the only module that knows aws-sdk-rds). Errors are
//! typed once in `error` and become statuses there. `http` serves the same RPCs as HTTP/JSON
//! by sending each request through that same path, in process.

mod admin;
mod api;
mod audit;
mod auth;
mod aws;
pub mod config;
mod copy;
mod edge;
mod error;
mod http;
mod metrics;
mod observe;
mod reload;
mod startup;
mod store;
mod tasks;
pub mod telemetry;
mod watch;

pub use auth::policy;
pub use auth::{AuthMethod, Authenticator, Caller};
pub use aws::presign::presign_copy;
pub use aws::{fixed_sdk_config, load_sdk_config};
pub use metrics::Metrics;
pub use startup::Application;
pub use tasks::Tasks;
pub use watch::WatchHub;
