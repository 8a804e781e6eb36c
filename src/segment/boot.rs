//! Starting a segment's domain: the bridge filter allows its port first
//! ([`super::ports`]: no frame of it passes unfiltered), libvirt starts it,
//! then the agent takes the
//! segment's cgroups in hand ([`crate::cgroups`]: every process placed,
//! `pids.max`, the containers' capped cgroup, delegation) before anything
//! of the customer can run: a Docker segment's supervisor starts no daemon
//! until the hand-over. A segment whose cgroups cannot be set up does not
//! keep running (fail closed: its process limit would be missing).

use super::{Error, SegmentManager};
use crate::cgroups::SegmentLimits;
use crate::model::SegmentRecord;
use tracing::warn;

impl SegmentManager {
    /// Allows the segment's port, starts the domain of `record` and applies
    /// its cgroup limits; on a failure of the latter the domain is stopped
    /// again.
    pub(crate) async fn boot(&self, record: &SegmentRecord, docker: bool) -> Result<(), Error> {
        self.allow_port(record).await?;
        let id = &record.request.id;
        let (name, mark) = (id.domain_name(), self.mark());
        let n = name.clone();
        self.blocking(move |hv| hv.start(&n)).await?;
        self.saw(id, true, mark);
        if let Err(e) = self.take_in_hand(record, docker).await {
            warn!(error = %e, "cgroup set-up failed; stopping the segment again");
            let mark = self.mark();
            if self.blocking(move |hv| hv.destroy(&name)).await.is_ok() {
                self.saw(id, false, mark);
            }
            return Err(e);
        }
        Ok(())
    }

    /// Removes leftovers of stopped segments' cgroups, off the runtime.
    pub(crate) async fn sweep_cgroups(&self) {
        let cgroups = self.cgroups.clone();
        let _ = self.work.run(move || cgroups.sweep_stopped()).await;
    }

    /// The limits of a segment inside its domain's cgroup.
    pub(crate) fn limits(&self, record: &SegmentRecord, docker: bool) -> SegmentLimits {
        let iso = &self.settings.isolation;
        let memory = u64::from(record.request.flavor.memory_mib) << 20;
        let reserve = (u64::from(iso.management_memory_mib) << 20).min(memory / 4);
        SegmentLimits {
            pids_max: record.request.flavor.pids,
            workload_memory_bytes: docker.then(|| memory.saturating_sub(reserve)),
            owner: record.ids.host_first,
        }
    }

    async fn take_in_hand(&self, record: &SegmentRecord, docker: bool) -> Result<(), Error> {
        let name = record.request.id.domain_name();
        let pid = self.blocking(move |hv| hv.init_pid(&name)).await?;
        let limits = self.limits(record, docker);
        let cgroups = self.cgroups.clone();
        self.work
            .run(move || cgroups.take_in_hand(pid, &limits))
            .await
            .map_err(|e| Error::Internal(format!("cgroup task: {e}")))?
            .map_err(|e| Error::Internal(format!("setting up the segment's cgroups: {e}")))
    }
}
