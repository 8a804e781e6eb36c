//! The real disk quota on the segments' btrfs (`quota_fs_up` in
//! scripts/lib.sh), without libvirt: a volume's limit holds for every
//! directory in it and for a subvolume its owner creates inside (the escape
//! full qgroups leave open), its use reads back, and removal leaves no
//! subvolume and no qgroup behind over repeated cycles, and parallel
//! removals all succeed.

mod common;

use common::real::{TEST_ROOT, require_environment};
use segment_agent::quota::{DiskQuota, DiskUsage, btrfs::BtrfsQuota};
use std::{
    path::{Path, PathBuf},
    process::Command,
};

const MIB: u64 = 1 << 20;
/// A segment's root: an unprivileged host uid, as in a real segment.
const OWNER: &str = "3100000";

/// A scratch directory on the btrfs, removed (with its volumes) on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        require_environment();
        let dir = Path::new(TEST_ROOT).join(format!("quota-{name}"));
        let quota = BtrfsQuota::default();
        let _ = quota.remove(&dir.join("vol"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = BtrfsQuota::default().remove(&self.0.join("vol"));
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `script` in sh as the segment's host uid; its stdout and stderr.
fn as_owner(script: &str) -> (bool, String) {
    let out = Command::new("setpriv")
        .args(["--reuid", OWNER, "--regid", OWNER, "--clear-groups"])
        .args(["sh", "-c", script])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// The qgroups of the btrfs holding `dir`, as sysfs lists them.
fn qgroups(dir: &Path) -> Vec<String> {
    let uuid = Command::new("findmnt")
        .args(["-n", "-o", "UUID", "-T"])
        .arg(dir)
        .output()
        .unwrap();
    let uuid = String::from_utf8(uuid.stdout).unwrap();
    let sys = Path::new("/sys/fs/btrfs").join(uuid.trim()).join("qgroups");
    let mut names: Vec<String> = std::fs::read_dir(sys)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("0_") || n.starts_with("1_"))
        .collect();
    names.sort();
    names
}

fn sync() {
    assert!(Command::new("sync").status().unwrap().success());
}

#[test]
fn the_limit_holds_across_directories_and_nested_subvolumes() {
    let scratch = Scratch::new("limit");
    let (quota, vol) = (BtrfsQuota::default(), scratch.0.join("vol"));
    quota.create(&vol, 64 * MIB).unwrap();
    quota.create(&vol, 64 * MIB).unwrap();
    for d in ["upper", "docker", "data"] {
        std::fs::create_dir(vol.join(d)).unwrap();
    }
    let chown = Command::new("chown").args(["-R", OWNER]).arg(&vol).status();
    assert!(chown.unwrap().success());
    // The owner nests a subvolume in its data area (any user may) and
    // fills it: it counts against the same limit.
    let v = vol.display();
    let (ok, out) = as_owner(&format!("btrfs subvolume create {v}/data/nested"));
    assert!(ok, "{out}");
    let (ok, out) = as_owner(&format!(
        "dd if=/dev/zero of={v}/data/nested/f bs=1M count=40 conv=fsync 2>&1"
    ));
    assert!(ok, "{out}");
    let (ok, out) = as_owner(&format!(
        "dd if=/dev/zero of={v}/docker/g bs=1M count=40 conv=fsync 2>&1"
    ));
    assert!(!ok && out.contains("Disk quota exceeded"), "{out}");
    let (ok, out) = as_owner(&format!("echo x > {v}/upper/h && sync"));
    assert!(!ok && out.contains("Disk quota exceeded"), "{out}");
    sync();
    let DiskUsage {
        used_bytes,
        limit_bytes,
    } = quota.usage(&vol).unwrap().expect("a volume");
    assert_eq!(limit_bytes, 64 * MIB);
    assert!(
        (60 * MIB..=64 * MIB).contains(&used_bytes),
        "used {used_bytes}"
    );
    // The host (and so every other volume) still writes beside it.
    std::fs::write(scratch.0.join("host-file"), vec![0u8; 8 << 20]).unwrap();
    // Raising the limit lets the owner write again.
    quota.create(&vol, 128 * MIB).unwrap();
    let (ok, out) = as_owner(&format!("echo x > {v}/upper/h && sync"));
    assert!(ok, "{out}");
}

/// The subvolume id of a volume.
fn rootid(path: &Path) -> String {
    let out = Command::new("btrfs")
        .args(["inspect-internal", "rootid"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn removal_leaves_no_subvolume_or_qgroup_over_cycles() {
    let scratch = Scratch::new("cycles");
    let (quota, vol) = (BtrfsQuota::default(), scratch.0.join("vol"));
    let mut made = Vec::new();
    for round in 0..5 {
        quota.create(&vol, 16 * MIB).unwrap();
        std::fs::create_dir_all(vol.join("data")).unwrap();
        let nested = vol.join("data/nested");
        let sub = Command::new("btrfs")
            .args(["subvolume", "create"])
            .arg(&nested)
            .output()
            .unwrap();
        assert!(sub.status.success(), "{sub:?}");
        made.extend([rootid(&vol), rootid(&nested)]);
        // A full volume must still be removable.
        let _ = std::fs::write(nested.join("fill"), vec![0u8; 32 << 20]);
        sync();
        quota.remove(&vol).unwrap();
        quota.remove(&vol).unwrap();
        assert!(!vol.exists(), "round {round}");
    }
    // Level-1 groups go at once; level-0 ones once btrfs drops the
    // deleted subvolumes (`subvolume sync` waits for that).
    let left = |level: &str| {
        let names = qgroups(&scratch.0);
        made.iter()
            .map(|id| format!("{level}_{id}"))
            .filter(|q| names.contains(q))
            .collect::<Vec<_>>()
    };
    assert_eq!(left("1"), Vec::<String>::new());
    let synced = Command::new("btrfs")
        .args(["subvolume", "sync"])
        .arg(&scratch.0)
        .status();
    assert!(synced.unwrap().success());
    // (btrfs removes a dropped subvolume's qgroup at a later commit.)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !left("0").is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(left("0"), Vec::<String>::new());
}

#[test]
fn check_refuses_a_directory_off_btrfs() {
    let dir = tempfile::tempdir_in("/var/lib").unwrap();
    let e = BtrfsQuota::default().check(dir.path()).unwrap_err();
    assert!(e.to_string().contains("is not on btrfs"), "{e}");
    assert!(BtrfsQuota::default().check(Path::new(TEST_ROOT)).is_ok());
}

/// A scheduler deletes segments in parallel: each removal's sweep of
/// leftover groups may destroy a group another removal is about to destroy
/// itself; every removal must still succeed and leave nothing.
#[test]
fn concurrent_removals_all_succeed_and_leave_no_group() {
    let scratch = Scratch::new("parallel");
    let quota = std::sync::Arc::new(BtrfsQuota::default());
    for round in 0..3 {
        let vols: Vec<PathBuf> = (0..6).map(|i| scratch.0.join(format!("v{i}"))).collect();
        let mut ids = Vec::new();
        for v in &vols {
            quota.create(v, 16 * MIB).unwrap();
            ids.push(rootid(v));
        }
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(vols.len()));
        let results: Vec<_> = vols
            .iter()
            .map(|v| {
                let (quota, barrier, v) = (quota.clone(), barrier.clone(), v.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    quota.remove(&v)
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        for (v, r) in vols.iter().zip(&results) {
            assert!(r.is_ok(), "round {round}: removing {}: {r:?}", v.display());
            assert!(!v.exists());
        }
        let names = qgroups(&scratch.0);
        let left: Vec<_> = ids
            .iter()
            .map(|id| format!("1_{id}"))
            .filter(|q| names.contains(q))
            .collect();
        assert_eq!(left, Vec::<String>::new(), "round {round}");
    }
}

/// A create cut off (agent killed) after its subvolume and before its
/// qgroup leaves a bare subvolume: removing it, as the restarted agent's
/// sweep does, must succeed (it failed on lifting the missing group's limit
/// and left the orphan directory).
#[test]
fn a_create_cut_off_after_its_subvolume_is_removable() {
    let scratch = Scratch::new("cut");
    let (quota, vol) = (BtrfsQuota::default(), scratch.0.join("vol"));
    let made = Command::new("btrfs")
        .args(["subvolume", "create"])
        .arg(&vol)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let id = rootid(&vol);
    assert!(!qgroups(&scratch.0).contains(&format!("1_{id}")));
    quota.remove(&vol).unwrap();
    assert!(!vol.exists());
    // Cut after the group was made but before the limit: removable too.
    quota.create(&vol, 16 * MIB).unwrap();
    let id = rootid(&vol);
    let lifted = Command::new("btrfs")
        .args(["qgroup", "limit", "none", &format!("1/{id}")])
        .arg(&vol)
        .status()
        .unwrap();
    assert!(lifted.success());
    quota.remove(&vol).unwrap();
    assert!(!vol.exists());
    assert!(!qgroups(&scratch.0).contains(&format!("1_{id}")));
}
