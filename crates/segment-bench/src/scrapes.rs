//! `segment-bench --metrics`: the cost of a `/metrics` scrape with N
//! segments. Creates them through the agent, then scrapes its endpoint
//! (`--metrics-addr`, in the sandbox namespace) two ways, reading the
//! agent's CPU time from procfs around each window:
//! - cold: scrapes further apart than the agent's sample cache (2 s), so
//!   each one reads libvirt, the cgroups and every Docker anew;
//! - cached: scrapes back to back, served from the cached reading.

use super::{Agent, reports::cpu_time};
use anyhow::{Context, Result, ensure};
use std::{
    io::{Read, Write},
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

/// Cold scrapes measured (each after the cache expired).
const COLD: usize = 15;
/// Cached scrapes measured.
const CACHED: usize = 50;

/// One `GET /metrics`; returns the body.
fn scrape(addr: SocketAddr) -> Result<String> {
    let mut s =
        std::net::TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    )?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    let (head, body) = reply.split_once("\r\n\r\n").context("no HTTP head")?;
    ensure!(
        head.starts_with("HTTP/1.1 200"),
        "{}",
        head.lines().next().unwrap_or("")
    );
    Ok(body.to_owned())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Scrapes `n` times, `gap` apart; returns wall times and the agent's CPU.
fn window(
    addr: SocketAddr,
    pid: u32,
    n: usize,
    gap: Duration,
) -> Result<(Vec<Duration>, Duration)> {
    let mut walls = Vec::with_capacity(n);
    let cpu0 = cpu_time(pid)?;
    for _ in 0..n {
        let t = Instant::now();
        scrape(addr)?;
        walls.push(t.elapsed());
        std::thread::sleep(gap);
    }
    Ok((walls, cpu_time(pid)?.saturating_sub(cpu0)))
}

fn summary(label: &str, walls: &mut [Duration], cpu: Duration) {
    walls.sort();
    let n = walls.len();
    println!(
        "  {label:<28} wall median {:6.1} ms  max {:6.1} ms   agent CPU {:6.2} ms per scrape",
        ms(walls[n / 2]),
        ms(walls[n - 1]),
        ms(cpu) / n as f64
    );
}

/// Runs the measurement with `count` segments.
pub async fn run(agent: &mut Agent, count: u32, addr: SocketAddr, pid_file: &Path) -> Result<()> {
    let pid: u32 = std::fs::read_to_string(pid_file)
        .with_context(|| format!("{}", pid_file.display()))?
        .trim()
        .parse()?;
    let ids: Vec<String> = (0..count).map(|i| format!("bench-m{i}")).collect();
    eprintln!("creating {count} segments");
    for id in &ids {
        agent.create(id).await?;
    }
    let measured = tokio::task::spawn_blocking(move || measure(addr, pid, count)).await?;
    for id in &ids {
        agent.delete(id).await?;
    }
    measured
}

fn measure(addr: SocketAddr, pid: u32, count: u32) -> Result<()> {
    let body = scrape(addr)?;
    let ours = body
        .lines()
        .filter(|l| l.starts_with("segment_agent_segment_memory_limit_bytes{segment_id=\"bench-m"))
        .count();
    ensure!(
        ours == count as usize,
        "{ours} of {count} segments in the scrape"
    );
    // The agent's own background work (observing segments every 2 s, the
    // libvirt health check) over a window as long as the cold one.
    let idle0 = cpu_time(pid)?;
    std::thread::sleep(Duration::from_millis(2100) * COLD as u32);
    let idle = cpu_time(pid)?.saturating_sub(idle0);
    let (mut cold, cold_cpu) = window(addr, pid, COLD, Duration::from_millis(2100))?;
    let (mut cached, cached_cpu) = window(addr, pid, CACHED, Duration::ZERO)?;
    let body = scrape(addr)?;
    println!(
        "/metrics with {count} segments: {} bytes, {} lines",
        body.len(),
        body.lines().count()
    );
    summary(&format!("cold ({COLD}, 2.1 s apart)"), &mut cold, cold_cpu);
    println!(
        "  {:<28} agent CPU {:6.2} ms per 2.1 s without scrapes (included above)",
        "idle baseline",
        ms(idle) / COLD as f64
    );
    summary(
        &format!("cached ({CACHED}, back to back)"),
        &mut cached,
        cached_cpu,
    );
    Ok(())
}
