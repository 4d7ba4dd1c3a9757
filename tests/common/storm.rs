//! Shared by the hostile-traffic tests (`e2e_storm_*.rs`): a `usernet up` daemon with the
//! helpers those tests need (ports in namespaces, counters, ping, iperf3), loopback servers
//! (a sink, an echo), and NAT helpers. Traffic stays on loopback and inside namespaces the tests
//! create.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{Child, Netns};
use serde_json::Value;
use usernet::link::netns::run_in_netns;

pub const BIN: &str = env!("CARGO_BIN_EXE_usernet");
pub const NO_UPSTREAM: &str = "127.0.0.1:9";
pub const INGRESS_DROPS: [&str; 13] = [
    "runt",
    "oversize",
    "invalid_source",
    "reserved",
    "policy",
    "hairpin",
    "no_destination",
    "spoofed_source",
    "spoofed_ip",
    "spoofed_arp",
    "spoofed_nd",
    "rogue_server",
    "address_limit",
];

// ---------------------------------------------------------------------------------------------
// The daemon, with its pid (for liveness and resident memory).
// ---------------------------------------------------------------------------------------------

/// A `usernet up` daemon with its own config, socket and log in a temp dir; stopped on drop.
/// Like `common::daemon::Daemon`, but keeps the pid so a test can read `/proc/PID/status`.
pub struct Usernet {
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
    pub pid: i32,
}

impl Usernet {
    pub fn start(config: &str) -> Usernet {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dir.path().join("usernet.toml");
        std::fs::write(&cfg, config).expect("write config");
        let log = std::fs::File::create(dir.path().join("log")).expect("log");
        let child = Command::new(BIN)
            .args(["up", "-c"])
            .arg(&cfg)
            .arg("--socket")
            .arg(dir.path().join("sock"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn usernet up");
        let pid = child.id() as i32;
        let mut u = Usernet {
            dir,
            child: Some(Child(child)),
            pid,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !u.sock().exists() {
            assert!(u.alive(), "daemon exited at start: {}", u.log());
            assert!(
                Instant::now() < deadline,
                "daemon did not start: {}",
                u.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        u
    }

    pub fn sock(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    pub fn log(&self) -> String {
        let s = std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default();
        // The tail is what matters; keep panic messages readable.
        let skip = s.len().saturating_sub(8000);
        s.get(skip..).unwrap_or(&s).to_string()
    }

    /// True while the process has not exited.
    pub fn alive(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.0.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Resident memory in KiB (`VmRSS`).
    pub fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        s.lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    pub fn ctl_raw(&self, args: &[&str]) -> std::process::Output {
        Command::new("timeout")
            .arg("20")
            .arg(BIN)
            .arg("ctl")
            .arg("--socket")
            .arg(self.sock())
            .arg("--json")
            .args(args)
            .output()
            .expect("run usernet ctl")
    }

    /// `usernet ctl --json ARGS`, parsed; panics with the daemon log on failure.
    pub fn ctl(&self, args: &[&str]) -> Value {
        let out = self.ctl_raw(args);
        assert!(
            out.status.success(),
            "usernet ctl {}: {}\ndaemon log:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        serde_json::from_slice(&out.stdout).expect("ctl JSON")
    }

    /// The `stats` object of port `name`.
    pub fn port_stats(&self, name: &str) -> Value {
        self.ctl(&["stats"])
            .as_array()
            .and_then(|v| v.iter().find(|r| r["port"] == name))
            .map(|r| r["stats"].clone())
            .unwrap_or_else(|| panic!("no port {name} in stats"))
    }

    /// The first gateway's info.
    pub fn gateway(&self) -> Value {
        self.ctl(&["gateway"])[0].clone()
    }

    /// Asserts the daemon is alive and answers its control socket.
    pub fn assert_healthy(&mut self, when: &str) {
        assert!(self.alive(), "usernet died {when}:\n{}", self.log());
        let out = self.ctl_raw(&["ports"]);
        assert!(
            out.status.success(),
            "ctl does not answer {when}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    /// Every port's received frames are forwarded or dropped for exactly one ingress reason.
    /// Counters of frames in flight may lag for a moment: retried for a bounded time.
    pub fn assert_accounting(&self) {
        let mut last = Value::Null;
        for _ in 0..30 {
            let stats = self.ctl(&["stats"]);
            let bad: Vec<String> = stats
                .as_array()
                .expect("array")
                .iter()
                .filter_map(|row| {
                    let st = &row["stats"];
                    let rx = st["rx_frames"].as_u64().unwrap_or(0);
                    let fwd = st["forwarded"].as_u64().unwrap_or(0);
                    let drops: u64 = INGRESS_DROPS.iter().map(|k| drop_of(st, k)).sum();
                    (rx != fwd + drops).then(|| {
                        format!(
                            "{}: rx {rx} != forwarded {fwd} + drops {drops}",
                            row["port"]
                        )
                    })
                })
                .collect();
            if bad.is_empty() {
                return;
            }
            last = stats;
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("accounting does not add up: {last}");
    }
}

impl Drop for Usernet {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(c.0.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.0.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            // Child's Drop kills it.
        }
    }
}

pub fn drop_of(st: &Value, reason: &str) -> u64 {
    st["drops"][reason].as_u64().unwrap_or(0)
}

pub fn drops_summary(st: &Value) -> String {
    st["drops"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(_, v)| v.as_u64().unwrap_or(0) > 0)
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Namespaces, addresses, iperf3.
// ---------------------------------------------------------------------------------------------

pub fn network(name: &str, extra: &str) -> String {
    format!("[[network]]\nname = \"{name}\"\n{extra}\n")
}

pub fn netns_port(net: &str, name: &str, ns: &Netns) -> String {
    format!(
        "[[port]]\nnetwork = \"{net}\"\nname = \"{name}\"\nnetns = \"{}\"\n",
        ns.path().display()
    )
}

/// Static address on `eth0` (and lo up), optionally a default route.
pub fn guest(ns: &Netns, cidr: &str, gw: Option<&str>) {
    ns.ip(&["link", "set", "lo", "up"]);
    ns.ip(&["addr", "add", cidr, "dev", "eth0"]);
    if let Some(gw) = gw {
        ns.ip(&["route", "add", "default", "via", gw]);
    }
}

pub fn mac_of(ns: &Netns, ifname: &str) -> [u8; 6] {
    parse_mac(
        ns.exec_ok(&["cat", &format!("/sys/class/net/{ifname}/address")])
            .trim(),
    )
}

pub fn parse_mac(s: &str) -> [u8; 6] {
    let v: Vec<u8> = s
        .split(':')
        .map(|x| u8::from_str_radix(x, 16).expect("hex"))
        .collect();
    v.try_into().expect("6 bytes")
}

pub fn fmt_mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Replies received by `ping -c count` from `ns` to `dst`.
pub fn ping_count(ns: &Netns, dst: &str, count: u32, interval: &str) -> u32 {
    let out = ns.exec(&[
        "ping",
        "-q",
        "-c",
        &count.to_string(),
        "-i",
        interval,
        "-W",
        "1",
        dst,
    ]);
    let s = String::from_utf8_lossy(&out.stdout);
    // "N packets transmitted, M received"
    s.split(',')
        .find(|p| p.contains("received"))
        .and_then(|p| p.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

pub fn ping_ok(ns: &Netns, dst: &str) -> bool {
    // Up to three tries of two pings: the first may wait for ARP.
    (0..3).any(|_| ping_count(ns, dst, 2, "0.2") >= 1)
}

/// A persistent `iperf3 -s` bound to `ip` in `ns`, killed on drop.
pub fn iperf3_server(ns: &Netns, ip: &str) -> Child {
    let server = Child(
        Command::new("ip")
            .args(["netns", "exec", &ns.name, "iperf3", "-s", "-B", ip])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("iperf3 -s"),
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ns.exec_ok(&["ss", "-ltn"]).contains(&format!("{ip}:5201")) {
        assert!(Instant::now() < deadline, "iperf3 server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    server
}

/// One TCP iperf3 run of `secs` seconds from `ns` to `server`; received bits per second.
pub fn iperf3(ns: &Netns, server: &str, secs: u32) -> f64 {
    let mut last = String::new();
    // The server answers one client at a time; a run that collides with the previous one's
    // teardown is retried once.
    for _ in 0..2 {
        let out = ns.exec(&["iperf3", "-c", server, "-t", &secs.to_string(), "-J"]);
        if out.status.success() {
            let v: Value = serde_json::from_slice(&out.stdout).expect("iperf3 JSON");
            let bps = v["end"]["sum_received"]["bits_per_second"]
                .as_f64()
                .unwrap_or(0.0);
            if bps > 0.0 {
                return bps;
            }
        }
        last = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!("iperf3 from {} to {server} failed: {last}", ns.name);
}

// ---------------------------------------------------------------------------------------------
// Raw frames.
// ---------------------------------------------------------------------------------------------

/// A raw IPv4 socket (`IPPROTO_RAW`, header included) opened inside a namespace.
pub struct Sink {
    pub port: u16,
    pub stop: Arc<AtomicBool>,
    pub accepted: Arc<AtomicU64>,
}

impl Sink {
    pub fn start() -> Sink {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        l.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let (st, acc) = (stop.clone(), accepted.clone());
        std::thread::spawn(move || {
            let mut held = Vec::new();
            let mut buf = [0u8; 4096];
            while !st.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((c, _)) => {
                        let _ = c.set_nonblocking(true);
                        acc.fetch_add(1, Ordering::Relaxed);
                        held.push(c);
                    }
                    Err(_) => {
                        held.retain_mut(|c: &mut TcpStream| !matches!(c.read(&mut buf), Ok(0)));
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
        });
        Sink {
            port,
            stop,
            accepted,
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A loopback TCP echo server (one thread per connection) until dropped.
pub struct Echo {
    pub port: u16,
    pub stop: Arc<AtomicBool>,
}

impl Echo {
    pub fn start() -> Echo {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        l.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut c, _)) => {
                        let st2 = st.clone();
                        std::thread::spawn(move || {
                            let _ = c.set_nonblocking(false);
                            let _ = c.set_read_timeout(Some(Duration::from_millis(200)));
                            let mut buf = [0u8; 4096];
                            while !st2.load(Ordering::Relaxed) {
                                match c.read(&mut buf) {
                                    Ok(0) => break,
                                    Ok(n) => {
                                        if c.write_all(&buf[..n]).is_err() {
                                            break;
                                        }
                                    }
                                    Err(e)
                                        if e.kind() == std::io::ErrorKind::WouldBlock
                                            || e.kind() == std::io::ErrorKind::TimedOut => {}
                                    Err(_) => break,
                                }
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Echo { port, stop }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Ports on the host's loopback that nothing listens on (bound, then released).
pub fn closed_tcp_ports(n: usize) -> Vec<u16> {
    let ls: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    ls.iter()
        .map(|l| l.local_addr().expect("addr").port())
        .collect()
}

/// One echo round trip over a fresh connection from `ns` to `to`.
pub fn new_conn_echo(ns: &Netns, to: SocketAddr) -> Result<(), String> {
    run_in_netns(&ns.path(), move || {
        let mut c = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
        c.set_read_timeout(Some(Duration::from_secs(3)))?;
        c.write_all(b"hello again")?;
        let mut buf = [0u8; 11];
        c.read_exact(&mut buf)?;
        if &buf != b"hello again" {
            return Err(std::io::Error::other("echo mismatch"));
        }
        Ok(())
    })
    .map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------------------------
// 1. Malformed storm.
// ---------------------------------------------------------------------------------------------

/// Host-side connections from the daemon to `port` on loopback that are established.
pub fn host_conns_to(port: u16) -> usize {
    let out = Command::new("timeout")
        .args(["10", "ss", "-Htn", "state", "established"])
        .arg(format!("dport = :{port}"))
        .output()
        .expect("ss");
    String::from_utf8_lossy(&out.stdout).lines().count()
}
