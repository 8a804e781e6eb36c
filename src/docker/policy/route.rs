//! Maps a request line, as dockerd forwards it (`RequestURI` is the raw
//! request target), onto the API endpoints the policy inspects.
//!
//! dockerd routes on the *decoded* path, so `/v1.41/containers/%63reate` is a
//! create call: the path is percent-decoded, dot segments and duplicate
//! slashes removed and an absolute-form target (`http://host/...`) reduced to
//! its path before matching. Matching is deliberately looser than dockerd's
//! router (any method case, trailing slash ignored): a request dockerd would
//! not route anyway may be inspected for nothing, never the reverse.

/// The endpoints with a policy; everything else is the daemon's normal API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// `POST /containers/create`
    ContainerCreate,
    /// `POST /containers/{id}/update`
    ContainerUpdate,
    /// `POST /containers/{id}/start` with an API version below 1.24, where
    /// dockerd still applies a HostConfig sent in the body.
    LegacyContainerStart,
    /// `POST /containers/{id}/exec`
    ExecCreate,
    /// `POST /volumes/create`
    VolumeCreate,
    /// `POST /services/create` and `POST /services/{id}/update`
    ServiceSpec,
    /// `POST /plugins/pull`, `/plugins/create`, `/plugins/{name}/upgrade`, `/plugins/{name}/set`
    PluginInstall,
    /// `POST /build`
    Build,
    /// Anything else.
    Other,
}

/// A classified request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Route {
    pub(crate) endpoint: Endpoint,
    /// The percent-decoded query string, for endpoints that read it.
    pub(crate) query: String,
}

/// The first API version whose `start` ignores (and refuses) a body.
const START_BODY_REMOVED: &str = "1.24";

/// Classifies a request.
pub(crate) fn classify(method: &str, uri: &str) -> Route {
    let (raw_path, raw_query) = split_target(uri);
    let query = String::from_utf8_lossy(&percent_decode(raw_query)).into_owned();
    let path = clean(&String::from_utf8_lossy(&percent_decode(raw_path)));
    let endpoint = if method.eq_ignore_ascii_case("POST") {
        let (version, rest) = strip_version(&path);
        match_post(version, rest)
    } else {
        Endpoint::Other
    };
    Route { endpoint, query }
}

fn match_post(version: Option<&str>, path: &str) -> Endpoint {
    let under = |prefix: &str, suffix: &str| {
        path.strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix(suffix))
            .is_some_and(|name| !name.is_empty())
    };
    match path {
        "/containers/create" => Endpoint::ContainerCreate,
        "/volumes/create" => Endpoint::VolumeCreate,
        "/services/create" => Endpoint::ServiceSpec,
        "/plugins/pull" | "/plugins/create" => Endpoint::PluginInstall,
        "/build" => Endpoint::Build,
        _ if under("/containers/", "/update") => Endpoint::ContainerUpdate,
        _ if under("/containers/", "/exec") => Endpoint::ExecCreate,
        _ if under("/containers/", "/start") && version.is_some_and(is_legacy_start) => {
            Endpoint::LegacyContainerStart
        }
        _ if under("/services/", "/update") => Endpoint::ServiceSpec,
        _ if under("/plugins/", "/set") || under("/plugins/", "/upgrade") => {
            Endpoint::PluginInstall
        }
        _ => Endpoint::Other,
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

/// Lexically cleans an absolute URL path: no empty, `.` or `..` segments and
/// no trailing slash.
fn clean(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    format!("/{}", segments.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_endpoints() {
        let cases: &[(&str, &str, Endpoint)] = &[
            ("POST", "/containers/create", Endpoint::ContainerCreate),
            (
                "POST",
                "/v1.41/containers/create?name=web",
                Endpoint::ContainerCreate,
            ),
            (
                "post",
                "/v1.41/containers/create",
                Endpoint::ContainerCreate,
            ),
            (
                "POST",
                "/v1.41/containers/%63reate",
                Endpoint::ContainerCreate,
            ),
            (
                "POST",
                "/v1.41//containers/./create/",
                Endpoint::ContainerCreate,
            ),
            (
                "POST",
                "/v1.41/images/../containers/create",
                Endpoint::ContainerCreate,
            ),
            (
                "POST",
                "http://docker/v1.41/containers/create",
                Endpoint::ContainerCreate,
            ),
            ("GET", "/v1.41/containers/create", Endpoint::Other),
            (
                "POST",
                "/v1.41/containers/abc/update",
                Endpoint::ContainerUpdate,
            ),
            ("POST", "/v1.41/containers/abc/exec", Endpoint::ExecCreate),
            ("POST", "/v1.41/containers/a%2Fb/exec", Endpoint::ExecCreate),
            ("POST", "/v1.41/containers/abc/start", Endpoint::Other),
            ("POST", "/containers/abc/start", Endpoint::Other),
            (
                "POST",
                "/v1.23/containers/abc/start",
                Endpoint::LegacyContainerStart,
            ),
            (
                "POST",
                "/v1.12/containers/abc/start",
                Endpoint::LegacyContainerStart,
            ),
            ("POST", "/v1.24/containers/abc/start", Endpoint::Other),
            ("POST", "/v1.41/volumes/create", Endpoint::VolumeCreate),
            ("POST", "/v1.41/services/create", Endpoint::ServiceSpec),
            (
                "POST",
                "/v1.41/services/web/update?version=12",
                Endpoint::ServiceSpec,
            ),
            (
                "POST",
                "/v1.41/plugins/pull?remote=vieux%2Fsshfs",
                Endpoint::PluginInstall,
            ),
            (
                "POST",
                "/v1.41/plugins/create?name=evil",
                Endpoint::PluginInstall,
            ),
            (
                "POST",
                "/v1.41/plugins/vieux/sshfs:latest/set",
                Endpoint::PluginInstall,
            ),
            (
                "POST",
                "/v1.41/plugins/vieux/sshfs/upgrade",
                Endpoint::PluginInstall,
            ),
            ("POST", "/v1.41/plugins/vieux/sshfs/enable", Endpoint::Other),
            ("POST", "/v1.41/build?networkmode=host", Endpoint::Build),
            ("POST", "/v1.41/containers/abc/kill", Endpoint::Other),
            ("POST", "/v1.41/containers//update", Endpoint::Other),
            ("GET", "/_ping", Endpoint::Other),
        ];
        for (method, uri, want) in cases {
            assert_eq!(classify(method, uri).endpoint, *want, "{method} {uri}");
        }
    }

    #[test]
    fn decodes_query_and_versions() {
        let route = classify("POST", "/build?x=security%2Einsecure");
        assert_eq!(route.query, "x=security.insecure");
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
