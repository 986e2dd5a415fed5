#![forbid(unsafe_code)]
#![warn(unreachable_pub)]
//! The snapgate gateway: a gRPC service through which internal services copy AWS DB cluster
//! snapshots and watch the copies finish. [`Application`] builds it from [`config::Settings`]
//! and serves it; the `snapgate` binary wires it to its command line.
//!
//! The path of a request, one room a stage, data flowing one way:
//! `edge` (the connection: caps, handshake and idle deadlines, pacing) → `stack` (the per-call
//! layers, outermost first: `observe` for metrics and the server span, `shed` for load
//! shedding, `authenticate`, `fair_share` for the caller's share of calls, `deadline`) → `api`
//! (decode, authorize with Cedar, encode) → `copy` / `watch` (the core: the copy workflow, and
//! the hub with the follower of queued copies) → `aws` (the only module that knows
//! aws-sdk-rds) and `store`. What a call carries between rooms lives in `call`; each caller's
//! share of calls and of AWS calls in `share`. Errors are typed once in `error` and become
//! statuses there. `http` serves the same RPCs as HTTP/JSON by sending each request through
//! that same stack, in process.

mod admin;
mod api;
mod audit;
mod auth;
mod aws;
mod bell;
mod call;
pub mod config;
mod copy;
mod edge;
mod error;
mod http;
mod metrics;
mod plan;
mod reload;
mod share;
mod stack;
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

/// Reads a DR plan file (TOML, as `snapgate plan apply` takes it) into the API's plans. A
/// violation of the file's shape or of its rules as a whole is `(field, rule)`, the field named
/// by its place (`plan[1].name`); each plan's own rules are checked by the gateway it is sent to.
pub fn read_plan_file(text: &str) -> Result<Vec<snapgate_proto::Plan>, Vec<(String, String)>> {
    plan::spec::read_file(text)
        .map(|plans| plans.iter().map(api::plan_message).collect())
        .map_err(|violations| violations.into_iter().map(|v| (v.field, v.description)).collect())
}
