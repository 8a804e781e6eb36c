//! `/metrics` over real HTTP from the real server, over the fake
//! hypervisor: the agent's own families (RPCs by code, create steps,
//! recovery) and the host's and segments' figures follow what happens.

mod common;

use common::FakeAgent;
use segment_agent::proto::agent::{GetSegmentRequest, WatchEventsRequest};
use std::{
    io::{Read, Write},
    net::SocketAddr,
    time::Duration,
};

/// One HTTP/1.1 request; returns the status line and the body.
pub fn http(addr: SocketAddr, method: &str, path: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

async fn scrape(addr: SocketAddr) -> String {
    let (status, body) = tokio::task::spawn_blocking(move || http(addr, "GET", "/metrics"))
        .await
        .unwrap();
    assert_eq!(status, "HTTP/1.1 200 OK");
    body
}

/// The value of the sample whose line starts with `series` (name and
/// labels), if there is one.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Waits (past the sample cache) until the scrape satisfies `pred`.
async fn scrape_until(addr: SocketAddr, pred: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = scrape(addr).await;
        if pred(&text) {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "condition never met:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_follow_rpcs_creates_and_segments() {
    let mut a = FakeAgent::start("[metrics]\nlisten = \"127.0.0.1:0\"\n").await;
    let addr = a.metrics_addr.expect("metrics endpoint bound");
    a.create("m1", "c1").await;
    a.create("m2", "c2").await;
    let missing = a
        .client
        .get_segment(GetSegmentRequest {
            segment_id: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    // A stream the client hangs up on counts as CANCELLED when it ends.
    let stream = a
        .client
        .watch_events(WatchEventsRequest::default())
        .await
        .unwrap();
    drop(stream);
    a.hv.set_memory_used("seg-m1", 300 << 20);

    let text = scrape_until(addr, |t| {
        value(
            t,
            r#"segment_agent_segment_memory_usage_bytes{segment_id="m1",cluster_id="c1"}"#,
        ) == Some((300u64 << 20) as f64)
            && t.contains(r#"method="WatchEvents",code="CANCELLED"}"#)
    })
    .await;
    let rpc = |method: &str, code: &str| {
        value(
            &text,
            &format!(
                "segment_agent_rpcs_total{{service=\"segment.agent.v1.SegmentAgent\",method=\"{method}\",code=\"{code}\"}}"
            ),
        )
    };
    assert_eq!(rpc("CreateSegment", "OK"), Some(2.0), "{text}");
    assert_eq!(rpc("GetSegment", "NOT_FOUND"), Some(1.0), "{text}");
    assert!(text.contains(
        r#"segment_agent_rpc_duration_seconds_count{service="segment.agent.v1.SegmentAgent",method="CreateSegment",code="OK"} 2"#
    ));
    for step in ["admission", "rootfs", "define", "start"] {
        let series = format!("segment_agent_create_step_duration_seconds_count{{step=\"{step}\"}}");
        assert_eq!(value(&text, &series), Some(2.0), "{series}\n{text}");
    }
    assert!(
        !text.contains(r#"step="docker_ready""#),
        "no Docker segment was made"
    );
    assert!(value(&text, "segment_agent_recovery_duration_seconds").is_some());
    for (series, want) in [
        (r#"segment_agent_segments{state="RUNNING"}"#, 2.0),
        ("segment_agent_host_segment_slots", 64.0),
        ("segment_agent_host_libvirt_reachable", 1.0),
        ("segment_agent_host_apparmor_enforced", 0.0),
        ("segment_agent_host_addresses_free", 189.0),
        (
            r#"segment_agent_segment_memory_limit_bytes{segment_id="m2",cluster_id="c2"}"#,
            (256u64 << 20) as f64,
        ),
        // The fake's interface counters: half and a quarter of its memory.
        (
            r#"segment_agent_segment_network_receive_bytes_total{segment_id="m1",cluster_id="c1"}"#,
            (150u64 << 20) as f64,
        ),
    ] {
        assert_eq!(value(&text, series), Some(want), "{series}\n{text}");
    }
    // No process stands behind a fake domain: no cgroup figures, left out.
    assert!(!text.contains("segment_agent_segment_processes{"), "{text}");

    // libvirtd goes away: the scrape says so instead of failing.
    a.hv.set_down(true);
    let down = scrape_until(addr, |t| {
        value(t, "segment_agent_host_libvirt_reachable") == Some(0.0)
    })
    .await;
    assert!(
        !down.contains("segment_agent_segment_memory_usage_bytes{"),
        "{down}"
    );
    a.hv.set_down(false);
}

#[tokio::test(flavor = "multi_thread")]
async fn only_get_metrics_is_served() {
    let a = FakeAgent::start("[metrics]\nlisten = \"127.0.0.1:0\"\n").await;
    let addr = a.metrics_addr.unwrap();
    let (status, body) = tokio::task::spawn_blocking(move || {
        let r = (
            http(addr, "GET", "/"),
            http(addr, "POST", "/metrics"),
            http(addr, "HEAD", "/metrics"),
        );
        (vec![r.0.0, r.1.0, r.2.0], r.2.1)
    })
    .await
    .unwrap();
    assert_eq!(
        status,
        [
            "HTTP/1.1 404 Not Found",
            "HTTP/1.1 405 Method Not Allowed",
            "HTTP/1.1 200 OK"
        ]
    );
    assert!(body.is_empty(), "HEAD has no body");
    // Without the table there is no endpoint.
    let b = FakeAgent::start("").await;
    assert!(b.metrics_addr.is_none());
}
