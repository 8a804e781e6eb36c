//! Create-latency benchmark: CreateSegment through the agent's API against
//! the same domains made raw, in the same run, interleaved so both see the
//! same machine noise. Prints medians and their ratio.
//!
//! Default mode: a segment without Docker (image `dev`) against `virsh
//! define` + `virsh start` of the same domain XML (and, tighter, one virsh
//! process running both).
//!
//! `--docker`: a Docker segment (image `docker`, cluster CA from
//! [`certs::generate_test_ca`]) until the RPC returns, which the agent does
//! only once Docker answers `/_ping` over mutual TLS; against the raw way
//! to the same state: server and client certificates with the `openssl`
//! CLI, the agent's `daemon.json` written into the domain's `/etc/docker`,
//! `virsh define` + `virsh start` of the same domain XML, then `GET /_ping`
//! on `https://IP:2376` with the client certificate every 20 ms (a rustls
//! client of this file, not the agent's probe).
//!
//! Each segment is deleted (the baseline's destroyed) before the next is
//! made, so at most one agent segment and one baseline domain exist at a
//! time. Baseline domains use 203.0.113.251 and .252 only: outside the dev
//! agent's pool (.10-.200) and the end-to-end tests' addresses (.201-.250).
//! Leftovers of an interrupted run are removed when the next run starts.
//!
//! Runs in the sandbox network namespace (to reach 203.0.113.x) with a
//! running agent: `scripts/bench [--docker] [--count N]` sees to both.

use anyhow::{Context, Result, anyhow, bail, ensure};
use clap::Parser;
use hyper_util::rt::TokioIo;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use segment_agent::{
    certs, docker,
    images::{Image, ImageStore},
    proto::agent::{
        ClusterTls, CreateSegmentRequest, DeleteSegmentRequest, Flavor, ListSegmentsRequest,
        SegmentState, segment_agent_client::SegmentAgentClient,
    },
    segment::spec::{
        ClusterId, Desired, Flavor as SpecFlavor, ImageName, Labels, SegmentId, SegmentRecord,
        SegmentRequest,
    },
    storage::{OverlayStorage, SegmentDirs, SegmentStorage},
    xml::{DomainSpec, NetworkInterface},
};
use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::{
    TlsConnector,
    rustls::{ClientConfig, RootCertStore, pki_types::ServerName},
};
use tonic::transport::{Channel, Endpoint, Uri};

/// Cluster and id prefixes of what this benchmark makes (and sweeps).
const CLUSTER: &str = "bench";
const AGENT_PREFIX: &str = "bench-";
const BASELINE_PREFIX: &str = "benchv-";
/// The baseline's polling of Docker: as often as the agent's probe, and
/// giving up after the agent's default `ready_timeout_seconds`.
const PING_EVERY: Duration = Duration::from_millis(20);
const PING_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
const PING_DEADLINE: Duration = Duration::from_secs(60);

/// The only addresses baseline domains use.
const BASELINE_ADDRESSES: [Ipv4Addr; 2] = [
    Ipv4Addr::new(203, 0, 113, 251),
    Ipv4Addr::new(203, 0, 113, 252),
];
/// The sandbox network of `scripts/dev-up` (config/dev.toml).
const BRIDGE: &str = "segbr0";
const GATEWAY: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const PREFIX: u8 = 24;
/// The agent's default CFS period.
const CPU_PERIOD_US: u64 = 100_000;
const VCPUS: u32 = 2;

#[derive(Parser)]
struct Args {
    /// The agent's socket.
    #[arg(long, default_value = "/run/segment-agent/agent.sock")]
    socket: PathBuf,
    /// Segments per side.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    count: u32,
    /// Docker segments (image `docker`, readiness = TLS `/_ping`) against
    /// openssl + virsh + polling; without it, plain segments against virsh.
    #[arg(long)]
    docker: bool,
    /// State dir holding the images (the baseline mounts its own overlays
    /// under `bench-baseline` there).
    #[arg(long, default_value = "/var/lib/segment-agent")]
    state_dir: PathBuf,
    /// Image both sides use [default: `dev`, with --docker `docker`].
    #[arg(long)]
    image: Option<String>,
    /// The agent's tools directory, bound read-only into Docker segments.
    #[arg(long, default_value = "/usr/local/lib/segment-agent")]
    tools_dir: PathBuf,
    /// Memory of every segment, MiB.
    #[arg(long, default_value_t = 4096)]
    memory_mib: u32,
    /// Instead of create latency: report size and the agent's CPU cost of
    /// health reports with `count` segments (serves the dev agent's control
    /// plane on `--control-plane`).
    #[arg(long)]
    reports: bool,
    /// Where the dev agent reports to (config/dev.toml).
    #[arg(long, default_value = "127.0.0.1:7444")]
    control_plane: std::net::SocketAddr,
    /// The dev agent's pid file.
    #[arg(long, default_value = "/run/segment-agent/agent.pid")]
    pid_file: PathBuf,
}

mod reports;

/// Set on Ctrl-C: the run stops at the next step and cleans up.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

// ---------------------------------------------------------------- the agent

struct Agent {
    client: SegmentAgentClient<Channel>,
    image: String,
    memory_mib: u32,
    tls: Option<ClusterTls>,
}

impl Agent {
    async fn connect(path: PathBuf, image: String, memory_mib: u32) -> Result<Self> {
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
        })
    }

    /// CreateSegment; fails unless the segment is RUNNING.
    async fn create(&mut self, id: &str) -> Result<()> {
        let request = CreateSegmentRequest {
            segment_id: id.into(),
            cluster_id: CLUSTER.into(),
            flavor: Some(Flavor {
                memory_mib: self.memory_mib,
                vcpus: VCPUS,
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
    async fn measure(&mut self, id: &str) -> Result<Duration> {
        let request = CreateSegmentRequest {
            segment_id: id.into(),
            cluster_id: CLUSTER.into(),
            flavor: Some(Flavor {
                memory_mib: self.memory_mib,
                vcpus: VCPUS,
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

    async fn delete(&mut self, id: &str) -> Result<()> {
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
    async fn sweep(&mut self) -> Result<Vec<String>> {
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

// ------------------------------------------------------------- the baseline

fn virsh(args: &[&str]) -> Result<()> {
    virsh_output(args).map(drop)
}

fn virsh_output(args: &[&str]) -> Result<String> {
    let out = Command::new("virsh")
        .args(["-q", "-c", "lxc:///"])
        .args(args)
        .output()
        .context("running virsh")?;
    ensure!(
        out.status.success(),
        "virsh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn openssl(args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .context("running openssl")?;
    ensure!(
        out.status.success(),
        "openssl {}: {}",
        args.first().unwrap_or(&""),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

fn path(p: &Path) -> Result<&str> {
    p.to_str()
        .ok_or_else(|| anyhow!("{} is not UTF-8", p.display()))
}

/// One baseline domain: its overlay is mounted and its XML written.
struct Domain {
    id: SegmentId,
    name: String,
    address: Ipv4Addr,
    xml: PathBuf,
    dirs: SegmentDirs,
}

/// A CA made with the openssl CLI, like a cluster's.
struct OpensslCa {
    cert: PathBuf,
    key: PathBuf,
}

/// Where the Docker baseline's time goes.
struct DockerPhases {
    /// openssl server and client certificates, ca.pem and daemon.json.
    config: Duration,
    define: Duration,
    start: Duration,
    /// From `virsh start` returning until `/_ping` answers.
    ping: Duration,
}

impl DockerPhases {
    fn total(&self) -> Duration {
        self.config + self.define + self.start + self.ping
    }
}

struct Baseline {
    storage: OverlayStorage,
    image: Image,
    memory_mib: u32,
    tools_dir: PathBuf,
    /// XML files, the openssl CA and the client certificate.
    work: tempfile::TempDir,
}

impl Baseline {
    fn new(args: &Args, image: &str) -> Result<Self> {
        let images = ImageStore::new(args.state_dir.join("images"));
        let image = images
            .resolve(&ImageName::parse(image).map_err(|e| anyhow!("--image: {e}"))?)
            .with_context(|| format!("image {image} (built by scripts/dev-up)"))?;
        ensure!(
            image.docker == args.docker,
            "image {} {} Docker; {}",
            image.name,
            if image.docker { "runs" } else { "does not run" },
            if args.docker {
                "--docker needs an image that does"
            } else {
                "pass --docker to measure it"
            }
        );
        if args.docker {
            let plugin = args.tools_dir.join(docker::AUTHZ_BINARY);
            ensure!(
                plugin.is_file(),
                "{} is missing (scripts/dev-up installs it)",
                plugin.display()
            );
        }
        Ok(Self {
            storage: OverlayStorage::new(args.state_dir.join("bench-baseline")),
            image,
            memory_mib: args.memory_mib,
            tools_dir: args.tools_dir.clone(),
            work: tempfile::Builder::new()
                .prefix("segment-bench.")
                .tempdir()?,
        })
    }

    /// Untimed: mounts the domain's overlay and writes the XML the agent
    /// would write for it (Docker filesystems and devices included).
    fn prepare(&self, id: &str, address: Ipv4Addr, ca_cert_pem: Option<String>) -> Result<Domain> {
        let id = SegmentId::parse(id).map_err(|e| anyhow!("{id}: {e}"))?;
        let dirs = self.storage.prepare(&id, &self.image)?;
        let docker = self.image.docker;
        let record = SegmentRecord {
            request: SegmentRequest {
                id: id.clone(),
                cluster: ClusterId::parse(CLUSTER).map_err(|e| anyhow!("{e}"))?,
                flavor: SpecFlavor {
                    memory_mib: self.memory_mib,
                    vcpus: VCPUS,
                },
                image: self.image.name.clone(),
                labels: Labels::new(),
                ca_cert_pem,
            },
            address,
            created_at: SystemTime::now(),
            desired: Desired::Running,
            server_cert_not_after: docker
                .then(|| SystemTime::now() + Duration::from_secs(365 * 86400)),
        };
        let filesystems = docker::segment_mounts(&dirs, &self.tools_dir, docker);
        let char_devices = match docker {
            true => docker::CHAR_DEVICES.iter().map(|d| d.to_string()).collect(),
            false => Vec::new(),
        };
        let spec = DomainSpec {
            name: id.domain_name(),
            uuid: uuid::Uuid::new_v4().to_string(),
            memory_kib: u64::from(self.memory_mib) * 1024,
            vcpus: VCPUS,
            cpu_period_us: CPU_PERIOD_US,
            init: self.image.init.clone(),
            filesystems,
            interface: NetworkInterface {
                bridge: BRIDGE.into(),
                address,
                prefix: PREFIX,
                gateway: GATEWAY,
            },
            char_devices,
            apparmor_profile: None,
            record,
        };
        let xml = self.work.path().join(format!("{}.xml", spec.name));
        std::fs::write(&xml, spec.to_xml())?;
        Ok(Domain {
            id,
            name: spec.name,
            address,
            xml,
            dirs,
        })
    }

    /// Destroys and undefines the domain, unmounts and removes its files.
    fn remove(&self, d: &Domain) -> Result<()> {
        remove_domain(&d.name)?;
        self.storage.remove(&d.id)?;
        let _ = std::fs::remove_file(&d.xml);
        Ok(())
    }

    /// Times `f` (what is measured of the domain), then removes the domain.
    fn measured(&self, d: &Domain, f: impl FnOnce() -> Result<()>) -> Result<Duration> {
        let t = Instant::now();
        let done = f();
        let took = t.elapsed();
        let removed = self.remove(d);
        done?;
        removed?;
        Ok(took)
    }

    /// Untimed: the cluster's CA (EC P-256, like the agent's test CA).
    fn openssl_ca(&self) -> Result<OpensslCa> {
        let (cert, key) = (
            self.work.path().join("ca.pem"),
            self.work.path().join("ca-key.pem"),
        );
        #[rustfmt::skip]
        openssl(&[
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", path(&key)?, "-out", path(&cert)?, "-subj", "/CN=bench-cluster",
            "-days", "2", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        ])?;
        Ok(OpensslCa { cert, key })
    }

    /// Timed: the Docker segment the raw way, until Docker answers
    /// `/_ping` over mutual TLS. The domain stays (see [`Self::remove`]).
    async fn docker(&self, d: &Domain, ca: &OpensslCa) -> Result<DockerPhases> {
        let etc = &d.dirs.docker_config;
        let (server_cert, server_key) = (etc.join("server-cert.pem"), etc.join("server-key.pem"));
        let work = self.work.path();
        let (client_cert, client_key) = (work.join("client-cert.pem"), work.join("client-key.pem"));
        let san = format!(
            "subjectAltName=IP:{},IP:127.0.0.1,DNS:{}",
            d.address, d.name
        );
        let cn = format!("/CN={}", d.name);
        let (ca_cert, ca_key) = (path(&ca.cert)?, path(&ca.key)?);

        let t = Instant::now();
        #[rustfmt::skip]
        openssl(&[
            "req", "-x509", "-CA", ca_cert, "-CAkey", ca_key,
            "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", path(&server_key)?, "-out", path(&server_cert)?, "-subj", &cn, "-days", "365",
            "-addext", &san, "-addext", "basicConstraints=critical,CA:FALSE",
            "-addext", "keyUsage=critical,digitalSignature,keyEncipherment",
            "-addext", "extendedKeyUsage=serverAuth",
        ])?;
        #[rustfmt::skip]
        openssl(&[
            "req", "-x509", "-CA", ca_cert, "-CAkey", ca_key,
            "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", path(&client_key)?, "-out", path(&client_cert)?, "-subj", "/CN=bench-client",
            "-days", "1", "-addext", "basicConstraints=critical,CA:FALSE",
            "-addext", "keyUsage=critical,digitalSignature",
            "-addext", "extendedKeyUsage=clientAuth",
        ])?;
        std::fs::copy(&ca.cert, etc.join("ca.pem"))?;
        // Last: the segment's supervisor starts dockerd once it exists.
        std::fs::write(etc.join("daemon.json"), docker::daemon_json())?;
        let config = t.elapsed();

        let t = Instant::now();
        virsh(&["define", path(&d.xml)?])?;
        let define = t.elapsed();

        let t = Instant::now();
        virsh(&["start", &d.name])?;
        let start = t.elapsed();

        let t = Instant::now();
        let tls = tls_connector(&ca.cert, &client_cert, &client_key)?;
        let endpoint = SocketAddr::from((d.address, docker::DOCKER_TLS_PORT));
        loop {
            let last = match tokio::time::timeout(PING_ATTEMPT_TIMEOUT, ping(&tls, endpoint)).await
            {
                Ok(Ok(())) => break,
                Ok(Err(e)) => format!("{e:#}"),
                Err(_) => format!("no answer within {PING_ATTEMPT_TIMEOUT:?}"),
            };
            check_interrupted()?;
            ensure!(
                t.elapsed() < PING_DEADLINE,
                "{}: Docker did not answer /_ping on {endpoint} within {PING_DEADLINE:?}: {last}",
                d.name
            );
            tokio::time::sleep(PING_EVERY).await;
        }
        let ping = t.elapsed();
        Ok(DockerPhases {
            config,
            define,
            start,
            ping,
        })
    }

    /// Removes this benchmark's domains and directories; returns the domains.
    fn sweep(&self) -> Result<Vec<String>> {
        let prefix = format!("seg-{BASELINE_PREFIX}");
        let names: Vec<String> = virsh_output(&["list", "--all", "--name"])?
            .lines()
            .map(str::trim)
            .filter(|n| n.starts_with(&prefix))
            .map(String::from)
            .collect();
        for name in &names {
            remove_domain(name)?;
        }
        for id in self.storage.list()? {
            if id.as_str().starts_with(BASELINE_PREFIX) {
                self.storage.remove(&id)?;
            }
        }
        Ok(names)
    }
}

/// Destroys (if it runs) and undefines a domain; fine if there is none.
fn remove_domain(name: &str) -> Result<()> {
    let _ = virsh(&["destroy", name]);
    let _ = virsh(&["undefine", name]);
    let left = virsh_output(&["list", "--all", "--name"])?;
    ensure!(
        !left.lines().any(|n| n.trim() == name),
        "domain {name} is still defined after destroy + undefine"
    );
    Ok(())
}

/// A TLS client with the client certificate, trusting only the CA.
fn tls_connector(ca: &Path, cert: &Path, key: &Path) -> Result<TlsConnector> {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(ca)?)?;
    let cert = CertificateDer::from_pem_file(cert)?;
    let key = PrivateKeyDer::from_pem_file(key)?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![cert], key)?;
    Ok(TlsConnector::from(Arc::new(config)))
}

/// One `GET /_ping` over TLS, the server verified by its IP; Ok on 200.
async fn ping(tls: &TlsConnector, endpoint: SocketAddr) -> Result<()> {
    let tcp = tokio::net::TcpStream::connect(endpoint).await?;
    let name = ServerName::IpAddress(endpoint.ip().into());
    let mut stream = tls.connect(name, tcp).await?;
    let request = format!("GET /_ping HTTP/1.1\r\nHost: {endpoint}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    // Docker may close without close_notify; what was read counts.
    let _ = stream.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response);
    ensure!(
        text.starts_with("HTTP/1.1 200"),
        "answered {:?}",
        text.lines().next().unwrap_or("nothing")
    );
    Ok(())
}

// ------------------------------------------------------------------ figures

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Sorts `v` and returns its median.
fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// A result line: label, median, min and max; returns the median.
fn line(label: &str, v: &mut [Duration]) -> Duration {
    let m = median(v);
    println!(
        "  {label:<50} median {:7.1} ms   min {:7.1} ms   max {:7.1} ms",
        ms(m),
        ms(v[0]),
        ms(v[v.len() - 1])
    );
    m
}

fn ratio(label: &str, a: Duration, b: Duration) {
    println!("  {label:<50} {:.2}x", a.as_secs_f64() / b.as_secs_f64());
}

// --------------------------------------------------------------------- runs

async fn plain(args: &Args, agent: &mut Agent, baseline: &Baseline) -> Result<()> {
    let (mut agent_t, mut virsh_t, mut virsh1_t) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..args.count {
        check_interrupted()?;
        agent_t.push(agent.measure(&format!("{AGENT_PREFIX}{i}")).await?);

        let d = baseline.prepare(
            &format!("{BASELINE_PREFIX}{i}"),
            BASELINE_ADDRESSES[0],
            None,
        )?;
        virsh_t.push(baseline.measured(&d, || {
            virsh(&["define", path(&d.xml)?])?;
            virsh(&["start", &d.name])
        })?);

        // A tighter baseline: one virsh process, one connection, both commands.
        let d = baseline.prepare(
            &format!("{BASELINE_PREFIX}1p-{i}"),
            BASELINE_ADDRESSES[1],
            None,
        )?;
        virsh1_t.push(baseline.measured(&d, || {
            virsh(&[&format!("define {}; start {}", d.xml.display(), d.name)])
        })?);
        eprintln!(
            "[{}/{}] agent {:.1} ms, virsh {:.1} ms, one-process virsh {:.1} ms",
            i + 1,
            args.count,
            ms(agent_t[i as usize]),
            ms(virsh_t[i as usize]),
            ms(virsh1_t[i as usize])
        );
    }
    println!(
        "create latency, {} segments per side, interleaved, {} MiB / {VCPUS} vCPU, image {}",
        args.count, args.memory_mib, agent.image
    );
    println!(
        "  each segment deleted before the next; baseline domains at {} and {}",
        BASELINE_ADDRESSES[0], BASELINE_ADDRESSES[1]
    );
    println!("  untimed: the baseline's overlay mount (the agent's is inside CreateSegment)");
    let a = line("agent CreateSegment (gRPC, until RUNNING)", &mut agent_t);
    let v = line("virsh define + start (baseline)", &mut virsh_t);
    let v1 = line("virsh 'define; start' in one process", &mut virsh1_t);
    ratio("ratio agent / baseline (medians)", a, v);
    ratio("ratio agent / one-process baseline", a, v1);
    Ok(())
}

async fn with_docker(args: &Args, agent: &mut Agent, baseline: &Baseline) -> Result<()> {
    let (ca_cert_pem, ca_key_pem) =
        certs::generate_test_ca("bench-cluster", Duration::from_secs(2 * 86400))?;
    agent.tls = Some(ClusterTls {
        ca_cert_pem,
        ca_key_pem,
    });
    let (mut agent_t, mut total_t, mut ca_t) = (Vec::new(), Vec::new(), Vec::new());
    let (mut config_t, mut define_t, mut start_t, mut ping_t) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..args.count {
        check_interrupted()?;
        agent_t.push(agent.measure(&format!("{AGENT_PREFIX}{i}")).await?);

        let t = Instant::now();
        let ca = baseline.openssl_ca()?;
        ca_t.push(t.elapsed());
        let ca_pem = std::fs::read_to_string(&ca.cert)?;
        let d = baseline.prepare(
            &format!("{BASELINE_PREFIX}{i}"),
            BASELINE_ADDRESSES[0],
            Some(ca_pem),
        )?;
        let measured = baseline.docker(&d, &ca).await;
        let removed = baseline.remove(&d);
        let p = measured?;
        removed?;
        total_t.push(p.total());
        config_t.push(p.config);
        define_t.push(p.define);
        start_t.push(p.start);
        ping_t.push(p.ping);
        eprintln!(
            "[{}/{}] agent {:.1} ms, baseline {:.1} ms (certs+config {:.1}, define {:.1}, start \
             {:.1}, until _ping {:.1})",
            i + 1,
            args.count,
            ms(agent_t[i as usize]),
            ms(p.total()),
            ms(p.config),
            ms(p.define),
            ms(p.start),
            ms(p.ping)
        );
    }
    println!(
        "Docker create latency, {} segments per side, interleaved, {} MiB / {VCPUS} vCPU, image {}",
        args.count, args.memory_mib, agent.image
    );
    println!(
        "  both until https://IP:{}/_ping answers with client certs (polled every {} ms); each \
         segment deleted before the next",
        docker::DOCKER_TLS_PORT,
        PING_EVERY.as_millis()
    );
    println!(
        "  untimed: the baseline's overlay mount (the agent's is inside CreateSegment) and the \
         cluster CA (an input of CreateSegment)"
    );
    println!(
        "  baseline domain at {}; its openssl keys are EC P-256, like the agent's",
        BASELINE_ADDRESSES[0]
    );
    let a = line("agent CreateSegment (gRPC, until RUNNING)", &mut agent_t);
    let b = line(
        "openssl + daemon.json + virsh + _ping (baseline)",
        &mut total_t,
    );
    line("  openssl server+client certs, daemon.json", &mut config_t);
    line("  virsh define", &mut define_t);
    line("  virsh start", &mut start_t);
    line("  start returned -> _ping answers", &mut ping_t);
    line("openssl cluster CA (untimed, not in baseline)", &mut ca_t);
    ratio("ratio agent / baseline (medians)", a, b);
    Ok(())
}

/// Removes what an earlier (interrupted) run of this benchmark left.
async fn sweep(agent: &mut Agent, baseline: &Baseline) -> Result<()> {
    let segments = agent.sweep().await.context("deleting bench segments")?;
    let domains = baseline.sweep().context("removing bench domains")?;
    if !segments.is_empty() || !domains.is_empty() {
        eprintln!("removed leftovers: segments {segments:?}, domains {domains:?}");
    }
    Ok(())
}

async fn run(args: Args) -> Result<()> {
    let image = args
        .image
        .clone()
        .unwrap_or_else(|| if args.docker { "docker" } else { "dev" }.into());
    let baseline = Baseline::new(&args, &image)?;
    let mut agent = Agent::connect(args.socket.clone(), image, args.memory_mib).await?;
    tokio::spawn(async {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("interrupted: cleaning up");
            INTERRUPTED.store(true, Ordering::Relaxed);
        }
    });
    sweep(&mut agent, &baseline).await?;
    let measured = if args.reports {
        if args.docker {
            let (ca_cert_pem, ca_key_pem) =
                certs::generate_test_ca("bench-cluster", Duration::from_secs(86400))?;
            agent.tls = Some(ClusterTls {
                ca_cert_pem,
                ca_key_pem,
            });
        }
        reports::run(&mut agent, args.count, args.control_plane, &args.pid_file).await
    } else if args.docker {
        with_docker(&args, &mut agent, &baseline).await
    } else {
        plain(&args, &mut agent, &baseline).await
    };
    // Each step cleans up after itself; this catches what a failure left.
    let swept = sweep(&mut agent, &baseline).await;
    measured?;
    swept
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("segment-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
