//! The swarm part of a segment: what the scheduler asks for (init a swarm,
//! or join one as a manager or a worker) and what the segment became (its
//! node id, role, and for a manager the join tokens of the next segments).
//! Validated once at the edge, like the rest of [`super`]; the
//! membership itself is done by [`crate::segment::membership`].

use super::{InvalidArgument, echo};
use std::net::{Ipv4Addr, SocketAddrV4};

/// Most managers a join may name (Docker advises at most seven managers
/// per swarm; a longer list is a mistake, not a bigger swarm).
pub const MAX_MANAGERS: usize = 7;
/// The swarm's control port, the default of a manager address.
pub const SWARM_PORT: u16 = 2377;
/// The prefix of every swarm join token.
const TOKEN_PREFIX: &str = "SWMTKN-1-";

/// How a segment enters its cluster's swarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwarmMode {
    /// A new swarm on this segment.
    Init,
    /// An existing swarm, as a manager.
    JoinManager,
    /// An existing swarm, as a worker.
    JoinWorker,
}

impl SwarmMode {
    /// The word stored in the metadata.
    pub fn as_str(self) -> &'static str {
        match self {
            SwarmMode::Init => "init",
            SwarmMode::JoinManager => "manager",
            SwarmMode::JoinWorker => "worker",
        }
    }

    /// Parses the word stored in the metadata.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "init" => Some(SwarmMode::Init),
            "manager" => Some(SwarmMode::JoinManager),
            "worker" => Some(SwarmMode::JoinWorker),
            _ => None,
        }
    }

    /// The role a node entered this way has.
    pub fn role(self) -> SwarmRole {
        match self {
            SwarmMode::Init | SwarmMode::JoinManager => SwarmRole::Manager,
            SwarmMode::JoinWorker => SwarmRole::Worker,
        }
    }
}

/// A node's role in its swarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwarmRole {
    /// Takes part in the swarm's raft; can hand out join tokens.
    Manager,
    /// Runs tasks only.
    Worker,
}

impl SwarmRole {
    /// The word stored in the metadata.
    pub fn as_str(self) -> &'static str {
        match self {
            SwarmRole::Manager => "manager",
            SwarmRole::Worker => "worker",
        }
    }

    /// Parses the word stored in the metadata.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "manager" => Some(SwarmRole::Manager),
            "worker" => Some(SwarmRole::Worker),
            _ => None,
        }
    }
}

/// The swarm part of a CreateSegment, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwarmSpec {
    /// Init or join.
    pub mode: SwarmMode,
    /// The join token (joins only).
    pub join_token: Option<String>,
    /// The managers to join through (joins only), ports defaulted.
    pub managers: Vec<SocketAddrV4>,
}

impl SwarmSpec {
    /// Validates the parts of a request's swarm part.
    pub fn new(mode: SwarmMode, token: &str, managers: &[String]) -> Result<Self, InvalidArgument> {
        if mode == SwarmMode::Init {
            if !token.is_empty() || !managers.is_empty() {
                return Err(InvalidArgument::new(
                    "swarm",
                    "mode INIT takes no join_token and no manager_addresses",
                ));
            }
            return Ok(SwarmSpec {
                mode,
                join_token: None,
                managers: Vec::new(),
            });
        }
        check_token(token)?;
        Ok(SwarmSpec {
            mode,
            join_token: Some(token.to_owned()),
            managers: parse_managers(managers)?,
        })
    }
}

/// `SWMTKN-1-` + 50 base-36 digits (the swarm CA's digest) + `-` + 25
/// (the secret): the form `docker swarm join-token` prints.
fn check_token(token: &str) -> Result<(), InvalidArgument> {
    let field = "swarm.join_token";
    if token.is_empty() {
        return Err(InvalidArgument::new(field, "is required to join a swarm"));
    }
    let base36 = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
    };
    let ok = token.strip_prefix(TOKEN_PREFIX).is_some_and(|rest| {
        rest.split_once('-')
            .is_some_and(|(digest, secret)| base36(digest, 50) && base36(secret, 25))
    });
    if ok {
        return Ok(());
    }
    // The token is a secret: its length, never its text.
    Err(InvalidArgument::new(
        field,
        format!(
            "is no swarm join token ({} bytes; expected SWMTKN-1-<50 base-36 digits>-<25 base-36 \
             digits>, as `docker swarm join-token -q` prints)",
            token.len()
        ),
    ))
}

fn parse_managers(managers: &[String]) -> Result<Vec<SocketAddrV4>, InvalidArgument> {
    let field = "swarm.manager_addresses";
    if managers.is_empty() || managers.len() > MAX_MANAGERS {
        return Err(InvalidArgument::new(
            field,
            format!(
                "{} addresses given; a join needs 1 to {MAX_MANAGERS} managers",
                managers.len()
            ),
        ));
    }
    let mut out: Vec<SocketAddrV4> = Vec::with_capacity(managers.len());
    for m in managers {
        let addr = parse_manager(m).ok_or_else(|| {
            InvalidArgument::new(
                field,
                format!(
                    "{} is not a unicast IPv4 address with an optional port (203.0.113.10 or \
                     203.0.113.10:2377)",
                    echo(m)
                ),
            )
        })?;
        if out.contains(&addr) {
            return Err(InvalidArgument::new(
                field,
                format!("{addr} is listed twice"),
            ));
        }
        out.push(addr);
    }
    Ok(out)
}

fn parse_manager(s: &str) -> Option<SocketAddrV4> {
    let addr = match s.parse::<SocketAddrV4>() {
        Ok(a) => a,
        Err(_) => SocketAddrV4::new(s.parse::<Ipv4Addr>().ok()?, SWARM_PORT),
    };
    (is_unicast(*addr.ip()) && addr.port() != 0).then_some(addr)
}

/// An address a host may be: not unspecified, broadcast, multicast,
/// loopback or in 0.0.0.0/8.
pub fn is_unicast(ip: Ipv4Addr) -> bool {
    !(ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_loopback()
        || ip.octets()[0] == 0)
}

/// What a segment became in its swarm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwarmNode {
    /// Docker's node id.
    pub node_id: String,
    /// Its role.
    pub role: SwarmRole,
    /// For managers: the swarm's worker join token.
    pub worker_token: Option<String>,
    /// For managers: the swarm's manager join token.
    pub manager_token: Option<String>,
    /// The swarm's managers as the node knew them (for a rejoin).
    pub managers: Vec<SocketAddrV4>,
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const TOKEN: &str =
        "SWMTKN-1-3pu6hszjas19xyp7ghgosyx9k8atbfcr8p2is99znpy26u2lkl-1awxwuwd3z9j1z3puu7rcgdbx";

    #[test]
    fn init_takes_nothing_joins_take_a_token_and_managers() {
        let m = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let init = SwarmSpec::new(SwarmMode::Init, "", &[]).unwrap();
        assert_eq!(init.join_token, None);
        assert!(SwarmSpec::new(SwarmMode::Init, TOKEN, &[]).is_err());
        assert!(SwarmSpec::new(SwarmMode::Init, "", &m(&["203.0.113.10"])).is_err());
        let join = SwarmSpec::new(
            SwarmMode::JoinWorker,
            TOKEN,
            &m(&["203.0.113.10", "203.0.113.11:4000"]),
        )
        .unwrap();
        assert_eq!(
            join.managers,
            vec![
                "203.0.113.10:2377".parse().unwrap(),
                "203.0.113.11:4000".parse().unwrap()
            ]
        );
        let field = |token: &str, managers: &[&str]| {
            SwarmSpec::new(SwarmMode::JoinManager, token, &m(managers))
                .unwrap_err()
                .field
        };
        let one = ["203.0.113.10"];
        assert_eq!(field("", &one), "swarm.join_token");
        assert_eq!(field(&TOKEN[..84], &one), "swarm.join_token");
        assert_eq!(field(&TOKEN.replace('a', "A"), &one), "swarm.join_token");
        assert_eq!(
            field(&TOKEN.replace("SWMTKN-1", "SWMTKN-2"), &one),
            "swarm.join_token"
        );
        let mgr = "swarm.manager_addresses";
        assert_eq!(field(TOKEN, &[]), mgr);
        for bad in [
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "127.0.0.1",
            "203.0.113.10:0",
            "203.0.113.10:99999",
            "host:2377",
            "[::1]:2377",
            "203.0.113.10:2377:1",
            "",
        ] {
            assert_eq!(field(TOKEN, &[bad]), mgr, "{bad:?}");
        }
        assert_eq!(field(TOKEN, &["203.0.113.10", "203.0.113.10:2377"]), mgr);
        let eight: Vec<String> = (1..=8).map(|i| format!("203.0.113.{i}")).collect();
        let eight: Vec<&str> = eight.iter().map(String::as_str).collect();
        assert_eq!(field(TOKEN, &eight), mgr);
        assert!(SwarmSpec::new(SwarmMode::JoinManager, TOKEN, &m(&eight[..7])).is_ok());
    }

    #[test]
    fn messages_are_bounded_and_never_repeat_a_token() {
        let huge = "x".repeat(1 << 20);
        let e = SwarmSpec::new(SwarmMode::JoinWorker, &huge, &["203.0.113.1".into()]).unwrap_err();
        assert!(
            e.to_string().len() < 300 && !e.to_string().contains("xxxx"),
            "{e}"
        );
        let wrong = format!("{TOKEN}x");
        let e = SwarmSpec::new(SwarmMode::JoinWorker, &wrong, &["203.0.113.1".into()]).unwrap_err();
        assert!(!e.to_string().contains(&TOKEN[9..30]), "{e}");
        let e = SwarmSpec::new(SwarmMode::JoinWorker, TOKEN, &[huge]).unwrap_err();
        assert!(e.to_string().len() < 400, "{e}");
    }
}
