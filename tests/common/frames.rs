//! Ethernet frames built byte by byte for layer-2 attacks, each carrying a
//! marker (`segtest:TAG/NAME;`, TAG naming the test) in its payload or
//! padding so a capture tells exactly which ones arrived, and the catalogue of attacks a segment may
//! try on the bridge, with the controls that must still arrive.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Broadcast MAC.
pub const BROADCAST: [u8; 6] = [0xff; 6];

/// A station on the bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Station {
    /// Its MAC.
    pub mac: [u8; 6],
    /// Its IPv4 address.
    pub ip: Ipv4Addr,
}

impl Station {
    /// The segment at `ip` (the agent derives its MAC from the address).
    pub fn segment(ip: Ipv4Addr) -> Self {
        let [a, b, c, d] = ip.octets();
        Station {
            mac: [0x02, 0x00, a, b, c, d],
            ip,
        }
    }
}

/// Where a frame must be seen, if anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// At the gateway (the bridge's own stack) only.
    Gateway,
    /// At the victim's interface only.
    Victim,
    /// Nowhere: dropped at the attacker's port.
    Nowhere,
}

/// One frame to send, and where it must arrive.
#[derive(Debug, Clone)]
pub struct Probe {
    /// Its name, also its marker.
    pub name: String,
    /// The whole frame.
    pub frame: Vec<u8>,
    /// Where it must be seen.
    pub expect: Expect,
}

/// `segtest:TAG/NAME;`
pub fn marker(tag: &str, name: &str) -> Vec<u8> {
    format!("segtest:{tag}/{name};").into_bytes()
}

/// The markers (`TAG/NAME`) found in `frame`.
pub fn markers_in(frame: &[u8]) -> Vec<String> {
    let (tag, mut out, mut rest) = (b"segtest:", Vec::new(), frame);
    while let Some(at) = rest.windows(tag.len()).position(|w| w == tag) {
        rest = &rest[at + tag.len()..];
        if let Some(end) = rest.iter().position(|&b| b == b';') {
            out.push(String::from_utf8_lossy(&rest[..end]).into_owned());
            rest = &rest[end..];
        }
    }
    out
}

/// An Ethernet II frame (or 802.3, when `ethertype` is a length).
pub fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An Ethernet/IPv4 ARP packet (28 bytes), then `trailer` (the marker: the
/// kernel ignores what follows an ARP packet, the bridge forwards it).
pub fn arp(op: u16, sender: Station, target: Station, trailer: &[u8]) -> Vec<u8> {
    let mut p = vec![0x00, 0x01, 0x08, 0x00, 6, 4];
    p.extend_from_slice(&op.to_be_bytes());
    p.extend_from_slice(&sender.mac);
    p.extend_from_slice(&sender.ip.octets());
    p.extend_from_slice(&target.mac);
    p.extend_from_slice(&target.ip.octets());
    p.extend_from_slice(trailer);
    p
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 packet carrying UDP from `sport` to `dport` (UDP checksum 0: none).
pub fn ipv4_udp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
    let udp_len = 8 + data.len() as u16;
    let mut p = vec![0x45, 0];
    p.extend_from_slice(&(20 + udp_len).to_be_bytes());
    p.extend_from_slice(&[0x12, 0x34, 0, 0, 64, 17, 0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let sum = checksum(&p);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&udp_len.to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(data);
    p
}

/// The IPv6 link-local address of `mac` (modified EUI-64).
pub fn link_local(mac: [u8; 6]) -> Ipv6Addr {
    let b = [
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        mac[0] ^ 2,
        mac[1],
        mac[2],
        0xff,
        0xfe,
        mac[3],
        mac[4],
        mac[5],
    ];
    Ipv6Addr::from(b)
}

/// An IPv6 packet carrying ICMPv6 `icmp` (checksum filled in), hop limit 255.
pub fn ipv6_icmp(src: Ipv6Addr, dst: Ipv6Addr, mut icmp: Vec<u8>) -> Vec<u8> {
    let len = icmp.len() as u16;
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&u32::from(len).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 58]);
    pseudo.extend_from_slice(&icmp);
    let sum = checksum(&pseudo);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&len.to_be_bytes());
    p.extend_from_slice(&[58, 255]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&icmp);
    p
}

/// A router advertisement with router lifetime 0 and no options (it
/// changes nothing even where accepted), then `trailer`.
fn router_advertisement(trailer: &[u8]) -> Vec<u8> {
    let mut icmp = vec![134, 0, 0, 0, 64, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(trailer);
    icmp
}

/// The attacks segment `a` may try against segment `v` and the gateway
/// `gw`, and the controls (A's own traffic) that must still arrive.
/// Markers carry `tag`.
pub fn catalogue(tag: &str, a: Station, v: Station, gw: Station) -> Vec<Probe> {
    let mut probes = controls(a, v, gw);
    probes.extend(arp_attacks(a, v, gw));
    probes.extend(ipv4_attacks(a, v, gw));
    probes.extend(other_ethertypes(a, v, gw));
    probes
        .into_iter()
        .map(|(name, expect, build)| Probe {
            frame: build(&marker(tag, name)),
            name: format!("{tag}/{name}"),
            expect,
        })
        .collect()
}

/// A probe before it is tagged: its name, where it must arrive, and how
/// to build it around its marker.
type Untagged<'a> = (&'static str, Expect, Box<dyn FnOnce(&[u8]) -> Vec<u8> + 'a>);

fn probe<'a>(
    name: &'static str,
    expect: Expect,
    build: impl FnOnce(&[u8]) -> Vec<u8> + 'a,
) -> Untagged<'a> {
    (name, expect, Box::new(build))
}

fn udp_to(from: Station, to: Station, m: &[u8]) -> Vec<u8> {
    eth(
        to.mac,
        from.mac,
        0x0800,
        &ipv4_udp(from.ip, to.ip, 40000, 31337, m),
    )
}

fn controls(a: Station, v: Station, gw: Station) -> Vec<Untagged<'static>> {
    let nobody = Station {
        mac: [0; 6],
        ip: a.ip,
    };
    vec![
        probe("control-udp-to-gateway", Expect::Gateway, move |m| {
            udp_to(a, gw, m)
        }),
        probe("control-udp-to-victim", Expect::Victim, move |m| {
            udp_to(a, v, m)
        }),
        // Broadcasts of its own reach the gateway, never another segment.
        probe("control-broadcast-udp", Expect::Gateway, move |m| {
            let ip = ipv4_udp(a.ip, Ipv4Addr::BROADCAST, 40000, 31337, m);
            eth(BROADCAST, a.mac, 0x0800, &ip)
        }),
        // A gratuitous ARP for its own address reaches the gateway; the
        // victim sees only ARP about its own address.
        probe("control-gratuitous-arp-own", Expect::Gateway, move |m| {
            eth(BROADCAST, a.mac, 0x0806, &arp(1, a, nobody, m))
        }),
    ]
}

fn arp_attacks(a: Station, v: Station, gw: Station) -> Vec<Untagged<'static>> {
    let claim = move |ip| Station { mac: a.mac, ip };
    let unknown = move |ip| Station { mac: [0; 6], ip };
    vec![
        probe("gratuitous-arp-victim-ip", Expect::Nowhere, move |m| {
            eth(
                BROADCAST,
                a.mac,
                0x0806,
                &arp(1, claim(v.ip), unknown(v.ip), m),
            )
        }),
        probe(
            "gratuitous-arp-reply-victim-ip",
            Expect::Nowhere,
            move |m| {
                eth(
                    BROADCAST,
                    a.mac,
                    0x0806,
                    &arp(2, claim(v.ip), claim(v.ip), m),
                )
            },
        ),
        probe(
            "arp-reply-to-gateway-victim-ip",
            Expect::Nowhere,
            move |m| eth(gw.mac, a.mac, 0x0806, &arp(2, claim(v.ip), gw, m)),
        ),
        probe("arp-request-spoofed-sender", Expect::Nowhere, move |m| {
            eth(
                BROADCAST,
                a.mac,
                0x0806,
                &arp(1, claim(v.ip), unknown(gw.ip), m),
            )
        }),
        probe("gratuitous-arp-gateway-ip", Expect::Nowhere, move |m| {
            eth(
                BROADCAST,
                a.mac,
                0x0806,
                &arp(1, claim(gw.ip), unknown(gw.ip), m),
            )
        }),
        // An RFC 5227 probe (sender 0.0.0.0): segments have static addresses.
        probe("arp-probe-unspecified-sender", Expect::Nowhere, move |m| {
            let none = claim(Ipv4Addr::UNSPECIFIED);
            eth(BROADCAST, a.mac, 0x0806, &arp(1, none, unknown(v.ip), m))
        }),
        probe(
            "arp-reply-to-victim-gateway-ip",
            Expect::Nowhere,
            move |m| eth(v.mac, a.mac, 0x0806, &arp(2, claim(gw.ip), v, m)),
        ),
        probe("arp-sender-mac-not-own", Expect::Nowhere, move |m| {
            let sender = Station {
                mac: v.mac,
                ip: a.ip,
            };
            eth(BROADCAST, a.mac, 0x0806, &arp(1, sender, unknown(gw.ip), m))
        }),
        probe("arp-opcode-reverse-request", Expect::Nowhere, move |m| {
            eth(BROADCAST, a.mac, 0x0806, &arp(3, a, a, m))
        }),
        probe("rarp", Expect::Nowhere, move |m| {
            eth(BROADCAST, a.mac, 0x8035, &arp(3, a, a, m))
        }),
    ]
}

fn ipv4_attacks(a: Station, v: Station, gw: Station) -> Vec<Untagged<'static>> {
    let as_victim = Station {
        mac: a.mac,
        ip: v.ip,
    };
    let stranger = Station {
        mac: a.mac,
        ip: Ipv4Addr::new(198, 51, 100, 7),
    };
    vec![
        probe("foreign-source-mac", Expect::Nowhere, move |m| {
            let foreign = Station {
                mac: [0x02, 0xde, 0xad, 0xbe, 0xef, 0x01],
                ip: a.ip,
            };
            udp_to(foreign, gw, m)
        }),
        probe("victim-source-mac", Expect::Nowhere, move |m| {
            udp_to(
                Station {
                    mac: v.mac,
                    ip: a.ip,
                },
                gw,
                m,
            )
        }),
        probe("victim-source-ip", Expect::Nowhere, move |m| {
            udp_to(as_victim, gw, m)
        }),
        probe("foreign-source-ip", Expect::Nowhere, move |m| {
            udp_to(stranger, gw, m)
        }),
        probe("ipv4-unspecified-source", Expect::Nowhere, move |m| {
            let ip = ipv4_udp(Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST, 68, 67, m);
            eth(BROADCAST, a.mac, 0x0800, &ip)
        }),
        probe("dhcp-offer-broadcast", Expect::Nowhere, move |m| {
            let ip = ipv4_udp(a.ip, Ipv4Addr::BROADCAST, 67, 68, m);
            eth(BROADCAST, a.mac, 0x0800, &ip)
        }),
        // Routed on by the victim into its own Docker networks, were it
        // delivered: the victim's MAC, an address behind it.
        probe("to-victim-internal-address", Expect::Nowhere, move |m| {
            let ip = ipv4_udp(a.ip, Ipv4Addr::new(172, 17, 0, 2), 40000, 31337, m);
            eth(v.mac, a.mac, 0x0800, &ip)
        }),
    ]
}

fn other_ethertypes(a: Station, v: Station, gw: Station) -> Vec<Untagged<'static>> {
    // Tags: VLAN 5 around IPv4, and QinQ (5 outside, 6 inside).
    let tagged =
        move |tags: &[u8], m: &[u8]| [tags, &ipv4_udp(a.ip, gw.ip, 40000, 31337, m)[..]].concat();
    // LLC, then a configuration BPDU of all zeros: root priority 0 claims root.
    let bpdu = [&[0x42, 0x42, 0x03][..], &[0; 35]].concat();
    vec![
        probe("vlan-tagged-ipv4", Expect::Nowhere, move |m| {
            eth(gw.mac, a.mac, 0x8100, &tagged(&[0, 5, 0x08, 0], m))
        }),
        probe("qinq-tagged-ipv4", Expect::Nowhere, move |m| {
            let tags = [0, 5, 0x81, 0, 0, 6, 0x08, 0];
            eth(gw.mac, a.mac, 0x88a8, &tagged(&tags, m))
        }),
        probe("ipv6-router-advertisement", Expect::Nowhere, move |m| {
            let all_nodes: Ipv6Addr = "ff02::1".parse().unwrap();
            let ip = ipv6_icmp(link_local(a.mac), all_nodes, router_advertisement(m));
            eth([0x33, 0x33, 0, 0, 0, 1], a.mac, 0x86dd, &ip)
        }),
        probe("ipv6-to-victim", Expect::Nowhere, move |m| {
            let mut echo = vec![128, 0, 0, 0, 0, 1, 0, 1];
            echo.extend_from_slice(m);
            let ip = ipv6_icmp(link_local(a.mac), link_local(v.mac), echo);
            eth(v.mac, a.mac, 0x86dd, &ip)
        }),
        probe("stp-bpdu-claiming-root", Expect::Nowhere, move |m| {
            let body = [&bpdu[..], m].concat();
            eth([0x01, 0x80, 0xc2, 0, 0, 0], a.mac, body.len() as u16, &body)
        }),
        probe("lldp", Expect::Nowhere, move |m| {
            eth([0x01, 0x80, 0xc2, 0, 0, 0x0e], a.mac, 0x88cc, m)
        }),
        // clean-traffic (libvirt's nwfilter) lets this one through.
        probe("ethertype-0x0835", Expect::Nowhere, move |m| {
            eth(BROADCAST, a.mac, 0x0835, m)
        }),
        probe("ethertype-local-experimental", Expect::Nowhere, move |m| {
            eth(v.mac, a.mac, 0x88b5, m)
        }),
    ]
}

/// A frame to a link-local group address (slow protocols) with the
/// victim's source MAC: it skips the bridge's prerouting hook, and a bridge
/// that accepts it moves the victim's MAC to the attacker's port.
pub fn mac_theft(tag: &str, v: Station) -> Vec<u8> {
    let mut body = vec![0x01, 0x01];
    body.extend_from_slice(&marker(tag, "mac-theft-link-local"));
    body.resize(46, 0);
    eth([0x01, 0x80, 0xc2, 0, 0, 0x02], v.mac, 0x8809, &body)
}

/// `count` broadcast frames from distinct foreign source MACs (a flood of
/// the bridge's MAC table).
pub fn mac_flood(tag: &str, count: u16) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            let [hi, lo] = i.to_be_bytes();
            let src = [0x02, 0xfe, 0xed, 0x00, hi, lo];
            eth(BROADCAST, src, 0x88b5, &marker(tag, "mac-flood"))
        })
        .collect()
}

/// Lower-case hex, as the sender takes frames.
pub fn hex(frame: &[u8]) -> String {
    frame.iter().map(|b| format!("{b:02x}")).collect()
}

/// `02:00:cb:00:71:0a`.
pub fn mac_text(mac: [u8; 6]) -> String {
    let parts: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
    parts.join(":")
}
