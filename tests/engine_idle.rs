//! An idle engine sleeps: no loop busy-polls, and one configured to busy-poll spins only for its
//! window after traffic. Its own test binary, so the process's CPU time is the engine's alone
//! (the tests take a lock: they must not run at the same time).

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

/// How many of `n` samples over `d` find the event-loop thread `usernet-loop0` running or
/// runnable (state `R` in /proc), not asleep: a spinning loop is always `R`, whatever else the
/// machine is doing, where its CPU ticks depend on the other load.
fn loop_running_samples(n: u32, d: Duration) -> u32 {
    let tid = std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .flatten()
        .find(|e| {
            std::fs::read_to_string(e.path().join("comm"))
                .is_ok_and(|c| c.trim() == "usernet-loop0")
        })
        .map(|e| e.path())
        .expect("the loop thread");
    let mut running = 0;
    for _ in 0..n {
        let stat = std::fs::read_to_string(tid.join("stat")).unwrap_or_default();
        let state = stat
            .rfind(')')
            .and_then(|i| stat.get(i + 2..i + 3))
            .unwrap_or("?");
        if state == "R" {
            running += 1;
        }
        std::thread::sleep(d / n);
    }
    running
}

static ONE_AT_A_TIME: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

/// An engine with two memory ports `a` and `b` on one network; returns the peers' ends.
fn engine(cfg: EngineConfig) -> (Engine, Vec<MemoryLink>) {
    let engine = Engine::start(cfg).expect("engine");
    let h = engine.handle();
    h.add_network("net", Default::default()).expect("net");
    let mut peers = Vec::new();
    for name in ["a", "b"] {
        let (sw, peer) = MemoryLink::pair(64, 1518).expect("pair");
        h.add_port("net", name, PortPolicy::default(), Box::new(sw))
            .expect("port");
        peers.push(peer);
    }
    (engine, peers)
}

/// CPU ticks (1/100 s) the process uses over `d`.
fn cpu_over(d: Duration) -> (u64, Duration) {
    let (t0, c0) = (Instant::now(), cpu_ticks());
    std::thread::sleep(d);
    (cpu_ticks() - c0, t0.elapsed())
}

#[test]
fn idle_engine_does_not_spin() {
    let _one = ONE_AT_A_TIME.lock();
    let mut cfg = EngineConfig::default();
    cfg.loops = 2;
    let (engine, _peers) = engine(cfg);
    // Past the first aging-sweep deadline (1 s), then measure over one second.
    std::thread::sleep(Duration::from_millis(1200));
    let (dc, dt) = cpu_over(Duration::from_secs(1));
    // Clock ticks are 1/100 s: an idle engine should use well under 10% of a core.
    assert!(dc <= 10, "idle engine used {dc} ticks of CPU in {dt:?}");
    engine.shutdown();
}

#[test]
fn busy_polling_spins_only_after_traffic() {
    let _one = ONE_AT_A_TIME.lock();
    let window = Duration::from_millis(400);
    let mut cfg = EngineConfig::default();
    cfg.busy_poll = window;
    let (engine, peers) = engine(cfg);
    std::thread::sleep(Duration::from_millis(1200));
    // A broadcast from a reaches b, and wakes the loop into its spinning window.
    let mut f = vec![0u8; 60];
    f[..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
    f[12..14].copy_from_slice(&[0x88, 0xb5]);
    assert!(peers[0].send_bytes(&f), "frame queued");
    let got = peers[1].recv_timeout(Duration::from_secs(2));
    assert_eq!(
        got.as_ref().map(|g| g.data()),
        Some(&f[..]),
        "frame forwarded while busy-polling"
    );
    // Within the window the loop polls without sleeping: it is running (or runnable) whenever
    // we look ...
    let spin = loop_running_samples(20, Duration::from_millis(150));
    assert!(
        spin >= 15,
        "busy-polling loop found running in only {spin} of 20 samples"
    );
    // ... and after it, it sleeps again (and uses no CPU).
    std::thread::sleep(window);
    let asleep = 20 - loop_running_samples(20, Duration::from_millis(200));
    assert!(
        asleep >= 18,
        "loop still spinning after its window: asleep in {asleep} of 20 samples"
    );
    let (idle, dt) = cpu_over(Duration::from_secs(1));
    assert!(
        idle <= 10,
        "loop still spinning after its window: {idle} ticks in {dt:?}"
    );
    engine.shutdown();
}
