//! Unprivileged segments: each segment's user namespace maps its ids
//! `0..count` to a range of host ids of its own (libvirt `<idmap>`), so
//! root in a segment is an unprivileged uid on the host, and no two
//! segments share a host id (Incus's `security.idmap.isolated`).
//!
//! Ranges are slots of one configured block: slot `k` is host ids
//! `first + k * count ..`. Like the address pool this is plain data; the
//! segment registry holds it under its lock and rebuilds it from the
//! ranges pinned in every segment's metadata.

use std::collections::BTreeSet;

pub use segment_mount::IdMap as IdRange;

/// Every slot of the block is in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no free id range for a segment ({slots} ranges, all in use)")]
pub struct IdRangesExhausted {
    /// Number of slots.
    pub slots: u32,
}

/// The host's block of id ranges and which slots are in use.
#[derive(Debug, Clone)]
pub struct IdRangePool {
    first: u32,
    count: u32,
    slots: u32,
    used: BTreeSet<u32>,
}

impl IdRangePool {
    /// `slots` ranges of `count` ids from host id `first`. The caller
    /// (config validation) keeps `first + slots * count` within `u32`.
    pub fn new(first: u32, count: u32, slots: u32) -> Self {
        Self {
            first,
            count,
            slots,
            used: BTreeSet::new(),
        }
    }

    fn range(&self, slot: u32) -> IdRange {
        IdRange {
            host_first: self.first + slot * self.count,
            count: self.count,
        }
    }

    fn slot(&self, range: IdRange) -> Option<u32> {
        let offset = range.host_first.checked_sub(self.first)?;
        (range.count == self.count && offset % self.count == 0).then_some(offset / self.count)
    }

    /// Takes the lowest free range.
    pub fn allocate(&mut self) -> Result<IdRange, IdRangesExhausted> {
        let slot = (0..self.slots)
            .find(|s| !self.used.contains(s))
            .ok_or(IdRangesExhausted { slots: self.slots })?;
        self.used.insert(slot);
        Ok(self.range(slot))
    }

    /// Marks a range found in a segment's metadata as used; false if it is
    /// not one of this block's ranges or is used already.
    pub fn reserve(&mut self, range: IdRange) -> bool {
        self.slot(range).is_some_and(|s| self.used.insert(s))
    }

    /// Returns a range to the pool.
    pub fn release(&mut self, range: IdRange) {
        if let Some(s) = self.slot(range) {
            self.used.remove(&s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowest_free_range_first_never_twice() {
        let mut pool = IdRangePool::new(1_000_000, 65_536, 3);
        let a = pool.allocate().unwrap();
        let b = pool.allocate().unwrap();
        assert_eq!(a.host_first, 1_000_000);
        assert_eq!(b.host_first, 1_065_536);
        pool.release(a);
        assert_eq!(pool.allocate().unwrap(), a);
        assert!(pool.allocate().is_ok());
        assert_eq!(pool.allocate(), Err(IdRangesExhausted { slots: 3 }));
    }

    #[test]
    fn reserve_refuses_foreign_and_taken_ranges() {
        let mut pool = IdRangePool::new(1_000_000, 65_536, 4);
        let r = IdRange {
            host_first: 1_131_072,
            count: 65_536,
        };
        assert!(pool.reserve(r));
        assert!(!pool.reserve(r), "taken");
        assert!(
            !pool.reserve(IdRange {
                host_first: 1_000_001,
                count: 65_536
            }),
            "unaligned"
        );
        assert!(
            !pool.reserve(IdRange {
                host_first: 1_000_000,
                count: 100
            }),
            "other size"
        );
        assert!(
            !pool.reserve(IdRange {
                host_first: 5,
                count: 65_536
            }),
            "below the block"
        );
        assert_eq!(pool.allocate().unwrap().host_first, 1_000_000);
    }
}
