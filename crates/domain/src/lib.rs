#![forbid(unsafe_code)]
#![warn(unreachable_pub)]
//! What snapgate knows about RDS itself, independent of any transport: ARNs, account ids,
//! engines, the documented parameter rules of `CopyDBClusterSnapshot`, the rules that depend on
//! the source snapshot, and RDS's request throttling. The gateway (to refuse bad input before
//! any AWS call) and the emulator (to refuse it as AWS would) both use these rules; moto's
//! server is the independent check in the differential tests.

mod account;
mod arn;
mod engine;
pub mod region;
pub mod rules;
mod snapshot;
pub mod source;
mod throttle;

pub use account::AccountId;
pub use arn::{Arn, is_region_name, partition_for_region};
pub use engine::{Engine, EngineFamily};
pub use snapshot::{ClusterSnapshot, CopyState};
pub use throttle::TokenBucket;
