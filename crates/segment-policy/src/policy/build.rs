//! `POST /build`: the build's settings are query parameters (the body is
//! the context tarball, never forwarded to the plugin).
//!
//! dockerd reads them with Go's `Request.FormValue` (`newImageBuildOptions`
//! in `api/server/router/build/build_routes.go`): the first value of a
//! repeated key, `+` as a space, `%XX` escapes. Every value of a checked key
//! is checked here, keys compared case-insensitively, so neither a repeated
//! key nor a spelling can hide one. A form body, from which Go would read
//! parameters too, is refused before this (`check_content_type`).

use super::gojson;
use super::mounts::quote;
use super::options::check_ulimits;
use super::{Check, Denial, Rule};

/// Network modes a build may use: the daemon's default bridge, no network,
/// or the segment's own (like `docker run --net=host`, which is allowed).
/// `container:<id>` and user networks are refused: BuildKit does not
/// support them and the classic builder gains nothing from them.
const BUILD_NETWORK_MODES: &[&str] = &["", "default", "bridge", "none", "host"];

/// Checks a build's query string.
pub(crate) fn check_build(raw_query: &str) -> Check {
    for (key, value) in query_pairs(raw_query)? {
        check_parameter(&key.to_ascii_lowercase(), &value)?;
    }
    Ok(())
}

fn check_parameter(key: &str, value: &str) -> Check {
    if value.to_ascii_lowercase().contains("security.insecure") || key.contains("security.insecure")
    {
        return Err(Denial::new(
            Rule::InsecureBuild,
            "builds with the security.insecure entitlement are not allowed by policy",
        ));
    }
    let refused = match key {
        "cgroupparent" if !value.is_empty() => {
            return Err(Denial::new(
                Rule::CgroupParent,
                "cgroup parent overrides are not allowed by policy (docker build --cgroup-parent)",
            ));
        }
        "securityopt" => {
            return Err(Denial::new(
                Rule::Confinement,
                format!(
                    "build security option {} is not allowed by policy",
                    quote(value)
                ),
            ));
        }
        "ulimits" if !value.is_empty() => {
            return check_ulimits(Some(&gojson::parse(value.as_bytes())?));
        }
        "networkmode" => !BUILD_NETWORK_MODES.contains(&value.to_ascii_lowercase().as_str()),
        "isolation" => !matches!(value.to_ascii_lowercase().as_str(), "" | "default"),
        "entitlements" | "allow" => !value.is_empty(),
        _ => false,
    };
    if refused {
        return Err(Denial::new(
            Rule::BuildOption,
            format!(
                "build option {key}={} is not allowed by policy (networks: default, bridge, none, host; no isolation or entitlements)",
                quote(value)
            ),
        ));
    }
    Ok(())
}

/// Splits and decodes a query string as Go's `url.ParseQuery` does, but
/// refuses what Go would silently drop or read differently across versions
/// (`;` separated pairs before Go 1.17, malformed escapes).
pub(crate) fn query_pairs(raw: &str) -> Result<Vec<(String, String)>, Denial> {
    if raw.contains(';') {
        return Err(unreadable("a ';' in the query"));
    }
    raw.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((unescape(key)?, unescape(value)?))
        })
        .collect()
}

/// Go's `url.QueryUnescape`.
fn unescape(s: &str) -> Result<String, Denial> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = |b: Option<&u8>| b.and_then(|b| (*b as char).to_digit(16));
                match (hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
                    (Some(h), Some(l)) => out.push((h * 16 + l) as u8),
                    _ => return Err(unreadable("a malformed %-escape in the query")),
                }
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| unreadable("a query that is not UTF-8"))
}

fn unreadable(what: &str) -> Denial {
    Denial::new(
        Rule::BuildOption,
        format!("the request cannot be checked ({what}) and is refused by policy"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_queries() {
        let cases: &[(&str, Option<&str>)] = &[
            ("", None),
            ("t=x&networkmode=host&version=2&session=abc", None),
            ("networkmode=default&cgroupparent=&isolation=", None),
            ("networkmode=none", None),
            ("networkmode=bridge", None),
            ("networkmode=container%3Aabc", Some("SEGMENT-1015")),
            ("networkmode=mynet", Some("SEGMENT-1015")),
            (
                "networkmode=host&networkmode=container:x",
                Some("SEGMENT-1015"),
            ),
            ("NetworkMode=mynet", Some("SEGMENT-1015")),
            ("isolation=hyperv", Some("SEGMENT-1015")),
            ("isolation=default", None),
            ("cgroupparent=%2F", Some("SEGMENT-1014")),
            ("cgroup%70arent=/", Some("SEGMENT-1014")),
            ("cgroupparent=&cgroupparent=/", Some("SEGMENT-1014")),
            ("securityopt=seccomp%3Dunconfined", Some("SEGMENT-1004")),
            ("entitlements=security.insecure", Some("SEGMENT-1013")),
            ("x=security%2Einsecure", Some("SEGMENT-1013")),
            ("entitlements=network.host", Some("SEGMENT-1015")),
            ("cgroupparent=x;networkmode=host", Some("SEGMENT-1015")),
            ("cgroupparent=%zz", Some("SEGMENT-1015")),
            ("buildargs=%7B%22a%22%3A%22b+c%22%7D&labels=%7B%7D", None),
            ("ulimits=null", None),
            (
                "ulimits=%5B%7B%22Name%22%3A%22nofile%22%2C%22Hard%22%3A1024%2C%22Soft%22%3A1024%7D%5D",
                None,
            ),
            (
                "ulimits=%5B%7B%22Name%22%3A%22rtprio%22%2C%22Hard%22%3A99%2C%22Soft%22%3A99%7D%5D",
                Some("SEGMENT-1018"),
            ),
            ("ulimits=%5Bnot", Some("SEGMENT-1101")),
        ];
        for (query, want) in cases {
            let got = check_build(query).err().map(|d| d.rule.code());
            assert_eq!(got, *want, "{query}");
        }
    }

    #[test]
    fn unescapes_like_go() {
        let pairs = query_pairs("a=b+c&d=%2F&e&=f").unwrap();
        let want = [("a", "b c"), ("d", "/"), ("e", ""), ("", "f")];
        let got: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(got, want);
    }
}
