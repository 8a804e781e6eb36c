//! Host paths reachable through mounts: `Binds`, `Mounts`, and the `local`
//! volume driver's options (`type=none,o=bind,device=/etc` bind-mounts any
//! host path into a *named* volume).
//!
//! A bind source is first cleaned lexically ([`lexical_clean`], the one
//! `path.Clean` of the policy), must then lie under [`ALLOWED_BIND_ROOT`],
//! and what exists of it is opened by the kernel beneath the data area
//! ([`DataArea`]) without following a single symlink.

use std::path::{Component, Path, PathBuf};

use super::gojson::{Json, array_of, entries_of, str_of, strings_of};
use super::{AreaRefusal, Check, DataArea, Denial, Rule};

/// The customer data area: the only host directory that may be
/// bind-mounted, with everything below it. It holds no Docker or segment
/// state (dockerd's data root is elsewhere).
pub const ALLOWED_BIND_ROOT: &str = "/var/lib/docker";

/// Bind propagation modes that pass no mount events either way.
const PRIVATE_PROPAGATION: &[&str] = &["", "private", "rprivate"];

/// Checks `HostConfig.Binds` (`-v SRC:DST[:MODE]`).
///
/// dockerd's Linux parser splits on `:`; a source starting with `/` is a
/// host path (bind), anything else a volume name; one element is an
/// anonymous volume. The mode is a comma-separated list (`ro,rshared,z`).
pub(crate) fn check_binds(binds: Option<&Json>, area: &dyn DataArea) -> Check {
    for bind in strings_of(binds, "Binds")? {
        let parts: Vec<&str> = bind.split(':').collect();
        if parts.len() >= 2 && parts[0].starts_with('/') {
            check_host_path(parts[0], area)?;
        }
        if let Some(mode) = parts.get(2) {
            for flag in mode.split(',') {
                check_propagation(flag, is_propagation(flag))?;
            }
        }
    }
    Ok(())
}

fn is_propagation(flag: &str) -> bool {
    matches!(
        flag.trim().to_ascii_lowercase().as_str(),
        "shared" | "rshared" | "slave" | "rslave" | "private" | "rprivate"
    )
}

fn check_propagation(mode: &str, is_mode: bool) -> Check {
    if is_mode && !PRIVATE_PROPAGATION.contains(&mode.trim().to_ascii_lowercase().as_str()) {
        return Err(Denial::new(
            Rule::Propagation,
            format!(
                "bind propagation {} is not allowed by policy (only private or rprivate)",
                quote(mode)
            ),
        ));
    }
    Ok(())
}

/// Checks a list of mount specs (`HostConfig.Mounts`, a service's
/// `ContainerSpec.Mounts`).
pub(crate) fn check_mounts(mounts: Option<&Json>, area: &dyn DataArea) -> Check {
    for mount in array_of(mounts, "Mounts")? {
        check_mount(mount, area)?;
    }
    Ok(())
}

fn check_mount(mount: &Json, area: &dyn DataArea) -> Check {
    let propagation = mount.path(&["BindOptions", "Propagation"])?;
    check_propagation(str_of(propagation, "Propagation")?.unwrap_or(""), true)?;
    let kind = str_of(mount.field("Type")?, "Type")?.unwrap_or("");
    match kind {
        "bind" => {
            let source = str_of(mount.field("Source")?, "Source")?.unwrap_or("");
            check_host_path(source, area)
        }
        "volume" => {
            let driver = mount.path(&["VolumeOptions", "DriverConfig", "Name"])?;
            check_volume_driver(str_of(driver, "Name")?)?;
            let options = mount.path(&["VolumeOptions", "DriverConfig", "Options"])?;
            check_volume_options(options, area)
        }
        "tmpfs" => Ok(()),
        other => Err(Denial::new(
            Rule::HostMount,
            format!(
                "mounts of type {} are not allowed by policy (use volume or tmpfs)",
                quote(other)
            ),
        )),
    }
}

/// `POST /volumes/create`: `{"Name", "Driver", "DriverOpts", "Labels"}`.
pub(crate) fn check_volume_create(body: &Json, area: &dyn DataArea) -> Check {
    check_volume_driver(str_of(body.field("Driver")?, "Driver")?)?;
    check_volume_options(body.field("DriverOpts")?, area)
}

/// Only the built-in `local` driver: no volume plugin can be installed, and
/// one would run with host privileges.
pub(crate) fn check_volume_driver(driver: Option<&str>) -> Check {
    match driver.unwrap_or("") {
        "" | "local" => Ok(()),
        other => Err(Denial::new(
            Rule::VolumeDriver,
            format!(
                "volume driver {} is not allowed by policy (only local)",
                quote(other)
            ),
        )),
    }
}

/// Checks the driver options of a `local` volume (`docker volume create
/// --opt`, a mount's `volume-opt`): the driver hands `device`, `type` and `o`
/// to mount(2). Allowed: no options (a plain volume), a bind (`o=bind`)
/// under the data area, or `type=tmpfs`. Network filesystems (`nfs`,
/// `cifs`) are refused: they would put the host kernel's network
/// filesystem clients in the customer's hands (and fail anyway in a
/// user-namespaced segment); block devices and other types mount host
/// storage.
pub(crate) fn check_volume_options(options: Option<&Json>, area: &dyn DataArea) -> Check {
    let Some(options) = options else {
        return Ok(());
    };
    let mount_flags = str_of(options.field("o")?, "o")?.unwrap_or("");
    let fs_type = str_of(options.field("type")?, "type")?;
    let device = str_of(options.field("device")?, "device")?;
    let binds = mount_flags
        .split(',')
        .any(|flag| matches!(flag.trim().to_ascii_lowercase().as_str(), "bind" | "rbind"));
    if binds {
        return check_host_path(device.unwrap_or(""), area);
    }
    match fs_type.map(str::to_ascii_lowercase).as_deref() {
        None if device.is_none() => Ok(()),
        Some("tmpfs") => Ok(()),
        _ => Err(Denial::new(
            Rule::HostMount,
            format!(
                "volumes of type {} with device {} mount host paths, devices or network filesystems and are not allowed by policy (only plain, tmpfs, or o=bind under {ALLOWED_BIND_ROOT})",
                quote(fs_type.unwrap_or("")),
                quote(device.unwrap_or(""))
            ),
        )),
    }
}

/// Refuses a host path unless, once lexically clean, it lies at or under
/// [`ALLOWED_BIND_ROOT`] and the kernel finds no symlink, device node, mount
/// point or file in the way of what exists of it.
pub(crate) fn check_host_path(raw: &str, area: &dyn DataArea) -> Check {
    let refuse = |why: String| {
        Denial::new(
            Rule::HostMount,
            format!(
                "bind mounts of host path {} are not allowed by policy: {why}",
                quote(raw)
            ),
        )
    };
    if !raw.starts_with('/') || raw.contains('\0') {
        return Err(refuse(format!(
            "only paths under {ALLOWED_BIND_ROOT} may be bind-mounted"
        )));
    }
    let clean = lexical_clean(raw);
    let Ok(below) = clean.strip_prefix(ALLOWED_BIND_ROOT) else {
        let shown = if clean.as_os_str() == raw {
            String::new()
        } else {
            format!(" ({} after normalising)", quote(&clean.to_string_lossy()))
        };
        return Err(refuse(format!(
            "only paths under {ALLOWED_BIND_ROOT} may be bind-mounted{shown}"
        )));
    };
    let kernel_refusal = |why: AreaRefusal| {
        let why = match why {
            AreaRefusal::Unreadable(..) => why.to_string(),
            _ => format!("{why} (symbolic links, devices and mount points are not followed)"),
        };
        refuse(why)
    };
    // The local volume driver hands `device` to mount(2) as written, and the
    // kernel applies `..` after following what precedes it: each prefix
    // before a `..` must itself be a plain path inside the area, or the
    // lexical result above is not what gets mounted.
    let mut prefix = String::new();
    for component in raw.split('/').filter(|c| !c.is_empty()) {
        if component == ".." {
            let before = lexical_clean(&prefix);
            let Ok(before_below) = before.strip_prefix(ALLOWED_BIND_ROOT) else {
                return Err(refuse(format!(
                    "\"..\" after {} leaves {ALLOWED_BIND_ROOT}",
                    quote(&before.to_string_lossy())
                )));
            };
            area.check(before_below).map_err(kernel_refusal)?;
        }
        prefix.push('/');
        prefix.push_str(component);
    }
    area.check(below).map_err(kernel_refusal)
}

/// Checks a map of strings (`Sysctls`, `StorageOpt`) for its type only,
/// returning its keys.
pub(crate) fn map_keys<'a>(v: Option<&'a Json>, name: &str) -> Result<Vec<&'a str>, Denial> {
    Ok(entries_of(v, name)?
        .iter()
        .map(|(k, _)| k.as_str())
        .collect())
}

/// Go's `path.Clean` for an absolute path: drops empty and `.` components
/// and applies `..` textually (never above `/`), as dockerd does to a bind
/// source before the kernel resolves it.
pub fn lexical_clean(raw: &str) -> PathBuf {
    let mut clean = PathBuf::from("/");
    for component in Path::new(raw).components() {
        match component {
            Component::Normal(c) => clean.push(c),
            Component::ParentDir => {
                clean.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    clean
}

/// Quotes a user-supplied value for a message, bounded in length.
pub(crate) fn quote(value: &str) -> String {
    const MAX: usize = 120;
    match value.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{:?}...", &value[..cut]),
        None => format!("{value:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_clean_matches_go_path_clean() {
        let cases = [
            ("/var/lib/docker/x", "/var/lib/docker/x"),
            ("//var//lib/./docker///x/", "/var/lib/docker/x"),
            ("/var/lib/docker/../../../etc", "/etc"),
            ("/../../etc", "/etc"),
            ("/", "/"),
            ("/var/lib/docker/.", "/var/lib/docker"),
        ];
        for (raw, want) in cases {
            assert_eq!(lexical_clean(raw), PathBuf::from(want), "{raw}");
        }
    }

    #[test]
    fn quote_bounds_length() {
        assert_eq!(quote("/etc"), "\"/etc\"");
        assert!(quote(&"a".repeat(500)).len() < 130);
    }
}
