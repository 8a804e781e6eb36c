//! The agent's swarm token: the one secret that lets a request change the
//! segment's swarm membership (`policy::swarm`).
//!
//! The agent writes a fresh random token into the segment's `/etc/docker`
//! (host-root-owned directory, read-only bind; the file 0400 for the
//! segment's root, who runs the plugin) and keeps a copy in its host-only
//! directory. Its own Docker client sends it in the [`HEADER`] of swarm
//! requests; dockerd forwards request headers to the plugin, which compares
//! them here in constant time. A customer reaches dockerd only through the
//! API: no bind reaches `/etc/docker`, so they can neither read the token
//! nor guess it (256 bits). Why not the client certificate's CN: behind the
//! front, dockerd no longer sees the client's certificate, and the CN is
//! whatever the holder of the cluster CA (the control plane) wrote.

use std::path::{Path, PathBuf};

/// The request header that carries the token.
pub const HEADER: &str = "X-Segment-Agent-Token";
/// The token's file name in `/etc/docker` and in the agent's directory.
pub const FILE: &str = "agent-token";

/// Where the plugin reads the token; `None`: no token, nothing matches.
#[derive(Debug, Clone, Default)]
pub struct AgentToken {
    path: Option<PathBuf>,
}

impl AgentToken {
    /// The token in `path` (read at each check: a rebuild may replace it).
    pub fn at(path: impl Into<PathBuf>) -> Self {
        Self {
            path: Some(path.into()),
        }
    }

    /// Whether `presented` is the token. A missing, unreadable or short
    /// file matches nothing.
    pub fn matches(&self, presented: Option<&str>) -> bool {
        let (Some(path), Some(presented)) = (&self.path, presented) else {
            return false;
        };
        match read(path) {
            Some(token) => equal_in_constant_time(token.as_bytes(), presented.trim().as_bytes()),
            None => false,
        }
    }
}

/// Compares without an early exit, so the time taken says nothing of where
/// a guess first differs.
fn equal_in_constant_time(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn read(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let token = text.trim();
    (token.len() >= 32).then(|| token.to_owned())
}

/// A fresh token: 32 random bytes, hex.
pub fn generate() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system's random source");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_written_token_matches() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        let token = generate();
        assert_eq!(token.len(), 64);
        assert_ne!(token, generate());
        std::fs::write(&path, format!("{token}\n")).unwrap();
        let t = AgentToken::at(&path);
        assert!(t.matches(Some(&token)));
        assert!(!t.matches(Some(&generate())));
        assert!(!t.matches(Some(&token[..63])));
        assert!(!t.matches(Some("")));
        assert!(!t.matches(None));
        assert!(!AgentToken::default().matches(Some(&token)));
        std::fs::write(&path, "short").unwrap();
        assert!(!t.matches(Some("short")));
        std::fs::remove_file(&path).unwrap();
        assert!(!t.matches(Some(&token)));
    }
}
