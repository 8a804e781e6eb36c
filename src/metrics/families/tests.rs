//! Rendering of a fixed reading: exact lines, left-out figures, and text a
//! Prometheus parser accepts.

use super::*;
use crate::model::{
    ClusterId, Desired, Flavor, ImageName, Labels, SegmentId, SegmentRecord, SegmentRequest,
};
use crate::{
    cgroups::usage::CgroupFigures,
    hypervisor::{DomainUsage, HypervisorVersion, InterfaceCounters},
    segment::{
        Segment,
        registry::{Capacity, Usage},
    },
};
use std::time::{Duration, UNIX_EPOCH};

fn segment(id: &str, state: SegmentState, docker: bool) -> Segment {
    Segment {
        record: SegmentRecord {
            request: SegmentRequest {
                id: SegmentId::parse(id).unwrap(),
                cluster: ClusterId::parse("c7").unwrap(),
                flavor: Flavor {
                    memory_mib: 512,
                    vcpus: 1,
                    ..Flavor::default()
                },
                image: ImageName::parse(if docker { "docker" } else { "dev" }).unwrap(),
                labels: Labels::new(),
                ca_cert_pem: docker.then(|| "PEM".to_owned()),
                swarm: None,
            },
            address: "203.0.113.12".parse().unwrap(),
            created_at: UNIX_EPOCH,
            desired: Desired::Running,
            server_cert_not_after: docker.then(|| UNIX_EPOCH + Duration::from_secs(1_900_000_000)),
            ids: crate::idmap::IdRange {
                host_first: 1_000_000,
                count: 65_536,
            },
            failure: None,
            restarts: 0,
            swarm: None,
        },
        state,
        reason: String::new(),
        disk: None,
    }
}

fn reading() -> HostSample {
    let running = SegmentSample {
        segment: segment("web-1", SegmentState::Running, true),
        usage: Some(DomainUsage {
            memory_used_bytes: 100 << 20,
            cpu_time_ns: 2_500_000_000,
            network: Some(InterfaceCounters {
                rx_bytes: 1000,
                tx_bytes: 2000,
            }),
            controller_pid: Some(42),
        }),
        cgroups: Some(CgroupFigures {
            processes: 7,
            oom_kills: 1,
        }),
        docker: DockerHealth::Ready,
    };
    let stopped = SegmentSample {
        segment: segment("db-2", SegmentState::Stopped, false),
        usage: None,
        cgroups: None,
        docker: DockerHealth::NoDocker,
    };
    HostSample {
        taken_at: UNIX_EPOCH,
        took: Duration::from_millis(12),
        libvirt: Ok(HypervisorVersion {
            libvirt: "9.0.0".into(),
        }),
        segments: vec![stopped, running],
        usage: Usage {
            segments: 2,
            memory_mib: 1024,
            pool_size: 10,
            pool_free: 8,
        },
        capacity: Capacity {
            max_segments: 64,
            allocatable_memory_mib: 4096,
        },
        confinement: Confinement::Off,
    }
}

fn render(sample: Result<HostSample, String>) -> String {
    let host = HostFacts {
        host_id: "h1".into(),
        cpus: 2,
        memory_mib: 8192,
    };
    let mut out = String::new();
    encode(&mut out, &host, Arc::new(sample)).unwrap();
    out
}

#[test]
fn renders_every_figure_of_a_reading() {
    let text = render(Ok(reading()));
    let web = r#"{segment_id="web-1",cluster_id="c7"}"#;
    let db = r#"{segment_id="db-2",cluster_id="c7"}"#;
    for line in [
        "segment_agent_sample_ok 1".to_owned(),
        "segment_agent_sample_duration_seconds 0.012".into(),
        format!(
            "segment_agent_host_info{{host_id=\"h1\",agent_version=\"{}\",libvirt_version=\"9.0.0\"}} 1",
            crate::VERSION
        ),
        r#"segment_agent_segments{state="RUNNING"} 1"#.into(),
        r#"segment_agent_segments{state="STOPPED"} 1"#.into(),
        r#"segment_agent_segments{state="FAILED"} 0"#.into(),
        "segment_agent_host_segment_slots 64".into(),
        format!("segment_agent_host_memory_allocatable_bytes {}", 4096u64 << 20),
        format!("segment_agent_host_memory_allocated_bytes {}", 1024u64 << 20),
        "segment_agent_host_addresses 10".into(),
        "segment_agent_host_addresses_free 8".into(),
        "segment_agent_host_libvirt_reachable 1".into(),
        "segment_agent_host_apparmor_enforced 0".into(),
        r#"segment_agent_segment_state{segment_id="web-1",cluster_id="c7",state="RUNNING"} 1"#
            .into(),
        r#"segment_agent_segment_info{segment_id="db-2",cluster_id="c7",image="dev",address="203.0.113.12"} 1"#.into(),
        format!("segment_agent_segment_memory_usage_bytes{web} {}", 100u64 << 20),
        format!("segment_agent_segment_memory_limit_bytes{db} {}", 512u64 << 20),
        format!("segment_agent_segment_cpu_seconds_total{web} 2.5"),
        format!("segment_agent_segment_network_receive_bytes_total{web} 1000"),
        format!("segment_agent_segment_network_transmit_bytes_total{web} 2000"),
        format!("segment_agent_segment_processes{web} 7"),
        format!("segment_agent_segment_oom_kills_total{web} 1"),
        format!("segment_agent_segment_docker_ready{web} 1"),
        format!(
            "segment_agent_segment_server_cert_expiry_timestamp_seconds{web} 1900000000"
        ),
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
    }
    // What a stopped segment without Docker does not have is left out.
    for family in [
        "memory_usage_bytes",
        "cpu_seconds_total",
        "network_receive_bytes_total",
        "processes",
        "oom_kills_total",
        "docker_ready",
        "server_cert_expiry_timestamp_seconds",
    ] {
        let line = format!("segment_agent_segment_{family}{db}");
        assert!(!text.contains(&line), "{line} must be left out");
    }
}

#[test]
fn every_family_has_help_and_type_and_parses() {
    let text = render(Ok(reading()));
    for f in SEGMENT_FAMILIES {
        let name = match f.kind {
            MetricType::Counter => format!("{}_total", f.name),
            _ => f.name.to_owned(),
        };
        assert!(text.contains(&format!("# HELP {name} ")), "{name}");
        assert!(text.contains(&format!("# TYPE {name} ")), "{name}");
    }
    assert_exposition_parses(&text);
}

#[test]
fn a_failed_reading_says_so_and_nothing_else() {
    let text = render(Err("listing segments: libvirt said no".into()));
    assert!(
        text.lines().any(|l| l == "segment_agent_sample_ok 0"),
        "{text}"
    );
    assert!(!text.contains("segment_agent_segment_"), "{text}");
    assert_exposition_parses(&text);
}

/// Checks the Prometheus text format line by line: comments are HELP or
/// TYPE, samples are `name{labels} value` with a float value, each family's
/// TYPE precedes its samples.
pub(crate) fn assert_exposition_parses(text: &str) {
    let mut typed = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name) = (parts.next().unwrap(), parts.next().unwrap());
            assert!(kind == "HELP" || kind == "TYPE", "{line}");
            if kind == "TYPE" {
                typed.insert(name.to_owned());
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        assert!(
            value.parse::<f64>().is_ok() || value == "+Inf",
            "value of {line}"
        );
        let name = series.split('{').next().unwrap();
        assert!(
            name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            "{line}"
        );
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
            .unwrap_or(name);
        assert!(typed.contains(family), "no TYPE before {line}");
        if let Some(labels) = series.strip_prefix(name) {
            assert!(
                labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                "{line}"
            );
        }
    }
}
