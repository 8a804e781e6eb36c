//! Watching the bridge in tests: a raw frame sender, packet captures with
//! tcpdump inside a network namespace (which frames arrived, by marker),
//! and the neighbour and MAC tables, all read with the real tools.

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::OnceLock,
    time::Duration,
};

/// `rawsend IFACE COUNT HEXFRAME...`: sends each frame COUNT times on IFACE
/// through an AF_PACKET socket, exactly as given (needs CAP_NET_RAW, which
/// every Docker container has by default).
pub const RAWSEND_C: &str = r#"
#include <linux/if_packet.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

static int parse(const char *hex, unsigned char *out, size_t cap) {
    size_t len = strlen(hex);
    if (len % 2 || len / 2 < 14 || len / 2 > cap) return -1;
    for (size_t i = 0; i < len / 2; i++)
        if (sscanf(hex + 2 * i, "%2hhx", &out[i]) != 1) return -1;
    return (int)(len / 2);
}

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: rawsend IFACE COUNT HEXFRAME...\n"); return 2; }
    struct sockaddr_ll to = { .sll_family = AF_PACKET, .sll_halen = 6 };
    to.sll_ifindex = (int)if_nametoindex(argv[1]);
    int count = atoi(argv[2]);
    int s = socket(AF_PACKET, SOCK_RAW, 0);
    if (!to.sll_ifindex || count < 1 || s < 0) { perror("rawsend"); return 1; }
    for (int f = 3; f < argc; f++) {
        unsigned char frame[1514];
        int n = parse(argv[f], frame, sizeof frame);
        if (n < 0) { fprintf(stderr, "rawsend: bad frame %d\n", f - 2); return 2; }
        memcpy(to.sll_addr, frame, 6);
        for (int i = 0; i < count; i++)
            if (sendto(s, frame, (size_t)n, 0, (struct sockaddr *)&to, sizeof to) != n) {
                perror("rawsend: sendto"); return 1;
            }
    }
    printf("sent %d frames\n", (argc - 3) * count);
    return 0;
}
"#;

/// The sender built for the host (once per test process).
pub fn rawsend() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let work = tempfile::tempdir().unwrap().keep();
        let out = work.join("rawsend");
        super::docker::static_c(&work, &out, RAWSEND_C);
        out
    })
}

/// Runs `args` inside the network namespace `netns` (a path).
pub fn nsenter(netns: &str, args: &[&str]) -> Output {
    Command::new("nsenter")
        .arg(format!("--net={netns}"))
        .args(args)
        .output()
        .expect("running nsenter")
}

/// Like [`nsenter`]; asserts success and returns standard output.
pub fn nsenter_ok(netns: &str, args: &[&str]) -> String {
    let out = nsenter(netns, args);
    assert!(out.status.success(), "{args:?} in {netns}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The network namespace of a process, as a path for nsenter.
pub fn netns_of(pid: u32) -> String {
    format!("/proc/{pid}/ns/net")
}

/// The MAC of `iface` in `netns`.
pub fn mac_of(netns: &str, iface: &str) -> [u8; 6] {
    let json = nsenter_ok(netns, &["ip", "-json", "link", "show", "dev", iface]);
    let links: serde_json::Value = serde_json::from_str(&json).unwrap();
    parse_mac(links[0]["address"].as_str().unwrap())
}

/// `02:00:cb:00:71:0a` as bytes.
pub fn parse_mac(text: &str) -> [u8; 6] {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    bytes.try_into().unwrap()
}

/// The MAC `netns`'s neighbour table maps `ip` to, if any.
pub fn neighbour(netns: &str, ip: std::net::Ipv4Addr) -> Option<[u8; 6]> {
    let ip = ip.to_string();
    let json = nsenter_ok(netns, &["ip", "-json", "neigh", "show", &ip]);
    let entries: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
    let entries = entries.as_array()?;
    entries
        .iter()
        .find_map(|e| e["lladdr"].as_str())
        .map(parse_mac)
}

/// The MAC table of `bridge` in `netns`: (MAC, port) of every learned
/// entry (not the ports' own permanent ones).
pub fn fdb(netns: &str, bridge: &str) -> Vec<([u8; 6], String)> {
    let json = nsenter_ok(netns, &["bridge", "-json", "fdb", "show", "br", bridge]);
    let entries: serde_json::Value = serde_json::from_str(&json).unwrap();
    entries
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["master"] == bridge && e["state"] == "")
        .filter_map(|e| {
            let mac = e["mac"].as_str()?;
            Some((parse_mac(mac), e["ifname"].as_str()?.to_owned()))
        })
        .collect()
}

/// A tcpdump capture of frames received on an interface in a namespace.
pub struct Capture {
    child: Child,
    file: PathBuf,
    _dir: tempfile::TempDir,
}

impl Capture {
    /// Starts tcpdump on `iface` in `netns`; returns once it listens. Not
    /// promiscuous (a promiscuous bridge passes every frame up to the host),
    /// in immediate mode (else frames still in the kernel's buffer block are
    /// lost when it stops).
    pub fn start(netns: &str, iface: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("capture.pcap");
        let mut child = Command::new("nsenter")
            .arg(format!("--net={netns}"))
            .args([
                "tcpdump",
                "-n",
                "-p",
                "--immediate-mode",
                "-Q",
                "in",
                "-s",
                "512",
                "-U",
            ])
            .args(["-i", iface, "-w"])
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcpdump is installed");
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let listening = lines
            .next()
            .and_then(Result::ok)
            .filter(|l| l.contains("listening on"));
        assert!(
            listening.is_some(),
            "tcpdump on {iface} in {netns} did not start"
        );
        // Keep draining its standard error so it never blocks on it.
        std::thread::spawn(move || lines.for_each(drop));
        Capture {
            child,
            file,
            _dir: dir,
        }
    }

    /// Stops the capture (after a moment for frames in flight); the
    /// markers of every frame it saw.
    pub fn stop(mut self) -> BTreeSet<String> {
        std::thread::sleep(Duration::from_millis(300));
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
        self.child.wait().unwrap();
        let data = std::fs::read(&self.file).unwrap();
        pcap_frames(&data)
            .iter()
            .flat_map(|f| super::frames::markers_in(f))
            .collect()
    }
}

/// The frames of a classic pcap file (either byte order).
pub fn pcap_frames(data: &[u8]) -> Vec<&[u8]> {
    assert!(data.len() >= 24, "not a pcap file ({} bytes)", data.len());
    let little = data[..4] == [0xd4, 0xc3, 0xb2, 0xa1] || data[..4] == [0x4d, 0x3c, 0xb2, 0xa1];
    let word = |at: usize| {
        let b: [u8; 4] = data[at..at + 4].try_into().unwrap();
        if little {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    };
    let (mut at, mut frames) = (24, Vec::new());
    while at + 16 <= data.len() {
        let len = word(at + 8) as usize;
        let end = (at + 16 + len).min(data.len());
        frames.push(&data[at + 16..end]);
        at = end;
    }
    frames
}

/// The markers that arrived at the gateway and at the victim.
#[derive(Debug, Default)]
pub struct Seen {
    /// Captured on the bridge's own interface (the gateway's stack).
    pub gateway: BTreeSet<String>,
    /// Captured on the victim's interface.
    pub victim: BTreeSet<String>,
}

/// Captures at `gateway` and `victim` (namespace, interface) while `send` runs.
pub fn observe(gateway: (&str, &str), victim: (&str, &str), send: impl FnOnce()) -> Seen {
    let at_gateway = Capture::start(gateway.0, gateway.1);
    let at_victim = Capture::start(victim.0, victim.1);
    send();
    Seen {
        gateway: at_gateway.stop(),
        victim: at_victim.stop(),
    }
}

/// Asserts that every probe arrived exactly where it must, listing every
/// one that did not.
pub fn assert_arrivals(probes: &[super::frames::Probe], seen: &Seen) {
    use super::frames::Expect;
    let wrong: Vec<String> = probes
        .iter()
        .filter_map(|p| {
            let at = (
                seen.gateway.contains(&p.name),
                seen.victim.contains(&p.name),
            );
            let want = (p.expect == Expect::Gateway, p.expect == Expect::Victim);
            (at != want).then(|| {
                format!(
                    "{}: must reach {:?}, seen at gateway {} / victim {}",
                    p.name, p.expect, at.0, at.1
                )
            })
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "frames went astray:\n{}\nseen: {seen:?}",
        wrong.join("\n")
    );
}
