//! The real hypervisor: libvirtd through the `virt` bindings.

use super::{
    DomainEntry, DomainUsage, EventSink, HvError, Hypervisor, HypervisorVersion, InterfaceCounters,
    watch,
};
use crate::{
    model::DOMAIN_PREFIX,
    xml::{METADATA_PREFIX, METADATA_URI, MetadataError, metadata},
};
use std::{collections::HashSet, sync::Mutex};
use virt::{
    connect::Connect,
    domain::Domain,
    error::{Error as VirtError, ErrorDomain, ErrorNumber},
    sys,
};

pub use virt_log::route_errors_to_tracing;

/// A libvirt connection, reopened when libvirtd went away.
pub struct Libvirt {
    uri: String,
    conn: Mutex<Option<Connect>>,
    /// Where lifecycle events go, once [`Hypervisor::watch`] was called.
    sink: watch::SharedSink,
    watcher: std::sync::Once,
}

impl Libvirt {
    /// A hypervisor for `uri` (e.g. `lxc:///`); connects lazily.
    pub fn new(uri: impl Into<String>) -> Self {
        Self {
            uri: uri.into(),
            conn: Mutex::new(None),
            sink: Default::default(),
            watcher: std::sync::Once::new(),
        }
    }

    fn conn(&self) -> Result<Connect, HvError> {
        let mut cached = self.conn.lock().expect("libvirt connection lock");
        if let Some(c) = cached.as_ref()
            && c.is_alive().unwrap_or(false)
        {
            return Ok(c.clone());
        }
        let c = Connect::open(Some(&self.uri))
            .map_err(|e| HvError::Unavailable(format!("{}: {}", self.uri, e.message())))?;
        *cached = Some(c.clone());
        Ok(c)
    }

    /// Maps a libvirt error, dropping the connection when libvirtd went away.
    fn error(&self, op: &'static str, name: &str, e: VirtError) -> HvError {
        let code = e.code();
        if code.is_known_and(|c| c == ErrorNumber::NoDomain) {
            return HvError::NoDomain(name.to_owned());
        }
        // VIR_ERR_SYSTEM_ERROR is also any failed system call inside
        // libvirtd (a cgroup it could not create): only a dead connection
        // makes it "unavailable".
        let conn_dead = || {
            let cached = self.conn.lock().expect("libvirt connection lock");
            !cached
                .as_ref()
                .is_some_and(|c| c.is_alive().unwrap_or(false))
        };
        let lost = code.is_known_and(|c| c == ErrorNumber::NoConnect)
            || e.domain().is_known_and(|d| d == ErrorDomain::Rpc)
            || (code.is_known_and(|c| c == ErrorNumber::SystemError) && conn_dead());
        if lost {
            self.conn.lock().expect("libvirt connection lock").take();
            return HvError::Unavailable(e.message().to_owned());
        }
        HvError::Failed {
            op,
            name: name.to_owned(),
            message: e.message().to_owned(),
        }
    }

    fn domain(&self, op: &'static str, name: &str) -> Result<Domain, HvError> {
        let conn = self.conn()?;
        conn.lookup_domain_by_name(name)
            .map_err(|e| self.error(op, name, e))
    }

    fn entry(&self, dom: &Domain, name: String) -> Result<DomainEntry, HvError> {
        let running = dom.is_active().map_err(|e| self.error("list", &name, e))?;
        let record = match dom.metadata(
            sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
            Some(METADATA_URI),
            sys::VIR_DOMAIN_AFFECT_CONFIG,
        ) {
            // libvirt returns the element bare, without its namespace.
            Ok(xml) => metadata::parse_record(&metadata::namespaced(&xml)),
            Err(e)
                if e.code()
                    .is_known_and(|c| c == ErrorNumber::NoDomainMetadata) =>
            {
                Err(MetadataError::Missing)
            }
            Err(e) => return Err(self.error("list", &name, e)),
        };
        Ok(DomainEntry {
            name,
            running,
            record,
        })
    }
}

impl Hypervisor for Libvirt {
    fn list_segments(&self) -> Result<Vec<DomainEntry>, HvError> {
        let conn = self.conn()?;
        let domains = conn
            .list_all_domains(0)
            .map_err(|e| self.error("list", "host", e))?;
        let mut out = Vec::new();
        for dom in domains {
            let Ok(name) = dom.name() else { continue };
            if name.starts_with(DOMAIN_PREFIX) {
                match self.entry(&dom, name) {
                    Ok(entry) => out.push(entry),
                    // Undefined between the listing and the lookup.
                    Err(HvError::NoDomain(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(out)
    }

    fn running(&self) -> Result<HashSet<String>, HvError> {
        let conn = self.conn()?;
        let domains = conn
            .list_all_domains(sys::VIR_CONNECT_LIST_DOMAINS_ACTIVE)
            .map_err(|e| self.error("list", "host", e))?;
        Ok(domains.iter().filter_map(|d| d.name().ok()).collect())
    }

    fn is_running(&self, name: &str) -> Result<bool, HvError> {
        let dom = self.domain("lookup", name)?;
        dom.is_active().map_err(|e| self.error("lookup", name, e))
    }

    fn define(&self, xml: &str) -> Result<(), HvError> {
        let conn = self.conn()?;
        conn.define_domain_xml(xml)
            .map(drop)
            .map_err(|e| self.error("define", "domain", e))
    }

    fn start(&self, name: &str) -> Result<(), HvError> {
        let dom = self.domain("start", name)?;
        dom.create().map_err(|e| self.error("start", name, e))
    }

    fn shutdown(&self, name: &str) -> Result<(), HvError> {
        let dom = self.domain("shutdown", name)?;
        dom.shutdown_flags(sys::VIR_DOMAIN_SHUTDOWN_SIGNAL)
            .map_err(|e| self.error("shutdown", name, e))
    }

    fn destroy(&self, name: &str) -> Result<(), HvError> {
        let dom = self.domain("destroy", name)?;
        if !dom
            .is_active()
            .map_err(|e| self.error("destroy", name, e))?
        {
            return Ok(());
        }
        match dom.destroy() {
            Ok(()) => Ok(()),
            // It stopped on its own in the meantime: libvirt then fails in
            // whatever step it had reached (OperationInvalid, or reading a
            // cgroup the kernel already removed). What the caller wants, a
            // domain that does not run, holds either way.
            Err(_) if dom.is_active().is_ok_and(|active| !active) => Ok(()),
            Err(e) => Err(self.error("destroy", name, e)),
        }
    }

    fn undefine(&self, name: &str) -> Result<(), HvError> {
        match self.domain("undefine", name) {
            Ok(dom) => dom.undefine().map_err(|e| self.error("undefine", name, e)),
            Err(HvError::NoDomain(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn set_record(&self, name: &str, record_xml: &str) -> Result<(), HvError> {
        let dom = self.domain("set metadata", name)?;
        let live = dom
            .is_active()
            .map_err(|e| self.error("set metadata", name, e))?;
        let mut flags = sys::VIR_DOMAIN_AFFECT_CONFIG;
        if live {
            flags |= sys::VIR_DOMAIN_AFFECT_LIVE;
        }
        dom.set_metadata(
            sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
            Some(record_xml),
            Some(METADATA_PREFIX),
            Some(METADATA_URI),
            flags,
        )
        .map_err(|e| self.error("set metadata", name, e))
    }

    fn usage(&self, name: &str, interface: &str) -> Result<DomainUsage, HvError> {
        let dom = self.domain("usage", name)?;
        // The LXC driver reads these from the segment's cgroup: memory is
        // the current usage in KiB, cpu_time in ns.
        let info = dom.info().map_err(|e| self.error("usage", name, e))?;
        // The LXC driver finds the interface by MAC and swaps the host
        // veth's counters, so rx is what the segment received.
        let network = dom
            .interface_stats(interface)
            .ok()
            .map(|s| InterfaceCounters {
                rx_bytes: u64::try_from(s.rx_bytes).unwrap_or(0),
                tx_bytes: u64::try_from(s.tx_bytes).unwrap_or(0),
            });
        Ok(DomainUsage {
            memory_used_bytes: info.memory * 1024,
            cpu_time_ns: info.cpu_time,
            network,
            controller_pid: dom.id(),
        })
    }

    fn init_pid(&self, name: &str) -> Result<u32, HvError> {
        let dom = self.domain("init pid", name)?;
        // An LXC domain's id is the PID of its libvirt_lxc controller; the
        // container's init is the controller's only child.
        let controller = dom.id().ok_or_else(|| HvError::Failed {
            op: "init pid",
            name: name.to_owned(),
            message: "domain is not running".into(),
        })?;
        let children = format!("/proc/{controller}/task/{controller}/children");
        std::fs::read_to_string(&children)
            .ok()
            .and_then(|c| c.split_whitespace().next().and_then(|p| p.parse().ok()))
            .ok_or_else(|| HvError::Failed {
                op: "init pid",
                name: name.to_owned(),
                message: format!("no init process under controller {controller} ({children})"),
            })
    }

    fn version(&self) -> Result<HypervisorVersion, HvError> {
        let conn = self.conn()?;
        let v = conn
            .lib_version()
            .map_err(|e| self.error("version", "host", e))?;
        Ok(HypervisorVersion {
            libvirt: format!("{}.{}.{}", v / 1_000_000, (v / 1000) % 1000, v % 1000),
        })
    }

    fn watch(&self, sink: EventSink) {
        *self.sink.lock().expect("event sink lock") = Some(sink);
        self.watcher
            .call_once(|| watch::spawn(self.uri.clone(), self.sink.clone()));
    }
}

#[cfg(test)]
mod tests {
    use virt::error::ErrorNumber;

    /// Real libvirt errors, from its in-process test driver.
    #[test]
    fn libvirt_errors_are_logged_at_their_level() {
        super::route_errors_to_tracing();
        let conn = virt::connect::Connect::open(Some("test:///default")).unwrap();
        let missing = conn.lookup_domain_by_name("no-such-domain").unwrap_err();
        assert!(
            missing.code().is_known_and(|c| c == ErrorNumber::NoDomain),
            "{missing}"
        );
        assert_eq!(virt_log::level_of(&missing), tracing::Level::DEBUG);
        let bad = conn
            .define_domain_xml("<domain type='test'><name>x</name>")
            .unwrap_err();
        assert_eq!(virt_log::level_of(&bad), tracing::Level::WARN, "{bad}");
    }
}
