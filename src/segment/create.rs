//! CreateSegment: admit, make the filesystem, define and start the domain.
//! A failure undoes every step; a crash is finished or undone by
//! [`super::recover`].

use super::{
    spec::{SegmentRecord, SegmentRequest},
    Error, Segment, SegmentManager,
};
use crate::{
    images::Image,
    storage::SegmentDirs,
    xml::{DomainSpec, FilesystemMount, NetworkInterface},
};
use std::time::SystemTime;
use tracing::{info, instrument, warn};

impl SegmentManager {
    /// Creates a segment and returns it running. Idempotent on the id: the
    /// same request again returns the existing segment.
    #[instrument(skip_all, fields(segment_id = %request.id))]
    pub async fn create(&self, request: SegmentRequest) -> Result<Segment, Error> {
        let _guard = self.locks.lock(&request.id).await;
        if let Some(existing) = self.registry.get(&request.id) {
            return self.existing(existing.record, &request).await;
        }
        self.settings.confinement.require()?;
        let image = self.images.resolve(&request.image)?;
        let record = self.registry.admit(request, SystemTime::now())?;
        match self.provision(&record, &image).await {
            Ok(()) => {
                self.registry.update(&record.request.id, |e| e.op = None);
                info!(address = %record.address, image = %image.name, "segment created");
                self.get(&record.request.id).await
            }
            Err(e) => {
                warn!(error = %e, "create failed; undoing it");
                self.undo_create(&record).await;
                Err(e)
            }
        }
    }

    /// A create of an id that exists: a retry if the spec is the same.
    async fn existing(
        &self,
        record: SegmentRecord,
        request: &SegmentRequest,
    ) -> Result<Segment, Error> {
        let have = &record.request;
        let difference = [
            ("cluster_id", have.cluster != request.cluster),
            ("flavor", have.flavor != request.flavor),
            ("image", have.image != request.image),
            ("labels", have.labels != request.labels),
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

    async fn provision(&self, record: &SegmentRecord, image: &Image) -> Result<(), Error> {
        let (id, img) = (record.request.id.clone(), image.clone());
        let dirs = self.storage_blocking(move |s| s.prepare(&id, &img)).await?;
        let xml = self.domain_spec(record, image, &dirs).to_xml();
        let name = record.request.id.domain_name();
        self.blocking(move |hv| {
            hv.define(&xml)?;
            hv.start(&name)
        })
        .await
    }

    /// The domain of a segment.
    pub(crate) fn domain_spec(
        &self,
        record: &SegmentRecord,
        image: &Image,
        dirs: &SegmentDirs,
    ) -> DomainSpec {
        let s = &self.settings;
        DomainSpec {
            name: record.request.id.domain_name(),
            uuid: uuid::Uuid::new_v4().to_string(),
            memory_kib: u64::from(record.request.flavor.memory_mib) * 1024,
            vcpus: record.request.flavor.vcpus,
            cpu_period_us: s.cpu_period_us,
            init: image.init.clone(),
            filesystems: vec![FilesystemMount {
                source: dirs.rootfs.clone(),
                target: "/".into(),
                readonly: false,
            }],
            interface: NetworkInterface {
                bridge: s.network.bridge.clone(),
                address: record.address,
                prefix: s.network.prefix,
                gateway: s.network.gateway,
            },
            apparmor_profile: s.confinement.profile(),
            record: record.clone(),
        }
    }

    /// Removes whatever a failed create made. If libvirt cannot be cleaned
    /// up, the segment stays registered as FAILED so its address is never
    /// handed out twice; DeleteSegment (or the next agent start) finishes it.
    async fn undo_create(&self, record: &SegmentRecord) {
        let id = record.request.id.clone();
        let name = id.domain_name();
        let undone = self
            .blocking(move |hv| {
                hv.destroy(&name).or_else(ignore_missing)?;
                hv.undefine(&name)
            })
            .await;
        let removed = match &undone {
            Ok(()) => {
                let id = id.clone();
                self.storage_blocking(move |s| s.remove(&id)).await
            }
            Err(_) => Ok(()),
        };
        match undone.and(removed) {
            Ok(()) => {
                self.registry.remove(&id);
            }
            Err(e) => {
                warn!(error = %e, "could not undo the failed create; keeping the segment as FAILED");
                self.registry.update(&id, |entry| {
                    entry.op = None;
                    entry.failure = Some(format!("create failed and was not fully undone: {e}"));
                });
            }
        }
    }
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
