//! Segment state changes, for `WatchEvents`. The hub remembers the last state
//! it published for each segment and publishes only changes, so the lifecycle
//! operations (which report at once) and the periodic observer (which catches
//! what happens behind the agent's back, such as a crashed segment) can both
//! feed it without duplicates.

use crate::segment::{Segment, SegmentState, spec::SegmentId};
use std::{
    collections::HashMap,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::SystemTime,
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

/// Fan-out of state changes to every watcher.
pub struct EventHub {
    tx: broadcast::Sender<Event>,
    last: Mutex<HashMap<SegmentId, Segment>>,
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
            sequence: AtomicU64::new(0),
        }
    }

    /// Receives every event published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    /// Publishes the segment's state if it differs from the last published.
    /// Returns whether it did.
    pub fn observe(&self, segment: &Segment) -> bool {
        let id = segment.record.request.id.clone();
        let mut last = self.last.lock().expect("event hub lock");
        if last.get(&id).map(|s| s.state) == Some(segment.state) {
            return false;
        }
        last.insert(id, segment.clone());
        self.publish(EventKind::of(segment.state), segment.clone());
        true
    }

    /// Publishes that a segment is gone, as it was last seen (if it was
    /// ever published).
    pub fn removed(&self, id: &SegmentId) {
        let last_seen = self.last.lock().expect("event hub lock").remove(id);
        if let Some(segment) = last_seen {
            self.publish(EventKind::Deleted, segment);
        }
    }

    /// Segments the hub has published and that are not in `present`.
    pub fn missing(&self, present: &[SegmentId]) -> Vec<SegmentId> {
        let last = self.last.lock().expect("event hub lock");
        last.keys()
            .filter(|id| !present.contains(id))
            .cloned()
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
        }
    }

    #[test]
    fn publishes_changes_only_in_order() {
        let hub = EventHub::new(16);
        let mut rx = hub.subscribe();
        assert!(hub.observe(&seg(SegmentState::Provisioning)));
        assert!(hub.observe(&seg(SegmentState::Running)));
        assert!(
            !hub.observe(&seg(SegmentState::Running)),
            "no change, no event"
        );
        let id = sample_record().request.id;
        hub.removed(&id);
        hub.removed(&id);
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
}
