//! segment-agent: the host agent that runs LXC segments through libvirt for
//! a container service. See the README for the operator's view.
//!
//! Layout: [`api`] is the gRPC transport; [`segment`] is the lifecycle; the
//! external systems sit behind traits in [`hypervisor`] (libvirt) and
//! [`storage`] (segment filesystems); [`xml`] writes and reads libvirt XML;
//! [`config`], [`pool`], [`images`], [`network`] and [`host`] hold the rest.

pub mod agent;
pub mod api;
pub mod apparmor;
pub mod atomic;
pub mod certs;
pub mod cgroups;
pub mod config;
pub mod docker;
pub mod errors;
pub mod host;
pub mod hypervisor;
pub mod idmap;
pub mod images;
pub mod metrics;
pub mod model;
pub mod network;
pub mod pool;
pub mod preflight;
pub mod quota;
pub mod report;
pub mod segment;
pub mod state_lock;
pub mod storage;
pub mod xml;

/// This build: the package version plus `+g<commit>` when built from a git
/// checkout (build.rs). GetHost, the health reports, the metrics and
/// `--version` show it.
pub const VERSION: &str = env!("SEGMENT_AGENT_VERSION");

/// The generated gRPC API (the `segment-proto` crate), at the path the
/// agent's modules and clients name it by.
pub use segment_proto as proto;
