//! Generated protobuf and gRPC code, one module per proto package: the
//! agent's API (`proto/segment/agent/v1`) and the control plane's contract
//! (`proto/segment/controlplane/v1`). Used by the agent and by its clients
//! (the tests, the benchmark); it runs wherever they do.

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

/// A protobuf timestamp of `t` (the epoch for a time before it).
pub fn timestamp(t: std::time::SystemTime) -> prost_types::Timestamp {
    let since = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: since.as_secs() as i64,
        nanos: since.subsec_nanos() as i32,
    }
}
