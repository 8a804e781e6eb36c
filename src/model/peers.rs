//! A cluster's segments on other hosts (SetClusterPeers): the addresses
//! that, with this host's segments of the cluster, reach the swarm's ports
//! of the cluster's segments here. Validated once at the edge.

use super::{InvalidArgument, echo, swarm::is_unicast};
use std::net::Ipv4Addr;

/// Most remote peers one cluster may have: a cluster is at most three
/// segments, so this bounds a list that is a mistake, not a cluster.
pub const MAX_REMOTE_PEERS: usize = 16;

const FIELD: &str = "remote_addresses";

/// The remote peers of a request, sorted and without duplicates. `local`
/// says which addresses belong to this host (its pool, its gateway): one
/// of them as a "remote" peer would let a local segment of another cluster
/// in, so it is refused.
pub fn remote_peers(
    addresses: &[String],
    local: impl Fn(Ipv4Addr) -> bool,
) -> Result<Vec<Ipv4Addr>, InvalidArgument> {
    if addresses.len() > MAX_REMOTE_PEERS {
        return Err(InvalidArgument::new(
            FIELD,
            format!(
                "{} addresses given; a cluster has at most {MAX_REMOTE_PEERS} remote peers",
                addresses.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(addresses.len());
    for a in addresses {
        let ip = a
            .parse::<Ipv4Addr>()
            .ok()
            .filter(|ip| is_unicast(*ip))
            .ok_or_else(|| {
                InvalidArgument::new(FIELD, format!("{} is not a unicast IPv4 address", echo(a)))
            })?;
        if local(ip) {
            return Err(InvalidArgument::new(
                FIELD,
                format!(
                    "{ip} is this host's (its address pool or gateway): local segments of the \
                     cluster are its peers already, and no other local address may be one"
                ),
            ));
        }
        out.push(ip);
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }
    fn none(_: Ipv4Addr) -> bool {
        false
    }

    #[test]
    fn peers_are_sorted_unique_unicast_addresses() {
        let got = remote_peers(&s(&["198.51.100.7", "198.51.100.2", "198.51.100.7"]), none);
        let want: Vec<Ipv4Addr> = vec![
            "198.51.100.2".parse().unwrap(),
            "198.51.100.7".parse().unwrap(),
        ];
        assert_eq!(got.unwrap(), want);
        assert_eq!(remote_peers(&[], none).unwrap(), Vec::<Ipv4Addr>::new());
        for bad in [
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "127.0.0.1",
            "0.1.2.3",
            "x",
            "198.51.100.0/24",
            "198.51.100.7:2377",
            "",
        ] {
            let e = remote_peers(&s(&[bad]), none).unwrap_err();
            assert_eq!(e.field, "remote_addresses", "{bad}");
        }
    }

    #[test]
    fn this_hosts_addresses_are_refused() {
        let pool = |ip: Ipv4Addr| ip.octets()[..3] == [203, 0, 113];
        let e = remote_peers(&s(&["198.51.100.7", "203.0.113.10"]), pool).unwrap_err();
        assert!(
            e.reason.contains("203.0.113.10 is this host's"),
            "{}",
            e.reason
        );
    }

    #[test]
    fn lists_and_messages_are_bounded() {
        let many: Vec<String> = (1..=17).map(|i| format!("198.51.100.{i}")).collect();
        assert!(remote_peers(&many[..16], none).is_ok());
        assert!(
            remote_peers(&many, none)
                .unwrap_err()
                .reason
                .contains("17 addresses")
        );
        let long = "9".repeat(100_000);
        assert!(remote_peers(&[long], none).unwrap_err().reason.len() < 200);
    }
}
