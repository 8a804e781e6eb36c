//! End-to-end health reports: the real agent binary, real libvirtd, a test
//! control plane (a tonic server in this test) in the sandbox namespace.

mod common;

use common::{
    control_plane::TestControlPlane,
    real::{RealAgent, init_pid, listen_in_sandbox},
    small_req,
};
use segment_agent::proto::agent::SegmentState;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn reports_reach_the_control_plane_and_its_outage_costs_nothing() {
    let listener = listen_in_sandbox("127.0.0.1:0");
    let addr = listener.local_addr().unwrap();
    let mut cp = TestControlPlane::serve(listener);
    cp.set_next_interval(1);
    let extra = format!("[control_plane]\nendpoint = \"http://{addr}\"\ninterval_seconds = 1\n");
    let agent = RealAgent::start("rep", "203.0.113.228", &extra).await;
    let mut c = agent.client().await;
    c.create_segment(small_req("rep-a", "c1")).await.unwrap();
    let r = cp
        .wait_for(Duration::from_secs(10), |r| {
            r.segments.iter().any(|s| {
                s.segment_id == "rep-a"
                    && s.state() == SegmentState::Running
                    && s.memory_used_bytes > 0
            })
        })
        .await;
    let s = r.segments.iter().find(|s| s.segment_id == "rep-a").unwrap();
    assert_eq!(s.memory_limit_bytes, 256 << 20);
    assert!(s.cpu_time_ns > 0, "{s:?}");
    let libvirt = r
        .conditions
        .iter()
        .find(|c| c.r#type == "LibvirtReachable")
        .unwrap();
    assert!(libvirt.status, "{libvirt:?}");
    assert!(!r.boot_id.is_empty() && r.host.unwrap().load1 >= 0.0);

    // The control plane dies for a while: segments are untouched, the
    // agent keeps serving, and reports resume with a fresh one.
    let pid = init_pid("seg-rep-a").unwrap();
    let last = cp.reports().last().unwrap().sequence;
    cp.kill().await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let s = c
        .get_segment(segment_agent::proto::agent::GetSegmentRequest {
            segment_id: "rep-a".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.state(), SegmentState::Running);
    assert_eq!(init_pid("seg-rep-a"), Some(pid));
    cp.restart(listen_in_sandbox(&addr.to_string()));
    let resumed = cp
        .wait_for(Duration::from_secs(20), |r| r.sequence > last)
        .await;
    assert!(resumed.segments.iter().any(|s| s.segment_id == "rep-a"));
    assert_eq!(init_pid("seg-rep-a"), Some(pid));
    assert!(
        agent.log().contains("control plane unreachable"),
        "the outage is logged once"
    );
}

/// The dockerd of a segment, as a host PID (found through its cgroup).
fn dockerd_pid(domain: &str) -> Option<i32> {
    let scope = format!("-{domain}.libvirt-lxc");
    procfs::process::all_processes()
        .ok()?
        .flatten()
        .find_map(|p| {
            let comm = p.stat().ok()?.comm;
            let cgroups = p.cgroups().ok()?;
            (comm == "dockerd" && cgroups.0.iter().any(|c| c.pathname.contains(&scope)))
                .then_some(p.pid)
        })
}

#[tokio::test(flavor = "multi_thread")]
async fn reports_show_memory_use_and_docker_readiness() {
    use common::docker::{DockerCli, TestCa, docker_req};
    let listener = listen_in_sandbox("127.0.0.1:0");
    let addr = listener.local_addr().unwrap();
    let cp = TestControlPlane::serve(listener);
    cp.set_next_interval(1);
    let extra = format!("[control_plane]\nendpoint = \"http://{addr}\"\ninterval_seconds = 1\n");
    let agent = RealAgent::start("repd", "203.0.113.229", &extra).await;
    let ca = TestCa::new("repd-ca");
    let mut c = agent.client().await;
    let s = c
        .create_segment(docker_req("repd-a", &ca, 1024))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.state(), SegmentState::Running, "{}", s.state_reason);
    let health = |r: &segment_agent::proto::controlplane::HealthReport| {
        r.segments
            .iter()
            .find(|s| s.segment_id == "repd-a")
            .cloned()
    };
    let ready = cp
        .wait_for(Duration::from_secs(15), |r| {
            health(r).is_some_and(|h| h.docker_ready)
        })
        .await;
    let before = health(&ready).unwrap();
    assert!(before.server_cert_not_after.is_some());

    // A process in the segment takes 200 MiB: the segment's usage rises.
    let docker = DockerCli::of(&s.public_ipv4, &ca);
    docker.import_busybox();
    docker.ok(&[
        "run",
        "-d",
        "--restart",
        "always",
        "--name",
        "hold",
        "--tmpfs",
        "/t:size=300m",
        "busybox",
        "sh",
        "-c",
        "dd if=/dev/zero of=/t/fill bs=1M count=200 && sleep 100000",
    ]);
    let grown = cp
        .wait_for(Duration::from_secs(30), |r| {
            health(r).is_some_and(|h| h.memory_used_bytes > before.memory_used_bytes + (150 << 20))
        })
        .await;
    let after = health(&grown).unwrap();
    assert!(
        after.memory_used_bytes < after.memory_limit_bytes,
        "{after:?}"
    );

    // dockerd dies (and its supervisor cannot bring it back while its
    // configuration is away): Docker ready turns false, then true again.
    let config = agent.segment_dir("repd-a").join("etc-docker");
    std::fs::rename(config.join("daemon.json"), config.join("daemon.json.away")).unwrap();
    let pid = dockerd_pid("seg-repd-a").expect("the segment's dockerd");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let down = cp
        .wait_for(Duration::from_secs(20), |r| {
            r.sequence > grown.sequence && health(r).is_some_and(|h| !h.docker_ready)
        })
        .await;
    let h = health(&down).unwrap();
    assert_eq!(
        h.state(),
        SegmentState::Running,
        "the segment itself still runs"
    );
    assert!(!h.docker_reason.is_empty());
    std::fs::rename(config.join("daemon.json.away"), config.join("daemon.json")).unwrap();
    cp.wait_for(Duration::from_secs(30), |r| {
        r.sequence > down.sequence && health(r).is_some_and(|h| h.docker_ready)
    })
    .await;
    // Without live-restore (swarm mode refuses it) a dockerd that died
    // stops its containers when it comes back; the restart policy brings
    // them back up.
    let mut running = String::new();
    for _ in 0..100 {
        running = docker.inspect("{{.State.Running}}", "hold");
        if running == "true" {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        running, "true",
        "the restart policy brought the container back"
    );
}
