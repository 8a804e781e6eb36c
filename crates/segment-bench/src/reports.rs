//! `segment-bench --reports`: the size of a health report and the agent's
//! CPU cost of reporting with N segments. The bench serves the control plane
//! the dev agent reports to (`config/dev.toml`: http://127.0.0.1:7444, in the
//! sandbox namespace), asks for a 1 s interval in its acks, and reads the
//! agent's CPU time from procfs around a window of reports.

use super::{Agent, CLUSTER};
use anyhow::{Context, Result, ensure};
use prost::Message;
use segment_agent::proto::controlplane::{
    HealthAck, HealthReport,
    control_plane_server::{ControlPlane, ControlPlaneServer},
};
use std::{
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tokio::sync::Notify;
use tonic::{Request, Response, Status};

/// Reports measured after all segments are in them.
const WINDOW: usize = 15;

#[derive(Default)]
struct Inbox {
    reports: Mutex<Vec<(Instant, HealthReport)>>,
    arrived: Notify,
    interval: Mutex<u32>,
}

struct Plane(Arc<Inbox>);

#[tonic::async_trait]
impl ControlPlane for Plane {
    async fn report_health(&self, r: Request<HealthReport>) -> Result<Response<HealthAck>, Status> {
        self.0
            .reports
            .lock()
            .unwrap()
            .push((Instant::now(), r.into_inner()));
        self.0.arrived.notify_waiters();
        Ok(Response::new(HealthAck {
            next_interval_seconds: *self.0.interval.lock().unwrap(),
        }))
    }
}

/// CPU time (user + system) of a process so far.
pub(crate) fn cpu_time(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).context("agent process")?;
    let rest = &stat[stat.rfind(')').context("stat format")? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.unwrap_or(100) as u64;
    Ok(Duration::from_micros(ticks * 1_000_000 / hz))
}

impl Inbox {
    /// Waits for the `n`-th report that satisfies `pred`, counted from `from`.
    async fn wait(
        &self,
        from: usize,
        n: usize,
        pred: impl Fn(&HealthReport) -> bool,
    ) -> Result<usize> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let notified = self.arrived.notified();
            let found = {
                let reports = self.reports.lock().unwrap();
                let mut matching = (from..reports.len()).filter(|&i| pred(&reports[i].1));
                matching.nth(n - 1)
            };
            if let Some(i) = found {
                return Ok(i);
            }
            ensure!(
                Instant::now() < deadline,
                "reports did not arrive (is the dev agent's [control_plane] set?)"
            );
            let _ = tokio::time::timeout(Duration::from_secs(2), notified).await;
        }
    }
}

/// Runs the measurement with `count` segments of `memory_mib`.
pub async fn run(agent: &mut Agent, count: u32, listen: SocketAddr, pid_file: &Path) -> Result<()> {
    let pid: u32 = std::fs::read_to_string(pid_file)
        .with_context(|| format!("{} (run scripts/dev-up)", pid_file.display()))?
        .trim()
        .parse()?;
    let inbox = Arc::new(Inbox::default());
    *inbox.interval.lock().unwrap() = 1;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("serving the control plane on {listen}"))?;
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ControlPlaneServer::new(Plane(inbox.clone())))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let result = measure(agent, count, pid, &inbox).await;
    // Hand the dev agent back its configured interval before going away.
    *inbox.interval.lock().unwrap() = 10;
    let settled = inbox.reports.lock().unwrap().len();
    let _ = tokio::time::timeout(Duration::from_secs(5), inbox.wait(settled, 1, |_| true)).await;
    server.abort();
    result
}

async fn measure(agent: &mut Agent, count: u32, pid: u32, inbox: &Inbox) -> Result<()> {
    let ids: Vec<String> = (0..count).map(|i| format!("bench-r{i}")).collect();
    eprintln!("creating {count} segments");
    for id in &ids {
        agent.create(id).await?;
    }
    let ours = |r: &HealthReport| {
        r.segments
            .iter()
            .filter(|s| s.cluster_id == CLUSTER)
            .count()
    };
    let first = inbox.wait(0, 1, |r| ours(r) == count as usize).await?;
    // The window starts at a report, so CPU and reports line up.
    let start = inbox.wait(first + 1, 1, |_| true).await?;
    let cpu0 = cpu_time(pid)?;
    let end = inbox
        .wait(start + 1, WINDOW, |r| ours(r) == count as usize)
        .await?;
    let cpu1 = cpu_time(pid)?;
    let reports = inbox.reports.lock().unwrap().clone();
    let window = &reports[start + 1..=end];
    let mut sizes: Vec<usize> = window.iter().map(|(_, r)| r.encoded_len()).collect();
    sizes.sort_unstable();
    let wall = reports[end].0 - reports[start].0;
    let cpu = cpu1.saturating_sub(cpu0);
    let per_report = cpu / window.len() as u32;
    let docker_ready = window.last().map_or(0, |(_, r)| {
        r.segments.iter().filter(|s| s.docker_ready).count()
    });
    for id in &ids {
        agent.delete(id).await?;
    }
    println!(
        "health reports with {count} segments (+ the host's others), {} reports at a 1 s interval over {:.1} s",
        window.len(),
        wall.as_secs_f64()
    );
    println!(
        "  report size (protobuf)         median {:6} bytes   min {:6}   max {:6}   ({:.0} bytes per segment)",
        sizes[sizes.len() / 2],
        sizes[0],
        sizes[sizes.len() - 1],
        sizes[sizes.len() / 2] as f64 / f64::from(count)
    );
    println!(
        "  agent CPU (user+system)        {:.1} ms per report, {:.2} % of one core at 1 s, {:.3} % at the default 10 s",
        per_report.as_secs_f64() * 1000.0,
        cpu.as_secs_f64() * 100.0 / wall.as_secs_f64(),
        per_report.as_secs_f64() * 10.0
    );
    println!("  Docker-ready segments in the last report: {docker_ready}");
    Ok(())
}
