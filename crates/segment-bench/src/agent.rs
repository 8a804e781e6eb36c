//! The agent side of the benchmark: CreateSegment through its API.

use super::*;

#[derive(Clone)]
pub(crate) struct Agent {
    pub(crate) client: SegmentAgentClient<Channel>,
    pub(crate) image: String,
    pub(crate) memory_mib: u32,
    pub(crate) tls: Option<ClusterTls>,
    path: PathBuf,
}

impl Agent {
    pub(crate) async fn connect(path: PathBuf, image: String, memory_mib: u32) -> Result<Self> {
        let socket = path.clone();
        let channel = Endpoint::try_from("http://localhost")?
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    tokio::net::UnixStream::connect(path)
                        .await
                        .map(TokioIo::new)
                }
            }))
            .await
            .context("connecting to the agent (run scripts/dev-up first)")?;
        Ok(Self {
            client: SegmentAgentClient::new(channel),
            image,
            memory_mib,
            tls: None,
            path: socket,
        })
    }

    /// The same agent over a connection of its own (a client that reads
    /// while another creates, as a scheduler's watcher and its workers do).
    pub(crate) async fn second_connection(&self) -> Result<Self> {
        let mut other =
            Self::connect(self.path.clone(), self.image.clone(), self.memory_mib).await?;
        other.tls = self.tls.clone();
        Ok(other)
    }

    /// CreateSegment; fails unless the segment is RUNNING.
    pub(crate) async fn create(&mut self, id: &str) -> Result<()> {
        let request = CreateSegmentRequest {
            segment_id: id.into(),
            cluster_id: CLUSTER.into(),
            flavor: Some(Flavor {
                memory_mib: self.memory_mib,
                vcpus: VCPUS,
                ..Default::default()
            }),
            image: self.image.clone(),
            tls: self.tls.clone(),
            ..Default::default()
        };
        let segment = self
            .client
            .create_segment(request)
            .await
            .with_context(|| format!("CreateSegment {id}"))?;
        let segment = segment.into_inner();
        ensure!(
            segment.state() == SegmentState::Running,
            "CreateSegment {id}: {:?} {}",
            segment.state(),
            segment.state_reason
        );
        Ok(())
    }

    /// CreateSegment until it returns a RUNNING segment, then DeleteSegment
    /// (untimed); returns the create's latency.
    pub(crate) async fn measure(&mut self, id: &str) -> Result<Duration> {
        let request = CreateSegmentRequest {
            segment_id: id.into(),
            cluster_id: CLUSTER.into(),
            flavor: Some(Flavor {
                memory_mib: self.memory_mib,
                vcpus: VCPUS,
                ..Default::default()
            }),
            image: self.image.clone(),
            tls: self.tls.clone(),
            ..Default::default()
        };
        let t = Instant::now();
        let created = self.client.create_segment(request).await;
        let took = t.elapsed();
        let deleted = self.delete(id).await;
        let segment = created.with_context(|| format!("CreateSegment {id}"))?;
        deleted?;
        let segment = segment.into_inner();
        ensure!(
            segment.state() == SegmentState::Running,
            "CreateSegment {id} returned {:?}: {}",
            segment.state(),
            segment.state_reason
        );
        Ok(took)
    }

    pub(crate) async fn delete(&mut self, id: &str) -> Result<()> {
        let request = DeleteSegmentRequest {
            segment_id: id.into(),
        };
        match self.client.delete_segment(request).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
            Err(s) => Err(anyhow!("DeleteSegment {id}: {s}")),
        }
    }

    /// Deletes this benchmark's segments; returns their ids.
    pub(crate) async fn sweep(&mut self) -> Result<Vec<String>> {
        let request = ListSegmentsRequest {
            cluster_id: CLUSTER.into(),
        };
        let listed = self.client.list_segments(request).await?.into_inner();
        let ids: Vec<String> = listed
            .segments
            .into_iter()
            .map(|s| s.segment_id)
            .filter(|id| id.starts_with(AGENT_PREFIX))
            .collect();
        for id in &ids {
            self.delete(id).await?;
        }
        Ok(ids)
    }
}
