//! Docker segments in tests: cluster CAs and client certificates, the real
//! docker CLI run inside the sandbox network namespace against a segment's
//! mutual-TLS endpoint, and a busybox image (plus a memory hog) to import
//! into a segment's dockerd, since no image can be pulled.

use super::real::NETNS;
use segment_agent::{
    certs::ClusterCa,
    certs::testing::{generate_test_ca, issue_client_cert},
    proto::agent::ClusterTls,
};
use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::OnceLock,
    time::{Duration, Instant, SystemTime},
};

/// A cluster CA made for a test.
pub struct TestCa {
    /// The CA certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PEM.
    pub key_pem: String,
}

impl TestCa {
    /// A self-signed CA named `cn`, valid for 30 days.
    pub fn new(cn: &str) -> Self {
        let (cert_pem, key_pem) = generate_test_ca(cn, Duration::from_secs(30 * 86_400)).unwrap();
        TestCa { cert_pem, key_pem }
    }

    /// The SHA-256 by which segments name the CA (`ca_cert_sha256`).
    pub fn sha256(&self) -> String {
        segment_agent::certs::pem_fingerprint(&self.cert_pem).unwrap()
    }

    /// The CA as a request carries it.
    pub fn tls(&self) -> ClusterTls {
        ClusterTls {
            ca_cert_pem: self.cert_pem.clone(),
            ca_key_pem: self.key_pem.clone(),
        }
    }

    /// The CA, validated.
    pub fn cluster_ca(&self) -> ClusterCa {
        ClusterCa::from_pem(&self.cert_pem, &self.key_pem, SystemTime::now()).unwrap()
    }

    /// A client certificate and key (`CN=customer`), PEM.
    pub fn client_cert(&self) -> (String, String) {
        issue_client_cert(&self.cluster_ca(), "customer").unwrap()
    }

    /// The base64 lines of the private key's PEM body (what a copy of the
    /// key on disk would contain).
    pub fn key_body_lines(&self) -> Vec<String> {
        self.key_pem
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("-----"))
            .map(str::to_owned)
            .collect()
    }
}

/// What one docker CLI call did.
#[derive(Debug)]
pub struct CliOutput {
    /// Whether it exited 0.
    pub success: bool,
    /// Its exit code (None when killed by a signal).
    pub code: Option<i32>,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

impl From<Output> for CliOutput {
    fn from(o: Output) -> Self {
        CliOutput {
            success: o.status.success(),
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// The real docker CLI talking to one segment's dockerd with mutual TLS
/// from inside the sandbox namespace. Its PEM files and its CLI config
/// live in a temporary directory.
pub struct DockerCli {
    dir: tempfile::TempDir,
    host: String,
    ca: PathBuf,
    client: Option<(PathBuf, PathBuf)>,
}

impl DockerCli {
    /// A client of `tcp://ip:2376` trusting `trusted_ca_pem` for the server
    /// and presenting `client` (certificate, key) if any.
    pub fn new(ip: &str, trusted_ca_pem: &str, client: Option<&(String, String)>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, trusted_ca_pem).unwrap();
        let client = client.map(|(cert, key)| {
            let (c, k) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
            std::fs::write(&c, cert).unwrap();
            std::fs::write(&k, key).unwrap();
            (c, k)
        });
        std::fs::create_dir_all(dir.path().join("config")).unwrap();
        std::fs::create_dir_all(dir.path().join("no-certs")).unwrap();
        DockerCli {
            dir,
            host: format!("tcp://{ip}:2376"),
            ca,
            client,
        }
    }

    /// A client of the segment at `ip` with a fresh client certificate of `ca`.
    pub fn of(ip: &str, ca: &TestCa) -> Self {
        Self::new(ip, &ca.cert_pem, Some(&ca.client_cert()))
    }

    /// The same client of another port of the segment.
    pub fn on_port(mut self, port: u16) -> Self {
        let ip = self
            .host
            .trim_start_matches("tcp://")
            .rsplit_once(':')
            .unwrap()
            .0
            .to_owned();
        self.host = format!("tcp://{ip}:{port}");
        self
    }

    /// The temporary directory of this client (for files to import).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `docker --tlsverify ... -H tcp://IP:2376 ARGS` in the sandbox,
    /// killed after 90 s.
    pub fn run(&self, args: &[&str]) -> CliOutput {
        self.run_env(&[], args)
    }

    /// Like [`DockerCli::run`] with extra environment variables for the CLI
    /// (`DOCKER_BUILDKIT=1`).
    pub fn run_env(&self, env: &[(&str, &str)], args: &[&str]) -> CliOutput {
        let mut cmd = Command::new("nsenter");
        cmd.envs(env.iter().copied());
        cmd.arg(format!("--net={NETNS}"))
            .args([
                "timeout",
                "-s",
                "KILL",
                "90",
                "docker",
                "--tlsverify",
                "--tlscacert",
            ])
            .arg(&self.ca);
        if let Some((cert, key)) = &self.client {
            cmd.arg("--tlscert").arg(cert).arg("--tlskey").arg(key);
        }
        cmd.args(["-H", &self.host])
            .args(args)
            // No user config, no context, no default certificates.
            .env("DOCKER_CONFIG", self.dir.path().join("config"))
            .env("DOCKER_CERT_PATH", self.dir.path().join("no-certs"))
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_TLS_VERIFY");
        cmd.output()
            .expect("running the docker CLI in the sandbox")
            .into()
    }

    /// Runs and asserts success; returns the trimmed standard output.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.success, "docker {args:?} failed: {out:?}");
        out.stdout.trim().to_owned()
    }

    /// Runs and asserts failure; returns the standard error.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.success,
            "docker {args:?} succeeded but must fail: {out:?}"
        );
        out.stderr
    }

    /// `docker inspect -f FORMAT NAME`, trimmed.
    pub fn inspect(&self, format: &str, name: &str) -> String {
        self.ok(&["inspect", "-f", format, name])
    }

    /// Polls `docker version` until the daemon answers (after a start).
    pub fn wait_until_answers(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.run(&["version", "--format", "{{.Server.Version}}"]);
            if out.success {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "dockerd did not answer within {timeout:?}: {out:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Imports the test image as `busybox:latest` (busybox applets at /bin,
    /// the memory hog at /hog, the raw frame sender at /rawsend, a setuid
    /// root `/suid-id`).
    pub fn import_busybox(&self) {
        let tar = self.dir.path().join("busybox.tar");
        std::fs::write(&tar, busybox_tarball()).unwrap();
        let out = self.ok(&["import", tar.to_str().unwrap(), "busybox:latest"]);
        assert!(out.starts_with("sha256:"), "{out}");
    }
}

/// busybox applets linked in the test image.
const APPLETS: [&str; 27] = [
    "sh", "sleep", "true", "false", "echo", "cat", "head", "tail", "dd", "ls", "mkdir", "rm", "id",
    "ip", "hostname", "grep", "wc", "env", "ps", "touch", "test", "stat", "ping", "arping", "nc",
    "httpd", "wget",
];

/// A static C program that mallocs and touches `argv[1]` MiB (default 512)
/// in 1 MiB steps, then prints `held N MiB` and exits 0.
const HOG_C: &str = r#"
#include <stdio.h>
#include <stdlib.h>
int main(int argc, char **argv) {
    long mib = argc > 1 ? atol(argv[1]) : 512;
    long i, j;
    for (i = 0; i < mib; i++) {
        volatile char *p = malloc(1 << 20);
        if (!p) { printf("malloc failed after %ld MiB\n", i); return 2; }
        for (j = 0; j < (1 << 20); j += 4096) p[j] = (char)(i + j);
    }
    printf("held %ld MiB\n", mib);
    fflush(stdout);
    return 0;
}
"#;

/// A static C program installed setuid root (`/suid-id`): prints its real
/// and effective uid, `ruid=R euid=E`. Run as a non-root user, `euid=0`
/// means the setuid bit gained privileges.
const SUID_ID_C: &str = r#"
#include <stdio.h>
#include <unistd.h>
int main(void) {
    printf("ruid=%d euid=%d\n", (int)getuid(), (int)geteuid());
    return 0;
}
"#;

/// The tarball of the test image, built once per test process.
pub fn busybox_tarball() -> &'static [u8] {
    static TAR: OnceLock<Vec<u8>> = OnceLock::new();
    TAR.get_or_init(|| {
        let work = tempfile::tempdir().unwrap();
        let root = work.path().join("root");
        let bin = root.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        for d in ["tmp", "data", "etc"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .find(|p| Path::new(p).is_file())
            .expect("busybox-static is installed");
        std::fs::copy(busybox, bin.join("busybox")).unwrap();
        for applet in APPLETS {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
        }
        static_c(work.path(), &root.join("hog"), HOG_C);
        static_c(work.path(), &root.join("rawsend"), super::net::RAWSEND_C);
        static_c(work.path(), &root.join("suid-id"), SUID_ID_C);
        std::fs::set_permissions(
            root.join("suid-id"),
            std::os::unix::fs::PermissionsExt::from_mode(0o4755),
        )
        .unwrap();
        let tar = work.path().join("image.tar");
        let out = Command::new("tar")
            .arg("-C")
            .arg(&root)
            .args(["--owner=0", "--group=0", "-cf"])
            .arg(&tar)
            .arg(".")
            .output()
            .expect("tar is installed");
        assert!(out.status.success(), "{out:?}");
        std::fs::read(&tar).unwrap()
    })
}

/// Compiles the C program `source` into the static binary `out`.
pub fn static_c(work: &Path, out: &Path, source: &str) {
    let name = out.file_name().unwrap().to_string_lossy().into_owned();
    let src = work.join(format!("{name}.c"));
    std::fs::write(&src, source).unwrap();
    let done = Command::new("gcc")
        .args(["-static", "-O0", "-o"])
        .arg(out)
        .arg(&src)
        .output()
        .expect("gcc is installed");
    assert!(
        done.status.success(),
        "gcc -static {name}.c: {}",
        String::from_utf8_lossy(&done.stderr)
    );
}

/// Asserts that `stderr` carries a refusal with `code` (`SEGMENT-10NN:`) from
/// the policy plugin.
pub fn assert_refused(stderr: &str, code: &str, what: &str) {
    assert!(
        stderr.contains(&format!("{code}:")),
        "{what}: expected a refusal with {code}, got: {stderr}"
    );
    assert!(
        stderr.contains("authorization denied by plugin segment-policy"),
        "{what}: the refusal comes from the policy plugin: {stderr}"
    );
}

/// Regular files under `dir` (symlinks not followed, `skip` dirs left out).
pub fn files_under(dir: &Path, skip: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let path = e.path();
        if skip.contains(&path) {
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            out.extend(files_under(&path, skip));
        } else if meta.is_file() {
            out.push(path);
        }
    }
    out
}

/// A CreateSegment request for a Docker segment of cluster `c1`.
pub fn docker_req(
    id: &str,
    ca: &TestCa,
    memory_mib: u32,
) -> segment_agent::proto::agent::CreateSegmentRequest {
    segment_agent::proto::agent::CreateSegmentRequest {
        segment_id: id.into(),
        cluster_id: "c1".into(),
        flavor: Some(segment_agent::proto::agent::Flavor {
            memory_mib,
            vcpus: 2,
            ..Default::default()
        }),
        image: "docker".into(),
        tls: Some(ca.tls()),
        ..Default::default()
    }
}

/// A real agent (test `prefix`, addresses `range`) with one running Docker
/// segment `<prefix>-a` of `ca`.
pub async fn docker_segment(
    prefix: &str,
    range: &str,
    ca: &TestCa,
    memory_mib: u32,
) -> (super::real::RealAgent, segment_agent::proto::agent::Segment) {
    let agent = super::real::RealAgent::start(prefix, range, "").await;
    let mut c = agent.client().await;
    let s = c
        .create_segment(docker_req(&format!("{prefix}-a"), ca, memory_mib))
        .await
        .unwrap()
        .into_inner();
    let running = segment_agent::proto::agent::SegmentState::Running;
    assert_eq!(s.state(), running, "{s:?}\n{}", agent.log());
    (agent, s)
}
