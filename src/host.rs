//! Facts about the host itself, read from procfs at the paths given.

use procfs::FromRead;
use std::path::Path;

/// Static facts of the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    /// Host id used in the API and reports.
    pub host_id: String,
    /// Online CPUs.
    pub cpus: u32,
    /// Total memory.
    pub memory_mib: u64,
}

/// Reading the host facts failed.
#[derive(Debug, thiserror::Error)]
#[error("reading host facts from {path}: {reason}")]
pub struct HostError {
    /// What was read.
    pub path: String,
    /// Why it failed.
    pub reason: String,
}

impl HostFacts {
    /// Reads CPU count and memory from `proc` (normally `/proc`); `host_id`
    /// empty means the kernel's hostname.
    pub fn read(proc: &Path, host_id: &str) -> Result<Self, HostError> {
        let fail = |path: &Path, reason: String| HostError {
            path: path.display().to_string(),
            reason,
        };
        let meminfo_path = proc.join("meminfo");
        let meminfo = procfs::Meminfo::from_file(&meminfo_path)
            .map_err(|e| fail(&meminfo_path, e.to_string()))?;
        let cpuinfo_path = proc.join("cpuinfo");
        let cpus = procfs::CpuInfo::from_file(&cpuinfo_path)
            .map_err(|e| fail(&cpuinfo_path, e.to_string()))?
            .num_cores() as u32;
        let host_id = if host_id.is_empty() {
            let p = proc.join("sys/kernel/hostname");
            std::fs::read_to_string(&p)
                .map_err(|e| fail(&p, e.to_string()))?
                .trim()
                .to_owned()
        } else {
            host_id.to_owned()
        };
        Ok(Self {
            host_id,
            cpus: cpus.max(1),
            memory_mib: meminfo.mem_total / (1024 * 1024),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_proc_tree_at_the_given_path() {
        // A copy of this machine's own files, under a path of the test's.
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("sys/kernel")).unwrap();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
        std::fs::write(dir.path().join("meminfo"), &meminfo).unwrap();
        std::fs::copy("/proc/cpuinfo", dir.path().join("cpuinfo")).unwrap();
        std::fs::write(dir.path().join("sys/kernel/hostname"), "hv-1\n").unwrap();
        let kib: u64 = meminfo
            .lines()
            .next()
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let f = HostFacts::read(dir.path(), "").unwrap();
        assert_eq!(f.host_id, "hv-1");
        assert_eq!(f.memory_mib, kib / 1024);
        assert_eq!(
            f.cpus as usize,
            std::thread::available_parallelism().unwrap().get()
        );
        assert_eq!(
            HostFacts::read(dir.path(), "named").unwrap().host_id,
            "named"
        );
        std::fs::write(dir.path().join("meminfo"), "nothing\n").unwrap();
        assert!(HostFacts::read(dir.path(), "").is_err());
    }
}
