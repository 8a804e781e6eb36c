//! Segment state changes, for `WatchEvents`. The hub remembers the last state
//! it published for each segment and publishes only changes, so the lifecycle
//! operations (which report at once) and the periodic observer (which catches
//! what happens behind the agent's back, such as a crashed segment) can both
//! feed it without duplicates.

use super::{Segment, SegmentState};
use crate::model::SegmentId;
use std::{
    collections::HashMap,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};
use tokio::sync::broadcast;

/// What happened to a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// It appeared (being created).
    Created,
    /// It runs.
    Running,
    /// It was stopped on request.
    Stopped,
    /// It is not running although it should, or an operation failed.
    Failed,
    /// It is being deleted.
    Deleting,
    /// It is gone.
    Deleted,
}

impl EventKind {
    fn of(state: SegmentState) -> Self {
        match state {
            SegmentState::Provisioning => EventKind::Created,
            SegmentState::Running => EventKind::Running,
            SegmentState::Stopped => EventKind::Stopped,
            SegmentState::Failed => EventKind::Failed,
            SegmentState::Deleting => EventKind::Deleting,
        }
    }
}

/// One state change.
#[derive(Debug, Clone)]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// The segment as of the event.
    pub segment: Segment,
    /// When the agent saw it.
    pub time: SystemTime,
    /// Position in this agent process's event sequence.
    pub sequence: u64,
}

/// What the hub last published of a segment.
struct Known {
    /// Generation of the observation it came from.
    generation: u64,
    /// The segment, or `None` once it is gone (a tombstone).
    segment: Option<Segment>,
    /// When it was recorded (tombstones are pruned after a while).
    at: Instant,
}

/// How long a tombstone keeps stale observations of a deleted segment out.
const TOMBSTONE_TTL: Duration = Duration::from_secs(60);

/// Fan-out of state changes to every watcher.
///
/// Observations carry a generation taken *before* the state was read:
/// one older than what the hub already published for a segment is stale
/// (the periodic observer's list raced an operation) and is dropped, so a
/// watcher never sees a segment go back in time or reappear after DELETED.
pub struct EventHub {
    tx: broadcast::Sender<Event>,
    last: Mutex<HashMap<SegmentId, Known>>,
    generation: AtomicU64,
    sequence: AtomicU64,
}

impl Default for EventHub {
    fn default() -> Self {
        Self::new(1024)
    }
}

impl EventHub {
    /// A hub whose watchers may fall `capacity` events behind before they
    /// are resynchronised.
    pub fn new(capacity: usize) -> Self {
        Self {
            tx: broadcast::channel(capacity).0,
            last: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            sequence: AtomicU64::new(0),
        }
    }

    /// Receives every event published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    /// A new generation; take it before reading the state to observe.
    pub fn generation(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Publishes the segment's state if it differs from the last published
    /// and the observation is not stale. Returns whether it did.
    pub fn observe(&self, segment: &Segment, generation: u64) -> bool {
        let id = segment.record.request.id.clone();
        let mut last = self.last.lock().expect("event hub lock");
        let previous = last.get(&id);
        if previous.is_some_and(|k| generation < k.generation) {
            return false;
        }
        let changed = previous.and_then(|k| k.segment.as_ref()).is_none_or(|s| {
            s.state != segment.state || s.record.restarts != segment.record.restarts
        });
        last.insert(
            id,
            Known {
                generation,
                segment: Some(segment.clone()),
                at: Instant::now(),
            },
        );
        if changed {
            self.publish(EventKind::of(segment.state), segment.clone());
        }
        changed
    }

    /// Publishes that a segment is gone, as it was last seen (if it was
    /// published and the observation is not stale).
    pub fn removed(&self, id: &SegmentId, generation: u64) {
        let mut last = self.last.lock().expect("event hub lock");
        last.retain(|_, k| k.segment.is_some() || k.at.elapsed() < TOMBSTONE_TTL);
        let Some(known) = last.get_mut(id) else {
            return;
        };
        if generation < known.generation {
            return;
        }
        known.generation = generation;
        known.at = Instant::now();
        if let Some(segment) = known.segment.take() {
            self.publish(EventKind::Deleted, segment);
        }
    }

    /// Segments the hub shows as present and that are not in `present`.
    pub fn missing(&self, present: &[SegmentId]) -> Vec<SegmentId> {
        let last = self.last.lock().expect("event hub lock");
        last.iter()
            .filter(|(id, k)| k.segment.is_some() && !present.contains(id))
            .map(|(id, _)| id.clone())
            .collect()
    }

    fn publish(&self, kind: EventKind, segment: Segment) {
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed) + 1;
        // No watcher is fine: the event is simply not wanted.
        let _ = self.tx.send(Event {
            kind,
            segment,
            time: SystemTime::now(),
            sequence,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::metadata::tests::sample_record;

    fn seg(state: SegmentState) -> Segment {
        Segment {
            record: sample_record(),
            state,
            reason: String::new(),
            disk: None,
        }
    }

    #[test]
    fn publishes_changes_only_in_order() {
        let hub = EventHub::new(16);
        let mut rx = hub.subscribe();
        let g = |hub: &EventHub| hub.generation();
        assert!(hub.observe(&seg(SegmentState::Provisioning), g(&hub)));
        assert!(hub.observe(&seg(SegmentState::Running), g(&hub)));
        assert!(
            !hub.observe(&seg(SegmentState::Running), g(&hub)),
            "no change, no event"
        );
        let id = sample_record().request.id;
        hub.removed(&id, g(&hub));
        hub.removed(&id, g(&hub));
        let kinds: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|e| (e.kind, e.sequence))
            .collect();
        assert_eq!(
            kinds,
            [
                (EventKind::Created, 1),
                (EventKind::Running, 2),
                (EventKind::Deleted, 3)
            ]
        );
    }

    #[test]
    fn stale_observations_are_dropped() {
        let hub = EventHub::new(16);
        let mut rx = hub.subscribe();
        // The observer reads the state (generation 1), an operation then
        // reads and publishes a newer one (2), the observer publishes late.
        let (observer, op) = (hub.generation(), hub.generation());
        assert!(hub.observe(&seg(SegmentState::Stopped), op));
        assert!(
            !hub.observe(&seg(SegmentState::Running), observer),
            "stale: dropped"
        );
        // Deleted, then a stale observation of the live segment: no ghost.
        let stale = hub.generation();
        hub.removed(&sample_record().request.id, hub.generation());
        assert!(!hub.observe(&seg(SegmentState::Running), stale));
        assert!(hub.missing(&[]).is_empty());
        // A later create of the same id is news again.
        assert!(hub.observe(&seg(SegmentState::Provisioning), hub.generation()));
        let kinds: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|e| e.kind)
            .collect();
        assert_eq!(
            kinds,
            [EventKind::Stopped, EventKind::Deleted, EventKind::Created]
        );
    }
}
