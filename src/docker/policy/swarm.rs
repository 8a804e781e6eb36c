//! Swarm services: `POST /services/create` and `POST /services/{id}/update`
//! carry a `ServiceSpec` whose tasks run on any node of the swarm without
//! another API call, so the spec is checked here, on the manager.

use super::gojson::{Json, bool_of, str_of, strings_of};
use super::mounts::check_mounts;
use super::{Check, Denial, PathResolver, Rule};

/// Checks a `ServiceSpec`.
pub(crate) fn check_service_spec(spec: &Json, resolver: &dyn PathResolver) -> Check {
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
    let Some(container) = task.field("ContainerSpec")? else {
        return Ok(());
    };
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
    check_mounts(container.field("Mounts")?, resolver)
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
    let weakened = if selinux_off {
        Some("SELinux labels disabled")
    } else if matches!(
        seccomp.to_ascii_lowercase().as_str(),
        "unconfined" | "custom"
    ) {
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
