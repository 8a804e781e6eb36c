//! The host's pool of public IPv4 addresses for segments: lowest free address
//! first, never one address for two segments. The pool itself is plain data;
//! callers serialise access (the segment registry holds it under its lock).

use std::{collections::BTreeSet, fmt, net::Ipv4Addr, str::FromStr};

/// Every address of the pool is in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the address pool is exhausted ({size} addresses, all in use)")]
pub struct PoolExhausted {
    /// Size of the pool.
    pub size: usize,
}

/// Why a pool cannot be built from its ranges.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// A range is not `FIRST-LAST` or a single address.
    #[error("{0:?} is not FIRST-LAST")]
    Syntax(String),
    /// No range at all.
    #[error("at least one range is needed")]
    Empty,
    /// The gateway is its network's network or broadcast address.
    #[error("gateway {gateway} is the network or broadcast address of /{prefix}")]
    Gateway {
        /// The gateway.
        gateway: Ipv4Addr,
        /// The network's prefix length.
        prefix: u8,
    },
    /// A range ends before it starts.
    #[error("{0:?} ends before it starts")]
    Reversed(String),
    /// A range leaves the network, or holds its network or broadcast address.
    #[error(
        "{range:?} is not inside {network}/{prefix} without its network and broadcast addresses"
    )]
    Outside {
        /// The range.
        range: String,
        /// The network address.
        network: Ipv4Addr,
        /// The network's prefix length.
        prefix: u8,
    },
    /// A range holds the gateway.
    #[error("{range:?} holds the gateway {gateway}")]
    HoldsGateway {
        /// The range.
        range: String,
        /// The gateway.
        gateway: Ipv4Addr,
    },
    /// Two ranges share addresses.
    #[error("{0:?} overlaps another range")]
    Overlap(String),
}

/// One range of addresses, `first..=last`, as written `FIRST-LAST` or as a
/// single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressRange {
    /// The first address.
    pub first: Ipv4Addr,
    /// The last address (equal to `first` for a single address).
    pub last: Ipv4Addr,
}

impl FromStr for AddressRange {
    type Err = PoolError;

    fn from_str(text: &str) -> Result<Self, PoolError> {
        let (first, last) = text.split_once('-').unwrap_or((text, text));
        let parse = |a: &str| a.trim().parse().map_err(|_| PoolError::Syntax(text.into()));
        Ok(Self {
            first: parse(first)?,
            last: parse(last)?,
        })
    }
}

impl fmt::Display for AddressRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.first == self.last {
            true => write!(f, "{}", self.first),
            false => write!(f, "{}-{}", self.first, self.last),
        }
    }
}

/// The configured addresses and which are in use.
#[derive(Debug, Clone)]
pub struct AddressPool {
    ranges: Vec<(u32, u32)>,
    used: BTreeSet<u32>,
}

impl AddressPool {
    /// Builds the pool of `ranges` in the network of `gateway`/`prefix`,
    /// checking that every range lies in that network and holds neither the
    /// gateway, the network address nor the broadcast address, and that
    /// ranges do not overlap.
    pub fn new(gateway: Ipv4Addr, prefix: u8, ranges: &[AddressRange]) -> Result<Self, PoolError> {
        if ranges.is_empty() {
            return Err(PoolError::Empty);
        }
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
        let gw = u32::from(gateway);
        let (network, broadcast) = (gw & mask, gw | !mask);
        if gw == network || gw == broadcast {
            return Err(PoolError::Gateway { gateway, prefix });
        }
        let mut taken: Vec<(u32, u32)> = Vec::new();
        for range in ranges {
            let text = range.to_string();
            let (first, last) = (u32::from(range.first), u32::from(range.last));
            if first > last {
                return Err(PoolError::Reversed(text));
            }
            if first <= network || last >= broadcast || (first & mask) != network {
                let network = Ipv4Addr::from(network);
                return Err(PoolError::Outside {
                    range: text,
                    network,
                    prefix,
                });
            }
            if (first..=last).contains(&gw) {
                return Err(PoolError::HoldsGateway {
                    range: text,
                    gateway,
                });
            }
            if taken.iter().any(|&(f, l)| first <= l && f <= last) {
                return Err(PoolError::Overlap(text));
            }
            taken.push((first, last));
        }
        taken.sort_unstable();
        Ok(Self {
            ranges: taken,
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

    fn build(ranges: &[&str]) -> Result<AddressPool, PoolError> {
        let ranges = ranges
            .iter()
            .map(|s| s.parse())
            .collect::<Result<Vec<AddressRange>, _>>()?;
        AddressPool::new(ip("203.0.113.1"), 24, &ranges)
    }

    fn pool(ranges: &[&str]) -> AddressPool {
        build(ranges).unwrap()
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
            assert!(build(&ranges).is_err(), "{ranges:?}");
        }
    }
}
