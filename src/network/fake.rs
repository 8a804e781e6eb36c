//! A [`PortFilter`] for fast tests: keeps the allowed ports in memory,
//! records every call, and fails on request.

use super::filter::{FilterError, PortFilter, SegmentPort};
use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
};

#[derive(Debug, Default)]
struct State {
    allowed: BTreeSet<SegmentPort>,
    calls: Vec<String>,
    unavailable: Option<String>,
    failing: bool,
    table_missing: bool,
}

/// An in-memory filter.
#[derive(Debug, Default, Clone)]
pub struct FakeFilter {
    state: Arc<Mutex<State>>,
}

impl FakeFilter {
    /// A filter that works.
    pub fn new() -> Self {
        Self::default()
    }

    /// A filter whose probe fails with `reason` (a host that cannot enforce it).
    pub fn unavailable(reason: &str) -> Self {
        let f = Self::default();
        f.state.lock().unwrap().unavailable = Some(reason.into());
        f
    }

    /// Makes every later allow and revoke fail (true) or work again (false).
    pub fn set_failing(&self, failing: bool) {
        self.state.lock().unwrap().failing = failing;
    }

    /// Drops the table (a flushed ruleset): allow fails until an install.
    pub fn lose_table(&self) {
        let mut state = self.state.lock().unwrap();
        state.table_missing = true;
        state.allowed.clear();
    }

    /// The names of the ports allowed now.
    pub fn allowed(&self) -> Vec<String> {
        let state = self.state.lock().unwrap();
        state.allowed.iter().map(|p| p.name.clone()).collect()
    }

    /// The allowed ports and their bandwidth in KiB/s.
    pub fn rates(&self) -> Vec<(String, u64)> {
        let state = self.state.lock().unwrap();
        state
            .allowed
            .iter()
            .map(|p| (p.name.clone(), p.rate_kib))
            .collect()
    }

    /// The swarm peers of the allowed port `name` (None: not allowed).
    pub fn swarm_peers(&self, name: &str) -> Option<Vec<std::net::Ipv4Addr>> {
        let state = self.state.lock().unwrap();
        state
            .allowed
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.swarm_peers.clone())
    }

    /// Every call so far: `probe`, `install sg-..,sg-..`, `allow sg-..`,
    /// `revoke sg-..`.
    pub fn calls(&self) -> Vec<String> {
        self.state.lock().unwrap().calls.clone()
    }

    fn refused(what: &str) -> FilterError {
        FilterError::Other(format!("fake filter: {what} fails on request"))
    }
}

impl PortFilter for FakeFilter {
    fn probe(&self) -> Result<String, FilterError> {
        let mut state = self.state.lock().unwrap();
        state.calls.push("probe".into());
        match &state.unavailable {
            Some(reason) => Err(FilterError::Bridge(reason.clone())),
            None => Ok("fake filter".into()),
        }
    }

    fn install(&self, ports: &[SegmentPort]) -> Result<(), FilterError> {
        let mut state = self.state.lock().unwrap();
        let names: Vec<&str> = ports.iter().map(|p| p.name.as_str()).collect();
        state.calls.push(format!("install {}", names.join(",")));
        if state.failing {
            return Err(Self::refused("install"));
        }
        state.table_missing = false;
        // Like the real table: exactly these ports afterwards.
        state.allowed = ports.iter().cloned().collect();
        Ok(())
    }

    fn allow(&self, port: &SegmentPort) -> Result<(), FilterError> {
        let mut state = self.state.lock().unwrap();
        state.calls.push(format!("allow {}", port.name));
        if state.failing {
            return Err(Self::refused("allow"));
        }
        if state.table_missing {
            return Err(FilterError::Other("fake filter: no table".into()));
        }
        state.allowed.insert(port.clone());
        Ok(())
    }

    fn change_swarm_peers(
        &self,
        before: &SegmentPort,
        after: &SegmentPort,
    ) -> Result<(), FilterError> {
        let mut state = self.state.lock().unwrap();
        state.calls.push(format!("swarm peers {}", after.name));
        if state.failing {
            return Err(Self::refused("change_swarm_peers"));
        }
        if state.allowed.remove(before) {
            state.allowed.insert(after.clone());
        }
        Ok(())
    }

    fn revoke(&self, port: &SegmentPort) -> Result<(), FilterError> {
        let mut state = self.state.lock().unwrap();
        state.calls.push(format!("revoke {}", port.name));
        if state.failing {
            return Err(Self::refused("revoke"));
        }
        state.allowed.remove(port);
        Ok(())
    }
}
