//! The agent's view of its segments' domains: whether each one runs, kept
//! true without asking libvirt on every read. GetSegment, ListSegments,
//! GetHost and the events' snapshots are served from it (and the registry),
//! so they never queue behind the define, start and destroy calls of other
//! segments on libvirt's connection.
//!
//! What feeds it, the newest sighting winning ([`Registry::sighted`]):
//! - each operation's own calls (a start that returned, a stop seen done);
//! - libvirt's domain lifecycle events ([`Hypervisor::watch`]), numbered as
//!   they arrive, which also reveal what happens behind the agent's back (a
//!   crashed init, a `virsh destroy`) at once;
//! - a listing of the running domains ([`SegmentManager::reconcile`]) when
//!   events flow again after libvirtd was away, and every [`SAFETY_POLL`]
//!   in case an event was lost.
//!
//! While libvirtd is unreachable every state reads unknown, as before.
//!
//! [`Registry::sighted`]: super::registry::Registry::sighted
//! [`Hypervisor::watch`]: crate::hypervisor::Hypervisor::watch

use super::{
    Error, SegmentManager,
    registry::{Entry, Sighting},
};
use crate::{
    hypervisor::{HvEvent, HypervisorVersion},
    model::SegmentId,
    quota::DiskUsage,
};
use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
    time::Instant,
};
use tracing::{debug, info};

/// How often the domains are listed even though events flow: the bound
/// on how long a lost event can leave a state wrong.
pub const SAFETY_POLL: Duration = Duration::from_secs(30);

/// How long a segment's disk-use reading is served before it is read
/// again (every listing of 50 segments would read 50 qgroups otherwise).
pub const DISK_TTL: Duration = Duration::from_secs(1);

/// Disk-use readings by segment, with when they were read.
type DiskReadings = HashMap<SegmentId, (Instant, Option<DiskUsage>)>;

/// Event numbering, reachability and the cached hypervisor facts.
#[derive(Debug)]
pub(crate) struct View {
    /// Events received so far; an event's number is its position.
    events: Arc<AtomicU64>,
    /// Whether libvirtd answered the last call (or the event connection
    /// is up).
    reachable: AtomicBool,
    /// libvirt's versions, read once per connection.
    version: Mutex<Option<HypervisorVersion>>,
    disk: Mutex<DiskReadings>,
}

impl Default for View {
    fn default() -> Self {
        Self {
            events: Arc::default(),
            // The agent serves only after a recovery that reached libvirtd.
            reachable: AtomicBool::new(true),
            version: Mutex::default(),
            disk: Mutex::default(),
        }
    }
}

impl View {
    /// What is known of each of `ids`' disk use, and which of them the
    /// caller must read (and wait for): those never read and those read
    /// [`DISK_TTL`] ago or longer. A stale reading being read again is
    /// claimed (its time set to `now`): concurrent readers get it rather
    /// than reading the segment's qgroup again.
    fn claim_disk(&self, ids: &[SegmentId], now: Instant) -> DiskClaim {
        let mut cache = self.disk.lock().expect("view lock");
        let mut claim = DiskClaim::default();
        for id in ids {
            match cache.get_mut(id) {
                Some((at, reading)) if now.duration_since(*at) < DISK_TTL => {
                    claim.known.push(Some(*reading));
                    continue;
                }
                Some((at, _)) => *at = now,
                // Never read: every reader reads it (none would have a
                // reading to serve meanwhile).
                None => {}
            }
            claim.unread.push(id.clone());
            claim.known.push(None);
        }
        claim
    }

    fn store_disk(&self, read: &[(SegmentId, Option<DiskUsage>)]) {
        let now = Instant::now();
        let mut cache = self.disk.lock().expect("view lock");
        // Segments no longer read (deleted) fall out.
        cache.retain(|_, (at, _)| now.duration_since(*at) < DISK_TTL * 4);
        // No reading (no volume yet, no quota) is not kept: the volume of
        // a segment being created appears a moment later.
        let readings = read.iter().filter(|(_, u)| u.is_some());
        cache.extend(readings.map(|(id, u)| (id.clone(), (now, *u))));
    }
}

/// See [`View::claim_disk`].
#[derive(Default)]
struct DiskClaim {
    /// Per id: the reading served (`None`: the caller reads it now).
    known: Vec<Option<Option<DiskUsage>>>,
    unread: Vec<SegmentId>,
}

impl SegmentManager {
    /// The disk use of each segment of `ids` (`None` where unknown: a
    /// failed read is logged, never an error of the listing), at most
    /// [`DISK_TTL`] old: one reader reads a segment's qgroup per period.
    ///
    /// Read on the async runtime, not the blocking pool: a reading is two
    /// sysfs files ([`crate::quota::DiskQuota::usage`]), and during a storm
    /// of creates a read queued behind the blocking pool's own lock (taken
    /// by every create step that goes there) for up to 100 ms.
    pub(crate) async fn disk_usage(&self, ids: Vec<SegmentId>) -> Vec<Option<DiskUsage>> {
        let claim = self.view.claim_disk(&ids, Instant::now());
        if claim.unread.is_empty() {
            return claim.known.into_iter().flatten().collect();
        }
        let read = read_disk(self.storage.as_ref(), claim.unread);
        self.view.store_disk(&read);
        let mut fresh: HashMap<SegmentId, Option<DiskUsage>> = read.into_iter().collect();
        ids.iter()
            .zip(claim.known)
            .map(|(id, k)| k.unwrap_or_else(|| fresh.remove(id).flatten()))
            .collect()
    }

    /// The position in the event sequence before a call: its result is
    /// newer than the events up to here.
    pub(crate) fn mark(&self) -> u64 {
        self.view.events.load(Ordering::SeqCst)
    }

    /// Records what a call that began at `mark` saw of a domain.
    pub(crate) fn saw(&self, id: &SegmentId, running: bool, mark: u64) {
        self.registry.sighted(id, running, Sighting::Call(mark));
    }

    /// Whether the entry's domain runs, `None` when libvirtd is unreachable
    /// (or it was never seen).
    pub(crate) fn running_of(&self, entry: &Entry) -> Option<bool> {
        match self.view.reachable.load(Ordering::SeqCst) {
            true => entry.seen.running,
            false => None,
        }
    }

    /// Notes whether libvirtd answered a call.
    pub(crate) fn answered<T>(&self, outcome: &Result<T, Error>) {
        match outcome {
            Ok(_) => self.view.reachable.store(true, Ordering::SeqCst),
            Err(Error::Unavailable(_)) => self.view.reachable.store(false, Ordering::SeqCst),
            Err(_) => {}
        }
    }

    /// libvirt's versions for GetHost: cached, but `Unavailable` while
    /// libvirtd is unreachable.
    pub async fn hypervisor_facts(&self) -> Result<HypervisorVersion, Error> {
        if !self.view.reachable.load(Ordering::SeqCst) {
            return Err(Error::Unavailable(
                "libvirtd is unavailable: the agent lost its connection".into(),
            ));
        }
        let cached = self.view.version.lock().expect("view lock").clone();
        match cached {
            Some(v) => Ok(v),
            None => self.hypervisor_version().await,
        }
    }

    /// The hypervisor's versions, asked of libvirtd (a liveness probe).
    pub async fn hypervisor_version(&self) -> Result<HypervisorVersion, Error> {
        let v = self.blocking(|hv| hv.version()).await?;
        *self.view.version.lock().expect("view lock") = Some(v.clone());
        Ok(v)
    }

    /// Lists the running domains and takes what is newer than the view;
    /// publishes what changed.
    pub async fn reconcile(&self) -> Result<(), Error> {
        let mark = self.mark();
        let running = self.blocking(|hv| hv.running()).await?;
        for entry in self.registry.all() {
            let id = &entry.record.request.id;
            let runs = running.contains(&id.domain_name());
            self.registry.sighted(id, runs, Sighting::Call(mark));
        }
        self.observe_all().await
    }

    /// Subscribes to the hypervisor's events and applies them for as long
    /// as the returned task runs.
    pub fn follow_hypervisor(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let numbering = self.view.events.clone();
        self.hv.watch(Box::new(move |event| {
            // Numbered on arrival, on libvirt's thread: a call that began
            // before this event is older than it.
            let n = numbering.fetch_add(1, Ordering::SeqCst) + 1;
            let _ = tx.send((n, event));
        }));
        let manager = self.clone();
        tokio::spawn(async move {
            while let Some((n, event)) = rx.recv().await {
                manager.on_event(n, event).await;
            }
        })
    }

    async fn on_event(self: &Arc<Self>, n: u64, event: HvEvent) {
        match event {
            HvEvent::Domain { name, running } => {
                let Some(id) = SegmentId::from_domain_name(&name) else {
                    return;
                };
                debug!(segment_id = %id, running, "libvirt lifecycle event");
                if !self.registry.sighted(&id, running, Sighting::Event(n)) {
                    return;
                }
                // A segment in an operation is announced by the operation.
                if !self.locks.busy(&id) {
                    self.announce(&id).await;
                }
                if !running && let Err(e) = self.heal().await {
                    debug!(error = %e, "healing segments");
                }
            }
            HvEvent::Connected => {
                info!("libvirt events flow; listing the domains for what was missed");
                self.view.reachable.store(true, Ordering::SeqCst);
                if let Err(e) = self.reconcile().await {
                    debug!(error = %e, "reconciling with libvirt");
                }
            }
            HvEvent::Disconnected => {
                self.view.reachable.store(false, Ordering::SeqCst);
                self.view.version.lock().expect("view lock").take();
                let _ = self.observe_all().await;
            }
        }
    }
}

/// Reads the disk use of `ids` (blocks).
fn read_disk(
    storage: &dyn crate::storage::SegmentStorage,
    ids: Vec<SegmentId>,
) -> Vec<(SegmentId, Option<DiskUsage>)> {
    ids.into_iter()
        .map(|id| {
            let u = storage.disk_usage(&id).unwrap_or_else(|e| {
                debug!(segment_id = %id, error = %e, "disk use unreadable");
                None
            });
            (id, u)
        })
        .collect()
}
