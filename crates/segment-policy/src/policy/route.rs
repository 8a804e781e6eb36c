//! Maps a request line, as dockerd forwards it (`RequestURI` is the raw
//! request target), onto dockerd 20.10's API routes
//! (`api/server/router/*/*.go`, registered by `api/server/server.go`
//! `createMux` in the order of `cmd/dockerd/daemon.go` `initRouter`).
//!
//! dockerd routes on the *decoded* path, so `/v1.41/containers/%63reate` is a
//! create call: the path is percent-decoded, dot segments and duplicate
//! slashes removed and an absolute-form target (`http://host/...`) reduced to
//! its path before matching (gorilla/mux redirects an unclean path rather
//! than serving it, so matching the cleaned path can only over-inspect).
//! Routes match in dockerd's registration order, first match wins, and
//! `{name:.*}` spans slashes (`/containers/a%2Fb/exec` is an exec create).
//! A method and path that matches no route is [`Endpoint::Unknown`].

use super::mounts::lexical_clean;

/// What the policy does with a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// The daemon's normal API: no rule applies.
    Plain,
    /// `POST /containers/create`
    ContainerCreate,
    /// `POST /containers/{id}/start` (a HostConfig body below API 1.24):
    /// mounts the container's binds again.
    ContainerStart,
    /// `POST /containers/{id}/restart`, `docker cp` (`HEAD`/`GET`/`PUT
    /// /containers/{id}/archive`): dockerd mounts the container's binds
    /// again, from what it stored at create.
    MountsAgain,
    /// `POST /containers/{id}/update`
    ContainerUpdate,
    /// `POST /containers/{id}/exec`
    ExecCreate,
    /// `POST /volumes/create`
    VolumeCreate,
    /// `POST /networks/create`
    NetworkCreate,
    /// `POST /services/create` and `POST /services/{id}/update`
    ServiceSpec,
    /// `POST /plugins/pull`, `/plugins/create`, `/plugins/{name}/upgrade`, `/plugins/{name}/set`
    PluginInstall,
    /// `POST /build`
    Build,
    /// `POST /swarm/{init,join,leave,update,unlock}`, `POST /nodes/{id}/update`, `DELETE /nodes/{id}`
    SwarmMembership,
    /// Routes closed in segments, with what they are.
    Closed(&'static str),
    /// No route of dockerd 20.10.
    Unknown,
}

/// A classified request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Route {
    pub(crate) endpoint: Endpoint,
    /// The decoded, cleaned path without its version prefix.
    pub(crate) path: String,
    /// The API version of a `/vX.Y/` prefix.
    pub(crate) version: Option<String>,
    /// The raw (still percent-encoded) query string.
    pub(crate) raw_query: String,
    /// The container a start, restart or archive request names.
    pub(crate) container: Option<String>,
}

impl Route {
    /// A start whose API version still applies a HostConfig body.
    pub(crate) fn legacy_start(&self) -> bool {
        self.endpoint == Endpoint::ContainerStart
            && self.version.as_deref().is_some_and(is_legacy_start)
    }
}

/// The first API version whose `start` ignores (and refuses) a body.
const START_BODY_REMOVED: &str = "1.24";

const GRPC: &str = "BuildKit's raw gRPC API (POST /grpc, used by buildx; the policy cannot see inside it; use docker build)";
const DEBUG: &str = "dockerd's debugging endpoints (/debug/)";
const CHECKPOINTS: &str = "checkpoint and restore (experimental)";
const COPY: &str = "the removed POST /containers/{id}/copy (use docker cp)";

use Endpoint::*;

/// dockerd 20.10's routes in registration order. `*` is one path segment
/// (`{id}`), `**` one or more (`{name:.*}`, `{id:.+}`).
const ROUTES: &[(&str, &str, Endpoint)] = &[
    // checkpoint (registered first so that its DELETE is not masked)
    ("GET", "/containers/**/checkpoints", Closed(CHECKPOINTS)),
    ("POST", "/containers/**/checkpoints", Closed(CHECKPOINTS)),
    ("DELETE", "/containers/*/checkpoints/*", Closed(CHECKPOINTS)),
    // container
    ("HEAD", "/containers/**/archive", MountsAgain),
    ("GET", "/containers/json", Plain),
    ("GET", "/containers/**/export", Plain),
    ("GET", "/containers/**/changes", Plain),
    ("GET", "/containers/**/json", Plain),
    ("GET", "/containers/**/top", Plain),
    ("GET", "/containers/**/logs", Plain),
    ("GET", "/containers/**/stats", Plain),
    ("GET", "/containers/**/attach/ws", Plain),
    ("GET", "/exec/**/json", Plain),
    ("GET", "/containers/**/archive", MountsAgain),
    ("POST", "/containers/create", ContainerCreate),
    ("POST", "/containers/**/kill", Plain),
    ("POST", "/containers/**/pause", Plain),
    ("POST", "/containers/**/unpause", Plain),
    ("POST", "/containers/**/restart", MountsAgain),
    ("POST", "/containers/**/start", ContainerStart),
    ("POST", "/containers/**/stop", Plain),
    ("POST", "/containers/**/wait", Plain),
    ("POST", "/containers/**/resize", Plain),
    ("POST", "/containers/**/attach", Plain),
    ("POST", "/containers/**/copy", Closed(COPY)),
    ("POST", "/containers/**/exec", ExecCreate),
    ("POST", "/exec/**/start", Plain),
    ("POST", "/exec/**/resize", Plain),
    ("POST", "/containers/**/rename", Plain),
    ("POST", "/containers/**/update", ContainerUpdate),
    ("POST", "/containers/prune", Plain),
    ("POST", "/commit", Plain),
    ("PUT", "/containers/**/archive", MountsAgain),
    ("DELETE", "/containers/**", Plain),
    // image
    ("GET", "/images/json", Plain),
    ("GET", "/images/search", Plain),
    ("GET", "/images/get", Plain),
    ("GET", "/images/**/get", Plain),
    ("GET", "/images/**/history", Plain),
    ("GET", "/images/**/json", Plain),
    ("POST", "/images/load", Plain),
    ("POST", "/images/create", Plain),
    ("POST", "/images/**/push", Plain),
    ("POST", "/images/**/tag", Plain),
    ("POST", "/images/prune", Plain),
    ("DELETE", "/images/**", Plain),
    // system (OPTIONS on any path is matched before the table)
    ("GET", "/_ping", Plain),
    ("HEAD", "/_ping", Plain),
    ("GET", "/events", Plain),
    ("GET", "/info", Plain),
    ("GET", "/version", Plain),
    ("GET", "/system/df", Plain),
    ("POST", "/auth", Plain),
    // volume
    ("GET", "/volumes", Plain),
    ("GET", "/volumes/**", Plain),
    ("POST", "/volumes/create", VolumeCreate),
    ("POST", "/volumes/prune", Plain),
    ("DELETE", "/volumes/**", Plain),
    // build
    ("POST", "/build", Build),
    ("POST", "/build/prune", Plain),
    ("POST", "/build/cancel", Plain),
    // session: dockerd calls back into the client (context, secrets, ssh)
    ("POST", "/session", Plain),
    // swarm
    ("POST", "/swarm/init", SwarmMembership),
    ("POST", "/swarm/join", SwarmMembership),
    ("POST", "/swarm/leave", SwarmMembership),
    ("GET", "/swarm", Plain),
    ("GET", "/swarm/unlockkey", Plain),
    ("POST", "/swarm/update", SwarmMembership),
    ("POST", "/swarm/unlock", SwarmMembership),
    ("GET", "/services", Plain),
    ("GET", "/services/*", Plain),
    ("POST", "/services/create", ServiceSpec),
    ("POST", "/services/*/update", ServiceSpec),
    ("DELETE", "/services/*", Plain),
    ("GET", "/services/*/logs", Plain),
    ("GET", "/nodes", Plain),
    ("GET", "/nodes/*", Plain),
    ("DELETE", "/nodes/*", SwarmMembership),
    ("POST", "/nodes/*/update", SwarmMembership),
    ("GET", "/tasks", Plain),
    ("GET", "/tasks/*", Plain),
    ("GET", "/tasks/*/logs", Plain),
    ("GET", "/secrets", Plain),
    ("POST", "/secrets/create", Plain),
    ("DELETE", "/secrets/*", Plain),
    ("GET", "/secrets/*", Plain),
    ("POST", "/secrets/*/update", Plain),
    ("GET", "/configs", Plain),
    ("POST", "/configs/create", Plain),
    ("DELETE", "/configs/*", Plain),
    ("GET", "/configs/*", Plain),
    ("POST", "/configs/*/update", Plain),
    // plugin
    ("GET", "/plugins", Plain),
    ("GET", "/plugins/**/json", Plain),
    ("GET", "/plugins/privileges", Plain),
    ("DELETE", "/plugins/**", Plain),
    ("POST", "/plugins/**/enable", Plain),
    ("POST", "/plugins/**/disable", Plain),
    ("POST", "/plugins/pull", PluginInstall),
    ("POST", "/plugins/**/push", Plain),
    ("POST", "/plugins/**/upgrade", PluginInstall),
    ("POST", "/plugins/**/set", PluginInstall),
    ("POST", "/plugins/create", PluginInstall),
    // distribution
    ("GET", "/distribution/**/json", Plain),
    // grpc
    ("POST", "/grpc", Closed(GRPC)),
    // network
    ("GET", "/networks", Plain),
    ("GET", "/networks/**", Plain),
    ("POST", "/networks/create", NetworkCreate),
    ("POST", "/networks/**/connect", Plain),
    ("POST", "/networks/**/disconnect", Plain),
    ("POST", "/networks/prune", Plain),
    ("DELETE", "/networks/**", Plain),
];

/// Classifies a request.
pub(crate) fn classify(method: &str, uri: &str) -> Route {
    let (raw_path, raw_query) = split_target(uri);
    // The policy's one `path.Clean`: no empty, `.` or `..` segments, no
    // trailing slash.
    let decoded = String::from_utf8_lossy(&percent_decode(raw_path)).into_owned();
    let path = lexical_clean(&decoded).to_string_lossy().into_owned();
    let (version, rest) = strip_version(&path);
    let method = method.to_ascii_uppercase();
    let endpoint = match_route(&method, version.is_some(), rest);
    let container = matches!(endpoint, ContainerStart | MountsAgain)
        .then(|| container_name(rest))
        .flatten();
    Route {
        endpoint,
        path: rest.to_string(),
        version: version.map(str::to_string),
        raw_query: raw_query.to_string(),
        container,
    }
}

/// The `{name:.*}` of `/containers/{name:.*}/ACTION`.
fn container_name(path: &str) -> Option<String> {
    let rest = path.strip_prefix("/containers/")?;
    let (name, _action) = rest.rsplit_once('/')?;
    (!name.is_empty()).then(|| name.to_string())
}

fn match_route(method: &str, versioned: bool, path: &str) -> Endpoint {
    if method == "OPTIONS" {
        // dockerd answers OPTIONS on every path with an empty 200.
        return Plain;
    }
    if path == "/debug" || path.starts_with("/debug/") {
        // Served without a version prefix, on any method.
        return if versioned { Unknown } else { Closed(DEBUG) };
    }
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    ROUTES
        .iter()
        .find(|(m, pattern, _)| *m == method && matches(pattern, &segments))
        .map_or(Unknown, |(_, _, endpoint)| *endpoint)
}

/// Matches path segments against a pattern of literals, `*` and `**`.
fn matches(pattern: &str, segments: &[&str]) -> bool {
    let parts: Vec<&str> = pattern.split('/').filter(|s| !s.is_empty()).collect();
    match_parts(&parts, segments)
}

fn match_parts(parts: &[&str], segments: &[&str]) -> bool {
    match parts.split_first() {
        None => segments.is_empty(),
        Some((&"**", rest)) => (1..=segments.len()).any(|n| match_parts(rest, &segments[n..])),
        Some((&"*", rest)) => !segments.is_empty() && match_parts(rest, &segments[1..]),
        Some((literal, rest)) => {
            segments.first() == Some(literal) && match_parts(rest, &segments[1..])
        }
    }
}

fn is_legacy_start(version: &str) -> bool {
    go_version_compare(version, START_BODY_REMOVED) == std::cmp::Ordering::Less
}

/// Docker's `api/types/versions.compare`: dot-separated integers, a part that
/// does not parse counts as 0, missing parts count as 0.
fn go_version_compare(a: &str, b: &str) -> std::cmp::Ordering {
    let parts = |v: &str| -> Vec<u64> { v.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    let (a, b) = (parts(a), parts(b));
    let len = a.len().max(b.len());
    let at = |v: &[u64], i: usize| v.get(i).copied().unwrap_or(0);
    (0..len)
        .map(|i| at(&a, i).cmp(&at(&b, i)))
        .find(|o| o.is_ne())
        .unwrap_or(std::cmp::Ordering::Equal)
}

/// Splits `/v1.41/rest` into `(Some("1.41"), "/rest")`, as dockerd's
/// `/v{version:[0-9.]+}` route prefix does.
fn strip_version(path: &str) -> (Option<&str>, &str) {
    if let Some(after_v) = path.strip_prefix("/v") {
        let end = after_v
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(after_v.len());
        let rest = &after_v[end..];
        if end > 0 && (rest.is_empty() || rest.starts_with('/')) {
            return (
                Some(&after_v[..end]),
                if rest.is_empty() { "/" } else { rest },
            );
        }
    }
    (None, path)
}

/// Splits a request target into raw path and raw query.
fn split_target(uri: &str) -> (&str, &str) {
    let without_scheme = match uri.find("://") {
        Some(i) if !uri.starts_with('/') => {
            let after = &uri[i + 3..];
            after.find('/').map_or("/", |slash| &after[slash..])
        }
        _ => uri,
    };
    without_scheme
        .split_once('?')
        .unwrap_or((without_scheme, ""))
}

/// Decodes `%XX` escapes; a malformed escape is kept literally.
fn percent_decode(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).and_then(|b| hex(*b)),
                bytes.get(i + 2).and_then(|b| hex(*b)),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_endpoints() {
        let cases: &[(&str, &str, Endpoint)] = &[
            ("POST", "/containers/create", ContainerCreate),
            ("POST", "/v1.41/containers/create?name=web", ContainerCreate),
            ("post", "/v1.41/containers/create", ContainerCreate),
            ("POST", "/v1.41/containers/%63reate", ContainerCreate),
            ("POST", "/v1.41//containers/./create/", ContainerCreate),
            (
                "POST",
                "/v1.41/images/../containers/create",
                ContainerCreate,
            ),
            (
                "POST",
                "http://docker/v1.41/containers/create",
                ContainerCreate,
            ),
            ("GET", "/v1.41/containers/create", Unknown),
            ("GET", "/v1.41/containers/create/json", Plain),
            ("POST", "/v1.41/containers/abc/update", ContainerUpdate),
            ("POST", "/v1.41/containers/abc/exec", ExecCreate),
            ("POST", "/v1.41/containers/a%2Fb/exec", ExecCreate),
            ("POST", "/v1.41/containers/abc/start", ContainerStart),
            ("POST", "/v1.23/containers/abc/start", ContainerStart),
            ("POST", "/v1.41/volumes/create", VolumeCreate),
            ("POST", "/v1.41/networks/create", NetworkCreate),
            ("POST", "/v1.41/networks/create/connect", Plain),
            ("POST", "/v1.41/services/create", ServiceSpec),
            ("POST", "/v1.41/services/web/update?version=12", ServiceSpec),
            ("POST", "/v1.41/services/a/b/update", Unknown),
            (
                "POST",
                "/v1.41/plugins/pull?remote=vieux%2Fsshfs",
                PluginInstall,
            ),
            ("POST", "/v1.41/plugins/create?name=evil", PluginInstall),
            (
                "POST",
                "/v1.41/plugins/vieux/sshfs:latest/set",
                PluginInstall,
            ),
            ("POST", "/v1.41/plugins/vieux/sshfs/upgrade", PluginInstall),
            ("POST", "/v1.41/plugins/vieux/sshfs/enable", Plain),
            ("POST", "/v1.41/build?networkmode=host", Build),
            ("POST", "/v1.41/containers/abc/kill", Plain),
            ("POST", "/v1.41/containers//update", Unknown),
            ("POST", "/v1.41/swarm/init", SwarmMembership),
            ("POST", "/v1.41/swarm/join", SwarmMembership),
            ("GET", "/v1.41/swarm", Plain),
            ("POST", "/v1.41/nodes/n1/update?version=3", SwarmMembership),
            ("DELETE", "/v1.41/nodes/n1", SwarmMembership),
            ("POST", "/grpc", Closed(GRPC)),
            ("POST", "/session", Plain),
            ("GET", "/debug/pprof/heap", Closed(DEBUG)),
            ("POST", "/debug/vars", Closed(DEBUG)),
            ("GET", "/v1.41/debug/vars", Unknown),
            (
                "GET",
                "/v1.41/containers/x/checkpoints",
                Closed(CHECKPOINTS),
            ),
            (
                "DELETE",
                "/v1.41/containers/x/checkpoints/c1",
                Closed(CHECKPOINTS),
            ),
            ("DELETE", "/v1.41/containers/x?force=1", Plain),
            ("POST", "/v1.41/containers/x/copy", Closed(COPY)),
            ("PUT", "/v1.41/containers/x/archive?path=/tmp", MountsAgain),
            ("HEAD", "/v1.41/containers/x/archive?path=/tmp", MountsAgain),
            ("GET", "/v1.41/containers/x/archive?path=/tmp", MountsAgain),
            ("POST", "/v1.41/containers/x/restart?t=1", MountsAgain),
            ("POST", "/v1.41/commit?container=x&changes=USER+root", Plain),
            ("OPTIONS", "/anything/at/all", Plain),
            ("GET", "/_ping", Plain),
            ("HEAD", "/_ping", Plain),
            ("HEAD", "/v1.41/info", Unknown),
            ("PATCH", "/v1.41/containers/x/update", Unknown),
            ("GET", "/v1.41/networks/", Plain),
            ("GET", "/v1.41/networks/a/b", Plain),
            ("POST", "/v1.41/containers/x/frobnicate", Unknown),
            ("POST", "/v1.41/volumes/x/update", Unknown),
            ("GET", "/vX/info", Unknown),
            ("GET", "/", Unknown),
        ];
        for (method, uri, want) in cases {
            assert_eq!(classify(method, uri).endpoint, *want, "{method} {uri}");
        }
    }

    #[test]
    fn every_route_is_reachable() {
        // No route is shadowed by an earlier one with the same method,
        // except where dockerd's own order shadows it too.
        for (i, (method, pattern, endpoint)) in ROUTES.iter().enumerate() {
            let path = pattern.replace("**", "x").replace('*', "x");
            let got = classify(method, &path).endpoint;
            let first = ROUTES
                .iter()
                .position(|(m, p, _)| {
                    m == method
                        && matches(
                            p,
                            &path
                                .split('/')
                                .filter(|s| !s.is_empty())
                                .collect::<Vec<_>>(),
                        )
                })
                .unwrap();
            if first == i {
                assert_eq!(got, *endpoint, "{method} {pattern}");
            }
        }
    }

    #[test]
    fn versions_and_paths() {
        let route = classify("POST", "/v1.23/containers/x/start?checkpoint=c");
        assert!(route.legacy_start());
        assert_eq!(route.raw_query, "checkpoint=c");
        assert_eq!(route.version.as_deref(), Some("1.23"));
        assert!(!classify("POST", "/containers/x/start").legacy_start());
        assert_eq!(route.container.as_deref(), Some("x"));
        let odd = classify("PUT", "/containers/a%2Fb/archive?path=/");
        assert_eq!(odd.container.as_deref(), Some("a/b"));
        assert_eq!(classify("POST", "/containers/x/kill").container, None);
        assert!(!classify("POST", "/v1.24/containers/x/start").legacy_start());
        assert_eq!(strip_version("/v1.41"), (Some("1.41"), "/"));
        assert_eq!(strip_version("/volumes"), (None, "/volumes"));
        assert_eq!(percent_decode("%zz%4"), b"%zz%4");
        assert_eq!(percent_decode("a%2fb%"), b"a/b%");
        assert!(is_legacy_start("1.9"));
        assert!(is_legacy_start("1.23.9"));
        assert!(!is_legacy_start("1.24"));
        assert!(!is_legacy_start("2"));
    }
}
