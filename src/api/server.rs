//! The gRPC server: the agent's service plus server reflection and
//! `grpc.health.v1`, on a unix socket (mode 0600) and, when configured, TCP
//! with mutual TLS (plaintext only on loopback).
//!
//! Each listener holds at most `listen.max_connections` connections and
//! closes one that has had no open call for `listen.idle_timeout_seconds`
//! ([`connections`], [`calls`]); `limits` sets the HTTP/2 ones.

pub mod calls;
pub mod connections;

use super::SegmentAgentService;
use crate::{config::ListenConfig, metrics::rpc::RpcMetricsLayer, proto};
use connections::{ConnLimits, Limited};
use std::{
    future::Future,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};
use tokio::net::{TcpListener, UnixListener};
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic_health::pb::health_server::{Health, HealthServer};

/// How long open calls may run on after a shutdown request.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Streams one connection may have open at once (WatchEvents included);
/// hyper's default is unbounded.
pub const MAX_CONCURRENT_STREAMS: u32 = 128;
/// HTTP/2 pings on a quiet connection, and how long an answer may take:
/// a peer that vanished (no FIN) frees its connection within 40 s.
const KEEPALIVE: (std::time::Duration, std::time::Duration) = (
    std::time::Duration::from_secs(30),
    std::time::Duration::from_secs(10),
);
/// Connections are renewed (GOAWAY) after this long, open calls given
/// [`CONNECTION_AGE_GRACE`]: nothing a client opens lives for ever.
/// Watchers reconnect and get a fresh snapshot.
const MAX_CONNECTION_AGE: std::time::Duration = std::time::Duration::from_secs(3600);
const CONNECTION_AGE_GRACE: std::time::Duration = std::time::Duration::from_secs(600);

/// The server's HTTP/2 limits: streams, pings, connection age.
fn limits(builder: Server) -> Server {
    builder
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .http2_keepalive_interval(Some(KEEPALIVE.0))
        .http2_keepalive_timeout(Some(KEEPALIVE.1))
        .tcp_keepalive(Some(std::time::Duration::from_secs(60)))
        .max_connection_age(MAX_CONNECTION_AGE)
        .max_connection_age_grace(CONNECTION_AGE_GRACE)
}

/// Setting up a listener failed.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// Socket or file I/O.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Path or address.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// TLS set-up or serving.
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Reflection set-up.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// Another process (another agent with this configuration) serves there.
    #[error(
        "another process answers on {0}: an agent with this configuration is already running; \
         stop it first (this one touched nothing)"
    )]
    InUse(String),
}

/// Fails when something answers on the unix socket `path`: two agents over
/// one libvirt, one state dir and two address pools would hand out the same
/// addresses. Run before anything else at start (recovery changes things).
pub fn refuse_if_answered(path: &Path) -> Result<(), ListenError> {
    if path.as_os_str().is_empty() {
        return Ok(());
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(ListenError::InUse(path.display().to_string())),
        // Refused (a stale file) or absent: nobody serves there.
        Err(_) => Ok(()),
    }
}

/// The socket file this agent bound, by device and inode: at exit it removes
/// the path only while the path is still that file.
struct OwnedSocket {
    path: PathBuf,
    id: (u64, u64),
}

impl OwnedSocket {
    fn of(path: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::symlink_metadata(path)?;
        Ok(Self {
            path: path.to_owned(),
            id: (m.dev(), m.ino()),
        })
    }

    fn remove(&self) {
        use std::os::unix::fs::MetadataExt;
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if (m.dev(), m.ino()) == self.id => {
                let _ = std::fs::remove_file(&self.path);
            }
            Ok(_) => tracing::warn!(socket = %self.path.display(),
                "the socket path is another process's now; leaving it"),
            Err(_) => {}
        }
    }
}

fn io(what: &'static str, path: impl Into<String>) -> impl FnOnce(std::io::Error) -> ListenError {
    let path = path.into();
    move |source| ListenError::Io { what, path, source }
}

/// Bound listeners, ready to serve.
pub struct Listeners {
    unix: Option<(UnixListener, OwnedSocket)>,
    tcp: Option<(TcpListener, Option<ServerTlsConfig>)>,
    limits: ConnLimits,
}

impl Listeners {
    /// Binds what `config` asks for. A stale socket file is replaced; one
    /// that answers is another agent's ([`ListenError::InUse`]).
    pub async fn bind(config: &ListenConfig) -> Result<Self, ListenError> {
        let unix = if config.socket.as_os_str().is_empty() {
            None
        } else {
            Some(bind_unix(&config.socket)?)
        };
        let tcp = match config.tcp {
            None => None,
            Some(addr) => {
                let listener = TcpListener::bind(addr)
                    .await
                    .map_err(io("bind", addr.to_string()))?;
                Some((listener, tls_config(config)?))
            }
        };
        let limits = ConnLimits {
            idle_timeout: config.idle_timeout(),
            max_connections: config.max_connections as usize,
        };
        Ok(Self { unix, tcp, limits })
    }

    /// The TCP address actually bound (for tests that ask for port 0).
    pub fn tcp_addr(&self) -> Option<std::net::SocketAddr> {
        self.tcp.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }
}

fn bind_unix(path: &Path) -> Result<(UnixListener, OwnedSocket), ListenError> {
    let shown = path.display().to_string();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io("create", dir.display().to_string()))?;
    }
    refuse_if_answered(path)?;
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("remove stale socket", shown)(e)),
    }
    let listener = UnixListener::bind(path).map_err(io("bind", shown.clone()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io("chmod", shown.clone()))?;
    let owned = OwnedSocket::of(path).map_err(io("stat", shown))?;
    Ok((listener, owned))
}

fn tls_config(config: &ListenConfig) -> Result<Option<ServerTlsConfig>, ListenError> {
    let (Some(cert), Some(key), Some(ca)) =
        (&config.tls_cert, &config.tls_key, &config.tls_client_ca)
    else {
        return Ok(None);
    };
    let read = |p: &PathBuf| std::fs::read(p).map_err(io("read", p.display().to_string()));
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(read(cert)?, read(key)?))
        .client_ca_root(Certificate::from_pem(read(ca)?));
    Ok(Some(tls))
}

/// Serves the API on every listener until `shutdown` resolves; every call
/// goes through `rpc_metrics`.
pub async fn serve(
    listeners: Listeners,
    service: SegmentAgentService,
    health_service: HealthServer<impl Health>,
    rpc_metrics: RpcMetricsLayer,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ListenError> {
    let agent = proto::agent::segment_agent_server::SegmentAgentServer::new(service);
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut tasks = tokio::task::JoinSet::new();
    let make_router = |tls: Option<ServerTlsConfig>| -> Result<_, ListenError> {
        let mut builder = limits(Server::builder())
            .layer(calls::CallTrackingLayer)
            .layer(rpc_metrics.clone())
            .layer(super::codes::RefusalCodesLayer);
        if let Some(tls) = tls {
            builder = builder.tls_config(tls)?;
        }
        Ok(builder
            .add_service(health_service.clone())
            .add_service(reflection.clone())
            .add_service(reflection_alpha.clone())
            .add_service(agent.clone()))
    };
    let limits = listeners.limits;
    let metrics = rpc_metrics.metrics().clone();
    if let Some((listener, path)) = listeners.unix {
        let router = make_router(None)?;
        let mut stop = stop_tx.subscribe();
        let incoming = Limited::new(
            UnixListenerStream::new(listener),
            "unix",
            limits,
            metrics.listener("unix"),
        );
        tasks.spawn(async move {
            let r = router
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stop.recv().await;
                })
                .await;
            path.remove();
            r
        });
    }
    if let Some((listener, tls)) = listeners.tcp {
        let router = make_router(tls)?;
        let mut stop = stop_tx.subscribe();
        let incoming = Limited::new(
            TcpListenerStream::new(listener),
            "tcp",
            limits,
            metrics.listener("tcp"),
        );
        tasks.spawn(async move {
            router
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stop.recv().await;
                })
                .await
        });
    }
    let (stopping_tx, stopping) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(());
        let _ = stopping_tx.send(());
    });
    let drain = async {
        while let Some(done) = tasks.join_next().await {
            done.map_err(|e| ListenError::Io {
                what: "serve",
                path: "listener task".into(),
                source: std::io::Error::other(e),
            })??;
        }
        Ok::<(), ListenError>(())
    };
    tokio::pin!(drain);
    tokio::select! {
        r = &mut drain => return r,
        _ = stopping => {}
    }
    // Give open calls a moment to finish, but never let a client that keeps
    // its connection open hold the agent up.
    if tokio::time::timeout(SHUTDOWN_GRACE, &mut drain)
        .await
        .is_err()
    {
        tracing::warn!(grace = ?SHUTDOWN_GRACE, "connections still open at shutdown; closing them");
    }
    Ok(())
}
