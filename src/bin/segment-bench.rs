//! Create-latency benchmark: CreateSegment through the agent's API against
//! the same domains made with raw `virsh define` + `virsh start`, in the
//! same run, interleaved so both see the same machine noise. Prints medians
//! and their ratio.
//!
//! `segment-bench --socket /run/segment-agent/agent.sock --count 10`
//! (needs a running agent: `scripts/dev-up`; `scripts/bench` does both).

use clap::Parser;
use hyper_util::rt::TokioIo;
use segment_agent::{
    images::ImageStore,
    proto::agent::{
        CreateSegmentRequest, DeleteSegmentRequest, Flavor,
        segment_agent_client::SegmentAgentClient,
    },
    segment::spec::{
        ClusterId, Desired, Flavor as SpecFlavor, ImageName, Labels, SegmentId, SegmentRecord,
        SegmentRequest,
    },
    storage::{OverlayStorage, SegmentStorage},
    xml::{DomainSpec, FilesystemMount, NetworkInterface},
};
use std::{
    net::Ipv4Addr,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant, SystemTime},
};
use tonic::transport::{Channel, Endpoint, Uri};

#[derive(Parser)]
struct Args {
    /// The agent's socket.
    #[arg(long, default_value = "/run/segment-agent/agent.sock")]
    socket: PathBuf,
    /// Segments per side (the baselines take 2 x count addresses).
    #[arg(long, default_value_t = 10)]
    count: u32,
    /// State dir holding the images (the baseline mounts its own overlays there).
    #[arg(long, default_value = "/var/lib/segment-agent")]
    state_dir: PathBuf,
    /// Image both sides use.
    #[arg(long, default_value = "dev")]
    image: String,
    /// First address of the baseline's domains (outside the agent's pool).
    #[arg(long, default_value = "203.0.113.210")]
    baseline_first: Ipv4Addr,
    /// Memory of every segment, MiB.
    #[arg(long, default_value_t = 4096)]
    memory_mib: u32,
}

async fn channel(path: PathBuf) -> Channel {
    Endpoint::try_from("http://localhost")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                tokio::net::UnixStream::connect(path)
                    .await
                    .map(TokioIo::new)
            }
        }))
        .await
        .expect("connect to the agent (run scripts/dev-up first)")
}

fn virsh(args: &[&str]) {
    let out = Command::new("virsh")
        .args(["-q", "-c", "lxc:///"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "virsh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The baseline's domain: the same XML the agent writes, rootfs mounted
/// beforehand (untimed), so the baseline pays only define + start.
fn baseline_domain(args: &Args, storage: &OverlayStorage, i: u32) -> (String, PathBuf) {
    let id = SegmentId::parse(&format!("benchv-{i}")).unwrap();
    let images = ImageStore::new(args.state_dir.join("images"));
    let image = images
        .resolve(&ImageName::parse(&args.image).unwrap())
        .unwrap();
    let dirs = storage.prepare(&id, &image).unwrap();
    let address = Ipv4Addr::from(u32::from(args.baseline_first) + i);
    let record = SegmentRecord {
        request: SegmentRequest {
            id: id.clone(),
            cluster: ClusterId::parse("bench").unwrap(),
            flavor: SpecFlavor {
                memory_mib: args.memory_mib,
                vcpus: 2,
            },
            image: image.name.clone(),
            labels: Labels::new(),
            ca_cert_pem: None,
        },
        address,
        created_at: SystemTime::now(),
        desired: Desired::Running,
        server_cert_not_after: None,
    };
    let spec = DomainSpec {
        name: id.domain_name(),
        uuid: uuid::Uuid::new_v4().to_string(),
        memory_kib: u64::from(args.memory_mib) * 1024,
        vcpus: 2,
        cpu_period_us: 100_000,
        init: image.init.clone(),
        filesystems: vec![FilesystemMount {
            source: dirs.rootfs,
            target: "/".into(),
            readonly: false,
        }],
        interface: NetworkInterface {
            bridge: "segbr0".into(),
            address,
            prefix: 24,
            gateway: Ipv4Addr::new(203, 0, 113, 1),
        },
        char_devices: Vec::new(),
        apparmor_profile: None,
        record,
    };
    let path = std::env::temp_dir().join(format!("{}.xml", spec.name));
    std::fs::write(&path, spec.to_xml()).unwrap();
    (spec.name, path)
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let mut client = SegmentAgentClient::new(channel(args.socket.clone()).await);
    let storage = OverlayStorage::new(args.state_dir.join("bench-baseline"));
    let (mut agent_t, mut virsh_t, mut virsh1_t) = (Vec::new(), Vec::new(), Vec::new());
    let mut baseline = Vec::new();
    for i in 0..args.count {
        let req = CreateSegmentRequest {
            segment_id: format!("bench-{i}"),
            cluster_id: "bench".into(),
            flavor: Some(Flavor {
                memory_mib: args.memory_mib,
                vcpus: 2,
            }),
            image: args.image.clone(),
            ..Default::default()
        };
        let t = Instant::now();
        client.create_segment(req).await.expect("CreateSegment");
        agent_t.push(t.elapsed());

        let (name, xml) = baseline_domain(&args, &storage, i);
        let t = Instant::now();
        virsh(&["define", xml.to_str().unwrap()]);
        virsh(&["start", &name]);
        virsh_t.push(t.elapsed());
        baseline.push((name, xml, i));

        // A tighter baseline: one virsh process, one connection, both commands.
        let (name, xml) = baseline_domain(&args, &storage, args.count + i);
        let t = Instant::now();
        virsh(&[&format!("define {}; start {name}", xml.display())]);
        virsh1_t.push(t.elapsed());
        baseline.push((name, xml, args.count + i));
    }
    for i in 0..args.count {
        client
            .delete_segment(DeleteSegmentRequest {
                segment_id: format!("bench-{i}"),
            })
            .await
            .expect("DeleteSegment");
    }
    for (name, xml, i) in baseline {
        virsh(&["destroy", &name]);
        virsh(&["undefine", &name]);
        storage
            .remove(&SegmentId::parse(&format!("benchv-{i}")).unwrap())
            .unwrap();
        let _ = std::fs::remove_file(xml);
    }
    let (a, v, v1) = (
        median(&mut agent_t),
        median(&mut virsh_t),
        median(&mut virsh1_t),
    );
    println!(
        "create latency, {} segments per side, interleaved, {} MiB / 2 vCPU, image {}",
        args.count, args.memory_mib, args.image
    );
    println!(
        "  agent CreateSegment (gRPC, until RUNNING)  median {:7.1} ms   min {:7.1} ms   max {:7.1} ms",
        ms(a),
        ms(agent_t[0]),
        ms(*agent_t.last().unwrap())
    );
    println!(
        "  virsh define + start (baseline)            median {:7.1} ms   min {:7.1} ms   max {:7.1} ms",
        ms(v),
        ms(virsh_t[0]),
        ms(*virsh_t.last().unwrap())
    );
    println!(
        "  virsh 'define; start' in one process       median {:7.1} ms   min {:7.1} ms   max {:7.1} ms",
        ms(v1),
        ms(virsh1_t[0]),
        ms(*virsh1_t.last().unwrap())
    );
    println!(
        "  ratio agent / baseline (medians)           {:.2}x",
        a.as_secs_f64() / v.as_secs_f64()
    );
    println!(
        "  ratio agent / one-process baseline         {:.2}x",
        a.as_secs_f64() / v1.as_secs_f64()
    );
}
