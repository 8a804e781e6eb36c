//! Per-segment operation locks: operations on one segment run one at a
//! time, operations on different segments run side by side.

use crate::model::SegmentId;
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

/// The lock table.
#[derive(Default)]
pub struct SegmentLocks {
    table: Mutex<HashMap<SegmentId, Arc<AsyncMutex<()>>>>,
}

/// Held for the length of one operation on one segment.
pub struct SegmentGuard {
    _guard: OwnedMutexGuard<()>,
}

impl SegmentLocks {
    /// Waits until no other operation runs on `id`, then holds it.
    pub async fn lock(&self, id: &SegmentId) -> SegmentGuard {
        let mutex = {
            let mut table = self.table.lock().expect("segment lock table");
            // Drop entries nobody holds or waits for, so the table stays
            // as small as the set of busy segments.
            table.retain(|_, m| Arc::strong_count(m) > 1);
            table.entry(id.clone()).or_default().clone()
        };
        SegmentGuard {
            _guard: mutex.lock_owned().await,
        }
    }

    /// Whether an operation runs (or waits to run) on `id`.
    pub fn busy(&self, id: &SegmentId) -> bool {
        let table = self.table.lock().expect("segment lock table");
        table
            .get(id)
            .is_some_and(|m| Arc::strong_count(m) > 1 || m.try_lock().is_err())
    }
}
