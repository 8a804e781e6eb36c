//! The bridge filter: one address, one MAC per segment. A customer with a
//! `--net host` container (CAP_NET_RAW by default) sends spoofed ARP,
//! frames with foreign source MACs and addresses, tagged frames, IPv6,
//! BPDUs, DHCP offers and more from their segment's eth0, and puts macvlan
//! and ipvlan interfaces on it. The gateway (the sandbox bridge's own
//! stack) and the victim segment are watched with tcpdump and through their
//! neighbour tables; the segments' own traffic must still work.
//!
//! Addresses: 203.0.113.180-203.0.113.199, one range per test.

use crate::common::{
    docker::{DockerCli, TestCa, docker_req},
    frames::{self, Station},
    net::{self, assert_arrivals, fdb, neighbour, netns_of, nsenter, nsenter_ok, observe},
    real::{NETNS, RealAgent, in_sandbox, init_pid, pings},
};
use segment_agent::{
    network::filter::SegmentPort,
    proto::agent::{SegmentState, StartSegmentRequest, StopSegmentRequest},
};
use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

const GATEWAY: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);

/// One segment of a test, as the bridge sees it.
struct Seg {
    station: Station,
    /// Its network namespace (its init's), for captures and tables.
    netns: String,
    /// Its bridge port.
    port: String,
}

impl Seg {
    fn of(domain: &str, ip: &str) -> Seg {
        let ip: Ipv4Addr = ip.parse().unwrap();
        let pid = init_pid(domain).unwrap_or_else(|| panic!("{domain} has no init"));
        Seg {
            station: Station::segment(ip),
            netns: netns_of(pid),
            port: SegmentPort::of(ip).name,
        }
    }

    fn ip(&self) -> String {
        self.station.ip.to_string()
    }
}

/// A real agent with two running segments `<prefix>-a` (the attacker) and
/// `<prefix>-v` (the victim) of `image`.
async fn pair(
    prefix: &str,
    range: &str,
    network: &str,
    ca: Option<&TestCa>,
) -> (RealAgent, Seg, Seg) {
    let agent = RealAgent::start_full(prefix, range, "apparmor = \"off\"", network, "").await;
    let mut c = agent.client().await;
    let mut segs = Vec::new();
    for role in ["a", "v"] {
        let id = format!("{prefix}-{role}");
        let req = match ca {
            Some(ca) => docker_req(&id, ca, 512),
            None => crate::common::small_req(&id, "c1"),
        };
        let s = c.create_segment(req).await.unwrap().into_inner();
        assert_eq!(s.state(), SegmentState::Running, "{s:?}\n{}", agent.log());
        segs.push(Seg::of(&format!("seg-{id}"), &s.public_ipv4));
    }
    let v = segs.pop().unwrap();
    (agent, segs.pop().unwrap(), v)
}

/// The gateway as the segments see it.
fn gateway() -> Station {
    Station {
        mac: net::mac_of(NETNS, "segbr0"),
        ip: GATEWAY,
    }
}

/// Runs `args` in a `--net host` container of the segment behind `cli`.
fn host_net(cli: &DockerCli, args: &[&str]) -> crate::common::docker::CliOutput {
    let run = ["run", "--rm", "--net", "host", "busybox"];
    cli.run(&[&run[..], args].concat())
}

/// Sends `frames` from the segment's eth0 with the raw sender in a
/// `--net host` container.
fn send_from(cli: &DockerCli, frames: &[Vec<u8>]) {
    let hex: Vec<String> = frames.iter().map(|f| frames::hex(f)).collect();
    let mut args = vec!["/rawsend", "eth0", "1"];
    args.extend(hex.iter().map(String::as_str));
    let out = host_net(cli, &args);
    assert!(out.success && out.stdout.contains("sent"), "{out:?}");
}

/// The gateway learns both segments and the victim learns the gateway, so
/// there are mappings for an attack to move.
fn warm_up(a: &Seg, v: &Seg) {
    assert!(pings(&a.ip()) && pings(&v.ip()), "the gateway reaches both");
    let gw = GATEWAY.to_string();
    nsenter_ok(&v.netns, &["ping", "-c", "1", "-W", "2", &gw]);
}

/// Asserts the true mappings: the gateway's and the victim's neighbour
/// tables, and the bridge's MAC table (nothing but A's MAC on A's port).
fn assert_true_mappings(a: &Seg, v: &Seg, gw: Station) {
    assert_eq!(
        neighbour(NETNS, v.station.ip),
        Some(v.station.mac),
        "gateway's view of V"
    );
    if let Some(mac) = neighbour(NETNS, a.station.ip) {
        assert_eq!(mac, a.station.mac, "gateway's view of A");
    }
    assert_eq!(
        neighbour(&v.netns, GATEWAY),
        Some(gw.mac),
        "V's view of the gateway"
    );
    let table = fdb(NETNS, "segbr0");
    assert!(
        table.contains(&(v.station.mac, v.port.clone())),
        "{table:?}"
    );
    let on_a: Vec<_> = table.iter().filter(|(_, p)| *p == a.port).collect();
    assert!(
        on_a.iter().all(|(mac, _)| *mac == a.station.mac),
        "only A's MAC on A's port: {on_a:?}"
    );
}

#[tokio::test]
async fn spoofing_from_a_host_network_container_is_dropped_at_the_port() {
    let ca = TestCa::new("cluster-netspoof");
    let (_agent, a, v) = pair("netspoof", "203.0.113.180-203.0.113.181", "", Some(&ca)).await;
    let cli = DockerCli::of(&a.ip(), &ca);
    cli.import_busybox();
    warm_up(&a, &v);
    let gw = gateway();

    // busybox's own tools first: arping refuses to bind a foreign source
    // address, but whatever it manages to send must change nothing.
    let (vip, gip) = (v.ip(), GATEWAY.to_string());
    let (vip, gip) = (vip.as_str(), gip.as_str());
    for args in [
        ["arping", "-U", "-c", "2", "-I", "eth0", "-s", vip, vip],
        ["arping", "-A", "-c", "2", "-I", "eth0", "-s", gip, vip],
    ] {
        let _ = host_net(&cli, &args);
    }
    assert_true_mappings(&a, &v, gw);

    // Then every frame of the catalogue, a MAC theft and a MAC flood.
    let tag = "netspoof";
    let probes = frames::catalogue(tag, a.station, v.station, gw);
    let mut sent: Vec<Vec<u8>> = probes.iter().map(|p| p.frame.clone()).collect();
    sent.push(frames::mac_theft(tag, v.station));
    sent.extend(frames::mac_flood(tag, 300));
    let seen = observe((NETNS, "segbr0"), (&v.netns, "eth0"), || {
        send_from(&cli, &sent)
    });
    assert_arrivals(&probes, &seen);
    for m in ["mac-theft-link-local", "mac-flood"] {
        let m = format!("{tag}/{m}");
        assert!(
            !seen.gateway.contains(&m) && !seen.victim.contains(&m),
            "{m}: {seen:?}"
        );
    }
    assert_true_mappings(&a, &v, gw);

    // The attacker's own traffic still flows, from the same container kind.
    for to in [gip, vip] {
        let out = host_net(&cli, &["ping", "-c", "2", "-W", "2", to]);
        assert!(out.success, "A pings {to}: {out:?}");
    }
    assert!(pings(vip), "the gateway still reaches V");
}

#[tokio::test]
async fn macvlan_and_ipvlan_interfaces_never_reach_the_bridge() {
    let ca = TestCa::new("cluster-netmacvlan");
    let (_agent, a, v) = pair("netmv", "203.0.113.184-203.0.113.185", "", Some(&ca)).await;
    let cli = DockerCli::of(&a.ip(), &ca);
    cli.import_busybox();
    warm_up(&a, &v);
    let gw = gateway();

    // Through the Docker API, as the customer would: a macvlan network on
    // eth0. If the policy plugin refuses it, that is a layer in front of
    // the filter; if it allows it, the filter must contain it.
    let created = cli.run(&[
        "network",
        "create",
        "-d",
        "macvlan",
        "-o",
        "parent=eth0",
        "--subnet",
        "203.0.113.0/24",
        "--gateway",
        "203.0.113.1",
        "netmv-macvlan",
    ]);
    eprintln!("docker network create -d macvlan: {created:?}");
    if created.success {
        macvlan_container_is_contained(&cli, &v, gw);
    } else {
        let refused = created
            .stderr
            .contains("authorization denied by plugin segment-policy");
        assert!(refused, "refused, but not by the policy: {created:?}");
    }
    foreign_interfaces_in_the_segment_are_contained(&a);
    assert_true_mappings(&a, &v, gw);
}

/// A container on the macvlan network `netmv-macvlan` pings the gateway and
/// V and sends a marked frame from its own MAC and address: none of it
/// arrives, and the gateway never learns its MAC.
fn macvlan_container_is_contained(cli: &DockerCli, v: &Seg, gw: Station) {
    // The container's MAC is Docker's choice (dockerd 20.10 takes no
    // --mac-address per network): its sender reads it from eth0.
    let (tag, ip) = ("netmv-docker", Ipv4Addr::new(203, 0, 113, 186));
    let udp = frames::ipv4_udp(ip, GATEWAY, 40000, 31337, &frames::marker(tag, "macvlan"));
    let rest = frames::hex(&[&0x0800u16.to_be_bytes()[..], &udp].concat());
    let script = format!(
        "mac=$(tr -d ':\\n' < /sys/class/net/eth0/address); echo mac=$mac; \
         ping -c 2 -W 1 203.0.113.1; ping -c 1 -W 1 {v}; /rawsend eth0 1 {gw}${{mac}}{rest}",
        v = v.ip(),
        gw = frames::hex(&gw.mac),
    );
    let ip_text = ip.to_string();
    let run = [
        "run",
        "--rm",
        "--net",
        "netmv-macvlan",
        "--ip",
        &ip_text,
        "busybox",
        "sh",
        "-c",
    ];
    let mut out = None;
    let seen = observe((NETNS, "segbr0"), (&v.netns, "eth0"), || {
        out = Some(cli.run(&[&run[..], &[script.as_str()]].concat()));
    });
    let out = out.unwrap();
    // It ran on the macvlan, sent, and got no answer.
    let sent = out.stdout.contains("sent 1 frames")
        && out
            .stdout
            .contains("2 packets transmitted, 0 packets received");
    assert!(
        sent && !out.stdout.contains("bytes from"),
        "the macvlan container: {out:?}"
    );
    let ours = |m: &String| m.starts_with(&format!("{tag}/"));
    assert!(
        !seen.gateway.iter().any(ours) && !seen.victim.iter().any(ours),
        "{seen:?}"
    );
    let mac = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("mac="))
        .expect("its MAC");
    let learned = neighbour(NETNS, ip).map(|m| frames::hex(&m));
    assert_ne!(
        learned.as_deref(),
        Some(mac),
        "the gateway never learns the macvlan's MAC"
    );
}

/// Below Docker, what a policy bypass would leave, made in A's namespace
/// directly: a macvlan with a MAC and an address of its own, and an address
/// of its own behind eth0's MAC (what an L2 ipvlan sends; this kernel has
/// no ipvlan: `ip` says "Unknown device type"). Both ping the gateway.
fn foreign_interfaces_in_the_segment_are_contained(a: &Seg) {
    let sh = |script: &str| nsenter(&a.netns, &["sh", "-c", script]);
    let ipvlan = sh("ip link add ipv0 link eth0 type ipvlan && ip link del ipv0");
    if ipvlan.status.success() {
        eprintln!("note: this kernel has ipvlan; its frames are eth0's MAC and another address");
    }
    let via_macvlan = sh("ip link add mv0 link eth0 type macvlan mode bridge && \
         ip addr add 203.0.113.186/24 dev mv0 && ip link set mv0 up && \
         ping -c 2 -W 1 -I mv0 203.0.113.1; ip link del mv0");
    let via_eth0 = sh(
        "ip addr add 203.0.113.187/32 dev eth0 && ping -c 2 -W 1 -I 203.0.113.187 203.0.113.1; \
         ip addr del 203.0.113.187/32 dev eth0",
    );
    for (what, out, ip) in [
        ("a macvlan", via_macvlan, Ipv4Addr::new(203, 0, 113, 186)),
        (
            "another address on eth0",
            via_eth0,
            Ipv4Addr::new(203, 0, 113, 187),
        ),
    ] {
        // Sent (so the attempt was real), never answered.
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            text.contains("2 packets transmitted, 0 received"),
            "{what}: {out:?}"
        );
        let learned = neighbour(NETNS, ip);
        assert!(
            learned.is_none_or(|mac| mac == [0; 6]),
            "the gateway learned {ip}: {learned:?}"
        );
    }
}

#[tokio::test]
async fn the_segments_own_traffic_still_flows() {
    let ca = TestCa::new("cluster-netflow");
    let (agent, a, v) = pair("netflow", "203.0.113.188-203.0.113.189", "", Some(&ca)).await;
    let (cli_a, cli_v) = (DockerCli::of(&a.ip(), &ca), DockerCli::of(&v.ip(), &ca));
    cli_a.import_busybox();
    let (published, host) = serve_on(&cli_v, &v);
    wait_for(
        || curl(&published).contains("hello-from-v"),
        "V's published port",
    );
    assert!(
        curl(&host).contains("hello-from-v"),
        "V's --net host server"
    );

    // From A: a --net host container, and one on A's own Docker bridge
    // (masqueraded to A's address by Docker's NAT).
    for net in ["host", "bridge"] {
        let out = cli_a.run(&[
            "run", "--rm", "--net", net, "busybox", "wget", "-qO-", &published,
        ]);
        assert!(
            out.success && out.stdout.contains("hello-from-v"),
            "{net}: {out:?}"
        );
    }
    for to in ["203.0.113.1", &v.ip()] {
        let out = host_net(&cli_a, &["ping", "-c", "2", "-W", "2", to]);
        assert!(out.success, "A pings {to}: {out:?}");
    }
    // A gratuitous ARP for its own address is allowed and changes nothing.
    let ip = a.ip();
    let out = host_net(
        &cli_a,
        &["arping", "-U", "-c", "1", "-I", "eth0", "-s", &ip, &ip],
    );
    assert!(out.success, "{out:?}");
    assert_eq!(neighbour(NETNS, a.station.ip), Some(a.station.mac));

    // Stopped and started again: the same port, filtered, and answering.
    let mut c = agent.client().await;
    let id = "netflow-v".to_string();
    let stop = StopSegmentRequest {
        segment_id: id.clone(),
        timeout_seconds: 10,
    };
    c.stop_segment(stop).await.unwrap();
    c.start_segment(StartSegmentRequest { segment_id: id })
        .await
        .unwrap();
    let ports = String::from_utf8_lossy(&in_sandbox(&["ip", "-brief", "link"]).stdout).into_owned();
    assert!(ports.contains(&format!("{}@", v.port)), "{ports}");
    wait_for(|| pings(&v.ip()), "V after a restart");
}

/// Two web servers on V: one behind a published port (Docker's NAT), one in
/// a `--net host` container; their URLs.
fn serve_on(cli: &DockerCli, v: &Seg) -> (String, String) {
    cli.import_busybox();
    let serve = "mkdir -p /www && echo hello-from-v > /www/index.html && exec httpd -f -h /www -p";
    for (net, publish, port) in [("bridge", Some("8080:80"), 80), ("host", None, 8081)] {
        let script = format!("{serve} {port}");
        let mut args = vec!["run", "-d", "--net", net];
        if let Some(publish) = publish {
            args.extend(["-p", publish]);
        }
        args.extend(["busybox", "sh", "-c", &script]);
        cli.ok(&args);
    }
    let url = |port: u16| format!("http://{}:{port}/", v.ip());
    (url(8080), url(8081))
}

#[tokio::test]
async fn the_filter_comes_back_after_an_agent_restart_and_a_host_reboot() {
    let (mut agent, a, _v) = pair("netback", "203.0.113.192-203.0.113.193", "", None).await;
    let elements = |verb: &str| {
        let mac = frames::mac_text(a.station.mac);
        for (set, value) in [("macs", mac.as_str()), ("addrs", &a.ip())] {
            let element = format!("{{ \"{}\" . {value} }}", a.port);
            in_sandbox(&[
                "nft",
                verb,
                "element",
                "bridge",
                "segment_agent",
                set,
                &element,
            ]);
        }
    };
    assert!(pings(&a.ip()));

    // The agent dies and the kernel loses the port's rules (a flushed
    // ruleset): the port is sg-* without rules, so it passes nothing.
    agent.kill(nix::sys::signal::Signal::SIGKILL);
    elements("delete");
    assert!(!pings(&a.ip()), "a port without rules passes nothing");
    // A host reboot: the segment is down too. The agent's recovery puts the
    // rules back before it starts the segment again.
    crate::common::real::virsh(&["destroy", "seg-netback-a"]);
    agent.spawn().await;
    wait_for(|| pings(&a.ip()), "A after the agent's recovery");

    // With the agent running, the periodic refresh repairs the same loss.
    elements("delete");
    assert!(!pings(&a.ip()));
    let started = Instant::now();
    wait_for(|| pings(&a.ip()), "A after the refresh");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn without_the_filter_the_same_spoof_moves_the_address() {
    // The oracle of the tests above can fail: with network.filter = "off"
    // one spoofed gratuitous ARP moves V's address to A's MAC.
    let (_agent, a, v) = pair(
        "netopen",
        "203.0.113.196-203.0.113.197",
        "filter = \"off\"",
        None,
    )
    .await;
    let ports = String::from_utf8_lossy(&in_sandbox(&["ip", "-brief", "link"]).stdout).into_owned();
    assert!(
        !ports.contains(&format!("{}@", a.port)),
        "libvirt names the ports: {ports}"
    );
    warm_up(&a, &v);
    let claim = Station {
        mac: a.station.mac,
        ip: v.station.ip,
    };
    let nobody = Station {
        mac: [0; 6],
        ip: v.station.ip,
    };
    let garp = frames::eth(
        frames::BROADCAST,
        a.station.mac,
        0x0806,
        &frames::arp(1, claim, nobody, &[]),
    );
    let sender = net::rawsend().to_str().unwrap();
    nsenter_ok(&a.netns, &[sender, "eth0", "1", &frames::hex(&garp)]);
    std::thread::sleep(Duration::from_millis(200));
    let moved = neighbour(NETNS, v.station.ip);
    in_sandbox(&["ip", "neigh", "del", &v.ip(), "dev", "segbr0"]);
    assert_eq!(
        moved,
        Some(a.station.mac),
        "the spoof works on an open bridge"
    );
}

fn curl(url: &str) -> String {
    String::from_utf8_lossy(&in_sandbox(&["curl", "-s", "-m", "3", url]).stdout).into_owned()
}

fn wait_for(mut done: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within 20 s");
        std::thread::sleep(Duration::from_millis(300));
    }
}
