//! Generated protobuf and gRPC code.

#![allow(missing_docs, clippy::all)]

/// The agent's API, `segment.agent.v1`.
pub mod agent {
    tonic::include_proto!("segment.agent.v1");
}

/// The encoded descriptors of every proto file, served by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("segment_descriptor");
