//! The `/metrics` endpoint: plain HTTP/1.1, `GET /metrics` (and `HEAD`)
//! answered in the Prometheus text format; every other path is 404, every
//! other method 405. Connections are bounded in number and must send their
//! request head within [`HEADER_TIMEOUT`], so an idle or slow client cannot
//! hold the endpoint.

use super::Exporter;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};
use tokio::{net::TcpListener, sync::Semaphore};
use tracing::{debug, info};

/// Time a client has to send its request head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 32;

/// A bound metrics listener.
pub struct MetricsListener {
    listener: TcpListener,
}

impl MetricsListener {
    /// Binds `addr`.
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        Ok(Self {
            listener: TcpListener::bind(addr).await?,
        })
    }

    /// The address actually bound (for port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// The answer to one request.
async fn answer(exporter: &Exporter, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: &'static str| {
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .expect("static response")
    };
    if req.uri().path() != "/metrics" {
        return text(
            StatusCode::NOT_FOUND,
            "not found: the metrics are at /metrics\n",
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET /metrics\n");
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let body = exporter.render().await;
    let body = match req.method() == Method::HEAD {
        true => Bytes::new(),
        false => Bytes::from(body),
    };
    Response::builder()
        .header(header::CONTENT_TYPE, CONTENT_TYPE)
        .body(Full::new(body))
        .expect("metrics response")
}

/// Serves `exporter` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: MetricsListener,
    exporter: Arc<Exporter>,
    shutdown: impl Future<Output = ()>,
) {
    let addr = listener.local_addr().ok();
    info!(?addr, "serving metrics on /metrics");
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("semaphore never closed"),
            _ = &mut shutdown => return,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: wait, do not spin.
                    debug!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => return,
        };
        let exporter = exporter.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let exporter = exporter.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&exporter, &req).await) }
            });
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                debug!(%peer, error = %e, "metrics connection ended");
            }
            drop(permit);
        });
    }
}
