//! A fake of Docker's swarm API for tests over the fakes: one swarm at a
//! time, nodes keyed by their Docker endpoint, join tokens checked, every
//! call recorded; `dead` makes every call fail as an unreachable Docker
//! would.

use async_trait::async_trait;
use segment_agent::docker::swarm::{
    DockerTarget, JoinTokens, ListedNode, NodeInfo, SwarmApi, SwarmError,
};
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

/// The fake swarm's worker token.
pub const WORKER: &str =
    "SWMTKN-1-3pu6hszjas19xyp7ghgosyx9k8atbfcr8p2is99znpy26u2lkl-1awxwuwd3z9j1z3puu7rcgdbx";
/// Its manager token.
pub const MANAGER: &str =
    "SWMTKN-1-3pu6hszjas19xyp7ghgosyx9k8atbfcr8p2is99znpy26u2lkl-0bmanagermanagermanager00";

#[derive(Debug, Clone)]
struct Node {
    id: String,
    address: Ipv4Addr,
    manager: bool,
    down: bool,
}

#[derive(Default)]
struct State {
    nodes: BTreeMap<SocketAddr, Node>,
    next: u32,
}

/// The fake; clones share it.
#[derive(Clone, Default)]
pub struct FakeSwarm {
    state: Arc<Mutex<State>>,
    calls: Arc<Mutex<Vec<String>>>,
    /// Every call fails as if Docker were gone.
    pub dead: Arc<AtomicBool>,
}

impl FakeSwarm {
    /// The calls so far, `VERB IP` (`demote IP NODE`, `remove IP NODE`).
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    /// Node ids in the swarm.
    pub fn members(&self) -> Vec<String> {
        let s = self.state.lock().unwrap();
        s.nodes.values().map(|n| n.id.clone()).collect()
    }

    fn record(&self, call: String) -> Result<(), SwarmError> {
        self.calls.lock().unwrap().push(call);
        match self.dead.load(Ordering::SeqCst) {
            true => Err(SwarmError::Unreachable("connection refused".into())),
            false => Ok(()),
        }
    }

    fn add(&self, endpoint: SocketAddr, address: Ipv4Addr, manager: bool) -> String {
        let mut s = self.state.lock().unwrap();
        s.next += 1;
        let id = format!("node{:021}", s.next);
        let node = Node {
            id: id.clone(),
            address,
            manager,
            down: false,
        };
        s.nodes.insert(endpoint, node);
        id
    }

    /// A node joined from another host (no agent here knows it); its id.
    pub fn add_remote(&self, address: Ipv4Addr, manager: bool) -> String {
        self.add(SocketAddr::new(address.into(), 2376), address, manager)
    }

    /// The node at `address` stops answering: the managers list it down.
    pub fn set_down(&self, address: Ipv4Addr) {
        let mut s = self.state.lock().unwrap();
        for n in s.nodes.values_mut().filter(|n| n.address == address) {
            n.down = true;
        }
    }
}

fn refused(message: &str) -> SwarmError {
    SwarmError::Refused {
        status: 400,
        message: message.into(),
    }
}

#[async_trait]
impl SwarmApi for FakeSwarm {
    async fn info(&self, t: &DockerTarget) -> Result<NodeInfo, SwarmError> {
        self.record(format!("info {}", t.endpoint.ip()))?;
        let s = self.state.lock().unwrap();
        let managers: Vec<SocketAddrV4> = s
            .nodes
            .values()
            .filter(|n| n.manager)
            .map(|n| SocketAddrV4::new(n.address, 2377))
            .collect();
        Ok(match s.nodes.get(&t.endpoint) {
            None => NodeInfo {
                state: "inactive".into(),
                ..NodeInfo::default()
            },
            Some(n) => NodeInfo {
                node_id: n.id.clone(),
                state: "active".into(),
                manager: n.manager,
                managers: managers.len() as u32,
                nodes: s.nodes.len() as u32,
                remote_managers: managers,
            },
        })
    }

    async fn init(&self, t: &DockerTarget, advertise: Ipv4Addr) -> Result<String, SwarmError> {
        self.record(format!("init {}", t.endpoint.ip()))?;
        Ok(self.add(t.endpoint, advertise, true))
    }

    async fn join(
        &self,
        t: &DockerTarget,
        advertise: Ipv4Addr,
        managers: &[SocketAddrV4],
        token: &str,
    ) -> Result<(), SwarmError> {
        self.record(format!("join {}", t.endpoint.ip()))?;
        let known = {
            let s = self.state.lock().unwrap();
            managers
                .iter()
                .any(|m| s.nodes.values().any(|n| n.manager && n.address == *m.ip()))
        };
        if !known {
            return Err(SwarmError::Refused {
                status: 503,
                message: "Timeout was reached before node joined".into(),
            });
        }
        match token {
            WORKER => self.add(t.endpoint, advertise, false),
            MANAGER => self.add(t.endpoint, advertise, true),
            _ => {
                return Err(refused(
                    "A valid join token is necessary to join this cluster",
                ));
            }
        };
        Ok(())
    }

    async fn join_tokens(&self, t: &DockerTarget) -> Result<JoinTokens, SwarmError> {
        self.record(format!("tokens {}", t.endpoint.ip()))?;
        Ok(JoinTokens {
            worker: WORKER.into(),
            manager: MANAGER.into(),
        })
    }

    async fn leave(&self, t: &DockerTarget, force: bool) -> Result<(), SwarmError> {
        self.record(format!("leave {} force={force}", t.endpoint.ip()))?;
        self.state.lock().unwrap().nodes.remove(&t.endpoint);
        Ok(())
    }

    async fn demote(&self, t: &DockerTarget, id: &str) -> Result<(), SwarmError> {
        self.record(format!("demote {} {id}", t.endpoint.ip()))?;
        let mut s = self.state.lock().unwrap();
        for n in s.nodes.values_mut().filter(|n| n.id == id) {
            n.manager = false;
        }
        Ok(())
    }

    async fn remove_node(&self, t: &DockerTarget, id: &str) -> Result<(), SwarmError> {
        self.record(format!("remove {} {id}", t.endpoint.ip()))?;
        let mut s = self.state.lock().unwrap();
        s.nodes.retain(|_, n| n.id != id);
        Ok(())
    }

    async fn nodes(&self, t: &DockerTarget) -> Result<Vec<ListedNode>, SwarmError> {
        self.record(format!("nodes {}", t.endpoint.ip()))?;
        let s = self.state.lock().unwrap();
        Ok(s.nodes
            .values()
            .map(|n| ListedNode {
                id: n.id.clone(),
                address: Some(n.address),
                manager: n.manager,
                down: n.down,
            })
            .collect())
    }
}
