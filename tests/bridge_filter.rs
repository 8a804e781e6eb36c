//! The real bridge filter ([`Nft`]) against the real kernel, in private
//! network namespaces this test makes (a bridge with the gateway address and
//! two "segments" on veth ports named as the agent names them): every attack
//! of the catalogue is sent for real with a raw socket and must not arrive,
//! the segments' own traffic must. No libvirt, no lock: seconds, not
//! minutes. The same attacks through real Docker segments are in
//! `tests/e2e_tenant/network.rs`. Needs root, nft, tcpdump, gcc.

mod common;

use common::{
    frames::{self, Station},
    net::{self, assert_arrivals, fdb, neighbour, nsenter, nsenter_ok, observe},
};
use segment_agent::network::{
    filter::{PortFilter, SegmentPort},
    nft::Nft,
};
use std::{net::Ipv4Addr, sync::atomic::AtomicUsize};

const GATEWAY: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);

/// A bridge `br0` in namespace `<tag>-br` holding the gateway address, and
/// one namespace per segment with `eth0` on a port of the agent's name.
struct Lab {
    tag: String,
    segments: Vec<(String, Station)>,
}

impl Lab {
    fn new(name: &str, addresses: &[u8], stp: bool) -> Lab {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tag = format!("bf{}{n}{name}", std::process::id() % 10_000);
        let mut lab = Lab {
            tag,
            segments: Vec::new(),
        };
        let br = lab.ns("br");
        ip(&["netns", "add", &br]);
        let gw = frames::mac_text(Station::segment(GATEWAY).mac);
        let stp = if stp { "1" } else { "0" };
        for cmd in [
            vec!["link", "set", "lo", "up"],
            vec!["link", "add", "br0", "type", "bridge", "stp_state", stp],
            vec!["link", "set", "br0", "address", &gw],
            vec!["addr", "add", "203.0.113.1/24", "dev", "br0"],
            vec!["link", "set", "br0", "up"],
        ] {
            ip(&[&["-n", br.as_str()][..], &cmd].concat());
        }
        for &last in addresses {
            lab.add_segment(Ipv4Addr::new(203, 0, 113, last));
        }
        lab
    }

    fn ns(&self, what: &str) -> String {
        format!("{}-{what}", self.tag)
    }

    fn path(&self, what: &str) -> String {
        format!("/run/netns/{}", self.ns(what))
    }

    fn add_segment(&mut self, address: Ipv4Addr) {
        let (br, seg) = (self.ns("br"), self.ns(&format!("s{}", address.octets()[3])));
        let station = Station::segment(address);
        let port = SegmentPort::of(address).name;
        let (mac, cidr) = (frames::mac_text(station.mac), format!("{address}/24"));
        ip(&["netns", "add", &seg]);
        for cmd in [
            vec![
                "-n", &br, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
            ],
            vec!["-n", &br, "link", "set", "eth0", "netns", &seg],
            vec!["-n", &br, "link", "set", &port, "master", "br0", "up"],
            vec!["-n", &seg, "link", "set", "lo", "up"],
            vec!["-n", &seg, "link", "set", "eth0", "address", &mac],
            vec!["-n", &seg, "addr", "add", &cidr, "dev", "eth0"],
            vec!["-n", &seg, "link", "set", "eth0", "up"],
            vec!["-n", &seg, "route", "add", "default", "via", "203.0.113.1"],
        ] {
            ip(&cmd);
        }
        self.segments
            .push((self.path(&format!("s{}", address.octets()[3])), station));
    }

    fn segment(&self, i: usize) -> (&str, Station) {
        (&self.segments[i].0, self.segments[i].1)
    }

    /// Runs `f` with the real filter of this lab's bridge, in its namespace.
    fn filter<T: Send>(&self, f: impl FnOnce(&Nft) -> T + Send) -> T {
        let path = self.path("br");
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = std::fs::File::open(&path).unwrap();
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                f(&Nft::new("br0"))
            })
            .join()
            .unwrap()
        })
    }

    fn allow_all(&self) {
        let ports: Vec<_> = self
            .segments
            .iter()
            .map(|(_, s)| SegmentPort::of(s.ip))
            .collect();
        self.filter(|f| f.install(&ports)).unwrap();
    }

    /// Sends hex frames from segment `i`'s eth0.
    fn send(&self, i: usize, frames: &[Vec<u8>]) {
        let hex: Vec<String> = frames.iter().map(|f| frames::hex(f)).collect();
        let sender = net::rawsend().to_str().unwrap();
        let args: Vec<&str> = [sender, "eth0", "1"]
            .into_iter()
            .chain(hex.iter().map(String::as_str))
            .collect();
        nsenter_ok(self.segment(i).0, &args);
    }

    fn pings(&self, from: &str, to: Ipv4Addr) -> bool {
        let to = to.to_string();
        nsenter(from, &["ping", "-c", "3", "-i", "0.2", "-W", "1", &to])
            .status
            .success()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (path, _) in &self.segments {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", path.trim_start_matches("/run/netns/")])
                .status();
        }
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.ns("br")])
            .status();
    }
}

fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "ip {args:?}: {out:?}");
}

/// The gateway learns A and V, V learns the gateway: the mappings an
/// attack would have to move.
fn warm_up(lab: &Lab) -> (Station, Station, Station) {
    let ((a_ns, a), (v_ns, v)) = (lab.segment(0), lab.segment(1));
    assert!(lab.pings(a_ns, GATEWAY) && lab.pings(v_ns, GATEWAY));
    assert!(lab.pings(a_ns, v.ip), "segments reach each other");
    (a, v, Station::segment(GATEWAY))
}

#[test]
fn every_attack_is_dropped_and_own_traffic_flows() {
    let lab = Lab::new("all", &[2, 3], false);
    lab.allow_all();
    let (a, v, gw) = warm_up(&lab);
    let (br, v_ns) = (lab.path("br"), lab.segment(1).0.to_owned());
    let probes = frames::catalogue(&lab.tag, a, v, gw);
    let all: Vec<Vec<u8>> = probes.iter().map(|p| p.frame.clone()).collect();
    let seen = observe((&br, "br0"), (&v_ns, "eth0"), || {
        lab.send(0, &all);
        lab.send(0, &[frames::mac_theft(&lab.tag, v)]);
        lab.send(0, &frames::mac_flood(&lab.tag, 300));
    });
    assert_arrivals(&probes, &seen);
    for m in ["mac-theft-link-local", "mac-flood"] {
        let m = format!("{}/{m}", lab.tag);
        assert!(
            !seen.gateway.contains(&m) && !seen.victim.contains(&m),
            "{m}"
        );
    }

    // The gateway and the victim keep the true mappings, the bridge's MAC
    // table the true ports, and nothing else was learned on A's port.
    let br_path = lab.path("br");
    assert_eq!(neighbour(&br_path, v.ip), Some(v.mac));
    assert_eq!(neighbour(&br_path, a.ip), Some(a.mac));
    assert_eq!(neighbour(&v_ns, GATEWAY), Some(gw.mac));
    let table = fdb(&br_path, "br0");
    let (a_port, v_port) = (SegmentPort::of(a.ip).name, SegmentPort::of(v.ip).name);
    assert!(table.contains(&(v.mac, v_port.clone())), "{table:?}");
    let on_a: Vec<_> = table.iter().filter(|(_, p)| *p == a_port).collect();
    assert_eq!(
        on_a,
        [&(a.mac, a_port.clone())],
        "only A's own MAC on its port"
    );
    assert!(lab.pings(&br_path, v.ip) && lab.pings(lab.segment(0).0, v.ip));
}

#[test]
fn without_the_filter_the_same_attacks_succeed() {
    // The oracle of the test above can fail: on an unfiltered bridge the
    // spoofed ARP moves V's address, the link-local frame V's MAC, and
    // foreign frames arrive.
    let lab = Lab::new("open", &[2, 3], false);
    let (a, v, gw) = warm_up(&lab);
    let (br, v_ns) = (lab.path("br"), lab.segment(1).0.to_owned());
    let probes = frames::catalogue(&lab.tag, a, v, gw);
    // Frames with A's own source MAC first: once V's MAC is stolen, the
    // bridge sends V's frames to A.
    let (own, foreign): (Vec<_>, Vec<_>) = probes
        .iter()
        .map(|p| p.frame.clone())
        .partition(|f| f[6..12] == a.mac);
    let seen = observe((&br, "br0"), (&v_ns, "eth0"), || {
        lab.send(0, &own);
        lab.send(0, &foreign);
    });
    for name in [
        "gratuitous-arp-victim-ip",
        "foreign-source-mac",
        "victim-source-ip",
        "vlan-tagged-ipv4",
        "ipv6-router-advertisement",
        "stp-bpdu-claiming-root",
        "dhcp-offer-broadcast",
    ] {
        let name = format!("{}/{name}", lab.tag);
        assert!(
            seen.gateway.contains(&name),
            "{name} reaches an open bridge"
        );
    }
    let internal = format!("{}/to-victim-internal-address", lab.tag);
    assert!(seen.victim.contains(&internal));
    assert_eq!(neighbour(&br, v.ip), Some(a.mac), "the ARP spoof works");
    lab.send(0, &[frames::mac_theft(&lab.tag, v)]);
    let a_port = SegmentPort::of(a.ip).name;
    assert!(
        fdb(&br, "br0").contains(&(v.mac, a_port)),
        "the MAC theft works"
    );
}

#[test]
fn a_port_without_rules_passes_nothing() {
    let lab = Lab::new("closed", &[2, 3], false);
    let ((a_ns, a), (v_ns, v)) = (lab.segment(0), lab.segment(1));
    // A port alone needs the table: no rules half in place.
    let e = lab.filter(|f| f.allow(&SegmentPort::of(a.ip))).unwrap_err();
    assert!(e.to_string().contains("refused"), "{e}");
    lab.filter(|f| f.install(&[SegmentPort::of(a.ip)])).unwrap();
    assert!(lab.pings(a_ns, GATEWAY), "A has its rules");
    assert!(!lab.pings(v_ns, GATEWAY), "V's port has none: fail closed");
    lab.filter(|f| f.allow(&SegmentPort::of(v.ip))).unwrap();
    assert!(lab.pings(v_ns, GATEWAY) && lab.pings(a_ns, v.ip));

    // Revoked: V is cut off, A is not; revoking again is no error, and
    // putting the table back (as every agent does) keeps what is there.
    lab.filter(|f| f.revoke(&SegmentPort::of(v.ip))).unwrap();
    lab.filter(|f| f.revoke(&SegmentPort::of(v.ip))).unwrap();
    lab.filter(|f| f.install(&[])).unwrap();
    assert!(!lab.pings(v_ns, GATEWAY));
    assert!(lab.pings(a_ns, GATEWAY));
    let listed = nsenter_ok(
        &lab.path("br"),
        &["nft", "list", "set", "bridge", "segment_agent", "addrs"],
    );
    assert!(
        listed.contains(&format!("\"{}\" . {}", SegmentPort::of(a.ip).name, a.ip)),
        "{listed}"
    );
    assert!(!listed.contains(&v.ip.to_string()), "{listed}");
}

#[test]
fn a_bridge_running_stp_is_refused() {
    let lab = Lab::new("stp", &[], true);
    let e = lab.filter(|f| f.probe()).unwrap_err().to_string();
    assert!(e.contains("runs STP") && e.contains("stp_state 0"), "{e}");
    // `segment-agent check` says so, and fails.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    let check = |filter: &str| {
        let toml = format!(
            "state_dir = {:?}\napparmor = \"off\"\n[network]\nbridge = \"br0\"\n\
             ranges = [\"203.0.113.2-203.0.113.3\"]\nfilter = \"{filter}\"\n",
            dir.path().display().to_string()
        );
        std::fs::write(&config, toml).unwrap();
        nsenter(
            &lab.path("br"),
            &[
                env!("CARGO_BIN_EXE_segment-agent"),
                "check",
                "--config",
                config.to_str().unwrap(),
            ],
        )
    };
    let out = check("enforce");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!out.status.success(), "{text}");
    let line = text.lines().find(|l| l.contains("bridge filter")).unwrap();
    assert!(
        line.starts_with("FAIL") && line.contains("runs STP") && line.contains("network.filter"),
        "{line}"
    );
    let out = check("off");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text.lines().find(|l| l.contains("bridge filter")).unwrap();
    assert!(line.starts_with("ok") && line.contains("off"), "{line}");
}

#[test]
fn probe_passes_on_a_bridge_without_stp_and_changes_nothing() {
    let lab = Lab::new("probe", &[], false);
    let ok = lab.filter(|f| f.probe()).unwrap();
    assert!(ok.contains("br0 runs no STP"), "{ok}");
    let listed = nsenter_ok(&lab.path("br"), &["nft", "list", "ruleset"]);
    assert!(
        listed.trim().is_empty(),
        "--check commits nothing: {listed}"
    );
}

/// Runs `f` on a thread inside the network namespace at `path` (sockets
/// made there keep it).
fn in_ns<T: Send>(path: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let ns = std::fs::File::open(path).unwrap();
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
        .join()
        .unwrap()
    })
}

/// Which of `tcp` and `udp` (listening in the target namespace) a client
/// in `from` reaches: a TCP handshake, a datagram received.
fn reached(
    from: &str,
    to: Ipv4Addr,
    tcp: &[std::net::TcpListener],
    udp: &[std::net::UdpSocket],
) -> Vec<(String, bool)> {
    use std::time::Duration;
    let mut out = Vec::new();
    for l in tcp {
        let port = l.local_addr().unwrap().port();
        let addr = std::net::SocketAddr::from((to, port));
        let ok = in_ns(from, || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(700)).is_ok()
        });
        out.push((format!("{port}/tcp"), ok));
    }
    for s in udp {
        let port = s.local_addr().unwrap().port();
        let marker = format!("{from}-{port}");
        in_ns(from, || {
            let c = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            for _ in 0..3 {
                c.send_to(marker.as_bytes(), (to, port)).unwrap();
            }
        });
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut buf = [0u8; 256];
        let mut got = false;
        while let Ok((n, _)) = s.recv_from(&mut buf) {
            got |= buf[..n] == *marker.as_bytes();
        }
        out.push((format!("{port}/udp"), got));
    }
    out
}

#[test]
fn the_swarm_ports_pass_only_between_swarm_peers() {
    let lab = Lab::new("swm", &[2, 3, 4], false);
    let ip = |i: usize| lab.segment(i).1.ip;
    let (a, b) = (ip(0), ip(1));
    let peers = |i: usize, p: Vec<Ipv4Addr>| SegmentPort::of(ip(i)).with_swarm_peers(p);
    // A and B: one cluster; F (the third) another one.
    let ports = [peers(0, vec![b]), peers(1, vec![a]), SegmentPort::of(ip(2))];
    lab.filter(|f| f.install(&ports)).unwrap();
    warm_up(&lab);
    let tcp: Vec<_> = in_ns(lab.segment(0).0, || {
        [2377, 7946, 8080].map(|p| std::net::TcpListener::bind(("0.0.0.0", p)).unwrap())
    })
    .into();
    let udp: Vec<_> = in_ns(lab.segment(0).0, || {
        [7946, 4789, 8081].map(|p| std::net::UdpSocket::bind(("0.0.0.0", p)).unwrap())
    })
    .into();
    let swarm_port = |name: &str| !name.starts_with("808");
    let expect = |from: &str, swarm_passes: bool| {
        for (port, ok) in reached(from, a, &tcp, &udp) {
            let want = swarm_passes || !swarm_port(&port);
            assert_eq!(ok, want, "{port} from {from} to A");
        }
    };
    let (peer, foreign, outside) = (lab.segment(1).0, lab.segment(2).0, lab.path("br"));
    expect(peer, true);
    expect(foreign, false);
    expect(&outside, false);
    // Another host of the service (network.swarm_remote; here the gateway's
    // address, off the segment ports) reaches them; a segment with an
    // address in that network still does not; configured away, closed again.
    let remote = |nets: &str| {
        let nets = nets
            .split_whitespace()
            .map(|n| n.parse().unwrap())
            .collect();
        let nft = Nft::new("br0").with_swarm_remote(nets);
        in_ns(&lab.path("br"), || nft.install(&ports)).unwrap();
    };
    remote("203.0.113.1/32 203.0.113.4/32");
    expect(&outside, true);
    expect(foreign, false);
    remote("");
    expect(&outside, false);
    // A peer of A's cluster on another host (SetClusterPeers: an element
    // of A's swarm peers; here the gateway's address, off the segment
    // ports) reaches A's swarm ports; the foreign segment still does not.
    let with_remote = [
        peers(0, vec![b, Ipv4Addr::new(203, 0, 113, 1)]),
        ports[1].clone(),
        ports[2].clone(),
    ];
    lab.filter(|f| f.change_swarm_peers(&ports[0], &with_remote[0]))
        .unwrap();
    expect(&outside, true);
    expect(foreign, false);
    // An install adds, never removes (other agents' ports share the table):
    // the cleared peer stays until its pairs are changed away.
    lab.filter(|f| f.install(&ports)).unwrap();
    expect(&outside, true);
    lab.filter(|f| f.change_swarm_peers(&with_remote[0], &ports[0]))
        .unwrap();
    expect(&outside, false);
    expect(peer, true);
    // Revoked with B's port, the pairs leave with it: B's address, reused
    // by another cluster's segment, reaches A's swarm ports no more.
    lab.filter(|f| f.revoke(&ports[1])).unwrap();
    lab.filter(|f| f.allow(&SegmentPort::of(b))).unwrap();
    expect(peer, false);
    let counters = nsenter_ok(
        &lab.path("br"),
        &[
            "nft",
            "list",
            "counter",
            "bridge",
            "segment_agent",
            "foreign_swarm",
        ],
    );
    assert!(!counters.contains("packets 0 "), "{counters}");
}
