//! Segment volumes as btrfs subvolumes with simple quotas.
//!
//! Layout: the segment's directory is subvolume `0/ID`, a member of qgroup
//! `1/ID` (same number) that carries the limit. Under simple quotas
//! (`/sys/fs/btrfs/UUID/qgroups/mode` = `squota`, kernel 6.7 and later) a
//! subvolume created inside it joins `1/ID` by itself; under full qgroups it
//! would be a qgroup of its own, outside the limit (measured: 80 MB written
//! into a nested subvolume of a 50 MiB subvolume), so full qgroups are
//! refused. Reads (use, limit) come from sysfs; changes go through the
//! `btrfs` command of btrfs-progs (a few per create and delete).

use super::{DiskQuota, DiskUsage, QuotaError, remove_tree};
use btrfs_ioctl::SUBVOLUME_ROOT_INO;
use std::{
    collections::{BTreeMap, HashMap},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
};

/// The real quota: btrfs subvolumes and simple-quota qgroups.
#[derive(Debug)]
pub struct BtrfsQuota {
    sysfs: PathBuf,
    btrfs: PathBuf,
    /// Subvolume ids by path: asked of the kernel once per segment, not at
    /// every listing.
    ids: Mutex<HashMap<PathBuf, u64>>,
    /// The sysfs qgroups directory by the directory holding the volumes
    /// (the segments' directory): found once, so a reading of a segment's
    /// use is two sysfs reads, cheap enough for the async runtime.
    groups: Mutex<HashMap<PathBuf, PathBuf>>,
}

impl Default for BtrfsQuota {
    fn default() -> Self {
        Self::new("/sys/fs/btrfs", "btrfs")
    }
}

fn unsupported(reason: String) -> QuotaError {
    QuotaError::Unsupported(reason)
}

/// Whether `path` lies on a btrfs filesystem.
fn on_btrfs(path: &Path) -> Result<bool, QuotaError> {
    let fs =
        nix::sys::statfs::statfs(path).map_err(|e| QuotaError::io("statfs", path)(e.into()))?;
    Ok(fs.filesystem_type() == nix::sys::statfs::BTRFS_SUPER_MAGIC)
}

/// Parses `btrfs subvolume list -p`: id -> parent id.
fn parse_list(text: &str) -> BTreeMap<u64, u64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let field = |name: &str| {
            let at = words.iter().position(|w| *w == name)?;
            words.get(at + 1)?.parse::<u64>().ok()
        };
        if let (Some(id), Some(parent)) = (field("ID"), field("parent")) {
            out.insert(id, parent);
        }
    }
    out
}

/// `root` and every subvolume below it, deepest first.
fn delete_order(parents: &BTreeMap<u64, u64>, root: u64) -> Vec<u64> {
    fn visit(parents: &BTreeMap<u64, u64>, id: u64, out: &mut Vec<u64>) {
        for (&child, _) in parents.iter().filter(|&(_, &p)| p == id) {
            visit(parents, child, out);
        }
        out.push(id);
    }
    let mut out = Vec::new();
    visit(parents, root, &mut out);
    out
}

fn read_u64(file: &Path) -> Result<u64, QuotaError> {
    let text = std::fs::read_to_string(file).map_err(QuotaError::io("read", file))?;
    let bad = |e| QuotaError::io("parse", file)(std::io::Error::other(e));
    text.trim().parse().map_err(bad)
}

impl BtrfsQuota {
    /// Uses the sysfs root `sysfs` (normally `/sys/fs/btrfs`) and the
    /// `btrfs` command `btrfs`.
    pub fn new(sysfs: impl Into<PathBuf>, btrfs: impl Into<PathBuf>) -> Self {
        Self {
            sysfs: sysfs.into(),
            btrfs: btrfs.into(),
            ids: Mutex::default(),
            groups: Mutex::default(),
        }
    }

    /// Runs `btrfs ARGS [PATH]`; its last stderr line on failure.
    fn run(&self, args: &[&str], path: Option<&Path>) -> Result<String, QuotaError> {
        let at = path.unwrap_or(Path::new(""));
        // Through setpriv (util-linux), so the command gets SIGKILL when the
        // agent dies: one that outlived a killed agent would finish its
        // subvolume after the restarted agent swept the half-made segment,
        // leaving a volume no record names.
        let out = Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "--"])
            .arg(&self.btrfs)
            .args(args)
            .args(path)
            .output()
            .map_err(QuotaError::io("running btrfs for", at))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let msg = stderr.trim().lines().last().unwrap_or("failed").to_owned();
            let what = format!("btrfs {}: {msg}", args.join(" "));
            return Err(QuotaError::io("quota on", at)(std::io::Error::other(what)));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `/sys/fs/btrfs/UUID/qgroups` of the filesystem holding `path`: its
    /// fsid from the filesystem itself (an ioctl, no mount table).
    fn qgroups(&self, path: &Path) -> Result<PathBuf, QuotaError> {
        if !on_btrfs(path)? {
            return Err(unsupported(format!("{} is not on btrfs", path.display())));
        }
        let fsid = btrfs_ioctl::fsid(path).map_err(QuotaError::io("read the fsid of", path))?;
        let dir = self.sysfs.join(fsid);
        match dir.is_dir() {
            true => Ok(dir.join("qgroups")),
            false => Err(unsupported(format!(
                "the btrfs holding {} is not in {}",
                path.display(),
                self.sysfs.display()
            ))),
        }
    }

    /// The id of the subvolume whose root directory is `path`, if it is one.
    fn subvolume_id(&self, path: &Path) -> Result<Option<u64>, QuotaError> {
        if let Some(&id) = self.ids.lock().unwrap().get(path) {
            return Ok(Some(id));
        }
        let meta = match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            other => other.map_err(QuotaError::io("stat", path))?,
        };
        if !meta.is_dir() || meta.ino() != SUBVOLUME_ROOT_INO || !on_btrfs(path)? {
            return Ok(None);
        }
        let id = btrfs_ioctl::subvolume_of(path)
            .map_err(QuotaError::io("look up the subvolume of", path))?;
        self.ids.lock().unwrap().insert(path.to_owned(), id);
        Ok(Some(id))
    }

    fn delete_tree(&self, path: &Path, id: u64) -> Result<(), QuotaError> {
        let group = format!("1/{id}");
        // A full qgroup refuses even the metadata a delete needs (EDQUOT).
        // A create cut off after its subvolume has no group yet.
        if self.qgroup_exists(path, 1, id) {
            self.run(&["qgroup", "limit", "none", &group], Some(path))?;
        }
        let parents = parse_list(&self.run(&["subvolume", "list", "-p"], Some(path))?);
        let fs_dir = path.parent().unwrap_or(Path::new("/"));
        let order = delete_order(&parents, id);
        // Nested ones by id (btrfs wants a subvolume as the path: the
        // segment's own, still there), then the segment's by its path.
        for sub in order.iter().filter(|&&s| s != id) {
            let sub = sub.to_string();
            self.run(&["subvolume", "delete", "-i", &sub], Some(path))?;
        }
        self.run(&["subvolume", "delete", "-c"], Some(path))?;
        self.ids.lock().unwrap().remove(path);
        // Level-0 qgroups go with their subvolumes once btrfs has dropped
        // them; the level-1 group goes now, once it has no members.
        for sub in &order {
            let member = format!("0/{sub}");
            let args = ["qgroup", "remove", "--no-rescan", &member, &group];
            let _ = self.run(&args, Some(fs_dir));
        }
        if let Err(e) = self.run(&["qgroup", "destroy", &group], Some(fs_dir)) {
            // A concurrent delete's sweep may have destroyed it first (our
            // subvolume and its 0/N already gone): gone is what we want.
            if self.qgroup_exists(fs_dir, 1, id) {
                return Err(e);
            }
        }
        self.sweep(fs_dir, &parents);
        Ok(())
    }

    /// Whether qgroup `level/id` exists, as sysfs shows it (true when sysfs
    /// cannot say, so an error is never taken for success).
    fn qgroup_exists(&self, fs_dir: &Path, level: u8, id: u64) -> bool {
        self.qgroups(fs_dir)
            .map(|q| q.join(format!("{level}_{id}")).exists())
            .unwrap_or(true)
    }

    /// Destroys level-1 qgroups whose subvolume is gone (a removal cut off
    /// between deleting the subvolume and its qgroup): not among
    /// `subvolumes` and without a level-0 qgroup. The latter keeps a
    /// concurrent create safe: its `0/N` exists before it makes `1/N`. A
    /// group that still has members refuses (EBUSY).
    fn sweep(&self, fs_dir: &Path, subvolumes: &BTreeMap<u64, u64>) {
        let Ok(qgroups) = self.qgroups(fs_dir) else {
            return;
        };
        let Ok(entries) = std::fs::read_dir(&qgroups) else {
            return;
        };
        let orphans = entries.flatten().filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n: u64 = name.strip_prefix("1_")?.parse().ok()?;
            let gone = !subvolumes.contains_key(&n) && !qgroups.join(format!("0_{n}")).exists();
            gone.then_some(n)
        });
        for n in orphans {
            let group = format!("1/{n}");
            if self
                .run(&["qgroup", "destroy", &group], Some(fs_dir))
                .is_ok()
            {
                tracing::info!(qgroup = %group, "removed a leftover qgroup");
            }
        }
    }
}

impl DiskQuota for BtrfsQuota {
    fn check(&self, dir: &Path) -> Result<String, QuotaError> {
        std::fs::create_dir_all(dir).map_err(QuotaError::io("create", dir))?;
        if !on_btrfs(dir)? {
            return Err(unsupported(format!(
                "{} is not on btrfs: segment disk quotas need a btrfs with simple quotas there",
                dir.display()
            )));
        }
        let mode = std::fs::read_to_string(self.qgroups(dir)?.join("mode")).unwrap_or_default();
        match mode.trim() {
            "squota" => {}
            "" => {
                return Err(unsupported(format!(
                    "quotas are not enabled on the btrfs holding {} (enable simple quotas, \
                     kernel 6.7 or later: scripts/lib.sh quota_fs_up shows how)",
                    dir.display()
                )));
            }
            other => {
                return Err(unsupported(format!(
                    "the btrfs holding {} has {other} quotas, not simple quotas: a subvolume a \
                     tenant creates inside its own would escape its limit",
                    dir.display()
                )));
            }
        }
        let version = self.run(&["--version"], None)?;
        Ok(format!(
            "btrfs simple quotas under {} ({})",
            dir.display(),
            version.trim()
        ))
    }

    fn create(&self, path: &Path, limit_bytes: u64) -> Result<(), QuotaError> {
        if !path.exists() {
            self.run(&["subvolume", "create"], Some(path))?;
        }
        let Some(id) = self.subvolume_id(path)? else {
            return Err(unsupported(format!(
                "{} is a plain directory, not a quota-limited subvolume (made before quotas?)",
                path.display()
            )));
        };
        let group = format!("1/{id}");
        if !self.qgroups(path)?.join(format!("1_{id}")).exists() {
            self.run(&["qgroup", "create", &group], Some(path))?;
            let member = format!("0/{id}");
            let args = ["qgroup", "assign", "--no-rescan", &member, &group];
            self.run(&args, Some(path))?;
        }
        let limit = limit_bytes.to_string();
        self.run(&["qgroup", "limit", &limit, &group], Some(path))?;
        Ok(())
    }

    fn usage(&self, path: &Path) -> Result<Option<DiskUsage>, QuotaError> {
        let Some(id) = self.subvolume_id(path)? else {
            return Ok(None);
        };
        let holder = path.parent().unwrap_or(path).to_owned();
        let known = self.groups.lock().unwrap().get(&holder).cloned();
        let qgroups = match known {
            Some(q) => q,
            None => {
                let q = self.qgroups(path)?;
                self.groups
                    .lock()
                    .unwrap()
                    .insert(holder.clone(), q.clone());
                q
            }
        };
        let group = qgroups.join(format!("1_{id}"));
        let read = || -> Result<DiskUsage, QuotaError> {
            Ok(DiskUsage {
                used_bytes: read_u64(&group.join("referenced"))?,
                limit_bytes: read_u64(&group.join("max_referenced"))?,
            })
        };
        read().map(Some).inspect_err(|_| {
            // Looked up again at the next reading (a filesystem mounted
            // anew there, a volume made again).
            self.groups.lock().unwrap().remove(&holder);
            self.ids.lock().unwrap().remove(path);
        })
    }

    fn remove(&self, path: &Path) -> Result<(), QuotaError> {
        if !path.exists() {
            return Ok(());
        }
        match self.subvolume_id(path)? {
            Some(id) => self.delete_tree(path, id),
            None => remove_tree(path),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_subvolumes_are_deleted_deepest_first() {
        let list = "ID 256 gen 9 parent 5 top level 5 path a\n\
                    ID 257 gen 9 parent 256 top level 256 path a/x\n\
                    ID 258 gen 9 parent 257 top level 257 path a/x/y\n\
                    ID 259 gen 9 parent 256 top level 256 path a/z\n\
                    ID 260 gen 9 parent 5 top level 5 path b\n";
        let parents = parse_list(list);
        assert_eq!(parents.len(), 5);
        assert_eq!(delete_order(&parents, 256), vec![258, 257, 259, 256]);
        assert_eq!(delete_order(&parents, 260), vec![260]);
    }

    #[test]
    fn a_plain_directory_is_refused_and_no_subvolume() {
        let dir = tempfile::tempdir().unwrap();
        let quota = BtrfsQuota::default();
        assert_eq!(quota.subvolume_id(dir.path()).unwrap(), None);
        let e = quota.check(dir.path()).unwrap_err();
        assert!(e.to_string().contains("is not on btrfs"), "{e}");
    }
}
