//! End-to-end tests of usernet's per-connection and per-port bounds against a hostile guest
//! (issue 12, item 4): real sockets from guest namespaces, the daemon's RSS read from /proc.
//! Need root; nothing leaves the machine (DNS upstreams are `127.0.0.1:9`, never used: every
//! name asked is in the network's own domain).

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::{Child, Netns, require_root};

/// Opens `nconn` TCP connections to the gateway's port 53 and pipelines queries on each for
/// `secs` seconds, never reading an answer (receive buffers shrunk so that the answers back up
/// on the gateway). Prints `sent=QUERIES connected=N open=M` (M: not reset by the end).
const FLOOD: &str = r#"
import select, socket, struct, sys, time
gw, secs, nconn = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
q = struct.pack(">HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\x05flood\x07usernet\x00" + struct.pack(">HH", 1, 1)
framed = struct.pack(">H", len(q)) + q
chunk = framed * 2000
socks = []
for i in range(nconn):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(2)
    try:
        s.connect((gw, 53))
        s.setblocking(False)
        socks.append(s)
    except OSError:
        s.close()
connected = len(socks)
sent = 0
end = time.time() + secs
while time.time() < end and socks:
    _, w, _ = select.select([], socks, [], 0.2)
    for s in w:
        try:
            sent += s.send(chunk)
        except BlockingIOError:
            pass
        except OSError:
            socks.remove(s)
print("sent=%d connected=%d open=%d" % (sent // len(framed), connected, len(socks)), flush=True)
"#;

/// Asks the gateway for `vic.usernet` over UDP and over TCP; prints `ok` when both answer.
const ASK: &str = r#"
import socket, struct, sys
gw = sys.argv[1]
q = struct.pack(">HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0) + b"\x03vic\x07usernet\x00" + struct.pack(">HH", 1, 1)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(3)
u.sendto(q, (gw, 53))
assert u.recv(4096)[:2] == b"\x42\x42", "udp answer"
t = socket.create_connection((gw, 53), timeout=3)
t.sendall(struct.pack(">H", len(q)) + q)
buf = b""
while len(buf) < 4:
    d = t.recv(4096)
    assert d, "tcp closed"
    buf += d
assert buf[2:4] == b"\x42\x42", "tcp answer"
print("ok")
"#;

fn netns_port(net: &str, name: &str, ns: &Netns) -> String {
    format!(
        "[[port]]\nnetwork = \"{net}\"\nname = \"{name}\"\nnetns = \"{}\"\n",
        ns.path().display()
    )
}

/// The resident set of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Runs `python3 -c script args...` in `ns`, bounded by `secs`.
fn python(ns: &Netns, secs: u32, script: &str, args: &[&str]) -> std::process::Output {
    Command::new("timeout")
        .arg(secs.to_string())
        .args(["ip", "netns", "exec", &ns.name, "python3", "-c", script])
        .args(args)
        .output()
        .expect("run python3")
}

fn have_python() -> bool {
    Command::new("python3")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn dns_tcp_client_that_never_reads_cannot_grow_the_daemon() {
    if !require_root("dns_tcp_client_that_never_reads_cannot_grow_the_daemon") {
        return;
    }
    assert!(
        have_python(),
        "python3 is needed for the guest's DNS clients"
    );
    let atk = Netns::new("ba");
    let vic = Netns::new("bv");
    let daemon = Daemon::start(&format!(
        "[[network]]\nname = \"n\"\nsubnet = \"10.74.0.0/24\"\nipv6 = \"off\"\ndhcp = false\ndns_upstreams = [\"127.0.0.1:9\"]\n{}{}",
        netns_port("n", "atk", &atk),
        netns_port("n", "vic", &vic),
    ));
    for (ns, addr) in [(&atk, "10.74.0.10/24"), (&vic, "10.74.0.20/24")] {
        ns.ip(&["link", "set", "lo", "up"]);
        ns.ip(&["addr", "add", addr, "dev", "eth0"]);
    }
    let ask = |what: &str| {
        let out = python(&vic, 15, ASK, &["10.74.0.1"]);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("ok"),
            "{what}: the other guest's DNS query failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            daemon.log()
        );
    };
    ask("before the flood");
    let pid = daemon.pid();
    let base = rss_kib(pid);
    assert!(base > 0, "RSS of {pid}");

    let flood_secs = 20;
    let mut flood = Child(
        Command::new("timeout")
            .arg((flood_secs + 15).to_string())
            .args(["ip", "netns", "exec", &atk.name, "python3", "-c", FLOOD])
            .args(["10.74.0.1", &flood_secs.to_string(), "16"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the flood"),
    );
    let start = Instant::now();
    let mut peak = base;
    let mut asked = false;
    let deadline = start + Duration::from_secs(flood_secs + 15);
    loop {
        peak = peak.max(rss_kib(pid));
        if !asked && start.elapsed() > Duration::from_secs(flood_secs / 2) {
            ask("during the flood");
            asked = true;
        }
        if let Ok(Some(_)) = flood.0.try_wait() {
            break;
        }
        assert!(Instant::now() < deadline, "the flood did not end");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut report = String::new();
    if let Some(mut o) = flood.0.stdout.take() {
        let _ = o.read_to_string(&mut report);
    }
    let mut err = String::new();
    if let Some(mut e) = flood.0.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    assert!(report.contains("sent="), "flood: {report} {err}");
    let grown_mib = peak.saturating_sub(base) as f64 / 1024.0;
    eprintln!(
        "flood: {} peak RSS {peak} KiB (+{grown_mib:.1} MiB)",
        report.trim()
    );
    assert!(
        grown_mib < 6.0,
        "RSS grew by {grown_mib:.1} MiB under the pipelining flood ({})",
        report.trim()
    );
    // The per-client cap: at most 8 of the 16 connections were kept.
    let open: usize = report
        .split("open=")
        .nth(1)
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(usize::MAX);
    assert!(open <= 8, "{report}");
    ask("after the flood");
}
