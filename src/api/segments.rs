//! `segment.agent.v1.SegmentAgent`: each handler converts, calls one
//! domain method and converts back.

use super::convert;
use crate::{
    host::HostFacts,
    proto::agent::{self as pb, segment_agent_server::SegmentAgent},
    segment::SegmentManager,
};
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The agent's gRPC service.
pub struct SegmentAgentService {
    manager: Arc<SegmentManager>,
    host: HostFacts,
}

impl SegmentAgentService {
    /// A service over `manager` on the host described by `host`.
    pub fn new(manager: Arc<SegmentManager>, host: HostFacts) -> Self {
        Self { manager, host }
    }
}

type Reply<T> = Result<Response<T>, Status>;

/// Runs a mutating operation to completion even if the caller hangs up:
/// tonic drops a handler whose client went away, and an operation dropped
/// half-way would leave its segment in between.
async fn detached<T, F>(
    manager: &Arc<SegmentManager>,
    op: impl FnOnce(Arc<SegmentManager>) -> F,
) -> Result<T, Status>
where
    F: Future<Output = Result<T, crate::segment::Error>> + Send + 'static,
    T: Send + 'static,
{
    tokio::spawn(op(manager.clone()))
        .await
        .map_err(|e| Status::internal(format!("operation task failed: {e}")))?
        .map_err(Status::from)
}

#[tonic::async_trait]
impl SegmentAgent for SegmentAgentService {
    async fn create_segment(
        &self,
        request: Request<pb::CreateSegmentRequest>,
    ) -> Reply<pb::Segment> {
        let (req, ca) = convert::create_request(request.into_inner(), self.manager.settings())?;
        let segment = detached(
            &self.manager,
            move |m| async move { m.create(req, ca).await },
        )
        .await?;
        Ok(Response::new(segment.into()))
    }

    async fn get_segment(&self, request: Request<pb::GetSegmentRequest>) -> Reply<pb::Segment> {
        let id = convert::segment_id(&request.into_inner().segment_id)?;
        Ok(Response::new(self.manager.get(&id).await?.into()))
    }

    async fn list_segments(
        &self,
        request: Request<pb::ListSegmentsRequest>,
    ) -> Reply<pb::ListSegmentsResponse> {
        let cluster = convert::cluster_filter(&request.into_inner().cluster_id)?;
        let segments = self.manager.list(cluster.as_ref()).await?;
        Ok(Response::new(pb::ListSegmentsResponse {
            segments: segments.into_iter().map(Into::into).collect(),
        }))
    }

    async fn delete_segment(
        &self,
        request: Request<pb::DeleteSegmentRequest>,
    ) -> Reply<pb::DeleteSegmentResponse> {
        let id = convert::segment_id(&request.into_inner().segment_id)?;
        detached(&self.manager, move |m| async move { m.delete(&id).await }).await?;
        Ok(Response::new(pb::DeleteSegmentResponse {}))
    }

    async fn start_segment(&self, request: Request<pb::StartSegmentRequest>) -> Reply<pb::Segment> {
        let id = convert::segment_id(&request.into_inner().segment_id)?;
        let segment = detached(&self.manager, move |m| async move { m.start(&id).await }).await?;
        Ok(Response::new(segment.into()))
    }

    async fn stop_segment(&self, request: Request<pb::StopSegmentRequest>) -> Reply<pb::Segment> {
        let req = request.into_inner();
        let id = convert::segment_id(&req.segment_id)?;
        let timeout = convert::stop_timeout(req.timeout_seconds)?;
        let segment = detached(
            &self.manager,
            move |m| async move { m.stop(&id, timeout).await },
        )
        .await?;
        Ok(Response::new(segment.into()))
    }

    async fn rebuild_segment(
        &self,
        request: Request<pb::RebuildSegmentRequest>,
    ) -> Reply<pb::Segment> {
        let (id, ca) = convert::rebuild_request(request.into_inner())?;
        let segment = detached(
            &self.manager,
            move |m| async move { m.rebuild(&id, ca).await },
        )
        .await?;
        Ok(Response::new(segment.into()))
    }

    type WatchEventsStream = super::events::EventStream;

    async fn watch_events(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Reply<Self::WatchEventsStream> {
        let cluster = convert::cluster_filter(&request.into_inner().cluster_id)?;
        Ok(Response::new(super::events::watch(
            self.manager.clone(),
            cluster,
        )))
    }

    async fn get_host(&self, _request: Request<pb::GetHostRequest>) -> Reply<pb::Host> {
        let libvirt_version = self.manager.hypervisor_version().await?.libvirt;
        let (usage, capacity) = self.manager.usage();
        Ok(Response::new(pb::Host {
            host_id: self.host.host_id.clone(),
            cpus: self.host.cpus,
            memory_mib: self.host.memory_mib,
            segment_capacity: capacity.max_segments,
            segments_used: usage.segments,
            memory_allocatable_mib: capacity.allocatable_memory_mib,
            memory_allocated_mib: usage.memory_mib,
            address_pool_size: usage.pool_size,
            address_pool_free: usage.pool_free,
            agent_version: env!("CARGO_PKG_VERSION").into(),
            libvirt_version,
            default_image: self.manager.settings().default_image.to_string(),
            apparmor: self.manager.settings().confinement.describe(),
        }))
    }
}
