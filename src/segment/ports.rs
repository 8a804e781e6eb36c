//! The bridge filter's part of the lifecycle. A segment's port is allowed
//! before libvirt creates it (create, start, agent start), so no frame of
//! it ever passes unfiltered, and revoked once its domain is gone (delete,
//! an undone create). The whole table is put back every few seconds, which
//! repairs a ruleset flushed behind the agent's back. With
//! `network.filter = "off"` none of this runs.

use super::{Error, SegmentManager, peers::ClusterPeers};
use crate::model::SegmentRecord;
use crate::network::filter::{FilterError, Filtering, PortFilter, SegmentPort};
use std::net::Ipv4Addr;
use tracing::warn;

/// The port of a segment, with its flavor's bandwidth and its swarm peers
/// among `all` (the registry's records) and its cluster's `remote` peers.
fn port_of(record: &SegmentRecord, all: &[SegmentRecord], remote: &ClusterPeers) -> SegmentPort {
    let port = SegmentPort::with_rate(record.address, record.request.flavor.network_kib_per_s());
    port.with_swarm_peers(swarm_peers(record, all, remote))
}

/// The segments of its cluster on this host, the swarm managers its record
/// names, and its cluster's peers on other hosts (SetClusterPeers).
fn swarm_peers(
    record: &SegmentRecord,
    all: &[SegmentRecord],
    remote: &ClusterPeers,
) -> Vec<Ipv4Addr> {
    let local = all
        .iter()
        .filter(|r| r.request.cluster == record.request.cluster)
        .map(|r| r.address);
    let asked = record.request.swarm.iter().flat_map(|s| s.managers.iter());
    let known = record.swarm.iter().flat_map(|n| n.managers.iter());
    local
        .chain(asked.chain(known).map(|m| *m.ip()))
        .chain(remote.of(&record.request.cluster))
        .collect()
}

impl SegmentManager {
    /// Allows the port of the segment, capped at its bandwidth; the
    /// segment must not start when this fails.
    pub(crate) async fn allow_port(&self, record: &SegmentRecord) -> Result<(), Error> {
        self.settings
            .filtering
            .require()
            .map_err(Error::FailedPrecondition)?;
        if self.settings.filtering.port(record.address).is_none() {
            return Ok(());
        }
        let port = port_of(record, &self.records(), &self.cluster_peers);
        let name = port.name.clone();
        // The table is installed at agent start; if it was flushed since,
        // this puts it back rather than fail the segment.
        self.filter_blocking(move |f| f.allow(&port).or_else(|_| f.install(&[port])))
            .await
            .map_err(|e| {
                Error::FailedPrecondition(format!(
                    "the bridge filter could not allow port {name}, so the segment is not \
                     started: {}",
                    crate::errors::error_chain(&e)
                ))
            })
    }

    /// Revokes the port of a segment whose domain is gone. A failure only
    /// leaves rules that allow exactly what a segment on that address may
    /// do (port, MAC and address all follow from it), so it is logged.
    pub(crate) async fn revoke_port(&self, record: &SegmentRecord) {
        if self.settings.filtering != Filtering::Enforced {
            return;
        }
        let port = port_of(record, &self.records(), &self.cluster_peers);
        let name = port.name.clone();
        if let Err(e) = self.filter_blocking(move |f| f.revoke(&port)).await {
            let error = crate::errors::error_chain(&e);
            warn!(port = %name, %error, "could not revoke a deleted segment's port");
        }
    }

    /// Puts the table back with the ports of every registered segment, in
    /// one transaction. Does nothing unless the filter is enforced.
    pub async fn refresh_filter(&self) -> Result<(), FilterError> {
        if self.settings.filtering != Filtering::Enforced {
            return Ok(());
        }
        let all = self.records();
        let ports: Vec<SegmentPort> = all
            .iter()
            .map(|r| port_of(r, &all, &self.cluster_peers))
            .collect();
        self.filter_blocking(move |f| f.install(&ports)).await
    }

    /// Runs `change` (which changes a cluster's remote peers) and gives the
    /// allowed ports of `cluster`'s segments the pairs it makes: those of
    /// peers gone are removed, those of new ones added, port by port in one
    /// transaction each. Nothing to do unless the filter is enforced.
    pub(crate) async fn change_cluster_peers<T>(
        &self,
        cluster: &crate::model::ClusterId,
        change: impl FnOnce() -> T,
    ) -> Result<T, FilterError> {
        let ports = |all: &[SegmentRecord]| -> Vec<SegmentPort> {
            all.iter()
                .filter(|r| &r.request.cluster == cluster)
                .map(|r| port_of(r, all, &self.cluster_peers))
                .collect()
        };
        let all = self.records();
        let before = ports(&all);
        let changed = change();
        let after = ports(&all);
        if self.settings.filtering != Filtering::Enforced {
            return Ok(changed);
        }
        self.filter_blocking(move |f| {
            before
                .iter()
                .zip(&after)
                .try_for_each(|(b, a)| f.change_swarm_peers(b, a))
        })
        .await?;
        Ok(changed)
    }

    fn records(&self) -> Vec<SegmentRecord> {
        self.registry.all().into_iter().map(|e| e.record).collect()
    }

    async fn filter_blocking(
        &self,
        f: impl FnOnce(&dyn PortFilter) -> Result<(), FilterError> + Send + 'static,
    ) -> Result<(), FilterError> {
        let filter = self.filter.clone();
        self.work
            .run(move || f(filter.as_ref()))
            .await
            .map_err(|e| FilterError::Other(format!("filter task: {e}")))?
    }
}
