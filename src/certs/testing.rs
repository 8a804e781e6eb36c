//! Test helpers (the `test-support` feature, for the tests and the
//! benchmark): a throwaway cluster CA and client certificates, as a
//! scheduler would hand them to the agent and to its customers.

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose as Usage,
    PKCS_ECDSA_P256_SHA256,
};

use super::{CLOCK_SKEW, CertError, ClusterCa, base_params, sign_leaf, unix_secs};

/// Makes a self-signed EC P-256 CA named
/// CN=`cn`, valid from 5 minutes ago for `validity`; returns `(cert_pem, key_pem)`.
pub fn generate_test_ca(cn: &str, validity: Duration) -> Result<(String, String), CertError> {
    let now = unix_secs(SystemTime::now());
    let validity = i64::try_from(validity.as_secs()).unwrap_or(i64::MAX);
    let mut params = base_params(cn, now - CLOCK_SKEW, now.saturating_add(validity))?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![Usage::KeyCertSign, Usage::CrlSign];
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Issues a client certificate (EKU
/// clientAuth, CN = `cn`, valid for a day or until the CA expires) with which
/// a test talks to a segment's dockerd; returns `(cert_pem, key_pem)`.
pub fn issue_client_cert(ca: &ClusterCa, cn: &str) -> Result<(String, String), CertError> {
    let (usage, now) = (ExtendedKeyUsagePurpose::ClientAuth, SystemTime::now());
    let validity = Duration::from_secs(24 * 3600);
    let cert = sign_leaf(ca, cn, Vec::new(), usage, now, validity)?;
    Ok((cert.cert_pem, cert.key_pem))
}
