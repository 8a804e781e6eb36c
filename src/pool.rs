//! The host's pool of public IPv4 addresses for segments: lowest free address
//! first, never one address for two segments. The pool itself is plain data;
//! callers serialise access (the segment registry holds it under its lock).

use crate::config::{ConfigError, NetworkConfig};
use std::{collections::BTreeSet, net::Ipv4Addr};

/// Every address of the pool is in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the address pool is exhausted ({size} addresses, all in use)")]
pub struct PoolExhausted {
    /// Size of the pool.
    pub size: usize,
}

/// The configured addresses and which are in use.
#[derive(Debug, Clone)]
pub struct AddressPool {
    ranges: Vec<(u32, u32)>,
    used: BTreeSet<u32>,
}

fn parse_range(text: &str) -> Option<(u32, u32)> {
    let (first, last) = text.split_once('-').unwrap_or((text, text));
    let first: Ipv4Addr = first.trim().parse().ok()?;
    let last: Ipv4Addr = last.trim().parse().ok()?;
    Some((first.into(), last.into()))
}

impl AddressPool {
    /// Builds the pool from `[network]`, checking that every range lies in the
    /// gateway's network and holds neither the gateway, the network address
    /// nor the broadcast address, and that ranges do not overlap.
    pub fn from_config(net: &NetworkConfig) -> Result<Self, ConfigError> {
        let bad = |reason: String| ConfigError::Invalid {
            key: "network.ranges",
            reason,
        };
        if net.ranges.is_empty() {
            return Err(bad("at least one range is needed".into()));
        }
        let mask = u32::MAX
            .checked_shl(32 - u32::from(net.prefix))
            .unwrap_or(0);
        let gateway = u32::from(net.gateway);
        let (network, broadcast) = (gateway & mask, gateway | !mask);
        if gateway == network || gateway == broadcast {
            return Err(bad(format!(
                "gateway {} is the network or broadcast address of /{}",
                net.gateway, net.prefix
            )));
        }
        let mut ranges: Vec<(u32, u32)> = Vec::new();
        for text in &net.ranges {
            let (first, last) =
                parse_range(text).ok_or_else(|| bad(format!("{text:?} is not FIRST-LAST")))?;
            if first > last {
                return Err(bad(format!("{text:?} ends before it starts")));
            }
            if first <= network || last >= broadcast || (first & mask) != network {
                return Err(bad(format!(
                    "{text:?} is not inside {}/{} without its network and broadcast addresses",
                    Ipv4Addr::from(network),
                    net.prefix
                )));
            }
            if (first..=last).contains(&gateway) {
                return Err(bad(format!("{text:?} holds the gateway {}", net.gateway)));
            }
            if ranges.iter().any(|&(f, l)| first <= l && f <= last) {
                return Err(bad(format!("{text:?} overlaps another range")));
            }
            ranges.push((first, last));
        }
        ranges.sort_unstable();
        Ok(Self {
            ranges,
            used: BTreeSet::new(),
        })
    }

    /// Number of addresses in the pool.
    pub fn size(&self) -> usize {
        self.ranges.iter().map(|&(f, l)| (l - f) as usize + 1).sum()
    }

    /// Number of free addresses.
    pub fn free(&self) -> usize {
        self.size() - self.used.len()
    }

    /// Whether `addr` belongs to the pool.
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        let a = u32::from(addr);
        self.ranges.iter().any(|&(f, l)| (f..=l).contains(&a))
    }

    /// Takes the lowest free address.
    pub fn allocate(&mut self) -> Result<Ipv4Addr, PoolExhausted> {
        for &(first, last) in &self.ranges {
            // `used` is sorted: walk it alongside the range instead of probing
            // every address.
            let mut candidate = first;
            for &u in self.used.range(first..=last) {
                if u != candidate {
                    break;
                }
                candidate += 1;
            }
            if candidate <= last {
                self.used.insert(candidate);
                return Ok(candidate.into());
            }
        }
        Err(PoolExhausted { size: self.size() })
    }

    /// Marks `addr` used (when rebuilding from libvirt). Returns false if it
    /// was already used, which means two segments claim it.
    pub fn reserve(&mut self, addr: Ipv4Addr) -> bool {
        self.used.insert(addr.into())
    }

    /// Returns `addr` to the pool.
    pub fn release(&mut self, addr: Ipv4Addr) {
        self.used.remove(&u32::from(addr));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(ranges: &[&str]) -> AddressPool {
        let net = NetworkConfig {
            ranges: ranges.iter().map(|s| s.to_string()).collect(),
            ..NetworkConfig::default()
        };
        AddressPool::from_config(&net).unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn lowest_free_first_and_reuse_after_release() {
        let mut p = pool(&["203.0.113.10-203.0.113.12"]);
        assert_eq!(p.size(), 3);
        assert_eq!(p.allocate(), Ok(ip("203.0.113.10")));
        assert_eq!(p.allocate(), Ok(ip("203.0.113.11")));
        p.release(ip("203.0.113.10"));
        assert_eq!(p.allocate(), Ok(ip("203.0.113.10")));
        assert_eq!(p.allocate(), Ok(ip("203.0.113.12")));
        assert_eq!(p.allocate(), Err(PoolExhausted { size: 3 }));
        assert_eq!(p.free(), 0);
    }

    #[test]
    fn spans_ranges_in_order_and_skips_reserved() {
        let mut p = pool(&["203.0.113.100", "203.0.113.20-203.0.113.21"]);
        assert!(p.reserve(ip("203.0.113.20")));
        assert!(!p.reserve(ip("203.0.113.20")), "double claim is reported");
        assert_eq!(p.allocate(), Ok(ip("203.0.113.21")));
        assert_eq!(p.allocate(), Ok(ip("203.0.113.100")));
        assert!(p.allocate().is_err());
        assert!(p.contains(ip("203.0.113.100")));
        assert!(!p.contains(ip("203.0.113.99")));
    }

    #[test]
    fn never_hands_out_an_address_twice() {
        let mut p = pool(&["203.0.113.10-203.0.113.200"]);
        let mut seen = BTreeSet::new();
        while let Ok(a) = p.allocate() {
            assert!(seen.insert(a), "{a} twice");
        }
        assert_eq!(seen.len(), 191);
    }

    #[test]
    fn rejects_bad_ranges() {
        let bad = [
            vec!["203.0.113.0-203.0.113.5"],
            vec!["203.0.113.250-203.0.113.255"],
            vec!["203.0.113.1"],
            vec!["198.51.100.10"],
            vec!["203.0.113.10-203.0.113.20", "203.0.113.20-203.0.113.30"],
            vec!["nonsense"],
            vec![],
        ];
        for ranges in bad {
            let net = NetworkConfig {
                ranges: ranges.iter().map(|s| s.to_string()).collect(),
                ..NetworkConfig::default()
            };
            assert!(AddressPool::from_config(&net).is_err(), "{ranges:?}");
        }
    }
}
