//! The bridge filter: one address, one MAC per segment port. Each segment's
//! host-side veth has a name derived from its address ([`SegmentPort`]), so
//! the agent puts its rules in place before libvirt creates the port, and a
//! port without rules passes nothing. The rules are nftables bridge-family
//! rules ([`SKELETON`]); [`PortFilter`] applies them ([`super::nft::Nft`] is
//! the real one, [`super::fake::FakeFilter`] records calls for tests).

use serde::Deserialize;
use std::{fmt::Write, net::Ipv4Addr};

/// The nftables table every agent on a host shares.
pub const TABLE: &str = "segment_agent";
/// Prefix of every segment port's name (the rules match `sg-*`).
pub const PORT_PREFIX: &str = "sg-";
/// The table, its sets and its chains (`src/network/segment-filter.nft`):
/// idempotent, keeps every port's elements.
pub const SKELETON: &str = include_str!("segment-filter.nft");

/// Whether the agent filters segment ports (the `network.filter` setting).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FilterMode {
    /// Every segment's port is filtered; no segment starts on a host where
    /// the filter cannot be enforced.
    #[default]
    Enforce,
    /// No filter, libvirt names the ports (hosts without nftables only).
    Off,
}

/// The identity a segment has on the bridge: its port, MAC and address,
/// all derived from the address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SegmentPort {
    /// Host-side veth name, `sg-` + the address in hex (11 characters).
    pub name: String,
    /// The MAC of the segment's interface.
    pub mac: [u8; 6],
    /// The segment's IPv4 address.
    pub address: Ipv4Addr,
    /// Its bandwidth each way in KiB/s (the flavor's `network_mbit`), 0:
    /// uncapped. Enforced by two named nftables limits of the port.
    pub rate_kib: u64,
    /// Its swarm peers: the only addresses it exchanges the swarm's ports
    /// ([`SWARM_PORTS`]) with, both ways (the other segments of its cluster
    /// on this bridge and the swarm managers its record names).
    pub swarm_peers: Vec<Ipv4Addr>,
}

/// The ports of Docker Swarm between nodes: 2377/tcp (managers), 7946/tcp
/// and udp (gossip), 4789/udp (VXLAN of overlay networks). To a segment
/// they pass only from its swarm peers.
pub const SWARM_PORTS: &str = "2377/tcp, 7946/tcp+udp, 4789/udp";

impl SegmentPort {
    /// The port of the segment at `address`.
    pub fn of(address: Ipv4Addr) -> Self {
        let [a, b, c, d] = address.octets();
        SegmentPort {
            name: format!("{PORT_PREFIX}{a:02x}{b:02x}{c:02x}{d:02x}"),
            mac: mac_of(address),
            address,
            rate_kib: 0,
            swarm_peers: Vec::new(),
        }
    }

    /// The same port exchanging the swarm's ports with `peers` (its own
    /// address is left out).
    pub fn with_swarm_peers(mut self, mut peers: Vec<Ipv4Addr>) -> Self {
        peers.retain(|p| *p != self.address);
        peers.sort();
        peers.dedup();
        self.swarm_peers = peers;
        self
    }

    /// The port of the segment at `address` capped at `rate_kib` KiB/s
    /// each way (0: uncapped).
    pub fn with_rate(address: Ipv4Addr, rate_kib: u64) -> Self {
        Self {
            rate_kib,
            ..Self::of(address)
        }
    }

    /// The MAC as `02:00:cb:00:71:0a`.
    pub fn mac_text(&self) -> String {
        mac_text(self.mac)
    }
}

/// The MAC of the segment at `address`: `02:00` (locally administered,
/// unicast) + its four bytes. A new segment on a reused address keeps the
/// old MAC, so neighbours' ARP caches stay right.
pub fn mac_of(address: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = address.octets();
    [0x02, 0x00, a, b, c, d]
}

/// `02:00:cb:00:71:0a`.
pub fn mac_text(mac: [u8; 6]) -> String {
    let hex: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
    hex.join(":")
}

/// What went wrong applying the filter.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// `nft` (the path) could not be started.
    #[error("cannot run {0}")]
    Spawn(String, #[source] std::io::Error),
    /// `nft` ran and refused the rules.
    #[error("{program} refused the bridge filter ({status}): {stderr}")]
    Refused {
        /// The program.
        program: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// Its standard error, trimmed and bounded.
        stderr: String,
    },
    /// The host's bridge defeats the filter.
    #[error("{0}")]
    Bridge(String),
    /// Anything else (a failed task, a fake's injected failure).
    #[error("{0}")]
    Other(String),
}

/// Applies the bridge filter of segment ports. Every call blocks.
pub trait PortFilter: Send + Sync {
    /// Whether this host can enforce the filter, changing nothing; Ok
    /// carries a line for `check`.
    fn probe(&self) -> Result<String, FilterError>;
    /// Puts the table in place (idempotent: its chains rewritten, its sets
    /// kept) with the rules of `ports`, in one atomic transaction.
    fn install(&self, ports: &[SegmentPort]) -> Result<(), FilterError>;
    /// Adds the rules of `port` to the installed table (an error if the
    /// table is not there).
    fn allow(&self, port: &SegmentPort) -> Result<(), FilterError>;
    /// Removes the rules of `port`; its name passes nothing afterwards.
    fn revoke(&self, port: &SegmentPort) -> Result<(), FilterError>;
    /// Gives the allowed port `before` the swarm pairs of `after` (the same
    /// port, other peers) in one transaction: pairs only `before` has are
    /// removed (an install never removes elements: other agents' ports
    /// share the table on a test bridge), the others are there afterwards.
    fn change_swarm_peers(
        &self,
        before: &SegmentPort,
        after: &SegmentPort,
    ) -> Result<(), FilterError>;
}

/// The script that installs the table and allows `ports`.
pub fn install_script(ports: &[SegmentPort]) -> String {
    let mut script = SKELETON.to_owned();
    for port in ports {
        push_elements(&mut script, "add", port);
    }
    script
}

/// The script that makes `nets` the networks off the bridge whose traffic
/// reaches the swarm's ports of segments (flushed first: host configuration).
pub fn swarm_remote_script(nets: &[ipnet::Ipv4Net]) -> String {
    let mut script = format!("flush set bridge {TABLE} swarm_remote\n");
    for net in nets {
        let _ = writeln!(
            script,
            "add element bridge {TABLE} swarm_remote {{ {net} }}"
        );
    }
    script
}

/// The script that allows `port` in the installed table: its two
/// elements, a few milliseconds where the whole table takes fifteen.
pub fn allow_script(port: &SegmentPort) -> String {
    let mut script = String::new();
    push_elements(&mut script, "add", port);
    script
}

/// The script that removes `port`'s rules: added first so that the delete
/// succeeds whether or not they were there, in one transaction.
pub fn revoke_script(port: &SegmentPort) -> String {
    let mut script = allow_script(port);
    push_elements(&mut script, "delete", port);
    script
}

/// The script of [`PortFilter::change_swarm_peers`]: each pair to remove
/// added first, so that its delete succeeds whether or not it was there.
pub fn swarm_peers_script(before: &SegmentPort, after: &SegmentPort) -> String {
    let mut script = String::new();
    let gone: Vec<Ipv4Addr> = before
        .swarm_peers
        .iter()
        .filter(|p| !after.swarm_peers.contains(p))
        .copied()
        .collect();
    for verb in ["add", "delete"] {
        push_pairs(&mut script, verb, before.address, &gone);
    }
    push_pairs(&mut script, "add", after.address, &after.swarm_peers);
    script
}

fn push_pairs(script: &mut String, verb: &str, ip: Ipv4Addr, peers: &[Ipv4Addr]) {
    // Both ways: the peer's answers and its own gossip and VXLAN reach
    // the port, the port's reach the peer (if the peer is on this bridge).
    for peer in peers {
        let _ = writeln!(
            script,
            "{verb} element bridge {TABLE} swarm_peers {{ {peer} . {ip}, {ip} . {peer} }}"
        );
    }
}

fn push_elements(script: &mut String, verb: &str, port: &SegmentPort) {
    let (name, mac, ip) = (&port.name, port.mac_text(), port.address);
    // Names are sg-<hex>, MACs and addresses typed: nothing to escape.
    let _ = writeln!(
        script,
        "{verb} element bridge {TABLE} macs {{ \"{name}\" . {mac} }}"
    );
    let _ = writeln!(
        script,
        "{verb} element bridge {TABLE} addrs {{ \"{name}\" . {ip} }}"
    );
    if port.rate_kib > 0 {
        push_limits(script, verb, port);
    }
    push_pairs(script, verb, ip, &port.swarm_peers);
}

/// The port's two limits (from it, to it) and their map elements. A
/// policer: what passes over the rate is dropped, and TCP settles at it.
/// The burst is a tenth of a second's worth, at least 64 KiB.
fn push_limits(script: &mut String, verb: &str, port: &SegmentPort) {
    let (name, rate) = (&port.name, port.rate_kib);
    let burst = (rate / 10).max(64);
    for way in ["from", "to"] {
        let limit = format!("{name}_{way}");
        let object = format!(
            "limit bridge {TABLE} {limit} {{ rate over {rate} kbytes/second burst {burst} kbytes; }}"
        );
        let element = format!("element bridge {TABLE} rate_{way} {{ \"{name}\" : \"{limit}\" }}");
        match verb {
            // Elements name their object: made first, removed last.
            "add" => {
                let _ = writeln!(script, "add {object}\nadd {element}");
            }
            _ => {
                let _ = writeln!(
                    script,
                    "{verb} {element}\n{verb} limit bridge {TABLE} {limit}"
                );
            }
        }
    }
}

/// Whether segment ports are filtered, decided at agent start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filtering {
    /// Every segment's port is filtered.
    Enforced,
    /// Configured off: ports are unfiltered and named by libvirt.
    Off,
    /// Configured to enforce, but the host cannot: no segment may start.
    Unavailable(String),
}

impl Filtering {
    /// The port of the segment at `address`, if ports are filtered (then the
    /// domain names its veth after it).
    pub fn port(&self, address: Ipv4Addr) -> Option<SegmentPort> {
        match self {
            Filtering::Off => None,
            _ => Some(SegmentPort::of(address)),
        }
    }

    /// Refuses to run a segment when the filter was asked for and the host
    /// cannot enforce it (fail closed).
    pub fn require(&self) -> Result<(), String> {
        match self {
            Filtering::Unavailable(reason) => Err(format!(
                "the bridge filter cannot be enforced on this host ({reason}); segments are not \
                 started unfiltered unless the agent is configured with network.filter = \"off\""
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port() -> SegmentPort {
        SegmentPort::of(Ipv4Addr::new(203, 0, 113, 10))
    }

    #[test]
    fn a_capped_port_gets_two_limits_and_revoke_removes_them() {
        let capped = SegmentPort::with_rate(Ipv4Addr::new(203, 0, 113, 10), 12_207);
        let script = allow_script(&capped);
        for want in [
            "add limit bridge segment_agent sg-cb00710a_from { rate over 12207 kbytes/second burst 1220 kbytes; }",
            "add element bridge segment_agent rate_from { \"sg-cb00710a\" : \"sg-cb00710a_from\" }",
            "add limit bridge segment_agent sg-cb00710a_to { rate over 12207 kbytes/second burst 1220 kbytes; }",
            "add element bridge segment_agent rate_to { \"sg-cb00710a\" : \"sg-cb00710a_to\" }",
        ] {
            assert!(script.contains(want), "{want} in {script}");
        }
        let revoke = revoke_script(&capped);
        let deletes: Vec<&str> = revoke.lines().filter(|l| l.starts_with("delete")).collect();
        assert_eq!(deletes.len(), 6, "{revoke}");
        let element = revoke
            .find("delete element bridge segment_agent rate_to")
            .unwrap();
        let object = revoke
            .find("delete limit bridge segment_agent sg-cb00710a_to")
            .unwrap();
        assert!(element < object, "the element goes before its object");
        assert!(
            !allow_script(&port()).contains("limit"),
            "uncapped: no limit"
        );
        let small = SegmentPort::with_rate(Ipv4Addr::new(203, 0, 113, 10), 100);
        assert!(allow_script(&small).contains("rate over 100 kbytes/second burst 64 kbytes"));
    }

    #[test]
    fn swarm_peers_are_elements_both_ways_and_revoked_with_the_port() {
        let ip = Ipv4Addr::new(203, 0, 113, 10);
        let peers = vec![
            Ipv4Addr::new(203, 0, 113, 12),
            ip,
            Ipv4Addr::new(203, 0, 113, 11),
            Ipv4Addr::new(203, 0, 113, 11),
        ];
        let port = SegmentPort::of(ip).with_swarm_peers(peers);
        assert_eq!(
            port.swarm_peers.len(),
            2,
            "own address and duplicates left out"
        );
        let script = allow_script(&port);
        let want = "add element bridge segment_agent swarm_peers { 203.0.113.11 . 203.0.113.10, 203.0.113.10 . 203.0.113.11 }";
        assert!(script.contains(want), "{script}");
        let revoke = revoke_script(&port);
        assert!(
            revoke.contains(&want.replace("add ", "delete ")),
            "{revoke}"
        );
        assert!(!allow_script(&SegmentPort::of(ip)).contains("swarm_peers"));
    }

    #[test]
    fn remote_swarm_networks_replace_the_previous_ones() {
        let nets = [
            "198.51.100.0/24".parse().unwrap(),
            "192.0.2.7/32".parse().unwrap(),
        ];
        assert_eq!(
            swarm_remote_script(&nets),
            "flush set bridge segment_agent swarm_remote\n\
             add element bridge segment_agent swarm_remote { 198.51.100.0/24 }\n\
             add element bridge segment_agent swarm_remote { 192.0.2.7/32 }\n"
        );
        assert_eq!(
            swarm_remote_script(&[]),
            "flush set bridge segment_agent swarm_remote\n"
        );
    }

    #[test]
    fn the_port_follows_the_address() {
        let p = port();
        assert_eq!(p.name, "sg-cb00710a");
        assert!(p.name.len() <= 15, "an interface name has at most 15 bytes");
        assert_eq!(p.mac_text(), "02:00:cb:00:71:0a");
        let last = SegmentPort::of(Ipv4Addr::new(255, 255, 255, 255));
        assert_eq!(last.name, "sg-ffffffff");
        assert_eq!(last.mac_text(), "02:00:ff:ff:ff:ff");
    }

    #[test]
    fn install_adds_the_elements_after_the_table() {
        let script = install_script(&[port()]);
        let table = script.find("table bridge segment_agent {").unwrap();
        let mac = script
            .find("add element bridge segment_agent macs { \"sg-cb00710a\" . 02:00:cb:00:71:0a }")
            .unwrap();
        let ip = script
            .find("add element bridge segment_agent addrs { \"sg-cb00710a\" . 203.0.113.10 }")
            .unwrap();
        assert!(table < mac && mac < ip);
        assert_eq!(install_script(&[]), SKELETON);
        assert_eq!(allow_script(&port()), script[mac..]);
    }

    #[test]
    fn revoke_adds_then_deletes_so_a_missing_element_is_no_error() {
        let script = revoke_script(&port());
        let lines: Vec<&str> = script
            .lines()
            .filter(|l| l.contains(" element bridge "))
            .collect();
        assert_eq!(lines.len(), 4, "{lines:?}");
        assert!(lines[0].starts_with("add element") && lines[1].starts_with("add element"));
        assert!(lines[2].starts_with("delete element") && lines[3].starts_with("delete element"));
    }

    #[test]
    fn the_skeleton_is_idempotent_and_fails_closed() {
        // Every chain is flushed before its rules are written again, and
        // the sets are only ever added to.
        for chain in [
            "prerouting",
            "input",
            "postrouting",
            "from_segment",
            "from_segment_arp",
            "from_segment_ipv4",
            "to_segment",
            "rate_from_segment",
            "rate_to_segment",
            "swarm_to_segment",
            "swarm_from_segment",
        ] {
            let add = SKELETON
                .find(&format!("add chain bridge segment_agent {chain}"))
                .unwrap_or_else(|| panic!("{chain} added"));
            let flush = SKELETON
                .find(&format!("flush chain bridge segment_agent {chain}\n"))
                .unwrap_or_else(|| panic!("{chain} flushed"));
            assert!(add < flush);
        }
        assert!(!SKELETON.contains("flush set") && !SKELETON.contains("delete"));
        // Both hooks a frame from a segment can take, and every frame to it.
        assert_eq!(
            SKELETON
                .matches("iifname \"sg-*\" jump from_segment\n")
                .count(),
            2
        );
        assert!(SKELETON.contains("oifname \"sg-*\" jump to_segment\n"));
        // Each chain ends in a drop.
        for last in [
            "counter name other_ethertype drop\n\t}",
            "counter name foreign_arp drop\n\t}",
            "counter name foreign_ipv4 drop\n\t}",
            "counter name not_for_segment drop\n\t}",
        ] {
            assert!(SKELETON.contains(last), "{last}");
        }
    }

    #[test]
    fn filtering_names_ports_only_when_it_filters() {
        let ip = Ipv4Addr::new(203, 0, 113, 10);
        assert_eq!(Filtering::Enforced.port(ip), Some(port()));
        assert_eq!(Filtering::Off.port(ip), None);
        let unavailable = Filtering::Unavailable("no nft".into());
        assert!(unavailable.require().unwrap_err().contains("no nft"));
        assert!(Filtering::Off.require().is_ok() && Filtering::Enforced.require().is_ok());
    }
}
