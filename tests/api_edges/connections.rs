//! The server's connection limits: closed after the idle timeout unless a
//! call is open, at most `max_connections` per listener.

use crate::common::{FakeAgent, small_req};
use hyper_util::rt::TokioIo;
use segment_agent::proto::agent::{
    GetHostRequest, SegmentEventType, WatchEventsRequest, segment_agent_client::SegmentAgentClient,
};
use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};
use tokio::{io::AsyncReadExt, net::UnixStream};
use tonic::Code;
use tonic::transport::{Channel, Endpoint, Uri};

/// A client on the agent's socket that counts the connections it opens.
async fn counting_client(socket: &Path) -> (SegmentAgentClient<Channel>, Arc<AtomicUsize>) {
    let connects = Arc::new(AtomicUsize::new(0));
    let (path, counter) = (socket.to_owned(), connects.clone());
    let channel = Endpoint::try_from("http://localhost")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            counter.fetch_add(1, Ordering::SeqCst);
            async move { UnixStream::connect(path).await.map(TokioIo::new) }
        }))
        .await
        .unwrap();
    (SegmentAgentClient::new(channel), connects)
}

/// A raw connection, if the server keeps it: it sends its HTTP/2 SETTINGS
/// first; a refused one is closed before that.
async fn raw_connection(socket: &Path) -> Option<UnixStream> {
    let mut s = UnixStream::connect(socket).await.unwrap();
    let mut buf = [0; 256];
    let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
        .await
        .expect("the server answers or closes at once")
        .unwrap_or(0);
    (n > 0).then_some(s)
}

fn exposition(a: &FakeAgent) -> String {
    let mut text = String::new();
    a.metrics.encode(&mut text).unwrap();
    text
}

/// The value of the series that starts with `series`.
fn value(text: &str, series: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.starts_with(series))?;
    line.rsplit(' ').next()?.parse().ok()
}

/// Connections of `listener` the server closed as idle.
fn idle_closes(a: &FakeAgent, listener: &str) -> f64 {
    let series = format!(
        "segment_agent_api_connections_closed_total{{listener=\"{listener}\",reason=\"idle\"}}"
    );
    value(&exposition(a), &series).unwrap_or(0.0)
}

/// Waits (10 s at most) until the server has closed `n` idle connections
/// of `listener`: watching the counter touches no connection.
async fn until_idle_closes(a: &FakeAgent, listener: &str, n: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while idle_closes(a, listener) < n {
        assert!(
            Instant::now() < deadline,
            "{} idle connections closed, not {n}",
            idle_closes(a, listener)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_connection_without_an_open_call_is_closed_after_the_idle_timeout() {
    let a = FakeAgent::start("[listen]\nidle_timeout_seconds = 1\n").await;
    let socket = a.dir.path().join("agent.sock");
    let (mut client, connects) = counting_client(&socket).await;
    client.get_host(GetHostRequest {}).await.unwrap();
    // At the socket level: the server's SETTINGS, then its close about a
    // second later.
    let started = Instant::now();
    let mut raw = raw_connection(&socket).await.expect("accepted");
    let mut buf = [0; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), raw.read(&mut buf))
        .await
        .expect("the server closes an idle connection")
        .unwrap();
    assert_eq!(n, 0, "end of file");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900), "not before: {took:?}");
    // The client's connection, idle since its call, is gone too (as is
    // the agent's own client's, which made none): the next call opens
    // another, and succeeds.
    until_idle_closes(&a, "unix", 3.0).await;
    assert_eq!(connects.load(Ordering::SeqCst), 1);
    // A call the client sends before it has read the server's close fails
    // (CANCELLED or UNAVAILABLE: the close is an end of file, not a GOAWAY,
    // which tonic gives no way to send); on a loaded machine that window
    // is wide, so the call is retried as a client would.
    let mut answer = client.get_host(GetHostRequest {}).await;
    for _ in 0..2 {
        match &answer {
            Err(e) if matches!(e.code(), Code::Cancelled | Code::Unavailable) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                answer = client.get_host(GetHostRequest {}).await;
            }
            _ => break,
        }
    }
    answer.unwrap();
    assert_eq!(
        connects.load(Ordering::SeqCst),
        2,
        "the idle connection was closed by the server"
    );
}

#[tokio::test]
async fn an_open_watch_keeps_its_connection_past_the_idle_timeout() {
    let a = FakeAgent::start("[listen]\nidle_timeout_seconds = 1\n").await;
    let socket = a.dir.path().join("agent.sock");
    let (mut client, connects) = counting_client(&socket).await;
    let mut events = client
        .watch_events(WatchEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let first = events.message().await.unwrap().unwrap();
    assert_eq!(first.r#type(), SegmentEventType::SnapshotEnd);
    // Several idle timeouts, nothing sent on the stream.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    // The agent's own client, which made no call, is closed meanwhile.
    assert_eq!(idle_closes(&a, "unix"), 1.0);
    client
        .create_segment(small_req("late", "c1"))
        .await
        .unwrap();
    let e = tokio::time::timeout(Duration::from_secs(5), events.message())
        .await
        .expect("an event")
        .expect("the stream is still open")
        .expect("not ended");
    assert_eq!(e.r#type(), SegmentEventType::Created);
    assert_eq!(e.segment.unwrap().segment_id, "late");
    client.get_host(GetHostRequest {}).await.unwrap();
    assert_eq!(
        connects.load(Ordering::SeqCst),
        1,
        "one connection throughout"
    );
    // Once the watch is over the connection is idle, and closed.
    drop(events);
    until_idle_closes(&a, "unix", 2.0).await;
    client.get_host(GetHostRequest {}).await.unwrap();
    assert_eq!(connects.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn connections_beyond_the_cap_are_closed_at_once() {
    let a = FakeAgent::start("[listen]\nmax_connections = 3\n").await;
    let socket = a.dir.path().join("agent.sock");
    // The agent's own client holds one.
    let (mut second, _) = counting_client(&socket).await;
    second.get_host(GetHostRequest {}).await.unwrap();
    let (mut third, _) = counting_client(&socket).await;
    third.get_host(GetHostRequest {}).await.unwrap();
    let started = Instant::now();
    assert!(
        raw_connection(&socket).await.is_none(),
        "the fourth connection is closed"
    );
    assert!(started.elapsed() < Duration::from_secs(1), "at once");
    // The first three still work.
    for client in [&mut a.client.clone(), &mut second, &mut third] {
        client.get_host(GetHostRequest {}).await.unwrap();
    }
    let text = exposition(&a);
    let open = r#"segment_agent_api_connections{listener="unix"}"#;
    let refused = r#"segment_agent_api_connections_closed_total{listener="unix",reason="limit"}"#;
    assert_eq!(value(&text, open), Some(3.0), "{text}");
    assert_eq!(value(&text, refused), Some(1.0), "{text}");
    // A closed connection frees its place (once the server saw it close).
    drop(second);
    let deadline = Instant::now() + Duration::from_secs(5);
    let fourth = loop {
        if let Some(s) = raw_connection(&socket).await {
            break s;
        }
        assert!(Instant::now() < deadline, "no place freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    third.get_host(GetHostRequest {}).await.unwrap();
    assert!(raw_connection(&socket).await.is_none(), "full again");
    drop(fourth);
}

#[tokio::test]
async fn idle_tls_connections_are_closed_too() {
    use segment_agent::{
        api::Listeners,
        certs::testing::{generate_test_ca, issue_client_cert},
        certs::{ClusterCa, issue_server_cert},
        config::ListenConfig,
    };
    use std::time::SystemTime;
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let dir = tempfile::tempdir().unwrap();
    let day = Duration::from_secs(86_400);
    let (ca_pem, ca_key) = generate_test_ca("scheduler-ca", day).unwrap();
    let ca = ClusterCa::from_pem(&ca_pem, &ca_key, SystemTime::now()).unwrap();
    let now = SystemTime::now();
    let server = issue_server_cert(&ca, "127.0.0.1".parse().unwrap(), "localhost", day, now);
    let server = server.unwrap();
    for (name, text) in [
        ("ca.pem", &ca_pem),
        ("cert.pem", &server.cert_pem),
        ("key.pem", &server.key_pem),
    ] {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let config = ListenConfig {
        socket: dir.path().join("agent.sock"),
        tcp: Some("127.0.0.1:0".parse().unwrap()),
        tls_cert: Some(dir.path().join("cert.pem")),
        tls_key: Some(dir.path().join("key.pem")),
        tls_client_ca: Some(dir.path().join("ca.pem")),
        idle_timeout_seconds: 1,
        ..ListenConfig::default()
    };
    let a = FakeAgent::start("").await;
    let listeners = Listeners::bind(&config).await.unwrap();
    let addr = listeners.tcp_addr().unwrap();
    let host = segment_agent::host::HostFacts {
        host_id: "tcp".into(),
        cpus: 1,
        memory_mib: 1024,
    };
    tokio::spawn(segment_agent::agent::serve(
        a.manager.clone(),
        host,
        listeners,
        a.metrics.clone(),
        std::future::pending(),
    ));
    // Silent before the handshake: closed all the same.
    let started = Instant::now();
    let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = [0; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), raw.read(&mut buf))
        .await
        .expect("the server closes a silent connection")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(started.elapsed() >= Duration::from_millis(900));
    // A client idle after its call is closed; its next call reconnects.
    let (cert, key) = issue_client_cert(&ca, "scheduler").unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost")
        .identity(Identity::from_pem(cert, key));
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = SegmentAgentClient::new(channel);
    client.get_host(GetHostRequest {}).await.unwrap();
    until_idle_closes(&a, "tcp", 2.0).await;
    client.get_host(GetHostRequest {}).await.unwrap();
    until_idle_closes(&a, "tcp", 3.0).await;
}
