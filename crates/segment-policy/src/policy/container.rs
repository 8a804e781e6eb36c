//! Container endpoints: create, legacy start, update and exec.

use super::gojson::{Json, bool_of, is_set, str_of, strings_of};
use super::logs::check_log_options;
use super::mounts::{check_binds, check_mounts, check_volume_driver, quote};
use super::options::{
    check_isolation, check_log_driver, check_priority, check_runtime, check_storage_opt,
    check_sysctls,
};
use super::{Check, DataArea, Denial, Rule};

/// Docker's default masked paths (`oci/defaults.go`). A `MaskedPaths` list
/// that drops one of them (`--security-opt systempaths=unconfined` sends
/// `[]`) unmasks kernel interfaces.
const DEFAULT_MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
];

/// Docker's default read-only paths (`oci/defaults.go`).
const DEFAULT_READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// `POST /containers/create`.
///
/// dockerd's `ContainerConfigWrapper` embeds a deprecated second HostConfig
/// at the top level of the body and uses it when the `HostConfig` key is
/// absent, so `{"Image":"busybox","Privileged":true}` is a privileged
/// container: both are checked.
pub(crate) fn check_create(body: &Json, area: &dyn DataArea) -> Check {
    check_host_config(body, area)?;
    if let Some(inner) = body.field("HostConfig")? {
        check_host_config(inner, area)?;
    }
    Ok(())
}

/// `POST /containers/{id}/start` below API 1.24: dockerd decodes the body
/// with the same `ContainerConfigWrapper` as a create (`decodeHostConfig`),
/// so both the `HostConfig` key and the deprecated top-level fields apply.
pub(crate) fn check_legacy_start(body: &Json, area: &dyn DataArea) -> Check {
    check_create(body, area)
}

/// `POST /containers/{id}/update`: an `UpdateConfig` (resources and restart
/// policy). dockerd 20.10 copies only CPU, memory, blkio and pids limits and
/// the restart policy from it, never privileges, devices, OOM settings or
/// the cgroup parent; those fields are refused anyway so that a daemon that
/// starts honouring them stays safe.
pub(crate) fn check_update(body: &Json) -> Check {
    check_resources(body)
}

/// The `Resources` part of a HostConfig (also an update's body).
fn check_resources(resources: &Json) -> Check {
    check_devices(resources)?;
    check_priority(resources)?;
    check_cgroup_parent(resources)
}

/// `POST /containers/{id}/exec`: `docker exec --privileged`.
pub(crate) fn check_exec(body: &Json) -> Check {
    if bool_of(body.field("Privileged")?, "Privileged")? {
        return Err(Denial::new(
            Rule::Privileged,
            "privileged exec sessions are not allowed by policy",
        ));
    }
    Ok(())
}

/// Every HostConfig rule, in table order.
fn check_host_config(hc: &Json, area: &dyn DataArea) -> Check {
    if bool_of(hc.field("Privileged")?, "Privileged")? {
        return Err(Denial::new(
            Rule::Privileged,
            "privileged containers are not allowed by policy",
        ));
    }
    check_capabilities(hc)?;
    check_security_options(hc)?;
    check_namespaces(hc)?;
    check_binds(hc.field("Binds")?, area)?;
    check_mounts(hc.field("Mounts")?, area)?;
    check_volume_driver(str_of(hc.field("VolumeDriver")?, "VolumeDriver")?)?;
    check_runtime(str_of(hc.field("Runtime")?, "Runtime")?)?;
    check_sysctls(hc.field("Sysctls")?)?;
    let log_driver = str_of(hc.path(&["LogConfig", "Type"])?, "Type")?;
    check_log_driver(log_driver)?;
    check_log_options(log_driver, hc.path(&["LogConfig", "Config"])?)?;
    check_isolation(str_of(hc.field("Isolation")?, "Isolation")?)?;
    check_storage_opt(hc.field("StorageOpt")?)?;
    check_resources(hc)
}

fn check_capabilities(hc: &Json) -> Check {
    // `Capabilities` (API 1.40) replaced the whole capability set.
    for field in ["CapAdd", "Capabilities"] {
        if !strings_of(hc.field(field)?, field)?.is_empty() {
            return Err(Denial::new(
                Rule::CapAdd,
                "adding capabilities (--cap-add) is not allowed by policy",
            ));
        }
    }
    if !strings_of(hc.field("CapDrop")?, "CapDrop")?.is_empty() {
        return Err(Denial::new(
            Rule::CapDrop,
            "dropping capabilities (--cap-drop) is not allowed by policy",
        ));
    }
    Ok(())
}

/// `--security-opt`, parsed as dockerd's `parseSecurityOpt` does: `KEY=VALUE`,
/// the deprecated `KEY:VALUE`, and the bare words `no-new-privileges` and
/// `disable` (SELinux labels off).
fn check_security_options(hc: &Json) -> Check {
    for opt in strings_of(hc.field("SecurityOpt")?, "SecurityOpt")? {
        if !security_option_allowed(opt) {
            return Err(Denial::new(
                Rule::Confinement,
                format!(
                    "security option {} disables or replaces confinement and is not allowed by policy",
                    quote(opt)
                ),
            ));
        }
    }
    for (field, defaults) in [
        ("MaskedPaths", DEFAULT_MASKED_PATHS),
        ("ReadonlyPaths", DEFAULT_READONLY_PATHS),
    ] {
        let value = hc.field(field)?;
        if matches!(value, None | Some(Json::Null)) {
            continue;
        }
        let paths = strings_of(value, field)?;
        if let Some(missing) = defaults.iter().find(|d| !paths.contains(d)) {
            return Err(Denial::new(
                Rule::Confinement,
                format!(
                    "{field} without {missing} (--security-opt systempaths=unconfined) is not allowed by policy"
                ),
            ));
        }
    }
    Ok(())
}

fn security_option_allowed(opt: &str) -> bool {
    let opt = opt.trim();
    if opt == "no-new-privileges" {
        return true;
    }
    let (key, value) = match opt.split_once('=').or_else(|| opt.split_once(':')) {
        Some(kv) => kv,
        None => return false, // bare "disable" and unknown words
    };
    let value = value.trim();
    match key.trim().to_ascii_lowercase().as_str() {
        // The daemon sets no-new-privileges for every container (CIS 2.14);
        // `=false` would turn it off for one. Only the values Go's
        // `strconv.ParseBool` reads as true pass (dockerd refuses the rest).
        "no-new-privileges" => matches!(value, "1" | "t" | "T" | "true" | "TRUE" | "True"),
        // Only the daemon's own profile: any other name is whatever happens
        // to be loaded on the host, "unconfined" included.
        "apparmor" => value == "docker-default",
        // "unconfined" and custom profiles (a JSON document that may allow
        // every syscall) are refused; "builtin" is the daemon's default.
        "seccomp" => value == "builtin",
        "label" => {
            let v = value.to_ascii_lowercase();
            !(v == "disable" || v.contains("spc_t") || v.contains("unconfined"))
        }
        _ => false, // "systempaths=unconfined" and keys dockerd does not know
    }
}

fn check_devices(resources: &Json) -> Check {
    for field in [
        "Devices",
        "DeviceCgroupRules",
        "DeviceRequests",
        "DeviceCgroupPermissions",
    ] {
        if is_set(resources.field(field)?) {
            return Err(Denial::new(
                Rule::Devices,
                format!(
                    "host devices (--device, --device-cgroup-rule, --gpus: {field}) are not allowed by policy"
                ),
            ));
        }
    }
    Ok(())
}

fn check_namespaces(hc: &Json) -> Check {
    let namespaces = [
        ("PidMode", Rule::HostPid, "PID", "--pid=host"),
        ("IpcMode", Rule::HostIpc, "IPC", "--ipc=host"),
        ("UsernsMode", Rule::HostUserns, "user", "--userns=host"),
        ("UTSMode", Rule::HostUts, "UTS", "--uts=host"),
        (
            "CgroupnsMode",
            Rule::HostCgroupns,
            "cgroup",
            "--cgroupns=host",
        ),
    ];
    for (field, rule, name, flag) in namespaces {
        let mode = str_of(hc.field(field)?, field)?.unwrap_or("");
        let kind = mode.split(':').next().unwrap_or("");
        if kind.trim().eq_ignore_ascii_case("host") {
            return Err(Denial::new(
                rule,
                format!("sharing the host {name} namespace ({flag}) is not allowed by policy"),
            ));
        }
    }
    Ok(())
}

/// `--cgroup-parent` (`Resources.CgroupParent`). The segment's dockerd runs
/// with a relative `--cgroup-parent`, so containers stay inside the
/// segment's cgroup and its memory/CPU caps; any override, `/` (the host's
/// root cgroup) or a relative path alike, is refused. `""` (what the CLI
/// sends by default) and `null` mean the daemon's default.
fn check_cgroup_parent(resources: &Json) -> Check {
    if str_of(resources.field("CgroupParent")?, "CgroupParent")?.is_some_and(|p| !p.is_empty()) {
        return Err(Denial::new(
            Rule::CgroupParent,
            "cgroup parent overrides are not allowed by policy",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn security_options() {
        let allowed = [
            "no-new-privileges",
            "no-new-privileges:true",
            "no-new-privileges=true",
            "no-new-privileges=1",
            "apparmor=docker-default",
            "seccomp=builtin",
            "label=user:USER",
            "label:level:s0:c100,c200",
        ];
        for opt in allowed {
            assert!(security_option_allowed(opt), "{opt}");
        }
        let refused = [
            "apparmor=unconfined",
            "apparmor:unconfined",
            "apparmor=some-host-profile",
            "seccomp=unconfined",
            "seccomp:unconfined",
            r#"seccomp={"defaultAction":"SCMP_ACT_ALLOW"}"#,
            "label=disable",
            "label:disable",
            "disable",
            "label=type:spc_t",
            "systempaths=unconfined",
            "bogus",
            // The daemon's no-new-privileges default switched off.
            "no-new-privileges:false",
            "no-new-privileges=false",
            "no-new-privileges=0",
            "no-new-privileges=F",
            "no-new-privileges=no",
            "no-new-privileges=",
        ];
        for opt in refused {
            assert!(!security_option_allowed(opt), "{opt}");
        }
    }
}
