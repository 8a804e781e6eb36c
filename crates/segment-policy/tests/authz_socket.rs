//! The plugin server on a real unix socket, spoken to the way dockerd's
//! plugin client does (HTTP/1.1 POSTs of JSON), and the real binary's
//! lifecycle (socket created, SIGTERM, socket removed).

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use segment_policy::authz::{self, Segment, ServeError};
use segment_policy::inspect::DockerSocket;
use segment_policy::resolver::KernelArea;
use serde_json::{Value, json};
use tokio::net::UnixStream;

async fn connect(socket: &Path) -> SendRequest<Full<Bytes>> {
    let stream = UnixStream::connect(socket)
        .await
        .expect("connect to plugin");
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    sender
}

async fn call(
    sender: &mut SendRequest<Full<Bytes>>,
    method: &str,
    path: &str,
    body: Value,
) -> (StatusCode, Value) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("Host", "plugin")
        .header("Accept", "application/vnd.docker.plugins.v1.2+json")
        .header("Content-Type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request");
    let response = sender.send_request(request).await.expect("send");
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, serde_json::from_slice(&bytes).expect("JSON reply"))
}

/// An `AuthZPlugin.AuthZReq` payload as dockerd builds it.
fn authz_req(method: &str, uri: &str, body: Option<&str>) -> Value {
    authz_req_typed(method, uri, body, "application/json")
}

/// The same with another `Content-Type` (dockerd forwards only the last
/// value of a repeated header, and no body unless it is JSON).
fn authz_req_typed(method: &str, uri: &str, body: Option<&str>, content_type: &str) -> Value {
    json!({
        "User": "customer",
        "UserAuthNMethod": "TLS",
        "RequestMethod": method,
        "RequestUri": uri,
        "RequestBody": body.map(|b| base64::engine::general_purpose::STANDARD.encode(b)),
        "RequestHeaders": {"Content-Type": content_type, "User-Agent": "Docker-Client/20.10.24+dfsg1 (linux)"},
        "RequestPeerCertificates": null,
    })
}

fn fixture_body(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/docker")
        .join(format!("{name}.http"));
    let text = std::fs::read_to_string(path).expect("fixture");
    text.split_once('\n').expect("request line").1.to_string()
}

/// A segment root whose data area holds a symlink to `/`, planted the
/// way a container with `-v /var/lib/docker/x:/d` would.
fn segment_root() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("var/lib/docker/x");
    std::fs::create_dir_all(&data).expect("mkdir");
    symlink("/", data.join("escape")).expect("symlink");
    dir
}

#[tokio::test]
async fn serves_the_plugin_protocol() {
    let root = segment_root();
    let socket = root.path().join("run/docker/plugins/segment-policy.sock");
    let listener = authz::bind(&socket).expect("bind");
    // A second instance must not steal the socket of a live one.
    assert!(matches!(
        authz::bind(&socket),
        Err(ServeError::InUse { .. })
    ));
    let mode = std::fs::metadata(&socket)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let segment = Arc::new(Segment {
        area: Arc::new(KernelArea::new(root.path())),
        containers: Arc::new(DockerSocket::new(root.path().join("no-dockerd.sock"))),
        agent_token: Default::default(),
    });
    let server = tokio::spawn(authz::serve(listener, segment, async {
        let _ = stopped.await;
    }));

    // One keep-alive connection, as dockerd's plugin client keeps.
    let mut plugin = connect(&socket).await;
    let (status, reply) = call(&mut plugin, "POST", "/Plugin.Activate", Value::Null).await;
    assert_eq!(
        (status, reply),
        (StatusCode::OK, json!({"Implements": ["authz"]}))
    );

    let privileged = fixture_body("run_privileged");
    let escape =
        r#"{"Image":"busybox","HostConfig":{"Binds":["/var/lib/docker/x/escape/etc:/x"]}}"#;
    let cases = [
        (
            authz_req("POST", "/v1.41/containers/create", Some(&privileged)),
            false,
            "SEGMENT-1001: privileged containers are not allowed by policy",
        ),
        (
            authz_req(
                "POST",
                "/v1.41/containers/create",
                Some(&fixture_body("run_plain")),
            ),
            true,
            "",
        ),
        (
            authz_req("POST", "/v1.41/containers/create", Some(escape)),
            false,
            "SEGMENT-1011: bind mounts of host path \"/var/lib/docker/x/escape/etc\" are not allowed by policy: /var/lib/docker/x/escape is a symbolic link (symbolic links, devices and mount points are not followed)",
        ),
        (
            authz_req(
                "POST",
                "/v1.41/containers/create",
                Some(r#"{"HostConfig":{"Binds":["/var/lib/docker/x/new/dir:/x"]}}"#),
            ),
            true,
            "",
        ),
        (
            authz_req("POST", "/v1.41/containers/x/frobnicate", None),
            false,
            "SEGMENT-1103: \"POST\" \"/containers/x/frobnicate\" is not an API route the policy knows and is refused",
        ),
        (
            authz_req_typed(
                "POST",
                "/v1.41/build?t=x",
                None,
                "application/x-www-form-urlencoded",
            ),
            false,
            "SEGMENT-1100: request bodies of type \"application/x-www-form-urlencoded\" carry parameters the policy cannot inspect and are refused",
        ),
        (
            authz_req_typed("POST", "/v1.41/build?t=x", None, "application/x-tar"),
            true,
            "",
        ),
        (
            authz_req("POST", "/v1.41/grpc", None),
            false,
            "SEGMENT-1025: BuildKit's raw gRPC API (POST /grpc, used by buildx; the policy cannot see inside it; use docker build) is not available in segments",
        ),
        (
            authz_req(
                "POST",
                "/v1.23/containers/web/start",
                Some(r#"{"HostConfig":{"Privileged":true}}"#),
            ),
            false,
            "SEGMENT-1001: privileged containers are not allowed by policy",
        ),
        (
            authz_req("POST", "/v1.41/containers/create", None),
            false,
            "SEGMENT-1100: the request body was not forwarded for inspection (send it as application/json with a Content-Length, under 1 MiB) and the request is refused by policy",
        ),
        (authz_req("GET", "/v1.41/containers/json", None), true, ""),
        (
            json!({"RequestMethod": "POST"}),
            false,
            "SEGMENT-1102: the authorization request could not be read and is refused by policy: RequestMethod or RequestUri missing",
        ),
    ];
    for (payload, allow, msg) in cases {
        let (status, reply) = call(
            &mut plugin,
            "POST",
            "/AuthZPlugin.AuthZReq",
            payload.clone(),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            reply,
            json!({"Allow": allow, "Msg": msg, "Err": ""}),
            "{payload}"
        );
    }

    // A real AuthZRes payload captured from dockerd 20.10.
    let res_path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/docker/authz/authzres_create.json");
    let res: Value =
        serde_json::from_slice(&std::fs::read(res_path).expect("fixture")).expect("JSON");
    let (status, reply) = call(&mut plugin, "POST", "/AuthZPlugin.AuthZRes", res).await;
    assert_eq!(
        (status, reply),
        (StatusCode::OK, json!({"Allow": true, "Msg": "", "Err": ""}))
    );

    let (status, _) = call(&mut plugin, "POST", "/VolumeDriver.Create", Value::Null).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = call(&mut plugin, "GET", "/Plugin.Activate", Value::Null).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);

    // Shutdown completes although the client keeps its connection open.
    stop.send(()).expect("server running");
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("server stops")
        .expect("server task");
    assert!(UnixStream::connect(&socket).await.is_err());

    // A stale socket is replaced; anything else is left alone.
    drop(authz::bind(&socket).expect("rebind over a stale socket"));
    let file = root.path().join("not-a-socket");
    std::fs::write(&file, "x").expect("write");
    assert!(matches!(
        authz::bind(&file),
        Err(ServeError::NotASocket { .. })
    ));
}

fn wait_for(path: &Path, present: bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if path.exists() == present {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn binary_serves_until_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket: PathBuf = dir.path().join("plugins/segment-policy.sock");
    let mut child = Command::new(env!("CARGO_BIN_EXE_segment-authz"))
        .arg("--socket")
        .arg(&socket)
        .arg("--root")
        .arg(dir.path())
        .stderr(Stdio::null())
        .spawn()
        .expect("start segment-authz");
    assert!(wait_for(&socket, true), "socket never appeared");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let reply = runtime.block_on(async {
        let mut plugin = connect(&socket).await;
        let payload = authz_req(
            "POST",
            "/v1.41/containers/create",
            Some(&fixture_body("run_cap_add")),
        );
        call(&mut plugin, "POST", "/AuthZPlugin.AuthZReq", payload)
            .await
            .1
    });
    assert_eq!(
        reply["Msg"],
        "SEGMENT-1002: adding capabilities (--cap-add) is not allowed by policy"
    );

    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = child.wait().expect("wait");
    assert!(exit.success(), "{exit:?}");
    assert!(!socket.exists(), "socket left behind");

    let usage = Command::new(env!("CARGO_BIN_EXE_segment-authz"))
        .arg("--bogus")
        .stderr(Stdio::null())
        .status()
        .expect("run");
    assert_eq!(usage.code(), Some(2));
}

/// A fake dockerd on a unix socket answering container and volume
/// inspects from a table (404 for the rest).
async fn fake_dockerd(listener: tokio::net::UnixListener, answers: Vec<(&'static str, Value)>) {
    let answers = Arc::new(answers);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let answers = Arc::clone(&answers);
        let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
            let found = answers
                .iter()
                .find(|(path, _)| *path == req.uri().path())
                .map(|(_, v)| v.clone());
            async move {
                let (status, body) = match found {
                    Some(v) => (StatusCode::OK, v.to_string()),
                    None => (
                        StatusCode::NOT_FOUND,
                        r#"{"message":"no such"}"#.to_string(),
                    ),
                };
                let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
                *response.status_mut() = status;
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        tokio::spawn(
            hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service),
        );
    }
}

/// Start, restart and docker cp check what the kernel finds now at the
/// sources dockerd stored at create: a symlink planted after the create
/// is refused, as is a request whose container cannot be looked up.
#[tokio::test]
async fn start_checks_the_sources_dockerd_stored() {
    let root = segment_root();
    let dockerd = root.path().join("docker.sock");
    let dockerd_listener = tokio::net::UnixListener::bind(&dockerd).expect("bind fake dockerd");
    tokio::spawn(fake_dockerd(
        dockerd_listener,
        vec![
            (
                "/containers/victim/json",
                json!({"HostConfig": {"Binds": ["/var/lib/docker/x/escape:/h"]}, "Mounts": []}),
            ),
            (
                "/containers/clean/json",
                json!({"HostConfig": {"Binds": ["/var/lib/docker/x/new:/h"]},
                       "Mounts": [{"Type": "volume", "Name": "bound", "Driver": "local"}]}),
            ),
            (
                "/volumes/bound",
                json!({"Options": {"type": "none", "o": "bind", "device": "/var/lib/docker/x"}}),
            ),
            (
                "/containers/viavolume/json",
                json!({"HostConfig": {}, "Mounts": [{"Type": "volume", "Name": "evil", "Driver": "local"}]}),
            ),
            (
                "/volumes/evil",
                json!({"Options": {"type": "none", "o": "bind", "device": "/var/lib/docker/x/escape"}}),
            ),
        ],
    ));
    let socket = root.path().join("plugin.sock");
    let listener = authz::bind(&socket).expect("bind");
    let segment = Arc::new(Segment {
        area: Arc::new(KernelArea::new(root.path())),
        containers: Arc::new(DockerSocket::new(&dockerd)),
        agent_token: Default::default(),
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(authz::serve(listener, segment, async {
        let _ = stopped.await;
    }));
    let mut plugin = connect(&socket).await;
    let cases: &[(&str, &str, Option<&str>)] = &[
        (
            "POST",
            "/v1.41/containers/victim/start",
            Some("SEGMENT-1011"),
        ),
        (
            "POST",
            "/v1.41/containers/victim/restart?t=1",
            Some("SEGMENT-1011"),
        ),
        (
            "PUT",
            "/v1.41/containers/victim/archive?path=/h",
            Some("SEGMENT-1011"),
        ),
        (
            "GET",
            "/v1.41/containers/victim/archive?path=/h/etc/shadow",
            Some("SEGMENT-1011"),
        ),
        (
            "HEAD",
            "/v1.41/containers/victim/archive?path=/h",
            Some("SEGMENT-1011"),
        ),
        (
            "POST",
            "/v1.41/containers/viavolume/start",
            Some("SEGMENT-1011"),
        ),
        ("POST", "/v1.41/containers/clean/start", None),
        ("PUT", "/v1.41/containers/clean/archive?path=/h", None),
        ("POST", "/v1.41/containers/missing/start", None),
        ("POST", "/v1.41/containers/victim/kill", None),
    ];
    for (method, uri, want) in cases {
        let (_, reply) = call(
            &mut plugin,
            "POST",
            "/AuthZPlugin.AuthZReq",
            authz_req(method, uri, None),
        )
        .await;
        let msg = reply["Msg"].as_str().unwrap_or_default().to_string();
        match want {
            Some(code) => assert!(msg.starts_with(code), "{method} {uri}: {reply}"),
            None => assert_eq!(reply["Allow"], true, "{method} {uri}: {reply}"),
        }
    }
    // The lookup fails closed: with dockerd gone, a start is refused.
    std::fs::remove_file(&dockerd).expect("remove fake dockerd socket");
    let (_, reply) = call(
        &mut plugin,
        "POST",
        "/AuthZPlugin.AuthZReq",
        authz_req("POST", "/v1.41/containers/clean/start", None),
    )
    .await;
    assert!(
        reply["Msg"].as_str().unwrap_or_default().starts_with(
            "SEGMENT-1104: the container's bind mounts could not be checked (cannot reach dockerd"
        ),
        "{reply}"
    );
    stop.send(()).expect("server running");
    server.await.expect("server task");
}
