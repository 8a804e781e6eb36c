//! End-to-end: the agent makes a cluster's segments one Docker Swarm. A
//! control plane that only calls CreateSegment (init, then joins with what
//! the first Segment reported) gets a three-node swarm; the nodes survive
//! an agent restart in the API, a lost membership is repaired by a
//! rebuild, a deleted segment leaves the swarm with the others healthy, and
//! a segment of another cluster cannot reach the swarm's ports (2377/tcp,
//! 7946/tcp+udp, 4789/udp) while one of the same cluster can, nor can a
//! host off the bridge until SetClusterPeers names it for the cluster.
//!
//! One agent, four Docker segments (three of cluster c1, one of c2),
//! reused across the assertions: Docker segments are slow on this machine.
//! Addresses: 203.0.113.163-203.0.113.166; 203.0.113.250 is the "other
//! host", a namespace of its own on the sandbox's bridge.

mod common;

use common::docker::{DockerCli, TestCa, docker_req};
use common::frames::{self, Station};
use common::net::{Capture, netns_of};
use common::real::{RealAgent, init_pid};
use segment_agent::proto::agent::segment_agent_client::SegmentAgentClient;
use segment_agent::proto::agent::{
    CreateSegmentRequest, DeleteSegmentRequest, GetSegmentRequest, RebuildSegmentRequest, Segment,
    SegmentState, SetClusterPeersRequest, SwarmMode, SwarmRole, SwarmSpec,
};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

type Client = SegmentAgentClient<Channel>;

fn words(s: &str) -> Vec<&str> {
    s.split_whitespace().collect()
}

/// Polls `what` until it returns `Some`, at most 90 s.
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within 90 s");
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn swarm_req(
    id: &str,
    cluster: &str,
    ca: &TestCa,
    swarm: Option<SwarmSpec>,
) -> CreateSegmentRequest {
    CreateSegmentRequest {
        cluster_id: cluster.into(),
        swarm,
        ..docker_req(id, ca, 1024)
    }
}

fn init() -> Option<SwarmSpec> {
    Some(SwarmSpec {
        mode: SwarmMode::Init as i32,
        ..Default::default()
    })
}

fn join(mode: SwarmMode, token: &str, manager: &str) -> Option<SwarmSpec> {
    Some(SwarmSpec {
        mode: mode as i32,
        join_token: token.into(),
        manager_addresses: vec![manager.into()],
    })
}

async fn create(c: &mut Client, agent: &RealAgent, req: CreateSegmentRequest) -> Segment {
    let s = c.create_segment(req).await;
    let s = s
        .unwrap_or_else(|e| panic!("{e:?}\n{}", agent.log()))
        .into_inner();
    assert_eq!(s.state(), SegmentState::Running, "{s:?}\n{}", agent.log());
    s
}

/// `{{.Status}} {{.ManagerStatus}}` of every node, as a manager lists them.
fn nodes(cli: &DockerCli) -> Vec<String> {
    let out = cli.ok(&["node", "ls", "--format", "{{.Status}} {{.ManagerStatus}}"]);
    out.lines().map(str::to_owned).collect()
}

fn all_ready(cli: &DockerCli, n: usize) -> Option<()> {
    let nodes = nodes(cli);
    (nodes.len() == n && nodes.iter().all(|l| l.starts_with("Ready"))).then_some(())
}

#[tokio::test]
async fn three_creates_make_a_swarm_that_rebuilds_deletes_and_the_filter_keep_healthy() {
    let ca = TestCa::new("cluster-swarm-agent");
    let mut agent = RealAgent::start("swa", "203.0.113.163-203.0.113.166", "").await;
    let mut c = agent.client().await;

    // The control plane's three calls, each with what the first reported.
    let started = Instant::now();
    let a = create(&mut c, &agent, swarm_req("swa-a", "c1", &ca, init())).await;
    let node_a = a.swarm.clone().expect("the init segment reports its node");
    assert_eq!(node_a.role(), SwarmRole::Manager);
    let token = node_a.manager_join_token.clone();
    assert!(token.starts_with("SWMTKN-1-") && node_a.worker_join_token.starts_with("SWMTKN-1-"));
    let joining = join(SwarmMode::JoinManager, &token, &a.public_ipv4);
    let t_a = started.elapsed().as_secs_f64();
    let b = create(
        &mut c,
        &agent,
        swarm_req("swa-b", "c1", &ca, joining.clone()),
    )
    .await;
    let t_b = started.elapsed().as_secs_f64();
    let s3 = create(
        &mut c,
        &agent,
        swarm_req("swa-c", "c1", &ca, joining.clone()),
    )
    .await;
    let t_c = started.elapsed().as_secs_f64();
    let (j1, j2) = (t_b - t_a, t_c - t_b);
    println!("BENCH CreateSegment returned: init {t_a:.2} s, join {j1:.2} s, join {j2:.2} s");
    let segments = [&a, &b, &s3];
    let clis: Vec<DockerCli> = segments
        .iter()
        .map(|s| DockerCli::of(&s.public_ipv4, &ca))
        .collect();
    eventually("three nodes ready", || all_ready(&clis[0], 3));
    let took = started.elapsed().as_secs_f64();
    println!("BENCH first CreateSegment to a three-node swarm answering (agent): {took:.2} s");
    for (s, cli) in segments.iter().zip(&clis) {
        let info = cli.ok(&["info", "--format", "{{.Swarm.Nodes}} {{.Swarm.NodeID}}"]);
        let node = s.swarm.as_ref().unwrap();
        assert_eq!(
            info,
            format!("3 {}", node.node_id),
            "docker info on {}",
            s.segment_id
        );
        assert_eq!(node.role(), SwarmRole::Manager);
    }

    the_swarm_part_is_idempotent_and_checked(&mut c, &agent, &ca, &a, &b, &joining).await;
    agent.kill(nix::sys::signal::Signal::SIGTERM);
    agent.spawn().await;
    let mut c = agent.client().await;
    let again = get(&mut c, "swa-a").await;
    assert_eq!(
        again.swarm, a.swarm,
        "the node and its tokens after an agent restart"
    );

    for cli in &clis[..2] {
        cli.import_busybox();
    }
    overlay_joins_two_segments(&clis[0], &clis[1]);
    another_cluster_cannot_reach_the_swarm_ports(&mut c, &agent, &a, &b, &clis[1]).await;
    a_remote_peer_reaches_the_swarm_ports_once_set(&mut c, &a).await;
    a_worker_joins_on_the_other_clusters_old_address(&mut c, &agent, &ca, &a, &b, &clis[0]).await;
    a_rebuild_repairs_a_lost_membership(&mut c, &agent, &ca, &s3, &clis[0]).await;

    // A deleted segment leaves: two nodes, both Ready, still managers.
    c.delete_segment(DeleteSegmentRequest {
        segment_id: "swa-c".into(),
    })
    .await
    .unwrap();
    eventually("two nodes left, both ready", || all_ready(&clis[0], 2));
    for cli in &clis[..2] {
        let info = cli.ok(&["info", "--format", "{{.Swarm.Nodes}} {{.Swarm.Managers}}"]);
        assert_eq!(info, "2 2");
    }
}

async fn get(c: &mut Client, id: &str) -> Segment {
    c.get_segment(GetSegmentRequest {
        segment_id: id.into(),
        include_ca_cert: false,
    })
    .await
    .unwrap()
    .into_inner()
}

/// The same create again is the same segment and node; another swarm part
/// is ALREADY_EXISTS; bad input is INVALID_ARGUMENT before anything is
/// made; a join the swarm refuses undoes the create.
async fn the_swarm_part_is_idempotent_and_checked(
    c: &mut Client,
    agent: &RealAgent,
    ca: &TestCa,
    a: &Segment,
    b: &Segment,
    joining: &Option<SwarmSpec>,
) {
    let retry = create(c, agent, swarm_req("swa-b", "c1", ca, joining.clone())).await;
    assert_eq!(retry.swarm, b.swarm);
    let token = &a.swarm.as_ref().unwrap().worker_join_token;
    let other = join(SwarmMode::JoinWorker, token, &a.public_ipv4);
    let e = c
        .create_segment(swarm_req("swa-b", "c1", ca, other))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::AlreadyExists, "{e:?}");
    assert!(e.message().contains("swarm"), "{e:?}");
    let bad = [
        join(SwarmMode::JoinWorker, "SWMTKN-1-nope", &a.public_ipv4),
        join(SwarmMode::JoinWorker, token, "203.0.113.0.1"),
        Some(SwarmSpec::default()),
    ];
    for swarm in bad {
        let e = c
            .create_segment(swarm_req("swa-x", "c1", ca, swarm))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        assert!(
            e.message().len() < 400 && !e.message().contains(token),
            "{e:?}"
        );
    }
    // A well-formed token of no swarm: Docker refuses, the create is undone.
    let forged = format!("{}{}", &token[..60], "0".repeat(25));
    let refused = join(SwarmMode::JoinWorker, &forged, &a.public_ipv4);
    let e = c
        .create_segment(swarm_req("swa-x", "c1", ca, refused))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    let gone = c.get_segment(GetSegmentRequest {
        segment_id: "swa-x".into(),
        include_ca_cert: false,
    });
    assert_eq!(gone.await.unwrap_err().code(), tonic::Code::NotFound);
    assert!(!agent.segment_dir("swa-x").exists(), "no rootfs left");
    assert!(!common::real::domain_exists("seg-swa-x"), "no domain left");
}

/// An overlay network (VXLAN on 4789/udp between two segments of the
/// cluster, through the bridge filter) carries a ping.
fn overlay_joins_two_segments(a: &DockerCli, b: &DockerCli) {
    a.ok(&words("network create -d overlay --attachable ov"));
    a.ok(&words("run -d --name o1 --network ov busybox sleep 100000"));
    b.ok(&words("run -d --name o2 --network ov busybox sleep 100000"));
    let o1 = a.inspect(
        "{{(index .NetworkSettings.Networks \"ov\").IPAddress}}",
        "o1",
    );
    let out = b.ok(&["exec", "o2", "ping", "-c", "2", "-W", "2", &o1]);
    assert!(
        out.contains("2 packets received"),
        "across the overlay: {out}"
    );
}

/// From `--net host` containers: TCP connects to 2377 and 7946, raw UDP
/// datagrams to 7946 and 4789 (seen or not on A's eth0), from B (same
/// cluster) and from F (another cluster's segment on the same bridge).
async fn another_cluster_cannot_reach_the_swarm_ports(
    c: &mut Client,
    agent: &RealAgent,
    a: &Segment,
    b: &Segment,
    b_cli: &DockerCli,
) {
    let ca2 = TestCa::new("cluster-swarm-other");
    let f = create(c, agent, swarm_req("swa-f", "c2", &ca2, None)).await;
    let f_cli = DockerCli::of(&f.public_ipv4, &ca2);
    f_cli.import_busybox();
    for port in ["2377", "7946"] {
        let connect = |cli: &DockerCli| {
            let sh = format!("nc -w 3 {} {port} </dev/null", a.public_ipv4);
            cli.run(&["run", "--rm", "--net", "host", "busybox", "sh", "-c", &sh])
        };
        let same = connect(b_cli);
        assert!(same.success, "{port}/tcp from the same cluster: {same:?}");
        let foreign = connect(&f_cli);
        assert!(
            !foreign.success,
            "{port}/tcp from another cluster: {foreign:?}"
        );
        assert!(
            foreign.stderr.contains("timed out"),
            "dropped, not refused: {foreign:?}"
        );
    }
    let a_ip: Ipv4Addr = a.public_ipv4.parse().unwrap();
    let a_netns = netns_of(init_pid("seg-swa-a").expect("A's init"));
    let capture = Capture::start(&a_netns, "eth0");
    for (sender, s) in [(b_cli, b), (&f_cli, &f)] {
        let me = Station::segment(s.public_ipv4.parse().unwrap());
        let frames: Vec<String> = [7946u16, 4789]
            .iter()
            .map(|port| {
                let mark = frames::marker("swa", &format!("{}-{port}", s.segment_id));
                let ip = frames::ipv4_udp(me.ip, a_ip, 40000, *port, &mark);
                frames::hex(&frames::eth(
                    Station::segment(a_ip).mac,
                    me.mac,
                    0x0800,
                    &ip,
                ))
            })
            .collect();
        let mut args = vec![
            "run", "--rm", "--net", "host", "busybox", "/rawsend", "eth0", "1",
        ];
        args.extend(frames.iter().map(String::as_str));
        let out = sender.run(&args);
        assert!(out.success && out.stdout.contains("sent"), "{out:?}");
    }
    let seen = capture.stop();
    for port in [7946, 4789] {
        assert!(
            seen.contains(&format!("swa/swa-b-{port}")),
            "{port}/udp from B: {seen:?}"
        );
        assert!(
            !seen.contains(&format!("swa/swa-f-{port}")),
            "{port}/udp from F: {seen:?}"
        );
    }
    c.delete_segment(DeleteSegmentRequest {
        segment_id: "swa-f".into(),
    })
    .await
    .unwrap();
}

/// A worker joins through two managers on the address the other
/// cluster's segment just left (its swarm pairs are the worker's own now),
/// reports no tokens, and its delete takes it out of the node list.
async fn a_worker_joins_on_the_other_clusters_old_address(
    c: &mut Client,
    agent: &RealAgent,
    ca: &TestCa,
    a: &Segment,
    b: &Segment,
    manager: &DockerCli,
) {
    let token = &a.swarm.as_ref().unwrap().worker_join_token;
    let mut spec = join(SwarmMode::JoinWorker, token, &a.public_ipv4).unwrap();
    spec.manager_addresses
        .push(format!("{}:2377", b.public_ipv4));
    let w = create(c, agent, swarm_req("swa-w", "c1", ca, Some(spec))).await;
    assert_eq!(
        w.public_ipv4, "203.0.113.166",
        "the other cluster's address"
    );
    let node = w.swarm.clone().unwrap();
    assert_eq!(node.role(), SwarmRole::Worker);
    assert!(node.worker_join_token.is_empty() && node.manager_join_token.is_empty());
    eventually("four nodes ready", || all_ready(manager, 4));
    let listed = manager.ok(&[
        "node",
        "inspect",
        "--format",
        "{{.Spec.Role}}",
        &node.node_id,
    ]);
    assert_eq!(listed, "worker");
    c.delete_segment(DeleteSegmentRequest {
        segment_id: "swa-w".into(),
    })
    .await
    .unwrap();
    eventually("the worker gone from the list", || all_ready(manager, 3));
}

/// The node is taken out of its swarm behind the agent's back (a forced
/// leave with the agent's token); RebuildSegment joins it again and the
/// stale node is removed from the managers' list.
async fn a_rebuild_repairs_a_lost_membership(
    c: &mut Client,
    agent: &RealAgent,
    ca: &TestCa,
    s: &Segment,
    manager: &DockerCli,
) {
    let tls = agent.segment_dir(&s.segment_id).join("agent-tls");
    let read = |f: &str| std::fs::read_to_string(tls.join(f)).unwrap();
    let admin = DockerCli::new(
        &s.public_ipv4,
        &read("ca.pem"),
        Some(&(read("cert.pem"), read("key.pem"))),
    );
    let header = segment_policy::agent_token::HEADER;
    let config = serde_json::json!({"HttpHeaders": {header: read("agent-token").trim()}});
    std::fs::write(admin.dir().join("config/config.json"), config.to_string()).unwrap();
    admin.ok(&words("swarm leave --force"));
    let r = c
        .rebuild_segment(RebuildSegmentRequest {
            segment_id: s.segment_id.clone(),
            tls: Some(ca.tls()),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.state(), SegmentState::Running, "{r:?}\n{}", agent.log());
    let node = r.swarm.expect("still a swarm node");
    assert_ne!(
        node.node_id,
        s.swarm.as_ref().unwrap().node_id,
        "joined again"
    );
    assert_eq!(node.role(), SwarmRole::Manager);
    eventually("three nodes ready after the repair", || {
        all_ready(manager, 3)
    });
}

/// A namespace on the sandbox's bridge through a port that is not a
/// segment's: another host of the service, at 203.0.113.250. Removed on drop.
struct RemoteHost;

const REMOTE_NS: &str = "swa-remote";
const REMOTE_IP: &str = "203.0.113.250";

impl RemoteHost {
    fn up() -> Self {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", REMOTE_NS])
            .status();
        let run = |args: &[&str]| {
            let out = std::process::Command::new(args[0])
                .args(&args[1..])
                .output()
                .unwrap();
            assert!(out.status.success(), "{args:?}: {out:?}");
        };
        run(&["ip", "netns", "add", REMOTE_NS]);
        let guard = RemoteHost;
        let sandbox = format!("--net={}", common::real::NETNS);
        let remote = format!("/run/netns/{REMOTE_NS}");
        run(&[
            "nsenter", &sandbox, "ip", "link", "add", "swa-rem0", "type", "veth", "peer", "name",
            "swa-rem1", "netns", &remote,
        ]);
        run(&[
            "nsenter", &sandbox, "ip", "link", "set", "swa-rem0", "master", "segbr0", "up",
        ]);
        let cidr = format!("{REMOTE_IP}/24");
        run(&[
            "ip", "-n", REMOTE_NS, "addr", "add", &cidr, "dev", "swa-rem1",
        ]);
        run(&["ip", "-n", REMOTE_NS, "link", "set", "swa-rem1", "up"]);
        guard
    }

    /// Whether a TCP connection from here to `ip:port` is accepted in 3 s.
    fn connects(&self, ip: &str, port: u16) -> bool {
        let script = format!("exec 3<>/dev/tcp/{ip}/{port}");
        std::process::Command::new("ip")
            .args([
                "netns", "exec", REMOTE_NS, "timeout", "3", "bash", "-c", &script,
            ])
            .status()
            .unwrap()
            .success()
    }
}

impl Drop for RemoteHost {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", REMOTE_NS])
            .status();
    }
}

/// A host off the bridge reaches the swarm's manager port of A only while
/// SetClusterPeers lists it for A's cluster: not before, not when it is
/// another cluster's peer, not once cleared.
async fn a_remote_peer_reaches_the_swarm_ports_once_set(c: &mut Client, a: &Segment) {
    let remote = RemoteHost::up();
    let ip = a.public_ipv4.as_str();
    let peers = |cluster: &str, list: &[&str]| SetClusterPeersRequest {
        cluster_id: cluster.into(),
        remote_addresses: list.iter().map(|s| s.to_string()).collect(),
    };
    // The path works: a port the filter leaves open (Docker's TLS front).
    assert!(remote.connects(ip, 2376), "the other host reaches A's 2376");
    assert!(
        !remote.connects(ip, 2377),
        "2377 from a host that is no peer"
    );
    let r = c
        .set_cluster_peers(peers("c1", &[REMOTE_IP]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.remote_addresses, [REMOTE_IP]);
    assert!(r.segments >= 2, "A and B at least: {r:?}");
    assert!(remote.connects(ip, 2377), "2377 from a peer of A's cluster");
    assert!(remote.connects(ip, 7946), "7946 from a peer of A's cluster");
    let own = c.set_cluster_peers(peers("c1", &[ip])).await.unwrap_err();
    assert_eq!(own.code(), tonic::Code::InvalidArgument, "{own:?}");
    c.set_cluster_peers(peers("c1", &[])).await.unwrap();
    c.set_cluster_peers(peers("c2", &[REMOTE_IP]))
        .await
        .unwrap();
    assert!(
        !remote.connects(ip, 2377),
        "2377 from another cluster's peer"
    );
    c.set_cluster_peers(peers("c2", &[])).await.unwrap();
    assert!(!remote.connects(ip, 2377), "2377 once cleared");
}
