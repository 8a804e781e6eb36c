//! Docker inside a segment: the daemon configuration and TLS files the agent
//! writes into the segment's `/etc/docker`, the readiness probe, and the
//! restart of dockerd without any shell or exec path into the segment.
//!
//! The image's supervisor (PID 1's child, see `scripts/image-files/supervisor`)
//! starts containerd, the `segment-authz` policy plugin, dockerd (on its
//! unix socket only) and the mutual-TLS front on 2376 ([`segment_policy::front`]) once
//! `daemon.json` exists, and on SIGUSR1 to the segment's init restarts the
//! plugin and has the front load the certificates again: dockerd is never
//! restarted by a rebuild, so it runs without `live-restore`, which swarm
//! mode refuses.
//!
//! The usage policy itself ([`segment_policy::policy`], served by [`segment_policy::authz`] from the
//! `segment-authz` binary inside every segment) refuses what the service
//! forbids: privileged containers, capability changes, host namespaces,
//! devices, bind mounts outside `/var/lib/docker` and the rest.

pub mod probe;
pub mod swarm;

use crate::{
    atomic::{self, write_atomic},
    certs::ServerCert,
    storage::SegmentDirs,
    xml::FilesystemMount,
};
use segment_policy::agent_token;
use std::{io, path::Path};

/// Where the agent's tools appear inside a segment (read-only bind).
pub const TOOLS_MOUNT: &str = "/opt/segment-agent";
/// The policy plugin binary, relative to the tools directory.
pub const AUTHZ_BINARY: &str = "bin/segment-authz";

/// Host character devices a Docker segment needs: runc allows them to every
/// container, and a cgroup v1 child gets only what its parent has.
pub const CHAR_DEVICES: [&str; 2] = ["/dev/net/tun", "/dev/console"];

/// dockerd's data root inside a segment. Not under [`CUSTOMER_DATA`], so no
/// bind a customer may ask for reaches Docker's own state.
pub const DATA_ROOT: &str = "/var/lib/segment/docker";
/// The customer data area: bind sources must lie under it (the policy), it
/// holds no Docker or segment state, and it never follows symlinks.
pub const CUSTOMER_DATA: &str = "/var/lib/docker";

/// The filesystems of a segment: its root, and for a Docker image dockerd's
/// data root, the customer data area, `/etc/docker` (read-only: the agent
/// writes it from the host) and the agent's tools (read-only).
pub fn segment_mounts(dirs: &SegmentDirs, tools_dir: &Path, docker: bool) -> Vec<FilesystemMount> {
    let mount = |source: &Path, target: &str, readonly| FilesystemMount {
        source: source.to_owned(),
        target: target.into(),
        readonly,
    };
    let mut mounts = vec![mount(&dirs.rootfs, "/", false)];
    if docker {
        mounts.extend([
            mount(&dirs.docker_data, DATA_ROOT, false),
            mount(&dirs.data, CUSTOMER_DATA, false),
            mount(&dirs.docker_config, "/etc/docker", true),
            mount(tools_dir, TOOLS_MOUNT, true),
        ]);
    }
    mounts
}

/// The default log options of containers: each container's `json-file` log
/// is rotated at this size and keeps at most [`LOG_MAX_FILES`] files, so a
/// chatty container cannot fill the segment's disk (the policy bounds what
/// a container may ask for instead, see `policy::options`).
pub const LOG_MAX_SIZE: &str = "10m";
/// See [`LOG_MAX_SIZE`].
pub const LOG_MAX_FILES: &str = "3";

/// `daemon.json` for a segment: the local socket only (the front serves
/// mutual TLS on 2376 and forwards to it), the policy plugin, no
/// `live-restore` (swarm mode refuses it; rebuilds no longer restart
/// dockerd), and the daemon hardening of the CIS
/// Docker Benchmark that applies to a segment (section 2; the README's
/// "The CIS Docker Benchmark" lists the checks that do not apply, and why).
/// `containerd` and `cgroup-parent` are flags of the supervisor and must not
/// appear here (dockerd refuses a key given both ways).
pub fn daemon_json() -> String {
    let config = serde_json::json!({
        "hosts": ["unix:///var/run/docker.sock"],
        "data-root": DATA_ROOT,
        // The data root is on the segment's btrfs subvolume, where dockerd
        // would pick its btrfs driver: its layers would be subvolumes the
        // segment's unprivileged root cannot delete.
        "storage-driver": "overlay2",
        // dockerd's identity key; /etc/docker is read-only to the segment.
        "deprecated-key-path": format!("{DATA_ROOT}/key.json"),
        "authorization-plugins": [segment_policy::authz::PLUGIN_NAME],
        // CIS 2.3; the supervisor rotates dockerd's own log.
        "log-level": "info",
        // CIS 2.2: containers on the default bridge reach each other only
        // through published ports (user-defined networks are the customer's
        // choice).
        "icc": false,
        // CIS 2.16: published ports are iptables DNAT rules, no docker-proxy
        // process per port listening in the segment.
        "userland-proxy": false,
        // CIS 2.14: setuid and file capabilities gain nothing in containers
        // (the policy refuses `no-new-privileges=false`).
        "no-new-privileges": true,
        // A container's log is bounded (CIS 2.13 asks for remote logging,
        // which the policy refuses: see the README).
        "log-driver": "json-file",
        "log-opts": {"max-size": LOG_MAX_SIZE, "max-file": LOG_MAX_FILES},
    });
    serde_json::to_string_pretty(&config).expect("static JSON") + "\n"
}

/// Writes the TLS files, then `daemon.json` (the supervisor starts dockerd
/// only once `daemon.json` exists, so it never sees half a configuration).
/// Blocks (fsyncs).
pub fn write_config(
    dir: &Path,
    ca_pem: &str,
    server: &ServerCert,
    key_owner: Option<u32>,
) -> io::Result<()> {
    crate::certs::write_docker_tls(dir, ca_pem, server, key_owner)?;
    write_atomic(dir, "daemon.json", daemon_json().as_bytes(), 0o444)?;
    atomic::sync_dir(dir)
}

/// Writes the agent's own client certificate for a segment's Docker into
/// the host-only directory `dir`: `ca.pem`, `cert.pem`, `key.pem` (0600).
pub fn write_agent_tls(dir: &Path, ca_pem: &str, cert_pem: &str, key_pem: &str) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (name, text, mode) in [
        ("ca.pem", ca_pem, 0o644),
        ("cert.pem", cert_pem, 0o644),
        ("key.pem", key_pem, 0o600),
    ] {
        write_atomic(dir, name, text.as_bytes(), mode)?;
    }
    atomic::sync_dir(dir)
}

/// Writes the agent's swarm token ([`agent_token`]): into the segment's
/// `/etc/docker` for the plugin (0400, owned by `key_owner`, the segment's
/// root) and into the host-only agent directory for the agent's client.
/// A rebuild writes a new one.
pub fn write_agent_token(
    dirs: &SegmentDirs,
    token: &str,
    key_owner: Option<u32>,
) -> io::Result<()> {
    let text = format!("{token}\n");
    std::fs::create_dir_all(&dirs.docker_config)?;
    atomic::write_atomic_owned(
        &dirs.docker_config,
        agent_token::FILE,
        text.as_bytes(),
        0o400,
        key_owner,
    )?;
    write_atomic(&dirs.agent_tls, agent_token::FILE, text.as_bytes(), 0o600)
}

/// The swarm join tokens of a segment, in its host-only agent directory
/// (never in libvirt's XML, which libvirt's read-only socket shows).
pub const SWARM_SECRETS: &str = "swarm-tokens.json";

/// The secrets of a segment's swarm part.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SwarmSecrets {
    /// The token the segment joined with.
    pub join_token: Option<String>,
    /// For a manager: its swarm's worker token.
    pub worker_token: Option<String>,
    /// For a manager: its swarm's manager token.
    pub manager_token: Option<String>,
}

/// Writes `secrets` into the host-only directory `dir` (0600). Blocks.
pub fn write_swarm_secrets(dir: &Path, secrets: &SwarmSecrets) -> io::Result<()> {
    let text = serde_json::to_string(secrets).map_err(io::Error::other)?;
    write_atomic(dir, SWARM_SECRETS, text.as_bytes(), 0o600)
}

/// Reads what [`write_swarm_secrets`] wrote (`None` if absent or unreadable).
pub fn read_swarm_secrets(dir: &Path) -> Option<SwarmSecrets> {
    let text = std::fs::read(dir.join(SWARM_SECRETS)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Reads what [`write_agent_tls`] wrote, as a probe's TLS client.
pub fn read_agent_tls(dir: &Path) -> Result<probe::ProbeTls, probe::ProbeError> {
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f))
            .map_err(|e| probe::ProbeError(format!("{}: {e}", dir.join(f).display())))
    };
    probe::ProbeTls::new(&read("ca.pem")?, &read("cert.pem")?, &read("key.pem")?)
}

/// Asks the segment's init to restart dockerd (and the policy plugin): SIGUSR1
/// to its host PID. Blocks briefly.
pub fn request_restart(init_pid: u32) -> io::Result<()> {
    let pid = nix::unistd::Pid::from_raw(init_pid as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGUSR1).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn daemon_json_is_what_the_supervisor_expects() {
        let v: serde_json::Value = serde_json::from_str(&daemon_json()).unwrap();
        // The front listens on 2376 and dockerd only on its socket: the
        // supervisor starts the front for a daemon.json without tcp://.
        assert_eq!(
            v["hosts"],
            serde_json::json!(["unix:///var/run/docker.sock"])
        );
        assert!(!daemon_json().contains("tcp://"));
        // Swarm mode refuses live-restore.
        assert!(v.get("live-restore").is_none());
        assert_eq!(v["storage-driver"], "overlay2");
        assert_eq!(v["authorization-plugins"][0], "segment-policy");
        // Flags of the supervisor: dockerd refuses a key set both ways.
        assert!(v.get("containerd").is_none() && v.get("cgroup-parent").is_none());
    }

    /// The CIS Docker Benchmark's section 2 checks that apply to a segment,
    /// as docker-bench-security reads them from `daemon.json`.
    #[test]
    fn daemon_json_carries_the_cis_hardening() {
        let v: serde_json::Value = serde_json::from_str(&daemon_json()).unwrap();
        let cases: [(&str, serde_json::Value); 8] = [
            ("icc", false.into()),        // 2.2
            ("log-level", "info".into()), // 2.3
            (
                "authorization-plugins",
                serde_json::json!(["segment-policy"]),
            ), // 2.12
            ("no-new-privileges", true.into()), // 2.14
            ("userland-proxy", false.into()), // 2.16
            ("log-driver", "json-file".into()),
            (
                "log-opts",
                serde_json::json!({"max-size": "10m", "max-file": "3"}),
            ),
            ("data-root", DATA_ROOT.into()),
        ];
        for (key, want) in cases {
            assert_eq!(v[key], want, "daemon.json {key}");
        }
        // Defaults the benchmark checks by absence: iptables management on
        // (2.4), no insecure registries (2.5), no experimental features (2.18).
        for key in ["iptables", "insecure-registries", "experimental"] {
            assert!(v.get(key).is_none(), "daemon.json must not set {key}");
        }
        // Not aufs (the benchmark's storage-driver check): overlay2, pinned
        // because the data root sits on the segment's btrfs subvolume.
        assert_eq!(v["storage-driver"], "overlay2");
    }

    #[test]
    fn writes_all_files_with_their_modes() {
        let dir = tempfile::tempdir().unwrap();
        let (ca_pem, ca_key) =
            crate::certs::testing::generate_test_ca("t", std::time::Duration::from_secs(3600))
                .unwrap();
        let ca = crate::certs::ClusterCa::from_pem(&ca_pem, &ca_key, std::time::SystemTime::now())
            .unwrap();
        let server = crate::certs::issue_server_cert(
            &ca,
            "203.0.113.10".parse().unwrap(),
            "seg-a",
            std::time::Duration::from_secs(3600),
            std::time::SystemTime::now(),
        )
        .unwrap();
        write_config(dir.path(), &ca_pem, &server, None).unwrap();
        let mode = |f: &str| {
            std::fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("server-key.pem"), 0o400);
        assert_eq!(mode("daemon.json"), 0o444);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("ca.pem")).unwrap(),
            ca_pem
        );
        assert!(
            !std::fs::read_to_string(dir.path().join("server-key.pem"))
                .unwrap()
                .is_empty()
        );
        let leftovers = std::fs::read_dir(dir.path()).unwrap().filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with('.')
        });
        assert_eq!(leftovers.count(), 0, "no temp file left behind");
    }
}
