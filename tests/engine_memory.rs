//! End-to-end tests of the real [`Engine`] with in-process [`MemoryLink`] ports (no root).
//!
//! Each test starts an engine, adds ports whose links are one end of a memory pair, and plays
//! the stations behind the ports with the other ("peer") end: it sends raw Ethernet frames and
//! asserts, byte for byte, what the other stations receive, plus what the control API reports
//! (ports, FDB, counters). Every wait is bounded; silence is checked over a short window.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use usernet::bridge::{FdbConfig, PortPolicy, PortStats};
use usernet::control::api::Request;
use usernet::control::server::{request, serve};
use usernet::link::memory::MemoryLink;
use usernet::wire::Mac;
use usernet::{Engine, EngineConfig, Handle};

/// Largest frame the links carry (MTU 1500 + Ethernet header + two VLAN tags).
const MAX_FRAME: usize = 1522;
/// How long a frame that should arrive may take.
const ARRIVE: Duration = Duration::from_secs(2);
/// How long we listen to conclude that a frame does not arrive.
const SILENCE: Duration = Duration::from_millis(100);
/// An EtherType from the local experimental range, so no one mistakes our frames for IP.
const ETHERTYPE: [u8; 2] = [0x88, 0xb5];

fn mac(n: u8) -> Mac {
    Mac([0x02, 0, 0, 0, 0, n])
}

/// A frame of `len` bytes (at least 18) from `src` to `dst` whose payload starts with `seq`
/// and continues with a pattern derived from it, so any corruption or reordering shows.
fn frame(dst: Mac, src: Mac, len: usize, seq: u32) -> Vec<u8> {
    assert!(
        len >= 18,
        "test frames carry a header and a sequence number"
    );
    let mut f = Vec::with_capacity(len);
    f.extend(dst.0);
    f.extend(src.0);
    f.extend(ETHERTYPE);
    f.extend(seq.to_be_bytes());
    let mut x = seq.wrapping_mul(2_654_435_761).wrapping_add(len as u32);
    while f.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        f.push(x as u8);
    }
    f
}

/// The sequence number of a frame built by [`frame`].
fn seq_of(f: &[u8]) -> u32 {
    u32::from_be_bytes([f[14], f[15], f[16], f[17]])
}

struct Rig {
    // Dropped last-but-one: peers are dropped first (field order), then the engine.
    peers: HashMap<String, MemoryLink>,
    h: Handle,
    _engine: Engine,
}

impl Rig {
    fn new(loops: usize) -> Rig {
        let mut cfg = EngineConfig::default();
        cfg.loops = loops;
        Self::with_config(cfg)
    }

    fn with_config(cfg: EngineConfig) -> Rig {
        let engine = Engine::start(cfg).expect("engine starts");
        let h = engine.handle();
        Rig {
            peers: HashMap::new(),
            h,
            _engine: engine,
        }
    }

    fn net(&self, name: &str) {
        self.h
            .add_network(name, FdbConfig::default())
            .expect("add network");
    }

    /// Adds port `name` on `net` with a memory link whose queues hold `cap` frames; keeps the
    /// peer end under the same name.
    fn port(&mut self, net: &str, name: &str, cap: usize) {
        let (engine_end, peer) = MemoryLink::pair(cap, MAX_FRAME).expect("memory pair");
        self.h
            .add_port(net, name, PortPolicy::default(), Box::new(engine_end))
            .expect("add port");
        self.peers.insert(name.to_string(), peer);
    }

    fn peer(&self, name: &str) -> &MemoryLink {
        &self.peers[name]
    }

    fn send(&self, from: &str, bytes: &[u8]) {
        assert!(
            self.peer(from).send_bytes(bytes),
            "{from}: memory queue towards the engine is full"
        );
    }

    fn recv(&self, at: &str) -> Vec<u8> {
        self.peer(at)
            .recv_timeout(ARRIVE)
            .unwrap_or_else(|| panic!("{at}: nothing arrived within {ARRIVE:?}"))
            .data()
            .to_vec()
    }

    fn assert_silent(&self, at: &str) {
        if let Some(f) = self.peer(at).recv_timeout(SILENCE) {
            panic!(
                "{at}: expected nothing, got {} bytes: {:02x?}",
                f.len(),
                &f.data()[..f.len().min(32)]
            );
        }
    }

    fn stats(&self, port: &str) -> PortStats {
        self.h
            .stats()
            .into_iter()
            .find(|r| r.port == port)
            .unwrap_or_else(|| panic!("no stats row for port {port}"))
            .stats
    }

    /// Waits (bounded) until port `port` has received `n` frames from its link.
    fn wait_rx(&self, port: &str, n: u64) {
        let ok = wait_until(ARRIVE, || self.stats(port).rx_frames >= n);
        assert!(
            ok,
            "{port}: engine saw {} frames, expected {n}",
            self.stats(port).rx_frames
        );
    }

    /// Broadcast from each named port in turn (so the FDB learns every station), draining the
    /// copies the others receive.
    fn learn_all(&self, names: &[(&str, Mac)]) {
        for (i, (name, m)) in names.iter().enumerate() {
            let b = frame(Mac::BROADCAST, *m, 60, 900 + i as u32);
            self.send(name, &b);
            for (other, _) in names.iter().filter(|(o, _)| o != name) {
                assert_eq!(self.recv(other), b, "{other}: learning broadcast");
            }
        }
    }
}

fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn assert_invariant(h: &Handle) {
    for row in h.stats() {
        let s = &row.stats;
        assert_eq!(
            s.rx_frames,
            s.forwarded + s.rx_dropped(),
            "port {}: rx_frames != forwarded + rx drops: {s:?}",
            row.port
        );
    }
}

#[test]
fn broadcast_floods_then_learned_unicast_reaches_only_its_port() {
    let mut r = Rig::new(1);
    r.net("net");
    for p in ["a", "b", "c"] {
        r.port("net", p, 64);
    }
    let (a, b) = (mac(1), mac(2));

    let bc = frame(Mac::BROADCAST, a, 60, 1);
    r.send("a", &bc);
    assert_eq!(r.recv("b"), bc);
    assert_eq!(r.recv("c"), bc);
    r.assert_silent("a");

    // b answers a: a is learned, so only a hears it.
    let reply = frame(a, b, 98, 2);
    r.send("b", &reply);
    assert_eq!(r.recv("a"), reply);
    r.assert_silent("c");

    // Now a → b is a learned unicast: only b.
    let uni = frame(b, a, 1514, 3);
    r.send("a", &uni);
    assert_eq!(r.recv("b"), uni);
    r.assert_silent("c");
    r.assert_silent("a");

    let sa = r.stats("a");
    assert_eq!((sa.rx_frames, sa.forwarded, sa.tx_frames), (2, 2, 1));
    assert_eq!(sa.rx_bytes, 60 + 1514);
    let sc = r.stats("c");
    assert_eq!((sc.rx_frames, sc.tx_frames, sc.tx_bytes), (0, 1, 60));
    assert_invariant(&r.h);
}

#[test]
fn unknown_unicast_floods_to_all_other_ports() {
    let mut r = Rig::new(1);
    r.net("net");
    for p in ["a", "b", "c"] {
        r.port("net", p, 64);
    }
    let f = frame(mac(99), mac(1), 200, 7);
    r.send("a", &f);
    assert_eq!(r.recv("b"), f);
    assert_eq!(r.recv("c"), f);
    r.assert_silent("a");
}

#[test]
fn a_network_stays_on_one_loop_and_networks_spread() {
    let mut r = Rig::new(2);
    for (net, ports) in [("n0", ["a0", "b0"]), ("n1", ["a1", "b1"])] {
        r.net(net);
        for p in ports {
            r.port(net, p, 64);
        }
    }
    let loops: HashMap<String, usize> =
        r.h.ports()
            .into_iter()
            .map(|p| (p.name, p.event_loop))
            .collect();
    assert_eq!(loops["a0"], loops["b0"], "{loops:?}");
    assert_eq!(loops["a1"], loops["b1"], "{loops:?}");
    assert_ne!(loops["a0"], loops["a1"], "{loops:?}");
    // Frames between a network's ports stay on its loop and arrive.
    let f = frame(mac(2), mac(1), 100, 1);
    r.send("a1", &f);
    assert_eq!(r.recv("b1"), f);
}

#[test]
fn cross_loop_unicast_10k_frames_in_order_and_intact() {
    let mut cfg = EngineConfig::default();
    cfg.loops = 2;
    cfg.ring = 4096;
    let mut r = Rig::with_config(cfg);
    r.net("net");
    // Placement keeps a network's ports together until a loop is 2 ports busier than another:
    // a and c go to one loop, b to the other.
    for p in ["a", "c", "b"] {
        r.port("net", p, 4096);
    }
    let loops: HashMap<String, usize> =
        r.h.ports()
            .into_iter()
            .map(|p| (p.name, p.event_loop))
            .collect();
    assert_ne!(
        loops["a"], loops["b"],
        "a and b must be on different loops: {loops:?}"
    );

    let (a, b) = (mac(1), mac(2));
    r.learn_all(&[("a", a), ("b", b), ("c", mac(3))]);

    // Same behaviour as on one loop: a broadcast crosses to both loops, unicast only to b.
    let uni = frame(b, a, 60, 5);
    r.send("a", &uni);
    assert_eq!(r.recv("b"), uni);
    r.assert_silent("c");

    const N: u32 = 10_000;
    const WINDOW: u32 = 512;
    let size = |i: u32| 60 + (i as usize * 7919) % (1514 - 60 + 1);
    let (mut sent, mut got) = (0u32, 0u32);
    let deadline = Instant::now() + Duration::from_secs(30);
    while got < N {
        while sent < N && sent - got < WINDOW {
            r.send("a", &frame(b, a, size(sent), sent));
            sent += 1;
        }
        let f = r.recv("b");
        assert_eq!(seq_of(&f), got, "frames arrive in order");
        assert_eq!(f, frame(b, a, size(got), got), "frame {got} intact");
        got += 1;
        assert!(Instant::now() < deadline, "10k frames took over 30 s");
    }
    r.assert_silent("c");
    r.assert_silent("a");
    let sb = r.stats("b");
    assert_eq!(sb.drops["ring_full"] + sb.drops["link_error"], 0, "{sb:?}");
    assert_eq!(r.stats("a").forwarded, u64::from(N) + 2);
    assert_invariant(&r.h);
}

#[test]
fn networks_are_isolated_even_with_the_same_macs() {
    let mut r = Rig::new(2);
    r.net("red");
    r.net("blue");
    for (net, p) in [("red", "r1"), ("red", "r2"), ("blue", "b1"), ("blue", "b2")] {
        r.port(net, p, 64);
    }
    let (x, y) = (mac(1), mac(2));

    // Broadcast and unknown unicast stay in their network.
    let bc = frame(Mac::BROADCAST, x, 60, 1);
    r.send("r1", &bc);
    assert_eq!(r.recv("r2"), bc);
    let unk = frame(mac(77), x, 100, 2);
    r.send("r1", &unk);
    assert_eq!(r.recv("r2"), unk);
    r.assert_silent("b1");
    r.assert_silent("b2");

    // The same MACs in blue: x behind b1, y behind b2 (mirrored in red: x behind r1, y behind
    // r2). Each network learns its own.
    let bc_blue = frame(Mac::BROADCAST, x, 61, 3);
    r.send("b1", &bc_blue);
    assert_eq!(r.recv("b2"), bc_blue);
    for (net_a, net_b) in [("r1", "r2"), ("b1", "b2")] {
        let f = frame(x, y, 70, 4);
        r.send(net_b, &f);
        assert_eq!(r.recv(net_a), f);
        let g = frame(y, x, 80, 5);
        r.send(net_a, &g);
        assert_eq!(r.recv(net_b), g);
    }
    for p in ["r1", "r2", "b1", "b2"] {
        r.assert_silent(p);
    }

    let fdb_of = |net: &str| -> Vec<(Mac, String)> {
        r.h.fdb(Some(net))
            .expect("fdb")
            .into_iter()
            .map(|e| {
                assert_eq!(e.network, net);
                (e.mac, e.port)
            })
            .collect()
    };
    assert_eq!(fdb_of("red"), vec![(x, "r1".into()), (y, "r2".into())]);
    assert_eq!(fdb_of("blue"), vec![(x, "b1".into()), (y, "b2".into())]);
    assert_invariant(&r.h);
}

#[test]
fn stuck_consumer_costs_the_others_nothing() {
    let mut r = Rig::new(1);
    r.net("net");
    r.port("net", "a", 1024);
    r.port("net", "b", 1024);
    // c's station never reads: its queue holds 8 frames, then the link refuses more.
    r.port("net", "c", 8);
    let (a, b) = (mac(1), mac(2));

    // Broadcasts reach b in full while c's queue overflows.
    const BC: u32 = 500;
    for i in 0..BC {
        let f = frame(Mac::BROADCAST, a, 60 + (i as usize % 100), i);
        r.send("a", &f);
        assert_eq!(r.recv("b"), f);
    }
    let ok = wait_until(ARRIVE, || {
        let s = r.stats("c");
        s.tx_frames + s.drops["ring_full"] + s.drops["link_error"] == u64::from(BC)
    });
    let sc = r.stats("c");
    assert!(ok, "every broadcast to c is sent or counted: {sc:?}");
    assert_eq!(sc.tx_frames, 8, "c's queue took exactly its capacity");
    assert_eq!(r.peer("c").rx_queued(), 8);

    // Unicast both ways between a and b is unaffected.
    r.send("b", &frame(a, b, 60, 0));
    assert_eq!(r.recv("a"), frame(a, b, 60, 0));
    for i in 0..1000u32 {
        let f = frame(b, a, 60 + (i as usize * 13) % 1455, i);
        r.send("a", &f);
        assert_eq!(r.recv("b"), f);
        let g = frame(a, b, 60 + (i as usize * 31) % 1455, i);
        r.send("b", &g);
        assert_eq!(r.recv("a"), g);
    }
    // A link's counters move just after its peer has the frame: wait for the last one.
    wait_until(ARRIVE, || {
        r.stats("a").tx_frames == 1001 && r.stats("b").tx_frames == u64::from(BC) + 1000
    });
    let (sa, sb) = (r.stats("a"), r.stats("b"));
    for s in [&sa, &sb] {
        assert_eq!(s.drops["ring_full"] + s.drops["link_error"], 0, "{s:?}");
    }
    assert_eq!(sb.tx_frames, u64::from(BC) + 1000);
    assert_eq!(sa.tx_frames, 1001);
    assert_invariant(&r.h);
}

#[test]
fn dropped_peer_removes_the_port_and_the_rest_keeps_forwarding() {
    let mut r = Rig::new(2);
    r.net("net");
    for p in ["a", "b", "c"] {
        r.port("net", p, 64);
    }
    let (a, b, c) = (mac(1), mac(2), mac(3));
    r.learn_all(&[("a", a), ("b", b), ("c", c)]);
    assert_eq!(r.h.fdb(Some("net")).expect("fdb").len(), 3);

    drop(r.peers.remove("c"));
    let gone = wait_until(Duration::from_secs(2), || {
        r.h.ports().iter().all(|p| p.name != "c")
    });
    assert!(gone, "port c still listed: {:?}", r.h.ports());
    let names: Vec<String> = r.h.ports().into_iter().map(|p| p.name).collect();
    assert_eq!(names, ["a", "b"]);
    let fdb: Vec<(Mac, String)> =
        r.h.fdb(Some("net"))
            .expect("fdb")
            .into_iter()
            .map(|e| (e.mac, e.port))
            .collect();
    assert_eq!(
        fdb,
        vec![(a, "a".into()), (b, "b".into())],
        "c's MAC forgotten"
    );

    let f = frame(b, a, 300, 1);
    r.send("a", &f);
    assert_eq!(r.recv("b"), f);
    let g = frame(a, b, 301, 2);
    r.send("b", &g);
    assert_eq!(r.recv("a"), g);
    // To c's old MAC: unknown unicast now, flooded to b.
    let h = frame(c, a, 302, 3);
    r.send("a", &h);
    assert_eq!(r.recv("b"), h);
    r.assert_silent("a");
    // The name is free again.
    r.port("net", "c", 64);
    let k = frame(Mac::BROADCAST, a, 60, 4);
    r.send("a", &k);
    assert_eq!(r.recv("c"), k);
    assert_eq!(r.recv("b"), k);
}

#[test]
fn malformed_frames_are_counted_and_never_delivered() {
    let mut r = Rig::new(1);
    r.net("net");
    r.port("net", "a", 256);
    r.port("net", "b", 256);
    let (a, b) = (mac(1), mac(2));

    let mut expect_runt = 0u64;
    for n in 0..14usize {
        r.send("a", &frame(Mac::BROADCAST, a, 60, 0)[..n]);
        expect_runt += 1;
    }
    // A VLAN-tagged header cut inside the tag.
    let mut tagged = frame(Mac::BROADCAST, a, 60, 0);
    tagged[12..14].copy_from_slice(&[0x81, 0x00]);
    r.send("a", &tagged[..16]);
    expect_runt += 1;

    // Multicast, broadcast and all-zero source MACs.
    let bad_src = [
        Mac([0x01, 0, 0x5e, 0, 0, 1]),
        Mac::BROADCAST,
        Mac([0x03, 0, 0, 0, 0, 1]),
        Mac([0; 6]),
    ];
    for (i, s) in bad_src.iter().enumerate() {
        r.send("a", &frame(b, *s, 60, i as u32));
    }
    // 802.1D reserved destination (STP).
    r.send("a", &frame(Mac([0x01, 0x80, 0xc2, 0, 0, 0]), a, 60, 9));
    // One good frame last: it is the only thing b sees.
    let good = frame(b, a, 64, 10);
    r.send("a", &good);

    let total = expect_runt + bad_src.len() as u64 + 2;
    r.wait_rx("a", total);
    assert_eq!(r.recv("b"), good);
    r.assert_silent("b");

    let s = r.stats("a");
    assert_eq!(s.rx_frames, total);
    assert_eq!(s.drops["runt"], expect_runt, "{s:?}");
    assert_eq!(s.drops["invalid_source"], bad_src.len() as u64, "{s:?}");
    assert_eq!(s.drops["reserved"], 1, "{s:?}");
    assert_eq!(s.forwarded, 1);
    assert_eq!(s.rx_dropped(), total - 1);
    let fdb = r.h.fdb(Some("net")).expect("fdb");
    assert_eq!(fdb.len(), 1, "no invalid source learned: {fdb:?}");
    assert_eq!((fdb[0].mac, fdb[0].port.as_str()), (a, "a"));
    assert_invariant(&r.h);
}

#[test]
fn fdb_lists_learned_macs_with_port_names() {
    let mut r = Rig::new(1);
    r.net("net");
    r.net("other");
    r.port("net", "a", 64);
    r.port("net", "b", 64);
    r.port("other", "o", 64);
    assert!(r.h.fdb(Some("net")).expect("fdb").is_empty());

    r.learn_all(&[("a", mac(0x0a)), ("b", mac(0x0b))]);
    // Several stations behind one port (a VM bridge behind a).
    for n in [0x20, 0x21] {
        r.send("a", &frame(mac(0x0b), mac(n), 60, u32::from(n)));
        r.recv("b");
    }
    let rows = r.h.fdb(Some("net")).expect("fdb");
    let got: Vec<(String, u16, Mac, String, bool)> = rows
        .iter()
        .map(|e| {
            (
                e.network.clone(),
                e.vlan,
                e.mac,
                e.port.clone(),
                e.is_static,
            )
        })
        .collect();
    let want = |m: u8, p: &str| ("net".to_string(), 0u16, mac(m), p.to_string(), false);
    assert_eq!(
        got,
        vec![
            want(0x0a, "a"),
            want(0x0b, "b"),
            want(0x20, "a"),
            want(0x21, "a")
        ]
    );
    assert!(rows.iter().all(|e| e.age_secs < 60.0));
    assert!(r.h.fdb(Some("other")).expect("fdb").is_empty());
    assert_eq!(r.h.fdb(None).expect("fdb").len(), 4);
    let err = r.h.fdb(Some("nonet")).expect_err("unknown network");
    assert!(err.to_string().contains("nonet"), "{err}");
}

#[test]
fn json_api_over_the_control_socket() {
    let mut r = Rig::new(1);
    r.net("net");
    r.port("net", "a", 64);
    r.port("net", "b", 64);
    r.learn_all(&[("a", mac(1)), ("b", mac(2))]);

    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("ctl.sock");
    let server = serve(r.h.clone(), &sock).expect("serve");
    let mode = std::fs::metadata(&sock)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");

    let ports = request(&sock, &Request::Ports {}).expect("ports");
    let names: Vec<&str> = ports
        .as_array()
        .expect("array")
        .iter()
        .map(|p| p["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(ports[0]["network"], "net");
    assert_eq!(ports[0]["kind"], "memory");

    let stats = request(&sock, &Request::Stats {}).expect("stats");
    let row = &stats.as_array().expect("array")[0];
    assert_eq!(row["port"], "a");
    assert_eq!(row["stats"]["rx_frames"], 1);
    assert_eq!(row["stats"]["tx_frames"], 1);
    assert_eq!(row["stats"]["drops"]["runt"], 0);

    let fdb = request(
        &sock,
        &Request::Fdb {
            network: Some("net".into()),
        },
    )
    .expect("fdb");
    let rows: Vec<(&str, &str)> = fdb
        .as_array()
        .expect("array")
        .iter()
        .map(|e| {
            (
                e["mac"].as_str().expect("mac"),
                e["port"].as_str().expect("port"),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [("02:00:00:00:00:01", "a"), ("02:00:00:00:00:02", "b")]
    );

    let err = request(
        &sock,
        &Request::RemovePort {
            name: "ghost-port".into(),
        },
    )
    .expect_err("unknown port");
    assert!(err.to_string().contains("ghost-port"), "{err}");
    let err = request(
        &sock,
        &Request::Fdb {
            network: Some("ghost-net".into()),
        },
    )
    .expect_err("unknown network");
    assert!(err.to_string().contains("ghost-net"), "{err}");

    // A real removal through the socket takes effect.
    request(&sock, &Request::RemovePort { name: "b".into() }).expect("remove b");
    let names: Vec<String> = r.h.ports().into_iter().map(|p| p.name).collect();
    assert_eq!(names, ["a"]);

    // The server thread exits once the engine stops; dropping it removes the socket file.
    r.h.shutdown();
    drop(server);
    assert!(!sock.exists(), "socket file removed");
}

/// A TCP GSO frame of `payload` bytes from `src` to `dst`, cut at `mss`, as an offload-capable
/// guest hands it over: right lengths, a pending checksum, a virtio-net header.
fn tso_frame(dst: Mac, src: Mac, payload: &[u8], mss: u16) -> usernet::frame::Frame {
    use usernet::frame::VnetHdr;
    let mut bytes = Vec::new();
    etherparse::PacketBuilder::ethernet2(src.0, dst.0)
        .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        .tcp(40000, 80, 7, 65535)
        .ack(1)
        .psh()
        .write(&mut bytes, payload)
        .expect("builds");
    let mut f = usernet::frame::Frame::from_slice(&bytes);
    f.meta.vnet = VnetHdr {
        flags: VnetHdr::F_NEEDS_CSUM,
        gso_type: usernet::offload::GSO_TCPV4,
        hdr_len: 54,
        gso_size: mss,
        csum_start: 34,
        csum_offset: 16,
    };
    f
}

#[test]
fn gso_frames_pass_to_offload_ports_and_are_segmented_for_the_others() {
    use usernet::offload::Offloads;
    let mut rig = Rig::new(1);
    rig.net("n");
    // `g` and `v` take offloaded frames (an in-process VMM, say); `p` does not.
    for (name, off) in [("g", Offloads::ALL), ("v", Offloads::ALL)] {
        let (engine_end, peer) =
            MemoryLink::pair_with_offloads(256, MAX_FRAME, off).expect("memory pair");
        rig.h
            .add_port("n", name, PortPolicy::default(), Box::new(engine_end))
            .expect("add port");
        rig.peers.insert(name.to_string(), peer);
    }
    rig.port("n", "p", 256);
    let (g, v, p) = (mac(1), mac(2), mac(3));
    rig.learn_all(&[("g", g), ("v", v), ("p", p)]);

    let payload: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    // To an offload port: one frame, untouched.
    let big = tso_frame(v, g, &payload, 1000);
    let want = big.data().to_vec();
    assert!(rig.peer("g").send(big).is_ok(), "GSO frame accepted");
    let got = rig.peer("v").recv_timeout(ARRIVE).expect("GSO frame at v");
    assert_eq!(got.data(), &want[..]);
    assert_eq!(got.meta.vnet.gso_type, usernet::offload::GSO_TCPV4);

    // To a plain port: 20 segments with valid checksums and the payload in order.
    assert!(rig.peer("g").send(tso_frame(p, g, &payload, 1000)).is_ok());
    let mut joined = Vec::new();
    for i in 0..20u32 {
        let seg = rig.recv("p");
        assert!(seg.len() <= 54 + 1000, "segment {i} is {} bytes", seg.len());
        let pkt = etherparse::SlicedPacket::from_ethernet(&seg).expect("segment parses");
        let (Some(etherparse::NetSlice::Ipv4(ip)), Some(etherparse::TransportSlice::Tcp(tcp))) =
            (pkt.net, pkt.transport)
        else {
            panic!("segment {i} is not TCP/IPv4")
        };
        let csum = tcp
            .to_header()
            .calc_checksum_ipv4(&ip.header().to_header(), tcp.payload())
            .expect("fits");
        assert_eq!(tcp.checksum(), csum, "segment {i} checksum");
        assert_eq!(tcp.sequence_number(), 7 + i * 1000);
        assert_eq!(tcp.psh(), i == 19, "PSH on the last segment only");
        joined.extend_from_slice(tcp.payload());
    }
    assert_eq!(joined, payload);
    rig.assert_silent("p");

    // A GSO frame whose headers lie (not TCP at all) is counted, not delivered, at `p`.
    let mut liar = usernet::frame::Frame::from_slice(&frame(p, g, 3000, 1));
    liar.meta.vnet = tso_frame(p, g, &[0], 1000).meta.vnet;
    assert!(rig.peer("g").send(liar).is_ok());
    rig.assert_silent("p");
    let ok = wait_until(ARRIVE, || rig.stats("p").drops["bad_offload"] == 1);
    assert!(ok, "bad_offload counted: {:?}", rig.stats("p"));
    assert_invariant(&rig.h);
}

/// A port that stays readable turn after turn (a sender that never pauses) must not make the
/// loop read more between two flushes than the egress ring holds: no `ring_full` drops while the
/// receiving side keeps up. (Regression: the loop's "read again" list took the same port once
/// more every turn, so the frames read per turn grew until the egress ring overflowed.)
#[test]
fn busy_port_never_overflows_a_drained_egress_ring() {
    let mut cfg = EngineConfig::default();
    cfg.loops = 1;
    cfg.ring = 512;
    let mut rig = Rig::with_config(cfg);
    rig.net("n");
    rig.port("n", "a", 1 << 16);
    rig.port("n", "b", 1 << 17);
    let (ma, mb) = (mac(1), mac(2));
    rig.learn_all(&[("a", ma), ("b", mb)]);
    const N: u32 = 200_000;
    let a = rig.peers.remove("a").expect("a");
    let bytes = frame(mb, ma, 64, 7);
    let sender = std::thread::spawn(move || {
        let mut sent = 0u32;
        while sent < N {
            if a.send_bytes(&bytes) {
                sent += 1;
            } else {
                std::thread::yield_now();
            }
        }
        a
    });
    let b = rig.peer("b");
    let mut got = 0u32;
    let deadline = Instant::now() + Duration::from_secs(60);
    while got < N && Instant::now() < deadline {
        match b.recv_timeout(Duration::from_millis(200)) {
            Some(_) => got += 1,
            None if sender.is_finished() && rig.stats("a").rx_frames > u64::from(N) => break,
            None => {}
        }
    }
    let a = sender.join().expect("sender");
    rig.peers.insert("a".into(), a);
    let sb = rig.stats("b");
    assert_eq!(sb.drops["ring_full"], 0, "egress ring overflowed: {sb:?}");
    assert_eq!(got, N, "every frame arrived");
    assert_invariant(&rig.h);
}

#[test]
fn gateway_timers_run_without_traffic() {
    // The gateway runs inside an event loop; its timers (here: router advertisements, every
    // 4 s at start) must fire with no frame or host event to wake the loop.
    let r = Rig::new(1);
    r.h.add_network("gw", FdbConfig::default())
        .expect("network");
    let mut cfg = usernet::gateway::GatewayConfig::new("gw", "10.66.0.0/24".parse().expect("net"));
    cfg.upstreams = usernet::gateway::dns::Upstreams::Explicit(vec![]);
    r.h.add_gateway(cfg).expect("gateway");
    let (sw, guest) = MemoryLink::pair(64, MAX_FRAME).expect("pair");
    r.h.add_port("gw", "g", PortPolicy::default(), Box::new(sw))
        .expect("port");
    // The guest sends nothing; an RA to all nodes (33:33:00:00:00:01, ICMPv6 type 134) arrives.
    let deadline = Instant::now() + Duration::from_secs(10);
    let ra = loop {
        let Some(f) = guest.recv_timeout(deadline.saturating_duration_since(Instant::now())) else {
            break false;
        };
        let d = f.data();
        if d.len() > 54
            && d[..6] == [0x33, 0x33, 0, 0, 0, 1]
            && d[12..14] == [0x86, 0xdd]
            && d[54] == 134
        {
            break true;
        }
    };
    assert!(ra, "no unsolicited router advertisement within 10 s");
}

/// A stalled port (its link never drains) must not hold every GSO buffer of the engine's pool:
/// the others' bulk TCP (64 KiB GSO frames) keeps flowing, and the stalled port's excess is
/// counted as `ring_full`.
#[test]
fn a_stalled_port_cannot_hold_the_whole_gso_pool() {
    use usernet::offload::Offloads;
    let gso_buffers = 64;
    let mut cfg = EngineConfig::default();
    cfg.loops = 1;
    cfg.gso_buffers = gso_buffers;
    let mut rig = Rig::with_config(cfg);
    rig.net("n");
    // `s` never reads what the engine sends it; `v` does; `g` sends bulk TCP to both.
    for name in ["g", "s", "v"] {
        let (engine_end, peer) =
            MemoryLink::pair_with_offloads(1024, MAX_FRAME, Offloads::ALL).expect("memory pair");
        rig.h
            .add_port("n", name, PortPolicy::default(), Box::new(engine_end))
            .expect("add port");
        rig.peers.insert(name.to_string(), peer);
    }
    let (g, s, v) = (mac(1), mac(2), mac(3));
    rig.learn_all(&[("g", g), ("s", s), ("v", v)]);
    let pool = rig.h.bridge().pool().clone();
    let payload: Vec<u8> = (0..60_000u32).map(|i| (i % 251) as u8).collect();
    // A GSO frame in one of the engine's 64 KiB buffers, as an offload link receives it.
    let gso = |dst: Mac| {
        let model = tso_frame(dst, g, &payload, 1448);
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            if let Some(mut f) = pool.frame_from(model.data()) {
                f.meta = model.meta;
                return Some(f);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    // Bulk to the stalled port: far more than the pool holds.
    let mut to_s = 0;
    for _ in 0..3 * gso_buffers {
        let Some(f) = gso(s) else { break };
        assert!(rig.peer("g").send(f).is_ok(), "g's queue has room");
        to_s += 1;
        // Let the engine move it on.
        let ok = wait_until(ARRIVE, || rig.peer("g").rx_queued() == 0);
        assert!(ok);
    }
    let held = pool.large_in_use();
    eprintln!("sent {to_s} GSO frames to the stalled port; it holds {held} GSO buffers");
    // The flowing pair still gets GSO buffers and every frame arrives.
    for i in 0..2 * gso_buffers {
        let f = gso(v).unwrap_or_else(|| {
            panic!(
                "frame {i} to v: no GSO buffer free ({} in use of {gso_buffers}; the stalled port holds them)",
                pool.large_in_use()
            )
        });
        assert!(rig.peer("g").send(f).is_ok());
        let got = rig.peer("v").recv_timeout(ARRIVE).expect("GSO frame at v");
        assert_eq!(got.len(), 54 + payload.len());
    }
    assert_eq!(
        to_s,
        3 * gso_buffers,
        "the stalled port never ran the pool dry"
    );
    // Half the pool (α = 1 with one stalled port), give or take a frame in flight.
    assert!(held <= gso_buffers / 2 + 2, "stalled port holds {held}");
    let drops = rig.stats("s").drops["ring_full"];
    assert!(
        drops > 0,
        "the stalled port's excess is counted: {:?}",
        rig.stats("s")
    );
    assert_invariant(&rig.h);
}
