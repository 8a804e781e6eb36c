//! The agent's record of a segment inside the domain's `<metadata>`, under the
//! agent's own XML namespace. libvirt keeps it with the domain, so the agent
//! rebuilds its whole view from libvirt after a restart.
//!
//! ```xml
//! <sa:segment xmlns:sa="https://segment-agent.dev/xmlns/segment/1" id="web-1"
//!     cluster="c1" image="dev" address="203.0.113.10" memory_mib="4096"
//!     vcpus="2" disk_gib="20" pids="4096" network_mbit="1000" created_at="2026-11-22T04:00:00.000000000Z" desired="running">
//!   <sa:label key="team" value="web"/>
//! </sa:segment>
//! ```
//! Values live in attributes so the reader never has to reassemble text split
//! around entities; unknown attributes and elements are ignored, so a newer
//! agent's record still reads.

use super::XmlWriter;
use crate::model::{
    ClusterId, Desired, Flavor, ImageName, Labels, SegmentId, SegmentRecord, SegmentRequest,
    swarm::{SwarmMode, SwarmNode, SwarmRole, SwarmSpec},
};
use quick_xml::{
    NsReader,
    events::{BytesStart, Event},
    name::ResolveResult,
};
use std::{collections::HashMap, io, time::SystemTime};
use time::OffsetDateTime;
use time::format_description::{BorrowedFormatItem, well_known::Rfc3339};
use time::macros::format_description;

/// The agent's metadata namespace.
pub const METADATA_URI: &str = "https://segment-agent.dev/xmlns/segment/1";
/// `pids.max` of segments whose record predates the flavor's `pids`.
const LEGACY_PIDS: u32 = 4096;
/// The prefix used for it in domain XML.
pub const METADATA_PREFIX: &str = "sa";

/// A metadata record that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    /// The XML is malformed.
    #[error("malformed metadata XML: {0}")]
    Xml(#[from] quick_xml::Error),
    /// No `<segment>` element in the agent's namespace.
    #[error("no segment-agent metadata element")]
    Missing,
    /// An attribute is missing or invalid.
    #[error("metadata attribute {0:?} is missing or invalid")]
    Field(&'static str),
}

/// Writes the record as `<sa:segment>` with its namespace declaration, as
/// it appears inside a domain's `<metadata>`.
pub(crate) fn write_record(w: &mut XmlWriter, r: &SegmentRecord) -> io::Result<()> {
    write_element(w, r, Some(METADATA_PREFIX))
}

/// Writes the record element, prefixed and with its namespace declaration,
/// or bare (as `virDomainSetMetadata` wants it: libvirt adds the namespace).
fn write_element(w: &mut XmlWriter, r: &SegmentRecord, prefix: Option<&str>) -> io::Result<()> {
    let q = &r.request;
    let name = |local: &str| match prefix {
        Some(p) => format!("{p}:{local}"),
        None => local.to_owned(),
    };
    let created = format_time(r.created_at, RFC3339_NANOS);
    let mut element = w.create_element(name("segment"));
    let ns_attr = prefix.map(|p| format!("xmlns:{p}"));
    if let Some(ns_attr) = &ns_attr {
        element = element.with_attribute((ns_attr.as_str(), METADATA_URI));
    }
    let element = element
        .with_attribute(("id", q.id.as_str()))
        .with_attribute(("cluster", q.cluster.as_str()))
        .with_attribute(("image", q.image.as_str()))
        .with_attribute(("address", r.address.to_string().as_str()))
        .with_attribute(("memory_mib", q.flavor.memory_mib.to_string().as_str()))
        .with_attribute(("vcpus", q.flavor.vcpus.to_string().as_str()))
        .with_attribute(("disk_gib", q.flavor.disk_gib.to_string().as_str()))
        .with_attribute(("pids", q.flavor.pids.to_string().as_str()))
        .with_attribute(("network_mbit", q.flavor.network_mbit.to_string().as_str()))
        .with_attribute(("created_at", created.as_str()))
        .with_attribute(("desired", r.desired.as_str()))
        .with_attribute(("host_uid", r.ids.host_first.to_string().as_str()))
        .with_attribute(("uid_count", r.ids.count.to_string().as_str()));
    let ca = q.ca_cert_pem.as_deref().and_then(pem_to_base64_der);
    let element = match &ca {
        Some(der) => element.with_attribute(("ca", der.as_str())),
        None => element,
    };
    let not_after = r
        .server_cert_not_after
        .map(|t| format_time(t, RFC3339_SECONDS));
    let element = match &not_after {
        Some(t) => element.with_attribute(("cert_not_after", t.as_str())),
        None => element,
    };
    let element = match &r.failure {
        Some(f) => element.with_attribute(("failure", f.as_str())),
        None => element,
    };
    let restarts = r.restarts.to_string();
    let element = match r.restarts {
        0 => element,
        _ => element.with_attribute(("restarts", restarts.as_str())),
    };
    if q.labels.is_empty() && q.swarm.is_none() {
        element.write_empty()?;
        return Ok(());
    }
    element.write_inner_content(|w| {
        for (key, value) in &q.labels {
            w.create_element(name("label"))
                .with_attribute(("key", key.as_str()))
                .with_attribute(("value", value.as_str()))
                .write_empty()?;
        }
        if let Some(spec) = &q.swarm {
            write_swarm(w, &name("swarm"), spec, r.swarm.as_ref())?;
        }
        Ok(())
    })?;
    Ok(())
}

/// `<sa:swarm mode= managers= node_id= role= node_managers=/>`: what was
/// asked and what the node became, without the join tokens (secrets: the
/// domain XML is readable on libvirt's read-only socket; they are kept in
/// the segment's host-only directory, see `docker::swarm_secrets`).
fn write_swarm(
    w: &mut XmlWriter,
    name: &str,
    spec: &SwarmSpec,
    node: Option<&SwarmNode>,
) -> io::Result<()> {
    let joined = |a: &[std::net::SocketAddrV4]| {
        a.iter()
            .map(|m| m.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let managers = joined(&spec.managers);
    let mut e = w
        .create_element(name)
        .with_attribute(("mode", spec.mode.as_str()))
        .with_attribute(("managers", managers.as_str()));
    let node_managers = node.map(|n| joined(&n.managers)).unwrap_or_default();
    if let Some(n) = node {
        e = e
            .with_attribute(("node_id", n.node_id.as_str()))
            .with_attribute(("role", n.role.as_str()))
            .with_attribute(("node_managers", node_managers.as_str()));
    }
    e.write_empty()?;
    Ok(())
}

/// The swarm part of a record from its element's attributes (tokens empty:
/// they come from the host-only directory).
fn swarm_from(
    a: &HashMap<String, String>,
) -> Result<(SwarmSpec, Option<SwarmNode>), MetadataError> {
    let bad = MetadataError::Field("swarm");
    let addrs = |k: &str| -> Result<Vec<std::net::SocketAddrV4>, MetadataError> {
        a.get(k)
            .map(|v| v.split_whitespace().map(|m| m.parse()).collect())
            .unwrap_or(Ok(Vec::new()))
            .map_err(|_| MetadataError::Field("swarm"))
    };
    let mode = a
        .get("mode")
        .and_then(|m| SwarmMode::parse(m))
        .ok_or(MetadataError::Field("swarm"))?;
    let spec = SwarmSpec {
        mode,
        join_token: None,
        managers: addrs("managers")?,
    };
    let node = match a.get("node_id") {
        None => None,
        Some(id) => Some(SwarmNode {
            node_id: id.clone(),
            role: a.get("role").and_then(|r| SwarmRole::parse(r)).ok_or(bad)?,
            worker_token: None,
            manager_token: None,
            managers: addrs("node_managers")?,
        }),
    };
    Ok((spec, node))
}

/// Renders the record alone and bare, as `virDomainSetMetadata` takes it
/// (libvirt puts it into [`METADATA_URI`] under [`METADATA_PREFIX`]).
pub fn record_xml(r: &SegmentRecord) -> String {
    super::render(|w| write_element(w, r, None))
}

/// Wraps a bare record the way libvirt stores it, so it parses again.
pub fn namespaced(bare_record_xml: &str) -> String {
    format!("<metadata xmlns=\"{METADATA_URI}\">{bare_record_xml}</metadata>")
}

/// Finds and reads the agent's record in a domain XML or a metadata element.
pub fn parse_record(xml: &str) -> Result<SegmentRecord, MetadataError> {
    let mut reader = NsReader::from_str(xml);
    loop {
        let (ns, event) = reader.read_resolved_event()?;
        let ours = matches!(ns, ResolveResult::Bound(n) if n.as_ref() == METADATA_URI.as_bytes());
        match event {
            Event::Start(e) if ours && e.local_name().as_ref() == b"segment" => {
                let attrs = attributes(&e)?;
                return record_from(&attrs, read_children(&mut reader)?);
            }
            Event::Empty(e) if ours && e.local_name().as_ref() == b"segment" => {
                return record_from(&attributes(&e)?, Children::default());
            }
            Event::Eof => return Err(MetadataError::Missing),
            _ => {}
        }
    }
}

fn attributes(e: &BytesStart<'_>) -> Result<HashMap<String, String>, MetadataError> {
    let mut out = HashMap::new();
    for attr in e.attributes() {
        let attr = attr.map_err(quick_xml::Error::from)?;
        let key = String::from_utf8_lossy(attr.key.local_name().as_ref()).into_owned();
        out.insert(key, attr.unescape_value()?.into_owned());
    }
    Ok(out)
}

/// The child elements of a record.
#[derive(Default)]
struct Children {
    labels: Labels,
    swarm: Option<(SwarmSpec, Option<SwarmNode>)>,
}

fn read_children(reader: &mut NsReader<&[u8]>) -> Result<Children, MetadataError> {
    let mut children = Children::default();
    // Labels and the swarm are direct children; anything nested deeper is
    // a future field.
    let mut depth = 0usize;
    loop {
        match reader.read_event()? {
            Event::Empty(e) if depth == 0 && e.local_name().as_ref() == b"label" => {
                let a = attributes(&e)?;
                let key = a.get("key").ok_or(MetadataError::Field("label.key"))?;
                let value = a.get("value").cloned().unwrap_or_default();
                children.labels.insert(key.clone(), value);
            }
            Event::Empty(e) if depth == 0 && e.local_name().as_ref() == b"swarm" => {
                children.swarm = Some(swarm_from(&attributes(&e)?)?);
            }
            Event::Start(_) => depth += 1,
            Event::End(_) if depth == 0 => return Ok(children),
            Event::End(_) => depth -= 1,
            Event::Eof => return Err(MetadataError::Missing),
            _ => {}
        }
    }
}

/// `created_at`: RFC 3339 in UTC with nanoseconds, as the records have
/// always been written.
const RFC3339_NANOS: &[BorrowedFormatItem<'_>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:9]Z");
/// `cert_not_after`: RFC 3339 in UTC, whole seconds.
const RFC3339_SECONDS: &[BorrowedFormatItem<'_>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");

fn format_time(t: SystemTime, format: &[BorrowedFormatItem<'_>]) -> String {
    OffsetDateTime::from(t)
        .format(format)
        .expect("a SystemTime formats as RFC 3339")
}

fn parse_time(text: &str) -> Option<SystemTime> {
    OffsetDateTime::parse(text, &Rfc3339)
        .ok()
        .map(SystemTime::from)
}

/// A PEM certificate as one line of base64 DER (attribute values must not
/// hold line breaks).
fn pem_to_base64_der(cert_pem: &str) -> Option<String> {
    use base64::Engine;
    let block = pem::parse(cert_pem).ok()?;
    Some(base64::engine::general_purpose::STANDARD.encode(block.contents()))
}

fn base64_der_to_pem(b64: &str) -> Option<String> {
    use base64::Engine;
    let der = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    Some(crate::certs::pem_encode("CERTIFICATE", &der))
}

fn record_from(
    a: &HashMap<String, String>,
    children: Children,
) -> Result<SegmentRecord, MetadataError> {
    let (swarm_spec, swarm_node) = children.swarm.unzip();
    let labels = children.labels;
    fn field<'a>(
        a: &'a HashMap<String, String>,
        name: &'static str,
    ) -> Result<&'a str, MetadataError> {
        a.get(name)
            .map(String::as_str)
            .ok_or(MetadataError::Field(name))
    }
    fn parsed<T: std::str::FromStr>(
        a: &HashMap<String, String>,
        name: &'static str,
    ) -> Result<T, MetadataError> {
        field(a, name)?
            .parse()
            .map_err(|_| MetadataError::Field(name))
    }
    fn parsed_or<T: std::str::FromStr>(
        a: &HashMap<String, String>,
        name: &'static str,
        missing: T,
    ) -> Result<T, MetadataError> {
        match a.contains_key(name) {
            true => parsed(a, name),
            false => Ok(missing),
        }
    }
    let request = SegmentRequest {
        id: SegmentId::parse(field(a, "id")?).map_err(|_| MetadataError::Field("id"))?,
        cluster: ClusterId::parse(field(a, "cluster")?)
            .map_err(|_| MetadataError::Field("cluster"))?,
        flavor: Flavor {
            memory_mib: parsed(a, "memory_mib")?,
            vcpus: parsed(a, "vcpus")?,
            // Records of segments made before these fields: no disk
            // quota, the pids.max every segment had then, no bandwidth cap.
            disk_gib: parsed_or(a, "disk_gib", 0)?,
            pids: parsed_or(a, "pids", LEGACY_PIDS)?,
            network_mbit: parsed_or(a, "network_mbit", 0)?,
        },
        image: ImageName::parse(field(a, "image")?).map_err(|_| MetadataError::Field("image"))?,
        labels,
        ca_cert_pem: match a.get("ca") {
            Some(b64) => Some(base64_der_to_pem(b64).ok_or(MetadataError::Field("ca"))?),
            None => None,
        },
        swarm: swarm_spec,
    };
    let server_cert_not_after = match a.get("cert_not_after") {
        Some(t) => Some(parse_time(t).ok_or(MetadataError::Field("cert_not_after"))?),
        None => None,
    };
    let created_at =
        parse_time(field(a, "created_at")?).ok_or(MetadataError::Field("created_at"))?;
    Ok(SegmentRecord {
        request,
        address: parsed(a, "address")?,
        created_at,
        desired: Desired::parse(field(a, "desired")?).ok_or(MetadataError::Field("desired"))?,
        server_cert_not_after,
        ids: crate::idmap::IdRange {
            host_first: parsed(a, "host_uid")?,
            count: parsed(a, "uid_count")?,
        },
        failure: a.get("failure").cloned(),
        restarts: match a.get("restarts") {
            Some(n) => n.parse().map_err(|_| MetadataError::Field("restarts"))?,
            None => 0,
        },
        swarm: swarm_node.flatten(),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    /// A record used by the XML tests.
    pub(crate) fn sample_record() -> SegmentRecord {
        SegmentRecord {
            request: SegmentRequest {
                id: SegmentId::parse("web-1").unwrap(),
                cluster: ClusterId::parse("cluster-7").unwrap(),
                flavor: Flavor {
                    memory_mib: 4096,
                    vcpus: 2,
                    disk_gib: 20,
                    pids: 4096,
                    network_mbit: 1000,
                },
                image: ImageName::parse("dev").unwrap(),
                labels: Labels::from([
                    ("team".to_owned(), "a&b <\"quoted\">".to_owned()),
                    ("tier".to_owned(), "web".to_owned()),
                ]),
                ca_cert_pem: None,
                swarm: None,
            },
            address: "203.0.113.10".parse().unwrap(),
            created_at: UNIX_EPOCH + Duration::new(1_795_000_000, 123_456_789),
            desired: Desired::Running,
            server_cert_not_after: None,
            ids: crate::idmap::IdRange {
                host_first: 1_000_000,
                count: 65_536,
            },
            failure: None,
            restarts: 0,
            swarm: None,
        }
    }

    #[test]
    fn times_are_written_as_they_always_were() {
        let t = UNIX_EPOCH + Duration::new(1_795_320_000, 1_500);
        assert_eq!(
            format_time(t, RFC3339_NANOS),
            "2026-11-22T04:00:00.000001500Z"
        );
        assert_eq!(format_time(t, RFC3339_SECONDS), "2026-11-22T04:00:00Z");
        assert_eq!(parse_time("2026-11-22T04:00:00.000001500Z"), Some(t));
        assert_eq!(
            parse_time("2026-11-22T04:00:00Z"),
            Some(t - Duration::from_nanos(1_500))
        );
        assert_eq!(parse_time("yesterday"), None);
    }

    #[test]
    fn round_trip() {
        let r = sample_record();
        assert_eq!(parse_record(&namespaced(&record_xml(&r))).unwrap(), r);
        assert!(
            !record_xml(&r).contains("xmlns"),
            "libvirt adds the namespace itself"
        );
        assert!(matches!(
            parse_record(&record_xml(&r)),
            Err(MetadataError::Missing)
        ));
        let mut docker = r.clone();
        let (ca_pem, _) =
            crate::certs::testing::generate_test_ca("meta", Duration::from_secs(3600)).unwrap();
        let der = pem::parse(&ca_pem).unwrap();
        docker.request.ca_cert_pem = Some(crate::certs::pem_encode("CERTIFICATE", der.contents()));
        docker.server_cert_not_after = Some(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
        assert_eq!(
            parse_record(&namespaced(&record_xml(&docker))).unwrap(),
            docker
        );
        let mut bare = r.clone();
        bare.request.labels.clear();
        bare.desired = Desired::Deleted;
        assert_eq!(parse_record(&namespaced(&record_xml(&bare))).unwrap(), bare);
        let mut node = r.clone();
        node.request.swarm = Some(SwarmSpec {
            mode: SwarmMode::JoinWorker,
            join_token: None,
            managers: vec![
                "203.0.113.1:2377".parse().unwrap(),
                "203.0.113.2:4000".parse().unwrap(),
            ],
        });
        assert_eq!(parse_record(&namespaced(&record_xml(&node))).unwrap(), node);
        node.swarm = Some(SwarmNode {
            node_id: "xk2qpzq1e5d0jm4yflnnn0ncq".into(),
            role: SwarmRole::Worker,
            worker_token: None,
            manager_token: None,
            managers: vec!["203.0.113.1:2377".parse().unwrap()],
        });
        node.request.labels.clear();
        assert_eq!(parse_record(&namespaced(&record_xml(&node))).unwrap(), node);
        let mut secret = node.clone();
        secret.request.swarm.as_mut().unwrap().join_token = Some("SWMTKN-1-secret".into());
        secret.swarm.as_mut().unwrap().worker_token = Some("SWMTKN-1-issued".into());
        assert!(
            !record_xml(&secret).contains("SWMTKN"),
            "no token in libvirt's XML"
        );
        let mut failed = r.clone();
        failed.failure = Some("Docker did not answer \"/_ping\" <&> in 60s".into());
        failed.restarts = 3;
        assert_eq!(
            parse_record(&namespaced(&record_xml(&failed))).unwrap(),
            failed
        );
    }

    #[test]
    fn reads_libvirts_rendering_and_ignores_unknown_fields() {
        // libvirt returns the element with its own prefix and may reorder
        // attributes; a future agent may add fields.
        let xml = r#"<domain><metadata><x:segment xmlns:x="https://segment-agent.dev/xmlns/segment/1"
            future="1" desired="stopped" id="a" cluster="b" image="dev" address="203.0.113.11"
            memory_mib="256" vcpus="1" created_at="2026-11-22T04:00:00Z" host_uid="1065536"
            uid_count="65536">
              <x:label key="k" value="v"/><x:extra><x:label key="z" value="nested"/></x:extra>
            </x:segment></metadata></domain>"#;
        let r = parse_record(xml).unwrap();
        assert_eq!(r.desired, Desired::Stopped);
        assert_eq!(r.request.flavor.memory_mib, 256);
        assert_eq!(r.request.labels.get("k").map(String::as_str), Some("v"));
        assert!(!r.request.labels.contains_key("z"));
        // A record from before disk, process and bandwidth caps: the values
        // such a segment runs with (no quota, 4096 processes, no cap).
        let f = r.request.flavor;
        assert_eq!((f.disk_gib, f.pids, f.network_mbit), (0, 4096, 0));
        let bad = namespaced(&record_xml(&sample_record())).replace("pids=\"4096\"", "pids=\"x\"");
        assert!(matches!(
            parse_record(&bad),
            Err(MetadataError::Field("pids"))
        ));
    }

    #[test]
    fn rejects_foreign_and_broken_records() {
        let foreign = r#"<segment xmlns="https://other.example/ns" id="a"/>"#;
        assert!(matches!(parse_record(foreign), Err(MetadataError::Missing)));
        let bad_id =
            namespaced(&record_xml(&sample_record())).replace("id=\"web-1\"", "id=\"../x\"");
        assert!(matches!(
            parse_record(&bad_id),
            Err(MetadataError::Field("id"))
        ));
        let no_addr = namespaced(&record_xml(&sample_record())).replace("address=", "addr=");
        assert!(matches!(
            parse_record(&no_addr),
            Err(MetadataError::Field("address"))
        ));
    }
}
