#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use super::testing::{generate_test_ca, issue_client_cert};
use super::*;
use rcgen::BasicConstraints;
use std::os::unix::fs::PermissionsExt;

mod ca_formats;

const DAY: Duration = Duration::from_secs(24 * 60 * 60);
const SEGMENT_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const HOST: &str = "seg-1.example";

fn test_ca() -> (String, String) {
    generate_test_ca("cluster-ca", 30 * DAY).unwrap()
}

fn load(ca: &(String, String)) -> ClusterCa {
    ClusterCa::from_pem(&ca.0, &ca.1, SystemTime::now()).unwrap()
}

/// An EC P-256 certificate from `params`, self-signed.
fn make(params: &CertificateParams) -> (String, String) {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
}

fn ca_params(not_before: i64, not_after: i64) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.not_before = to_offset(not_before).unwrap();
    params.not_after = to_offset(not_after).unwrap();
    params
}

/// Runs openssl in `dir`; returns (success, stdout + stderr).
fn openssl(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn openssl_ok(dir: &Path, args: &[&str]) -> String {
    let (ok, text) = openssl(dir, args);
    assert!(ok, "openssl {args:?} failed: {text}");
    text
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, text).unwrap();
    path
}

fn read(dir: &Path, name: &str) -> String {
    fs::read_to_string(dir.join(name)).unwrap()
}

/// Asserts that openssl accepts `cert` as issued by `ca_pem` for `purpose`.
fn assert_openssl_verifies(ca_pem: &str, cert: &str, purpose: &str) {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "ca.pem", ca_pem);
    write(dir.path(), "cert.pem", cert);
    let args = [
        "verify", "-CAfile", "ca.pem", "-purpose", purpose, "cert.pem",
    ];
    let out = openssl_ok(dir.path(), &args);
    assert_eq!(out.trim(), "cert.pem: OK");
}

#[test]
fn good_ca_is_accepted_and_fingerprinted() {
    let ca_pem = test_ca();
    let ca = load(&ca_pem);
    assert_eq!(ca.subject(), "CN=cluster-ca");
    assert_eq!(ca.fingerprint().len(), 64);
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "ca.pem", ca.cert_pem());
    let out = openssl_ok(
        dir.path(),
        &["x509", "-in", "ca.pem", "-noout", "-fingerprint", "-sha256"],
    );
    let from_openssl = out.trim().rsplit('=').next().unwrap().replace(':', "");
    assert_eq!(from_openssl.to_lowercase(), ca.fingerprint());
    // The same certificate with other line endings and comments is the same CA.
    let noisy = format!(
        "subject=CN = cluster-ca\r\n{}",
        ca_pem.0.replace('\n', "\r\n")
    );
    let same = ClusterCa::from_pem(&noisy, &ca_pem.1, SystemTime::now()).unwrap();
    assert_eq!(same.fingerprint(), ca.fingerprint());
    assert_ne!(load(&test_ca()).fingerprint(), ca.fingerprint());
    assert!(!format!("{ca:?}").contains("PRIVATE"));
}

#[test]
fn bad_cas_are_rejected_with_a_reason() {
    let now = unix_secs(SystemTime::now());
    let good = test_ca();
    let other = test_ca();
    let mut leaf = ca_params(now - 60, now + 3600);
    leaf.is_ca = IsCa::ExplicitNoCa;
    let mut no_bc = ca_params(now - 60, now + 3600);
    no_bc.is_ca = IsCa::NoCa;
    let mut no_sign = ca_params(now - 60, now + 3600);
    no_sign.key_usages = vec![Usage::DigitalSignature];
    let (leaf, no_bc, no_sign) = (make(&leaf), make(&no_bc), make(&no_sign));
    let expired = make(&ca_params(now - 7200, now - 3600));
    let future = make(&ca_params(now + 3600, now + 7200));
    let two_certs = format!("{}{}", good.0, other.0);
    let bad_der = "-----BEGIN CERTIFICATE-----\nAAECAw==\n-----END CERTIFICATE-----\n";
    let encrypted =
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAECAw==\n-----END ENCRYPTED PRIVATE KEY-----\n";
    let legacy_encrypted = "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\nAAECAw==\n-----END RSA PRIVATE KEY-----\n";
    #[rustfmt::skip]
    let cases: &[(&str, &str, &str, &str)] = &[
        ("garbage cert", "hello", &good.1, "ca_cert_pem is not a valid PEM certificate: no PEM block"),
        ("key as cert", &good.1, &good.1, "found a \"PRIVATE KEY\" PEM block"),
        ("bad DER", bad_der, &good.1, "bad X.509 DER"),
        ("two certs", &two_certs, &good.1, "2 PEM blocks found"),
        ("garbage key", &good.0, "hello", "ca_key_pem is not a usable PEM private key: no PEM block"),
        ("cert as key", &good.0, &good.0, "found a \"CERTIFICATE\" PEM block"),
        ("encrypted key", &good.0, encrypted, "encrypted keys are not supported"),
        ("legacy encrypted key", &good.0, legacy_encrypted, "encrypted keys are not supported"),
        ("key of another CA", &good.0, &other.1, "ca_key_pem does not match ca_cert_pem"),
        ("leaf as CA", &leaf.0, &leaf.1, "not a CA certificate"),
        ("no basicConstraints", &no_bc.0, &no_bc.1, "not a CA certificate"),
        ("no keyCertSign", &no_sign.0, &no_sign.1, "lacks keyCertSign"),
        ("expired", &expired.0, &expired.1, "ca_cert_pem expired at "),
        ("not yet valid", &future.0, &future.1, "ca_cert_pem is not valid before "),
    ];
    for (name, cert, key, message) in cases {
        let err = ClusterCa::from_pem(cert, key, SystemTime::now()).unwrap_err();
        assert!(
            err.to_string().contains(message),
            "{name}: got {err:?}: {err}"
        );
    }
}

#[test]
fn validity_errors_carry_the_ca_dates() {
    let now = unix_secs(SystemTime::now());
    let expired = make(&ca_params(now - 7200, now - 3600));
    let err = ClusterCa::from_pem(&expired.0, &expired.1, SystemTime::now()).unwrap_err();
    assert_eq!(
        err,
        CaError::Expired {
            not_after: to_system_time(now - 3600)
        }
    );
    let future = make(&ca_params(now + 3600, now + 7200));
    let err = ClusterCa::from_pem(&future.0, &future.1, SystemTime::now()).unwrap_err();
    assert_eq!(
        err,
        CaError::NotYetValid {
            not_before: to_system_time(now + 3600)
        }
    );
}

#[test]
fn server_cert_verifies_with_openssl_and_has_the_right_names() {
    let ca = load(&test_ca());
    let cert = issue_server_cert(&ca, SEGMENT_IP, HOST, 7 * DAY, SystemTime::now()).unwrap();
    assert_openssl_verifies(ca.cert_pem(), &cert.cert_pem, "sslserver");
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "cert.pem", &cert.cert_pem);
    write(dir.path(), "key.pem", &cert.key_pem);
    let ext = "subjectAltName,extendedKeyUsage,keyUsage,basicConstraints";
    let out = openssl_ok(
        dir.path(),
        &["x509", "-in", "cert.pem", "-noout", "-subject", "-ext", ext],
    );
    for want in [
        "subject=CN = seg-1.example",
        "IP Address:203.0.113.10, IP Address:127.0.0.1, DNS:seg-1.example",
        "TLS Web Server Authentication",
        "Digital Signature, Key Encipherment",
        "CA:FALSE",
    ] {
        assert!(out.contains(want), "missing {want:?} in {out}");
    }
    assert!(!out.contains("Client Authentication"), "{out}");
    let cert_key = openssl_ok(
        dir.path(),
        &["x509", "-in", "cert.pem", "-noout", "-pubkey"],
    );
    let key_pub = openssl_ok(dir.path(), &["pkey", "-in", "key.pem", "-pubout"]);
    assert_eq!(cert_key, key_pub);
    assert!(
        openssl_ok(dir.path(), &["pkey", "-in", "key.pem", "-noout", "-text"])
            .contains("NIST CURVE: P-256")
    );
}

#[test]
fn client_cert_verifies_for_client_auth() {
    let ca = load(&test_ca());
    let (cert, key) = issue_client_cert(&ca, "e2e-client").unwrap();
    assert!(key.contains("BEGIN PRIVATE KEY"));
    assert_openssl_verifies(ca.cert_pem(), &cert, "sslclient");
    // A client certificate is no server certificate.
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "ca.pem", ca.cert_pem());
    write(dir.path(), "cert.pem", &cert);
    let (ok, out) = openssl(
        dir.path(),
        &[
            "verify",
            "-CAfile",
            "ca.pem",
            "-purpose",
            "sslserver",
            "cert.pem",
        ],
    );
    assert!(!ok, "{out}");
}

/// A real mutual-TLS handshake, as between the docker CLI and dockerd:
/// openssl's server with the issued server certificate requires a client
/// certificate; openssl's client checks the server's chain and IP SAN.
#[test]
fn mutual_tls_handshake_with_issued_certificates() {
    let ca = load(&test_ca());
    let server = issue_server_cert(&ca, SEGMENT_IP, HOST, DAY, SystemTime::now()).unwrap();
    let (client_cert, client_key) = issue_client_cert(&ca, "e2e-client").unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_docker_tls(dir.path(), ca.cert_pem(), &server, None).unwrap();
    write(dir.path(), "cert.pem", &client_cert);
    write(dir.path(), "key.pem", &client_key);
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let accept = format!("127.0.0.1:{port}");
    let mut server = Command::new("openssl")
        .args([
            "s_server",
            "-accept",
            &accept,
            "-naccept",
            "1",
            "-cert",
            "server-cert.pem",
        ])
        .args([
            "-key",
            "server-key.pem",
            "-CAfile",
            "ca.pem",
            "-Verify",
            "1",
        ])
        .args(["-verify_return_error", "-www"])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    assert!(
        lines.any(|l| l.unwrap().starts_with("ACCEPT")),
        "s_server did not start"
    );
    let client = Command::new("openssl")
        .args([
            "s_client", "-connect", &accept, "-CAfile", "ca.pem", "-cert", "cert.pem",
        ])
        .args([
            "-key",
            "key.pem",
            "-verify_return_error",
            "-verify_ip",
            "127.0.0.1",
            "-brief",
        ])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    let out = String::from_utf8_lossy(&client.stderr);
    assert!(
        client.status.success() && out.contains("Verification: OK"),
        "{out}"
    );
}

fn validity_of(cert_pem: &str) -> (i64, i64) {
    let der = pem::parse(cert_pem).unwrap().into_contents();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    (
        cert.validity().not_before.timestamp(),
        cert.validity().not_after.timestamp(),
    )
}

#[test]
fn validity_is_clamped_to_the_ca() {
    let now = unix_secs(SystemTime::now());
    let (nb, na) = (now - 60, now + 3600);
    let short = make(&ca_params(nb, na));
    let ca = ClusterCa::from_pem(&short.0, &short.1, SystemTime::now()).unwrap();
    let cert = issue_server_cert(&ca, SEGMENT_IP, HOST, 365 * DAY, to_system_time(now)).unwrap();
    assert_eq!(validity_of(&cert.cert_pem), (nb, na));
    assert_eq!(cert.not_after, ca.not_after());
    // A CA from a scheduler whose clock is a minute ahead is accepted; its
    // certificates start with it.
    let ahead = make(&ca_params(now + 60, now + 3600));
    let ca = ClusterCa::from_pem(&ahead.0, &ahead.1, to_system_time(now)).unwrap();
    let cert = issue_server_cert(&ca, SEGMENT_IP, HOST, DAY, to_system_time(now)).unwrap();
    assert_eq!(validity_of(&cert.cert_pem), (now + 60, now + 3600));
    // Within a long-lived CA: five minutes of skew before now, validity after.
    let ca = load(&test_ca());
    let cert = issue_server_cert(&ca, SEGMENT_IP, HOST, DAY, to_system_time(now)).unwrap();
    assert_eq!(validity_of(&cert.cert_pem), (now - 300, now + 86_400));
    assert_eq!(cert.not_after, to_system_time(now + 86_400));
    let huge = issue_server_cert(&ca, SEGMENT_IP, HOST, Duration::MAX, SystemTime::now()).unwrap();
    assert_eq!(huge.not_after, ca.not_after());
}

#[test]
fn issue_rejects_bad_arguments() {
    let ca = load(&test_ca());
    let long_label = "a".repeat(64);
    for bad in [
        "",
        "-seg",
        "seg-",
        "a..b",
        "a_b",
        "exa mple",
        "sé",
        &long_label,
    ] {
        let err = issue_server_cert(&ca, SEGMENT_IP, bad, DAY, SystemTime::now()).unwrap_err();
        assert!(
            matches!(err, CertError::InvalidHostname(ref h) if h == bad),
            "{bad:?}: {err:?}"
        );
    }
    let err =
        issue_server_cert(&ca, SEGMENT_IP, HOST, Duration::ZERO, SystemTime::now()).unwrap_err();
    assert!(matches!(err, CertError::ZeroValidity), "{err:?}");
    let later = SystemTime::now() + 31 * DAY;
    let err = issue_server_cert(&ca, SEGMENT_IP, HOST, DAY, later).unwrap_err();
    assert!(matches!(err, CertError::CaExpired { not_after } if not_after == ca.not_after()));
    assert!(
        err.to_string().starts_with("the cluster CA expired at "),
        "{err}"
    );
}

#[test]
fn every_cert_has_its_own_key_and_serial() {
    let ca = load(&test_ca());
    let serial = |pem: &str| {
        let der = pem::parse(pem).unwrap().into_contents();
        x509_parser::parse_x509_certificate(&der)
            .unwrap()
            .1
            .raw_serial()
            .to_vec()
    };
    let a = issue_server_cert(&ca, SEGMENT_IP, HOST, DAY, SystemTime::now()).unwrap();
    let b = issue_server_cert(&ca, SEGMENT_IP, HOST, DAY, SystemTime::now()).unwrap();
    assert_ne!(a.key_pem, b.key_pem);
    assert_ne!(serial(&a.cert_pem), serial(&b.cert_pem));
    let localhost =
        issue_server_cert(&ca, Ipv4Addr::LOCALHOST, HOST, DAY, SystemTime::now()).unwrap();
    assert_openssl_verifies(ca.cert_pem(), &localhost.cert_pem, "sslserver");
}

fn mode(dir: &Path, name: &str) -> u32 {
    fs::metadata(dir.join(name)).unwrap().permissions().mode() & 0o7777
}

#[test]
fn docker_tls_files_are_written_atomically_with_their_modes() {
    let ca = load(&test_ca());
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("etc/docker");
    let first = issue_server_cert(&ca, SEGMENT_IP, HOST, DAY, SystemTime::now()).unwrap();
    write_docker_tls(&dir, ca.cert_pem(), &first, None).unwrap();
    // A rebuild overwrites the previous files in place.
    let cert = issue_server_cert(&ca, SEGMENT_IP, HOST, DAY, SystemTime::now()).unwrap();
    write_docker_tls(&dir, ca.cert_pem(), &cert, Some(4_000_000)).unwrap();
    // The key belongs to the segment's root (dockerd); the rest to host root.
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        fs::metadata(dir.join("server-key.pem")).unwrap().uid(),
        4_000_000
    );
    assert_eq!(fs::metadata(dir.join("ca.pem")).unwrap().uid(), 0);
    assert_eq!(read(&dir, "ca.pem"), ca.cert_pem());
    assert_eq!(read(&dir, "server-cert.pem"), cert.cert_pem);
    assert_eq!(read(&dir, "server-key.pem"), cert.key_pem);
    assert_eq!(mode(&dir, "ca.pem"), 0o444);
    assert_eq!(mode(&dir, "server-cert.pem"), 0o444);
    assert_eq!(mode(&dir, "server-key.pem"), 0o400);
    let mut names: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["ca.pem", "server-cert.pem", "server-key.pem"],
        "no temporary files left"
    );
    assert_openssl_verifies(
        &read(&dir, "ca.pem"),
        &read(&dir, "server-cert.pem"),
        "sslserver",
    );
}

/// Makes a CA with openssl in `dir`: `key_args` after `openssl req -x509`,
/// then an optional conversion of the key to a legacy format.
fn openssl_ca(
    dir: &Path,
    key_args: &[&str],
    convert: Option<&[&str]>,
    subject: &str,
) -> (String, String) {
    let mut args = vec!["req", "-x509", "-nodes", "-days", "30", "-subj", subject];
    args.extend_from_slice(key_args);
    args.extend_from_slice(&["-keyout", "key.pem", "-out", "ca.pem"]);
    openssl_ok(dir, &args);
    if let Some(convert) = convert {
        openssl_ok(dir, convert);
    }
    (read(dir, "ca.pem"), read(dir, "key.pem"))
}

#[test]
fn cluster_ca_can_be_shared_between_tasks() {
    fn shared<T: Send + Sync>() {}
    shared::<ClusterCa>();
    shared::<ServerCert>();
}

fn median_micros(ca: &ClusterCa, rounds: usize) -> u128 {
    let mut times: Vec<u128> = (0..rounds)
        .map(|_| {
            let start = Instant::now();
            issue_server_cert(ca, SEGMENT_IP, HOST, DAY, SystemTime::now()).unwrap();
            start.elapsed().as_micros()
        })
        .collect();
    times.sort_unstable();
    times[rounds / 2]
}

/// Run with `--nocapture` to see the numbers (a release build is faster).
#[test]
fn measure_issue_time() {
    let ec = test_ca();
    let start = Instant::now();
    let ca = load(&ec);
    let took = start.elapsed().as_micros();
    println!("ClusterCa::from_pem, EC P-256 CA: {took} us");
    let median = median_micros(&ca, 50);
    println!("issue_server_cert, EC P-256 CA: median of 50 = {median} us");
    let server = issue_server_cert(&ca, SEGMENT_IP, HOST, DAY, SystemTime::now()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut times: Vec<u128> = (0..20)
        .map(|_| {
            let start = Instant::now();
            write_docker_tls(dir.path(), ca.cert_pem(), &server, None).unwrap();
            start.elapsed().as_micros()
        })
        .collect();
    times.sort_unstable();
    println!(
        "write_docker_tls (3 files, 4 fsyncs): median of 20 = {} us",
        times[10]
    );
    let (cert, key) = openssl_ca(dir.path(), &["-newkey", "rsa:2048"], None, "/CN=rsa");
    let start = Instant::now();
    let ca = ClusterCa::from_pem(&cert, &key, SystemTime::now()).unwrap();
    let took = start.elapsed().as_micros();
    println!("ClusterCa::from_pem, RSA 2048 CA: {took} us");
    let median = median_micros(&ca, 50);
    println!("issue_server_cert, RSA 2048 CA: median of 50 = {median} us");
}
