//! The front over real sockets: a verified client reaches the upstream, an
//! unverified one does not, and a reload closes old sessions and refuses
//! the replaced CA's certificates.

use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use segment_agent::certs::{self, ClusterCa};
use segment_policy::front::*;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_rustls::rustls::{ClientConfig, pki_types::ServerName};

const HOUR: Duration = Duration::from_secs(3600);

struct Cluster {
    ca_pem: String,
    ca: ClusterCa,
}

fn cluster(cn: &str) -> Cluster {
    let (ca_pem, key) = certs::testing::generate_test_ca(cn, HOUR).unwrap();
    let ca = ClusterCa::from_pem(&ca_pem, &key, SystemTime::now()).unwrap();
    Cluster { ca_pem, ca }
}

fn certify(dir: &Path, c: &Cluster) {
    let server = certs::issue_server_cert(
        &c.ca,
        "127.0.0.1".parse().unwrap(),
        "seg-t",
        HOUR,
        SystemTime::now(),
    )
    .unwrap();
    certs::write_docker_tls(dir, &c.ca_pem, &server, None).unwrap();
}

fn client(c: &Cluster, with_cert: bool) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(c.ca_pem.as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = if with_cert {
        let (cert, key) = certs::testing::issue_client_cert(&c.ca, "customer").unwrap();
        builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap()
    } else {
        builder.with_no_client_auth()
    };
    TlsConnector::from(Arc::new(config))
}

/// An upstream that echoes each connection.
fn echo(path: &Path) {
    let listener = UnixListener::bind(path).unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
}

async fn round_trip(connector: &TlsConnector, port: u16) -> io::Result<Vec<u8>> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector.connect(name, tcp).await?;
    tls.write_all(b"GET /_ping").await?;
    let mut buf = vec![0; 10];
    tls.read_exact(&mut buf).await?;
    Ok(buf)
}

struct Front {
    port: u16,
    sender: watch::Sender<Arc<ServerConfig>>,
    dir: tempfile::TempDir,
}

async fn start(c: &Cluster) -> Front {
    let dir = tempfile::tempdir().unwrap();
    certify(dir.path(), c);
    let upstream = dir.path().join("docker.sock");
    echo(&upstream);
    let (sender, receiver) = watch::channel(load_config(dir.path()).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(serve(listener, receiver, upstream, std::future::pending()));
    Front { port, sender, dir }
}

#[tokio::test]
async fn a_verified_client_reaches_the_upstream_and_others_do_not() {
    let c = cluster("cluster-a");
    let front = start(&c).await;
    assert_eq!(
        round_trip(&client(&c, true), front.port).await.unwrap(),
        b"GET /_ping"
    );
    assert!(round_trip(&client(&c, false), front.port).await.is_err());
    let other = cluster("cluster-b");
    assert!(round_trip(&client(&other, true), front.port).await.is_err());
}

#[tokio::test]
async fn a_reload_closes_old_sessions_and_refuses_the_replaced_ca() {
    let (old, new) = (cluster("old"), cluster("new"));
    let front = start(&old).await;
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", front.port)).await.unwrap();
    let mut session = client(&old, true).connect(name, tcp).await.unwrap();
    session.write_all(b"x").await.unwrap();
    let mut one = [0u8; 1];
    session.read_exact(&mut one).await.unwrap();

    certify(front.dir.path(), &new);
    reload(front.dir.path(), &front.sender);
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), session.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the old session is closed at the reload");
    assert!(round_trip(&client(&old, true), front.port).await.is_err());
    assert_eq!(
        round_trip(&client(&new, true), front.port).await.unwrap(),
        b"GET /_ping"
    );
}

#[tokio::test]
async fn a_broken_reload_keeps_the_old_certificates() {
    let c = cluster("cluster-a");
    let front = start(&c).await;
    std::fs::write(front.dir.path().join("ca.pem.tmp"), "").unwrap();
    std::fs::rename(
        front.dir.path().join("ca.pem.tmp"),
        front.dir.path().join("ca.pem"),
    )
    .unwrap();
    assert!(load_config(front.dir.path()).is_err());
    reload(front.dir.path(), &front.sender);
    assert_eq!(
        round_trip(&client(&c, true), front.port).await.unwrap(),
        b"GET /_ping"
    );
}
