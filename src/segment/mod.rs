//! The segment lifecycle: the domain API that the gRPC layer (and tests)
//! drive. It knows nothing of tonic; it talks to the host through the
//! [`Hypervisor`] and [`SegmentStorage`] traits.
//!
//! One file per operation: [`create`], [`delete`], [`power`] (start, stop),
//! [`recover`] (agent start) and [`heal`] (restarting segments that died); [`ports`] keeps the bridge filter in step.
//! Reads come from the agent's own [`view`], kept true by libvirt's events. Operations on one segment are serialised by
//! [`locks::SegmentLocks`]; admission is atomic in [`registry::Registry`].

pub mod boot;
pub mod create;
pub mod delete;
pub mod error;
pub mod events;
pub mod heal;
pub mod locks;
pub mod membership;
pub mod peers;
pub mod ports;
pub mod power;
pub mod rebuild;
pub mod recover;
pub mod registry;
pub mod state;
pub mod view;
pub mod work;

pub use error::Error;
pub use state::{Segment, SegmentState};

use crate::model::{ClusterId, FlavorLimits, ImageName, SegmentId, SegmentRecord};
use crate::{
    cgroups::SegmentCgroups,
    config::IsolationConfig,
    docker::probe::DockerProbe,
    hypervisor::Hypervisor,
    images::ImageStore,
    network::{
        SegmentNetwork,
        filter::{Filtering, PortFilter},
    },
    segment::events::EventHub,
    segment::{
        locks::SegmentLocks,
        registry::{Registry, Usage},
    },
    storage::SegmentStorage,
    xml::metadata,
};
use std::{sync::Arc, time::Duration};

/// Host settings the lifecycle needs, taken from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Flavor defaults and bounds.
    pub flavor: FlavorLimits,
    /// Image of requests that name none.
    pub default_image: ImageName,
    /// How segments attach to the network.
    pub network: SegmentNetwork,
    /// CFS period in microseconds.
    pub cpu_period_us: u64,
    /// Default graceful stop timeout.
    pub stop_timeout: Duration,
    /// Creates and deletes doing their work at once (at least 1).
    pub concurrent_operations: usize,
    /// How segments are confined.
    pub confinement: Confinement,
    /// Whether segment ports are filtered on the bridge.
    pub filtering: Filtering,
    /// Docker inside segments.
    pub docker: DockerSettings,
    /// User-namespace ranges, the I/O weight, the management reserve.
    pub isolation: IsolationConfig,
    /// Whether segments' disks are limited.
    pub disk: DiskLimits,
}

/// Whether segments' disks are limited by the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskLimits {
    /// Every segment's directory is a quota-limited volume (the detail
    /// names the mechanism).
    Enforced(String),
    /// Configured off (`disk_quota = "off"`): no limit.
    Off,
    /// Configured to enforce, but the state dir cannot: no segment may be
    /// created.
    Unavailable(String),
}

impl DiskLimits {
    /// Refuses a create when quotas were asked for and the state dir
    /// cannot enforce them (fail closed).
    pub fn require(&self) -> Result<(), Error> {
        match self {
            DiskLimits::Unavailable(reason) => Err(Error::FailedPrecondition(format!(
                "segment disk quotas cannot be enforced on this host ({reason}); segments are \
                 not created without a disk limit unless the agent is configured with \
                 disk_quota = \"off\""
            ))),
            _ => Ok(()),
        }
    }

    /// One line for `check`, GetHost and reports.
    pub fn describe(&self) -> String {
        match self {
            DiskLimits::Enforced(detail) => format!("enforce ({detail})"),
            DiskLimits::Off => "off".into(),
            DiskLimits::Unavailable(reason) => format!("unavailable: {reason}"),
        }
    }
}

/// Docker inside segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerSettings {
    /// Host directory bound read-only at `/opt/segment-agent` (policy plugin).
    pub tools_dir: std::path::PathBuf,
    /// Wait for `/_ping` over TLS before a segment is FAILED.
    pub ready_timeout: Duration,
    /// Validity of issued server certificates.
    pub cert_validity: Duration,
}

/// How segments are confined by AppArmor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confinement {
    /// Every segment runs under this loaded profile.
    Enforced {
        /// Profile name for the domain's `<seclabel>`.
        profile: String,
    },
    /// Configured off: segments run unconfined (development hosts).
    Off,
    /// Configured to enforce, but the host cannot: no segment may start.
    Unavailable(String),
}

impl Confinement {
    /// The profile for the domain XML, if segments are confined.
    pub fn profile(&self) -> Option<String> {
        match self {
            Confinement::Enforced { profile } => Some(profile.clone()),
            _ => None,
        }
    }

    /// Refuses to run a segment when enforcement was asked for and the host
    /// cannot provide it (fail closed).
    pub fn require(&self) -> Result<(), Error> {
        match self {
            Confinement::Unavailable(reason) => Err(Error::FailedPrecondition(format!(
                "AppArmor is not available on this host ({reason}); segments are not started \
                 unconfined unless the agent is configured with apparmor = \"off\""
            ))),
            _ => Ok(()),
        }
    }

    /// One line for GetHost and reports.
    pub fn describe(&self) -> String {
        match self {
            Confinement::Enforced { profile } => format!("enforce ({profile})"),
            Confinement::Off => "off".into(),
            Confinement::Unavailable(reason) => format!("unavailable: {reason}"),
        }
    }
}

/// The steps of CreateSegment, as the agent's metrics time them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateStep {
    /// From the request to the admitted record (checks, image, address).
    Admission,
    /// The segment's filesystems (overlay root, Docker's data directory).
    Rootfs,
    /// Issuing Docker's certificates and writing its configuration.
    Certificates,
    /// `define` of the domain.
    Define,
    /// `start` of the domain.
    Start,
    /// From a started domain to Docker answering `/_ping` over TLS.
    DockerReady,
}

impl CreateStep {
    /// The step's name in metrics.
    pub fn name(self) -> &'static str {
        match self {
            CreateStep::Admission => "admission",
            CreateStep::Rootfs => "rootfs",
            CreateStep::Certificates => "certificates",
            CreateStep::Define => "define",
            CreateStep::Start => "start",
            CreateStep::DockerReady => "docker_ready",
        }
    }
}

/// Told how long lifecycle steps take (the agent's metrics listen).
pub trait LifecycleObserver: Send + Sync + 'static {
    /// One step of a successful create took `took`.
    fn create_step(&self, step: CreateStep, took: Duration);
}

/// Nobody listens.
struct Unobserved;

impl LifecycleObserver for Unobserved {
    fn create_step(&self, _: CreateStep, _: Duration) {}
}

/// The host's external systems, each behind its trait.
pub struct Backends {
    /// libvirt.
    pub hypervisor: Arc<dyn Hypervisor>,
    /// Segment filesystems.
    pub storage: Arc<dyn SegmentStorage>,
    /// Images.
    pub images: ImageStore,
    /// Docker readiness.
    pub probe: Arc<dyn DockerProbe>,
    /// Segments' cgroups once started.
    pub cgroups: Arc<dyn SegmentCgroups>,
    /// The bridge filter of segment ports.
    pub filter: Arc<dyn PortFilter>,
}

/// Creates, starts, stops, deletes and lists the host's segments.
pub struct SegmentManager {
    hv: Arc<dyn Hypervisor>,
    storage: Arc<dyn SegmentStorage>,
    images: ImageStore,
    probe: Arc<dyn DockerProbe>,
    cgroups: Arc<dyn SegmentCgroups>,
    filter: Arc<dyn PortFilter>,
    registry: Registry,
    locks: SegmentLocks,
    settings: Settings,
    events: EventHub,
    observer: Arc<dyn LifecycleObserver>,
    healer: heal::Healer,
    swarm: Arc<dyn crate::docker::swarm::SwarmApi>,
    view: view::View,
    cluster_peers: Arc<peers::ClusterPeers>,
    /// Turns for the heavy part of creates and deletes
    /// ([`Settings::concurrent_operations`]).
    operations: tokio::sync::Semaphore,
    /// Where the lifecycle's blocking calls run ([`work`]).
    work: work::WorkPool,
}

impl SegmentManager {
    /// A manager with an empty registry; call [`SegmentManager::recover`]
    /// before serving.
    pub fn new(backends: Backends, registry: Registry, settings: Settings) -> Self {
        let turns = settings.concurrent_operations.max(1);
        Self {
            hv: backends.hypervisor,
            storage: backends.storage,
            images: backends.images,
            probe: backends.probe,
            cgroups: backends.cgroups,
            filter: backends.filter,
            registry,
            locks: SegmentLocks::default(),
            settings,
            events: EventHub::default(),
            observer: Arc::new(Unobserved),
            healer: heal::Healer::default(),
            swarm: Arc::new(crate::docker::swarm::DockerSwarm),
            view: view::View::default(),
            cluster_peers: Arc::default(),
            operations: tokio::sync::Semaphore::new(turns),
            work: work::WorkPool::default(),
        }
    }

    /// Keeps the clusters' remote peers in `peers` (the agent's are in its
    /// state dir; without this they live in memory only).
    pub fn with_cluster_peers(mut self, peers: peers::ClusterPeers) -> Self {
        self.cluster_peers = Arc::new(peers);
        self
    }

    /// Does swarm membership through `api` instead of Docker's real API
    /// (tests over fakes).
    pub fn with_swarm(mut self, api: Arc<dyn crate::docker::swarm::SwarmApi>) -> Self {
        self.swarm = api;
        self
    }

    /// Tells `observer` how long lifecycle steps take.
    pub fn with_observer(mut self, observer: Arc<dyn LifecycleObserver>) -> Self {
        self.observer = observer;
        self
    }

    /// State changes, for watchers.
    pub fn events(&self) -> &EventHub {
        &self.events
    }

    /// Publishes the segment's current state if it changed.
    pub(crate) async fn announce(&self, id: &SegmentId) {
        let generation = self.events.generation();
        match self.get(id).await {
            Ok(segment) => {
                self.events.observe(&segment, generation);
            }
            Err(Error::NotFound(_)) => self.events.removed(id, generation),
            Err(_) => {}
        }
    }

    /// Observes every segment and publishes what changed, including
    /// segments that went away; catches changes the agent did not make.
    pub async fn observe_all(&self) -> Result<(), Error> {
        let generation = self.events.generation();
        let segments = self.list(None).await?;
        let present: Vec<SegmentId> = segments
            .iter()
            .map(|s| s.record.request.id.clone())
            .collect();
        // A segment in an operation is announced by the operation itself:
        // seen half-way (a create waiting for Docker) it would flap.
        for segment in segments
            .iter()
            .filter(|s| !self.locks.busy(&s.record.request.id))
        {
            self.events.observe(segment, generation);
        }
        for gone in self.events.missing(&present) {
            self.events.removed(&gone, generation);
        }
        Ok(())
    }

    /// The settings in force.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Current use of the host, and its limits.
    pub fn usage(&self) -> (Usage, registry::Capacity) {
        (self.registry.usage(), self.registry.capacity())
    }

    /// The cluster of a registered segment.
    pub fn cluster_of(&self, id: &SegmentId) -> Option<ClusterId> {
        self.registry.get(id).map(|e| e.record.request.cluster)
    }

    /// One segment with its observed state, from the agent's own view
    /// ([`view`]): no libvirt call.
    pub async fn get(&self, id: &SegmentId) -> Result<Segment, Error> {
        let entry = self
            .registry
            .get(id)
            .ok_or_else(|| Error::NotFound(id.clone()))?;
        let mut segment = Segment::observe(&entry, self.running_of(&entry));
        segment.disk = self.disk_usage(vec![id.clone()]).await.pop().flatten();
        Ok(segment)
    }

    /// Every segment (of one cluster, if given), ordered by id, from the
    /// agent's own view ([`view`]): no libvirt call.
    pub async fn list(&self, cluster: Option<&ClusterId>) -> Result<Vec<Segment>, Error> {
        let mut segments: Vec<Segment> = self
            .registry
            .all()
            .iter()
            .filter(|e| cluster.is_none_or(|c| &e.record.request.cluster == c))
            .map(|e| Segment::observe(e, self.running_of(e)))
            .collect();
        let ids = segments
            .iter()
            .map(|s| s.record.request.id.clone())
            .collect();
        for (segment, disk) in segments.iter_mut().zip(self.disk_usage(ids).await) {
            segment.disk = disk;
        }
        Ok(segments)
    }

    /// A turn for the heavy part of a create or delete: at most
    /// [`Settings::concurrent_operations`] at once. Fifty at once on two
    /// cores finish no sooner than four at a time, and meanwhile starve
    /// the reads (each create's steps and processes compete with the API's
    /// threads for the CPU and for the blocking pool's lock).
    pub(crate) async fn operation_turn(&self) -> tokio::sync::SemaphorePermit<'_> {
        self.operations
            .acquire()
            .await
            .expect("the operations semaphore is never closed")
    }

    /// Runs a hypervisor call off the async runtime.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Hypervisor) -> Result<T, crate::hypervisor::HvError> + Send + 'static,
    ) -> Result<T, Error> {
        let hv = self.hv.clone();
        let outcome = self
            .work
            .run(move || f(hv.as_ref()))
            .await
            .map_err(|e| Error::Internal(format!("hypervisor task: {e}")))?
            .map_err(Error::from);
        self.answered(&outcome);
        outcome
    }

    /// Looks an image up (file system reads) off the async runtime.
    pub(crate) async fn resolve_image(
        &self,
        name: &ImageName,
    ) -> Result<crate::images::Image, Error> {
        let (images, name) = (self.images.clone(), name.clone());
        self.work
            .run(move || images.resolve(&name))
            .await
            .map_err(|e| Error::Internal(format!("image task: {e}")))?
            .map_err(Error::from)
    }

    /// Runs a storage call off the async runtime.
    async fn storage_blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn SegmentStorage) -> Result<T, crate::storage::StorageError> + Send + 'static,
    ) -> Result<T, Error> {
        let storage = self.storage.clone();
        self.work
            .run(move || f(storage.as_ref()))
            .await
            .map_err(|e| Error::Internal(format!("storage task: {e}")))?
            .map_err(Error::from)
    }

    /// Records why a segment is FAILED (`None`: it no longer is) in the
    /// registry and, best effort, in its domain's metadata, so a restarted
    /// agent still says it.
    pub(crate) async fn set_failure(&self, id: &SegmentId, reason: Option<String>) {
        let reason = reason.map(|r| crate::model::bounded_failure(&r));
        let Some(entry) = self.registry.get(id) else {
            return;
        };
        if entry.record.failure == reason {
            return;
        }
        let mut record = entry.record;
        record.failure = reason.clone();
        if let Err(e) = self.persist(record).await {
            tracing::warn!(segment_id = %id, error = %e, "cannot persist the failure reason");
            self.registry.update(id, |e| e.record.failure = reason);
        }
    }

    /// Persists `record` into the domain's metadata, then the registry.
    async fn persist(&self, record: SegmentRecord) -> Result<(), Error> {
        let name = record.request.id.domain_name();
        let xml = metadata::record_xml(&record);
        self.blocking(move |hv| hv.set_record(&name, &xml)).await?;
        let id = record.request.id.clone();
        self.registry.update(&id, |e| e.record = record);
        Ok(())
    }
}

impl SegmentManager {
    /// Memory, CPU and network use of a running segment.
    pub async fn segment_usage(
        &self,
        record: &SegmentRecord,
    ) -> Result<crate::hypervisor::DomainUsage, Error> {
        let name = record.request.id.domain_name();
        let n = &self.settings.network;
        // The interface as the segment's domain XML has it.
        let mac = crate::xml::NetworkInterface {
            bridge: n.bridge.clone(),
            address: record.address,
            prefix: n.prefix,
            gateway: n.gateway,
            port: None,
        }
        .mac();
        self.blocking(move |hv| hv.usage(&name, &mac)).await
    }
}
