//! Health reports to the control plane: [`collect`] builds one complete
//! `HealthReport` of this host (figures from procfs, capacity, conditions,
//! every segment with its usage and Docker readiness); [`sender`] delivers
//! them periodically and on state changes, backing off while the control
//! plane is down. Reporting only reads: it never touches a segment.

pub mod sender;

use crate::{
    api::convert::timestamp,
    host::HostFacts,
    network::filter::Filtering,
    proto::{agent as apb, controlplane as pb},
    segment::{Confinement, Segment, SegmentManager, SegmentState},
};
use procfs::FromRead;
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
            proc,
            state_dir,
            boot_id,
            started_at: SystemTime::now(),
            sequence: AtomicU64::new(0),
        }
    }

    /// One complete report, as of now. Fails rather than send a report that
    /// looks complete but is not (a control plane would take missing
    /// segments for gone).
    pub async fn collect(&self) -> Result<pb::HealthReport, String> {
        let libvirt = self.manager.hypervisor_version().await;
        let segments = self
            .manager
            .list(None)
            .await
            .map_err(|e| format!("listing segments: {e}"))?;
        let mut health = Vec::with_capacity(segments.len());
        let mut tasks = tokio::task::JoinSet::new();
        for (i, s) in segments.into_iter().enumerate() {
            let m = self.manager.clone();
            tasks.spawn(async move { (i, segment_health(&m, s).await) });
        }
        while let Some(done) = tasks.join_next().await {
            health.push(done.map_err(|e| format!("segment health task: {e}"))?);
        }
        health.sort_by_key(|(i, _)| *i);
        let (proc, dir, cpus) = (self.proc.clone(), self.state_dir.clone(), self.host.cpus);
        // procfs and statvfs block (a hung state-dir filesystem would hang).
        let (host, disk) = tokio::task::spawn_blocking(move || host_figures(&proc, &dir, cpus))
            .await
            .map_err(|e| format!("host figures task: {e}"))?;
        let mut conditions = vec![pb::Condition {
            r#type: "LibvirtReachable".into(),
            status: libvirt.is_ok(),
            reason: libvirt.err().map(|e| e.to_string()).unwrap_or_default(),
        }];
        conditions.push(apparmor_condition(&self.manager.settings().confinement));
        conditions.push(filter_condition(&self.manager.settings().filtering));
        conditions.push(disk);
        Ok(pb::HealthReport {
            host_id: self.host.host_id.clone(),
            boot_id: self.boot_id.clone(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            sequence: self.sequence.fetch_add(1, Ordering::Relaxed) + 1,
            time: Some(timestamp(SystemTime::now())),
            agent_started_at: Some(timestamp(self.started_at)),
            host: Some(host),
            capacity: Some(self.capacity()),
            conditions,
            segments: health.into_iter().map(|(_, h)| h).collect(),
        })
    }

    fn capacity(&self) -> pb::Capacity {
        let (usage, capacity) = self.manager.usage();
        pb::Capacity {
            segment_slots: capacity.max_segments,
            segments_used: usage.segments,
            memory_allocatable_mib: capacity.allocatable_memory_mib,
            memory_allocated_mib: usage.memory_mib,
            address_pool_size: usage.pool_size,
            address_pool_free: usage.pool_free,
        }
    }
}

/// Figures from procfs and statvfs, and the disk pressure condition.
fn host_figures(
    proc: &std::path::Path,
    state_dir: &std::path::Path,
    cpus: u32,
) -> (pb::HostFigures, pb::Condition) {
    let load = procfs::LoadAverage::from_file(proc.join("loadavg")).ok();
    let mem = procfs::Meminfo::from_file(proc.join("meminfo")).ok();
    let fs = nix::sys::statvfs::statvfs(state_dir).ok();
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
    };
    (figures, disk_condition(free, total, state_dir))
}

fn disk_condition(free: u64, total: u64, dir: &std::path::Path) -> pb::Condition {
    let percent = if total == 0 {
        0.0
    } else {
        free as f64 * 100.0 / total as f64
    };
    let pressure = percent < DISK_PRESSURE_FREE_PERCENT;
    pb::Condition {
        r#type: "DiskPressure".into(),
        status: pressure,
        reason: match (pressure, total) {
            (_, 0) => format!("cannot read the filesystem of {}", dir.display()),
            (true, _) => format!(
                "{percent:.1}% free on {} (below {DISK_PRESSURE_FREE_PERCENT}%)",
                dir.display()
            ),
            (false, _) => String::new(),
        },
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
async fn segment_health(manager: &SegmentManager, s: Segment) -> pb::SegmentHealth {
    let running = s.state == SegmentState::Running;
    let usage = match running {
        true => manager
            .segment_usage(&s.record.request.id)
            .await
            .unwrap_or_default(),
        false => Default::default(),
    };
    let docker = s.record.request.ca_cert_pem.is_some();
    let (docker_ready, docker_reason) = match (docker, running) {
        (false, _) => (false, "image has no Docker".to_owned()),
        (true, false) => (false, "segment is not running".to_owned()),
        (true, true) => match manager.docker_health(&s).await {
            Ok(()) => (true, String::new()),
            Err(e) => (false, e),
        },
    };
    let r = s.record;
    pb::SegmentHealth {
        segment_id: r.request.id.to_string(),
        cluster_id: r.request.cluster.to_string(),
        state: apb::SegmentState::from(s.state) as i32,
        state_reason: s.reason,
        public_ipv4: r.address.to_string(),
        image: r.request.image.to_string(),
        memory_used_bytes: usage.memory_used_bytes,
        // The cgroup's hard limit is the flavor's memory.
        memory_limit_bytes: u64::from(r.request.flavor.memory_mib) * 1024 * 1024,
        cpu_time_ns: usage.cpu_time_ns,
        docker_ready,
        docker_reason,
        server_cert_not_after: r.server_cert_not_after.map(timestamp),
    }
}
