//! Bind mounts with attributes only Linux's new mount API can set:
//! idmapped mounts (`MOUNT_ATTR_IDMAP`, kernel 5.12+; as an overlayfs lower
//! layer, 5.19+) and `MOUNT_ATTR_NOSYMFOLLOW` (5.10+).
//!
//! This crate holds the agent's `unsafe` mount calls: the raw `open_tree`,
//! `mount_setattr` and `move_mount` system calls (neither `nix` nor `rustix`
//! wraps `mount_setattr`), the `fork` that makes a user namespace to carry
//! an id mapping, and the `statx` that tells a mount's root
//! ([`is_mount_root`]). Every call is checked; nothing else is done here.
//!
//! How a mapping becomes a mount attribute: the kernel takes the mapping of
//! a user namespace, so [`bind`] forks a child that only unshares its user
//! namespace and waits; the parent (root) writes the child's `uid_map` and
//! `gid_map`, opens `/proc/CHILD/ns/user`, lets the child exit and hands
//! the namespace fd to `mount_setattr`. The mount keeps the namespace alive.

use std::{
    ffi::CString,
    fs::File,
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

/// A contiguous id mapping: ids `0..count` inside map to
/// `host_first..host_first + count` on the host, for uids and gids alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMap {
    /// First host id (what id 0 inside becomes).
    pub host_first: u32,
    /// How many ids are mapped.
    pub count: u32,
}

/// What a new bind mount looks like.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BindOptions {
    /// Files appear with their ids shifted by this mapping.
    pub idmap: Option<IdMap>,
    /// Symlinks on the mount are not followed in path resolution (ELOOP).
    pub nosymfollow: bool,
    /// Read-only.
    pub readonly: bool,
}

// From <linux/mount.h>; `libc` has the syscall numbers but not all flags.
const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOUNT_ATTR_RDONLY: u64 = 0x0000_0001;
const MOUNT_ATTR_NOSUID: u64 = 0x0000_0002;
const MOUNT_ATTR_NODEV: u64 = 0x0000_0004;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const MOUNT_ATTR_NOSYMFOLLOW: u64 = 0x0020_0000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x0000_0004;

/// `struct mount_attr` (MOUNT_ATTR_SIZE_VER0).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn cstr(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))
}

fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Whether `path` (symlinks followed) is the root of a mount in this mount
/// namespace, from `statx`'s `STATX_ATTR_MOUNT_ROOT` (kernel 5.8+): no read
/// of the mount table, which takes the kernel's global mount lock and
/// grows with every mount. `Ok(None)` where the kernel does not say;
/// `Err(NotFound)` where `path` does not exist.
pub fn is_mount_root(path: &Path) -> io::Result<Option<bool>> {
    let c = cstr(path)?;
    // SAFETY: all-zero is a valid `statx` (plain integers).
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `stx` a `statx` the kernel
    // fills; the call is checked.
    let ret = unsafe { libc::statx(libc::AT_FDCWD, c.as_ptr(), 0, 0, &mut stx) };
    check(ret.into())?;
    let bit = libc::STATX_ATTR_MOUNT_ROOT as u64;
    Ok((stx.stx_attributes_mask & bit != 0).then_some(stx.stx_attributes & bit != 0))
}

/// Bind-mounts `source` on `target` (both directories) with `options`; the
/// mount is `nosuid,nodev`. Needs CAP_SYS_ADMIN (and, for an idmap, a
/// filesystem that supports idmapped mounts: ext4, xfs, btrfs, tmpfs...).
pub fn bind(source: &Path, target: &Path, options: BindOptions) -> io::Result<()> {
    let (src, dst) = (cstr(source)?, cstr(target)?);
    // SAFETY: a valid NUL-terminated path and flags; returns a new fd or -1.
    let tree = check(unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            src.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        )
    })?;
    // SAFETY: the fd was just returned to us and is owned by nobody else.
    let tree = unsafe { OwnedFd::from_raw_fd(tree as RawFd) };
    let userns = options.idmap.map(user_namespace).transpose()?;
    let mut attr = MountAttr {
        attr_set: MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    if let Some(ns) = &userns {
        attr.attr_set |= MOUNT_ATTR_IDMAP;
        attr.userns_fd = ns.as_raw_fd() as u64;
    }
    if options.nosymfollow {
        attr.attr_set |= MOUNT_ATTR_NOSYMFOLLOW;
    }
    if options.readonly {
        attr.attr_set |= MOUNT_ATTR_RDONLY;
    }
    let empty = c"";
    // SAFETY: `attr` is a live, correctly sized mount_attr; the path is "".
    check(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })?;
    // SAFETY: valid fds and NUL-terminated paths.
    check(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            dst.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    })?;
    Ok(())
}

/// A user namespace fd carrying `map` for uids and gids.
fn user_namespace(map: IdMap) -> io::Result<File> {
    // One child at a time: a child forked by another thread would inherit
    // this one's pipe ends (no exec closes them) and the two could wait on
    // each other.
    static FORK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = FORK.lock().unwrap_or_else(|e| e.into_inner());
    let (ready_r, ready_w) = pipe()?;
    let (go_r, go_w) = pipe()?;
    // SAFETY: the child only makes async-signal-safe system calls (unshare,
    // write, read, _exit) before it exits: safe in a multi-threaded parent.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: see above; `_exit` never returns and runs no destructors.
        unsafe {
            // Our copy of the write end would keep the pipe open forever.
            libc::close(go_w.as_raw_fd());
            let ok = libc::unshare(libc::CLONE_NEWUSER) == 0;
            let byte = [u8::from(ok)];
            libc::write(ready_w.as_raw_fd(), byte.as_ptr().cast(), 1);
            let mut buf = [0u8; 1];
            libc::read(go_r.as_raw_fd(), buf.as_mut_ptr().cast(), 1);
            libc::_exit(0);
        }
    }
    drop((ready_w, go_r));
    let result = map_child(pid, &ready_r, map);
    // Release the child with a byte (not EOF: another copy of the write end
    // may live on elsewhere); it exits.
    // SAFETY: writing one byte from a live buffer to our pipe.
    unsafe { libc::write(go_w.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
    drop(go_w);
    let mut status = 0;
    // SAFETY: reaping our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    result
}

fn map_child(pid: libc::pid_t, ready: &OwnedFd, map: IdMap) -> io::Result<File> {
    let mut byte = [0u8; 1];
    // SAFETY: reading one byte into a live buffer from our pipe.
    let n = unsafe { libc::read(ready.as_raw_fd(), byte.as_mut_ptr().cast(), 1) };
    if n != 1 || byte[0] != 1 {
        return Err(io::Error::other(
            "the id-mapping child could not unshare its user namespace",
        ));
    }
    let line = format!("0 {} {}\n", map.host_first, map.count);
    for file in ["uid_map", "gid_map"] {
        std::fs::write(format!("/proc/{pid}/{file}"), &line)?;
    }
    File::open(format!("/proc/{pid}/ns/user"))
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two fds pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn umount(p: &Path) {
        let c = cstr(p).unwrap();
        // SAFETY: a valid path.
        assert_eq!(unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) }, 0);
    }

    #[test]
    fn mount_roots_are_told_from_plain_directories() {
        assert_eq!(is_mount_root(Path::new("/proc")).unwrap(), Some(true));
        assert_eq!(is_mount_root(Path::new("/proc/self")).unwrap(), Some(false));
        let e = is_mount_root(Path::new("/proc/no-such-file")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }

    /// Needs root, as every machine of this project runs its tests.
    #[test]
    fn idmapped_bind_shifts_ownership_and_nosymfollow_refuses_symlinks() {
        let dir = tempfile_dir();
        let (src, dst) = (dir.join("src"), dir.join("dst"));
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::create_dir_all(&dst).unwrap();
        std::os::unix::fs::symlink("/", src.join("link")).unwrap();
        let map = IdMap {
            host_first: 300_000,
            count: 65_536,
        };
        let opts = BindOptions {
            idmap: Some(map),
            nosymfollow: true,
            readonly: true,
        };
        bind(&src, &dst, opts).unwrap();
        let meta = std::fs::metadata(dst.join("sub")).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (300_000, 300_000));
        let err = std::fs::metadata(dst.join("link/etc")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP));
        assert!(std::fs::write(dst.join("f"), "x").is_err(), "read-only");
        umount(&dst);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("segment-mount-test-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
