//! End-to-end tests of the LAN uplink, macvlan style (issue 14, part 3): an AF_PACKET port on a
//! host interface joins a network with `gateway = false` to a LAN, and containers on that
//! network are hosts of the LAN with MACs of their own, as with Docker's macvlan driver.
//!
//! Topology (every piece a namespace or veth the test creates, removed on drop):
//!
//! ```text
//!  LAN namespace                      usernet's namespace ("host")        containers
//!  lan0 192.168.77.1/24  ── veth ──   uplink (no address, no route)  ─┬─ c1 (TAP, netns port)
//!  dnsmasq (DHCP only, on lan0)       usernet up: network "lan",      └─ c2 (TAP, netns port)
//!  TCP echo server, 198.51.100.1/32   gateway = false
//! ```
//!
//! The containers get their addresses from the LAN's dnsmasq (DHCPv4, and router advertisements
//! for SLAAC; or a static one), reach the LAN host (ping and a TCP transfer, bytes checked both
//! ways), and the LAN host sees each with its own MAC. usernet's namespace has no address on the uplink and no route at all, so the host's
//! own stack is provably not on the path. Need root; nothing leaves the namespaces.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::{Child, Netns, Veth, require_root};

/// The LAN's subnet, router/DHCP server address and DHCP pool.
const LAN_ADDR: &str = "192.168.77.1";
const LAN_CIDR: &str = "192.168.77.1/24";
const POOL: &str = "192.168.77.100,192.168.77.150,255.255.255.0,1h";
/// An address behind the LAN host (on its loopback): reached only through the default route.
const BEYOND: &str = "198.51.100.1";
/// The LAN's IPv6 prefix (router advertisements from dnsmasq) and the LAN host's address in it.
const LAN6_ADDR: &str = "fd77::1";

/// A dnsmasq serving DHCP (no DNS: `--port=0`) on one interface of the LAN namespace; killed
/// by pid on drop (the `Child` guard: `ip netns exec` execs dnsmasq, so its pid is dnsmasq's).
struct Dnsmasq {
    _child: Child,
    leases: PathBuf,
}

impl Dnsmasq {
    fn start(ns: &Netns, ifname: &str, dir: &Path) -> Dnsmasq {
        let leases = dir.join("dnsmasq.leases");
        let pid = dir.join("dnsmasq.pid");
        let child = common::dnsmasq(
            Some(ns),
            &[
                "--port=0",
                "--bind-interfaces",
                &format!("--interface={ifname}"),
                &format!("--dhcp-range={POOL}"),
                &format!("--dhcp-option=option:router,{LAN_ADDR}"),
                // Router advertisements for SLAAC in fd77::/64.
                "--enable-ra",
                "--dhcp-range=fd77::,ra-only",
                // dnsmasq pings an address for 3 s before it offers it; the test's clients
                // retry every second, which would make the leases slow, not different.
                "--no-ping",
                &format!("--dhcp-leasefile={}", leases.display()),
                &format!("--pid-file={}", pid.display()),
            ],
        );
        let d = Dnsmasq {
            _child: child,
            leases,
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let out = ns.exec(&["ss", "-Hlun"]);
            if String::from_utf8_lossy(&out.stdout).contains(":67 ") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "dnsmasq did not start in {}",
                ns.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }

    /// The lease file's `(mac, ip)` pairs.
    fn leases(&self) -> Vec<(String, String)> {
        std::fs::read_to_string(&self.leases)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                Some((f.get(1)?.to_string(), f.get(2)?.to_string()))
            })
            .collect()
    }
}

/// The LAN namespace, usernet's namespace and the veth between them; dropped in reverse.
struct Lan {
    /// The LAN: `lan0` with 192.168.77.1/24, `BEYOND` on its loopback.
    lan: Netns,
    /// usernet's namespace: `lo` and the uplink end of the veth, nothing else.
    host: Netns,
    /// The uplink's name inside `host`.
    uplink: String,
    /// Deleting the namespaces deletes the veth; the guard's own delete then finds nothing.
    _veth: Veth,
}

impl Lan {
    fn new() -> Lan {
        let lan = Netns::new("ull");
        let host = Netns::new("ulh");
        let veth = Veth::new("ulv");
        veth.move_b(&lan, Some("lan0"));
        let uplink = veth.a.clone();
        common::ip(&["link", "set", &uplink, "netns", &host.name]);
        lan.ip(&["addr", "add", LAN_CIDR, "dev", "lan0"]);
        lan.ip(&[
            "addr",
            "add",
            &format!("{LAN6_ADDR}/64"),
            "dev",
            "lan0",
            "nodad",
        ]);
        lan.ip(&["addr", "add", &format!("{BEYOND}/32"), "dev", "lo"]);
        lan.ip(&["link", "set", "lo", "up"]);
        host.ip(&["link", "set", "lo", "up"]);
        Lan {
            lan,
            host,
            uplink,
            _veth: veth,
        }
    }

    /// `usernet up` in the host namespace: network `lan` without gateway, the uplink, and
    /// `ports` (extra `[[port]]` sections), with `network_extra` in the network's section.
    fn daemon(&self, network_extra: &str, uplink_extra: &str, ports: &str) -> Daemon {
        let cfg = format!(
            "[[network]]\nname = \"lan\"\ngateway = false\n{network_extra}\n\
             [[port]]\nnetwork = \"lan\"\nname = \"uplink\"\npacket = \"{}\"\n{uplink_extra}\n{ports}",
            self.uplink
        );
        Daemon::start_in(&self.host, &cfg)
    }
}

fn netns_port(name: &str, ns: &Netns, extra: &str) -> String {
    format!(
        "[[port]]\nnetwork = \"lan\"\nname = \"{name}\"\nnetns = \"{}\"\n{extra}\n",
        ns.path().display()
    )
}

/// The udhcpc hook: address and default route, nothing else (never the host's resolv.conf).
/// It flushes IPv4 only: flushing all would take the link-local IPv6 address too, and the
/// SLAAC address then never leaves DAD's tentative state.
fn udhcpc_script(dir: &Path) -> String {
    let p = dir.join("udhcpc.sh");
    std::fs::write(
        &p,
        "#!/bin/sh\ncase \"$1\" in\n  bound|renew)\n    ip -4 addr flush dev \"$interface\"\n    ip addr add \"$ip/$mask\" dev \"$interface\"\n    [ -n \"$router\" ] && ip route replace default via \"$router\" dev \"$interface\"\n    ;;\n  deconfig)\n    ip -4 addr flush dev \"$interface\"\n    ;;\nesac\nexit 0\n",
    )
    .expect("write udhcpc script");
    let out = std::process::Command::new("chmod")
        .arg("+x")
        .arg(&p)
        .status()
        .expect("chmod");
    assert!(out.success());
    p.to_string_lossy().into_owned()
}

/// busybox udhcpc once on `eth0` of `ns` (exits once bound); `broadcast` asks the server to
/// broadcast its replies (`-B`) instead of unicasting them to the offered address.
fn udhcpc(ns: &Netns, script: &str, broadcast: bool) {
    let mut args = vec![
        "busybox", "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "10", "-T", "1", "-s", script,
    ];
    if broadcast {
        args.push("-B");
    }
    let out = ns.exec(&args);
    assert!(
        out.status.success(),
        "udhcpc in {}: {}{}",
        ns.name,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The MAC of `ifname` in `ns`.
fn mac_of(ns: &Netns, ifname: &str) -> String {
    ns.exec_ok(&["cat", &format!("/sys/class/net/{ifname}/address")])
        .trim()
        .to_string()
}

/// The IPv4 addresses (without prefix) on `ifname` in `ns`.
fn ipv4_of(ns: &Netns, ifname: &str) -> Vec<String> {
    ns.exec_ok(&["ip", "-4", "-o", "addr", "show", "dev", ifname])
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            it.find(|w| *w == "inet")?;
            Some(it.next()?.split('/').next()?.to_string())
        })
        .collect()
}

/// The SLAAC address a MAC gets in fd77::/64 (EUI-64).
fn eui64(mac: &str) -> String {
    let b: Vec<u8> = mac
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).expect("hex"))
        .collect();
    let w = |hi: u8, lo: u8| u16::from(hi) << 8 | u16::from(lo);
    std::net::Ipv6Addr::new(
        0xfd77,
        0,
        0,
        0,
        w(b[0] ^ 2, b[1]),
        w(b[2], 0xff),
        w(0xfe, b[3]),
        w(b[4], b[5]),
    )
    .to_string()
}

/// Waits up to 10 s for `addr` on `eth0` of `ns`, past duplicate address detection.
fn wait_addr6(ns: &Netns, addr: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let out = ns.exec_ok(&["ip", "-6", "-o", "addr", "show", "dev", "eth0"]);
        if out
            .lines()
            .any(|l| l.contains(&format!(" {addr}/")) && !l.contains("tentative"))
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

fn ping(from: &Netns, to: &str) -> bool {
    from.exec(&["ping", "-c", "1", "-W", "2", to])
        .status
        .success()
}

/// Pings `to` from `from` up to 5 times (the first may wait for ARP on a busy machine).
fn ping_ok(from: &Netns, to: &str) -> bool {
    (0..5).any(|_| ping(from, to))
}

/// Runs `f` on a thread inside `ns` (setns on that thread only: sockets it opens live there).
fn in_netns<T: Send + 'static>(
    ns: &Netns,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = ns.path();
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open netns");
        // SAFETY: setns on a descriptor we own; it changes only this thread's namespace.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
}

/// 1 MiB that no two offsets repeat in a short period (xorshift), so a lost or reordered
/// segment shows.
fn payload() -> Vec<u8> {
    common::pattern(1 << 20, 0x9e37_79b9_7f4a_7c15)
}

/// A TCP transfer between `client` and a server at `LAN_ADDR:port` in `lan`: the client sends
/// 1 MiB, the server reads it to the end and sends it back, the client reads it to the end.
/// Returns (what the server got, what the client got back).
fn tcp_echo(lan: &Netns, client: &Netns, port: u16) -> (Vec<u8>, Vec<u8>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let server = in_netns(lan, move || {
        let l = TcpListener::bind((LAN_ADDR, port)).expect("bind echo server");
        l.set_nonblocking(true).expect("nonblocking");
        tx.send(()).expect("ready");
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut s = loop {
            match l.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        return Vec::new();
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("accept: {e}"),
            }
        };
        s.set_nonblocking(false).expect("blocking");
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        s.set_write_timeout(Some(Duration::from_secs(10))).ok();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        let _ = s.write_all(&got);
        let _ = s.shutdown(std::net::Shutdown::Write);
        got
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("echo server ready");
    let client = in_netns(client, move || {
        let addr: SocketAddr = format!("{LAN_ADDR}:{port}").parse().expect("addr");
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        s.set_write_timeout(Some(Duration::from_secs(10))).ok();
        s.write_all(&payload()).expect("send");
        s.shutdown(std::net::Shutdown::Write).expect("shutdown");
        let mut back = Vec::new();
        let _ = s.read_to_end(&mut back);
        back
    });
    let back = client.join().expect("client thread");
    let got = server.join().expect("server thread");
    (got, back)
}

/// The LAN host's neighbour entry for `ip` (its `lladdr`), if any.
fn lan_neigh(lan: &Netns, ip: &str) -> Option<String> {
    let out = lan.exec_ok(&["ip", "neigh", "show", ip, "dev", "lan0"]);
    let mut it = out.split_whitespace();
    it.find(|w| *w == "lladdr")?;
    it.next().map(String::from)
}

/// The FDB's port for `mac` on network `lan`.
fn fdb_port(d: &Daemon, mac: &str) -> Option<String> {
    d.ctl(&["fdb"])
        .as_array()?
        .iter()
        .find(|r| r["mac"].as_str() == Some(mac))
        .and_then(|r| r["port"].as_str().map(String::from))
}

/// The uplink's promiscuity count (`ip -d link`): > 0 while usernet holds it promiscuous.
fn promiscuity(ns: &Netns, ifname: &str) -> u32 {
    let out = ns.exec_ok(&["ip", "-d", "link", "show", "dev", ifname]);
    let mut it = out.split_whitespace();
    it.find(|w| *w == "promiscuity")
        .and_then(|_| it.next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn uplink_dhcp_leases_from_the_lan_with_own_macs() {
    if !require_root("uplink_dhcp_leases_from_the_lan_with_own_macs") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let net = Lan::new();
    let dnsmasq = Dnsmasq::start(&net.lan, "lan0", dir.path());
    let c1 = Netns::new("ulc");
    let c2 = Netns::new("ulc");
    let d = net.daemon(
        "",
        "",
        &(netns_port("c1", &c1, "") + &netns_port("c2", &c2, "")),
    );

    // usernet holds the uplink promiscuous (on a NIC, frames to the containers' MACs would
    // otherwise never reach it), and the host's own stack has nothing on it: no IPv4 address,
    // no route at all in usernet's namespace.
    assert!(
        promiscuity(&net.host, &net.uplink) > 0,
        "uplink not promiscuous"
    );
    assert!(ipv4_of(&net.host, &net.uplink).is_empty());
    let routes = net
        .host
        .exec_ok(&["ip", "-4", "route", "show", "table", "all"]);
    assert!(
        !routes.contains("192.168.77.") && !routes.contains("default"),
        "usernet's namespace has a route to the LAN: {routes}"
    );

    // Leases from the LAN's DHCP server: c1 lets dnsmasq unicast its replies, c2 asks for
    // broadcast replies (both must cross the uplink to the right container).
    let script = udhcpc_script(dir.path());
    udhcpc(&c1, &script, false);
    udhcpc(&c2, &script, true);
    let leases = dnsmasq.leases();
    let mut ips = Vec::new();
    for (c, name) in [(&c1, "c1"), (&c2, "c2")] {
        let mac = mac_of(c, "eth0");
        let ip = ipv4_of(c, "eth0");
        assert_eq!(ip.len(), 1, "{name}: {ip:?}");
        let ip = ip[0].clone();
        assert!(
            leases.contains(&(mac.clone(), ip.clone())),
            "dnsmasq's lease file lacks {name}'s {mac} -> {ip}: {leases:?}"
        );
        assert!(ping_ok(c, LAN_ADDR), "{name} -> LAN host\n{}", d.log());
        // The default route the LAN's DHCP gave: an address behind the LAN host.
        assert!(ping_ok(c, BEYOND), "{name} -> {BEYOND} via the LAN router");
        // The LAN host sees the container with its own MAC, and usernet learned it on the
        // container's port (not the uplink).
        assert_eq!(
            lan_neigh(&net.lan, &ip).as_deref(),
            Some(mac.as_str()),
            "LAN neighbour entry of {name} ({ip})"
        );
        assert_eq!(fdb_port(&d, &mac).as_deref(), Some(name), "FDB of {mac}");
        // IPv6: the LAN router's advertisements reach the container, which forms its SLAAC
        // address from its own MAC; the LAN host sees it with that MAC.
        let ip6 = eui64(&mac);
        assert!(
            wait_addr6(c, &ip6),
            "{name}: no SLAAC address {ip6} from the LAN's RA"
        );
        assert!(ping_ok(c, LAN6_ADDR), "{name} -> {LAN6_ADDR}");
        assert_eq!(
            lan_neigh(&net.lan, &ip6).as_deref(),
            Some(mac.as_str()),
            "LAN neighbour entry of {name} ({ip6})"
        );
        ips.push(ip);
    }
    assert_eq!(leases.len(), 2, "{leases:?}");
    assert_ne!(ips[0], ips[1]);
    // The LAN host's MAC is learned on the uplink.
    let lan_mac = mac_of(&net.lan, "lan0");
    assert_eq!(fdb_port(&d, &lan_mac).as_deref(), Some("uplink"));

    // The containers reach each other through usernet's switch, not the LAN.
    assert!(ping_ok(&c1, &ips[1]), "c1 -> c2");

    // TCP both ways, 1 MiB each, bytes checked (GSO/GRO frames cross the uplink both ways).
    for (c, port) in [(&c1, 7001), (&c2, 7002)] {
        let (got, back) = tcp_echo(&net.lan, c, port);
        let want = payload();
        assert!(
            got == want,
            "LAN server got {} bytes, not the 1 MiB sent",
            got.len()
        );
        assert!(back == want, "client got {} bytes back", back.len());
    }
    // Still nothing of the host's own stack on the path.
    assert!(ipv4_of(&net.host, &net.uplink).is_empty());
}

#[test]
fn uplink_static_address_and_port_security() {
    if !require_root("uplink_static_address_and_port_security") {
        return;
    }
    let net = Lan::new();
    let c1 = Netns::new("ulc");
    let c2 = Netns::new("ulc");
    // The hardened layout: port security on for the containers, off on the uplink (it speaks
    // for every LAN host, the DHCP server included), which owns the LAN router's address so
    // that no container can claim it.
    let d = net.daemon(
        "port_security = true",
        &format!("port_security = false\nallowed_ips = [\"{LAN_ADDR}\"]"),
        &(netns_port(
            "c1",
            &c1,
            &format!(
                "ips = [\"192.168.77.50/24\"]\nmac = \"02:00:c0:a8:4d:32\"\ngateway = [\"{LAN_ADDR}\"]"
            ),
        ) + &netns_port("c2", &c2, "ips = [\"192.168.77.51/24\"]\ndefault_route = false")),
    );
    assert_eq!(mac_of(&c1, "eth0"), "02:00:c0:a8:4d:32");
    assert!(ping_ok(&c1, LAN_ADDR), "c1 -> LAN host\n{}", d.log());
    assert_eq!(
        lan_neigh(&net.lan, "192.168.77.50").as_deref(),
        Some("02:00:c0:a8:4d:32")
    );
    assert!(ping_ok(&c1, BEYOND), "c1 -> {BEYOND} via `gateway`");
    assert!(ping_ok(&c2, LAN_ADDR), "c2 -> LAN host");
    assert!(!ping(&c2, BEYOND), "c2 has no default route");
    let (got, back) = tcp_echo(&net.lan, &c1, 7003);
    assert!(
        got == payload() && back == payload(),
        "TCP echo over the uplink"
    );

    // c2 claims the LAN router's address: dropped at its port, the LAN never sees it.
    c2.ip(&["addr", "add", &format!("{LAN_ADDR}/32"), "dev", "eth0"]);
    let _ = c2.exec(&[
        "busybox", "arping", "-U", "-c", "2", "-w", "1", "-I", "eth0", "-s", LAN_ADDR, LAN_ADDR,
    ]);
    let stats = d.ctl(&["stats"]);
    let c2_stats = stats
        .as_array()
        .and_then(|a| a.iter().find(|r| r["port"] == "c2"))
        .expect("c2 stats");
    assert!(
        c2_stats["stats"]["drops"]["spoofed_arp"].as_u64() > Some(0),
        "c2's claim of the router's address was not dropped: {c2_stats}"
    );
}

#[test]
fn uplink_host_reaches_containers_only_through_a_port_of_its_own() {
    if !require_root("uplink_host_reaches_containers_only_through_a_port_of_its_own") {
        return;
    }
    let net = Lan::new();
    let c1 = Netns::new("ulc");
    let d = net.daemon(
        "",
        "",
        &netns_port("c1", &c1, "ips = [\"192.168.77.60/24\"]"),
    );
    assert!(ping_ok(&c1, LAN_ADDR), "c1 -> LAN host\n{}", d.log());

    // As with macvlan: the host's own address on the uplink reaches the LAN, never the
    // containers (frames the host's stack sends leave by the wire; usernet does not read its
    // own interface's outgoing frames, and what usernet sends is not delivered to the host's
    // stack).
    net.host
        .ip(&["addr", "add", "192.168.77.2/24", "dev", &net.uplink]);
    assert!(ping_ok(&net.host, LAN_ADDR), "host -> LAN");
    assert!(
        !ping(&net.host, "192.168.77.60"),
        "host -> c1 over the uplink"
    );
    assert!(!ping(&c1, "192.168.77.2"), "c1 -> host over the uplink");

    // The way round it (macvlan's "shim" interface): the host joins the network with a port
    // of its own and takes its LAN address there, not on the uplink.
    net.host
        .ip(&["addr", "del", "192.168.77.2/24", "dev", &net.uplink]);
    let tap = common::unique("ult");
    d.ctl(&[
        "port",
        "add",
        "--network",
        "lan",
        "--name",
        "shim",
        "--tap",
        &tap,
    ]);
    net.host
        .ip(&["addr", "add", "192.168.77.3/24", "dev", &tap]);
    net.host.ip(&["link", "set", &tap, "up"]);
    assert!(ping_ok(&net.host, "192.168.77.60"), "host -> c1 via shim");
    assert!(ping_ok(&c1, "192.168.77.3"), "c1 -> host via shim");
    assert!(ping_ok(&net.host, LAN_ADDR), "host -> LAN via shim");
}
