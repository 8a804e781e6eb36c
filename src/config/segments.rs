//! The tables that shape each segment: its flavor bounds, the host's
//! admission limits, how segments are isolated, and lifecycle timing.

use super::{ConfigError, invalid};
use crate::model::{Bounds, FlavorLimits};
use serde::Deserialize;
use std::time::Duration;

/// Flavor defaults and bounds: each `default_*` applies to a request that
/// says 0, each `min_*`/`max_*` bounds what a request may ask.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FlavorConfig {
    /// Memory in MiB.
    pub default_memory_mib: u32,
    /// Smallest memory limit accepted.
    pub min_memory_mib: u32,
    /// Largest memory limit accepted.
    pub max_memory_mib: u32,
    /// vCPUs.
    pub default_vcpus: u32,
    /// Most vCPUs accepted.
    pub max_vcpus: u32,
    /// Disk quota in GiB (writable root, Docker's data, the data area).
    pub default_disk_gib: u32,
    /// Smallest disk quota accepted.
    pub min_disk_gib: u32,
    /// Largest disk quota accepted.
    pub max_disk_gib: u32,
    /// Processes and threads (`pids.max`).
    pub default_pids: u32,
    /// Smallest process limit accepted (a Docker segment's daemons alone
    /// run about 60 threads).
    pub min_pids: u32,
    /// Largest process limit accepted.
    pub max_pids: u32,
    /// Bandwidth of the segment's port in Mbit/s, each direction.
    pub default_network_mbit: u32,
    /// Smallest bandwidth accepted.
    pub min_network_mbit: u32,
    /// Largest bandwidth accepted.
    pub max_network_mbit: u32,
}

impl Default for FlavorConfig {
    fn default() -> Self {
        Self {
            default_memory_mib: 4096,
            min_memory_mib: 128,
            max_memory_mib: 16384,
            default_vcpus: 2,
            max_vcpus: 8,
            default_disk_gib: 20,
            min_disk_gib: 1,
            max_disk_gib: 500,
            default_pids: 4096,
            min_pids: 128,
            max_pids: 65536,
            default_network_mbit: 1000,
            min_network_mbit: 1,
            max_network_mbit: 10000,
        }
    }
}

impl FlavorConfig {
    /// The bounds as the segment module uses them.
    pub fn limits(&self) -> FlavorLimits {
        let b = |default, min, max| Bounds { default, min, max };
        FlavorLimits {
            memory_mib: b(
                self.default_memory_mib,
                self.min_memory_mib,
                self.max_memory_mib,
            ),
            vcpus: b(self.default_vcpus, 1, self.max_vcpus),
            disk_gib: b(self.default_disk_gib, self.min_disk_gib, self.max_disk_gib),
            pids: b(self.default_pids, self.min_pids, self.max_pids),
            network_mbit: b(
                self.default_network_mbit,
                self.min_network_mbit,
                self.max_network_mbit,
            ),
        }
    }
}

/// Admission limits. Caps are limits, not reservations: memory limits may add
/// up to more than the host has, by `memory_overcommit_ratio`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CapacityConfig {
    /// Most segments on this host.
    pub max_segments: u32,
    /// Memory kept for the host itself, not counted as allocatable.
    pub reserved_memory_mib: u64,
    /// Allocatable memory = (host memory - reserved) x this ratio.
    pub memory_overcommit_ratio: f64,
}

impl Default for CapacityConfig {
    fn default() -> Self {
        Self {
            max_segments: 64,
            reserved_memory_mib: 2048,
            memory_overcommit_ratio: 1.0,
        }
    }
}

/// How segments are kept apart from the host and from each other.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IsolationConfig {
    /// First host uid/gid of the block segments' user namespaces map to:
    /// segment slot `k` gets `first_host_id + k * ids_per_segment` onwards.
    /// Keep the block out of `/etc/subuid` ranges and real users.
    pub first_host_id: u32,
    /// Ids each segment maps (its uids and gids `0..ids_per_segment`);
    /// at least 65536, what container images assume.
    pub ids_per_segment: u32,
    /// Moved to `flavor.default_pids` (each segment's flavor carries its
    /// own limit); refused with that hint so an old file does not silently
    /// lose its value.
    pub pids_max: Option<u32>,
    /// Every segment's block I/O weight (libvirt `<blkiotune>`: v1
    /// `blkio.bfq.weight`, v2 `io.weight`), 100..=1000: equal weights share
    /// a contended disk fairly between segments.
    pub io_weight: u32,
    /// Docker segments: memory their containers can never take from the
    /// management daemons (containerd, dockerd, the policy plugin): the
    /// containers' cgroup is capped at the flavor's memory minus this (at
    /// most a quarter of a small flavor).
    pub management_memory_mib: u32,
}

impl Default for IsolationConfig {
    fn default() -> Self {
        Self {
            first_host_id: 1_000_000,
            ids_per_segment: 65_536,
            pids_max: None,
            io_weight: 100,
            management_memory_mib: 256,
        }
    }
}

impl IsolationConfig {
    /// Checks the block fits host ids for `slots` segments.
    pub(super) fn validate(&self, slots: u32) -> Result<(), ConfigError> {
        if self.ids_per_segment < 65_536 {
            return Err(invalid(
                "isolation.ids_per_segment",
                "must be at least 65536",
            ));
        }
        if self.first_host_id < 65_536 {
            return Err(invalid(
                "isolation.first_host_id",
                "must be at least 65536 (host system and user ids live below)",
            ));
        }
        let end =
            u64::from(self.first_host_id) + u64::from(slots) * u64::from(self.ids_per_segment);
        if end >= u64::from(u32::MAX) {
            return Err(invalid(
                "isolation.first_host_id",
                format!(
                    "{slots} segments (capacity.max_segments) of {} ids from {} pass the largest uid",
                    self.ids_per_segment, self.first_host_id
                ),
            ));
        }
        if self.pids_max.is_some() {
            return Err(invalid(
                "isolation.pids_max",
                "moved to flavor.default_pids (and flavor.min_pids, max_pids)",
            ));
        }
        if !(100..=1000).contains(&self.io_weight) {
            return Err(invalid("isolation.io_weight", "must be within 100..=1000"));
        }
        Ok(())
    }
}

/// Segment lifecycle timing.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LifecycleConfig {
    /// CFS period in microseconds (quota = vcpus x period).
    pub cpu_period_us: u64,
    /// Default wait for a graceful stop before it is forced.
    pub stop_timeout_seconds: u32,
    /// Creates and deletes doing their work (filesystems, certificates,
    /// define, start; destroy and removal) at once; more wait their turn,
    /// already admitted (CreateSegment's address and id are taken at
    /// once). Waiting for Docker to answer takes no turn. 0: one per CPU
    /// of the host.
    pub concurrent_operations: u32,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        Self {
            cpu_period_us: 100_000,
            stop_timeout_seconds: 30,
            concurrent_operations: 0,
        }
    }
}

impl LifecycleConfig {
    /// [`Self::concurrent_operations`], 0 resolved to the host's CPUs.
    pub fn operations_at_once(&self) -> usize {
        match self.concurrent_operations {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n as usize,
        }
    }

    /// The default stop timeout.
    pub fn stop_timeout(&self) -> Duration {
        Duration::from_secs(self.stop_timeout_seconds.into())
    }
}
