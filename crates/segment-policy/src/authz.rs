//! Docker's authorization plugin protocol over a unix socket.
//!
//! dockerd finds a legacy plugin named `segment-policy` at
//! `/run/docker/plugins/segment-policy.sock`, activates it once
//! (`POST /Plugin.Activate`), then before serving each API request posts
//! `AuthZPlugin.AuthZReq` and after it `AuthZPlugin.AuthZRes`. A refusal
//! reaches the client as HTTP 403 `authorization denied by plugin
//! segment-policy: MSG`. If the plugin does not answer, dockerd refuses the
//! request (`plugin segment-policy failed with error: ...`): the whole
//! arrangement fails closed.
//!
//! dockerd forwards the request body (base64 in `RequestBody`) only when the
//! request has `Content-Type: application/json` and a Content-Length between
//! 1 byte and 1 MiB (`pkg/authorization/authz.go`); the policy refuses the
//! endpoints it must inspect when the body is missing (`SEGMENT-1100`).
//!
//! Before deciding on a start, restart or `docker cp`, the plugin asks
//! dockerd (over its local socket, [`ContainerLookup`]) which host paths the
//! container binds, so that the policy checks them again as the kernel finds
//! them now; a lookup that fails refuses the request (`SEGMENT-1104`).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use serde::{Deserialize, Serialize};
use tokio::net::UnixListener;
use tracing::{debug, info, warn};

use std::collections::HashMap;

use crate::agent_token::{self, AgentToken};
use crate::policy::{
    DataArea, Decision, Existing, Request as PolicyRequest, Rule, container_to_look_up,
    evaluate_request,
};

/// The plugin name given to `dockerd --authorization-plugin`.
pub const PLUGIN_NAME: &str = "segment-policy";

/// Where dockerd looks for the plugin.
pub const DEFAULT_SOCKET: &str = "/run/docker/plugins/segment-policy.sock";

/// Largest `AuthZReq` accepted: a 1 MiB body grows by a third in base64,
/// plus headers and peer certificates.
const MAX_AUTHZ_REQUEST: usize = 4 << 20;

/// How long in-flight requests may take once shutdown has begun.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1+json";

/// The fields of dockerd's `authorization.Request` that the policy reads.
#[derive(Debug, Default, Deserialize)]
pub struct AuthZRequest {
    /// The authenticated user, if any (TLS client certificate CN).
    #[serde(rename = "User", default)]
    pub user: Option<String>,
    /// How the user was authenticated (`TLS` for a client certificate).
    #[serde(rename = "UserAuthNMethod", default)]
    pub user_authn_method: Option<String>,
    /// The API request's headers (one value per name: the last, when
    /// repeated), without `Authorization` and registry credentials.
    #[serde(rename = "RequestHeaders", default)]
    pub headers: Option<HashMap<String, String>>,
    /// HTTP method of the API request.
    #[serde(rename = "RequestMethod", default)]
    pub method: Option<String>,
    /// Raw request target of the API request (Go field `RequestURI`, JSON
    /// key `RequestUri`).
    #[serde(rename = "RequestUri", alias = "RequestURI", default)]
    pub uri: Option<String>,
    /// The API request body, base64 (Go `[]byte`), when dockerd forwarded it.
    #[serde(rename = "RequestBody", default)]
    pub body: Option<String>,
}

/// dockerd's `authorization.Response`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthZResponse {
    /// Whether dockerd may serve the request.
    #[serde(rename = "Allow")]
    pub allow: bool,
    /// The refusal shown to the client.
    #[serde(rename = "Msg")]
    pub msg: String,
    /// A plugin failure (unused: refusals go in `Msg`).
    #[serde(rename = "Err")]
    pub err: String,
}

impl From<&Decision> for AuthZResponse {
    fn from(decision: &Decision) -> Self {
        AuthZResponse {
            allow: decision.is_allowed(),
            msg: if decision.is_allowed() {
                String::new()
            } else {
                decision.to_string()
            },
            err: String::new(),
        }
    }
}

impl AuthZRequest {
    /// A header's value; names compare case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .as_ref()?
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Looks up, in dockerd, the bind sources of an existing container (see
/// [`crate::policy::Request::existing`]).
#[async_trait::async_trait]
pub trait ContainerLookup: Send + Sync {
    /// What dockerd holds for container `name`.
    async fn lookup(&self, name: &str) -> Existing;
}

/// What the plugin consults besides the request: the data area as the
/// kernel sees it, and dockerd's record of existing containers.
pub struct Segment {
    /// The customer data area.
    pub area: Arc<dyn DataArea>,
    /// dockerd's containers.
    pub containers: Arc<dyn ContainerLookup>,
    /// The agent's swarm token (swarm membership requests need it).
    pub agent_token: AgentToken,
}

/// The container a raw payload's request mounts again, if any.
fn container_of(payload: &[u8]) -> Option<String> {
    let request: AuthZRequest = serde_json::from_slice(payload).ok()?;
    container_to_look_up(request.method.as_deref()?, request.uri.as_deref()?)
}

/// Decides on one raw `AuthZPlugin.AuthZReq` payload; `existing` is what
/// dockerd holds for the container the request names, when looked up.
pub fn authorize(
    payload: &[u8],
    area: &dyn DataArea,
    existing: Option<&Existing>,
    agent_token: &AgentToken,
) -> Decision {
    let request: AuthZRequest = match serde_json::from_slice(payload) {
        Ok(r) => r,
        Err(e) => return protocol_error(format!("invalid JSON: {e}")),
    };
    let (Some(method), Some(uri)) = (request.method.as_deref(), request.uri.as_deref()) else {
        return protocol_error("RequestMethod or RequestUri missing".into());
    };
    let body = match request
        .body
        .as_deref()
        .map(|b| base64::engine::general_purpose::STANDARD.decode(b))
    {
        None => None,
        Some(Ok(bytes)) => Some(bytes),
        Some(Err(e)) => return protocol_error(format!("RequestBody is not base64: {e}")),
    };
    let decision = evaluate_request(
        &PolicyRequest {
            method,
            uri,
            body: body.as_deref(),
            content_type: request.header("Content-Type"),
            user: request.user.as_deref(),
            agent: agent_token.matches(request.header(agent_token::HEADER)),
            existing,
        },
        area,
    );
    let user = request.user.as_deref().unwrap_or("");
    match decision.code() {
        Some(code) => info!(code, method, uri, user, "request refused"),
        None => debug!(method, uri, user, "request allowed"),
    }
    decision
}

fn protocol_error(detail: String) -> Decision {
    warn!(%detail, "malformed authorization request from dockerd");
    Rule::ProtocolError.deny(format!(
        "the authorization request could not be read and is refused by policy: {detail}"
    ))
}

/// Errors setting up the plugin socket.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The socket's directory could not be created.
    #[error("cannot create plugin directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Another process is serving on the socket.
    #[error("{path} is in use by a running plugin")]
    InUse {
        /// The socket path.
        path: PathBuf,
    },
    /// Something other than a stale socket is in the way.
    #[error("{path} exists and is not a socket")]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// The socket could not be created, replaced or restricted.
    #[error("cannot listen on {path}: {source}")]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Creates the plugin socket at `path` (mode 0600), replacing a stale one
/// but never one a running plugin still answers on. Must be called inside a
/// tokio runtime.
pub fn bind(path: &Path) -> Result<UnixListener, ServeError> {
    let listen_err = |source| ServeError::Listen {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| ServeError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ServeError::InUse {
                    path: path.to_path_buf(),
                });
            }
            std::fs::remove_file(path).map_err(listen_err)?;
        }
        Ok(_) => {
            return Err(ServeError::NotASocket {
                path: path.to_path_buf(),
            });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(listen_err(e)),
    }
    let listener = UnixListener::bind(path).map_err(listen_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(listen_err)?;
    Ok(listener)
}

/// Serves the plugin protocol on `listener` until `shutdown` completes, then
/// lets in-flight requests finish for a few seconds.
pub async fn serve(
    listener: UnixListener,
    segment: Arc<Segment>,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let segment = Arc::clone(&segment);
                    let service = service_fn(move |req| handle(req, Arc::clone(&segment)));
                    let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                    let conn = graceful.watch(conn);
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            debug!(error = %e, "plugin connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    // e.g. EMFILE: back off instead of spinning.
                    warn!(error = %e, "accept on plugin socket failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        warn!("plugin connections still open after the grace period");
    }
}

async fn handle(
    req: Request<Incoming>,
    segment: Arc<Segment>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::POST {
        return Ok(json(
            StatusCode::METHOD_NOT_ALLOWED,
            &serde_json::json!({"Err": "use POST"}),
        ));
    }
    let response = match req.uri().path() {
        "/Plugin.Activate" => json(
            StatusCode::OK,
            &serde_json::json!({"Implements": ["authz"]}),
        ),
        "/AuthZPlugin.AuthZReq" => {
            let decision = authz_request(req.into_body(), segment).await;
            json(StatusCode::OK, &AuthZResponse::from(&decision))
        }
        "/AuthZPlugin.AuthZRes" => {
            drain(req.into_body()).await;
            json(StatusCode::OK, &AuthZResponse::from(&Decision::Allow))
        }
        other => json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"Err": format!("unknown plugin endpoint {other}")}),
        ),
    };
    Ok(response)
}

async fn authz_request(body: Incoming, segment: Arc<Segment>) -> Decision {
    let payload = match Limited::new(body, MAX_AUTHZ_REQUEST).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => return protocol_error(format!("cannot read the request: {e}")),
    };
    // dockerd serves the lookup while this request waits (its own
    // authorization is a plain GET): no lock is held across it.
    let existing = match container_of(&payload) {
        Some(name) => Some(segment.containers.lookup(&name).await),
        None => None,
    };
    // The data area is checked on the filesystem: keep it off the async workers.
    tokio::task::spawn_blocking(move || {
        authorize(
            &payload,
            segment.area.as_ref(),
            existing.as_ref(),
            &segment.agent_token,
        )
    })
    .await
    .unwrap_or_else(|e| protocol_error(format!("policy evaluation failed: {e}")))
}

/// Reads and discards a body (AuthZRes carries the whole API response).
async fn drain(mut body: Incoming) {
    while let Some(frame) = body.frame().await {
        if frame.is_err() {
            break;
        }
    }
}

fn json(status: StatusCode, value: &impl Serialize) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(CONTENT_TYPE),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::LexicalArea;

    fn request(method: &str, uri: &str, body: Option<&str>) -> Vec<u8> {
        let body = body.map(|b| base64::engine::general_purpose::STANDARD.encode(b));
        serde_json::to_vec(&serde_json::json!({
            "User": "customer",
            "UserAuthNMethod": "TLS",
            "RequestMethod": method,
            "RequestUri": uri,
            "RequestBody": body,
            "RequestHeaders": {"Content-Type": "application/json"},
        }))
        .unwrap()
    }

    #[test]
    fn authorize_decodes_dockerd_requests() {
        let privileged = r#"{"Image":"busybox","HostConfig":{"Privileged":true}}"#;
        let cases: Vec<(Vec<u8>, Option<&str>)> = vec![
            (
                request("POST", "/v1.41/containers/create", Some(privileged)),
                Some("SEGMENT-1001"),
            ),
            (
                request(
                    "POST",
                    "/v1.41/containers/create",
                    Some(r#"{"Image":"busybox"}"#),
                ),
                None,
            ),
            (
                request("POST", "/v1.41/containers/create", None),
                Some("SEGMENT-1100"),
            ),
            (request("GET", "/v1.41/containers/json", None), None),
            (
                br#"{"RequestMethod":"POST","RequestUri":"/build","RequestBody":"!!"}"#.to_vec(),
                Some("SEGMENT-1102"),
            ),
            (
                br#"{"RequestMethod":"POST"}"#.to_vec(),
                Some("SEGMENT-1102"),
            ),
            (b"garbage".to_vec(), Some("SEGMENT-1102")),
        ];
        for (payload, want) in cases {
            let got = authorize(&payload, &LexicalArea, None, &AgentToken::default());
            assert_eq!(got.code(), want, "{}", String::from_utf8_lossy(&payload));
        }
    }

    /// Payloads captured from the real dockerd 20.10 (`capture/fake_plugin.py`).
    #[test]
    fn authorize_real_dockerd_payloads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/docker/authz");
        let cases = [
            ("authzreq_create_privileged.json", Some("SEGMENT-1001")),
            ("authzreq_ping.json", None),
        ];
        for (name, want) in cases {
            let payload = std::fs::read(dir.join(name)).unwrap();
            assert_eq!(
                authorize(&payload, &LexicalArea, None, &AgentToken::default()).code(),
                want,
                "{name}"
            );
        }
    }

    #[test]
    fn response_wire_format() {
        let deny = Rule::Privileged.deny("privileged containers are not allowed by policy");
        let wire = serde_json::to_value(AuthZResponse::from(&deny)).unwrap();
        assert_eq!(
            wire,
            serde_json::json!({
                "Allow": false,
                "Msg": "SEGMENT-1001: privileged containers are not allowed by policy",
                "Err": "",
            })
        );
        let allow = serde_json::to_value(AuthZResponse::from(&Decision::Allow)).unwrap();
        assert_eq!(
            allow,
            serde_json::json!({"Allow": true, "Msg": "", "Err": ""})
        );
    }
}
