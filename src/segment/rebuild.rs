//! RebuildSegment: re-initialise the management part of a Docker segment.
//! A new server certificate from the request's CA (the same or a new one),
//! Docker's configuration rewritten, the policy plugin restarted and the
//! mutual-TLS front told to load the new certificates by the segment's own
//! supervisor; dockerd itself is not restarted, so the customer's containers
//! and swarm tasks keep running, and the address and `/var/lib/docker` stay
//! as they are.

use super::{Error, Segment, SegmentManager, SegmentState};
use crate::{certs::ClusterCa, docker, model::SegmentId};
use tracing::{info, instrument};

impl SegmentManager {
    /// Re-certifies and restarts the segment's Docker; returns it once Docker
    /// answers again (FAILED with the reason if it does not in time).
    #[instrument(skip(self, ca), fields(segment_id = %id))]
    pub async fn rebuild(&self, id: &SegmentId, ca: ClusterCa) -> Result<Segment, Error> {
        let _guard = self.locks.lock(id).await;
        let current = self.get(id).await?;
        let image = self.resolve_image(&current.record.request.image).await?;
        if !image.docker {
            return Err(Error::FailedPrecondition(format!(
                "segment {id} runs image {}, which has no Docker to rebuild",
                image.name
            )));
        }
        let name = id.domain_name();
        let running = self.blocking(move |hv| hv.is_running(&name)).await?;
        if current.state == SegmentState::Deleting || !running {
            return Err(Error::FailedPrecondition(format!(
                "segment {id} is {:?} and not running; start it before rebuilding",
                current.state
            )));
        }
        let (sid, ids) = (id.clone(), current.record.ids);
        let disk = current.record.request.flavor.disk_bytes();
        let dirs = self
            .storage_blocking(move |s| s.prepare(&sid, &image, ids, disk))
            .await?;
        let mut record = current.record.clone();
        let ca = std::sync::Arc::new(ca);
        record.request.ca_cert_pem = Some(ca.canonical_cert_pem());
        record.server_cert_not_after = Some(self.certify(&record, &ca, &dirs).await?);
        record.failure = None;
        self.persist(record.clone()).await?;
        let name = id.domain_name();
        let init = self.blocking(move |hv| hv.init_pid(&name)).await?;
        self.work
            .run(move || docker::request_restart(init))
            .await
            .map_err(|e| Error::Internal(format!("signal task: {e}")))?
            .map_err(|e| Error::Internal(format!("asking the segment to restart Docker: {e}")))?;
        info!(init_pid = init, "Docker restart requested");
        // The front takes the new certificates at once; a segment whose
        // daemon.json is an older agent's (dockerd on tcp://, no front) has
        // its dockerd restarted, and the old one may still answer for a
        // moment: wait until the restart is under way.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        if self.await_docker(&record).await.is_some() {
            self.repair_membership(record).await;
        }
        self.announce(id).await;
        self.get(id).await
    }

    /// A swarm node that lost its membership joins again; a failure makes
    /// the segment FAILED with the reason (its Docker still serves).
    async fn repair_membership(&self, mut record: crate::model::SegmentRecord) {
        match self.repair_swarm(&record).await {
            Ok(None) => {}
            Ok(Some(node)) => {
                info!(node_id = %node.node_id, "swarm membership repaired");
                record.swarm = Some(node);
                if let Err(e) = self.persist(record).await {
                    tracing::warn!(error = %e, "cannot persist the repaired swarm node");
                }
            }
            Err(e) => {
                let reason = format!("the swarm membership could not be repaired: {e}");
                self.set_failure(&record.request.id, Some(reason)).await;
            }
        }
    }
}
