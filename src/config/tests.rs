//! Parsing and validation of the configuration.

use super::*;

#[test]
fn defaults_are_valid() {
    let c = Config::from_toml("").unwrap();
    assert_eq!(c, Config::default());
    assert_eq!(c.flavor.default_memory_mib, 4096);
    assert_eq!(c.listen.socket, Path::new("/run/segment-agent/agent.sock"));
    let remote = Config::from_toml("[network]\nswarm_remote = [\"198.51.100.7/24\"]").unwrap();
    let nets = remote.network.swarm_remote_nets().unwrap();
    assert_eq!(
        nets,
        vec!["198.51.100.0/24".parse().unwrap()],
        "host bits dropped"
    );
}

#[test]
fn the_shipped_examples_parse() {
    for text in [
        include_str!("../../config/agent.toml"),
        include_str!("../../config/dev.toml"),
    ] {
        Config::from_toml(text).unwrap();
    }
}

#[test]
fn rejects_bad_values() {
    let cases = [
        ("colour = 1", "unknown"),
        ("apparmor = \"complain\"", "apparmor"),
        ("[network]\nbridj = \"x\"", "unknown"),
        ("[network]\nfilter = \"ebtables\"", "filter"),
        ("default_image = \"../x\"", "default_image"),
        ("state_dir = \"relative\"", "state_dir"),
        ("[listen]\ntcp = \"0.0.0.0:7443\"", "listen.tcp"),
        (
            "[listen]\ntcp = \"127.0.0.1:7443\"\ntls_cert = \"/c\"",
            "listen.tls_cert",
        ),
        (
            "[listen]\nidle_timeout_seconds = 0",
            "listen.idle_timeout_seconds",
        ),
        (
            "[listen]\nidle_timeout_seconds = 86401",
            "listen.idle_timeout_seconds",
        ),
        ("[listen]\nmax_connections = 0", "listen.max_connections"),
        (
            "[listen]\nmax_connections = 100000",
            "listen.max_connections",
        ),
        ("[listen]\nmax_connections = -1", "max_connections"),
        (
            "[network]\nranges = [\"203.0.113.20-203.0.113.10\"]",
            "network.ranges",
        ),
        ("[network]\nranges = [\"198.51.100.5\"]", "network.ranges"),
        ("[network]\nranges = [\"203.0.113.1\"]", "network.ranges"),
        ("[network]\nprefix = 31", "network.prefix"),
        (
            "[network]\nswarm_remote = [\"198.51.100.0\"]",
            "network.swarm_remote",
        ),
        (
            "[network]\nswarm_remote = [\"2001:db8::/32\"]",
            "network.swarm_remote",
        ),
        ("[flavor]\ndefault_vcpus = 9", "flavor.default_vcpus"),
        (
            "[flavor]\ndefault_disk_gib = 501",
            "flavor.default_disk_gib",
        ),
        ("[flavor]\nmin_disk_gib = 0", "flavor.default_disk_gib"),
        (
            "[flavor]\nmin_pids = 32\ndefault_pids = 64",
            "flavor.min_pids",
        ),
        ("[flavor]\nmax_pids = 100", "flavor.default_pids"),
        (
            "[flavor]\ndefault_network_mbit = 0",
            "flavor.default_network_mbit",
        ),
        (
            "[flavor]\nmax_network_mbit = 200000",
            "flavor.max_network_mbit",
        ),
        (
            "[isolation]\npids_max = 4096",
            "moved to flavor.default_pids",
        ),
        ("[isolation]\nio_weight = 99", "isolation.io_weight"),
        ("[isolation]\nio_weight = 1001", "isolation.io_weight"),
        ("disk_quota = \"maybe\"", "disk_quota"),
        (
            "[capacity]\nmemory_overcommit_ratio = 0.0",
            "memory_overcommit_ratio",
        ),
        ("[capacity]\nmax_segments = 0", "max_segments"),
        ("[docker]\ntools_dir = \"tools\"", "docker.tools_dir"),
        (
            "apparmor_profile_dir = \"apparmor.d\"",
            "apparmor_profile_dir",
        ),
        ("[network]\ngateway = \"203.0.113.0\"", "network.ranges"),
        (
            "[control_plane]\nendpoint = \"http://cp.example:7444\"",
            "plaintext",
        ),
        (
            "[control_plane]\nendpoint = \"https://cp.example:7444\"",
            "tls_ca",
        ),
        ("[control_plane]\nendpoint = \"ftp://x\"", "https://"),
        (
            "[control_plane]\nendpoint = \"http://127.0.0.1:1\"\ninterval_seconds = 0",
            "interval",
        ),
        (
            "[control_plane]\nendpoint = \"http://127.0.0.1:1\"\ncolour = 1",
            "unknown",
        ),
    ];
    for (text, needle) in cases {
        let err = Config::from_toml(text).unwrap_err().to_string();
        assert!(err.contains(needle), "{text:?}: {err}");
    }
    let ok = "[listen]\ntcp = \"127.0.0.1:7443\"";
    Config::from_toml(ok).unwrap();
    let cp = Config::from_toml("[control_plane]\nendpoint = \"http://127.0.0.1:7444\"").unwrap();
    assert_eq!(cp.control_plane.unwrap().interval_seconds, 10);
    assert!(
        Config::from_toml("").unwrap().control_plane.is_none(),
        "no table, no reports"
    );
}

#[test]
fn metrics_and_log_tables() {
    let c = Config::from_toml("").unwrap();
    assert_eq!(c.metrics.listen, None, "no table, no endpoint");
    assert_eq!(c.log, LogConfig::default());
    let c = Config::from_toml(
        "[metrics]\nlisten = \"127.0.0.1:9464\"\n[log]\nformat = \"json\"\nlevel = \"segment_agent=debug,info\"\n",
    )
    .unwrap();
    assert_eq!(c.metrics.listen, Some("127.0.0.1:9464".parse().unwrap()));
    assert_eq!(c.log.format, LogFormat::Json);
    for (text, needle) in [
        ("[metrics]\nlisten = \"9464\"", "socket address"),
        ("[metrics]\nlisen = \"127.0.0.1:9464\"", "unknown"),
        ("[log]\nformat = \"xml\"", "xml"),
        ("[log]\nlevel = \"info,[\"", "log.level"),
        ("[log]\ncolour = true", "unknown"),
        (
            "[listen]\ntcp = \"127.0.0.1:7443\"\n[metrics]\nlisten = \"127.0.0.1:7443\"",
            "metrics.listen",
        ),
    ] {
        let err = Config::from_toml(text).unwrap_err().to_string();
        assert!(err.contains(needle), "{text:?}: {err}");
    }
}
