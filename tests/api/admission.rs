//! Admission: bad arguments refused before anything happens, idempotent
//! retries versus conflicts, pool and memory exhaustion, concurrent creates,
//! and a failed create undone.

use crate::common::{FakeAgent, create_req, small_req};
use segment_agent::proto::agent::{
    DeleteSegmentRequest, Flavor, GetHostRequest, GetSegmentRequest,
};
use std::collections::HashSet;
use tonic::Code;

#[tokio::test]
async fn invalid_arguments_are_refused_before_anything_happens() {
    let mut a = FakeAgent::start("").await;
    let long = "a".repeat(64);
    let bad_ids = ["../x", "A", long.as_str(), "", "a b", "a_b"];
    for id in bad_ids {
        let e = a
            .client
            .create_segment(create_req(id, "c1"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{id:?}: {e:?}");
        assert!(e.message().contains("segment_id"), "{}", e.message());
        let e = a
            .client
            .get_segment(GetSegmentRequest {
                segment_id: id.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        let e = a
            .client
            .delete_segment(DeleteSegmentRequest {
                segment_id: id.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
    }
    let mut cases = vec![
        create_req("ok", "../c"),
        CreateReqBuilder::flavor(65536, 0),
        CreateReqBuilder::flavor(0, 64),
        CreateReqBuilder::flavor(16, 0),
    ];
    let mut image = create_req("ok", "c1");
    image.image = "../../etc".into();
    cases.push(image);
    let mut labels = create_req("ok", "c1");
    labels.labels.insert("Bad Key".into(), "v".into());
    cases.push(labels);
    for req in cases {
        let e = a.client.create_segment(req.clone()).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{req:?}");
    }
    assert!(
        a.hv.calls().iter().all(|c| !c.starts_with("define")),
        "{:?}",
        a.hv.calls()
    );
    assert!(
        !a.dir.path().join("segments").exists()
            || std::fs::read_dir(a.dir.path().join("segments"))
                .unwrap()
                .count()
                == 0
    );
}

struct CreateReqBuilder;
impl CreateReqBuilder {
    fn flavor(memory_mib: u32, vcpus: u32) -> segment_agent::proto::agent::CreateSegmentRequest {
        let mut r = create_req("ok", "c1");
        r.flavor = Some(Flavor {
            memory_mib,
            vcpus,
            ..Default::default()
        });
        r
    }
}

#[tokio::test]
async fn same_id_same_spec_is_a_retry_another_spec_a_conflict() {
    let mut a = FakeAgent::start("").await;
    let first = a
        .client
        .create_segment(small_req("web-1", "c1"))
        .await
        .unwrap()
        .into_inner();
    let again = a
        .client
        .create_segment(small_req("web-1", "c1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first, again);
    let defines =
        a.hv.calls()
            .iter()
            .filter(|c| c.starts_with("define"))
            .count();
    assert_eq!(defines, 1, "a retry defines nothing");
    for (req, field) in [
        (small_req("web-1", "c2"), "cluster_id"),
        (create_req("web-1", "c1"), "flavor"),
        (
            {
                let mut r = small_req("web-1", "c1");
                r.labels.insert("a".into(), "b".into());
                r
            },
            "labels",
        ),
    ] {
        let e = a.client.create_segment(req).await.unwrap_err();
        assert_eq!(e.code(), Code::AlreadyExists);
        assert!(e.message().contains(field), "{}", e.message());
    }
}

#[tokio::test]
async fn exhaustion_is_resource_exhausted_and_leaves_nothing_behind() {
    let mut a = FakeAgent::start("[network]\nranges = [\"203.0.113.10-203.0.113.11\"]\n").await;
    a.create("a", "c").await;
    a.create("b", "c").await;
    let e = a
        .client
        .create_segment(small_req("c", "c"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(e.message().contains("address pool"), "{}", e.message());
    assert!(a.hv.domain_xml("seg-c").is_none());
    assert!(!a.dir.path().join("segments/c").exists());

    let mut m =
        FakeAgent::start("[capacity]\nreserved_memory_mib = 0\nmemory_overcommit_ratio = 0.25\n")
            .await;
    // 24 GiB x 0.25 = 6 GiB allocatable: one 4 GiB segment fits, two do not.
    m.client.create_segment(create_req("a", "c")).await.unwrap();
    let e = m
        .client
        .create_segment(create_req("b", "c"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(e.message().contains("memory"), "{}", e.message());
    let host = m
        .client
        .get_host(GetHostRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            host.segments_used,
            host.memory_allocated_mib,
            host.memory_allocatable_mib
        ),
        (1, 4096, 6144)
    );
    assert_eq!(host.address_pool_free, host.address_pool_size - 1);
}

#[tokio::test]
async fn concurrent_creates_never_share_an_address() {
    let a = FakeAgent::start("").await;
    let mut tasks = Vec::new();
    for i in 0..40 {
        let mut client = a.client.clone();
        tasks.push(tokio::spawn(async move {
            client
                .create_segment(small_req(&format!("s{i}"), "c"))
                .await
                .unwrap()
                .into_inner()
                .public_ipv4
        }));
    }
    let mut seen = HashSet::new();
    for t in tasks {
        assert!(seen.insert(t.await.unwrap()));
    }
    assert_eq!(seen.len(), 40);
}

#[tokio::test]
async fn failed_create_is_undone() {
    let mut a = FakeAgent::start("").await;
    a.hv.fail_on("start");
    let e = a
        .client
        .create_segment(create_req("web-1", "c1"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Internal);
    assert!(e.message().contains("injected failure"), "{}", e.message());
    assert!(
        a.hv.domain_xml("seg-web-1").is_none(),
        "domain undefined again"
    );
    assert!(
        !a.dir.path().join("segments/web-1").exists(),
        "rootfs removed"
    );
    let host = a
        .client
        .get_host(GetHostRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (host.segments_used, host.address_pool_free),
        (0, host.address_pool_size)
    );
}
