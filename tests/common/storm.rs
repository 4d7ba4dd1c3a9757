//! Shared by the hostile-traffic tests (`e2e_storm_*.rs`): a `usernet up` daemon with the
//! helpers those tests need (ports in namespaces, counters, ping, iperf3), loopback servers
//! (a sink, an echo), and NAT helpers. Traffic stays on loopback and inside namespaces the tests
//! create.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{Child, Netns};
use serde_json::Value;
use usernet::link::netns::run_in_netns;

pub const BIN: &str = env!("CARGO_BIN_EXE_usernet");
pub const NO_UPSTREAM: &str = "127.0.0.1:9";
pub const INGRESS_DROPS: [&str; 14] = [
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
    "unmapped_vlan",
];

// ---------------------------------------------------------------------------------------------
// The daemon, with its pid (for liveness and resident memory).
// ---------------------------------------------------------------------------------------------

/// The storm tests' daemon: the common one, with the checks below.
pub use super::daemon::Daemon as Usernet;

/// What the storm tests ask of their daemon beyond the common helpers.
pub trait StormChecks {
    /// The `stats` object of port `name`.
    fn port_stats(&self, name: &str) -> Value;
    /// The first gateway's info.
    fn gateway(&self) -> Value;
    /// Asserts the daemon is alive and answers its control socket.
    fn assert_healthy(&mut self, when: &str);
    /// Every port's received frames are forwarded or dropped for exactly one ingress reason.
    fn assert_accounting(&self);
}

impl StormChecks for Usernet {
    /// The `stats` object of port `name`.
    fn port_stats(&self, name: &str) -> Value {
        self.ctl(&["stats"])
            .as_array()
            .and_then(|v| v.iter().find(|r| r["port"] == name))
            .map(|r| r["stats"].clone())
            .unwrap_or_else(|| panic!("no port {name} in stats"))
    }

    /// The first gateway's info.
    fn gateway(&self) -> Value {
        self.ctl(&["gateway"])[0].clone()
    }

    /// Asserts the daemon is alive and answers its control socket.
    fn assert_healthy(&mut self, when: &str) {
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
    fn assert_accounting(&self) {
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
