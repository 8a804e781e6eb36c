//! End-to-end metrics, logs and the systemd watchdog: the real agent binary
//! against real libvirtd, cgroups, dockerd and curl, in the sandbox
//! namespace. Addresses 203.0.113.244-.249 only.

mod common;

use common::{
    control_plane::TestControlPlane,
    docker::{DockerCli, TestCa, docker_req},
    real::{NETNS, RealAgent, cgroup_dir, in_sandbox, listen_in_sandbox},
    small_req,
};
use segment_agent::proto::agent::{DeleteSegmentRequest, SegmentState};
use std::{
    path::Path,
    time::{Duration, Instant},
};

/// Every family a scrape of a host with a Docker segment must show.
const FAMILIES: &[&str] = &[
    "segment_agent_rpcs_total",
    "segment_agent_api_connections",
    "segment_agent_rpc_duration_seconds",
    "segment_agent_create_step_duration_seconds",
    "segment_agent_recovery_duration_seconds",
    "segment_agent_recovery_segments",
    "segment_agent_reports_total",
    "segment_agent_report_last_delivered_timestamp_seconds",
    "segment_agent_start_time_seconds",
    "segment_agent_sample_ok",
    "segment_agent_sample_duration_seconds",
    "segment_agent_host_info",
    "segment_agent_segments",
    "segment_agent_host_segment_slots",
    "segment_agent_host_memory_allocatable_bytes",
    "segment_agent_host_memory_allocated_bytes",
    "segment_agent_host_addresses",
    "segment_agent_host_addresses_free",
    "segment_agent_host_libvirt_reachable",
    "segment_agent_host_apparmor_enforced",
    "segment_agent_segment_state",
    "segment_agent_segment_info",
    "segment_agent_segment_memory_usage_bytes",
    "segment_agent_segment_memory_limit_bytes",
    "segment_agent_segment_cpu_seconds_total",
    "segment_agent_segment_network_receive_bytes_total",
    "segment_agent_segment_network_transmit_bytes_total",
    "segment_agent_segment_processes",
    "segment_agent_segment_oom_kills_total",
    "segment_agent_segment_docker_ready",
    "segment_agent_segment_server_cert_expiry_timestamp_seconds",
];

/// `GET /metrics` with the real curl, from inside the sandbox namespace
/// where the agent listens.
fn curl_metrics(port: u16) -> String {
    let out = in_sandbox(&[
        "curl",
        "-sS",
        "--fail",
        "--max-time",
        "10",
        &format!("http://127.0.0.1:{port}/metrics"),
    ]);
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn series(family: &str, id: &str, cluster: &str) -> String {
    format!("{family}{{segment_id=\"{id}\",cluster_id=\"{cluster}\"}}")
}

/// Scrapes until `pred` holds (the agent caches a reading for 2 s).
fn scrape_until(port: u16, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = curl_metrics(port);
        if pred(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "{what} never seen:\n{text}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Processes in a domain's memory cgroup and its children, its libvirt_lxc
/// controller (whose PID names the cgroup) not counted.
fn cgroup_processes(domain: &str) -> u64 {
    let dir = cgroup_dir("memory", domain).expect("the domain's memory cgroup");
    let name = dir.file_name().unwrap().to_str().unwrap().to_owned();
    let controller = name["lxc-".len()..].split('-').next().unwrap().to_owned();
    let mut stack = vec![dir];
    let mut n = 0;
    while let Some(d) = stack.pop() {
        let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
        n += procs.lines().filter(|p| *p != controller).count() as u64;
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
        }
    }
    n
}

/// Sends `count` UDP datagrams of 1400 bytes to `addr` from the sandbox.
fn udp_flood(addr: &str, count: usize) {
    let addr = format!("{addr}:9");
    std::thread::spawn(move || {
        let ns = std::fs::File::open(NETNS).unwrap();
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        for _ in 0..count {
            let _ = s.send_to(&[0u8; 1400], &addr);
        }
    })
    .join()
    .unwrap();
}

/// A host process that joins `domain`'s memory cgroup and touches more
/// memory than the segment may have: the OOM killer takes it.
fn oom_in(domain: &str) {
    let procs = cgroup_dir("memory", domain).unwrap().join("cgroup.procs");
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {} && exec python3 -c 'b = bytearray(600 << 20)'",
            procs.display()
        ))
        .status()
        .unwrap();
    assert!(
        !status.success(),
        "600 MiB in a 256 MiB segment must be killed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scrape_shows_every_family_with_real_figures() {
    let port = 19_464;
    let listener = listen_in_sandbox("127.0.0.1:0");
    let cp_addr = listener.local_addr().unwrap();
    let cp = TestControlPlane::serve(listener);
    cp.set_next_interval(1);
    let extra = format!(
        "[metrics]\nlisten = \"127.0.0.1:{port}\"\n\
         [control_plane]\nendpoint = \"http://{cp_addr}\"\ninterval_seconds = 1\n"
    );
    let agent = RealAgent::start("metr", "203.0.113.244-203.0.113.245", &extra).await;
    let mut c = agent.client().await;
    let plain = c
        .create_segment(small_req("metr-a", "c9"))
        .await
        .unwrap()
        .into_inner();
    let ca = TestCa::new("metr-ca");
    let dk = c
        .create_segment(docker_req("metr-d", &ca, 1024))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(dk.state(), SegmentState::Running, "{}", dk.state_reason);
    let not_found = c
        .delete_segment(DeleteSegmentRequest {
            segment_id: "metr-none".into(),
        })
        .await;
    assert_eq!(not_found.unwrap_err().code(), tonic::Code::NotFound);

    let (a, d) = (
        |f: &str| series(f, "metr-a", "c9"),
        |f: &str| series(f, "metr-d", "c1"),
    );
    let text = scrape_until(port, "Docker ready and a report delivered", |t| {
        value(t, &d("segment_agent_segment_docker_ready")) == Some(1.0)
            && value(t, r#"segment_agent_reports_total{result="delivered"}"#).is_some()
    });
    let delivered_at = value(
        &text,
        "segment_agent_report_last_delivered_timestamp_seconds",
    )
    .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (now - 60.0..=now).contains(&delivered_at),
        "{delivered_at} vs {now}"
    );
    for family in FAMILIES {
        let typed = text.contains(&format!("# TYPE {family} "));
        let sampled = text.lines().any(|l| {
            l.strip_prefix(family)
                .is_some_and(|r| r.starts_with(['{', ' ']) || r.starts_with("_bucket{"))
        });
        assert!(typed && sampled, "{family} missing:\n{text}");
    }
    assert_eq!(
        value(&text, &a("segment_agent_segment_memory_limit_bytes")),
        Some((256u64 << 20) as f64)
    );
    assert_eq!(
        value(&text, r#"segment_agent_segments{state="RUNNING"}"#),
        Some(2.0)
    );
    assert_eq!(value(&text, "segment_agent_host_addresses_free"), Some(0.0));
    let expiry = dk.server_cert_not_after.unwrap().seconds as f64;
    assert_eq!(
        value(
            &text,
            &d("segment_agent_segment_server_cert_expiry_timestamp_seconds")
        ),
        Some(expiry)
    );
    assert!(value(&text, &a("segment_agent_segment_cpu_seconds_total")).unwrap() > 0.0);
    assert_eq!(
        value(&text, &a("segment_agent_segment_processes")),
        Some(cgroup_processes("seg-metr-a") as f64),
        "the busybox segment's processes"
    );
    assert!(
        value(&text, &d("segment_agent_segment_processes")).unwrap() >= 3.0,
        "tini, the supervisor, containerd, dockerd..."
    );
    for step in [
        "admission",
        "rootfs",
        "certificates",
        "define",
        "start",
        "docker_ready",
    ] {
        let count = format!("segment_agent_create_step_duration_seconds_count{{step=\"{step}\"}}");
        assert!(value(&text, &count).unwrap() >= 1.0, "{step}\n{text}");
    }
    assert_eq!(
        value(
            &text,
            r#"segment_agent_rpcs_total{service="segment.agent.v1.SegmentAgent",method="CreateSegment",code="OK"}"#
        ),
        Some(2.0)
    );
    assert_eq!(
        value(
            &text,
            r#"segment_agent_rpcs_total{service="segment.agent.v1.SegmentAgent",method="DeleteSegment",code="NOT_FOUND"}"#
        ),
        Some(1.0)
    );

    // Traffic to the segment counts as received, not sent.
    let rx0 = value(
        &text,
        &a("segment_agent_segment_network_receive_bytes_total"),
    )
    .unwrap();
    let tx0 = value(
        &text,
        &a("segment_agent_segment_network_transmit_bytes_total"),
    )
    .unwrap();
    udp_flood(&plain.public_ipv4, 3000);
    let text = scrape_until(port, "3000 datagrams received", |t| {
        value(t, &a("segment_agent_segment_network_receive_bytes_total"))
            .is_some_and(|rx| rx >= rx0 + 3000.0 * 1400.0)
    });
    let rx = value(
        &text,
        &a("segment_agent_segment_network_receive_bytes_total"),
    )
    .unwrap();
    let tx = value(
        &text,
        &a("segment_agent_segment_network_transmit_bytes_total"),
    )
    .unwrap();
    assert!(
        tx - tx0 < (rx - rx0) / 2.0,
        "rx +{} tx +{}",
        rx - rx0,
        tx - tx0
    );

    // A process in the Docker segment takes 200 MiB: its memory rises.
    let used0 = value(&text, &d("segment_agent_segment_memory_usage_bytes")).unwrap();
    let docker = DockerCli::of(&dk.public_ipv4, &ca);
    docker.import_busybox();
    docker.ok(&[
        "run",
        "-d",
        "--tmpfs",
        "/t:size=300m",
        "busybox",
        "sh",
        "-c",
        "dd if=/dev/zero of=/t/fill bs=1M count=200 && sleep 100000",
    ]);
    scrape_until(port, "memory +150 MiB", |t| {
        value(t, &d("segment_agent_segment_memory_usage_bytes"))
            .is_some_and(|m| m > used0 + (150u64 << 20) as f64)
    });

    // A container over its own 32 MiB limit: the OOM killer takes its dd in
    // the container's cgroup, a child of the segment's (docker/<id>), and
    // the kill counts for the segment. (The container lives on: cgroup v1
    // keeps the count in the container's cgroup alone, gone with it.)
    let docker_ooms = value(&text, &d("segment_agent_segment_oom_kills_total")).unwrap();
    docker.ok(&[
        "run",
        "-d",
        "-m",
        "32m",
        "busybox",
        "sh",
        "-c",
        "dd if=/dev/zero of=/dev/shm/fill bs=1M count=60; sleep 100000",
    ]);
    scrape_until(port, "the container's OOM kill", |t| {
        value(t, &d("segment_agent_segment_oom_kills_total"))
            .is_some_and(|n| n >= docker_ooms + 1.0)
    });

    // The OOM killer takes a process of the plain segment: counted.
    let ooms = value(&text, &a("segment_agent_segment_oom_kills_total")).unwrap();
    oom_in("seg-metr-a");
    scrape_until(port, "an OOM kill", |t| {
        value(t, &a("segment_agent_segment_oom_kills_total")).is_some_and(|n| n >= ooms + 1.0)
    });

    // The log of all this: no colour escapes, no line libvirt printed raw
    // (every create looked up a domain that did not exist yet).
    assert_clean_log(&agent.log());
}

fn assert_clean_log(log: &str) {
    assert!(!log.is_empty());
    assert!(!log.contains('\x1b'), "escape byte in the log:\n{log}");
    for line in log.lines() {
        assert!(!line.starts_with("libvirt:"), "raw libvirt line: {line}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_parse_and_carry_libvirts_errors_and_operations() {
    let extra = "[log]\nformat = \"json\"\nlevel = \"info,libvirt=debug\"\n";
    let mut agent = RealAgent::start("metj", "203.0.113.247", extra).await;
    let mut c = agent.client().await;
    c.create_segment(small_req("metj-a", "cj")).await.unwrap();
    c.delete_segment(DeleteSegmentRequest {
        segment_id: "metj-a".into(),
    })
    .await
    .unwrap();
    let log = agent.log();
    assert_clean_log(&log);
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .all(|l| l["timestamp"].is_string() && l["level"].is_string())
    );
    let create = lines
        .iter()
        .find(|l| l["message"] == "operation done" && l["operation"] == "create")
        .unwrap_or_else(|| panic!("no create line:\n{log}"));
    assert_eq!(create["segment_id"], "metj-a");
    assert_eq!(create["cluster_id"], "cj");
    assert!(create["duration_ms"].as_f64().unwrap() > 0.0);
    let delete = lines
        .iter()
        .find(|l| l["operation"] == "delete")
        .unwrap_or_else(|| panic!("no delete line:\n{log}"));
    assert_eq!(delete["cluster_id"], "cj", "the registry knew the cluster");
    // The create's lookup of a domain that does not exist yet: libvirt's
    // VIR_ERR_NO_DOMAIN (42), through the callback, at DEBUG.
    let libvirt = lines
        .iter()
        .find(|l| l["target"] == "libvirt" && l["code"] == 42)
        .unwrap_or_else(|| panic!("no libvirt line:\n{log}"));
    assert_eq!(libvirt["level"], "DEBUG");
    for l in lines.iter().filter(|l| l["target"] == "libvirt") {
        assert_eq!(l["level"], "DEBUG", "handled errors only here: {l}");
    }
    assert_eq!(libvirt["message"], "libvirt reported an error");
    assert!(
        libvirt["error"].as_str().unwrap().contains("seg-metj-a"),
        "{libvirt}"
    );
    agent.kill(nix::sys::signal::Signal::SIGTERM);
    watchdog_pings(&agent.config);
}

/// The agent under a fake systemd: READY=1, then WATCHDOG=1 at half the
/// timeout systemd asks for; none when it does not ask.
fn watchdog_pings(config: &Path) {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("notify");
    let sd = UnixDatagram::bind(&socket).unwrap();
    sd.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let run = |watchdog: bool| {
        let env = match watchdog {
            true => "WATCHDOG_USEC=400000 WATCHDOG_PID=$$",
            false => "",
        };
        std::process::Command::new("nsenter")
            .arg(format!("--net={NETNS}"))
            .args(["sh", "-c"])
            .arg(format!(
                "NOTIFY_SOCKET={} {env} exec {} serve --config {}",
                socket.display(),
                env!("CARGO_BIN_EXE_segment-agent"),
                config.display()
            ))
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let messages = |sd: &UnixDatagram, window: Duration| {
        let (mut got, until) = (Vec::new(), Instant::now() + window);
        let mut buf = [0u8; 512];
        while Instant::now() < until {
            sd.set_read_timeout(Some(until - Instant::now() + Duration::from_millis(1)))
                .unwrap();
            match sd.recv(&mut buf) {
                Ok(n) => got.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
                Err(_) => break,
            }
        }
        got
    };
    for watchdog in [true, false] {
        let mut child = run(watchdog);
        let got = messages(&sd, Duration::from_secs(5));
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        child.wait().unwrap();
        assert!(got.iter().any(|m| m.contains("READY=1")), "{got:?}");
        let pings = got.iter().filter(|m| m.contains("WATCHDOG=1")).count();
        match watchdog {
            // Every 200 ms for ~5 s, minus start-up.
            true => assert!(pings >= 10, "{pings} pings: {got:?}"),
            false => assert_eq!(pings, 0, "{got:?}"),
        }
    }
}
