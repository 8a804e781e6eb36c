//! One reading of the host and its segments: what health reports and the
//! Prometheus metrics are both built from, so the two never disagree and the
//! reads (libvirt, cgroups, Docker's `/_ping`) are written once.

use crate::{
    cgroups::usage::{CgroupFigures, CgroupReader},
    hypervisor::{DomainUsage, HypervisorVersion},
    segment::{
        Confinement, Segment, SegmentManager, SegmentState,
        registry::{Capacity, Usage},
    },
};
use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

/// Whether a segment's Docker answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DockerHealth {
    /// The segment's image has no Docker.
    NoDocker,
    /// The segment does not run, so neither does its Docker.
    NotRunning,
    /// `/_ping` over mutual TLS answered.
    Ready,
    /// It did not; why.
    NotReady(String),
}

/// One segment as read now.
#[derive(Debug, Clone)]
pub struct SegmentSample {
    /// The segment with its observed state.
    pub segment: Segment,
    /// libvirt's figures; `None` unless it runs (or when libvirt failed).
    pub usage: Option<DomainUsage>,
    /// The cgroups' figures; `None` unless it runs and they could be read.
    pub cgroups: Option<CgroupFigures>,
    /// Its Docker.
    pub docker: DockerHealth,
}

impl SegmentSample {
    /// The segment's memory limit: its cgroup's hard limit is the flavor's
    /// memory.
    pub fn memory_limit_bytes(&self) -> u64 {
        u64::from(self.segment.record.request.flavor.memory_mib) * 1024 * 1024
    }
}

/// The host and every segment, read at one moment.
#[derive(Debug, Clone)]
pub struct HostSample {
    /// When the reading started.
    pub taken_at: SystemTime,
    /// How long the reading took.
    pub took: Duration,
    /// libvirt's versions, or why it cannot be reached.
    pub libvirt: Result<HypervisorVersion, String>,
    /// Every segment, ordered by id.
    pub segments: Vec<SegmentSample>,
    /// Current use of the host.
    pub usage: Usage,
    /// The host's limits.
    pub capacity: Capacity,
    /// How segments are confined.
    pub confinement: Confinement,
}

/// Reads the host and every segment (concurrently). Fails rather than
/// return a reading that looks complete but is not.
pub async fn sample(
    manager: &Arc<SegmentManager>,
    cgroups: &Arc<dyn CgroupReader>,
) -> Result<HostSample, String> {
    let (taken_at, started) = (SystemTime::now(), Instant::now());
    let libvirt = manager
        .hypervisor_version()
        .await
        .map_err(|e| e.to_string());
    let segments = manager
        .list(None)
        .await
        .map_err(|e| format!("listing segments: {e}"))?;
    let mut tasks = tokio::task::JoinSet::new();
    for (i, s) in segments.into_iter().enumerate() {
        let (m, c) = (manager.clone(), cgroups.clone());
        tasks.spawn(async move { (i, segment_sample(&m, &c, s).await) });
    }
    let mut read = Vec::with_capacity(tasks.len());
    while let Some(done) = tasks.join_next().await {
        read.push(done.map_err(|e| format!("segment sample task: {e}"))?);
    }
    read.sort_by_key(|(i, _)| *i);
    let (usage, capacity) = manager.usage();
    Ok(HostSample {
        taken_at,
        took: started.elapsed(),
        libvirt,
        segments: read.into_iter().map(|(_, s)| s).collect(),
        usage,
        capacity,
        confinement: manager.settings().confinement.clone(),
    })
}

async fn segment_sample(
    manager: &SegmentManager,
    cgroups: &Arc<dyn CgroupReader>,
    segment: Segment,
) -> SegmentSample {
    let running = segment.state == SegmentState::Running;
    let usage = match running {
        true => manager.segment_usage(&segment.record).await.ok(),
        false => None,
    };
    let cgroups = match usage.and_then(|u| u.controller_pid) {
        Some(pid) => {
            let c = cgroups.clone();
            tokio::task::spawn_blocking(move || c.read(pid).ok())
                .await
                .ok()
                .flatten()
        }
        None => None,
    };
    let docker = match (segment.record.request.ca_cert_pem.is_some(), running) {
        (false, _) => DockerHealth::NoDocker,
        (true, false) => DockerHealth::NotRunning,
        (true, true) => match manager.docker_health(&segment).await {
            Ok(()) => DockerHealth::Ready,
            Err(e) => DockerHealth::NotReady(e),
        },
    };
    SegmentSample {
        segment,
        usage,
        cgroups,
        docker,
    }
}
