//! The plugin's one question to dockerd: which host paths an existing
//! container binds (asked before a start, restart or `docker cp`, which
//! mount them again from what dockerd stored at create).
//!
//! Asked over dockerd's local socket (`/var/run/docker.sock` in the
//! segment) with `GET /containers/{name}/json` and, for each `local`
//! volume it mounts, `GET /volumes/{name}`. Those requests pass through
//! the plugin too (plain reads: allowed at once), so nothing waits on
//! itself.

use std::path::PathBuf;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::UnixStream;

use crate::authz::ContainerLookup;
use crate::policy::Existing;

/// dockerd's local socket inside a segment.
pub const DEFAULT_DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// Largest inspect answer read.
const MAX_ANSWER: usize = 8 << 20;

/// How long one lookup may take before the request is refused.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Looks containers up in dockerd over its unix socket.
#[derive(Debug, Clone)]
pub struct DockerSocket {
    path: PathBuf,
}

impl DockerSocket {
    /// A client of dockerd's socket at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        DockerSocket { path: path.into() }
    }

    async fn get(&self, path: &str) -> Result<(StatusCode, Bytes), String> {
        let stream = UnixStream::connect(&self.path)
            .await
            .map_err(|e| format!("cannot reach dockerd at {}: {e}", self.path.display()))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("dockerd: {e}"))?;
        tokio::spawn(conn);
        let request = Request::get(path)
            .header("Host", "docker")
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("request: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("dockerd: {e}"))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| format!("dockerd's answer: {e}"))?
            .to_bytes();
        Ok((status, body))
    }

    async fn get_json(&self, path: &str) -> Result<Option<Value>, String> {
        let (status, body) = self.get(path).await?;
        match status {
            StatusCode::NOT_FOUND => Ok(None),
            StatusCode::OK => serde_json::from_slice(&body)
                .map(Some)
                .map_err(|e| format!("dockerd's answer to {path} is not JSON: {e}")),
            other => Err(format!("dockerd answered {path} with {other}")),
        }
    }

    async fn lookup_sources(&self, name: &str) -> Result<Existing, String> {
        let Some(container) = self
            .get_json(&format!("/containers/{}/json", encode(name)))
            .await?
        else {
            return Ok(Existing::Missing);
        };
        let (mut sources, volumes) = host_paths(&container);
        for volume in volumes {
            if let Some(v) = self
                .get_json(&format!("/volumes/{}", encode(&volume)))
                .await?
            {
                sources.extend(bound_device(&v));
            }
        }
        Ok(Existing::Sources(sources))
    }
}

#[async_trait::async_trait]
impl ContainerLookup for DockerSocket {
    async fn lookup(&self, name: &str) -> Existing {
        match tokio::time::timeout(LOOKUP_TIMEOUT, self.lookup_sources(name)).await {
            Ok(Ok(existing)) => existing,
            Ok(Err(e)) => Existing::Failed(e),
            Err(_) => Existing::Failed(format!("dockerd did not answer within {LOOKUP_TIMEOUT:?}")),
        }
    }
}

/// From a container's inspect document: the host paths it binds (its
/// `HostConfig.Binds` and bind `Mounts`, and every bind mount point,
/// `--volumes-from` included) and the names of the `local` volumes it
/// mounts (whose options may bind a host path too).
pub fn host_paths(container: &Value) -> (Vec<String>, Vec<String>) {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut sources: Vec<String> = strings(&container["HostConfig"]["Binds"])
        .iter()
        .filter_map(|bind| bind.split(':').next().filter(|s| s.starts_with('/')))
        .map(String::from)
        .collect();
    let mut volumes = Vec::new();
    let mounts = [&container["HostConfig"]["Mounts"], &container["Mounts"]];
    for mount in mounts.iter().filter_map(|m| m.as_array()).flatten() {
        let kind = mount["Type"].as_str().unwrap_or("");
        if kind == "bind" {
            sources.extend(mount["Source"].as_str().map(String::from));
        } else if kind == "volume" && matches!(mount["Driver"].as_str(), None | Some("local")) {
            volumes.extend(mount["Name"].as_str().map(String::from));
        }
    }
    sources.sort();
    sources.dedup();
    volumes.sort();
    volumes.dedup();
    (sources, volumes)
}

/// The device of a `local` volume whose options bind it (`o=bind`).
pub fn bound_device(volume: &Value) -> Option<String> {
    let options = &volume["Options"];
    let binds = options["o"]
        .as_str()?
        .split(',')
        .any(|f| matches!(f.trim(), "bind" | "rbind"));
    binds.then(|| options["device"].as_str().unwrap_or("").to_string())
}

/// Percent-encodes a container or volume name for a request path.
fn encode(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_paths_of_an_inspect_document() {
        let inspect = serde_json::json!({
            "HostConfig": {
                "Binds": ["/var/lib/docker/x/esc:/h", "named:/n", "/var/lib/docker/y:/y:ro"],
                "Mounts": [{"Type": "bind", "Source": "/var/lib/docker/m", "Target": "/m"}]
            },
            "Mounts": [
                {"Type": "bind", "Source": "/var/lib/docker/x/esc", "Destination": "/h"},
                {"Type": "volume", "Name": "named", "Driver": "local", "Destination": "/n"},
                {"Type": "volume", "Name": "other", "Driver": "convoy", "Destination": "/o"},
                {"Type": "tmpfs", "Destination": "/t"}
            ]
        });
        let (sources, volumes) = host_paths(&inspect);
        assert_eq!(
            sources,
            [
                "/var/lib/docker/m",
                "/var/lib/docker/x/esc",
                "/var/lib/docker/y"
            ]
        );
        assert_eq!(volumes, ["named"]);
        assert_eq!(host_paths(&serde_json::json!({})), (vec![], vec![]));
    }

    #[test]
    fn devices_of_bound_volumes() {
        let bound = serde_json::json!({"Options": {"type": "none", "o": "rbind,ro", "device": "/var/lib/docker/x"}});
        assert_eq!(bound_device(&bound).as_deref(), Some("/var/lib/docker/x"));
        let tmpfs =
            serde_json::json!({"Options": {"type": "tmpfs", "o": "size=1m", "device": "tmpfs"}});
        assert_eq!(bound_device(&tmpfs), None);
        assert_eq!(bound_device(&serde_json::json!({"Options": null})), None);
        assert_eq!(encode("a/b c"), "a%2Fb%20c");
    }
}
