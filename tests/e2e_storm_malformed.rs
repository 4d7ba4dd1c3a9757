//! Hostile traffic: a storm of malformed frames (every header broken some way, from a seeded
//! generator) from one guest; the daemon survives, the other guests keep their throughput
//! (against a baseline measured in the same test), and each frame is counted under its reason.
//! Needs root.

mod common;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::packets::*;
use common::raw::RawEth;
use common::storm::*;
use common::{Netns, require_root};

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
