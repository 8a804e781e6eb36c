//! A segment's cgroups, taken in hand right after libvirt starts it and
//! before anything of the customer can run.
//!
//! libvirt places an LXC domain in a cgroup of each controller it manages
//! and caps memory and CPU there, but it leaves the rest to the agent:
//!
//! - **processes**: on cgroup v1 libvirt does not place the domain in the
//!   `pids` hierarchy at all (nor `name=systemd`); on v2 it does not enable
//!   `pids`. The agent puts every process of the segment into the segment's
//!   cgroup in every hierarchy and sets `pids.max` there.
//! - **the containers' cgroup**: Docker segments get a child `docker`
//!   capped at the flavor's memory minus the management reserve, with no
//!   swap: a customer who fills it (allocations, tmpfs and shm pages, which
//!   are charged to the container that touched them) meets the OOM killer
//!   inside `docker` only, never containerd, dockerd or the policy plugin.
//!   libvirt's controller and the segment's init are exempt from the OOM
//!   killer (`oom_score_adj` -1000; they fork nothing later, so no customer
//!   process inherits it).
//! - **delegation**: only `docker` (the directory and the files that move
//!   processes) is handed to the segment's root, the way systemd delegates
//!   a subtree. The segment's own limit files stay host root's, so nothing
//!   inside can raise its caps. The segment's supervisor waits for that
//!   hand-over, then enters a cgroup namespace of its own and mounts the
//!   hierarchies afresh: inside, `/sys/fs/cgroup` shows only the segment's
//!   own subtree, and every cgroup Docker, BuildKit or runc creates lands
//!   below it, inside the caps.
//!
//! [`HostCgroups`] is the real implementation (v1 and v2 read from the
//! kernel's own tables); [`RecordingCgroups`] records calls for tests.

pub mod usage;
mod v1;
mod v2;

use std::{
    io,
    path::{Path, PathBuf},
    sync::Mutex,
};

/// The child cgroup that holds a Docker segment's containers; dockerd runs
/// with `--cgroup-parent=docker` inside the segment's cgroup namespace.
pub const WORKLOAD: &str = "docker";

/// What the agent applies to a started segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentLimits {
    /// The segment's `pids.max`.
    pub pids_max: u32,
    /// Memory of the containers' cgroup; `None` for segments without Docker
    /// (no containers' cgroup is made).
    pub workload_memory_bytes: Option<u64>,
    /// Host uid and gid of the segment's root, who gets the containers'
    /// cgroup.
    pub owner: u32,
}

/// A cgroup operation that failed.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}")]
pub struct CgroupError {
    /// What was being done.
    pub op: &'static str,
    /// On which path.
    pub path: PathBuf,
    /// Why it failed.
    #[source]
    pub source: io::Error,
}

pub(crate) fn err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CgroupError {
    let path = path.to_owned();
    move |source| CgroupError { op, path, source }
}

/// The cgroup side of starting a segment.
pub trait SegmentCgroups: Send + Sync + 'static {
    /// Takes the freshly started segment whose init is host PID `init_pid`
    /// in hand: placement in every hierarchy, limits, the containers'
    /// cgroup, delegation (last: the segment's supervisor waits for it).
    /// Idempotent. Blocks.
    fn take_in_hand(&self, init_pid: u32, limits: &SegmentLimits) -> Result<(), CgroupError>;
    /// After a segment stopped: removes what the agent made for it that
    /// libvirt does not remove (v1 `pids` and `name=systemd` cgroups).
    /// Best effort. Blocks.
    fn sweep_stopped(&self) {}
}

/// The host's cgroup filesystem and `/proc`.
#[derive(Debug, Clone)]
pub struct HostCgroups {
    root: PathBuf,
    proc: PathBuf,
}

impl Default for HostCgroups {
    fn default() -> Self {
        Self::new("/sys/fs/cgroup", "/proc")
    }
}

impl HostCgroups {
    /// Cgroups under `root` (normally `/sys/fs/cgroup`), processes under
    /// `proc` (normally `/proc`).
    pub fn new(root: impl Into<PathBuf>, proc: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            proc: proc.into(),
        }
    }

    /// Whether the host runs the unified (v2) hierarchy.
    pub fn unified(&self) -> bool {
        self.root.join("cgroup.controllers").exists()
    }
}

impl SegmentCgroups for HostCgroups {
    fn take_in_hand(&self, init_pid: u32, limits: &SegmentLimits) -> Result<(), CgroupError> {
        let controller = parent_pid(&self.proc, init_pid)?;
        for pid in [controller, init_pid] {
            exempt_from_oom_killer(&self.proc, pid);
        }
        match self.unified() {
            true => v2::take_in_hand(&self.root, &self.proc, init_pid, controller, limits),
            false => v1::take_in_hand(&self.root, &self.proc, init_pid, controller, limits),
        }
    }

    fn sweep_stopped(&self) {
        if !self.unified() {
            v1::sweep_stopped(&self.root, &self.proc);
        }
    }
}

/// `oom_score_adj` -1000 for a process that forks nothing later. Defence in
/// depth only (the containers' own cgroup is what keeps the OOM killer
/// away from the management daemons), and it needs CAP_SYS_RESOURCE, which
/// some hosts withhold even from root (containers running the agent): a
/// refusal is logged, not fatal.
fn exempt_from_oom_killer(proc: &Path, pid: u32) {
    let path = proc.join(pid.to_string()).join("oom_score_adj");
    if let Err(e) = std::fs::write(&path, "-1000") {
        tracing::warn!(pid, error = %e, "cannot exempt a segment's controller or init from the OOM killer");
    }
}

/// The parent of a process (for a segment's init: libvirt's controller).
fn parent_pid(proc: &Path, pid: u32) -> Result<u32, CgroupError> {
    let path = proc.join(pid.to_string()).join("stat");
    let stat = std::fs::read_to_string(&path).map_err(err("read", &path))?;
    // "PID (COMM) STATE PPID ...": COMM may hold spaces and parentheses.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| err("parse", &path)(io::Error::other("no parent PID in stat")))
}

/// The processes of a cgroup (`cgroup.procs`).
fn procs(dir: &Path) -> Result<Vec<u32>, CgroupError> {
    let path = dir.join("cgroup.procs");
    let text = std::fs::read_to_string(&path).map_err(err("read", &path))?;
    Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(err("write", path))
}

/// Hands `dir` and the files that move processes into it to `owner`.
fn delegate(dir: &Path, files: &[&str], owner: u32) -> Result<(), CgroupError> {
    let id = Some(owner);
    std::os::unix::fs::chown(dir, id, id).map_err(err("chown", dir))?;
    for f in files {
        let path = dir.join(f);
        if path.exists() {
            std::os::unix::fs::chown(&path, id, id).map_err(err("chown", &path))?;
        }
    }
    Ok(())
}

/// Records what it was asked, for tests over fakes.
#[derive(Debug, Default)]
pub struct RecordingCgroups {
    calls: Mutex<Vec<(u32, SegmentLimits)>>,
}

impl RecordingCgroups {
    /// Every `(init_pid, limits)` asked so far.
    pub fn calls(&self) -> Vec<(u32, SegmentLimits)> {
        self.calls.lock().expect("recording lock").clone()
    }
}

impl SegmentCgroups for RecordingCgroups {
    fn take_in_hand(&self, init_pid: u32, limits: &SegmentLimits) -> Result<(), CgroupError> {
        self.calls
            .lock()
            .expect("recording lock")
            .push((init_pid, *limits));
        Ok(())
    }
}
