//! The segment's dockerd hardened by the CIS Docker Benchmark (the checks
//! that apply to a segment; the README's "The CIS Docker Benchmark" says
//! which do not, and why). Each check attempted for real: a setuid binary
//! run by a non-root user in a container (2.14), containers on the default
//! bridge talking to each other (2.2), published ports without docker-proxy
//! (2.16), a container writing far more log than the bound (log-opts, and
//! the policy's SEGMENT-1026 for larger ones), the
//! management files' modes and owners as the benchmark reads them (section
//! 3), also after a rebuild; the supervisor rotating the daemons' logs.
//!
//! Addresses: 203.0.113.141-203.0.113.149.

use super::boundary::as_segment_root;
use super::common::{
    docker::{DockerCli, TestCa, assert_refused, docker_segment},
    real::in_sandbox,
};
use segment_agent::proto::agent::{RebuildSegmentRequest, SegmentState};
use std::time::{Duration, Instant};

/// What `/suid-id` (setuid root) prints when run as uid 1000 and the
/// setuid bit gained nothing.
const NO_GAIN: &str = "ruid=1000 euid=1000";

/// Builds `dockerfile` (classic, then BuildKit with the 20.10 CLI) and
/// returns what each image's `/w/o` holds.
fn build_outputs(cli: &DockerCli, dockerfile: &str) -> [String; 2] {
    let ctx = cli.dir().join("ctx-nnp");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
    let ctx = ctx.to_str().unwrap();
    cli.ok(&["build", "-q", "-t", "nnp-classic", ctx]);
    let kit = [
        ("PATH", "/usr/bin:/bin:/usr/sbin:/sbin"),
        ("DOCKER_BUILDKIT", "1"),
    ];
    let out = cli.run_env(&kit, &["build", "-q", "-t", "nnp-kit", ctx]);
    assert!(out.success, "DOCKER_BUILDKIT=1 docker build: {out:?}");
    ["nnp-classic", "nnp-kit"].map(|img| cli.ok(&["run", "--rm", img, "cat", "/w/o"]))
}

#[tokio::test]
async fn no_container_gains_privileges_through_setuid() {
    let ca = TestCa::new("cluster-hnnp");
    let (_agent, s) = docker_segment("hnnp", "203.0.113.141-203.0.113.142", &ca, 1024).await;
    let cli = DockerCli::of(&s.public_ipv4, &ca);
    cli.import_busybox();
    // The binary is setuid root in the image: without no-new-privileges,
    // uid 1000 running it gets euid 0.
    assert_eq!(
        cli.ok(&["run", "--rm", "busybox", "stat", "-c", "%a:%u", "/suid-id"]),
        "4755:0"
    );
    let status = cli.ok(&[
        "run",
        "--rm",
        "busybox",
        "grep",
        "NoNewPrivs",
        "/proc/self/status",
    ]);
    assert_eq!(
        status.split_whitespace().collect::<Vec<_>>(),
        ["NoNewPrivs:", "1"]
    );
    let run = cli.ok(&["run", "--rm", "--user", "1000:1000", "busybox", "/suid-id"]);
    assert_eq!(run, NO_GAIN, "docker run");
    cli.ok(&["run", "-d", "--name", "nnp-c", "busybox", "sleep", "300"]);
    let exec = cli.ok(&["exec", "--user", "1000:1000", "nnp-c", "/suid-id"]);
    assert_eq!(exec, NO_GAIN, "docker exec");
    // Builds' RUN steps are containers too: classic ones get it from
    // dockerd, BuildKit's (which dockerd 20.10 does not give it) from the
    // image's runc wrapper (scripts/image-files/runc).
    let built = build_outputs(
        &cli,
        "FROM busybox\nRUN mkdir -m 1777 /w\nUSER 1000:1000\nRUN /suid-id > /w/o\n",
    );
    assert_eq!(built, [NO_GAIN, NO_GAIN], "classic and BuildKit RUN steps");
    // Nor an exemption from the OOM killer: the segment's processes inherit
    // -1000 from its init; RUN steps of both builders, containers and exec'd
    // processes run at 0 (the runc wrapper gives BuildKit's, which name no
    // value, 0 too), so a step stuck at its memory limit is killed.
    let adj = build_outputs(
        &cli,
        "FROM busybox\nRUN mkdir -m 1777 /w\nRUN cat /proc/self/oom_score_adj > /w/o\n",
    );
    assert_eq!(
        adj,
        ["0", "0"],
        "oom_score_adj of classic and BuildKit RUN steps"
    );
    assert_eq!(
        cli.ok(&["exec", "nnp-c", "cat", "/proc/self/oom_score_adj"]),
        "0",
        "docker exec"
    );
    // The per-container opt-out is refused, in every spelling dockerd reads.
    for opt in [
        "no-new-privileges=false",
        "no-new-privileges:false",
        "no-new-privileges=0",
    ] {
        let err = cli.fails(&["run", "--rm", "--security-opt", opt, "busybox", "true"]);
        assert_refused(&err, "SEGMENT-1004", opt);
    }
}

/// An HTTP GET of `/` at `addr` (`IP:PORT`) from a container with `args`
/// (network options), giving up after 3 s (busybox 1.35's `wget -T`
/// crashes, so `nc -w`): whether the server's page came back.
fn fetches(cli: &DockerCli, args: &[&str], addr: &str) -> bool {
    let (host, port) = addr.rsplit_once(':').unwrap();
    let get = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {host} {port}");
    let mut cmd = vec!["run", "--rm"];
    cmd.extend_from_slice(args);
    cmd.extend_from_slice(&["busybox", "sh", "-c", &get]);
    let out = cli.run(&cmd);
    out.stdout.contains("hello-srv")
}

/// Polls `url` from the sandbox until the test server's page comes back.
fn wait_for_page(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let curl = || in_sandbox(&["curl", "-s", "-m", "3", url]);
    while !String::from_utf8_lossy(&curl().stdout).contains("hello-srv") {
        assert!(Instant::now() < deadline, "{url} never answered");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The sizes of a container's `json-file` logs (`-json.log` and its
/// rotated `.1`, `.2`...) in dockerd's data root on the host.
fn json_log_sizes(dir: &std::path::Path) -> Vec<u64> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("-json.log"))
        .map(|e| e.metadata().unwrap().len())
        .collect()
}

#[tokio::test]
async fn containers_on_the_default_bridge_are_apart_and_ports_need_no_proxy() {
    let ca = TestCa::new("cluster-hicc");
    let (_agent, s) = docker_segment("hicc", "203.0.113.143-203.0.113.144", &ca, 1024).await;
    let ip = s.public_ipv4.clone();
    let cli = DockerCli::of(&ip, &ca);
    cli.import_busybox();
    let serve = "echo hello-srv > /tmp/index.html && exec httpd -f -p 8080 -h /tmp";
    cli.ok(&[
        "run",
        "-d",
        "--name",
        "srv",
        "-p",
        "8081:8080",
        "busybox",
        "sh",
        "-c",
        serve,
    ]);
    let srv_ip = cli.inspect("{{.NetworkSettings.IPAddress}}", "srv");
    wait_for_page(&format!("http://{ip}:8081/"));
    // CIS 2.2: the server answers, but not to its neighbour on docker0.
    let direct = format!("{srv_ip}:8080");
    assert!(
        !fetches(&cli, &[], &direct),
        "icc: a neighbour reached {direct}"
    );
    // ...while on a network the customer made, it does (so the refusal
    // above is the default bridge's, not a dead server).
    cli.ok(&["network", "create", "n1"]);
    cli.ok(&["network", "connect", "n1", "srv"]);
    let n1_ip = cli.inspect(
        "{{(index .NetworkSettings.Networks \"n1\").IPAddress}}",
        "srv",
    );
    assert!(
        fetches(&cli, &["--net", "n1"], &format!("{n1_ip}:8080")),
        "on n1"
    );
    // CIS 2.16: the published port works from outside (above) and from the
    // segment's own loopback (a --net host container) with no docker-proxy.
    assert!(
        fetches(&cli, &["--net", "host"], "127.0.0.1:8081"),
        "published port on the segment's 127.0.0.1"
    );
    let procs = as_segment_root(
        "seg-hicc-a",
        "for p in /proc/[0-9]*; do cat $p/comm; done 2>/dev/null | sort | uniq",
    );
    assert!(procs.lines().any(|l| l == "dockerd"), "{procs}");
    assert!(
        !procs.lines().any(|l| l == "docker-proxy"),
        "a userland proxy runs:\n{procs}"
    );
}

#[tokio::test]
async fn a_chatty_container_cannot_fill_the_disk_with_its_log() {
    let ca = TestCa::new("cluster-hlog");
    let (agent, s) = docker_segment("hlog", "203.0.113.145-203.0.113.146", &ca, 1024).await;
    let cli = DockerCli::of(&s.public_ipv4, &ca);
    cli.import_busybox();
    // ~40 MB of output, ~100 MB of json-file log: far past 3 x 10 MiB.
    let chat = "yes 0123456789012345678901234567890123456789 | head -c 40000000";
    cli.ok(&["run", "-d", "--name", "chatty", "busybox", "sh", "-c", chat]);
    assert_eq!(cli.ok(&["wait", "chatty"]), "0");
    let id = cli.inspect("{{.Id}}", "chatty");
    let dir = agent
        .segment_dir("hlog-a")
        .join("docker/containers")
        .join(&id);
    let logs = json_log_sizes(&dir);
    assert_eq!(logs.len(), 3, "rotated into max-file files: {logs:?}");
    let bound = 10 << 20;
    assert!(
        logs.iter().all(|&n| n <= bound + 4096),
        "a log file past max-size: {logs:?}"
    );
    assert!(
        cli.ok(&["logs", "--tail", "1", "chatty"])
            .starts_with("0123456789"),
        "docker logs still works"
    );
    // Asking for an unbounded log is refused; a bounded choice is not.
    for opt in ["max-size=1g", "max-file=1000", "max-size=-1"] {
        let err = cli.fails(&["run", "--rm", "--log-opt", opt, "busybox", "true"]);
        assert_refused(&err, "SEGMENT-1026", opt);
    }
    let local = ["--log-driver", "local", "--log-opt", "max-size=5g"];
    let err = cli.fails(&[&["run", "--rm"][..], &local, &["busybox", "true"]].concat());
    assert_refused(&err, "SEGMENT-1026", "local max-size=5g");
    let bounded = ["--log-opt", "max-size=50m", "--log-opt", "max-file=5"];
    cli.ok(&[&["run", "--rm"][..], &bounded, &["busybox", "true"]].concat());
}

/// `/etc/docker` and the sockets as the benchmark's section 3 reads them.
const MODES: &str = "stat -c '%n %a %u:%g' /etc/docker /etc/docker/ca.pem /etc/docker/server-cert.pem \
     /etc/docker/server-key.pem /etc/docker/daemon.json /run/docker.sock /run/containerd/containerd.sock";

/// The modes and owners the benchmark wants (3.6, 3.10, 3.12, 3.13, 3.14,
/// 3.15, 3.16, 3.18, 3.23, 3.24). The owner of `/etc/docker` and of the
/// files other than the key is host root (65534 inside, unmapped), not the
/// segment's root: stricter than the benchmark's root:root (3.5, 3.9, 3.11,
/// 3.17), because segment root can remount the read-only bind read-write.
const WANTED: [&str; 7] = [
    "/etc/docker 755 65534:65534",
    "/etc/docker/ca.pem 444 65534:65534",
    "/etc/docker/server-cert.pem 444 65534:65534",
    "/etc/docker/server-key.pem 400 0:0",
    "/etc/docker/daemon.json 444 65534:65534",
    "/run/docker.sock 660 0:999",
    "/run/containerd/containerd.sock 660 0:0",
];

#[tokio::test]
async fn management_files_keep_the_benchmark_modes_across_a_rebuild() {
    let ca = TestCa::new("cluster-hmod");
    let (agent, s) = docker_segment("hmod", "203.0.113.147-203.0.113.148", &ca, 1024).await;
    let modes = || as_segment_root("seg-hmod-a", MODES);
    assert_eq!(modes().lines().collect::<Vec<_>>(), WANTED, "after create");
    let r = agent
        .client()
        .await
        .rebuild_segment(RebuildSegmentRequest {
            segment_id: "hmod-a".into(),
            tls: Some(ca.tls()),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.state(), SegmentState::Running, "{r:?}");
    DockerCli::of(&s.public_ipv4, &ca).wait_until_answers(Duration::from_secs(30));
    assert_eq!(modes().lines().collect::<Vec<_>>(), WANTED, "after rebuild");
    // Why the owner matters more than the read-only bind: segment root
    // remounts it read-write, and still cannot write a file of host root's.
    let out = as_segment_root(
        "seg-hmod-a",
        "mount -o remount,rw,bind /etc/docker && echo REMOUNTED; \
         echo '{}' > /etc/docker/daemon.json && echo WROTE-DAEMON-JSON; \
         echo x > /etc/docker/new && echo ADDED-FILE; \
         chmod 644 /etc/docker/server-key.pem && echo CHMOD-KEY",
    );
    for bad in ["WROTE-DAEMON-JSON", "ADDED-FILE"] {
        assert!(!out.contains(bad), "segment root wrote /etc/docker: {out}");
    }
    assert!(
        out.contains("REMOUNTED"),
        "the remount is what the owner guards against: {out}"
    );
}

#[tokio::test]
async fn the_supervisor_rotates_the_daemons_logs() {
    let ca = TestCa::new("cluster-hrot");
    let (_agent, _s) = docker_segment("hrot", "203.0.113.149-203.0.113.149", &ca, 1024).await;
    // dockerd logs at level info (CIS 2.3) into a file it appends to: grow
    // it past the 8 MiB bound as if it had logged that much.
    let size = |f: &str| {
        let out = as_segment_root("seg-hrot-a", &format!("wc -c < /var/log/segment/{f}"));
        out.trim().parse::<u64>().unwrap_or(0)
    };
    as_segment_root(
        "seg-hrot-a",
        "head -c 9437184 /dev/zero >> /var/log/segment/dockerd.log",
    );
    assert!(size("dockerd.log") > 9 << 20);
    let deadline = Instant::now() + Duration::from_secs(45);
    while size("dockerd.log") > 8 << 20 {
        assert!(
            Instant::now() < deadline,
            "dockerd.log not rotated within 45 s"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(size("dockerd.log.1") > 9 << 20, "the old log is kept once");
}
