//! `segment-agent check`: every condition the agent needs on this host,
//! each checked and reported, so an operator sees all problems at once.

use crate::{
    apparmor::{ApparmorMode, ProfileLoader},
    config::Config,
    hypervisor::Hypervisor,
    images::ImageStore,
    model::ImageName,
    network::{
        SegmentNetwork,
        filter::{FilterMode, PortFilter},
    },
};
use std::path::Path;

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// What was checked.
    pub name: &'static str,
    /// `Ok(detail)` or `Err(reason)`.
    pub result: Result<String, String>,
}

/// Runs every check; the configuration has already been validated.
pub fn run(
    config: &Config,
    hv: &dyn Hypervisor,
    apparmor: &dyn ProfileLoader,
    filter: &dyn PortFilter,
) -> Vec<Check> {
    let mut checks = vec![Check {
        name: "config",
        result: Ok(format!("valid; address pool {:?}", config.network.ranges)),
    }];
    checks.push(Check {
        name: "libvirt",
        result: hv
            .version()
            .map(|v| format!("{} reachable, libvirt {}", config.libvirt_uri, v.libvirt))
            .map_err(|e| e.to_string()),
    });
    let net = SegmentNetwork {
        bridge: config.network.bridge.clone(),
        prefix: config.network.prefix,
        gateway: config.network.gateway,
    };
    checks.push(Check {
        name: "bridge",
        result: if net.bridge_present() {
            Ok(format!("{} present", net.bridge))
        } else {
            Err(format!(
                "bridge {} not found in this network namespace (is the agent in the host's?)",
                net.bridge
            ))
        },
    });
    let images = ImageStore::new(config.state_dir.join("images"));
    checks.push(Check {
        name: "default image",
        result: ImageName::parse(&config.default_image)
            .map_err(|e| e.to_string())
            .and_then(|n| images.resolve(&n).map_err(|e| e.to_string()))
            .map(|i| format!("{} at {}", i.name, i.rootfs.display())),
    });
    checks.push(Check {
        name: "state dir",
        result: writable(&config.state_dir),
    });
    let plugin = config.docker.tools_dir.join(crate::docker::AUTHZ_BINARY);
    checks.push(Check {
        name: "policy plugin",
        result: if plugin.is_file() {
            Ok(format!("{} installed", plugin.display()))
        } else {
            Err(format!(
                "{} missing: Docker segments would be refused",
                plugin.display()
            ))
        },
    });
    checks.push(Check {
        name: "apparmor",
        result: match config.apparmor {
            ApparmorMode::Off => Ok("off: segments run unconfined (development hosts only)".into()),
            ApparmorMode::Enforce => apparmor
                .available()
                .map(|()| "enforce: kernel AppArmor available".into())
                .map_err(|e| crate::errors::error_chain(&e)),
        },
    });
    checks.push(Check {
        name: "disk quota",
        result: match crate::agent::disk_limits(config, crate::agent::disk_quota(config).as_ref()) {
            crate::segment::DiskLimits::Off => Ok(
                "off: segments' disks are not limited (for hosts without btrfs simple quotas)"
                    .into(),
            ),
            crate::segment::DiskLimits::Enforced(detail) => Ok(format!("enforce: {detail}")),
            crate::segment::DiskLimits::Unavailable(reason) => Err(format!(
                "{reason}; segments would be refused (disk_quota = \"off\" runs them without \
                 a disk limit)"
            )),
        },
    });
    checks.push(Check {
        name: "bridge filter",
        result: match config.network.filter {
            FilterMode::Off => {
                Ok("off: segment ports are unfiltered (hosts without nftables only)".into())
            }
            FilterMode::Enforce => filter
                .probe()
                .map(|detail| format!("enforce: {detail}"))
                .map_err(|e| {
                    format!(
                        "{}; segments would be refused (network.filter = \"off\" runs them \
                         unfiltered)",
                        crate::errors::error_chain(&e)
                    )
                }),
        },
    });
    checks.push(Check {
        name: "br_netfilter",
        result: bridge_netfilter(Path::new("/proc/sys/net/bridge")),
    });
    checks.push(Check {
        name: "veth MACs",
        result: veth_link(Path::new("/run/udev"), &LINK_DIRS.map(Path::new)),
    });
    checks
}

/// The `.link` file of `systemd/`, in every directory udev reads them from.
const VETH_LINK: &str = "10-segment-agent-veth.link";
const LINK_DIRS: [&str; 4] = [
    "/etc/systemd/network",
    "/run/systemd/network",
    "/usr/lib/systemd/network",
    "/lib/systemd/network",
];

/// Docker segments run `icc=false`, which dockerd refuses without
/// br_netfilter; with it loaded, bridged segment frames must not pass the
/// host's iptables (whose FORWARD policy, under a host Docker, drops them).
fn bridge_netfilter(dir: &Path) -> Result<String, String> {
    if !dir.is_dir() {
        return Err(
            "br_netfilter not loaded: Docker segments' dockerd would refuse to start \
                    (modprobe br_netfilter, and list it in /etc/modules-load.d)"
                .into(),
        );
    }
    let on: Vec<&str> = ["iptables", "ip6tables", "arptables"]
        .into_iter()
        .filter(|t| {
            let file = dir.join(format!("bridge-nf-call-{t}"));
            std::fs::read_to_string(file).is_ok_and(|v| v.trim() != "0")
        })
        .collect();
    if on.is_empty() {
        Ok("loaded; bridged frames skip the host's iptables".into())
    } else {
        Err(format!(
            "bridged segment frames pass the host's {} (set net.bridge.bridge-nf-call-* = 0)",
            on.join(", ")
        ))
    }
}

/// Where udev runs, its default `.link` policy gives new veth devices a
/// "persistent" MAC, racing libvirt's; the bridge filter then drops the
/// segment's traffic.
fn veth_link(udev: &Path, dirs: &[&Path]) -> Result<String, String> {
    if !udev.exists() {
        return Ok("udev not running: nothing renames veth MACs".into());
    }
    match dirs.iter().map(|d| d.join(VETH_LINK)).find(|f| f.is_file()) {
        Some(f) => Ok(format!("{} installed", f.display())),
        None => Err(format!(
            "udev runs and {VETH_LINK} is not installed: segments may start with a MAC \
             the bridge filter drops (install systemd/{VETH_LINK} in /etc/systemd/network)"
        )),
    }
}

fn writable(dir: &Path) -> Result<String, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    tempfile::tempfile_in(dir)
        .map(|_| format!("{} writable", dir.display()))
        .map_err(|e| format!("{} not writable: {e}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn br_netfilter_must_be_loaded_and_kept_off_bridged_frames() {
        let dir = tempfile::tempdir().unwrap();
        let bridge = dir.path().join("bridge");
        assert!(
            bridge_netfilter(&bridge)
                .unwrap_err()
                .contains("not loaded")
        );
        std::fs::create_dir(&bridge).unwrap();
        for (t, v) in [
            ("iptables", "1\n"),
            ("ip6tables", "0\n"),
            ("arptables", "1\n"),
        ] {
            std::fs::write(bridge.join(format!("bridge-nf-call-{t}")), v).unwrap();
        }
        let err = bridge_netfilter(&bridge).unwrap_err();
        assert!(err.contains("iptables, arptables"), "{err}");
        for t in ["iptables", "arptables"] {
            std::fs::write(bridge.join(format!("bridge-nf-call-{t}")), "0\n").unwrap();
        }
        assert!(bridge_netfilter(&bridge).is_ok());
    }

    #[test]
    fn veth_link_is_needed_only_where_udev_runs() {
        let dir = tempfile::tempdir().unwrap();
        let (udev, etc, lib) = (
            dir.path().join("udev"),
            dir.path().join("etc"),
            dir.path().join("lib"),
        );
        let dirs = [etc.as_path(), lib.as_path()];
        assert!(veth_link(&udev, &dirs).is_ok());
        std::fs::create_dir(&udev).unwrap();
        assert!(veth_link(&udev, &dirs).unwrap_err().contains(VETH_LINK));
        std::fs::create_dir(&lib).unwrap();
        std::fs::write(lib.join(VETH_LINK), "[Match]\n").unwrap();
        assert!(veth_link(&udev, &dirs).unwrap().contains("lib"));
    }
}
