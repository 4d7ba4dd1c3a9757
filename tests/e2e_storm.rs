//! End-to-end hostile-traffic tests: a `usernet up` daemon serving namespaces on TAP and
//! AF_PACKET ports while one guest misbehaves — storms of malformed frames, a MAC flood, SYN and
//! UDP floods against the NAT, a guest that never drains its port. Each test checks that the
//! daemon survives, that the other guests keep working (throughput compared with a baseline
//! measured in the same test, never an absolute figure), and that the damage is counted under
//! the right reason. Traffic stays on loopback and inside namespaces these tests create. Need
//! root; skipped (or failed, with USERNET_REQUIRE_PRIV=1) otherwise.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::raw::RawEth;
use common::{Child, Netns, Veth, require_root};
use serde_json::Value;
use usernet::link::netns::run_in_netns;

const BIN: &str = env!("CARGO_BIN_EXE_usernet");
const NO_UPSTREAM: &str = "127.0.0.1:9";
const INGRESS_DROPS: [&str; 13] = [
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
struct Usernet {
    dir: tempfile::TempDir,
    child: Option<Child>,
    pid: i32,
}

impl Usernet {
    fn start(config: &str) -> Usernet {
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

    fn sock(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    fn log(&self) -> String {
        let s = std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default();
        // The tail is what matters; keep panic messages readable.
        let skip = s.len().saturating_sub(8000);
        s.get(skip..).unwrap_or(&s).to_string()
    }

    /// True while the process has not exited.
    fn alive(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.0.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Resident memory in KiB (`VmRSS`).
    fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        s.lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    fn ctl_raw(&self, args: &[&str]) -> std::process::Output {
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
    fn ctl(&self, args: &[&str]) -> Value {
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

fn drop_of(st: &Value, reason: &str) -> u64 {
    st["drops"][reason].as_u64().unwrap_or(0)
}

fn drops_summary(st: &Value) -> String {
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

fn network(name: &str, extra: &str) -> String {
    format!("[[network]]\nname = \"{name}\"\n{extra}\n")
}

fn netns_port(net: &str, name: &str, ns: &Netns) -> String {
    format!(
        "[[port]]\nnetwork = \"{net}\"\nname = \"{name}\"\nnetns = \"{}\"\n",
        ns.path().display()
    )
}

/// Static address on `eth0` (and lo up), optionally a default route.
fn guest(ns: &Netns, cidr: &str, gw: Option<&str>) {
    ns.ip(&["link", "set", "lo", "up"]);
    ns.ip(&["addr", "add", cidr, "dev", "eth0"]);
    if let Some(gw) = gw {
        ns.ip(&["route", "add", "default", "via", gw]);
    }
}

fn mac_of(ns: &Netns, ifname: &str) -> [u8; 6] {
    parse_mac(
        ns.exec_ok(&["cat", &format!("/sys/class/net/{ifname}/address")])
            .trim(),
    )
}

fn parse_mac(s: &str) -> [u8; 6] {
    let v: Vec<u8> = s
        .split(':')
        .map(|x| u8::from_str_radix(x, 16).expect("hex"))
        .collect();
    v.try_into().expect("6 bytes")
}

fn fmt_mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Replies received by `ping -c count` from `ns` to `dst`.
fn ping_count(ns: &Netns, dst: &str, count: u32, interval: &str) -> u32 {
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

fn ping_ok(ns: &Netns, dst: &str) -> bool {
    // Up to three tries of two pings: the first may wait for ARP.
    (0..3).any(|_| ping_count(ns, dst, 2, "0.2") >= 1)
}

/// A persistent `iperf3 -s` bound to `ip` in `ns`, killed on drop.
fn iperf3_server(ns: &Netns, ip: &str) -> Child {
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
fn iperf3(ns: &Netns, server: &str, secs: u32) -> f64 {
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
struct RawIp {
    fd: OwnedFd,
}

impl RawIp {
    fn open(ns: &Netns) -> RawIp {
        run_in_netns(&ns.path(), || {
            // SAFETY: plain socket(2); the fd is owned right away.
            let fd = unsafe {
                libc::socket(
                    libc::AF_INET,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    libc::IPPROTO_RAW,
                )
            };
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: a fresh descriptor nobody else owns.
            Ok(RawIp {
                fd: unsafe { OwnedFd::from_raw_fd(fd) },
            })
        })
        .expect("raw IP socket in namespace")
    }

    fn send(&self, packet: &[u8], dst: Ipv4Addr) -> bool {
        // SAFETY: sockaddr_in is plain data; zero is valid.
        let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        sa.sin_family = libc::AF_INET as u16;
        sa.sin_addr.s_addr = u32::from_ne_bytes(dst.octets());
        // SAFETY: `packet` is valid for reads of its length; `sa` is a valid sockaddr_in.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                libc::MSG_DONTWAIT,
                (&sa as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        n >= 0
    }
}

/// xorshift64: deterministic test randomness.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    /// A random unicast, locally administered MAC.
    fn mac(&mut self) -> [u8; 6] {
        let b = self.next().to_le_bytes();
        [(b[0] & 0xfc) | 0x02, b[1], b[2], b[3], b[4], b[5]]
    }
}

const BCAST: [u8; 6] = [0xff; 6];

fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn csum_add(mut sum: u32, data: &[u8]) -> u32 {
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += u32::from(w);
    }
    sum
}

fn csum_fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A well-formed IPv4 header (checksum right) followed by `payload`.
fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload: &[u8]) -> Vec<u8> {
    let total = (20 + payload.len()) as u16;
    let mut h = vec![0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, proto, 0, 0];
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    let c = csum_fold(csum_add(0, &h));
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

/// Recomputes the IPv4 header checksum after a header field was changed.
fn fix_ipv4_csum(p: &mut [u8]) {
    let ihl = usize::from(p[0] & 0x0f) * 4;
    if ihl < 20 || p.len() < ihl {
        return;
    }
    p[10] = 0;
    p[11] = 0;
    let c = csum_fold(csum_add(0, &p[..ihl]));
    p[10..12].copy_from_slice(&c.to_be_bytes());
}

fn udp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::with_capacity(8 + payload.len());
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]); // no checksum (allowed for IPv4)
    u.extend_from_slice(payload);
    ipv4(src, dst, 17, &u)
}

/// IPv4 + TCP with `flags`, data offset `doff` (words) and a correct checksum.
fn tcp(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    flags: u8,
    seq: u32,
    doff: u8,
) -> Vec<u8> {
    let mut t = Vec::with_capacity(20);
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&seq.to_be_bytes());
    t.extend_from_slice(&0u32.to_be_bytes());
    t.push(doff << 4);
    t.push(flags);
    t.extend_from_slice(&64240u16.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 0]);
    let mut sum = csum_add(0, &src.octets());
    sum = csum_add(sum, &dst.octets());
    sum = csum_add(sum, &[0, 6]);
    sum = csum_add(sum, &(t.len() as u16).to_be_bytes());
    let c = csum_fold(csum_add(sum, &t));
    t[16..18].copy_from_slice(&c.to_be_bytes());
    ipv4(src, dst, 6, &t)
}

/// IPv6 header with a claimed payload length (possibly a lie), then `payload`.
fn ipv6(src: [u8; 16], dst: [u8; 16], next: u8, claimed_len: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&claimed_len.to_be_bytes());
    p.push(next);
    p.push(255);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(payload);
    p
}

/// ICMPv6 message with a correct checksum, in an IPv6 packet with the true length.
fn icmp6(src: [u8; 16], dst: [u8; 16], msg: &[u8]) -> Vec<u8> {
    let mut m = msg.to_vec();
    if m.len() >= 4 {
        m[2] = 0;
        m[3] = 0;
        let mut sum = csum_add(0, &src);
        sum = csum_add(sum, &dst);
        sum = csum_add(sum, &(m.len() as u32).to_be_bytes());
        sum = csum_add(sum, &[0, 0, 0, 58]);
        let c = csum_fold(csum_add(sum, &m));
        m[2..4].copy_from_slice(&c.to_be_bytes());
    }
    ipv6(src, dst, 58, m.len() as u16, &m)
}

fn link_local(mac: [u8; 6]) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[0] = 0xfe;
    a[1] = 0x80;
    a[8] = mac[0] ^ 0x02;
    a[9] = mac[1];
    a[10] = mac[2];
    a[11] = 0xff;
    a[12] = 0xfe;
    a[13] = mac[3];
    a[14] = mac[4];
    a[15] = mac[5];
    a
}

/// Who is who in the malformed storm.
struct Targets {
    a_mac: [u8; 6],
    a_ip: Ipv4Addr,
    gw_mac: [u8; 6],
    gw_ip: Ipv4Addr,
    b_mac: [u8; 6],
    b_ip: Ipv4Addr,
    /// A TCP port on the host's loopback that this test owns (NAT target).
    sink_port: u16,
}

/// The malformed frames of the storm, by category. Deterministic from `seed`.
fn malformed_frames(t: &Targets, seed: u64) -> Vec<(&'static str, Vec<u8>)> {
    let mut r = Rng::new(seed);
    let mut v: Vec<(&'static str, Vec<u8>)> = Vec::new();
    let (a, gw, b) = (t.a_mac, t.gw_mac, t.b_mac);
    let spare_ip = |r: &mut Rng| Ipv4Addr::new(10, 81, 0, 100 + r.below(100) as u8);

    // Runts: shorter than an Ethernet header (the kernel may refuse them).
    for n in 0..14 {
        let mut f = r.bytes(n);
        if n >= 7 {
            f[6] &= 0xfe; // unicast source, so that only the length is wrong
        }
        v.push(("runt", f));
    }
    // Truncated VLAN tags: 802.1Q, 802.1ad and old QinQ ethertypes with 0-3 bytes of tag.
    for et in [0x8100u16, 0x88a8, 0x9100] {
        for extra in 0..4 {
            for dst in [gw, b, BCAST] {
                v.push(("vlan_trunc", eth(dst, a, et, &r.bytes(extra))));
            }
        }
    }
    // A complete tag around garbage, and a tag on a frame to the gateway.
    v.push((
        "vlan_tag",
        eth(gw, a, 0x8100, &[0x0f, 0xff, 0x08, 0x00, 0x45]),
    ));
    // Oversize: beyond the 1500-byte MTU (a's eth0 claims 9000).
    for n in [1515usize, 1600, 4000, 9000, 9014] {
        let mut p = udp(t.a_ip, t.b_ip, 9, 9, &r.bytes(n - 14 - 28));
        p.truncate(n - 14);
        v.push(("oversize", eth(b, a, 0x0800, &p)));
    }
    // Invalid sources: multicast, broadcast, all-zero.
    for src in [
        [0x01, 0x00, 0x5e, 0x00, 0x00, 0x01],
        [0x33, 0x33, 0x00, 0x00, 0x00, 0x01],
        BCAST,
        [0; 6],
    ] {
        v.push(("bad_source", eth(b, src, 0x0800, &r.bytes(46))));
    }
    // 802.1D reserved destinations (STP, LACP, LLDP...).
    for last in [0x00u8, 0x01, 0x02, 0x03, 0x0e] {
        v.push((
            "reserved",
            eth([0x01, 0x80, 0xc2, 0, 0, last], a, 0x0027, &r.bytes(46)),
        ));
    }
    // IPv4 headers that lie.
    for dst_mac in [gw, b] {
        let dst_ip = if dst_mac == gw { t.gw_ip } else { t.b_ip };
        let good = udp(t.a_ip, dst_ip, 5353, 53, &r.bytes(30));
        let mut lies: Vec<Vec<u8>> = Vec::new();
        let mut p = good.clone();
        p[2..4].copy_from_slice(&1400u16.to_be_bytes()); // total length > frame
        fix_ipv4_csum(&mut p);
        lies.push(p);
        let mut p = good.clone();
        p[2..4].copy_from_slice(&10u16.to_be_bytes()); // total length < header
        fix_ipv4_csum(&mut p);
        lies.push(p);
        for ihl in [0u8, 4, 15] {
            let mut p = good.clone();
            p[0] = 0x40 | ihl;
            lies.push(p);
        }
        let mut p = good.clone();
        p[0] = 0x65; // version 6 in an IPv4 ethertype
        lies.push(p);
        let mut p = good.clone();
        p[10] ^= 0xff; // bad header checksum
        lies.push(p);
        let mut p = good.clone();
        p.truncate(12); // cut inside the header
        lies.push(p);
        let mut p = good.clone();
        p[24..26].copy_from_slice(&60000u16.to_be_bytes()); // UDP length > packet
        lies.push(p);
        let mut p = good.clone();
        p[24..26].copy_from_slice(&3u16.to_be_bytes()); // UDP length < header
        lies.push(p);
        lies.push(ipv4(t.a_ip, dst_ip, 6, &r.bytes(7))); // TCP header cut short
        lies.push(ipv4(t.a_ip, dst_ip, 1, &[8])); // ICMP cut short
        lies.push(ipv4(t.a_ip, dst_ip, 253, &r.bytes(40))); // unknown protocol
        for p in lies {
            v.push(("ipv4_lies", eth(dst_mac, a, 0x0800, &p)));
        }
        // Fragments: first (MF), middle, last, overlapping, tiny.
        for (off, mf) in [
            (0u16, true),
            (185, true),
            (370, false),
            (1, true),
            (8191, false),
        ] {
            let mut p = udp(t.a_ip, dst_ip, 5353, 53, &r.bytes(64));
            let fo = off | if mf { 0x2000 } else { 0 };
            p[6..8].copy_from_slice(&fo.to_be_bytes());
            fix_ipv4_csum(&mut p);
            v.push(("fragment", eth(dst_mac, a, 0x0800, &p)));
        }
    }
    // IPv6 headers that lie (to the gateway and to all nodes).
    let a6 = link_local(a);
    let gw6 = link_local(gw);
    let all_nodes = {
        let mut x = [0u8; 16];
        x[0] = 0xff;
        x[1] = 0x02;
        x[15] = 1;
        x
    };
    let mc_all = [0x33, 0x33, 0, 0, 0, 1];
    for (dmac, dip) in [(gw, gw6), (mc_all, all_nodes)] {
        v.push((
            "ipv6_lies",
            eth(dmac, a, 0x86dd, &ipv6(a6, dip, 17, 4000, &r.bytes(20))),
        ));
        v.push((
            "ipv6_lies",
            eth(dmac, a, 0x86dd, &ipv6(a6, dip, 17, 0, &r.bytes(20))),
        ));
        v.push((
            "ipv6_lies",
            eth(dmac, a, 0x86dd, &ipv6(a6, dip, 0, 8, &[58, 200])),
        ));
        v.push(("ipv6_lies", eth(dmac, a, 0x86dd, &r.bytes(30))));
        // Fragment header, and a hop-by-hop chain ending in garbage.
        v.push((
            "ipv6_lies",
            eth(
                dmac,
                a,
                0x86dd,
                &ipv6(a6, dip, 44, 16, &[17, 0, 0, 1, 0, 0, 0, 9, 1, 2]),
            ),
        ));
        v.push((
            "ipv6_lies",
            eth(
                dmac,
                a,
                0x86dd,
                &ipv6(a6, dip, 0, 16, &[0, 255, 1, 2, 3, 4, 5, 6]),
            ),
        ));
    }
    // TCP with nonsense flags: to the gateway's DNS port, to a host port through NAT, to b.
    let mut flags_targets = vec![
        (gw, t.gw_ip, 53u16),
        (gw, t.gw_ip, t.sink_port),
        (b, t.b_ip, 5201),
        (b, t.b_ip, 7),
    ];
    flags_targets.dedup();
    for (dmac, dip, dport) in flags_targets {
        for flags in [0x00u8, 0x03, 0x07, 0x29, 0x3f, 0xff, 0x06, 0x41] {
            for doff in [5u8, 0, 15] {
                let sport = 40000 + r.below(20000) as u16;
                v.push((
                    "tcp_flags",
                    eth(
                        dmac,
                        a,
                        0x0800,
                        &tcp(t.a_ip, dip, sport, dport, flags, r.next() as u32, doff),
                    ),
                ));
            }
        }
    }
    // Bogus DHCP: broadcast to the server port.
    let dhcp = |body: &[u8]| {
        eth(
            BCAST,
            a,
            0x0800,
            &udp(Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST, 68, 67, body),
        )
    };
    for n in [0usize, 1, 50, 236, 300] {
        let body = r.bytes(n);
        v.push(("dhcp", dhcp(&body)));
    }
    let bootp = |r: &mut Rng, op: u8, hlen: u8, opts: &[u8]| {
        let mut m = vec![op, 1, hlen, 0];
        m.extend_from_slice(&r.bytes(4)); // xid
        m.extend_from_slice(&[0u8; 20]); // secs, flags, ciaddr, yiaddr, siaddr, giaddr
        let mut ch = [0u8; 16];
        ch[..6].copy_from_slice(&a);
        m.extend_from_slice(&ch);
        m.extend_from_slice(&[0u8; 192]); // sname, file
        m.extend_from_slice(&[99, 130, 83, 99]); // magic cookie
        m.extend_from_slice(opts);
        m
    };
    for (op, hlen, opts) in [
        (1u8, 6u8, vec![53, 1, 1, 55, 200, 1, 3]), // option length runs past the end
        (1, 6, vec![53, 0, 255]),                  // message type with no value
        (1, 6, vec![0; 40]),                       // pad only, no end
        (1, 255, vec![53, 1, 1, 255]),             // absurd hardware length
        (2, 6, vec![53, 1, 2, 255]),               // a reply sent to the server
        (1, 6, vec![53, 1, 3, 50, 4, 10, 81, 0, 1, 255]), // request the gateway's own address
        (1, 6, vec![53, 1, 1, 12, 255, 65, 66, 255]), // hostname longer than its option
        (1, 6, vec![53, 1, 99, 255]),              // unknown message type
        (1, 6, vec![52, 1, 3, 53, 1, 1, 255]),     // option overload into sname/file
    ] {
        let m = bootp(&mut r, op, hlen, &opts);
        v.push(("dhcp", dhcp(&m)));
    }
    // Bogus DNS to the gateway.
    let dns = |r: &mut Rng, body: &[u8]| {
        let sport = 30000 + r.below(30000) as u16;
        eth(gw, a, 0x0800, &udp(t.a_ip, t.gw_ip, sport, 53, body))
    };
    let hdr = |qd: u16, an: u16| {
        let mut h = vec![0x12, 0x34, 0x01, 0x00];
        h.extend_from_slice(&qd.to_be_bytes());
        h.extend_from_slice(&an.to_be_bytes());
        h.extend_from_slice(&[0, 0, 0, 0]);
        h
    };
    let mut bodies: Vec<Vec<u8>> = vec![
        vec![],
        r.bytes(5),
        r.bytes(12),
        r.bytes(100),
        r.bytes(512),
        hdr(65535, 0),
        hdr(1, 65535),
    ];
    let mut q = hdr(1, 0);
    q.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]); // name points at itself
    bodies.push(q);
    let mut q = hdr(1, 0);
    q.extend_from_slice(&[1, b'a', 0xc0, 0x0c, 0, 1, 0, 1]); // label then a loop back
    bodies.push(q);
    let mut q = hdr(2, 0);
    q.extend_from_slice(&[0xc0, 0x12, 0, 1, 0, 1, 0xc0, 0x0c, 0, 1, 0, 1]); // two-pointer cycle
    bodies.push(q);
    let mut q = hdr(1, 0);
    q.extend_from_slice(&[0xc0, 0xff]); // pointer past the end
    bodies.push(q);
    let mut q = hdr(1, 0);
    for _ in 0..6 {
        q.push(63);
        q.extend_from_slice(&[b'x'; 63]);
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]); // name longer than 255
    bodies.push(q);
    let mut q = hdr(1, 0);
    q.extend_from_slice(&[0x40, b'a', 0, 0, 1, 0, 1]); // reserved label type
    bodies.push(q);
    let mut q = hdr(1, 0);
    q.extend_from_slice(&[
        4, b'h', b'o', b's', b't', 7, b'u', b's', b'e', b'r', b'n', b'e', b't', 0,
    ]);
    q.extend_from_slice(&[0, 1]); // question cut before its class
    bodies.push(q);
    let mut q = hdr(1, 0);
    q[2] = 0xff; // QR set, opcode 15, every flag
    q[3] = 0xff;
    q.extend_from_slice(&[1, b'x', 0, 0, 1, 0, 1]);
    bodies.push(q);
    for body in bodies {
        v.push(("dns", dns(&mut r, &body)));
    }
    // Bogus ARP (never claiming b's or c's address).
    let arp =
        |htype: u16, hlen: u8, plen: u8, op: u16, sha: [u8; 6], spa: Ipv4Addr, tpa: Ipv4Addr| {
            let mut m = htype.to_be_bytes().to_vec();
            m.extend_from_slice(&0x0800u16.to_be_bytes());
            m.push(hlen);
            m.push(plen);
            m.extend_from_slice(&op.to_be_bytes());
            m.extend_from_slice(&sha);
            m.extend_from_slice(&spa.octets());
            m.extend_from_slice(&[0; 6]);
            m.extend_from_slice(&tpa.octets());
            m
        };
    for n in [0usize, 1, 8, 20, 27] {
        let full = arp(1, 6, 4, 1, a, t.a_ip, t.gw_ip);
        v.push(("arp", eth(BCAST, a, 0x0806, &full[..n])));
    }
    for (htype, hlen, plen, op) in [
        (1u16, 0u8, 4u8, 1u16),
        (1, 255, 4, 1),
        (1, 6, 255, 1),
        (6, 6, 4, 1),
        (1, 6, 4, 0),
        (1, 6, 4, 9),
        (1, 6, 4, 2),
    ] {
        let spa = spare_ip(&mut r);
        v.push((
            "arp",
            eth(
                BCAST,
                a,
                0x0806,
                &arp(htype, hlen, plen, op, a, spa, t.gw_ip),
            ),
        ));
    }
    // Sender 0.0.0.0 (probe), sender = the gateway (spoof), a broadcast sender MAC.
    v.push((
        "arp",
        eth(
            gw,
            a,
            0x0806,
            &arp(1, 6, 4, 1, a, Ipv4Addr::UNSPECIFIED, t.gw_ip),
        ),
    ));
    v.push((
        "arp",
        eth(gw, a, 0x0806, &arp(1, 6, 4, 1, a, t.gw_ip, t.gw_ip)),
    ));
    v.push((
        "arp",
        eth(gw, a, 0x0806, &arp(1, 6, 4, 1, BCAST, t.a_ip, t.gw_ip)),
    ));
    // Bogus NDP: solicitations with zero-length and overlong options, truncated messages.
    let sol_node = {
        let mut x = [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 0];
        x[13..16].copy_from_slice(&gw6[13..16]);
        x
    };
    let sol_mac = [0x33, 0x33, 0xff, gw6[13], gw6[14], gw6[15]];
    let mut ns_msg = vec![135, 0, 0, 0, 0, 0, 0, 0];
    ns_msg.extend_from_slice(&gw6);
    let with_opt = |m: &[u8], opt: &[u8]| {
        let mut x = m.to_vec();
        x.extend_from_slice(opt);
        x
    };
    let all_routers = [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
    let ndp_msgs: Vec<([u8; 6], [u8; 16], Vec<u8>)> = vec![
        (
            sol_mac,
            sol_node,
            with_opt(&ns_msg, &[1, 0, 0, 0, 0, 0, 0, 0]),
        ), // option length 0
        (sol_mac, sol_node, with_opt(&ns_msg, &[1, 200, 1, 2])), // option past the end
        (sol_mac, sol_node, ns_msg[..10].to_vec()),              // truncated target
        (
            gw,
            gw6,
            with_opt(&ns_msg, &[1, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
        ), // bcast lladdr
        (
            [0x33, 0x33, 0, 0, 0, 2],
            all_routers,
            vec![133, 0, 0, 0, 0, 0, 0, 0, 1, 0],
        ), // RS with a zero-length option
        ([0x33, 0x33, 0, 0, 0, 2], all_routers, vec![133, 0]),   // RS cut short
        (gw, gw6, vec![136, 0, 0, 0, 0x20, 0, 0, 0]),            // NA without a target
        (gw, gw6, vec![137, 0, 0, 0]),                           // redirect cut short
        (gw, gw6, vec![128, 0, 0, 0, 0, 1]),                     // echo request cut short
    ];
    for (dmac, dip, msg) in ndp_msgs {
        v.push(("ndp", eth(dmac, a, 0x86dd, &icmp6(a6, dip, &msg))));
        // And the same with a wrong checksum.
        let mut p = icmp6(a6, dip, &msg);
        if p.len() > 43 {
            p[42] ^= 0x5a;
        }
        v.push(("ndp", eth(dmac, a, 0x86dd, &p)));
    }
    // Random garbage with a unicast source, any ethertype.
    for _ in 0..32 {
        let n = 14 + r.below(200) as usize;
        let mut f = r.bytes(n);
        f[6] &= 0xfe;
        let dst = [gw, b, BCAST][r.below(3) as usize];
        f[..6].copy_from_slice(&dst);
        v.push(("garbage", f));
    }
    v
}

// ---------------------------------------------------------------------------------------------
// Host-side servers (loopback only).
// ---------------------------------------------------------------------------------------------

/// A loopback TCP listener that accepts and holds connections (reading and discarding) until
/// dropped.
struct Sink {
    port: u16,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
}

impl Sink {
    fn start() -> Sink {
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
struct Echo {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl Echo {
    fn start() -> Echo {
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
fn closed_tcp_ports(n: usize) -> Vec<u16> {
    let ls: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    ls.iter()
        .map(|l| l.local_addr().expect("addr").port())
        .collect()
}

/// One echo round trip over a fresh connection from `ns` to `to`.
fn new_conn_echo(ns: &Netns, to: SocketAddr) -> Result<(), String> {
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

#[test]
fn malformed_storm_does_not_hurt_others() {
    if !require_root("malformed_storm_does_not_hurt_others") {
        return;
    }
    let a = Netns::new("sa");
    let b = Netns::new("sb");
    let c = Netns::new("sc");
    let mut u = Usernet::start(&format!(
        "{}{}{}{}",
        network(
            "n",
            &format!(
                "subnet = \"10.81.0.0/24\"\nipv6 = \"off\"\ndns_upstreams = [\"{NO_UPSTREAM}\"]"
            )
        ),
        netns_port("n", "a", &a),
        netns_port("n", "b", &b),
        netns_port("n", "c", &c)
    ));
    guest(&a, "10.81.0.4/24", Some("10.81.0.1"));
    guest(&b, "10.81.0.2/24", Some("10.81.0.1"));
    guest(&c, "10.81.0.3/24", Some("10.81.0.1"));
    // The hostile guest claims jumbo frames on a 1500-byte network.
    a.ip(&["link", "set", "eth0", "mtu", "9000"]);
    assert!(ping_ok(&c, "10.81.0.2"), "c -> b\n{}", u.log());
    assert!(ping_ok(&a, "10.81.0.1"), "a -> gateway\n{}", u.log());
    assert!(ping_ok(&a, "10.81.0.2"), "a -> b");

    let gw = u.gateway();
    let gw_mac = parse_mac(gw["mac"].as_str().expect("gateway mac"));
    let sink = Sink::start();
    let targets = Targets {
        a_mac: mac_of(&a, "eth0"),
        a_ip: Ipv4Addr::new(10, 81, 0, 4),
        gw_mac,
        gw_ip: Ipv4Addr::new(10, 81, 0, 1),
        b_mac: mac_of(&b, "eth0"),
        b_ip: Ipv4Addr::new(10, 81, 0, 2),
        sink_port: sink.port,
    };
    let frames = malformed_frames(&targets, 0x5eed_0001);
    let raw = RawEth::open(&a, "eth0");

    let _server = iperf3_server(&b, "10.81.0.2");
    let baseline = iperf3(&c, "10.81.0.2", 4);
    let malformed0 = gw["counters"]["malformed"].as_u64().unwrap_or(0);
    let a0 = u.port_stats("a");

    // The storm, paced in bursts, until the measured run is over (bounded in frames and time).
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    let storm = std::thread::spawn(move || {
        let mut tally: BTreeMap<&'static str, (u64, u64)> = BTreeMap::new();
        let mut errnos: BTreeMap<i32, u64> = BTreeMap::new();
        let start = Instant::now();
        let mut sent = 0u64;
        let mut i = 0usize;
        while sent < 400_000 && start.elapsed() < Duration::from_secs(12) {
            if st.load(Ordering::Relaxed) && sent >= 20_000 {
                break;
            }
            for _ in 0..64 {
                let (cat, f) = &frames[i % frames.len()];
                i += 1;
                let e = tally.entry(cat).or_default();
                match raw.send(f) {
                    Ok(()) => e.0 += 1,
                    Err(errno) => {
                        e.1 += 1;
                        *errnos.entry(errno).or_default() += 1;
                    }
                }
                sent += 1;
            }
            std::thread::sleep(Duration::from_millis(4));
        }
        (sent, tally, errnos, start.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300));
    let during = iperf3(&c, "10.81.0.2", 4);
    stop.store(true, Ordering::Relaxed);
    let (sent, tally, errnos, took) = storm.join().expect("storm thread");

    u.assert_healthy("after the malformed storm");
    let accepted: u64 = tally.values().map(|t| t.0).sum();
    eprintln!(
        "malformed storm: {sent} frames in {took:?}, kernel accepted {accepted}; by category (accepted, refused): {tally:?}; refusal errnos: {errnos:?}"
    );
    eprintln!(
        "iperf3 c -> b: baseline {:.2} Gbit/s, during storm {:.2} Gbit/s ({:.0}%)",
        baseline / 1e9,
        during / 1e9,
        100.0 * during / baseline
    );
    assert!(sent >= 20_000, "only {sent} frames sent");
    assert!(
        during >= baseline / 5.0,
        "throughput during the storm {during:.0} < 1/5 of baseline {baseline:.0}"
    );

    // Drops by reason on a, and the gateway saw malformed frames.
    let a1 = u.port_stats("a");
    let rose = |k: &str| drop_of(&a1, k).saturating_sub(drop_of(&a0, k));
    eprintln!(
        "port a drops: {} (rx_frames {} forwarded {})",
        drops_summary(&a1),
        a1["rx_frames"],
        a1["forwarded"]
    );
    for k in ["runt", "invalid_source", "reserved"] {
        assert!(rose(k) > 0, "port a {k} drops did not rise: {a1}");
    }
    if tally.get("oversize").is_some_and(|t| t.0 > 0) {
        assert!(
            rose("oversize") > 0,
            "oversize frames accepted by the kernel not counted: {a1}"
        );
    }
    let gw1 = u.gateway();
    let malformed1 = gw1["counters"]["malformed"].as_u64().unwrap_or(0);
    eprintln!(
        "gateway counters: {}; dhcp {}; dns {}",
        gw1["counters"], gw1["dhcp"], gw1["dns"]
    );
    assert!(
        malformed1 > malformed0,
        "gateway malformed counter did not rise: {gw1}"
    );
    u.assert_accounting();

    // Everyone still works.
    assert!(ping_ok(&c, "10.81.0.2"), "c -> b after the storm");
    assert!(ping_ok(&a, "10.81.0.1"), "a -> gateway after the storm");
    let dns = b.exec(&[
        "dig",
        "+short",
        "+time=2",
        "+tries=1",
        "@10.81.0.1",
        "c.usernet",
    ]);
    assert!(dns.status.success(), "gateway DNS after the storm");
    u.assert_healthy("at the end");
    eprintln!("usernet RSS after the storm: {} KiB", u.rss_kib());
}

// ---------------------------------------------------------------------------------------------
// 2. MAC flood.
// ---------------------------------------------------------------------------------------------

#[test]
fn mac_flood_keeps_other_ports() {
    if !require_root("mac_flood_keeps_other_ports") {
        return;
    }
    let a = Netns::new("ma");
    let b = Netns::new("mb");
    let c = Netns::new("mc");
    let mut u = Usernet::start(&format!(
        "{}{}{}{}",
        network("n", "gateway = false\nfdb_max_entries = 1024"),
        netns_port("n", "a", &a),
        netns_port("n", "b", &b),
        netns_port("n", "c", &c)
    ));
    guest(&a, "10.82.0.1/24", None);
    guest(&b, "10.82.0.2/24", None);
    guest(&c, "10.82.0.3/24", None);
    assert!(ping_ok(&b, "10.82.0.3"), "b -> c\n{}", u.log());
    let (bmac, cmac) = (fmt_mac(mac_of(&b, "eth0")), fmt_mac(mac_of(&c, "eth0")));
    let rss0 = u.rss_kib();

    let a_mac = mac_of(&a, "eth0");
    let raw = RawEth::open(&a, "eth0");
    let flood = std::thread::spawn(move || {
        let mut r = Rng::new(0xf100d);
        let (mut ok, mut refused) = (0u64, 0u64);
        let start = Instant::now();
        let mut payload = vec![0u8; 46];
        for i in 0..100_000u32 {
            if start.elapsed() > Duration::from_secs(15) {
                break;
            }
            let src = r.mac();
            let dst = if i % 2 == 0 { BCAST } else { r.mac() };
            payload[..4].copy_from_slice(&i.to_be_bytes());
            // The local experimental ethertype: receivers drop it at once.
            let f = eth(dst, src, 0x88b5, &payload);
            match raw.send_retry(&f) {
                Ok(()) => ok += 1,
                Err(_) => refused += 1,
            }
            if i % 128 == 127 {
                // A breath per burst so the flood lasts a few seconds and mostly reaches the
                // switch rather than overflowing the TAP's queue in a's kernel.
                std::thread::sleep(Duration::from_millis(4));
            }
        }
        let _ = a_mac;
        (ok, refused, start.elapsed())
    });

    // During the flood: the table stays capped, b and c keep talking.
    let mut max_entries = 0u64;
    let mut max_rss = rss0;
    let pinger = {
        let bname = b.name.clone();
        std::thread::spawn(move || {
            let out = Command::new("timeout")
                .args(["20", "ip", "netns", "exec", &bname])
                .args([
                    "ping",
                    "-q",
                    "-c",
                    "20",
                    "-i",
                    "0.1",
                    "-W",
                    "1",
                    "10.82.0.3",
                ])
                .output()
                .expect("ping");
            let s = String::from_utf8_lossy(&out.stdout).into_owned();
            s.split(',')
                .find(|p| p.contains("received"))
                .and_then(|p| p.split_whitespace().next())
                .and_then(|n| n.parse::<u32>().ok())
                .unwrap_or(0)
        })
    };
    let deadline = Instant::now() + Duration::from_secs(25);
    while !flood.is_finished() && Instant::now() < deadline {
        let n = u.ctl(&["networks"])[0]["fdb_entries"].as_u64().unwrap_or(0);
        max_entries = max_entries.max(n);
        max_rss = max_rss.max(u.rss_kib());
        std::thread::sleep(Duration::from_millis(100));
    }
    let (ok, refused, took) = flood.join().expect("flood thread");
    let replies_during = pinger.join().expect("pinger");
    u.assert_healthy("after the MAC flood");
    let nets = u.ctl(&["networks"]);
    let entries = nets[0]["fdb_entries"].as_u64().unwrap_or(0);
    max_entries = max_entries.max(entries);
    max_rss = max_rss.max(u.rss_kib());
    let st_a = u.port_stats("a");
    eprintln!(
        "MAC flood: {ok} frames accepted ({refused} refused) in {took:?}; port a rx {} forwarded {} drops {}; fdb entries now {entries}, max seen {max_entries}; RSS {rss0} KiB before, max {max_rss} KiB; b -> c pings during flood {replies_during}/20",
        st_a["rx_frames"],
        st_a["forwarded"],
        drops_summary(&st_a)
    );
    assert!(
        ok >= 50_000,
        "only {ok} flood frames accepted by the kernel"
    );
    assert!(
        st_a["rx_frames"].as_u64().unwrap_or(0) >= ok / 2,
        "usernet saw too few of the flood frames: {st_a}"
    );
    assert!(max_entries <= 1024, "fdb grew to {max_entries} > 1024");
    let fdb = u.ctl(&["fdb", "--network", "n"]);
    let has = |mac: &str, port: &str| {
        fdb.as_array()
            .expect("array")
            .iter()
            .any(|e| e["mac"] == mac && e["port"] == port)
    };
    assert!(has(&bmac, "b"), "b's MAC {bmac} evicted by the flood");
    assert!(has(&cmac, "c"), "c's MAC {cmac} evicted by the flood");
    assert!(
        replies_during >= 10,
        "b -> c lost too many pings during the flood: {replies_during}/20"
    );
    assert!(ping_ok(&b, "10.82.0.3"), "b -> c after the flood");
    assert!(ping_ok(&c, "10.82.0.2"), "c -> b after the flood");
    assert!(
        max_rss < 64 * 1024,
        "usernet RSS reached {max_rss} KiB during the MAC flood"
    );
    u.assert_accounting();
}

// ---------------------------------------------------------------------------------------------
// 3. SYN and UDP floods against the NAT.
// ---------------------------------------------------------------------------------------------

#[test]
fn syn_and_udp_flood_keep_existing_connections() {
    if !require_root("syn_and_udp_flood_keep_existing_connections") {
        return;
    }
    let a = Netns::new("na");
    let b = Netns::new("nb");
    let mut u = Usernet::start(&format!(
        "{}{}{}",
        network(
            "n",
            &format!(
                "subnet = \"10.83.0.0/24\"\nipv6 = \"off\"\ndns_upstreams = [\"{NO_UPSTREAM}\"]\nmax_flows = 256\nmax_flows_per_guest = 128"
            )
        ),
        netns_port("n", "a", &a),
        netns_port("n", "b", &b)
    ));
    guest(&a, "10.83.0.5/24", Some("10.83.0.1"));
    guest(&b, "10.83.0.6/24", Some("10.83.0.1"));
    assert!(ping_ok(&a, "10.83.0.1"), "a -> gateway\n{}", u.log());
    assert!(ping_ok(&b, "10.83.0.1"), "b -> gateway");

    let echo = Echo::start();
    let sink = Sink::start();
    let closed = closed_tcp_ports(64);
    // UDP targets this test owns: sockets bound on loopback, never read.
    let udp_sinks: Vec<UdpSocket> = (0..64)
        .map(|_| UdpSocket::bind("127.0.0.1:0").expect("udp bind"))
        .collect();
    let udp_ports: Vec<u16> = udp_sinks
        .iter()
        .map(|s| s.local_addr().expect("addr").port())
        .collect();
    let gw_ip = Ipv4Addr::new(10, 83, 0, 1);
    let echo_addr = SocketAddr::new(gw_ip.into(), echo.port);

    // a's long-lived conversation through NAT.
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    let (st, rd) = (stop.clone(), rounds.clone());
    let a_path = a.path();
    let talker = std::thread::spawn(move || {
        run_in_netns(&a_path, move || {
            let mut c = TcpStream::connect_timeout(&echo_addr, Duration::from_secs(3))?;
            c.set_read_timeout(Some(Duration::from_secs(3)))?;
            c.set_nodelay(true)?;
            let mut i = 0u64;
            let mut worst = Duration::ZERO;
            while !st.load(Ordering::Relaxed) && i < 5000 {
                let msg = format!("message {i:08}");
                let t = Instant::now();
                c.write_all(msg.as_bytes())?;
                let mut buf = vec![0u8; msg.len()];
                c.read_exact(&mut buf)?;
                if buf != msg.as_bytes() {
                    return Err(std::io::Error::other(format!("echo mismatch at {i}")));
                }
                worst = worst.max(t.elapsed());
                i += 1;
                rd.store(i, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok((i, worst))
        })
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while rounds.load(Ordering::Relaxed) < 5 {
        assert!(
            Instant::now() < deadline && !talker.is_finished(),
            "a's connection did not start\n{}",
            u.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // b floods: held connections to an open host port, raw SYNs to closed and open ports from
    // random source ports, UDP datagrams to many ports.
    let raw = RawIp::open(&b);
    let b_ip = Ipv4Addr::new(10, 83, 0, 6);
    let sink_port = sink.port;
    let (closed2, udp2) = (closed.clone(), udp_ports.clone());
    let flooding = Arc::new(AtomicBool::new(true));
    let release = Arc::new(AtomicBool::new(false));
    let (fl, rel) = (flooding.clone(), release.clone());
    let b_path = b.path();
    let flood = std::thread::spawn(move || {
        run_in_netns(&b_path, move || {
            // 1. Raw SYNs to closed host ports and UDP datagrams to many ports, from random
            //    source ports, paced in bursts. (Raw SYNs to an *open* port are left out: b's
            //    kernel resets the handshake, which leaves zombie flows — see
            //    `reset_syn_frees_its_nat_flow`.)
            let mut r = Rng::new(0x5a5a);
            let (mut syns, mut dgrams) = (0u64, 0u64);
            let start = Instant::now();
            while syns < 20_000 && start.elapsed() < Duration::from_secs(6) {
                for _ in 0..50 {
                    let sport = 1024 + r.below(60000) as u16;
                    let dport = closed2[r.below(closed2.len() as u64) as usize];
                    let p = tcp(b_ip, gw_ip, sport, dport, 0x02, r.next() as u32, 5);
                    if raw.send(&p, gw_ip) {
                        syns += 1;
                    }
                    let dport = udp2[r.below(udp2.len() as u64) as usize];
                    let p = udp(b_ip, gw_ip, sport, dport, b"flood");
                    if raw.send(&p, gw_ip) {
                        dgrams += 1;
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            // 2. Many non-blocking connects to the open port, held open.
            let to: SocketAddr = SocketAddr::new(gw_ip.into(), sink_port);
            let mut conns = Vec::new();
            for _ in 0..300 {
                let s = socket2::Socket::new(
                    socket2::Domain::IPV4,
                    socket2::Type::STREAM.nonblocking(),
                    None,
                )?;
                let _ = s.connect(&to.into());
                conns.push((s, None::<bool>));
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && conns.iter().any(|(_, st)| st.is_none()) {
                for (s, st) in conns.iter_mut().filter(|(_, st)| st.is_none()) {
                    match (s.take_error(), s.peer_addr()) {
                        (Ok(Some(_)) | Err(_), _) => *st = Some(false),
                        (Ok(None), Ok(_)) => *st = Some(true),
                        _ => {}
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let up = conns.iter().filter(|(_, st)| *st == Some(true)).count();
            let refused = conns.iter().filter(|(_, st)| *st == Some(false)).count();
            fl.store(false, Ordering::Relaxed);
            // Keep the connections until told (bounded), then close them all.
            let deadline = Instant::now() + Duration::from_secs(10);
            while !rel.load(Ordering::Relaxed) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            drop(conns);
            Ok((up, refused, syns, dgrams))
        })
    });
    // Once b holds everything it could get: what does a new connection from a get?
    let deadline = Instant::now() + Duration::from_secs(20);
    while flooding.load(Ordering::Relaxed) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let during_new = new_conn_echo(&a, echo_addr);
    let gw_during = u.gateway();
    release.store(true, Ordering::Relaxed);
    let (up, refused, syns, dgrams) = flood.join().expect("flood thread").expect("flood in b");
    // Let a talk a little longer after the flood, then stop it.
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let talk = talker.join().expect("talker thread");
    u.assert_healthy("after the SYN/UDP flood");
    let gw = u.gateway();
    eprintln!(
        "NAT flood from b: {up} held connections up, {refused} refused, {syns} raw SYNs, {dgrams} UDP datagrams; sink accepted {}; new connection from a during the flood: {during_new:?}",
        sink.accepted.load(Ordering::Relaxed)
    );
    eprintln!(
        "nat counters during: {}\nnat counters after: {}",
        gw_during["nat"], gw["nat"]
    );
    let (exchanges, worst) = talk.unwrap_or_else(|e| {
        panic!(
            "a's long-lived connection broke during the flood after {} rounds: {e}\n{}",
            rounds.load(Ordering::Relaxed),
            u.log()
        )
    });
    eprintln!("a's connection: {exchanges} round trips, worst {worst:?}");
    assert!(
        exchanges >= 50,
        "a's connection made only {exchanges} round trips"
    );
    let nat = &gw["nat"];
    assert!(
        nat["refused_limit"].as_u64().unwrap_or(0) > 0,
        "no flow was refused for a limit: {nat}"
    );
    assert!(
        up <= 128,
        "b held {up} connections > max_flows_per_guest 128"
    );
    assert!(refused > 0, "none of b's 300 connections was refused");

    // After the flood: a new connection from a works again (bounded wait).
    let deadline = Instant::now() + Duration::from_secs(15);
    let t = Instant::now();
    let mut last = Err(String::new());
    while Instant::now() < deadline {
        last = new_conn_echo(&a, echo_addr);
        if last.is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        last.is_ok(),
        "no new connection from a after the flood: {last:?}\n{}",
        u.gateway()["nat"]
    );
    eprintln!(
        "new connection from a after the flood: ok after {:?}",
        t.elapsed()
    );
    drop(udp_sinks);
    u.assert_healthy("at the end");
}

// ---------------------------------------------------------------------------------------------
// 4. A stuck guest.
// ---------------------------------------------------------------------------------------------

#[test]
fn stuck_guest_does_not_slow_others() {
    if !require_root("stuck_guest_does_not_slow_others") {
        return;
    }
    let a = Netns::new("ka");
    let b = Netns::new("kb");
    let c = Netns::new("kc");
    // dead: a container whose eth0 goes down (writes to its TAP fail).
    let dead = Netns::new("kd");
    // slow: a container behind a veth whose host end drains at 1 Mbit/s (writes back up).
    let slow = Netns::new("ks");
    let veth = Veth::new("kv");
    veth.move_b(&slow, Some("eth0"));
    let mut u = Usernet::start(&format!(
        "{}{}{}{}{}[[port]]\nnetwork = \"n\"\nname = \"slow\"\npacket = \"{}\"\n",
        network("n", "gateway = false"),
        netns_port("n", "a", &a),
        netns_port("n", "b", &b),
        netns_port("n", "c", &c),
        netns_port("n", "dead", &dead),
        veth.a
    ));
    guest(&a, "10.84.0.1/24", None);
    guest(&b, "10.84.0.2/24", None);
    guest(&c, "10.84.0.3/24", None);
    guest(&dead, "10.84.0.4/24", None);
    guest(&slow, "10.84.0.5/24", None);
    assert!(ping_ok(&c, "10.84.0.2"), "c -> b\n{}", u.log());
    assert!(ping_ok(&dead, "10.84.0.1"), "dead -> a (learning)");
    assert!(ping_ok(&slow, "10.84.0.1"), "slow -> a (learning)");
    let (dead_mac, slow_mac, a_mac) = (
        mac_of(&dead, "eth0"),
        mac_of(&slow, "eth0"),
        mac_of(&a, "eth0"),
    );

    let _server = iperf3_server(&b, "10.84.0.2");
    let baseline = iperf3(&c, "10.84.0.2", 4);

    // Now the two guests get stuck.
    dead.ip(&["link", "set", "eth0", "down"]);
    let tc = Command::new("timeout")
        .args(["20", "tc", "qdisc", "add", "dev", &veth.a, "root", "tbf"])
        .args(["rate", "1mbit", "burst", "4kb", "latency", "10s"])
        .output()
        .expect("tc");
    assert!(
        tc.status.success(),
        "tc: {}",
        String::from_utf8_lossy(&tc.stderr)
    );
    let d0 = u.port_stats("dead");
    let s0 = u.port_stats("slow");

    // a streams unicast to both stuck guests (their MACs are learned), paced.
    let raw = RawEth::open(&a, "eth0");
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    let flood = std::thread::spawn(move || {
        let mut r = Rng::new(0x57c4);
        let (mut ok, mut tries) = (0u64, 0u64);
        let start = Instant::now();
        while !st.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(15) {
            for i in 0..64 {
                let dst = if i % 2 == 0 { dead_mac } else { slow_mac };
                let p = udp(
                    Ipv4Addr::new(10, 84, 0, 1),
                    Ipv4Addr::new(10, 84, 0, if i % 2 == 0 { 4 } else { 5 }),
                    9,
                    9,
                    &r.bytes(1000),
                );
                tries += 1;
                if raw.send(&eth(dst, a_mac, 0x0800, &p)).is_ok() {
                    ok += 1;
                }
            }
            std::thread::sleep(Duration::from_millis(8));
        }
        (ok, tries)
    });
    std::thread::sleep(Duration::from_millis(500));
    let during = iperf3(&c, "10.84.0.2", 4);
    stop.store(true, Ordering::Relaxed);
    let (ok, tries) = flood.join().expect("flood thread");
    u.assert_healthy("with stuck guests");
    let d1 = u.port_stats("dead");
    let s1 = u.port_stats("slow");
    let names = u.ctl(&["ports"]);
    eprintln!(
        "stuck guests: a sent {ok}/{tries} frames to them; iperf3 c -> b baseline {:.2} Gbit/s, with stuck guests {:.2} Gbit/s ({:.0}%)",
        baseline / 1e9,
        during / 1e9,
        100.0 * during / baseline
    );
    eprintln!(
        "dead (eth0 down): tx_frames {} -> {}, drops {}\nslow (1 Mbit/s veth): tx_frames {} -> {}, drops {}",
        d0["tx_frames"],
        d1["tx_frames"],
        drops_summary(&d1),
        s0["tx_frames"],
        s1["tx_frames"],
        drops_summary(&s1)
    );
    assert!(ok > 1000, "only {ok} frames sent to the stuck guests");
    assert!(
        during >= baseline / 3.0,
        "throughput with stuck guests {during:.0} < 1/3 of baseline {baseline:.0}"
    );
    let egress = |s: &Value| drop_of(s, "ring_full") + drop_of(s, "link_error");
    let dead_ports = names.to_string();
    assert!(
        dead_ports.contains("\"dead\""),
        "the port of the guest whose eth0 is down was removed: {names}"
    );
    assert!(
        egress(&d1) > egress(&d0),
        "no ring_full/link_error drops on the dead guest's port: {d1}"
    );
    assert!(
        drop_of(&s1, "ring_full") > drop_of(&s0, "ring_full") || egress(&s1) > egress(&s0),
        "no ring_full/link_error drops on the slow guest's port: {s1}"
    );
    u.assert_accounting();

    // The stuck guests recover when unstuck.
    dead.ip(&["link", "set", "eth0", "up"]);
    let out = Command::new("timeout")
        .args(["20", "tc", "qdisc", "del", "dev", &veth.a, "root"])
        .output()
        .expect("tc");
    assert!(out.status.success(), "tc del");
    assert!(
        ping_ok(&dead, "10.84.0.2"),
        "dead guest back up -> b\n{}",
        u.log()
    );
    assert!(ping_ok(&slow, "10.84.0.2"), "slow guest unthrottled -> b");
    assert!(ping_ok(&c, "10.84.0.2"), "c -> b at the end");
}

// ---------------------------------------------------------------------------------------------
// Regression tests for NAT bugs this file found (a reset SYN left a zombie flow; per-guest limits were per protocol).
// ---------------------------------------------------------------------------------------------

/// Host-side connections from the daemon to `port` on loopback that are established.
fn host_conns_to(port: u16) -> usize {
    let out = Command::new("timeout")
        .args(["10", "ss", "-Htn", "state", "established"])
        .arg(format!("dport = :{port}"))
        .output()
        .expect("ss");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[test]

fn reset_syn_frees_its_nat_flow() {
    if !require_root("reset_syn_frees_its_nat_flow") {
        return;
    }
    let b = Netns::new("zb");
    let mut u = Usernet::start(&format!(
        "{}{}",
        network(
            "n",
            &format!(
                "subnet = \"10.85.0.0/24\"\nipv6 = \"off\"\ndns_upstreams = [\"{NO_UPSTREAM}\"]\nmax_flows = 64\nmax_flows_per_guest = 32"
            )
        ),
        netns_port("n", "b", &b)
    ));
    guest(&b, "10.85.0.6/24", Some("10.85.0.1"));
    assert!(ping_ok(&b, "10.85.0.1"), "b -> gateway\n{}", u.log());
    let sink = Sink::start();
    let gw_ip = Ipv4Addr::new(10, 85, 0, 1);
    let b_ip = Ipv4Addr::new(10, 85, 0, 6);
    // Ten bare SYNs from b's own address: the NAT connects to the host, answers SYN-ACK, and
    // b's kernel (which has no such socket) answers RST.
    let raw = RawIp::open(&b);
    for i in 0..10u16 {
        assert!(raw.send(
            &tcp(b_ip, gw_ip, 20000 + i, sink.port, 0x02, 1000, 5),
            gw_ip
        ));
    }
    std::thread::sleep(Duration::from_secs(3));
    let held = host_conns_to(sink.port);
    // Now b wants real connections: it should get its whole budget of 32.
    let to = SocketAddr::new(gw_ip.into(), sink.port);
    let got = run_in_netns(&b.path(), move || {
        let mut ok = Vec::new();
        for _ in 0..32 {
            if let Ok(c) = TcpStream::connect_timeout(&to, Duration::from_secs(2)) {
                ok.push(c);
            }
        }
        Ok(ok.len())
    })
    .expect("connects");
    u.assert_healthy("after the SYNs");
    eprintln!(
        "after 10 reset SYNs: {held} host connections still held by the NAT; b then got {got}/32 connections; nat {}",
        u.gateway()["nat"]
    );
    // Worse: the zombie's guest-facing socket is back in LISTEN on the same destination, so a
    // later connection there can land in it and be spliced to the zombie's old host connection.
    // A server that greets each accepted connection with its number tells.
    let greeter = TcpListener::bind("127.0.0.1:0").expect("bind");
    let gport = greeter.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for (n, c) in greeter.incoming().take(4).enumerate() {
            let Ok(mut c) = c else { continue };
            let _ = c.write_all(format!("conn {n}\n").as_bytes());
            held.push(c);
        }
        std::thread::sleep(Duration::from_secs(10));
    });
    assert!(raw.send(&tcp(b_ip, gw_ip, 21000, gport, 0x02, 1000, 5), gw_ip));
    std::thread::sleep(Duration::from_secs(1));
    let to = SocketAddr::new(gw_ip.into(), gport);
    let greeting = run_in_netns(&b.path(), move || {
        let mut c = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
        c.set_read_timeout(Some(Duration::from_secs(3)))?;
        let mut buf = [0u8; 7];
        c.read_exact(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    });
    eprintln!(
        "a fresh connection after a reset SYN to the same port was greeted: {greeting:?} (expected \"conn 1\")"
    );
    assert_eq!(
        held, 0,
        "NAT flows of reset handshakes still hold host connections"
    );
    assert_eq!(got, 32, "zombie flows ate b's per-guest budget");
    assert_eq!(
        greeting.as_deref().ok(),
        Some("conn 1\n"),
        "a new connection was spliced to the host connection of an earlier, reset flow"
    );
}

#[test]

fn per_guest_limit_spans_protocols() {
    if !require_root("per_guest_limit_spans_protocols") {
        return;
    }
    let a = Netns::new("pa");
    let b = Netns::new("pb");
    let mut u = Usernet::start(&format!(
        "{}{}{}",
        network(
            "n",
            &format!(
                "subnet = \"10.86.0.0/24\"\nipv6 = \"off\"\ndns_upstreams = [\"{NO_UPSTREAM}\"]\nmax_flows = 64\nmax_flows_per_guest = 32"
            )
        ),
        netns_port("n", "a", &a),
        netns_port("n", "b", &b)
    ));
    guest(&a, "10.86.0.5/24", Some("10.86.0.1"));
    guest(&b, "10.86.0.6/24", Some("10.86.0.1"));
    assert!(ping_ok(&a, "10.86.0.1"), "a -> gateway\n{}", u.log());
    assert!(ping_ok(&b, "10.86.0.1"), "b -> gateway");
    let echo = Echo::start();
    let sink = Sink::start();
    let udp_sinks: Vec<UdpSocket> = (0..40)
        .map(|_| UdpSocket::bind("127.0.0.1:0").expect("udp bind"))
        .collect();
    let udp_ports: Vec<u16> = udp_sinks
        .iter()
        .map(|s| s.local_addr().expect("addr").port())
        .collect();
    let gw_ip = Ipv4Addr::new(10, 86, 0, 1);
    let to = SocketAddr::new(gw_ip.into(), sink.port);
    let release = Arc::new(AtomicBool::new(false));
    let holding = Arc::new(AtomicU64::new(u64::MAX));
    let (rel, hold) = (release.clone(), holding.clone());
    let b_path = b.path();
    // b: 40 TCP connections and 40 UDP flows, held.
    let bt = std::thread::spawn(move || {
        run_in_netns(&b_path, move || {
            let mut tcp_ok = Vec::new();
            for _ in 0..40 {
                if let Ok(c) = TcpStream::connect_timeout(&to, Duration::from_secs(2)) {
                    tcp_ok.push(c);
                }
            }
            let s = UdpSocket::bind("0.0.0.0:0")?;
            for p in &udp_ports {
                s.send_to(b"x", SocketAddr::new(gw_ip.into(), *p))?;
            }
            hold.store(tcp_ok.len() as u64, Ordering::Relaxed);
            let deadline = Instant::now() + Duration::from_secs(10);
            while !rel.load(Ordering::Relaxed) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(())
        })
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while holding.load(Ordering::Relaxed) == u64::MAX && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let nat = u.gateway()["nat"].clone();
    let a_new = new_conn_echo(&a, SocketAddr::new(gw_ip.into(), echo.port));
    release.store(true, Ordering::Relaxed);
    let _ = bt.join();
    u.assert_healthy("at the end");
    eprintln!(
        "b (max_flows_per_guest 32) holds {} TCP connections and opened {} UDP flows of max_flows 64; a's new connection: {a_new:?}",
        holding.load(Ordering::Relaxed),
        nat["udp_flows"]
    );
    assert!(
        a_new.is_ok(),
        "one guest took the whole network's flows despite max_flows_per_guest: {nat}"
    );
}
