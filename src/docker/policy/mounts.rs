//! Host paths reachable through mounts: `Binds`, `Mounts`, and the `local`
//! volume driver's options (`type=none,o=bind,device=/etc` bind-mounts any
//! host path into a *named* volume).

use std::path::{Component, Path, PathBuf};

use super::gojson::{Json, array_of, str_of, strings_of};
use super::{Check, Denial, PathResolver, Rule};

/// The only host directory that may be bind-mounted, with everything below it.
pub const ALLOWED_BIND_ROOT: &str = "/var/lib/docker";

/// Volume types of the `local` driver that mount no host path or device.
const VIRTUAL_OR_NETWORK_FS: &[&str] = &["tmpfs", "nfs", "nfs4", "cifs", "smb3"];

/// Checks `HostConfig.Binds` (`-v SRC:DST[:MODE]`).
///
/// dockerd's Linux parser treats a source starting with `/` as a host path
/// (bind) and anything else as a volume name; one element is an anonymous
/// volume.
pub(crate) fn check_binds(binds: Option<&Json>, resolver: &dyn PathResolver) -> Check {
    for bind in strings_of(binds, "Binds")? {
        match bind.split_once(':') {
            Some((source, _)) if source.starts_with('/') => check_host_path(source, resolver)?,
            _ => {}
        }
    }
    Ok(())
}

/// Checks a list of mount specs (`HostConfig.Mounts`, a service's
/// `ContainerSpec.Mounts`).
pub(crate) fn check_mounts(mounts: Option<&Json>, resolver: &dyn PathResolver) -> Check {
    for mount in array_of(mounts, "Mounts")? {
        check_mount(mount, resolver)?;
    }
    Ok(())
}

fn check_mount(mount: &Json, resolver: &dyn PathResolver) -> Check {
    let kind = str_of(mount.field("Type")?, "Type")?.unwrap_or("");
    match kind {
        "bind" => {
            let source = str_of(mount.field("Source")?, "Source")?.unwrap_or("");
            check_host_path(source, resolver)
        }
        "volume" => {
            let options = mount.path(&["VolumeOptions", "DriverConfig", "Options"])?;
            check_volume_options(options, resolver)
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

/// Checks the driver options of a volume (`docker volume create --opt`, a
/// mount's `volume-opt`): the `local` driver hands `device`, `type` and `o`
/// to mount(2), so a bind (`o=bind`) must stay under the allowed root, and
/// any other filesystem type must be one that mounts no host path or device.
pub(crate) fn check_volume_options(options: Option<&Json>, resolver: &dyn PathResolver) -> Check {
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
        return check_host_path(device.unwrap_or(""), resolver);
    }
    if device.is_none() && fs_type.is_none() {
        return Ok(());
    }
    let fs_type = fs_type.unwrap_or("");
    if VIRTUAL_OR_NETWORK_FS.contains(&fs_type.to_ascii_lowercase().as_str()) {
        return Ok(());
    }
    Err(Denial::new(
        Rule::HostMount,
        format!(
            "volumes of type {} with device {} mount host paths or devices and are not allowed by policy",
            quote(fs_type),
            quote(device.unwrap_or(""))
        ),
    ))
}

/// Refuses a host path unless, once normalised and with symlinks resolved on
/// the segment filesystem, it lies at or under [`ALLOWED_BIND_ROOT`].
pub(crate) fn check_host_path(raw: &str, resolver: &dyn PathResolver) -> Check {
    let resolved = resolve_host_path(raw, resolver);
    let root = Path::new(ALLOWED_BIND_ROOT);
    let resolved_root = resolver.resolve(root).unwrap_or_else(|| root.to_path_buf());
    if resolved
        .as_ref()
        .is_some_and(|p| p.starts_with(&resolved_root))
    {
        return Ok(());
    }
    let shown = match &resolved {
        Some(p) if p.as_os_str() != raw => format!(
            "{} (resolves to {})",
            quote(raw),
            quote(&p.to_string_lossy())
        ),
        _ => quote(raw),
    };
    Err(Denial::new(
        Rule::HostMount,
        format!(
            "bind mounts of host path {shown} are not allowed by policy: only paths under {ALLOWED_BIND_ROOT} may be bind-mounted"
        ),
    ))
}

/// The path the kernel will mount, or `None` when it cannot be known
/// (relative, NUL byte, unresolvable symlinks).
fn resolve_host_path(raw: &str, resolver: &dyn PathResolver) -> Option<PathBuf> {
    if !raw.starts_with('/') || raw.contains('\0') {
        return None;
    }
    resolver.resolve(&lexical_clean(raw))
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
