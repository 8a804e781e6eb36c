//! The real [`PortFilter`]: the `nft` program, run in the agent's network
//! namespace (the bridge's), reading its script on standard input, so each
//! change is one atomic kernel transaction. An operator sees the same rules
//! with `nft list table bridge segment_agent`.

use super::filter::{
    FilterError, PortFilter, SegmentPort, allow_script, install_script, revoke_script,
    swarm_peers_script, swarm_remote_script,
};
use std::{
    io::Write,
    net::Ipv4Addr,
    process::{Command, Stdio},
};

/// Longest standard error kept in an error.
const STDERR_LIMIT: usize = 2000;

/// Runs `nft` (and `ip`, to read the bridge's STP state).
#[derive(Debug, Clone)]
pub struct Nft {
    nft: String,
    ip: String,
    bridge: String,
    swarm_remote: Vec<ipnet::Ipv4Net>,
}

impl Nft {
    /// The filter of segments on `bridge`, with `nft` and `ip` from PATH.
    pub fn new(bridge: &str) -> Self {
        Self::with_programs("nft", "ip", bridge)
    }

    /// The same with the given programs (tests point them elsewhere).
    pub fn with_programs(nft: &str, ip: &str, bridge: &str) -> Self {
        Nft {
            nft: nft.into(),
            ip: ip.into(),
            bridge: bridge.into(),
            swarm_remote: Vec::new(),
        }
    }

    /// The same, the swarm's ports of segments open to `nets` off the
    /// bridge (`network.swarm_remote`).
    pub fn with_swarm_remote(mut self, nets: Vec<ipnet::Ipv4Net>) -> Self {
        self.swarm_remote = nets;
        self
    }

    /// The whole table with `ports`, and the host's remote swarm networks
    /// (set anew: they are the host's configuration, not a port's).
    fn table_script(&self, ports: &[SegmentPort]) -> String {
        let mut script = install_script(ports);
        script.push_str(&swarm_remote_script(&self.swarm_remote));
        script
    }

    /// Runs `nft ARGS -f -` with `script` on standard input.
    fn run(&self, args: &[&str], script: &str) -> Result<(), FilterError> {
        let mut child = Command::new(&self.nft)
            .args(args)
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| FilterError::Spawn(self.nft.clone(), e))?;
        let written = child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(script.as_bytes());
        let out = child
            .wait_with_output()
            .map_err(|e| FilterError::Spawn(self.nft.clone(), e))?;
        if out.status.success() {
            // nft read the whole script: a short write would have failed it.
            return written.map_err(|e| FilterError::Spawn(self.nft.clone(), e));
        }
        Err(FilterError::Refused {
            program: self.nft.clone(),
            status: out.status,
            stderr: bounded(&String::from_utf8_lossy(&out.stderr)),
        })
    }

    /// Refuses a bridge that runs STP: with STP on, BPDUs from a port go to
    /// the bridge's STP code without passing any netfilter hook, and the
    /// bridge learns their source MAC first.
    fn check_bridge(&self) -> Result<(), FilterError> {
        let out = Command::new(&self.ip)
            .args(["-details", "-json", "link", "show", "dev", &self.bridge])
            .output()
            .map_err(|e| FilterError::Spawn(self.ip.clone(), e))?;
        if !out.status.success() {
            return Err(FilterError::Bridge(format!(
                "bridge {} not found: {}",
                self.bridge,
                bounded(&String::from_utf8_lossy(&out.stderr))
            )));
        }
        let links: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| FilterError::Bridge(format!("reading `ip -json link`: {e}")))?;
        let info = &links[0]["linkinfo"];
        if info["info_kind"] != "bridge" {
            return Err(FilterError::Bridge(format!(
                "{} is not a bridge",
                self.bridge
            )));
        }
        match info["info_data"]["stp_state"].as_u64() {
            Some(0) => Ok(()),
            Some(state) => Err(FilterError::Bridge(format!(
                "bridge {b} runs STP (stp_state {state}): BPDUs skip every netfilter hook and the \
                 bridge learns their source MAC, so a segment could take another's MAC; turn it \
                 off with `ip link set {b} type bridge stp_state 0`",
                b = self.bridge
            ))),
            None => Err(FilterError::Bridge(format!(
                "`ip -json link` shows no stp_state for {}",
                self.bridge
            ))),
        }
    }
}

impl PortFilter for Nft {
    fn probe(&self) -> Result<String, FilterError> {
        self.check_bridge()?;
        // The kernel validates the whole transaction, with one element of
        // each set, and commits nothing (`nft --check`).
        let example = SegmentPort::of(Ipv4Addr::new(192, 0, 2, 1));
        self.run(&["--check"], &self.table_script(&[example]))?;
        Ok(format!(
            "nftables bridge table segment_agent can be installed; {} runs no STP",
            self.bridge
        ))
    }

    fn install(&self, ports: &[SegmentPort]) -> Result<(), FilterError> {
        self.run(&[], &self.table_script(ports))
    }

    fn allow(&self, port: &SegmentPort) -> Result<(), FilterError> {
        self.run(&[], &allow_script(port))
    }

    fn revoke(&self, port: &SegmentPort) -> Result<(), FilterError> {
        self.run(&[], &revoke_script(port))
    }

    fn change_swarm_peers(
        &self,
        before: &SegmentPort,
        after: &SegmentPort,
    ) -> Result<(), FilterError> {
        self.run(&[], &swarm_peers_script(before, after))
    }
}

fn bounded(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(STDERR_LIMIT) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_program_is_a_clear_error() {
        let nft = Nft::with_programs("/nonexistent/nft", "/nonexistent/ip", "segbr0");
        let e = nft.install(&[]).unwrap_err();
        assert!(
            matches!(&e, FilterError::Spawn(p, _) if p == "/nonexistent/nft"),
            "{e:?}"
        );
        let e = nft.probe().unwrap_err();
        assert!(e.to_string().contains("/nonexistent/ip"), "{e}");
    }

    #[test]
    fn refusals_carry_bounded_stderr() {
        // `false` ignores its input and fails: a refusal without output.
        let nft = Nft::with_programs("false", "ip", "segbr0");
        let e = nft.install(&[]).unwrap_err();
        assert!(matches!(e, FilterError::Refused { .. }), "{e:?}");
        let long = "x".repeat(5000);
        assert_eq!(bounded(&long).len(), STDERR_LIMIT + 3);
        assert_eq!(bounded("  short \n"), "short");
    }
}
