//! `segment.agent.v1.SegmentAgent`: each handler converts, calls one
//! domain method and converts back.

use super::convert;
use crate::{
    host::HostFacts,
    proto::agent::{self as pb, segment_agent_server::SegmentAgent},
    segment::SegmentManager,
};
use crate::{metrics::rpc::code_name, model::SegmentId};
use std::{sync::Arc, time::Instant};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

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

/// A mutating operation, as the log names it.
struct Op {
    operation: &'static str,
    segment_id: String,
    cluster_id: String,
}

impl Op {
    /// `operation` of segment `id`, whose cluster the registry knows (when
    /// the segment exists).
    fn on(manager: &SegmentManager, operation: &'static str, id: &SegmentId) -> Self {
        Op {
            operation,
            segment_id: id.to_string(),
            cluster_id: manager
                .cluster_of(id)
                .map(|c| c.to_string())
                .unwrap_or_default(),
        }
    }
}

/// Runs a mutating operation to completion even if the caller hangs up:
/// tonic drops a handler whose client went away, and an operation dropped
/// half-way would leave its segment in between. Logs its end with its
/// duration (one line an operator can filter on segment_id or cluster_id).
async fn detached<T, F>(
    manager: &Arc<SegmentManager>,
    what: Op,
    op: impl FnOnce(Arc<SegmentManager>) -> F,
) -> Result<T, Status>
where
    F: Future<Output = Result<T, crate::segment::Error>> + Send + 'static,
    T: Send + 'static,
{
    let run = op(manager.clone());
    tokio::spawn(async move {
        let started = Instant::now();
        let result = run.await.map_err(Status::from);
        let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
        let Op {
            operation,
            segment_id,
            cluster_id,
        } = what;
        match &result {
            Ok(_) => info!(
                operation,
                segment_id, cluster_id, duration_ms, "operation done"
            ),
            Err(s) => warn!(
                operation,
                segment_id,
                cluster_id,
                duration_ms,
                code = code_name(s.code()),
                error = s.message(),
                "operation failed"
            ),
        }
        result
    })
    .await
    .map_err(|e| Status::internal(format!("operation task failed: {e}")))?
}

/// Runs a conversion that parses and verifies certificates (a signature
/// with an RSA-4096 CA takes milliseconds) on the blocking pool, so reads
/// never wait behind it.
async fn off_runtime<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("validation task failed: {e}")))
}

#[tonic::async_trait]
impl SegmentAgent for SegmentAgentService {
    async fn create_segment(
        &self,
        request: Request<pb::CreateSegmentRequest>,
    ) -> Reply<pb::Segment> {
        let (inner, settings) = (request.into_inner(), self.manager.settings().clone());
        let (req, ca) = off_runtime(move || convert::create_request(inner, &settings)).await??;
        let what = Op {
            operation: "create",
            segment_id: req.id.to_string(),
            cluster_id: req.cluster.to_string(),
        };
        let segment = detached(&self.manager, what, move |m| async move {
            m.create(req, ca).await
        })
        .await?;
        Ok(Response::new(segment.into()))
    }

    async fn get_segment(&self, request: Request<pb::GetSegmentRequest>) -> Reply<pb::Segment> {
        let request = request.into_inner();
        let id = convert::segment_id(&request.segment_id)?;
        let segment = self.manager.get(&id).await?;
        let ca = segment.record.request.ca_cert_pem.clone();
        let mut reply: pb::Segment = segment.into();
        if request.include_ca_cert {
            reply.ca_cert_pem = ca.unwrap_or_default();
        }
        Ok(Response::new(reply))
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
        let what = Op::on(&self.manager, "delete", &id);
        detached(
            &self.manager,
            what,
            move |m| async move { m.delete(&id).await },
        )
        .await?;
        Ok(Response::new(pb::DeleteSegmentResponse {}))
    }

    async fn start_segment(&self, request: Request<pb::StartSegmentRequest>) -> Reply<pb::Segment> {
        let id = convert::segment_id(&request.into_inner().segment_id)?;
        let what = Op::on(&self.manager, "start", &id);
        let segment = detached(
            &self.manager,
            what,
            move |m| async move { m.start(&id).await },
        )
        .await?;
        Ok(Response::new(segment.into()))
    }

    async fn stop_segment(&self, request: Request<pb::StopSegmentRequest>) -> Reply<pb::Segment> {
        let req = request.into_inner();
        let id = convert::segment_id(&req.segment_id)?;
        let timeout = convert::stop_timeout(req.timeout_seconds)?;
        let what = Op::on(&self.manager, "stop", &id);
        let segment = detached(&self.manager, what, move |m| async move {
            m.stop(&id, timeout).await
        })
        .await?;
        Ok(Response::new(segment.into()))
    }

    async fn rebuild_segment(
        &self,
        request: Request<pb::RebuildSegmentRequest>,
    ) -> Reply<pb::Segment> {
        let inner = request.into_inner();
        let (id, ca) = off_runtime(move || convert::rebuild_request(inner)).await??;
        let what = Op::on(&self.manager, "rebuild", &id);
        let segment = detached(&self.manager, what, move |m| async move {
            m.rebuild(&id, ca).await
        })
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

    async fn set_cluster_peers(
        &self,
        request: Request<pb::SetClusterPeersRequest>,
    ) -> Reply<pb::SetClusterPeersResponse> {
        let req = request.into_inner();
        let cluster =
            crate::model::ClusterId::parse(&req.cluster_id).map_err(crate::segment::Error::from)?;
        let what = Op {
            operation: "set_cluster_peers",
            segment_id: String::new(),
            cluster_id: cluster.to_string(),
        };
        let (peers, segments) = detached(&self.manager, what, move |m| async move {
            m.set_cluster_peers(cluster, &req.remote_addresses).await
        })
        .await?;
        Ok(Response::new(pb::SetClusterPeersResponse {
            remote_addresses: peers.iter().map(|p| p.to_string()).collect(),
            segments,
        }))
    }

    async fn get_host(&self, _request: Request<pb::GetHostRequest>) -> Reply<pb::Host> {
        let libvirt_version = self.manager.hypervisor_facts().await?.libvirt;
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
            agent_version: crate::VERSION.into(),
            libvirt_version,
            default_image: self.manager.settings().default_image.to_string(),
            apparmor: self.manager.settings().confinement.describe(),
        }))
    }
}
