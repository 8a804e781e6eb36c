//! Counts the calls open on each connection, for its idle timeout
//! ([`connections`](super::connections)): a call opens when its request
//! reaches the service and closes when its response body is finished or
//! dropped, so a WatchEvents stream counts as open for as long as it runs.

use super::connections::{ApiConnection, CallGuard, Peer};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

/// Wraps services in [`CallTracking`].
#[derive(Debug, Clone, Copy, Default)]
pub struct CallTrackingLayer;

impl<S> tower::Layer<S> for CallTrackingLayer {
    type Service = CallTracking<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallTracking { inner }
    }
}

/// A service whose calls count as open on their connection.
#[derive(Debug, Clone)]
pub struct CallTracking<S> {
    inner: S,
}

impl<S, B, ReqBody> tower::Service<Request<ReqBody>> for CallTracking<S>
where
    S: tower::Service<Request<ReqBody>, Response = Response<B>>,
    S::Future: Send + 'static,
{
    type Response = Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let conn = req.extensions().get::<ApiConnection>().cloned();
        let call = conn.map(|conn| {
            // What handlers would find under plain tonic.
            match conn.peer {
                Peer::Unix(info) => {
                    req.extensions_mut().insert(info);
                }
                Peer::Tcp(info) => {
                    req.extensions_mut().insert(info);
                }
            }
            CallGuard::open(conn.state)
        });
        let fut = self.inner.call(req);
        Box::pin(async move {
            let response = fut.await?;
            Ok(response.map(|inner| TrackedBody { inner, call }))
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that holds its call open until it is dropped.
    pub struct TrackedBody<B> {
        #[pin]
        inner: B,
        call: Option<CallGuard>,
    }
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(None | Some(Err(_))) = polled {
            // The end: the call is over even if hyper keeps the body.
            this.call.take();
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
