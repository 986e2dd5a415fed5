#![forbid(unsafe_code)]
//! snapgate: a gRPC gateway for copying AWS DB cluster snapshots and watching the copies finish.

pub mod cli;
pub mod emulator;
pub mod rds;
pub mod telemetry;
