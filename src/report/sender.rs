//! Delivery of health reports: every interval (which the control plane may
//! change in its ack) and soon after a segment changes state (changes within
//! [`COALESCE`] make one report). While the control plane is down the sender
//! backs off with jitter and keeps nothing but the latest state: each report
//! is built fresh when it is sent, so there is no queue to grow.

use super::Collector;
use crate::proto::controlplane::{self as pb, control_plane_client::ControlPlaneClient};
use std::{sync::Arc, time::Duration};
use tokio::sync::broadcast;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tracing::{debug, info, warn};

/// State changes closer together than this are reported once.
pub const COALESCE: Duration = Duration::from_millis(200);
/// Longest wait between attempts while the control plane is down.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Time allowed for one report.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Sending a report failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct SendError(pub String);

/// The control plane, behind a narrow trait.
#[async_trait::async_trait]
pub trait ReportSink: Send + Sync + 'static {
    /// Delivers one report; returns the ack.
    async fn send(&self, report: pb::HealthReport) -> Result<pb::HealthAck, SendError>;
}

/// The real control plane: `segment.controlplane.v1.ControlPlane` over gRPC,
/// with mutual TLS when configured. The channel reconnects by itself.
pub struct GrpcSink {
    client: ControlPlaneClient<Channel>,
}

/// TLS files of the control plane connection.
#[derive(Debug, Clone, Default)]
pub struct SinkTls {
    /// CA that the control plane's server certificate chains to (PEM).
    pub ca_pem: Option<Vec<u8>>,
    /// The agent's client certificate and key (PEM), for mutual TLS.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl GrpcSink {
    /// A sink for `endpoint` (`https://host:port` or `http://127.0.0.1:port`).
    pub fn new(endpoint: &str, tls: SinkTls) -> Result<Self, SendError> {
        let mut ep = Endpoint::from_shared(endpoint.to_owned())
            .map_err(|e| SendError(format!("control plane endpoint {endpoint:?}: {e}")))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(CALL_TIMEOUT);
        if endpoint.starts_with("https://") {
            let mut config = ClientTlsConfig::new();
            if let Some(ca) = tls.ca_pem {
                config = config.ca_certificate(Certificate::from_pem(ca));
            }
            if let Some((cert, key)) = tls.identity {
                config = config.identity(Identity::from_pem(cert, key));
            }
            ep = ep
                .tls_config(config)
                .map_err(|e| SendError(format!("control plane TLS: {e}")))?;
        }
        Ok(Self {
            client: ControlPlaneClient::new(ep.connect_lazy()),
        })
    }
}

#[async_trait::async_trait]
impl ReportSink for GrpcSink {
    async fn send(&self, report: pb::HealthReport) -> Result<pb::HealthAck, SendError> {
        let mut client = self.client.clone();
        client
            .report_health(report)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| SendError(format!("{}: {}", s.code(), s.message())))
    }
}

/// What became of one report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportOutcome {
    /// The control plane acknowledged it.
    Delivered,
    /// The control plane was unreachable or refused it.
    Failed,
    /// No complete report could be built; none was sent.
    Skipped,
}

/// Told what became of each report (the agent's metrics listen).
pub trait ReportObserver: Send + Sync + 'static {
    /// One report's outcome.
    fn report(&self, outcome: ReportOutcome);
}

/// The wait before attempt `failures + 1`: doubling from 1 s up to
/// [`MAX_BACKOFF`], with up to ±20 % jitter so a fleet does not reconnect in
/// step after a control plane outage.
pub fn backoff(failures: u32, jitter_seed: u64) -> Duration {
    let base = Duration::from_secs(1u64 << failures.saturating_sub(1).min(6)).min(MAX_BACKOFF);
    // A cheap xorshift of the seed is plenty for spreading retries.
    let mut x = jitter_seed | 1;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    let factor = 0.8 + (x % 401) as f64 / 1000.0;
    base.mul_f64(factor)
}

/// Reports until the task is aborted, telling `observer` each outcome.
pub async fn run(
    collector: Arc<Collector>,
    sink: Arc<dyn ReportSink>,
    interval: Duration,
    mut changes: broadcast::Receiver<crate::segment::events::Event>,
    observer: Arc<dyn ReportObserver>,
) {
    let mut interval = interval;
    let mut failures: u32 = 0;
    loop {
        let report = match collector.collect().await {
            Ok(report) => report,
            Err(e) => {
                warn!(error = %e, "cannot build a complete health report; skipping this one");
                observer.report(ReportOutcome::Skipped);
                wait_for_next(&mut changes, interval, false).await;
                continue;
            }
        };
        let (sequence, segments) = (report.sequence, report.segments.len());
        let wait = match sink.send(report).await {
            Ok(ack) => {
                observer.report(ReportOutcome::Delivered);
                if failures > 0 {
                    info!(after_failures = failures, "control plane reachable again");
                }
                failures = 0;
                if ack.next_interval_seconds > 0 {
                    interval = Duration::from_secs(ack.next_interval_seconds.into());
                }
                debug!(sequence, segments, ?interval, "health report delivered");
                interval
            }
            Err(e) => {
                observer.report(ReportOutcome::Failed);
                failures += 1;
                let wait = backoff(failures, sequence ^ u64::from(std::process::id()));
                // Say it loudly once, then quietly while it stays down.
                if failures == 1 {
                    warn!(error = %e, ?wait, "control plane unreachable; backing off, segments unaffected");
                } else {
                    debug!(error = %e, failures, ?wait, "control plane still unreachable");
                }
                wait
            }
        };
        wait_for_next(&mut changes, wait, failures == 0).await;
    }
}

/// Sleeps `wait`, or less when a segment changes state and the control
/// plane is reachable (then after [`COALESCE`], draining the burst). While
/// it is not, changes are still read and dropped: an unread subscription
/// would hold the hub's whole backlog (every event a full segment) for as
/// long as the control plane stays away.
async fn wait_for_next(
    changes: &mut broadcast::Receiver<crate::segment::events::Event>,
    wait: Duration,
    early: bool,
) {
    let deadline = tokio::time::sleep(wait);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => return,
            changed = changes.recv() => match changed {
                Err(broadcast::error::RecvError::Closed) => {
                    deadline.await;
                    return;
                }
                _ if early => {
                    tokio::time::sleep(COALESCE).await;
                    while changes.try_recv().is_ok() {}
                    return;
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn changes_are_read_while_the_control_plane_is_unreachable() {
        use crate::segment::{Segment, SegmentState};
        let hub = crate::segment::events::EventHub::new(1024);
        let mut sub = hub.subscribe();
        let record = crate::xml::metadata::tests::sample_record();
        let publish = async {
            for i in 0..200 {
                let state = match i % 2 {
                    0 => SegmentState::Running,
                    _ => SegmentState::Failed,
                };
                let segment = Segment {
                    record: record.clone(),
                    state,
                    reason: String::new(),
                    disk: None,
                };
                hub.observe(&segment, hub.generation());
                tokio::task::yield_now().await;
            }
        };
        let wait = wait_for_next(&mut sub, Duration::from_millis(300), false);
        tokio::join!(wait, publish);
        assert!(
            sub.is_empty(),
            "{} events held for an unreachable control plane",
            sub.len()
        );
    }

    #[test]
    fn backoff_doubles_to_a_cap_with_bounded_jitter() {
        for (failures, base) in [
            (1u32, 1.0f64),
            (2, 2.0),
            (3, 4.0),
            (6, 32.0),
            (7, 60.0),
            (40, 60.0),
        ] {
            for seed in [1u64, 42, 7_777_777, u64::MAX] {
                let d = backoff(failures, seed).as_secs_f64();
                assert!(
                    d >= base * 0.8 - 1e-9 && d <= base * 1.2 + 1e-9,
                    "{failures} {seed}: {d}"
                );
            }
        }
        let spread: std::collections::HashSet<_> =
            (0..20).map(|s| backoff(3, s).as_millis()).collect();
        assert!(spread.len() > 5, "jitter spreads retries: {spread:?}");
    }
}
