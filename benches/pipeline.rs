//! Throughput of the in-process pipeline.
//!
//! - `bridge/*`: [`Bridge::forward`] alone, on one thread. Each iteration takes a batch of
//!   [`BATCH`] frames from a [`FramePool`] (as a link's `recv_batch` does), forwards them from
//!   port `a`, then drains the egress ports' TX rings (as the engine's flush does), so buffers
//!   recycle and the pool never allocates after warm-up. Cases: 64 and 1500-byte frames;
//!   learned unicast to `b`, or broadcast flooded to `b`, `c` and `d` (two copies plus the
//!   original); with 1k or 100k MACs pre-learned on `b`, `c` and `d`.
//! - `engine/memory_burst`: the full engine (one loop) with memory links: `a`'s station sends a
//!   burst of frames to `b`'s station; an iteration ends when `b`'s station has them all.
//!   `engine/memory_burst_captured`: the same with a live capture of `a` and `b` running (the
//!   writers drain into `io::sink`; frames a full queue refuses are counted, not waited for).
//!
//! - `offload/*`: software segmentation of a 64 KiB TCP GSO frame into 1448-byte segments with
//!   their checksums (what the egress loop does for a link without TSO), and completing a
//!   pending checksum on a 1500-byte frame; throughput in bytes of payload.
//!
//! Throughput is reported in frames (`Throughput::Elements`) unless said otherwise. Run with
//! `cargo bench --bench pipeline`.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use usernet::bridge::{Bridge, FdbConfig, MonotonicClock, NewPort, Port, PortPolicy};
use usernet::capture::{CaptureOptions, EndReason};
use usernet::frame::{Frame, FramePool};
use usernet::link::memory::MemoryLink;
use usernet::wire::Mac;
use usernet::{Engine, EngineConfig};

/// Frames per iteration of the bridge benches (the engine's receive batch).
const BATCH: usize = 64;
/// Frames per iteration of the engine bench.
const BURST: usize = 1024;
const MAX_FRAME: usize = 1522;

fn mac(n: u32) -> Mac {
    let b = n.to_be_bytes();
    Mac([0x02, 0x42, b[0], b[1], b[2], b[3]])
}

fn eth(dst: Mac, src: Mac, len: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend(dst.0);
    f.extend(src.0);
    f.extend([0x08, 0x00]);
    f.resize(len, 0xab);
    f
}

struct Rig {
    br: Bridge,
    a: Arc<Port>,
    egress: Vec<Arc<Port>>,
}

/// A bridge with ports a, b, c, d on one network and `macs` stations learned on b, c, d.
fn rig(macs: u32) -> Rig {
    let br = Bridge::new(
        Arc::new(MonotonicClock::new()),
        FramePool::new(MAX_FRAME, 4096),
    );
    let fdb = FdbConfig::new(2 * macs as usize + 16, 0);
    br.add_network("n", fdb).expect("network");
    let port = |name: &str| {
        br.add_port(
            "n",
            NewPort {
                name: name.into(),
                kind: "memory",
                policy: PortPolicy::default(),
                ring: 1024,
                owner: 0,
            },
        )
        .expect("port")
    };
    let a = port("a");
    let egress = vec![port("b"), port("c"), port("d")];
    {
        let topo = br.topology();
        let net = &topo.network_by_name("n").expect("n").net;
        for i in 0..macs {
            net.fdb.learn(0, mac(i), egress[i as usize % 3].id, 0);
        }
        assert_eq!(net.fdb.len(), macs as usize);
    }
    Rig { br, a, egress }
}

fn bench_bridge(c: &mut Criterion) {
    let mut g = c.benchmark_group("bridge");
    g.throughput(Throughput::Elements(BATCH as u64));
    for macs in [1_000u32, 100_000] {
        let r = rig(macs);
        let pool = r.br.pool().clone();
        let src = mac(0xff_0000);
        for len in [64usize, 1500] {
            // Unicast: 64 different learned destinations on b, so lookups spread over the
            // table instead of hitting one cached bucket.
            let unicast: Vec<Vec<u8>> = (0..BATCH as u32)
                .map(|k| eth(mac((k * 3 * (macs / 3 / BATCH as u32)) % macs), src, len))
                .collect();
            let flood: Vec<Vec<u8>> = vec![eth(Mac::BROADCAST, src, len); BATCH];
            for (kind, frames, copies) in [("unicast", &unicast, 1usize), ("flood", &flood, 3)] {
                let id =
                    BenchmarkId::new(format!("{kind}/{len}B"), format!("{}k_macs", macs / 1000));
                g.bench_function(id, |bch| {
                    bch.iter(|| {
                        let topo = r.br.topology();
                        let now = r.br.now();
                        let mut n = 0usize;
                        for f in frames.iter() {
                            let frame = pool.frame_from(f).expect("fits");
                            r.br.forward(&topo, &r.a, frame, now, &mut |_| n += 1);
                        }
                        let mut drained = 0usize;
                        for p in &r.egress {
                            while let Some(f) = p.tx.pop() {
                                black_box(f.data());
                                drained += 1;
                            }
                        }
                        assert_eq!(drained, BATCH * copies);
                        black_box((n, drained))
                    })
                });
                // Every frame went where it should, none was dropped.
                let drops: u64 = r
                    .egress
                    .iter()
                    .map(|p| p.counters.snapshot().drops.values().sum::<u64>())
                    .sum::<u64>()
                    + r.a.counters.snapshot().drops.values().sum::<u64>();
                assert_eq!(drops, 0, "{kind}/{len}: frames dropped");
            }
        }
    }
    g.finish();
}

/// The bridge's forwarding decision with port security off and on, same frames (IPv4/UDP from
/// one owned MAC and address to 64 learned destinations): what the ownership check costs.
fn bench_port_security(c: &mut Criterion) {
    let mut g = c.benchmark_group("port_security");
    g.throughput(Throughput::Elements(BATCH as u64));
    let src = mac(0xff_0000);
    let frames: Vec<Vec<u8>> = (0..BATCH as u32)
        .map(|k| {
            let mut f = eth(mac(k * 15), src, 14);
            let mut ip = vec![0x45, 0, 0x05, 0xce, 0, 0, 0x40, 0, 64, 17, 0, 0];
            ip.extend([10, 0, 0, 5, 10, 0, 0, 9]);
            ip.extend([0x30, 0x39, 0x30, 0x39, 0x05, 0xba, 0, 0]);
            f.extend(ip);
            f.resize(1500, 0xab);
            f
        })
        .collect();
    for on in [false, true] {
        let r = rig(1_000);
        {
            let topo = r.br.topology();
            let guard = &topo.network_by_name("n").expect("n").net.guard;
            guard.set_enabled(on);
            guard.set_scope(usernet::bridge::security::Scope {
                subnet4: Some("10.0.0.0/24".parse().expect("subnet")),
                prefix6: None,
            });
        }
        let pool = r.br.pool().clone();
        let id = BenchmarkId::new("unicast/1500B", if on { "on" } else { "off" });
        g.bench_function(id, |bch| {
            bch.iter(|| {
                let topo = r.br.topology();
                let now = r.br.now();
                let mut n = 0usize;
                for f in frames.iter() {
                    let frame = pool.frame_from(f).expect("fits");
                    r.br.forward(&topo, &r.a, frame, now, &mut |_| n += 1);
                }
                for p in &r.egress {
                    while let Some(f) = p.tx.pop() {
                        black_box(f.data());
                    }
                }
                black_box(n)
            })
        });
        let st = r.a.counters.snapshot();
        assert_eq!(
            st.rx_dropped(),
            0,
            "port security {on}: frames dropped: {st:?}"
        );
    }
    g.finish();
}

fn bench_engine(c: &mut Criterion) {
    let mut cfg = EngineConfig::default();
    cfg.loops = 1;
    cfg.ring = 4 * BURST;
    let engine = Engine::start(cfg).expect("engine");
    let h = engine.handle();
    h.add_network("n", FdbConfig::default()).expect("network");
    let (ea, a) = MemoryLink::pair(4 * BURST, MAX_FRAME).expect("pair");
    let (eb, b) = MemoryLink::pair(4 * BURST, MAX_FRAME).expect("pair");
    h.add_port("n", "a", PortPolicy::default(), Box::new(ea))
        .expect("port a");
    h.add_port("n", "b", PortPolicy::default(), Box::new(eb))
        .expect("port b");
    let (ma, mb) = (mac(1), mac(2));
    // Learn both stations so the burst is unicast.
    for (tx, rx, f) in [
        (&a, &b, eth(Mac::BROADCAST, ma, 64)),
        (&b, &a, eth(ma, mb, 64)),
    ] {
        assert!(tx.send_bytes(&f));
        assert!(
            rx.recv_timeout(Duration::from_secs(2)).is_some(),
            "learning"
        );
    }
    // The stations' own buffer pool: frames come back to it when b's station drops them.
    let pool = FramePool::new(MAX_FRAME, 2 * BURST);
    let mut g = c.benchmark_group("engine");
    let burst = |g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
                 id: BenchmarkId,
                 len: usize| {
        let bytes = eth(mb, ma, len);
        g.throughput(Throughput::Elements(BURST as u64));
        g.bench_function(id, |bch| {
            bch.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let frames: Vec<Frame> = (0..BURST)
                        .map(|_| pool.frame_from(&bytes).expect("fits"))
                        .collect();
                    let t0 = Instant::now();
                    for f in frames {
                        a.send(f).expect("a's queue has room for the burst");
                    }
                    for i in 0..BURST {
                        let f = b
                            .recv_timeout(Duration::from_secs(2))
                            .unwrap_or_else(|| panic!("frame {i} of the burst lost"));
                        black_box(f.len());
                    }
                    total += t0.elapsed();
                }
                total
            })
        });
    };
    for len in [64usize, 1500] {
        burst(
            &mut g,
            BenchmarkId::new("memory_burst", format!("{len}B")),
            len,
        );
    }
    // The same with a live capture of both ports running (writers draining into io::sink).
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|p| {
            let s = h.capture(p, &CaptureOptions::default()).expect("capture");
            let st = stop.clone();
            std::thread::spawn(move || {
                s.run(std::io::sink(), || {
                    st.load(Ordering::Relaxed).then_some(EndReason::Stopped)
                })
            })
        })
        .collect();
    for len in [64usize, 1500] {
        burst(
            &mut g,
            BenchmarkId::new("memory_burst_captured", format!("{len}B")),
            len,
        );
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        let sum = w.join().expect("capture writer");
        eprintln!(
            "capture while benchmarking: {} frames written, {} dropped (queue full)",
            sum.captured, sum.dropped
        );
    }
    g.finish();
    let drops: u64 = h
        .stats()
        .iter()
        .map(|r| r.stats.drops.values().sum::<u64>())
        .sum();
    assert_eq!(drops, 0, "engine dropped frames");
    engine.shutdown();
}

/// A TCP/IPv4 frame with `payload` bytes and the virtio-net header an offload TAP would give it.
fn offloaded(payload: usize, mss: u16) -> Frame {
    use usernet::frame::VnetHdr;
    let mut bytes = Vec::new();
    etherparse::PacketBuilder::ethernet2(mac(1).0, mac(2).0)
        .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        .tcp(40000, 5201, 1, 65535)
        .ack(1)
        .write(&mut bytes, &vec![0x5a; payload])
        .expect("builds");
    let mut f = Frame::from_slice(&bytes);
    f.meta.vnet = VnetHdr {
        flags: VnetHdr::F_NEEDS_CSUM,
        gso_type: if payload > usize::from(mss) {
            usernet::offload::GSO_TCPV4
        } else {
            0
        },
        hdr_len: 54,
        gso_size: mss,
        csum_start: 34,
        csum_offset: 16,
    };
    f
}

fn bench_offload(c: &mut Criterion) {
    use std::collections::VecDeque;
    use usernet::offload::{Offloads, adapt};
    let pool = FramePool::new(MAX_FRAME, 256);
    let mut g = c.benchmark_group("offload");
    for (name, payload) in [("segment_64k", 65_000usize), ("checksum_1500", 1446)] {
        let template = offloaded(payload, 1448);
        g.throughput(Throughput::Bytes(payload as u64));
        g.bench_function(name, |bch| {
            let mut out = VecDeque::with_capacity(64);
            bch.iter(|| {
                let mut f = Frame::from_slice(template.data());
                f.meta = template.meta;
                let n = adapt(f, Offloads::NONE, &pool, &mut out).expect("adapts");
                black_box(n);
                out.clear();
            })
        });
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_bridge, bench_port_security, bench_engine, bench_offload
}
criterion_main!(benches);
