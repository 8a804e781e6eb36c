//! The agent's record of a segment inside the domain's `<metadata>`, under the
//! agent's own XML namespace. libvirt keeps it with the domain, so the agent
//! rebuilds its whole view from libvirt after a restart.
//!
//! ```xml
//! <sa:segment xmlns:sa="https://segment-agent.dev/xmlns/segment/1" id="web-1"
//!     cluster="c1" image="dev" address="203.0.113.10" memory_mib="4096"
//!     vcpus="2" created_at="2026-11-22T04:00:00.000000000Z" desired="running">
//!   <sa:label key="team" value="web"/>
//! </sa:segment>
//! ```
//! Values live in attributes so the reader never has to reassemble text split
//! around entities; unknown attributes and elements are ignored, so a newer
//! agent's record still reads.

use super::XmlWriter;
use crate::segment::spec::{
    ClusterId, Desired, Flavor, ImageName, Labels, SegmentId, SegmentRecord, SegmentRequest,
};
use quick_xml::{
    NsReader,
    events::{BytesStart, Event},
    name::ResolveResult,
};
use std::{collections::HashMap, io, time::SystemTime};

/// The agent's metadata namespace.
pub const METADATA_URI: &str = "https://segment-agent.dev/xmlns/segment/1";
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
    let created = humantime::format_rfc3339_nanos(r.created_at).to_string();
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
        .map(|t| humantime::format_rfc3339(t).to_string());
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
    if q.labels.is_empty() {
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
        Ok(())
    })?;
    Ok(())
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
                return record_from(&attrs, read_labels(&mut reader)?);
            }
            Event::Empty(e) if ours && e.local_name().as_ref() == b"segment" => {
                return record_from(&attributes(&e)?, Labels::new());
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

fn read_labels(reader: &mut NsReader<&[u8]>) -> Result<Labels, MetadataError> {
    let mut labels = Labels::new();
    // Labels are direct children; anything nested deeper is a future field.
    let mut depth = 0usize;
    loop {
        match reader.read_event()? {
            Event::Empty(e) if depth == 0 && e.local_name().as_ref() == b"label" => {
                let a = attributes(&e)?;
                let key = a.get("key").ok_or(MetadataError::Field("label.key"))?;
                labels.insert(key.clone(), a.get("value").cloned().unwrap_or_default());
            }
            Event::Start(_) => depth += 1,
            Event::End(_) if depth == 0 => return Ok(labels),
            Event::End(_) => depth -= 1,
            Event::Eof => return Err(MetadataError::Missing),
            _ => {}
        }
    }
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
    Some(crate::docker::canonical_pem(&der))
}

fn record_from(
    a: &HashMap<String, String>,
    labels: Labels,
) -> Result<SegmentRecord, MetadataError> {
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
    let request = SegmentRequest {
        id: SegmentId::parse(field(a, "id")?).map_err(|_| MetadataError::Field("id"))?,
        cluster: ClusterId::parse(field(a, "cluster")?)
            .map_err(|_| MetadataError::Field("cluster"))?,
        flavor: Flavor {
            memory_mib: parsed(a, "memory_mib")?,
            vcpus: parsed(a, "vcpus")?,
        },
        image: ImageName::parse(field(a, "image")?).map_err(|_| MetadataError::Field("image"))?,
        labels,
        ca_cert_pem: match a.get("ca") {
            Some(b64) => Some(base64_der_to_pem(b64).ok_or(MetadataError::Field("ca"))?),
            None => None,
        },
    };
    let server_cert_not_after = match a.get("cert_not_after") {
        Some(t) => {
            Some(humantime::parse_rfc3339(t).map_err(|_| MetadataError::Field("cert_not_after"))?)
        }
        None => None,
    };
    let created_at: SystemTime = humantime::parse_rfc3339(field(a, "created_at")?)
        .map_err(|_| MetadataError::Field("created_at"))?;
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
                },
                image: ImageName::parse("dev").unwrap(),
                labels: Labels::from([
                    ("team".to_owned(), "a&b <\"quoted\">".to_owned()),
                    ("tier".to_owned(), "web".to_owned()),
                ]),
                ca_cert_pem: None,
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
        }
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
            crate::certs::generate_test_ca("meta", Duration::from_secs(3600)).unwrap();
        let der = pem::parse(&ca_pem).unwrap();
        docker.request.ca_cert_pem = Some(crate::docker::canonical_pem(der.contents()));
        docker.server_cert_not_after = Some(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
        assert_eq!(
            parse_record(&namespaced(&record_xml(&docker))).unwrap(),
            docker
        );
        let mut bare = r.clone();
        bare.request.labels.clear();
        bare.desired = Desired::Deleted;
        assert_eq!(parse_record(&namespaced(&record_xml(&bare))).unwrap(), bare);
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
