//! The gRPC API of Docker segments, on the real tonic server over the fakes:
//! the cluster CA's validation, idempotency per CA, the policy plugin as a
//! precondition, RebuildSegment's preconditions and a Docker that never
//! answers.

mod common;

use common::{
    FakeAgent, create_req,
    docker::{TestCa, docker_req},
};
use segment_agent::proto::agent::{
    ClusterTls, GetSegmentRequest, ListSegmentsRequest, RebuildSegmentRequest, SegmentState,
    StartSegmentRequest, StopSegmentRequest,
};
use segment_agent::segment::events::EventKind;
use std::{
    path::Path,
    time::{Duration, Instant},
};
use tonic::Code;

/// An agent over the fakes with a Docker image and a tools directory
/// (holding the plugin binary when `plugin`), whose Docker probe answers
/// (`ready`) or never; Docker gets 1 s to answer.
async fn docker_agent(ready: bool, plugin: bool) -> (FakeAgent, tempfile::TempDir) {
    let tools = tempfile::tempdir().unwrap();
    if plugin {
        std::fs::create_dir_all(tools.path().join("bin")).unwrap();
        std::fs::write(
            tools.path().join("bin/segment-authz"),
            "not a real plugin\n",
        )
        .unwrap();
    }
    let extra = format!(
        "[docker]\ntools_dir = {:?}\nready_timeout_seconds = 1\n",
        tools.path().display().to_string()
    );
    let agent = FakeAgent::start_with_probe(&extra, ready).await;
    let image = agent.dir.path().join("images/docker");
    std::fs::create_dir_all(image.join("rootfs")).unwrap();
    std::fs::write(
        image.join("image.toml"),
        "init = \"/sbin/init\"\ndocker = true\n",
    )
    .unwrap();
    (agent, tools)
}

fn tls(cert: &str, key: &str) -> Option<ClusterTls> {
    Some(ClusterTls {
        ca_cert_pem: cert.into(),
        ca_key_pem: key.into(),
    })
}

/// A CA (cert, key) valid only during 2020.
fn expired_ca() -> (String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose};
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "expired");
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

async fn segment_count(agent: &mut FakeAgent) -> usize {
    agent
        .client
        .list_segments(ListSegmentsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .segments
        .len()
}

#[tokio::test]
async fn a_docker_image_needs_a_valid_cluster_ca() {
    let (mut agent, _tools) = docker_agent(true, true).await;
    let ca = TestCa::new("cluster");
    let other = TestCa::new("other");
    let (leaf_cert, leaf_key) = ca.client_cert();
    let (expired_cert, expired_key) = expired_ca();
    let mut no_tls = docker_req("d-1", &ca, 256);
    no_tls.tls = None;
    let mut empty_tls = docker_req("d-1", &ca, 256);
    empty_tls.tls = tls("", "");
    let with = |t: Option<ClusterTls>| {
        let mut r = docker_req("d-1", &ca, 256);
        r.tls = t;
        r
    };
    let cases = [
        (
            no_tls,
            "the cluster CA (ca_cert_pem, ca_key_pem) is required",
        ),
        (
            empty_tls,
            "the cluster CA (ca_cert_pem, ca_key_pem) is required",
        ),
        (
            with(tls("not a certificate", &ca.key_pem)),
            "ca_cert_pem is not a valid PEM certificate",
        ),
        (
            with(tls(&ca.cert_pem, "not a key")),
            "ca_key_pem is not a usable PEM private key",
        ),
        (
            with(tls(&ca.cert_pem, &other.key_pem)),
            "ca_key_pem does not match ca_cert_pem",
        ),
        (
            with(tls(&leaf_cert, &leaf_key)),
            "ca_cert_pem is not a CA certificate",
        ),
        (
            with(tls(&expired_cert, &expired_key)),
            "ca_cert_pem expired at",
        ),
    ];
    for (req, wanted) in cases {
        let e = agent.client.create_segment(req).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{wanted}: {e:?}");
        assert!(
            e.message().contains("tls") && e.message().contains(wanted),
            "expected {wanted:?} in {:?}",
            e.message()
        );
    }
    assert_eq!(segment_count(&mut agent).await, 0, "nothing was created");
    assert!(
        !agent.dir.path().join("segments/d-1").exists(),
        "no segment directory"
    );

    // RebuildSegment validates its CA the same way, and requires one.
    let e = agent
        .client
        .rebuild_segment(RebuildSegmentRequest {
            segment_id: "d-1".into(),
            tls: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("tls"), "{}", e.message());
    let e = agent
        .client
        .rebuild_segment(RebuildSegmentRequest {
            segment_id: "d-1".into(),
            tls: tls(&ca.cert_pem, &other.key_pem),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(
        e.message()
            .contains("ca_key_pem does not match ca_cert_pem"),
        "{}",
        e.message()
    );
}

#[tokio::test]
async fn docker_segments_are_idempotent_per_cluster_ca() {
    let (mut agent, _tools) = docker_agent(true, true).await;
    let ca = TestCa::new("cluster");
    let s = agent
        .client
        .create_segment(docker_req("d-1", &ca, 256))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.state(), SegmentState::Running, "{s:?}");
    assert_eq!(s.docker_endpoint, format!("tcp://{}:2376", s.public_ipv4));
    // Reads name the CA; only GetSegment with include_ca_cert repeats it.
    assert_eq!(s.ca_cert_sha256, ca.sha256());
    assert!(s.ca_cert_pem.is_empty());
    let listed = agent
        .client
        .list_segments(ListSegmentsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.segments.iter().all(|s| s.ca_cert_pem.is_empty()));
    let full = agent
        .client
        .get_segment(GetSegmentRequest {
            segment_id: "d-1".into(),
            include_ca_cert: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(full.ca_cert_pem, ca.cert_pem);
    assert!(s.server_cert_not_after.is_some());
    let etc = agent.dir.path().join("segments/d-1/etc-docker");
    for f in ["ca.pem", "server-cert.pem", "server-key.pem", "daemon.json"] {
        assert!(etc.join(f).is_file(), "{f} written");
    }

    // The same id, spec and CA: the same segment, nothing redone.
    let written = std::fs::read(etc.join("server-cert.pem")).unwrap();
    let again = agent
        .client
        .create_segment(docker_req("d-1", &ca, 256))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, s);
    assert_eq!(
        std::fs::read(etc.join("server-cert.pem")).unwrap(),
        written,
        "no new certificate for a retry"
    );
    // The same PEM with other line endings is the same CA.
    let mut crlf = docker_req("d-1", &ca, 256);
    crlf.tls = tls(&ca.cert_pem.replace('\n', "\r\n"), &ca.key_pem);
    assert_eq!(
        agent
            .client
            .create_segment(crlf)
            .await
            .unwrap()
            .into_inner(),
        s
    );
    // Another CA under the same id: a conflict naming the field.
    let other = TestCa::new("other");
    let e = agent
        .client
        .create_segment(docker_req("d-1", &other, 256))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    assert!(e.message().contains("tls.ca_cert_pem"), "{}", e.message());
    assert_eq!(segment_count(&mut agent).await, 1);
}

#[tokio::test]
async fn rebuild_applies_to_docker_segments_only() {
    let (mut agent, _tools) = docker_agent(true, true).await;
    let ca = TestCa::new("cluster");
    // A dev segment (no Docker) ignores a CA it is sent...
    let mut dev = create_req("dev-1", "c1");
    dev.tls = Some(ca.tls());
    let s = agent.client.create_segment(dev).await.unwrap().into_inner();
    assert_eq!(
        (s.image.as_str(), s.state()),
        ("dev", SegmentState::Running)
    );
    assert!(
        s.docker_endpoint.is_empty() && s.ca_cert_pem.is_empty(),
        "{s:?}"
    );
    // ...and has nothing to rebuild.
    let e = agent
        .client
        .rebuild_segment(RebuildSegmentRequest {
            segment_id: "dev-1".into(),
            tls: Some(ca.tls()),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("no Docker"), "{}", e.message());
    // An unknown segment is NOT_FOUND.
    let e = agent
        .client
        .rebuild_segment(RebuildSegmentRequest {
            segment_id: "nope".into(),
            tls: Some(ca.tls()),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
}

#[tokio::test]
async fn a_docker_that_never_answers_leaves_the_segment_failed_with_the_reason() {
    let (mut agent, tools) = docker_agent(false, true).await;
    let ca = TestCa::new("cluster");
    let mut events = agent.manager.events().subscribe();
    let started = Instant::now();
    let create = agent.client.create_segment(docker_req("d-1", &ca, 256));
    // The observer runs while the create waits for Docker.
    let observer = async {
        for _ in 0..8 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            agent.manager.observe_all().await.unwrap();
        }
    };
    let (s, ()) = tokio::join!(create, observer);
    let s = s.unwrap().into_inner();
    let took = started.elapsed();
    let mut kinds = Vec::new();
    while let Ok(e) = events.try_recv() {
        kinds.push(e.kind);
    }
    assert_eq!(
        kinds,
        [EventKind::Created, EventKind::Failed],
        "never RUNNING before Docker answers"
    );
    assert_eq!(s.state(), SegmentState::Failed, "{s:?}");
    assert!(
        s.state_reason.contains("/_ping") && s.state_reason.contains(":2376"),
        "{}",
        s.state_reason
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(10),
        "waited for ready_timeout_seconds = 1: {took:?}"
    );
    // It is not removed: only DeleteSegment removes a segment.
    let got = agent
        .client
        .get_segment(GetSegmentRequest {
            segment_id: "d-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.state(), SegmentState::Failed);
    assert!(got.state_reason.contains("/_ping"), "{}", got.state_reason);
    assert_eq!(got.public_ipv4, s.public_ipv4);
    // FAILED but running: StopSegment really stops it, StartSegment starts
    // it (decided on libvirt's view, not the derived state).
    let stop = StopSegmentRequest {
        segment_id: "d-1".into(),
        timeout_seconds: 1,
    };
    let stopped = agent.client.stop_segment(stop).await.unwrap().into_inner();
    assert_eq!(stopped.state(), SegmentState::Stopped);
    assert!(
        agent.hv.calls().iter().any(|c| c == "shutdown seg-d-1"),
        "{:?}",
        agent.hv.calls()
    );
    let start = StartSegmentRequest {
        segment_id: "d-1".into(),
    };
    let t = Instant::now();
    let started = agent
        .client
        .start_segment(start)
        .await
        .unwrap()
        .into_inner();
    // Like Create: StartSegment waits for Docker, and says it never answered.
    assert_eq!(started.state(), SegmentState::Failed, "{started:?}");
    assert!(
        started.state_reason.contains("/_ping"),
        "{}",
        started.state_reason
    );
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    // The reason survives an agent restart (it lives in libvirt's metadata).
    let extra = format!(
        "[docker]\ntools_dir = {:?}\nready_timeout_seconds = 1\n",
        tools.path().display().to_string()
    );
    let (hv, dir) = agent.shut_down().await;
    let probe = common::FakeProbe { ready: false };
    let mut again = FakeAgent::start_with_probe_over(hv, dir, &extra, probe).await;
    let got = again
        .client
        .get_segment(GetSegmentRequest {
            segment_id: "d-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.state(), SegmentState::Failed, "{got:?}");
    assert!(got.state_reason.contains("/_ping"), "{}", got.state_reason);
}

#[tokio::test]
async fn docker_segments_need_the_policy_plugin_on_the_host() {
    let (mut agent, tools) = docker_agent(true, false).await;
    let ca = TestCa::new("cluster");
    let e = agent
        .client
        .create_segment(docker_req("d-1", &ca, 256))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let plugin = tools.path().join("bin/segment-authz");
    assert!(
        e.message().contains(&plugin.display().to_string()),
        "names the missing plugin: {}",
        e.message()
    );
    assert_eq!(segment_count(&mut agent).await, 0, "nothing was created");
    assert!(!Path::new(&agent.dir.path().join("segments/d-1")).exists());
    // Segments without Docker do not need it.
    agent
        .client
        .create_segment(create_req("dev-1", "c1"))
        .await
        .unwrap();
    // Once installed, Docker segments are created.
    std::fs::create_dir_all(plugin.parent().unwrap()).unwrap();
    std::fs::write(&plugin, "plugin\n").unwrap();
    let s = agent
        .client
        .create_segment(docker_req("d-1", &ca, 256))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.state(), SegmentState::Running, "{s:?}");
}
