//! Conversions between protobuf messages and domain values.

use crate::model::{
    ClusterId, Flavor, ImageName, InvalidArgument, Labels, SegmentId, SegmentRequest, check_labels,
    swarm::{SwarmMode, SwarmNode, SwarmRole, SwarmSpec},
};
use crate::{
    certs::ClusterCa,
    proto::agent as pb,
    segment::{Segment, SegmentState, Settings},
};
use std::time::SystemTime;

/// Largest `ca_cert_pem` or `ca_key_pem` accepted: a CA certificate is a
/// few KiB, an RSA-4096 key about 3.3 KiB. The CA is kept with the segment
/// (libvirt's metadata, the agent's memory), so it is bounded here.
pub const MAX_CA_PEM_BYTES: usize = 64 * 1024;

/// Validates the cluster CA of a request; the key stays in memory. Blocks
/// (parsing, a signature): call it off the async runtime.
pub fn cluster_ca(tls: Option<pb::ClusterTls>) -> Result<Option<ClusterCa>, InvalidArgument> {
    match tls {
        None => Ok(None),
        Some(t) if t.ca_cert_pem.is_empty() && t.ca_key_pem.is_empty() => Ok(None),
        Some(t) if t.ca_cert_pem.len().max(t.ca_key_pem.len()) > MAX_CA_PEM_BYTES => {
            Err(InvalidArgument::new(
                "tls",
                format!(
                    "ca_cert_pem ({} bytes) and ca_key_pem ({} bytes) must be at most \
                     {MAX_CA_PEM_BYTES} bytes each",
                    t.ca_cert_pem.len(),
                    t.ca_key_pem.len()
                ),
            ))
        }
        Some(t) => ClusterCa::from_pem(&t.ca_cert_pem, &t.ca_key_pem, SystemTime::now())
            .map(Some)
            .map_err(|e| InvalidArgument::new("tls", e.to_string())),
    }
}

/// Validates a CreateSegment request and applies the host's defaults.
pub fn create_request(
    req: pb::CreateSegmentRequest,
    settings: &Settings,
) -> Result<(SegmentRequest, Option<ClusterCa>), InvalidArgument> {
    let id = SegmentId::parse(&req.segment_id)?;
    let cluster = ClusterId::parse(&req.cluster_id)?;
    let f = req.flavor.unwrap_or_default();
    let flavor = settings.flavor.resolve(Flavor {
        memory_mib: f.memory_mib,
        vcpus: f.vcpus,
        disk_gib: f.disk_gib,
        pids: f.pids,
        network_mbit: f.network_mbit,
    })?;
    let image = if req.image.is_empty() {
        settings.default_image.clone()
    } else {
        ImageName::parse(&req.image)?
    };
    let labels: Labels = req.labels.into_iter().collect();
    check_labels(&labels)?;
    let ca = cluster_ca(req.tls)?;
    let swarm = req.swarm.map(swarm_spec).transpose()?;
    let request = SegmentRequest {
        id,
        cluster,
        flavor,
        image,
        labels,
        ca_cert_pem: ca.as_ref().map(ClusterCa::canonical_cert_pem),
        swarm,
    };
    Ok((request, ca))
}

/// Validates the swarm part of a create.
pub fn swarm_spec(s: pb::SwarmSpec) -> Result<SwarmSpec, InvalidArgument> {
    let mode = match pb::SwarmMode::try_from(s.mode) {
        Ok(pb::SwarmMode::Init) => SwarmMode::Init,
        Ok(pb::SwarmMode::JoinManager) => SwarmMode::JoinManager,
        Ok(pb::SwarmMode::JoinWorker) => SwarmMode::JoinWorker,
        _ => {
            return Err(InvalidArgument::new(
                "swarm.mode",
                format!(
                    "{} is not SWARM_MODE_INIT, SWARM_MODE_JOIN_MANAGER or SWARM_MODE_JOIN_WORKER",
                    s.mode
                ),
            ));
        }
    };
    SwarmSpec::new(mode, &s.join_token, &s.manager_addresses)
}

impl From<SwarmNode> for pb::SwarmNode {
    fn from(n: SwarmNode) -> Self {
        let role = match n.role {
            SwarmRole::Manager => pb::SwarmRole::Manager,
            SwarmRole::Worker => pb::SwarmRole::Worker,
        };
        pb::SwarmNode {
            node_id: n.node_id,
            role: role as i32,
            worker_join_token: n.worker_token.unwrap_or_default(),
            manager_join_token: n.manager_token.unwrap_or_default(),
            manager_addresses: n.managers.iter().map(|m| m.to_string()).collect(),
        }
    }
}

/// Validates a RebuildSegment request: the CA is required.
pub fn rebuild_request(
    req: pb::RebuildSegmentRequest,
) -> Result<(SegmentId, ClusterCa), InvalidArgument> {
    let id = SegmentId::parse(&req.segment_id)?;
    let ca = cluster_ca(req.tls)?.ok_or_else(|| {
        InvalidArgument::new(
            "tls",
            "the cluster CA (ca_cert_pem, ca_key_pem) is required",
        )
    })?;
    Ok((id, ca))
}

/// Longest graceful stop a request may ask for (the segment's operations
/// wait behind it).
pub const MAX_STOP_TIMEOUT_SECONDS: u32 = 3600;

/// The `timeout_seconds` of StopSegment: 0 is the host default.
pub fn stop_timeout(seconds: u32) -> Result<Option<std::time::Duration>, InvalidArgument> {
    match seconds {
        0 => Ok(None),
        s if s > MAX_STOP_TIMEOUT_SECONDS => Err(InvalidArgument::new(
            "timeout_seconds",
            format!("{s} exceeds the maximum of {MAX_STOP_TIMEOUT_SECONDS}"),
        )),
        s => Ok(Some(std::time::Duration::from_secs(s.into()))),
    }
}

/// Parses a `segment_id` field.
pub fn segment_id(value: &str) -> Result<SegmentId, InvalidArgument> {
    SegmentId::parse(value)
}

/// Parses an optional `cluster_id` filter (empty: none).
pub fn cluster_filter(value: &str) -> Result<Option<ClusterId>, InvalidArgument> {
    if value.is_empty() {
        Ok(None)
    } else {
        ClusterId::parse(value).map(Some)
    }
}

impl From<SegmentState> for pb::SegmentState {
    fn from(s: SegmentState) -> Self {
        match s {
            SegmentState::Provisioning => pb::SegmentState::Provisioning,
            SegmentState::Running => pb::SegmentState::Running,
            SegmentState::Stopped => pb::SegmentState::Stopped,
            SegmentState::Failed => pb::SegmentState::Failed,
            SegmentState::Deleting => pb::SegmentState::Deleting,
        }
    }
}

impl From<Segment> for pb::Segment {
    fn from(s: Segment) -> Self {
        let r = s.record;
        // Segments of Docker images carry their cluster's CA.
        let docker_endpoint = match &r.request.ca_cert_pem {
            Some(_) => format!(
                "tcp://{}:{}",
                r.address,
                segment_policy::front::DOCKER_TLS_PORT
            ),
            None => String::new(),
        };
        pb::Segment {
            segment_id: r.request.id.to_string(),
            cluster_id: r.request.cluster.to_string(),
            state: pb::SegmentState::from(s.state) as i32,
            public_ipv4: r.address.to_string(),
            flavor: Some(pb::Flavor {
                memory_mib: r.request.flavor.memory_mib,
                vcpus: r.request.flavor.vcpus,
                disk_gib: r.request.flavor.disk_gib,
                pids: r.request.flavor.pids,
                network_mbit: r.request.flavor.network_mbit,
            }),
            disk: s.disk.map(|d| pb::DiskUsage {
                used_bytes: d.used_bytes,
                limit_bytes: d.limit_bytes,
            }),
            image: r.request.image.to_string(),
            labels: r.request.labels.into_iter().collect(),
            created_at: Some(crate::proto::timestamp(r.created_at)),
            state_reason: s.reason,
            docker_endpoint,
            // Only GetSegment with include_ca_cert repeats the CA itself.
            ca_cert_pem: String::new(),
            ca_cert_sha256: r
                .request
                .ca_cert_pem
                .as_deref()
                .and_then(crate::certs::pem_fingerprint)
                .unwrap_or_default(),
            server_cert_not_after: r.server_cert_not_after.map(crate::proto::timestamp),
            restarts: r.restarts,
            swarm: r.swarm.map(Into::into),
        }
    }
}
