//! An in-memory hypervisor for fast tests: domains are XML strings,
//! failures and delays can be injected per operation, requests can be
//! limited like libvirtd's per client, and lifecycle events are emitted
//! like libvirt's (or lost, on request).

use super::{
    DomainEntry, DomainUsage, EventSink, HvError, HvEvent, Hypervisor, HypervisorVersion,
    InterfaceCounters,
};
use crate::{model::DOMAIN_PREFIX, xml::metadata};
use std::{
    collections::{BTreeMap, HashSet},
    sync::{Condvar, Mutex},
};

#[derive(Debug, Default)]
struct State {
    domains: BTreeMap<String, FakeDomain>,
    fail: HashSet<&'static str>,
    slow: Option<(&'static str, std::time::Duration)>,
    down: bool,
    ignore_shutdown: bool,
    calls: Vec<String>,
    usage: BTreeMap<String, u64>,
    /// At most this many calls at once (libvirtd's `max_client_requests`).
    limit: Option<usize>,
    in_flight: usize,
    /// Events not yet delivered (sent once the state lock is released).
    pending: Vec<HvEvent>,
    /// Domain events are lost (a libvirtd that sends none).
    muted: bool,
}

impl State {
    /// Queues a domain event; lost while muted or while libvirtd is down
    /// (no connection to carry it).
    fn emit(&mut self, name: &str, running: bool) {
        if !self.muted && !self.down {
            self.pending.push(HvEvent::Domain {
                name: name.to_owned(),
                running,
            });
        }
    }
}

#[derive(Debug, Clone)]
struct FakeDomain {
    xml: String,
    record_xml: Option<String>,
    running: bool,
}

/// The init PID of every running fake domain: above Linux's PID_MAX_LIMIT
/// (4194304), so no process ever has it.
pub const FAKE_INIT_PID: u32 = 4_194_404;

/// A hypervisor that keeps domains in memory.
#[derive(Default)]
pub struct FakeHypervisor {
    state: Mutex<State>,
    /// Signalled when a limited request slot frees up.
    freed: Condvar,
    sink: Mutex<Option<EventSink>>,
}

impl std::fmt::Debug for FakeHypervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeHypervisor")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

fn domain_name(xml: &str) -> Option<String> {
    let start = xml.find("<name>")? + "<name>".len();
    let end = xml[start..].find("</name>")? + start;
    Some(xml[start..end].to_owned())
}

impl FakeHypervisor {
    /// An empty fake.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every later call of `op` ("define", "start", ...) fail.
    pub fn fail_on(&self, op: &'static str) {
        self.state.lock().unwrap().fail.insert(op);
    }

    /// Makes every later call of `op` take `delay` (on the blocking pool).
    pub fn slow_on(&self, op: &'static str, delay: std::time::Duration) {
        self.state.lock().unwrap().slow = Some((op, delay));
    }

    /// Simulates libvirtd going down (true) or coming back (false).
    pub fn set_down(&self, down: bool) {
        let mut s = self.state.lock().unwrap();
        s.down = down;
        s.pending.push(match down {
            true => HvEvent::Disconnected,
            false => HvEvent::Connected,
        });
        drop(s);
        self.deliver();
    }

    /// At most `n` calls run at once, the others wait (libvirtd serves
    /// `max_client_requests`, 5 by default, per connection); a slow call
    /// ([`Self::slow_on`]) holds its slot while it sleeps.
    pub fn limit_requests(&self, n: usize) {
        self.state.lock().unwrap().limit = Some(n);
    }

    /// Loses every later domain event (true), as when libvirtd sends none,
    /// or delivers them again (false).
    pub fn mute_events(&self, muted: bool) {
        self.state.lock().unwrap().muted = muted;
    }

    /// Sends what is pending to the watcher, outside the state lock.
    fn deliver(&self) {
        let pending = std::mem::take(&mut self.state.lock().unwrap().pending);
        if let Some(sink) = self.sink.lock().unwrap().as_ref() {
            pending.into_iter().for_each(sink);
        }
    }

    /// The operations called so far, as "op name".
    pub fn calls(&self) -> Vec<String> {
        self.state.lock().unwrap().calls.clone()
    }

    /// The current XML of a domain.
    pub fn domain_xml(&self, name: &str) -> Option<String> {
        self.state
            .lock()
            .unwrap()
            .domains
            .get(name)
            .map(|d| d.xml.clone())
    }

    /// Makes domains ignore graceful shutdown requests (an init without a
    /// SIGTERM handler), so only a forced stop ends them.
    pub fn ignore_shutdown(&self) {
        self.state.lock().unwrap().ignore_shutdown = true;
    }

    /// Sets the memory a domain reports as used.
    pub fn set_memory_used(&self, name: &str, bytes: u64) {
        self.state
            .lock()
            .unwrap()
            .usage
            .insert(name.to_owned(), bytes);
    }

    /// Defines a running domain the agent did not make (no record).
    pub fn define_foreign(&self, name: &str) {
        let xml = format!("<domain type='lxc'><name>{name}</name><uuid>foreign</uuid></domain>");
        let d = FakeDomain {
            xml,
            record_xml: None,
            running: true,
        };
        self.state
            .lock()
            .unwrap()
            .domains
            .insert(name.to_owned(), d);
    }

    /// Stops a domain behind the agent's back (as a crash would).
    pub fn crash(&self, name: &str) {
        let mut s = self.state.lock().unwrap();
        if let Some(d) = s.domains.get_mut(name)
            && std::mem::replace(&mut d.running, false)
        {
            s.emit(name, false);
        }
        drop(s);
        self.deliver();
    }

    fn with<T>(
        &self,
        op: &'static str,
        name: &str,
        f: impl FnOnce(&mut State) -> Result<T, HvError>,
    ) -> Result<T, HvError> {
        let slow = self.acquire();
        if let Some((slow_op, delay)) = slow
            && slow_op == op
        {
            // Outside the lock, as a slow libvirtd call would be.
            std::thread::sleep(delay);
        }
        let result = self.call(op, name, f);
        self.release();
        self.deliver();
        result
    }

    /// Waits for a request slot when requests are limited; returns the
    /// slow operation, if any.
    fn acquire(&self) -> Option<(&'static str, std::time::Duration)> {
        let mut s = self.state.lock().unwrap();
        while s.limit.is_some_and(|n| s.in_flight >= n) {
            s = self.freed.wait(s).unwrap();
        }
        s.in_flight += 1;
        s.slow
    }

    fn release(&self) {
        self.state.lock().unwrap().in_flight -= 1;
        self.freed.notify_one();
    }

    fn call<T>(
        &self,
        op: &'static str,
        name: &str,
        f: impl FnOnce(&mut State) -> Result<T, HvError>,
    ) -> Result<T, HvError> {
        let mut s = self.state.lock().unwrap();
        if s.down {
            return Err(HvError::Unavailable("fake libvirtd is down".into()));
        }
        s.calls.push(format!("{op} {name}"));
        if s.fail.contains(op) {
            return Err(HvError::Failed {
                op,
                name: name.to_owned(),
                message: "injected failure".into(),
            });
        }
        f(&mut s)
    }

    fn domain<'a>(s: &'a mut State, name: &str) -> Result<&'a mut FakeDomain, HvError> {
        s.domains
            .get_mut(name)
            .ok_or_else(|| HvError::NoDomain(name.to_owned()))
    }
}

impl Hypervisor for FakeHypervisor {
    fn list_segments(&self) -> Result<Vec<DomainEntry>, HvError> {
        self.with("list", "host", |s| {
            Ok(s.domains
                .iter()
                .filter(|(n, _)| n.starts_with(DOMAIN_PREFIX))
                .map(|(name, d)| DomainEntry {
                    name: name.clone(),
                    running: d.running,
                    record: match &d.record_xml {
                        Some(bare) => metadata::parse_record(&metadata::namespaced(bare)),
                        None => metadata::parse_record(&d.xml),
                    },
                })
                .collect())
        })
    }

    fn running(&self) -> Result<HashSet<String>, HvError> {
        self.with("running", "host", |s| {
            Ok(s.domains
                .iter()
                .filter(|(_, d)| d.running)
                .map(|(n, _)| n.clone())
                .collect())
        })
    }

    fn is_running(&self, name: &str) -> Result<bool, HvError> {
        self.with("is_running", name, |s| Ok(Self::domain(s, name)?.running))
    }

    fn define(&self, xml: &str) -> Result<(), HvError> {
        let name = domain_name(xml).unwrap_or_default();
        self.with("define", &name.clone(), |s| {
            let uuid = |x: &str| {
                x.split("<uuid>")
                    .nth(1)
                    .and_then(|u| u.split("</uuid>").next())
                    .map(str::to_owned)
            };
            if let Some(old) = s.domains.get(&name)
                && uuid(&old.xml) != uuid(xml)
            {
                return Err(HvError::Failed {
                    op: "define",
                    name: name.clone(),
                    message: format!("domain '{name}' already exists with another uuid"),
                });
            }
            let running = s.domains.get(&name).is_some_and(|d| d.running);
            let d = FakeDomain {
                xml: xml.to_owned(),
                record_xml: None,
                running,
            };
            s.domains.insert(name, d);
            Ok(())
        })
    }

    fn start(&self, name: &str) -> Result<(), HvError> {
        self.with("start", name, |s| {
            let d = Self::domain(s, name)?;
            if d.running {
                return Err(HvError::Failed {
                    op: "start",
                    name: name.to_owned(),
                    message: "domain is already running".into(),
                });
            }
            d.running = true;
            s.emit(name, true);
            Ok(())
        })
    }

    fn shutdown(&self, name: &str) -> Result<(), HvError> {
        self.with("shutdown", name, |s| {
            let ignore = s.ignore_shutdown;
            let d = Self::domain(s, name)?;
            let was = d.running;
            d.running = d.running && ignore;
            if was && !d.running {
                s.emit(name, false);
            }
            Ok(())
        })
    }

    fn destroy(&self, name: &str) -> Result<(), HvError> {
        self.with("destroy", name, |s| {
            if std::mem::replace(&mut Self::domain(s, name)?.running, false) {
                s.emit(name, false);
            }
            Ok(())
        })
    }

    fn undefine(&self, name: &str) -> Result<(), HvError> {
        self.with("undefine", name, |s| {
            if s.domains.remove(name).is_some() {
                s.emit(name, false);
            }
            Ok(())
        })
    }

    fn set_record(&self, name: &str, record_xml: &str) -> Result<(), HvError> {
        self.with("set_record", name, |s| {
            Self::domain(s, name)?.record_xml = Some(record_xml.to_owned());
            Ok(())
        })
    }

    fn usage(&self, name: &str, interface: &str) -> Result<DomainUsage, HvError> {
        self.with("usage", name, |s| {
            let used = s.usage.get(name).copied().unwrap_or(0);
            let d = Self::domain(s, name)?;
            // Like libvirt, the interface is found by the MAC in the XML.
            let network = d
                .xml
                .contains(&format!("<mac address=\"{interface}\""))
                .then_some(InterfaceCounters {
                    rx_bytes: used / 2,
                    tx_bytes: used / 4,
                });
            Ok(DomainUsage {
                memory_used_bytes: used,
                cpu_time_ns: used / 1024,
                network,
                // No process stands behind a fake domain.
                controller_pid: None,
            })
        })
    }

    fn init_pid(&self, name: &str) -> Result<u32, HvError> {
        self.with("init_pid", name, |s| {
            let d = Self::domain(s, name)?;
            match d.running {
                // No real process stands behind a fake domain: a PID above
                // the kernel's limit, so a signal to it reaches nobody.
                true => Ok(FAKE_INIT_PID),
                false => Err(HvError::Failed {
                    op: "init pid",
                    name: name.to_owned(),
                    message: "domain is not running".into(),
                }),
            }
        })
    }

    fn version(&self) -> Result<HypervisorVersion, HvError> {
        self.with("version", "host", |_| {
            Ok(HypervisorVersion {
                libvirt: "fake".into(),
            })
        })
    }

    fn watch(&self, sink: EventSink) {
        *self.sink.lock().unwrap() = Some(sink);
        let mut s = self.state.lock().unwrap();
        let now = match s.down {
            true => HvEvent::Disconnected,
            false => HvEvent::Connected,
        };
        s.pending.push(now);
        drop(s);
        self.deliver();
    }
}
