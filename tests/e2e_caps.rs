//! The flavor's caps on real segments (real libvirtd, the segments' btrfs):
//! a bounded fork loop stops at `pids.max` while a neighbour still forks; a
//! fill stops at the disk quota while the host and a neighbour still write;
//! a transfer runs at the flavor's rate each way; the cgroup files, the
//! port's nftables limits and GetSegment read back the flavor.
//!
//! Addresses: 203.0.113.228-203.0.113.231, .246-.247, .253-.254 (.251-.252
//! are the benchmark's).

mod common;

use common::real::{NETNS, RealAgent, TEST_ROOT, cgroup_dir, in_sandbox, init_pid};
use segment_agent::proto::agent::{
    CreateSegmentRequest, DeleteSegmentRequest, Flavor, GetSegmentRequest, Segment,
};
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

const GIB: u64 = 1 << 30;
/// Lower bounds low enough for small test flavors.
const BOUNDS: &str = "[flavor]\nmin_pids = 64\nmin_disk_gib = 1\n";

fn req(id: &str, disk_gib: u32, pids: u32, network_mbit: u32) -> CreateSegmentRequest {
    CreateSegmentRequest {
        segment_id: id.into(),
        cluster_id: "c1".into(),
        flavor: Some(Flavor {
            memory_mib: 512,
            vcpus: 1,
            disk_gib,
            pids,
            network_mbit,
        }),
        ..Default::default()
    }
}

async fn create(agent: &RealAgent, r: CreateSegmentRequest) -> Segment {
    let mut c = agent.client().await;
    c.create_segment(r).await.unwrap().into_inner()
}

async fn get(agent: &RealAgent, id: &str) -> Segment {
    let mut c = agent.client().await;
    let r = GetSegmentRequest {
        segment_id: id.into(),
        ..Default::default()
    };
    c.get_segment(r).await.unwrap().into_inner()
}

fn read(path: PathBuf) -> String {
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_owned()
}

/// The v1 cgroup directories (`/sys/fs/cgroup/CONTROLLER/PATH`) of a
/// process, the way the hand-over left them.
fn cgroups_of(pid: u32) -> Vec<PathBuf> {
    let table = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    table
        .lines()
        .filter_map(|line| {
            let mut f = line.splitn(3, ':');
            let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
            let first = controllers.split(',').next()?;
            let dir = first.strip_prefix("name=").unwrap_or(first);
            (!dir.is_empty()).then(|| Path::new("/sys/fs/cgroup").join(dir).join(&path[1..]))
        })
        .collect()
}

/// Runs `script` with the segment's busybox sh as the segment's root, in
/// every namespace and every cgroup of the segment's init: what a customer's
/// process inside the segment is subject to.
fn in_segment(domain: &str, script: &str) -> (bool, String) {
    let pid = init_pid(domain).expect("segment init");
    let join: String = cgroups_of(pid)
        .iter()
        .map(|d| format!("echo $$ > {}/cgroup.procs 2>/dev/null; ", d.display()))
        .collect();
    let enter = format!("{join}exec nsenter -t {pid} -U -m -p -n -i -u -- /bin/sh -c \"$0\"");
    let out = Command::new("sh")
        .args(["-c", &enter, script])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[tokio::test]
async fn a_fork_loop_stops_at_pids_max_while_a_neighbour_still_forks() {
    let agent = RealAgent::start("pids", "203.0.113.228-203.0.113.229", BOUNDS).await;
    create(&agent, req("pids-a", 0, 100, 0)).await;
    let b = create(&agent, req("pids-b", 0, 0, 0)).await;
    assert_eq!(b.flavor.unwrap().pids, 4096);
    let dir = cgroup_dir("pids", "seg-pids-a").expect("pids cgroup");
    assert_eq!(read(dir.join("pids.max")), "100");
    let b_dir = cgroup_dir("pids", "seg-pids-b").expect("pids cgroup");
    assert_eq!(read(b_dir.join("pids.max")), "4096");
    // 300 long sleepers, bounded: the segment holds 100 tasks at most.
    // The sleepers keep no pipe open (the test reads the shell's output);
    // once the segment is full the shell cannot fork even `head`, so the
    // host counts and reads what happened.
    let loop300 = "i=0; while [ $i -lt 300 ]; do sleep 121 </dev/null >/dev/null 2>&1 & \
                   i=$((i+1)); done 2>/tmp/fork-errors";
    in_segment("seg-pids-a", loop300);
    let sleepers = sleepers_in(&dir, false);
    assert!((90..100).contains(&sleepers), "{sleepers} sleepers");
    // Full but for the loop's own shell, gone now; the kernel counted the
    // refusals.
    let current: u32 = read(dir.join("pids.current")).parse().unwrap();
    assert!((95..=100).contains(&current), "pids.current {current}");
    let events = read(dir.join("pids.events"));
    let refused: u64 = events.trim_start_matches("max ").parse().unwrap();
    assert!(refused > 0, "pids.events: {events}");
    let errors = agent.segment_dir("pids-a").join("rootfs/tmp/fork-errors");
    let errors = read(errors);
    assert!(errors.contains("can't fork"), "{errors}");
    // The neighbour and the host still fork while the first is full.
    let (ok, out) = in_segment(
        "seg-pids-b",
        "for i in $(seq 50); do sleep 121 </dev/null >/dev/null 2>&1 & done",
    );
    assert!(ok, "{out}");
    assert_eq!(sleepers_in(&b_dir, false), 50);
    assert!(Command::new("true").status().unwrap().success());
    for d in [&dir, &b_dir] {
        sleepers_in(d, true);
    }
}

/// The test's `sleep 121` processes in the cgroup `dir` and below (not the
/// init's own sleeps); killed if `kill`.
fn sleepers_in(dir: &Path, kill: bool) -> usize {
    let mut count = 0;
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        if entry.file_type().unwrap().is_dir() {
            count += sleepers_in(&entry.path(), kill);
        }
    }
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    for pid in procs.lines().filter_map(|l| l.parse::<i32>().ok()) {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if cmdline == b"sleep\x00121\x00" {
            count += 1;
            if kill {
                let pid = nix::unistd::Pid::from_raw(pid);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
    count
}

#[tokio::test]
async fn a_fill_stops_at_the_quota_while_the_host_and_a_neighbour_still_write() {
    let agent = RealAgent::start("disk", "203.0.113.230-203.0.113.231", BOUNDS).await;
    let a = create(&agent, req("disk-a", 1, 0, 0)).await;
    assert_eq!(a.disk.unwrap().limit_bytes, GIB);
    create(&agent, req("disk-b", 0, 0, 0)).await;
    // Bounded: 1200 MiB asked of a 1 GiB quota.
    let (ok, out) = in_segment(
        "seg-disk-a",
        "dd if=/dev/zero of=/fill bs=1M count=1200 2>&1; sync; ls -l /fill",
    );
    assert!(!ok || out.contains("Disk quota exceeded"), "{out}");
    assert!(out.contains("Disk quota exceeded"), "{out}");
    // What the segment wrote, in its own upper layer on the host.
    let size = std::fs::metadata(agent.segment_dir("disk-a").join("upper/fill"))
        .unwrap()
        .len();
    assert!((GIB - 64 * (1 << 20)..=GIB).contains(&size), "{size}");
    let (ok, out) = in_segment("seg-disk-a", "echo more > /more && sync");
    assert!(!ok && out.contains("Disk quota exceeded"), "{out}");
    // The neighbour and the host keep writing on the same filesystem.
    let (ok, out) = in_segment(
        "seg-disk-b",
        "dd if=/dev/zero of=/fill bs=1M count=100 2>&1 && sync",
    );
    assert!(ok, "{out}");
    let host_file = Path::new(TEST_ROOT).join("disk-host-file");
    std::fs::write(&host_file, vec![0u8; 100 << 20]).unwrap();
    std::fs::remove_file(&host_file).unwrap();
    // GetSegment reports the use against the limit.
    let disk = get(&agent, "disk-a").await.disk.unwrap();
    assert_eq!(disk.limit_bytes, GIB);
    assert!(disk.used_bytes > GIB - 64 * (1 << 20), "{disk:?}");
    let disk_b = get(&agent, "disk-b").await.disk.unwrap();
    assert_eq!(disk_b.limit_bytes, 20 * GIB);
    assert!(disk_b.used_bytes >= 100 << 20, "{disk_b:?}");
    // Delete removes the subvolume and its qgroup.
    let mut c = agent.client().await;
    let del = DeleteSegmentRequest {
        segment_id: "disk-a".into(),
    };
    c.delete_segment(del).await.unwrap();
    assert!(!agent.segment_dir("disk-a").exists());
}

/// Bytes per second of `bytes` sent from the segment `domain` to the
/// sandbox (`outward`), or from the sandbox into it: (overall, steady),
/// steady being the last two thirds (nftables' byte limit lets a second's
/// worth through at once, see the README).
fn transfer(domain: &str, address: &str, bytes: u64, outward: bool) -> (f64, f64) {
    let port = if outward { 5301 } else { 5302 };
    let script = format!(
        r#"
import socket, time
n = {bytes}; third = n // 3
if {outward}:
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("203.0.113.1", {port})); s.listen(1); s.settimeout(30)
    c, _ = s.accept(); c.settimeout(30)
    got = 0; first = None; mark = None
    while got < n:
        b = c.recv(1 << 16)
        if not b: break
        if first is None: first = time.monotonic()
        got += len(b)
        if mark is None and got >= third: mark = (got, time.monotonic())
    end = time.monotonic()
    print(got, got / (end - first), (got - mark[0]) / (end - mark[1]))
else:
    for _ in range(50):
        try:
            c = socket.socket()
            c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 17)
            c.settimeout(1); c.connect(("{address}", {port})); break
        except OSError: time.sleep(0.1)
    c.settimeout(30)
    t = time.monotonic(); c.sendall(b"\0" * third); mark = time.monotonic()
    c.sendall(b"\0" * (n - third)); c.shutdown(socket.SHUT_WR)
    while c.recv(1 << 16): pass
    end = time.monotonic()
    print(n, n / (end - t), (n - third) / (end - mark))
"#,
        outward = if outward { "True" } else { "False" },
    );
    let python = std::thread::spawn(move || {
        Command::new("nsenter")
            .arg(format!("--net={NETNS}"))
            .args(["python3", "-c", &script])
            .output()
            .unwrap()
    });
    // nc gives up at once when refused: wait until the sandbox listens.
    let filter = format!("sport = :{port}");
    for _ in 0..100 {
        let ss = in_sandbox(&["ss", "-Hltn", &filter]);
        if !outward || !ss.stdout.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let inside = match outward {
        true => format!(
            "dd if=/dev/zero bs=65536 count={} 2>/dev/null | timeout 40 nc 203.0.113.1 {port}",
            bytes / 65536
        ),
        false => format!("timeout 40 nc -l -p {port} > /dev/null"),
    };
    let (_, out) = in_segment(domain, &inside);
    let result = python.join().unwrap();
    let text = String::from_utf8_lossy(&result.stdout).into_owned();
    let fields: Vec<f64> = text
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(
        fields.len() == 3 && fields[0] as u64 == bytes,
        "transfer failed: {text} {} / inside: {out}",
        String::from_utf8_lossy(&result.stderr)
    );
    (fields[1], fields[2])
}

#[tokio::test]
async fn a_transfer_runs_at_the_flavors_rate_each_way() {
    let agent = RealAgent::start("net", "203.0.113.246-203.0.113.247", BOUNDS).await;
    let s = create(&agent, req("net-a", 0, 0, 80)).await;
    // The port's two nftables limits carry the rate (80 Mbit/s = 9765 KiB/s).
    let port = format!(
        "sg-{}",
        s.public_ipv4
            .split('.')
            .map(|o| format!("{:02x}", o.parse::<u8>().unwrap()))
            .collect::<String>()
    );
    for way in ["from", "to"] {
        let limit = format!("{port}_{way}");
        let nft = in_sandbox(&["nft", "list", "limit", "bridge", "segment_agent", &limit]);
        let nft = String::from_utf8_lossy(&nft.stdout).into_owned();
        assert!(
            nft.contains("rate over 9765 kbytes/second burst 976 kbytes"),
            "{nft}"
        );
    }
    let expected = 80e6 / 8.0;
    for outward in [true, false] {
        // 48 MiB: 5 s at 80 Mbit/s, the first 1.1 s of it a burst.
        let (overall, steady) = transfer("seg-net-a", &s.public_ipv4, 48 << 20, outward);
        let mbit = |r: f64| r * 8.0 / 1e6;
        let ratio = steady / expected;
        println!(
            "outward={outward}: steady {:.1} Mbit/s ({ratio:.2} of the flavor's 80), \
             overall {:.1} Mbit/s",
            mbit(steady),
            mbit(overall)
        );
        assert!(
            (0.8..=1.2).contains(&ratio),
            "outward={outward}: {ratio:.2}"
        );
        assert!(overall / expected < 1.5, "outward={outward}: {overall}");
    }
}

#[tokio::test]
async fn cgroup_files_read_back_the_flavor() {
    let extra = format!("{BOUNDS}[isolation]\nio_weight = 300\n");
    let agent = RealAgent::start("cgf", "203.0.113.253-203.0.113.254", &extra).await;
    create(&agent, req("cgf-a", 2, 300, 100)).await;
    let domain = "seg-cgf-a";
    let pids = cgroup_dir("pids", domain).expect("pids cgroup");
    assert_eq!(read(pids.join("pids.max")), "300");
    let memory = cgroup_dir("memory", domain).expect("memory cgroup");
    let limit = read(memory.join("memory.limit_in_bytes"));
    assert_eq!(limit, (512u64 << 20).to_string());
    // No swap beyond the memory cap (this kernel accounts swap).
    assert_eq!(read(memory.join("memory.memsw.limit_in_bytes")), limit);
    let blkio = cgroup_dir("blkio", domain).expect("blkio cgroup");
    assert_eq!(read(blkio.join("blkio.bfq.weight")), "300");
    let s = get(&agent, "cgf-a").await;
    let f = s.flavor.unwrap();
    assert_eq!((f.disk_gib, f.pids, f.network_mbit), (2, 300, 100));
    assert_eq!(s.disk.unwrap().limit_bytes, 2 * GIB);
}
