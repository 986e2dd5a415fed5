#![forbid(unsafe_code)]
//! snapgate: a gRPC gateway for copying AWS DB cluster snapshots and watching the copies finish.

pub mod admin;
pub mod api;
pub mod audit;
pub mod auth;
pub mod aws;
pub mod bench;
pub mod bench_auth;
pub mod bench_trace;
pub mod cli;
pub mod codec;
pub mod config;
pub mod copy;
pub mod emulator;
pub mod error;
pub mod metrics;
pub mod pb;
pub mod policy_cmd;
pub mod rds;
pub mod rpc_trace;
pub mod startup;
pub mod telemetry;
pub mod watch;
