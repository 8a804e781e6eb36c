//! Reads are served from the agent's own view of its segments, kept true
//! by the hypervisor's lifecycle events: they never wait behind the
//! mutating libvirt calls of other segments, they make no libvirt call at
//! all, and an event (a domain started or stopped behind the agent's back)
//! changes what they show at once. A lost event is caught by the reconcile.

mod common;

use common::FakeAgent;
use segment_agent::{
    hypervisor::Hypervisor,
    proto::agent::{
        GetHostRequest, GetSegmentRequest, ListSegmentsRequest, SegmentState, StopSegmentRequest,
    },
};
use std::time::{Duration, Instant};
use tonic::Code;

async fn state(a: &mut FakeAgent, id: &str) -> SegmentState {
    a.client
        .get_segment(GetSegmentRequest {
            segment_id: id.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .state()
}

/// `n` CreateSegment calls at once, ids `PREFIX0`...
fn storm(
    a: &FakeAgent,
    prefix: &str,
    n: usize,
) -> tokio::task::JoinSet<
    Result<tonic::Response<segment_agent::proto::agent::Segment>, tonic::Status>,
> {
    let mut storm = tokio::task::JoinSet::new();
    for i in 0..n {
        let (mut c, id) = (a.client.clone(), format!("{prefix}{i}"));
        storm.spawn(async move { c.create_segment(common::small_req(&id, "c1")).await });
    }
    storm
}

/// Waits until `id` shows `want` (at most `within`); returns how long.
async fn shows(a: &mut FakeAgent, id: &str, want: SegmentState, within: Duration) -> Duration {
    let t = Instant::now();
    loop {
        let s = state(a, id).await;
        if s == want {
            return t.elapsed();
        }
        assert!(t.elapsed() < within, "{id} shows {s:?}, not {want:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn reads_do_not_wait_behind_mutating_libvirt_calls() {
    // Ten creates at once (not the default one per CPU), so that libvirt's
    // connection is what they queue on.
    let mut a = FakeAgent::start("[lifecycle]\nconcurrent_operations = 10\n").await;
    a.create("quiet", "c1").await;
    // libvirtd serves 5 requests per connection at once; 10 creates whose
    // define takes a second keep every slot busy for two seconds.
    a.hv.limit_requests(5);
    a.hv.slow_on("define", Duration::from_secs(1));
    let mut storm = storm(&a, "s", 10);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let calls = a.hv.calls().len();
    let mut worst = Duration::ZERO;
    for _ in 0..20 {
        let t = Instant::now();
        assert_eq!(state(&mut a, "quiet").await, SegmentState::Running);
        let list = a.client.list_segments(ListSegmentsRequest::default());
        assert!(!list.await.unwrap().into_inner().segments.is_empty());
        let host = a.client.get_host(GetHostRequest {}).await.unwrap();
        assert_eq!(host.into_inner().libvirt_version, "fake");
        worst = worst.max(t.elapsed());
    }
    assert!(
        worst < Duration::from_millis(250),
        "three reads took up to {worst:?} behind the creates"
    );
    let read_calls: Vec<String> = a.hv.calls()[calls..]
        .iter()
        .filter(|c| !c.starts_with("define") && !c.contains("seg-s"))
        .cloned()
        .collect();
    assert!(
        read_calls.is_empty(),
        "reads called libvirt: {read_calls:?}"
    );
    while let Some(done) = storm.join_next().await {
        let s = done.unwrap().unwrap().into_inner();
        assert_eq!(s.state(), SegmentState::Running, "{s:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn lifecycle_events_change_what_reads_show_at_once() {
    let mut a = FakeAgent::start("").await;
    a.create("ev", "c1").await;
    a.client
        .stop_segment(StopSegmentRequest {
            segment_id: "ev".into(),
            timeout_seconds: 1,
        })
        .await
        .unwrap();
    assert_eq!(state(&mut a, "ev").await, SegmentState::Stopped);
    let mut events = a.manager.events().subscribe();
    // Started and stopped behind the agent's back (virsh start, destroy).
    a.hv.start("seg-ev").unwrap();
    let took = shows(&mut a, "ev", SegmentState::Running, Duration::from_secs(1)).await;
    assert!(took < Duration::from_millis(500), "seen after {took:?}");
    let e = tokio::time::timeout(Duration::from_secs(1), events.recv())
        .await
        .expect("a RUNNING event")
        .unwrap();
    assert_eq!(
        e.segment.state,
        segment_agent::segment::SegmentState::Running
    );
    a.hv.destroy("seg-ev").unwrap();
    shows(
        &mut a,
        "ev",
        SegmentState::Stopped,
        Duration::from_millis(500),
    )
    .await;
    // A segment that should run and is destroyed is FAILED at once (and
    // then restarted by the healer; its restart fails here, so it stays).
    a.create("ev2", "c1").await;
    a.hv.fail_on("start");
    a.hv.destroy("seg-ev2").unwrap();
    shows(
        &mut a,
        "ev2",
        SegmentState::Failed,
        Duration::from_millis(500),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_event_is_caught_by_the_reconcile() {
    let mut a = FakeAgent::start("").await;
    a.create("lost", "c1").await;
    a.client
        .stop_segment(StopSegmentRequest {
            segment_id: "lost".into(),
            timeout_seconds: 1,
        })
        .await
        .unwrap();
    a.hv.mute_events(true);
    a.hv.start("seg-lost").unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        state(&mut a, "lost").await,
        SegmentState::Stopped,
        "no event, no call: the view does not know yet"
    );
    a.manager.reconcile().await.unwrap();
    assert_eq!(state(&mut a, "lost").await, SegmentState::Running);
    // libvirtd away and back: what happened meanwhile is listed again.
    a.hv.set_down(true);
    // The agent learns it from the connection's close event, on its own
    // task: a moment later, not within this call.
    let t = Instant::now();
    loop {
        match a.client.get_host(GetHostRequest {}).await {
            Err(e) => {
                assert_eq!(e.code(), Code::Unavailable);
                break;
            }
            Ok(_) => assert!(t.elapsed() < Duration::from_secs(1), "still reachable"),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    a.hv.crash("seg-lost");
    a.hv.set_down(false);
    shows(
        &mut a,
        "lost",
        SegmentState::Stopped,
        Duration::from_secs(1),
    )
    .await;
    a.client.get_host(GetHostRequest {}).await.unwrap();
}

/// Creates beyond `lifecycle.concurrent_operations` wait their turn, but
/// admitted: their id and address are taken and readers see them
/// PROVISIONING at once; each then runs in its turn.
#[tokio::test(flavor = "multi_thread")]
async fn creates_take_turns_already_admitted() {
    let mut a = FakeAgent::start("[lifecycle]\nconcurrent_operations = 2\n").await;
    a.hv.slow_on("define", Duration::from_millis(400));
    let mut storm = storm(&a, "t", 6);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // All six admitted, each with an address of its own.
    let listed = a
        .client
        .list_segments(ListSegmentsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .segments;
    assert_eq!(listed.len(), 6, "{listed:?}");
    assert!(
        listed
            .iter()
            .all(|s| s.state() == SegmentState::Provisioning),
        "{listed:?}"
    );
    let mut addresses: Vec<&str> = listed.iter().map(|s| s.public_ipv4.as_str()).collect();
    addresses.sort();
    addresses.dedup();
    assert_eq!(addresses.len(), 6, "{addresses:?}");
    while let Some(done) = storm.join_next().await {
        assert_eq!(
            done.unwrap().unwrap().into_inner().state(),
            SegmentState::Running
        );
    }
    // Two turns: a create holds its turn from its define to its boot's
    // last libvirt call (init_pid), so at no point in libvirt's log are
    // more than two between the two (with six turns: six). The fake logs
    // a define when its sleep is over, so two overlapping may log as one.
    let (mut under_way, mut most) = (0i32, 0);
    for call in a.hv.calls() {
        match call.split(' ').next() {
            Some("define") => under_way += 1,
            Some("init_pid") => under_way -= 1,
            _ => {}
        }
        most = most.max(under_way);
    }
    assert!((1..=2).contains(&most), "{most}: {:?}", a.hv.calls());
}
