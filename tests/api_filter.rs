//! The bridge filter's part of the lifecycle, through the real tonic server
//! over the fake hypervisor and a recording filter: a port is allowed
//! before its domain starts, never started when that fails, revoked after
//! delete, put back at agent start; a host that cannot enforce the filter
//! runs no segment. The rules themselves are proven against the real kernel
//! in `tests/bridge_filter.rs` and end to end in `tests/e2e_tenant/network.rs`.

mod common;

use common::{FakeAgent, create_req};
use segment_agent::{
    hypervisor::fake::FakeHypervisor,
    network::fake::FakeFilter,
    proto::agent::{
        DeleteSegmentRequest, GetSegmentRequest, SegmentState, StartSegmentRequest,
        StopSegmentRequest,
    },
};
use std::sync::Arc;
use tonic::Code;

/// The port of the first address of the default pool, 203.0.113.10.
const PORT: &str = "sg-cb00710a";

async fn agent_with(filter: FakeFilter, extra: &str) -> FakeAgent {
    let (hv, dir) = (
        Arc::new(FakeHypervisor::new()),
        tempfile::tempdir().unwrap(),
    );
    FakeAgent::start_with_filter(hv, dir, extra, filter).await
}

#[tokio::test]
async fn a_port_is_allowed_before_its_domain_exists_and_revoked_after_delete() {
    let filter = FakeFilter::new();
    let mut a = agent_with(filter.clone(), "").await;
    a.create("web-1", "c1").await;
    assert_eq!(filter.allowed(), vec![PORT.to_owned()]);
    let xml = a.hv.domain_xml("seg-web-1").unwrap();
    assert!(xml.contains(&format!("<target dev=\"{PORT}\"/>")), "{xml}");
    let calls = filter.calls();
    assert_eq!(&calls[..2], ["probe", "install "], "table first: {calls:?}");
    assert!(calls.contains(&format!("allow {PORT}")), "{calls:?}");

    a.client
        .delete_segment(DeleteSegmentRequest {
            segment_id: "web-1".into(),
        })
        .await
        .unwrap();
    assert!(filter.allowed().is_empty());
    assert_eq!(filter.calls().last().unwrap(), &format!("revoke {PORT}"));
}

#[tokio::test]
async fn a_port_allowed_while_the_table_is_gone_puts_it_back() {
    let filter = FakeFilter::new();
    let mut a = agent_with(filter.clone(), "").await;
    filter.lose_table();
    a.create("web-1", "c1").await;
    assert_eq!(filter.allowed(), vec![PORT.to_owned()]);
    let calls = filter.calls();
    let tail = &calls[calls.len() - 2..];
    assert_eq!(tail, [format!("allow {PORT}"), format!("install {PORT}")]);
}

#[tokio::test]
async fn a_port_the_filter_refuses_never_starts() {
    let filter = FakeFilter::new();
    let mut a = agent_with(filter.clone(), "").await;
    filter.set_failing(true);
    let e = a
        .client
        .create_segment(create_req("web-1", "c1"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message()
            .contains(&format!("the bridge filter could not allow port {PORT}")),
        "{}",
        e.message()
    );
    let calls = a.hv.calls();
    assert!(
        calls.iter().all(|c| !c.starts_with("start")),
        "never started: {calls:?}"
    );
    assert!(a.hv.domain_xml("seg-web-1").is_none(), "create undone");
    let gone = a
        .client
        .get_segment(GetSegmentRequest {
            segment_id: "web-1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound, "{gone:?}");

    // The same on StartSegment: a stopped segment stays stopped.
    filter.set_failing(false);
    let s = a.create("web-2", "c1").await;
    assert_eq!(
        s.public_ipv4, "203.0.113.10",
        "the refused create's address is free"
    );
    a.client
        .stop_segment(StopSegmentRequest {
            segment_id: "web-2".into(),
            timeout_seconds: 1,
        })
        .await
        .unwrap();
    filter.set_failing(true);
    let e = a
        .client
        .start_segment(StartSegmentRequest {
            segment_id: "web-2".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let s = a
        .client
        .get_segment(GetSegmentRequest {
            segment_id: "web-2".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(s.state(), SegmentState::Running, "{s:?}");
}

#[tokio::test]
async fn a_host_that_cannot_enforce_the_filter_runs_no_segment() {
    let filter = FakeFilter::unavailable("bridge segbr0 runs STP");
    let mut a = agent_with(filter.clone(), "").await;
    let e = a
        .client
        .create_segment(create_req("web-1", "c1"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    for needle in [
        "the bridge filter cannot be enforced on this host",
        "bridge segbr0 runs STP",
        "network.filter = \"off\"",
    ] {
        assert!(e.message().contains(needle), "{needle}: {}", e.message());
    }
    assert!(a.hv.calls().iter().all(|c| !c.starts_with("define")));
    assert_eq!(filter.calls(), ["probe"], "nothing applied");
}

#[tokio::test]
async fn filter_off_leaves_ports_to_libvirt() {
    let filter = FakeFilter::new();
    let mut a = agent_with(filter.clone(), "[network]\nfilter = \"off\"\n").await;
    a.create("web-1", "c1").await;
    let xml = a.hv.domain_xml("seg-web-1").unwrap();
    assert!(!xml.contains("<target dev="), "{xml}");
    a.client
        .delete_segment(DeleteSegmentRequest {
            segment_id: "web-1".into(),
        })
        .await
        .unwrap();
    assert!(filter.calls().is_empty(), "{:?}", filter.calls());
}

#[tokio::test]
async fn agent_start_puts_every_port_back_before_starting_anything() {
    let mut a = agent_with(FakeFilter::new(), "").await;
    a.create("web-1", "c1").await;
    a.create("web-2", "c1").await;
    let (hv, dir) = a.shut_down().await;
    // A host reboot: the kernel's rules and the running domains are gone.
    hv.crash("seg-web-1");
    hv.crash("seg-web-2");

    let filter = FakeFilter::new();
    let a = FakeAgent::start_with_filter(hv.clone(), dir, "", filter.clone()).await;
    assert_eq!(filter.allowed(), ["sg-cb00710a", "sg-cb00710b"]);
    assert_eq!(
        filter.calls(),
        [
            "probe",
            "install ",
            "install sg-cb00710a,sg-cb00710b",
            "allow sg-cb00710a",
            "allow sg-cb00710b"
        ],
        "the table with every port, then each port as it starts"
    );
    let starts = hv.calls().iter().filter(|c| c.starts_with("start")).count();
    assert_eq!(starts, 4, "both created, then both started again");

    // The same reboot with a filter that fails: nothing is started, and
    // the segments say why.
    let (hv, dir) = a.shut_down().await;
    hv.crash("seg-web-1");
    hv.crash("seg-web-2");
    let filter = FakeFilter::new();
    filter.set_failing(true);
    let mut a = FakeAgent::start_with_filter(hv.clone(), dir, "", filter).await;
    let starts = hv.calls().iter().filter(|c| c.starts_with("start")).count();
    assert_eq!(starts, 4, "no start without the filter");
    let s = a
        .client
        .get_segment(GetSegmentRequest {
            segment_id: "web-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.state(), SegmentState::Failed, "{s:?}");
    assert!(
        s.state_reason.contains("is not started") && s.state_reason.contains("fake filter"),
        "{}",
        s.state_reason
    );
}
