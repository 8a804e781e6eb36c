//! Helpers shared by the integration tests: gRPC clients on unix sockets,
//! an in-process agent over fakes, and the real agent binary run inside the
//! sandbox network namespace against the real libvirtd.

#![allow(dead_code)]

pub mod control_plane;
pub mod crash;
pub mod docker;
pub mod frames;
pub mod net;
pub mod real;
pub mod swarm;

use hyper_util::rt::TokioIo;
use segment_agent::{
    agent,
    api::Listeners,
    apparmor::{ApparmorError, ProfileLoader, UnavailableReason},
    cgroups::{RecordingCgroups, SegmentCgroups},
    config::{Config, ListenConfig},
    docker::probe::{DockerProbe, ProbeError, ProbeTls},
    host::HostFacts,
    hypervisor::{Hypervisor, fake::FakeHypervisor},
    images::ImageStore,
    metrics::AgentMetrics,
    network::fake::FakeFilter,
    proto::agent::{CreateSegmentRequest, Flavor, segment_agent_client::SegmentAgentClient},
    quota::{DiskQuota, FakeQuota, NoQuota, QuotaMode},
    segment::{Backends, SegmentManager},
    storage::{PlainDirStorage, SegmentStorage},
};
use std::{path::Path, sync::Arc, time::Duration};
use tokio::{net::UnixStream, sync::oneshot};
use tonic::transport::{Channel, Endpoint, Uri};

/// A gRPC channel over a unix socket.
pub async fn unix_channel(path: &Path) -> Channel {
    try_unix_channel(path)
        .await
        .expect("connecting to the agent socket")
}

/// A channel to the agent's socket, or why there is none.
pub async fn try_unix_channel(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path = path.to_owned();
    Endpoint::try_from("http://localhost")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { UnixStream::connect(path).await.map(TokioIo::new) }
        }))
        .await
}

/// A CreateSegment request with the host's defaults.
pub fn create_req(id: &str, cluster: &str) -> CreateSegmentRequest {
    CreateSegmentRequest {
        segment_id: id.into(),
        cluster_id: cluster.into(),
        ..Default::default()
    }
}

/// A CreateSegment request with a small flavor.
pub fn small_req(id: &str, cluster: &str) -> CreateSegmentRequest {
    CreateSegmentRequest {
        flavor: Some(Flavor {
            memory_mib: 256,
            vcpus: 1,
            ..Default::default()
        }),
        ..create_req(id, cluster)
    }
}

/// Writes a minimal image (no real rootfs is needed by the fakes).
pub fn fake_image(images: &Path, name: &str) {
    std::fs::create_dir_all(images.join(name).join("rootfs")).unwrap();
    std::fs::write(
        images.join(name).join("image.toml"),
        "init = \"/sbin/init\"\n",
    )
    .unwrap();
}

/// A Docker probe that answers at once (or never).
pub struct FakeProbe {
    pub ready: bool,
}

#[async_trait::async_trait]
impl DockerProbe for FakeProbe {
    async fn ping(&self, endpoint: std::net::SocketAddr, _: &ProbeTls) -> Result<(), ProbeError> {
        match self.ready {
            true => Ok(()),
            false => Err(ProbeError(format!("{endpoint}: connection refused (fake)"))),
        }
    }
}

/// The AppArmor of a kernel without it (as on the project's machines).
pub struct NoApparmor(pub std::path::PathBuf);

impl ProfileLoader for NoApparmor {
    fn available(&self) -> Result<(), ApparmorError> {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        Err(ApparmorError::Unavailable {
            reason: UnavailableReason::ParamUnreadable(self.0.clone(), io),
        })
    }

    fn load(&self, _: &Path) -> Result<(), ApparmorError> {
        unreachable!("never loaded without AppArmor")
    }
}

/// The real tonic server on a real unix socket, over the fake hypervisor
/// and plain directories.
pub struct FakeAgent {
    pub dir: tempfile::TempDir,
    pub hv: Arc<FakeHypervisor>,
    /// What the lifecycle asked of the segments' cgroups.
    pub cgroups: Arc<RecordingCgroups>,
    pub client: SegmentAgentClient<Channel>,
    pub manager: Arc<SegmentManager>,
    /// The agent's own counters.
    pub metrics: Arc<AgentMetrics>,
    /// Where `/metrics` is served, when `[metrics] listen` is configured.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// The bridge filter it applies (shared with the agent).
    pub filter: FakeFilter,
    /// The disk quotas its storage keeps (shared with the agent).
    pub quota: Arc<FakeQuota>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl FakeAgent {
    /// Creates a small segment and expects success.
    pub async fn create(
        &mut self,
        id: &str,
        cluster: &str,
    ) -> segment_agent::proto::agent::Segment {
        self.client
            .create_segment(small_req(id, cluster))
            .await
            .unwrap()
            .into_inner()
    }

    /// Starts an agent with `extra` TOML appended to a test configuration.
    pub async fn start(extra: &str) -> Self {
        Self::start_with(
            Arc::new(FakeHypervisor::new()),
            tempfile::tempdir().unwrap(),
            extra,
        )
        .await
    }

    /// Starts an agent over an existing fake and state dir (an agent restart).
    pub async fn start_with(hv: Arc<FakeHypervisor>, dir: tempfile::TempDir, extra: &str) -> Self {
        Self::start_with_probe_over(hv, dir, extra, FakeProbe { ready: true }).await
    }

    /// Like [`FakeAgent::start`], with a Docker probe that answers at once
    /// (`ready`) or never.
    pub async fn start_with_probe(extra: &str, ready: bool) -> Self {
        Self::start_with_probe_over(
            Arc::new(FakeHypervisor::new()),
            tempfile::tempdir().unwrap(),
            extra,
            FakeProbe { ready },
        )
        .await
    }

    /// Like [`FakeAgent::start_with`], with the given bridge filter.
    pub async fn start_with_filter(
        hv: Arc<FakeHypervisor>,
        dir: tempfile::TempDir,
        extra: &str,
        filter: FakeFilter,
    ) -> Self {
        let quota = Arc::new(FakeQuota::default());
        Self::start_over(
            hv,
            dir,
            extra,
            FakeProbe { ready: true },
            filter,
            quota,
            None,
        )
        .await
    }

    /// Like [`FakeAgent::start`], over the given disk quotas.
    pub async fn start_with_quota(extra: &str, quota: FakeQuota) -> Self {
        let (hv, dir) = (
            Arc::new(FakeHypervisor::new()),
            tempfile::tempdir().unwrap(),
        );
        let probe = FakeProbe { ready: true };
        Self::start_over(
            hv,
            dir,
            extra,
            probe,
            FakeFilter::new(),
            Arc::new(quota),
            None,
        )
        .await
    }

    /// Like [`FakeAgent::start_with`], with the given Docker probe.
    pub async fn start_with_probe_over(
        hv: Arc<FakeHypervisor>,
        dir: tempfile::TempDir,
        extra: &str,
        probe: FakeProbe,
    ) -> Self {
        let quota = Arc::new(FakeQuota::default());
        Self::start_over(hv, dir, extra, probe, FakeFilter::new(), quota, None).await
    }

    /// Like [`FakeAgent::start_with`], swarm membership done by `swarm`.
    pub async fn start_with_swarm(
        hv: Arc<FakeHypervisor>,
        dir: tempfile::TempDir,
        extra: &str,
        swarm: swarm::FakeSwarm,
    ) -> Self {
        let (probe, filter) = (FakeProbe { ready: true }, FakeFilter::new());
        let quota = Arc::new(FakeQuota::default());
        Self::start_over(hv, dir, extra, probe, filter, quota, Some(swarm)).await
    }

    async fn start_over(
        hv: Arc<FakeHypervisor>,
        dir: tempfile::TempDir,
        extra: &str,
        probe: FakeProbe,
        filter: FakeFilter,
        quota: Arc<FakeQuota>,
        swarm: Option<swarm::FakeSwarm>,
    ) -> Self {
        let socket = dir.path().join("agent.sock");
        let cgroups = Arc::new(RecordingCgroups::default());
        fake_image(&dir.path().join("images"), "dev");
        let apparmor = if extra.contains("apparmor =") {
            ""
        } else {
            "apparmor = \"off\"\n"
        };
        let text = format!(
            "state_dir = {:?}\ndefault_image = \"dev\"\n{apparmor}{extra}",
            dir.path().display().to_string()
        );
        let mut config = Config::from_toml(&text).unwrap();
        // The socket is the test's; the limits are `extra`'s.
        config.listen = ListenConfig {
            socket: socket.clone(),
            idle_timeout_seconds: config.listen.idle_timeout_seconds,
            max_connections: config.listen.max_connections,
            ..ListenConfig::default()
        };
        let host = HostFacts {
            host_id: "test-host".into(),
            cpus: 2,
            memory_mib: 24 * 1024,
        };
        let backends = Backends {
            hypervisor: hv.clone() as Arc<dyn Hypervisor>,
            storage: Arc::new(PlainDirStorage::with_quota(
                dir.path().join("segments"),
                match config.disk_quota {
                    QuotaMode::Off => Arc::new(NoQuota),
                    QuotaMode::Enforce => quota.clone() as Arc<dyn DiskQuota>,
                },
            )) as Arc<dyn SegmentStorage>,
            images: ImageStore::new(dir.path().join("images")),
            probe: Arc::new(probe),
            cgroups: cgroups.clone() as Arc<dyn SegmentCgroups>,
            filter: Arc::new(filter.clone()),
        };
        let mut settings = agent::settings(&config).unwrap();
        let loader = NoApparmor(dir.path().join("no-apparmor"));
        settings.confinement = agent::confinement(&config, loader);
        settings.filtering = agent::filtering(&config, &filter);
        settings.disk = agent::disk_limits(&config, quota.as_ref());
        let metrics = Arc::new(AgentMetrics::new());
        let mut manager =
            SegmentManager::new(backends, agent::registry(&config, &host).unwrap(), settings)
                .with_observer(metrics.clone())
                .with_cluster_peers(segment_agent::segment::peers::ClusterPeers::load(
                    &config.state_dir,
                ));
        if let Some(swarm) = swarm {
            manager = manager.with_swarm(Arc::new(swarm));
        }
        let manager = Arc::new(manager);
        let started = std::time::Instant::now();
        let recovered = manager.recover().await.unwrap();
        metrics.recovered(&recovered, started.elapsed());
        let listeners = Listeners::bind(&config.listen).await.unwrap();
        let reporter = agent::reporter(&config, manager.clone(), host.clone(), metrics.clone())
            .unwrap()
            .map(tokio::spawn);
        let endpoint = agent::metrics_endpoint(
            &config,
            manager.clone(),
            host.clone(),
            metrics.clone(),
            std::future::pending(),
        )
        .await
        .unwrap();
        let metrics_addr = endpoint.as_ref().map(|(addr, _)| *addr);
        let endpoint = endpoint.map(|(_, serve)| tokio::spawn(serve));
        let (stop, stopped) = oneshot::channel();
        let (m, am) = (manager.clone(), metrics.clone());
        let task = tokio::spawn(async move {
            agent::serve(m, host, listeners, am, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
            for t in [reporter, endpoint].into_iter().flatten() {
                t.abort();
            }
        });
        let client = SegmentAgentClient::new(unix_channel(&socket).await);
        FakeAgent {
            dir,
            hv,
            cgroups,
            client,
            manager,
            metrics,
            metrics_addr,
            filter,
            quota,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops serving and hands back the fake and state dir.
    pub async fn shut_down(mut self) -> (Arc<FakeHypervisor>, tempfile::TempDir) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(5), self.task.take().unwrap())
            .await
            .unwrap()
            .unwrap();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        (self.hv.clone(), dir)
    }
}
