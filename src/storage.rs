//! Segment filesystems behind a narrow trait. The real store mounts an
//! overlayfs per segment over its image (copy-on-write: a create copies no
//! image data) under `<state_dir>/segments/<id>/`.

use crate::{images::Image, segment::spec::SegmentId};
use std::{
    io,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
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

fn err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StorageError {
    let path = path.to_owned();
    move |source| StorageError { op, path, source }
}

/// The host directories of one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentDirs {
    /// The segment's root filesystem (an overlay mount).
    pub rootfs: PathBuf,
    /// Bound at `/var/lib/docker`: a plain directory, since overlay2 refuses
    /// an overlay upper. Survives rebuilds.
    pub docker_data: PathBuf,
    /// Bound at `/etc/docker`: daemon.json and the TLS files the agent
    /// writes; read-write because dockerd writes `key.json` there.
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
            docker_config: base.join("etc-docker"),
            agent_tls: base.join("agent-tls"),
        }
    }

    fn create(&self) -> Result<(), StorageError> {
        for d in [
            &self.rootfs,
            &self.docker_data,
            &self.docker_config,
            &self.agent_tls,
        ] {
            std::fs::create_dir_all(d).map_err(err("create", d))?;
        }
        // Private keys live in these two.
        for d in [&self.docker_config, &self.agent_tls] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))
                .map_err(err("chmod", d))?;
        }
        Ok(())
    }
}

/// Per-segment filesystems.
pub trait SegmentStorage: Send + Sync + 'static {
    /// Creates (or, after a host reboot, remounts) the segment's filesystems.
    /// Idempotent.
    fn prepare(&self, id: &SegmentId, image: &Image) -> Result<SegmentDirs, StorageError>;
    /// Where the segment's directories are (no I/O).
    fn dirs(&self, id: &SegmentId) -> SegmentDirs;
    /// Unmounts and removes everything of the segment. Idempotent.
    fn remove(&self, id: &SegmentId) -> Result<(), StorageError>;
    /// Segments that have filesystems on this host.
    fn list(&self) -> Result<Vec<SegmentId>, StorageError>;
}

/// The real store: overlayfs under `<state_dir>/segments`.
#[derive(Debug, Clone)]
pub struct OverlayStorage {
    dir: PathBuf,
}

impl OverlayStorage {
    /// Segments under `dir` (normally `<state_dir>/segments`).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    fn segment_dir(&self, id: &SegmentId) -> PathBuf {
        self.dir.join(id.as_str())
    }
}

/// Whether `path` is a mount point: its device differs from its parent's.
pub fn is_mount_point(path: &Path) -> io::Result<bool> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let parent = path.parent().unwrap_or(Path::new("/"));
    Ok(meta.dev() != std::fs::metadata(parent)?.dev())
}

impl SegmentStorage for OverlayStorage {
    fn prepare(&self, id: &SegmentId, image: &Image) -> Result<SegmentDirs, StorageError> {
        let base = self.segment_dir(id);
        let dirs = SegmentDirs::under(&base);
        dirs.create()?;
        let (upper, work, rootfs) = (base.join("upper"), base.join("work"), dirs.rootfs.clone());
        for d in [&upper, &work] {
            std::fs::create_dir_all(d).map_err(err("create", d))?;
        }
        if !is_mount_point(&rootfs).map_err(err("stat", &rootfs))? {
            // Paths are made of validated names under an absolute state dir
            // that config validation keeps free of ',' and ':'.
            let options = format!(
                "lowerdir={},upperdir={},workdir={}",
                image.rootfs.display(),
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

    fn dirs(&self, id: &SegmentId) -> SegmentDirs {
        SegmentDirs::under(&self.segment_dir(id))
    }

    fn remove(&self, id: &SegmentId) -> Result<(), StorageError> {
        let base = self.segment_dir(id);
        let rootfs = base.join("rootfs");
        if is_mount_point(&rootfs).map_err(err("stat", &rootfs))? {
            nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH)
                .map_err(|e| err("unmount", &rootfs)(e.into()))?;
        }
        match std::fs::remove_dir_all(&base) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(err("remove", &base)(e)),
        }
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
}

impl PlainDirStorage {
    /// Segments under `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
}

impl SegmentStorage for PlainDirStorage {
    fn prepare(&self, id: &SegmentId, _image: &Image) -> Result<SegmentDirs, StorageError> {
        let dirs = SegmentDirs::under(&self.dir.join(id.as_str()));
        dirs.create()?;
        Ok(dirs)
    }

    fn dirs(&self, id: &SegmentId) -> SegmentDirs {
        SegmentDirs::under(&self.dir.join(id.as_str()))
    }

    fn remove(&self, id: &SegmentId) -> Result<(), StorageError> {
        OverlayStorage::new(&self.dir).remove(id)
    }

    fn list(&self) -> Result<Vec<SegmentId>, StorageError> {
        OverlayStorage::new(&self.dir).list()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::spec::ImageName;

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
        let dirs = store.prepare(&id, &img).unwrap();
        assert!(is_mount_point(&dirs.rootfs).unwrap());
        // Idempotent: a second prepare neither fails nor stacks a mount.
        assert_eq!(store.prepare(&id, &img).unwrap(), dirs);
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
