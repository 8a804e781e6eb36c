//! SetClusterPeers on the real tonic server over the fakes: a cluster's
//! peers on other hosts join the swarm peers of exactly its segments' ports
//! (on the ports already allowed, at once, and on those made later), are
//! kept across an agent restart, cleared by an empty list; bad lists (this
//! host's own addresses among them) are INVALID_ARGUMENT and change
//! nothing. The rules themselves are proven against the kernel in
//! `tests/bridge_filter.rs`.

mod common;

use common::FakeAgent;
use segment_agent::{
    hypervisor::fake::FakeHypervisor, network::fake::FakeFilter,
    proto::agent::SetClusterPeersRequest,
};
use std::{net::Ipv4Addr, sync::Arc};
use tonic::Code;

/// The ports of the default pool's first three addresses (203.0.113.10-12).
const A: &str = "sg-cb00710a";
const B: &str = "sg-cb00710b";
const C: &str = "sg-cb00710c";

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn set(cluster: &str, peers: &[&str]) -> SetClusterPeersRequest {
    SetClusterPeersRequest {
        cluster_id: cluster.into(),
        remote_addresses: peers.iter().map(|p| p.to_string()).collect(),
    }
}

#[tokio::test]
async fn a_clusters_remote_peers_reach_its_segments_ports_only_and_survive_a_restart() {
    let filter = FakeFilter::new();
    let (hv, dir) = (
        Arc::new(FakeHypervisor::new()),
        tempfile::tempdir().unwrap(),
    );
    let mut a = FakeAgent::start_with_filter(hv, dir, "", filter.clone()).await;
    a.create("a", "c1").await;
    a.create("b", "c2").await;
    assert_eq!(filter.swarm_peers(A).unwrap(), Vec::<Ipv4Addr>::new());

    let r = a
        .client
        .set_cluster_peers(set("c1", &["198.51.100.7", "198.51.100.2", "198.51.100.7"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.remote_addresses, ["198.51.100.2", "198.51.100.7"]);
    assert_eq!(r.segments, 1);
    let remote = vec![ip("198.51.100.2"), ip("198.51.100.7")];
    assert_eq!(
        filter.swarm_peers(A).unwrap(),
        remote,
        "at once, on the allowed port"
    );
    assert_eq!(
        filter.swarm_peers(B).unwrap(),
        Vec::<Ipv4Addr>::new(),
        "another cluster's"
    );
    // A segment of the cluster made later has them too, beside its local peer.
    a.create("c", "c1").await;
    assert_eq!(
        filter.swarm_peers(C).unwrap(),
        vec![ip("198.51.100.2"), ip("198.51.100.7"), ip("203.0.113.10")]
    );

    // Kept in the state dir: a restarted agent puts them back.
    let json = std::fs::read_to_string(a.dir.path().join("cluster-peers.json")).unwrap();
    assert!(json.contains("198.51.100.7"), "{json}");
    let (hv, dir) = a.shut_down().await;
    let filter = FakeFilter::new();
    let mut a = FakeAgent::start_with_filter(hv, dir, "", filter.clone()).await;
    assert_eq!(filter.swarm_peers(A).unwrap()[..2], remote[..]);

    // Cleared by an empty list.
    let r = a
        .client
        .set_cluster_peers(set("c1", &[]))
        .await
        .unwrap()
        .into_inner();
    assert!(r.remote_addresses.is_empty());
    assert_eq!(r.segments, 2);
    assert_eq!(filter.swarm_peers(A).unwrap(), vec![ip("203.0.113.12")]);
    let json = std::fs::read_to_string(a.dir.path().join("cluster-peers.json")).unwrap();
    assert!(!json.contains("c1"), "{json}");
}

#[tokio::test]
async fn bad_peer_lists_are_invalid_arguments_and_change_nothing() {
    let filter = FakeFilter::new();
    let (hv, dir) = (
        Arc::new(FakeHypervisor::new()),
        tempfile::tempdir().unwrap(),
    );
    let mut a = FakeAgent::start_with_filter(hv, dir, "", filter.clone()).await;
    a.create("a", "c1").await;
    a.client
        .set_cluster_peers(set("c1", &["198.51.100.2"]))
        .await
        .unwrap();
    let many: Vec<String> = (1..=17).map(|i| format!("198.51.100.{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let long = "1".repeat(10_000);
    let bad: [(&str, Vec<&str>, &str); 7] = [
        ("c1", vec!["198.51.100.3", "203.0.113.150"], "this host's"),
        ("c1", vec!["203.0.113.1"], "this host's"),
        ("c1", vec!["224.0.0.5"], "not a unicast"),
        ("c1", vec!["198.51.100.0/24"], "not a unicast"),
        ("c1", many, "17 addresses"),
        ("c1", vec![long.as_str()], "not a unicast"),
        ("Bad_Cluster", vec!["198.51.100.3"], "cluster_id"),
    ];
    for (cluster, peers, why) in bad {
        let e = a
            .client
            .set_cluster_peers(set(cluster, &peers))
            .await
            .unwrap_err();
        assert_eq!(
            e.code(),
            Code::InvalidArgument,
            "{peers:?}: {}",
            e.message()
        );
        assert!(e.message().contains(why), "{peers:?}: {}", e.message());
        assert!(
            e.message().len() < 300,
            "bounded: {} bytes",
            e.message().len()
        );
    }
    assert_eq!(
        filter.swarm_peers(A).unwrap(),
        vec![ip("198.51.100.2")],
        "unchanged"
    );
}

#[tokio::test]
async fn an_unreadable_peers_file_starts_the_agent_with_no_remote_peer() {
    let filter = FakeFilter::new();
    let (hv, dir) = (
        Arc::new(FakeHypervisor::new()),
        tempfile::tempdir().unwrap(),
    );
    let mut a = FakeAgent::start_with_filter(hv, dir, "", filter.clone()).await;
    a.create("a", "c1").await;
    a.client
        .set_cluster_peers(set("c1", &["198.51.100.2"]))
        .await
        .unwrap();
    let (hv, dir) = a.shut_down().await;
    std::fs::write(dir.path().join("cluster-peers.json"), b"{ not json").unwrap();
    let filter = FakeFilter::new();
    let _a = FakeAgent::start_with_filter(hv, dir, "", filter.clone()).await;
    assert_eq!(
        filter.swarm_peers(A).unwrap(),
        Vec::<Ipv4Addr>::new(),
        "fail closed"
    );
}
