//! Generated protobuf and gRPC code, one module per proto package.

#![allow(missing_docs, clippy::all)]

/// The `segment.*` packages.
pub mod segment {
    /// `segment.agent.*`.
    pub mod agent {
        /// The agent's API, `segment.agent.v1`.
        pub mod v1 {
            tonic::include_proto!("segment.agent.v1");
        }
    }
    /// `segment.controlplane.*`.
    pub mod controlplane {
        /// The control plane's contract, `segment.controlplane.v1`.
        pub mod v1 {
            tonic::include_proto!("segment.controlplane.v1");
        }
    }
}

pub use segment::agent::v1 as agent;
pub use segment::controlplane::v1 as controlplane;

/// The encoded descriptors of every proto file, served by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("segment_descriptor");
