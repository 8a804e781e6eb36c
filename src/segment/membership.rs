//! A segment's membership in its cluster's swarm, done by the agent through
//! Docker's API ([`crate::docker::swarm`]) over its own mutual-TLS client
//! and the agent's swarm token: the last step of a create (init or join),
//! the first of a delete (demote, leave, and removal from the remaining
//! managers' node list), and a repair after a rebuild (join again with the
//! stored token and managers).
//!
//! Only the node's own Docker and the local segments of the same cluster
//! are reachable with a token. A segment deleted on another host is seen
//! here through SetClusterPeers: when its address is dropped from the
//! cluster's peers, a manager here removes its node once the swarm has it
//! down ([`SegmentManager::forget_departed`]); the agent on that host did
//! the leave.

use super::{Error, SegmentManager};
use crate::docker::{
    self, SwarmSecrets,
    swarm::{DockerTarget, ListedNode, NodeInfo, SwarmError},
};
use crate::model::{
    ClusterId, SegmentRecord,
    swarm::{SwarmMode, SwarmNode, SwarmRole, SwarmSpec},
};
use std::{
    net::{Ipv4Addr, SocketAddrV4},
    sync::Arc,
    time::{Duration, Instant},
};
use tracing::{info, warn};

/// The longest a delete waits for its node to leave the swarm.
const LEAVE_BUDGET: Duration = Duration::from_secs(25);
/// How long a new manager may take before it hands out join tokens.
const TOKENS_WAIT: Duration = Duration::from_secs(15);
/// How long the agent waits for a dropped peer's node to go down before it
/// leaves the node alone (its segment still runs somewhere).
const DEPARTED_BUDGET: Duration = Duration::from_secs(120);
/// How often it looks meanwhile.
const DEPARTED_POLL: Duration = Duration::from_secs(2);

impl SegmentManager {
    /// The agent's client of the segment's Docker (certificate and token).
    pub(crate) async fn docker_target(
        &self,
        record: &SegmentRecord,
    ) -> Result<DockerTarget, String> {
        let dir = self.storage.dirs(&record.request.id).agent_tls;
        let endpoint =
            std::net::SocketAddr::from((record.address, segment_policy::front::DOCKER_TLS_PORT));
        self.work
            .run(move || {
                let tls = docker::read_agent_tls(&dir).map_err(|e| e.to_string())?;
                let path = dir.join(segment_policy::agent_token::FILE);
                let token = std::fs::read_to_string(&path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                Ok(DockerTarget {
                    endpoint,
                    tls,
                    token: token.trim().to_owned(),
                })
            })
            .await
            .map_err(|e| format!("reading the agent's TLS files: {e}"))?
    }

    /// Makes the segment the swarm node `spec` asks for; returns the node
    /// with its join tokens (managers) and persists the tokens in the
    /// segment's host-only directory. An error means the create fails.
    pub(crate) async fn join_swarm(
        &self,
        record: &SegmentRecord,
        spec: &SwarmSpec,
    ) -> Result<SwarmNode, Error> {
        let failed = |what: &str, e: SwarmError| swarm_error(what, e);
        let t = self
            .docker_target(record)
            .await
            .map_err(|e| Error::Internal(format!("the agent's Docker client: {e}")))?;
        let before = self
            .swarm
            .info(&t)
            .await
            .map_err(|e| failed("asking Docker", e))?;
        // A node already in a swarm is a retried create whose bootstrap was
        // done: kept as it is.
        if !before.active() {
            match spec.mode {
                SwarmMode::Init => {
                    self.swarm
                        .init(&t, record.address)
                        .await
                        .map_err(|e| failed("swarm init", e))?;
                }
                _ => {
                    let token = spec.join_token.as_deref().unwrap_or_default();
                    self.swarm
                        .join(&t, record.address, &spec.managers, token)
                        .await
                        .map_err(|e| {
                            failed(&format!("joining through {}", list(&spec.managers)), e)
                        })?;
                }
            }
        }
        let node = self.describe_node(record, &t, spec.mode).await?;
        if node.role != spec.mode.role() {
            return Err(Error::FailedPrecondition(format!(
                "the segment joined its swarm as a {} although swarm.mode asked for a {}: the \
                 join token is the swarm's {} token",
                node.role.as_str(),
                spec.mode.role().as_str(),
                node.role.as_str()
            )));
        }
        info!(node_id = %node.node_id, role = node.role.as_str(), "swarm node ready");
        self.save_swarm_secrets(record, spec.join_token.clone(), &node)
            .await?;
        Ok(node)
    }

    /// The node as Docker reports it, with the join tokens for a manager
    /// (a fresh manager answers for them once its raft is caught up).
    async fn describe_node(
        &self,
        record: &SegmentRecord,
        t: &DockerTarget,
        mode: SwarmMode,
    ) -> Result<SwarmNode, Error> {
        let deadline = tokio::time::Instant::now() + TOKENS_WAIT;
        loop {
            let info = self
                .swarm
                .info(t)
                .await
                .map_err(|e| swarm_error("asking Docker", e))?;
            let role = if info.manager {
                SwarmRole::Manager
            } else {
                SwarmRole::Worker
            };
            let tokens = match role {
                SwarmRole::Worker => Ok(None),
                SwarmRole::Manager => self.swarm.join_tokens(t).await.map(Some),
            };
            let pending = !info.active() || info.node_id.is_empty();
            let waited_enough = tokio::time::Instant::now() >= deadline;
            match tokens {
                Ok(tokens) if !pending => return Ok(node_of(record, &info, role, tokens, mode)),
                Err(e) if waited_enough => return Err(swarm_error("reading the join tokens", e)),
                _ if waited_enough => {
                    return Err(Error::FailedPrecondition(format!(
                        "the segment's swarm node is {:?}, not active, {TOKENS_WAIT:?} after joining",
                        info.state
                    )));
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    async fn save_swarm_secrets(
        &self,
        record: &SegmentRecord,
        join_token: Option<String>,
        node: &SwarmNode,
    ) -> Result<(), Error> {
        let dir = self.storage.dirs(&record.request.id).agent_tls;
        let secrets = SwarmSecrets {
            join_token,
            worker_token: node.worker_token.clone(),
            manager_token: node.manager_token.clone(),
        };
        self.work
            .run(move || docker::write_swarm_secrets(&dir, &secrets))
            .await
            .map_err(|e| Error::Internal(format!("swarm secrets task: {e}")))?
            .map_err(|e| Error::Internal(format!("writing the swarm's join tokens: {e}")))
    }

    /// Takes the segment's node out of its swarm before the segment goes:
    /// a manager is demoted first when other managers remain (the swarm
    /// keeps its quorum), then the node leaves and a local manager of the
    /// cluster removes it from the node list. Best effort and bounded: a
    /// dead Docker never stops a delete.
    pub(crate) async fn leave_swarm(&self, record: &SegmentRecord) {
        if record.request.swarm.is_none() {
            return;
        }
        let leaving = async {
            let t = self.docker_target(record).await?;
            let info = self.swarm.info(&t).await.map_err(|e| e.to_string())?;
            if !info.active() {
                return Ok::<_, String>("not in a swarm".to_owned());
            }
            let demoted = info.manager && info.managers > 1 && self.demote(&t, &info).await;
            let force = info.manager && !demoted;
            self.swarm
                .leave(&t, force)
                .await
                .map_err(|e| e.to_string())?;
            let removed = self.remove_from_managers(record, &info.node_id).await;
            Ok(format!(
                "left (demoted: {demoted}, forced: {force}, removed from the node list: {removed})"
            ))
        };
        match tokio::time::timeout(LEAVE_BUDGET, leaving).await {
            Ok(Ok(how)) => info!(%how, "swarm node out of its swarm"),
            Ok(Err(e)) => warn!(error = %e, "could not leave the swarm; deleting anyway"),
            Err(_) => warn!("leaving the swarm took over {LEAVE_BUDGET:?}; deleting anyway"),
        }
    }

    /// Demotes the node and waits until it is a worker; false if it stays
    /// a manager.
    async fn demote(&self, t: &DockerTarget, info: &NodeInfo) -> bool {
        if let Err(e) = self.swarm.demote(t, &info.node_id).await {
            warn!(error = %e, "could not demote the leaving manager");
            return false;
        }
        for _ in 0..40 {
            match self.swarm.info(t).await {
                Ok(now) if !now.manager => return true,
                _ => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
        false
    }

    /// Asks the local managers of the segment's cluster (the only ones
    /// whose token the agent holds) to remove node `id` (demoted first: a
    /// manager that vanished, as after a forced leave, is still a member of
    /// the raft and cannot be removed); whether one did.
    async fn remove_from_managers(&self, record: &SegmentRecord, id: &str) -> bool {
        for other in self.local_managers(record) {
            let Ok(t) = self.docker_target(&other).await else {
                continue;
            };
            let _ = self.swarm.demote(&t, id).await;
            // The node's leave reaches the managers' view a moment later.
            for _ in 0..20 {
                match self.swarm.remove_node(&t, id).await {
                    Ok(()) => return true,
                    Err(SwarmError::Refused { status: 404, .. }) => return true,
                    Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
                }
            }
        }
        false
    }

    /// The other segments of the cluster on this host that are swarm
    /// managers.
    fn local_managers(&self, record: &SegmentRecord) -> Vec<SegmentRecord> {
        self.cluster_managers(&record.request.cluster)
            .into_iter()
            .filter(|r| r.request.id != record.request.id)
            .collect()
    }

    /// The segments of `cluster` on this host that are swarm managers.
    fn cluster_managers(&self, cluster: &ClusterId) -> Vec<SegmentRecord> {
        self.registry
            .all()
            .into_iter()
            .map(|e| e.record)
            .filter(|r| {
                &r.request.cluster == cluster
                    && r.swarm
                        .as_ref()
                        .is_some_and(|n| n.role == SwarmRole::Manager)
            })
            .collect()
    }

    /// The peers `dropped` from `cluster` were its segments on other hosts.
    /// Docker keeps a departed node listed (`Down`) until a manager removes
    /// it, and a departed manager stays in the raft, where it counts
    /// against the quorum. So, in the background, for up to
    /// [`DEPARTED_BUDGET`]: once a dropped address's node is down, a
    /// manager of the cluster here demotes it if needed and removes it. A
    /// node that stays up (its segment still runs: the peer was dropped
    /// by mistake, or before the delete) is left alone; so is every node
    /// at an address that was never a peer.
    pub(crate) fn forget_departed(self: &Arc<Self>, cluster: &ClusterId, dropped: Vec<Ipv4Addr>) {
        if dropped.is_empty() || self.cluster_managers(cluster).is_empty() {
            return;
        }
        let (manager, cluster) = (self.clone(), cluster.clone());
        tokio::spawn(async move {
            let deadline = Instant::now() + DEPARTED_BUDGET;
            let mut waiting = dropped;
            loop {
                // A peer sent again meanwhile (the address is in use there
                // once more) is the control plane's again: left alone.
                let peers = manager.cluster_peers.of(&cluster);
                waiting.retain(|a| !peers.contains(a));
                waiting = manager.remove_down_nodes(&cluster, waiting).await;
                if waiting.is_empty() {
                    return;
                }
                if Instant::now() >= deadline {
                    warn!(cluster_id = %cluster, addresses = ?waiting,
                        "nodes of dropped peers are still up in the swarm; left in place");
                    return;
                }
                tokio::time::sleep(DEPARTED_POLL).await;
            }
        });
    }

    /// One look through the first manager here that answers: removes the
    /// nodes at `addresses` that are down; returns the addresses whose node
    /// is still up (or that no manager here could be asked about, unless
    /// the cluster has no manager here any more).
    async fn remove_down_nodes(
        &self,
        cluster: &ClusterId,
        addresses: Vec<Ipv4Addr>,
    ) -> Vec<Ipv4Addr> {
        let managers = self.cluster_managers(cluster);
        if managers.is_empty() {
            return Vec::new();
        }
        for record in managers {
            let Ok(t) = self.docker_target(&record).await else {
                continue;
            };
            let Ok(nodes) = self.swarm.nodes(&t).await else {
                continue;
            };
            let mut waiting = Vec::new();
            for address in addresses {
                // The down ones go; one still up keeps the address waiting
                // (its segment still runs, or the address is used again).
                for node in nodes.iter().filter(|n| n.address == Some(address)) {
                    if !node.down || !self.remove_departed(&t, cluster, address, node).await {
                        waiting.push(address);
                    }
                }
            }
            waiting.dedup();
            return waiting;
        }
        addresses
    }

    /// Demotes (a manager) and removes one departed node; whether it is gone.
    async fn remove_departed(
        &self,
        t: &DockerTarget,
        cluster: &ClusterId,
        address: Ipv4Addr,
        node: &ListedNode,
    ) -> bool {
        if node.manager
            && let Err(e) = self.swarm.demote(t, &node.id).await
        {
            warn!(cluster_id = %cluster, %address, node_id = %node.id, error = %e,
                "could not demote a departed manager");
            return false;
        }
        match self.swarm.remove_node(t, &node.id).await {
            Ok(()) | Err(SwarmError::Refused { status: 404, .. }) => {
                info!(cluster_id = %cluster, %address, node_id = %node.id,
                    "removed the node of a departed peer from the swarm");
                true
            }
            Err(e) => {
                warn!(cluster_id = %cluster, %address, node_id = %node.id, error = %e,
                    "could not remove the node of a departed peer");
                false
            }
        }
    }

    /// After a rebuild: a node that lost its swarm joins again with what
    /// its record holds (the token it joined with, or for the segment that
    /// initialised the swarm its manager token, and the managers it knew
    /// plus the cluster's local managers). Returns the node if it changed.
    pub(crate) async fn repair_swarm(
        &self,
        record: &SegmentRecord,
    ) -> Result<Option<SwarmNode>, Error> {
        let (Some(spec), Some(node)) = (&record.request.swarm, &record.swarm) else {
            return Ok(None);
        };
        let t = self
            .docker_target(record)
            .await
            .map_err(|e| Error::Internal(format!("the agent's Docker client: {e}")))?;
        let info = self
            .swarm
            .info(&t)
            .await
            .map_err(|e| swarm_error("asking Docker", e))?;
        if info.active() {
            return Ok(None);
        }
        let token = match node.role {
            SwarmRole::Manager => node.manager_token.clone().or(spec.join_token.clone()),
            SwarmRole::Worker => spec.join_token.clone().or(node.worker_token.clone()),
        };
        let own = SocketAddrV4::new(record.address, crate::model::swarm::SWARM_PORT);
        let mut managers: Vec<SocketAddrV4> = node.managers.clone();
        managers.extend(spec.managers.iter().copied());
        managers.extend(
            self.local_managers(record)
                .iter()
                .map(|r| SocketAddrV4::new(r.address, crate::model::swarm::SWARM_PORT)),
        );
        managers.retain(|m| *m != own);
        managers.sort();
        managers.dedup();
        managers.truncate(crate::model::swarm::MAX_MANAGERS);
        let (Some(token), false) = (token, managers.is_empty()) else {
            return Err(Error::FailedPrecondition(
                "the segment lost its swarm membership and its record names no other manager \
                 to join again through"
                    .into(),
            ));
        };
        warn!(old_node_id = %node.node_id, "swarm membership lost; joining again");
        self.swarm
            .join(&t, record.address, &managers, &token)
            .await
            .map_err(|e| swarm_error(&format!("joining again through {}", list(&managers)), e))?;
        let mode = match node.role {
            SwarmRole::Manager => SwarmMode::JoinManager,
            SwarmRole::Worker => SwarmMode::JoinWorker,
        };
        let fresh = self.describe_node(record, &t, mode).await?;
        self.remove_from_managers(record, &node.node_id).await;
        self.save_swarm_secrets(record, spec.join_token.clone(), &fresh)
            .await?;
        Ok(Some(fresh))
    }
}

fn node_of(
    record: &SegmentRecord,
    info: &NodeInfo,
    role: SwarmRole,
    tokens: Option<docker::swarm::JoinTokens>,
    mode: SwarmMode,
) -> SwarmNode {
    let own = SocketAddrV4::new(record.address, crate::model::swarm::SWARM_PORT);
    let mut managers = info.remote_managers.clone();
    if managers.is_empty() && mode == SwarmMode::Init {
        managers.push(own);
    }
    managers.sort();
    SwarmNode {
        node_id: info.node_id.clone(),
        role,
        worker_token: tokens.as_ref().map(|t| t.worker.clone()),
        manager_token: tokens.map(|t| t.manager),
        managers,
    }
}

fn list(managers: &[SocketAddrV4]) -> String {
    managers
        .iter()
        .map(|m| m.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A swarm step's failure as the create or rebuild reports it: what the
/// swarm or Docker refused is a precondition the scheduler can fix (token,
/// managers), an answer the agent cannot read is internal.
fn swarm_error(what: &str, e: SwarmError) -> Error {
    match e {
        SwarmError::Malformed(_) => Error::Internal(format!("{what}: {e}")),
        _ => Error::FailedPrecondition(crate::model::bounded_failure(&format!(
            "swarm: {what} failed: {e}"
        ))),
    }
}
