//! The flavor's disk, process and bandwidth caps over the fake hypervisor
//! and fake quotas: defaults, bounds, pinning, idempotency, what reaches
//! the domain XML, the cgroups and the quota, and failing closed.

mod common;

use common::{FakeAgent, create_req};
use segment_agent::{
    cgroups::SegmentLimits,
    hypervisor::fake::FAKE_INIT_PID,
    proto::agent::{
        CreateSegmentRequest, DeleteSegmentRequest, DiskUsage, Flavor, GetSegmentRequest,
    },
    quota::FakeQuota,
};
use tonic::Code;

const GIB: u64 = 1 << 30;

fn flavored(id: &str, flavor: Flavor) -> CreateSegmentRequest {
    CreateSegmentRequest {
        flavor: Some(flavor),
        ..create_req(id, "c1")
    }
}

fn flavor(disk_gib: u32, pids: u32, network_mbit: u32) -> Flavor {
    Flavor {
        memory_mib: 256,
        vcpus: 1,
        disk_gib,
        pids,
        network_mbit,
    }
}

async fn get(a: &mut FakeAgent, id: &str) -> segment_agent::proto::agent::Segment {
    let req = GetSegmentRequest {
        segment_id: id.into(),
        ..Default::default()
    };
    a.client.get_segment(req).await.unwrap().into_inner()
}

#[tokio::test]
async fn zero_takes_the_hosts_defaults_and_every_cap_reaches_its_mechanism() {
    let mut a = FakeAgent::start("").await;
    let s = a
        .client
        .create_segment(flavored("d1", flavor(0, 0, 0)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.flavor, Some(flavor(20, 4096, 1000)));
    // The quota: one volume of 20 GiB, its use in GetSegment.
    let base = a.dir.path().join("segments/d1");
    assert_eq!(a.quota.limits().get(&base), Some(&(20 * GIB)));
    a.quota.set_used(&base, 12345);
    // Read at most once per DISK_TTL (a listing reads every segment's).
    let want = Some(DiskUsage {
        used_bytes: 12345,
        limit_bytes: 20 * GIB,
    });
    let t = std::time::Instant::now();
    while get(&mut a, "d1").await.disk != want {
        assert!(t.elapsed() < segment_agent::segment::view::DISK_TTL * 3);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // pids.max from the flavor, at the hand-over.
    let limits = SegmentLimits {
        pids_max: 4096,
        workload_memory_bytes: None,
        owner: 1_000_000,
    };
    assert_eq!(a.cgroups.calls(), [(FAKE_INIT_PID, limits)]);
    // 1000 Mbit/s = 122070 KiB/s each way on its bridge port.
    let port = "sg-cb00710a".to_owned();
    assert_eq!(a.filter.rates(), [(port.clone(), 122_070)]);
    // The I/O weight and the pinned flavor.
    let xml = a.hv.domain_xml("seg-d1").unwrap();
    for want in [
        "<blkiotune>\n    <weight>100</weight>",
        r#"disk_gib="20" pids="4096" network_mbit="1000""#,
    ] {
        assert!(xml.contains(want), "{want} in {xml}");
    }
    // A delete removes the volume and its limit.
    let del = DeleteSegmentRequest {
        segment_id: "d1".into(),
    };
    a.client.delete_segment(del).await.unwrap();
    assert!(a.quota.limits().is_empty());
    assert!(a.filter.rates().is_empty());
    assert!(a.filter.calls().contains(&format!("revoke {port}")));
    assert!(!base.exists());
}

#[tokio::test]
async fn asked_values_are_applied_and_pinned_across_a_restart() {
    let mut a = FakeAgent::start("[isolation]\nio_weight = 500\n").await;
    a.client
        .create_segment(flavored("s1", flavor(3, 300, 8)))
        .await
        .unwrap();
    let base = a.dir.path().join("segments/s1");
    assert_eq!(a.quota.limits().get(&base), Some(&(3 * GIB)));
    assert_eq!(a.cgroups.calls()[0].1.pids_max, 300);
    // 8 Mbit/s = 976 KiB/s.
    assert_eq!(a.filter.rates(), [("sg-cb00710a".to_owned(), 976)]);
    let xml = a.hv.domain_xml("seg-s1").unwrap();
    assert!(xml.contains("<weight>500</weight>"), "{xml}");
    // Another agent with other defaults reads the pinned values back.
    let (hv, dir) = a.shut_down().await;
    let extra = "[flavor]\ndefault_disk_gib = 7\ndefault_pids = 999\n";
    let mut b = FakeAgent::start_with(hv, dir, extra).await;
    assert_eq!(get(&mut b, "s1").await.flavor, Some(flavor(3, 300, 8)));
}

#[tokio::test]
async fn out_of_bounds_values_are_invalid_and_name_their_field() {
    let extra = "[flavor]\nmax_disk_gib = 50\nmin_pids = 200\nmax_network_mbit = 2000\n";
    let mut a = FakeAgent::start(extra).await;
    let cases = [
        (
            flavor(51, 0, 0),
            "flavor.disk_gib",
            "51 GiB is outside this host's bounds 1..=50 GiB",
        ),
        (flavor(0, 199, 0), "flavor.pids", "199 is outside"),
        (
            flavor(0, u32::MAX, 0),
            "flavor.pids",
            "4294967295 is outside",
        ),
        (
            flavor(0, 0, 2001),
            "flavor.network_mbit",
            "2001 Mbit/s is outside",
        ),
    ];
    for (f, field, reason) in cases {
        let e = a
            .client
            .create_segment(flavored("bad", f))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{f:?}");
        assert!(e.message().contains(field), "{f:?}: {}", e.message());
        assert!(e.message().contains(reason), "{f:?}: {}", e.message());
    }
    assert!(a.hv.domain_xml("seg-bad").is_none());
    assert!(a.quota.limits().is_empty());
}

#[tokio::test]
async fn a_retry_compares_every_cap() {
    let mut a = FakeAgent::start("").await;
    let first = flavored("r1", flavor(5, 500, 50));
    a.client.create_segment(first.clone()).await.unwrap();
    a.client.create_segment(first).await.unwrap();
    // The defaults resolve to the same values as asking for them.
    a.client
        .create_segment(flavored("r2", flavor(0, 0, 0)))
        .await
        .unwrap();
    a.client
        .create_segment(flavored("r2", flavor(20, 4096, 1000)))
        .await
        .unwrap();
    for other in [flavor(6, 500, 50), flavor(5, 501, 50), flavor(5, 500, 51)] {
        let e = a
            .client
            .create_segment(flavored("r1", other))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::AlreadyExists, "{other:?}");
        assert!(e.message().contains("flavor"), "{}", e.message());
    }
}

#[tokio::test]
async fn a_state_dir_without_quotas_refuses_creates_unless_quotas_are_off() {
    let reason = "/x is not on btrfs";
    let mut a = FakeAgent::start_with_quota("", FakeQuota::unsupported(reason)).await;
    let e = a
        .client
        .create_segment(create_req("q1", "c1"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains(reason), "{}", e.message());
    assert!(
        e.message().contains("disk_quota = \"off\""),
        "{}",
        e.message()
    );
    assert!(a.hv.domain_xml("seg-q1").is_none());
    assert!(!a.dir.path().join("segments/q1").exists());
    let off = "disk_quota = \"off\"\n";
    let mut b = FakeAgent::start_with_quota(off, FakeQuota::unsupported(reason)).await;
    let s = b
        .client
        .create_segment(create_req("q1", "c1"))
        .await
        .unwrap()
        .into_inner();
    // The flavor still says what was asked; no quota backs it.
    assert_eq!(s.flavor.unwrap().disk_gib, 20);
    assert_eq!(s.disk, None);
}
