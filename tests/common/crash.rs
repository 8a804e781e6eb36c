//! Agent crashes at any step, over the fakes: a hypervisor and a storage
//! that share one [`Plan`]. The plan counts every mutating call (libvirt's
//! define, start, shutdown, destroy, undefine, metadata writes; the
//! filesystems' prepare and remove); at the chosen call the agent "dies":
//! that call (before it, or after it with its reply lost) and every later
//! one change nothing, exactly as if the process had ended there. A new
//! manager over the same fake and directories is then the restarted agent.

use segment_agent::model::SegmentId;
use segment_agent::{
    agent,
    cgroups::{RecordingCgroups, SegmentCgroups},
    config::Config,
    host::HostFacts,
    hypervisor::{
        DomainEntry, DomainUsage, HvError, Hypervisor, HypervisorVersion, fake::FakeHypervisor,
    },
    idmap::IdRange,
    images::{Image, ImageStore},
    network::fake::FakeFilter,
    segment::{Backends, SegmentManager},
    storage::{PlainDirStorage, SegmentDirs, SegmentStorage, StorageError},
};
use std::{
    collections::HashSet,
    path::Path,
    sync::{Arc, Mutex},
};

/// Where the agent dies, and the one-shot failures it meets before.
#[derive(Debug, Default)]
pub struct Plan {
    /// Die at this mutating call (0-based), before or after it took effect.
    pub crash_at: Option<(usize, Moment)>,
    /// These calls (by index) fail once with an injected libvirt error.
    pub fail_at: HashSet<usize>,
    calls: Vec<String>,
    dead: bool,
    armed: bool,
}

/// Whether the dying call took effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moment {
    /// The call never reached libvirt or the filesystem.
    Before,
    /// It took effect, the agent died before it saw the answer.
    After,
}

/// What one mutating call may do.
enum Verdict {
    Run,
    RunThenDie,
    Dead,
    Fail,
}

/// The shared plan.
#[derive(Clone, Default)]
pub struct Switch(Arc<Mutex<Plan>>);

impl Switch {
    /// A switch that dies at `crash_at` and fails the calls in `fail_at`.
    pub fn new(crash_at: Option<(usize, Moment)>, fail_at: &[usize]) -> Self {
        Switch(Arc::new(Mutex::new(Plan {
            crash_at,
            fail_at: fail_at.iter().copied().collect(),
            ..Plan::default()
        })))
    }

    /// The mutating calls made so far, as "op name".
    pub fn calls(&self) -> Vec<String> {
        self.0.lock().unwrap().calls.clone()
    }

    /// Whether the agent has died.
    pub fn dead(&self) -> bool {
        self.0.lock().unwrap().dead
    }

    fn verdict(&self, call: String) -> Verdict {
        let mut p = self.0.lock().unwrap();
        if p.dead {
            return Verdict::Dead;
        }
        if !p.armed {
            return Verdict::Run;
        }
        let n = p.calls.len();
        p.calls.push(call);
        match p.crash_at {
            Some((at, Moment::Before)) if at == n => {
                p.dead = true;
                Verdict::Dead
            }
            Some((at, Moment::After)) if at == n => Verdict::RunThenDie,
            _ if p.fail_at.contains(&n) => Verdict::Fail,
            _ => Verdict::Run,
        }
    }

    /// Counts calls from now on (after the agent's own recovery).
    pub fn arm(&self) {
        self.0.lock().unwrap().armed = true;
    }

    fn die(&self) {
        self.0.lock().unwrap().dead = true;
    }

    fn gate<T>(
        &self,
        op: &'static str,
        name: &str,
        f: impl FnOnce() -> Result<T, HvError>,
    ) -> Result<T, HvError> {
        let dead = || HvError::Unavailable("the agent is dead".into());
        match self.verdict(format!("{op} {name}")) {
            Verdict::Run => f(),
            Verdict::RunThenDie => {
                let _ = f();
                self.die();
                Err(dead())
            }
            Verdict::Dead => Err(dead()),
            Verdict::Fail => Err(HvError::Failed {
                op,
                name: name.to_owned(),
                message: "injected failure".into(),
            }),
        }
    }

    fn gate_fs<T>(
        &self,
        op: &'static str,
        path: &Path,
        f: impl FnOnce() -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let fail = |what: &str| StorageError {
            op,
            path: path.to_owned(),
            source: std::io::Error::other(what.to_owned()),
        };
        match self.verdict(format!("{op} {}", path.display())) {
            Verdict::Run => f(),
            Verdict::RunThenDie => {
                let _ = f();
                self.die();
                Err(fail("the agent is dead"))
            }
            Verdict::Dead => Err(fail("the agent is dead")),
            Verdict::Fail => Err(fail("injected failure")),
        }
    }

    /// Any call, mutating or not, of a dead agent changes and learns nothing.
    fn alive(&self) -> Result<(), HvError> {
        match self.dead() {
            true => Err(HvError::Unavailable("the agent is dead".into())),
            false => Ok(()),
        }
    }
}

/// The fake hypervisor behind the switch.
pub struct CrashingHv {
    pub inner: Arc<FakeHypervisor>,
    pub switch: Switch,
}

impl Hypervisor for CrashingHv {
    fn list_segments(&self) -> Result<Vec<DomainEntry>, HvError> {
        self.switch.alive()?;
        self.inner.list_segments()
    }
    fn running(&self) -> Result<std::collections::HashSet<String>, HvError> {
        self.switch.alive()?;
        self.inner.running()
    }
    fn is_running(&self, name: &str) -> Result<bool, HvError> {
        self.switch.alive()?;
        self.inner.is_running(name)
    }
    fn define(&self, xml: &str) -> Result<(), HvError> {
        self.switch.gate("define", "", || self.inner.define(xml))
    }
    fn start(&self, name: &str) -> Result<(), HvError> {
        self.switch.gate("start", name, || self.inner.start(name))
    }
    fn shutdown(&self, name: &str) -> Result<(), HvError> {
        self.switch
            .gate("shutdown", name, || self.inner.shutdown(name))
    }
    fn destroy(&self, name: &str) -> Result<(), HvError> {
        self.switch
            .gate("destroy", name, || self.inner.destroy(name))
    }
    fn undefine(&self, name: &str) -> Result<(), HvError> {
        self.switch
            .gate("undefine", name, || self.inner.undefine(name))
    }
    fn set_record(&self, name: &str, xml: &str) -> Result<(), HvError> {
        self.switch
            .gate("set_record", name, || self.inner.set_record(name, xml))
    }
    fn usage(&self, name: &str, interface: &str) -> Result<DomainUsage, HvError> {
        self.switch.alive()?;
        self.inner.usage(name, interface)
    }
    fn init_pid(&self, name: &str) -> Result<u32, HvError> {
        self.switch.alive()?;
        self.inner.init_pid(name)
    }
    fn version(&self) -> Result<HypervisorVersion, HvError> {
        self.switch.alive()?;
        self.inner.version()
    }
    fn watch(&self, sink: segment_agent::hypervisor::EventSink) {
        // A dead agent learns nothing, from events neither.
        let switch = self.switch.clone();
        self.inner.watch(Box::new(move |event| {
            if switch.alive().is_ok() {
                sink(event)
            }
        }));
    }
}

/// Plain directories behind the switch.
pub struct CrashingStorage {
    pub inner: PlainDirStorage,
    pub base: std::path::PathBuf,
    pub switch: Switch,
}

impl SegmentStorage for CrashingStorage {
    fn prepare(
        &self,
        id: &SegmentId,
        image: &Image,
        ids: IdRange,
        disk_bytes: u64,
    ) -> Result<SegmentDirs, StorageError> {
        let path = self.base.join(id.as_str());
        self.switch.gate_fs("prepare", &path, || {
            self.inner.prepare(id, image, ids, disk_bytes)
        })
    }
    fn disk_usage(
        &self,
        id: &SegmentId,
    ) -> Result<Option<segment_agent::quota::DiskUsage>, StorageError> {
        self.inner.disk_usage(id)
    }
    fn dirs(&self, id: &SegmentId) -> SegmentDirs {
        self.inner.dirs(id)
    }
    fn remove(&self, id: &SegmentId) -> Result<(), StorageError> {
        let path = self.base.join(id.as_str());
        self.switch
            .gate_fs("remove", &path, || self.inner.remove(id))
    }
    fn list(&self) -> Result<Vec<SegmentId>, StorageError> {
        self.inner.list()
    }
}

/// A manager over `hv` and the state in `dir`, recovered, as the agent
/// runs it after a (re)start; `switch` (if any) decides when it dies.
pub async fn agent_over(
    hv: &Arc<FakeHypervisor>,
    dir: &Path,
    switch: Option<Switch>,
) -> Arc<SegmentManager> {
    super::fake_image(&dir.join("images"), "dev");
    let text = format!(
        "state_dir = {:?}\ndefault_image = \"dev\"\napparmor = \"off\"\n\
         [lifecycle]\nstop_timeout_seconds = 1\n",
        dir.display().to_string()
    );
    let config = Config::from_toml(&text).unwrap();
    let host = HostFacts {
        host_id: "test-host".into(),
        cpus: 2,
        memory_mib: 24 * 1024,
    };
    let segments = dir.join("segments");
    let (hypervisor, storage): (Arc<dyn Hypervisor>, Arc<dyn SegmentStorage>) = match switch.clone()
    {
        Some(switch) => (
            Arc::new(CrashingHv {
                inner: hv.clone(),
                switch: switch.clone(),
            }),
            Arc::new(CrashingStorage {
                inner: PlainDirStorage::new(&segments),
                base: segments.clone(),
                switch,
            }),
        ),
        None => (hv.clone(), Arc::new(PlainDirStorage::new(&segments))),
    };
    let filter = FakeFilter::new();
    let backends = Backends {
        hypervisor,
        storage,
        images: ImageStore::new(dir.join("images")),
        probe: Arc::new(super::FakeProbe { ready: true }),
        cgroups: Arc::new(RecordingCgroups::default()) as Arc<dyn SegmentCgroups>,
        filter: Arc::new(filter.clone()),
    };
    let mut settings = agent::settings(&config).unwrap();
    settings.filtering = agent::filtering(&config, &filter);
    let registry = agent::registry(&config, &host).unwrap();
    let manager = Arc::new(SegmentManager::new(backends, registry, settings));
    manager.recover().await.unwrap();
    if let Some(switch) = switch {
        switch.arm();
    }
    manager
}
