//! CAs made by other tools (openssl's key formats and subjects), key types
//! the agent does not support, and corrupted input.

use super::*;

/// One openssl-made CA: the key options of `openssl req`, an optional key
/// conversion, and the PEM header the key must then have.
type OpensslCase<'a> = (&'a str, &'a [&'a str], Option<&'a [&'a str]>, &'a str);

#[test]
fn openssl_made_cas_are_accepted_and_can_sign() {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"];
    let p384 = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"];
    let rsa = ["-newkey", "rsa:2048"];
    let sec1: &[&str] = &["ec", "-in", "key.pem", "-out", "key.pem"];
    let pkcs1: &[&str] = &["rsa", "-traditional", "-in", "key.pem", "-out", "key.pem"];
    #[rustfmt::skip]
    let cases: &[OpensslCase] = &[
        ("EC P-256, PKCS#8", &ec, None, "BEGIN PRIVATE KEY"),
        ("EC P-256, SEC1", &ec, Some(sec1), "BEGIN EC PRIVATE KEY"),
        ("EC P-384, PKCS#8", &p384, None, "BEGIN PRIVATE KEY"),
        ("EC P-384, SEC1", &p384, Some(sec1), "BEGIN EC PRIVATE KEY"),
        ("Ed25519", &["-newkey", "ed25519"], None, "BEGIN PRIVATE KEY"),
        ("RSA 2048, PKCS#8", &rsa, None, "BEGIN PRIVATE KEY"),
        ("RSA 2048, PKCS#1", &rsa, Some(pkcs1), "BEGIN RSA PRIVATE KEY"),
        ("RSA 4096, PKCS#8", &["-newkey", "rsa:4096"], None, "BEGIN PRIVATE KEY"),
    ];
    for (name, key_args, convert, key_header) in cases {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = openssl_ca(dir.path(), key_args, *convert, "/O=Example/CN=openssl CA");
        assert!(key.contains(key_header), "{name}: {key}");
        let ca = ClusterCa::from_pem(&cert, &key, SystemTime::now())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let leaf = issue_server_cert(&ca, SEGMENT_IP, HOST, DAY, SystemTime::now()).unwrap();
        assert_openssl_verifies(&cert, &leaf.cert_pem, "sslserver");
    }
}

#[test]
fn ecparam_genkey_output_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    openssl_ok(
        dir.path(),
        &[
            "ecparam",
            "-genkey",
            "-name",
            "prime256v1",
            "-out",
            "key.pem",
        ],
    );
    assert!(read(dir.path(), "key.pem").contains("BEGIN EC PARAMETERS"));
    let args = [
        "req",
        "-x509",
        "-key",
        "key.pem",
        "-days",
        "1",
        "-subj",
        "/CN=ecparam CA",
        "-out",
        "ca.pem",
    ];
    openssl_ok(dir.path(), &args);
    let ca = ClusterCa::from_pem(
        &read(dir.path(), "ca.pem"),
        &read(dir.path(), "key.pem"),
        SystemTime::now(),
    );
    let leaf = issue_server_cert(&ca.unwrap(), SEGMENT_IP, HOST, DAY, SystemTime::now()).unwrap();
    assert_openssl_verifies(&read(dir.path(), "ca.pem"), &leaf.cert_pem, "sslserver");
}

#[test]
fn subjects_rcgen_cannot_reproduce_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"];
    let (cert, key) = openssl_ca(dir.path(), &ec, None, "/DC=example/DC=com/CN=Enterprise CA");
    let err = ClusterCa::from_pem(&cert, &key, SystemTime::now()).unwrap_err();
    assert!(matches!(err, CaError::UnsupportedSubject(_)), "{err:?}");
    assert!(err.to_string().contains("DC=example"), "{err}");
}

#[test]
fn unsupported_key_types_are_malformed_keys() {
    let dir = tempfile::tempdir().unwrap();
    let p521 = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-521"];
    let (cert, key) = openssl_ca(dir.path(), &p521, None, "/CN=P-521 CA");
    let err = ClusterCa::from_pem(&cert, &key, SystemTime::now()).unwrap_err();
    assert!(
        err.to_string()
            .contains("not an EC P-256/P-384, Ed25519 or RSA"),
        "{err}"
    );
}

/// Corrupted certificates and keys are errors, never panics.
#[test]
fn corrupted_input_never_panics() {
    let (cert, key) = test_ca();
    let cert_der = pem::parse(&cert).unwrap().into_contents();
    let key_der = pem::parse(&key).unwrap().into_contents();
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..400 {
        let (mut c, mut k) = (cert_der.clone(), key_der.clone());
        let target = if round % 2 == 0 { &mut c } else { &mut k };
        let at = (next() as usize) % target.len();
        match round % 4 {
            0 | 1 => target[at] ^= 1 << (next() % 8),
            2 => target.truncate(at),
            _ => target.insert(at, next() as u8),
        }
        let c = pem_encode("CERTIFICATE", &c);
        let k = pem_encode("PRIVATE KEY", &k);
        // Flipping a bit in a signature or padding may leave a valid CA.
        let _ = ClusterCa::from_pem(&c, &k, SystemTime::now());
    }
}
