//! The segment itself as the boundary: its root is an unprivileged host uid
//! (user namespace), it sees and can create only its own cgroup subtree
//! (cgroup namespace, delegation of the containers' cgroup alone), Docker's
//! own state is out of the customer's binds, and a full memory or shm
//! cannot take the management daemons down.
//!
//! Addresses: 203.0.113.150-203.0.113.169.

use super::common::{
    docker::{DockerCli, TestCa, docker_segment},
    real::{cgroup_dir, init_pid},
};
use std::{process::Command, time::Duration};

/// The host uid (real, effective) a process runs as.
fn host_uid(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

/// The segment's supervisor: the only child of its init (tini).
pub(super) fn supervisor_pid(domain: &str) -> u32 {
    let init = init_pid(domain).expect("segment init");
    let children = std::fs::read_to_string(format!("/proc/{init}/task/{init}/children")).unwrap();
    children.split_whitespace().next().unwrap().parse().unwrap()
}

/// Runs `script` with busybox sh as the segment's root: in every namespace
/// of the segment's supervisor (user, mount, pid, net, ipc, uts, cgroup),
/// uid 0 there with all its capabilities. What a customer who reached
/// segment root (say, through a replaced runc) could do.
pub(super) fn as_segment_root(domain: &str, script: &str) -> String {
    let pid = supervisor_pid(domain).to_string();
    let out = Command::new("nsenter")
        .args(["-t", &pid, "-U", "-m", "-p", "-n", "-i", "-u", "-C", "--"])
        .args(["/usr/bin/busybox", "sh", "-c", script])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// Each line `try NAME CMD...` prints `ALLOWED NAME` or `DENIED NAME`.
const ATTACKS: &str = r#"
try() { n=$1; shift; if "$@" >/dev/null 2>&1; then echo "ALLOWED $n"; else echo "DENIED $n"; fi; }
id -u | grep -qx 0 && echo "IS-ROOT-INSIDE"
try write-release-agent sh -c 'echo /tmp/x > /sys/fs/cgroup/memory/release_agent'
try write-devices-allow sh -c 'echo "a *:* rwm" > /sys/fs/cgroup/devices/devices.allow'
try raise-memory-cap sh -c 'echo 109951162777600 > /sys/fs/cgroup/memory/memory.limit_in_bytes'
try raise-containers-cap sh -c 'echo 109951162777600 > /sys/fs/cgroup/memory/docker/memory.limit_in_bytes'
try raise-pids-max sh -c 'echo max > /sys/fs/cgroup/pids/pids.max'
try cgroup-beside-containers mkdir /sys/fs/cgroup/memory/escape
try see-host-cgroups sh -c 'ls /sys/fs/cgroup/memory | grep -qx machine'
try remount-cgroups-to-host sh -c 'mkdir -p /tmp/cg && mount -t cgroup -o memory cgroup /tmp/cg && ls /tmp/cg | grep -qx machine'
try new-cgroupns-to-host sh -c 'unshare -C sh -c "mkdir -p /tmp/cg2 && mount -t cgroup -o memory cgroup /tmp/cg2 && ls /tmp/cg2 | grep -qx machine"'
try mknod-block-device mknod /tmp/vda b 254 0
try sysrq sh -c 'echo h > /proc/sysrq-trigger'
try core-pattern sh -c 'echo "|/tmp/x" > /proc/sys/kernel/core_pattern'
try modprobe-path sh -c 'echo /tmp/x > /proc/sys/kernel/modprobe'
try set-host-clock sh -c 'date -s 2030-01-01 >/dev/null 2>&1; [ "$(date +%Y)" = 2030 ]'
try read-proc-kcore head -c1 /proc/kcore
try raw-io-port sh -c 'head -c1 /dev/port'
try write-daemon-json sh -c 'echo {} > /etc/docker/daemon.json'
try add-file-to-etc-docker sh -c 'echo x > /etc/docker/extra'
try replace-server-cert sh -c 'cp /etc/docker/ca.pem /etc/docker/server-cert.pem'
"#;

#[tokio::test]
async fn segment_root_is_an_unprivileged_host_uid_confined_to_its_cgroups() {
    let ca = TestCa::new("cluster-tboot");
    let (agent, s) = docker_segment("tuid", "203.0.113.150-203.0.113.151", &ca, 1024).await;
    let init = init_pid("seg-tuid-a").expect("segment init");
    let root = host_uid(init);
    assert!(
        root >= 1_000_000,
        "segment root is host uid {root}\n{}",
        agent.log()
    );
    let supervisor = supervisor_pid("seg-tuid-a");
    assert_eq!(
        host_uid(supervisor),
        root,
        "the supervisor runs as segment root"
    );
    let map = std::fs::read_to_string(format!("/proc/{init}/uid_map")).unwrap();
    assert_eq!(
        map.split_whitespace().collect::<Vec<_>>(),
        ["0", &root.to_string(), "65536"]
    );

    // A container's root is the segment's: unprivileged on the host.
    let cli = DockerCli::of(&s.public_ipv4, &ca);
    cli.import_busybox();
    let view = cli.ok(&[
        "run",
        "--rm",
        "busybox",
        "sh",
        "-c",
        "cat /proc/self/cgroup; echo --; ls /sys/fs/cgroup/memory",
    ]);
    assert!(
        !view.contains("machine"),
        "a container sees only the segment's subtree:\n{view}"
    );
    assert!(
        view.lines().any(|l| l.contains(":memory:/docker/")),
        "{view}"
    );
    cli.ok(&["run", "-d", "--name", "sleeper", "busybox", "sleep", "300"]);
    let pid: u32 = cli.inspect("{{.State.Pid}}", "sleeper").parse().unwrap();
    // `State.Pid` is in the segment's pid namespace; find the host PID by
    // the container's cgroup on the host.
    let mem = cgroup_dir("memory", "seg-tuid-a").unwrap();
    let id = cli.inspect("{{.Id}}", "sleeper");
    let procs = std::fs::read_to_string(mem.join("docker").join(&id).join("cgroup.procs"))
        .unwrap_or_else(|e| panic!("the container's cgroup is under the segment's docker/: {e}"));
    let host_pid: u32 = procs.lines().next().unwrap().parse().unwrap();
    assert!(pid > 0);
    assert_eq!(
        host_uid(host_pid),
        root,
        "container root is the segment's root"
    );

    let out = as_segment_root("seg-tuid-a", ATTACKS);
    assert!(out.contains("IS-ROOT-INSIDE"), "{out}");
    let allowed: Vec<&str> = out.lines().filter(|l| l.starts_with("ALLOWED")).collect();
    let denied = out.lines().filter(|l| l.starts_with("DENIED")).count();
    assert!(allowed.is_empty(), "segment root got through:\n{out}");
    assert_eq!(denied, ATTACKS.matches("\ntry ").count(), "{out}");
    // The caps stand as libvirt and the agent set them.
    assert_eq!(
        std::fs::read_to_string(mem.join("memory.limit_in_bytes"))
            .unwrap()
            .trim(),
        (1024u64 << 20).to_string()
    );
    let pids = cgroup_dir("pids", "seg-tuid-a").expect("the segment has a pids cgroup");
    assert_eq!(
        std::fs::read_to_string(pids.join("pids.max"))
            .unwrap()
            .trim(),
        "4096"
    );
}

#[tokio::test]
async fn a_full_memory_or_shm_never_takes_the_management_daemons() {
    let ca = TestCa::new("cluster-tshm");
    let (agent, s) = docker_segment("tshm", "203.0.113.152-203.0.113.153", &ca, 512).await;
    let cli = DockerCli::of(&s.public_ipv4, &ca);
    cli.import_busybox();
    let dockerd = || {
        let out = as_segment_root("seg-tshm-a", "pidof dockerd containerd segment-authz");
        out.trim().to_owned()
    };
    let before = dockerd();
    // dockerd, containerd, and segment-authz twice: the policy plugin and
    // the TLS front.
    assert_eq!(
        before.split_whitespace().count(),
        4,
        "{before}\n{}",
        agent.log()
    );
    // tmpfs pages belong to no process: fill /dev/shm past the segment's
    // memory, then a hog on top. The kernel must end it in the containers'
    // cgroup.
    let out = cli.run(&[
        "run",
        "--rm",
        "--shm-size",
        "1g",
        "busybox",
        "sh",
        "-c",
        "dd if=/dev/zero of=/dev/shm/f bs=1M count=900; /hog 200",
    ]);
    assert!(
        !out.success,
        "filling 900 MiB of shm in a 512 MiB segment must fail: {out:?}"
    );
    let out = cli.run(&["run", "--rm", "busybox", "/hog", "900"]);
    assert_eq!(out.code, Some(137), "{out:?}");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        dockerd(),
        before,
        "containerd, dockerd and the plugin kept running"
    );
    assert_eq!(
        cli.ok(&["run", "--rm", "busybox", "echo", "alive"]),
        "alive"
    );
}

#[tokio::test]
async fn dockers_own_state_is_out_of_the_customers_binds() {
    let ca = TestCa::new("cluster-tstate");
    let (_agent, s) = docker_segment("tstate", "203.0.113.154-203.0.113.155", &ca, 1024).await;
    let cli = DockerCli::of(&s.public_ipv4, &ca);
    cli.import_busybox();
    cli.ok(&["create", "--name", "victim", "busybox", "true"]);
    let id = cli.inspect("{{.Id}}", "victim");
    // The whole allowed area, as deep as the customer can look.
    let listing = cli.ok(&[
        "run",
        "--rm",
        "-v",
        "/var/lib/docker:/d",
        "busybox",
        "sh",
        "-c",
        "find /d; echo done",
    ]);
    assert!(listing.ends_with("done"), "{listing}");
    for state in [
        "containers",
        "image",
        "overlay2",
        "volumes",
        "containerd",
        &id,
    ] {
        assert!(
            !listing.contains(state),
            "{state} is in the customer area:\n{listing}"
        );
    }
    // The attack of the issue: a bind of a path that does not exist yet,
    // a symlink to / planted there later, then the start.
    cli.ok(&[
        "create",
        "--name",
        "esc",
        "-v",
        "/var/lib/docker/x/esc:/h",
        "busybox",
        "ls",
        "/h/etc/docker",
    ]);
    cli.ok(&[
        "run",
        "--rm",
        "-v",
        "/var/lib/docker/x:/x",
        "busybox",
        "sh",
        "-c",
        "rm -rf /x/esc; ln -s / /x/esc",
    ]);
    let out = cli.run(&["start", "-a", "esc"]);
    assert!(
        !out.stdout.contains("daemon.json"),
        "the bind followed the symlink: {out:?}"
    );
    assert!(!out.success, "{out:?}");
    // Allowed binds still work.
    cli.ok(&[
        "run",
        "--rm",
        "-v",
        "/var/lib/docker/x:/x",
        "busybox",
        "sh",
        "-c",
        "echo hi > /x/f",
    ]);
    assert_eq!(
        cli.ok(&[
            "run",
            "--rm",
            "-v",
            "/var/lib/docker/x:/x",
            "busybox",
            "cat",
            "/x/f"
        ]),
        "hi"
    );
}

/// The plugin sees no request when dockerd restarts a container by its
/// restart policy: only the kernel stands between a symlink planted in the
/// data area and that mount. The customer area is `nosymfollow` inside the
/// segment too, so the restarted bind never follows it.
#[tokio::test]
async fn a_restart_policy_mount_never_follows_a_planted_symlink() {
    let ca = TestCa::new("cluster-trst");
    let (_agent, s) = docker_segment("trst", "203.0.113.156-203.0.113.157", &ca, 1024).await;
    let cli = DockerCli::of(&s.public_ipv4, &ca);
    cli.import_busybox();
    // Each run lists what its bind shows, then exits 1: dockerd restarts it
    // by itself, mounting the bind again with no API request at all.
    cli.ok(&[
        "run",
        "-d",
        "--name",
        "looper",
        "--restart",
        "always",
        "-v",
        "/var/lib/docker/r/esc:/h",
        "busybox",
        "sh",
        "-c",
        "ls /h/etc/docker; sleep 1; exit 1",
    ]);
    // Replace the (dockerd-made) directory with a symlink to the segment's /.
    cli.ok(&[
        "run",
        "--rm",
        "-v",
        "/var/lib/docker/r:/r",
        "busybox",
        "sh",
        "-c",
        "rm -rf /r/esc && ln -s / /r/esc && ls -l /r/esc",
    ]);
    // Several restart attempts later (1 s runs, dockerd's backoff from 100 ms).
    std::thread::sleep(Duration::from_secs(8));
    let logs = cli.run(&["logs", "looper"]);
    assert!(
        !logs.stdout.contains("daemon.json") && !logs.stderr.contains("daemon.json"),
        "a restart followed the planted symlink into the segment's /etc/docker: {logs:?}"
    );
    let state = cli.inspect("{{.RestartCount}} {{.State.Error}}", "looper");
    let restarts: u32 = state.split_whitespace().next().unwrap().parse().unwrap();
    assert!(restarts >= 1, "dockerd did restart it: {state}");
}
