//! StartSegment and StopSegment. The wanted state is persisted in the
//! domain's metadata first, so an agent restart honours it.

use super::{Error, Segment, SegmentManager};
use crate::model::{Desired, SegmentId, SegmentRecord};
use std::time::{Duration, Instant};
use tracing::{info, instrument, warn};

/// How often a stopping segment is polled.
const STOP_POLL: Duration = Duration::from_millis(50);
/// How often the graceful stop request is repeated while waiting.
const SHUTDOWN_REPEAT: Duration = Duration::from_secs(1);

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
        self.settings
            .filtering
            .require()
            .map_err(Error::FailedPrecondition)?;
        let image = self.resolve_image(&current.record.request.image).await?;
        let (sid, ids, docker) = (id.clone(), current.record.ids, image.docker);
        let disk = current.record.request.flavor.disk_bytes();
        self.storage_blocking(move |s| s.prepare(&sid, &image, ids, disk))
            .await?;
        self.want(&current.record, Desired::Running).await?;
        // Decided on libvirt's view, not the derived state: a FAILED
        // segment may well be running (its Docker never answered).
        if !self.domain_running(id).await? {
            if let Err(e) = self.boot(&current.record, docker).await {
                self.set_failure(id, Some(format!("starting: {e}"))).await;
                self.announce(id).await;
                return Err(e);
            }
            info!("segment started");
        }
        // Like Create and Rebuild: RUNNING means Docker answers.
        if docker {
            self.await_docker(&current.record).await;
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
        self.want(&current.record, Desired::Stopped).await?;
        if self.domain_running(id).await? {
            let timeout = timeout.unwrap_or(self.settings.stop_timeout);
            self.stop_domain(id, timeout).await?;
            self.sweep_cgroups().await;
        }
        self.announce(id).await;
        self.get(id).await
    }

    /// Persists the state asked for, and that the segment's last failure
    /// is behind it, before acting: a restart of the agent honours it.
    async fn want(&self, record: &SegmentRecord, desired: Desired) -> Result<(), Error> {
        if record.desired == desired && record.failure.is_none() {
            return Ok(());
        }
        let mut record = record.clone();
        record.desired = desired;
        record.failure = None;
        self.persist(record).await
    }

    pub(crate) async fn stop_domain(&self, id: &SegmentId, timeout: Duration) -> Result<(), Error> {
        let name = id.domain_name();
        let deadline = Instant::now() + timeout;
        let mut next_request = Instant::now();
        loop {
            // Ask again every second: an init that has not yet installed its
            // SIGTERM handler (a stop right after a start) ignores the first
            // request, as PID 1 ignores unhandled signals.
            if Instant::now() >= next_request {
                let n = name.clone();
                match self.blocking(move |hv| hv.shutdown(&n)).await {
                    Ok(()) => {}
                    // It stopped between the check and the request.
                    Err(Error::Hypervisor(_)) if !self.domain_running(id).await? => break,
                    Err(e) => return Err(e),
                }
                next_request = Instant::now() + SHUTDOWN_REPEAT;
            }
            if !self.domain_running(id).await? {
                info!("segment stopped gracefully");
                return Ok(());
            }
            if Instant::now() >= deadline {
                warn!(?timeout, "graceful stop timed out; forcing it");
                let mark = self.mark();
                self.blocking(move |hv| hv.destroy(&name)).await?;
                self.saw(id, false, mark);
                return Ok(());
            }
            tokio::time::sleep(STOP_POLL).await;
        }
        info!("segment stopped gracefully");
        Ok(())
    }

    /// Asks libvirt whether the segment's domain runs (operations decide
    /// on libvirt's word, not the view), and updates the view.
    pub(crate) async fn domain_running(&self, id: &SegmentId) -> Result<bool, Error> {
        let (name, mark) = (id.domain_name(), self.mark());
        let running = self.blocking(move |hv| hv.is_running(&name)).await?;
        self.saw(id, running, mark);
        Ok(running)
    }
}
