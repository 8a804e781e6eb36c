//! Self-healing over the fakes: a segment whose init dies is started again
//! through the full boot (port, start, cgroup hand-over), with a backoff,
//! its restarts counted in GetSegment, the events and across agent
//! restarts; a stopped segment is never restarted.

mod common;

use common::FakeAgent;
use segment_agent::{
    proto::agent::{GetSegmentRequest, SegmentState, StopSegmentRequest},
    segment::events::EventKind,
};
use std::time::{Duration, Instant};

async fn get(a: &mut FakeAgent, id: &str) -> segment_agent::proto::agent::Segment {
    a.client
        .get_segment(GetSegmentRequest {
            segment_id: id.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

/// Runs healing passes until `id` has `restarts` restarts and runs.
async fn healed(a: &mut FakeAgent, id: &str, restarts: u32, within: Duration) -> Duration {
    let t = Instant::now();
    loop {
        a.manager.heal().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let s = get(a, id).await;
        if s.restarts == restarts && s.state() == SegmentState::Running {
            return t.elapsed();
        }
        assert!(t.elapsed() < within, "not healed within {within:?}: {s:?}");
    }
}

#[tokio::test]
async fn a_segment_whose_init_dies_comes_back_with_a_backoff_and_counted() {
    let mut a = FakeAgent::start("").await;
    let made = a.create("h1", "c1").await;
    assert_eq!(made.restarts, 0);
    let mut events = a.manager.events().subscribe();
    let starts_before = a.cgroups.calls().len();
    a.hv.crash("seg-h1");
    let first = healed(&mut a, "h1", 1, Duration::from_secs(3)).await;
    let s = get(&mut a, "h1").await;
    assert_eq!(s.public_ipv4, made.public_ipv4, "same address");
    assert_eq!(
        a.cgroups.calls().len(),
        starts_before + 1,
        "the restart went through the cgroup hand-over"
    );
    let mut seen = Vec::new();
    while let Ok(e) = events.try_recv() {
        seen.push((e.kind, e.segment.record.restarts));
    }
    assert_eq!(
        seen,
        [(EventKind::Failed, 0), (EventKind::Running, 1)],
        "it died, then came back"
    );
    // Dies again at once: the second restart waits out the backoff (1 s).
    a.hv.crash("seg-h1");
    let second = healed(&mut a, "h1", 2, Duration::from_secs(4)).await;
    assert!(
        second >= Duration::from_millis(800),
        "backoff: first restart after {first:?}, second after {second:?}"
    );
    // The count lives in libvirt's metadata: a restarted agent keeps it.
    let (hv, dir) = a.shut_down().await;
    let mut b = FakeAgent::start_with(hv, dir, "").await;
    assert_eq!(get(&mut b, "h1").await.restarts, 2);
}

#[tokio::test]
async fn a_stopped_segment_is_not_restarted() {
    let mut a = FakeAgent::start("").await;
    a.create("h2", "c1").await;
    a.client
        .stop_segment(StopSegmentRequest {
            segment_id: "h2".into(),
            timeout_seconds: 1,
        })
        .await
        .unwrap();
    for _ in 0..3 {
        a.manager.heal().await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = get(&mut a, "h2").await;
    assert_eq!((s.state(), s.restarts), (SegmentState::Stopped, 0));
}

#[tokio::test]
async fn a_restart_that_fails_is_failed_with_the_reason() {
    let mut a = FakeAgent::start("").await;
    a.create("h3", "c1").await;
    a.hv.crash("seg-h3");
    a.hv.fail_on("start");
    a.manager.heal().await.unwrap();
    let t = Instant::now();
    let s = loop {
        let s = get(&mut a, "h3").await;
        if s.state_reason.contains("restart 1") || t.elapsed() > Duration::from_secs(3) {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(s.state(), SegmentState::Failed, "{s:?}");
    assert!(
        s.state_reason.contains("injected failure"),
        "{}",
        s.state_reason
    );
    assert_eq!(s.restarts, 1);
}
