//! A CA that passes the agent's own checks must also be one the TLS stack
//! that will use it accepts: rustls (webpki) verifies the chain of every
//! certificate the agent issues, in the readiness probe and the health
//! checks. So validation ends with the real thing: a throwaway server
//! certificate issued from the CA, verified by rustls against it as the
//! only root. A CA rustls rejects (say an extension it cannot decode) is
//! refused before anything changes, instead of a segment FAILED after.

use super::{CaError, ClusterCa, issue_server_cert};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::{
    net::Ipv4Addr,
    sync::Arc,
    time::{Duration, SystemTime},
};
use tokio_rustls::rustls::{
    RootCertStore,
    client::{WebPkiServerVerifier, danger::ServerCertVerifier},
    crypto::ring::default_provider,
};

/// Verifies a certificate issued from `ca` with rustls, as of `now`.
pub(super) fn accepted_by_rustls(ca: &ClusterCa, now: SystemTime) -> Result<(), CaError> {
    let refused = |e: &dyn std::fmt::Display| CaError::RejectedByTls(e.to_string());
    let der = pem::parse(ca.cert_pem()).map_err(|e| refused(&e))?;
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(der.into_contents()))
        .map_err(|e| refused(&e))?;
    let verifier =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::new(default_provider()))
            .build()
            .map_err(|e| refused(&e))?;
    let leaf = issue_server_cert(
        ca,
        Ipv4Addr::LOCALHOST,
        "ca-check",
        Duration::from_secs(600),
        now,
    )
    .map_err(|e| refused(&e))?;
    let leaf = pem::parse(&leaf.cert_pem).map_err(|e| refused(&e))?;
    // Within the leaf's window: a CA may start up to the clock skew ahead.
    let at = now
        .max(super::to_system_time(ca.not_before))
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    verifier
        .verify_server_cert(
            &CertificateDer::from(leaf.into_contents()),
            &[],
            &ServerName::IpAddress(Ipv4Addr::LOCALHOST.into()),
            &[],
            UnixTime::since_unix_epoch(at),
        )
        .map(|_| ())
        .map_err(|e| refused(&e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, CustomExtension, IsCa, KeyPair, PKCS_ECDSA_P256_SHA256,
    };

    /// A CA the parser and rcgen take, with an extension too large for
    /// webpki's DER reader (it refuses every chain through it).
    fn ca_with_huge_extension() -> (String, String) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let mut content = vec![4, 0x83, 0x01, 0x86, 0xa0];
        content.extend(std::iter::repeat_n(0u8, 100_000));
        let ext = CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 55555, 1], content);
        params.custom_extensions = vec![ext];
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
    }

    #[test]
    fn a_ca_rustls_refuses_is_refused_at_validation() {
        let (cert, key) = ca_with_huge_extension();
        let e = ClusterCa::from_pem(&cert, &key, SystemTime::now()).unwrap_err();
        assert!(matches!(e, CaError::RejectedByTls(_)), "{e}");
        assert!(e.to_string().contains("TLS client"), "{e}");
    }

    #[test]
    fn an_ordinary_ca_passes() {
        let (cert, key) =
            super::super::testing::generate_test_ca("ok", Duration::from_secs(3600)).unwrap();
        assert!(ClusterCa::from_pem(&cert, &key, SystemTime::now()).is_ok());
    }
}
