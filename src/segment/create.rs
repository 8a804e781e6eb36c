//! CreateSegment: admit, make the filesystems, certify Docker, define and
//! start the domain, wait for Docker. A failure before the domain runs
//! undoes every step; a crash is finished or undone by [`super::recover`].

use super::{CreateStep, Error, Segment, SegmentManager};
use crate::model::{SegmentId, SegmentRecord, SegmentRequest};
use crate::{
    certs::{self, ClusterCa},
    docker::{
        self,
        probe::{ProbeError, ProbeTls},
    },
    images::Image,
    storage::SegmentDirs,
    xml::{DomainSpec, NetworkInterface},
};
use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};
use tracing::{info, instrument, warn};

impl SegmentManager {
    /// Creates a segment and returns it running. Idempotent on the id: the
    /// same request again returns the existing segment. `ca` is the cluster
    /// CA, required for images that run Docker; its key stays in memory.
    #[instrument(skip_all, fields(segment_id = %request.id, cluster_id = %request.cluster))]
    pub async fn create(
        &self,
        mut request: SegmentRequest,
        ca: Option<ClusterCa>,
    ) -> Result<Segment, Error> {
        let started = Instant::now();
        let _guard = self.locks.lock(&request.id).await;
        if let Some(existing) = self.registry.get(&request.id) {
            return self.existing(existing.record, &request).await;
        }
        self.settings.confinement.require()?;
        self.settings.disk.require()?;
        self.settings
            .filtering
            .require()
            .map_err(Error::FailedPrecondition)?;
        self.refuse_foreign_domain(&request.id).await?;
        let image = self.resolve_image(&request.image).await?;
        let ca = self.docker_precondition(&image, ca).await?.map(Arc::new);
        if !image.docker {
            request.ca_cert_pem = None;
            if request.swarm.is_some() {
                return Err(Error::InvalidArgument(crate::model::InvalidArgument::new(
                    "swarm",
                    format!(
                        "image {} runs no Docker: it cannot be a swarm node",
                        image.name
                    ),
                )));
            }
        }
        let record = self.registry.admit(request, SystemTime::now())?;
        self.observer
            .create_step(CreateStep::Admission, started.elapsed());
        self.announce(&record.request.id).await;
        let turn = self.operation_turn().await;
        let record = match self.provision(record.clone(), &image, ca.as_ref()).await {
            Ok(record) => record,
            Err(e) => {
                warn!(error = %e, "create failed; undoing it");
                self.undo_create(&record, &e).await;
                self.announce(&record.request.id).await;
                return Err(e);
            }
        };
        drop(turn);
        info!(address = %record.address, image = %image.name, "segment running");
        // Still PROVISIONING while Docker comes up: a reader never sees it
        // RUNNING and then FAILED.
        let ready = match ca.is_some() {
            true => self.await_docker(&record).await,
            false => None,
        };
        if let Some(took) = ready {
            self.observer.create_step(CreateStep::DockerReady, took);
        }
        if let Some(spec) = record.request.swarm.clone() {
            self.bootstrap_swarm(record.clone(), &spec, ready.is_some())
                .await?;
        }
        self.registry.update(&record.request.id, |e| e.op = None);
        self.announce(&record.request.id).await;
        self.get(&record.request.id).await
    }

    /// The swarm part of a create, once Docker answers: the node is
    /// persisted in the record; a failure undoes the whole create (the
    /// node leaves what it may have joined first).
    async fn bootstrap_swarm(
        &self,
        mut record: SegmentRecord,
        spec: &crate::model::swarm::SwarmSpec,
        docker_ready: bool,
    ) -> Result<(), Error> {
        let joined = match docker_ready {
            false => Err(Error::FailedPrecondition(
                "Docker did not answer in time, so the segment could not enter its swarm".into(),
            )),
            true => self.join_swarm(&record, spec).await,
        };
        let persisted = match joined {
            Ok(node) => {
                record.swarm = Some(node);
                self.persist(record.clone()).await
            }
            Err(e) => Err(e),
        };
        let Err(e) = persisted else {
            return Ok(());
        };
        warn!(error = %e, "the swarm part failed; undoing the create");
        if docker_ready {
            self.leave_swarm(&record).await;
        }
        self.undo_create(&record, &e).await;
        self.announce(&record.request.id).await;
        Err(e)
    }

    /// A `seg-<id>` domain that the registry does not know (one the agent
    /// left alone) must never be redefined, nor undone by a failed create.
    async fn refuse_foreign_domain(&self, id: &SegmentId) -> Result<(), Error> {
        let name = id.domain_name();
        match self.blocking(move |hv| hv.is_running(&name)).await {
            Err(Error::Hypervisor(crate::hypervisor::HvError::NoDomain(_))) => Ok(()),
            Ok(_) => Err(Error::FailedPrecondition(format!(
                "libvirt already has a domain {} that this agent does not manage (see the agent's \
                 log at start); it is left alone: remove it by hand or use another segment_id",
                id.domain_name()
            ))),
            Err(e) => Err(e),
        }
    }

    /// Docker images need the cluster CA and the policy plugin on the host.
    async fn docker_precondition(
        &self,
        image: &Image,
        ca: Option<ClusterCa>,
    ) -> Result<Option<ClusterCa>, Error> {
        if !image.docker {
            return Ok(None);
        }
        let plugin = self.settings.docker.tools_dir.join(docker::AUTHZ_BINARY);
        let p = plugin.clone();
        let installed = self.work.run(move || p.is_file()).await.unwrap_or(false);
        if !installed {
            return Err(Error::FailedPrecondition(format!(
                "the Docker policy plugin {} is not installed on this host; Docker segments are not \
                 created without it",
                plugin.display()
            )));
        }
        ca.map(Some).ok_or_else(|| {
            Error::InvalidArgument(crate::model::InvalidArgument::new(
                "tls",
                format!(
                    "image {} runs Docker: the cluster CA (ca_cert_pem, ca_key_pem) is required",
                    image.name
                ),
            ))
        })
    }

    /// A create of an id that exists: a retry if the spec is the same.
    async fn existing(
        &self,
        record: SegmentRecord,
        request: &SegmentRequest,
    ) -> Result<Segment, Error> {
        let have = &record.request;
        // A segment without Docker ignores the CA it may have been sent.
        let ca_differs = have.ca_cert_pem.is_some() && have.ca_cert_pem != request.ca_cert_pem;
        let difference = [
            ("cluster_id", have.cluster != request.cluster),
            ("flavor", have.flavor != request.flavor),
            ("image", have.image != request.image),
            ("labels", have.labels != request.labels),
            ("tls.ca_cert_pem", ca_differs),
            ("swarm", have.swarm != request.swarm),
        ]
        .iter()
        .filter(|(_, differs)| *differs)
        .map(|(f, _)| *f)
        .collect::<Vec<_>>();
        if difference.is_empty() {
            return self.get(&request.id).await;
        }
        Err(Error::AlreadyExists {
            id: request.id.clone(),
            difference: format!("{} differ", difference.join(", ")),
        })
    }

    /// Filesystems, Docker's configuration, then define and start.
    async fn provision(
        &self,
        mut record: SegmentRecord,
        image: &Image,
        ca: Option<&Arc<ClusterCa>>,
    ) -> Result<SegmentRecord, Error> {
        let (id, img, ids) = (record.request.id.clone(), image.clone(), record.ids);
        let disk = record.request.flavor.disk_bytes();
        let t = Instant::now();
        let dirs = self
            .storage_blocking(move |s| s.prepare(&id, &img, ids, disk))
            .await?;
        self.observer.create_step(CreateStep::Rootfs, t.elapsed());
        if let Some(ca) = ca {
            let t = Instant::now();
            record.server_cert_not_after = Some(self.certify(&record, ca, &dirs).await?);
            self.observer
                .create_step(CreateStep::Certificates, t.elapsed());
            let r = record.clone();
            self.registry.update(&record.request.id, |e| e.record = r);
        }
        let xml = self.domain_spec(&record, image, &dirs).to_xml();
        let t = Instant::now();
        self.blocking(move |hv| hv.define(&xml)).await?;
        self.observer.create_step(CreateStep::Define, t.elapsed());
        let t = Instant::now();
        self.boot(&record, image.docker).await?;
        self.observer.create_step(CreateStep::Start, t.elapsed());
        Ok(record)
    }

    /// Issues the segment's Docker server certificate and writes Docker's
    /// configuration into its `/etc/docker`, and the agent's own client
    /// certificate (for readiness and health checks) into a host-only
    /// directory; returns the server certificate's expiry.
    pub(crate) async fn certify(
        &self,
        record: &SegmentRecord,
        ca: &Arc<ClusterCa>,
        dirs: &SegmentDirs,
    ) -> Result<SystemTime, Error> {
        let (validity, now) = (self.settings.docker.cert_validity, SystemTime::now());
        let hostname = dns_name(&record.request.id);
        let (address, key_owner) = (record.address, Some(record.ids.host_first));
        let (dirs, ca) = (dirs.clone(), ca.clone());
        // Key generation and signing off the async runtime, like the writes.
        self.work
            .run(move || {
                let server = certs::issue_server_cert(&ca, address, &hostname, validity, now)
                    .map_err(|e| Error::Certificate("the Docker server certificate", e))?;
                // As long-lived as the server certificate: both are renewed
                // together by RebuildSegment, the only time the agent holds the
                // CA key.
                let client = certs::issue_client_cert_for(&ca, "segment-agent", validity, now)
                    .map_err(|e| Error::Certificate("the agent's client certificate", e))?;
                let ca_pem = ca.canonical_cert_pem();
                docker::write_agent_tls(
                    &dirs.agent_tls,
                    &ca_pem,
                    &client.cert_pem,
                    &client.key_pem,
                )
                .and_then(|()| {
                    let token = segment_policy::agent_token::generate();
                    docker::write_agent_token(&dirs, &token, key_owner)
                })
                .and_then(|()| {
                    docker::write_config(&dirs.docker_config, &ca_pem, &server, key_owner)
                })
                .map_err(|e| Error::Internal(format!("writing Docker's configuration: {e}")))?;
                Ok(server.not_after)
            })
            .await
            .map_err(|e| Error::Internal(format!("certificate task: {e}")))?
    }

    /// The domain of a segment.
    pub(crate) fn domain_spec(
        &self,
        record: &SegmentRecord,
        image: &Image,
        dirs: &SegmentDirs,
    ) -> DomainSpec {
        let s = &self.settings;
        let filesystems = docker::segment_mounts(dirs, &s.docker.tools_dir, image.docker);
        let char_devices = match image.docker {
            true => docker::CHAR_DEVICES.iter().map(|d| d.to_string()).collect(),
            false => Vec::new(),
        };
        DomainSpec {
            name: record.request.id.domain_name(),
            uuid: uuid::Uuid::new_v4().to_string(),
            memory_kib: u64::from(record.request.flavor.memory_mib) * 1024,
            vcpus: record.request.flavor.vcpus,
            cpu_period_us: s.cpu_period_us,
            io_weight: s.isolation.io_weight,
            init: image.init.clone(),
            idmap: record.ids,
            filesystems,
            interface: NetworkInterface {
                bridge: s.network.bridge.clone(),
                address: record.address,
                prefix: s.network.prefix,
                gateway: s.network.gateway,
                port: s.filtering.port(record.address).map(|p| p.name),
            },
            char_devices,
            apparmor_profile: s.confinement.profile(),
            record: record.clone(),
        }
    }

    /// Waits for Docker to answer `/_ping` over TLS; a segment whose Docker
    /// does not answer in time is FAILED with the reason (it is not removed:
    /// only DeleteSegment removes a segment). Returns how long Docker took.
    pub(crate) async fn await_docker(&self, record: &SegmentRecord) -> Option<Duration> {
        let id = &record.request.id;
        let endpoint =
            std::net::SocketAddr::from((record.address, segment_policy::front::DOCKER_TLS_PORT));
        let timeout = self.settings.docker.ready_timeout;
        let outcome = match self.agent_tls(id).await {
            Ok(tls) => docker::probe::wait_ready(self.probe.as_ref(), endpoint, &tls, timeout)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match outcome {
            Ok(took) => {
                info!(?took, "Docker answers /_ping over TLS");
                Some(took)
            }
            Err(last) => {
                let reason = format!(
                    "Docker did not answer /_ping over TLS on {endpoint} within {timeout:?}: {last}"
                );
                warn!(%reason, "segment FAILED");
                self.set_failure(id, Some(reason)).await;
                None
            }
        }
    }

    /// The agent's TLS client for the segment's Docker.
    async fn agent_tls(&self, id: &SegmentId) -> Result<ProbeTls, ProbeError> {
        let dir = self.storage.dirs(id).agent_tls;
        self.work
            .run(move || docker::read_agent_tls(&dir))
            .await
            .map_err(|e| ProbeError(format!("reading the agent's TLS files: {e}")))?
    }

    /// One health check of a running segment's Docker: `/_ping` over TLS.
    pub async fn docker_health(&self, segment: &Segment) -> Result<(), String> {
        let r = &segment.record;
        let tls = self
            .agent_tls(&r.request.id)
            .await
            .map_err(|e| e.to_string())?;
        let endpoint =
            std::net::SocketAddr::from((r.address, segment_policy::front::DOCKER_TLS_PORT));
        let ping = self.probe.ping(endpoint, &tls);
        match tokio::time::timeout(std::time::Duration::from_secs(2), ping).await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(_) => Err(format!("{endpoint}: no answer to /_ping within 2 s")),
        }
    }

    /// Removes whatever a failed create made. The domain is first marked
    /// `deleted` (the scheduler is told the create failed: a crash during
    /// the undo must not bring it back); what cannot be removed stays
    /// registered as DELETING so its address is never handed out twice, and
    /// DeleteSegment (or the next agent start) finishes it.
    async fn undo_create(&self, record: &SegmentRecord, cause: &Error) {
        let id = record.request.id.clone();
        let mut marked = record.clone();
        marked.failure = Some(crate::model::bounded_failure(&format!(
            "create failed: {cause}"
        )));
        match self.remove_everything(marked.clone()).await {
            Ok(()) => {
                self.registry.remove(&id);
            }
            Err(e) => {
                warn!(error = %e, "could not undo the failed create; the segment is DELETING");
                self.registry.update(&id, |entry| {
                    entry.op = None;
                    entry.record.desired = crate::model::Desired::Deleted;
                    entry.record.failure = Some(crate::model::bounded_failure(&format!(
                        "create failed ({cause}) and was not fully undone: {e}"
                    )));
                });
            }
        }
    }
}

/// The segment's DNS name in its certificate: `seg-<id>`, cut to a valid
/// DNS label (63 characters, no trailing '-') for the longest ids.
pub(crate) fn dns_name(id: &SegmentId) -> String {
    let mut name = id.domain_name();
    name.truncate(63);
    name.trim_end_matches('-').to_owned()
}

/// Treats "no such domain" as done.
pub(crate) fn ignore_missing(
    e: crate::hypervisor::HvError,
) -> Result<(), crate::hypervisor::HvError> {
    match e {
        crate::hypervisor::HvError::NoDomain(_) => Ok(()),
        other => Err(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names_are_valid_labels_for_every_valid_id() {
        let long = "a".repeat(60);
        let dashed = format!("{}-b", "a".repeat(58));
        let cases = [
            ("web-1", "seg-web-1".to_owned()),
            ("web-", "seg-web".to_owned()),
            (long.as_str(), format!("seg-{}", "a".repeat(59))),
            (dashed.as_str(), format!("seg-{}", "a".repeat(58))),
        ];
        for (id, want) in cases {
            let name = dns_name(&SegmentId::parse(id).unwrap());
            assert_eq!(name, want);
            assert!(name.len() <= 63 && !name.ends_with('-'));
        }
    }
}
