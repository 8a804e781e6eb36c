//! Agent start: rebuild the registry and the address pool from libvirt,
//! finish what a crash cut off, and leave every healthy segment untouched.
//!
//! - a `seg-` domain without the agent's record is not ours: left alone;
//! - a record marked `deleted` (a delete, or the undo of a failed create):
//!   the delete is finished;
//! - a record marked `stopped` whose domain runs (a cut-off stop): stopped;
//! - a record that should run but does not (cut-off create, host reboot):
//!   its filesystem is mounted again and it is started, once the bridge
//!   filter allows every registered segment's port (after a host reboot the
//!   kernel has no rules left);
//! - a segment directory without a domain (create cut off before define,
//!   delete cut off after undefine): removed.

use super::{Error, SegmentManager};
use crate::hypervisor::DomainEntry;
use crate::model::{Desired, SegmentId, SegmentRecord};
use std::collections::HashSet;
use tracing::{error, info, instrument, warn};

/// The graceful part of a stop that recovery finishes.
const RECOVERY_STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// What recovery did, for the log and for tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments found in libvirt and registered.
    pub adopted: usize,
    /// Segments that should have run and were started.
    pub started: usize,
    /// Half-done deletes finished.
    pub deletes_finished: usize,
    /// Stops cut off by the agent's end, finished.
    pub stops_finished: usize,
    /// Orphan segment directories removed.
    pub orphans_removed: usize,
    /// `seg-` domains without the agent's record, left alone.
    pub foreign: usize,
}

impl SegmentManager {
    /// Rebuilds the agent's view from libvirt; run once before serving.
    #[instrument(skip(self))]
    pub async fn recover(&self) -> Result<RecoveryReport, Error> {
        let started = std::time::Instant::now();
        let mut report = RecoveryReport::default();
        let mark = self.mark();
        let domains = self.blocking(|hv| hv.list_segments()).await?;
        // Every seg- domain keeps its directory, adopted or not: a domain
        // the agent leaves alone (address outside the pool, unreadable
        // record) may still be running on it.
        let known: HashSet<_> = domains
            .iter()
            .filter_map(|d| SegmentId::from_domain_name(&d.name))
            .collect();
        let mut pending = Vec::new();
        for entry in domains {
            if let Some((id, running)) = self.adopt(entry, mark, &mut report) {
                pending.push((id, running));
            }
        }
        let filtered = self.filter_recovered().await;
        for (id, running) in pending {
            self.settle(&id, running, filtered.as_ref().err(), &mut report)
                .await;
        }
        let dirs = self.storage_blocking(|s| s.list()).await?;
        for id in dirs.into_iter().filter(|id| !known.contains(id)) {
            warn!(segment_id = %id, "removing orphan segment directory (no domain)");
            let orphan = id.clone();
            match self.storage_blocking(move |s| s.remove(&orphan)).await {
                Ok(()) => report.orphans_removed += 1,
                Err(e) => error!(segment_id = %id, error = %e, "cannot remove orphan directory"),
            }
        }
        self.observe_all().await?;
        let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
        info!(operation = "recover", duration_ms, ?report, "recovery done");
        Ok(report)
    }

    /// Registers one domain (listed when `mark` events had arrived);
    /// returns its id and whether it runs.
    fn adopt(
        &self,
        entry: DomainEntry,
        mark: u64,
        report: &mut RecoveryReport,
    ) -> Option<(crate::model::SegmentId, bool)> {
        let mut record = match entry.record {
            Ok(r) if r.request.id.domain_name() == entry.name => r,
            Ok(_) | Err(_) => {
                warn!(domain = %entry.name, "domain has no segment-agent record; leaving it alone");
                report.foreign += 1;
                return None;
            }
        };
        let id = record.request.id.clone();
        self.restore_swarm_secrets(&mut record);
        let seen = super::registry::Seen {
            running: Some(entry.running),
            as_of: mark,
        };
        if let Err(reason) = self.registry.insert_recovered(record, seen) {
            error!(segment_id = %id, %reason, "cannot adopt segment; leaving it alone");
            report.foreign += 1;
            return None;
        }
        report.adopted += 1;
        Some((id, entry.running))
    }

    /// The join tokens of a swarm node, which libvirt's XML does not hold,
    /// from the segment's host-only directory (a few bytes, once at start).
    fn restore_swarm_secrets(&self, record: &mut SegmentRecord) {
        let Some(spec) = record.request.swarm.as_mut() else {
            return;
        };
        let dir = self.storage.dirs(&record.request.id).agent_tls;
        let Some(secrets) = crate::docker::read_swarm_secrets(&dir) else {
            warn!(segment_id = %record.request.id, "the swarm node's join tokens are missing");
            return;
        };
        spec.join_token = secrets.join_token;
        if let Some(node) = record.swarm.as_mut() {
            node.worker_token = secrets.worker_token;
            node.manager_token = secrets.manager_token;
        }
    }

    /// The rules of every adopted segment's port, before any of them starts.
    async fn filter_recovered(&self) -> Result<(), String> {
        self.settings.filtering.require()?;
        self.refresh_filter()
            .await
            .map_err(|e| crate::errors::error_chain(&e))
    }

    /// Finishes a pending delete or a cut-off stop, or remounts and
    /// restarts a segment that should run (not without the bridge filter:
    /// `unfiltered` says why).
    async fn settle(
        &self,
        id: &SegmentId,
        running: bool,
        unfiltered: Option<&String>,
        report: &mut RecoveryReport,
    ) {
        let Some(entry) = self.registry.get(id) else {
            return;
        };
        match entry.record.desired {
            Desired::Deleted => return self.finish_delete(entry.record, report).await,
            Desired::Stopped if running => return self.finish_stop(id, report).await,
            _ => {}
        }
        let image = match self.resolve_image(&entry.record.request.image).await {
            Ok(i) => i,
            Err(e) => return self.fail(id, e.to_string()).await,
        };
        let (sid, ids, docker) = (id.clone(), entry.record.ids, image.docker);
        let disk = entry.record.request.flavor.disk_bytes();
        if let Err(e) = self
            .storage_blocking(move |s| s.prepare(&sid, &image, ids, disk))
            .await
        {
            return self
                .fail(id, format!("mounting root filesystem: {e}"))
                .await;
        }
        let wants_start = entry.record.desired == Desired::Running && !running;
        if let Some(reason) = unfiltered.filter(|_| running || wants_start) {
            let state = if running {
                "runs unfiltered"
            } else {
                "is not started"
            };
            return self
                .fail(id, format!("the segment {state}: {reason}"))
                .await;
        }
        if wants_start {
            match self.boot(&entry.record, docker).await {
                Ok(()) => {
                    info!(segment_id = %id, "started segment that should run");
                    // What failed was the previous run.
                    self.set_failure(id, None).await;
                    report.started += 1;
                }
                Err(e) => self.fail(id, format!("starting: {e}")).await,
            }
        }
    }

    /// A delete cut off half-way: finished, never undone.
    async fn finish_delete(&self, record: SegmentRecord, report: &mut RecoveryReport) {
        let id = record.request.id.clone();
        match self.remove_everything(record).await {
            Ok(()) => {
                self.registry.remove(&id);
                report.deletes_finished += 1;
            }
            Err(e) => {
                let reason = crate::model::bounded_failure(&format!("finishing delete: {e}"));
                error!(segment_id = %id, %reason, "segment needs attention");
                self.registry
                    .update(&id, |e| e.record.failure = Some(reason));
            }
        }
    }

    /// A stop cut off by the agent's end (`stopped` persisted, the domain
    /// still running): finished, after a short grace, since the graceful
    /// part may already have run and every other segment waits.
    async fn finish_stop(&self, id: &SegmentId, report: &mut RecoveryReport) {
        match self.stop_domain(id, RECOVERY_STOP_GRACE).await {
            Ok(()) => {
                info!(segment_id = %id, "finished a cut-off stop");
                report.stops_finished += 1;
            }
            Err(e) => self.fail(id, format!("finishing stop: {e}")).await,
        }
    }

    async fn fail(&self, id: &SegmentId, reason: String) {
        error!(segment_id = %id, %reason, "segment needs attention");
        self.set_failure(id, Some(reason)).await;
    }
}
