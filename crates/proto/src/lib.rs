#![forbid(unsafe_code)]
#![warn(unreachable_pub)]
//! snapgate's public contract, `proto/snapgate/v1/snapgate.proto`: the generated protobuf types,
//! the tonic server and client, and the descriptor set that server reflection serves. The
//! gateway serves it; the CLI and Rust callers use its client.

mod codec;

#[allow(clippy::all, missing_docs, unreachable_pub)]
mod generated {
    tonic::include_proto!("snapgate.v1");
}

pub use codec::SnapgateCodec;
pub use generated::*;

/// The encoded descriptor set of the snapgate protos, served by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/snapgate_descriptor.bin"));
