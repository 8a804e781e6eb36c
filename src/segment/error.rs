//! The segment lifecycle's errors. Each variant says what the scheduler or
//! operator can do about it; `api::status` maps them to gRPC codes.

use crate::model::{InvalidArgument, SegmentId};
use crate::{hypervisor::HvError, images::ImageError, storage::StorageError};

/// A failed segment operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed.
    #[error(transparent)]
    InvalidArgument(#[from] InvalidArgument),
    /// No such segment on this host.
    #[error("segment {0} does not exist on this host")]
    NotFound(SegmentId),
    /// The id is taken by a segment with another spec.
    #[error(
        "segment {id} already exists with a different spec ({difference}); delete it first or use another segment_id"
    )]
    AlreadyExists {
        /// The id.
        id: SegmentId,
        /// Which field differs.
        difference: String,
    },
    /// The host has no room (addresses, memory or slots).
    #[error("{0}")]
    ResourceExhausted(String),
    /// The operation does not apply to the segment's current state, or the
    /// host lacks something the request needs.
    #[error("{0}")]
    FailedPrecondition(String),
    /// libvirtd cannot be reached.
    #[error("{0}; the request can be retried once libvirtd is back")]
    Unavailable(String),
    /// The hypervisor failed.
    #[error("hypervisor: {0}")]
    Hypervisor(#[source] HvError),
    /// The host filesystem failed.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// A certificate could not be issued from a validated CA.
    #[error("issuing {0}: {1}")]
    Certificate(&'static str, #[source] crate::certs::CertError),
    /// An internal task failed.
    #[error("internal: {0}")]
    Internal(String),
}

impl From<HvError> for Error {
    fn from(e: HvError) -> Self {
        match e {
            HvError::Unavailable(m) => Error::Unavailable(format!("libvirtd is unavailable: {m}")),
            other => Error::Hypervisor(other),
        }
    }
}

impl From<ImageError> for Error {
    fn from(e: ImageError) -> Self {
        Error::FailedPrecondition(e.to_string())
    }
}
