//! `segment-bench --reads`: read latency at a fixed rate (GetSegment,
//! ListSegments and GetHost in turn, `--rate` per second), on a quiet agent
//! and during `--count` concurrent CreateSegment calls, side by side with
//! the same reads served straight by libvirt-python on one held connection
//! (lookup + isActive + metadata of the domain; the listing with isActive +
//! metadata of each `seg-` domain; the library version and the node's
//! info), on a quiet libvirtd and during the same create storm.
//!
//! Both sides are open-loop: request `i` is due at `start + i / rate` and
//! its latency counts from then, so a reader stuck behind a slow call does
//! not hide the requests it delays (no coordinated omission).

use super::{AGENT_PREFIX, Agent, check_interrupted, ms};
use anyhow::{Context, Result, bail, ensure};
use segment_agent::proto::agent::{GetHostRequest, GetSegmentRequest, ListSegmentsRequest};
use std::{
    io::Write,
    process::{Command, Stdio},
    time::{Duration, Instant},
};
use tokio::task::JoinSet;

/// The reads, in the order they are sent.
const KINDS: [&str; 3] = ["GetSegment", "ListSegments", "GetHost"];
/// Segments that exist throughout (what GetSegment reads).
const RESIDENT: u32 = 3;

/// The libvirt-python baseline: reads at `rate` on one held connection
/// from 16 threads (libvirt-python releases the GIL in libvirt calls)
/// until it reads `stop` on stdin or `seconds` pass, then prints one line
/// per kind: `kind latency_ms latency_ms ...`.
const PYTHON_READER: &str = r#"
import sys, threading, time, libvirt
rate, seconds, name = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
URI = "https://segment-agent.dev/xmlns/segment/1"
conn = libvirt.open("lxc:///")
libvirt.registerErrorHandler(lambda *a: None, None)
def get():
    d = conn.lookupByName(name); d.isActive()
    d.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, URI)
def lst():
    for d in conn.listAllDomains(0):
        if d.name().startswith("seg-"):
            d.isActive()
            try: d.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, URI)
            except libvirt.libvirtError: pass
def host():
    conn.getLibVersion(); conn.getInfo()
calls = [("GetSegment", get), ("ListSegments", lst), ("GetHost", host)]
stop = threading.Event()
def stopper():
    for line in sys.stdin:
        if line.strip() == "stop": stop.set()
threading.Thread(target=stopper, daemon=True).start()
out = {k: [] for k, _ in calls}
lock = threading.Lock()
start = time.monotonic() + 0.05
WORKERS = 16
def worker(w):
    i = w
    while not stop.is_set():
        due = start + i / rate
        if due - start > seconds: break
        now = time.monotonic()
        if due > now: time.sleep(due - now)
        kind, f = calls[i % 3]
        f()
        took = (time.monotonic() - due) * 1000
        with lock: out[kind].append(took)
        i += WORKERS
ts = [threading.Thread(target=worker, args=(w,)) for w in range(WORKERS)]
for t in ts: t.start()
for t in ts: t.join()
for k, v in out.items(): print(k, " ".join("%.3f" % x for x in v))
"#;

/// Latencies of one phase, by kind (milliseconds).
#[derive(Default)]
struct Figures {
    by_kind: [Vec<f64>; 3],
    errors: usize,
}

impl Figures {
    fn quantile(v: &mut [f64], q: f64) -> f64 {
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return f64::NAN;
        }
        v[((v.len() - 1) as f64 * q).round() as usize]
    }

    /// (p50, p99) of one kind, or of all kinds (`None`).
    fn p50_p99(&self, kind: Option<usize>) -> (f64, f64, usize) {
        let mut v: Vec<f64> = match kind {
            Some(k) => self.by_kind[k].clone(),
            None => self.by_kind.concat(),
        };
        let n = v.len();
        (Self::quantile(&mut v, 0.5), Self::quantile(&mut v, 0.99), n)
    }
}

/// The agent's reads at `rate` until `until` resolves (at least `min`).
async fn agent_reads(
    agent: &Agent,
    rate: u32,
    min: Duration,
    until: tokio::sync::watch::Receiver<bool>,
) -> Figures {
    let mut tasks = JoinSet::new();
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let step = Duration::from_secs_f64(1.0 / f64::from(rate));
    for i in 0usize.. {
        let due = start + step * i as u32;
        if due.duration_since(start) >= min && *until.borrow() {
            break;
        }
        tokio::time::sleep_until(due).await;
        let mut client = agent.client.clone();
        tasks.spawn(async move {
            let kind = i % 3;
            let ok = match kind {
                0 => {
                    let r = GetSegmentRequest {
                        segment_id: format!("{AGENT_PREFIX}r0"),
                        ..Default::default()
                    };
                    client.get_segment(r).await.is_ok()
                }
                1 => client
                    .list_segments(ListSegmentsRequest::default())
                    .await
                    .is_ok(),
                _ => client.get_host(GetHostRequest {}).await.is_ok(),
            };
            (kind, ms(due.elapsed()), ok)
        });
    }
    let mut figures = Figures::default();
    while let Some(done) = tasks.join_next().await {
        if let Ok((kind, took, ok)) = done {
            figures.by_kind[kind].push(took);
            figures.errors += usize::from(!ok);
        }
    }
    figures
}

/// The libvirt-python reader, started; see [`PYTHON_READER`].
fn python_reader(rate: u32, max: Duration) -> Result<std::process::Child> {
    Command::new("/usr/bin/python3")
        .args(["-c", PYTHON_READER])
        .arg(rate.to_string())
        .arg(max.as_secs_f64().to_string())
        .arg(format!("seg-{AGENT_PREFIX}r0"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("running /usr/bin/python3 (python3-libvirt: scripts/lib.sh install_packages)")
}

/// Stops the reader (`stop`: at once, else when its time is up) and parses
/// what it measured.
fn python_figures(mut child: std::process::Child, stop: bool) -> Result<Figures> {
    if let Some(mut stdin) = child.stdin.take()
        && stop
    {
        let _ = stdin.write_all(b"stop\n");
    }
    let out = child.wait_with_output()?;
    ensure!(out.status.success(), "the libvirt-python reader failed");
    let mut figures = Figures::default();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut words = line.split_whitespace();
        let Some(k) = words
            .next()
            .and_then(|k| KINDS.iter().position(|n| *n == k))
        else {
            continue;
        };
        figures.by_kind[k] = words.filter_map(|w| w.parse().ok()).collect();
    }
    Ok(figures)
}

/// `count` CreateSegment calls at once; returns when all are done.
async fn create_storm(agent: &Agent, count: u32) -> Result<Duration> {
    let t = Instant::now();
    let mut creates = JoinSet::new();
    for i in 0..count {
        let mut a = agent.clone();
        creates.spawn(async move { a.create(&format!("{AGENT_PREFIX}s{i}")).await });
    }
    while let Some(done) = creates.join_next().await {
        done??;
    }
    Ok(t.elapsed())
}

/// Deletes the storm's segments one by one (not timed; concurrent deletes
/// can race in btrfs's qgroup removal).
async fn delete_storm(agent: &mut Agent, count: u32) -> Result<()> {
    for i in 0..count {
        agent.delete(&format!("{AGENT_PREFIX}s{i}")).await?;
    }
    Ok(())
}

fn row(label: &str, f: &Figures) {
    let (p50, p99, n) = f.p50_p99(None);
    let per: Vec<String> = (0..3)
        .map(|k| {
            let (a, b, _) = f.p50_p99(Some(k));
            format!("{} {a:.2}/{b:.2}", KINDS[k])
        })
        .collect();
    println!(
        "  {label:<40} p50 {p50:8.2} ms  p99 {p99:8.2} ms  ({n} reads, {} errors; p50/p99 {})",
        f.errors,
        per.join(", ")
    );
}

/// The whole measurement; see the module doc.
pub(crate) async fn run(agent: &mut Agent, count: u32, rate: u32, seconds: u64) -> Result<()> {
    for i in 0..RESIDENT {
        agent.create(&format!("{AGENT_PREFIX}r{i}")).await?;
    }
    let quiet = Duration::from_secs(seconds);
    let (_done_tx, done) = tokio::sync::watch::channel(true);
    eprintln!("agent reads, quiet host ({seconds} s at {rate}/s)");
    let agent_quiet = agent_reads(agent, rate, quiet, done.clone()).await;
    check_interrupted()?;
    eprintln!("libvirt-python reads, quiet host");
    let child = python_reader(rate, quiet)?;
    let python_quiet = python_figures(child, false)?;
    check_interrupted()?;

    eprintln!("agent reads during {count} concurrent creates");
    let (tx, rx) = tokio::sync::watch::channel(false);
    // The reads on a connection of their own: on the creates' connection
    // they would queue behind its HTTP/2 stream limit in the client.
    let reader = agent.second_connection().await?;
    let reads = agent_reads(&reader, rate, Duration::from_secs(1), rx);
    let storm = async {
        let r = create_storm(agent, count).await;
        let _ = tx.send(true);
        r
    };
    let (agent_storm, took) = tokio::join!(reads, storm);
    let agent_took = took?;
    delete_storm(agent, count).await?;
    check_interrupted()?;

    eprintln!("libvirt-python reads during {count} concurrent creates");
    let child = python_reader(rate, Duration::from_secs(600))?;
    let took = create_storm(agent, count).await;
    let python_storm = python_figures(child, true)?;
    let python_took = took?;
    delete_storm(agent, count).await?;
    for i in 0..RESIDENT {
        agent.delete(&format!("{AGENT_PREFIX}r{i}")).await?;
    }

    println!(
        "read latency at {rate} reads/s (GetSegment, ListSegments, GetHost in turn), open loop"
    );
    println!(
        "  storm: {count} concurrent CreateSegment ({} MiB, image {}), took {:.1} s / {:.1} s",
        agent.memory_mib,
        agent.image,
        agent_took.as_secs_f64(),
        python_took.as_secs_f64()
    );
    row("agent, quiet", &agent_quiet);
    row("libvirt-python held connection, quiet", &python_quiet);
    row("agent, during the create storm", &agent_storm);
    row("libvirt-python, during the create storm", &python_storm);
    let r = |a: &Figures, b: &Figures| {
        let (a50, a99, _) = a.p50_p99(None);
        let (b50, b99, _) = b.p50_p99(None);
        format!("p50 {:.2}x  p99 {:.2}x", a50 / b50, a99 / b99)
    };
    println!(
        "  ratio agent / libvirt-python, quiet:  {}",
        r(&agent_quiet, &python_quiet)
    );
    println!(
        "  ratio agent / libvirt-python, storm:  {}",
        r(&agent_storm, &python_storm)
    );
    if agent_storm.errors + agent_quiet.errors > 0 {
        bail!("some agent reads failed");
    }
    let _ = std::io::stdout().flush();
    Ok(())
}
