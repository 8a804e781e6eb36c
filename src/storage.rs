//! Segment filesystems behind a narrow trait. The real store mounts an
//! overlayfs per segment over its image (copy-on-write: a create copies no
//! image data) under `<state_dir>/segments/<id>/`.
//!
//! Segments are unprivileged: their root is a host uid of their own
//! ([`crate::idmap`]). The image stays owned by host root and shared; each
//! segment sees it through an idmapped bind (`lower/`, read-only), so its
//! files appear owned by the segment's root without a copy or a chown. What
//! the segment writes lands in `upper/` owned by its own host ids.

use crate::{
    idmap::IdRange,
    images::Image,
    model::SegmentId,
    quota::{DiskQuota, DiskUsage, QuotaError},
};
use segment_mount::BindOptions;
use std::{
    io,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Arc,
};

/// A filesystem operation that failed.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}")]
pub struct StorageError {
    /// What was being done.
    pub op: &'static str,
    /// On which path.
    pub path: PathBuf,
    /// Why it failed.
    #[source]
    pub source: io::Error,
}

impl From<QuotaError> for StorageError {
    fn from(e: QuotaError) -> Self {
        match e {
            QuotaError::Io { op, path, source } => StorageError { op, path, source },
            QuotaError::Unsupported(reason) => StorageError {
                op: "limit the disk of",
                path: PathBuf::new(),
                source: io::Error::other(reason),
            },
        }
    }
}

fn err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StorageError {
    let path = path.to_owned();
    move |source| StorageError { op, path, source }
}

/// The host directories of one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentDirs {
    /// The segment's root filesystem (an overlay mount).
    pub rootfs: PathBuf,
    /// Bound at `/var/lib/segment/docker`, dockerd's data root: a plain
    /// directory, since overlay2 refuses an overlay upper. Survives
    /// rebuilds. No customer bind can name it.
    pub docker_data: PathBuf,
    /// Bound at `/var/lib/docker`: the customer data area, the only place
    /// bind mounts may come from. It holds no Docker or segment state, and
    /// is a `nosymfollow` mount: a symlink planted in it after the policy
    /// checked a bind source is never followed when the bind is mounted.
    pub data: PathBuf,
    /// Bound read-only at `/etc/docker`: daemon.json and the TLS files the
    /// agent writes, owned by host root (nobody inside the segment).
    pub docker_config: PathBuf,
    /// The agent's own client certificate for the segment's Docker (health
    /// checks); host-only, never visible inside the segment.
    pub agent_tls: PathBuf,
}

impl SegmentDirs {
    /// The directories of the segment whose files live under `base`.
    pub fn under(base: &Path) -> Self {
        Self {
            rootfs: base.join("rootfs"),
            docker_data: base.join("docker"),
            data: base.join("data"),
            docker_config: base.join("etc-docker"),
            agent_tls: base.join("agent-tls"),
        }
    }

    fn create(&self) -> Result<(), StorageError> {
        for d in [
            &self.rootfs,
            &self.docker_data,
            &self.data,
            &self.docker_config,
            &self.agent_tls,
        ] {
            std::fs::create_dir_all(d).map_err(err("create", d))?;
        }
        // The agent's own key lives here; nothing of it is for the segment.
        std::fs::set_permissions(&self.agent_tls, std::fs::Permissions::from_mode(0o700))
            .map_err(err("chmod", &self.agent_tls))?;
        // dockerd (the segment's root) reads its key here; the directory
        // stays host root's, so nothing inside can add or replace a file.
        std::fs::set_permissions(&self.docker_config, std::fs::Permissions::from_mode(0o755))
            .map_err(err("chmod", &self.docker_config))?;
        Ok(())
    }

    /// Gives the segment's root the directories it writes to.
    fn hand_over(&self, base: &Path, ids: IdRange) -> Result<(), StorageError> {
        let owner = Some(ids.host_first);
        for d in [
            base.join("upper"),
            self.docker_data.clone(),
            self.data.clone(),
        ] {
            std::os::unix::fs::chown(&d, owner, owner).map_err(err("chown", &d))?;
        }
        Ok(())
    }
}

/// Per-segment filesystems.
pub trait SegmentStorage: Send + Sync + 'static {
    /// Creates (or, after a host reboot, remounts) the segment's filesystems,
    /// owned by the segment's host ids `ids`, their writable parts limited
    /// to `disk_bytes` together. Idempotent.
    fn prepare(
        &self,
        id: &SegmentId,
        image: &Image,
        ids: IdRange,
        disk_bytes: u64,
    ) -> Result<SegmentDirs, StorageError>;
    /// The disk use and limit of the segment; `None` without a quota.
    /// Called on the async runtime: see [`DiskQuota::usage`].
    fn disk_usage(&self, id: &SegmentId) -> Result<Option<DiskUsage>, StorageError>;
    /// Where the segment's directories are (no I/O).
    fn dirs(&self, id: &SegmentId) -> SegmentDirs;
    /// Unmounts and removes everything of the segment. Idempotent.
    fn remove(&self, id: &SegmentId) -> Result<(), StorageError>;
    /// Segments that have filesystems on this host.
    fn list(&self) -> Result<Vec<SegmentId>, StorageError>;
}

/// The real store: overlayfs under `<state_dir>/segments`, each segment's
/// directory one volume of `quota`.
#[derive(Debug, Clone)]
pub struct OverlayStorage {
    dir: PathBuf,
    quota: Arc<dyn DiskQuota>,
}

impl OverlayStorage {
    /// Segments under `dir` (normally `<state_dir>/segments`), without
    /// disk limits.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self::with_quota(dir, Arc::new(crate::quota::NoQuota))
    }

    /// Segments under `dir`, each limited by `quota`.
    pub fn with_quota(dir: impl Into<PathBuf>, quota: Arc<dyn DiskQuota>) -> Self {
        Self {
            dir: dir.into(),
            quota,
        }
    }

    fn segment_dir(&self, id: &SegmentId) -> PathBuf {
        self.dir.join(id.as_str())
    }
}

/// Whether something is mounted at `path` (binds of a directory of the
/// same filesystem included: the kernel decides, not devices). `statx`
/// says without the mount table; kernels before 5.8 read the table.
pub fn is_mount_point(path: &Path) -> io::Result<bool> {
    match segment_mount::is_mount_root(path) {
        Ok(Some(root)) => return Ok(root),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        // A kernel before 5.8: the mount table says.
        Ok(None) | Err(_) => {}
    }
    let path = match std::fs::canonicalize(path) {
        Ok(p) => p,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let wanted = path.as_os_str().as_encoded_bytes();
    let table = std::fs::read("/proc/self/mountinfo")?;
    Ok(table
        .split(|&b| b == b'\n')
        .filter_map(|line| line.split(|&b| b == b' ').nth(4))
        .any(|point| unescape_mount_point(point) == wanted))
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape_mount_point(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let octal = field
            .get(i + 1..i + 4)
            .filter(|o| o.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (field[i], octal) {
            (b'\\', Some(o)) => {
                out.push(
                    o.iter()
                        .fold(0u8, |acc, d| acc.wrapping_mul(8) + (d - b'0')),
                );
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

fn unmount(path: &Path) -> Result<(), StorageError> {
    if is_mount_point(path).map_err(err("stat", path))? {
        nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH)
            .map_err(|e| err("unmount", path)(e.into()))?;
    }
    Ok(())
}

fn bind_once(source: &Path, target: &Path, options: BindOptions) -> Result<(), StorageError> {
    if !is_mount_point(target).map_err(err("stat", target))? {
        segment_mount::bind(source, target, options).map_err(err("bind-mount on", target))?;
    }
    Ok(())
}

impl SegmentStorage for OverlayStorage {
    fn prepare(
        &self,
        id: &SegmentId,
        image: &Image,
        ids: IdRange,
        disk_bytes: u64,
    ) -> Result<SegmentDirs, StorageError> {
        let base = self.segment_dir(id);
        std::fs::create_dir_all(&self.dir).map_err(err("create", &self.dir))?;
        // 0: a segment made before quotas, whose directory is a plain one.
        match disk_bytes {
            0 => std::fs::create_dir_all(&base).map_err(err("create", &base))?,
            limit => self.quota.create(&base, limit)?,
        }
        let dirs = SegmentDirs::under(&base);
        dirs.create()?;
        let (lower, upper, work) = (base.join("lower"), base.join("upper"), base.join("work"));
        for d in [&lower, &upper, &work] {
            std::fs::create_dir_all(d).map_err(err("create", d))?;
        }
        dirs.hand_over(&base, ids)?;
        let image_view = BindOptions {
            idmap: Some(ids),
            readonly: true,
            nosymfollow: false,
        };
        bind_once(&image.rootfs, &lower, image_view)?;
        let area = BindOptions {
            nosymfollow: true,
            ..BindOptions::default()
        };
        bind_once(&dirs.data, &dirs.data, area)?;
        let rootfs = dirs.rootfs.clone();
        if !is_mount_point(&rootfs).map_err(err("stat", &rootfs))? {
            // Paths are made of validated names under an absolute state dir
            // that config validation keeps free of ',' and ':'.
            let options = format!(
                "lowerdir={},upperdir={},workdir={}",
                lower.display(),
                upper.display(),
                work.display()
            );
            nix::mount::mount(
                Some("overlay"),
                &rootfs,
                Some("overlay"),
                nix::mount::MsFlags::MS_NODEV,
                Some(options.as_str()),
            )
            .map_err(|e| err("mount overlay on", &rootfs)(e.into()))?;
        }
        Ok(dirs)
    }

    fn disk_usage(&self, id: &SegmentId) -> Result<Option<DiskUsage>, StorageError> {
        // No lookup of the path here: during a storm a lookup through the
        // segments' directory waited 41 ms on its inode lock behind a
        // `btrfs subvolume create`, on the async runtime. The quota says
        // `None` for a volume that does not exist.
        Ok(self.quota.usage(&self.segment_dir(id))?)
    }

    fn dirs(&self, id: &SegmentId) -> SegmentDirs {
        SegmentDirs::under(&self.segment_dir(id))
    }

    fn remove(&self, id: &SegmentId) -> Result<(), StorageError> {
        let base = self.segment_dir(id);
        for mount in ["rootfs", "lower", "data"] {
            unmount(&base.join(mount))?;
        }
        self.quota.remove(&base)?;
        Ok(())
    }

    fn list(&self) -> Result<Vec<SegmentId>, StorageError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(err("list", &self.dir)(e)),
        };
        let mut ids = Vec::new();
        for entry in entries {
            let entry = entry.map_err(err("list", &self.dir))?;
            if let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|n| SegmentId::parse(n).ok())
            {
                ids.push(id);
            }
        }
        Ok(ids)
    }
}

/// A store that only makes directories: for tests without mount privileges.
#[derive(Debug, Clone)]
pub struct PlainDirStorage {
    dir: PathBuf,
    quota: Arc<dyn DiskQuota>,
}

impl PlainDirStorage {
    /// Segments under `dir`, with disk limits kept by a [`crate::quota::FakeQuota`].
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self::with_quota(dir, Arc::new(crate::quota::FakeQuota::default()))
    }

    /// Segments under `dir`, each a volume of `quota`.
    pub fn with_quota(dir: impl Into<PathBuf>, quota: Arc<dyn DiskQuota>) -> Self {
        Self {
            dir: dir.into(),
            quota,
        }
    }
}

impl SegmentStorage for PlainDirStorage {
    fn prepare(
        &self,
        id: &SegmentId,
        _image: &Image,
        _ids: IdRange,
        disk_bytes: u64,
    ) -> Result<SegmentDirs, StorageError> {
        let base = self.dir.join(id.as_str());
        self.quota.create(&base, disk_bytes)?;
        let dirs = SegmentDirs::under(&base);
        dirs.create()?;
        Ok(dirs)
    }

    fn disk_usage(&self, id: &SegmentId) -> Result<Option<DiskUsage>, StorageError> {
        Ok(self.quota.usage(&self.dir.join(id.as_str()))?)
    }

    fn dirs(&self, id: &SegmentId) -> SegmentDirs {
        SegmentDirs::under(&self.dir.join(id.as_str()))
    }

    fn remove(&self, id: &SegmentId) -> Result<(), StorageError> {
        OverlayStorage::with_quota(&self.dir, self.quota.clone()).remove(id)
    }

    fn list(&self) -> Result<Vec<SegmentId>, StorageError> {
        OverlayStorage::new(&self.dir).list()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ImageName;
    use std::os::unix::fs::MetadataExt;

    const IDS: IdRange = IdRange {
        host_first: 3_000_000,
        count: 65_536,
    };

    fn image(dir: &Path) -> Image {
        let rootfs = dir.join("images/dev/rootfs");
        std::fs::create_dir_all(rootfs.join("etc")).unwrap();
        std::fs::write(rootfs.join("etc/hostname"), "image\n").unwrap();
        Image {
            name: ImageName::parse("dev").unwrap(),
            rootfs,
            init: "/sbin/init".into(),
            docker: false,
        }
    }

    /// Needs root (mount); every machine of this project runs tests as root.
    #[test]
    fn overlay_is_copy_on_write_and_removal_is_complete() {
        let dir = tempfile::tempdir().unwrap();
        let img = image(dir.path());
        let store = OverlayStorage::new(dir.path().join("segments"));
        let id = SegmentId::parse("s1").unwrap();
        let dirs = store.prepare(&id, &img, IDS, 1 << 30).unwrap();
        assert!(is_mount_point(&dirs.rootfs).unwrap());
        // Idempotent: a second prepare neither fails nor stacks a mount.
        assert_eq!(store.prepare(&id, &img, IDS, 1 << 30).unwrap(), dirs);
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let base = std::fs::canonicalize(dir.path().join("segments/s1")).unwrap();
        for m in ["rootfs", "lower", "data"] {
            let point = format!(" {} ", base.join(m).display());
            assert_eq!(mounts.matches(&point).count(), 1, "{m} mounted once");
        }
        // The image, owned by host root, appears owned by the segment's root.
        let meta = std::fs::metadata(dirs.rootfs.join("etc/hostname")).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (IDS.host_first, IDS.host_first));
        assert_eq!(
            std::fs::metadata(img.rootfs.join("etc/hostname"))
                .unwrap()
                .uid(),
            0
        );
        for d in [&dirs.rootfs, &dirs.docker_data, &dirs.data] {
            assert_eq!(std::fs::metadata(d).unwrap().uid(), IDS.host_first, "{d:?}");
        }
        // The customer data area never follows a symlink.
        std::os::unix::fs::symlink("/", dirs.data.join("esc")).unwrap();
        let e = std::fs::metadata(dirs.data.join("esc/etc")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(nix::libc::ELOOP));
        std::fs::write(dirs.rootfs.join("etc/hostname"), "segment\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(img.rootfs.join("etc/hostname")).unwrap(),
            "image\n"
        );
        assert_eq!(store.list().unwrap(), vec![id.clone()]);
        store.remove(&id).unwrap();
        store.remove(&id).unwrap();
        assert!(!dir.path().join("segments/s1").exists());
        assert!(store.list().unwrap().is_empty());
        assert_eq!(
            std::fs::read_to_string(img.rootfs.join("etc/hostname")).unwrap(),
            "image\n"
        );
    }
}
