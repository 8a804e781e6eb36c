//! What a segment is made of: validated identifiers, the flavor and the spec
//! the scheduler asks for. Everything here is checked once, at the edge, so the
//! rest of the agent only ever sees valid values.

pub mod peers;
pub mod swarm;

use std::{collections::BTreeMap, fmt, net::Ipv4Addr, time::SystemTime};

/// Most labels a segment may carry.
pub const MAX_LABELS: usize = 32;
/// Longest label value, in bytes.
pub const MAX_LABEL_VALUE: usize = 256;

/// A request field that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct InvalidArgument {
    /// The request field, as the scheduler names it.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl InvalidArgument {
    /// An error for `field`.
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

/// Longest part of a bad value an error message repeats: a scheduler's
/// operator recognises the value, a hostile client gets no amplifier.
pub const MAX_ECHO: usize = 64;

/// `value` as an error message shows it: quoted, escaped, its first
/// [`MAX_ECHO`] bytes at most.
pub fn echo(value: &str) -> String {
    if value.len() <= MAX_ECHO {
        return format!("{value:?}");
    }
    let mut end = MAX_ECHO;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}... ({} bytes)", &value[..end], value.len())
}

/// Longest segment id: libvirt's LXC driver sets the segment's hostname to
/// its domain name `seg-<id>`, and the kernel takes at most 64 bytes.
pub const MAX_SEGMENT_ID: usize = 64 - DOMAIN_PREFIX.len();

/// Checks `^[a-z0-9][a-z0-9-]{0,max-1}$`, the pattern of every name the
/// agent turns into a libvirt domain name or a directory.
fn check_name(field: &'static str, value: &str, max: usize) -> Result<(), InvalidArgument> {
    let bad = |reason: &str| {
        Err(InvalidArgument::new(
            field,
            format!("{} {reason}", echo(value)),
        ))
    };
    if value.is_empty() {
        return Err(InvalidArgument::new(field, "must not be empty"));
    }
    if value.len() > max {
        return bad(&format!("is longer than {max} characters"));
    }
    let first = value.as_bytes()[0];
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return bad("must start with a lowercase letter or a digit");
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return bad(&format!(
            "may hold only lowercase letters, digits and '-' (^[a-z0-9][a-z0-9-]{{0,{}}}$)",
            max - 1
        ));
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $field:literal, $max:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Validates `value` against `^[a-z0-9][a-z0-9-]*$` and its
            /// longest length.
            pub fn parse(value: &str) -> Result<Self, InvalidArgument> {
                check_name($field, value, $max)?;
                Ok(Self(value.to_owned()))
            }

            /// The identifier as a string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_type!(
    /// The scheduler's id for a segment; also its idempotency key.
    SegmentId,
    "segment_id",
    MAX_SEGMENT_ID
);
name_type!(
    /// The customer cluster a segment belongs to.
    ClusterId,
    "cluster_id",
    63
);
name_type!(
    /// The name of an immutable segment image on this host.
    ImageName,
    "image",
    63
);

impl SegmentId {
    /// The libvirt domain name of this segment.
    pub fn domain_name(&self) -> String {
        format!("{}{}", DOMAIN_PREFIX, self.0)
    }

    /// The segment id of a libvirt domain name, if the domain is a segment.
    pub fn from_domain_name(name: &str) -> Option<Self> {
        name.strip_prefix(DOMAIN_PREFIX)
            .and_then(|id| Self::parse(id).ok())
    }
}

/// Every segment's libvirt domain is named `seg-<segment_id>`.
pub const DOMAIN_PREFIX: &str = "seg-";

/// The resources of a segment, after defaults are applied. A request's
/// flavor has the same shape, with 0 meaning "the host's default".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flavor {
    /// Hard memory limit in MiB.
    pub memory_mib: u32,
    /// CPU bandwidth in whole CPUs.
    pub vcpus: u32,
    /// Disk quota in GiB over the segment's writable root, Docker's data
    /// root and its data area together; 0 only in records of segments made
    /// before quotas (no limit).
    pub disk_gib: u32,
    /// Most processes and threads (`pids.max`).
    pub pids: u32,
    /// Bandwidth of the segment's port, each direction, in Mbit/s; 0 only
    /// in records of segments made before bandwidth caps (unlimited).
    pub network_mbit: u32,
}

impl Flavor {
    /// The disk quota in bytes (0: none, a segment made before quotas).
    pub fn disk_bytes(&self) -> u64 {
        u64::from(self.disk_gib) << 30
    }

    /// The bandwidth in KiB/s, libvirt's `<bandwidth>` unit (0: none).
    pub fn network_kib_per_s(&self) -> u64 {
        u64::from(self.network_mbit) * 1_000_000 / 8 / 1024
    }
}

/// The default and the bounds of one flavor field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Used when the request says 0.
    pub default: u32,
    /// Smallest accepted value.
    pub min: u32,
    /// Largest accepted value.
    pub max: u32,
}

impl Bounds {
    /// Applies the default to 0 and checks the bounds; `unit` names them.
    fn resolve(&self, field: &'static str, unit: &str, value: u32) -> Result<u32, InvalidArgument> {
        let value = if value == 0 { self.default } else { value };
        if !(self.min..=self.max).contains(&value) {
            return Err(InvalidArgument::new(
                field,
                format!(
                    "{value}{unit} is outside this host's bounds {}..={}{unit}",
                    self.min, self.max
                ),
            ));
        }
        Ok(value)
    }
}

/// Bounds and defaults of flavors on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlavorLimits {
    /// Memory in MiB.
    pub memory_mib: Bounds,
    /// vCPUs.
    pub vcpus: Bounds,
    /// Disk quota in GiB.
    pub disk_gib: Bounds,
    /// Processes.
    pub pids: Bounds,
    /// Bandwidth in Mbit/s.
    pub network_mbit: Bounds,
}

impl FlavorLimits {
    /// Applies defaults to zero fields and checks the bounds.
    pub fn resolve(&self, asked: Flavor) -> Result<Flavor, InvalidArgument> {
        Ok(Flavor {
            memory_mib: self
                .memory_mib
                .resolve("flavor.memory_mib", " MiB", asked.memory_mib)?,
            vcpus: self.vcpus.resolve("flavor.vcpus", "", asked.vcpus)?,
            disk_gib: self
                .disk_gib
                .resolve("flavor.disk_gib", " GiB", asked.disk_gib)?,
            pids: self.pids.resolve("flavor.pids", "", asked.pids)?,
            network_mbit: self.network_mbit.resolve(
                "flavor.network_mbit",
                " Mbit/s",
                asked.network_mbit,
            )?,
        })
    }
}

/// Free-form labels, validated and bounded.
pub type Labels = BTreeMap<String, String>;

/// Checks the labels of a request: count, key pattern and value size.
pub fn check_labels(labels: &Labels) -> Result<(), InvalidArgument> {
    if labels.len() > MAX_LABELS {
        return Err(InvalidArgument::new(
            "labels",
            format!("{} labels exceed the limit of {MAX_LABELS}", labels.len()),
        ));
    }
    for (key, value) in labels {
        let key_ok = !key.is_empty()
            && key.len() <= 63
            && key.as_bytes()[0].is_ascii_alphanumeric()
            && key.bytes().all(|b| {
                b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || matches!(b, b'-' | b'.' | b'_' | b'/')
            });
        if !key_ok {
            return Err(InvalidArgument::new(
                "labels",
                format!(
                    "key {} must match ^[a-z0-9][a-z0-9._/-]{{0,62}}$",
                    echo(key)
                ),
            ));
        }
        // Values land in libvirt's XML: only characters XML 1.0 can hold
        // (Rust strings hold no surrogates; U+FFFE and U+FFFF are not XML).
        let not_xml = |c: char| c.is_control() || matches!(c, '\u{FFFE}' | '\u{FFFF}');
        if value.len() > MAX_LABEL_VALUE || value.chars().any(not_xml) {
            return Err(InvalidArgument::new(
                "labels",
                format!(
                    "value of {key:?} must be at most {MAX_LABEL_VALUE} bytes without control \
                     characters, U+FFFE or U+FFFF"
                ),
            ));
        }
    }
    Ok(())
}

/// What the scheduler asks for; compared to tell a retry from a conflict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentRequest {
    /// The segment's id.
    pub id: SegmentId,
    /// Its cluster.
    pub cluster: ClusterId,
    /// Its resources, defaults applied.
    pub flavor: Flavor,
    /// Its image, default applied.
    pub image: ImageName,
    /// Its labels.
    pub labels: Labels,
    /// The cluster CA certificate (canonical PEM) its Docker trusts; `None`
    /// for images without Docker.
    pub ca_cert_pem: Option<String>,
    /// The swarm part: how the segment enters its cluster's swarm.
    pub swarm: Option<swarm::SwarmSpec>,
}

/// Everything the agent records about a segment, persisted in the domain's
/// libvirt metadata so libvirt stays the single source of truth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentRecord {
    /// The request the segment was created from.
    pub request: SegmentRequest,
    /// Its public IPv4 address.
    pub address: Ipv4Addr,
    /// When it was created.
    pub created_at: SystemTime,
    /// What the segment should be doing; survives agent restarts.
    pub desired: Desired,
    /// When the Docker server certificate the agent issued expires.
    pub server_cert_not_after: Option<SystemTime>,
    /// The host ids its user namespace maps to (its root is `host_first`).
    pub ids: crate::idmap::IdRange,
    /// Why the segment is FAILED (its last operation failed, Docker never
    /// answered); persisted so a restarted agent still says it.
    pub failure: Option<String>,
    /// How often the agent restarted it after its init died.
    pub restarts: u32,
    /// Its swarm node, once the swarm part of its create is done.
    pub swarm: Option<swarm::SwarmNode>,
}

/// Longest failure reason kept in a record (and so in libvirt's metadata).
pub const MAX_FAILURE_LEN: usize = 1024;

/// `reason` cut to [`MAX_FAILURE_LEN`] bytes on a character boundary.
pub fn bounded_failure(reason: &str) -> String {
    crate::model::truncated(reason, MAX_FAILURE_LEN)
}

/// `s` cut to at most `max` bytes on a character boundary, marked when cut.
pub fn truncated(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &s[..end], s.len())
}

/// The state an operator or scheduler asked for, as opposed to the observed one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Desired {
    /// Should run; started again on agent start if it is not.
    Running,
    /// Stopped on request.
    Stopped,
    /// Being deleted; a delete cut off half-way is finished on agent start.
    Deleted,
}

impl Desired {
    /// The word stored in the metadata.
    pub fn as_str(self) -> &'static str {
        match self {
            Desired::Running => "running",
            Desired::Stopped => "stopped",
            Desired::Deleted => "deleted",
        }
    }

    /// Parses the word stored in the metadata.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "running" => Some(Desired::Running),
            "stopped" => Some(Desired::Stopped),
            "deleted" => Some(Desired::Deleted),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoed_values_are_bounded() {
        assert_eq!(echo("web-1"), "\"web-1\"");
        let huge = "x".repeat(4 << 20);
        let e = SegmentId::parse(&huge).unwrap_err().to_string();
        assert!(e.len() < 200 && e.contains("4194304 bytes"), "{e}");
        let controls = "\u{1}".repeat(10_000);
        let e = SegmentId::parse(&controls).unwrap_err().to_string();
        assert!(e.len() < 600, "{} bytes", e.len());
        let key = format!("K{}", "é".repeat(5000));
        let e = check_labels(&Labels::from([(key, String::new())])).unwrap_err();
        assert!(e.to_string().len() < 300, "{e}");
    }

    #[test]
    fn segment_ids() {
        // seg-<id> is the segment's hostname: 64 bytes at most.
        let long = "a".repeat(60);
        let too_long = "a".repeat(61);
        let cases: &[(&str, bool)] = &[
            ("a", true),
            ("0", true),
            ("seg-01", true),
            (long.as_str(), true),
            ("", false),
            ("A", false),
            ("../x", false),
            ("-a", false),
            ("a_b", false),
            ("a.b", false),
            ("a/b", false),
            ("é", false),
            (too_long.as_str(), false),
        ];
        for (id, ok) in cases {
            assert_eq!(SegmentId::parse(id).is_ok(), *ok, "{id:?}");
        }
    }

    #[test]
    fn domain_names_round_trip() {
        let id = SegmentId::parse("web-1").unwrap();
        assert_eq!(id.domain_name(), "seg-web-1");
        assert_eq!(SegmentId::from_domain_name("seg-web-1"), Some(id));
        assert_eq!(SegmentId::from_domain_name("other-web-1"), None);
        assert_eq!(SegmentId::from_domain_name("seg-Bad"), None);
    }

    pub(crate) fn limits() -> FlavorLimits {
        let b = |default, min, max| Bounds { default, min, max };
        FlavorLimits {
            memory_mib: b(4096, 64, 8192),
            vcpus: b(2, 1, 4),
            disk_gib: b(20, 1, 100),
            pids: b(4096, 64, 32768),
            network_mbit: b(1000, 1, 10000),
        }
    }

    #[test]
    fn flavors() {
        let limits = limits();
        let f = |memory_mib, vcpus, disk_gib, pids, network_mbit| Flavor {
            memory_mib,
            vcpus,
            disk_gib,
            pids,
            network_mbit,
        };
        let ok = |asked| limits.resolve(asked);
        assert_eq!(ok(f(0, 0, 0, 0, 0)), Ok(f(4096, 2, 20, 4096, 1000)));
        assert_eq!(ok(f(256, 1, 5, 100, 10)), Ok(f(256, 1, 5, 100, 10)));
        assert_eq!(
            ok(f(8192, 4, 100, 32768, 10000)),
            Ok(f(8192, 4, 100, 32768, 10000))
        );
        let field = |asked| ok(asked).unwrap_err().field;
        assert_eq!(field(f(32, 0, 0, 0, 0)), "flavor.memory_mib");
        assert_eq!(field(f(9000, 0, 0, 0, 0)), "flavor.memory_mib");
        assert_eq!(field(f(0, 5, 0, 0, 0)), "flavor.vcpus");
        assert_eq!(field(f(0, 0, 101, 0, 0)), "flavor.disk_gib");
        assert_eq!(field(f(0, 0, 0, 63, 0)), "flavor.pids");
        assert_eq!(field(f(0, 0, 0, 32769, 0)), "flavor.pids");
        assert_eq!(field(f(0, 0, 0, 0, 10001)), "flavor.network_mbit");
        assert_eq!(field(f(0, 0, 0, 0, u32::MAX)), "flavor.network_mbit");
        let e = ok(f(0, 0, 500, 0, 0)).unwrap_err();
        assert_eq!(
            e.reason,
            "500 GiB is outside this host's bounds 1..=100 GiB"
        );
    }

    #[test]
    fn labels() {
        let one = |k: &str, v: &str| Labels::from([(k.to_owned(), v.to_owned())]);
        assert!(check_labels(&one("team", "web")).is_ok());
        assert!(check_labels(&one("example.com/tier", "")).is_ok());
        assert!(check_labels(&one("", "x")).is_err());
        assert!(check_labels(&one("Team", "x")).is_err());
        assert!(check_labels(&one("a", &"x".repeat(257))).is_err());
        assert!(check_labels(&one("a", "line\nbreak")).is_err());
        assert!(check_labels(&one("a", "\u{FFFE}")).is_err());
        assert!(check_labels(&one("a", "x\u{FFFF}")).is_err());
        assert!(check_labels(&one("a", "\u{FFFD}\u{10FFFF}")).is_ok());
        let many: Labels = (0..33).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(check_labels(&many).is_err());
    }
}
