//! The two btrfs ioctls the segments' disk quota reads need (`linux/btrfs.h`): which
//! filesystem holds a directory (its fsid names its sysfs directory) and
//! which subvolume a directory belongs to. They replace a read of the whole
//! mount table (which takes the kernel's global mount lock, queues behind
//! every mount of a create storm, and grows with every segment's mounts)
//! and a `btrfs inspect-internal rootid` process per segment.

use std::{fs::File, io, os::fd::AsRawFd, path::Path};

/// `BTRFS_FIRST_FREE_OBJECTID`: the inode number of every subvolume's root
/// directory; an `INO_LOOKUP` of it answers without CAP_SYS_ADMIN.
pub const SUBVOLUME_ROOT_INO: u64 = 256;

/// The kernel's structs and the ioctl calls (`linux/btrfs.h`).
mod sys {
    const BTRFS_IOCTL_MAGIC: u8 = 0x94;

    /// `struct btrfs_ioctl_fs_info_args` (1024 bytes).
    #[repr(C)]
    pub struct FsInfoArgs {
        pub max_id: u64,
        pub num_devices: u64,
        pub fsid: [u8; 16],
        pub nodesize: u32,
        pub sectorsize: u32,
        pub clone_alignment: u32,
        pub csum_type: u16,
        pub csum_size: u16,
        pub flags: u64,
        pub generation: u64,
        pub metadata_uuid: [u8; 16],
        pub reserved: [u8; 944],
    }

    /// `struct btrfs_ioctl_ino_lookup_args` (4096 bytes).
    #[repr(C)]
    pub struct InoLookupArgs {
        pub treeid: u64,
        pub objectid: u64,
        pub name: [u8; 4080],
    }

    const _: () = assert!(std::mem::size_of::<FsInfoArgs>() == 1024);
    const _: () = assert!(std::mem::size_of::<InoLookupArgs>() == 4096);

    nix::ioctl_read!(btrfs_fs_info, BTRFS_IOCTL_MAGIC, 31, FsInfoArgs);
    nix::ioctl_readwrite!(btrfs_ino_lookup, BTRFS_IOCTL_MAGIC, 18, InoLookupArgs);
}

fn open(dir: &Path) -> io::Result<File> {
    File::open(dir)
}

/// The fsid of the btrfs holding `dir`, as sysfs names it
/// (`/sys/fs/btrfs/<fsid>`): lowercase, 8-4-4-4-12.
pub fn fsid(dir: &Path) -> io::Result<String> {
    let file = open(dir)?;
    // SAFETY: all-zero is a valid FsInfoArgs (plain integers and bytes;
    // flags 0 asks for the basic fields only).
    let mut args: sys::FsInfoArgs = unsafe { std::mem::zeroed() };
    // SAFETY: the fd is open for the call and `args` is the struct the
    // ioctl number encodes, which the kernel fills.
    unsafe { sys::btrfs_fs_info(file.as_raw_fd(), &mut args) }.map_err(io::Error::from)?;
    Ok(format_uuid(&args.fsid))
}

/// The id of the subvolume that `dir` lies in (for a subvolume's root
/// directory: that subvolume's own id).
pub fn subvolume_of(dir: &Path) -> io::Result<u64> {
    let file = open(dir)?;
    // SAFETY: all-zero is a valid InoLookupArgs.
    let mut args: sys::InoLookupArgs = unsafe { std::mem::zeroed() };
    // treeid 0: the tree of the fd's inode; the root directory's object
    // id: no path walk, and no privilege needed.
    args.objectid = SUBVOLUME_ROOT_INO;
    // SAFETY: as in `fsid`; the kernel reads and writes `args`.
    unsafe { sys::btrfs_ino_lookup(file.as_raw_fd(), &mut args) }.map_err(io::Error::from)?;
    Ok(args.treeid)
}

fn format_uuid(b: &[u8; 16]) -> String {
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fsids_are_written_as_sysfs_names_them() {
        let b = [
            0x3d, 0x09, 0x51, 0x28, 0x54, 0xaf, 0xd9, 0xb4, 0x00, 0x11, 0x22, 0x33, 0x44, 0x55,
            0x66, 0xff,
        ];
        assert_eq!(format_uuid(&b), "3d095128-54af-d9b4-0011-2233445566ff");
    }

    #[test]
    fn a_directory_off_btrfs_is_an_error_not_an_answer() {
        // procfs is never btrfs: the ioctls are not its (ENOTTY).
        assert!(fsid(Path::new("/proc")).is_err());
        assert!(subvolume_of(Path::new("/proc")).is_err());
    }
}
