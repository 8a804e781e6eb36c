//! RPC metrics as a tower layer around the gRPC server: every call, by
//! service, method and status code, timed from its arrival to its last byte
//! (a stream until it ends). The code comes from `grpc-status`: in the
//! response headers for a trailers-only reply (tonic's errors), else in the
//! trailers; a body dropped before its end is a call the client cancelled.

use super::{AgentMetrics, RpcLabels};
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};
use tonic::Code;

/// Services whose method names are kept in labels; any other path is
/// counted as `other` so a client cannot grow the label set at will.
const KNOWN_SERVICES: [&str; 4] = [
    "segment.agent.v1.SegmentAgent",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// The canonical name of a status code, as the README's error table has it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// `(service, method)` of a request path `/service/method`.
pub fn method_of(path: &str) -> (String, String) {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (service, method) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let plain = !method.is_empty()
        && method.len() <= 64
        && method.bytes().all(|b| b.is_ascii_alphanumeric());
    if KNOWN_SERVICES.contains(&service) && plain {
        (service.to_owned(), method.to_owned())
    } else {
        ("other".into(), "other".into())
    }
}

fn status_of(headers: &HeaderMap) -> Option<Code> {
    let v = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .parse::<i32>()
        .ok()?;
    Some(Code::from_i32(v))
}

/// Wraps services in [`RpcMetrics`].
#[derive(Clone)]
pub struct RpcMetricsLayer {
    metrics: Arc<AgentMetrics>,
}

impl RpcMetricsLayer {
    /// Counts into `metrics`.
    pub fn new(metrics: Arc<AgentMetrics>) -> Self {
        Self { metrics }
    }

    /// Where it counts.
    pub fn metrics(&self) -> &Arc<AgentMetrics> {
        &self.metrics
    }
}

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// A gRPC service whose calls are counted and timed.
#[derive(Clone)]
pub struct RpcMetrics<S> {
    inner: S,
    metrics: Arc<AgentMetrics>,
}

/// One call in flight; counted exactly once, when it ends or is dropped.
struct Call {
    metrics: Arc<AgentMetrics>,
    service: String,
    method: String,
    started: Instant,
    done: bool,
}

impl Call {
    fn finish(&mut self, code: Code) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let labels = RpcLabels {
            service: std::mem::take(&mut self.service),
            method: std::mem::take(&mut self.method),
            code: code_name(code),
        };
        self.metrics.rpc(labels, self.started.elapsed());
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        // Ended without a status: the client went away (or the server
        // failed before answering).
        self.finish(Code::Cancelled);
    }
}

impl<S, B, ReqBody> tower::Service<Request<ReqBody>> for RpcMetrics<S>
where
    S: tower::Service<Request<ReqBody>, Response = Response<B>>,
    S::Future: Send + 'static,
    B: Body,
{
    type Response = Response<MeteredBody<B>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let (service, method) = method_of(req.uri().path());
        let mut call = Call {
            metrics: self.metrics.clone(),
            service,
            method,
            started: Instant::now(),
            done: false,
        };
        let fut = self.inner.call(req);
        Box::pin(async move {
            let response = match fut.await {
                Ok(r) => r,
                Err(e) => {
                    call.finish(Code::Unknown);
                    return Err(e);
                }
            };
            // A trailers-only reply carries its status in the headers.
            if let Some(code) = status_of(response.headers()) {
                call.finish(code);
            }
            Ok(response.map(|inner| MeteredBody {
                inner,
                call: Some(call),
            }))
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that ends its call's measurement with the status in
    /// its trailers.
    pub struct MeteredBody<B> {
        #[pin]
        inner: B,
        call: Option<Call>,
    }
}

impl<B: Body> Body for MeteredBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Some(call) = this.call.as_mut() {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(code) = frame.trailers_ref().and_then(status_of) {
                        call.finish(code);
                    }
                }
                Poll::Ready(Some(Err(_))) => call.finish(Code::Unknown),
                // The end: a trailers-only reply is counted already; a body
                // that ends with no status at all is a broken reply.
                Poll::Ready(None) => call.finish(Code::Unknown),
                Poll::Pending => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_become_bounded_labels() {
        let cases = [
            (
                "/segment.agent.v1.SegmentAgent/CreateSegment",
                ("segment.agent.v1.SegmentAgent", "CreateSegment"),
            ),
            (
                "/grpc.health.v1.Health/Check",
                ("grpc.health.v1.Health", "Check"),
            ),
            ("/evil.Service/X", ("other", "other")),
            ("/segment.agent.v1.SegmentAgent/a{b}", ("other", "other")),
            ("/segment.agent.v1.SegmentAgent/", ("other", "other")),
            ("/", ("other", "other")),
        ];
        for (path, (service, method)) in cases {
            assert_eq!(
                method_of(path),
                (service.to_owned(), method.to_owned()),
                "{path}"
            );
        }
        let long = format!("/segment.agent.v1.SegmentAgent/{}", "A".repeat(65));
        assert_eq!(method_of(&long).0, "other");
    }

    /// Calls a layered service that answers with `response`, reads (or
    /// drops) the body, and returns the exposition.
    async fn one_call(
        response: Response<
            http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, std::convert::Infallible>,
        >,
        read_body: bool,
    ) -> String {
        use http_body_util::BodyExt;
        use tower::{Layer, Service};
        let metrics = Arc::new(AgentMetrics::new());
        let cell = std::sync::Mutex::new(Some(response));
        let inner = tower::service_fn(move |_: Request<()>| {
            let r = cell.lock().unwrap().take().unwrap();
            async move { Ok::<_, std::convert::Infallible>(r) }
        });
        let mut svc = RpcMetricsLayer::new(metrics.clone()).layer(inner);
        let req = Request::builder()
            .uri("/segment.agent.v1.SegmentAgent/GetSegment")
            .body(())
            .unwrap();
        let body = svc.call(req).await.unwrap().into_body();
        if read_body {
            body.collect().await.unwrap();
        } else {
            drop(body);
        }
        let mut out = String::new();
        metrics.encode(&mut out).unwrap();
        out
    }

    fn trailers(code: &str) -> HeaderMap {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", code.parse().unwrap());
        t
    }

    #[tokio::test]
    async fn the_code_comes_from_headers_trailers_or_a_hang_up() {
        use http_body_util::{BodyExt, Empty, Full};
        let series = |code: &str| {
            format!(
                "segment_agent_rpcs_total{{service=\"segment.agent.v1.SegmentAgent\",method=\"GetSegment\",code=\"{code}\"}} 1"
            )
        };
        // tonic's errors: trailers-only, the status in the headers.
        let mut only = Response::new(Empty::new().boxed_unsync());
        *only.headers_mut() = trailers("5");
        assert!(one_call(only, true).await.contains(&series("NOT_FOUND")));
        // A reply: data, then the status in the trailers.
        let body = Full::new(bytes::Bytes::from_static(b"x"))
            .with_trailers(async { Some(Ok(trailers("0"))) })
            .boxed_unsync();
        assert!(
            one_call(Response::new(body), true)
                .await
                .contains(&series("OK"))
        );
        // The client went away before the end.
        let body = Full::new(bytes::Bytes::from_static(b"x"))
            .with_trailers(async { Some(Ok(trailers("0"))) })
            .boxed_unsync();
        let text = one_call(Response::new(body), false).await;
        assert!(text.contains(&series("CANCELLED")), "{text}");
        assert!(!text.contains(r#"code="OK""#), "counted once: {text}");
    }

    #[test]
    fn every_code_has_its_canonical_name() {
        assert_eq!(code_name(Code::Ok), "OK");
        assert_eq!(code_name(Code::NotFound), "NOT_FOUND");
        assert_eq!(code_name(Code::ResourceExhausted), "RESOURCE_EXHAUSTED");
        assert_eq!(code_name(Code::from_i32(99)), "UNKNOWN");
    }
}
