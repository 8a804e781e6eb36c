//! segment-policy: the code of the agent that runs inside every customer
//! segment, next to the tenant, as the `segment-authz` binary (bound
//! read-only into the segment at `/opt/segment-agent/bin/segment-authz`).
//!
//! It is kept small and apart from the host agent on purpose, as
//! Firecracker keeps its jailer: it links nothing of libvirt, gRPC or the
//! agent's certificate authority (`cargo tree -p segment-policy`).
//!
//! - [`policy`]: the Docker usage policy, a pure function of one API request;
//! - [`authz`]: Docker's authorization-plugin protocol that serves it, with
//!   [`resolver`] (bind sources as the kernel finds them) and [`inspect`]
//!   (what dockerd stored for an existing container);
//! - [`agent_token`]: the secret that marks the host agent's own requests;
//! - [`front`]: the mutual-TLS front on 2376 forwarding to dockerd's socket.

pub mod agent_token;
pub mod authz;
pub mod front;
pub mod inspect;
pub mod policy;
pub mod resolver;
