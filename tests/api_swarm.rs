//! CreateSegment's swarm part on the real tonic server over the fakes (a
//! fake of Docker's swarm API): init and joins reported in Segment.swarm,
//! idempotency, bad input, a refused join undone, the nodes after an agent
//! restart, and DeleteSegment's leave (demote first, then leave, then the
//! removal from a local manager), which never stops a delete when Docker
//! is dead, and the removal of a departed remote peer's node once it is
//! down. The real thing is `tests/e2e_swarm_agent.rs`.

mod common;

use common::{
    FakeAgent, create_req,
    docker::{TestCa, docker_req},
    swarm::{FakeSwarm, MANAGER, WORKER},
};
use segment_agent::{
    hypervisor::fake::FakeHypervisor,
    proto::agent::{
        CreateSegmentRequest, DeleteSegmentRequest, GetHostRequest, GetSegmentRequest,
        ListSegmentsRequest, Segment, SetClusterPeersRequest, SwarmMode, SwarmRole, SwarmSpec,
    },
};
use std::sync::{Arc, atomic::Ordering};
use tonic::Code;

async fn swarm_agent(swarm: &FakeSwarm) -> (FakeAgent, tempfile::TempDir) {
    let (hv, dir) = (
        Arc::new(FakeHypervisor::new()),
        tempfile::tempdir().unwrap(),
    );
    over(hv, dir, swarm).await
}

async fn over(
    hv: Arc<FakeHypervisor>,
    dir: tempfile::TempDir,
    swarm: &FakeSwarm,
) -> (FakeAgent, tempfile::TempDir) {
    let tools = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tools.path().join("bin")).unwrap();
    std::fs::write(tools.path().join("bin/segment-authz"), "plugin\n").unwrap();
    let extra = format!(
        "[docker]\ntools_dir = {:?}\nready_timeout_seconds = 1\n",
        tools.path().display().to_string()
    );
    let image = dir.path().join("images/docker");
    std::fs::create_dir_all(image.join("rootfs")).unwrap();
    std::fs::write(
        image.join("image.toml"),
        "init = \"/sbin/init\"\ndocker = true\n",
    )
    .unwrap();
    let agent = FakeAgent::start_with_swarm(hv, dir, &extra, swarm.clone()).await;
    (agent, tools)
}

fn req(id: &str, ca: &TestCa, swarm: Option<SwarmSpec>) -> CreateSegmentRequest {
    CreateSegmentRequest {
        swarm,
        ..docker_req(id, ca, 256)
    }
}

fn spec(mode: SwarmMode, token: &str, managers: &[&str]) -> Option<SwarmSpec> {
    Some(SwarmSpec {
        mode: mode as i32,
        join_token: token.into(),
        manager_addresses: managers.iter().map(|m| m.to_string()).collect(),
    })
}

async fn create(agent: &mut FakeAgent, r: CreateSegmentRequest) -> Result<Segment, tonic::Status> {
    agent.client.create_segment(r).await.map(|r| r.into_inner())
}

#[tokio::test]
async fn init_and_joins_report_their_nodes_and_are_idempotent() {
    let (swarm, ca) = (FakeSwarm::default(), TestCa::new("c"));
    let (mut agent, _tools) = swarm_agent(&swarm).await;
    let a = create(&mut agent, req("a", &ca, spec(SwarmMode::Init, "", &[])))
        .await
        .unwrap();
    let na = a.swarm.clone().unwrap();
    assert_eq!(na.role(), SwarmRole::Manager);
    assert_eq!(
        (
            na.worker_join_token.as_str(),
            na.manager_join_token.as_str()
        ),
        (WORKER, MANAGER)
    );
    let ip = a.public_ipv4.clone();
    let b = create(
        &mut agent,
        req("b", &ca, spec(SwarmMode::JoinManager, MANAGER, &[&ip])),
    )
    .await
    .unwrap();
    let w = create(
        &mut agent,
        req("w", &ca, spec(SwarmMode::JoinWorker, WORKER, &[&ip])),
    )
    .await
    .unwrap();
    let nw = w.swarm.clone().unwrap();
    assert_eq!(nw.role(), SwarmRole::Worker);
    assert!(nw.worker_join_token.is_empty() && nw.manager_join_token.is_empty());
    assert_eq!(swarm.members().len(), 3);

    // Again: the same node, nothing asked of Docker but its state.
    let joins = swarm
        .calls()
        .iter()
        .filter(|c| c.starts_with("join"))
        .count();
    let again = create(
        &mut agent,
        req("b", &ca, spec(SwarmMode::JoinManager, MANAGER, &[&ip])),
    )
    .await
    .unwrap();
    assert_eq!(again.swarm, b.swarm);
    assert_eq!(
        swarm
            .calls()
            .iter()
            .filter(|c| c.starts_with("join"))
            .count(),
        joins
    );
    for other in [
        spec(SwarmMode::JoinWorker, WORKER, &[&ip]),
        spec(SwarmMode::JoinManager, MANAGER, &[&ip, "203.0.113.250"]),
        None,
    ] {
        let e = create(&mut agent, req("b", &ca, other)).await.unwrap_err();
        assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
        assert!(e.message().contains("swarm differ"), "{e:?}");
    }

    // An agent restart: the nodes and tokens as before (the tokens from the
    // host-only directory, not libvirt's XML), the retry still a retry.
    let (hv, dir) = agent.shut_down().await;
    let (mut agent, _tools) = over(hv, dir, &swarm).await;
    for s in [&a, &b, &w] {
        let got = agent
            .client
            .get_segment(GetSegmentRequest {
                segment_id: s.segment_id.clone(),
                include_ca_cert: false,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.swarm, s.swarm, "{}", s.segment_id);
    }
    let again = create(
        &mut agent,
        req("b", &ca, spec(SwarmMode::JoinManager, MANAGER, &[&ip])),
    )
    .await
    .unwrap();
    assert_eq!(again.swarm, b.swarm);
}

#[tokio::test]
async fn bad_swarm_parts_are_invalid_arguments_and_make_nothing() {
    let (swarm, ca) = (FakeSwarm::default(), TestCa::new("c"));
    let (mut agent, _tools) = swarm_agent(&swarm).await;
    let many: Vec<String> = (1..=8).map(|i| format!("203.0.113.{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let huge = "x".repeat(100_000);
    let cases = [
        spec(SwarmMode::Init, WORKER, &[]),
        spec(SwarmMode::Init, "", &["203.0.113.1"]),
        spec(SwarmMode::JoinWorker, "", &["203.0.113.1"]),
        spec(SwarmMode::JoinWorker, "SWMTKN-1-abc-def", &["203.0.113.1"]),
        spec(SwarmMode::JoinWorker, &huge, &["203.0.113.1"]),
        spec(SwarmMode::JoinWorker, WORKER, &[]),
        spec(SwarmMode::JoinWorker, WORKER, &many),
        spec(SwarmMode::JoinWorker, WORKER, &["203.0.113.1:0"]),
        spec(SwarmMode::JoinWorker, WORKER, &["localhost:2377"]),
        spec(SwarmMode::JoinWorker, WORKER, &[&huge]),
        spec(
            SwarmMode::JoinWorker,
            WORKER,
            &["203.0.113.1", "203.0.113.1:2377"],
        ),
        Some(SwarmSpec {
            mode: 99,
            ..Default::default()
        }),
        Some(SwarmSpec::default()),
    ];
    for swarm_part in cases {
        let e = create(&mut agent, req("a", &ca, swarm_part.clone()))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{swarm_part:?}: {e:?}");
        assert!(
            e.message().len() < 400,
            "bounded: {} bytes",
            e.message().len()
        );
        assert!(
            !e.message().contains(&WORKER[9..40]),
            "no token echoed: {e:?}"
        );
    }
    // A segment without Docker cannot be a swarm node.
    let plain = CreateSegmentRequest {
        swarm: spec(SwarmMode::Init, "", &[]),
        ..create_req("p", "c1")
    };
    let e = create(&mut agent, plain).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let listed = agent
        .client
        .list_segments(ListSegmentsRequest::default())
        .await
        .unwrap();
    assert!(listed.into_inner().segments.is_empty());
    assert!(swarm.calls().is_empty(), "Docker never asked");
}

#[tokio::test]
async fn a_refused_join_undoes_the_create() {
    let (swarm, ca) = (FakeSwarm::default(), TestCa::new("c"));
    let (mut agent, _tools) = swarm_agent(&swarm).await;
    let free = |h: segment_agent::proto::agent::Host| h.address_pool_free;
    let before = free(
        agent
            .client
            .get_host(GetHostRequest {})
            .await
            .unwrap()
            .into_inner(),
    );
    let bad_token = format!("{}{}", &WORKER[..60], "0".repeat(25));
    let cases = [
        // The swarm refuses the token.
        spec(SwarmMode::JoinWorker, &bad_token, &["203.0.113.9"]),
        // No manager answers.
        spec(SwarmMode::JoinWorker, WORKER, &["203.0.113.9"]),
    ];
    create(&mut agent, req("a", &ca, spec(SwarmMode::Init, "", &[])))
        .await
        .unwrap();
    let with_a = free(
        agent
            .client
            .get_host(GetHostRequest {})
            .await
            .unwrap()
            .into_inner(),
    );
    assert_eq!(with_a + 1, before);
    for swarm_part in cases {
        let e = create(&mut agent, req("x", &ca, swarm_part))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains("swarm"), "{e:?}");
        assert!(agent.hv.domain_xml("seg-x").is_none(), "no domain left");
        assert!(
            !agent.dir.path().join("segments/x").exists(),
            "no rootfs left"
        );
        let now = free(
            agent
                .client
                .get_host(GetHostRequest {})
                .await
                .unwrap()
                .into_inner(),
        );
        assert_eq!(now, with_a, "the address is free again");
    }
    // The worker token given for a manager: the node is a worker, so the
    // create fails, and the node leaves what it joined.
    let a_ip = swarm_ip(&agent, "a").await;
    let e = create(
        &mut agent,
        req("x", &ca, spec(SwarmMode::JoinManager, WORKER, &[&a_ip])),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("worker"), "{e:?}");
    assert_eq!(swarm.members().len(), 1, "only a's node remains");
}

async fn swarm_ip(agent: &FakeAgent, id: &str) -> String {
    let mut c = agent.client.clone();
    let r = GetSegmentRequest {
        segment_id: id.into(),
        include_ca_cert: false,
    };
    c.get_segment(r).await.unwrap().into_inner().public_ipv4
}

#[tokio::test]
async fn delete_demotes_leaves_and_is_removed_and_never_waits_on_a_dead_docker() {
    let (swarm, ca) = (FakeSwarm::default(), TestCa::new("c"));
    let (mut agent, _tools) = swarm_agent(&swarm).await;
    let a = create(&mut agent, req("a", &ca, spec(SwarmMode::Init, "", &[])))
        .await
        .unwrap();
    let ip = a.public_ipv4.clone();
    let b = create(
        &mut agent,
        req("b", &ca, spec(SwarmMode::JoinManager, MANAGER, &[&ip])),
    )
    .await
    .unwrap();
    let b_ip = b.public_ipv4.clone();
    let b_id = b.swarm.unwrap().node_id;
    let del = |id: &str| DeleteSegmentRequest {
        segment_id: id.into(),
    };
    agent.client.delete_segment(del("b")).await.unwrap();
    let calls = swarm.calls();
    let at = |c: &str| calls.iter().position(|x| x == c);
    let demote = at(&format!("demote {b_ip} {b_id}")).expect("demoted first");
    let leave = at(&format!("leave {b_ip} force=false")).expect("then left");
    let removed = at(&format!("remove {ip} {b_id}")).expect("removed by a");
    assert!(demote < leave && leave < removed, "{calls:?}");
    assert_eq!(swarm.members().len(), 1);

    // Docker gone: the delete still removes the segment.
    swarm.dead.store(true, Ordering::SeqCst);
    let started = std::time::Instant::now();
    agent.client.delete_segment(del("a")).await.unwrap();
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert!(agent.hv.domain_xml("seg-a").is_none());
}

/// A segment of the cluster on another host joined the swarm (its node
/// listed by the manager here) and is then dropped from the cluster's
/// peers: while its node is up it is left alone; once the swarm has it
/// down, the manager here demotes and removes it. A node at an address
/// that was never a peer is never touched.
#[tokio::test]
async fn a_dropped_peers_node_is_removed_once_it_is_down() {
    let (swarm, ca) = (FakeSwarm::default(), TestCa::new("c"));
    let (mut agent, _tools) = swarm_agent(&swarm).await;
    let a = create(&mut agent, req("a", &ca, spec(SwarmMode::Init, "", &[])))
        .await
        .unwrap();
    let remote: std::net::Ipv4Addr = "198.51.100.7".parse().unwrap();
    let stranger: std::net::Ipv4Addr = "198.51.100.9".parse().unwrap();
    let remote_id = swarm.add_remote(remote, true);
    let stranger_id = swarm.add_remote(stranger, false);
    swarm.set_down(stranger);
    let peers = |p: &[&str]| SetClusterPeersRequest {
        cluster_id: "c1".into(),
        remote_addresses: p.iter().map(|s| s.to_string()).collect(),
    };
    agent
        .client
        .set_cluster_peers(peers(&["198.51.100.7"]))
        .await
        .unwrap();
    agent.client.set_cluster_peers(peers(&[])).await.unwrap();
    // Still up: looked at, left alone.
    let looked = format!("nodes {}", a.public_ipv4);
    for _ in 0..50 {
        if swarm.calls().iter().filter(|c| **c == looked).count() >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        swarm.calls().iter().filter(|c| **c == looked).count() >= 2,
        "the manager here was asked for the nodes: {:?}",
        swarm.calls()
    );
    assert!(swarm.members().contains(&remote_id), "an up node is left");
    swarm.set_down(remote);
    let mut gone = false;
    for _ in 0..100 {
        if !swarm.members().contains(&remote_id) {
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(gone, "the down node was removed: {:?}", swarm.calls());
    let calls = swarm.calls();
    let at = |c: &str| calls.iter().position(|x| x == c);
    let ip = &a.public_ipv4;
    let demote = at(&format!("demote {ip} {remote_id}")).expect("a departed manager is demoted");
    let removed = at(&format!("remove {ip} {remote_id}")).expect("then removed");
    assert!(demote < removed, "{calls:?}");
    assert!(
        swarm.members().contains(&stranger_id),
        "a node that was never a peer stays: {calls:?}"
    );
}
