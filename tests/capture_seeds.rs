//! Fuzz seeds captured from real clients (`#[ignore]`: run by hand, as root, when the gateway's
//! protocols change; the files it writes are committed):
//!
//! ```sh
//! sudo -E cargo test --test capture_seeds -- --ignored --nocapture
//! ```
//!
//! It starts `usernet up` with one network shaped like the `datapath` fuzz target's first network
//! (n0: 10.0.0.0/24, fd00::/64, domain `usernet`, DNS upstream `127.0.0.1:9` only) and one port,
//! `g00`, a TAP inside a throw-away namespace. In the namespace, under `tcpdump -w`, real
//! clients talk to the gateway: busybox `udhcpc` (DHCP), `ping` (ICMP echo), `dig` (DNS over UDP
//! and TCP, local and outside names), `curl` to an HTTP server this test runs on 127.0.0.1
//! (TCP through NAT via the gateway's address), and the kernel's own IPv6 SLAAC (router and
//! neighbour solicitations) then `ping -6`. Every frame the guest sent is then written as seeds:
//!
//! - `datapath/captured-*`: the guest's frames as one event sequence per protocol and one for
//!   the whole session (the gateway's MAC rewritten to the harness's);
//! - `arp/captured-*`: the ARP payloads;
//! - `dhcp_server/captured-udhcpc`: udhcpc's messages as `[op][len][message]` records;
//! - `dns_server/captured-*`: the DNS queries (`[0]` + UDP payload, `[1]` + TCP message);
//! - `ndp_ra/captured-*`: the router and neighbour solicitations, behind the harness's
//!   parameter block.
//!
//! They are replayed by `cargo test` (`tests/fuzz_regressions.rs`) like every seed.
//!
//! Nothing leaves the machine: the clients talk only to the gateway, NAT only to 127.0.0.1, and
//! DNS names outside `usernet` go to `127.0.0.1:9` (nothing listens; SERVFAIL). The namespace,
//! the daemon, tcpdump and the server are removed on every exit path (guards).

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::{Child, Netns};

#[allow(dead_code)]
#[path = "../fuzz/src/lib.rs"]
mod harness;

/// An Ethernet frame from the capture.
type Frame = Vec<u8>;

fn seeds(target: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join("seeds")
        .join(target);
    std::fs::create_dir_all(&d).expect("seed dir");
    d
}

/// Reads a classic pcap file (any byte order, link type Ethernet).
fn read_pcap(path: &Path) -> Vec<Frame> {
    let b = std::fs::read(path).expect("pcap");
    assert!(b.len() >= 24, "pcap too short");
    let le = match b[..4] {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        _ => panic!("not a pcap file"),
    };
    let u32_at = |i: usize| {
        let a: [u8; 4] = b[i..i + 4].try_into().expect("4 bytes");
        if le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    };
    assert_eq!(u32_at(20), 1, "link type is not Ethernet");
    let mut out = Vec::new();
    let mut i = 24;
    while i + 16 <= b.len() {
        let incl = u32_at(i + 8) as usize;
        let start = i + 16;
        let Some(f) = b.get(start..start + incl) else {
            break;
        };
        out.push(f.to_vec());
        i = start + incl;
    }
    out
}

/// What a frame is, for naming seeds.
fn class(f: &[u8]) -> &'static str {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    let Ok(p) = SlicedPacket::from_ethernet(f) else {
        return "other";
    };
    if let Some(etherparse::LinkSlice::Ethernet2(e)) = &p.link
        && e.ether_type() == etherparse::EtherType::ARP
    {
        return "arp";
    }
    let v6 = matches!(p.net, Some(NetSlice::Ipv6(_)));
    match p.transport {
        Some(TransportSlice::Udp(u)) if u.destination_port() == 67 => "dhcp",
        Some(TransportSlice::Udp(u)) if u.destination_port() == 53 => "dns",
        Some(TransportSlice::Tcp(t)) if t.destination_port() == 53 => "dns-tcp",
        Some(TransportSlice::Tcp(_)) => "tcp",
        Some(TransportSlice::Icmpv4(_)) => "ping",
        Some(TransportSlice::Icmpv6(i)) => match i.type_u8() {
            133 => "ndp-rs",
            135 => "ndp-ns",
            128 => "ping6",
            _ if v6 => "icmpv6",
            _ => "other",
        },
        _ => "other",
    }
}

/// Replaces every occurrence of `from` (a MAC) in `f` with `to`.
fn rewrite_mac(f: &mut [u8], from: [u8; 6], to: [u8; 6]) {
    let mut i = 0;
    while i + 6 <= f.len() {
        if f[i..i + 6] == from {
            f[i..i + 6].copy_from_slice(&to);
            i += 6;
        } else {
            i += 1;
        }
    }
}

/// The UDP payload of a frame (IPv4 or IPv6).
fn udp_payload(f: &[u8]) -> Option<Vec<u8>> {
    match etherparse::SlicedPacket::from_ethernet(f).ok()?.transport? {
        etherparse::TransportSlice::Udp(u) => Some(u.payload().to_vec()),
        _ => None,
    }
}

/// The TCP payload of a frame.
fn tcp_payload(f: &[u8]) -> Option<Vec<u8>> {
    match etherparse::SlicedPacket::from_ethernet(f).ok()?.transport? {
        etherparse::TransportSlice::Tcp(t) => Some(t.payload().to_vec()),
        _ => None,
    }
}

/// Runs `args` in `ns`, logging what it printed; returns whether it succeeded.
fn run_in(ns: &Netns, args: &[&str]) -> bool {
    let out = ns.exec(args);
    eprintln!(
        "$ {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.status.success()
}

/// Serves a small HTTP page on 127.0.0.1 to up to `n` connections (in a thread).
fn http_server(n: usize) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    l.set_nonblocking(false).expect("blocking");
    std::thread::spawn(move || {
        for s in l.incoming().take(n) {
            let Ok(mut s) = s else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf);
            let _ = s.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nConnection: close\r\n\r\nusernet seed",
            );
        }
    });
    port
}

#[test]
#[ignore = "writes fuzz seeds from a live capture; run by hand as root (see the file's docs)"]
fn capture_seeds() {
    if !common::require_root("capture_seeds") {
        return;
    }
    let ns = Netns::new("ucap");
    let daemon = Daemon::start(&format!(
        "[[network]]\nname = \"n0\"\nsubnet = \"10.0.0.0/24\"\nipv6 = \"fd00::/64\"\n\
         dns_upstreams = [\"127.0.0.1:9\"]\n\n\
         [[port]]\nnetwork = \"n0\"\nname = \"g00\"\nnetns = \"{}\"\n",
        ns.path().display()
    ));
    // The port's TAP appears in the namespace.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ns.exec(&["ip", "link", "show", "eth0"]).status.success() {
        assert!(Instant::now() < deadline, "no eth0: {}", daemon.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    ns.ip(&["link", "set", "lo", "up"]);
    ns.ip(&["link", "set", "eth0", "up"]);
    let gw_mac: [u8; 6] = {
        let g = daemon.ctl(&["gateway"]);
        let mac = g[0]["mac"].as_str().expect("gateway mac").to_string();
        let v: Vec<u8> = mac
            .split(':')
            .map(|h| u8::from_str_radix(h, 16).expect("hex"))
            .collect();
        v.try_into().expect("6 bytes")
    };

    let dir = tempfile::tempdir().expect("tempdir");
    let pcap = dir.path().join("guest.pcap");
    let script = dir.path().join("udhcpc.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\ncase \"$1\" in bound|renew)\n  ip addr add \"$ip/${mask:-24}\" dev \"$interface\"\n  \
         [ -n \"$router\" ] && ip route add default via \"$router\" dev \"$interface\"\n;; esac\nexit 0\n",
    )
    .expect("script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let tcpdump = Child(
        Command::new("timeout")
            .args([
                "60", "ip", "netns", "exec", &ns.name, "tcpdump", "-i", "eth0", "-U", "-n",
            ])
            .arg("-w")
            .arg(&pcap)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tcpdump"),
    );
    std::thread::sleep(Duration::from_millis(1500));

    let port = http_server(2);
    let script_s = script.display().to_string();
    assert!(run_in(
        &ns,
        &[
            "busybox",
            "udhcpc",
            "-i",
            "eth0",
            "-n",
            "-q",
            "-f",
            "-t",
            "5",
            "-T",
            "1",
            "-x",
            "hostname:seedbox",
            "-s",
            &script_s
        ]
    ));
    assert!(run_in(
        &ns,
        &["ping", "-c", "2", "-i", "0.2", "-W", "2", "10.0.0.1"]
    ));
    for args in [
        vec![
            "dig",
            "+tries=1",
            "+time=2",
            "@10.0.0.1",
            "host.usernet",
            "A",
        ],
        vec![
            "dig",
            "+tries=1",
            "+time=2",
            "@10.0.0.1",
            "g00.usernet",
            "AAAA",
        ],
        vec![
            "dig",
            "+tries=1",
            "+time=2",
            "@10.0.0.1",
            "seedbox.usernet",
            "ANY",
        ],
        vec!["dig", "+tries=1", "+time=2", "@10.0.0.1", "-x", "10.0.0.1"],
        vec![
            "dig",
            "+tries=1",
            "+time=3",
            "@10.0.0.1",
            "outside.example.",
            "A",
        ],
        vec![
            "dig",
            "+tcp",
            "+tries=1",
            "+time=2",
            "@10.0.0.1",
            "host.usernet",
            "A",
        ],
    ] {
        run_in(&ns, &args);
    }
    let url = format!("http://10.0.0.1:{port}/");
    assert!(run_in(&ns, &["curl", "-sS", "--max-time", "5", &url]));
    // SLAAC: wait for the global address from the router advertisements, then ping6.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = ns.exec(&["ip", "-6", "addr", "show", "dev", "eth0", "scope", "global"]);
        if String::from_utf8_lossy(&out.stdout).contains("fd00:") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no SLAAC address: {}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2)); // DAD
    run_in(
        &ns,
        &["ping", "-6", "-c", "2", "-i", "0.2", "-W", "2", "fd00::1"],
    );
    std::thread::sleep(Duration::from_millis(500));
    // SIGINT lets tcpdump finish the file; the guard reaps it.
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(tcpdump.0.id() as i32, libc::SIGINT) };
    std::thread::sleep(Duration::from_millis(500));
    drop(tcpdump);

    let frames = read_pcap(&pcap);
    let guest: Vec<Frame> = frames
        .iter()
        .filter(|f| f.len() >= 14 && f[6..12] != gw_mac)
        .cloned()
        .collect();
    eprintln!(
        "captured {} frames, {} from the guest",
        frames.len(),
        guest.len()
    );
    assert!(guest.len() >= 10, "too few frames captured");
    write_seeds(&guest, gw_mac);
    drop(daemon);
    ns.delete();
}

fn write_seeds(guest: &[Frame], gw_mac: [u8; 6]) {
    let to = harness::datapath::gateway_mac(0).0;
    let rewritten: Vec<Frame> = guest
        .iter()
        .map(|f| {
            let mut f = f.clone();
            rewrite_mac(&mut f, gw_mac, to);
            f
        })
        .collect();
    let mut by_class: std::collections::BTreeMap<&str, Vec<Frame>> = Default::default();
    for f in &rewritten {
        by_class.entry(class(f)).or_default().push(f.clone());
    }
    let put = |target: &str, name: &str, bytes: &[u8]| {
        let p = seeds(target).join(name);
        std::fs::write(&p, bytes).expect("write seed");
        eprintln!("wrote {} ({} bytes)", p.display(), bytes.len());
    };
    // datapath: the session, and each protocol on its own.
    put(
        "datapath",
        "captured-session",
        &harness::datapath::events_from_frames(0, 0, &rewritten),
    );
    for (c, fs) in &by_class {
        put(
            "datapath",
            &format!("captured-{c}"),
            &harness::datapath::events_from_frames(0, 0, fs),
        );
    }
    // arp: payloads.
    for (i, f) in by_class
        .get("arp")
        .into_iter()
        .flatten()
        .take(2)
        .enumerate()
    {
        put("arp", &format!("captured-{i}"), &f[14..]);
    }
    // dhcp_server: udhcpc's messages as records.
    let mut dhcp = Vec::new();
    for f in guest.iter().filter(|f| class(f) == "dhcp") {
        if let Some(p) = udp_payload(f) {
            dhcp.push(0);
            dhcp.extend((p.len() as u16).to_be_bytes());
            dhcp.extend(p);
        }
    }
    if !dhcp.is_empty() {
        put("dhcp_server", "captured-udhcpc", &dhcp);
    }
    // dns_server: queries.
    for (i, f) in guest.iter().filter(|f| class(f) == "dns").enumerate() {
        if let Some(p) = udp_payload(f) {
            put(
                "dns_server",
                &format!("captured-udp-{i}"),
                &[&[0u8][..], &p].concat(),
            );
        }
    }
    for (i, f) in guest.iter().filter(|f| class(f) == "dns-tcp").enumerate() {
        if let Some(p) = tcp_payload(f)
            && p.len() > 2
            && usize::from(u16::from_be_bytes([p[0], p[1]])) == p.len() - 2
        {
            put(
                "dns_server",
                &format!("captured-tcp-{i}"),
                &[&[1u8][..], &p[2..]].concat(),
            );
        }
    }
    // ndp_ra: the solicitations behind the harness's parameter block (gateway MAC, fd00::/64,
    // MTU 1500, lifetime 1800, one DNS server fd00::1).
    let mut params = gw_mac.to_vec();
    params.extend("fd00::".parse::<std::net::Ipv6Addr>().expect("a").octets());
    params.push(64);
    params.extend(1500u32.to_be_bytes());
    params.extend(1800u16.to_be_bytes());
    params.push(1);
    params.extend("fd00::1".parse::<std::net::Ipv6Addr>().expect("a").octets());
    for c in ["ndp-rs", "ndp-ns"] {
        if let Some(f) = guest.iter().find(|f| class(f) == c) {
            put(
                "ndp_ra",
                &format!("captured-{c}"),
                &[&params[..], f].concat(),
            );
        }
    }
}
