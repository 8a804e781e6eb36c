//! The agent's own Docker client for swarm membership: Docker's HTTP API
//! over mutual TLS on the segment's public address (the same client
//! certificate as the readiness probe), every request carrying the
//! agent's swarm token ([`super::agent_token`]) that the policy plugin
//! demands for init, join, leave and node changes.
//!
//! One request per connection (hyper's client, shared with the probe:
//! `probe::exchange`), bodies bounded; the
//! [`SwarmApi`] trait is the seam tests replace.

use super::probe::ProbeTls;
use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::Duration,
};

/// Largest response the client reads (`/info` is a few KiB).
const MAX_RESPONSE: usize = 1 << 20;
/// The Docker API version of dockerd 20.10 (the images' Docker).
const API: &str = "/v1.41";

/// Why a swarm request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SwarmError {
    /// Docker could not be reached (connect, TLS, timeout).
    #[error("{0}")]
    Unreachable(String),
    /// Docker answered with an error status.
    #[error("Docker answered {status}: {message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// Docker's message, bounded.
        message: String,
    },
    /// Docker's answer could not be read.
    #[error("unexpected answer from Docker: {0}")]
    Malformed(String),
}

/// Where and as whom the agent talks to one segment's Docker.
#[derive(Clone)]
pub struct DockerTarget {
    /// `IP:2376`.
    pub endpoint: SocketAddr,
    /// The agent's client certificate for the segment's cluster CA.
    pub tls: ProbeTls,
    /// The segment's current agent swarm token.
    pub token: String,
}

/// The swarm as one node's Docker sees it (`GET /info`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeInfo {
    /// The node id (empty outside a swarm).
    pub node_id: String,
    /// `inactive`, `pending`, `active`, `error` or `locked`.
    pub state: String,
    /// Whether the node is a manager.
    pub manager: bool,
    /// Managers in the swarm.
    pub managers: u32,
    /// Nodes in the swarm.
    pub nodes: u32,
    /// The managers this node knows, `IP:2377`.
    pub remote_managers: Vec<SocketAddrV4>,
}

impl NodeInfo {
    /// Whether the node is in a swarm.
    pub fn active(&self) -> bool {
        self.state == "active"
    }
}

/// One node of the swarm as a manager lists it (`GET /nodes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedNode {
    /// Its id.
    pub id: String,
    /// The address it is reached on (`Status.Addr`, or for a manager whose
    /// status says `0.0.0.0` its `ManagerStatus.Addr`).
    pub address: Option<Ipv4Addr>,
    /// Whether it is a manager.
    pub manager: bool,
    /// Whether the managers have lost it (`down` or `disconnected`).
    pub down: bool,
}

/// The join tokens of a swarm (`GET /swarm`, managers only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinTokens {
    /// For workers.
    pub worker: String,
    /// For managers.
    pub manager: String,
}

/// Docker's swarm API as the agent uses it.
#[async_trait::async_trait]
pub trait SwarmApi: Send + Sync + 'static {
    /// The node's view of its swarm.
    async fn info(&self, t: &DockerTarget) -> Result<NodeInfo, SwarmError>;
    /// A new swarm advertised on `advertise`; returns the node id.
    async fn init(&self, t: &DockerTarget, advertise: Ipv4Addr) -> Result<String, SwarmError>;
    /// Joins through `managers` with `token` (Docker waits up to 20 s).
    async fn join(
        &self,
        t: &DockerTarget,
        advertise: Ipv4Addr,
        managers: &[SocketAddrV4],
        token: &str,
    ) -> Result<(), SwarmError>;
    /// The swarm's join tokens (a manager's).
    async fn join_tokens(&self, t: &DockerTarget) -> Result<JoinTokens, SwarmError>;
    /// Leaves the swarm (`force`: also the last manager).
    async fn leave(&self, t: &DockerTarget, force: bool) -> Result<(), SwarmError>;
    /// Makes node `id` a worker (asked of a manager).
    async fn demote(&self, t: &DockerTarget, id: &str) -> Result<(), SwarmError>;
    /// Removes node `id` from the node list (asked of a manager).
    async fn remove_node(&self, t: &DockerTarget, id: &str) -> Result<(), SwarmError>;
    /// The swarm's nodes (asked of a manager).
    async fn nodes(&self, t: &DockerTarget) -> Result<Vec<ListedNode>, SwarmError>;
}

/// The real client.
pub struct DockerSwarm;

#[async_trait::async_trait]
impl SwarmApi for DockerSwarm {
    async fn info(&self, t: &DockerTarget) -> Result<NodeInfo, SwarmError> {
        let v = call(t, "GET", "/info", None, Duration::from_secs(10)).await?;
        let s = &v["Swarm"];
        let remote_managers = s["RemoteManagers"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|m| m["Addr"].as_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        let count = |k: &str| s[k].as_u64().unwrap_or(0) as u32;
        Ok(NodeInfo {
            node_id: s["NodeID"].as_str().unwrap_or_default().to_owned(),
            state: s["LocalNodeState"].as_str().unwrap_or_default().to_owned(),
            manager: s["ControlAvailable"].as_bool().unwrap_or(false),
            managers: count("Managers"),
            nodes: count("Nodes"),
            remote_managers,
        })
    }

    async fn init(&self, t: &DockerTarget, advertise: Ipv4Addr) -> Result<String, SwarmError> {
        let body = serde_json::json!({
            "ListenAddr": "0.0.0.0:2377",
            "AdvertiseAddr": format!("{advertise}:2377"),
        });
        let v = call(
            t,
            "POST",
            "/swarm/init",
            Some(body),
            Duration::from_secs(30),
        )
        .await?;
        v.as_str()
            .map(str::to_owned)
            .ok_or_else(|| SwarmError::Malformed("swarm init returned no node id".into()))
    }

    async fn join(
        &self,
        t: &DockerTarget,
        advertise: Ipv4Addr,
        managers: &[SocketAddrV4],
        token: &str,
    ) -> Result<(), SwarmError> {
        let body = serde_json::json!({
            "ListenAddr": "0.0.0.0:2377",
            "AdvertiseAddr": format!("{advertise}:2377"),
            "RemoteAddrs": managers.iter().map(|m| m.to_string()).collect::<Vec<_>>(),
            "JoinToken": token,
        });
        call(
            t,
            "POST",
            "/swarm/join",
            Some(body),
            Duration::from_secs(40),
        )
        .await?;
        Ok(())
    }

    async fn join_tokens(&self, t: &DockerTarget) -> Result<JoinTokens, SwarmError> {
        let v = call(t, "GET", "/swarm", None, Duration::from_secs(10)).await?;
        let token = |k: &str| {
            v["JoinTokens"][k]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| SwarmError::Malformed(format!("no {k} join token")))
        };
        Ok(JoinTokens {
            worker: token("Worker")?,
            manager: token("Manager")?,
        })
    }

    async fn leave(&self, t: &DockerTarget, force: bool) -> Result<(), SwarmError> {
        let path = format!("/swarm/leave?force={force}");
        call(t, "POST", &path, None, Duration::from_secs(20)).await?;
        Ok(())
    }

    async fn demote(&self, t: &DockerTarget, id: &str) -> Result<(), SwarmError> {
        let id = node_id(id)?;
        let node = call(
            t,
            "GET",
            &format!("/nodes/{id}"),
            None,
            Duration::from_secs(10),
        )
        .await?;
        let version = node["Version"]["Index"]
            .as_u64()
            .ok_or_else(|| SwarmError::Malformed("node without a version".into()))?;
        let mut spec = node["Spec"].clone();
        spec["Role"] = "worker".into();
        let path = format!("/nodes/{id}/update?version={version}");
        call(t, "POST", &path, Some(spec), Duration::from_secs(10)).await?;
        Ok(())
    }

    async fn remove_node(&self, t: &DockerTarget, id: &str) -> Result<(), SwarmError> {
        let path = format!("/nodes/{}?force=true", node_id(id)?);
        call(t, "DELETE", &path, None, Duration::from_secs(10)).await?;
        Ok(())
    }

    async fn nodes(&self, t: &DockerTarget) -> Result<Vec<ListedNode>, SwarmError> {
        let v = call(t, "GET", "/nodes", None, Duration::from_secs(10)).await?;
        let nodes = v
            .as_array()
            .ok_or_else(|| SwarmError::Malformed("GET /nodes: not a list".into()))?;
        Ok(nodes.iter().filter_map(swarm_node).collect())
    }
}

/// One entry of `GET /nodes`; `None` without an id.
fn swarm_node(n: &serde_json::Value) -> Option<ListedNode> {
    let id = n["ID"].as_str()?.to_owned();
    let status: Option<Ipv4Addr> = n["Status"]["Addr"].as_str().and_then(|a| a.parse().ok());
    let managed: Option<Ipv4Addr> = n["ManagerStatus"]["Addr"]
        .as_str()
        .and_then(|a| a.parse::<SocketAddrV4>().ok())
        .map(|a| *a.ip());
    let address = status.filter(|a| !a.is_unspecified()).or(managed);
    let state = n["Status"]["State"].as_str().unwrap_or_default();
    Some(ListedNode {
        id,
        address,
        manager: n["Spec"]["Role"].as_str() == Some("manager"),
        down: matches!(state, "down" | "disconnected"),
    })
}

/// A node id as Docker makes them (25 base-36 digits); anything else is
/// never put into a path.
fn node_id(id: &str) -> Result<&str, SwarmError> {
    let ok = !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric());
    ok.then_some(id)
        .ok_or_else(|| SwarmError::Malformed("a node id that is not alphanumeric".into()))
}

/// One request, its JSON answer (`null` for an empty body).
async fn call(
    t: &DockerTarget,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
    timeout: Duration,
) -> Result<serde_json::Value, SwarmError> {
    let endpoint = t.endpoint;
    let exchange = exchange(t, method, path, body);
    let (status, body) = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| {
            SwarmError::Unreachable(format!(
                "{endpoint}: {method} {path}: no answer within {timeout:?}"
            ))
        })??;
    let text = String::from_utf8_lossy(&body);
    if !(200..300).contains(&status) {
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_owned))
            .unwrap_or_else(|| text.trim().to_owned());
        return Err(SwarmError::Refused {
            status,
            message: crate::model::truncated(&message, 512),
        });
    }
    if text.trim().is_empty() {
        return Ok(serde_json::Value::Null);
    }
    serde_json::from_slice(&body)
        .map_err(|e| SwarmError::Malformed(format!("{method} {path}: {e}")))
}

async fn exchange(
    t: &DockerTarget,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<(u16, Vec<u8>), SwarmError> {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = hyper::Request::builder()
        .method(method)
        .uri(format!("{API}{path}"))
        .header(super::agent_token::HEADER, &t.token)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(http_body_util::Full::from(body));
    let (status, body) = super::probe::exchange(t.endpoint, t.tls.config(), request, MAX_RESPONSE)
        .await
        .map_err(SwarmError::Unreachable)?;
    Ok((status.as_u16(), body.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_are_read_with_their_addresses_and_states() {
        let list: serde_json::Value = serde_json::from_str(
            r#"[{"ID":"a1","Spec":{"Role":"manager"},"Status":{"State":"ready","Addr":"0.0.0.0"},
                 "ManagerStatus":{"Addr":"203.0.113.10:2377"}},
                {"ID":"b2","Spec":{"Role":"worker"},"Status":{"State":"down","Addr":"198.51.100.7"}},
                {"ID":"c3","Spec":{"Role":"worker"},"Status":{"State":"disconnected"}},
                {"Spec":{"Role":"worker"}}]"#,
        )
        .unwrap();
        let nodes: Vec<ListedNode> = list
            .as_array()
            .unwrap()
            .iter()
            .filter_map(swarm_node)
            .collect();
        assert_eq!(
            nodes,
            [
                ListedNode {
                    id: "a1".into(),
                    address: Some(Ipv4Addr::new(203, 0, 113, 10)),
                    manager: true,
                    down: false
                },
                ListedNode {
                    id: "b2".into(),
                    address: Some(Ipv4Addr::new(198, 51, 100, 7)),
                    manager: false,
                    down: true
                },
                ListedNode {
                    id: "c3".into(),
                    address: None,
                    manager: false,
                    down: true
                },
            ]
        );
    }

    #[test]
    fn only_plain_node_ids_reach_a_path() {
        assert!(node_id("xk2qpzq1e5d0jm4yflnnn0ncq").is_ok());
        for bad in ["", "../swarm/leave", "a?force=true", "a b", &"a".repeat(65)] {
            assert!(node_id(bad).is_err(), "{bad:?}");
        }
    }
}
