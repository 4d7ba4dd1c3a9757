//! Hostile traffic: a guest that never drains its port slows nobody else. Needs root.

mod common;

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::packets::*;
use common::raw::RawEth;
use common::storm::*;
use common::{Netns, Veth, require_root};
use serde_json::Value;

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
