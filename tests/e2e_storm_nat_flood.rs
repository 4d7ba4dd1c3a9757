//! Hostile traffic against NAT: SYN and UDP floods keep existing connections and new ones from
//! other guests working; a reset SYN frees its flow; the per-guest limit spans protocols. Needs
//! root.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::packets::*;
use common::storm::*;
use common::{Netns, require_root};
use usernet::link::netns::run_in_netns;

/// Two guests `a` (10.N.0.5) and `b` (10.N.0.6) on a NAT network 10.N.0.0/24 with the given
/// flow limits, both answering pings to the gateway.
fn nat_pair(
    names: (&str, &str),
    n: u8,
    max_flows: usize,
    per_guest: usize,
) -> (Netns, Netns, Usernet) {
    let a = Netns::new(names.0);
    let b = Netns::new(names.1);
    let u = Usernet::start(&format!(
        "{}{}{}",
        network(
            "n",
            &format!(
                "subnet = \"10.{n}.0.0/24\"\nipv6 = \"off\"\ndns_upstreams = [\"{NO_UPSTREAM}\"]\nmax_flows = {max_flows}\nmax_flows_per_guest = {per_guest}"
            )
        ),
        netns_port("n", "a", &a),
        netns_port("n", "b", &b)
    ));
    let gw = format!("10.{n}.0.1");
    guest(&a, &format!("10.{n}.0.5/24"), Some(&gw));
    guest(&b, &format!("10.{n}.0.6/24"), Some(&gw));
    assert!(ping_ok(&a, &gw), "a -> gateway\n{}", u.log());
    assert!(ping_ok(&b, &gw), "b -> gateway");
    (a, b, u)
}

#[test]
fn syn_and_udp_flood_keep_existing_connections() {
    if !require_root("syn_and_udp_flood_keep_existing_connections") {
        return;
    }
    let (a, b, mut u) = nat_pair(("na", "nb"), 83, 256, 128);

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
    let (a, b, mut u) = nat_pair(("pa", "pb"), 86, 64, 32);
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
