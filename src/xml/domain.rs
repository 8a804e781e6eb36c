//! The libvirt LXC domain of a segment.

use super::{XmlWriter, metadata, render, text_element};
use crate::model::SegmentRecord;
use std::{io, net::Ipv4Addr, path::PathBuf};

/// A host directory bind-mounted into the segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilesystemMount {
    /// Directory on the host (in libvirtd's mount namespace).
    pub source: PathBuf,
    /// Where it appears inside the segment; `/` is the root filesystem.
    pub target: String,
    /// Mounted read-only.
    pub readonly: bool,
}

/// The segment's one network interface, configured by libvirt inside the
/// container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkInterface {
    /// Host bridge the veth pair is attached to.
    pub bridge: String,
    /// The segment's public address.
    pub address: Ipv4Addr,
    /// Prefix length of the bridge's network.
    pub prefix: u8,
    /// Default gateway.
    pub gateway: Ipv4Addr,
    /// Name of the host-side veth (`<target dev>`), the one the bridge
    /// filter's rules name; `None` lets libvirt pick one (unfiltered).
    pub port: Option<String>,
}

impl NetworkInterface {
    /// A MAC derived from the address (`02:00` + its four bytes): a new
    /// segment on a reused address keeps the old MAC, so neighbours' ARP
    /// caches stay right and it is reachable at once.
    pub fn mac(&self) -> String {
        crate::network::filter::mac_text(crate::network::filter::mac_of(self.address))
    }
}

/// Everything that goes into a segment's domain XML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainSpec {
    /// `seg-<segment_id>`.
    pub name: String,
    /// Stable UUID; lets libvirt redefine the domain in place.
    pub uuid: String,
    /// Hard memory limit in KiB (cgroup `memory.limit_in_bytes`).
    pub memory_kib: u64,
    /// vCPUs, also used for the CFS quota.
    pub vcpus: u32,
    /// CFS period in microseconds; quota = vcpus x period.
    pub cpu_period_us: u64,
    /// Block I/O weight (`<blkiotune><weight>`, 100..=1000).
    pub io_weight: u32,
    /// The init program inside the segment.
    pub init: String,
    /// The host ids the segment's user namespace maps its `0..count` to.
    pub idmap: crate::idmap::IdRange,
    /// Filesystems, the root (`/`) first.
    pub filesystems: Vec<FilesystemMount>,
    /// The network interface.
    pub interface: NetworkInterface,
    /// Host character devices the segment may use (runc adds `/dev/console`
    /// and `/dev/net/tun` to every container's devices cgroup, which must be
    /// allowed to the segment first).
    pub char_devices: Vec<String>,
    /// AppArmor profile confining the segment; `None` runs it unconfined.
    pub apparmor_profile: Option<String>,
    /// The agent's record, stored in `<metadata>`.
    pub record: SegmentRecord,
}

impl DomainSpec {
    /// The CFS quota in microseconds per period.
    pub fn cpu_quota_us(&self) -> u64 {
        self.cpu_period_us * u64::from(self.vcpus)
    }

    /// Renders the domain XML.
    pub fn to_xml(&self) -> String {
        render(|w| {
            w.create_element("domain")
                .with_attribute(("type", "lxc"))
                .write_inner_content(|w| self.write_body(w))?;
            Ok(())
        })
    }

    fn write_body(&self, w: &mut XmlWriter) -> io::Result<()> {
        text_element(w, "name", &self.name)?;
        text_element(w, "uuid", &self.uuid)?;
        w.create_element("metadata")
            .write_inner_content(|w| metadata::write_record(w, &self.record))?;
        w.create_element("memory")
            .with_attribute(("unit", "KiB"))
            .write_text_content(quick_xml::events::BytesText::new(
                &self.memory_kib.to_string(),
            ))?;
        text_element(w, "vcpu", &self.vcpus.to_string())?;
        w.create_element("cputune").write_inner_content(|w| {
            text_element(w, "period", &self.cpu_period_us.to_string())?;
            text_element(w, "quota", &self.cpu_quota_us().to_string())
        })?;
        w.create_element("blkiotune")
            .write_inner_content(|w| text_element(w, "weight", &self.io_weight.to_string()))?;
        w.create_element("os").write_inner_content(|w| {
            text_element(w, "type", "exe")?;
            text_element(w, "init", &self.init)
        })?;
        // A user namespace: root inside is an unprivileged host uid.
        let (target, count) = (
            self.idmap.host_first.to_string(),
            self.idmap.count.to_string(),
        );
        w.create_element("idmap").write_inner_content(|w| {
            for kind in ["uid", "gid"] {
                w.create_element(kind)
                    .with_attribute(("start", "0"))
                    .with_attribute(("target", target.as_str()))
                    .with_attribute(("count", count.as_str()))
                    .write_empty()?;
            }
            Ok(())
        })?;
        // runc inside the segment needs mknod, else every `docker run` fails
        // with "unable to apply caps".
        w.create_element("features").write_inner_content(|w| {
            w.create_element("capabilities")
                .with_attribute(("policy", "default"))
                .write_inner_content(|w| {
                    w.create_element("mknod")
                        .with_attribute(("state", "on"))
                        .write_empty()?;
                    Ok(())
                })?;
            Ok(())
        })?;
        w.create_element("clock")
            .with_attribute(("offset", "utc"))
            .write_empty()?;
        text_element(w, "on_poweroff", "destroy")?;
        text_element(w, "on_reboot", "restart")?;
        text_element(w, "on_crash", "destroy")?;
        w.create_element("devices")
            .write_inner_content(|w| self.write_devices(w))?;
        self.write_seclabel(w)
    }

    fn write_devices(&self, w: &mut XmlWriter) -> io::Result<()> {
        for fs in &self.filesystems {
            w.create_element("filesystem")
                .with_attribute(("type", "mount"))
                .with_attribute(("accessmode", "passthrough"))
                .write_inner_content(|w| {
                    w.create_element("source")
                        .with_attribute(("dir", fs.source.to_string_lossy().as_ref()))
                        .write_empty()?;
                    w.create_element("target")
                        .with_attribute(("dir", fs.target.as_str()))
                        .write_empty()?;
                    if fs.readonly {
                        w.create_element("readonly").write_empty()?;
                    }
                    Ok(())
                })?;
        }
        let nic = &self.interface;
        w.create_element("interface")
            .with_attribute(("type", "bridge"))
            .write_inner_content(|w| {
                w.create_element("mac")
                    .with_attribute(("address", nic.mac().as_str()))
                    .write_empty()?;
                w.create_element("source")
                    .with_attribute(("bridge", nic.bridge.as_str()))
                    .write_empty()?;
                w.create_element("ip")
                    .with_attribute(("address", nic.address.to_string().as_str()))
                    .with_attribute(("family", "ipv4"))
                    .with_attribute(("prefix", nic.prefix.to_string().as_str()))
                    .write_empty()?;
                w.create_element("route")
                    .with_attribute(("family", "ipv4"))
                    .with_attribute(("address", "0.0.0.0"))
                    .with_attribute(("prefix", "0"))
                    .with_attribute(("gateway", nic.gateway.to_string().as_str()))
                    .write_empty()?;
                if let Some(port) = &nic.port {
                    w.create_element("target")
                        .with_attribute(("dev", port.as_str()))
                        .write_empty()?;
                }
                Ok(())
            })?;
        for dev in &self.char_devices {
            w.create_element("hostdev")
                .with_attribute(("mode", "capabilities"))
                .with_attribute(("type", "misc"))
                .write_inner_content(|w| {
                    w.create_element("source")
                        .write_inner_content(|w| text_element(w, "char", dev))?;
                    Ok(())
                })?;
        }
        w.create_element("console")
            .with_attribute(("type", "pty"))
            .write_empty()?;
        Ok(())
    }

    /// A confined segment gets a dynamic label: libvirt's AppArmor driver
    /// always moves the domain to `libvirt-<uuid>` (a static label's name is
    /// never used) and generates that profile only for dynamic labels, from
    /// the agent's trampoline template, which executes the init under
    /// `apparmor_profile` (see `crate::apparmor`).
    fn write_seclabel(&self, w: &mut XmlWriter) -> io::Result<()> {
        match &self.apparmor_profile {
            Some(_) => {
                w.create_element("seclabel")
                    .with_attribute(("type", "dynamic"))
                    .with_attribute(("model", "apparmor"))
                    .with_attribute(("relabel", "yes"))
                    .write_empty()?;
            }
            None => {
                w.create_element("seclabel")
                    .with_attribute(("type", "none"))
                    .write_empty()?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::metadata::{parse_record, tests::sample_record};

    fn spec(apparmor: Option<&str>) -> DomainSpec {
        DomainSpec {
            name: "seg-web-1".into(),
            uuid: "6f1c1d3e-9d7c-4a53-9d0e-1b1f3f0c2a11".into(),
            memory_kib: 4 * 1024 * 1024,
            vcpus: 2,
            cpu_period_us: 100_000,
            io_weight: 100,
            init: "/sbin/init".into(),
            idmap: crate::idmap::IdRange {
                host_first: 1_000_000,
                count: 65_536,
            },
            filesystems: vec![FilesystemMount {
                source: "/var/lib/segment-agent/segments/web-1/rootfs".into(),
                target: "/".into(),
                readonly: false,
            }],
            interface: NetworkInterface {
                bridge: "segbr0".into(),
                address: "203.0.113.10".parse().unwrap(),
                prefix: 24,
                gateway: "203.0.113.1".parse().unwrap(),
                port: None,
            },
            char_devices: Vec::new(),
            apparmor_profile: apparmor.map(str::to_owned),
            record: sample_record(),
        }
    }

    /// Set UPDATE_GOLDEN=1 to rewrite the golden files after a deliberate change.
    fn golden(name: &str, actual: &str) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden")
            .join(name);
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, actual).unwrap();
        }
        let expected = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            actual,
            expected,
            "{} differs; UPDATE_GOLDEN=1 rewrites it",
            path.display()
        );
    }

    #[test]
    fn default_flavor_domain_matches_golden_file() {
        let s = spec(None);
        assert_eq!(s.cpu_quota_us(), 200_000);
        golden("segment-domain.xml", &s.to_xml());
    }

    #[test]
    fn confined_domain_matches_golden_file() {
        golden(
            "segment-domain-apparmor.xml",
            &spec(Some("segment-agent-segment")).to_xml(),
        );
    }

    #[test]
    fn docker_segment_matches_golden_file() {
        let mut s = spec(Some("segment-agent-segment"));
        let base = std::path::Path::new("/var/lib/segment-agent/segments/web-1");
        for (dir, target, readonly) in [
            ("docker", "/var/lib/docker", false),
            ("etc-docker", "/etc/docker", false),
        ] {
            s.filesystems.push(FilesystemMount {
                source: base.join(dir),
                target: target.into(),
                readonly,
            });
        }
        s.filesystems.push(FilesystemMount {
            source: "/usr/local/lib/segment-agent".into(),
            target: "/opt/segment-agent".into(),
            readonly: true,
        });
        s.char_devices = vec!["/dev/net/tun".into(), "/dev/console".into()];
        golden("segment-domain-docker.xml", &s.to_xml());
    }

    #[test]
    fn a_filtered_interface_names_its_port() {
        let mut s = spec(Some("segment-agent-segment"));
        let port = crate::network::filter::SegmentPort::of(s.interface.address);
        s.interface.port = Some(port.name);
        golden("segment-domain-filtered.xml", &s.to_xml());
    }

    #[test]
    fn mac_follows_the_address() {
        assert_eq!(spec(None).interface.mac(), "02:00:cb:00:71:0a");
    }

    #[test]
    fn metadata_survives_the_domain_xml() {
        let s = spec(None);
        assert_eq!(parse_record(&s.to_xml()).unwrap(), s.record);
    }

    #[test]
    fn hostile_values_are_escaped() {
        let mut s = spec(None);
        s.record
            .request
            .labels
            .insert("x".into(), "</sa:segment><devices>".into());
        let xml = s.to_xml();
        assert!(!xml.contains("</sa:segment><devices>"));
        assert_eq!(parse_record(&xml).unwrap(), s.record);
    }
}
