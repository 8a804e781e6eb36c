//! Conversions between protobuf messages and domain values.

use crate::{
    proto::agent as pb,
    segment::{
        spec::{
            check_labels, ClusterId, ImageName, InvalidArgument, Labels, SegmentId, SegmentRequest,
        },
        Segment, SegmentState, Settings,
    },
};
use std::time::UNIX_EPOCH;

/// Validates a CreateSegment request and applies the host's defaults.
pub fn create_request(
    req: pb::CreateSegmentRequest,
    settings: &Settings,
) -> Result<SegmentRequest, InvalidArgument> {
    let id = SegmentId::parse(&req.segment_id)?;
    let cluster = ClusterId::parse(&req.cluster_id)?;
    let flavor = req.flavor.unwrap_or_default();
    let flavor = settings.flavor.resolve(flavor.memory_mib, flavor.vcpus)?;
    let image = if req.image.is_empty() {
        settings.default_image.clone()
    } else {
        ImageName::parse(&req.image)?
    };
    let labels: Labels = req.labels.into_iter().collect();
    check_labels(&labels)?;
    Ok(SegmentRequest {
        id,
        cluster,
        flavor,
        image,
        labels,
    })
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
        let since = r.created_at.duration_since(UNIX_EPOCH).unwrap_or_default();
        pb::Segment {
            segment_id: r.request.id.to_string(),
            cluster_id: r.request.cluster.to_string(),
            state: pb::SegmentState::from(s.state) as i32,
            public_ipv4: r.address.to_string(),
            flavor: Some(pb::Flavor {
                memory_mib: r.request.flavor.memory_mib,
                vcpus: r.request.flavor.vcpus,
            }),
            image: r.request.image.to_string(),
            labels: r.request.labels.into_iter().collect(),
            created_at: Some(prost_types::Timestamp {
                seconds: since.as_secs() as i64,
                nanos: since.subsec_nanos() as i32,
            }),
            state_reason: s.reason,
        }
    }
}
