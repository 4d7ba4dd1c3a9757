//! Fuzzing in plain `cargo test`: every seed under `fuzz/seeds/TARGET/` (and every crash input
//! the fuzzers found, inline below) goes through the same checks as the fuzz target, which live
//! in `fuzz/src/` and are compiled in here with `#[path]`. No nightly, no libFuzzer.
//!
//! `USERNET_WRITE_SEEDS=1 cargo test --test fuzz_regressions` rewrites the seed files from
//! `fuzz/src/seeds.rs` (then `seeds_are_current` passes again).

#[allow(dead_code)]
#[path = "../fuzz/src/lib.rs"]
mod harness;

use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// A fuzz target's check: panics on a broken invariant.
type Check = fn(&[u8]);

/// Every target with a harness, and its check.
const TARGETS: &[(&str, Check)] = &[
    ("arp", harness::arp::arp),
    ("config", harness::config::config),
    ("control_api", harness::control_api::control_api),
    ("datapath", harness::datapath::datapath),
    ("dhcp_server", harness::dhcp_server::dhcp_server),
    ("dns_server", harness::dns_server::dns_server),
    ("forward_spec", harness::forward_spec::forward_spec),
    ("ndp_ra", harness::ndp_ra::ndp_ra),
    ("stream_framing", harness::stream_framing::stream_framing),
];

fn seeds_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join("seeds")
}

/// Runs `check` on `input`; the panic message if it failed.
fn run(check: Check, input: &[u8]) -> Option<String> {
    panic::catch_unwind(AssertUnwindSafe(|| check(input)))
        .err()
        .map(|e| {
            e.downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into())
        })
}

#[test]
fn seeds_replay() {
    let mut failures = Vec::new();
    for &(target, check) in TARGETS {
        let dir = seeds_dir().join(target);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("dir entry").path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no seeds in {}", dir.display());
        for f in files {
            let bytes = std::fs::read(&f).expect("seed file");
            if let Some(msg) = run(check, &bytes) {
                failures.push(format!("{}: {msg}", f.display()));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "seeds failed:\n{}",
        failures.join("\n")
    );
}

#[test]
fn seeds_are_current() {
    let write = std::env::var_os("USERNET_WRITE_SEEDS").is_some();
    let mut stale = Vec::new();
    for s in harness::seeds::all() {
        let dir = seeds_dir().join(s.target);
        let path = dir.join(s.name);
        if write {
            std::fs::create_dir_all(&dir).expect("seed dir");
            std::fs::write(&path, &s.bytes).expect("write seed");
        } else if std::fs::read(&path).ok().as_deref() != Some(&s.bytes[..]) {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "seed files differ from fuzz/src/seeds.rs (rewrite them with USERNET_WRITE_SEEDS=1 \
         cargo test --test fuzz_regressions): {stale:?}"
    );
}

/// Every target listed here has a seed directory, and vice versa.
#[test]
fn every_target_has_seeds() {
    let mut dirs: Vec<String> = std::fs::read_dir(seeds_dir())
        .expect("fuzz/seeds")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    let targets: Vec<&str> = TARGETS.iter().map(|t| t.0).collect();
    assert_eq!(dirs, targets);
}

/// The datapath seeds reach deep: DHCP leases, DNS answers, NAT flows of every kind (the fake
/// host's echo, refusals and timeouts), TCP handshakes through smoltcp, NDP.
#[test]
fn datapath_seeds_reach_the_gateway_and_nat() {
    let seed =
        |name: &str| std::fs::read(seeds_dir().join("datapath").join(name)).expect("seed file");
    let nat =
        |w: &harness::datapath::World, i: usize, k: &str| w.gateway(i).info().nat.expect("nat")[k];
    let gw = |w: &harness::datapath::World, i: usize, k: &str| w.gateway(i).info().counters[k];

    // The trunk seed: frames of each VLAN forwarded, the unmapped VLAN counted.
    let t = harness::datapath::run(&seed("trunk-vlans")).trunk_stats();
    assert!(t.forwarded >= 5, "{t:?}");
    assert!(t.drops["unmapped_vlan"] >= 1, "{t:?}");
    let w = harness::datapath::run(&seed("arp-each-network"));
    assert_eq!(gw(&w, 0, "arp_replies"), 1);
    assert_eq!(gw(&w, 1, "arp_replies"), 1);
    assert_eq!(gw(&w, 2, "arp_replies"), 1);

    let w = harness::datapath::run(&seed("dhcp-dora"));
    assert!(gw(&w, 0, "dhcp_replies") >= 2);
    let dhcp = w.gateway(0).info().dhcp.expect("dhcp");
    assert!(dhcp.offer >= 1 && dhcp.ack >= 1, "{dhcp:?}");

    let w = harness::datapath::run(&seed("dns-udp"));
    assert!(gw(&w, 0, "dns_udp") >= 3);
    assert!(w.gateway(0).info().dns.local_answers >= 1);

    let w = harness::datapath::run(&seed("ping"));
    assert!(nat(&w, 0, "icmp_flows") >= 1);
    assert!(gw(&w, 0, "echo_replies") >= 1);

    let w = harness::datapath::run(&seed("udp-echo-refused"));
    assert!(nat(&w, 0, "udp_flows") >= 2);
    assert!(nat(&w, 0, "unreachable") >= 1);

    let w = harness::datapath::run(&seed("tcp-handshake"));
    assert_eq!(nat(&w, 0, "tcp_flows"), 1, "the handshake completed");

    let w = harness::datapath::run(&seed("tcp-dns"));
    assert!(
        gw(&w, 0, "dns_tcp") >= 1,
        "a DNS query over TCP was answered"
    );

    let w = harness::datapath::run(&seed("tcp-refused"));
    assert!(nat(&w, 0, "refused_host") >= 2);
    assert!(nat(&w, 0, "unreachable") >= 1);

    let w = harness::datapath::run(&seed("flow-limit"));
    assert!(nat(&w, 0, "refused_limit") >= 1);

    let w = harness::datapath::run(&seed("ipv6-ndp"));
    assert!(gw(&w, 0, "router_adverts") >= 2);
    assert!(gw(&w, 0, "ndp_adverts") >= 1);

    // Attacks from n0's port 1 on the station behind port 0: dropped at the bridge, counted,
    // and the victim keeps its address, lease and NAT.
    let drops = |w: &harness::datapath::World| w.guest_rx_dropped(0);
    let w = harness::datapath::run(&seed("attack-arp-claim"));
    assert!(drops(&w)[1] >= 3, "{:?}", drops(&w));
    assert!(nat(&w, 0, "icmp_flows") >= 1);

    let w = harness::datapath::run(&seed("attack-gateway-mac"));
    assert!(drops(&w)[1] >= 2, "{:?}", drops(&w));
    assert!(gw(&w, 0, "echo_replies") >= 1);

    let w = harness::datapath::run(&seed("attack-dhcp-chaddr"));
    // The RELEASE is dropped at the bridge (its source is the victim's leased address), the
    // REQUEST by the gateway (chaddr of another port).
    assert!(drops(&w)[1] >= 1, "{:?}", drops(&w));
    assert!(gw(&w, 0, "dhcp_spoofed") >= 1);
    assert!(
        w.gateway(0)
            .leases()
            .iter()
            .any(|l| l.mac.0 == [2, 0, 0, 0, 0, 1]),
        "the victim's lease survives"
    );

    let w = harness::datapath::run(&seed("attack-rogue-servers"));
    assert!(drops(&w)[1] >= 9, "{:?}", drops(&w));

    let w = harness::datapath::run(&seed("attack-ipv6-churn"));
    assert!(nat(&w, 0, "refused_limit") >= 1);

    let w = harness::datapath::run(&seed("nat-loopback-spellings"));
    for i in [0, 1, 3] {
        assert!(nat(&w, i, "dropped_dest") >= 24, "network {i}");
    }

    let w = harness::datapath::run(&seed("forwards"));
    assert!(nat(&w, 0, "forward_conns") >= 4);
    assert!(nat(&w, 0, "forward_datagrams") >= 2);
    assert!(nat(&w, 0, "errors") >= 1, "the duplicate client is refused");

    // Captured from real clients (tests/capture_seeds.rs): udhcpc, dig, ping, curl, SLAAC.
    let w = harness::datapath::run(&seed("captured-session"));
    assert!(
        gw(&w, 0, "dhcp_replies") >= 1,
        "udhcpc's DISCOVER got an OFFER"
    );
    assert!(gw(&w, 0, "dns_udp") >= 4);
    assert!(gw(&w, 0, "echo_replies") >= 4, "ping and ping -6 answered");
    assert!(gw(&w, 0, "arp_replies") >= 1);
    assert!(
        nat(&w, 0, "tcp_flows") >= 1,
        "curl's SYN reached the (fake) host"
    );
}

// ---- crashes found by the fuzzers (inputs inline) ----

/// Found by `ndp_ra` (fuzz/artifacts/ndp_ra/crash-6271af9f…: 128 or more DNS servers).
/// `usernet::gateway::ndp::router_advert` writes the RDNSS option length as
/// `(1 + 2 * dns.len()) as u8` (src/gateway/ndp.rs), which wraps for 128+ servers: with 128 the
/// length byte says 1 (8 bytes) while 2056 bytes follow, so the rest of the advertisement reads
/// as garbage options (a zero-length option, which RFC 4861 §4.6 says makes the receiver drop
/// the whole RA). Not reachable from the gateway today (it announces one server), but
/// `RaParams` is public. Fixed: the option carries at most 127 addresses (and only as many as
/// fit the MTU).
#[test]
fn ndp_rdnss_128_servers() {
    use etherparse::{Icmpv6Slice, Ipv6Slice};
    use std::net::Ipv6Addr;
    use usernet::gateway::ndp::{self, RaParams};
    use usernet::wire::Mac;

    // The fuzz input shape: parameters only, 128 DNS servers, zero-filled.
    let mut input = vec![0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
    input.extend("fd88::".parse::<Ipv6Addr>().expect("addr").octets());
    input.extend([64, 0, 0, 5, 220, 7, 8, 128]);
    let p = RaParams {
        gw_mac: Mac([0x02, 0x11, 0x22, 0x33, 0x44, 0x55]),
        prefix: "fd88::/64".parse().expect("net"),
        mtu: 1500,
        dns: (1..=128u16)
            .map(|i| Ipv6Addr::new(0xfd88, 0, 0, 0, 0, 0, 0, i))
            .collect(),
        router_lifetime: 1800,
    };
    let frame = ndp::router_advert(&p, ndp::ALL_NODES, ndp::multicast_mac(ndp::ALL_NODES));
    let ip = Ipv6Slice::from_slice(&frame[14..]).expect("ipv6");
    let icmp = Icmpv6Slice::from_slice(ip.payload().payload).expect("icmpv6");
    let opts = &icmp.payload()[8..];
    // Whatever the fix (cap the list at 127, or refuse), the options must tile the payload and
    // every server listed must be one of ours.
    let mut i = 0;
    while i < opts.len() {
        let units = usize::from(opts[i + 1]);
        assert!(units > 0, "zero-length option {} at {i}", opts[i]);
        assert!(
            i + 8 * units <= opts.len(),
            "option {} at {i} past the end",
            opts[i]
        );
        if opts[i] == 25 {
            for a in opts[i + 8..i + 8 * units].chunks_exact(16) {
                let a = Ipv6Addr::from(<[u8; 16]>::try_from(a).expect("16"));
                assert!(p.dns.contains(&a), "RDNSS lists {a}");
            }
        }
        i += 8 * units;
    }
    // And the same through the fuzz harness (once MAX_DNS is raised).
    harness::ndp_ra::ndp_ra(&input);
}
