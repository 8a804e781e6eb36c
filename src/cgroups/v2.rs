//! cgroup v2: one unified hierarchy. A cgroup with controllers enabled for
//! its children may hold no process, so the segment's own processes move to
//! a `management` leaf beside the containers' `docker` cgroup. The
//! supervisor of a Docker segment has entered its cgroup namespace while it
//! was still in the segment's cgroup (the namespace's root stays there when
//! it is moved), so inside, `/sys/fs/cgroup` is the segment's cgroup with
//! `management/` and `docker/` below it.

use super::{CgroupError, SegmentLimits, WORKLOAD, delegate, err, procs, write};
use std::path::{Path, PathBuf};

/// The leaf that holds the segment's own processes.
pub const MANAGEMENT: &str = "management";

pub(super) fn take_in_hand(
    root: &Path,
    proc: &Path,
    init_pid: u32,
    controller: u32,
    limits: &SegmentLimits,
) -> Result<(), CgroupError> {
    let file = proc.join(init_pid.to_string()).join("cgroup");
    let text = std::fs::read_to_string(&file).map_err(err("read", &file))?;
    let mut rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim_start_matches('/').to_owned())
        .ok_or_else(|| err("parse", &file)(std::io::Error::other("no cgroup v2 line")))?;
    // After an agent restart the init already sits in the management leaf.
    if let Some(parent) = rel.strip_suffix(&format!("/{MANAGEMENT}")) {
        rel = parent.to_owned();
    }
    let seg = root.join(&rel);
    if limits.workload_memory_bytes.is_some() {
        await_own_namespace(&seg, proc, init_pid, controller)?;
    }
    enable_up_to(root, &rel, "pids")?;
    let management = seg.join(MANAGEMENT);
    std::fs::create_dir_all(&management).map_err(err("create", &management))?;
    empty_into(&seg, &management)?;
    write(&seg.join("pids.max"), &limits.pids_max.to_string())?;
    no_swap(&seg)?;
    reclaim(&seg)?;
    let Some(workload_bytes) = limits.workload_memory_bytes else {
        return Ok(());
    };
    enable_children(&seg)?;
    let work = seg.join(WORKLOAD);
    std::fs::create_dir_all(&work).map_err(err("create", &work))?;
    write(&work.join("memory.max"), &workload_bytes.to_string())?;
    no_swap(&work)?;
    delegate(
        &work,
        &["cgroup.procs", "cgroup.subtree_control", "cgroup.threads"],
        limits.owner,
    )
}

/// Moves every process of `seg` into `management`, pass after pass until
/// `seg` holds none: a process forked by one not yet moved (the supervisor
/// runs `sleep` while it waits for the hand-over) is born in `seg` and
/// caught by the next pass. `seg` must be empty before its controllers are
/// enabled for its children (the kernel refuses with EBUSY otherwise).
fn empty_into(seg: &Path, management: &Path) -> Result<(), CgroupError> {
    for _ in 0..100 {
        let members = procs(seg)?;
        if members.is_empty() {
            return Ok(());
        }
        for pid in members {
            match std::fs::write(management.join("cgroup.procs"), pid.to_string()) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(nix::libc::ESRCH) => {}
                Err(e) => return Err(err("move into", management)(e)),
            }
        }
    }
    Err(err("move the processes of", seg)(std::io::Error::other(
        "the segment kept forking new processes while they were moved",
    )))
}

/// The files of the segment's cgroup its root keeps: the ones that move
/// processes, which runc needs because the segment's cgroup is the common
/// ancestor of `management` and `docker` (the kernel checks the common
/// ancestor's `cgroup.procs` on every move).
const KEPT_BY_SEGMENT: [&str; 2] = ["cgroup.procs", "cgroup.threads"];

/// Takes the segment's cgroup back from its root. libvirt hands an
/// user-namespaced domain its whole cgroup on v2, limit files included:
/// `nsdelegate` stops writes to them only from inside a cgroup namespace
/// rooted there, and the segment's init (and whatever a segment root
/// injects into it) lives in the host's. Host root owns the directory and
/// every limit file from here on; only [`KEPT_BY_SEGMENT`] stays the
/// segment's.
fn reclaim(seg: &Path) -> Result<(), CgroupError> {
    let root = Some(0);
    std::os::unix::fs::chown(seg, root, root).map_err(err("chown", seg))?;
    for entry in std::fs::read_dir(seg).map_err(err("list", seg))? {
        let entry = entry.map_err(err("list", seg))?;
        let name = entry.file_name();
        let is_file = entry
            .file_type()
            .map_err(err("stat", &entry.path()))?
            .is_file();
        if is_file && !KEPT_BY_SEGMENT.iter().any(|k| name == *k) {
            let path = entry.path();
            std::os::unix::fs::chown(&path, root, root).map_err(err("chown", &path))?;
        }
    }
    Ok(())
}

/// How long a Docker segment's supervisor may take to enter its cgroup
/// namespace after the domain started.
const NAMESPACE_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// Waits until the Docker segment's supervisor (a process of the segment
/// other than its init) runs in a cgroup namespace of its own: it must
/// enter it while still in the segment's cgroup, before this moves it.
fn await_own_namespace(
    seg: &Path,
    proc: &Path,
    init_pid: u32,
    controller: u32,
) -> Result<(), CgroupError> {
    let ns = |pid: u32| std::fs::read_link(proc.join(pid.to_string()).join("ns/cgroup")).ok();
    let host_ns = ns(init_pid);
    let deadline = std::time::Instant::now() + NAMESPACE_WAIT;
    loop {
        let mut members = procs(seg)?
            .into_iter()
            .chain(procs(&seg.join(MANAGEMENT)).unwrap_or_default());
        if members
            .any(|p| p != init_pid && p != controller && ns(p).is_some_and(|n| Some(n) != host_ns))
        {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(err("wait for the supervisor's cgroup namespace in", seg)(
                std::io::Error::other(format!("not entered within {NAMESPACE_WAIT:?}")),
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Enables `controller` in every ancestor of `rel`, so the segment's
/// cgroup has it (libvirt does not enable `pids`).
fn enable_up_to(root: &Path, rel: &str, controller: &str) -> Result<(), CgroupError> {
    let mut dir = root.to_path_buf();
    for part in rel.split('/').filter(|p| !p.is_empty()) {
        let control = dir.join("cgroup.subtree_control");
        let enabled = std::fs::read_to_string(&control).map_err(err("read", &control))?;
        if !enabled.split_whitespace().any(|c| c == controller) {
            write(&control, &format!("+{controller}"))?;
        }
        dir = dir.join(part);
    }
    Ok(())
}

/// Enables for the segment's children every controller the segment has.
fn enable_children(seg: &Path) -> Result<(), CgroupError> {
    let available = seg.join("cgroup.controllers");
    let text = std::fs::read_to_string(&available).map_err(err("read", &available))?;
    let wanted: Vec<String> = text
        .split_whitespace()
        .filter(|c| ["cpu", "cpuset", "io", "memory", "pids"].contains(c))
        .map(|c| format!("+{c}"))
        .collect();
    write(&seg.join("cgroup.subtree_control"), &wanted.join(" "))
}

fn no_swap(dir: &Path) -> Result<(), CgroupError> {
    let swap: PathBuf = dir.join("memory.swap.max");
    if swap.exists() {
        write(&swap, "0")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    const OWNER: u32 = 1_000_000;

    /// A cgroup v2 tree as libvirt leaves a user-namespaced domain: the
    /// segment's cgroup and all its files owned by the segment's root.
    fn tree() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("cgroup");
        let seg = root.join("machine.slice/m.scope/libvirt");
        std::fs::create_dir_all(&seg).unwrap();
        for f in ["cgroup.subtree_control", "cgroup.controllers"] {
            std::fs::write(root.join(f), "cpu memory pids").unwrap();
            std::fs::write(root.join("machine.slice").join(f), "cpu memory pids").unwrap();
            std::fs::write(
                root.join("machine.slice/m.scope").join(f),
                "cpu memory pids",
            )
            .unwrap();
        }
        for f in [
            "cgroup.procs",
            "cgroup.threads",
            "cgroup.subtree_control",
            "memory.max",
            "pids.max",
            "cpu.max",
            "memory.swap.max",
        ] {
            std::fs::write(seg.join(f), "").unwrap();
            std::os::unix::fs::chown(seg.join(f), Some(OWNER), Some(OWNER)).unwrap();
        }
        std::fs::write(seg.join("cgroup.controllers"), "cpu memory pids").unwrap();
        // Empty, as after the move into `management` (a plain file cannot
        // act out the kernel's moves; the VM tier shows them).
        std::os::unix::fs::chown(&seg, Some(OWNER), Some(OWNER)).unwrap();
        let proc = dir.path().join("proc");
        for pid in ["41", "42"] {
            std::fs::create_dir_all(proc.join(pid)).unwrap();
            std::fs::write(
                proc.join(pid).join("cgroup"),
                "0::/machine.slice/m.scope/libvirt\n",
            )
            .unwrap();
        }
        (dir, root, seg)
    }

    fn owner(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().uid()
    }

    #[test]
    fn the_segment_keeps_no_limit_file_of_its_own_cgroup() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "chown needs root: run the unit tests as root"
        );
        let (dir, root, seg) = tree();
        let limits = SegmentLimits {
            pids_max: 4096,
            workload_memory_bytes: None,
            owner: OWNER,
        };
        take_in_hand(&root, &dir.path().join("proc"), 42, 41, &limits).unwrap();
        assert_eq!(
            std::fs::read_to_string(seg.join("pids.max")).unwrap(),
            "4096"
        );
        assert_eq!(
            std::fs::read_to_string(seg.join("memory.swap.max")).unwrap(),
            "0"
        );
        assert_eq!(owner(&seg), 0, "the segment's cgroup directory");
        for f in [
            "memory.max",
            "pids.max",
            "cpu.max",
            "memory.swap.max",
            "cgroup.subtree_control",
        ] {
            assert_eq!(owner(&seg.join(f)), 0, "{f}");
        }
        for f in KEPT_BY_SEGMENT {
            assert_eq!(owner(&seg.join(f)), OWNER, "{f}");
        }
        assert!(seg.join(MANAGEMENT).is_dir());
        let enabled = std::fs::read_to_string(root.join("cgroup.subtree_control")).unwrap();
        assert!(enabled.contains("pids"), "{enabled}");
    }
}
