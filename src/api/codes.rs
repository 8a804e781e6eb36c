//! The codes of requests tonic refuses before any handler runs. tonic
//! answers a message over the size limit with OUT_OF_RANGE and a protobuf
//! that does not decode with INTERNAL; gRPC's convention (and this API's
//! README) say RESOURCE_EXHAUSTED and INVALID_ARGUMENT, and INTERNAL is
//! reserved for libvirt and filesystem failures a scheduler retries. This
//! layer corrects the status where tonic puts it (the headers of a
//! trailers-only reply, or the trailers); the metrics layer outside it
//! counts the corrected code.

use http::{HeaderValue, Request, Response};
use http_body::{Body, Frame, SizeHint};
use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

/// A tonic refusal, by the start of its message, and the code it gets.
const REMAPPED: &[(&str, &str, tonic::Code)] = &[
    (
        "11",
        "Error, decoded message length too large",
        tonic::Code::ResourceExhausted,
    ),
    (
        "13",
        "failed to decode Protobuf message",
        tonic::Code::InvalidArgument,
    ),
];

/// The layer, applied to every service the server runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct RefusalCodesLayer;

impl<S> tower::Layer<S> for RefusalCodesLayer {
    type Service = RefusalCodes<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RefusalCodes { inner }
    }
}

/// See [`RefusalCodesLayer`].
#[derive(Debug, Clone)]
pub struct RefusalCodes<S> {
    inner: S,
}

impl<S, B, ReqBody> tower::Service<Request<ReqBody>> for RefusalCodes<S>
where
    S: tower::Service<Request<ReqBody>, Response = Response<B>>,
    S::Future: Send + 'static,
{
    type Response = Response<RemappedBody<B>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut response = fut.await?;
            remap(response.headers_mut());
            Ok(response.map(|inner| RemappedBody { inner }))
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body whose trailers get [`REMAPPED`] codes.
    pub struct RemappedBody<B> {
        #[pin]
        inner: B,
    }
}

impl<B: Body> Body for RemappedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = self.project().inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(mut frame))) = polled {
            if let Some(trailers) = frame.trailers_mut() {
                remap(trailers);
            }
            return Poll::Ready(Some(Ok(frame)));
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

fn remap(headers: &mut http::HeaderMap) {
    let status = headers.get("grpc-status").and_then(|v| v.to_str().ok());
    let message = headers.get("grpc-message").and_then(|v| v.to_str().ok());
    let (Some(status), Some(message)) = (status, message) else {
        return;
    };
    // grpc-message is percent-encoded (tonic encodes spaces too).
    let message = percent_decoded(message);
    let code = REMAPPED
        .iter()
        .find(|(s, prefix, _)| *s == status && message.starts_with(prefix))
        .map(|(_, _, code)| *code as i32);
    if let Some(code) = code {
        headers.insert("grpc-status", HeaderValue::from(code));
    }
}

fn percent_decoded(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_get_their_codes_and_nothing_else_changes() {
        let cases = [
            (
                "11",
                "Error, decoded message length too large: found 5 bytes",
                "8",
            ),
            (
                "13",
                "failed to decode Protobuf message: invalid wire type",
                "3",
            ),
            ("13", "libvirt start of seg-a failed", "13"),
            ("11", "out of range for another reason", "11"),
            ("13", "failed%20to%20decode%20Protobuf%20message:%20x", "3"),
        ];
        for (status, message, want) in cases {
            let mut h = http::HeaderMap::new();
            h.insert("grpc-status", HeaderValue::from_static(status));
            h.insert("grpc-message", HeaderValue::from_str(message).unwrap());
            remap(&mut h);
            assert_eq!(h["grpc-status"], want, "{message}");
        }
    }
}
