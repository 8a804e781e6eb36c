//! Readiness of a segment's Docker: `GET /_ping` over mutual TLS on its
//! public address, as a customer's client would reach it.

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use std::{net::SocketAddr, sync::Arc, time::Duration};
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

    /// The rustls client configuration (shared with the swarm client).
    pub(crate) fn config(&self) -> Arc<ClientConfig> {
        self.config.clone()
    }
}

/// Pings a Docker daemon; the seam that tests replace.
#[async_trait::async_trait]
pub trait DockerProbe: Send + Sync + 'static {
    /// One `GET /_ping`; Ok when Docker answers `200 OK`.
    async fn ping(&self, endpoint: SocketAddr, tls: &ProbeTls) -> Result<(), ProbeError>;
}

/// Largest `/_ping` answer read.
const MAX_ANSWER: usize = 4096;

/// The real probe: TCP, TLS with the server's IP as its name, HTTP/1.1
/// (hyper's client).
pub struct TlsPing;

#[async_trait::async_trait]
impl DockerProbe for TlsPing {
    async fn ping(&self, endpoint: SocketAddr, tls: &ProbeTls) -> Result<(), ProbeError> {
        let request = Request::get("/_ping").body(Full::default());
        let (status, body) = exchange(endpoint, tls.config.clone(), request, MAX_ANSWER)
            .await
            .map_err(ProbeError)?;
        // dockerd answers `OK`.
        if status == StatusCode::OK && body.trim_ascii_end().ends_with(b"OK") {
            Ok(())
        } else {
            Err(ProbeError(format!(
                "{endpoint} answered \"HTTP/1.1 {status}\""
            )))
        }
    }
}

/// One HTTP/1.1 request to a segment's Docker over mutual TLS (TCP, TLS
/// with the server's IP as its name, hyper's client), its status and body,
/// the body read to at most `limit` bytes. The readiness probe and the
/// agent's swarm client share it. Errors name the step and the endpoint.
pub(crate) async fn exchange(
    endpoint: SocketAddr,
    config: Arc<ClientConfig>,
    request: Result<Request<Full<Bytes>>, hyper::http::Error>,
    limit: usize,
) -> Result<(StatusCode, Bytes), String> {
    let err = |what: &str, e: &dyn std::fmt::Display| format!("{what} {endpoint}: {e}");
    let mut request = request.map_err(|e| err("request to", &e))?;
    let host = endpoint
        .to_string()
        .parse()
        .map_err(|e| err("request to", &e))?;
    request.headers_mut().insert(hyper::header::HOST, host);
    let tcp = tokio::net::TcpStream::connect(endpoint)
        .await
        .map_err(|e| err("connect", &e))?;
    let name = ServerName::IpAddress(endpoint.ip().into());
    let stream = TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| err("TLS handshake with", &e))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| err("HTTP handshake with", &e))?;
    tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| err("request to", &e))?;
    let status = response.status();
    let body = Limited::new(response.into_body(), limit)
        .collect()
        .await
        .map_err(|e| err(&format!("answer (at most {limit} bytes) from"), &e))?
        .to_bytes();
    Ok((status, body))
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
