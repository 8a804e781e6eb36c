//! Lifecycle of a Docker segment: a rebuild with a new CA keeps the
//! containers, the address and the volumes; stop and start bring back only
//! the `restart: always` containers.

use crate::client_rejected;
use crate::common::{
    docker::{DockerCli, TestCa, docker_segment},
    real::init_pid,
};
use segment_agent::proto::agent::{
    GetSegmentRequest, RebuildSegmentRequest, SegmentState, StartSegmentRequest, StopSegmentRequest,
};
use std::time::{Duration, Instant};

#[tokio::test]
async fn rebuild_with_a_new_ca_keeps_containers_address_and_volumes() {
    let old_ca = TestCa::new("cluster-dreb-old");
    let (agent, s) = docker_segment("dreb", "203.0.113.236-203.0.113.237", &old_ca, 1024).await;
    let mut c = agent.client().await;
    let ip = s.public_ipv4.clone();
    let old = DockerCli::of(&ip, &old_ca);
    old.import_busybox();
    old.ok(&["run", "-d", "--name", "keep", "busybox", "sleep", "100000"]);
    old.ok(&[
        "run",
        "--rm",
        "-v",
        "data:/data",
        "busybox",
        "sh",
        "-c",
        "echo before-rebuild > /data/f",
    ]);
    let format = "{{.State.Pid}} {{.State.StartedAt}}";
    let before = old.inspect(format, "keep");
    let init = init_pid("seg-dreb-a").expect("segment init");

    let new_ca = TestCa::new("cluster-dreb-new");
    let r = c
        .rebuild_segment(RebuildSegmentRequest {
            segment_id: "dreb-a".into(),
            tls: Some(new_ca.tls()),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.state(), SegmentState::Running, "{r:?}\n{}", agent.log());
    assert_eq!(r.public_ipv4, ip, "the address stays");
    assert_eq!(r.docker_endpoint, s.docker_endpoint);
    assert_eq!(
        r.ca_cert_sha256,
        new_ca.sha256(),
        "the segment names the new CA"
    );
    assert!(r.server_cert_not_after.is_some());
    assert_eq!(
        init_pid("seg-dreb-a"),
        Some(init),
        "the segment itself was not restarted"
    );

    // The new CA's client certificates work; the container kept running.
    let new = DockerCli::of(&ip, &new_ca);
    assert_eq!(
        new.inspect(format, "keep"),
        before,
        "same container process, never restarted"
    );
    assert_eq!(new.inspect("{{.State.Running}}", "keep"), "true");
    assert_eq!(
        new.ok(&[
            "run",
            "--rm",
            "-v",
            "data:/data",
            "busybox",
            "cat",
            "/data/f"
        ]),
        "before-rebuild",
        "the named volume kept its data"
    );
    // The old CA's client certificates are refused, and a client trusting
    // only the old CA no longer accepts the server.
    let out = DockerCli::new(&ip, &new_ca.cert_pem, Some(&old_ca.client_cert())).run(&["info"]);
    assert!(
        !out.success && client_rejected(&out.stderr),
        "a client certificate of the old CA: {out:?}"
    );
    let out = old.run(&["info"]);
    assert!(
        !out.success
            && out
                .stderr
                .contains("x509: certificate signed by unknown authority"),
        "a client trusting the old CA: {out:?}"
    );
    let got = c
        .get_segment(GetSegmentRequest {
            segment_id: "dreb-a".into(),
            include_ca_cert: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.ca_cert_pem, new_ca.cert_pem);
    assert_eq!(got.public_ipv4, ip);
}

#[tokio::test]
async fn stop_and_start_bring_back_restart_always_containers_only() {
    let ca = TestCa::new("cluster-dpow");
    let (agent, s) = docker_segment("dpow", "203.0.113.238-203.0.113.239", &ca, 1024).await;
    let mut c = agent.client().await;
    let ip = s.public_ipv4.clone();
    let cli = DockerCli::of(&ip, &ca);
    cli.import_busybox();
    cli.ok(&[
        "run",
        "-d",
        "--restart",
        "always",
        "--name",
        "always",
        "busybox",
        "sleep",
        "100000",
    ]);
    cli.ok(&["run", "-d", "--name", "plain", "busybox", "sleep", "100000"]);
    let started_before = cli.inspect("{{.State.StartedAt}}", "always");

    let t = Instant::now();
    let stopped = c
        .stop_segment(StopSegmentRequest {
            segment_id: "dpow-a".into(),
            timeout_seconds: 30,
        })
        .await
        .unwrap()
        .into_inner();
    let stop_took = t.elapsed();
    assert_eq!(stopped.state(), SegmentState::Stopped, "{stopped:?}");
    assert!(init_pid("seg-dpow-a").is_none(), "the segment is down");
    assert!(
        stop_took < Duration::from_secs(25),
        "the segment stops gracefully ({stop_took:?})"
    );
    assert!(!agent.log().contains("forcing it"), "{}", agent.log());

    let started = c
        .start_segment(StartSegmentRequest {
            segment_id: "dpow-a".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(started.state(), SegmentState::Running, "{started:?}");
    assert_eq!(started.public_ipv4, ip);
    // RUNNING means Docker answers, as after CreateSegment: no waiting here.
    let version = cli.run(&["version", "--format", "{{.Server.Version}}"]);
    assert_eq!(version.code, Some(0), "Docker answers at once: {version:?}");

    // dockerd restarts the `always` container; the plain one stays down.
    let deadline = Instant::now() + Duration::from_secs(30);
    while cli.inspect("{{.State.Running}}", "always") != "true" {
        assert!(
            Instant::now() < deadline,
            "the --restart always container is not running again"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_ne!(
        cli.inspect("{{.State.StartedAt}}", "always"),
        started_before,
        "it was started again"
    );
    assert_eq!(cli.inspect("{{.State.Running}}", "plain"), "false");
    assert_eq!(
        cli.ok(&["exec", "always", "echo", "back"]),
        "back",
        "the restarted container works"
    );

    // Its init killed behind everyone's back: the agent brings the segment
    // back by itself, and Docker its `always` container.
    let before = cli.inspect("{{.State.StartedAt}}", "always");
    let init = init_pid("seg-dpow-a").expect("init");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(init as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = c
            .get_segment(GetSegmentRequest {
                segment_id: "dpow-a".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let back = s.restarts == 1 && s.state() == SegmentState::Running;
        let always = cli.run(&["inspect", "-f", "{{.State.StartedAt}}", "always"]);
        if back && always.success && always.stdout.trim() != before {
            assert_eq!(s.public_ipv4, ip, "same address");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not back: {s:?}\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(cli.ok(&["exec", "always", "echo", "back"]), "back");
}
