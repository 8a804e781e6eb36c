//! libvirt's own error reports, into the agent's log.
//!
//! Whenever a libvirt call fails, the library hands the error to its error
//! callback; the default one prints it to stderr ("libvirt: LXC Driver
//! error : Domain not found ..."), also for the errors the agent expects and
//! handles (every create first looks up a domain that must not exist). This
//! callback logs them through tracing instead, under the target `libvirt`,
//! with libvirt's code and domain as fields: at DEBUG for what the agent
//! handles as a normal outcome, at WARN otherwise. The caller still gets the
//! error (as `HvError`) and logs its consequence in context.

use std::ffi::c_void;
use tracing::Level;
use virt::{
    error::{Error, ErrorDomain, ErrorLevel, ErrorNumber},
    sys,
};

/// The level an error of libvirt's deserves in the agent's log.
pub fn level_of(e: &Error) -> Level {
    let code = e.code();
    // Outcomes the agent asks about and handles: a missing domain (create
    // checks one is not there), no metadata (a foreign seg- domain), a
    // domain that is not running (destroy of a stopped one), libvirtd gone
    // (reported as UNAVAILABLE and by the health status).
    let expected = [
        ErrorNumber::NoDomain,
        ErrorNumber::NoDomainMetadata,
        ErrorNumber::OperationInvalid,
        ErrorNumber::NoConnect,
    ]
    .iter()
    .any(|c| code.is_known_and(|k| k == *c))
        || e.domain().is_known_and(|d| d == ErrorDomain::Rpc);
    match (expected, e.level()) {
        (true, _) | (false, ErrorLevel::None) => Level::DEBUG,
        (false, ErrorLevel::Warning | ErrorLevel::Error) => Level::WARN,
    }
}

fn log(e: &Error) {
    let (code, domain, error) = (e.code().to_raw(), e.domain().to_raw(), e.message());
    match level_of(e) {
        Level::DEBUG => {
            tracing::debug!(target: "libvirt", code, domain, error, "libvirt reported an error")
        }
        _ => tracing::warn!(target: "libvirt", code, domain, error, "libvirt reported an error"),
    }
}

/// libvirt's error callback. The error it is called with is also the
/// thread's last error (virDispatchError passes virLastErrorObject()), so it
/// is read through the safe binding instead of the raw pointer.
extern "C" fn to_tracing(_data: *mut c_void, _error: sys::virErrorPtr) {
    log(&Error::last_error());
}

/// Replaces libvirt's default error printer (stderr) with the agent's log,
/// for every connection of this process. Call once logging is set up.
pub fn route_errors_to_tracing() {
    // SAFETY: virSetErrorFunc only stores its two arguments: a user-data
    // pointer libvirt passes back untouched (null, never read) and a
    // function with libvirt's virErrorFunc signature that lives as long as
    // the program.
    unsafe { sys::virSetErrorFunc(std::ptr::null_mut(), Some(to_tracing)) }
}
