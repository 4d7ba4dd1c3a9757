//! Fuzzes `Bridge::forward` with arbitrary frame sequences across 3 ports of 2 networks.
//!
//! The input is a list of records. Each starts with an op byte: bits 0-1 pick the ingress port
//! (mod 3); bits 2-3 the action:
//! - 0, 1: a raw frame follows: a length byte L, then L bytes (fewer at the end of the input);
//! - 2: a compact frame: a length byte L, a selector byte picking dst and src from a small
//!   palette of MACs (broadcast, multicast, zero, 802.1D reserved, four stations) and whether to
//!   add a VLAN tag, then L payload bytes — so learning, moves and eviction happen quickly;
//! - 3: control, by bits 4-5: advance the clock (bits 6-7 pick 10 ms .. 400 s), drain every TX
//!   ring, run the aging sweep, or remove and re-add the ingress port.
//!
//! After every step: the accounting invariant holds for every port, no FDB exceeds its cap,
//! every FDB entry points to a live port of its own network, no frame went back out of its
//! ingress port or to another network, and the lone port of network `n2` never got a frame.
#![no_main]

use std::sync::Arc;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use usernet::bridge::{Bridge, FdbConfig, ManualClock, NewPort, Port, PortPolicy};
use usernet::frame::FramePool;
use usernet::wire::Mac;

const PALETTE: [Mac; 8] = [
    Mac::BROADCAST,
    Mac([0x01, 0x00, 0x5e, 0x00, 0x00, 0x01]),
    Mac([0; 6]),
    Mac([0x01, 0x80, 0xc2, 0x00, 0x00, 0x00]),
    Mac([0x02, 0, 0, 0, 0, 1]),
    Mac([0x02, 0, 0, 0, 0, 2]),
    Mac([0x02, 0, 0, 0, 0, 3]),
    Mac([0x02, 0, 0, 0, 0, 4]),
];
/// FDB caps of n1 and n2 (small, so eviction is exercised).
const CAPS: [usize; 2] = [4, 2];
const NETS: [&str; 2] = ["n1", "n2"];

fn spec(i: usize, generation: u32) -> (&'static str, NewPort) {
    let policy = match i {
        0 => PortPolicy::default(),
        1 => {
            let mut p = PortPolicy::default();
            p.flood = false;
            p
        }
        _ => {
            let mut p = PortPolicy::default();
            p.allowed_macs = vec![PALETTE[4], PALETTE[5]];
            p
        }
    };
    let net = if i < 2 { NETS[0] } else { NETS[1] };
    let port = NewPort {
        name: format!("p{i}-{generation}"),
        kind: "memory",
        policy,
        ring: 4,
        owner: 0,
    };
    (net, port)
}

fn check(br: &Bridge, ports: &[Arc<Port>]) {
    let topo = br.topology();
    for p in ports {
        let s = p.counters.snapshot();
        assert_eq!(
            s.rx_frames,
            s.forwarded + s.rx_dropped(),
            "accounting of {}: {s:?}",
            p.name
        );
    }
    for (name, cap) in NETS.iter().zip(CAPS) {
        let ne = topo.network_by_name(name).expect("network");
        assert!(
            ne.net.fdb.len() <= cap,
            "{name}: fdb {} > {cap}",
            ne.net.fdb.len()
        );
        for e in ne.net.fdb.dump(br.now()) {
            let p = topo.port(e.port).expect("fdb entry of a removed port");
            assert_eq!(p.network, ne.net.id, "fdb entry points to another network");
        }
    }
    assert!(ports[2].tx.is_empty(), "the lone port of n2 got a frame");
}

fuzz_target!(|data: &[u8]| {
    let clock = Arc::new(ManualClock::new());
    let br = Bridge::new(clock.clone(), FramePool::new(1522, 16));
    for (name, cap) in NETS.iter().zip(CAPS) {
        br.add_network(name, FdbConfig::new(cap, 1000))
            .expect("network");
    }
    let mut generation = 0u32;
    let mut ports: Vec<Arc<Port>> = (0..3)
        .map(|i| {
            let (net, p) = spec(i, generation);
            br.add_port(net, p).expect("port")
        })
        .collect();

    let mut rest = data;
    let mut buf = Vec::with_capacity(300);
    while let Some((&op, tail)) = rest.split_first() {
        rest = tail;
        let which = (op & 3) as usize % 3;
        let action = (op >> 2) & 3;
        buf.clear();
        match action {
            0 | 1 => {
                let Some((&len, tail)) = rest.split_first() else {
                    break;
                };
                let n = (len as usize).min(tail.len());
                buf.extend_from_slice(&tail[..n]);
                rest = &tail[n..];
            }
            2 => {
                let [len, sel, tail @ ..] = rest else { break };
                let n = (*len as usize).min(tail.len());
                buf.extend(PALETTE[(sel & 7) as usize].0);
                buf.extend(PALETTE[((sel >> 3) & 7) as usize].0);
                if sel & 0x40 != 0 {
                    buf.extend([0x81, 0x00, 0x00, sel & 0x0f]);
                }
                buf.extend([0x08, 0x00]);
                buf.extend_from_slice(&tail[..n]);
                rest = &tail[n..];
            }
            _ => {
                match (op >> 4) & 3 {
                    0 => {
                        let ms = [10u64, 999, 1000, 400_000][(op >> 6) as usize];
                        clock.advance(Duration::from_millis(ms));
                    }
                    1 => {
                        for p in &ports {
                            while p.tx.pop().is_some() {}
                        }
                    }
                    2 => {
                        br.sweep();
                    }
                    _ => {
                        let old = ports[which].id;
                        assert!(br.remove_port(old).is_some());
                        generation += 1;
                        let (net, p) = spec(which, generation);
                        ports[which] = br.add_port(net, p).expect("re-add port");
                    }
                }
                check(&br, &ports);
                continue;
            }
        }
        let ingress = ports[which].clone();
        let before = ingress
            .counters
            .rx_frames
            .load(std::sync::atomic::Ordering::Relaxed);
        let frame = br.pool().frame_from(&buf).expect("fits the pool");
        let topo = br.topology();
        let mut bad = None;
        br.forward(&topo, &ingress, frame, br.now(), &mut |q| {
            if q.id == ingress.id || q.network != ingress.network {
                bad = Some(q.name.clone());
            }
        });
        assert_eq!(
            bad, None,
            "frame from {} sent to the wrong port",
            ingress.name
        );
        let after = ingress
            .counters
            .rx_frames
            .load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(after, before + 1);
        check(&br, &ports);
    }
});
