//! The agent's in-memory view of its segments, rebuilt from libvirt at start,
//! together with the address pool. One lock covers both so admission (slots,
//! memory, address) is atomic across concurrent creates.

use super::error::Error;
use crate::model::{Desired, SegmentId, SegmentRecord, SegmentRequest};
use crate::{idmap::IdRangePool, pool::AddressPool};
use std::{collections::BTreeMap, net::Ipv4Addr, sync::Mutex, time::SystemTime};

/// An operation in flight on a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// CreateSegment.
    Creating,
    /// DeleteSegment.
    Deleting,
}

/// What the registry knows of one segment.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The persisted record (mirrors the domain metadata).
    pub record: SegmentRecord,
    /// The operation in flight, if any.
    pub op: Option<Op>,
    /// Whether its domain runs, as last seen.
    pub seen: Seen,
}

/// Whether a segment's domain runs, as the agent last saw it: from a call
/// of its own (an operation, a listing) or from a libvirt lifecycle event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seen {
    /// `None` until first seen.
    pub running: Option<bool>,
    /// The position in the event sequence this is true as of.
    pub as_of: u64,
}

/// Where a sighting of a domain's state comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sighting {
    /// Lifecycle event number `n` (numbered as they arrive).
    Event(u64),
    /// A call that began when `n` events had arrived: it is newer than
    /// those, and older than any event after them.
    Call(u64),
}

/// Admission limits of the host.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Capacity {
    /// Most segments.
    pub max_segments: u32,
    /// Memory that segment limits may add up to.
    pub allocatable_memory_mib: u64,
}

/// Current use of the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Segments on the host.
    pub segments: u32,
    /// Sum of their memory limits.
    pub memory_mib: u64,
    /// Addresses in the pool.
    pub pool_size: u32,
    /// Addresses free.
    pub pool_free: u32,
}

struct Inner {
    segments: BTreeMap<SegmentId, Entry>,
    pool: AddressPool,
    ids: IdRangePool,
}

/// Segments and addresses under one lock.
pub struct Registry {
    inner: Mutex<Inner>,
    capacity: Capacity,
}

impl Registry {
    /// An empty registry over the address pool and the id ranges.
    pub fn new(pool: AddressPool, ids: IdRangePool, capacity: Capacity) -> Self {
        Self {
            inner: Mutex::new(Inner {
                segments: BTreeMap::new(),
                pool,
                ids,
            }),
            capacity,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("segment registry lock")
    }

    /// Whether `ip` is in the address pool.
    pub fn pool_contains(&self, ip: std::net::Ipv4Addr) -> bool {
        self.lock().pool.contains(ip)
    }

    /// The admission limits.
    pub fn capacity(&self) -> Capacity {
        self.capacity
    }

    /// One segment.
    pub fn get(&self, id: &SegmentId) -> Option<Entry> {
        self.lock().segments.get(id).cloned()
    }

    /// Every segment, ordered by id.
    pub fn all(&self) -> Vec<Entry> {
        self.lock().segments.values().cloned().collect()
    }

    /// Admits a new segment: checks slots and memory, takes the lowest free
    /// address and id range and records the segment as being created.
    /// Nothing is taken when any check fails.
    pub fn admit(&self, request: SegmentRequest, now: SystemTime) -> Result<SegmentRecord, Error> {
        let mut inner = self.lock();
        let used = inner.segments.len() as u32;
        if used >= self.capacity.max_segments {
            return Err(Error::ResourceExhausted(format!(
                "this host holds its maximum of {} segments",
                self.capacity.max_segments
            )));
        }
        let allocated: u64 = inner.segments.values().map(|e| mib(&e.record)).sum();
        let wanted = u64::from(request.flavor.memory_mib);
        if allocated + wanted > self.capacity.allocatable_memory_mib {
            return Err(Error::ResourceExhausted(format!(
                "not enough memory: {wanted} MiB asked, {} of {} MiB allocatable left",
                self.capacity
                    .allocatable_memory_mib
                    .saturating_sub(allocated),
                self.capacity.allocatable_memory_mib
            )));
        }
        let ids = inner
            .ids
            .allocate()
            .map_err(|e| Error::ResourceExhausted(e.to_string()))?;
        let address = match inner.pool.allocate() {
            Ok(a) => a,
            Err(e) => {
                inner.ids.release(ids);
                return Err(Error::ResourceExhausted(e.to_string()));
            }
        };
        let record = SegmentRecord {
            request,
            address,
            created_at: now,
            desired: Desired::Running,
            server_cert_not_after: None,
            ids,
            failure: None,
            restarts: 0,
            swarm: None,
        };
        let entry = Entry {
            record: record.clone(),
            op: Some(Op::Creating),
            seen: Seen::default(),
        };
        inner.segments.insert(record.request.id.clone(), entry);
        Ok(record)
    }

    /// Registers a segment found in libvirt (`seen`: whether it ran then).
    /// Refuses one whose address is already held by another segment or lies
    /// outside the pool.
    pub fn insert_recovered(&self, record: SegmentRecord, seen: Seen) -> Result<(), String> {
        let mut inner = self.lock();
        if !inner.pool.contains(record.address) {
            return Err(format!(
                "address {} is outside the configured pool",
                record.address
            ));
        }
        if !inner.ids.reserve(record.ids) {
            return Err(format!(
                "host ids {}+{} are claimed by another segment or are not a range of the configured \
                 isolation block",
                record.ids.host_first, record.ids.count
            ));
        }
        if !inner.pool.reserve(record.address) {
            inner.ids.release(record.ids);
            return Err(format!(
                "address {} is claimed by another segment",
                record.address
            ));
        }
        let id = record.request.id.clone();
        let entry = Entry {
            record,
            op: None,
            seen,
        };
        inner.segments.insert(id, entry);
        Ok(())
    }

    /// Changes one segment in place; false if it does not exist.
    pub fn update(&self, id: &SegmentId, f: impl FnOnce(&mut Entry)) -> bool {
        self.lock().segments.get_mut(id).map(f).is_some()
    }

    /// Records whether a segment's domain runs, unless what the registry
    /// has is newer: an event applies when no later event or call did, a
    /// call's result when no event arrived after the call began. Returns
    /// whether the segment's running state changed.
    pub fn sighted(&self, id: &SegmentId, running: bool, from: Sighting) -> bool {
        let mut inner = self.lock();
        let Some(e) = inner.segments.get_mut(id) else {
            return false;
        };
        let (newer, at) = match from {
            Sighting::Event(n) => (n > e.seen.as_of, n),
            Sighting::Call(n) => (n >= e.seen.as_of, n),
        };
        if !newer {
            return false;
        }
        let changed = e.seen.running != Some(running);
        e.seen = Seen {
            running: Some(running),
            as_of: at,
        };
        changed
    }

    /// Forgets a segment and returns its address to the pool.
    pub fn remove(&self, id: &SegmentId) -> Option<Ipv4Addr> {
        let mut inner = self.lock();
        let entry = inner.segments.remove(id)?;
        inner.pool.release(entry.record.address);
        inner.ids.release(entry.record.ids);
        Some(entry.record.address)
    }

    /// Current use.
    pub fn usage(&self) -> Usage {
        let inner = self.lock();
        Usage {
            segments: inner.segments.len() as u32,
            memory_mib: inner.segments.values().map(|e| mib(&e.record)).sum(),
            pool_size: inner.pool.size() as u32,
            pool_free: inner.pool.free() as u32,
        }
    }
}

fn mib(r: &SegmentRecord) -> u64 {
    u64::from(r.request.flavor.memory_mib)
}
