//! Table-driven tests: request bodies captured from the real docker 20.10
//! CLI (`fixtures/*.http`, made by `capture/capture.sh`) and hand-written API
//! requests for what the CLI cannot send.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::*;

mod raw;

/// A fixture: first line `METHOD URI`, then the raw body.
struct Fixture {
    method: String,
    uri: String,
    body: Vec<u8>,
}

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/docker")
}

fn fixture(name: &str) -> Fixture {
    let path = fixtures_dir().join(format!("{name}.http"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let (line, body) = text.split_once('\n').unwrap();
    let (method, uri) = line.split_once(' ').unwrap();
    Fixture {
        method: method.into(),
        uri: uri.into(),
        body: body.as_bytes().to_vec(),
    }
}

fn run(f: &Fixture, uri: &str, area: &dyn DataArea) -> Decision {
    let body = (!f.body.is_empty()).then_some(f.body.as_slice());
    evaluate(&f.method, uri, body, area)
}

/// Every captured CLI request and the code it must get (`None`: allowed).
const CLI_CASES: &[(&str, Option<&str>)] = &[
    ("run_plain", None),
    ("run_everyday", None),
    ("run_net_host", None),
    ("run_no_new_privileges", None),
    ("run_no_new_privileges_false", Some("SEGMENT-1004")),
    ("run_named_volume", None),
    ("run_anonymous_volume", None),
    ("run_mount_volume", None),
    ("run_mount_tmpfs", None),
    ("run_tmpfs", None),
    ("run_volumes_from", None),
    ("run_bind_docker_root", None),
    ("run_bind_docker_sub", None),
    ("run_bind_docker_ro", None),
    ("run_bind_messy_allowed", None),
    ("run_mount_bind_docker", None),
    ("exec_plain", None),
    ("update_memory", None),
    ("update_restart", None),
    ("volume_create_plain", None),
    ("volume_create_tmpfs", None),
    ("volume_create_bind_docker", None),
    ("service_create_plain", None),
    ("service_create_volume", None),
    ("service_create_bind_docker", None),
    ("build_net_host", None),
    ("run_privileged", Some("SEGMENT-1001")),
    ("create_privileged", Some("SEGMENT-1001")),
    ("exec_privileged", Some("SEGMENT-1001")),
    ("run_cap_add", Some("SEGMENT-1002")),
    ("service_create_cap_add", Some("SEGMENT-1002")),
    ("run_cap_drop", Some("SEGMENT-1003")),
    ("service_create_cap_drop", Some("SEGMENT-1003")),
    ("run_apparmor_unconfined", Some("SEGMENT-1004")),
    ("run_seccomp_unconfined", Some("SEGMENT-1004")),
    ("run_seccomp_custom", Some("SEGMENT-1004")),
    ("run_label_disable", Some("SEGMENT-1004")),
    ("run_systempaths_unconfined", Some("SEGMENT-1004")),
    ("run_device", Some("SEGMENT-1005")),
    ("run_device_cgroup_rule", Some("SEGMENT-1005")),
    ("run_gpus", Some("SEGMENT-1005")),
    ("run_pid_host", Some("SEGMENT-1006")),
    ("run_ipc_host", Some("SEGMENT-1007")),
    ("run_userns_host", Some("SEGMENT-1008")),
    ("run_uts_host", Some("SEGMENT-1009")),
    ("run_cgroupns_host", Some("SEGMENT-1010")),
    ("run_bind_etc", Some("SEGMENT-1011")),
    ("run_bind_root", Some("SEGMENT-1011")),
    ("run_bind_dotdot", Some("SEGMENT-1011")),
    ("run_bind_dockerfoo", Some("SEGMENT-1011")),
    ("run_mount_bind_etc", Some("SEGMENT-1011")),
    ("run_mount_volume_bind_opts", Some("SEGMENT-1011")),
    ("volume_create_bind_etc", Some("SEGMENT-1011")),
    ("volume_create_block", Some("SEGMENT-1011")),
    ("volume_create_overlay", Some("SEGMENT-1011")),
    ("service_create_bind_etc", Some("SEGMENT-1011")),
    ("service_create_volume_bind_opts", Some("SEGMENT-1011")),
    ("plugin_pull", Some("SEGMENT-1012")),
    ("plugin_set", Some("SEGMENT-1012")),
    ("plugin_create", Some("SEGMENT-1012")),
    ("run_cgroup_parent_root", Some("SEGMENT-1014")),
    ("run_cgroup_parent_docker_abs", Some("SEGMENT-1014")),
    ("run_cgroup_parent_docker_rel", Some("SEGMENT-1014")),
    // Fields the CLI exposes rarely, and what the raw API takes.
    ("run_sysctl_safe", None),
    ("run_oom_score_positive", None),
    ("run_bind_rprivate", None),
    ("run_log_driver_local", None),
    ("run_publish", None),
    ("start_plain", None),
    ("commit_changes", None),
    ("cp_into", None),
    ("network_create_plain", None),
    ("network_create_mtu", None),
    ("build_plain", None),
    ("build_network_custom", Some("SEGMENT-1015")),
    ("build_network_container", Some("SEGMENT-1015")),
    ("build_isolation", Some("SEGMENT-1015")),
    ("build_cgroup_parent", Some("SEGMENT-1014")),
    ("run_runtime", Some("SEGMENT-1016")),
    ("run_sysctl_unsafe", Some("SEGMENT-1017")),
    ("service_create_sysctl", Some("SEGMENT-1017")),
    ("run_oom_score_negative", Some("SEGMENT-1018")),
    ("run_oom_kill_disable", Some("SEGMENT-1018")),
    ("run_cpu_rt_runtime", Some("SEGMENT-1018")),
    ("run_ulimit_rtprio", Some("SEGMENT-1018")),
    ("build_ulimit_rtprio", Some("SEGMENT-1018")),
    ("run_ulimit_nofile", None),
    ("update_cpu_rt", Some("SEGMENT-1018")),
    ("run_bind_rshared", Some("SEGMENT-1019")),
    ("run_mount_bind_rslave", Some("SEGMENT-1019")),
    ("service_create_bind_rshared", Some("SEGMENT-1019")),
    ("run_volume_driver", Some("SEGMENT-1020")),
    ("run_mount_volume_driver", Some("SEGMENT-1020")),
    ("volume_create_driver", Some("SEGMENT-1020")),
    ("run_log_driver_syslog", Some("SEGMENT-1021")),
    ("service_create_log_driver", Some("SEGMENT-1021")),
    ("run_isolation", Some("SEGMENT-1022")),
    ("run_storage_opt", Some("SEGMENT-1022")),
    ("service_create_isolation", Some("SEGMENT-1022")),
    ("service_create_generic_resource", Some("SEGMENT-1005")),
    ("volume_create_nfs", Some("SEGMENT-1011")),
    ("network_create_macvlan", Some("SEGMENT-1023")),
    ("network_create_ipvlan", Some("SEGMENT-1023")),
    ("network_create_bridge_name", Some("SEGMENT-1023")),
    ("network_create_config_only", Some("SEGMENT-1023")),
    ("swarm_init", Some("SEGMENT-1024")),
    ("swarm_join", Some("SEGMENT-1024")),
    ("swarm_leave", Some("SEGMENT-1024")),
];

#[test]
fn cli_requests_with_and_without_version_prefix() {
    for (name, want) in CLI_CASES {
        let f = fixture(name);
        let unversioned = f.uri.strip_prefix("/v1.41").unwrap().to_string();
        for uri in [f.uri.as_str(), unversioned.as_str()] {
            let got = run(&f, uri, &LexicalArea);
            assert_eq!(got.code(), *want, "{name}: {} {uri} -> {got}", f.method);
        }
    }
}

#[test]
fn every_fixture_is_in_the_table() {
    let on_disk: BTreeSet<String> = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "http"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    let in_table: BTreeSet<String> = CLI_CASES.iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(on_disk, in_table);
}

#[test]
fn messages_name_the_rule() {
    let cases = [
        (
            "run_privileged",
            "SEGMENT-1001: privileged containers are not allowed by policy",
        ),
        (
            "exec_privileged",
            "SEGMENT-1001: privileged exec sessions are not allowed by policy",
        ),
        (
            "run_cap_add",
            "SEGMENT-1002: adding capabilities (--cap-add) is not allowed by policy",
        ),
        (
            "run_pid_host",
            "SEGMENT-1006: sharing the host PID namespace (--pid=host) is not allowed by policy",
        ),
        (
            "run_bind_etc",
            "SEGMENT-1011: bind mounts of host path \"/etc\" are not allowed by policy: only paths under /var/lib/docker may be bind-mounted",
        ),
        (
            "run_cgroup_parent_root",
            "SEGMENT-1014: cgroup parent overrides are not allowed by policy",
        ),
        (
            "run_apparmor_unconfined",
            "SEGMENT-1004: security option \"apparmor=unconfined\" disables or replaces confinement and is not allowed by policy",
        ),
    ];
    for (name, want) in cases {
        let f = fixture(name);
        assert_eq!(run(&f, &f.uri, &LexicalArea).to_string(), want);
    }
}

/// `--cgroup-parent`: every non-empty value is refused wherever dockerd reads
/// a HostConfig or an update's resources; absent, `null` and `""` (what the
/// CLI always sends) are allowed.
#[test]
fn cgroup_parent() {
    // The CLI's own default must stay allowed: the 20.10 CLI sends `""`.
    for name in ["run_plain", "update_memory"] {
        let f = fixture(name);
        let body = String::from_utf8(f.body.clone()).unwrap();
        assert!(body.contains(r#""CgroupParent":"""#), "{name}");
        assert_eq!(run(&f, &f.uri, &LexicalArea), Decision::Allow, "{name}");
    }
    // `EXTRA` becomes `,"CgroupParent":VALUE` (key case-folded), or nothing.
    let positions = [
        (
            "/v1.41/containers/create",
            r#"{"Image":"busybox","HostConfig":{"Memory":0EXTRA}}"#,
        ),
        (
            "/containers/create",
            r#"{"Image":"busybox","HostConfig":{"Memory":0EXTRA}}"#,
        ),
        // Deprecated top-level HostConfig, Go's case-insensitive keys.
        ("/v1.41/containers/create", r#"{"Image":"busybox"EXTRA}"#),
        (
            "/v1.41/containers/create",
            r#"{"Image":"busybox","hostconfig":{"Memory":0EXTRA}}"#,
        ),
        ("/v1.23/containers/c0ffee/start", r#"{"Memory":0EXTRA}"#),
        (
            "/v1.41/containers/c0ffee/update",
            r#"{"Memory":67108864EXTRA}"#,
        ),
    ];
    let values: &[(Option<&str>, Option<&str>)] = &[
        (None, None),
        (Some(r#""""#), None),
        (Some("null"), None),
        (Some(r#""/""#), Some("SEGMENT-1014")),
        (Some(r#""/docker""#), Some("SEGMENT-1014")),
        (Some(r#""docker""#), Some("SEGMENT-1014")),
        (Some(r#""system.slice""#), Some("SEGMENT-1014")),
        (Some("1"), Some("SEGMENT-1101")),
    ];
    for (uri, template) in positions {
        for key in ["CgroupParent", "cgroupparent", "CGROUPPARENT"] {
            for (value, want) in values {
                let extra = value.map_or(String::new(), |v| format!(r#","{key}":{v}"#));
                let body = template.replace("EXTRA", &extra);
                let got = evaluate("POST", uri, Some(body.as_bytes()), &LexicalArea);
                assert_eq!(got.code(), *want, "POST {uri} {body} -> {got}");
            }
        }
    }
    // Go lets the last duplicate win: an empty first value cannot hide a
    // second one.
    let got = evaluate(
        "POST",
        "/v1.41/containers/create",
        Some(br#"{"HostConfig":{"CgroupParent":"","cgroupParent":"/"}}"#),
        &LexicalArea,
    );
    assert_eq!(got.code(), Some("SEGMENT-1101"), "{got}");
}

#[test]
fn form_bodies_are_refused_on_every_route() {
    let cases: &[(&str, &str, Option<&str>, Option<&str>)] = &[
        (
            "POST",
            "/v1.41/build?t=x",
            Some("application/x-www-form-urlencoded"),
            Some("SEGMENT-1100"),
        ),
        (
            "POST",
            "/v1.41/build?t=x",
            Some("multipart/form-data; boundary=x"),
            Some("SEGMENT-1100"),
        ),
        (
            "POST",
            "/v1.41/build?t=x",
            Some("Application/X-WWW-Form-Urlencoded"),
            Some("SEGMENT-1100"),
        ),
        (
            "POST",
            "/v1.41/containers/web/start",
            Some("application/x-www-form-urlencoded"),
            Some("SEGMENT-1100"),
        ),
        ("POST", "/v1.41/build?t=x", Some("application/x-tar"), None),
        ("POST", "/v1.41/build?t=x", None, None),
        (
            "POST",
            "/v1.41/images/load",
            Some("application/x-tar"),
            None,
        ),
    ];
    for (method, uri, content_type, want) in cases {
        let request = Request {
            method,
            uri,
            body: None,
            content_type: *content_type,
            user: Some("customer"),
            agent: false,
            existing: Some(&Existing::Missing),
        };
        let got = evaluate_request(&request, &LexicalArea);
        assert_eq!(
            got.code(),
            *want,
            "{method} {uri} {content_type:?} -> {got}"
        );
    }
}

/// A fake data area: the listed paths (relative to the area) are symlinks.
struct Links(&'static [&'static str]);

impl DataArea for Links {
    fn check(&self, below: &Path) -> Result<(), AreaRefusal> {
        let mut walked = PathBuf::new();
        for c in below.components() {
            walked.push(c);
            if self.0.iter().any(|l| Path::new(l) == walked) {
                return Err(AreaRefusal::Symlink(
                    Path::new(ALLOWED_BIND_ROOT).join(&walked),
                ));
            }
        }
        Ok(())
    }
}

#[test]
fn bind_sources_are_checked_by_the_data_area() {
    const AREA: Links = Links(&["x/root", "x/sibling", "loop"]);
    let cases: &[(&str, Option<&str>)] = &[
        ("/var/lib/docker/x/root", Some("SEGMENT-1011")),
        ("/var/lib/docker/x/root/etc/passwd", Some("SEGMENT-1011")),
        // A link that stays inside the area is refused as well: its target
        // may be swapped before dockerd mounts it.
        ("/var/lib/docker/x/sibling", Some("SEGMENT-1011")),
        ("/var/lib/docker/x/missing/dir", None),
        ("/var/lib/docker/loop/x", Some("SEGMENT-1011")),
        ("/var/lib/docker/x/root/../y", Some("SEGMENT-1011")),
        ("/var/lib/docker/x/y/../y", None),
        ("/var/lib/docker/../lib/docker/x", Some("SEGMENT-1011")),
        ("/var/lib/docker/x", None),
        ("/srv/dockerfoo", Some("SEGMENT-1011")),
        ("/var/lib/dockerfoo", Some("SEGMENT-1011")),
    ];
    for (source, want) in cases {
        let binds = format!(r#"{{"HostConfig":{{"Binds":["{source}:/x"]}}}}"#);
        let mounts = format!(
            r#"{{"HostConfig":{{"Mounts":[{{"Type":"bind","Source":"{source}","Target":"/x"}}]}}}}"#
        );
        let volume =
            format!(r#"{{"DriverOpts":{{"type":"none","o":"bind","device":"{source}"}}}}"#);
        let service = format!(
            r#"{{"TaskTemplate":{{"ContainerSpec":{{"Mounts":[{{"Type":"bind","Source":"{source}","Target":"/x"}}]}}}}}}"#
        );
        let legacy_start = format!(r#"{{"Binds":["{source}:/x"]}}"#);
        for (uri, body) in [
            ("/v1.41/containers/create", &binds),
            ("/v1.41/containers/create", &mounts),
            ("/v1.23/containers/c/start", &binds),
            ("/v1.23/containers/c/start", &legacy_start),
            ("/v1.41/volumes/create", &volume),
            ("/v1.41/services/create", &service),
        ] {
            let got = evaluate("POST", uri, Some(body.as_bytes()), &AREA);
            assert_eq!(got.code(), *want, "{source} via {uri} {body} -> {got}");
        }
    }
}

/// Start, restart and `docker cp` are decided on what dockerd stored for
/// the container, as the kernel finds its sources now.
#[test]
fn existing_containers_are_checked_again() {
    const AREA: Links = Links(&["x/esc"]);
    let sources = |list: &[&str]| Existing::Sources(list.iter().map(|s| s.to_string()).collect());
    let planted = sources(&["/var/lib/docker/x/esc"]);
    let clean = sources(&["/var/lib/docker/x/new", "/var/lib/docker/y"]);
    let outside = sources(&["/etc"]);
    let failed = Existing::Failed("dockerd did not answer".into());
    let cases: &[(&str, &str, Option<&Existing>, Option<&str>)] = &[
        (
            "POST",
            "/v1.41/containers/c/start",
            Some(&planted),
            Some("SEGMENT-1011"),
        ),
        (
            "POST",
            "/v1.41/containers/c/restart",
            Some(&planted),
            Some("SEGMENT-1011"),
        ),
        (
            "PUT",
            "/v1.41/containers/c/archive?path=/h",
            Some(&planted),
            Some("SEGMENT-1011"),
        ),
        (
            "POST",
            "/v1.41/containers/c/start",
            Some(&outside),
            Some("SEGMENT-1011"),
        ),
        ("POST", "/v1.41/containers/c/start", Some(&clean), None),
        (
            "POST",
            "/v1.41/containers/c/start",
            Some(&Existing::Missing),
            None,
        ),
        (
            "POST",
            "/v1.41/containers/c/start",
            Some(&failed),
            Some("SEGMENT-1104"),
        ),
        (
            "POST",
            "/v1.41/containers/c/start",
            None,
            Some("SEGMENT-1104"),
        ),
        (
            "GET",
            "/v1.41/containers/c/archive?path=/",
            None,
            Some("SEGMENT-1104"),
        ),
        ("POST", "/v1.41/containers/c/stop", None, None),
    ];
    for (method, uri, existing, want) in cases {
        let request = Request {
            method,
            uri,
            existing: *existing,
            ..Request::default()
        };
        let got = evaluate_request(&request, &AREA);
        assert_eq!(got.code(), *want, "{method} {uri} {existing:?} -> {got}");
    }
    assert_eq!(
        container_to_look_up("POST", "/v1.41/containers/c/start").as_deref(),
        Some("c")
    );
    assert_eq!(
        container_to_look_up("POST", "/v1.41/containers/c/stop"),
        None
    );
}
