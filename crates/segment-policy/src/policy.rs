//! The segment's Docker usage policy, as a pure function of one API request.
//!
//! dockerd asks the `segment-policy` authorization plugin about every API
//! request before serving it (see [`crate::authz`]); this module decides.
//! It does no I/O of its own: the one thing it needs from the segment, what
//! the kernel finds at a bind-mount source inside the customer data area,
//! comes through [`DataArea`].
//!
//! # What the plugin is for, and what it is not
//!
//! The customer holds a valid client certificate and uses the whole Docker
//! API. The plugin is the layer that turns "root in the segment's dockerd"
//! into "a container that the segment's other layers can hold": it refuses
//! every request that asks dockerd to hand a container the segment's own
//! privileges, paths, devices or links. It sees the request (method,
//! target, JSON body, headers) and, for a start, restart or `docker cp`,
//! the bind sources dockerd stored for the container ([`Existing`]), which
//! it checks again as the kernel finds them then. It never sees what
//! dockerd does later: a symlink planted between that check and dockerd's
//! mount, or a mount dockerd makes on its own (restart policies), is closed
//! by the kernel (the data area is mounted `nosymfollow`), and what a
//! container does once it runs by the segment's user namespace, cgroup
//! namespace, AppArmor and the bridge filter.
//!
//! Every API route of dockerd 20.10 (`api/server/router/*`) is classified
//! (`policy/route.rs`); a route the plugin does not know is refused
//! (`SEGMENT-1103`), so a newer dockerd's new endpoints stay closed until
//! they are reviewed. (A path that matches none of dockerd's own routes
//! never reaches the plugin: dockerd answers it 404 before authorization.)
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
//! | `SEGMENT-1004` | confinement | `--security-opt` `apparmor=` other than `docker-default`, `seccomp=unconfined` or a custom profile, `label=disable` / `type:spc_t`, `no-new-privileges=false` (the daemon sets it for every container), `systempaths=unconfined` (`MaskedPaths`/`ReadonlyPaths` missing a default entry, `[]` included), unknown options; build `securityopt`; service `Privileges` with SELinux disabled, seccomp unconfined/custom or AppArmor disabled |
//! | `SEGMENT-1005` | devices | `--device`, `--device-cgroup-rule`, `--gpus` (`Devices`, `DeviceCgroupRules`, `DeviceRequests`) on create and update; service `GenericResources` |
//! | `SEGMENT-1006` | host PID namespace | `--pid=host` |
//! | `SEGMENT-1007` | host IPC namespace | `--ipc=host` |
//! | `SEGMENT-1008` | host user namespace | `--userns=host` |
//! | `SEGMENT-1009` | host UTS namespace | `--uts=host` |
//! | `SEGMENT-1010` | host cgroup namespace | `--cgroupns=host` |
//! | `SEGMENT-1011` | host mounts | bind sources (`-v`, `--mount type=bind`, service mounts, `local` volumes with `o=bind`) outside `/var/lib/docker` after `.`/`..`/`//` are normalised, or whose existing part, opened by the kernel beneath the data area, holds a symlink, a device node, a mount point or a non-directory, at create and again at start, restart and `docker cp` (what the kernel finds then); `local` volume options other than none, `type=tmpfs` or a bind under the area (`nfs`, `cifs`, block devices, `overlay` ...); mount types other than bind/volume/tmpfs |
//! | `SEGMENT-1012` | plugins | `docker plugin install/create/upgrade/set`, services with a plugin runtime |
//! | `SEGMENT-1013` | insecure build | `POST /build` naming the `security.insecure` entitlement |
//! | `SEGMENT-1014` | cgroup parent | `--cgroup-parent` (a non-empty `CgroupParent`) on create and update, `docker build --cgroup-parent` |
//! | `SEGMENT-1015` | build options | `POST /build` with `networkmode` other than default/bridge/none/host, `isolation` other than default, an unreadable query (`;`, bad escapes) |
//! | `SEGMENT-1016` | runtime | `--runtime` other than `runc` (`HostConfig.Runtime`), service runtimes other than containers |
//! | `SEGMENT-1017` | sysctls | `--sysctl` (`HostConfig.Sysctls`, service `Sysctls`) outside the namespaced safe set |
//! | `SEGMENT-1018` | priority over the segment's daemons | negative `--oom-score-adj`, `--oom-kill-disable`, `--cpu-rt-runtime` / `--cpu-rt-period`, `--ulimit rtprio/rttime/nice` (containers, services, builds) |
//! | `SEGMENT-1019` | mount propagation | bind propagation other than `private`/`rprivate` (`-v a:b:rshared`, `bind-propagation=rslave`) |
//! | `SEGMENT-1020` | volume drivers | `--volume-driver`, `docker volume create -d`, mount `volume-driver` other than `local` |
//! | `SEGMENT-1021` | log drivers | `--log-driver` other than `json-file`, `local`, `none` (containers and services) |
//! | `SEGMENT-1022` | platform options | `--isolation` other than default, `--storage-opt` |
//! | `SEGMENT-1023` | networks | `docker network create` with a driver other than bridge/overlay/null (`macvlan`, `ipvlan`, `host` ...), an IPAM driver other than default, driver options outside a safe list (`com.docker.network.bridge.name` reuses or creates a host interface), an ingress network |
//! | `SEGMENT-1024` | swarm membership | `docker swarm init/join/leave/update/unlock`, `docker node update/rm`: the agent manages swarm membership |
//! | `SEGMENT-1025` | closed endpoints | BuildKit's raw gRPC API (`POST /grpc`), dockerd's `/debug/` endpoints, checkpoints (experimental), start from a checkpoint, the removed `/containers/{id}/copy` |
//! | `SEGMENT-1026` | log size | `--log-opt max-size` over 100m (or not a size), `max-file` over 10 (or not a count) for `json-file` and `local` (containers and services): a container's log stays bounded |
//! | `SEGMENT-1027` | swarm load balancing | service ports published in ingress mode (the routing mesh, `-p 8080:80`; any `PublishMode` but `host`) and virtual-IP services on networks (any `EndpointSpec.Mode` but `dnsrr`), on create and update: both are IPVS, which the kernel refuses in the segment's user namespace |
//! | `SEGMENT-1100` | uninspectable body | a checked request whose body dockerd did not forward (not `Content-Type: application/json`, empty, or 1 MiB and over); any request with a form body (`application/x-www-form-urlencoded`, `multipart/form-data`: dockerd reads parameters from it that the plugin never sees) |
//! | `SEGMENT-1101` | malformed body | a checked request whose body is not the JSON dockerd expects, or names a checked field twice (`"Privileged"` and `"privileged"`) |
//! | `SEGMENT-1102` | malformed authorization request | an `AuthZPlugin.AuthZReq` the plugin cannot decode |
//! | `SEGMENT-1103` | unknown route | a method and path that is none of dockerd 20.10's API routes |
//! | `SEGMENT-1104` | unchecked container | a start, restart or `docker cp` whose container's stored binds the plugin could not look up from dockerd |
//!
//! Allowed on purpose: plain runs, named and anonymous volumes, `-v
//! /var/lib/docker/...:/dst` (missing sources are created by dockerd),
//! `--volumes-from`, `--net=host`, `-p`, tmpfs mounts,
//! `--security-opt no-new-privileges` (the daemon's default; `=false` is
//! refused), builds (classic and BuildKit,
//! which needs `POST /session`: over it dockerd calls *back* into the client
//! for the build context, credentials and SSH agent, so it grants the client
//! nothing the `/build` request did not already ask for), `docker build
//! --network host`, `docker commit --change` (image configuration carries no
//! host settings), `docker cp` both ways (`/containers/{id}/archive`: dockerd
//! extracts inside the container's own root), `docker network create` of
//! bridge networks, secrets and configs, and the rest of the daemon's normal
//! API. An empty `CgroupParent` (the docker CLI always sends `""`) is the
//! daemon's default and allowed.
//!
//! Swarm: membership (init, join, leave, update, unlock, node update/rm) is
//! the agent's. Such a request passes only when it carries the agent's swarm
//! token ([`Request::agent`], see [`crate::agent_token`]); the
//! client certificate's CN cannot decide it, because behind the segment's TLS
//! front dockerd no longer sees the client certificate, and because the CN of
//! a customer certificate is whatever the cluster CA's holder wrote.
//!
//! Host namespaces other than the network are all refused, UTS and cgroup
//! included: neither flag has a use in a segment and refusing every `host`
//! namespace but the network keeps the rule simple to state.

mod build;
mod container;
mod gojson;
mod logs;
mod mounts;
mod network;
mod options;
mod route;
mod rules;
mod swarm;

use std::fmt;
use std::path::{Path, PathBuf};

pub use mounts::{ALLOWED_BIND_ROOT, lexical_clean};
pub use rules::{Decision, Rule};

use route::Endpoint;

/// One API request as dockerd forwards it to the plugin.
#[derive(Debug, Clone, Copy, Default)]
pub struct Request<'a> {
    /// The HTTP method.
    pub method: &'a str,
    /// The raw request target (`/v1.41/containers/create?name=x`).
    pub uri: &'a str,
    /// The request body, when dockerd forwarded it (JSON bodies only).
    pub body: Option<&'a [u8]>,
    /// The `Content-Type` header as dockerd forwards headers (the last
    /// value of a repeated header).
    pub content_type: Option<&'a str>,
    /// The authenticated user dockerd reports (the CN of a TLS client
    /// certificate; none behind the segment's TLS front). Used by no rule.
    pub user: Option<&'a str>,
    /// Whether the request carries the agent's swarm token
    /// ([`crate::agent_token`]): only then may it change the
    /// segment's swarm membership.
    pub agent: bool,
    /// For a request that mounts an existing container's binds again
    /// (start, restart, `docker cp`): what dockerd holds for it, looked up
    /// by the plugin ([`container_to_look_up`]). `None`: not looked up,
    /// and such a request is refused.
    pub existing: Option<&'a Existing>,
}

/// An existing container's host paths, as dockerd stored them at create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Existing {
    /// dockerd has no such container (the request fails there).
    Missing,
    /// The host paths dockerd binds when it mounts the container: bind
    /// sources, and the devices of `local` volumes with `o=bind`.
    Sources(Vec<String>),
    /// The lookup failed.
    Failed(String),
}

/// The container whose mounts must be looked up before deciding on this
/// request (see [`Request::existing`]), if any.
pub fn container_to_look_up(method: &str, uri: &str) -> Option<String> {
    route::classify(method, uri).container
}

/// Why the kernel's view of a bind source inside the data area refuses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AreaRefusal {
    /// This existing component is a symlink.
    Symlink(PathBuf),
    /// This existing component is a device node.
    Device(PathBuf),
    /// This existing component is a mount point (another filesystem).
    MountPoint(PathBuf),
    /// This existing component is not a directory but has components below it.
    NotADirectory(PathBuf),
    /// The path could not be opened for another reason.
    Unreadable(PathBuf, String),
}

impl fmt::Display for AreaRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AreaRefusal::Symlink(p) => write!(f, "{} is a symbolic link", p.display()),
            AreaRefusal::Device(p) => write!(f, "{} is a device node", p.display()),
            AreaRefusal::MountPoint(p) => write!(f, "{} is a mount point", p.display()),
            AreaRefusal::NotADirectory(p) => write!(f, "{} is not a directory", p.display()),
            AreaRefusal::Unreadable(p, e) => write!(f, "{} cannot be checked: {e}", p.display()),
        }
    }
}

/// The customer data area (`/var/lib/docker` in the segment) as the kernel
/// sees it.
pub trait DataArea: Send + Sync {
    /// Checks a bind source given relative to the area's root (already
    /// lexically clean: no `.`, `..` or empty components; empty for the
    /// root itself). Components that exist are opened beneath the area
    /// without following any symlink; the first one that does not exist
    /// ends the check (dockerd creates the rest).
    fn check(&self, below: &Path) -> Result<(), AreaRefusal>;
}

/// A data area without a filesystem: every path is accepted as it is
/// written (pure tests of the rules).
#[derive(Debug, Clone, Copy, Default)]
pub struct LexicalArea;

impl DataArea for LexicalArea {
    fn check(&self, _below: &Path) -> Result<(), AreaRefusal> {
        Ok(())
    }
}

/// Decides on one API request given by its parts (for tests): the body,
/// when given, is taken as `application/json`, and an existing container
/// as one without bind mounts.
pub fn evaluate(method: &str, uri: &str, body: Option<&[u8]>, area: &dyn DataArea) -> Decision {
    evaluate_request(
        &Request {
            method,
            uri,
            body,
            content_type: body.map(|_| "application/json"),
            user: None,
            agent: false,
            existing: Some(&Existing::Sources(Vec::new())),
        },
        area,
    )
}

/// Decides on one API request as dockerd forwards it to the plugin.
pub fn evaluate_request(request: &Request<'_>, area: &dyn DataArea) -> Decision {
    match check_request(request, area) {
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

fn check_request(request: &Request<'_>, area: &dyn DataArea) -> Check {
    check_content_type(request.content_type)?;
    let route = route::classify(request.method, request.uri);
    let body = request.body;
    match route.endpoint {
        Endpoint::Plain => Ok(()),
        Endpoint::Unknown => Err(Denial::new(
            Rule::UnknownRoute,
            format!(
                "{} {} is not an API route the policy knows and is refused",
                mounts::quote(&request.method.to_ascii_uppercase()),
                mounts::quote(&route.path)
            ),
        )),
        Endpoint::Closed(what) => Err(Denial::new(
            Rule::ClosedEndpoint,
            format!("{what} is not available in segments"),
        )),
        Endpoint::PluginInstall => Err(Denial::new(
            Rule::Plugins,
            "installing or configuring plugins is not allowed by policy (plugins get host privileges)",
        )),
        Endpoint::SwarmMembership if request.agent => Ok(()),
        Endpoint::SwarmMembership => Err(swarm::membership_denial()),
        Endpoint::Build => build::check_build(&route.raw_query),
        Endpoint::ContainerCreate => container::check_create(&parse_body(body)?, area),
        Endpoint::ContainerStart => {
            check_start(&route, body, area)?;
            check_existing(request.existing, area)
        }
        Endpoint::MountsAgain => check_existing(request.existing, area),
        Endpoint::ContainerUpdate => container::check_update(&parse_body(body)?),
        Endpoint::ExecCreate => container::check_exec(&parse_body(body)?),
        Endpoint::VolumeCreate => mounts::check_volume_create(&parse_body(body)?, area),
        Endpoint::NetworkCreate => network::check_network_create(&parse_body(body)?),
        Endpoint::ServiceSpec => swarm::check_service_spec(&parse_body(body)?, area),
    }
}

/// `POST /containers/{id}/start`: a checkpoint restore (experimental) is
/// closed; below API 1.24 dockerd still applies a HostConfig in the body.
fn check_start(route: &route::Route, body: Option<&[u8]>, area: &dyn DataArea) -> Check {
    let pairs = build::query_pairs(&route.raw_query)?;
    if pairs
        .iter()
        .any(|(k, v)| k.starts_with("checkpoint") && !v.is_empty())
    {
        return Err(Denial::new(
            Rule::ClosedEndpoint,
            "starting a container from a checkpoint is not available in segments",
        ));
    }
    if route.legacy_start() {
        return container::check_legacy_start(&parse_body(body)?, area);
    }
    Ok(())
}

/// Start, restart and `docker cp` mount the binds dockerd stored at
/// create again: what the kernel finds at each source *now* is checked, so
/// a symlink planted in the data area after the create is refused here
/// (and, for the restarts dockerd makes on its own, by the `nosymfollow`
/// mount of the area).
fn check_existing(existing: Option<&Existing>, area: &dyn DataArea) -> Check {
    let unchecked = |why: &str| {
        Err(Denial::new(
            Rule::ExistingUnchecked,
            format!(
                "the container's bind mounts could not be checked ({why}) and the request is refused by policy"
            ),
        ))
    };
    match existing {
        None => unchecked("not looked up"),
        Some(Existing::Failed(e)) => unchecked(e),
        Some(Existing::Missing) => Ok(()),
        Some(Existing::Sources(sources)) => sources
            .iter()
            .try_for_each(|source| mounts::check_host_path(source, area)),
    }
}

/// Go's `Request.ParseForm` reads parameters from a form body, where the
/// plugin never sees them (dockerd forwards only JSON bodies): such a body
/// is refused on every route. The docker CLI never sends one.
fn check_content_type(content_type: Option<&str>) -> Check {
    let Some(value) = content_type else {
        return Ok(());
    };
    let media = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if media.contains("form") {
        return Err(Denial::new(
            Rule::BodyMissing,
            format!(
                "request bodies of type {} carry parameters the policy cannot inspect and are refused",
                mounts::quote(value)
            ),
        ));
    }
    Ok(())
}

/// Checked endpoints fail closed: dockerd forwards a body only when it is
/// `application/json` and under 1 MiB, but decodes it regardless, so a
/// missing body may hide anything.
fn parse_body(body: Option<&[u8]>) -> Result<gojson::Json, Denial> {
    match body {
        Some(bytes) if !bytes.is_empty() => Ok(gojson::parse(bytes)?),
        _ => Err(Denial::new(
            Rule::BodyMissing,
            "the request body was not forwarded for inspection (send it as application/json with a Content-Length, under 1 MiB) and the request is refused by policy",
        )),
    }
}

#[cfg(test)]
mod tests;
