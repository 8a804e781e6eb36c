//! The customer data area as the kernel sees it: bind sources are opened
//! beneath the area with `openat2(2)`, never by reading symlinks in user
//! space and re-implementing the kernel's walk.

use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, open, openat2};
use nix::sys::stat::{Mode, SFlag, fstat};

use crate::policy::{ALLOWED_BIND_ROOT, AreaRefusal, DataArea};

/// The data area below a segment root, opened by the kernel.
///
/// Each check opens the root and the area afresh (so a replaced area is
/// never checked through a stale descriptor), then each existing component
/// of the source one at a time with `O_PATH | O_NOFOLLOW` and
/// `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS |
/// RESOLVE_NO_XDEV`: a symlink, a magic link, a step out of the directory
/// or onto another mount fails in the kernel, and the descriptor's type
/// says whether the component is a symlink, a device or a directory.
///
/// The plugin runs inside the segment with `root = /`; tests point `root`
/// at a temporary directory.
#[derive(Debug, Clone)]
pub struct KernelArea {
    root: PathBuf,
}

impl KernelArea {
    /// The data area ([`ALLOWED_BIND_ROOT`]) below `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        KernelArea { root: root.into() }
    }

    fn open_area(&self) -> Result<OwnedFd, AreaRefusal> {
        let area = Path::new(ALLOWED_BIND_ROOT);
        let unreadable = |e: Errno| AreaRefusal::Unreadable(area.to_path_buf(), e.to_string());
        let root = open(
            &self.root,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(unreadable)?;
        let relative = area.strip_prefix("/").unwrap_or(area);
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
        let fd = openat2(&root, relative, how).map_err(|e| match e {
            Errno::ELOOP => AreaRefusal::Symlink(area.to_path_buf()),
            e => unreadable(e),
        })?;
        match file_type(&fd).map_err(unreadable)? {
            SFlag::S_IFDIR => Ok(fd),
            SFlag::S_IFLNK => Err(AreaRefusal::Symlink(area.to_path_buf())),
            _ => Err(AreaRefusal::NotADirectory(area.to_path_buf())),
        }
    }
}

/// The `S_IFMT` bits of an open descriptor.
fn file_type(fd: &OwnedFd) -> Result<SFlag, Errno> {
    fstat(fd).map(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT)
}

impl DataArea for KernelArea {
    fn check(&self, below: &Path) -> Result<(), AreaRefusal> {
        let mut dir = self.open_area()?;
        let mut walked = PathBuf::from(ALLOWED_BIND_ROOT);
        let components: Vec<_> = below.components().collect();
        for (i, component) in components.iter().enumerate() {
            let Component::Normal(name) = component else {
                return Err(AreaRefusal::Unreadable(
                    walked,
                    "the path is not normalised".into(),
                ));
            };
            walked.push(name);
            let how = OpenHow::new()
                .flags(OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
                .resolve(
                    ResolveFlag::RESOLVE_BENEATH
                        | ResolveFlag::RESOLVE_NO_SYMLINKS
                        | ResolveFlag::RESOLVE_NO_MAGICLINKS
                        | ResolveFlag::RESOLVE_NO_XDEV,
                );
            let next = match openat2(&dir, *name, how) {
                Ok(fd) => fd,
                // The rest does not exist yet: dockerd creates it.
                Err(Errno::ENOENT) => return Ok(()),
                Err(Errno::ELOOP) => return Err(AreaRefusal::Symlink(walked)),
                Err(Errno::EXDEV) => return Err(AreaRefusal::MountPoint(walked)),
                Err(e) => return Err(AreaRefusal::Unreadable(walked, e.to_string())),
            };
            let kind = file_type(&next)
                .map_err(|e| AreaRefusal::Unreadable(walked.clone(), e.to_string()))?;
            let last = i + 1 == components.len();
            match kind {
                SFlag::S_IFLNK => return Err(AreaRefusal::Symlink(walked)),
                SFlag::S_IFBLK | SFlag::S_IFCHR => return Err(AreaRefusal::Device(walked)),
                SFlag::S_IFDIR => dir = next,
                _ if last => return Ok(()),
                _ => return Err(AreaRefusal::NotADirectory(walked)),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn segment() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for d in ["etc", "var/lib/docker/x/sub", "var/lib/docker/containers"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(root.join("etc/passwd"), "root:x:0:0").unwrap();
        let x = root.join("var/lib/docker/x");
        std::fs::write(x.join("file"), "data").unwrap();
        symlink("/", x.join("abs-root")).unwrap();
        symlink("/etc", x.join("abs-etc")).unwrap();
        symlink("../../../../etc", x.join("rel-escape")).unwrap();
        symlink("sub", x.join("rel-inside")).unwrap();
        symlink("loop-b", x.join("loop-a")).unwrap();
        symlink("loop-a", x.join("loop-b")).unwrap();
        symlink("/proc/self/root", x.join("magic")).unwrap();
        nix::unistd::mkfifo(&x.join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        dir
    }

    #[test]
    fn refuses_what_the_kernel_finds() {
        let dir = segment();
        let area = KernelArea::new(dir.path());
        let x = |p: &str| PathBuf::from(format!("/var/lib/docker/x/{p}"));
        let cases: &[(&str, Result<(), AreaRefusal>)] = &[
            ("", Ok(())),
            ("x", Ok(())),
            ("x/sub", Ok(())),
            ("x/file", Ok(())),
            ("x/fifo", Ok(())),
            ("x/new", Ok(())),
            ("x/new/deeper/still", Ok(())),
            ("containers", Ok(())),
            ("x/abs-root", Err(AreaRefusal::Symlink(x("abs-root")))),
            ("x/abs-root/etc", Err(AreaRefusal::Symlink(x("abs-root")))),
            ("x/abs-etc/passwd", Err(AreaRefusal::Symlink(x("abs-etc")))),
            ("x/rel-escape", Err(AreaRefusal::Symlink(x("rel-escape")))),
            // Even a link that stays inside the area is refused: what it
            // points to may be swapped before dockerd mounts it.
            ("x/rel-inside", Err(AreaRefusal::Symlink(x("rel-inside")))),
            ("x/loop-a", Err(AreaRefusal::Symlink(x("loop-a")))),
            ("x/magic", Err(AreaRefusal::Symlink(x("magic")))),
            ("x/file/below", Err(AreaRefusal::NotADirectory(x("file")))),
        ];
        for (below, want) in cases {
            assert_eq!(&area.check(Path::new(below)), want, "{below}");
        }
    }

    #[test]
    fn refuses_an_area_that_is_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("var/lib")).unwrap();
        std::fs::create_dir_all(dir.path().join("elsewhere")).unwrap();
        symlink("/elsewhere", dir.path().join("var/lib/docker")).unwrap();
        let area = KernelArea::new(dir.path());
        assert_eq!(
            area.check(Path::new("x")),
            Err(AreaRefusal::Symlink(PathBuf::from("/var/lib/docker")))
        );
        let missing = KernelArea::new(dir.path().join("nope"));
        assert!(matches!(
            missing.check(Path::new("x")),
            Err(AreaRefusal::Unreadable(..))
        ));
    }

    #[test]
    fn refuses_device_nodes() {
        let dir = segment();
        let x = dir.path().join("var/lib/docker/x");
        let null = nix::sys::stat::makedev(1, 3);
        nix::sys::stat::mknod(
            &x.join("null"),
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o600),
            null,
        )
        .expect("mknod (the unit tests run as root)");
        let area = KernelArea::new(dir.path());
        let under_x = |p: &str| PathBuf::from(format!("/var/lib/docker/x/{p}"));
        assert_eq!(
            area.check(Path::new("x/null")),
            Err(AreaRefusal::Device(under_x("null")))
        );
    }

    #[test]
    fn policy_uses_the_kernel_view() {
        use crate::policy::evaluate;
        let dir = segment();
        let area = KernelArea::new(dir.path());
        let bind = |src: &str| {
            let body = format!(r#"{{"HostConfig":{{"Binds":["{src}:/x"]}}}}"#);
            evaluate(
                "POST",
                "/v1.41/containers/create",
                Some(body.as_bytes()),
                &area,
            )
            .code()
        };
        assert_eq!(bind("/var/lib/docker/x/abs-root"), Some("SEGMENT-1011"));
        assert_eq!(
            bind("/var/lib/docker/x/rel-escape/shadow"),
            Some("SEGMENT-1011")
        );
        assert_eq!(bind("/var/lib/docker/x/loop-a"), Some("SEGMENT-1011"));
        assert_eq!(
            bind("/var/lib/docker/x/sub/../abs-root"),
            Some("SEGMENT-1011")
        );
        // dockerd cleans a bind source, but the local driver hands a
        // volume's device to the kernel as written: a `..` after a symlink
        // is refused either way.
        assert_eq!(
            bind("/var/lib/docker/x/abs-root/../sub"),
            Some("SEGMENT-1011")
        );
        assert_eq!(bind("/var/lib/docker/x/sub/../sub"), None);
        assert_eq!(bind("/var/lib/docker/x/new/../sub"), None);
        assert_eq!(bind("/var/lib/docker/x/not-yet-created"), None);
        assert_eq!(bind("/var/lib/docker//x/./sub/"), None);
        assert_eq!(bind("/var/lib/docker"), None);
        assert_eq!(bind("/var/lib/docker/../../../etc"), Some("SEGMENT-1011"));
    }
}
