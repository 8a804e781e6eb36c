//! Container options the docker CLI rarely shows but the raw API takes:
//! runtimes, sysctls, log drivers, platform options and the settings that
//! would put a container ahead of the segment's own daemons (OOM score,
//! real-time CPU, priority resource limits). Shared by
//! containers (`HostConfig`) and swarm services (`ContainerSpec`).

use super::gojson::{Json, array_of, bool_of, number_of, str_of};
use super::mounts::{map_keys, quote};
use super::{Check, Denial, Rule};

/// Runtimes that are dockerd's own runc (20.10 registers `runc` and
/// containerd's shim name for it). Any other name is a runtime configured
/// on the host for another purpose, if any.
const RUNC: &[&str] = &["", "runc", "io.containerd.runc.v2"];

/// Sysctls that are namespaced *and* safe to hand a tenant: Kubernetes'
/// "safe" set, plus `net.core.somaxconn`, `ip_forward` and `disable_ipv6`
/// (which change only the container's own network namespace; runc refuses
/// any `net.*` sysctl in the segment's). Other namespaced ones
/// (`kernel.shm*`, `kernel.msg*`, `fs.mqueue.*`, most of `net.*`) raise
/// limits on memory the segment's cgroup accounts badly or change
/// networking behaviour the bridge filter relies on.
const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.core.somaxconn",
    "net.ipv4.ip_forward",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.ping_group_range",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.tcp_wmem",
    "net.ipv6.conf.all.disable_ipv6",
    "net.ipv6.conf.default.disable_ipv6",
];

/// Log drivers that write inside the segment's own data root. The others
/// make dockerd itself connect to an address the customer names (any unix
/// socket in the segment included: `syslog-address=unix:///...`).
const LOG_DRIVERS: &[&str] = &["", "json-file", "local", "none"];

/// `--runtime` (`HostConfig.Runtime`).
pub(crate) fn check_runtime(runtime: Option<&str>) -> Check {
    let runtime = runtime.unwrap_or("");
    if RUNC.contains(&runtime) {
        return Ok(());
    }
    Err(Denial::new(
        Rule::Runtime,
        format!(
            "container runtime {} is not allowed by policy (only runc)",
            quote(runtime)
        ),
    ))
}

/// `--sysctl` (`HostConfig.Sysctls`, service `ContainerSpec.Sysctls`).
pub(crate) fn check_sysctls(sysctls: Option<&Json>) -> Check {
    for key in map_keys(sysctls, "Sysctls")? {
        // The kernel reads `/` and `.` alike in sysctl names.
        let name = key.trim().replace('/', ".").to_ascii_lowercase();
        if !SAFE_SYSCTLS.contains(&name.as_str()) {
            return Err(Denial::new(
                Rule::Sysctl,
                format!(
                    "sysctl {} is not allowed by policy (allowed: {})",
                    quote(key),
                    SAFE_SYSCTLS.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// `--log-driver` (`HostConfig.LogConfig.Type`, service `LogDriver.Name`).
pub(crate) fn check_log_driver(driver: Option<&str>) -> Check {
    let driver = driver.unwrap_or("");
    if LOG_DRIVERS.contains(&driver) {
        return Ok(());
    }
    Err(Denial::new(
        Rule::LogDriver,
        format!(
            "log driver {} is not allowed by policy (json-file, local or none)",
            quote(driver)
        ),
    ))
}

/// `--isolation` (Windows only; dockerd refuses it on Linux too).
pub(crate) fn check_isolation(isolation: Option<&str>) -> Check {
    match isolation.unwrap_or("").to_ascii_lowercase().as_str() {
        "" | "default" => Ok(()),
        other => Err(Denial::new(
            Rule::PlatformOption,
            format!("isolation {} is not allowed by policy", quote(other)),
        )),
    }
}

/// `--storage-opt` (`HostConfig.StorageOpt`): per-container storage-driver
/// options of the data root's filesystem.
pub(crate) fn check_storage_opt(storage_opt: Option<&Json>) -> Check {
    if let Some(key) = map_keys(storage_opt, "StorageOpt")?.first() {
        return Err(Denial::new(
            Rule::PlatformOption,
            format!(
                "storage driver options ({}) are not allowed by policy",
                quote(key)
            ),
        ));
    }
    Ok(())
}

/// Settings that put a container ahead of the segment's own daemons when
/// memory or CPU runs out: a negative `OomScoreAdj` (dockerd and
/// containerd would be killed first), `OomKillDisable` (the container's
/// cgroup never OOM-kills, so the segment's does), and real-time CPU
/// (`CpuRealtimePeriod`/`CpuRealtimeRuntime`: SCHED_FIFO starves them).
pub(crate) fn check_priority(resources: &Json) -> Check {
    let refuse = |what: &str| {
        Err(Denial::new(
            Rule::Priority,
            format!(
                "{what} is not allowed by policy (it would put the container ahead of the segment's own daemons)"
            ),
        ))
    };
    if number_of(resources.field("OomScoreAdj")?, "OomScoreAdj")? < 0.0 {
        return refuse("a negative OOM score adjustment (--oom-score-adj)");
    }
    if bool_of(resources.field("OomKillDisable")?, "OomKillDisable")? {
        return refuse("disabling the OOM killer (--oom-kill-disable)");
    }
    for field in ["CpuRealtimePeriod", "CpuRealtimeRuntime"] {
        if number_of(resources.field(field)?, field)? != 0.0 {
            return refuse("real-time CPU scheduling (--cpu-rt-period, --cpu-rt-runtime)");
        }
    }
    check_ulimits(resources.field("Ulimits")?)
}

/// Resource limits that let a process without `CAP_SYS_NICE` raise its own
/// scheduling priority: `rtprio` (SCHED_FIFO, which no CFS quota caps:
/// one busy thread takes a whole CPU of the host), `rttime` and `nice`.
const PRIORITY_ULIMITS: &[&str] = &["rtprio", "rttime", "nice"];

/// `--ulimit` (`Ulimits`, a service's `Ulimits`, a build's `ulimits`).
pub(crate) fn check_ulimits(ulimits: Option<&Json>) -> Check {
    for ulimit in array_of(ulimits, "Ulimits")? {
        let name = str_of(ulimit.field("Name")?, "Name")?.unwrap_or("");
        if PRIORITY_ULIMITS.contains(&name.trim().to_ascii_lowercase().as_str()) {
            return Err(Denial::new(
                Rule::Priority,
                format!(
                    "the {} resource limit (--ulimit) is not allowed by policy (it would put the container ahead of the segment's own daemons)",
                    quote(name)
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::gojson::parse;
    use super::*;

    #[test]
    fn sysctls() {
        let cases: &[(&str, Option<&str>)] = &[
            (r#"{}"#, None),
            (r#"{"net.ipv4.ip_unprivileged_port_start":"0"}"#, None),
            (r#"{"net/core/somaxconn":"1024"}"#, None),
            (r#"{"kernel.shmmax":"1"}"#, Some("SEGMENT-1017")),
            (
                r#"{"net.ipv4.conf.all.arp_ignore":"0"}"#,
                Some("SEGMENT-1017"),
            ),
            (r#"{"kernel.core_pattern":"|/x"}"#, Some("SEGMENT-1017")),
            (r#"{"fs.mqueue.msg_max":"10"}"#, Some("SEGMENT-1017")),
            (r#"["net.core.somaxconn"]"#, Some("SEGMENT-1101")),
        ];
        for (json, want) in cases {
            let v = parse(json.as_bytes()).unwrap();
            let got = check_sysctls(Some(&v)).err().map(|d| d.rule.code());
            assert_eq!(got, *want, "{json}");
        }
    }

    #[test]
    fn priority() {
        let cases: &[(&str, Option<&str>)] = &[
            (r#"{"OomScoreAdj":0,"OomKillDisable":false}"#, None),
            (r#"{"OomScoreAdj":500}"#, None),
            (r#"{"OomScoreAdj":-1}"#, Some("SEGMENT-1018")),
            (r#"{"oomscoreadj":-1000}"#, Some("SEGMENT-1018")),
            (r#"{"OomKillDisable":true}"#, Some("SEGMENT-1018")),
            (r#"{"CpuRealtimeRuntime":950000}"#, Some("SEGMENT-1018")),
            (r#"{"CpuRealtimePeriod":1000000}"#, Some("SEGMENT-1018")),
            (r#"{"OomScoreAdj":"-1"}"#, Some("SEGMENT-1101")),
            (
                r#"{"Ulimits":[{"Name":"nofile","Soft":1024,"Hard":2048}]}"#,
                None,
            ),
            (
                r#"{"Ulimits":[{"Name":"rtprio","Soft":99,"Hard":99}]}"#,
                Some("SEGMENT-1018"),
            ),
            (
                r#"{"ulimits":[{"name":"NICE","soft":40,"hard":40}]}"#,
                Some("SEGMENT-1018"),
            ),
            (
                r#"{"Ulimits":[{"Name":"rttime","Soft":-1,"Hard":-1}]}"#,
                Some("SEGMENT-1018"),
            ),
        ];
        for (json, want) in cases {
            let v = parse(json.as_bytes()).unwrap();
            let got = check_priority(&v).err().map(|d| d.rule.code());
            assert_eq!(got, *want, "{json}");
        }
    }

    #[test]
    fn names() {
        assert!(check_runtime(Some("runc")).is_ok());
        assert!(check_runtime(None).is_ok());
        assert!(check_runtime(Some("kata")).is_err());
        assert!(check_log_driver(Some("json-file")).is_ok());
        assert!(check_log_driver(Some("syslog")).is_err());
        assert!(check_isolation(Some("Default")).is_ok());
        assert!(check_isolation(Some("hyperv")).is_err());
    }
}
