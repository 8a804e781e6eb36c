//! End-to-end: self-healing and the agent's socket with the real agent
//! binary against the real libvirtd. A segment whose init is killed comes
//! back by itself with its address, through the full boot (cgroup
//! hand-over included); a second agent with the same configuration, or with
//! the same state dir behind another socket, refuses
//! to start and touches nothing; the longest valid id is creatable; a
//! domain destroyed behind the agent's back (virsh destroy) is seen at once
//! through libvirt's lifecycle events, and healed. Addresses:
//! 203.0.113.253-.254 and .140.

mod common;

use common::{
    real::{RealAgent, cgroup_dir, init_pid, pings, virsh},
    small_req,
};
use nix::{sys::signal::Signal, unistd::Pid};
use segment_agent::proto::agent::{
    DeleteSegmentRequest, GetHostRequest, GetSegmentRequest, SegmentEventType, SegmentState,
    WatchEventsRequest,
};
use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

#[tokio::test]
async fn a_segment_whose_init_is_killed_comes_back_with_its_address() {
    let agent = RealAgent::start("heal", "203.0.113.253", "").await;
    let mut c = agent.client().await;
    let made = c
        .create_segment(small_req("heal-a", "c1"))
        .await
        .unwrap()
        .into_inner();
    let first = init_pid("seg-heal-a").expect("init of the segment");
    nix::sys::signal::kill(Pid::from_raw(first as i32), Signal::SIGKILL).unwrap();
    let t = Instant::now();
    let healed = loop {
        let s = c
            .get_segment(GetSegmentRequest {
                segment_id: "heal-a".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        if s.restarts == 1 && s.state() == SegmentState::Running {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "not back within 15 s: {s:?}; log:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let took = t.elapsed();
    assert_eq!(healed.public_ipv4, made.public_ipv4, "same address");
    let second = init_pid("seg-heal-a").expect("a new init");
    assert_ne!(second, first, "a new init process");
    assert!(pings(&healed.public_ipv4), "it answers on its address");
    // Through the cgroup hand-over: the process limit is set again.
    let pids = cgroup_dir("pids", "seg-heal-a").expect("pids cgroup");
    let max = std::fs::read_to_string(pids.join("pids.max")).unwrap();
    assert_eq!(max.trim(), "4096");
    assert!(agent.log().contains("restarting it"), "{}", agent.log());
    eprintln!("init killed -> RUNNING again in {took:?}");
}

#[tokio::test]
async fn a_second_agent_with_the_same_config_refuses_to_start() {
    let agent = RealAgent::start("twin", "203.0.113.254", "").await;
    let mut c = agent.client().await;
    let made = c
        .create_segment(small_req("twin-a", "c1"))
        .await
        .unwrap()
        .into_inner();
    let init = init_pid("seg-twin-a").unwrap();
    let stderr = run_twin(&agent.config).await;
    assert!(stderr.contains("already running"), "{stderr}");
    assert!(
        !stderr.contains("recovery done"),
        "it recovered before refusing: {stderr}"
    );
    // The same state dir behind another socket: the state dir's lock refuses
    // it (the socket check cannot see it).
    let other = agent.state_dir.join("other.toml");
    let text = std::fs::read_to_string(&agent.config).unwrap();
    let sock = agent.socket.display().to_string();
    assert!(text.contains(&sock));
    std::fs::write(&other, text.replace(&sock, &format!("{sock}.other"))).unwrap();
    let stderr = run_twin(&other).await;
    assert!(
        stderr.contains("already running on state dir") && !stderr.contains("recovery done"),
        "{stderr}"
    );
    assert!(!agent.state_dir.join("agent.sock.other").exists());
    // The first agent still serves on its socket, its segment untouched.
    let host = c.get_host(GetHostRequest {}).await.unwrap().into_inner();
    assert_eq!(host.segments_used, 1);
    let s = c
        .get_segment(GetSegmentRequest {
            segment_id: "twin-a".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (s.state(), s.public_ipv4),
        (SegmentState::Running, made.public_ipv4)
    );
    assert_eq!(init_pid("seg-twin-a"), Some(init), "same init");
    assert!(agent.socket.exists());
    // The longest valid id is creatable: seg-<id> is the segment's
    // hostname, 64 bytes (61-63 character ids used to pass validation and
    // fail in libvirt with "Failed to set hostname").
    c.delete_segment(DeleteSegmentRequest {
        segment_id: "twin-a".into(),
    })
    .await
    .unwrap();
    let longest = format!("twin-{}", "b".repeat(55));
    let s = c
        .create_segment(small_req(&longest, "c1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.state(), SegmentState::Running, "{s:?}");
    let too_long = c
        .create_segment(small_req(&format!("{longest}b"), "c1"))
        .await
        .unwrap_err();
    assert_eq!(too_long.code(), tonic::Code::InvalidArgument);
}

/// Runs a second agent with `config` in the sandbox; it must exit, failing,
/// within 20 s. Returns its stderr.
async fn run_twin(config: &std::path::Path) -> String {
    let mut twin = Command::new("nsenter")
        .arg(format!("--net={}", common::real::NETNS))
        .arg(env!("CARGO_BIN_EXE_segment-agent"))
        .args(["serve", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running a second agent");
    let t = Instant::now();
    let status = loop {
        if let Some(status) = twin.try_wait().unwrap() {
            break status;
        }
        if t.elapsed() > Duration::from_secs(20) {
            let _ = twin.kill();
            let _ = twin.wait();
            panic!("the second agent is still running after 20 s: it took over");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut twin.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "the second agent ran: {stderr}");
    stderr
}

#[tokio::test]
async fn a_domain_destroyed_behind_the_agents_back_is_seen_at_once_and_healed() {
    let agent = RealAgent::start("evts", "203.0.113.140", "").await;
    let mut c = agent.client().await;
    c.create_segment(small_req("evts-a", "c1")).await.unwrap();
    let mut events = c
        .watch_events(WatchEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    while let Some(e) = events.message().await.unwrap() {
        if e.r#type() == SegmentEventType::SnapshotEnd {
            break;
        }
    }
    let destroyed = virsh(&["destroy", "seg-evts-a"]);
    assert!(destroyed.status.success(), "{destroyed:?}");
    let t = Instant::now();
    // libvirt's STOPPED event, not a poll: FAILED well within the safety
    // poll's 30 s (and the old observer's 2 s).
    let e = tokio::time::timeout(Duration::from_millis(1500), events.message())
        .await
        .unwrap_or_else(|_| panic!("no event within 1.5 s; log:\n{}", agent.log()))
        .unwrap()
        .unwrap();
    let seen = t.elapsed();
    assert_eq!(e.r#type(), SegmentEventType::Failed, "{e:?}");
    assert_eq!(e.segment.unwrap().segment_id, "evts-a");
    // Healed: RUNNING again, the restart counted.
    let e = tokio::time::timeout(Duration::from_secs(15), events.message())
        .await
        .expect("RUNNING again within 15 s")
        .unwrap()
        .unwrap();
    assert_eq!(e.r#type(), SegmentEventType::Running, "{e:?}");
    let s = c
        .get_segment(GetSegmentRequest {
            segment_id: "evts-a".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((s.state(), s.restarts), (SegmentState::Running, 1), "{s:?}");
    assert!(
        agent
            .log()
            .contains("following libvirt's domain lifecycle events")
    );
    eprintln!(
        "virsh destroy -> FAILED event after {seen:?}, RUNNING after {:?}",
        t.elapsed()
    );
    c.delete_segment(DeleteSegmentRequest {
        segment_id: "evts-a".into(),
    })
    .await
    .unwrap();
}
