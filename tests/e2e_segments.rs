//! End-to-end: the real agent binary, the real libvirtd (lxc:///), real
//! cgroups, the real sandbox network and the real grpcurl. Prepared by
//! `scripts/test`; a missing environment fails the test.

mod common;

use common::{
    create_req,
    real::{RealAgent, cgroup_dir, domain_exists, init_pid, mounted, pings, virsh},
    small_req,
};
use nix::sys::signal::Signal;
use segment_agent::proto::agent::{
    DeleteSegmentRequest, GetHostRequest, GetSegmentRequest, ListSegmentsRequest, SegmentState,
    StartSegmentRequest, StopSegmentRequest,
};
use std::{collections::HashSet, process::Command, time::Duration};
use tonic::Code;

#[tokio::test]
async fn segment_is_capped_addressed_and_pingable() {
    let agent = RealAgent::start("caps", "203.0.113.201-203.0.113.203", "").await;
    let mut c = agent.client().await;
    let s = c
        .create_segment(create_req("caps-a", "c1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.state(), SegmentState::Running);
    assert_eq!(s.public_ipv4, "203.0.113.201");
    let mem = cgroup_dir("memory", "seg-caps-a").expect("memory cgroup of the segment");
    let cpu = cgroup_dir("cpu", "seg-caps-a").expect("cpu cgroup of the segment");
    let read = |p: std::path::PathBuf| std::fs::read_to_string(p).unwrap().trim().to_owned();
    assert_eq!(read(mem.join("memory.limit_in_bytes")), "4294967296");
    assert_eq!(read(cpu.join("cpu.cfs_quota_us")), "200000");
    assert_eq!(read(cpu.join("cpu.cfs_period_us")), "100000");
    assert!(
        pings("203.0.113.201"),
        "the segment's address answers ping from the sandbox"
    );
    // The root filesystem is an overlay over the image: nothing was copied.
    let rootfs = agent.segment_dir("caps-a").join("rootfs");
    assert!(mounted(&rootfs));
    let upper_files = walk_count(&agent.segment_dir("caps-a").join("upper"));
    assert!(
        upper_files < 20,
        "upper layer holds only what the segment wrote ({upper_files} entries)"
    );
    // The spec lives in libvirt's metadata.
    let xml = String::from_utf8(virsh(&["dumpxml", "--inactive", "seg-caps-a"]).stdout).unwrap();
    assert!(
        xml.contains("https://segment-agent.dev/xmlns/segment/1") && xml.contains("cluster=\"c1\""),
        "{xml}"
    );
    let host = c.get_host(GetHostRequest {}).await.unwrap().into_inner();
    assert_eq!(
        (
            host.segments_used,
            host.address_pool_size,
            host.address_pool_free
        ),
        (1, 3, 2)
    );
    assert!(
        host.libvirt_version
            .starts_with(|ch: char| ch.is_ascii_digit()),
        "{}",
        host.libvirt_version
    );
    c.delete_segment(DeleteSegmentRequest {
        segment_id: "caps-a".into(),
    })
    .await
    .unwrap();
}

fn walk_count(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    1 + if e.path().is_dir() {
                        walk_count(&e.path())
                    } else {
                        0
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn create_is_idempotent_and_conflicts_are_refused() {
    let agent = RealAgent::start("idem", "203.0.113.204-203.0.113.205", "").await;
    let mut c = agent.client().await;
    let first = c
        .create_segment(small_req("idem-a", "c1"))
        .await
        .unwrap()
        .into_inner();
    let pid = init_pid("seg-idem-a").unwrap();
    let again = c
        .create_segment(small_req("idem-a", "c1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first, again);
    assert_eq!(
        init_pid("seg-idem-a"),
        Some(pid),
        "the retry did not touch the segment"
    );
    let e = c
        .create_segment(create_req("idem-a", "c1"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    assert_eq!(init_pid("seg-idem-a"), Some(pid));
    let list = c
        .list_segments(ListSegmentsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.segments.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_and_restart_leave_segments_untouched() {
    let mut agent = RealAgent::start("kill", "203.0.113.206-203.0.113.209", "").await;
    let mut c = agent.client().await;
    for id in ["kill-a", "kill-b"] {
        c.create_segment(small_req(id, "c1")).await.unwrap();
    }
    c.stop_segment(StopSegmentRequest {
        segment_id: "kill-b".into(),
        timeout_seconds: 5,
    })
    .await
    .unwrap();
    let pid_a = init_pid("seg-kill-a").unwrap();
    let status = agent.kill(Signal::SIGKILL);
    assert!(!status.success());
    assert_eq!(
        init_pid("seg-kill-a"),
        Some(pid_a),
        "segment kept running without the agent"
    );
    agent.spawn().await;
    let mut c = agent.client().await;
    let list = c
        .list_segments(ListSegmentsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let seen: Vec<_> = list
        .segments
        .iter()
        .map(|s| (s.segment_id.as_str(), s.state(), s.public_ipv4.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            ("kill-a", SegmentState::Running, "203.0.113.206"),
            ("kill-b", SegmentState::Stopped, "203.0.113.207")
        ],
        "{}",
        agent.log()
    );
    assert_eq!(
        init_pid("seg-kill-a"),
        Some(pid_a),
        "same init PID after the restart"
    );
    assert!(pings("203.0.113.206"));
    let next = c
        .create_segment(small_req("kill-c", "c1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        next.public_ipv4, "203.0.113.208",
        "addresses rebuilt from libvirt"
    );
    // SIGTERM stops the agent and leaves segments running too.
    drop(c);
    let status = agent.kill(Signal::SIGTERM);
    assert!(status.success(), "SIGTERM is a clean exit: {status}");
    assert_eq!(init_pid("seg-kill-a"), Some(pid_a));
    assert!(init_pid("seg-kill-c").is_some());
}

#[tokio::test]
async fn delete_leaves_no_domain_rootfs_or_address() {
    let agent = RealAgent::start("del", "203.0.113.210-203.0.113.211", "").await;
    let mut c = agent.client().await;
    let s = c
        .create_segment(small_req("del-a", "c1"))
        .await
        .unwrap()
        .into_inner();
    let rootfs = agent.segment_dir("del-a").join("rootfs");
    assert!(mounted(&rootfs) && domain_exists("seg-del-a"));
    c.delete_segment(DeleteSegmentRequest {
        segment_id: "del-a".into(),
    })
    .await
    .unwrap();
    assert!(!domain_exists("seg-del-a"), "domain undefined");
    assert!(!mounted(&rootfs), "overlay unmounted");
    assert!(
        !agent.segment_dir("del-a").exists(),
        "segment directory removed"
    );
    assert!(!pings(&s.public_ipv4), "address no longer answers");
    let e = c
        .get_segment(GetSegmentRequest {
            segment_id: "del-a".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let again = c
        .create_segment(small_req("del-b", "c1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        again.public_ipv4, s.public_ipv4,
        "the address went back to the pool"
    );
}

#[tokio::test]
async fn stop_is_graceful_and_start_brings_it_back() {
    let agent = RealAgent::start("power", "203.0.113.218-203.0.113.219", "").await;
    let mut c = agent.client().await;
    c.create_segment(small_req("power-a", "c1")).await.unwrap();
    let started = std::time::Instant::now();
    let s = c
        .stop_segment(StopSegmentRequest {
            segment_id: "power-a".into(),
            timeout_seconds: 20,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.state(), SegmentState::Stopped);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the dev init exits on SIGTERM, no forced stop needed"
    );
    assert!(!agent.log().contains("forcing it"), "{}", agent.log());
    assert!(domain_exists("seg-power-a") && init_pid("seg-power-a").is_none());
    let s = c
        .start_segment(StartSegmentRequest {
            segment_id: "power-a".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.state(), SegmentState::Running);
    assert!(pings(&s.public_ipv4));
}

#[tokio::test]
async fn concurrent_creates_get_distinct_addresses() {
    let agent = RealAgent::start("conc", "203.0.113.220-203.0.113.227", "").await;
    let c = agent.client().await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            c.create_segment(small_req(&format!("conc-{i}"), "c1"))
                .await
                .map(|r| r.into_inner().public_ipv4)
        }));
    }
    let mut seen = HashSet::new();
    for t in tasks {
        let ip = t.await.unwrap().unwrap();
        assert!(seen.insert(ip.clone()), "{ip} given twice");
    }
    assert_eq!(seen.len(), 8);
    for ip in &seen {
        assert!(pings(ip), "{ip}");
    }
}

#[tokio::test]
async fn exhaustion_leaves_nothing_behind() {
    let agent = RealAgent::start("full", "203.0.113.230", "").await;
    let mut c = agent.client().await;
    c.create_segment(small_req("full-a", "c1")).await.unwrap();
    let e = c
        .create_segment(small_req("full-b", "c1"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(!domain_exists("seg-full-b"));
    assert!(!agent.segment_dir("full-b").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_killed_in_the_middle_of_creates_recovers_cleanly() {
    let mut agent = RealAgent::start("cut", "203.0.113.214-203.0.113.217", "").await;
    // Kill the agent at several points of a create; after each restart the
    // segment is either complete and running or gone without a trace.
    for (round, delay_ms) in [0u64, 15, 30, 45, 60, 90].into_iter().enumerate() {
        let id = format!("cut-{round}");
        let mut c = agent.client().await;
        let req = small_req(&id, "c1");
        let call = tokio::spawn(async move { c.create_segment(req).await });
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        agent.kill(Signal::SIGKILL);
        let _ = call.await;
        agent.spawn().await;
        let mut c = agent.client().await;
        let dir = agent.segment_dir(&id);
        match c
            .get_segment(GetSegmentRequest {
                segment_id: id.clone(),
                ..Default::default()
            })
            .await
        {
            Ok(s) => {
                let s = s.into_inner();
                assert_eq!(
                    s.state(),
                    SegmentState::Running,
                    "round {round}: {s:?}\n{}",
                    agent.log()
                );
                assert!(init_pid(&format!("seg-{id}")).is_some());
                assert!(mounted(&dir.join("rootfs")));
                c.delete_segment(DeleteSegmentRequest {
                    segment_id: id.clone(),
                })
                .await
                .unwrap();
            }
            Err(e) => {
                assert_eq!(
                    e.code(),
                    Code::NotFound,
                    "round {round}: {e:?}\n{}",
                    agent.log()
                );
                assert!(
                    !domain_exists(&format!("seg-{id}")),
                    "round {round}: orphan domain"
                );
                assert!(
                    !dir.exists(),
                    "round {round}: orphan rootfs {}",
                    dir.display()
                );
            }
        }
        let host = c.get_host(GetHostRequest {}).await.unwrap().into_inner();
        assert_eq!(
            host.address_pool_free, host.address_pool_size,
            "round {round}: address leaked"
        );
    }
}

#[tokio::test]
async fn grpcurl_uses_reflection_and_gets_clear_errors() {
    let agent = RealAgent::start("cli", "203.0.113.212-203.0.113.213", "").await;
    let socket = agent.socket.to_str().unwrap().to_owned();
    let grpcurl = |args: &[&str]| {
        let out = Command::new("grpcurl")
            .args(["-plaintext", "-authority", "localhost"])
            .args(args)
            .output()
            .expect("grpcurl is installed by scripts/test");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, out) = grpcurl(&["-unix", &socket, "list"]);
    assert!(
        ok && out.contains("segment.agent.v1.SegmentAgent")
            && out.contains("grpc.health.v1.Health"),
        "{out}"
    );
    let (ok, out) = grpcurl(&[
        "-unix",
        &socket,
        "describe",
        "segment.agent.v1.SegmentAgent",
    ]);
    assert!(ok && out.contains("rpc CreateSegment"), "{out}");
    let (ok, out) = grpcurl(&["-unix", &socket, "grpc.health.v1.Health/Check"]);
    assert!(ok && out.contains("SERVING"), "{out}");
    let create = r#"{"segment_id":"cli-a","cluster_id":"c1","flavor":{"memory_mib":256}}"#;
    let (ok, out) = grpcurl(&[
        "-d",
        create,
        "-unix",
        &socket,
        "segment.agent.v1.SegmentAgent/CreateSegment",
    ]);
    assert!(
        ok && out.contains("SEGMENT_STATE_RUNNING") && out.contains("203.0.113.212"),
        "{out}"
    );
    for bad in ["../x", "A", &"a".repeat(64), ""] {
        let body = format!(r#"{{"segment_id":{bad:?},"cluster_id":"c1"}}"#);
        let (ok, out) = grpcurl(&[
            "-d",
            &body,
            "-unix",
            &socket,
            "segment.agent.v1.SegmentAgent/CreateSegment",
        ]);
        assert!(
            !ok && out.contains("InvalidArgument") && out.contains("segment_id"),
            "{bad:?}: {out}"
        );
    }
    let (ok, out) = grpcurl(&[
        "-d",
        r#"{"segment_id":"cli-a"}"#,
        "-unix",
        &socket,
        "segment.agent.v1.SegmentAgent/DeleteSegment",
    ]);
    assert!(ok, "{out}");
    let (ok, out) = grpcurl(&[
        "-d",
        r#"{"segment_id":"cli-a"}"#,
        "-unix",
        &socket,
        "segment.agent.v1.SegmentAgent/GetSegment",
    ]);
    assert!(!ok && out.contains("NotFound"), "{out}");
}

#[tokio::test]
async fn apparmor_enforce_on_a_host_without_it_refuses_segments() {
    let top = "apparmor = \"enforce\"\napparmor_profile_dir = \"/var/lib/segment-agent/test-aa/apparmor.d\"";
    let agent = RealAgent::start_with("aa", "203.0.113.231", top, "").await;
    // The preflight names the failure and exits non-zero.
    let check = common::real::in_sandbox(&[
        env!("CARGO_BIN_EXE_segment-agent"),
        "check",
        "--config",
        agent.config.to_str().unwrap(),
    ]);
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(!check.status.success(), "{out}");
    assert!(
        out.contains("FAIL  apparmor") && out.contains("AppArmor is not available on this host"),
        "{out}"
    );
    let mut c = agent.client().await;
    let e = c.create_segment(small_req("aa-a", "c1")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message()
            .contains("AppArmor is not available on this host"),
        "{}",
        e.message()
    );
    assert!(!domain_exists("seg-aa-a"));
    let host = c.get_host(GetHostRequest {}).await.unwrap().into_inner();
    assert!(
        host.apparmor.starts_with("unavailable"),
        "{}",
        host.apparmor
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn segments_come_back_after_a_host_reboot() {
    let mut agent = RealAgent::start("boot", "203.0.113.242", "").await;
    let mut c = agent.client().await;
    let s = c
        .create_segment(small_req("boot-a", "c1"))
        .await
        .unwrap()
        .into_inner();
    let before = init_pid("seg-boot-a").unwrap();
    // A host reboot as the agent sees it: it is gone, the segment's
    // processes are gone, and so is its overlay mount.
    drop(c);
    agent.kill(Signal::SIGKILL);
    assert!(virsh(&["destroy", "seg-boot-a"]).status.success());
    let rootfs = agent.segment_dir("boot-a").join("rootfs");
    nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH).unwrap();
    assert!(!mounted(&rootfs));
    agent.spawn().await;
    let mut c = agent.client().await;
    let again = c
        .get_segment(GetSegmentRequest {
            segment_id: "boot-a".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.state(), SegmentState::Running, "{}", agent.log());
    assert_eq!(again.public_ipv4, s.public_ipv4);
    assert!(mounted(&rootfs), "overlay mounted again before the start");
    assert_ne!(
        init_pid("seg-boot-a"),
        Some(before),
        "a new boot of the segment"
    );
    assert!(pings(&s.public_ipv4));
    assert!(agent.log().contains("started segment that should run"));
}

/// A `seg-` domain the agent did not make (here defined with plain virsh)
/// is never touched: a create of its id is refused, and an agent restart
/// neither adopts nor removes it.
#[tokio::test(flavor = "multi_thread")]
async fn a_foreign_domain_is_never_touched() {
    let mut agent = RealAgent::start("alien", "203.0.113.243", "").await;
    let xml = agent.state_dir.join("alien.xml");
    let root = agent.state_dir.join("alien-root");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(
        &xml,
        format!(
            "<domain type='lxc'><name>seg-alien-x</name><memory unit='MiB'>64</memory>\
             <os><type>exe</type><init>/bin/sh</init></os><devices><filesystem type='mount'>\
             <source dir='{}'/><target dir='/'/></filesystem></devices></domain>",
            root.display()
        ),
    )
    .unwrap();
    assert!(virsh(&["define", xml.to_str().unwrap()]).status.success());
    let mut c = agent.client().await;
    let e = c
        .create_segment(small_req("alien-x", "c1"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("does not manage"), "{}", e.message());
    assert!(
        domain_exists("seg-alien-x"),
        "the foreign domain is still defined"
    );
    let dumped = String::from_utf8(virsh(&["dumpxml", "seg-alien-x"]).stdout).unwrap();
    assert!(
        !dumped.contains("segment-agent.dev"),
        "not redefined by the agent"
    );
    drop(c);
    agent.kill(Signal::SIGKILL);
    agent.spawn().await;
    let mut c = agent.client().await;
    let list = c
        .list_segments(ListSegmentsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(list.segments.is_empty(), "not adopted: {list:?}");
    assert!(domain_exists("seg-alien-x"));
    assert!(agent.log().contains("leaving it alone"));
}
