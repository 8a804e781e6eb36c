//! `segment-agent check`: every condition the agent needs on this host,
//! each checked and reported, so an operator sees all problems at once.

use crate::{
    apparmor::{ApparmorMode, ProfileLoader},
    config::Config,
    hypervisor::Hypervisor,
    images::ImageStore,
    network::{
        SegmentNetwork,
        filter::{FilterMode, PortFilter},
    },
    segment::spec::ImageName,
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
                .map_err(|e| crate::agent::error_chain(&e)),
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
                        crate::agent::error_chain(&e)
                    )
                }),
        },
    });
    checks
}

fn writable(dir: &Path) -> Result<String, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    tempfile::tempfile_in(dir)
        .map(|_| format!("{} writable", dir.display()))
        .map_err(|e| format!("{} not writable: {e}", dir.display()))
}
