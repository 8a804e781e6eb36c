//! The segment's Docker usage policy, as a pure function of one API request.
//!
//! dockerd asks the `segment-policy` authorization plugin about every API
//! request before serving it (see [`crate::docker::authz`]); this module decides.
//! It does no I/O of its own: the one thing it needs from the segment, how
//! symlinks in a bind-mount source resolve, comes through [`PathResolver`].
//!
//! # Rules
//!
//! A refusal reaches the docker CLI as `Error response from daemon:
//! authorization denied by plugin segment-policy: CODE: MESSAGE`. Codes are
//! stable; messages may be reworded.
//!
//! | code | rule | refused requests |
//! |------|------|------------------|
//! | `SEGMENT-1001` | privileged | `--privileged` (`HostConfig.Privileged`), `docker exec --privileged` |
//! | `SEGMENT-1002` | cap-add | `--cap-add` (`CapAdd`, API 1.40 `Capabilities`), service `CapabilityAdd` |
//! | `SEGMENT-1003` | cap-drop | `--cap-drop` (`CapDrop`), service `CapabilityDrop` |
//! | `SEGMENT-1004` | confinement | `--security-opt` `apparmor=` other than `docker-default` (so `unconfined`), `seccomp=unconfined` or a custom seccomp profile, `label=disable` / `label=type:spc_t`, `systempaths=unconfined` (`MaskedPaths`/`ReadonlyPaths` missing a default entry), unknown options; service `Privileges` with SELinux disabled, seccomp unconfined/custom or AppArmor disabled. `no-new-privileges` (true or false) is allowed |
//! | `SEGMENT-1005` | devices | `--device`, `--device-cgroup-rule`, `--gpus` (`Devices`, `DeviceCgroupRules`, `DeviceRequests`) on create and update |
//! | `SEGMENT-1006` | host PID namespace | `--pid=host` |
//! | `SEGMENT-1007` | host IPC namespace | `--ipc=host` |
//! | `SEGMENT-1008` | host user namespace | `--userns=host` |
//! | `SEGMENT-1009` | host UTS namespace | `--uts=host` |
//! | `SEGMENT-1010` | host cgroup namespace | `--cgroupns=host` |
//! | `SEGMENT-1011` | host mounts | bind mounts (`-v /src:/dst`, `--mount type=bind`, service bind mounts) whose source, with `.`/`..`/`//` normalised and symlinks resolved on the segment, is not `/var/lib/docker` or below; `local` volumes (`docker volume create --opt`, `--mount volume-opt=`) with `o=bind` outside it or a `type` other than tmpfs/nfs/nfs4/cifs/smb3; mount types other than bind/volume/tmpfs |
//! | `SEGMENT-1012` | plugins | `docker plugin install/create/upgrade/set` (`/plugins/pull`, `/plugins/create`, `/plugins/{name}/upgrade`, `/plugins/{name}/set`), services with a plugin runtime |
//! | `SEGMENT-1013` | insecure build | `POST /build` asking for the `security.insecure` entitlement |
//! | `SEGMENT-1014` | cgroup parent | `--cgroup-parent` (a non-empty `CgroupParent`, absolute or relative) on create, and in an update body; services have no such field |
//! | `SEGMENT-1100` | uninspectable body | a checked request whose body dockerd did not forward (not `Content-Type: application/json`, chunked, empty, or 1 MiB and over) |
//! | `SEGMENT-1101` | malformed body | a checked request whose body is not the JSON dockerd expects, or names a checked field twice (`"Privileged"` and `"privileged"`) |
//! | `SEGMENT-1102` | malformed authorization request | an `AuthZPlugin.AuthZReq` the plugin cannot decode |
//!
//! Allowed on purpose: plain runs, named and anonymous volumes, `-v
//! /var/lib/docker/...:/dst`, `--volumes-from`, `--net=host`, tmpfs mounts,
//! `--security-opt no-new-privileges[:false]`, `docker build --network host`,
//! every endpoint not listed above (the daemon's normal API). An empty
//! `CgroupParent` (the docker CLI always sends `""`) is the daemon's default
//! and allowed.
//!
//! Host namespaces other than the network are all refused, UTS and cgroup
//! included: with capabilities fixed a container cannot change the
//! segment's hostname, and on cgroup v1 dockerd shares the cgroup namespace
//! by default, but neither flag has a use in a segment and refusing every
//! `host` namespace but the network keeps the rule simple to state.

mod container;
mod gojson;
mod mounts;
mod route;
mod swarm;

use std::fmt;
use std::path::{Path, PathBuf};

pub use mounts::{ALLOWED_BIND_ROOT, lexical_clean};

use route::Endpoint;

/// The verdict on one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// dockerd may serve the request.
    Allow,
    /// dockerd must refuse the request.
    Deny {
        /// Stable code, e.g. `SEGMENT-1001`.
        code: &'static str,
        /// What was refused, for the person at the docker CLI.
        message: String,
    },
}

impl Decision {
    /// True for [`Decision::Allow`].
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow)
    }

    /// The stable code of a refusal.
    pub fn code(&self) -> Option<&'static str> {
        match self {
            Decision::Allow => None,
            Decision::Deny { code, .. } => Some(code),
        }
    }
}

impl fmt::Display for Decision {
    /// `allowed`, or `CODE: message` as the docker CLI shows it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Allow => f.write_str("allowed"),
            Decision::Deny { code, message } => write!(f, "{code}: {message}"),
        }
    }
}

/// One rule of the table in the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// `SEGMENT-1001`
    Privileged,
    /// `SEGMENT-1002`
    CapAdd,
    /// `SEGMENT-1003`
    CapDrop,
    /// `SEGMENT-1004`
    Confinement,
    /// `SEGMENT-1005`
    Devices,
    /// `SEGMENT-1006`
    HostPid,
    /// `SEGMENT-1007`
    HostIpc,
    /// `SEGMENT-1008`
    HostUserns,
    /// `SEGMENT-1009`
    HostUts,
    /// `SEGMENT-1010`
    HostCgroupns,
    /// `SEGMENT-1011`
    HostMount,
    /// `SEGMENT-1012`
    Plugins,
    /// `SEGMENT-1013`
    InsecureBuild,
    /// `SEGMENT-1014`
    CgroupParent,
    /// `SEGMENT-1100`
    BodyMissing,
    /// `SEGMENT-1101`
    BodyMalformed,
    /// `SEGMENT-1102`
    ProtocolError,
}

impl Rule {
    /// The rule's stable code.
    pub fn code(self) -> &'static str {
        match self {
            Rule::Privileged => "SEGMENT-1001",
            Rule::CapAdd => "SEGMENT-1002",
            Rule::CapDrop => "SEGMENT-1003",
            Rule::Confinement => "SEGMENT-1004",
            Rule::Devices => "SEGMENT-1005",
            Rule::HostPid => "SEGMENT-1006",
            Rule::HostIpc => "SEGMENT-1007",
            Rule::HostUserns => "SEGMENT-1008",
            Rule::HostUts => "SEGMENT-1009",
            Rule::HostCgroupns => "SEGMENT-1010",
            Rule::HostMount => "SEGMENT-1011",
            Rule::Plugins => "SEGMENT-1012",
            Rule::InsecureBuild => "SEGMENT-1013",
            Rule::CgroupParent => "SEGMENT-1014",
            Rule::BodyMissing => "SEGMENT-1100",
            Rule::BodyMalformed => "SEGMENT-1101",
            Rule::ProtocolError => "SEGMENT-1102",
        }
    }

    /// A refusal under this rule.
    pub fn deny(self, message: impl Into<String>) -> Decision {
        Decision::Deny {
            code: self.code(),
            message: message.into(),
        }
    }
}

/// How symlinks in a host path resolve on the segment filesystem.
pub trait PathResolver: Send + Sync {
    /// Resolves every symlink in `path` (absolute, already lexically clean)
    /// as the kernel would, keeping components that do not exist as they
    /// are. `None` when the path cannot be resolved (symlink loop, I/O
    /// error): the policy then refuses it.
    fn resolve(&self, path: &Path) -> Option<PathBuf>;
}

/// A resolver for a filesystem without symlinks: the path is returned as is.
#[derive(Debug, Clone, Copy, Default)]
pub struct LexicalResolver;

impl PathResolver for LexicalResolver {
    fn resolve(&self, path: &Path) -> Option<PathBuf> {
        Some(path.to_path_buf())
    }
}

/// Decides on one API request as dockerd forwards it to the plugin.
///
/// `uri` is the raw request target (`/v1.41/containers/create?name=x`),
/// `body` the request body when dockerd forwarded one.
pub fn evaluate(
    method: &str,
    uri: &str,
    body: Option<&[u8]>,
    resolver: &dyn PathResolver,
) -> Decision {
    let route = route::classify(method, uri);
    match check(route.endpoint, &route.query, body, resolver) {
        Ok(()) => Decision::Allow,
        Err(denial) => denial.rule.deny(denial.message),
    }
}

/// A refusal while checking; becomes a [`Decision::Deny`].
#[derive(Debug)]
pub(crate) struct Denial {
    rule: Rule,
    message: String,
}

impl Denial {
    pub(crate) fn new(rule: Rule, message: impl Into<String>) -> Self {
        Denial {
            rule,
            message: message.into(),
        }
    }
}

impl From<gojson::Malformed> for Denial {
    fn from(e: gojson::Malformed) -> Self {
        Denial::new(
            Rule::BodyMalformed,
            format!("the request body cannot be checked and is refused by policy: {e}"),
        )
    }
}

/// The result of one check.
pub(crate) type Check = Result<(), Denial>;

fn check(
    endpoint: Endpoint,
    query: &str,
    body: Option<&[u8]>,
    resolver: &dyn PathResolver,
) -> Check {
    match endpoint {
        Endpoint::Other => Ok(()),
        Endpoint::PluginInstall => Err(Denial::new(
            Rule::Plugins,
            "installing or configuring plugins is not allowed by policy (plugins get host privileges)",
        )),
        Endpoint::Build => check_build(query),
        Endpoint::ContainerCreate => container::check_create(&parse_body(body)?, resolver),
        Endpoint::LegacyContainerStart => {
            container::check_legacy_start(&parse_body(body)?, resolver)
        }
        Endpoint::ContainerUpdate => container::check_update(&parse_body(body)?),
        Endpoint::ExecCreate => container::check_exec(&parse_body(body)?),
        Endpoint::VolumeCreate => container::check_volume_create(&parse_body(body)?, resolver),
        Endpoint::ServiceSpec => swarm::check_service_spec(&parse_body(body)?, resolver),
    }
}

/// Checked endpoints fail closed: dockerd forwards a body only when it is
/// `application/json`, has a Content-Length and is under 1 MiB, but decodes
/// it regardless, so a missing body may hide anything.
fn parse_body(body: Option<&[u8]>) -> Result<gojson::Json, Denial> {
    match body {
        Some(bytes) if !bytes.is_empty() => Ok(gojson::parse(bytes)?),
        _ => Err(Denial::new(
            Rule::BodyMissing,
            "the request body was not forwarded for inspection (send it as application/json with a Content-Length, under 1 MiB) and the request is refused by policy",
        )),
    }
}

/// The classic builder has no privileged mode and BuildKit's insecure
/// entitlement is off unless the daemon enables it; a request naming it is
/// refused so that a daemon configured otherwise stays safe.
fn check_build(query: &str) -> Check {
    if query.to_ascii_lowercase().contains("security.insecure") {
        return Err(Denial::new(
            Rule::InsecureBuild,
            "builds with the security.insecure entitlement are not allowed by policy",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
