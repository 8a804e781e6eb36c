//! How segments attach to the host network: the bridge, prefix and gateway
//! every segment's interface gets, and the bridge filter that keeps each
//! segment to its own address and MAC ([`filter`], applied by [`nft`]).
//! Addresses come from [`crate::pool`].

pub mod fake;
pub mod filter;
pub mod nft;

use std::net::Ipv4Addr;

/// The segment side of the host network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentNetwork {
    /// Host bridge.
    pub bridge: String,
    /// Prefix length.
    pub prefix: u8,
    /// Default gateway.
    pub gateway: Ipv4Addr,
}

impl SegmentNetwork {
    /// Whether the bridge exists in the agent's network namespace. Asked
    /// of the kernel through a socket, not `/sys/class/net`, which shows the
    /// namespace that mounted sysfs rather than the caller's.
    pub fn bridge_present(&self) -> bool {
        nix::net::if_::if_nametoindex(self.bridge.as_str()).is_ok()
    }
}
