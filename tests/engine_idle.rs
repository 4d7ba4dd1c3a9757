//! An idle engine sleeps: no loop busy-polls. Its own test binary, so the process's CPU time is
//! the engine's alone.

use std::time::{Duration, Instant};

use usernet::bridge::PortPolicy;
use usernet::link::memory::MemoryLink;
use usernet::{Engine, EngineConfig};

/// CPU time (user + system) this process has used, in clock ticks.
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime")
}

#[test]
fn idle_engine_does_not_spin() {
    let engine = Engine::start(EngineConfig {
        loops: 2,
        ..EngineConfig::default()
    })
    .expect("engine");
    let h = engine.handle();
    h.add_network("net", Default::default()).expect("net");
    let mut keep = Vec::new();
    for name in ["a", "b"] {
        let (sw, peer) = MemoryLink::pair(64, 1518).expect("pair");
        h.add_port("net", name, PortPolicy::default(), Box::new(sw))
            .expect("port");
        keep.push(peer);
    }
    // Past the first aging-sweep deadline (1 s), then measure over one second.
    std::thread::sleep(Duration::from_millis(1200));
    let (t0, c0) = (Instant::now(), cpu_ticks());
    std::thread::sleep(Duration::from_secs(1));
    let (dt, dc) = (t0.elapsed(), cpu_ticks() - c0);
    // Clock ticks are 1/100 s: an idle engine should use well under 10% of a core.
    assert!(dc <= 10, "idle engine used {dc} ticks of CPU in {dt:?}");
    engine.shutdown();
}
