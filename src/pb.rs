//! The generated protobuf types and tonic service of `proto/snapgate/v1/snapgate.proto`.
#![allow(clippy::all, missing_docs)]

tonic::include_proto!("snapgate.v1");

/// The encoded descriptor set of the snapgate protos, served by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/snapgate_descriptor.bin"));
