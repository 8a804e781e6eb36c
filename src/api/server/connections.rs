//! Each accepted connection of a listener: at most `max_connections` at
//! once, and closed after `idle_timeout` without an open call (grpc-go's
//! MaxConnectionIdle).
//!
//! tonic serves whatever stream of connections it is given; this module
//! hands it [`IdleIo`]s. An `IdleIo` shares its [`ConnState`] (the calls
//! open on it, since when none is) with the requests it carries, through
//! the connect info tonic puts in every request's extensions
//! ([`ApiConnection`]); [`calls`](super::calls) counts the calls. Below
//! TLS (tonic wraps the `IdleIo` in its `TlsStream`), the same holds: tonic
//! inserts the inner connect info too.
//!
//! The close is an end of file on the read side, when the timer fires and
//! the socket has nothing to read: h2 takes it for the peer's close and
//! ends the connection normally, flushing and shutting down its write side
//! (the client sees FIN; under TLS the client sees the TCP close without a
//! `close_notify`). No GOAWAY: tonic owns each connection's hyper handle,
//! and no call is open to lose. A call the client sends at that very moment
//! fails UNAVAILABLE, as on any connection the network drops.

use crate::metrics::ListenerMetrics;
use std::{
    io,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::{Instant, Sleep},
};
use tokio_stream::Stream;
use tonic::transport::server::{Connected, TcpConnectInfo, UdsConnectInfo};

/// At most one log line per listener this often about refused connections
/// (the counter has them all).
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);
/// Refusals handled in one poll of the accept stream before it yields, so
/// a flood of connections cannot starve the server's shutdown.
const REFUSALS_PER_POLL: usize = 64;

/// A listener's connection limits.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// A connection without an open call this long is closed.
    pub idle_timeout: Duration,
    /// Connections open at once; more are closed when accepted.
    pub max_connections: usize,
}

/// What a connection's requests and its IO share: its open calls.
#[derive(Debug)]
pub struct ConnState {
    open_calls: AtomicUsize,
    /// When the last call ended (or the connection was accepted).
    idle_since: Mutex<Instant>,
}

impl ConnState {
    fn new() -> Self {
        Self {
            open_calls: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
        }
    }

    /// When the connection may be closed: none while a call is open.
    fn idle_deadline(&self, timeout: Duration) -> Option<Instant> {
        if self.open_calls.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = *self.idle_since.lock().unwrap_or_else(|e| e.into_inner());
        Some(since + timeout)
    }
}

/// One open call on a connection, from its request's arrival until its
/// response (the whole stream of a WatchEvents) is done or dropped.
#[derive(Debug)]
pub struct CallGuard(Arc<ConnState>);

impl CallGuard {
    /// Opens a call on `state`.
    pub fn open(state: Arc<ConnState>) -> Self {
        state.open_calls.fetch_add(1, Ordering::AcqRel);
        Self(state)
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if self.0.open_calls.fetch_sub(1, Ordering::AcqRel) == 1 {
            // A call opened meanwhile keeps the connection busy whatever
            // this says; its own end sets the instant again.
            *self.0.idle_since.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        }
    }
}

/// Who is at the other end, as tonic describes it.
#[derive(Debug, Clone)]
pub enum Peer {
    /// A unix socket's peer.
    Unix(UdsConnectInfo),
    /// A TCP peer.
    Tcp(TcpConnectInfo),
}

impl From<UdsConnectInfo> for Peer {
    fn from(info: UdsConnectInfo) -> Self {
        Self::Unix(info)
    }
}

impl From<TcpConnectInfo> for Peer {
    fn from(info: TcpConnectInfo) -> Self {
        Self::Tcp(info)
    }
}

/// The connect info of the agent's connections, in every request's
/// extensions (the calls layer also inserts the [`Peer`]'s own
/// `UdsConnectInfo` or `TcpConnectInfo`, as plain tonic would).
#[derive(Debug, Clone)]
pub struct ApiConnection {
    /// The connection's open calls.
    pub state: Arc<ConnState>,
    /// Its peer.
    pub peer: Peer,
}

/// A connection's place under its listener's cap; given back on drop.
#[derive(Debug)]
struct Slot {
    open: Arc<AtomicUsize>,
    metrics: ListenerMetrics,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        self.metrics.open.dec();
    }
}

/// An accepted connection that ends itself (end of file on read) once it
/// has had no open call for its idle timeout.
#[derive(Debug)]
pub struct IdleIo<T> {
    inner: T,
    state: Arc<ConnState>,
    timeout: Duration,
    timer: Pin<Box<Sleep>>,
    expired: bool,
    slot: Slot,
}

impl<T: AsyncRead + Unpin> IdleIo<T> {
    fn new(inner: T, timeout: Duration, slot: Slot) -> Self {
        let state = Arc::new(ConnState::new());
        Self {
            inner,
            timeout,
            timer: Box::pin(tokio::time::sleep(timeout)),
            state,
            expired: false,
            slot,
        }
    }

    /// Whether the connection has been idle for its timeout; else the timer
    /// is armed (its deadline never later than the true one: it fires, the
    /// state is read again).
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            let now = Instant::now();
            match self.state.idle_deadline(self.timeout) {
                Some(deadline) if deadline <= now => return true,
                Some(deadline) => self.timer.as_mut().reset(deadline),
                None => self.timer.as_mut().reset(now + self.timeout),
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.expired {
            return Poll::Ready(Ok(()));
        }
        // Bytes that arrived are read first: never dropped for the timer.
        if let Poll::Ready(r) = Pin::new(&mut this.inner).poll_read(cx, buf) {
            return Poll::Ready(r);
        }
        if this.idle_expired(cx) {
            this.expired = true;
            this.slot.metrics.idle_closes.inc();
            tracing::debug!(timeout = ?this.timeout, "closing an idle API connection");
            return Poll::Ready(Ok(()));
        }
        Poll::Pending
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<T> Connected for IdleIo<T>
where
    T: Connected,
    T::ConnectInfo: Into<Peer>,
{
    type ConnectInfo = ApiConnection;

    fn connect_info(&self) -> ApiConnection {
        ApiConnection {
            state: self.state.clone(),
            peer: self.inner.connect_info().into(),
        }
    }
}

/// A listener's accepted connections, capped and made [`IdleIo`]s.
pub struct Limited<S> {
    inner: S,
    listener: &'static str,
    limits: ConnLimits,
    open: Arc<AtomicUsize>,
    metrics: ListenerMetrics,
    unlogged_refusals: u64,
    last_log: Option<Instant>,
}

impl<S> Limited<S> {
    /// The connections `inner` accepts on `listener` (`unix`, `tcp`).
    pub fn new(
        inner: S,
        listener: &'static str,
        limits: ConnLimits,
        metrics: ListenerMetrics,
    ) -> Self {
        Self {
            inner,
            listener,
            limits,
            open: Arc::new(AtomicUsize::new(0)),
            metrics,
            unlogged_refusals: 0,
            last_log: None,
        }
    }

    /// Counts a refused connection; logs at most once per
    /// [`REFUSAL_LOG_EVERY`], with how many since the last line.
    fn refused(&mut self) {
        self.metrics.refusals.inc();
        self.unlogged_refusals += 1;
        let now = Instant::now();
        if self
            .last_log
            .is_none_or(|t| now.duration_since(t) >= REFUSAL_LOG_EVERY)
        {
            tracing::warn!(
                listener = self.listener,
                max_connections = self.limits.max_connections,
                refused = self.unlogged_refusals,
                "API connection limit reached: new connections are closed at once \
                 (at most one such line per 10 s)"
            );
            self.unlogged_refusals = 0;
            self.last_log = Some(now);
        }
    }
}

impl<S, T> Stream for Limited<S>
where
    S: Stream<Item = io::Result<T>> + Unpin,
    T: AsyncRead + Unpin,
{
    type Item = io::Result<IdleIo<T>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        for _ in 0..REFUSALS_PER_POLL {
            let io = match ready!(Pin::new(&mut this.inner).poll_next(cx)) {
                Some(Ok(io)) => io,
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => return Poll::Ready(None),
            };
            // Only this stream adds connections: no race between the two.
            if this.open.load(Ordering::Acquire) >= this.limits.max_connections {
                drop(io);
                this.refused();
                continue;
            }
            this.open.fetch_add(1, Ordering::AcqRel);
            this.metrics.open.inc();
            let slot = Slot {
                open: this.open.clone(),
                metrics: this.metrics.clone(),
            };
            return Poll::Ready(Some(Ok(IdleIo::new(io, this.limits.idle_timeout, slot))));
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_stream::StreamExt;

    fn slot(metrics: &ListenerMetrics) -> Slot {
        metrics.open.inc();
        Slot {
            open: Arc::new(AtomicUsize::new(1)),
            metrics: metrics.clone(),
        }
    }

    #[tokio::test]
    async fn a_connection_ends_once_idle_and_never_while_a_call_is_open() {
        let metrics = ListenerMetrics::default();
        let (server, mut client) = tokio::io::duplex(64);
        let timeout = Duration::from_millis(200);
        let mut io = IdleIo::new(server, timeout, slot(&metrics));
        let call = CallGuard::open(io.state.clone());
        let mut buf = [0; 8];
        let wait = Duration::from_millis(700);
        assert!(
            tokio::time::timeout(wait, io.read(&mut buf)).await.is_err(),
            "a call is open"
        );
        // Bytes that arrive are read, whatever the timer says.
        client.write_all(b"ping").await.unwrap();
        assert_eq!(io.read(&mut buf).await.unwrap(), 4);
        drop(call);
        let ended = Instant::now();
        assert_eq!(io.read(&mut buf).await.unwrap(), 0, "end of file");
        assert!(ended.elapsed() >= timeout - Duration::from_millis(20));
        assert_eq!(io.read(&mut buf).await.unwrap(), 0, "and it stays ended");
        assert_eq!(metrics.idle_closes.get(), 1);
        drop(io);
        assert_eq!(metrics.open.get(), 0, "its slot is given back");
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_are_dropped_when_accepted() {
        let metrics = ListenerMetrics::default();
        let (servers, mut clients): (Vec<_>, Vec<_>) =
            (0..3).map(|_| tokio::io::duplex(64)).unzip();
        let limits = ConnLimits {
            idle_timeout: Duration::from_secs(60),
            max_connections: 2,
        };
        let incoming = tokio_stream::iter(servers.into_iter().map(Ok));
        let mut accepted = Limited::new(incoming, "test", limits, metrics.clone());
        let first = accepted.next().await.unwrap().unwrap();
        let _second = accepted.next().await.unwrap().unwrap();
        assert!(
            accepted.next().await.is_none(),
            "the third is not handed on"
        );
        let mut buf = [0; 8];
        assert_eq!(clients[2].read(&mut buf).await.unwrap(), 0, "closed");
        assert_eq!((metrics.open.get(), metrics.refusals.get()), (2, 1));
        drop(first);
        assert_eq!(metrics.open.get(), 1);
        assert_eq!(accepted.open.load(Ordering::Acquire), 1, "a place is free");
    }
}
