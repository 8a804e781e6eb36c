//! SetClusterPeers: each cluster's segments on other hosts. With this
//! host's segments of the cluster they are the only addresses the bridge
//! filter lets reach the swarm's ports (2377/tcp, 7946/tcp+udp, 4789/udp)
//! of the cluster's segments here, so a swarm spans hosts without opening
//! those ports to every tenant of another host (`network.swarm_remote`
//! does that, for whole networks). Kept in `<state_dir>/cluster-peers.json`
//! (written atomically) so that a restarted agent puts the same rules back;
//! the control plane sends the whole list again whenever it changes.

use super::{Error, SegmentManager};
use crate::model::{ClusterId, peers::remote_peers};
use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};
use tracing::{error, info};

/// The file under the state dir.
pub const FILE: &str = "cluster-peers.json";

type PeerMap = BTreeMap<String, Vec<Ipv4Addr>>;

/// Every cluster's remote peers, in memory and (unless made for tests) on
/// disk.
#[derive(Debug, Default)]
pub struct ClusterPeers {
    dir: Option<PathBuf>,
    map: Mutex<PeerMap>,
    /// One SetClusterPeers at a time: each saves the map the last one left.
    changing: tokio::sync::Mutex<()>,
}

impl ClusterPeers {
    /// The peers kept in `dir` (the state dir). A file that cannot be read
    /// is logged and treated as empty: remote peers lose the swarm's ports
    /// (fail closed) until the control plane sends them again.
    pub fn load(dir: &Path) -> Self {
        let path = dir.join(FILE);
        let read = match std::fs::read(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(PeerMap::new()),
            r => r.and_then(|b| serde_json::from_slice::<PeerMap>(&b).map_err(Into::into)),
        };
        let map = read.unwrap_or_else(|e| {
            error!(file = %path.display(), error = %e,
                "cluster peers unreadable; no remote peer is allowed until SetClusterPeers");
            PeerMap::new()
        });
        Self {
            dir: Some(dir.to_owned()),
            map: Mutex::new(map),
            changing: tokio::sync::Mutex::new(()),
        }
    }

    /// The remote peers of `cluster`.
    pub fn of(&self, cluster: &ClusterId) -> Vec<Ipv4Addr> {
        self.lock()
            .get(cluster.as_str())
            .cloned()
            .unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PeerMap> {
        self.map.lock().expect("cluster peers lock")
    }

    /// Writes the peers with those of `cluster` replaced (none: forgets
    /// it) and returns them, for [`ClusterPeers::replace`]. Blocks.
    fn save(&self, cluster: &ClusterId, peers: Vec<Ipv4Addr>) -> std::io::Result<PeerMap> {
        let mut next = self.lock().clone();
        if peers.is_empty() {
            next.remove(cluster.as_str());
        } else {
            next.insert(cluster.to_string(), peers);
        }
        if let Some(dir) = &self.dir {
            let json = serde_json::to_vec_pretty(&next).map_err(std::io::Error::other)?;
            crate::atomic::write_atomic(dir, FILE, &json, 0o600)?;
        }
        Ok(next)
    }

    /// Makes `map` (saved) the peers in effect.
    fn replace(&self, map: PeerMap) {
        *self.lock() = map;
    }
}

impl SegmentManager {
    /// Replaces the remote peers of `cluster` with `addresses` and puts the
    /// bridge filter's rules for its segments here in line at once. Returns
    /// the peers as kept and how many of this host's segments belong to the
    /// cluster.
    /// A node of the swarm at a dropped address is removed once it is down
    /// ([`SegmentManager::forget_departed`]).
    pub async fn set_cluster_peers(
        self: &Arc<Self>,
        cluster: ClusterId,
        addresses: &[String],
    ) -> Result<(Vec<Ipv4Addr>, u32), Error> {
        let peers = remote_peers(addresses, |ip| self.is_local_address(ip))?;
        let _one_at_a_time = self.cluster_peers.changing.lock().await;
        let before = self.cluster_peers.of(&cluster);
        let (store, c, p) = (self.cluster_peers.clone(), cluster.clone(), peers.clone());
        let next = self
            .work
            .run(move || store.save(&c, p))
            .await
            .map_err(|e| Error::Internal(format!("cluster peers task: {e}")))?
            .map_err(|e| Error::Internal(format!("writing {FILE}: {e}")))?;
        self.change_cluster_peers(&cluster, || self.cluster_peers.replace(next))
            .await
            .map_err(|e| {
                Error::Internal(format!(
                    "the peers are kept, but the bridge filter could not apply them (send \
                     them again): {}",
                    crate::errors::error_chain(&e)
                ))
            })?;
        let segments = self
            .registry
            .all()
            .iter()
            .filter(|e| e.record.request.cluster == cluster)
            .count();
        info!(cluster_id = %cluster, peers = peers.len(), segments, "cluster peers set");
        let dropped = before.into_iter().filter(|p| !peers.contains(p)).collect();
        self.forget_departed(&cluster, dropped);
        Ok((peers, u32::try_from(segments).unwrap_or(u32::MAX)))
    }

    /// Whether `ip` is this host's: in its address pool, or its gateway.
    fn is_local_address(&self, ip: Ipv4Addr) -> bool {
        self.registry.pool_contains(ip) || ip == self.settings.network.gateway
    }
}
