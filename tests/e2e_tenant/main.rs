//! The red-team suite: a hostile customer holding a valid client certificate
//! for their segment's Docker attacks the tenant boundary with the real
//! docker CLI over mutual TLS, against real Docker segments made by the real
//! agent on the real libvirtd. Every test attempts the attack for real and
//! asserts that it failed or was contained. A missing environment fails
//! the tests, never skips them.
//!
//! One module per layer of the boundary (`hardening.rs`: the CIS Docker
//! Benchmark checks that apply to a segment). Addresses: 203.0.113.140-.199,
//! each module its own block (see the module's doc), one range per test.

#[path = "../common/mod.rs"]
mod common;

mod boundary;
mod hardening;
mod network;
mod policy;
