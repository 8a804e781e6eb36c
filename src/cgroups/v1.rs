//! cgroup v1: one hierarchy per controller (or set of controllers).

use super::{CgroupError, SegmentLimits, WORKLOAD, delegate, err, procs, write};
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

/// A mounted v1 hierarchy: its controllers (`memory`, `name=systemd`...)
/// and where it is mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hierarchy {
    controllers: BTreeSet<String>,
    mount: PathBuf,
}

/// Options of a v1 cgroup mount that are not controllers.
const NOT_CONTROLLERS: [&str; 6] = ["rw", "ro", "xattr", "noprefix", "clone_children", "none"];

/// The v1 hierarchies mounted under `root`, from the kernel's mount table.
fn hierarchies(mountinfo: &str, root: &Path) -> Vec<Hierarchy> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mut right = right.split(' ');
            if right.next()? != "cgroup" {
                return None;
            }
            let mount = PathBuf::from(left.split(' ').nth(4)?);
            let options = right.nth(1)?;
            let controllers = options
                .split(',')
                .filter(|o| !NOT_CONTROLLERS.contains(o) && !o.starts_with("release_agent="))
                .map(str::to_owned)
                .collect::<BTreeSet<_>>();
            (mount.starts_with(root) && !controllers.is_empty())
                .then_some(Hierarchy { controllers, mount })
        })
        .collect()
}

/// Where a process sits in each v1 hierarchy (`/proc/PID/cgroup`).
fn placement(cgroup_file: &str) -> Vec<(BTreeSet<String>, String)> {
    cgroup_file
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let set: BTreeSet<String> = controllers
                .split(',')
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect();
            (!set.is_empty()).then(|| (set, path.to_owned()))
        })
        .collect()
}

pub(super) fn take_in_hand(
    root: &Path,
    proc: &Path,
    init_pid: u32,
    controller: u32,
    limits: &SegmentLimits,
) -> Result<(), CgroupError> {
    let read = |p: PathBuf| std::fs::read_to_string(&p).map_err(err("read", &p));
    let placed = placement(&read(proc.join(init_pid.to_string()).join("cgroup"))?);
    let seg = placed
        .iter()
        .find(|(set, _)| set.contains("memory"))
        .map(|(_, path)| path.trim_start_matches('/').to_owned())
        .filter(|p| !p.is_empty())
        .ok_or_else(|| {
            err(
                "find the memory cgroup of",
                &proc.join(init_pid.to_string()),
            )(std::io::Error::other(
                "libvirt placed the segment in no memory cgroup",
            ))
        })?;
    let mut all = hierarchies(&read(proc.join("self/mountinfo"))?, root);
    // The memory hierarchy last: the supervisor waits for its hand-over.
    all.sort_by_key(|h| h.controllers.contains("memory"));
    let memory = all
        .iter()
        .find(|h| h.controllers.contains("memory"))
        .ok_or_else(|| err("find", root)(std::io::Error::other("no memory hierarchy mounted")))?;
    if let Some(partition) = Path::new(&seg).parent() {
        sweep(&all, memory, partition);
    }
    place_all(&all, &memory.mount.join(&seg), &seg, controller)?;
    for h in &all {
        limit(h, &h.mount.join(&seg), limits)?;
    }
    Ok(())
}

/// Places every process of the segment (its memory cgroup's, libvirt's
/// controller aside) in every hierarchy, pass after pass until a pass finds
/// no process it has not placed: a process forked by one not yet moved
/// (tini starting the supervisor) is caught by the next pass; one forked
/// after its parent moved is born in the right place.
fn place_all(
    all: &[Hierarchy],
    memory_dir: &Path,
    seg: &str,
    controller: u32,
) -> Result<(), CgroupError> {
    let mut placed = BTreeSet::new();
    for _ in 0..100 {
        let members: BTreeSet<u32> = procs(memory_dir)?
            .into_iter()
            .filter(|&p| p != controller)
            .collect();
        if !placed.is_empty() && members.is_subset(&placed) {
            return Ok(());
        }
        let list: Vec<u32> = members.iter().copied().collect();
        for h in all {
            place(&h.mount.join(seg), &list)?;
        }
        placed.extend(members);
    }
    Err(err("place the processes of", memory_dir)(
        std::io::Error::other("the segment kept forking new processes while they were placed"),
    ))
}

/// libvirt's default partition, where every segment's cgroups live.
const PARTITION: &str = "machine";

/// [`sweep`] over libvirt's default partition, after a segment stopped.
pub(super) fn sweep_stopped(root: &Path, proc: &Path) {
    let Ok(mountinfo) = std::fs::read_to_string(proc.join("self/mountinfo")) else {
        return;
    };
    let all = hierarchies(&mountinfo, root);
    if let Some(memory) = all.iter().find(|h| h.controllers.contains("memory")) {
        sweep(&all, memory, Path::new(PARTITION));
    }
}

/// The v1 hierarchies libvirt's LXC driver leaves alone: the agent makes the
/// segments' cgroups there, so it removes them too.
const NOT_LIBVIRTS: [&str; 2] = ["pids", "name=systemd"];

/// Removes the cgroups the agent made for segments that are gone: libvirt
/// removes the ones it made when a domain stops, not those in hierarchies
/// it does not manage ([`NOT_LIBVIRTS`]; never one of libvirt's, which a
/// domain being started has before its memory cgroup). A cgroup of a
/// domain that still runs is never touched; one still holding processes
/// cannot be removed anyway. Best effort: a failure leaves an empty
/// directory.
fn sweep(all: &[Hierarchy], memory: &Hierarchy, partition: &Path) {
    let agents = |h: &&Hierarchy| {
        h.controllers
            .iter()
            .all(|c| NOT_LIBVIRTS.contains(&c.as_str()))
    };
    for h in all.iter().filter(agents) {
        let Ok(entries) = std::fs::read_dir(h.mount.join(partition)) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let ours = name
                .to_str()
                .is_some_and(|n| n.starts_with("lxc-") && n.ends_with(".libvirt-lxc"));
            if ours && entry.path().is_dir() && !memory.mount.join(partition).join(&name).exists() {
                remove_tree(&entry.path());
            }
        }
    }
}

/// Removes an empty cgroup and its empty children, deepest first.
fn remove_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.path().is_dir() {
                remove_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// Puts the segment's processes into `dir`, made if libvirt did not.
fn place(dir: &Path, members: &[u32]) -> Result<(), CgroupError> {
    std::fs::create_dir_all(dir).map_err(err("create", dir))?;
    let procs_file = dir.join("cgroup.procs");
    for pid in members {
        match std::fs::write(&procs_file, pid.to_string()) {
            Ok(()) => {}
            // A process that exited meanwhile (the supervisor's short-lived
            // children) is not a failure.
            Err(e) if e.raw_os_error() == Some(nix::libc::ESRCH) => {}
            Err(e) => return Err(err("write", &procs_file)(e)),
        }
    }
    Ok(())
}

fn limit(h: &Hierarchy, dir: &Path, limits: &SegmentLimits) -> Result<(), CgroupError> {
    let has = |c: &str| h.controllers.contains(c);
    if has("pids") {
        write(&dir.join("pids.max"), &limits.pids_max.to_string())?;
    }
    if has("memory") {
        no_swap(dir)?;
    }
    let Some(workload_bytes) = limits.workload_memory_bytes else {
        return Ok(());
    };
    let work = dir.join(WORKLOAD);
    std::fs::create_dir_all(&work).map_err(err("create", &work))?;
    if has("cpuset") {
        // A v1 cpuset child starts empty and takes no process until set.
        for f in ["cpuset.cpus", "cpuset.mems"] {
            let value = std::fs::read_to_string(dir.join(f)).map_err(err("read", &dir.join(f)))?;
            write(&work.join(f), value.trim())?;
        }
    }
    if has("memory") {
        write(
            &work.join("memory.limit_in_bytes"),
            &workload_bytes.to_string(),
        )?;
        no_swap(&work)?;
    }
    delegate(&work, &["cgroup.procs", "tasks"], limits.owner)
}

/// Memory plus swap capped at the memory limit: the segment never swaps
/// past its cap. Only where the kernel accounts swap.
fn no_swap(dir: &Path) -> Result<(), CgroupError> {
    let memsw = dir.join("memory.memsw.limit_in_bytes");
    if !memsw.exists() {
        return Ok(());
    }
    let limit_file = dir.join("memory.limit_in_bytes");
    let limit = std::fs::read_to_string(&limit_file).map_err(err("read", &limit_file))?;
    write(&memsw, limit.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
25 1 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/systemd rw,relatime shared:9 - cgroup cgroup rw,xattr,name=systemd
27 25 0:24 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:10 - cgroup cgroup rw,cpu,cpuacct
28 25 0:25 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
29 25 0:26 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
30 1 0:27 / /other/pids rw - cgroup cgroup rw,pids
";

    #[test]
    fn hierarchies_come_from_the_mount_table() {
        let found = hierarchies(MOUNTINFO, Path::new("/sys/fs/cgroup"));
        let names: Vec<Vec<&str>> = found
            .iter()
            .map(|h| h.controllers.iter().map(String::as_str).collect())
            .collect();
        assert_eq!(
            names,
            [vec!["name=systemd"], vec!["cpu", "cpuacct"], vec!["memory"]]
        );
        assert_eq!(found[1].mount, Path::new("/sys/fs/cgroup/cpu,cpuacct"));
    }

    #[test]
    fn placement_skips_the_unified_line() {
        let file = "9:name=systemd:/\n4:memory:/machine/lxc-1-seg-a.libvirt-lxc\n0::/\n";
        let p = placement(file);
        assert_eq!(p.len(), 2);
        assert_eq!(p[1].1, "/machine/lxc-1-seg-a.libvirt-lxc");
    }

    /// A fake v1 tree in a temp dir: libvirt placed the segment in memory
    /// and cpuset, not in pids.
    #[test]
    fn places_limits_and_delegates_only_the_workload() {
        use std::os::unix::fs::MetadataExt;
        let t = tempfile::tempdir().unwrap();
        let (root, proc) = (t.path().join("cg"), t.path().join("proc"));
        let seg = "machine/lxc-7-seg-a.libvirt-lxc";
        for c in ["memory", "cpuset", "pids"] {
            std::fs::create_dir_all(root.join(c)).unwrap();
        }
        let memory = root.join("memory").join(seg);
        std::fs::create_dir_all(&memory).unwrap();
        std::fs::write(memory.join("cgroup.procs"), "7\n8\n9\n").unwrap();
        std::fs::write(memory.join("memory.limit_in_bytes"), "1073741824\n").unwrap();
        std::fs::write(memory.join("memory.memsw.limit_in_bytes"), "max").unwrap();
        let cpuset = root.join("cpuset").join(seg);
        std::fs::create_dir_all(&cpuset).unwrap();
        std::fs::write(cpuset.join("cpuset.cpus"), "0-1\n").unwrap();
        std::fs::write(cpuset.join("cpuset.mems"), "0\n").unwrap();
        std::fs::create_dir_all(proc.join("8")).unwrap();
        std::fs::create_dir_all(proc.join("self")).unwrap();
        std::fs::write(
            proc.join("8/cgroup"),
            format!("3:pids:/\n2:memory:/{seg}\n1:cpuset:/{seg}\n0::/\n"),
        )
        .unwrap();
        let mountinfo: String = ["memory", "cpuset", "pids"]
            .iter()
            .map(|c| {
                format!(
                    "1 1 0:1 / {} rw - cgroup cgroup rw,{c}\n",
                    root.join(c).display()
                )
            })
            .collect();
        std::fs::write(proc.join("self/mountinfo"), mountinfo).unwrap();
        let limits = SegmentLimits {
            pids_max: 512,
            workload_memory_bytes: Some(805_306_368),
            owner: 2_000_000,
        };
        take_in_hand(&root, &proc, 8, 7, &limits).unwrap();
        let pids = root.join("pids").join(seg);
        assert_eq!(
            std::fs::read_to_string(pids.join("pids.max")).unwrap(),
            "512"
        );
        // The controller (7) stays where libvirt put it; the others move.
        assert_eq!(
            std::fs::read_to_string(pids.join("cgroup.procs")).unwrap(),
            "9"
        );
        let work = memory.join(WORKLOAD);
        assert_eq!(
            std::fs::read_to_string(work.join("memory.limit_in_bytes")).unwrap(),
            "805306368"
        );
        assert_eq!(
            std::fs::read_to_string(memory.join("memory.memsw.limit_in_bytes")).unwrap(),
            "1073741824"
        );
        assert_eq!(
            std::fs::read_to_string(cpuset.join(WORKLOAD).join("cpuset.cpus")).unwrap(),
            "0-1"
        );
        assert_eq!(std::fs::metadata(&work).unwrap().uid(), 2_000_000);
        assert_eq!(
            std::fs::metadata(&memory).unwrap().uid(),
            0,
            "the segment's own cgroup stays root's"
        );
        let seg_limit = std::fs::metadata(memory.join("memory.limit_in_bytes")).unwrap();
        assert_eq!(seg_limit.uid(), 0);
    }
}
