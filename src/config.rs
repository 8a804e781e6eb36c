//! The agent's configuration: one TOML file, unknown keys rejected, every
//! field defaulted, checked by [`Config::validate`] before anything starts.

mod segments;

use crate::{
    apparmor::ApparmorMode,
    model::ImageName,
    network::filter::FilterMode,
    pool::{AddressPool, AddressRange, PoolError},
};
pub use segments::{CapacityConfig, FlavorConfig, IsolationConfig, LifecycleConfig};
use serde::Deserialize;
use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
};

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (unknown keys included).
    #[error("invalid configuration {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: Box<toml::de::Error>,
    },
    /// A value is out of range or inconsistent.
    #[error("invalid configuration: {key}: {reason}")]
    Invalid {
        /// The offending key.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// This host's id in reports; empty: the hostname.
    pub host_id: String,
    /// libvirt connection URI.
    pub libvirt_uri: String,
    /// Where images and segment filesystems live.
    pub state_dir: PathBuf,
    /// Image used when a request names none.
    pub default_image: String,
    /// `enforce`: every segment runs under the agent's AppArmor profile, and
    /// no segment is created on a host without AppArmor. `off`: unconfined
    /// (development hosts only).
    pub apparmor: ApparmorMode,
    /// `enforce`: each segment's writable parts are one btrfs subvolume
    /// limited to its flavor's `disk_gib` (simple quotas), and no segment
    /// is created where `<state_dir>/segments` cannot enforce that. `off`:
    /// plain directories, no limit.
    pub disk_quota: crate::quota::QuotaMode,
    /// Where the profile is installed (the directory the boot-time AppArmor
    /// service loads).
    pub apparmor_profile_dir: PathBuf,
    /// API listeners.
    pub listen: ListenConfig,
    /// Segment addressing.
    pub network: NetworkConfig,
    /// Flavor defaults and bounds.
    pub flavor: FlavorConfig,
    /// Admission limits.
    pub capacity: CapacityConfig,
    /// Segment lifecycle timing.
    pub lifecycle: LifecycleConfig,
    /// Docker inside segments.
    pub docker: DockerConfig,
    /// `[isolation]`: user-namespace id ranges and the segment's internal
    /// cgroup split.
    pub isolation: IsolationConfig,
    /// Health reports; no table, no reports.
    pub control_plane: Option<ControlPlaneConfig>,
    /// Prometheus metrics.
    pub metrics: MetricsConfig,
    /// The agent's own log.
    pub log: LogConfig,
}

/// Prometheus metrics over plain HTTP.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Where `GET /metrics` is served; none: no endpoint. It is plain,
    /// unauthenticated HTTP that names segments and clusters: bind it to
    /// loopback or a management network only.
    pub listen: Option<SocketAddr>,
}

/// How log lines are written (to stderr, the journal under systemd).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event, `key=value` fields; colours only
    /// when stderr is a terminal.
    #[default]
    Text,
    /// One JSON object per line (fields and the current span's fields).
    Json,
}

/// The agent's own log.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// Filter directives (`info`, `segment_agent=debug,info`); the
    /// `RUST_LOG` environment variable overrides them.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// Where and how often health reports go.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ControlPlaneConfig {
    /// `https://host:port`, or `http://` to a loopback address.
    pub endpoint: String,
    /// Seconds between periodic reports (the control plane's ack may change it).
    #[serde(default = "default_report_interval")]
    pub interval_seconds: u32,
    /// CA of the control plane's server certificate (PEM file); needed for https.
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// The agent's client certificate (PEM file), for mutual TLS.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// The agent's client key (PEM file).
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
}

fn default_report_interval() -> u32 {
    10
}

impl ControlPlaneConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let uri: tonic::transport::Uri = self.endpoint.parse().map_err(|e| {
            invalid(
                "control_plane.endpoint",
                format!("{:?}: {e}", self.endpoint),
            )
        })?;
        let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        match uri.scheme_str() {
            Some("https") if self.tls_ca.is_none() => {
                return Err(invalid(
                    "control_plane.tls_ca",
                    "an https endpoint needs the CA of its server certificate",
                ));
            }
            Some("https") => {}
            Some("http") if loopback => {}
            Some("http") => {
                return Err(invalid(
                    "control_plane.endpoint",
                    format!(
                        "{} is not loopback: plaintext is refused, use https",
                        self.endpoint
                    ),
                ));
            }
            _ => {
                return Err(invalid(
                    "control_plane.endpoint",
                    "must start with https:// or http://",
                ));
            }
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(invalid(
                "control_plane.tls_cert",
                "tls_cert and tls_key go together",
            ));
        }
        if self.interval_seconds == 0 {
            return Err(invalid(
                "control_plane.interval_seconds",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

/// Docker inside segments.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DockerConfig {
    /// Host directory bind-mounted read-only at `/opt/segment-agent` in every
    /// Docker segment; holds `bin/segment-authz`, the policy plugin.
    pub tools_dir: PathBuf,
    /// How long CreateSegment and RebuildSegment wait for Docker to answer
    /// `/_ping` over TLS before the segment is FAILED.
    pub ready_timeout_seconds: u32,
    /// Validity of the server certificates the agent issues (never past the
    /// cluster CA's own).
    pub cert_validity_days: u32,
}

impl Default for DockerConfig {
    fn default() -> Self {
        Self {
            tools_dir: "/usr/local/lib/segment-agent".into(),
            ready_timeout_seconds: 60,
            cert_validity_days: 365,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            host_id: String::new(),
            libvirt_uri: "lxc:///".into(),
            state_dir: "/var/lib/segment-agent".into(),
            default_image: "docker".into(),
            apparmor: ApparmorMode::Enforce,
            disk_quota: crate::quota::QuotaMode::Enforce,
            apparmor_profile_dir: crate::apparmor::DEFAULT_PROFILE_DIR.into(),
            listen: ListenConfig::default(),
            network: NetworkConfig::default(),
            flavor: FlavorConfig::default(),
            capacity: CapacityConfig::default(),
            lifecycle: LifecycleConfig::default(),
            docker: DockerConfig::default(),
            isolation: IsolationConfig::default(),
            control_plane: None,
            metrics: MetricsConfig::default(),
            log: LogConfig::default(),
        }
    }
}

/// Where the gRPC API listens.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    /// Unix socket (mode 0600); empty disables it.
    pub socket: PathBuf,
    /// Optional TCP address; needs the TLS files unless it is loopback.
    pub tcp: Option<SocketAddr>,
    /// Server certificate (PEM) for TCP.
    pub tls_cert: Option<PathBuf>,
    /// Server key (PEM) for TCP.
    pub tls_key: Option<PathBuf>,
    /// CA that client certificates must chain to.
    pub tls_client_ca: Option<PathBuf>,
    /// A connection without an open call (no request in flight, no open
    /// response stream such as WatchEvents) for this long is closed by the
    /// server, like grpc-go's MaxConnectionIdle.
    pub idle_timeout_seconds: u64,
    /// Connections each listener holds at once; beyond it a new connection
    /// is closed as soon as it is accepted.
    pub max_connections: u32,
}

/// Bounds of [`ListenConfig::idle_timeout_seconds`]: up to a day.
pub const IDLE_TIMEOUT_SECONDS: std::ops::RangeInclusive<u64> = 1..=86_400;
/// Bounds of [`ListenConfig::max_connections`]: each connection is a file
/// descriptor, and the unit allows the process 65536 (both listeners at
/// their most leave half for segments, libvirt and the state).
pub const MAX_CONNECTIONS: std::ops::RangeInclusive<u32> = 1..=16_384;

impl ListenConfig {
    /// [`ListenConfig::idle_timeout_seconds`] as a duration.
    pub fn idle_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.idle_timeout_seconds)
    }
}

impl Default for ListenConfig {
    fn default() -> Self {
        Self {
            socket: "/run/segment-agent/agent.sock".into(),
            tcp: None,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            idle_timeout_seconds: 300,
            max_connections: 1024,
        }
    }
}

/// How segments are addressed.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// Host bridge that segments attach to.
    pub bridge: String,
    /// Prefix length of the segments' network.
    pub prefix: u8,
    /// Default gateway of segments.
    pub gateway: Ipv4Addr,
    /// Address ranges, `"FIRST-LAST"` or a single address.
    pub ranges: Vec<String>,
    /// `enforce`: every segment's bridge port carries only its own MAC and
    /// address (nftables bridge rules), and no segment starts on a host
    /// that cannot enforce that. `off`: unfiltered (hosts without nftables).
    pub filter: FilterMode,
    /// Networks (`"198.51.100.0/24"`) off this bridge from which the swarm's
    /// ports of segments pass: the other hosts' segment pools, for a
    /// cluster whose swarm spans hosts. Empty (the default): only the
    /// segment's swarm peers (its cluster's segments here, the managers its
    /// swarm part names).
    pub swarm_remote: Vec<String>,
}

impl NetworkConfig {
    /// [`NetworkConfig::swarm_remote`], parsed.
    pub fn swarm_remote_nets(&self) -> Result<Vec<ipnet::Ipv4Net>, ConfigError> {
        self.swarm_remote
            .iter()
            .map(|n| {
                n.parse::<ipnet::Ipv4Net>().map(|n| n.trunc()).map_err(|_| {
                    invalid(
                        "network.swarm_remote",
                        format!("{n:?} is not an IPv4 network (198.51.100.0/24)"),
                    )
                })
            })
            .collect()
    }
}

impl NetworkConfig {
    /// The address pool of `ranges` in the gateway's network.
    pub fn address_pool(&self) -> Result<AddressPool, ConfigError> {
        let bad = |e: PoolError| invalid("network.ranges", e.to_string());
        let ranges = self.ranges.iter().map(|r| r.parse::<AddressRange>());
        let ranges = ranges.collect::<Result<Vec<_>, _>>().map_err(bad)?;
        AddressPool::new(self.gateway, self.prefix, &ranges).map_err(bad)
    }
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            bridge: "segbr0".into(),
            prefix: 24,
            gateway: Ipv4Addr::new(203, 0, 113, 1),
            ranges: vec!["203.0.113.10-203.0.113.200".into()],
            filter: FilterMode::Enforce,
            swarm_remote: Vec::new(),
        }
    }
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: path.to_owned(),
                source,
            },
            other => other,
        })
    }

    /// Parses and validates configuration text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            source: Box::new(e),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values and their consistency.
    pub fn validate(&self) -> Result<(), ConfigError> {
        ImageName::parse(&self.default_image).map_err(|e| invalid("default_image", e.reason))?;
        if !self.state_dir.is_absolute() {
            return Err(invalid("state_dir", "must be an absolute path"));
        }
        for (key, dir) in [
            ("apparmor_profile_dir", &self.apparmor_profile_dir),
            ("docker.tools_dir", &self.docker.tools_dir),
        ] {
            if !dir.is_absolute() {
                return Err(invalid(key, "must be an absolute path"));
            }
        }
        if self.state_dir.to_string_lossy().contains([',', ':']) {
            // The path goes into overlayfs mount options.
            return Err(invalid("state_dir", "must not contain ',' or ':'"));
        }
        self.validate_listen()?;
        self.validate_network()?;
        self.validate_flavor()?;
        let c = &self.capacity;
        if !(c.memory_overcommit_ratio.is_finite() && c.memory_overcommit_ratio > 0.0) {
            return Err(invalid(
                "capacity.memory_overcommit_ratio",
                "must be a positive number",
            ));
        }
        if c.max_segments == 0 {
            return Err(invalid("capacity.max_segments", "must be at least 1"));
        }
        self.isolation.validate(c.max_segments)?;
        if let Some(cp) = &self.control_plane {
            cp.validate()?;
        }
        if self.metrics.listen.is_some() && self.metrics.listen == self.listen.tcp {
            return Err(invalid(
                "metrics.listen",
                "must differ from listen.tcp (the gRPC API's address)",
            ));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(invalid("log.level", format!("{:?}: {e}", self.log.level)));
        }
        if self.docker.ready_timeout_seconds == 0 {
            return Err(invalid(
                "docker.ready_timeout_seconds",
                "must be at least 1",
            ));
        }
        if self.docker.cert_validity_days == 0 {
            return Err(invalid("docker.cert_validity_days", "must be at least 1"));
        }
        if self.lifecycle.cpu_period_us < 1000 || self.lifecycle.cpu_period_us > 1_000_000 {
            return Err(invalid(
                "lifecycle.cpu_period_us",
                "must be within 1000..=1000000",
            ));
        }
        Ok(())
    }

    fn validate_listen(&self) -> Result<(), ConfigError> {
        let l = &self.listen;
        if l.socket.as_os_str().is_empty() && l.tcp.is_none() {
            return Err(invalid(
                "listen",
                "configure a socket, a tcp address, or both",
            ));
        }
        let tls = [&l.tls_cert, &l.tls_key, &l.tls_client_ca];
        let given = tls.iter().filter(|f| f.is_some()).count();
        if given != 0 && given != 3 {
            return Err(invalid(
                "listen.tls_cert",
                "tls_cert, tls_key and tls_client_ca go together (mutual TLS only)",
            ));
        }
        if let Some(addr) = l.tcp
            && given == 0
            && !addr.ip().is_loopback()
        {
            return Err(invalid(
                "listen.tcp",
                format!("{addr} is not loopback: plaintext TCP is refused, set the TLS files"),
            ));
        }
        if !IDLE_TIMEOUT_SECONDS.contains(&l.idle_timeout_seconds) {
            return Err(invalid(
                "listen.idle_timeout_seconds",
                format!("must be within {IDLE_TIMEOUT_SECONDS:?}"),
            ));
        }
        if !MAX_CONNECTIONS.contains(&l.max_connections) {
            return Err(invalid(
                "listen.max_connections",
                format!("must be within {MAX_CONNECTIONS:?}"),
            ));
        }
        Ok(())
    }

    fn validate_network(&self) -> Result<(), ConfigError> {
        let n = &self.network;
        if n.bridge.is_empty() || n.bridge.len() > 15 || n.bridge.contains('/') {
            return Err(invalid("network.bridge", "must be a Linux interface name"));
        }
        if !(1..=30).contains(&n.prefix) {
            return Err(invalid("network.prefix", "must be within 1..=30"));
        }
        n.swarm_remote_nets()?;
        n.address_pool().map(|_| ())
    }

    fn validate_flavor(&self) -> Result<(), ConfigError> {
        let l = self.flavor.limits();
        let fields = [
            ("flavor.default_memory_mib", l.memory_mib),
            ("flavor.default_vcpus", l.vcpus),
            ("flavor.default_disk_gib", l.disk_gib),
            ("flavor.default_pids", l.pids),
            ("flavor.default_network_mbit", l.network_mbit),
        ];
        for (key, b) in fields {
            if b.min == 0 || b.min > b.max {
                return Err(invalid(key, "its bounds must satisfy 1 <= min <= max"));
            }
            if !(b.min..=b.max).contains(&b.default) {
                return Err(invalid(
                    key,
                    format!("must lie within its bounds {}..={}", b.min, b.max),
                ));
            }
        }
        if self.flavor.min_pids < 64 {
            return Err(invalid("flavor.min_pids", "must be at least 64"));
        }
        // Mbit/s becomes KiB/s in libvirt's 32-bit bandwidth attributes.
        if self.flavor.max_network_mbit > 100_000 {
            return Err(invalid("flavor.max_network_mbit", "must be at most 100000"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
