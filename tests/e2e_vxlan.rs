//! VXLAN ports end to end (issue 14, parts 1 and 4): "hosts" are network namespaces joined by
//! an underlay (a Linux bridge in its own namespace, 172.31.0.0/24), each running `usernet up`
//! with a network, a guest namespace on a netns port and a VXLAN port to the others; or, for
//! interop, the kernel's own vxlan + bridge. Hostile datagrams come from real UDP sockets on
//! the underlay. Needs root (prints `SKIP` otherwise).

mod common;

use std::collections::HashMap;
use std::net::UdpSocket;
use std::process::Command;
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::raw::RawEth;
use common::underlay::{Lab, Udhcpc, ping, ping_ok, underlay_ip, wait_for};
use common::{Child, Httpd, Netns, Veth, ip, require_root};
use serde_json::Value;
use usernet::link::netns::run_in_netns;

const NO_UPSTREAM: &str = "127.0.0.1:9";
/// An ethertype no stack answers (IEEE local experimental): frames the tests count.
const ETH_TEST: u16 = 0x88b5;

fn guest_ip(i: usize) -> String {
    format!("10.77.0.{}", 101 + i)
}

/// Host `i` of `n`: network `ov` (gateway, no IPv6), its guest on a netns port with a static
/// address (or DHCP with `dhcp`), and a VXLAN port `vx` to the other hosts. The VXLAN port comes
/// first so the guest's TAP takes the inner MTU.
fn config(lab: &Lab, i: usize, n: usize, extra: &str, dhcp: bool) -> String {
    let remotes: Vec<String> = (0..n)
        .filter(|j| *j != i)
        .map(|j| format!("\"{}\"", underlay_ip(j)))
        .collect();
    let lo = 10 + 40 * i;
    let addr = if dhcp {
        String::new()
    } else {
        format!("ips = [\"{}/24\"]\n", guest_ip(i))
    };
    format!(
        "[[network]]\nname = \"ov\"\nsubnet = \"10.77.0.0/24\"\nipv6 = \"off\"\n\
         dns_upstreams = [\"{NO_UPSTREAM}\"]\ndhcp_range = \"10.77.0.{lo}-10.77.0.{}\"\n{extra}\n\
         [[port]]\nnetwork = \"ov\"\nname = \"vx\"\n\
         vxlan = {{ vni = 42, local = \"{}\", remotes = [{}] }}\n\n\
         [[port]]\nnetwork = \"ov\"\nname = \"g\"\nnetns = \"{}\"\n{addr}",
        lo + 39,
        underlay_ip(i),
        remotes.join(", "),
        lab.guests[i].path().display(),
    )
}

fn start(lab: &Lab, n: usize, extra: &str, dhcp: bool) -> Vec<Daemon> {
    (0..n)
        .map(|i| Daemon::start_in(&lab.hosts[i], &config(lab, i, n, extra, dhcp)))
        .collect()
}

fn mac_of(ns: &Netns, ifname: &str) -> [u8; 6] {
    let s = ns.exec_ok(&["cat", &format!("/sys/class/net/{ifname}/address")]);
    let v: Vec<u8> = s
        .trim()
        .split(':')
        .map(|x| u8::from_str_radix(x, 16).expect("hex"))
        .collect();
    v.try_into().expect("6 bytes")
}

fn mac_str(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn frame(dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ETH_TEST.to_be_bytes());
    f.extend_from_slice(&[0x5a; 46]);
    f
}

/// Per remote of port `vx`: (rx_frames, tx_frames, macs).
fn remotes(d: &Daemon) -> HashMap<String, (u64, u64, u64)> {
    d.ctl(&["vxlan", "vx", "remotes"])
        .as_array()
        .expect("array")
        .iter()
        .map(|r| {
            (
                r["remote"].as_str().expect("remote").to_string(),
                (
                    r["rx_frames"].as_u64().expect("rx"),
                    r["tx_frames"].as_u64().expect("tx"),
                    r["macs"].as_u64().expect("macs"),
                ),
            )
        })
        .collect()
}

/// The `vxlan` counters of port `vx` from `ctl stats`.
fn vx_stats(d: &Daemon) -> Value {
    d.ctl(&["stats"])
        .as_array()
        .expect("array")
        .iter()
        .find(|r| r["port"] == "vx")
        .map(|r| r["vxlan"].clone())
        .expect("vx row")
}

fn drop_count(d: &Daemon, reason: &str) -> u64 {
    vx_stats(d)["drops"][reason].as_u64().unwrap_or(0)
}

/// The FDB row of `mac`, if any.
fn fdb_row(d: &Daemon, mac: [u8; 6]) -> Option<Value> {
    let m = mac_str(mac);
    d.ctl(&["fdb"])
        .as_array()
        .expect("array")
        .iter()
        .find(|r| r["mac"].as_str() == Some(m.as_str()))
        .cloned()
}

/// A body whose every byte depends on its position (a reordered or lost segment shows).
fn pattern(n: usize) -> String {
    (0..n)
        .map(|i| char::from(b'a' + ((i * 7 + i / 251) % 26) as u8))
        .collect()
}

/// `curl http://ADDR/NAME` from `ns`, retried while the server starts.
fn fetch(ns: &Netns, addr: &str, name: &str) -> String {
    let url = format!("http://{addr}/{name}");
    let mut body = String::new();
    for _ in 0..10 {
        let out = ns.exec(&["curl", "-s", "-m", "5", &url]);
        body = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && !body.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    body
}

#[test]
fn two_hosts_guests_ping_fetch_and_iperf_over_vxlan() {
    if !require_root("two_hosts_guests_ping_fetch_and_iperf_over_vxlan") {
        return;
    }
    let lab = Lab::new(2);
    let d = start(&lab, 2, "", false);
    let (ga, gb) = (&lab.guests[0], &lab.guests[1]);
    // The guests' TAPs took the inner MTU (1500 underlay - 50).
    assert_eq!(
        ga.exec_ok(&["cat", "/sys/class/net/eth0/mtu"]).trim(),
        "1450"
    );
    ping_ok(ga, &guest_ip(1), &[&d[0], &d[1]]);
    ping_ok(gb, &guest_ip(0), &[&d[0], &d[1]]);
    // HTTP: 300 kB, every byte checked (TCP segmented to the inner MTU).
    let body = pattern(300_000);
    let _h = Httpd::start(gb, "f", &body);
    let got = fetch(ga, &guest_ip(1), "f");
    assert!(
        got == body,
        "fetched {} bytes, not the body\n{}\n{}",
        got.len(),
        vx_stats(&d[0]),
        vx_stats(&d[1]),
    );
    if Command::new("iperf3").arg("-v").output().is_ok() {
        let _srv = Child(
            gb.cmd(&["iperf3", "-s", "-1", "-p", "5201"])
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("iperf3 -s"),
        );
        let mut ok = false;
        for _ in 0..20 {
            std::thread::sleep(Duration::from_millis(200));
            let out = ga.exec(&["iperf3", "-c", &guest_ip(1), "-p", "5201", "-t", "1"]);
            if out.status.success() {
                ok = true;
                break;
            }
        }
        assert!(ok, "iperf3 across hosts failed");
    }
    // Host A's FDB shows guest B's MAC behind the VXLAN port, with its VTEP.
    let row = fdb_row(&d[0], mac_of(gb, "eth0")).expect("guest B's MAC in host A's FDB");
    assert_eq!(
        (row["port"].as_str(), row["vtep"].as_str()),
        (Some("vx"), Some("172.31.0.2"))
    );
    let local = fdb_row(&d[0], mac_of(ga, "eth0")).expect("guest A's MAC");
    assert!(local.get("vtep").is_none(), "{local}");
    let st = vx_stats(&d[0]);
    assert!(st["rx_frames"].as_u64() > Some(100), "{st}");
    assert_eq!(st["mtu"], 1450);
    // ctl stats (table) shows the VXLAN counters.
    let out = Command::new(common::daemon::BIN)
        .args(["ctl", "--socket"])
        .arg(d[0].sock())
        .arg("stats")
        .output()
        .expect("ctl stats");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("VXLAN_PORT") && text.contains("vx"), "{text}");
}

#[test]
fn three_hosts_unknown_unicast_reaches_each_remote_once_then_only_its_vtep() {
    if !require_root("three_hosts_unknown_unicast_reaches_each_remote_once_then_only_its_vtep") {
        return;
    }
    let lab = Lab::new(3);
    let d = start(&lab, 3, "", false);
    let (a, b, c) = ("172.31.0.1", "172.31.0.2", "172.31.0.3");
    ping_ok(&lab.guests[0], &guest_ip(2), &[&d[0], &d[2]]);
    let ga = mac_of(&lab.guests[0], "eth0");
    let gb = mac_of(&lab.guests[1], "eth0");
    let raw_a = RawEth::open(&lab.guests[0], "eth0");
    let raw_b = RawEth::open(&lab.guests[1], "eth0");
    std::thread::sleep(Duration::from_millis(300));

    // Unknown unicast from guest A: once to each remote; nobody sends it on (split horizon).
    let before: Vec<_> = d.iter().map(remotes).collect();
    let tx_before: Vec<_> = d
        .iter()
        .map(|x| vx_stats(x)["tx_datagrams"].clone())
        .collect();
    raw_a
        .send_retry(&frame([0x02, 0x99, 0, 0, 0, 1], ga))
        .expect("send");
    std::thread::sleep(Duration::from_millis(500));
    let after: Vec<_> = d.iter().map(remotes).collect();
    assert_eq!(after[0][b].1 - before[0][b].1, 1, "A -> B");
    assert_eq!(after[0][c].1 - before[0][c].1, 1, "A -> C");
    assert_eq!(after[1][a].0 - before[1][a].0, 1, "B got it once");
    assert_eq!(after[2][a].0 - before[2][a].0, 1, "C got it once");
    assert_eq!(
        after[2][b].0, before[2][b].0,
        "B never sends A's frame to C"
    );
    assert_eq!(
        after[1][c].0, before[1][c].0,
        "C never sends A's frame to B"
    );
    for i in 1..3 {
        assert_eq!(
            vx_stats(&d[i])["tx_datagrams"],
            tx_before[i],
            "host {i} sent nothing on"
        );
    }

    // Guest B speaks once (A learns it behind B), then known unicast goes to B only.
    raw_b.send_retry(&frame([0xff; 6], gb)).expect("send");
    wait_for("A learns guest B behind B", 5, || {
        fdb_row(&d[0], gb).is_some_and(|r| r["vtep"] == b)
    });
    let before = remotes(&d[0]);
    for _ in 0..10 {
        raw_a.send_retry(&frame(gb, ga)).expect("send");
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = remotes(&d[0]);
    assert_eq!(after[b].1 - before[b].1, 10, "known unicast to B");
    assert_eq!(after[c].1, before[c].1, "nothing to C");
    assert!(after[b].2 >= 1, "{after:?}");
}

#[test]
fn remote_mac_ages_out() {
    if !require_root("remote_mac_ages_out") {
        return;
    }
    let lab = Lab::new(2);
    let d = start(&lab, 2, "fdb_aging_secs = 2", false);
    let gb = mac_of(&lab.guests[1], "eth0");
    let raw_b = RawEth::open(&lab.guests[1], "eth0");
    // The ports may still be settling: send until host A has seen the frame.
    wait_for("host A learns guest B", 10, || {
        let _ = raw_b.send_retry(&frame([0xff; 6], gb));
        std::thread::sleep(Duration::from_millis(100));
        fdb_row(&d[0], gb).is_some_and(|r| r["vtep"] == "172.31.0.2")
    });
    assert_eq!(remotes(&d[0])["172.31.0.2"].2, 1);
    let t = Instant::now();
    wait_for("guest B's MAC to age out on host A", 10, || {
        fdb_row(&d[0], gb).is_none() && remotes(&d[0])["172.31.0.2"].2 == 0
    });
    assert!(t.elapsed() >= Duration::from_millis(1500), "aged too soon");
}

#[test]
fn runtime_remotes_add_and_remove() {
    if !require_root("runtime_remotes_add_and_remove") {
        return;
    }
    let lab = Lab::new(2);
    // Host A starts without remotes.
    let cfg = config(&lab, 0, 1, "", false);
    let da = Daemon::start_in(&lab.hosts[0], &cfg);
    let db = Daemon::start_in(&lab.hosts[1], &config(&lab, 1, 2, "", false));
    assert!(!ping(&lab.guests[0], &guest_ip(1)), "no remote yet");
    assert!(drop_count(&da, "no_remote") > 0);
    da.ctl(&["vxlan", "vx", "add-remote", "172.31.0.2"]);
    ping_ok(&lab.guests[0], &guest_ip(1), &[&da, &db]);
    let gb = mac_of(&lab.guests[1], "eth0");
    assert!(remotes(&da)["172.31.0.2"].2 >= 1);
    // Errors name the field.
    let out = da.ctl_raw(&["vxlan", "vx", "add-remote", "172.31.0.2"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("remote"), "{err}");
    let out = da.ctl_raw(&["vxlan", "g", "remotes"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("not a VXLAN port"),
        "{err}"
    );
    // Removing it forgets its MACs and stops traffic.
    da.ctl(&["vxlan", "vx", "rm-remote", "172.31.0.2"]);
    assert!(remotes(&da).is_empty());
    assert!(fdb_row(&da, gb).is_none_or(|r| r.get("vtep").is_none()));
    assert!(!ping(&lab.guests[0], &guest_ip(1)));
}

#[test]
fn interop_with_the_kernel_vxlan_driver() {
    if !require_root("interop_with_the_kernel_vxlan_driver") {
        return;
    }
    let lab = Lab::new(2);
    let du = Daemon::start_in(&lab.hosts[0], &config(&lab, 0, 2, "", false));
    // Host K: the kernel's vxlan + a bridge + a guest veth.
    let k = &lab.hosts[1];
    // A veth underlay hands the inner TCP/UDP checksums on unfinished (CHECKSUM_PARTIAL, for
    // a NIC to fill in): a UDP socket reads them as they are. With transmit checksumming off
    // on the underlay the kernel's vxlan finishes them itself, as it does before a real NIC
    // without tunnel checksum offload.
    k.exec_ok(&["ethtool", "-K", "ul0", "tx", "off"]);
    k.ip(&[
        "link",
        "add",
        "vx0",
        "type",
        "vxlan",
        "id",
        "42",
        "local",
        "172.31.0.2",
        "remote",
        "172.31.0.1",
        "dstport",
        "4789",
    ]);
    k.ip(&["link", "add", "br0", "type", "bridge"]);
    k.ip(&["link", "set", "vx0", "master", "br0"]);
    let v = Veth::new("vxk");
    ip(&["link", "set", &v.a, "netns", &k.name]);
    k.ip(&["link", "set", &v.a, "master", "br0"]);
    for l in ["vx0", "br0", &v.a] {
        k.ip(&["link", "set", l, "up"]);
    }
    let gk = &lab.guests[1];
    v.move_b(gk, Some("eth0"));
    gk.ip(&["link", "set", "eth0", "mtu", "1450"]);
    gk.ip(&["addr", "add", &format!("{}/24", guest_ip(1)), "dev", "eth0"]);
    let ga = &lab.guests[0];
    ping_ok(ga, &guest_ip(1), &[&du]);
    ping_ok(gk, &guest_ip(0), &[&du]);
    // TCP both ways, every byte checked.
    let body = pattern(300_000);
    let hk = Httpd::start(gk, "k", &body);
    let got = fetch(ga, &guest_ip(1), "k");
    assert!(
        got == body,
        "usernet guest <- kernel guest: {} bytes\n{}",
        got.len(),
        vx_stats(&du),
    );
    hk.stop();
    let _ha = Httpd::start(ga, "u", &body);
    assert!(
        fetch(gk, &guest_ip(0), "u") == body,
        "kernel guest <- usernet guest"
    );
    // The kernel learned guest A behind usernet's VTEP.
    let fdb = k.exec_ok(&["bridge", "fdb", "show", "dev", "vx0"]);
    assert!(
        fdb.contains(&mac_str(mac_of(ga, "eth0"))) && fdb.contains("dst 172.31.0.1"),
        "{fdb}"
    );
    // Another VNI from the kernel side: dropped and counted.
    k.ip(&[
        "link",
        "add",
        "vx1",
        "type",
        "vxlan",
        "id",
        "43",
        "local",
        "172.31.0.2",
        "remote",
        "172.31.0.1",
        "dstport",
        "4789",
    ]);
    k.ip(&["addr", "add", "10.99.0.2/24", "dev", "vx1"]);
    k.ip(&["link", "set", "vx1", "up"]);
    let _ = k.exec(&["ping", "-c", "2", "-i", "0.2", "-W", "1", "10.99.0.1"]);
    wait_for("wrong_vni counted", 5, || drop_count(&du, "wrong_vni") > 0);
    ping_ok(ga, &guest_ip(1), &[&du]);
}

/// A UDP socket bound to `addr` inside `ns`.
fn udp_in(ns: &Netns, addr: &str) -> UdpSocket {
    let a = addr.to_string();
    run_in_netns(&ns.path(), move || UdpSocket::bind(&a)).expect("UDP socket in namespace")
}

#[test]
fn hostile_datagrams_are_counted_and_forwarding_goes_on() {
    if !require_root("hostile_datagrams_are_counted_and_forwarding_goes_on") {
        return;
    }
    let lab = Lab::new(2);
    let d = Daemon::start_in(&lab.hosts[0], &config(&lab, 0, 2, "", false));
    let h = &lab.hosts[1];
    h.ip(&["addr", "add", "172.31.0.3/24", "dev", "ul0"]);
    let s = udp_in(h, "172.31.0.2:0");
    let stranger = udp_in(h, "172.31.0.3:0");
    let to = "172.31.0.1:4789";
    let hdr = |flags: u8, vni: u32| {
        let v = vni.to_be_bytes();
        vec![flags, 0, 0, 0, v[1], v[2], v[3], 0]
    };
    let src = [0x02, 0x77, 0, 0, 0, 0x0b];
    let good = |vni| {
        let mut p = hdr(0x08, vni);
        p.extend_from_slice(&frame([0xff; 6], src));
        p
    };
    // Truncated: 5 bytes; a header with half an Ethernet header.
    s.send_to(&[0x08, 0, 0, 0, 0], to).expect("send");
    let mut half = hdr(0x08, 42);
    half.extend_from_slice(&[0xff; 10]);
    s.send_to(&half, to).expect("send");
    // Wrong flags (I bit missing, G bit set).
    let mut bad = good(42);
    bad[0] = 0x80;
    s.send_to(&bad, to).expect("send");
    // Another VNI.
    s.send_to(&good(43), to).expect("send");
    // 9000-byte inner frame on a 1500 underlay (fragmented by the sender, reassembled here).
    let mut big = hdr(0x08, 42);
    big.extend_from_slice(&[0xff; 6]);
    big.extend_from_slice(&src);
    big.extend_from_slice(&ETH_TEST.to_be_bytes());
    big.resize(8 + 9000, 0x33);
    s.send_to(&big, to).expect("send big");
    // A valid frame from an address that is not a remote.
    stranger.send_to(&good(42), to).expect("send");
    wait_for("every drop counted", 5, || {
        let st = vx_stats(&d);
        let dr = &st["drops"];
        dr["truncated"] == 2
            && dr["bad_flags"] == 1
            && dr["wrong_vni"] == 1
            && dr["rx_oversize"] == 1
            && dr["unknown_vtep"] == 1
    });
    assert!(fdb_row(&d, src).is_none(), "nothing learned from bad input");
    // The daemon still forwards: a good frame from the remote is taken and learned.
    s.send_to(&good(42), to).expect("send");
    wait_for("a good frame learned", 5, || {
        fdb_row(&d, src).is_some_and(|r| r["vtep"] == "172.31.0.2")
    });
    // And its guest still reaches the gateway.
    ping_ok(&lab.guests[0], "10.77.0.1", &[&d]);
}

#[test]
fn each_hosts_gateway_serves_its_own_guests() {
    if !require_root("each_hosts_gateway_serves_its_own_guests") {
        return;
    }
    let lab = Lab::new(2);
    let d = start(&lab, 2, "", true);
    let dhcp = Udhcpc::new();
    let mut bound = Vec::new();
    for (i, g) in lab.guests.iter().enumerate() {
        let lease = dhcp
            .run(g, &format!("lease{i}"))
            .unwrap_or_else(|e| panic!("udhcpc on host {i}: {e}\n{}", d[i].log()));
        bound.push(lease.clone());
        let f: Vec<&str> = lease.split_whitespace().collect();
        let last: u8 = f[0]
            .rsplit('.')
            .next()
            .and_then(|x| x.parse().ok())
            .expect("ip");
        let lo = 10 + 40 * i as u8;
        assert!(
            (lo..lo + 40).contains(&last),
            "host {i}'s guest got {} outside its host's range",
            f[0]
        );
        assert_eq!(
            f.get(2),
            Some(&"1450"),
            "DHCP announces the inner MTU: {lease}"
        );
        // The lease is its own host's, not the other's.
        let leases = |x: &Daemon| x.ctl(&["leases"]).to_string();
        assert!(leases(&d[i]).contains(f[0]));
        assert!(!leases(&d[1 - i]).contains(f[0]));
    }
    // ARP for the (shared) gateway address: each guest learns its own host's gateway MAC.
    for (i, g) in lab.guests.iter().enumerate() {
        ping_ok(g, "10.77.0.1", &[&d[i]]);
        let neigh = g.exec_ok(&["ip", "neigh", "show", "10.77.0.1"]);
        let gw = d[i].ctl(&["gateway"]);
        let mac = gw[0]["mac"].as_str().expect("mac").to_string();
        assert!(
            neigh.contains(&mac),
            "guest {i} learned {neigh}, its gateway is {mac}"
        );
    }
    // And the guests reach each other across the hosts.
    let ip_b = bound[1].split_whitespace().next().expect("ip").to_string();
    ping_ok(&lab.guests[0], &ip_b, &[&d[0], &d[1]]);
    for x in &d {
        assert!(drop_count(x, "rx_dhcp") > 0, "remote DHCP requests dropped");
        assert!(
            drop_count(x, "tx_gateway_mac") > 0,
            "own gateway's frames kept home"
        );
    }
}

fn underlay_ip6(i: usize) -> String {
    format!("fd31::{}", i + 1)
}

/// The same two hosts over an IPv6 underlay: the overlay costs 70 bytes (inner MTU 1430 on a
/// 1500 underlay), `local` and `remotes` are IPv6, and guests ping and fetch across it.
#[test]
fn two_hosts_over_an_ipv6_underlay() {
    if !require_root("two_hosts_over_an_ipv6_underlay") {
        return;
    }
    let lab = Lab::new(2);
    for (i, h) in lab.hosts.iter().enumerate() {
        h.ip(&[
            "addr",
            "add",
            &format!("{}/64", underlay_ip6(i)),
            "dev",
            "ul0",
            "nodad",
        ]);
    }
    let d: Vec<Daemon> = (0..2)
        .map(|i| {
            let mut cfg = config(&lab, i, 2, "", false);
            for j in 0..2 {
                cfg = cfg.replace(
                    &format!("\"{}\"", underlay_ip(j)),
                    &format!("\"{}\"", underlay_ip6(j)),
                );
            }
            assert!(cfg.contains("fd31::"), "{cfg}");
            Daemon::start_in(&lab.hosts[i], &cfg)
        })
        .collect();
    let (ga, gb) = (&lab.guests[0], &lab.guests[1]);
    assert_eq!(
        ga.exec_ok(&["cat", "/sys/class/net/eth0/mtu"]).trim(),
        "1430",
        "inner MTU over IPv6 = 1500 - 70"
    );
    ping_ok(ga, &guest_ip(1), &[&d[0], &d[1]]);
    let body = pattern(200_000);
    let _h = Httpd::start(gb, "f", &body);
    let got = fetch(ga, &guest_ip(1), "f");
    assert!(
        got == body,
        "fetched {} bytes\n{}",
        got.len(),
        vx_stats(&d[0])
    );
    let row = fdb_row(&d[0], mac_of(gb, "eth0")).expect("guest B's MAC in host A's FDB");
    assert_eq!(row["vtep"].as_str(), Some("fd31::2"), "{row}");
    assert_eq!(vx_stats(&d[0])["mtu"], 1430);
}
