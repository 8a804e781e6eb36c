//! Health reports and the event stream, with the real tonic server, the
//! real reporter and a test control plane (a tonic server of its own), over
//! the fake hypervisor.

mod common;

use common::{FakeAgent, control_plane::TestControlPlane};
use segment_agent::proto::{
    agent::{
        DeleteSegmentRequest, SegmentEvent, SegmentEventType, SegmentState, StopSegmentRequest,
        WatchEventsRequest,
    },
    controlplane::HealthReport,
};
use std::time::Duration;
use tonic::Streaming;

fn segment<'a>(
    r: &'a HealthReport,
    id: &str,
) -> Option<&'a segment_agent::proto::controlplane::SegmentHealth> {
    r.segments.iter().find(|s| s.segment_id == id)
}

fn condition(r: &HealthReport, kind: &str) -> (bool, String) {
    let c = r
        .conditions
        .iter()
        .find(|c| c.r#type == kind)
        .unwrap_or_else(|| panic!("no {kind}"));
    (c.status, c.reason.clone())
}

#[tokio::test(flavor = "multi_thread")]
async fn reports_follow_the_host_and_survive_a_control_plane_outage() {
    let mut cp = TestControlPlane::start();
    let addr = cp.addr;
    let extra = format!("[control_plane]\nendpoint = \"http://{addr}\"\ninterval_seconds = 30\n");
    let mut a = FakeAgent::start(&extra).await;
    let first = cp.wait_for(Duration::from_secs(5), |_| true).await;
    assert_eq!(first.host_id, "test-host");
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    assert_eq!(first.boot_id, boot_id.trim());
    assert_eq!(condition(&first, "LibvirtReachable"), (true, String::new()));
    assert!(!condition(&first, "AppArmorEnforced").0);
    assert!(
        !condition(&first, "DiskPressure").0 || !condition(&first, "DiskPressure").1.is_empty()
    );
    let host = first.host.unwrap();
    assert!(
        host.memory_total_bytes > 0 && host.cpus > 0 && host.state_dir_total_bytes > 0,
        "{host:?}"
    );

    // A state change is reported at once, not after the 30 s interval; the
    // control plane's ack then asks for a 1 s interval.
    cp.set_next_interval(1);
    a.create("s1", "c1").await;
    let r = cp
        .wait_for(Duration::from_secs(5), |r| {
            segment(r, "s1").is_some_and(|s| s.state() == SegmentState::Running)
        })
        .await;
    let s1 = segment(&r, "s1").unwrap();
    assert_eq!(
        (s1.public_ipv4.as_str(), s1.memory_limit_bytes),
        ("203.0.113.10", 256 << 20)
    );
    assert!(!s1.docker_ready && s1.docker_reason.contains("no Docker"));
    assert_eq!(r.capacity.unwrap().segments_used, 1);
    // Its disk quota (the default 20 GiB), and the host's promise.
    assert_eq!((s1.disk_used_bytes, s1.disk_limit_bytes), (0, 20 << 30));
    assert_eq!(r.host.unwrap().segments_disk_limit_bytes, 20 << 30);

    // Usage rises when the segment uses memory, seen at the 1 s interval.
    a.hv.set_memory_used("seg-s1", 300 << 20);
    cp.wait_for(Duration::from_secs(5), |r| {
        segment(r, "s1").is_some_and(|s| s.memory_used_bytes == 300 << 20)
    })
    .await;

    // The control plane goes away: the agent keeps working, nothing queues.
    let before = cp.reports().len();
    cp.kill().await;
    a.create("s2", "c1").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(cp.reports().len(), before);
    cp.restart(std::net::TcpListener::bind(addr).unwrap());
    let resumed = cp
        .wait_for(Duration::from_secs(20), |r| segment(r, "s2").is_some())
        .await;
    assert!(
        resumed.sequence > r.sequence,
        "a fresh report, later in the sequence"
    );
    let after = cp.reports();
    let sequences: Vec<u64> = after.iter().map(|r| r.sequence).collect();
    assert!(sequences.windows(2).all(|w| w[0] < w[1]), "{sequences:?}");
    assert!(
        after.len() <= before + 3,
        "no backlog was replayed: {} new reports",
        after.len() - before
    );
}

async fn next(stream: &mut Streaming<SegmentEvent>) -> (SegmentEventType, String, SegmentState) {
    let e = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("an event within 10 s")
        .unwrap()
        .expect("stream open");
    let (id, state) = e
        .segment
        .as_ref()
        .map(|s| (s.segment_id.clone(), s.state()))
        .unwrap_or_default();
    (e.r#type(), id, state)
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_events_starts_with_a_snapshot_then_follows_changes() {
    use SegmentEventType::*;
    let mut a = FakeAgent::start("").await;
    a.create("old", "c1").await;
    a.create("other", "c2").await;
    let mut all = a
        .client
        .watch_events(WatchEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut c1 = a
        .client
        .watch_events(WatchEventsRequest {
            cluster_id: "c1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        next(&mut all).await,
        (Snapshot, "old".into(), SegmentState::Running)
    );
    assert_eq!(
        next(&mut all).await,
        (Snapshot, "other".into(), SegmentState::Running)
    );
    assert_eq!(next(&mut all).await.0, SnapshotEnd);
    assert_eq!(
        next(&mut c1).await,
        (Snapshot, "old".into(), SegmentState::Running)
    );
    assert_eq!(next(&mut c1).await.0, SnapshotEnd);

    a.create("new", "c1").await;
    assert_eq!(
        next(&mut all).await,
        (Created, "new".into(), SegmentState::Provisioning)
    );
    assert_eq!(
        next(&mut all).await,
        (Running, "new".into(), SegmentState::Running)
    );
    a.client
        .stop_segment(StopSegmentRequest {
            segment_id: "new".into(),
            timeout_seconds: 1,
        })
        .await
        .unwrap();
    assert_eq!(
        next(&mut all).await,
        (Stopped, "new".into(), SegmentState::Stopped)
    );
    // Behind the agent's back: seen by the observer within a few seconds.
    a.hv.crash("seg-old");
    assert_eq!(
        next(&mut all).await,
        (Failed, "old".into(), SegmentState::Failed)
    );
    // ... and it is restarted: its init died, it should run.
    assert_eq!(
        next(&mut all).await,
        (Running, "old".into(), SegmentState::Running)
    );
    a.client
        .delete_segment(DeleteSegmentRequest {
            segment_id: "new".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        next(&mut all).await,
        (Deleting, "new".into(), SegmentState::Deleting)
    );
    assert_eq!(next(&mut all).await.0, Deleted);
    // The c1 watcher saw the same c1 events and nothing of c2.
    let mut c1_kinds = Vec::new();
    for _ in 0..7 {
        c1_kinds.push(next(&mut c1).await.0);
    }
    assert_eq!(
        c1_kinds,
        [
            Created, Running, Stopped, Failed, Running, Deleting, Deleted
        ]
    );
}

/// With `https://` and the TLS files the reporter uses mutual TLS; a
/// control plane that requires client certificates refuses an agent
/// without one, and the agent just backs off.
#[tokio::test(flavor = "multi_thread")]
async fn reports_use_mutual_tls_when_configured() {
    use segment_agent::certs::testing::{generate_test_ca, issue_client_cert};
    use segment_agent::certs::{ClusterCa, issue_server_cert};
    use std::time::SystemTime;
    let day = Duration::from_secs(86_400);
    let (ca_pem, ca_key) = generate_test_ca("control-plane-ca", day).unwrap();
    let ca = ClusterCa::from_pem(&ca_pem, &ca_key, SystemTime::now()).unwrap();
    let server = issue_server_cert(
        &ca,
        "127.0.0.1".parse().unwrap(),
        "localhost",
        day,
        SystemTime::now(),
    )
    .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let cp =
        TestControlPlane::serve_tls(listener, (server.cert_pem, server.key_pem), ca_pem.clone());
    let files = tempfile::tempdir().unwrap();
    let (cert, key) = issue_client_cert(&ca, "agent-hv-1").unwrap();
    for (name, text) in [("ca.pem", &ca_pem), ("cert.pem", &cert), ("key.pem", &key)] {
        std::fs::write(files.path().join(name), text).unwrap();
    }
    let f = |n: &str| files.path().join(n).display().to_string();
    // The server certificate names 127.0.0.1 and localhost.
    let endpoint = format!("https://localhost:{}", addr.port());
    let without = format!(
        "[control_plane]\nendpoint = {endpoint:?}\ninterval_seconds = 1\ntls_ca = {:?}\n",
        f("ca.pem")
    );
    let anonymous = FakeAgent::start(&without).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(cp.reports().is_empty(), "no client certificate, no report");
    drop(anonymous);
    let with = format!(
        "{without}tls_cert = {:?}\ntls_key = {:?}\n",
        f("cert.pem"),
        f("key.pem")
    );
    let _agent = FakeAgent::start(&with).await;
    let r = cp.wait_for(Duration::from_secs(10), |_| true).await;
    assert_eq!(r.host_id, "test-host");
}
