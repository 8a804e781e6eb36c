//! The hypervisor behind a narrow trait: the few libvirt operations the
//! segment lifecycle needs. [`libvirt::Libvirt`] is the real one;
//! [`fake::FakeHypervisor`] keeps domains in memory for fast tests.
//!
//! Every method blocks; async callers go through `spawn_blocking`. What
//! libvirt tells without being asked (a domain started or stopped, the
//! connection lost) comes through [`Hypervisor::watch`].

pub mod fake;
pub mod libvirt;
mod watch;

use crate::{model::SegmentRecord, xml::MetadataError};
use std::collections::HashSet;

/// A hypervisor operation that failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HvError {
    /// libvirtd cannot be reached; retry later.
    #[error("libvirtd is unavailable: {0}")]
    Unavailable(String),
    /// No domain of that name.
    #[error("no libvirt domain named {0}")]
    NoDomain(String),
    /// libvirt refused or failed the operation.
    #[error("libvirt {op} of {name} failed: {message}")]
    Failed {
        /// The operation, e.g. "start".
        op: &'static str,
        /// The domain (or "host").
        name: String,
        /// libvirt's message.
        message: String,
    },
}

/// A segment domain as found in libvirt.
#[derive(Debug)]
pub struct DomainEntry {
    /// Domain name (`seg-<id>`).
    pub name: String,
    /// Whether it runs.
    pub running: bool,
    /// The agent's record from its metadata, or why it cannot be read
    /// (a `seg-` domain the agent did not make).
    pub record: Result<SegmentRecord, MetadataError>,
}

/// Resource use of a running domain.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DomainUsage {
    /// Memory in use by the segment's cgroup.
    pub memory_used_bytes: u64,
    /// CPU time consumed since it started.
    pub cpu_time_ns: u64,
    /// Traffic on the segment's interface; `None` when libvirt cannot
    /// read it (the interface is being torn down).
    pub network: Option<InterfaceCounters>,
    /// PID of the domain's libvirt_lxc controller. It lives in the domain's
    /// cgroups, so it leads to them (process count, OOM kills).
    pub controller_pid: Option<u32>,
}

/// Byte counters of a segment's interface, as the segment sees them
/// (received = sent to the segment).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InterfaceCounters {
    /// Bytes the segment received.
    pub rx_bytes: u64,
    /// Bytes the segment sent.
    pub tx_bytes: u64,
}

/// Versions reported by the hypervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HypervisorVersion {
    /// libvirt library version, e.g. "9.0.0".
    pub libvirt: String,
}

/// What the hypervisor reports by itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HvEvent {
    /// A `seg-` domain became active (`running`) or inactive (stopped, or
    /// undefined).
    Domain {
        /// The domain.
        name: String,
        /// Whether it runs now.
        running: bool,
    },
    /// Events flow (again). What happened while they did not must be read
    /// by listing the domains.
    Connected,
    /// libvirtd is unreachable: events may be missed until `Connected`.
    Disconnected,
}

/// Where [`Hypervisor::watch`] delivers events: called on the hypervisor's
/// own thread, in the order libvirt sent them; it must not block.
pub type EventSink = Box<dyn Fn(HvEvent) + Send + Sync + 'static>;

/// The narrow libvirt surface the agent uses.
pub trait Hypervisor: Send + Sync + 'static {
    /// Every domain whose name starts with `seg-`.
    fn list_segments(&self) -> Result<Vec<DomainEntry>, HvError>;
    /// Names of the running domains.
    fn running(&self) -> Result<HashSet<String>, HvError>;
    /// Whether `name` runs; `NoDomain` if it does not exist.
    fn is_running(&self, name: &str) -> Result<bool, HvError>;
    /// Defines (or redefines, same UUID) a persistent domain.
    fn define(&self, xml: &str) -> Result<(), HvError>;
    /// Starts a defined domain.
    fn start(&self, name: &str) -> Result<(), HvError>;
    /// Asks the domain's init to stop (SIGTERM for LXC).
    fn shutdown(&self, name: &str) -> Result<(), HvError>;
    /// Stops the domain at once; a stopped domain is fine.
    fn destroy(&self, name: &str) -> Result<(), HvError>;
    /// Removes the domain definition; a missing domain is fine.
    fn undefine(&self, name: &str) -> Result<(), HvError>;
    /// Replaces the agent's metadata record of the domain.
    fn set_record(&self, name: &str, record_xml: &str) -> Result<(), HvError>;
    /// Memory, CPU and network use of a running domain; `interface` is the
    /// MAC of its network interface.
    fn usage(&self, name: &str, interface: &str) -> Result<DomainUsage, HvError>;
    /// The host PID of a running domain's init process.
    fn init_pid(&self, name: &str) -> Result<u32, HvError>;
    /// The hypervisor's versions; also a liveness probe.
    fn version(&self) -> Result<HypervisorVersion, HvError>;
    /// Delivers domain lifecycle events and connection changes to `sink`
    /// from now on, reconnecting by itself; starts with `Connected` (or
    /// `Disconnected`). Replaces an earlier sink.
    fn watch(&self, sink: EventSink);
}
