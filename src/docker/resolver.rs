//! Resolving a host path on the segment filesystem, as the kernel will when
//! dockerd bind-mounts it.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io;
use std::path::{Component, Path, PathBuf};

use crate::docker::policy::PathResolver;

/// Linux's limit on symlinks followed while resolving one path.
const MAX_SYMLINKS: usize = 40;

/// Resolves symlinks on the real filesystem below `root`, as if `root` were
/// `/` (absolute link targets and `..` stay inside it, like a chroot).
///
/// The plugin runs inside the segment with `root = /`; tests point `root` at
/// a temporary directory. Components that do not exist are kept as they are
/// (dockerd creates missing `-v` sources with `mkdir -p`).
#[derive(Debug, Clone)]
pub struct FsResolver {
    root: PathBuf,
}

impl FsResolver {
    /// A resolver for the filesystem below `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        FsResolver { root: root.into() }
    }

    fn host_path(&self, inside: &[OsString]) -> PathBuf {
        let mut path = self.root.clone();
        path.extend(inside);
        path
    }
}

impl PathResolver for FsResolver {
    fn resolve(&self, path: &Path) -> Option<PathBuf> {
        let mut pending: VecDeque<OsString> = normal_components(path);
        let mut resolved: Vec<OsString> = Vec::new();
        let mut followed = 0;
        while let Some(component) = pending.pop_front() {
            if component == ".." {
                resolved.pop();
                continue;
            }
            resolved.push(component);
            let Some(target) = symlink_target(&self.host_path(&resolved)).ok()? else {
                continue;
            };
            followed += 1;
            if followed > MAX_SYMLINKS {
                return None;
            }
            resolved.pop();
            if target.is_absolute() {
                resolved.clear();
            }
            for c in normal_components(&target).into_iter().rev() {
                pending.push_front(c);
            }
        }
        let mut out = PathBuf::from("/");
        out.extend(resolved);
        Some(out)
    }
}

/// The target of `path` if it is a symlink; `None` if it is not one or does
/// not exist (then the rest of the path is taken lexically).
fn symlink_target(path: &Path) -> io::Result<Option<PathBuf>> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => std::fs::read_link(path).map(Some),
        Ok(_) => Ok(None),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// The `Normal` and `..` components of a path, `.` and the root dropped.
fn normal_components(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(c) => Some(c.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn segment() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for d in [
            "etc",
            "var/lib/docker/volumes/v/_data",
            "var/lib/docker/containers",
        ] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(root.join("etc/passwd"), "root:x:0:0").unwrap();
        let data = root.join("var/lib/docker/volumes/v/_data");
        symlink("/", data.join("abs-root")).unwrap();
        symlink("/etc", data.join("abs-etc")).unwrap();
        symlink("../../../../../../../../etc", data.join("rel-escape")).unwrap();
        symlink("../../../containers", data.join("rel-sibling")).unwrap();
        symlink("loop-b", data.join("loop-a")).unwrap();
        symlink("loop-a", data.join("loop-b")).unwrap();
        symlink("abs-etc/passwd", data.join("chain")).unwrap();
        symlink(
            "missing/../../../../../../../etc",
            data.join("through-missing"),
        )
        .unwrap();
        dir
    }

    #[test]
    fn resolves_like_the_kernel_inside_root() {
        let dir = segment();
        let resolver = FsResolver::new(dir.path());
        let data = "/var/lib/docker/volumes/v/_data";
        let cases = [
            (format!("{data}/abs-root"), Some("/")),
            (format!("{data}/abs-root/etc/shadow"), Some("/etc/shadow")),
            (format!("{data}/abs-etc"), Some("/etc")),
            (format!("{data}/rel-escape"), Some("/etc")),
            (
                format!("{data}/rel-sibling"),
                Some("/var/lib/docker/containers"),
            ),
            (format!("{data}/chain"), Some("/etc/passwd")),
            (format!("{data}/through-missing"), Some("/etc")),
            (
                format!("{data}/new/dir"),
                Some("/var/lib/docker/volumes/v/_data/new/dir"),
            ),
            (
                "/etc/passwd/below-a-file".to_string(),
                Some("/etc/passwd/below-a-file"),
            ),
            (format!("{data}/loop-a"), None),
        ];
        for (path, want) in cases {
            assert_eq!(
                resolver.resolve(Path::new(&path)),
                want.map(PathBuf::from),
                "{path}"
            );
        }
    }

    #[test]
    fn policy_sees_through_symlinks() {
        use crate::docker::policy::evaluate;
        let dir = segment();
        let resolver = FsResolver::new(dir.path());
        let bind = |src: &str| {
            let body = format!(r#"{{"HostConfig":{{"Binds":["{src}:/x"]}}}}"#);
            evaluate(
                "POST",
                "/v1.41/containers/create",
                Some(body.as_bytes()),
                &resolver,
            )
            .code()
        };
        let data = "/var/lib/docker/volumes/v/_data";
        assert_eq!(bind(&format!("{data}/abs-root")), Some("SEGMENT-1011"));
        assert_eq!(bind(&format!("{data}/rel-escape")), Some("SEGMENT-1011"));
        assert_eq!(bind(&format!("{data}/loop-a")), Some("SEGMENT-1011"));
        assert_eq!(bind(&format!("{data}/rel-sibling")), None);
        assert_eq!(bind(&format!("{data}/not-yet-created")), None);
        assert_eq!(bind("/var/lib/docker"), None);
    }
}
