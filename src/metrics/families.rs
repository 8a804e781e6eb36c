//! The host's and the segments' families, rendered from one
//! [`HostSample`]. A figure that was not read (a stopped segment has no
//! memory use, a segment without Docker no Docker readiness) is left out,
//! never exported as a made-up 0.
//!
//! Per-segment families are a table ([`SEGMENT_FAMILIES`]): a new figure
//! (disk used and limit once segments have a disk quota, restarts once the
//! agent counts them) is one more row reading one more field of the sample.

use crate::{
    host::HostFacts,
    report::sample::{DockerHealth, HostSample, SegmentSample},
    segment::{Confinement, SegmentState},
};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, NoLabelSet, prometheus_text},
    metrics::MetricType,
    registry::Registry,
};
use std::{sync::Arc, time::SystemTime};

const MIB: u64 = 1024 * 1024;

/// Every segment state, as the API names them.
const STATES: [(SegmentState, &str); 5] = [
    (SegmentState::Provisioning, "PROVISIONING"),
    (SegmentState::Running, "RUNNING"),
    (SegmentState::Stopped, "STOPPED"),
    (SegmentState::Failed, "FAILED"),
    (SegmentState::Deleting, "DELETING"),
];

fn state_name(state: SegmentState) -> &'static str {
    STATES
        .iter()
        .find(|(s, _)| *s == state)
        .map_or("UNKNOWN", |(_, n)| n)
}

/// One per-segment family: name (counters without `_total`), help, type,
/// and the figure of one segment, if it has one.
pub struct SegmentFamily {
    /// Metric name.
    pub name: &'static str,
    /// HELP text.
    pub help: &'static str,
    /// Counter or gauge.
    pub kind: MetricType,
    /// The segment's value.
    pub value: fn(&SegmentSample) -> Option<f64>,
}

fn epoch_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The per-segment families, labelled `segment_id` and `cluster_id`.
pub const SEGMENT_FAMILIES: &[SegmentFamily] = &[
    SegmentFamily {
        name: "segment_agent_segment_memory_usage_bytes",
        help: "Memory in use by the segment's cgroup (running segments)",
        kind: MetricType::Gauge,
        value: |s| s.usage.map(|u| u.memory_used_bytes as f64),
    },
    SegmentFamily {
        name: "segment_agent_segment_memory_limit_bytes",
        help: "The segment's hard memory limit (its flavor's memory)",
        kind: MetricType::Gauge,
        value: |s| Some(s.memory_limit_bytes() as f64),
    },
    SegmentFamily {
        name: "segment_agent_segment_cpu_seconds",
        help: "CPU time the segment used since it last started",
        kind: MetricType::Counter,
        value: |s| s.usage.map(|u| u.cpu_time_ns as f64 / 1e9),
    },
    SegmentFamily {
        name: "segment_agent_segment_network_receive_bytes",
        help: "Bytes the segment received on its interface since it last started",
        kind: MetricType::Counter,
        value: |s| s.usage.and_then(|u| u.network).map(|n| n.rx_bytes as f64),
    },
    SegmentFamily {
        name: "segment_agent_segment_network_transmit_bytes",
        help: "Bytes the segment sent on its interface since it last started",
        kind: MetricType::Counter,
        value: |s| s.usage.and_then(|u| u.network).map(|n| n.tx_bytes as f64),
    },
    SegmentFamily {
        name: "segment_agent_segment_processes",
        help: "Processes in the segment's cgroups (Docker's containers included)",
        kind: MetricType::Gauge,
        value: |s| s.cgroups.map(|c| c.processes as f64),
    },
    SegmentFamily {
        name: "segment_agent_segment_oom_kills",
        help: "Processes the OOM killer took in the segment since it last started",
        kind: MetricType::Counter,
        value: |s| s.cgroups.map(|c| c.oom_kills as f64),
    },
    SegmentFamily {
        name: "segment_agent_segment_docker_ready",
        help: "1 if the segment's Docker answers /_ping over mutual TLS, else 0 (Docker images)",
        kind: MetricType::Gauge,
        value: |s| match s.docker {
            DockerHealth::NoDocker => None,
            DockerHealth::Ready => Some(1.0),
            DockerHealth::NotRunning | DockerHealth::NotReady(_) => Some(0.0),
        },
    },
    SegmentFamily {
        name: "segment_agent_segment_server_cert_expiry_timestamp_seconds",
        help: "When the Docker server certificate of the segment expires, seconds since the epoch",
        kind: MetricType::Gauge,
        value: |s| s.segment.record.server_cert_not_after.map(epoch_seconds),
    },
    SegmentFamily {
        name: "segment_agent_segment_restarts",
        help: "Times the agent restarted the segment after its init died",
        kind: MetricType::Counter,
        value: |s| Some(f64::from(s.segment.record.restarts)),
    },
];

/// Labels of a segment: `segment_id`, `cluster_id`.
type SegmentLabels<'a> = [(&'static str, &'a str); 2];

/// Renders one reading (or why there is none) for one scrape.
#[derive(Debug)]
struct SampleCollector<'a> {
    host: &'a HostFacts,
    sample: &'a Result<HostSample, String>,
}

/// Appends the host's and the segments' families of `sample` to `out`.
pub fn encode(
    out: &mut String,
    host: &HostFacts,
    sample: Arc<Result<HostSample, String>>,
) -> std::fmt::Result {
    // prometheus-client wants 'static collectors: this one lives for one
    // scrape and shares the reading.
    let mut registry = Registry::default();
    registry.register_collector(Box::new(OwnedSample {
        host: host.clone(),
        sample,
    }));
    prometheus_text::encode(out, &registry)
}

#[derive(Debug)]
struct OwnedSample {
    host: HostFacts,
    sample: Arc<Result<HostSample, String>>,
}

impl Collector for OwnedSample {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        SampleCollector {
            host: &self.host,
            sample: &self.sample,
        }
        .encode_all(encoder)
    }
}

/// Whole numbers (bytes, counts, flags) are written without a fraction.
fn whole(v: f64) -> Option<i64> {
    (v.fract() == 0.0 && v.abs() < 9.0e15).then_some(v as i64)
}

/// A gauge without labels.
fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: f64) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    match whole(v) {
        Some(i) => m.encode_gauge(&i),
        None => m.encode_gauge(&v),
    }
}

fn flag(b: bool) -> f64 {
    if b { 1.0 } else { 0.0 }
}

impl SampleCollector<'_> {
    fn encode_all(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let sample = match self.sample {
            Ok(s) => s,
            Err(_) => {
                return gauge(
                    &mut e,
                    "segment_agent_sample_ok",
                    "1 if the host and its segments could be read for this scrape, else 0",
                    0.0,
                );
            }
        };
        gauge(
            &mut e,
            "segment_agent_sample_ok",
            "1 if the host and its segments could be read for this scrape, else 0",
            1.0,
        )?;
        gauge(
            &mut e,
            "segment_agent_sample_duration_seconds",
            "How long reading the host and its segments (libvirt, cgroups, Docker) took",
            sample.took.as_secs_f64(),
        )?;
        self.host_families(&mut e, sample)?;
        segment_families(&mut e, &sample.segments)
    }

    fn host_families(&self, e: &mut DescriptorEncoder, s: &HostSample) -> std::fmt::Result {
        let libvirt_version = s.libvirt.as_ref().map_or("", |v| v.libvirt.as_str());
        e.encode_descriptor(
            "segment_agent_host",
            "The host: its id, the agent's and libvirt's versions",
            None,
            MetricType::Info,
        )?
        .encode_info(&[
            ("host_id", self.host.host_id.as_str()),
            ("agent_version", crate::VERSION),
            ("libvirt_version", libvirt_version),
        ])?;
        let mut m = e.encode_descriptor(
            "segment_agent_segments",
            "Segments on the host, by state",
            None,
            MetricType::Gauge,
        )?;
        for (state, name) in STATES {
            let n = s
                .segments
                .iter()
                .filter(|x| x.segment.state == state)
                .count();
            m.encode_family(&[("state", name)])?
                .encode_gauge(&(n as i64))?;
        }
        let (u, c) = (&s.usage, &s.capacity);
        let enforced = matches!(s.confinement, Confinement::Enforced { .. });
        let rows: [(&str, &str, f64); 7] = [
            (
                "segment_agent_host_segment_slots",
                "Most segments the host admits (capacity.max_segments)",
                f64::from(c.max_segments),
            ),
            (
                "segment_agent_host_memory_allocatable_bytes",
                "Memory that segment limits may add up to",
                (c.allocatable_memory_mib * MIB) as f64,
            ),
            (
                "segment_agent_host_memory_allocated_bytes",
                "Sum of the segments' memory limits",
                (u.memory_mib * MIB) as f64,
            ),
            (
                "segment_agent_host_addresses",
                "Addresses in the host's pool",
                f64::from(u.pool_size),
            ),
            (
                "segment_agent_host_addresses_free",
                "Addresses of the pool not held by a segment",
                f64::from(u.pool_free),
            ),
            (
                "segment_agent_host_libvirt_reachable",
                "1 if libvirtd answers, else 0",
                flag(s.libvirt.is_ok()),
            ),
            (
                "segment_agent_host_apparmor_enforced",
                "1 if every segment runs under the agent's AppArmor profile, else 0",
                flag(enforced),
            ),
        ];
        for (name, help, v) in rows {
            gauge(e, name, help, v)?;
        }
        Ok(())
    }
}

fn labels(s: &SegmentSample) -> SegmentLabels<'_> {
    [
        ("segment_id", s.segment.record.request.id.as_str()),
        ("cluster_id", s.segment.record.request.cluster.as_str()),
    ]
}

fn segment_families(e: &mut DescriptorEncoder, segments: &[SegmentSample]) -> std::fmt::Result {
    let mut m = e.encode_descriptor(
        "segment_agent_segment_state",
        "1 for the segment's current state",
        None,
        MetricType::Gauge,
    )?;
    for s in segments {
        let [id, cluster] = labels(s);
        m.encode_family(&[id, cluster, ("state", state_name(s.segment.state))])?
            .encode_gauge(&1i64)?;
    }
    let mut m = e.encode_descriptor(
        "segment_agent_segment",
        "The segment: its image and public address",
        None,
        MetricType::Info,
    )?;
    for s in segments {
        let ([id, cluster], r) = (labels(s), &s.segment.record);
        let address = r.address.to_string();
        m.encode_info(&[
            id,
            cluster,
            ("image", r.request.image.as_str()),
            ("address", address.as_str()),
        ])?;
    }
    for family in SEGMENT_FAMILIES {
        let values: Vec<_> = segments
            .iter()
            .filter_map(|s| (family.value)(s).map(|v| (labels(s), v)))
            .collect();
        let mut m = e.encode_descriptor(family.name, family.help, None, family.kind)?;
        for (l, v) in &values {
            let mut f = m.encode_family(l)?;
            match (family.kind, whole(*v)) {
                (MetricType::Counter, Some(i)) => {
                    f.encode_counter::<NoLabelSet, _, u64>(&(i.max(0) as u64), None)?
                }
                (MetricType::Counter, None) => f.encode_counter::<NoLabelSet, _, u64>(v, None)?,
                (_, Some(i)) => f.encode_gauge(&i)?,
                (_, None) => f.encode_gauge(v)?,
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
