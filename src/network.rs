//! How segments attach to the host network: the bridge, prefix and gateway
//! every segment's interface gets. Addresses come from [`crate::pool`].

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
