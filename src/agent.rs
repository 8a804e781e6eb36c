//! Wiring: turns a [`Config`] into a running agent. Shared by `main` and the
//! tests so both start the agent the same way.

use crate::errors::error_chain;
use crate::model::ImageName;
use crate::{
    api::{self, Listeners, SegmentAgentService},
    apparmor::{ApparmorMode, PROFILE_NAME, ProfileInstaller, ProfileLoader},
    cgroups::{
        HostCgroups,
        usage::{CgroupFs, CgroupReader},
    },
    config::{Config, ConfigError},
    docker::probe::TlsPing,
    host::HostFacts,
    hypervisor::{Hypervisor, libvirt::Libvirt},
    idmap::IdRangePool,
    images::ImageStore,
    metrics::{
        AgentMetrics, Exporter,
        http::{self, MetricsListener},
        rpc::RpcMetricsLayer,
    },
    network::{
        SegmentNetwork,
        filter::{FilterMode, Filtering, PortFilter},
        nft::Nft,
    },
    quota::{DiskQuota, NoQuota, QuotaMode, btrfs::BtrfsQuota},
    report::{
        Collector,
        sender::{self, GrpcSink, ReportObserver, SinkTls},
    },
    segment::{
        Backends, Confinement, DiskLimits, DockerSettings, SegmentManager, Settings,
        recover::RecoveryReport,
        registry::{Capacity, Registry},
    },
    storage::{OverlayStorage, SegmentStorage},
};
use std::{
    future::Future,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};
use tonic_health::{ServingStatus, server::HealthReporter};
use tracing::{info, warn};

/// The lifecycle settings of a configuration.
pub fn settings(config: &Config) -> Result<Settings, ConfigError> {
    Ok(Settings {
        flavor: config.flavor.limits(),
        default_image: ImageName::parse(&config.default_image).map_err(|e| {
            ConfigError::Invalid {
                key: "default_image",
                reason: e.reason,
            }
        })?,
        network: SegmentNetwork {
            bridge: config.network.bridge.clone(),
            prefix: config.network.prefix,
            gateway: config.network.gateway,
        },
        cpu_period_us: config.lifecycle.cpu_period_us,
        stop_timeout: config.lifecycle.stop_timeout(),
        concurrent_operations: config.lifecycle.operations_at_once(),
        confinement: Confinement::Off,
        filtering: Filtering::Off,
        docker: DockerSettings {
            tools_dir: config.docker.tools_dir.clone(),
            ready_timeout: Duration::from_secs(config.docker.ready_timeout_seconds.into()),
            cert_validity: Duration::from_secs(
                u64::from(config.docker.cert_validity_days) * 86_400,
            ),
        },
        isolation: config.isolation,
        disk: DiskLimits::Off,
    })
}

/// The disk quota mechanism of a configuration.
pub fn disk_quota(config: &Config) -> Arc<dyn DiskQuota> {
    match config.disk_quota {
        QuotaMode::Enforce => Arc::new(BtrfsQuota::default()),
        QuotaMode::Off => Arc::new(NoQuota),
    }
}

/// Whether `quota` can limit segments' disks under the state dir, when the
/// configuration enforces quotas; the outcome decides whether segments may
/// be created. Blocks.
pub fn disk_limits(config: &Config, quota: &dyn DiskQuota) -> DiskLimits {
    if config.disk_quota == QuotaMode::Off {
        warn!("disk_quota = \"off\": segments' disks are not limited");
        return DiskLimits::Off;
    }
    match quota.check(&config.state_dir.join("segments")) {
        Ok(detail) => DiskLimits::Enforced(detail),
        Err(e) => {
            let reason = error_chain(&e);
            warn!(%reason, "disk quotas configured but unavailable; no segment will be created");
            DiskLimits::Unavailable(reason)
        }
    }
}

/// Installs and loads the segment profile when the configuration enforces
/// AppArmor; the outcome decides whether segments may start. Blocks.
pub fn confinement(config: &Config, loader: impl ProfileLoader) -> Confinement {
    if config.apparmor == ApparmorMode::Off {
        warn!("apparmor = \"off\": segments run unconfined");
        return Confinement::Off;
    }
    if let Err(e) = loader.available() {
        let reason = error_chain(&e);
        warn!(%reason, "AppArmor enforcement configured but unavailable; no segment will be created or started");
        return Confinement::Unavailable(reason);
    }
    let installer = ProfileInstaller::new(config.apparmor_profile_dir.clone(), loader);
    match installer.install() {
        Ok(outcome) => {
            info!(
                ?outcome,
                profile = PROFILE_NAME,
                "AppArmor profile in place"
            );
            Confinement::Enforced {
                profile: PROFILE_NAME.into(),
            }
        }
        Err(e) => Confinement::Unavailable(format!(
            "installing the profile failed: {}",
            error_chain(&e)
        )),
    }
}

/// Checks that the host can enforce the bridge filter and puts its table
/// in place when the configuration enforces it; the outcome decides
/// whether segments may start. Blocks.
pub fn filtering(config: &Config, filter: &dyn PortFilter) -> Filtering {
    if config.network.filter == FilterMode::Off {
        warn!("network.filter = \"off\": segment ports are not filtered");
        return Filtering::Off;
    }
    match filter.probe().and_then(|_| filter.install(&[])) {
        Ok(()) => {
            info!("bridge filter in place (nftables table bridge segment_agent)");
            Filtering::Enforced
        }
        Err(e) => {
            let reason = error_chain(&e);
            warn!(%reason, "bridge filter configured but unavailable; no segment will be created or started");
            Filtering::Unavailable(reason)
        }
    }
}

/// The registry of a configuration on a host: address pool and limits.
pub fn registry(config: &Config, host: &HostFacts) -> Result<Registry, ConfigError> {
    let c = &config.capacity;
    let usable = host.memory_mib.saturating_sub(c.reserved_memory_mib) as f64;
    let capacity = Capacity {
        max_segments: c.max_segments,
        allocatable_memory_mib: (usable * c.memory_overcommit_ratio) as u64,
    };
    let iso = &config.isolation;
    Ok(Registry::new(
        config.network.address_pool()?,
        IdRangePool::new(iso.first_host_id, iso.ids_per_segment, c.max_segments),
        capacity,
    ))
}

/// The real backends of a configuration: libvirt, overlayfs, images.
pub fn real_backends(config: &Config) -> Backends {
    Backends {
        hypervisor: Arc::new(Libvirt::new(&config.libvirt_uri)) as Arc<dyn Hypervisor>,
        storage: Arc::new(OverlayStorage::with_quota(
            config.state_dir.join("segments"),
            disk_quota(config),
        )) as Arc<dyn SegmentStorage>,
        images: ImageStore::new(config.state_dir.join("images")),
        probe: Arc::new(TlsPing),
        cgroups: Arc::new(HostCgroups::default()),
        filter: Arc::new(
            Nft::new(&config.network.bridge)
                .with_swarm_remote(config.network.swarm_remote_nets().unwrap_or_default()),
        ) as Arc<dyn PortFilter>,
    }
}

/// Recovers from libvirt, retrying while libvirtd is unavailable; the
/// outcome and the time the recovery itself took go to `metrics`.
pub async fn recover_when_available(
    manager: &SegmentManager,
    metrics: &AgentMetrics,
) -> Result<RecoveryReport, crate::segment::Error> {
    let mut delay = Duration::from_millis(200);
    loop {
        let started = Instant::now();
        match manager.recover().await {
            Ok(report) => {
                metrics.recovered(&report, started.elapsed());
                return Ok(report);
            }
            Err(crate::segment::Error::Unavailable(reason)) => {
                warn!(%reason, ?delay, "libvirtd unavailable; waiting before recovery");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Keeps `grpc.health.v1` in step with libvirt reachability.
pub async fn follow_libvirt_health(
    manager: Arc<SegmentManager>,
    reporter: HealthReporter,
    every: Duration,
) {
    let mut last = None;
    loop {
        let up = manager.hypervisor_version().await.is_ok();
        if last != Some(up) {
            let status = if up {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            reporter.set_service_status("", status).await;
            reporter
                .set_service_status("segment.agent.v1.SegmentAgent", status)
                .await;
            info!(libvirt_reachable = up, "health status changed");
            last = Some(up);
        }
        tokio::time::sleep(every).await;
    }
}

/// Follows libvirt's lifecycle events, which publish state changes the
/// agent did not make itself (a segment that crashed or was stopped behind
/// its back) to `WatchEvents` and restart segments whose init died; every
/// `heal_every` retries restarts whose backoff ran out (from the agent's
/// view, no libvirt call), and every `reconcile_every` lists the domains in
/// case an event was lost.
pub async fn observe_segments(
    manager: Arc<SegmentManager>,
    heal_every: Duration,
    reconcile_every: Duration,
) {
    /// Stops following events when the observer is stopped.
    struct AbortOnDrop(tokio::task::JoinHandle<()>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _events = AbortOnDrop(manager.follow_hypervisor());
    let mut last_reconcile = Instant::now();
    loop {
        tokio::time::sleep(heal_every).await;
        if last_reconcile.elapsed() >= reconcile_every {
            last_reconcile = Instant::now();
            if let Err(e) = manager.reconcile().await {
                tracing::debug!(error = %e, "reconciling with libvirt");
            }
        }
        if let Err(e) = manager.heal().await {
            tracing::debug!(error = %e, "healing segments");
        }
    }
}

/// Puts the bridge filter's table back every `every` (a ruleset flushed
/// behind the agent's back leaves segment ports unfiltered until then).
pub async fn refresh_filter(manager: Arc<SegmentManager>, every: Duration) {
    let mut failing = false;
    loop {
        tokio::time::sleep(every).await;
        match manager.refresh_filter().await {
            Ok(()) if failing => {
                info!("bridge filter in place again");
                failing = false;
            }
            Ok(()) => {}
            Err(e) if !failing => {
                let error = error_chain(&e);
                warn!(%error, "cannot put the bridge filter back; retrying");
                failing = true;
            }
            Err(_) => {}
        }
    }
}

/// The reporter of a configuration, if it has a `[control_plane]` table;
/// `observer` is told each report's outcome.
pub fn reporter(
    config: &Config,
    manager: Arc<SegmentManager>,
    host: HostFacts,
    observer: Arc<dyn ReportObserver>,
) -> Result<Option<impl Future<Output = ()> + Send + 'static>, ConfigError> {
    let Some(cp) = config.control_plane.clone() else {
        return Ok(None);
    };
    let read = |key: &'static str,
                p: &Option<std::path::PathBuf>|
     -> Result<Option<Vec<u8>>, ConfigError> {
        p.as_ref()
            .map(|p| {
                std::fs::read(p).map_err(|e| ConfigError::Invalid {
                    key,
                    reason: format!("{}: {e}", p.display()),
                })
            })
            .transpose()
    };
    let tls = SinkTls {
        ca_pem: read("control_plane.tls_ca", &cp.tls_ca)?,
        identity: match (
            read("control_plane.tls_cert", &cp.tls_cert)?,
            read("control_plane.tls_key", &cp.tls_key)?,
        ) {
            (Some(c), Some(k)) => Some((c, k)),
            _ => None,
        },
    };
    let sink = GrpcSink::new(&cp.endpoint, tls).map_err(|e| ConfigError::Invalid {
        key: "control_plane.endpoint",
        reason: e.to_string(),
    })?;
    let changes = manager.events().subscribe();
    let collector = Arc::new(Collector::new(
        manager,
        host,
        "/proc".into(),
        config.state_dir.clone(),
    ));
    info!(endpoint = %cp.endpoint, interval_seconds = cp.interval_seconds, "health reports on");
    let interval = Duration::from_secs(cp.interval_seconds.into());
    Ok(Some(sender::run(
        collector,
        Arc::new(sink),
        interval,
        changes,
        observer,
    )))
}

/// The metrics endpoint of a configuration, bound, if it has
/// `[metrics] listen`: its address and the task that serves it.
pub async fn metrics_endpoint(
    config: &Config,
    manager: Arc<SegmentManager>,
    host: HostFacts,
    metrics: Arc<AgentMetrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Option<(SocketAddr, impl Future<Output = ()> + Send + 'static)>, ConfigError> {
    let Some(addr) = config.metrics.listen else {
        return Ok(None);
    };
    let fail = |e: std::io::Error| ConfigError::Invalid {
        key: "metrics.listen",
        reason: format!("{addr}: {e}"),
    };
    let listener = MetricsListener::bind(addr).await.map_err(fail)?;
    let bound = listener.local_addr().map_err(fail)?;
    if !bound.ip().is_loopback() {
        warn!(%bound, "metrics are served unauthenticated beyond loopback: firewall the port");
    }
    let cgroups = Arc::new(CgroupFs::default()) as Arc<dyn CgroupReader>;
    let exporter = Arc::new(Exporter::new(metrics, manager, cgroups, host));
    Ok(Some((bound, http::serve(listener, exporter, shutdown))))
}

/// Serves `manager` on `listeners` until `shutdown`; `ready` runs once the
/// listeners accept connections.
pub async fn serve(
    manager: Arc<SegmentManager>,
    host: HostFacts,
    listeners: Listeners,
    metrics: Arc<AgentMetrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), api::server::ListenError> {
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let follower = tokio::spawn(follow_libvirt_health(
        manager.clone(),
        reporter.clone(),
        Duration::from_secs(5),
    ));
    let observer = tokio::spawn(observe_segments(
        manager.clone(),
        Duration::from_secs(1),
        crate::segment::view::SAFETY_POLL,
    ));
    let refresher = tokio::spawn(refresh_filter(manager.clone(), Duration::from_secs(10)));
    let service = SegmentAgentService::new(manager, host);
    let layer = RpcMetricsLayer::new(metrics);
    let result = api::serve(listeners, service, health_service, layer, shutdown).await;
    follower.abort();
    observer.abort();
    refresher.abort();
    result
}

/// How often to tell systemd the agent is alive, when its unit asks for it
/// (`WatchdogSec=` sets `WATCHDOG_USEC` for this process): half the
/// watchdog's timeout, as sd_watchdog_enabled(3) advises.
pub fn watchdog_period() -> Option<Duration> {
    let mut usec = 0;
    match sd_notify::watchdog_enabled(false, &mut usec) {
        true if usec > 0 => Some(Duration::from_micros(usec) / 2),
        _ => None,
    }
}

/// Sends `WATCHDOG=1` every `every`, from a task on the async runtime: the
/// pings stop, and systemd restarts the agent, when the runtime no longer
/// runs its tasks (every worker blocked or spinning). Segments keep running
/// across that restart.
pub async fn watchdog(every: Duration) {
    info!(?every, "systemd watchdog on");
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]) {
            warn!(error = %e, "cannot notify the systemd watchdog");
        }
    }
}
