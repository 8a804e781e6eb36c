//! `--log-opt` of the log drivers the policy allows: a container's log is
//! bounded. The daemon rotates `json-file` logs at
//! the agent's `LOG_MAX_SIZE` × `LOG_MAX_FILES`
//! (`daemon.json`), the `local` driver at its own 20 MiB × 5; a container
//! may choose other values up to [`MAX_SIZE_BYTES`] × [`MAX_FILES`], never
//! an unbounded log.

use super::gojson::{Json, entries_of, str_of};
use super::mounts::quote;
use super::{Check, Denial, Rule};

/// The largest `max-size` a container may ask for: 100 MiB.
pub(crate) const MAX_SIZE_BYTES: u64 = 100 << 20;
/// The most files (`max-file`) a container may keep.
pub(crate) const MAX_FILES: u64 = 10;

/// `HostConfig.LogConfig.Config` (service `LogDriver.Options`) of `driver`
/// (empty: the daemon's `json-file`).
pub(crate) fn check_log_options(driver: Option<&str>, options: Option<&Json>) -> Check {
    if !matches!(driver.unwrap_or(""), "" | "json-file" | "local") {
        return Ok(()); // "none" keeps nothing; other drivers are refused
    }
    for (key, value) in entries_of(options, "Config")? {
        let value = str_of(Some(value), key)?.unwrap_or("");
        let bounded = match key.as_str() {
            "max-size" => ram_in_bytes(value).is_some_and(|n| n > 0 && n <= MAX_SIZE_BYTES),
            "max-file" => value
                .parse::<u64>()
                .is_ok_and(|n| (1..=MAX_FILES).contains(&n)),
            _ => continue, // compress, labels, env, tag: no size
        };
        if !bounded {
            return Err(Denial::new(
                Rule::LogSize,
                format!(
                    "log option {}={} is not allowed by policy (max-size at most 100m, max-file at most {MAX_FILES})",
                    quote(key),
                    quote(value)
                ),
            ));
        }
    }
    Ok(())
}

/// go-units' `RAMInBytes`, which the log drivers parse `max-size` with:
/// a decimal number, an optional space, an optional unit `k m g t p`
/// (binary), optionally followed by `i` and/or `b`, case-insensitive.
/// `None` for anything else (dockerd refuses it too).
fn ram_in_bytes(text: &str) -> Option<u64> {
    let digits = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, rest) = text.split_at(digits);
    if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
        return None;
    }
    let value: f64 = number.parse().ok()?;
    let rest = rest.strip_prefix(' ').unwrap_or(rest).to_ascii_lowercase();
    let (unit, suffix) = match rest.chars().next() {
        Some(c @ ('k' | 'm' | 'g' | 't' | 'p')) => (c, &rest[1..]),
        _ => ('b', rest.as_str()),
    };
    if !matches!(suffix, "" | "b" | "i" | "ib") {
        return None;
    }
    let shift = match unit {
        'k' => 10,
        'm' => 20,
        'g' => 30,
        't' => 40,
        'p' => 50,
        _ => 0,
    };
    let bytes = value * (1u64 << shift) as f64;
    (bytes.is_finite() && bytes < u64::MAX as f64).then_some(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::gojson::parse;

    #[test]
    fn sizes_parse_as_go_units_does() {
        let cases = [
            ("10m", Some(10 << 20)),
            ("10M", Some(10 << 20)),
            ("10mb", Some(10 << 20)),
            ("10 MiB", Some(10 << 20)),
            ("1.5k", Some(1536)),
            ("100", Some(100)),
            ("100b", Some(100)),
            ("2g", Some(2 << 30)),
            ("1p", Some(1 << 50)),
            ("", None),
            ("-1", None),
            ("m", None),
            ("10x", None),
            ("10mm", None),
            ("1e9", None),
            (".5m", None),
        ];
        for (text, want) in cases {
            assert_eq!(ram_in_bytes(text), want, "{text:?}");
        }
    }

    fn check(driver: &str, options: &str) -> Check {
        let options = parse(options.as_bytes()).unwrap();
        check_log_options(Some(driver), Some(&options))
    }

    #[test]
    fn bounded_options_pass_unbounded_are_refused() {
        for (driver, options) in [
            ("", r#"{"max-size":"100m","max-file":"10"}"#),
            ("json-file", r#"{"max-size":"1k","compress":"true"}"#),
            ("local", r#"{"max-file":"1"}"#),
            ("none", r#"{"max-size":"100g"}"#),
            ("", r#"{"labels":"a","tag":"{{.Name}}"}"#),
            ("", "null"),
        ] {
            assert!(check(driver, options).is_ok(), "{driver} {options}");
        }
        for (driver, options) in [
            ("", r#"{"max-size":"101m"}"#),
            ("json-file", r#"{"max-size":"1g"}"#),
            ("local", r#"{"max-size":"0"}"#),
            ("", r#"{"max-size":"-1"}"#),
            ("", r#"{"max-file":"11"}"#),
            ("local", r#"{"max-file":"0"}"#),
            ("", r#"{"max-file":"1000000"}"#),
            ("", r#"{"max-size":"10m","max-file":"x"}"#),
        ] {
            let err = check(driver, options).unwrap_err();
            assert_eq!(err.rule, Rule::LogSize, "{driver} {options}");
        }
    }
}
