//! Hostile guests, from the outside: a `usernet up` daemon serves two namespaces, `victim` and
//! `attacker`; the attacker (root in its namespace) sends hand-built frames through an AF_PACKET
//! socket on its `eth0`, built with etherparse (and dhcproto for DHCP). Each test checks that the
//! attack fails, that the victim keeps working, and that the drop is counted under its reason
//! (README "Security model"). Traffic stays on loopback and inside namespaces these tests
//! create. Need root; skipped (or failed, with USERNET_REQUIRE_PRIV=1) otherwise.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::raw::RawEth;
use common::{Netns, require_root};
use etherparse::{ArpHardwareId, ArpOperation, ArpPacket, EtherType, PacketBuilder};
use serde_json::Value;
use usernet::link::netns::run_in_netns;

const GW: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const VICTIM: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 10);
const ATTACKER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 20);
const VICTIM6: &str = "fd77::10";
const ATTACKER6: &str = "fd77::20";

/// The daemon and the two guests (static addresses, default routes via the gateway).
struct Lab {
    d: Daemon,
    victim: Netns,
    attacker: Netns,
}

impl Lab {
    fn new(extra: &str) -> Lab {
        let victim = Netns::new("hv");
        let attacker = Netns::new("ha");
        let ups = if extra.contains("dns_upstreams") {
            ""
        } else {
            "dns_upstreams = [\"127.0.0.1:9\"]\n"
        };
        let cfg = format!(
            "[[network]]\nname = \"h\"\nsubnet = \"10.77.0.0/24\"\nipv6 = \"fd77::/64\"\n\
             {ups}{extra}\n\
             [[port]]\nnetwork = \"h\"\nname = \"victim\"\nnetns = \"{}\"\n\
             [[port]]\nnetwork = \"h\"\nname = \"attacker\"\nnetns = \"{}\"\n",
            victim.path().display(),
            attacker.path().display()
        );
        let d = Daemon::start(&cfg);
        for (ns, v4, v6) in [(&victim, VICTIM, VICTIM6), (&attacker, ATTACKER, ATTACKER6)] {
            wait_for_eth0(ns);
            ns.ip(&["link", "set", "lo", "up"]);
            ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", "eth0"]);
            ns.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                "eth0",
                "nodad",
            ]);
            ns.ip(&["route", "add", "default", "via", &GW.to_string()]);
        }
        Lab {
            d,
            victim,
            attacker,
        }
    }

    fn gw_mac(&self) -> [u8; 6] {
        parse_mac(
            self.d.ctl(&["gateway"])[0]["mac"]
                .as_str()
                .expect("gateway mac"),
        )
    }

    fn drops(&self, port: &str, reason: &str) -> u64 {
        self.d
            .ctl(&["stats"])
            .as_array()
            .and_then(|v| v.iter().find(|r| r["port"] == port).cloned())
            .map(|r| r["stats"]["drops"][reason].as_u64().unwrap_or(0))
            .unwrap_or(0)
    }

    fn gateway(&self) -> Value {
        self.d.ctl(&["gateway"])[0].clone()
    }

    fn names(&self) -> Vec<(String, String)> {
        self.d
            .ctl(&["dns", "ls"])
            .as_array()
            .expect("array")
            .iter()
            .map(|r| {
                (
                    r["name"].as_str().unwrap_or_default().to_string(),
                    r["addr"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }
}

fn wait_for_eth0(ns: &Netns) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ns.exec(&["ip", "link", "show", "eth0"]).status.success() {
        assert!(Instant::now() < deadline, "no eth0 in {}", ns.name);
        std::thread::sleep(Duration::from_millis(20));
    }
    ns.ip(&["link", "set", "eth0", "up"]);
}

fn parse_mac(s: &str) -> [u8; 6] {
    let mut m = [0u8; 6];
    for (i, p) in s.split(':').enumerate().take(6) {
        m[i] = u8::from_str_radix(p, 16).expect("hex");
    }
    m
}

fn mac_of(ns: &Netns) -> [u8; 6] {
    parse_mac(ns.exec_ok(&["cat", "/sys/class/net/eth0/address"]).trim())
}

fn ping(ns: &Netns, dst: &str) -> bool {
    ns.exec(&["ping", "-c", "1", "-W", "2", dst])
        .status
        .success()
}

fn arp(eth_src: [u8; 6], sha: [u8; 6], spa: Ipv4Addr, tpa: Ipv4Addr, op: ArpOperation) -> Vec<u8> {
    let a = ArpPacket::new(
        ArpHardwareId::ETHERNET,
        EtherType::IPV4,
        op,
        &sha,
        &spa.octets(),
        &[0; 6],
        &tpa.octets(),
    )
    .expect("arp");
    let mut out = Vec::new();
    PacketBuilder::ethernet2(eth_src, [0xff; 6])
        .arp(a)
        .write(&mut out)
        .expect("arp frame");
    out
}

fn udp4(
    eth: ([u8; 6], [u8; 6]),
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ports: (u16, u16),
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(eth.0, eth.1)
        .ipv4(src.octets(), dst.octets(), 64)
        .udp(ports.0, ports.1)
        .write(&mut out, payload)
        .expect("udp frame");
    out
}

fn syn4(eth: ([u8; 6], [u8; 6]), src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(eth.0, eth.1)
        .ipv4(src.octets(), dst.octets(), 64)
        .tcp(sport, dport, 1000, 64240)
        .syn()
        .write(&mut out, &[])
        .expect("syn frame");
    out
}

/// A TCP echo server on 127.0.0.1 that counts the connections it accepted.
struct Echo {
    port: u16,
    accepted: Arc<AtomicUsize>,
}

impl Echo {
    fn start() -> Echo {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        l.set_nonblocking(true).expect("nonblocking");
        let accepted = Arc::new(AtomicUsize::new(0));
        let n = accepted.clone();
        std::thread::spawn(move || {
            // Bounded: the server lives at most 60 s.
            let end = Instant::now() + Duration::from_secs(60);
            while Instant::now() < end {
                match l.accept() {
                    Ok((mut s, _)) => {
                        n.fetch_add(1, Ordering::Relaxed);
                        std::thread::spawn(move || {
                            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                            let mut b = [0u8; 64];
                            if let Ok(k) = s.read(&mut b) {
                                let _ = s.write_all(&b[..k]);
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Echo { port, accepted }
    }
}

/// From inside `ns`: connect to `to`, send a line, read it back.
fn tcp_echo_from(ns: &Netns, to: SocketAddr) -> Result<(), String> {
    run_in_netns(&ns.path(), move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        s.write_all(b"ping")?;
        let mut b = [0u8; 4];
        s.read_exact(&mut b)?;
        Ok(b)
    })
    .map_err(|e| format!("{to}: {e}"))
    .and_then(|b| {
        (&b == b"ping")
            .then_some(())
            .ok_or_else(|| "wrong echo".into())
    })
}

#[test]
fn arp_and_ip_claims_of_another_guest_move_nothing() {
    if !require_root("arp_and_ip_claims_of_another_guest_move_nothing") {
        return;
    }
    let lab = Lab::new("");
    let echo = Echo::start();
    assert!(
        ping(&lab.victim, &GW.to_string()),
        "victim pings the gateway\n{}",
        lab.d.log()
    );
    assert!(
        ping(&lab.attacker, &GW.to_string()),
        "attacker pings the gateway"
    );
    let names = lab.names();
    assert!(
        names.contains(&("victim.usernet".into(), VICTIM.to_string())),
        "victim's name: {names:?}"
    );
    let (vm, am) = (mac_of(&lab.victim), mac_of(&lab.attacker));
    let raw = RawEth::open(&lab.attacker, "eth0");
    for _ in 0..3 {
        // Sender MAC = victim's, sender IP = attacker's: moves the victim's name in old code.
        raw.send_retry(&arp(am, vm, ATTACKER, GW, ArpOperation::REQUEST))
            .expect("send");
        // The victim's IP with the attacker's MAC: the gateway would send the victim's replies
        // to the attacker.
        raw.send_retry(&arp(am, am, VICTIM, GW, ArpOperation::REPLY))
            .expect("send");
        // IP traffic from the victim's address.
        raw.send_retry(&udp4((am, lab.gw_mac()), VICTIM, GW, (5353, 33333), b"x"))
            .expect("send");
    }
    std::thread::sleep(Duration::from_millis(300));
    let names = lab.names();
    assert!(
        names
            .iter()
            .all(|(n, a)| n != "victim.usernet" || a == &VICTIM.to_string()),
        "victim's name moved: {names:?}"
    );
    assert!(
        lab.drops("attacker", "spoofed_arp") >= 6,
        "spoofed_arp counted"
    );
    assert!(
        lab.drops("attacker", "spoofed_ip") >= 3,
        "spoofed_ip counted"
    );
    // `ctl owners`: the victim's address is the victim port's, first seen.
    let owners = lab.d.ctl(&["owners"]);
    let row = |port: &str| {
        owners
            .as_array()
            .and_then(|v| v.iter().find(|r| r["port"] == port).cloned())
            .unwrap_or(Value::Null)
    };
    let has = |r: &Value, ip: &str| {
        r["ips"]
            .as_array()
            .is_some_and(|v| v.iter().any(|p| p[0] == ip))
    };
    assert!(has(&row("victim"), &VICTIM.to_string()), "{owners}");
    assert!(!has(&row("attacker"), &VICTIM.to_string()), "{owners}");
    assert_eq!(row("victim")["port_security"], true, "{owners}");
    // The victim's NAT replies still reach the victim (host loopback via the gateway).
    tcp_echo_from(&lab.victim, SocketAddr::new(IpAddr::V4(GW), echo.port))
        .unwrap_or_else(|e| panic!("victim's NAT connection: {e}\n{}", lab.d.log()));
}

#[test]
fn gateway_mac_as_source_is_dropped() {
    if !require_root("gateway_mac_as_source_is_dropped") {
        return;
    }
    let lab = Lab::new("");
    assert!(
        ping(&lab.victim, &GW.to_string()),
        "victim pings the gateway"
    );
    let gwm = lab.gw_mac();
    let raw = RawEth::open(&lab.attacker, "eth0");
    for _ in 0..5 {
        raw.send_retry(&arp(gwm, gwm, GW, VICTIM, ArpOperation::REPLY))
            .expect("send");
    }
    std::thread::sleep(Duration::from_millis(200));
    let fdb = lab.d.ctl(&["fdb"]);
    let gw_entry = fdb
        .as_array()
        .expect("array")
        .iter()
        .find(|e| e["mac"].as_str().map(parse_mac) == Some(gwm))
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(
        gw_entry["port"], "gw.h",
        "gateway MAC stays on the gateway's port: {fdb}"
    );
    assert!(
        lab.drops("attacker", "spoofed_source") >= 5,
        "spoofed_source counted"
    );
    assert!(
        ping(&lab.victim, &GW.to_string()),
        "victim still reaches the gateway"
    );
}

/// A DHCP message from a client: a REQUEST for `requested` with hostname `host`, or another
/// `kind` naming the gateway as its server.
fn dhcp_msg(
    kind: dhcproto::v4::MessageType,
    chaddr: [u8; 6],
    ciaddr: Ipv4Addr,
    requested: Ipv4Addr,
    host: &str,
) -> Vec<u8> {
    use dhcproto::{Encodable, Encoder, v4};
    let mut m = v4::Message::default();
    m.set_opcode(v4::Opcode::BootRequest)
        .set_xid(0x1234_5678)
        .set_chaddr(&chaddr)
        .set_ciaddr(ciaddr);
    m.opts_mut().insert(v4::DhcpOption::MessageType(kind));
    if kind == v4::MessageType::Request {
        m.opts_mut()
            .insert(v4::DhcpOption::RequestedIpAddress(requested));
        m.opts_mut()
            .insert(v4::DhcpOption::Hostname(host.to_string()));
    } else {
        m.opts_mut().insert(v4::DhcpOption::ServerIdentifier(GW));
    }
    let mut buf = Vec::new();
    m.encode(&mut Encoder::new(&mut buf)).expect("encode");
    buf
}

#[test]
fn dhcp_hostname_of_the_gateway_takes_no_name() {
    use dhcproto::v4;
    if !require_root("dhcp_hostname_of_the_gateway_takes_no_name") {
        return;
    }
    let lab = Lab::new("");
    let am = mac_of(&lab.attacker);
    // The attacker leases an address under the name `host` (the host's loopback, through the
    // gateway), so that `host.usernet` would answer with its address too.
    let ip = Ipv4Addr::new(10, 77, 0, 151);
    let req = dhcp_msg(
        v4::MessageType::Request,
        am,
        Ipv4Addr::UNSPECIFIED,
        ip,
        "host",
    );
    let araw = RawEth::open(&lab.attacker, "eth0");
    araw.send_retry(&udp4(
        (am, [0xff; 6]),
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::BROADCAST,
        (68, 67),
        &req,
    ))
    .expect("send");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !lab.d.ctl(&["leases"]).as_array().is_some_and(|l| {
        l.iter()
            .any(|l| l["ip"] == ip.to_string() && l["hostname"] == "host")
    }) {
        assert!(Instant::now() < deadline, "no lease\n{}", lab.d.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(200));
    let host: Vec<String> = lab
        .names()
        .into_iter()
        .filter(|(n, _)| n == "host.usernet")
        .map(|(_, a)| a)
        .collect();
    assert_eq!(host, ["10.77.0.1", "fd77::1"], "host.usernet");
    let dig = lab.victim.exec_ok(&[
        "dig",
        "+short",
        "+time=2",
        "+tries=1",
        "@10.77.0.1",
        "host.usernet",
    ]);
    assert_eq!(dig.trim(), "10.77.0.1", "the victim asks for host.usernet");
}

#[test]
fn dhcp_with_another_guests_chaddr_is_refused() {
    use dhcproto::v4;
    if !require_root("dhcp_with_another_guests_chaddr_is_refused") {
        return;
    }
    let lab = Lab::new("");
    let (vm, am, gwm) = (mac_of(&lab.victim), mac_of(&lab.attacker), lab.gw_mac());
    let lease_ip = Ipv4Addr::new(10, 77, 0, 150);
    let msg = |kind, chaddr, ciaddr, host: &str| dhcp_msg(kind, chaddr, ciaddr, lease_ip, host);
    // The victim takes a lease (INIT-REBOOT REQUEST for a free pool address).
    let vraw = RawEth::open(&lab.victim, "eth0");
    let req = msg(v4::MessageType::Request, vm, Ipv4Addr::UNSPECIFIED, "vic");
    vraw.send_retry(&udp4(
        (vm, [0xff; 6]),
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::BROADCAST,
        (68, 67),
        &req,
    ))
    .expect("send");
    let lease = |d: &Daemon| {
        d.ctl(&["leases"])
            .as_array()
            .expect("array")
            .iter()
            .find(|l| l["ip"] == lease_ip.to_string())
            .cloned()
            .unwrap_or(Value::Null)
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while lease(&lab.d).is_null() {
        assert!(
            Instant::now() < deadline,
            "victim got no lease\n{}",
            lab.d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The attacker releases it, then requests it for itself under a new name, both with the
    // victim's MAC as chaddr.
    let araw = RawEth::open(&lab.attacker, "eth0");
    let rel = msg(v4::MessageType::Release, vm, lease_ip, "");
    araw.send_retry(&udp4((am, gwm), ATTACKER, GW, (68, 67), &rel))
        .expect("send");
    let steal = msg(v4::MessageType::Request, vm, Ipv4Addr::UNSPECIFIED, "evil");
    araw.send_retry(&udp4(
        (am, [0xff; 6]),
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::BROADCAST,
        (68, 67),
        &steal,
    ))
    .expect("send");
    std::thread::sleep(Duration::from_millis(300));
    let l = lease(&lab.d);
    assert_eq!(
        l["mac"].as_str().map(parse_mac),
        Some(vm),
        "lease kept: {l}"
    );
    assert_eq!(l["hostname"], "vic", "hostname kept: {l}");
    assert!(
        lab.gateway()["counters"]["dhcp_spoofed"]
            .as_u64()
            .unwrap_or(0)
            >= 2,
        "dhcp_spoofed counted: {}",
        lab.gateway()
    );
}

#[test]
fn spoofed_syn_flood_opens_no_host_connection() {
    if !require_root("spoofed_syn_flood_opens_no_host_connection") {
        return;
    }
    let lab = Lab::new("");
    let echo = Echo::start();
    let (am, gwm) = (mac_of(&lab.attacker), lab.gw_mac());
    let raw = RawEth::open(&lab.attacker, "eth0");
    // Out-of-subnet sources: none may become a flow.
    for i in 0..300u32 {
        let src = Ipv4Addr::from(0xc633_6400 | (i & 0xff)); // 198.51.100.x
        raw.send_retry(&syn4((am, gwm), src, GW, 10_000 + i as u16, echo.port))
            .expect("send");
    }
    // In-subnet addresses nobody owns: the attacker's port pays for them (its own budget: at
    // most 64 flows of a port may be unestablished, so its half-open SYNs stop there).
    for i in 0..100u32 {
        let src = Ipv4Addr::new(10, 77, 0, 100 + (i % 100) as u8);
        raw.send_retry(&syn4((am, gwm), src, GW, 20_000 + i as u16, echo.port))
            .expect("send");
    }
    std::thread::sleep(Duration::from_millis(1500));
    let accepted = echo.accepted.load(Ordering::Relaxed);
    assert!(
        accepted <= 64,
        "{accepted} host connections from spoofed SYNs (budget 64)"
    );
    assert!(
        lab.drops("attacker", "spoofed_ip") >= 300,
        "spoofed_ip counted"
    );
    // The victim's own budget is untouched.
    tcp_echo_from(&lab.victim, SocketAddr::new(IpAddr::V4(GW), echo.port))
        .unwrap_or_else(|e| panic!("victim's NAT connection: {e}\n{}", lab.d.log()));
    // The attacker's half-open flows (its SYN-ACKs go nowhere) go after seconds, not hours.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n = lab.gateway()["nat"]["half_open_expired"]
            .as_u64()
            .unwrap_or(0);
        if n as usize >= accepted.min(1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "half-open flows not expired: {}",
            lab.gateway()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn rogue_router_advert_and_dhcp_offer_do_not_reach_guests() {
    if !require_root("rogue_router_advert_and_dhcp_offer_do_not_reach_guests") {
        return;
    }
    let lab = Lab::new("");
    lab.victim
        .exec_ok(&["sysctl", "-qw", "net.ipv6.conf.eth0.accept_ra=2"]);
    let am = mac_of(&lab.attacker);
    let ll: Ipv6Addr = {
        let mut b = [0u8; 16];
        b[0] = 0xfe;
        b[1] = 0x80;
        b[8] = am[0] ^ 2;
        b[9] = am[1];
        b[10] = am[2];
        b[11] = 0xff;
        b[12] = 0xfe;
        b[13] = am[3];
        b[14] = am[4];
        b[15] = am[5];
        Ipv6Addr::from(b)
    };
    let all_nodes: Ipv6Addr = "ff02::1".parse().expect("addr");
    // Reachable 0, retrans 0, then a prefix option: 2001:db8:bad::/64, on-link + autonomous.
    let mut body = vec![0u8; 8];
    body.extend_from_slice(&[3, 4, 64, 0xc0]);
    body.extend_from_slice(&86_400u32.to_be_bytes());
    body.extend_from_slice(&14_400u32.to_be_bytes());
    body.extend_from_slice(&[0; 4]);
    body.extend_from_slice(&"2001:db8:bad::".parse::<Ipv6Addr>().expect("p").octets());
    let mut ra = Vec::new();
    PacketBuilder::ethernet2(am, [0x33, 0x33, 0, 0, 0, 1])
        .ipv6(ll.octets(), all_nodes.octets(), 255)
        .icmpv6(etherparse::Icmpv6Type::Unknown {
            type_u8: 134,
            code_u8: 0,
            bytes5to8: [64, 0, 0x07, 0x08],
        })
        .write(&mut ra, &body)
        .expect("ra");
    let raw = RawEth::open(&lab.attacker, "eth0");
    for _ in 0..3 {
        raw.send_retry(&ra).expect("send");
        // A DHCP OFFER-shaped server message to everyone.
        raw.send_retry(&udp4(
            (am, [0xff; 6]),
            ATTACKER,
            Ipv4Addr::BROADCAST,
            (67, 68),
            &[2; 300],
        ))
        .expect("send");
        std::thread::sleep(Duration::from_millis(300));
    }
    std::thread::sleep(Duration::from_millis(700));
    let addrs = lab
        .victim
        .exec_ok(&["ip", "-6", "addr", "show", "dev", "eth0"]);
    assert!(
        !addrs.contains("2001:db8:bad"),
        "victim took the rogue prefix: {addrs}"
    );
    let routes = lab
        .victim
        .exec_ok(&["ip", "-6", "route", "show", "default"]);
    assert!(
        !routes.contains(&ll.to_string()),
        "victim routes via the attacker: {routes}"
    );
    assert!(
        lab.drops("attacker", "rogue_server") >= 6,
        "rogue_server counted"
    );
}

#[test]
fn host_loopback_off_is_closed_in_every_spelling() {
    if !require_root("host_loopback_off_is_closed_in_every_spelling") {
        return;
    }
    let lab = Lab::new("host_loopback = false");
    let echo = Echo::start();
    let udp = UdpSocket::bind("127.0.0.1:0").expect("udp");
    udp.set_read_timeout(Some(Duration::from_millis(1500)))
        .expect("timeout");
    let uport = udp.local_addr().expect("addr").port();
    let (vm, gwm) = (mac_of(&lab.victim), lab.gw_mac());
    let src: Ipv6Addr = VICTIM6.parse().expect("v6");
    let raw = RawEth::open(&lab.victim, "eth0");
    let spellings = [
        "::ffff:127.0.0.1",
        "::127.0.0.1",
        "::ffff:0:127.0.0.1",
        "64:ff9b::7f00:1",
        "::1",
        "::",
        "fd77::1",
    ];
    for s in spellings {
        let dst: Ipv6Addr = s.parse().expect("v6");
        let mut u = Vec::new();
        PacketBuilder::ethernet2(vm, gwm)
            .ipv6(src.octets(), dst.octets(), 64)
            .udp(40_000, uport)
            .write(&mut u, b"leak")
            .expect("udp6");
        raw.send_retry(&u).expect("send");
        let mut t = Vec::new();
        PacketBuilder::ethernet2(vm, gwm)
            .ipv6(src.octets(), dst.octets(), 64)
            .tcp(40_001, echo.port, 1, 64240)
            .syn()
            .write(&mut t, &[])
            .expect("syn6");
        raw.send_retry(&t).expect("send");
    }
    let mut b = [0u8; 16];
    assert!(
        udp.recv_from(&mut b).is_err(),
        "a datagram reached the host's loopback"
    );
    assert_eq!(
        echo.accepted.load(Ordering::Relaxed),
        0,
        "a SYN reached the host's loopback"
    );
    let nat = &lab.gateway()["nat"];
    assert!(
        nat["dropped_dest"].as_u64().unwrap_or(0) >= 2 * spellings.len() as u64,
        "{nat}"
    );
    // A real connect to the gateway's address fails at once: "Network is unreachable".
    let t0 = Instant::now();
    let err = tcp_echo_from(&lab.victim, SocketAddr::new(IpAddr::V4(GW), echo.port))
        .expect_err("host loopback is off");
    assert!(
        t0.elapsed() < Duration::from_secs(2) && err.contains("unreachable"),
        "refused in {:?}: {err}",
        t0.elapsed()
    );
}

#[test]
fn internal_network_forwards_no_dns_upstream() {
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::{Name, RecordType};
    use std::str::FromStr;
    if !require_root("internal_network_forwards_no_dns_upstream") {
        return;
    }
    // A would-be upstream on the host's loopback that counts what it gets.
    let up = UdpSocket::bind("127.0.0.1:0").expect("upstream");
    up.set_read_timeout(Some(Duration::from_millis(1500)))
        .expect("timeout");
    let up_addr = up.local_addr().expect("addr");
    let lab = Lab::new(&format!("internal = true\ndns_upstreams = [\"{up_addr}\"]"));
    // An outside name, asked from the victim: nothing may leave an internal network.
    let mut q = Message::query();
    q.add_query(Query::query(
        Name::from_str("example.com.").expect("name"),
        RecordType::A,
    ));
    let bytes = q.to_vec().expect("encode");
    let answer = run_in_netns(&lab.victim.path(), move || {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        s.send_to(&bytes, (GW, 53))?;
        let mut b = [0u8; 512];
        let n = s.recv(&mut b)?;
        Ok(b[..n].to_vec())
    })
    .expect("the gateway answers");
    let m = Message::from_vec(&answer).expect("dns answer");
    assert!(
        m.answers.is_empty(),
        "an internal network resolved an outside name: {m:?}"
    );
    let dns = &lab.gateway()["dns"];
    assert_eq!(dns["forwarded"].as_u64(), Some(0), "{dns}");
    let mut b = [0u8; 16];
    assert!(up.recv_from(&mut b).is_err());
}
