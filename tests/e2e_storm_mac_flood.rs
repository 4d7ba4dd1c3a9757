//! Hostile traffic: a MAC flood from one guest; the FDB stays bounded, the other ports keep
//! their entries and their throughput. Needs root.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::packets::*;
use common::raw::RawEth;
use common::storm::*;
use common::{Netns, require_root};

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
