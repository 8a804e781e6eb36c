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
