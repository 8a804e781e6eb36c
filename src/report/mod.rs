//! Health reports to the control plane: [`collect`] builds one complete
//! `HealthReport` of this host (figures from procfs, capacity, conditions,
//! every segment with its usage and Docker readiness); [`sender`] delivers
//! them periodically and on state changes, backing off while the control
//! plane is down. Reporting only reads: it never touches a segment.

pub mod sample;
pub mod sender;

use crate::{
    cgroups::usage::{CgroupFs, CgroupReader},
    host::HostFacts,
    network::filter::Filtering,
    proto::{agent as apb, controlplane as pb},
    segment::{Confinement, SegmentManager},
};
use procfs::FromRead;
use sample::{DockerHealth, HostSample, SegmentSample};
use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::SystemTime,
};

/// Free space of the state dir under which the host reports disk pressure.
const DISK_PRESSURE_FREE_PERCENT: f64 = 10.0;

/// Builds health reports of this host.
pub struct Collector {
    manager: Arc<SegmentManager>,
    host: HostFacts,
    proc: PathBuf,
    state_dir: PathBuf,
    boot_id: String,
    started_at: SystemTime,
    sequence: AtomicU64,
    cgroups: Arc<dyn CgroupReader>,
}

impl Collector {
    /// A collector reading procfs at `proc` (normally `/proc`) and the
    /// filesystem of `state_dir`.
    pub fn new(
        manager: Arc<SegmentManager>,
        host: HostFacts,
        proc: PathBuf,
        state_dir: PathBuf,
    ) -> Self {
        let boot_id = std::fs::read_to_string(proc.join("sys/kernel/random/boot_id"))
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        Self {
            manager,
            host,
            cgroups: Arc::new(CgroupFs::new(proc.clone(), "/sys/fs/cgroup")),
            proc,
            state_dir,
            boot_id,
            started_at: SystemTime::now(),
            sequence: AtomicU64::new(0),
        }
    }

    /// Reads segment cgroups through `cgroups` instead of `/sys/fs/cgroup`.
    pub fn with_cgroups(mut self, cgroups: Arc<dyn CgroupReader>) -> Self {
        self.cgroups = cgroups;
        self
    }

    /// One complete report, as of now. Fails rather than send a report that
    /// looks complete but is not (a control plane would take missing
    /// segments for gone).
    pub async fn collect(&self) -> Result<pb::HealthReport, String> {
        let sample = sample::sample(&self.manager, &self.cgroups).await?;
        let (proc, dir, cpus) = (self.proc.clone(), self.state_dir.clone(), self.host.cpus);
        let promised = Promised::of(&sample.segments);
        // procfs and statvfs block (a hung state-dir filesystem would hang).
        let (host, disk) =
            tokio::task::spawn_blocking(move || host_figures(&proc, &dir, cpus, promised))
                .await
                .map_err(|e| format!("host figures task: {e}"))?;
        let conditions = vec![
            pb::Condition {
                r#type: "LibvirtReachable".into(),
                status: sample.libvirt.is_ok(),
                reason: sample.libvirt.as_ref().err().cloned().unwrap_or_default(),
            },
            apparmor_condition(&sample.confinement),
            filter_condition(&self.manager.settings().filtering),
            disk,
        ];
        Ok(pb::HealthReport {
            host_id: self.host.host_id.clone(),
            boot_id: self.boot_id.clone(),
            agent_version: crate::VERSION.into(),
            sequence: self.sequence.fetch_add(1, Ordering::Relaxed) + 1,
            time: Some(crate::proto::timestamp(sample.taken_at)),
            agent_started_at: Some(crate::proto::timestamp(self.started_at)),
            host: Some(host),
            capacity: Some(capacity(&sample)),
            conditions,
            segments: sample.segments.into_iter().map(segment_health).collect(),
        })
    }
}

fn capacity(sample: &HostSample) -> pb::Capacity {
    let (usage, capacity) = (&sample.usage, &sample.capacity);
    pb::Capacity {
        segment_slots: capacity.max_segments,
        segments_used: usage.segments,
        memory_allocatable_mib: capacity.allocatable_memory_mib,
        memory_allocated_mib: usage.memory_mib,
        address_pool_size: usage.pool_size,
        address_pool_free: usage.pool_free,
    }
}

/// The segments' disk quotas added up, and their use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Promised {
    /// Sum of the limits.
    pub limit_bytes: u64,
    /// Sum of what the segments' files take.
    pub used_bytes: u64,
}

impl Promised {
    fn of(segments: &[SegmentSample]) -> Self {
        let disks = segments.iter().filter_map(|s| s.segment.disk);
        disks.fold(Self::default(), |p, d| Promised {
            limit_bytes: p.limit_bytes + d.limit_bytes,
            used_bytes: p.used_bytes + d.used_bytes.min(d.limit_bytes),
        })
    }

    /// What segments may still write by their quotas.
    fn outstanding(&self) -> u64 {
        self.limit_bytes.saturating_sub(self.used_bytes)
    }
}

/// Figures from procfs and statvfs, and the disk pressure condition.
fn host_figures(
    proc: &std::path::Path,
    state_dir: &std::path::Path,
    cpus: u32,
    promised: Promised,
) -> (pb::HostFigures, pb::Condition) {
    let load = procfs::LoadAverage::from_file(proc.join("loadavg")).ok();
    let mem = procfs::Meminfo::from_file(proc.join("meminfo")).ok();
    // The segments' filesystem (its own btrfs on a quota host).
    let segments = state_dir.join("segments");
    let dir = if segments.is_dir() {
        segments
    } else {
        state_dir.to_owned()
    };
    let fs = nix::sys::statvfs::statvfs(&dir).ok();
    let (free, total) = fs
        .map(|s| {
            let frag = s.fragment_size();
            (s.blocks_available() * frag, s.blocks() * frag)
        })
        .unwrap_or((0, 0));
    let figures = pb::HostFigures {
        cpus,
        load1: load.as_ref().map_or(0.0, |l| f64::from(l.one)),
        load5: load.as_ref().map_or(0.0, |l| f64::from(l.five)),
        load15: load.as_ref().map_or(0.0, |l| f64::from(l.fifteen)),
        memory_total_bytes: mem.as_ref().map_or(0, |m| m.mem_total),
        memory_available_bytes: mem.as_ref().and_then(|m| m.mem_available).unwrap_or(0),
        state_dir_free_bytes: free,
        state_dir_total_bytes: total,
        segments_disk_limit_bytes: promised.limit_bytes,
        segments_disk_used_bytes: promised.used_bytes,
    };
    (figures, disk_condition(free, total, promised, &dir))
}

/// Pressure when little is free, or when the segments may still write, by
/// their quotas, more than is free (quotas are limits, not reservations).
fn disk_condition(
    free: u64,
    total: u64,
    promised: Promised,
    dir: &std::path::Path,
) -> pb::Condition {
    let percent = if total == 0 {
        0.0
    } else {
        free as f64 * 100.0 / total as f64
    };
    let low = percent < DISK_PRESSURE_FREE_PERCENT;
    let overpromised = promised.outstanding() > free;
    let gib = |b: u64| b as f64 / f64::from(1u32 << 30);
    let reason = match (total, low, overpromised) {
        (0, ..) => format!("cannot read the filesystem of {}", dir.display()),
        (_, true, _) => format!(
            "{percent:.1}% free on {} (below {DISK_PRESSURE_FREE_PERCENT}%)",
            dir.display()
        ),
        (_, _, true) => format!(
            "segments may still write {:.1} GiB by their quotas, {:.1} GiB free on {}",
            gib(promised.outstanding()),
            gib(free),
            dir.display()
        ),
        _ => String::new(),
    };
    pb::Condition {
        r#type: "DiskPressure".into(),
        status: total == 0 || low || overpromised,
        reason,
    }
}

fn apparmor_condition(c: &Confinement) -> pb::Condition {
    let (status, reason) = match c {
        Confinement::Enforced { .. } => (true, String::new()),
        Confinement::Off => (false, "configured off: segments run unconfined".into()),
        Confinement::Unavailable(r) => (false, r.clone()),
    };
    pb::Condition {
        r#type: "AppArmorEnforced".into(),
        status,
        reason,
    }
}

fn filter_condition(f: &Filtering) -> pb::Condition {
    let (status, reason) = match f {
        Filtering::Enforced => (true, String::new()),
        Filtering::Off => (false, "configured off: segment ports are unfiltered".into()),
        Filtering::Unavailable(r) => (false, r.clone()),
    };
    pb::Condition {
        r#type: "BridgeFilterEnforced".into(),
        status,
        reason,
    }
}

/// One segment's entry: usage from libvirt, Docker readiness over TLS.
fn segment_health(sample: SegmentSample) -> pb::SegmentHealth {
    let (usage, memory_limit_bytes) = (
        sample.usage.unwrap_or_default(),
        sample.memory_limit_bytes(),
    );
    let (docker_ready, docker_reason) = match sample.docker {
        DockerHealth::NoDocker => (false, "image has no Docker".to_owned()),
        DockerHealth::NotRunning => (false, "segment is not running".to_owned()),
        DockerHealth::Ready => (true, String::new()),
        DockerHealth::NotReady(e) => (false, e),
    };
    let (s, r) = (&sample.segment, &sample.segment.record);
    pb::SegmentHealth {
        segment_id: r.request.id.to_string(),
        cluster_id: r.request.cluster.to_string(),
        state: apb::SegmentState::from(s.state) as i32,
        state_reason: s.reason.clone(),
        public_ipv4: r.address.to_string(),
        image: r.request.image.to_string(),
        memory_used_bytes: usage.memory_used_bytes,
        memory_limit_bytes,
        cpu_time_ns: usage.cpu_time_ns,
        docker_ready,
        docker_reason,
        server_cert_not_after: r.server_cert_not_after.map(crate::proto::timestamp),
        restarts: r.restarts,
        disk_used_bytes: s.disk.map_or(0, |d| d.used_bytes),
        disk_limit_bytes: s.disk.map_or(0, |d| d.limit_bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn disk_pressure_counts_what_quotas_still_allow() {
        let dir = std::path::Path::new("/var/lib/segment-agent/segments");
        let p = |limit, used| Promised {
            limit_bytes: limit * GIB,
            used_bytes: used * GIB,
        };
        let cases = [
            // free, total, promised, pressure, reason contains
            (50, 100, p(40, 10), false, ""),
            (
                50,
                100,
                p(80, 10),
                true,
                "may still write 70.0 GiB by their quotas, 50.0 GiB free",
            ),
            (5, 100, p(0, 0), true, "5.0% free"),
            (0, 0, p(0, 0), true, "cannot read"),
        ];
        for (free, total, promised, pressure, reason) in cases {
            let c = disk_condition(free * GIB, total * GIB, promised, dir);
            assert_eq!(
                c.status, pressure,
                "{free}/{total} {promised:?}: {}",
                c.reason
            );
            assert!(c.reason.contains(reason), "{}", c.reason);
            assert_eq!(c.reason.is_empty(), !pressure);
        }
    }
}
