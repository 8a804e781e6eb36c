//! The observed state of a segment, derived from what the agent asked for
//! (the record's desired state, the operation in flight) and whether its
//! domain runs (as the agent last saw it: [`super::view`]). Nothing here is
//! stored: it is computed on read.

use super::registry::{Entry, Op};
use crate::model::{Desired, SegmentRecord};

/// Lifecycle state as the API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentState {
    /// Being created.
    Provisioning,
    /// Running.
    Running,
    /// Stopped on request.
    Stopped,
    /// Not running although it should be, or its last operation failed.
    Failed,
    /// Being deleted (or a delete is pending completion).
    Deleting,
}

/// A segment as the API returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// The persisted record.
    pub record: SegmentRecord,
    /// Observed state.
    pub state: SegmentState,
    /// Why, when the state needs explaining.
    pub reason: String,
    /// Disk use and limit (`None`: no quota, or not readable now).
    pub disk: Option<crate::quota::DiskUsage>,
}

impl Segment {
    /// Derives the state; `running` is `None` when libvirt cannot be asked.
    pub fn observe(entry: &Entry, running: Option<bool>) -> Self {
        let (state, reason) = derive(entry, running);
        Segment {
            record: entry.record.clone(),
            state,
            reason,
            disk: None,
        }
    }
}

fn derive(entry: &Entry, running: Option<bool>) -> (SegmentState, String) {
    use SegmentState::*;
    match entry.op {
        Some(Op::Creating) => return (Provisioning, String::new()),
        Some(Op::Deleting) => return (Deleting, String::new()),
        None => {}
    }
    if entry.record.desired == Desired::Deleted {
        let why = entry.record.failure.clone().unwrap_or_default();
        return (
            Deleting,
            format!("delete incomplete, retry DeleteSegment: {why}"),
        );
    }
    if let Some(f) = &entry.record.failure {
        return (Failed, f.clone());
    }
    match (running, entry.record.desired) {
        (None, _) => (Failed, "state unknown: libvirtd is unavailable".into()),
        (Some(true), _) => (Running, String::new()),
        (Some(false), Desired::Stopped) => (Stopped, String::new()),
        (Some(false), _) => (
            Failed,
            "segment is not running although it should be".into(),
        ),
    }
}

/// Guards: which operations a segment's state admits.
impl SegmentState {
    /// StartSegment applies.
    pub fn can_start(self) -> bool {
        matches!(
            self,
            SegmentState::Stopped | SegmentState::Failed | SegmentState::Running
        )
    }

    /// StopSegment applies.
    pub fn can_stop(self) -> bool {
        matches!(
            self,
            SegmentState::Running | SegmentState::Stopped | SegmentState::Failed
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::metadata::tests::sample_record;

    #[test]
    fn derived_states() {
        use SegmentState::*;
        let entry = |op, desired, failure: Option<&str>| {
            let mut record = sample_record();
            record.desired = desired;
            record.failure = failure.map(str::to_owned);
            Entry {
                record,
                op,
                seen: Default::default(),
            }
        };
        let cases = [
            (
                entry(Some(Op::Creating), Desired::Running, None),
                Some(false),
                Provisioning,
            ),
            (
                entry(Some(Op::Deleting), Desired::Deleted, None),
                Some(true),
                Deleting,
            ),
            (
                entry(None, Desired::Deleted, Some("x")),
                Some(false),
                Deleting,
            ),
            (entry(None, Desired::Running, None), Some(true), Running),
            (entry(None, Desired::Running, None), Some(false), Failed),
            (entry(None, Desired::Stopped, None), Some(false), Stopped),
            (
                entry(None, Desired::Running, Some("boom")),
                Some(true),
                Failed,
            ),
            (entry(None, Desired::Running, None), None, Failed),
        ];
        for (e, running, want) in cases {
            assert_eq!(
                Segment::observe(&e, running).state,
                want,
                "{:?} {running:?}",
                e.op
            );
        }
    }
}
