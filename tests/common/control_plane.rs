//! A test control plane: a real tonic server implementing
//! `segment.controlplane.v1.ControlPlane` that records every report.

use segment_agent::proto::controlplane::{
    HealthAck, HealthReport,
    control_plane_server::{ControlPlane, ControlPlaneServer},
};
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::sync::{Notify, oneshot};
use tonic::{Request, Response, Status};

#[derive(Default)]
struct Recorder {
    reports: Mutex<Vec<HealthReport>>,
    arrived: Notify,
    next_interval: Mutex<u32>,
}

struct Handle(Arc<Recorder>);

#[tonic::async_trait]
impl ControlPlane for Handle {
    async fn report_health(
        &self,
        request: Request<HealthReport>,
    ) -> Result<Response<HealthAck>, Status> {
        self.0.reports.lock().unwrap().push(request.into_inner());
        self.0.arrived.notify_waiters();
        Ok(Response::new(HealthAck {
            next_interval_seconds: *self.0.next_interval.lock().unwrap(),
        }))
    }
}

/// A running test control plane.
pub struct TestControlPlane {
    pub addr: SocketAddr,
    recorder: Arc<Recorder>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestControlPlane {
    /// Serves on `listener` (already bound, possibly in another network namespace).
    pub fn serve(listener: std::net::TcpListener) -> Self {
        Self::serve_recording(listener, Arc::new(Recorder::default()))
    }

    /// Serves with mutual TLS: `identity` is the server's (cert, key) PEM,
    /// clients must present a certificate of `client_ca_pem`.
    pub fn serve_tls(
        listener: std::net::TcpListener,
        identity: (String, String),
        client_ca_pem: String,
    ) -> Self {
        let tls = tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(identity.0, identity.1))
            .client_ca_root(tonic::transport::Certificate::from_pem(client_ca_pem));
        Self::serve_with(listener, Arc::new(Recorder::default()), Some(tls))
    }

    fn serve_recording(listener: std::net::TcpListener, recorder: Arc<Recorder>) -> Self {
        Self::serve_with(listener, recorder, None)
    }

    fn serve_with(
        listener: std::net::TcpListener,
        recorder: Arc<Recorder>,
        tls: Option<tonic::transport::ServerTlsConfig>,
    ) -> Self {
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let service = ControlPlaneServer::new(Handle(recorder.clone()));
        let task = tokio::spawn(async move {
            let mut builder = tonic::transport::Server::builder();
            if let Some(tls) = tls {
                builder = builder.tls_config(tls).unwrap();
            }
            builder
                .add_service(service)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    async {
                        let _ = stopped.await;
                    },
                )
                .await
                .unwrap();
        });
        Self {
            addr,
            recorder,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Binds 127.0.0.1 on an ephemeral port in this process's namespace.
    pub fn start() -> Self {
        Self::serve(std::net::TcpListener::bind("127.0.0.1:0").unwrap())
    }

    /// Makes every later ack ask for this interval (0 keeps the agent's).
    pub fn set_next_interval(&self, seconds: u32) {
        *self.recorder.next_interval.lock().unwrap() = seconds;
    }

    /// Reports received so far.
    pub fn reports(&self) -> Vec<HealthReport> {
        self.recorder.reports.lock().unwrap().clone()
    }

    /// Waits until a report satisfies `pred` (checking those already there).
    pub async fn wait_for(
        &self,
        within: Duration,
        pred: impl Fn(&HealthReport) -> bool,
    ) -> HealthReport {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.recorder.arrived.notified();
            if let Some(r) = self.reports().into_iter().rev().find(|r| pred(r)) {
                return r;
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            assert!(
                !left.is_zero(),
                "no matching report within {within:?}; got {} reports",
                self.reports().len()
            );
            let _ = tokio::time::timeout(left, notified).await;
        }
    }

    /// Stops serving; the port is closed until [`TestControlPlane::restart`].
    pub async fn kill(&mut self) {
        let _ = self.stop.take().unwrap().send(());
        let _ = self.task.take().unwrap().await;
    }

    /// Serves again on `listener` (the same address), keeping the reports.
    pub fn restart(&mut self, listener: std::net::TcpListener) {
        let again = Self::serve_recording(listener, self.recorder.clone());
        *self = again;
    }
}
