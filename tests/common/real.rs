//! The real agent binary against the real libvirtd, inside the sandbox
//! network namespace that `scripts/test` prepares. Missing environment is a
//! failure, never a skip.

use super::{try_unix_channel, unix_channel};
use segment_agent::proto::agent::{GetHostRequest, segment_agent_client::SegmentAgentClient};
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};
use tonic::transport::Channel;

/// Where `scripts/test` keeps images and test state (a shared mount).
pub const STATE_ROOT: &str = "/var/lib/segment-agent";
/// Where test agents keep their state: on the segments' btrfs (simple
/// quotas, see `quota_fs_up` in scripts/lib.sh), under a name no segment
/// id can have, so the dev agent never lists it.
pub const TEST_ROOT: &str = "/var/lib/segment-agent/segments/.tests";
/// The sandbox network namespace.
pub const NETNS: &str = "/run/netns/segment-sandbox";

/// Fails the test unless the sandbox, libvirtd and the dev image are there.
pub fn require_environment() {
    let hint = "the end-to-end environment is missing: run scripts/test (or scripts/dev-up) first";
    assert!(Path::new(NETNS).exists(), "{NETNS} does not exist; {hint}");
    let virsh = Command::new("virsh")
        .args(["-q", "-c", "lxc:///", "version"])
        .output();
    assert!(
        virsh.is_ok_and(|o| o.status.success()),
        "libvirtd does not answer on lxc:///; {hint}"
    );
    let image = Path::new(STATE_ROOT).join("images/dev/image.toml");
    assert!(image.exists(), "{} is missing; {hint}", image.display());
    use segment_agent::quota::{DiskQuota, btrfs::BtrfsQuota};
    if let Err(e) = BtrfsQuota::default().check(Path::new(TEST_ROOT)) {
        panic!("{TEST_ROOT} cannot enforce disk quotas ({e}); {hint}");
    }
}

/// Runs a command in the sandbox network namespace and returns its output.
pub fn in_sandbox(args: &[&str]) -> std::process::Output {
    Command::new("nsenter")
        .arg(format!("--net={NETNS}"))
        .args(args)
        .output()
        .expect("running nsenter")
}

/// Whether `addr` answers ping from the sandbox.
pub fn pings(addr: &str) -> bool {
    in_sandbox(&["ping", "-c", "1", "-W", "2", addr])
        .status
        .success()
}

/// Runs virsh against lxc:///.
pub fn virsh(args: &[&str]) -> std::process::Output {
    Command::new("virsh")
        .args(["-q", "-c", "lxc:///"])
        .args(args)
        .output()
        .expect("running virsh")
}

/// Whether libvirt has a domain of that name.
pub fn domain_exists(name: &str) -> bool {
    virsh(&["domstate", name]).status.success()
}

/// The cgroup v1 directory of a running domain for `controller`.
pub fn cgroup_dir(controller: &str, domain: &str) -> Option<PathBuf> {
    let base = Path::new("/sys/fs/cgroup").join(controller).join("machine");
    let suffix = format!("-{domain}.libvirt-lxc");
    std::fs::read_dir(base)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("lxc-") && n.ends_with(&suffix))
        })
}

/// The host PID of a running domain's init: the only child of its
/// libvirt_lxc controller, whose PID names the domain's cgroup.
pub fn init_pid(domain: &str) -> Option<u32> {
    let dir = cgroup_dir("memory", domain)?;
    let name = dir.file_name()?.to_str()?.to_owned();
    let controller: u32 = name.strip_prefix("lxc-")?.split('-').next()?.parse().ok()?;
    // Children are listed per thread, and the controller may fork the init
    // from any of its threads.
    let tasks = std::fs::read_dir(format!("/proc/{controller}/task")).ok()?;
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .find_map(|c| c.split_whitespace().next()?.parse().ok())
}

/// Whether something is mounted at `path`.
pub fn mounted(path: &Path) -> bool {
    let wanted = path.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(wanted.as_str()))
}

/// The agent binary under test, run as a child process in the sandbox.
pub struct RealAgent {
    /// Prefix of every segment id this test uses (also its state dir name).
    pub prefix: String,
    /// The agent's state dir.
    pub state_dir: PathBuf,
    /// Its API socket.
    pub socket: PathBuf,
    /// Its configuration file.
    pub config: PathBuf,
    child: Option<Child>,
}

impl RealAgent {
    /// Starts an agent for test `prefix` with its own state dir and the
    /// address `range` (disjoint from the dev agent's and other tests').
    pub async fn start(prefix: &str, range: &str, extra: &str) -> Self {
        Self::start_with(prefix, range, "apparmor = \"off\"", extra).await
    }

    /// Like [`RealAgent::start`], with `top` holding top-level keys.
    pub async fn start_with(prefix: &str, range: &str, top: &str, extra: &str) -> Self {
        Self::start_full(prefix, range, top, "", extra).await
    }

    /// Like [`RealAgent::start_with`], with `network` holding more keys of
    /// the `[network]` table.
    pub async fn start_full(
        prefix: &str,
        range: &str,
        top: &str,
        network: &str,
        extra: &str,
    ) -> Self {
        require_environment();
        let state_dir = Path::new(TEST_ROOT).join(format!("test-{prefix}"));
        cleanup(prefix, &state_dir);
        std::fs::create_dir_all(&state_dir).unwrap();
        std::os::unix::fs::symlink(
            Path::new(STATE_ROOT).join("images"),
            state_dir.join("images"),
        )
        .unwrap();
        let socket = state_dir.join("agent.sock");
        let config = state_dir.join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "state_dir = {sd:?}\ndefault_image = \"dev\"\n{top}\n\
                 [listen]\nsocket = {sock:?}\n\
                 [network]\nranges = [{range:?}]\n{network}\n\
                 [capacity]\nmemory_overcommit_ratio = 10.0\n{extra}\n",
                sd = state_dir.display().to_string(),
                sock = socket.display().to_string(),
            ),
        )
        .unwrap();
        let mut agent = RealAgent {
            prefix: prefix.into(),
            state_dir,
            socket,
            config,
            child: None,
        };
        agent.spawn().await;
        agent
    }

    /// Starts the agent process (again) and waits until it serves.
    pub async fn spawn(&mut self) {
        assert!(self.child.is_none(), "agent already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.state_dir.join("agent.log"))
            .unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net={NETNS}"))
            .arg(env!("CARGO_BIN_EXE_segment-agent"))
            .args(["serve", "--config"])
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting the agent");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("agent exited with {status}; log:\n{}", self.log());
            }
            // Serving, not only listening: the socket accepts from its
            // bind on, before the server runs (an agent that fails after
            // binding must show up here with its log, not as a broken
            // connection in the test's next call).
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() && self.answers().await
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("agent did not serve within 30 s; log:\n{}", self.log());
    }

    /// Whether the agent answers a GetHost.
    async fn answers(&self) -> bool {
        let call = async {
            match try_unix_channel(&self.socket).await {
                Ok(channel) => SegmentAgentClient::new(channel)
                    .get_host(GetHostRequest {})
                    .await
                    .is_ok(),
                Err(_) => false,
            }
        };
        tokio::time::timeout(Duration::from_secs(5), call)
            .await
            .unwrap_or(false)
    }

    /// The agent's PID.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("agent running").id()
    }

    /// Sends `signal` and waits for the process to end.
    pub fn kill(&mut self, signal: nix::sys::signal::Signal) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("agent running");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
        child.wait().unwrap()
    }

    /// A client of its API.
    pub async fn client(&self) -> SegmentAgentClient<Channel> {
        SegmentAgentClient::new(unix_channel(&self.socket).await)
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state_dir.join("agent.log")).unwrap_or_default()
    }

    /// The directory of one segment.
    pub fn segment_dir(&self, id: &str) -> PathBuf {
        self.state_dir.join("segments").join(id)
    }
}

impl Drop for RealAgent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        cleanup(&self.prefix, &self.state_dir);
    }
}

/// Removes every domain, mount and directory a test of `prefix` may have
/// left (a failed assertion must not leak into the next run).
fn cleanup(prefix: &str, state_dir: &Path) {
    let listed = virsh(&["list", "--all", "--name"]);
    let names = String::from_utf8_lossy(&listed.stdout).into_owned();
    for name in names
        .lines()
        .filter(|n| n.starts_with(&format!("seg-{prefix}-")))
    {
        let _ = virsh(&["destroy", name]);
        let _ = virsh(&["undefine", name]);
    }
    // The agent's own removal: every mount of a segment, then its files.
    use segment_agent::{
        quota::btrfs::BtrfsQuota,
        storage::{OverlayStorage, SegmentStorage},
    };
    let quota = std::sync::Arc::new(BtrfsQuota::default());
    let store = OverlayStorage::with_quota(state_dir.join("segments"), quota);
    for id in store.list().unwrap_or_default() {
        let _ = store.remove(&id);
    }
    let _ = std::fs::remove_dir_all(state_dir);
}

/// Binds a TCP listener inside the sandbox network namespace (from a thread
/// that enters it; the socket keeps its namespace afterwards), so a test
/// server is reachable from agents running there.
pub fn listen_in_sandbox(addr: &str) -> std::net::TcpListener {
    let addr = addr.to_owned();
    std::thread::spawn(move || {
        let ns = std::fs::File::open(NETNS).expect("sandbox namespace");
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("entering the sandbox namespace");
        std::net::TcpListener::bind(&addr).expect("binding in the sandbox")
    })
    .join()
    .unwrap()
}

/// CPU time (user + system) of a process so far.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .unwrap()
        .unwrap() as u64;
    Duration::from_millis(ticks * 1000 / hz)
}
