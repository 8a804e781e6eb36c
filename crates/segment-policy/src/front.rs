//! The segment's Docker endpoint: a mutual-TLS front on port 2376 that
//! forwards each verified connection, byte for byte, to dockerd's local
//! socket, and takes new certificates on SIGHUP without dockerd restarting.
//!
//! Why it exists: swarm mode refuses dockerd's `live-restore`, and
//! `live-restore` was what kept containers running while RebuildSegment
//! restarted dockerd to load a new server certificate. dockerd cannot reload
//! its TLS files, so the front terminates TLS instead and dockerd listens on
//! its unix socket only: a rebuild rewrites the files in `/etc/docker` and
//! the front loads them, dockerd (and every container and swarm task) never
//! notices.
//!
//! Threat model, next to the code that runs beside the tenant:
//! - The front is the only listener of the segment's Docker on the network.
//!   A connection reaches dockerd only after a TLS handshake in which the
//!   client proved a certificate of the cluster CA (`ca.pem`); anything else
//!   is dropped before one byte reaches dockerd.
//! - It does not read HTTP: the policy plugin still sees every request
//!   dockerd serves, exactly as before (dockerd no longer learns the
//!   client's CN, which no rule used; swarm membership is the agent's by a
//!   token, see `policy::swarm`).
//! - A reload replaces the configuration for new handshakes and closes every
//!   open connection (as the dockerd restart it replaces did: "rebuilding
//!   interrupts interactive sessions"), so a certificate of a replaced CA
//!   keeps no session. A configuration that fails to load leaves the old
//!   one serving and is logged.
//! - Handshakes are bounded in time and connections in number, so idle or
//!   half-open clients cannot exhaust the segment's file descriptors.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig, server::WebPkiClientVerifier};
use tracing::{debug, info, warn};

/// The port the front serves mutual TLS on (Docker's own TLS port).
pub const DOCKER_TLS_PORT: u16 = 2376;
/// Where the front finds `ca.pem`, `server-cert.pem`, `server-key.pem`.
pub const DEFAULT_TLS_DIR: &str = "/etc/docker";
/// How long a client may take to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most connections served at once; further clients wait in the backlog.
pub const MAX_CONNECTIONS: usize = 1024;

/// Why the TLS configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum FrontError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A PEM file did not hold what it should.
    #[error("{path}: {detail}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// rustls refused the certificates.
    #[error("TLS configuration: {0}")]
    Tls(String),
}

fn read_pem(dir: &Path, name: &str) -> Result<(PathBuf, Vec<u8>), FrontError> {
    let path = dir.join(name);
    match std::fs::read(&path) {
        Ok(bytes) => Ok((path, bytes)),
        Err(source) => Err(FrontError::Read { path, source }),
    }
}

/// Builds the server configuration from `dir`: the server certificate and
/// key, and client certificates required and verified against `ca.pem`.
pub fn load_config(dir: &Path) -> Result<Arc<ServerConfig>, FrontError> {
    let bad = |path: &Path, e: &dyn std::fmt::Display| FrontError::Pem {
        path: path.to_owned(),
        detail: e.to_string(),
    };
    let (ca_path, ca) = read_pem(dir, "ca.pem")?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&ca) {
        roots
            .add(cert.map_err(|e| bad(&ca_path, &e))?)
            .map_err(|e| bad(&ca_path, &e))?;
    }
    let (cert_path, cert) = read_pem(dir, "server-cert.pem")?;
    let chain = CertificateDer::pem_slice_iter(&cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&cert_path, &e))?;
    let (key_path, key) = read_pem(dir, "server-key.pem")?;
    let key = PrivateKeyDer::from_pem_slice(&key).map_err(|e| bad(&key_path, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| FrontError::Tls(e.to_string()))?;
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| FrontError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| FrontError::Tls(e.to_string()))?;
    Ok(Arc::new(config))
}

/// Serves `listener` until `shutdown` resolves: each client that completes
/// a mutual-TLS handshake with the configuration `config` holds at that
/// moment is joined to a new connection to `upstream`. A new value in
/// `config` closes every connection opened before it.
pub async fn serve(
    listener: TcpListener,
    mut config: watch::Receiver<Arc<ServerConfig>>,
    upstream: PathBuf,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let upstream = Arc::new(upstream);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => return,
            p = slots.clone().acquire_owned() => p.expect("semaphore never closed"),
        };
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let acceptor = TlsAcceptor::from(config.borrow_and_update().clone());
        let reloaded = config.clone();
        let upstream = upstream.clone();
        tokio::spawn(async move {
            if let Err(e) = forward(tcp, acceptor, &upstream, reloaded).await {
                debug!(%peer, error = %e, "connection ended");
            }
            drop(permit);
        });
    }
}

/// One client: the handshake, then bytes both ways until either side ends
/// or the configuration is replaced.
async fn forward(
    tcp: TcpStream,
    acceptor: TlsAcceptor,
    upstream: &Path,
    mut reloaded: watch::Receiver<Arc<ServerConfig>>,
) -> io::Result<()> {
    tcp.set_nodelay(true)?;
    let mut tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
    let mut docker = UnixStream::connect(upstream).await?;
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut tls, &mut docker) => copied.map(|_| ()),
        _ = reloaded.changed() => {
            debug!("certificates replaced: closing a connection of the old ones");
            Ok(())
        }
    }
}

/// Loads the configuration again from `dir` and publishes it; on failure the
/// old one keeps serving.
pub fn reload(dir: &Path, config: &watch::Sender<Arc<ServerConfig>>) {
    match load_config(dir) {
        Ok(new) => {
            config.send_replace(new);
            info!(dir = %dir.display(), "certificates reloaded");
        }
        Err(e) => warn!(error = %e, "reload failed; the previous certificates stay in use"),
    }
}
