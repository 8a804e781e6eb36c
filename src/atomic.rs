//! Atomic writes of files: the agent's one way to replace a file another
//! process reads (the segment's `/etc/docker`, the agent's own TLS files,
//! AppArmor profiles). A temporary file in the same directory, created
//! `O_EXCL` with mode 0600, is written, given its owner and mode, fsynced
//! and renamed over the old file, so a reader sees the old file or the new
//! one, never half of one, and a key is never readable by others.

use std::fs::{File, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use tempfile::NamedTempFile;

/// Writes `dir/name` atomically with `mode`.
pub fn write_atomic(dir: &Path, name: &str, data: &[u8], mode: u32) -> io::Result<()> {
    write_atomic_owned(dir, name, data, mode, None)
}

/// Like [`write_atomic`], the file owned by uid and gid `owner` if given.
pub fn write_atomic_owned(
    dir: &Path,
    name: &str,
    data: &[u8],
    mode: u32,
    owner: Option<u32>,
) -> io::Result<()> {
    let tmp = stage(dir, &format!(".{name}."), data, mode, owner)?;
    tmp.persist(dir.join(name)).map_err(|e| e.error)?;
    Ok(())
}

/// Writes `data` to a fsynced hidden temporary file `PREFIX*` in `dir` with
/// `mode` (and `owner`), for the caller to rename over the file it replaces
/// ([`NamedTempFile::persist`]) once it has used it; dropped, it is removed.
pub fn stage(
    dir: &Path,
    prefix: &str,
    data: &[u8],
    mode: u32,
    owner: Option<u32>,
) -> io::Result<NamedTempFile> {
    let mut tmp = tempfile::Builder::new().prefix(prefix).tempfile_in(dir)?;
    tmp.write_all(data)?;
    if let Some(id) = owner {
        std::os::unix::fs::fchown(tmp.as_file(), Some(id), Some(id))?;
    }
    tmp.as_file()
        .set_permissions(Permissions::from_mode(mode))?;
    tmp.as_file().sync_all()?;
    Ok(tmp)
}

/// Makes the renames in `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn replaces_the_file_with_its_mode_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), "old").unwrap();
        write_atomic(dir.path(), "f", b"new", 0o440).unwrap();
        sync_dir(dir.path()).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("f")).unwrap(),
            "new"
        );
        let meta = std::fs::metadata(dir.path().join("f")).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o440);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_dropped_stage_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), "old").unwrap();
        drop(stage(dir.path(), ".f.", b"new", 0o644, None).unwrap());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("f")).unwrap(),
            "old"
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
