//! StartSegment and StopSegment. The wanted state is persisted in the
//! domain's metadata first, so an agent restart honours it.

use super::{
    Error, Segment, SegmentManager, SegmentState,
    spec::{Desired, SegmentId},
};
use std::time::{Duration, Instant};
use tracing::{info, instrument, warn};

/// How often a stopping segment is polled.
const STOP_POLL: Duration = Duration::from_millis(50);

impl SegmentManager {
    /// Starts a stopped (or failed) segment; a running one is left alone.
    #[instrument(skip(self), fields(segment_id = %id))]
    pub async fn start(&self, id: &SegmentId) -> Result<Segment, Error> {
        let _guard = self.locks.lock(id).await;
        let current = self.get(id).await?;
        if !current.state.can_start() {
            return Err(Error::FailedPrecondition(format!(
                "segment {id} cannot start while {:?}",
                current.state
            )));
        }
        self.settings.confinement.require()?;
        let image = self.images.resolve(&current.record.request.image)?;
        let sid = id.clone();
        self.storage_blocking(move |s| s.prepare(&sid, &image))
            .await?;
        if current.record.desired != Desired::Running {
            let mut record = current.record.clone();
            record.desired = Desired::Running;
            self.persist(record).await?;
        }
        self.registry.update(id, |e| e.failure = None);
        if current.state != SegmentState::Running {
            let name = id.domain_name();
            self.blocking(move |hv| hv.start(&name)).await?;
            info!("segment started");
        }
        self.announce(id).await;
        self.get(id).await
    }

    /// Stops a segment: SIGTERM to its init, then a forced stop once
    /// `timeout` (or the host default) has passed.
    #[instrument(skip(self), fields(segment_id = %id))]
    pub async fn stop(&self, id: &SegmentId, timeout: Option<Duration>) -> Result<Segment, Error> {
        let _guard = self.locks.lock(id).await;
        let current = self.get(id).await?;
        if !current.state.can_stop() {
            return Err(Error::FailedPrecondition(format!(
                "segment {id} cannot stop while {:?}",
                current.state
            )));
        }
        if current.record.desired != Desired::Stopped {
            let mut record = current.record.clone();
            record.desired = Desired::Stopped;
            self.persist(record).await?;
        }
        self.registry.update(id, |e| e.failure = None);
        if current.state == SegmentState::Running {
            let timeout = timeout.unwrap_or(self.settings.stop_timeout);
            self.stop_domain(id, timeout).await?;
        }
        self.announce(id).await;
        self.get(id).await
    }

    async fn stop_domain(&self, id: &SegmentId, timeout: Duration) -> Result<(), Error> {
        let name = id.domain_name();
        let n = name.clone();
        self.blocking(move |hv| hv.shutdown(&n)).await?;
        let deadline = Instant::now() + timeout;
        loop {
            let n = name.clone();
            if !self.blocking(move |hv| hv.is_running(&n)).await? {
                info!("segment stopped gracefully");
                return Ok(());
            }
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(STOP_POLL).await;
        }
        warn!(?timeout, "graceful stop timed out; forcing it");
        self.blocking(move |hv| hv.destroy(&name)).await
    }
}
