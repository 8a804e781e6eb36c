//! Prometheus metrics on `GET /metrics` (the text format, version 0.0.4),
//! when `[metrics] listen` is configured.
//!
//! Two kinds of figures:
//! - the agent's own, counted as things happen ([`AgentMetrics`]): RPCs by
//!   method and code ([`rpc`]), the steps of CreateSegment, recovery, report
//!   deliveries;
//! - the host's and every segment's, read at scrape time from the same
//!   [`sample`](crate::report::sample) the health reports are built from
//!   (libvirt, cgroups, Docker's `/_ping`), kept for [`SAMPLE_TTL`] so a
//!   burst of scrapes costs one reading ([`families`] renders them).
//!
//! [`http`] serves them. Names follow what operators already graph
//! (kubelet's and Incus's per-container families, node_exporter's network
//! counters): `segment_agent_` first, base units, `_total` on counters.

pub mod families;
pub mod http;
pub mod rpc;

use crate::{
    cgroups::usage::CgroupReader,
    host::HostFacts,
    report::{
        sample::{self, HostSample},
        sender::{ReportObserver, ReportOutcome},
    },
    segment::{CreateStep, LifecycleObserver, SegmentManager, recover::RecoveryReport},
};
use prometheus_client::{
    encoding::{EncodeLabelSet, prometheus_text},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use std::{
    sync::{Arc, atomic::AtomicU64},
    time::{Duration, Instant, SystemTime},
};

/// How long one reading of the host serves scrapes.
pub const SAMPLE_TTL: Duration = Duration::from_secs(2);
/// Longest a reading may take before a scrape answers without it (a hung
/// libvirtd must not hang Prometheus's scrape, whose default timeout is
/// 10 s).
pub const SAMPLE_TIMEOUT: Duration = Duration::from_secs(8);

/// Labels of an RPC.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    /// gRPC service, e.g. `segment.agent.v1.SegmentAgent`.
    pub service: String,
    /// Method, e.g. `CreateSegment`.
    pub method: String,
    /// Status code name, e.g. `OK`, `NOT_FOUND`.
    pub code: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    step: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CloseLabels {
    listener: &'static str,
    reason: &'static str,
}

type SecondsGauge = Gauge<f64, AtomicU64>;

/// The figures of one API listener (`unix`, `tcp`), shared with its
/// connections.
#[derive(Debug, Clone, Default)]
pub struct ListenerMetrics {
    /// Connections open now.
    pub open: Gauge,
    /// Connections the server closed after `listen.idle_timeout_seconds`
    /// without an open call.
    pub idle_closes: Counter,
    /// Connections closed at once because `listen.max_connections` were
    /// open.
    pub refusals: Counter,
}

/// Histogram buckets from 1 ms to ~65 s: RPCs and create steps range from
/// a registry read to a Docker that takes its time.
fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// The agent's own figures, counted as things happen.
#[derive(Debug)]
pub struct AgentMetrics {
    rpcs: Family<RpcLabels, Counter>,
    rpc_seconds: Family<RpcLabels, Histogram>,
    create_steps: Family<StepLabels, Histogram>,
    recovery_seconds: SecondsGauge,
    recovery_segments: Family<OutcomeLabels, Gauge>,
    reports: Family<ResultLabels, Counter>,
    report_delivered_at: SecondsGauge,
    started_at: SecondsGauge,
    api_connections: Family<ListenerLabels, Gauge>,
    api_connection_closes: Family<CloseLabels, Counter>,
    registry: Registry,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self::new()
    }
}

fn epoch_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl AgentMetrics {
    /// Empty counters, registered under their names.
    pub fn new() -> Self {
        let histogram = seconds_histogram as fn() -> Histogram;
        let m = Self {
            rpcs: Family::default(),
            rpc_seconds: Family::new_with_constructor(histogram),
            create_steps: Family::new_with_constructor(histogram),
            recovery_seconds: SecondsGauge::default(),
            recovery_segments: Family::default(),
            reports: Family::default(),
            report_delivered_at: SecondsGauge::default(),
            started_at: SecondsGauge::default(),
            api_connections: Family::default(),
            api_connection_closes: Family::default(),
            registry: Registry::default(),
        };
        m.started_at.set(epoch_seconds(SystemTime::now()));
        m.with_registry()
    }

    fn with_registry(mut self) -> Self {
        let mut r = Registry::default();
        r.register(
            "segment_agent_rpcs",
            "gRPC calls handled, by service, method and status code",
            self.rpcs.clone(),
        );
        r.register(
            "segment_agent_rpc_duration_seconds",
            "Time from a gRPC call's arrival to its last byte (streams: until they end)",
            self.rpc_seconds.clone(),
        );
        r.register(
            "segment_agent_create_step_duration_seconds",
            "Time of each step of a successful CreateSegment: admission, rootfs, certificates \
             (Docker images), define, start, docker_ready (Docker images)",
            self.create_steps.clone(),
        );
        r.register(
            "segment_agent_recovery_duration_seconds",
            "How long the last recovery from libvirt took (at agent start)",
            self.recovery_seconds.clone(),
        );
        r.register(
            "segment_agent_recovery_segments",
            "What the last recovery did, by outcome",
            self.recovery_segments.clone(),
        );
        r.register(
            "segment_agent_reports",
            "Health reports to the control plane, by result: delivered, failed (control plane \
             unreachable or refusing), skipped (no complete report could be built)",
            self.reports.clone(),
        );
        r.register(
            "segment_agent_report_last_delivered_timestamp_seconds",
            "When the control plane last acknowledged a report (0: never)",
            self.report_delivered_at.clone(),
        );
        r.register(
            "segment_agent_start_time_seconds",
            "When the agent process started, seconds since the epoch",
            self.started_at.clone(),
        );
        r.register(
            "segment_agent_api_connections",
            "gRPC connections open now, by listener (unix, tcp)",
            self.api_connections.clone(),
        );
        r.register(
            "segment_agent_api_connections_closed",
            "gRPC connections the server closed, by listener and reason: idle (no open call \
             for listen.idle_timeout_seconds), limit (listen.max_connections were open: closed \
             as soon as accepted)",
            self.api_connection_closes.clone(),
        );
        self.registry = r;
        self
    }

    /// Counts one finished RPC.
    pub fn rpc(&self, labels: RpcLabels, took: Duration) {
        self.rpc_seconds
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        self.rpcs.get_or_create(&labels).inc();
    }

    /// The figures of the API listener `listener` (`unix`, `tcp`).
    pub fn listener(&self, listener: &'static str) -> ListenerMetrics {
        let closes = |reason| {
            self.api_connection_closes
                .get_or_create(&CloseLabels { listener, reason })
                .clone()
        };
        ListenerMetrics {
            open: self
                .api_connections
                .get_or_create(&ListenerLabels { listener })
                .clone(),
            idle_closes: closes("idle"),
            refusals: closes("limit"),
        }
    }

    /// Records the last recovery.
    pub fn recovered(&self, report: &RecoveryReport, took: Duration) {
        self.recovery_seconds.set(took.as_secs_f64());
        for (outcome, n) in [
            ("adopted", report.adopted),
            ("started", report.started),
            ("deletes_finished", report.deletes_finished),
            ("stops_finished", report.stops_finished),
            ("orphans_removed", report.orphans_removed),
            ("foreign", report.foreign),
        ] {
            self.recovery_segments
                .get_or_create(&OutcomeLabels { outcome })
                .set(n as i64);
        }
    }

    /// The counters in the text format.
    pub fn encode(&self, out: &mut String) -> std::fmt::Result {
        prometheus_text::encode(out, &self.registry)
    }
}

impl LifecycleObserver for AgentMetrics {
    fn create_step(&self, step: CreateStep, took: Duration) {
        self.create_steps
            .get_or_create(&StepLabels { step: step.name() })
            .observe(took.as_secs_f64());
    }
}

impl ReportObserver for AgentMetrics {
    fn report(&self, outcome: ReportOutcome) {
        let result = match outcome {
            ReportOutcome::Delivered => {
                self.report_delivered_at
                    .set(epoch_seconds(SystemTime::now()));
                "delivered"
            }
            ReportOutcome::Failed => "failed",
            ReportOutcome::Skipped => "skipped",
        };
        self.reports.get_or_create(&ResultLabels { result }).inc();
    }
}

/// A reading of the host, or why there is none, shared by the scrapes it
/// serves.
type Reading = Arc<Result<HostSample, String>>;

/// Renders every family: the agent's counters and a (cached) reading of
/// the host and its segments.
pub struct Exporter {
    agent: Arc<AgentMetrics>,
    manager: Arc<SegmentManager>,
    cgroups: Arc<dyn CgroupReader>,
    host: HostFacts,
    cache: tokio::sync::Mutex<Option<(Instant, Reading)>>,
}

impl Exporter {
    /// An exporter of `agent`'s counters and of `manager`'s segments, their
    /// cgroups read through `cgroups`.
    pub fn new(
        agent: Arc<AgentMetrics>,
        manager: Arc<SegmentManager>,
        cgroups: Arc<dyn CgroupReader>,
        host: HostFacts,
    ) -> Self {
        Self {
            agent,
            manager,
            cgroups,
            host,
            cache: tokio::sync::Mutex::new(None),
        }
    }

    /// A reading at most [`SAMPLE_TTL`] old. Concurrent scrapes wait for
    /// one reading instead of each making their own.
    async fn sample(&self) -> Reading {
        let mut cache = self.cache.lock().await;
        if let Some((at, s)) = cache.as_ref()
            && at.elapsed() < SAMPLE_TTL
        {
            return s.clone();
        }
        let reading = sample::sample(&self.manager, &self.cgroups);
        let fresh = Arc::new(
            tokio::time::timeout(SAMPLE_TIMEOUT, reading)
                .await
                .unwrap_or_else(|_| Err(format!("no reading within {SAMPLE_TIMEOUT:?}"))),
        );
        *cache = Some((Instant::now(), fresh.clone()));
        fresh
    }

    /// The whole exposition, as of now.
    pub async fn render(&self) -> String {
        let sample = self.sample().await;
        let mut out = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail.
        let _ = self.agent.encode(&mut out);
        let _ = families::encode(&mut out, &self.host, sample);
        out
    }
}
