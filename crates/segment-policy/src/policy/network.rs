//! `POST /networks/create`: which networks a container may be put on.
//!
//! A segment owns one address and one link on the host's bridge. Drivers
//! that attach containers to that link directly (`macvlan`, `ipvlan`) give
//! a container its own MAC and any address on the bridge; a bridge named
//! after an existing interface (`com.docker.network.bridge.name=eth0`)
//! makes libnetwork reuse that interface. Only the bridge, overlay and null
//! drivers are allowed, with driver options from a short safe list.

use super::gojson::{Json, bool_of, entries_of, str_of};
use super::mounts::quote;
use super::{Check, Denial, Rule};

/// Drivers that keep containers on networks inside the segment.
const DRIVERS: &[&str] = &["", "bridge", "overlay", "null"];

/// Driver options that only tune a network inside the segment.
const SAFE_OPTIONS: &[&str] = &[
    "com.docker.network.bridge.enable_icc",
    "com.docker.network.bridge.enable_ip_masquerade",
    "com.docker.network.bridge.host_binding_ipv4",
    "com.docker.network.driver.mtu",
    "com.docker.network.container_iface_prefix",
    "encrypted",
];

/// Checks a `NetworkCreateRequest`.
pub(crate) fn check_network_create(body: &Json) -> Check {
    let driver = str_of(body.field("Driver")?, "Driver")?.unwrap_or("");
    if !DRIVERS.contains(&driver.to_ascii_lowercase().as_str()) {
        return Err(refuse(format!(
            "network driver {} is not allowed by policy (bridge, overlay or null; macvlan and ipvlan would put containers on the segment's own link)",
            quote(driver)
        )));
    }
    if bool_of(body.field("Ingress")?, "Ingress")? {
        return Err(refuse(
            "ingress networks are not allowed by policy (the agent manages swarm)".to_string(),
        ));
    }
    let ipam_driver = str_of(body.path(&["IPAM", "Driver"])?, "Driver")?.unwrap_or("");
    if !matches!(ipam_driver, "" | "default") {
        return Err(refuse(format!(
            "IPAM driver {} is not allowed by policy (only default)",
            quote(ipam_driver)
        )));
    }
    for (key, _) in entries_of(body.field("Options")?, "Options")? {
        if !SAFE_OPTIONS.contains(&key.as_str()) {
            return Err(refuse(format!(
                "network option {} is not allowed by policy (allowed: {})",
                quote(key),
                SAFE_OPTIONS.join(", ")
            )));
        }
    }
    Ok(())
}

fn refuse(message: String) -> Denial {
    Denial::new(Rule::Network, message)
}

#[cfg(test)]
mod tests {
    use super::super::gojson::parse;
    use super::*;

    #[test]
    fn network_create() {
        let cases: &[(&str, Option<&str>)] = &[
            (r#"{"Name":"n"}"#, None),
            (
                r#"{"Name":"n","Driver":"bridge","Options":{"com.docker.network.driver.mtu":"1400"}}"#,
                None,
            ),
            (r#"{"Name":"n","Driver":"overlay","Attachable":true}"#, None),
            (r#"{"Name":"n","Driver":"null","ConfigOnly":true}"#, None),
            (
                r#"{"Name":"n","Driver":"macvlan","Options":{"parent":"eth0"}}"#,
                Some("SEGMENT-1023"),
            ),
            (r#"{"Name":"n","Driver":"ipvlan"}"#, Some("SEGMENT-1023")),
            (r#"{"Name":"n","Driver":"MACVLAN"}"#, Some("SEGMENT-1023")),
            (r#"{"Name":"n","Driver":"host"}"#, Some("SEGMENT-1023")),
            (
                r#"{"Name":"n","driver":"some/plugin"}"#,
                Some("SEGMENT-1023"),
            ),
            (
                r#"{"Name":"n","Options":{"com.docker.network.bridge.name":"eth0"}}"#,
                Some("SEGMENT-1023"),
            ),
            (
                r#"{"Name":"n","Driver":"null","ConfigOnly":true,"Options":{"parent":"eth0"}}"#,
                Some("SEGMENT-1023"),
            ),
            (
                r#"{"Name":"n","IPAM":{"Driver":"evil"}}"#,
                Some("SEGMENT-1023"),
            ),
            (
                r#"{"Name":"n","Driver":"overlay","Ingress":true}"#,
                Some("SEGMENT-1023"),
            ),
            (r#"{"Name":"n","Driver":1}"#, Some("SEGMENT-1101")),
            (
                r#"{"Name":"n","Driver":"bridge","driver":"macvlan"}"#,
                Some("SEGMENT-1101"),
            ),
        ];
        for (json, want) in cases {
            let v = parse(json.as_bytes()).unwrap();
            let got = check_network_create(&v).err().map(|d| d.rule.code());
            assert_eq!(got, *want, "{json}");
        }
    }
}
