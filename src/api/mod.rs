//! The gRPC transport: thin handlers that convert requests into domain
//! values, call one [`SegmentManager`](crate::segment::SegmentManager)
//! method, and convert back. No libvirt, nix or filesystem calls here.

pub mod codes;
pub mod convert;
pub mod events;
pub mod segments;
pub mod server;
pub mod status;

pub use segments::SegmentAgentService;
pub use server::{Listeners, serve};
