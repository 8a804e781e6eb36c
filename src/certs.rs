//! Per-segment Docker TLS material, issued from the cluster's CA.
//!
//! `CreateSegment` carries the cluster CA (`ca_cert_pem`, `ca_key_pem`).
//! [`ClusterCa::from_pem`] validates it once; [`issue_server_cert`] then signs
//! a fresh server certificate for a segment's Docker daemon, and
//! [`write_docker_tls`] puts `ca.pem`, `server-cert.pem` and `server-key.pem`
//! into the segment's `/etc/docker`. The CA key only ever lives in memory.
//!
//! Every [`CaError`] is a fault in the request (gRPC `INVALID_ARGUMENT`); its
//! message names the field at fault.

mod tls_check;

#[cfg(any(test, feature = "test-support"))]
pub mod testing;

use crate::atomic;
use std::fmt;
use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose as Usage, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use ring::digest::{SHA256, digest};
use ring::rand::{SecureRandom, SystemRandom};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use x509_parser::certificate::X509Certificate;
use zeroize::Zeroizing;

/// Clock skew tolerated between the host, the scheduler and Docker clients: a
/// leaf's `notBefore` is set this far back, and a CA may start this far ahead.
const CLOCK_SKEW: i64 = 5 * 60;

/// Why a cluster CA from a request cannot be used (gRPC `INVALID_ARGUMENT`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CaError {
    /// `ca_cert_pem` is not exactly one parseable PEM X.509 certificate.
    #[error("ca_cert_pem is not a valid PEM certificate: {0}")]
    MalformedCertificate(String),
    /// `ca_key_pem` is not an unencrypted private key the agent can sign with.
    #[error("ca_key_pem is not a usable PEM private key: {0}")]
    MalformedKey(String),
    /// The private key's public half is not the certificate's public key.
    #[error("ca_key_pem does not match ca_cert_pem")]
    KeyMismatch,
    /// The certificate is not marked as a CA.
    #[error("ca_cert_pem is not a CA certificate (basicConstraints CA:FALSE or missing)")]
    NotCa,
    /// The certificate restricts its key usage and `keyCertSign` is not among it.
    #[error("ca_cert_pem may not sign certificates (its keyUsage lacks keyCertSign)")]
    NotCertSigner,
    /// The certificate's validity ended before now.
    #[error("ca_cert_pem expired at {}", rfc3339(*.not_after))]
    Expired {
        /// The CA's `notAfter`.
        not_after: SystemTime,
    },
    /// The certificate's validity starts more than 5 minutes after now.
    #[error("ca_cert_pem is not valid before {}", rfc3339(*.not_before))]
    NotYetValid {
        /// The CA's `notBefore`.
        not_before: SystemTime,
    },
    /// rcgen cannot copy the subject byte for byte into issued certificates
    /// (repeated or multi-valued attributes): they would not chain to it.
    #[error("ca_cert_pem subject {} cannot be copied into issued certificates exactly",
        crate::model::echo(.0))]
    UnsupportedSubject(String),
    /// The TLS stack that will verify what the CA issues (rustls) refuses
    /// a certificate issued from it.
    #[error("ca_cert_pem is refused by the agent's TLS client: {}",
        crate::model::echo(.0))]
    RejectedByTls(String),
}

/// Why a certificate could not be issued from an already validated CA.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// The hostname is not a valid DNS name (RFC 1123 labels).
    #[error("hostname {0:?} is not a valid DNS name")]
    InvalidHostname(String),
    /// A validity of zero was asked for.
    #[error("certificate validity must be at least one second")]
    ZeroValidity,
    /// The CA expired since it was loaded.
    #[error("the cluster CA expired at {}", rfc3339(*.not_after))]
    CaExpired {
        /// The CA's `notAfter`.
        not_after: SystemTime,
    },
    /// Key generation or signing failed inside rcgen.
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
}

/// A validated cluster CA: its certificate and, in memory only, its key.
pub struct ClusterCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    fingerprint: String,
    subject: String,
    not_before: i64,
    not_after: i64,
}

/// A freshly issued leaf certificate and its private key, both PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct ServerCert {
    /// The certificate, PEM (`server-cert.pem`).
    pub cert_pem: String,
    /// The PKCS#8 private key, PEM (`server-key.pem`).
    pub key_pem: String,
    /// The certificate's `notAfter`.
    pub not_after: SystemTime,
}

impl fmt::Debug for ServerCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerCert")
            .field("not_after", &rfc3339(self.not_after))
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterCa")
            .field("subject", &self.subject)
            .field("fingerprint", &self.fingerprint)
            .field("not_after", &rfc3339(self.not_after()))
            .finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// Validates a CA certificate and key from a request, as of `now`.
    ///
    /// Accepts one PEM `CERTIFICATE` and one unencrypted PKCS#8, PKCS#1 or
    /// SEC1 key (EC P-256, P-384, Ed25519, RSA 2048-4096). Checks, in order:
    /// both parse, the key matches, basicConstraints CA:TRUE, keyCertSign if
    /// keyUsage is present, validity covers `now` (give or take the 5 minutes
    /// of skew at its start), the subject can be copied, and rustls accepts
    /// a certificate issued from it (the stack that will verify them).
    pub fn from_pem(ca_cert_pem: &str, ca_key_pem: &str, now: SystemTime) -> Result<Self, CaError> {
        let der = parse_certificate_pem(ca_cert_pem)?;
        let cert = parse_certificate(&der)?;
        let key = parse_key(ca_key_pem)?;
        if key.public_key_raw() != cert.public_key().subject_public_key.data.as_ref() {
            return Err(CaError::KeyMismatch);
        }
        check_ca_extensions(&cert)?;
        let (not_before, not_after) = check_validity(&cert, unix_secs(now))?;
        let subject = cert.subject().to_string();
        let issuer = Issuer::from_ca_cert_der(&der.as_slice().into(), key)
            .map_err(|_| CaError::UnsupportedSubject(subject.clone()))?;
        if !issuer_name_round_trips(&issuer, cert.subject().as_raw()) {
            return Err(CaError::UnsupportedSubject(subject));
        }
        let ca = Self {
            issuer,
            cert_pem: pem_encode("CERTIFICATE", &der),
            fingerprint: hex(digest(&SHA256, &der).as_ref()),
            subject,
            not_before,
            not_after,
        };
        tls_check::accepted_by_rustls(&ca, now)?;
        Ok(ca)
    }

    /// The CA certificate, re-encoded as one clean PEM block (for `ca.pem`).
    pub fn canonical_cert_pem(&self) -> String {
        let der = pem::parse(&self.cert_pem)
            .map(|p| p.into_contents())
            .unwrap_or_default();
        pem_encode("CERTIFICATE", &der)
    }

    /// The CA certificate as given in the request.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's `notAfter`: no certificate it issues outlives it.
    pub fn not_after(&self) -> SystemTime {
        to_system_time(self.not_after)
    }

    /// The CA's subject, as text (`CN=...`), for logs.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// Lowercase hex SHA-256 of the certificate's DER: equal for two requests
    /// carrying the same CA certificate, whatever their PEM whitespace.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The certificate's validity window, clamped to the CA's, as Unix seconds.
    fn window(&self, now: SystemTime, validity: Duration) -> Result<(i64, i64), CertError> {
        if validity.as_secs() == 0 {
            return Err(CertError::ZeroValidity);
        }
        let now = unix_secs(now);
        if now >= self.not_after {
            let not_after = self.not_after();
            return Err(CertError::CaExpired { not_after });
        }
        let validity = i64::try_from(validity.as_secs()).unwrap_or(i64::MAX);
        let not_before = now.saturating_sub(CLOCK_SKEW).max(self.not_before);
        let not_after = now.saturating_add(validity).min(self.not_after);
        Ok((not_before, not_after))
    }
}

/// Issues a Docker daemon server certificate for one segment.
///
/// A fresh ECDSA P-256 key; CN = `hostname`; SANs IP `ip`, IP 127.0.0.1 and
/// DNS `hostname`; EKU serverAuth; keyUsage digitalSignature and
/// keyEncipherment; a random 127-bit serial; valid from `now` - 5 minutes
/// (clock skew) to `now + validity`, both clamped to the CA's validity
/// (so a CA that starts in the future delays the leaf's `notBefore` too).
pub fn issue_server_cert(
    ca: &ClusterCa,
    ip: Ipv4Addr,
    hostname: &str,
    validity: Duration,
    now: SystemTime,
) -> Result<ServerCert, CertError> {
    check_hostname(hostname)?;
    let mut sans = vec![SanType::IpAddress(IpAddr::V4(ip))];
    if ip != Ipv4Addr::LOCALHOST {
        sans.push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    }
    sans.push(SanType::DnsName(hostname.try_into()?));
    let usage = ExtendedKeyUsagePurpose::ServerAuth;
    sign_leaf(ca, hostname, sans, usage, now, validity)
}

/// Issues a client certificate (EKU clientAuth, CN = `cn`) valid for
/// `validity` from `now`, clamped to the CA's validity: the agent's own
/// credential for a segment's Docker (readiness and health checks).
pub fn issue_client_cert_for(
    ca: &ClusterCa,
    cn: &str,
    validity: Duration,
    now: SystemTime,
) -> Result<ServerCert, CertError> {
    sign_leaf(
        ca,
        cn,
        Vec::new(),
        ExtendedKeyUsagePurpose::ClientAuth,
        now,
        validity,
    )
}

/// Writes `ca.pem` and `server-cert.pem` (0644) and `server-key.pem` (0600)
/// into `dir` (the segment's `/etc/docker`, created if missing), each
/// atomically: a temporary file in `dir`, created 0600, written, fsynced,
/// Writes the CA and the server certificate world-readable and read-only
/// (0444), the server key readable by its owner only (0400) and owned by
/// `key_owner` (the segment's root, who runs dockerd), into `dir`, each file
/// atomically. The files stay host root's otherwise: nothing inside the
/// segment can replace them.
pub fn write_docker_tls(
    dir: &Path,
    ca_pem: &str,
    server: &ServerCert,
    key_owner: Option<u32>,
) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let files = [
        ("ca.pem", ca_pem, 0o444, None),
        ("server-key.pem", &server.key_pem, 0o400, key_owner),
        ("server-cert.pem", &server.cert_pem, 0o444, None),
    ];
    for (name, text, mode, owner) in files {
        atomic::write_atomic_owned(dir, name, text.as_bytes(), mode, owner)?;
    }
    // Make the renames themselves durable.
    atomic::sync_dir(dir)
}

/// A leaf certificate with a fresh EC P-256 key: `cn`, `sans` and one EKU.
fn sign_leaf(
    ca: &ClusterCa,
    cn: &str,
    sans: Vec<SanType>,
    usage: ExtendedKeyUsagePurpose,
    now: SystemTime,
    validity: Duration,
) -> Result<ServerCert, CertError> {
    let (not_before, not_after) = ca.window(now, validity)?;
    let mut params = base_params(cn, not_before, not_after)?;
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![Usage::DigitalSignature, Usage::KeyEncipherment];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let cert = params.signed_by(&key, &ca.issuer)?;
    Ok(ServerCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        not_after: to_system_time(not_after),
    })
}

/// Parameters with subject CN = `cn`, a validity and a random 127-bit serial.
fn base_params(cn: &str, not_before: i64, not_after: i64) -> Result<CertificateParams, CertError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.not_before = to_offset(not_before)?;
    params.not_after = to_offset(not_after)?;
    params.serial_number = Some(random_serial()?);
    Ok(params)
}

/// The one PEM block in `text`, ignoring the `EC PARAMETERS` block that
/// `openssl ecparam -genkey` puts before its key.
fn single_pem_block(text: &str) -> Result<pem::Pem, String> {
    let mut blocks = pem::parse_many(text).map_err(|e| format!("bad PEM encoding: {e}"))?;
    blocks.retain(|b| b.tag() != "EC PARAMETERS");
    let n = blocks.len();
    match (blocks.pop(), n) {
        (Some(block), 1) => Ok(block),
        (Some(_), n) => Err(format!("{n} PEM blocks found, expected exactly one")),
        (None, _) => Err("no PEM block found".into()),
    }
}

fn parse_certificate_pem(text: &str) -> Result<Vec<u8>, CaError> {
    let block = single_pem_block(text).map_err(CaError::MalformedCertificate)?;
    let tag = block.tag();
    if tag != "CERTIFICATE" {
        let found = format!("found a {tag:?} PEM block, expected \"CERTIFICATE\"");
        return Err(CaError::MalformedCertificate(found));
    }
    Ok(block.into_contents())
}

fn parse_certificate(der: &[u8]) -> Result<X509Certificate<'_>, CaError> {
    let bad = CaError::MalformedCertificate;
    match x509_parser::parse_x509_certificate(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(bad("trailing bytes after the certificate".into())),
        Err(e) => Err(bad(format!("bad X.509 DER: {e}"))),
    }
}

/// Parses the CA key; PKCS#1 and SEC1 keys are rewrapped as PKCS#8, the only
/// form rcgen's `ring` backend reads.
fn parse_key(text: &str) -> Result<KeyPair, CaError> {
    let bad = CaError::MalformedKey;
    let block = single_pem_block(text).map_err(bad)?;
    if block.headers().get("Proc-Type").is_some() || block.tag() == "ENCRYPTED PRIVATE KEY" {
        return Err(bad("encrypted keys are not supported".into()));
    }
    let tag = block.tag().to_owned();
    let der = Zeroizing::new(block.into_contents());
    let candidates = match tag.as_str() {
        "PRIVATE KEY" => vec![der],
        "RSA PRIVATE KEY" => vec![pkcs8_wrap(RSA_ENCRYPTION, None, &der)],
        // SEC1 may omit the curve: try both that ring can sign with.
        "EC PRIVATE KEY" => [P256, P384]
            .map(|c| pkcs8_wrap(EC_PUBLIC_KEY, Some(c), &der))
            .into(),
        other => {
            let found = format!("found a {other:?} PEM block, expected \"PRIVATE KEY\"");
            return Err(bad(found));
        }
    };
    candidates
        .iter()
        .find_map(|der| KeyPair::try_from(der.as_slice()).ok())
        .ok_or_else(|| bad("not an EC P-256/P-384, Ed25519 or RSA 2048-4096 bit key".into()))
}

// The OIDs of a PKCS#8 AlgorithmIdentifier.
const RSA_ENCRYPTION: &[u64] = &[1, 2, 840, 113549, 1, 1, 1];
const EC_PUBLIC_KEY: &[u64] = &[1, 2, 840, 10045, 2, 1];
const P256: &[u64] = &[1, 2, 840, 10045, 3, 1, 7];
const P384: &[u64] = &[1, 3, 132, 0, 34];

/// PKCS#8 PrivateKeyInfo { version 0, algorithm, privateKey } (RFC 5208),
/// DER-encoded by yasna (rcgen's own encoder): RSA's AlgorithmIdentifier
/// has NULL parameters, an EC key's names its curve.
fn pkcs8_wrap(algorithm: &[u64], curve: Option<&[u64]>, key: &[u8]) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(yasna::construct_der(|w| {
        w.write_sequence(|w| {
            w.next().write_u8(0);
            w.next().write_sequence(|w| {
                w.next()
                    .write_oid(&yasna::models::ObjectIdentifier::from_slice(algorithm));
                match curve {
                    Some(c) => w
                        .next()
                        .write_oid(&yasna::models::ObjectIdentifier::from_slice(c)),
                    None => w.next().write_null(),
                }
            });
            w.next().write_bytes(key);
        })
    }))
}

fn check_ca_extensions(cert: &X509Certificate<'_>) -> Result<(), CaError> {
    let bad = |e| CaError::MalformedCertificate(format!("bad extension: {e}"));
    let constraints = cert.basic_constraints().map_err(bad)?;
    if !constraints.is_some_and(|bc| bc.value.ca) {
        return Err(CaError::NotCa);
    }
    match cert.key_usage().map_err(bad)? {
        Some(usage) if !usage.value.key_cert_sign() => Err(CaError::NotCertSigner),
        _ => Ok(()),
    }
}

/// The CA's validity as Unix seconds, if it covers `now`. A CA made moments
/// ago by a scheduler whose clock runs ahead of the host's is accepted.
fn check_validity(cert: &X509Certificate<'_>, now: i64) -> Result<(i64, i64), CaError> {
    let start = cert.validity().not_before.timestamp();
    let end = cert.validity().not_after.timestamp();
    let (not_before, not_after) = (to_system_time(start), to_system_time(end));
    if now > end || end < start {
        return Err(CaError::Expired { not_after });
    }
    if now.saturating_add(CLOCK_SKEW) < start {
        return Err(CaError::NotYetValid { not_before });
    }
    Ok((start, end))
}

/// Whether certificates signed by `issuer` name it exactly as `subject_der`:
/// rcgen rebuilds the issuer name from parsed attributes, and a name that does
/// not survive that would make every issued certificate fail to chain.
fn issuer_name_round_trips(issuer: &Issuer<'static, KeyPair>, subject_der: &[u8]) -> bool {
    let Ok(probe) = CertificateParams::default().signed_by(issuer.key(), issuer) else {
        return false;
    };
    x509_parser::parse_x509_certificate(probe.der())
        .is_ok_and(|(_, cert)| cert.issuer().as_raw() == subject_der)
}

/// RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens.
fn check_hostname(hostname: &str) -> Result<(), CertError> {
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if hostname.len() <= 253 && hostname.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(CertError::InvalidHostname(hostname.to_owned()))
    }
}

fn random_serial() -> Result<SerialNumber, CertError> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| rcgen::Error::RingUnspecified)?;
    // RFC 5280: serials are positive and at most 20 octets.
    bytes[0] &= 0x7f;
    Ok(SerialNumber::from_slice(&bytes))
}

/// Whole seconds since the epoch; times before it count as the epoch.
fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Pre-1970 times (no CA's `notAfter`, in practice) map to the epoch.
fn to_system_time(secs: i64) -> SystemTime {
    let since_epoch = Duration::from_secs(u64::try_from(secs).unwrap_or(0));
    UNIX_EPOCH.checked_add(since_epoch).unwrap_or(UNIX_EPOCH)
}

fn to_offset(secs: i64) -> Result<OffsetDateTime, CertError> {
    OffsetDateTime::from_unix_timestamp(secs).map_err(|_| rcgen::Error::Time.into())
}

fn rfc3339(t: SystemTime) -> String {
    OffsetDateTime::from_unix_timestamp(unix_secs(t))
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("{} s after the Unix epoch", unix_secs(t)))
}

/// Lowercase hex SHA-256 of a PEM certificate's DER, as
/// [`ClusterCa::fingerprint`]; `None` if it does not parse.
pub fn pem_fingerprint(cert_pem: &str) -> Option<String> {
    let der = pem::parse(cert_pem).ok()?;
    Some(hex(digest(&SHA256, der.contents()).as_ref()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The agent's one PEM encoder: `der` under `label`, LF line endings, so
/// equal DER compares equal as text (the CA certificate in records, in
/// `ca.pem` and in the metadata is always in this form).
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new(label, der), config)
}

#[cfg(test)]
mod tests;
