//! DeleteSegment: the only way a segment goes away. The record is first
//! marked `deleted` in libvirt, so a delete cut off half-way is finished on
//! the next agent start rather than undone.

use super::{Error, SegmentManager, create::ignore_missing, registry::Op};
use crate::model::{Desired, SegmentId};
use tracing::{info, instrument, warn};

impl SegmentManager {
    /// Stops the segment at once and removes its domain, filesystem and
    /// address.
    #[instrument(skip(self), fields(segment_id = %id))]
    pub async fn delete(&self, id: &SegmentId) -> Result<(), Error> {
        let _guard = self.locks.lock(id).await;
        let entry = self
            .registry
            .get(id)
            .ok_or_else(|| Error::NotFound(id.clone()))?;
        self.registry.update(id, |e| e.op = Some(Op::Deleting));
        self.announce(id).await;
        if entry.record.desired != Desired::Deleted {
            self.leave_swarm(&entry.record).await;
        }
        let turn = self.operation_turn().await;
        let result = self.remove_everything(entry.record).await;
        drop(turn);
        match &result {
            Ok(()) => {
                self.registry.remove(id);
                info!("segment deleted");
            }
            Err(e) => {
                warn!(error = %e, "delete incomplete");
                self.registry.update(id, |entry| {
                    entry.op = None;
                    entry.record.desired = Desired::Deleted;
                    entry.record.failure = Some(crate::model::bounded_failure(&e.to_string()));
                });
            }
        }
        self.announce(id).await;
        result
    }

    /// Marks, destroys, undefines and removes; each step is idempotent so
    /// a retry (or recovery) can run it again from the start.
    pub(crate) async fn remove_everything(
        &self,
        mut record: crate::model::SegmentRecord,
    ) -> Result<(), Error> {
        let name = record.request.id.domain_name();
        // Persisted before anything goes: a crash from here on is finished
        // by the next agent start, never undone. Should libvirt refuse the
        // mark, removing the domain still makes the delete stick.
        let marked = match record.desired {
            Desired::Deleted => Ok(()),
            _ => {
                record.desired = Desired::Deleted;
                match self.persist(record.clone()).await {
                    Err(Error::Hypervisor(crate::hypervisor::HvError::NoDomain(_))) => Ok(()),
                    other => other,
                }
            }
        };
        let removed = self
            .blocking(move |hv| {
                hv.destroy(&name).or_else(ignore_missing)?;
                hv.undefine(&name)
            })
            .await;
        if let Err(e) = &marked {
            warn!(error = %e, "could not mark the segment deleted in libvirt");
        }
        removed?;
        self.sweep_cgroups().await;
        self.revoke_port(&record).await;
        let id = record.request.id.clone();
        self.storage_blocking(move |s| s.remove(&id)).await
    }
}
