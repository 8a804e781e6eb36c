//! Disk quotas of segments behind a narrow trait. Each segment's directory
//! (`<state_dir>/segments/<id>`: its overlay's upper and work, Docker's data
//! root, the data area) is one quota-limited volume; the kernel refuses
//! writes past the limit with EDQUOT inside the segment while the host and
//! the other segments keep writing.
//!
//! The real mechanism ([`btrfs::BtrfsQuota`]) is a btrfs subvolume per
//! segment under a level-1 qgroup carrying the limit, on a filesystem with
//! *simple* quotas: a subvolume the tenant creates inside its own (btrfs
//! lets any user do that, no capability needed) joins the same level-1
//! qgroup, so it cannot escape the limit as it would under full qgroups.

pub mod btrfs;

use serde::Deserialize;
use std::{
    collections::BTreeMap,
    io,
    path::{Path, PathBuf},
    sync::Mutex,
};

/// Whether segments' disks are limited (`disk_quota` in the configuration).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum QuotaMode {
    /// Every segment's directory is a quota-limited volume; no segment is
    /// created where the state dir cannot enforce that.
    #[default]
    Enforce,
    /// Plain directories, no limit (hosts whose filesystem has no quotas).
    Off,
}

/// Used and allowed bytes of one segment's volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskUsage {
    /// Bytes the segment's files take.
    pub used_bytes: u64,
    /// The limit the kernel enforces.
    pub limit_bytes: u64,
}

/// A quota operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    /// A system call or command failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// The filesystem cannot enforce quotas (the reason says why).
    #[error("{0}")]
    Unsupported(String),
}

impl QuotaError {
    pub(crate) fn io(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> QuotaError {
        let path = path.to_owned();
        move |source| QuotaError::Io { op, path, source }
    }
}

/// Makes, measures and removes quota-limited segment volumes.
pub trait DiskQuota: Send + Sync + std::fmt::Debug + 'static {
    /// Whether volumes made under `dir` are limited by the kernel; the
    /// error says why not, for `check` and refused creates.
    fn check(&self, dir: &Path) -> Result<String, QuotaError>;
    /// Makes `path` a volume limited to `limit_bytes`; on an existing
    /// volume only sets the limit (idempotent).
    fn create(&self, path: &Path, limit_bytes: u64) -> Result<(), QuotaError>;
    /// The volume's use and limit; `None` for a plain directory or none at
    /// all. Called on the async runtime (GetSegment, ListSegments): once a
    /// volume is known, a few reads of kernel counters and no path lookup
    /// under the volumes' directory; never a process.
    fn usage(&self, path: &Path) -> Result<Option<DiskUsage>, QuotaError>;
    /// Removes the volume, everything in it and its quota bookkeeping;
    /// a plain directory is removed too. Idempotent.
    fn remove(&self, path: &Path) -> Result<(), QuotaError>;
}

/// `disk_quota = "off"`: plain directories.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoQuota;

impl DiskQuota for NoQuota {
    fn check(&self, _: &Path) -> Result<String, QuotaError> {
        Ok("off: segments' disks are not limited".into())
    }

    fn create(&self, path: &Path, _: u64) -> Result<(), QuotaError> {
        std::fs::create_dir_all(path).map_err(QuotaError::io("create", path))
    }

    fn usage(&self, _: &Path) -> Result<Option<DiskUsage>, QuotaError> {
        Ok(None)
    }

    fn remove(&self, path: &Path) -> Result<(), QuotaError> {
        remove_tree(path)
    }
}

/// Removes a directory tree; a missing one is fine.
pub(crate) fn remove_tree(path: &Path) -> Result<(), QuotaError> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(QuotaError::io("remove", path)(e)),
        _ => Ok(()),
    }
}

/// Plain directories with limits kept in memory: fast tests of what the
/// lifecycle asks for. `used` is what [`FakeQuota::set_used`] says.
#[derive(Debug, Default)]
pub struct FakeQuota {
    volumes: Mutex<BTreeMap<PathBuf, DiskUsage>>,
    unsupported: Option<String>,
}

impl FakeQuota {
    /// A filesystem that cannot enforce quotas, for `reason`.
    pub fn unsupported(reason: &str) -> Self {
        Self {
            unsupported: Some(reason.into()),
            ..Self::default()
        }
    }

    /// The limits of every volume, by path.
    pub fn limits(&self) -> BTreeMap<PathBuf, u64> {
        let volumes = self.volumes.lock().unwrap();
        volumes
            .iter()
            .map(|(p, u)| (p.clone(), u.limit_bytes))
            .collect()
    }

    /// Pretends the volume at `path` holds `bytes`.
    pub fn set_used(&self, path: &Path, bytes: u64) {
        if let Some(u) = self.volumes.lock().unwrap().get_mut(path) {
            u.used_bytes = bytes;
        }
    }
}

impl DiskQuota for FakeQuota {
    fn check(&self, dir: &Path) -> Result<String, QuotaError> {
        match &self.unsupported {
            Some(reason) => Err(QuotaError::Unsupported(reason.clone())),
            None => Ok(format!("fake quotas under {}", dir.display())),
        }
    }

    fn create(&self, path: &Path, limit_bytes: u64) -> Result<(), QuotaError> {
        self.check(path)?;
        std::fs::create_dir_all(path).map_err(QuotaError::io("create", path))?;
        let mut volumes = self.volumes.lock().unwrap();
        let entry = volumes.entry(path.to_owned()).or_insert(DiskUsage {
            used_bytes: 0,
            limit_bytes,
        });
        entry.limit_bytes = limit_bytes;
        Ok(())
    }

    fn usage(&self, path: &Path) -> Result<Option<DiskUsage>, QuotaError> {
        Ok(self.volumes.lock().unwrap().get(path).copied())
    }

    fn remove(&self, path: &Path) -> Result<(), QuotaError> {
        self.volumes.lock().unwrap().remove(path);
        remove_tree(path)
    }
}
