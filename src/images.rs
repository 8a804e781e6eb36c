//! Segment images: immutable, named directories under `<state_dir>/images`.
//! Each holds `rootfs/` and `image.toml`; a segment pins the image it was
//! created from, and images are never changed in place (a new version is a
//! new name), so a running segment's lower layer never moves under it.

use crate::model::ImageName;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// An image that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// No such image on this host.
    #[error("image {0:?} is not present on this host")]
    NotFound(String),
    /// The image's description is unreadable.
    #[error("image {name:?} is broken: {reason}")]
    Broken {
        /// Image name.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

/// `image.toml`, written by `scripts/build-image`.
#[derive(Debug, Clone, Deserialize)]
struct ImageManifest {
    init: String,
    #[serde(default)]
    docker: bool,
}

/// A resolved image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Its name.
    pub name: ImageName,
    /// The read-only lower layer of segments made from it.
    pub rootfs: PathBuf,
    /// The program libvirt starts as the segment's init.
    pub init: String,
    /// Whether the image runs Docker.
    pub docker: bool,
}

/// The images of this host.
#[derive(Debug, Clone)]
pub struct ImageStore {
    dir: PathBuf,
}

impl ImageStore {
    /// Images under `dir` (normally `<state_dir>/images`).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory holding the images.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Looks an image up and reads its manifest.
    pub fn resolve(&self, name: &ImageName) -> Result<Image, ImageError> {
        let root = self.dir.join(name.as_str());
        let rootfs = root.join("rootfs");
        if !rootfs.is_dir() {
            return Err(ImageError::NotFound(name.to_string()));
        }
        let broken = |reason: String| ImageError::Broken {
            name: name.to_string(),
            reason,
        };
        let text = std::fs::read_to_string(root.join("image.toml"))
            .map_err(|e| broken(format!("image.toml: {e}")))?;
        let manifest: ImageManifest =
            toml::from_str(&text).map_err(|e| broken(format!("image.toml: {e}")))?;
        if !manifest.init.starts_with('/') {
            return Err(broken(format!(
                "init {:?} is not an absolute path",
                manifest.init
            )));
        }
        Ok(Image {
            name: name.clone(),
            rootfs,
            init: manifest.init,
            docker: manifest.docker,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_present_images_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::new(dir.path());
        let name = ImageName::parse("dev").unwrap();
        assert!(matches!(store.resolve(&name), Err(ImageError::NotFound(_))));
        std::fs::create_dir_all(dir.path().join("dev/rootfs")).unwrap();
        assert!(matches!(
            store.resolve(&name),
            Err(ImageError::Broken { .. })
        ));
        std::fs::write(
            dir.path().join("dev/image.toml"),
            "name = \"dev\"\ninit = \"/sbin/init\"\n",
        )
        .unwrap();
        let image = store.resolve(&name).unwrap();
        assert_eq!(image.init, "/sbin/init");
        assert!(!image.docker);
        std::fs::write(dir.path().join("dev/image.toml"), "init = \"sbin/init\"\n").unwrap();
        assert!(matches!(
            store.resolve(&name),
            Err(ImageError::Broken { .. })
        ));
    }
}
