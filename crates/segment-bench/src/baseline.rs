//! The raw baseline: the same domains through virsh, certificates through
//! openssl, readiness through a TLS `_ping` of its own.

use super::*;

/// The host ids of the baseline's domains: far above the agent's block.
const BASELINE_IDS: IdRange = IdRange {
    host_first: 4_000_000_000,
    count: 65_536,
};

pub(crate) fn virsh(args: &[&str]) -> Result<()> {
    virsh_output(args).map(drop)
}

pub(crate) fn virsh_output(args: &[&str]) -> Result<String> {
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

pub(crate) fn openssl(args: &[&str]) -> Result<()> {
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

pub(crate) fn path(p: &Path) -> Result<&str> {
    p.to_str()
        .ok_or_else(|| anyhow!("{} is not UTF-8", p.display()))
}

/// One baseline domain: its overlay is mounted and its XML written.
pub(crate) struct Domain {
    pub(crate) id: SegmentId,
    pub(crate) name: String,
    pub(crate) address: Ipv4Addr,
    pub(crate) xml: PathBuf,
    pub(crate) dirs: SegmentDirs,
}

/// A CA made with the openssl CLI, like a cluster's.
pub(crate) struct OpensslCa {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
}

/// Where the Docker baseline's time goes.
pub(crate) struct DockerPhases {
    /// openssl server and client certificates, ca.pem and daemon.json.
    pub(crate) config: Duration,
    pub(crate) define: Duration,
    pub(crate) start: Duration,
    /// From `virsh start` returning until `/_ping` answers.
    pub(crate) ping: Duration,
}

impl DockerPhases {
    pub(crate) fn total(&self) -> Duration {
        self.config + self.define + self.start + self.ping
    }
}

pub(crate) struct Baseline {
    pub(crate) storage: OverlayStorage,
    pub(crate) image: Image,
    pub(crate) memory_mib: u32,
    pub(crate) tools_dir: PathBuf,
    /// XML files, the openssl CA and the client certificate.
    pub(crate) work: tempfile::TempDir,
}

impl Baseline {
    pub(crate) fn new(args: &Args, image: &str) -> Result<Self> {
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
    pub(crate) fn prepare(
        &self,
        id: &str,
        address: Ipv4Addr,
        ca_cert_pem: Option<String>,
    ) -> Result<Domain> {
        let id = SegmentId::parse(id).map_err(|e| anyhow!("{id}: {e}"))?;
        let dirs = self.storage.prepare(&id, &self.image, BASELINE_IDS, 0)?;
        let docker = self.image.docker;
        let record = SegmentRecord {
            request: SegmentRequest {
                id: id.clone(),
                cluster: ClusterId::parse(CLUSTER).map_err(|e| anyhow!("{e}"))?,
                flavor: SpecFlavor {
                    memory_mib: self.memory_mib,
                    vcpus: VCPUS,
                    // The raw baseline: no quota, no bandwidth cap.
                    pids: 4096,
                    ..SpecFlavor::default()
                },
                image: self.image.name.clone(),
                labels: Labels::new(),
                ca_cert_pem,
                swarm: None,
            },
            address,
            created_at: SystemTime::now(),
            desired: Desired::Running,
            server_cert_not_after: docker
                .then(|| SystemTime::now() + Duration::from_secs(365 * 86400)),
            ids: BASELINE_IDS,
            failure: None,
            restarts: 0,
            swarm: None,
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
            io_weight: 100,
            init: self.image.init.clone(),
            idmap: BASELINE_IDS,
            filesystems,
            interface: NetworkInterface {
                bridge: BRIDGE.into(),
                address,
                prefix: PREFIX,
                gateway: GATEWAY,
                port: None,
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
    pub(crate) fn remove(&self, d: &Domain) -> Result<()> {
        remove_domain(&d.name)?;
        self.storage.remove(&d.id)?;
        let _ = std::fs::remove_file(&d.xml);
        Ok(())
    }

    /// Times `f` (what is measured of the domain), then removes the domain.
    pub(crate) fn measured(&self, d: &Domain, f: impl FnOnce() -> Result<()>) -> Result<Duration> {
        let t = Instant::now();
        let done = f();
        let took = t.elapsed();
        let removed = self.remove(d);
        done?;
        removed?;
        Ok(took)
    }

    /// Untimed: the cluster's CA (EC P-256, like the agent's test CA).
    pub(crate) fn openssl_ca(&self) -> Result<OpensslCa> {
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
    pub(crate) async fn docker(&self, d: &Domain, ca: &OpensslCa) -> Result<DockerPhases> {
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
        // dockerd runs as the segment's root, an unprivileged host uid.
        let owner = Some(BASELINE_IDS.host_first);
        std::os::unix::fs::chown(&server_key, owner, owner)?;
        // Last: the segment's supervisor starts dockerd once it exists.
        std::fs::write(etc.join("daemon.json"), docker::daemon_json())?;
        let config = t.elapsed();

        let t = Instant::now();
        virsh(&["define", path(&d.xml)?])?;
        let define = t.elapsed();

        let t = Instant::now();
        virsh(&["start", &d.name])?;
        // What any host must do before the segment's supervisor starts
        // dockerd: place it, cap it, delegate the containers' cgroup.
        let init = Libvirt::new("lxc:///").init_pid(&d.name)?;
        let limits = SegmentLimits {
            pids_max: 4096,
            workload_memory_bytes: Some((u64::from(self.memory_mib) - 64) << 20),
            owner: BASELINE_IDS.host_first,
        };
        HostCgroups::default().take_in_hand(init, &limits)?;
        let start = t.elapsed();

        let t = Instant::now();
        let tls = tls_connector(&ca.cert, &client_cert, &client_key)?;
        let endpoint = SocketAddr::from((d.address, segment_policy::front::DOCKER_TLS_PORT));
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
    pub(crate) fn sweep(&self) -> Result<Vec<String>> {
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
pub(crate) fn remove_domain(name: &str) -> Result<()> {
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
pub(crate) fn tls_connector(ca: &Path, cert: &Path, key: &Path) -> Result<TlsConnector> {
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
pub(crate) async fn ping(tls: &TlsConnector, endpoint: SocketAddr) -> Result<()> {
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
