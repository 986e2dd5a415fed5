//! What snapgate knows about RDS itself, independent of any transport: ARNs, engines and the
//! documented parameter rules of `CopyDBClusterSnapshot`. Both the gateway (to refuse bad input
//! before any AWS call) and the emulator (to refuse it as AWS would) use these rules, so the
//! two cannot drift apart; moto's server is the independent check in the differential tests.

pub mod arn;
pub mod engine;
pub mod rules;
pub mod snapshot;

pub use arn::{Arn, partition_for_region};
pub use engine::{Engine, EngineFamily};
pub use snapshot::{ClusterSnapshot, CopyState};
