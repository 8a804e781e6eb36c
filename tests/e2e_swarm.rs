//! End-to-end: swarm mode in a real Docker segment behind the mutual-TLS
//! front. dockerd runs without live-restore, the agent's swarm token (and
//! only it) lets a client change the swarm membership, and a rebuild with
//! a new CA keeps the swarm, its tasks and plain containers. A benchmark
//! compares a `_ping` through the front with one to dockerd's own TLS.
//!
//! Three segments of one cluster form a swarm (joined here with the agent's
//! token and certificate, as the agent will do it), spread a service with a
//! port published on each segment (`mode=host`: the routing mesh needs IPVS,
//! which this dev kernel lacks) and carry an overlay network.
//!
//! Addresses: 203.0.113.158, 203.0.113.159, 203.0.113.160-162, per test.

mod common;

use common::docker::docker_req;
use common::docker::{DockerCli, TestCa, assert_refused, docker_segment};
use common::real::{NETNS, in_sandbox, init_pid};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
use segment_agent::proto::agent::{RebuildSegmentRequest, SegmentState};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

/// A docker CLI holding the agent's client certificate and, when `token`,
/// the agent's swarm token in the header dockerd forwards to the plugin.
fn agent_cli(ip: &str, agent_tls: &std::path::Path, token: bool) -> DockerCli {
    let read = |f: &str| std::fs::read_to_string(agent_tls.join(f)).unwrap();
    let cli = DockerCli::new(
        ip,
        &read("ca.pem"),
        Some(&(read("cert.pem"), read("key.pem"))),
    );
    if token {
        let header = segment_policy::agent_token::HEADER;
        let config = serde_json::json!({"HttpHeaders": {header: read("agent-token").trim()}});
        std::fs::write(cli.dir().join("config/config.json"), config.to_string()).unwrap();
    }
    cli
}

/// `s` split at spaces: a docker command line without quoting.
fn words(s: &str) -> Vec<&str> {
    s.split_whitespace().collect()
}

/// The customer, the agent's certificate without the token and a guessed
/// token: none may init a swarm.
fn membership_is_refused_without_the_token(ip: &str, ca: &TestCa, agent_tls: &std::path::Path) {
    let init = words("swarm init --advertise-addr");
    let init = [init.as_slice(), &[ip]].concat();
    let out = DockerCli::of(ip, ca).fails(&init);
    assert_refused(&out, "SEGMENT-1024", "swarm init by the customer");
    let out = agent_cli(ip, agent_tls, false).fails(&init);
    assert_refused(
        &out,
        "SEGMENT-1024",
        "the agent's certificate without the token",
    );
    let forged = DockerCli::of(ip, ca);
    let header = segment_policy::agent_token::HEADER;
    let config = serde_json::json!({"HttpHeaders": {header: "0".repeat(64)}});
    std::fs::write(forged.dir().join("config/config.json"), config.to_string()).unwrap();
    assert_refused(&forged.fails(&init), "SEGMENT-1024", "a guessed token");
}

const NODE: &str = "{{.Swarm.NodeID}} {{.Swarm.LocalNodeState}}";
const STARTED: &str = "{{.State.Pid}} {{.State.StartedAt}}";

#[tokio::test]
async fn swarm_runs_behind_the_front_and_survives_a_rebuild() {
    let ca = TestCa::new("cluster-swarm-old");
    let (agent, s) = docker_segment("swm", "203.0.113.158-203.0.113.158", &ca, 1024).await;
    let ip = s.public_ipv4.clone();
    let customer = DockerCli::of(&ip, &ca);
    let agent_tls = agent.segment_dir("swm-a").join("agent-tls");
    membership_is_refused_without_the_token(&ip, &ca, &agent_tls);

    // With the token, swarm init works: dockerd runs without live-restore.
    let admin = agent_cli(&ip, &agent_tls, true);
    admin.ok(&["swarm", "init", &format!("--advertise-addr={ip}")]);
    let node = customer.ok(&["info", "--format", NODE]);
    assert!(node.ends_with(" active"), "{node}");
    customer.import_busybox();
    customer.ok(&words("run -d --name plain busybox sleep 100000"));
    customer.ok(&words(
        "service create --detach --name svc --replicas 1 busybox sleep 100000",
    ));
    let task = wait_for_task(&customer);
    let plain = customer.inspect(STARTED, "plain");
    let task_started = customer.inspect(STARTED, &task);

    let new_ca = TestCa::new("cluster-swarm-new");
    let mut c = agent.client().await;
    let r = c
        .rebuild_segment(RebuildSegmentRequest {
            segment_id: "swm-a".into(),
            tls: Some(new_ca.tls()),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.state(), SegmentState::Running, "{r:?}\n{}", agent.log());
    let customer = DockerCli::of(&ip, &new_ca);
    let same_node = customer.ok(&["info", "--format", NODE]);
    assert_eq!(same_node, node, "same swarm node, still active");
    assert_eq!(
        customer.inspect(STARTED, "plain"),
        plain,
        "plain container untouched"
    );
    assert_eq!(
        customer.inspect(STARTED, &task),
        task_started,
        "swarm task untouched"
    );
    let old_client = DockerCli::new(&ip, &new_ca.cert_pem, Some(&ca.client_cert()));
    assert!(
        !old_client.run(&["info"]).success,
        "the old CA's certificates are refused"
    );

    // Leaving is the agent's too; the rebuild wrote a new token.
    let out = customer.fails(&words("swarm leave --force"));
    assert_refused(&out, "SEGMENT-1024", "swarm leave by the customer");
    let out = admin.fails(&words("swarm leave --force"));
    assert!(!out.is_empty(), "the old token and certificate are refused");
    agent_cli(&ip, &agent_tls, true).ok(&words("swarm leave --force"));
}

/// The service's one task container, once it runs.
fn wait_for_task(cli: &DockerCli) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ids = cli.ok(&[
            "ps",
            "-q",
            "--filter",
            "label=com.docker.swarm.service.name=svc",
        ]);
        if let Some(id) = ids.lines().next() {
            return id.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "the service's task never started"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A TLS client with the agent's certificate, as a Go client (the docker
/// CLI) connects: `TCP_NODELAY` set.
fn agent_tls_client(dir: &std::path::Path) -> TlsConnector {
    let read = |f: &str| std::fs::read(dir.join(f)).unwrap();
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(&read("ca.pem")).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![CertificateDer::from_pem_slice(&read("cert.pem")).unwrap()],
            PrivateKeyDer::from_pem_slice(&read("key.pem")).unwrap(),
        )
        .unwrap();
    TlsConnector::from(Arc::new(config))
}

/// One `GET /_ping` on a new connection; Ok when it answered 200.
async fn ping(endpoint: SocketAddr, tls: &TlsConnector) -> std::io::Result<bool> {
    let tcp = tokio::net::TcpStream::connect(endpoint).await?;
    tcp.set_nodelay(true)?;
    let mut s = tls
        .connect(ServerName::IpAddress(endpoint.ip().into()), tcp)
        .await?;
    let request = format!("GET /_ping HTTP/1.1\r\nHost: {endpoint}\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    let _ = s.read_to_end(&mut response).await;
    Ok(response.starts_with(b"HTTP/1.1 200"))
}

/// Milliseconds of `rounds` pings of each endpoint (a new TCP and TLS
/// connection each, as the docker CLI makes per command), the endpoints
/// taking turns so that noise on this shared machine hits them alike; from
/// inside the sandbox namespace; each list sorted.
fn ping_times(endpoints: Vec<SocketAddr>, tls: TlsConnector, rounds: usize) -> Vec<Vec<f64>> {
    std::thread::spawn(move || {
        let ns = std::fs::File::open(NETNS).unwrap();
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let deadline = Instant::now() + Duration::from_secs(30);
            for &endpoint in &endpoints {
                while !ping(endpoint, &tls).await.unwrap_or(false) {
                    assert!(Instant::now() < deadline, "{endpoint} never answered");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            let mut times = vec![Vec::with_capacity(rounds); endpoints.len()];
            for _ in 0..rounds {
                for (endpoint, list) in endpoints.iter().zip(&mut times) {
                    let t = Instant::now();
                    assert!(ping(*endpoint, &tls).await.unwrap());
                    list.push(t.elapsed().as_secs_f64() * 1000.0);
                }
            }
            times.iter_mut().for_each(|t| t.sort_by(f64::total_cmp));
            times
        })
    })
    .join()
    .unwrap()
}

/// Milliseconds of `rounds` runs of `docker version` (the real CLI, one
/// process and connection each) with each client, taking turns; sorted.
fn cli_times(clis: &[&DockerCli], rounds: usize) -> Vec<Vec<f64>> {
    let mut times = vec![Vec::with_capacity(rounds); clis.len()];
    for _ in 0..rounds {
        for (cli, list) in clis.iter().zip(&mut times) {
            let t = Instant::now();
            cli.ok(&["version", "--format", "{{.Server.Version}}"]);
            list.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    times.iter_mut().for_each(|t| t.sort_by(f64::total_cmp));
    times
}

/// dockerd's own TLS listener on `port` besides the front: the daemon.json
/// an agent without the front wrote (the supervisor then restarts dockerd
/// on SIGUSR1 and leaves the running front alone).
fn listen_directly(etc_docker: &std::path::Path, domain: &str, port: u16) {
    let mut config: serde_json::Value =
        serde_json::from_str(&segment_agent::docker::daemon_json()).unwrap();
    config["hosts"] = serde_json::json!([
        "unix:///var/run/docker.sock",
        format!("tcp://0.0.0.0:{port}")
    ]);
    for (k, v) in [
        ("tlsverify", "true"),
        ("tlscacert", "ca.pem"),
        ("tlscert", "server-cert.pem"),
        ("tlskey", "server-key.pem"),
    ] {
        config[k] = match v {
            "true" => true.into(),
            file => format!("/etc/docker/{file}").into(),
        };
    }
    let tmp = etc_docker.join(".daemon.json.bench");
    std::fs::write(&tmp, config.to_string()).unwrap();
    std::fs::rename(&tmp, etc_docker.join("daemon.json")).unwrap();
    let init = init_pid(domain).expect("segment init");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(init as i32),
        nix::sys::signal::Signal::SIGUSR1,
    )
    .unwrap();
}

#[tokio::test]
async fn the_front_adds_little_to_a_ping_over_dockerds_own_tls() {
    let ca = TestCa::new("cluster-swarm-bench");
    let (agent, s) = docker_segment("swb", "203.0.113.159-203.0.113.159", &ca, 1024).await;
    let dir = agent.segment_dir("swb-a");
    let tls = agent_tls_client(&dir.join("agent-tls"));
    let ip: std::net::IpAddr = s.public_ipv4.parse().unwrap();
    let customer = DockerCli::of(&s.public_ipv4, &ca);
    let (rounds, cli_rounds) = (300, 40);
    listen_directly(&dir.join("etc-docker"), "seg-swb-a", 2378);
    let endpoints = vec![SocketAddr::new(ip, 2376), SocketAddr::new(ip, 2378)];
    let pings = ping_times(endpoints, tls, rounds);
    let (front, direct) = (&pings[0], &pings[1]);
    let customer_direct = DockerCli::of(&s.public_ipv4, &ca).on_port(2378);
    let clis = cli_times(&[&customer, &customer_direct], cli_rounds);
    let (front_cli, direct_cli) = (&clis[0], &clis[1]);
    let pct = |t: &[f64], p: usize| t[(t.len() - 1) * p / 100];
    let rows = [
        ("_ping via the front", front),
        ("_ping via dockerd TLS", direct),
        ("docker version via the front", front_cli),
        ("docker version via dockerd TLS", direct_cli),
    ];
    for (name, t) in rows {
        println!(
            "BENCH {name:32} n={:3} p50 {:8.3} ms  p90 {:8.3} ms",
            t.len(),
            pct(t, 50),
            pct(t, 90)
        );
    }
    println!(
        "BENCH ratio front/dockerd p50: _ping {:.2}, docker version {:.2}",
        pct(front, 50) / pct(direct, 50),
        pct(front_cli, 50) / pct(direct_cli, 50)
    );
    assert!(
        pct(front, 50) < pct(direct, 50) * 2.0 + 1.0
            && pct(front_cli, 50) < pct(direct_cli, 50) * 1.5 + 5.0,
        "the front must not double a ping or slow docker version by half"
    );
}

/// Polls `what` until it returns `Some`, at most 60 s.
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within 60 s");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[tokio::test]
async fn three_segments_of_a_cluster_form_one_swarm_and_spread_a_service() {
    let ca = TestCa::new("cluster-swarm-three");
    let (agent, a) = docker_segment("swc", "203.0.113.160-203.0.113.162", &ca, 1024).await;
    let mut c = agent.client().await;
    let mut segments = vec![a];
    let creating = Instant::now();
    for id in ["swc-b", "swc-c"] {
        let s = c
            .create_segment(docker_req(id, &ca, 1024))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(s.state(), SegmentState::Running, "{s:?}\n{}", agent.log());
        segments.push(s);
    }
    let each = creating.elapsed().as_secs_f64() / 2.0;
    println!(
        "BENCH CreateSegment of a Docker segment, RUNNING with Docker answering: {each:.2} s each"
    );
    let admins: Vec<DockerCli> = ["swc-a", "swc-b", "swc-c"]
        .iter()
        .zip(&segments)
        .map(|(id, s)| {
            agent_cli(
                &s.public_ipv4,
                &agent.segment_dir(id).join("agent-tls"),
                true,
            )
        })
        .collect();
    let ips: Vec<&str> = segments.iter().map(|s| s.public_ipv4.as_str()).collect();
    let started = Instant::now();
    form_swarm(&admins, &ips);
    let customers: Vec<DockerCli> = ips.iter().map(|ip| DockerCli::of(ip, &ca)).collect();
    eventually("three nodes ready", || {
        let ready = customers[0].ok(&["node", "ls", "--format", "{{.Status}}"]);
        (ready.lines().filter(|l| *l == "Ready").count() == 3).then_some(())
    });
    let took = started.elapsed().as_secs_f64();
    println!("BENCH three-node swarm ready {took:.2} s after the init");
    for cli in &customers {
        let nodes = cli.ok(&["info", "--format", "{{.Swarm.Nodes}}"]);
        assert_eq!(nodes, "3", "docker info on every segment");
    }
    for cli in &customers {
        cli.import_busybox();
    }
    service_spreads_with_a_port_on_every_segment(&customers[0], &ips);
    overlay_joins_two_segments(&customers[0], &customers[1]);
}

/// `swarm init` on the first, the others join as managers: a swarm that
/// keeps its quorum when one segment goes, and whose `docker info` lists
/// every node on any segment (a worker's shows none).
fn form_swarm(admins: &[DockerCli], ips: &[&str]) {
    admins[0].ok(&["swarm", "init", &format!("--advertise-addr={}", ips[0])]);
    let token = admins[0].ok(&words("swarm join-token -q manager"));
    let manager = format!("{}:2377", ips[0]);
    for (admin, ip) in admins.iter().zip(ips).skip(1) {
        let advertise = format!("--advertise-addr={ip}");
        admin.ok(&["swarm", "join", &advertise, "--token", &token, &manager]);
    }
}

/// One task per segment (Swarm's spread), its port published on each
/// segment's own address (`mode=host`).
fn service_spreads_with_a_port_on_every_segment(manager: &DockerCli, ips: &[&str]) {
    let create = words(
        "service create --detach --name web --replicas 3 --no-resolve-image \
         --endpoint-mode dnsrr --publish mode=host,target=80,published=8080 busybox sh -c",
    );
    let serve = "mkdir -p /www && echo swarm-web > /www/index.html && exec httpd -f -p 80 -h /www";
    // The routing mesh and VIPs are IPVS, which the kernel refuses in the
    // segment's user namespace: refused up front, not left answering nowhere
    // (the CLI looks the network up first: it must exist).
    manager.ok(&words("network create -d overlay lbnet"));
    for (what, spec) in [
        ("the routing mesh", "--publish 8081:80"),
        ("a VIP on a network", "--network lbnet"),
    ] {
        let refused = [
            words("service create --detach --name lb --no-resolve-image").as_slice(),
            &words(spec),
            &["busybox", "sh", "-c", serve],
        ]
        .concat();
        assert_refused(&manager.fails(&refused), "SEGMENT-1027", what);
    }
    manager.ok(&words("network rm lbnet"));
    manager.ok(&[create.as_slice(), &[serve]].concat());
    let ps = words("service ps web --filter desired-state=running --format");
    let ps = [ps.as_slice(), &["{{.Node}} {{.CurrentState}}"]].concat();
    let mut nodes = eventually("three tasks running", || {
        let out = manager.ok(&ps);
        let running: Vec<String> = out
            .lines()
            .filter(|l| l.contains("Running"))
            .map(|l| l.split(' ').next().unwrap().to_owned())
            .collect();
        (running.len() == 3).then_some(running)
    });
    nodes.sort();
    nodes.dedup();
    assert_eq!(nodes.len(), 3, "one task per segment: {nodes:?}");
    for ip in ips {
        let url = format!("http://{ip}:8080/");
        eventually(&format!("{url} answers"), || {
            let out = in_sandbox(&["curl", "-s", "-m", "3", &url]);
            let body = String::from_utf8_lossy(&out.stdout).into_owned();
            body.contains("swarm-web").then_some(())
        });
    }
}

/// An overlay network (VXLAN between the segments, inside their user
/// namespaces) carries containers' traffic from one segment to another.
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
