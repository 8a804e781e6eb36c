//! The `WatchEvents` stream: a snapshot of the current segments, then every
//! state change; a watcher that falls behind gets a fresh snapshot instead of
//! a silent gap.

use crate::model::ClusterId;
use crate::{
    proto::agent as pb,
    segment::SegmentManager,
    segment::events::{Event, EventKind},
};
use std::{pin::Pin, sync::Arc, time::SystemTime};
use tokio::sync::{broadcast::error::RecvError, mpsc};
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::Status;

/// The stream type of `WatchEvents`.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<pb::SegmentEvent, Status>> + Send>>;

fn kind(k: EventKind) -> pb::SegmentEventType {
    match k {
        EventKind::Created => pb::SegmentEventType::Created,
        EventKind::Running => pb::SegmentEventType::Running,
        EventKind::Stopped => pb::SegmentEventType::Stopped,
        EventKind::Failed => pb::SegmentEventType::Failed,
        EventKind::Deleting => pb::SegmentEventType::Deleting,
        EventKind::Deleted => pb::SegmentEventType::Deleted,
    }
}

fn message(
    t: pb::SegmentEventType,
    segment: Option<pb::Segment>,
    time: SystemTime,
    sequence: u64,
) -> pb::SegmentEvent {
    pb::SegmentEvent {
        r#type: t as i32,
        segment,
        time: Some(crate::proto::timestamp(time)),
        sequence,
    }
}

/// Starts a watch of `cluster` (or every cluster).
pub fn watch(manager: Arc<SegmentManager>, cluster: Option<ClusterId>) -> EventStream {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        // Subscribe before the snapshot, so nothing falls between the two.
        let mut live = manager.events().subscribe();
        loop {
            if send_snapshot(&manager, cluster.as_ref(), &tx)
                .await
                .is_err()
            {
                return;
            }
            match forward(&mut live, cluster.as_ref(), &tx).await {
                // Skip what it missed: the new snapshot covers it.
                Forward::Resync => live = live.resubscribe(),
                Forward::Done => return,
            }
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

type Sender = mpsc::Sender<Result<pb::SegmentEvent, Status>>;

async fn send_snapshot(
    manager: &SegmentManager,
    cluster: Option<&ClusterId>,
    tx: &Sender,
) -> Result<(), ()> {
    let segments = match manager.list(cluster).await {
        Ok(s) => s,
        Err(e) => {
            let _ = tx.send(Err(Status::from(e))).await;
            return Err(());
        }
    };
    let now = SystemTime::now();
    for s in segments {
        let m = message(pb::SegmentEventType::Snapshot, Some(s.into()), now, 0);
        tx.send(Ok(m)).await.map_err(drop)?;
    }
    let end = message(pb::SegmentEventType::SnapshotEnd, None, now, 0);
    tx.send(Ok(end)).await.map_err(drop)
}

enum Forward {
    Resync,
    Done,
}

async fn forward(
    live: &mut tokio::sync::broadcast::Receiver<Event>,
    cluster: Option<&ClusterId>,
    tx: &Sender,
) -> Forward {
    loop {
        let event = tokio::select! {
            e = live.recv() => e,
            // The watcher hung up.
            _ = tx.closed() => return Forward::Done,
        };
        match event {
            Ok(e) => {
                if cluster.is_some_and(|c| &e.segment.record.request.cluster != c) {
                    continue;
                }
                let m = message(kind(e.kind), Some(e.segment.into()), e.time, e.sequence);
                if tx.send(Ok(m)).await.is_err() {
                    return Forward::Done;
                }
            }
            Err(RecvError::Lagged(_)) => return Forward::Resync,
            Err(RecvError::Closed) => return Forward::Done,
        }
    }
}
