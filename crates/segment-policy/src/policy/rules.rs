//! Verdicts and the stable codes of the policy's rules.

use std::fmt;

/// The verdict on one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// dockerd may serve the request.
    Allow,
    /// dockerd must refuse the request.
    Deny {
        /// Stable code, e.g. `SEGMENT-1001`.
        code: &'static str,
        /// What was refused, for the person at the docker CLI.
        message: String,
    },
}

impl Decision {
    /// True for [`Decision::Allow`].
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow)
    }

    /// The stable code of a refusal.
    pub fn code(&self) -> Option<&'static str> {
        match self {
            Decision::Allow => None,
            Decision::Deny { code, .. } => Some(code),
        }
    }
}

impl fmt::Display for Decision {
    /// `allowed`, or `CODE: message` as the docker CLI shows it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Allow => f.write_str("allowed"),
            Decision::Deny { code, message } => write!(f, "{code}: {message}"),
        }
    }
}

/// One rule of the table in the policy's documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// `SEGMENT-1001`
    Privileged,
    /// `SEGMENT-1002`
    CapAdd,
    /// `SEGMENT-1003`
    CapDrop,
    /// `SEGMENT-1004`
    Confinement,
    /// `SEGMENT-1005`
    Devices,
    /// `SEGMENT-1006`
    HostPid,
    /// `SEGMENT-1007`
    HostIpc,
    /// `SEGMENT-1008`
    HostUserns,
    /// `SEGMENT-1009`
    HostUts,
    /// `SEGMENT-1010`
    HostCgroupns,
    /// `SEGMENT-1011`
    HostMount,
    /// `SEGMENT-1012`
    Plugins,
    /// `SEGMENT-1013`
    InsecureBuild,
    /// `SEGMENT-1014`
    CgroupParent,
    /// `SEGMENT-1015`
    BuildOption,
    /// `SEGMENT-1016`
    Runtime,
    /// `SEGMENT-1017`
    Sysctl,
    /// `SEGMENT-1018`
    Priority,
    /// `SEGMENT-1019`
    Propagation,
    /// `SEGMENT-1020`
    VolumeDriver,
    /// `SEGMENT-1021`
    LogDriver,
    /// `SEGMENT-1022`
    PlatformOption,
    /// `SEGMENT-1023`
    Network,
    /// `SEGMENT-1024`
    Swarm,
    /// `SEGMENT-1025`
    ClosedEndpoint,
    /// `SEGMENT-1026`
    LogSize,
    /// `SEGMENT-1027`
    SwarmLoadBalancing,
    /// `SEGMENT-1100`
    BodyMissing,
    /// `SEGMENT-1101`
    BodyMalformed,
    /// `SEGMENT-1102`
    ProtocolError,
    /// `SEGMENT-1103`
    UnknownRoute,
    /// `SEGMENT-1104`
    ExistingUnchecked,
}

impl Rule {
    /// The rule's stable code.
    pub fn code(self) -> &'static str {
        match self {
            Rule::Privileged => "SEGMENT-1001",
            Rule::CapAdd => "SEGMENT-1002",
            Rule::CapDrop => "SEGMENT-1003",
            Rule::Confinement => "SEGMENT-1004",
            Rule::Devices => "SEGMENT-1005",
            Rule::HostPid => "SEGMENT-1006",
            Rule::HostIpc => "SEGMENT-1007",
            Rule::HostUserns => "SEGMENT-1008",
            Rule::HostUts => "SEGMENT-1009",
            Rule::HostCgroupns => "SEGMENT-1010",
            Rule::HostMount => "SEGMENT-1011",
            Rule::Plugins => "SEGMENT-1012",
            Rule::InsecureBuild => "SEGMENT-1013",
            Rule::CgroupParent => "SEGMENT-1014",
            Rule::BuildOption => "SEGMENT-1015",
            Rule::Runtime => "SEGMENT-1016",
            Rule::Sysctl => "SEGMENT-1017",
            Rule::Priority => "SEGMENT-1018",
            Rule::Propagation => "SEGMENT-1019",
            Rule::VolumeDriver => "SEGMENT-1020",
            Rule::LogDriver => "SEGMENT-1021",
            Rule::PlatformOption => "SEGMENT-1022",
            Rule::Network => "SEGMENT-1023",
            Rule::Swarm => "SEGMENT-1024",
            Rule::ClosedEndpoint => "SEGMENT-1025",
            Rule::LogSize => "SEGMENT-1026",
            Rule::SwarmLoadBalancing => "SEGMENT-1027",
            Rule::BodyMissing => "SEGMENT-1100",
            Rule::BodyMalformed => "SEGMENT-1101",
            Rule::ProtocolError => "SEGMENT-1102",
            Rule::UnknownRoute => "SEGMENT-1103",
            Rule::ExistingUnchecked => "SEGMENT-1104",
        }
    }

    /// A refusal under this rule.
    pub fn deny(self, message: impl Into<String>) -> Decision {
        Decision::Deny {
            code: self.code(),
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique() {
        let all = [
            Rule::Privileged,
            Rule::CapAdd,
            Rule::CapDrop,
            Rule::Confinement,
            Rule::Devices,
            Rule::HostPid,
            Rule::HostIpc,
            Rule::HostUserns,
            Rule::HostUts,
            Rule::HostCgroupns,
            Rule::HostMount,
            Rule::Plugins,
            Rule::InsecureBuild,
            Rule::CgroupParent,
            Rule::BuildOption,
            Rule::Runtime,
            Rule::Sysctl,
            Rule::Priority,
            Rule::Propagation,
            Rule::VolumeDriver,
            Rule::LogDriver,
            Rule::PlatformOption,
            Rule::Network,
            Rule::Swarm,
            Rule::ClosedEndpoint,
            Rule::LogSize,
            Rule::SwarmLoadBalancing,
            Rule::BodyMissing,
            Rule::BodyMalformed,
            Rule::ProtocolError,
            Rule::UnknownRoute,
            Rule::ExistingUnchecked,
        ];
        let codes: std::collections::BTreeSet<_> = all.iter().map(|r| r.code()).collect();
        assert_eq!(codes.len(), all.len());
    }
}
