//! The read side: what a segment's cgroups say that libvirt does not
//! report, how many processes it runs and how many the OOM killer took.
//! Behind the narrow [`CgroupReader`] trait; [`CgroupFs`] reads cgroupfs,
//! v1 or v2.
//!
//! A segment's cgroups are found through its libvirt_lxc controller, which
//! libvirt puts in them (v1: `memory:/machine/lxc-PID-NAME.libvirt-lxc`, v2
//! with systemd: `0::/machine.slice/machine-lxc\x2dPID\x2dNAME.scope`), so
//! the naming scheme of each libvirt and cgroup layout needs no guessing.

use std::{
    fs,
    path::{Path, PathBuf},
};

/// Most cgroup directories walked for one segment. Segment root can make
/// child cgroups (Docker does); a tenant making millions must not make a
/// scrape walk them all.
const MAX_CGROUP_DIRS: usize = 4096;

/// Figures read from a segment's cgroups.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupFigures {
    /// Processes in the segment's cgroup and its children, the controller
    /// (libvirt's, on the host side) not counted.
    pub processes: u64,
    /// Processes the OOM killer took in the segment, children included (on
    /// cgroup v1 only those of children that still exist: v1 keeps a kill
    /// in the victim's cgroup alone).
    pub oom_kills: u64,
}

/// Reading a segment's cgroups failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cgroup of controller {pid}: {reason}")]
pub struct UsageError {
    /// The controller's PID.
    pub pid: u32,
    /// What went wrong.
    pub reason: String,
}

/// The segments' cgroups, behind a narrow trait.
pub trait CgroupReader: Send + Sync + 'static {
    /// The figures of the cgroups that process `controller_pid` is in.
    /// Blocks (file reads).
    fn read(&self, controller_pid: u32) -> Result<CgroupFigures, UsageError>;
}

/// The real cgroupfs.
#[derive(Debug, Clone)]
pub struct CgroupFs {
    proc: PathBuf,
    root: PathBuf,
}

impl CgroupFs {
    /// Reads `/proc/PID/cgroup` under `proc` and the hierarchies mounted
    /// under `root` (normally `/proc` and `/sys/fs/cgroup`).
    pub fn new(proc: impl Into<PathBuf>, root: impl Into<PathBuf>) -> Self {
        Self {
            proc: proc.into(),
            root: root.into(),
        }
    }
}

impl Default for CgroupFs {
    fn default() -> Self {
        Self::new("/proc", "/sys/fs/cgroup")
    }
}

/// Where a process's memory cgroup is, and which layout it has.
#[derive(Debug, PartialEq, Eq)]
enum MemoryCgroup {
    /// cgroup v1: `<root>/memory<path>`, OOM kills in `memory.oom_control`.
    V1(String),
    /// cgroup v2: `<root><path>`, OOM kills in `memory.events`.
    V2(String),
}

/// Picks the memory cgroup out of `/proc/PID/cgroup`: the v1 `memory`
/// hierarchy when there is one (hybrid hosts also list an empty v2 line),
/// else the unified one.
fn memory_cgroup(text: &str) -> Option<MemoryCgroup> {
    let mut unified = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if controllers.split(',').any(|c| c == "memory") {
            return Some(MemoryCgroup::V1(path.to_owned()));
        }
        if id == "0" && controllers.is_empty() {
            unified = Some(MemoryCgroup::V2(path.to_owned()));
        }
    }
    unified
}

/// The `key N` line of a flat-keyed cgroup file.
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// What a walk of a segment's cgroup tree found.
#[derive(Debug, Default, PartialEq, Eq)]
struct Walked {
    processes: u64,
    /// `oom_kill` of `memory.oom_control`, summed over the tree (v1 only).
    v1_oom_kills: u64,
}

/// Walks `dir` and its children: counts their processes, leaving `skip`
/// out, and on cgroup v1 sums their OOM kills. (v1 counts a kill only in
/// the victim's own cgroup, a container's, and never in its parents; v2's
/// `memory.events` is hierarchical, and keeps the kills of children that
/// are gone.)
fn walk(dir: &Path, skip: u32, v1: bool) -> Result<Walked, String> {
    let (mut stack, mut seen, mut out) = (vec![dir.to_owned()], 0usize, Walked::default());
    while let Some(d) = stack.pop() {
        seen += 1;
        if seen > MAX_CGROUP_DIRS {
            return Err(format!(
                "more than {MAX_CGROUP_DIRS} cgroups under {}",
                dir.display()
            ));
        }
        let procs = match fs::read_to_string(d.join("cgroup.procs")) {
            Ok(p) => p,
            // A child removed while walking.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && d != dir => continue,
            Err(e) => return Err(format!("{}: {e}", d.join("cgroup.procs").display())),
        };
        out.processes += procs
            .lines()
            .filter(|p| p.trim().parse::<u32>().is_ok_and(|p| p != skip))
            .count() as u64;
        if v1 {
            let control = fs::read_to_string(d.join("memory.oom_control")).unwrap_or_default();
            out.v1_oom_kills += keyed(&control, "oom_kill").unwrap_or(0);
        }
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        stack.extend(
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path()),
        );
    }
    Ok(out)
}

impl CgroupReader for CgroupFs {
    fn read(&self, controller_pid: u32) -> Result<CgroupFigures, UsageError> {
        let fail = |reason: String| UsageError {
            pid: controller_pid,
            reason,
        };
        let own = self.proc.join(controller_pid.to_string()).join("cgroup");
        let text = fs::read_to_string(&own).map_err(|e| fail(format!("{}: {e}", own.display())))?;
        let cgroup = memory_cgroup(&text)
            .ok_or_else(|| fail(format!("no memory cgroup in {}", own.display())))?;
        let (dir, v1) = match &cgroup {
            MemoryCgroup::V1(p) => (
                self.root.join("memory").join(p.trim_start_matches('/')),
                true,
            ),
            MemoryCgroup::V2(p) => (self.root.join(p.trim_start_matches('/')), false),
        };
        let events = dir.join(if v1 {
            "memory.oom_control"
        } else {
            "memory.events"
        });
        let text =
            fs::read_to_string(&events).map_err(|e| fail(format!("{}: {e}", events.display())))?;
        let own_kills = keyed(&text, "oom_kill")
            .ok_or_else(|| fail(format!("no oom_kill in {}", events.display())))?;
        let walked = walk(&dir, controller_pid, v1).map_err(fail)?;
        Ok(CgroupFigures {
            processes: walked.processes,
            oom_kills: if v1 { walked.v1_oom_kills } else { own_kills },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_memory_cgroup_in_every_layout() {
        let v1 = "9:name=systemd:/\n8:pids:/\n4:memory:/machine/lxc-1-seg-a.libvirt-lxc\n\
                  1:cpu,cpuacct:/machine/lxc-1-seg-a.libvirt-lxc\n0::/\n";
        let v2 = "0::/machine.slice/machine-lxc\\x2d1\\x2dseg\\x2da.scope\n";
        let joined = "5:cpu,memory:/m/x\n";
        let cases = [
            (
                v1,
                Some(MemoryCgroup::V1("/machine/lxc-1-seg-a.libvirt-lxc".into())),
            ),
            (
                v2,
                Some(MemoryCgroup::V2(
                    "/machine.slice/machine-lxc\\x2d1\\x2dseg\\x2da.scope".into(),
                )),
            ),
            (joined, Some(MemoryCgroup::V1("/m/x".into()))),
            ("", None),
            ("garbage\n", None),
        ];
        for (text, want) in cases {
            assert_eq!(memory_cgroup(text), want, "{text:?}");
        }
    }

    fn write(path: &Path, text: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    #[test]
    fn reads_processes_and_oom_kills_on_v1_and_v2() {
        let dir = tempfile::tempdir().unwrap();
        let (proc, root) = (dir.path().join("proc"), dir.path().join("cg"));
        // v1: controller 10 and init 11 in the domain's cgroup, two more
        // processes in a Docker child cgroup.
        write(&proc.join("10/cgroup"), "4:memory:/machine/d\n0::/\n");
        let d = root.join("memory/machine/d");
        write(&d.join("cgroup.procs"), "10\n11\n");
        write(
            &d.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
        );
        write(&d.join("docker/c1/cgroup.procs"), "20\n21\n");
        write(&d.join("docker/c1/memory.oom_control"), "oom_kill 2\n");
        write(&d.join("docker/cgroup.procs"), "");
        // v2: oom_kill in memory.events.
        write(&proc.join("30/cgroup"), "0::/machine.slice/s.scope\n");
        let s = root.join("machine.slice/s.scope");
        write(&s.join("cgroup.procs"), "30\n31\n");
        // v2's parent counts already include this child's kill.
        write(&s.join("c/cgroup.procs"), "");
        write(&s.join("c/memory.events"), "oom_kill 1\n");
        write(
            &s.join("memory.events"),
            "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n",
        );
        let fs = CgroupFs::new(&proc, &root);
        assert_eq!(
            fs.read(10).unwrap(),
            CgroupFigures {
                processes: 3,
                oom_kills: 5
            },
            "v1: the container's kills are summed in"
        );
        assert_eq!(
            fs.read(30).unwrap(),
            CgroupFigures {
                processes: 1,
                oom_kills: 1
            }
        );
        let gone = fs.read(99).unwrap_err().to_string();
        assert!(gone.contains("99"), "{gone}");
    }

    #[test]
    fn a_tenant_cannot_make_the_walk_unbounded() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("cg");
        write(&d.join("cgroup.procs"), "1\n");
        for i in 0..MAX_CGROUP_DIRS {
            write(&d.join(format!("c{i}/cgroup.procs")), "");
        }
        let err = walk(&d, 0, true).unwrap_err();
        assert!(err.contains("more than"), "{err}");
    }
}
