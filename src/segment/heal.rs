//! Self-healing: a segment that should run but whose init died (it crashed,
//! the OOM killer took libvirt's controller) is started again, through the
//! same [`super::boot`] as every start (port, start, cgroup hand-over,
//! destroy on failure), with a bounded exponential backoff. Every restart is
//! counted in the segment's record, so GetSegment, the events and the
//! reports show it and it survives agent restarts.

use super::{SegmentManager, registry::Entry};
use crate::model::{Desired, SegmentId};
use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tracing::{info, warn};

/// The first wait after a segment is found dead.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait between two restarts of one segment.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// A segment that ran this long since its last restart starts over at
/// [`FIRST_BACKOFF`] when it dies again.
pub const STABLE_AFTER: Duration = Duration::from_secs(600);

/// One segment's restart history in this agent process.
#[derive(Debug, Clone, Copy)]
struct Attempts {
    /// Restarts in a row without a stable run in between.
    in_a_row: u32,
    /// Not before then.
    next: Instant,
    /// The last restart.
    last: Instant,
}

/// Restart bookkeeping, shared by the observer's passes.
#[derive(Debug, Default)]
pub struct Healer {
    attempts: Mutex<HashMap<SegmentId, Attempts>>,
}

/// The wait before restart number `in_a_row + 1`: doubling, bounded.
pub fn backoff(in_a_row: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1u32 << in_a_row.min(16))
        .min(MAX_BACKOFF)
}

impl Healer {
    /// Whether a dead segment may be restarted now; books the attempt.
    fn due(&self, id: &SegmentId, now: Instant) -> bool {
        let mut table = self.attempts.lock().expect("healer lock");
        let a = table.entry(id.clone()).or_insert(Attempts {
            in_a_row: 0,
            next: now,
            last: now - STABLE_AFTER,
        });
        if now < a.next {
            return false;
        }
        if now.duration_since(a.last) >= STABLE_AFTER {
            a.in_a_row = 0;
        }
        a.next = now + backoff(a.in_a_row);
        a.in_a_row += 1;
        a.last = now;
        true
    }

    /// Forgets segments that are gone.
    fn retain(&self, present: &HashSet<SegmentId>) {
        let mut table = self.attempts.lock().expect("healer lock");
        table.retain(|id, _| present.contains(id));
    }
}

impl SegmentManager {
    /// One pass over the agent's view (no libvirt call): restarts (in the
    /// background) every segment that should run, is in no operation and
    /// whose domain was seen stopped, when its backoff allows.
    pub async fn heal(self: &Arc<Self>) -> Result<(), super::Error> {
        let entries = self.registry.all();
        let present = entries
            .iter()
            .map(|e| e.record.request.id.clone())
            .collect();
        self.healer.retain(&present);
        let now = Instant::now();
        for entry in entries.into_iter().filter(|e| self.is_dead(e)) {
            let id = entry.record.request.id.clone();
            if self.healer.due(&id, now) {
                let manager = self.clone();
                tokio::spawn(async move { manager.restart_dead(&id).await });
            }
        }
        Ok(())
    }

    fn is_dead(&self, e: &Entry) -> bool {
        e.op.is_none()
            && e.record.desired == Desired::Running
            && self.running_of(e) == Some(false)
            && !self.locks.busy(&e.record.request.id)
    }

    /// Starts a dead segment again under its lock, counts the restart and
    /// waits for its Docker.
    async fn restart_dead(&self, id: &SegmentId) {
        let _guard = self.locks.lock(id).await;
        let Some(entry) = self.registry.get(id) else {
            return;
        };
        let still_dead = entry.op.is_none()
            && entry.record.desired == Desired::Running
            && matches!(self.domain_running(id).await, Ok(false));
        if !still_dead {
            return;
        }
        // Watchers see it die (FAILED) before it comes back.
        self.announce(id).await;
        let mut record = entry.record;
        record.restarts += 1;
        warn!(segment_id = %id, restarts = record.restarts, "segment's init died; restarting it");
        match self.start_again(&record).await {
            Ok(docker) => {
                record.failure = None;
                if let Err(e) = self.persist(record.clone()).await {
                    warn!(segment_id = %id, error = %e, "cannot persist the restart count");
                    self.registry.update(id, |e| e.record = record.clone());
                }
                info!(segment_id = %id, restarts = record.restarts, "segment restarted");
                if docker {
                    self.await_docker(&record).await;
                }
            }
            Err(e) => {
                let reason = format!(
                    "restart {} after its init died failed: {e}",
                    record.restarts
                );
                self.registry
                    .update(id, |e| e.record.restarts = record.restarts);
                self.set_failure(id, Some(reason)).await;
            }
        }
        self.announce(id).await;
    }

    /// Remounts the segment's filesystems and boots it; returns whether it
    /// runs Docker.
    async fn start_again(
        &self,
        record: &crate::model::SegmentRecord,
    ) -> Result<bool, super::Error> {
        self.settings.confinement.require()?;
        self.settings
            .filtering
            .require()
            .map_err(super::Error::FailedPrecondition)?;
        let image = self.resolve_image(&record.request.image).await?;
        let (sid, ids, docker) = (record.request.id.clone(), record.ids, image.docker);
        let disk = record.request.flavor.disk_bytes();
        self.storage_blocking(move |s| s.prepare(&sid, &image, ids, disk))
            .await?;
        self.boot(record, docker).await?;
        Ok(docker)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_bounded() {
        let secs: Vec<u64> = (0..12).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn attempts_wait_out_their_backoff_and_reset_after_a_stable_run() {
        let healer = Healer::default();
        let id = SegmentId::parse("a").unwrap();
        let t0 = Instant::now();
        assert!(healer.due(&id, t0));
        assert!(!healer.due(&id, t0 + Duration::from_millis(500)));
        assert!(healer.due(&id, t0 + Duration::from_secs(1)));
        // Now 2 s.
        assert!(!healer.due(&id, t0 + Duration::from_secs(2)));
        assert!(healer.due(&id, t0 + Duration::from_secs(3)));
        // A long stable run: back to the first backoff.
        let later = t0 + Duration::from_secs(3) + STABLE_AFTER;
        assert!(healer.due(&id, later));
        assert!(healer.due(&id, later + FIRST_BACKOFF));
    }
}
