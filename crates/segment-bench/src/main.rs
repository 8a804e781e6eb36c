//! Create-latency benchmark: CreateSegment through the agent's API against
//! the same domains made raw, in the same run, interleaved so both see the
//! same machine noise. Prints medians and their ratio.
//!
//! Default mode: a segment without Docker (image `dev`) against `virsh
//! define` + `virsh start` of the same domain XML (and, tighter, one virsh
//! process running both).
//!
//! `--docker`: a Docker segment (image `docker`, cluster CA from
//! [`certs::testing::generate_test_ca`]) until the RPC returns, which the agent does
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
//! `--reads`: read latency, quiet and during a create storm, against
//! libvirt-python (see `reads.rs`).
//!
//! Runs in the sandbox network namespace (to reach 203.0.113.x) with a
//! running agent: `scripts/bench [--docker] [--count N]` sees to both.

use anyhow::{Context, Result, anyhow, bail, ensure};
use clap::Parser;
use hyper_util::rt::TokioIo;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use segment_agent::{
    certs,
    cgroups::{HostCgroups, SegmentCgroups, SegmentLimits},
    docker,
    hypervisor::{Hypervisor, libvirt::Libvirt},
    idmap::IdRange,
    images::{Image, ImageStore},
    model::{
        ClusterId, Desired, Flavor as SpecFlavor, ImageName, Labels, SegmentId, SegmentRecord,
        SegmentRequest,
    },
    proto::agent::{
        ClusterTls, CreateSegmentRequest, DeleteSegmentRequest, Flavor, ListSegmentsRequest,
        SegmentState, segment_agent_client::SegmentAgentClient,
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
    /// Instead of create latency: the size and the agent's CPU cost of a
    /// `/metrics` scrape with `count` segments (scrapes `--metrics-addr`).
    #[arg(long)]
    metrics: bool,
    /// Where the agent serves `/metrics` (config/dev.toml).
    #[arg(long, default_value = "127.0.0.1:9464")]
    metrics_addr: std::net::SocketAddr,
    /// Instead of create latency: read latency (GetSegment, ListSegments,
    /// GetHost) at `--rate` per second, quiet and during `count` concurrent
    /// creates, against libvirt-python on a held connection.
    #[arg(long)]
    reads: bool,
    /// Reads per second of `--reads`.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    rate: u32,
    /// Length of the quiet phases of `--reads`, seconds.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// The dev agent's pid file.
    #[arg(long, default_value = "/run/segment-agent/agent.pid")]
    pid_file: PathBuf,
}

mod agent;
mod baseline;
mod reads;
mod reports;
mod scrapes;

use agent::Agent;
use baseline::{Baseline, path, virsh};

/// Set on Ctrl-C: the run stops at the next step and cleans up.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
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
        certs::testing::generate_test_ca("bench-cluster", Duration::from_secs(2 * 86400))?;
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
        segment_policy::front::DOCKER_TLS_PORT,
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
    let measured = if args.reads {
        reads::run(&mut agent, args.count, args.rate, args.seconds).await
    } else if args.reports || args.metrics {
        if args.docker {
            let (ca_cert_pem, ca_key_pem) =
                certs::testing::generate_test_ca("bench-cluster", Duration::from_secs(86400))?;
            agent.tls = Some(ClusterTls {
                ca_cert_pem,
                ca_key_pem,
            });
        }
        if args.metrics {
            scrapes::run(&mut agent, args.count, args.metrics_addr, &args.pid_file).await
        } else {
            reports::run(&mut agent, args.count, args.control_plane, &args.pid_file).await
        }
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
