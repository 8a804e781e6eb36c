//! libvirt's domain lifecycle events for [`super::libvirt::Libvirt`]: a
//! connection of their own (requests on the shared one never delay them),
//! subscribed through [`virt_events`], opened again whenever libvirtd went
//! away. Each (re)subscription is announced as [`HvEvent::Connected`], so
//! the agent lists the domains once more for what it may have missed.

use super::{EventSink, HvEvent};
use crate::model::DOMAIN_PREFIX;
use std::{
    sync::{Arc, Mutex, mpsc},
    time::Duration,
};
use tracing::{debug, info, warn};
use virt::connect::Connect;

/// Retry delays while libvirtd is unreachable.
const FIRST_RETRY: Duration = Duration::from_millis(200);
const LAST_RETRY: Duration = Duration::from_secs(5);
/// How often a quiet subscription checks its connection (a local check;
/// libvirt's keepalive, run by the event loop, finds a silent libvirtd).
const ALIVE_CHECK: Duration = Duration::from_secs(5);

/// The sink of the current watcher; replaced by a later `watch`.
pub(super) type SharedSink = Arc<Mutex<Option<EventSink>>>;

fn emit(sink: &SharedSink, event: HvEvent) {
    if let Some(f) = sink.lock().expect("event sink lock").as_ref() {
        f(event);
    }
}

/// Runs the watcher on a thread of its own, for the life of the process.
pub(super) fn spawn(uri: String, sink: SharedSink) {
    let thread = std::thread::Builder::new()
        .name("libvirt-watch".into())
        .spawn(move || run(&uri, &sink));
    if let Err(e) = thread {
        warn!(error = %e, "cannot start the libvirt event watcher; the safety poll remains");
    }
}

fn run(uri: &str, sink: &SharedSink) {
    if let Err(e) = virt_events::start_event_loop() {
        warn!(error = %e, "libvirt event loop unavailable; the safety poll remains");
        return;
    }
    let mut delay = FIRST_RETRY;
    let mut told_down = false;
    loop {
        match subscribe(uri, sink) {
            Ok((conn, subscription, closed)) => {
                info!("following libvirt's domain lifecycle events");
                emit(sink, HvEvent::Connected);
                delay = FIRST_RETRY;
                let reason = wait_closed(&conn, &closed);
                drop(subscription);
                drop(conn);
                warn!(%reason, "libvirt event connection lost; reconnecting");
                emit(sink, HvEvent::Disconnected);
                told_down = true;
            }
            Err(e) => {
                debug!(error = %e, ?delay, "cannot follow libvirt's events yet");
                if !told_down {
                    emit(sink, HvEvent::Disconnected);
                    told_down = true;
                }
                std::thread::sleep(delay);
                delay = (delay * 2).min(LAST_RETRY);
            }
        }
    }
}

type Subscribed = (Connect, virt_events::Subscription, mpsc::Receiver<i32>);

fn subscribe(uri: &str, sink: &SharedSink) -> Result<Subscribed, virt::error::Error> {
    let conn = Connect::open(Some(uri))?;
    let (closed_tx, closed) = mpsc::channel();
    let closed_tx = Mutex::new(closed_tx);
    let events = sink.clone();
    let subscription = virt_events::subscribe(
        &conn,
        move |e| {
            if let (true, Some(running)) = (e.domain.starts_with(DOMAIN_PREFIX), e.active()) {
                emit(
                    &events,
                    HvEvent::Domain {
                        name: e.domain,
                        running,
                    },
                );
            }
        },
        move |reason| {
            let _ = closed_tx.lock().expect("close channel lock").send(reason);
        },
    )?;
    Ok((conn, subscription, closed))
}

/// Blocks until the connection closes; returns why.
fn wait_closed(conn: &Connect, closed: &mpsc::Receiver<i32>) -> String {
    loop {
        match closed.recv_timeout(ALIVE_CHECK) {
            Ok(reason) => return format!("closed by libvirt (reason {reason})"),
            Err(mpsc::RecvTimeoutError::Timeout) if conn.is_alive().unwrap_or(false) => {}
            Err(_) => return "the connection is no longer alive".into(),
        }
    }
}
