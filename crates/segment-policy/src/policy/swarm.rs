//! Swarm: membership is the agent's business, and services are containers
//! too. `POST /services/create` and `POST /services/{id}/update` carry a
//! `ServiceSpec` whose tasks run on any node of the swarm without another
//! API call (a node's dockerd creates them through its executor, which the
//! authorization plugin never sees), so the spec gets every container rule
//! here, on the manager.

use super::gojson::{Json, array_of, bool_of, is_set, str_of, strings_of};
use super::logs::check_log_options;
use super::mounts::{check_mounts, quote};
use super::options::{check_isolation, check_log_driver, check_priority, check_sysctls};
use super::{Check, DataArea, Denial, Rule};

/// The refusal of `docker swarm init/join/leave/update/unlock` and of node
/// changes. A segment joined to a manager the agent did not set up would
/// run that manager's tasks, outside every rule of this policy.
pub(crate) fn membership_denial() -> Denial {
    Denial::new(
        Rule::Swarm,
        "swarm membership (docker swarm init/join/leave/update/unlock, docker node update/rm) is managed by the segment agent and not allowed by policy",
    )
}

/// Checks a `ServiceSpec`.
pub(crate) fn check_service_spec(spec: &Json, area: &dyn DataArea) -> Check {
    check_load_balancing(spec)?;
    let Some(task) = spec.field("TaskTemplate")? else {
        return Ok(());
    };
    let runtime = str_of(task.field("Runtime")?, "Runtime")?.unwrap_or("");
    if runtime.eq_ignore_ascii_case("plugin") || task.field("PluginSpec")?.is_some() {
        return Err(Denial::new(
            Rule::Plugins,
            "plugin services (plugins get host privileges) are not allowed by policy",
        ));
    }
    if !matches!(runtime.to_ascii_lowercase().as_str(), "" | "container") {
        return Err(Denial::new(
            Rule::Runtime,
            format!(
                "service runtime {} is not allowed by policy (only container)",
                quote(runtime)
            ),
        ));
    }
    let log_driver = str_of(task.path(&["LogDriver", "Name"])?, "Name")?;
    check_log_driver(log_driver)?;
    check_log_options(log_driver, task.path(&["LogDriver", "Options"])?)?;
    check_generic_resources(task)?;
    let Some(container) = task.field("ContainerSpec")? else {
        return Ok(());
    };
    check_container_spec(container, area)
}

/// Swarm's load balancing is IPVS, programmed by dockerd over netlink, and
/// the kernel refuses IPVS to a process whose CAP_NET_ADMIN is not in the
/// initial user namespace (GENL_ADMIN_PERM): in a segment the routing mesh
/// and virtual IPs would be created and never work (the task runs, the
/// port or the VIP answers nowhere). Refused with what does work instead.
/// dockerd reads both modes case-insensitively, and any other value as the
/// default: a port is in ingress mode unless it says `host`, a service's
/// endpoint is a VIP unless it says `dnsrr`.
fn check_load_balancing(spec: &Json) -> Check {
    let endpoint = spec.field("EndpointSpec")?;
    let ports = array_of(
        endpoint.map(|e| e.field("Ports")).transpose()?.flatten(),
        "Ports",
    )?;
    for port in ports {
        let mode = str_of(port.field("PublishMode")?, "PublishMode")?.unwrap_or("");
        if !mode.eq_ignore_ascii_case("host") {
            return Err(Denial::new(
                Rule::SwarmLoadBalancing,
                "published ports in ingress mode (the routing mesh, -p 8080:80) need IPVS, which the kernel does not allow in a segment; publish on each task's node instead: --publish mode=host,target=80,published=8080",
            ));
        }
    }
    let resolution = match endpoint {
        Some(e) => str_of(e.field("Mode")?, "Mode")?.unwrap_or(""),
        None => "",
    };
    let on_networks = !array_of(spec.path(&["TaskTemplate", "Networks"])?, "Networks")?.is_empty()
        || !array_of(spec.field("Networks")?, "Networks")?.is_empty();
    if on_networks && !resolution.eq_ignore_ascii_case("dnsrr") {
        return Err(Denial::new(
            Rule::SwarmLoadBalancing,
            "services on networks with a virtual IP (the default --endpoint-mode vip) need IPVS, which the kernel does not allow in a segment; use --endpoint-mode dnsrr (the service's name resolves to its tasks' addresses)",
        ));
    }
    Ok(())
}

fn check_container_spec(container: &Json, area: &dyn DataArea) -> Check {
    if !strings_of(container.field("CapabilityAdd")?, "CapabilityAdd")?.is_empty() {
        return Err(Denial::new(
            Rule::CapAdd,
            "adding capabilities (--cap-add) is not allowed by policy",
        ));
    }
    if !strings_of(container.field("CapabilityDrop")?, "CapabilityDrop")?.is_empty() {
        return Err(Denial::new(
            Rule::CapDrop,
            "dropping capabilities (--cap-drop) is not allowed by policy",
        ));
    }
    check_privileges(container.field("Privileges")?)?;
    check_sysctls(container.field("Sysctls")?)?;
    check_isolation(str_of(container.field("Isolation")?, "Isolation")?)?;
    // `Ulimits` (API 1.41); API 1.46 added `OomScoreAdj` to services.
    check_priority(container)?;
    check_mounts(container.field("Mounts")?, area)
}

/// `Resources.{Reservations,Limits}.GenericResources`: node resources such
/// as GPUs, handed to tasks like `--gpus`.
fn check_generic_resources(task: &Json) -> Check {
    for side in ["Reservations", "Limits"] {
        let generic = task.path(&["Resources", side, "GenericResources"])?;
        if !array_of(generic, "GenericResources")?.is_empty() {
            return Err(Denial::new(
                Rule::Devices,
                "generic resources (GPUs and other node devices) are not allowed by policy",
            ));
        }
    }
    Ok(())
}

/// `ContainerSpec.Privileges`: SELinux off (API 1.41), and the seccomp and
/// AppArmor modes that later API versions (1.44) added.
fn check_privileges(privileges: Option<&Json>) -> Check {
    let Some(privileges) = privileges else {
        return Ok(());
    };
    let selinux_off = bool_of(privileges.path(&["SELinuxContext", "Disable"])?, "Disable")?;
    let seccomp = str_of(privileges.path(&["Seccomp", "Mode"])?, "Mode")?.unwrap_or("");
    let apparmor = str_of(privileges.path(&["AppArmor", "Mode"])?, "Mode")?.unwrap_or("");
    let selinux_type = str_of(privileges.path(&["SELinuxContext", "Type"])?, "Type")?;
    let weakened = if selinux_off || selinux_type.is_some_and(|t| t.contains("spc_t")) {
        Some("SELinux labels disabled")
    } else if matches!(
        seccomp.to_ascii_lowercase().as_str(),
        "unconfined" | "custom"
    ) || is_set(privileges.path(&["Seccomp", "Profile"])?)
    {
        Some("seccomp unconfined or custom")
    } else if apparmor.eq_ignore_ascii_case("disabled") {
        Some("AppArmor disabled")
    } else {
        None
    };
    match weakened {
        Some(what) => Err(Denial::new(
            Rule::Confinement,
            format!("services with {what} are not allowed by policy"),
        )),
        None => Ok(()),
    }
}
