//! Cluster mode's endpoints by MAC end to end (issue 15): every node publishes its ports' MACs
//! and addresses, the others pre-install them (static FDB entries behind the right VTEP) and
//! answer ARP for them locally, so after warm-up no broadcast crosses the underlay. Three
//! "hosts" (namespaces on a veth underlay, `common::underlay`), etcd on the underlay, guests
//! with DHCP addresses (busybox udhcpc). The underlay is watched with an AF_PACKET socket on
//! each host's `ul0`: VXLAN datagrams whose inner destination MAC is broadcast or multicast are
//! counted. Needs root and the feature `cluster` (prints `SKIP` without root).
#![cfg(feature = "cluster")]

mod common;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::daemon::Daemon;
use common::etcd::Etcd;
use common::underlay::{Lab, Udhcpc, ping, ping_ok, quiet, underlay_ip, wait_for};
use common::{Httpd, Netns, require_root};
use serde_json::Value;
use usernet::link::netns::run_in_netns;

const ETCD_IP: &str = "172.31.0.254";

/// Host `i`'s config: node `h{i}` (lease TTL 3 s), the cluster network `web` (VNI 70,
/// 10.70.0.0/24, IPv6 `ipv6` (a prefix or "off"), no DNS upstream) and a netns port `p{i}x{k}`
/// for each guest.
fn config(e: &Etcd, i: usize, guests: &[&Netns], ipv6: &str) -> String {
    let mut c = format!(
        "[cluster]\netcd = [\"{}\"]\nnode = \"h{i}\"\nvtep = \"{}\"\nttl_s = 3\n\n\
         [[network]]\nname = \"web\"\nscope = \"cluster\"\nvni = 70\nsubnet = \"10.70.0.0/24\"\n\
         ipv6 = \"{ipv6}\"\ndns_upstreams = [\"127.0.0.1:9\"]\n",
        e.endpoint(),
        underlay_ip(i),
    );
    for (k, g) in guests.iter().enumerate() {
        c.push_str(&format!(
            "\n[[port]]\nnetwork = \"web\"\nname = \"p{i}x{k}\"\nnetns = \"{}\"\n",
            g.path().display()
        ));
    }
    c
}

/// Counts the VXLAN datagrams a host sends on the underlay whose inner frame is broadcast or
/// multicast (a reader thread on an AF_PACKET socket bound to `ul0` in the host's namespace).
struct Floods {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<String>>>,
}

impl Floods {
    fn start(host: &Netns) -> Floods {
        let fd = run_in_netns(&host.path(), || {
            let proto = (libc::ETH_P_ALL as u16).to_be();
            // SAFETY: plain socket(2); the fd is owned right away.
            let fd = unsafe {
                libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                    i32::from(proto),
                )
            };
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: a fresh descriptor nobody else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let name = std::ffi::CString::new("ul0").expect("name");
            // SAFETY: a NUL-terminated name.
            let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
            // SAFETY: sockaddr_ll is plain data; all-zero is valid.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto;
            sll.sll_ifindex = ifindex;
            // SAFETY: bind(2) with a sockaddr_ll of the right size.
            let r = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&sll as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(fd)
        })
        .expect("AF_PACKET socket on ul0");
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut buf = vec![0u8; 65536];
            while !s.load(Ordering::Relaxed) {
                if !common::wait_readable(fd.as_raw_fd(), 50) {
                    continue;
                }
                // SAFETY: sockaddr_ll is plain data; all-zero is valid.
                let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
                // SAFETY: recvfrom(2) into a buffer and an address of the sizes given.
                let n = unsafe {
                    libc::recvfrom(
                        fd.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        0,
                        (&mut from as *mut libc::sockaddr_ll).cast(),
                        &mut len,
                    )
                };
                if n <= 0 || from.sll_pkttype != libc::PACKET_OUTGOING {
                    continue;
                }
                if let Some(what) = inner_flood(&buf[..n as usize]) {
                    seen.push(what);
                }
            }
            seen
        });
        Floods {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops counting: a description of each flooded inner frame.
    fn finish(mut self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .map(|t| t.join().expect("counter"))
            .unwrap_or_default()
    }
}

impl Drop for Floods {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// For an underlay frame carrying VXLAN (UDP 4789) with a broadcast or multicast inner
/// destination: the inner EtherType and destination, else None.
fn inner_flood(f: &[u8]) -> Option<String> {
    if f.len() < 14 + 20 || f[12..14] != [8, 0] || f[14 + 9] != 17 {
        return None;
    }
    let ihl = usize::from(f[14] & 0x0f) * 4;
    let udp = f.get(14 + ihl..)?;
    if udp.len() < 8 + 8 + 14 || udp[2..4] != 4789u16.to_be_bytes() {
        return None;
    }
    let inner = &udp[16..];
    let ns = inner[12..14] == [0x86, 0xdd]
        && inner.get(14 + 6) == Some(&58)
        && inner.get(14 + 40) == Some(&135);
    let dhcp = inner[12..14] == [8, 0]
        && inner.get(14 + 9) == Some(&17)
        && inner.get(14 + 20 + 2..14 + 20 + 4) == Some(&[0, 67][..]);
    (inner[0] & 1 == 1).then(|| {
        format!(
            "inner dst {:02x?} ethertype {:02x}{:02x} ({} bytes){}",
            &inner[..6],
            inner[12],
            inner[13],
            inner.len(),
            if dhcp {
                " DHCP request"
            } else if ns {
                " neighbour solicitation"
            } else {
                ""
            }
        )
    })
}

/// `eth0`'s MAC in `g`.
fn mac_of(g: &Netns) -> String {
    g.exec_ok(&["cat", "/sys/class/net/eth0/address"])
        .trim()
        .to_string()
}

/// The address of a lease line (`IP SERVERID MTU`).
fn addr(lease: &str) -> String {
    lease.split_whitespace().next().expect("ip").to_string()
}

/// `ctl fdb` rows of `d` for `mac`.
fn fdb_rows(d: &Daemon, mac: &str) -> Vec<Value> {
    d.ctl(&["fdb", "--network", "web"])
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r["mac"] == mac)
        .collect()
}

/// True if `d` has `mac` installed as a cluster entry behind `vtep`.
fn installed(d: &Daemon, mac: &str, vtep: &str) -> bool {
    fdb_rows(d, mac).iter().any(|r| {
        r["cluster"] == true && r["is_static"] == true && r["vtep"] == vtep && r["port"] == "vx.web"
    })
}

/// The MAC `g`'s neighbour table has for `ip`, if any.
fn neigh_mac(g: &Netns, ip: &str) -> Option<String> {
    let out = g.exec_ok(&["ip", "neigh", "show", ip, "dev", "eth0"]);
    let mut w = out.split_whitespace();
    while let Some(x) = w.next() {
        if x == "lladdr" {
            return w.next().map(String::from);
        }
    }
    None
}

fn kill9(d: &Daemon) {
    // SAFETY: kill(2) on the pid of a daemon this test started.
    unsafe { libc::kill(d.pid() as i32, libc::SIGKILL) };
}

fn logs(d: &[&Daemon]) -> String {
    d.iter()
        .map(|d| d.log())
        .collect::<Vec<_>>()
        .join("\n---\n")
}

#[test]
fn remote_endpoints_are_preinstalled_and_arp_is_answered_locally_without_floods() {
    if !require_root("remote_endpoints_are_preinstalled_and_arp_is_answered_locally_without_floods")
    {
        return;
    }
    let lab = Lab::new(3);
    lab.ul
        .ip(&["addr", "add", &format!("{ETCD_IP}/24"), "dev", "br0"]);
    let e = Etcd::start_in(&lab.ul, ETCD_IP);
    // Host 1 has a second guest, the one that leaves.
    let extra = Netns::new("clp");
    quiet(&extra);
    let guests: Vec<Vec<&Netns>> = vec![
        vec![&lab.guests[0]],
        vec![&lab.guests[1], &extra],
        vec![&lab.guests[2]],
    ];
    let d: Vec<Daemon> = (0..3)
        .map(|i| Daemon::start_in(&lab.hosts[i], &config(&e, i, &guests[i], "off")))
        .collect();
    let all: Vec<&Daemon> = d.iter().collect();
    for (i, x) in d.iter().enumerate() {
        wait_for(&format!("host {i} sees the two others"), 10, || {
            x.ctl(&["cluster"])["networks"][0]["remotes"]
                .as_array()
                .is_some_and(|r| r.len() == 2)
        });
    }
    // Warm-up: leases, names, one round of pings. DHCP is served by each host's own gateway:
    // no DHCP request crosses the underlay.
    let floods: Vec<Floods> = lab.hosts.iter().map(Floods::start).collect();
    let dhcp = Udhcpc::new();
    let mut ip = Vec::new();
    for (i, g) in [&lab.guests[0], &lab.guests[1], &lab.guests[2], &extra]
        .iter()
        .enumerate()
    {
        let host = format!("hostname:guest{i}");
        let l = dhcp
            .run_with(g, &format!("l{i}"), &["-x", &host])
            .unwrap_or_else(|err| panic!("udhcpc guest{i}: {err}\n{}", logs(&all)));
        ip.push(addr(&l));
    }
    let seen: Vec<String> = floods.into_iter().flat_map(Floods::finish).collect();
    assert!(
        !seen.iter().any(|f| f.contains("DHCP")),
        "DHCP crossed the underlay: {seen:#?}"
    );
    let g = [&lab.guests[0], &lab.guests[1], &lab.guests[2], &extra];
    let mac: Vec<String> = g.iter().map(|g| mac_of(g)).collect();
    ping_ok(g[0], &ip[1], &all);
    ping_ok(g[1], &ip[2], &all);
    ping_ok(g[2], &ip[0], &all);
    ping_ok(g[0], &ip[3], &all);
    // Every host installs the others' guests behind their VTEPs (guest k of host h).
    let at = [0usize, 1, 2, 1];
    for (i, x) in d.iter().enumerate() {
        for k in 0..4 {
            if at[k] == i {
                continue;
            }
            let vtep = underlay_ip(at[k]);
            wait_for(&format!("host {i} installs guest{k}"), 10, || {
                installed(x, &mac[k], &vtep)
            });
        }
    }
    // etcd holds the endpoints by MAC, with their addresses and names.
    let recs = e.list("/usernet/macs/web/");
    let key = format!("/usernet/macs/web/{}/h1", mac[1]);
    let rec = recs
        .iter()
        .find(|(k, _)| *k == key)
        .unwrap_or_else(|| panic!("{key} in {recs:?}"));
    let v: Value = serde_json::from_str(&rec.1).expect("json");
    assert_eq!(v["node"], "h1", "{v}");
    assert_eq!(v["name"], "guest1", "{v}");
    assert!(
        v["ips"]
            .as_array()
            .is_some_and(|a| a.contains(&Value::from(ip[1].as_str()))),
        "{v}"
    );
    // Steady state: neighbour caches emptied, pings and HTTP across hosts; the underlay
    // carries no broadcast or multicast inner frame.
    let web = Httpd::start(g[2], "index.html", "hello from host 2");
    std::thread::sleep(Duration::from_millis(300));
    let floods: Vec<Floods> = lab.hosts.iter().map(Floods::start).collect();
    for x in &g {
        x.exec_ok(&["ip", "neigh", "flush", "all"]);
    }
    assert!(ping(g[0], &ip[1]), "guest0 -> guest1\n{}", logs(&all));
    assert!(ping(g[1], &ip[2]), "guest1 -> guest2");
    assert!(ping(g[2], &ip[0]), "guest2 -> guest0");
    assert!(ping(g[3], &ip[0]), "guest3 -> guest0");
    let url = format!("http://{}/index.html", ip[2]);
    let out = g[0].exec(&["curl", "-sS", "-m", "5", &url]);
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "curl {url}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        logs(&all)
    );
    assert_eq!(page.trim(), "hello from host 2");
    std::thread::sleep(Duration::from_millis(300));
    let seen: Vec<String> = floods.into_iter().flat_map(Floods::finish).collect();
    assert!(
        seen.is_empty(),
        "{} broadcast/multicast frames crossed the underlay: {seen:#?}",
        seen.len()
    );
    web.stop();
    // The ARP answers carried the remote guests' own MACs (from host 0's gateway).
    assert_eq!(neigh_mac(g[0], &ip[1]).as_deref(), Some(mac[1].as_str()));
    assert_eq!(neigh_mac(g[2], &ip[0]).as_deref(), Some(mac[0].as_str()));
    let gw = d[0].ctl(&["gateway"]);
    let answered = gw[0]["counters"]["proxy_answers"].as_u64().unwrap_or(0);
    assert!(answered >= 2, "{gw}");
    let vx = d[0].ctl(&["stats"]);
    let tx_local = vx
        .as_array()
        .and_then(|a| a.iter().find(|r| r["port"] == "vx.web"))
        .map(|r| r["vxlan"]["drops"]["tx_local"].as_u64().unwrap_or(0))
        .unwrap_or(0);
    assert!(tx_local >= 1, "requests kept local are counted: {vx}");
    // Both counters are in the Prometheus exposition too.
    let m = d[0].ctl(&["metrics"]);
    let m = m.as_str().unwrap_or_default();
    let line = "usernet_vxlan_drops_total{network=\"web\",port=\"vx.web\",reason=\"tx_local\"} ";
    assert!(
        m.lines()
            .any(|l| l.strip_prefix(line).and_then(|n| n.parse::<u64>().ok()) >= Some(1)),
        "{m}"
    );
    assert!(
        m.lines()
            .any(|l| l.starts_with("usernet_gateway_proxy_answers_total{") && !l.ends_with(" 0")),
        "{m}"
    );
    // The table a person reads marks them.
    let out = std::process::Command::new(common::daemon::BIN)
        .args(["ctl", "--socket"])
        .arg(d[0].sock())
        .args(["fdb", "--network", "web"])
        .output()
        .expect("ctl fdb");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.contains(&mac[1]) && l.contains("cluster") && l.contains("172.31.0.2")),
        "{text}"
    );
    // A hostile guest on host 0 sends with guest1's MAC, and claims guest1's address in ARP:
    // both dropped as spoofing (they belong to vx.web), the entry stays where host 1 put it.
    let raw = common::raw::RawEth::open(g[0], "eth0");
    let m1: Vec<u8> = mac[1]
        .split(':')
        .map(|x| u8::from_str_radix(x, 16).expect("hex"))
        .collect();
    let m0: Vec<u8> = mac[0]
        .split(':')
        .map(|x| u8::from_str_radix(x, 16).expect("hex"))
        .collect();
    let ip1: std::net::Ipv4Addr = ip[1].parse().expect("ip");
    let mut garp = vec![0, 1, 8, 0, 6, 4, 0, 2];
    garp.extend_from_slice(&m0);
    garp.extend_from_slice(&ip1.octets());
    garp.extend_from_slice(&[0xff; 6]);
    garp.extend_from_slice(&ip1.octets());
    for _ in 0..5 {
        raw.send_retry(&common::packets::eth(
            [0xff; 6],
            m1[..].try_into().expect("mac"),
            0x88b5,
            &[0; 46],
        ))
        .expect("send");
        raw.send_retry(&common::packets::eth(
            [0xff; 6],
            m0[..].try_into().expect("mac"),
            0x0806,
            &garp,
        ))
        .expect("send");
    }
    let drops = |reason: &str| {
        d[0].ctl(&["stats"])
            .as_array()
            .and_then(|v| v.iter().find(|r| r["port"] == "p0x0").cloned())
            .map(|r| r["stats"]["drops"][reason].as_u64().unwrap_or(0))
            .unwrap_or(0)
    };
    wait_for("the spoofed frames dropped", 5, || {
        drops("spoofed_source") >= 5 && drops("spoofed_arp") >= 5
    });
    assert!(
        installed(&d[0], &mac[1], &underlay_ip(1)),
        "{:?}",
        fdb_rows(&d[0], &mac[1])
    );
    assert!(ping(g[2], &ip[1]), "guest1 still reachable from host 2");
    // Hand-written bad records create nothing: a value naming another node, a node that is
    // not live, garbage, a key of the wrong shape.
    let before = d[0].ctl(&["cluster"])["malformed"].as_u64().unwrap_or(0);
    e.put(
        "/usernet/macs/web/02:aa:00:00:00:01/h1",
        br#"{"node":"h2","ips":["10.70.0.201"]}"#,
    );
    e.put(
        "/usernet/macs/web/02:aa:00:00:00:02/ghost",
        br#"{"node":"ghost","ips":["10.70.0.202"]}"#,
    );
    e.put("/usernet/macs/web/02:aa:00:00:00:03/h1", b"\xff{not json");
    e.put("/usernet/macs/web/h1", b"{}");
    wait_for("the bad records counted", 5, || {
        d[0].ctl(&["cluster"])["malformed"].as_u64().unwrap_or(0) >= before + 3
    });
    std::thread::sleep(Duration::from_millis(500));
    for m in [
        "02:aa:00:00:00:01",
        "02:aa:00:00:00:02",
        "02:aa:00:00:00:03",
    ] {
        assert!(
            fdb_rows(&d[0], m).is_empty(),
            "{m}: {:?}",
            fdb_rows(&d[0], m)
        );
    }
    // A guest's port goes: its entry and its proxy answer go on the other hosts.
    d[1].ctl(&["port", "rm", "p1x1"]);
    wait_for("guest3's entry to go from host 0", 5, || {
        fdb_rows(&d[0], &mac[3]).is_empty()
    });
    g[0].exec_ok(&["ip", "neigh", "flush", "all"]);
    assert!(!ping(g[0], &ip[3]), "guest3 is gone");
    assert_ne!(
        neigh_mac(g[0], &ip[3]).as_deref(),
        Some(mac[3].as_str()),
        "no proxy answer for a gone endpoint"
    );
    // A host dies: its guests' entries go from the others after its TTL.
    kill9(&d[2]);
    wait_for("guest2's entry to go from host 0", 10, || {
        fdb_rows(&d[0], &mac[2])
            .iter()
            .all(|r| r["cluster"] != true)
    });
    assert!(
        installed(&d[0], &mac[1], &underlay_ip(1)),
        "host 1's guest stays"
    );
    assert!(ping(g[0], &ip[1]), "and is reachable");
}

/// The global IPv6 address of `eth0` in `g` (SLAAC from its host's gateway).
fn global6(g: &Netns) -> Option<String> {
    let out = g.exec_ok(&[
        "ip", "-6", "-br", "addr", "show", "dev", "eth0", "scope", "global",
    ]);
    out.split_whitespace()
        .find(|w| w.starts_with("fd70:"))
        .and_then(|a| a.split('/').next())
        .map(String::from)
}

#[test]
fn neighbour_solicitations_for_remote_endpoints_are_answered_locally() {
    if !require_root("neighbour_solicitations_for_remote_endpoints_are_answered_locally") {
        return;
    }
    let lab = Lab::new(2);
    lab.ul
        .ip(&["addr", "add", &format!("{ETCD_IP}/24"), "dev", "br0"]);
    let e = Etcd::start_in(&lab.ul, ETCD_IP);
    // These guests keep IPv6 (the lab made them quiet).
    for g in &lab.guests {
        for k in ["all", "default", "eth0"] {
            let _ = g.exec(&[
                "sysctl",
                "-qw",
                &format!("net.ipv6.conf.{k}.disable_ipv6=0"),
            ]);
        }
    }
    let d: Vec<Daemon> = (0..2)
        .map(|i| {
            Daemon::start_in(
                &lab.hosts[i],
                &config(&e, i, &[&lab.guests[i]], "fd70::/64"),
            )
        })
        .collect();
    let all: Vec<&Daemon> = d.iter().collect();
    let g = [&lab.guests[0], &lab.guests[1]];
    let mut ip6 = Vec::new();
    for (i, x) in g.iter().enumerate() {
        let _ = x.exec(&["sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=0"]);
        let mut a = None;
        wait_for(&format!("guest{i}'s SLAAC address"), 15, || {
            a = global6(x);
            a.is_some()
        });
        let a = a.expect("address");
        // Seen by port security (and so published) once it sends from it.
        let mut ok = false;
        for _ in 0..10 {
            if x.exec(&["ping", "-6", "-c", "1", "-W", "1", "-I", &a, "fd70::1"])
                .status
                .success()
            {
                ok = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        assert!(ok, "guest{i} pings its gateway from {a}\n{}", logs(&all));
        ip6.push(a);
    }
    let mac: Vec<String> = g.iter().map(|x| mac_of(x)).collect();
    for (i, x) in d.iter().enumerate() {
        let k = 1 - i;
        wait_for(
            &format!("host {i} proxies guest{k}'s IPv6 address"),
            10,
            || {
                installed(x, &mac[k], &underlay_ip(k))
                    && e.list("/usernet/macs/web/")
                        .iter()
                        .any(|(key, v)| key.contains(&mac[k]) && v.contains(&ip6[k]))
            },
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    let floods: Vec<Floods> = lab.hosts.iter().map(Floods::start).collect();
    for x in &g {
        x.exec_ok(&["ip", "-6", "neigh", "flush", "all"]);
    }
    let mut ok = false;
    for _ in 0..5 {
        if ping6(g[0], &ip6[1]) {
            ok = true;
            break;
        }
    }
    assert!(ok, "guest0 -> guest1 over IPv6\n{}", logs(&all));
    let seen: Vec<String> = floods.into_iter().flat_map(Floods::finish).collect();
    assert!(
        !seen.iter().any(|f| f.contains("neighbour solicitation")),
        "NS crossed the underlay: {seen:#?}"
    );
    let out = g[0].exec_ok(&["ip", "-6", "neigh", "show", &ip6[1], "dev", "eth0"]);
    assert!(
        out.contains(&mac[1]),
        "guest0 resolved {} as {out:?}, not {}",
        ip6[1],
        mac[1]
    );
    let gw = d[0].ctl(&["gateway"]);
    assert!(
        gw[0]["counters"]["proxy_answers"].as_u64().unwrap_or(0) >= 1,
        "{gw}"
    );
}

/// One IPv6 ping; true if answered.
fn ping6(from: &Netns, to: &str) -> bool {
    from.exec(&["ping", "-6", "-c", "1", "-W", "2", to])
        .status
        .success()
}
