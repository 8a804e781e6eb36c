//! The one place where domain errors become gRPC status codes.

use crate::model::InvalidArgument;
use crate::{certs::CertError, hypervisor::HvError, segment::Error};
use tonic::{Code, Status};

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let code = match &e {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists { .. } => Code::AlreadyExists,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::Unavailable(_) => Code::Unavailable,
            // The domain went away behind the agent's back (virsh undefine):
            // the segment exists for the agent, not in a state to act on.
            Error::Hypervisor(HvError::NoDomain(_)) => Code::FailedPrecondition,
            // The CA expired since it was validated: the scheduler sends a new one.
            Error::Certificate(_, CertError::CaExpired { .. }) => Code::FailedPrecondition,
            Error::Certificate(..) => Code::Internal,
            Error::Hypervisor(_) | Error::Storage(_) | Error::Internal(_) => Code::Internal,
        };
        Status::new(code, e.to_string())
    }
}

impl From<InvalidArgument> for Status {
    fn from(e: InvalidArgument) -> Self {
        Status::invalid_argument(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SegmentId;
    use std::time::SystemTime;

    #[test]
    fn codes_per_variant() {
        let id = SegmentId::parse("a").unwrap();
        let cases: Vec<(Error, Code)> = vec![
            (
                InvalidArgument::new("segment_id", "x").into(),
                Code::InvalidArgument,
            ),
            (Error::NotFound(id.clone()), Code::NotFound),
            (
                Error::AlreadyExists {
                    id,
                    difference: "flavor".into(),
                },
                Code::AlreadyExists,
            ),
            (
                Error::ResourceExhausted("full".into()),
                Code::ResourceExhausted,
            ),
            (
                Error::FailedPrecondition("no image".into()),
                Code::FailedPrecondition,
            ),
            (
                HvError::Unavailable("down".into()).into(),
                Code::Unavailable,
            ),
            (
                HvError::Failed {
                    op: "start",
                    name: "seg-a".into(),
                    message: "x".into(),
                }
                .into(),
                Code::Internal,
            ),
            (
                HvError::NoDomain("seg-a".into()).into(),
                Code::FailedPrecondition,
            ),
            (
                Error::Certificate(
                    "x",
                    CertError::CaExpired {
                        not_after: SystemTime::UNIX_EPOCH,
                    },
                ),
                Code::FailedPrecondition,
            ),
            (
                Error::Certificate("x", CertError::ZeroValidity),
                Code::Internal,
            ),
        ];
        for (err, code) in cases {
            assert_eq!(Status::from(err).code(), code);
        }
    }
}
