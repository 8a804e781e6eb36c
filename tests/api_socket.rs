//! The agent's socket: a second agent on the same socket refuses to serve,
//! and an exiting agent removes only the socket file it bound itself.

mod common;

use common::FakeAgent;
use segment_agent::{
    api::{Listeners, server::ListenError},
    config::ListenConfig,
    proto::agent::GetHostRequest,
};

#[tokio::test]
async fn a_second_agent_on_an_answering_socket_refuses_to_bind() {
    let mut a = FakeAgent::start("").await;
    let socket = a.dir.path().join("agent.sock");
    let config = ListenConfig {
        socket: socket.clone(),
        ..ListenConfig::default()
    };
    match Listeners::bind(&config).await {
        Err(e @ ListenError::InUse(_)) => {
            assert!(e.to_string().contains("already running"), "{e}")
        }
        Err(e) => panic!("another error: {e}"),
        Ok(_) => panic!("a second agent took the socket over"),
    }
    // The first one still serves on it.
    a.client.get_host(GetHostRequest {}).await.unwrap();
    // A stale file (nobody answers) is replaced.
    let stale = a.dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let config = ListenConfig {
        socket: stale,
        ..ListenConfig::default()
    };
    assert!(Listeners::bind(&config).await.is_ok());
}

#[tokio::test]
async fn an_exiting_agent_leaves_a_socket_it_does_not_own() {
    let a = FakeAgent::start("").await;
    let socket = a.dir.path().join("agent.sock");
    // Someone else's socket now lives at the path (removed and bound anew).
    std::fs::remove_file(&socket).unwrap();
    let _other = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let (_hv, dir) = a.shut_down().await;
    assert!(
        dir.path().join("agent.sock").exists(),
        "the exiting agent removed a socket it did not bind"
    );
    // Its own socket it removes.
    let b = FakeAgent::start("").await;
    let (_hv, dir) = b.shut_down().await;
    assert!(!dir.path().join("agent.sock").exists());
}
