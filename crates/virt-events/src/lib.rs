//! libvirt's domain lifecycle events and its connection-close notice, for
//! a [`virt::connect::Connect`]. The `virt` crate binds libvirt's event loop
//! but not `virConnectDomainEventRegisterAny` nor
//! `virConnectRegisterCloseCallback`; this crate holds those few unsafe
//! calls so the agent itself stays free of `unsafe`.
//!
//! libvirt delivers events from its event loop: [`start_event_loop`] must
//! run before the connection that subscribes is opened (the remote driver
//! registers its socket, and its keepalive, with the loop at open time).
//! Callbacks run on the loop's thread: they must not block.

use std::{
    ffi::{CStr, c_int, c_void},
    sync::Once,
};
use virt::{connect::Connect, error::Error, sys};

/// A domain lifecycle event: the domain's name, libvirt's event type
/// (`VIR_DOMAIN_EVENT_STARTED`, `..._STOPPED`, ...) and its detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lifecycle {
    /// The domain.
    pub domain: String,
    /// `virDomainEventType`.
    pub event: u32,
    /// The event type's detail (e.g. `VIR_DOMAIN_EVENT_STOPPED_DESTROYED`).
    pub detail: i32,
}

impl Lifecycle {
    /// Whether the domain is active after this event: `Some(true)` after it
    /// started or resumed (a suspended LXC domain is frozen, still active),
    /// `Some(false)` after it stopped or was undefined, `None` for events
    /// that change nothing of that (defined, shutdown in progress, crashed).
    pub fn active(&self) -> Option<bool> {
        match self.event {
            sys::VIR_DOMAIN_EVENT_STARTED
            | sys::VIR_DOMAIN_EVENT_RESUMED
            | sys::VIR_DOMAIN_EVENT_SUSPENDED
            | sys::VIR_DOMAIN_EVENT_PMSUSPENDED => Some(true),
            sys::VIR_DOMAIN_EVENT_STOPPED | sys::VIR_DOMAIN_EVENT_UNDEFINED => Some(false),
            _ => None,
        }
    }
}

static EVENT_LOOP: Once = Once::new();

/// Registers libvirt's default event loop and runs it on a thread of its
/// own, once per process; later calls do nothing.
pub fn start_event_loop() -> Result<(), Error> {
    let mut outcome = Ok(());
    EVENT_LOOP.call_once(|| {
        outcome = virt::event::event_register_default_impl().and_then(|()| {
            std::thread::Builder::new()
                .name("libvirt-event-loop".into())
                .spawn(|| {
                    loop {
                        // An error here is one failed poll iteration.
                        if virt::event::event_run_default_impl().is_err() {
                            std::thread::sleep(std::time::Duration::from_millis(100));
                        }
                    }
                })
                .map(drop)
                .map_err(|_| Error::last_error())
        });
    });
    outcome
}

type OnEvent = Box<dyn Fn(Lifecycle) + Send + 'static>;
type OnClose = Box<dyn Fn(i32) + Send + 'static>;

/// A live subscription; dropping it deregisters both callbacks.
pub struct Subscription {
    conn: Connect,
    callback_id: c_int,
}

/// Delivers every domain lifecycle event of `conn` to `on_event`, and the
/// connection's close (with libvirt's `virConnectCloseReason`) to
/// `on_close`, both on the event loop's thread, until the subscription is
/// dropped. Call [`start_event_loop`] before opening `conn`.
pub fn subscribe(
    conn: &Connect,
    on_event: impl Fn(Lifecycle) + Send + 'static,
    on_close: impl Fn(i32) + Send + 'static,
) -> Result<Subscription, Error> {
    let raw = conn_ptr(conn);
    let on_close: *mut OnClose = Box::into_raw(Box::new(Box::new(on_close)));
    // SAFETY: `raw` is a live connection (borrowed from `conn`); `on_close`
    // is a leaked box that libvirt hands back to `close_cb` and, when the
    // callback is unregistered or the connection freed, to `free_close`,
    // which frees it exactly once.
    let ret = unsafe {
        sys::virConnectRegisterCloseCallback(raw, Some(close_cb), on_close.cast(), Some(free_close))
    };
    if ret < 0 {
        // SAFETY: not registered, so libvirt never frees it: we do.
        drop(unsafe { Box::from_raw(on_close) });
        return Err(Error::last_error());
    }
    let on_event: *mut OnEvent = Box::into_raw(Box::new(Box::new(on_event)));
    // SAFETY: the lifecycle callback has the signature libvirt calls for
    // VIR_DOMAIN_EVENT_ID_LIFECYCLE (virConnectDomainEventCallback); libvirt
    // takes it as the generic type and casts it back, as its own
    // VIR_DOMAIN_EVENT_CALLBACK macro does. `on_event` is freed once by
    // `free_event` when the callback is deregistered.
    let id = unsafe {
        let generic = std::mem::transmute::<
            unsafe extern "C" fn(
                sys::virConnectPtr,
                sys::virDomainPtr,
                c_int,
                c_int,
                *mut c_void,
            ) -> c_int,
            unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *mut c_void),
        >(lifecycle_cb);
        sys::virConnectDomainEventRegisterAny(
            raw,
            std::ptr::null_mut(),
            sys::VIR_DOMAIN_EVENT_ID_LIFECYCLE as c_int,
            Some(generic),
            on_event.cast(),
            Some(free_event),
        )
    };
    if id < 0 {
        let e = Error::last_error();
        // SAFETY: not registered: freed here. The close callback is
        // unregistered, which frees its box through `free_close`.
        unsafe {
            drop(Box::from_raw(on_event));
            sys::virConnectUnregisterCloseCallback(raw, Some(close_cb));
        }
        return Err(e);
    }
    Ok(Subscription {
        conn: conn.clone(),
        callback_id: id,
    })
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let raw = conn_ptr(&self.conn);
        // SAFETY: both were registered on this live connection (the clone
        // holds a reference); failures (a connection already closed) leave
        // libvirt to free the boxes with the connection.
        unsafe {
            sys::virConnectDomainEventDeregisterAny(raw, self.callback_id);
            sys::virConnectUnregisterCloseCallback(raw, Some(close_cb));
        }
    }
}

fn conn_ptr(conn: &Connect) -> sys::virConnectPtr {
    // SAFETY: only the pointer is read; `conn` keeps it alive.
    unsafe { conn.as_ptr() }
}

unsafe extern "C" fn lifecycle_cb(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    event: c_int,
    detail: c_int,
    opaque: *mut c_void,
) -> c_int {
    // SAFETY: libvirt passes a domain valid for the call and the `opaque`
    // registered in `subscribe`, alive until `free_event`.
    let (name, handler) = unsafe {
        let name = sys::virDomainGetName(dom);
        let name = (!name.is_null()).then(|| CStr::from_ptr(name).to_string_lossy().into_owned());
        (name, &*(opaque as *const OnEvent))
    };
    if let Some(domain) = name {
        let event = Lifecycle {
            domain,
            event: u32::try_from(event).unwrap_or(u32::MAX),
            detail,
        };
        // A panic must not unwind into libvirt's C frames.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler(event)));
    }
    0
}

unsafe extern "C" fn close_cb(_conn: sys::virConnectPtr, reason: c_int, opaque: *mut c_void) {
    // SAFETY: the `opaque` registered in `subscribe`, alive until `free_close`.
    let handler = unsafe { &*(opaque as *const OnClose) };
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler(reason)));
}

unsafe extern "C" fn free_event(opaque: *mut c_void) {
    // SAFETY: called once by libvirt for the box leaked in `subscribe`.
    drop(unsafe { Box::from_raw(opaque as *mut OnEvent) });
}

unsafe extern "C" fn free_close(opaque: *mut c_void) {
    // SAFETY: called once by libvirt for the box leaked in `subscribe`.
    drop(unsafe { Box::from_raw(opaque as *mut OnClose) });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{sync::mpsc, time::Duration};

    /// libvirt's in-process test driver emits real lifecycle events.
    #[test]
    fn lifecycle_events_of_the_test_driver_arrive() {
        start_event_loop().unwrap();
        let conn = Connect::open(Some("test:///default")).unwrap();
        let (tx, rx) = mpsc::channel();
        let tx = std::sync::Mutex::new(tx);
        let sub = subscribe(
            &conn,
            move |e| {
                let _ = tx.lock().unwrap().send(e);
            },
            |_| {},
        )
        .unwrap();
        let dom = conn.lookup_domain_by_name("test").unwrap();
        dom.destroy().unwrap();
        let e = rx.recv_timeout(Duration::from_secs(5)).expect("STOPPED");
        assert_eq!(
            (e.domain.as_str(), e.event, e.active()),
            ("test", sys::VIR_DOMAIN_EVENT_STOPPED, Some(false))
        );
        dom.create().unwrap();
        let e = rx.recv_timeout(Duration::from_secs(5)).expect("STARTED");
        assert_eq!(
            (e.event, e.active()),
            (sys::VIR_DOMAIN_EVENT_STARTED, Some(true))
        );
        drop(sub);
        dom.destroy().unwrap();
        assert!(
            rx.recv_timeout(Duration::from_millis(300)).is_err(),
            "no event after the subscription is dropped"
        );
    }
}
