//! Readiness of a segment's Docker: `GET /_ping` over mutual TLS on its
//! public address, as a customer's client would reach it.

use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use std::{net::SocketAddr, sync::Arc, time::Duration};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::{
    TlsConnector,
    rustls::{self, ClientConfig, RootCertStore, pki_types::ServerName},
};

/// Why a ping failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ProbeError(pub String);

/// The client side of a probe: the CA that signed the server certificate
/// and a client certificate from the same CA.
#[derive(Clone)]
pub struct ProbeTls {
    config: Arc<ClientConfig>,
}

impl ProbeTls {
    /// Builds the TLS client from PEM; the key stays in memory.
    pub fn new(
        ca_pem: &str,
        client_cert_pem: &str,
        client_key_pem: &str,
    ) -> Result<Self, ProbeError> {
        let bad = |what: &str, e: &dyn std::fmt::Display| ProbeError(format!("{what}: {e}"));
        let mut roots = RootCertStore::empty();
        let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(|e| bad("CA", &e))?;
        roots.add(ca).map_err(|e| bad("CA", &e))?;
        let cert = CertificateDer::from_pem_slice(client_cert_pem.as_bytes())
            .map_err(|e| bad("client cert", &e))?;
        let key = PrivateKeyDer::from_pem_slice(client_key_pem.as_bytes())
            .map_err(|e| bad("client key", &e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad("TLS", &e))?
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![cert], key)
            .map_err(|e| bad("client cert", &e))?;
        Ok(Self {
            config: Arc::new(config),
        })
    }
}

/// Pings a Docker daemon; the seam that tests replace.
#[async_trait::async_trait]
pub trait DockerProbe: Send + Sync + 'static {
    /// One `GET /_ping`; Ok when Docker answers `200 OK`.
    async fn ping(&self, endpoint: SocketAddr, tls: &ProbeTls) -> Result<(), ProbeError>;
}

/// The real probe: TCP, TLS with the server's IP as its name, HTTP/1.1.
pub struct TlsPing;

#[async_trait::async_trait]
impl DockerProbe for TlsPing {
    async fn ping(&self, endpoint: SocketAddr, tls: &ProbeTls) -> Result<(), ProbeError> {
        let err =
            |what: &str, e: &dyn std::fmt::Display| ProbeError(format!("{what} {endpoint}: {e}"));
        let tcp = tokio::net::TcpStream::connect(endpoint)
            .await
            .map_err(|e| err("connect", &e))?;
        let name = ServerName::IpAddress(endpoint.ip().into());
        let mut stream = TlsConnector::from(tls.config.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| err("TLS handshake with", &e))?;
        let request =
            format!("GET /_ping HTTP/1.1\r\nHost: {endpoint}\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| err("write to", &e))?;
        let mut response = Vec::new();
        // A TLS peer may close without close_notify; what was read counts.
        let _ = stream.read_to_end(&mut response).await;
        let text = String::from_utf8_lossy(&response);
        if text.starts_with("HTTP/1.1 200") && text.trim_end().ends_with("OK") {
            Ok(())
        } else {
            let line = text.lines().next().unwrap_or("no response");
            Err(ProbeError(format!("{endpoint} answered {line:?}")))
        }
    }
}

/// Pings until Docker answers or `timeout` passes; returns the last error.
pub async fn wait_ready(
    probe: &dyn DockerProbe,
    endpoint: SocketAddr,
    tls: &ProbeTls,
    timeout: Duration,
) -> Result<Duration, ProbeError> {
    let started = tokio::time::Instant::now();
    let deadline = started + timeout;
    let mut last = ProbeError("no attempt".into());
    while tokio::time::Instant::now() < deadline {
        let attempt = tokio::time::timeout(Duration::from_secs(2), probe.ping(endpoint, tls)).await;
        match attempt {
            Ok(Ok(())) => return Ok(started.elapsed()),
            Ok(Err(e)) => last = e,
            Err(_) => last = ProbeError(format!("{endpoint}: no answer within 2 s")),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(last)
}
