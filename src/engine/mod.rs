//! The engine: mio event loops that move frames between links and the bridge.
//!
//! # Theory of operation
//!
//! The engine runs `loops` threads, each with its own `mio::Poll`. Every port's link belongs to
//! exactly one loop, chosen when it is added ([`pick_loop`]: the loop serving most of
//! its network's ports, unless that one is 2 ports busier than the least loaded). A loop:
//!
//! 1. waits for readiness (edge-triggered) on its links and on its `Waker`;
//! 2. for a readable link, reads batches of up to [`BATCH`] frames, at most
//!    [`RX_BUDGET`] batches per turn (a port with more waiting goes on a "read again" list served
//!    next turn, so one busy port cannot starve the others), and runs each frame through
//!    [`Bridge::forward`], which pushes it into the egress ports' bounded lock-free TX rings;
//! 3. after the batch, flushes the TX rings of its own ports that received frames (one
//!    `send_batch` per port per batch) and wakes each *other* loop that owns a port which
//!    received frames (one wake per loop per batch, not per frame);
//! 4. on its `Waker`, runs control commands (add or remove a link) and flushes the ports whose
//!    rings other loops filled.
//!
//! Offloads: frames from a TAP with offloads may be 64 KiB GSO frames or lack their checksum.
//! When a port's TX ring is drained into its link, each frame goes through
//! [`crate::offload::adapt`]: passed on untouched to a link that takes it (another offload TAP),
//! segmented and checksummed in software for any other (the egress loop does that work).
//!
//! A link that would block on write keeps at most one batch in its own pending queue and waits
//! for a writable event; meanwhile its TX ring fills and further frames for it are dropped and
//! counted (`ring_full`). So a slow or stuck port costs the others nothing.
//!
//! A link whose read fails for good (TAP deleted, namespace gone) is deregistered, its port
//! removed from the bridge (and its MACs from the FDB), and a warning logged; the other ports
//! keep forwarding.
//!
//! Loop 0 also runs the FDB aging sweep once a second. There is no timer on the forwarding path:
//! frames are written as soon as their batch is processed.
//!
//! Latency: a loop sleeps in `epoll_wait` when it has nothing to do, so each frame that finds it
//! asleep pays a wake-up (on a VM: an inter-processor interrupt and a VM exit to wake the idle
//! vCPU, tens of µs). [`EngineConfig::busy_poll`] makes a loop that just had work keep polling
//! for that long before it sleeps (adaptive busy-polling, like the kernel's `net.core.busy_poll`):
//! the answer to a request finds it awake. Off by default; it costs a CPU while traffic flows.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Sender;
use mio::{Poll, Token, Waker};

use crate::bridge::{Bridge, BridgeError, Clock, NewPort, Port, PortId, PortPolicy, RateLimit};
use crate::error::{Error, Result};
use crate::frame::FramePool;
use crate::link::Link;

mod event_loop;
use event_loop::LoopState;

/// Frames read per `recv_batch` call.
pub const BATCH: usize = 64;
/// Batches read from one port per loop turn before others get their turn.
pub const RX_BUDGET: usize = 4;
const WAKER: Token = Token(0);
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Engine settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EngineConfig {
    /// Number of event-loop threads (at least 1).
    pub loops: usize,
    /// Largest frame (Ethernet header included) any port carries; sizes the pool's buffers.
    pub max_frame: usize,
    /// Capacity of each port's TX ring, in frames.
    pub ring: usize,
    /// Idle buffers the pool keeps.
    pub pool_free: usize,
    /// Most 64 KiB GSO buffers (frames from offload-capable TAPs) in flight at once: the memory
    /// bound for offloaded traffic. When reached, further GSO frames are dropped (oversize).
    pub gso_buffers: usize,
    /// Adaptive busy-polling: after a turn that moved frames, a loop keeps polling without
    /// sleeping for this long before it blocks again. Zero (the default) never spins. A loop
    /// that spins answers the next frame without a wake-up (on a VM, waking an idle vCPU costs
    /// tens of µs), at the price of a CPU kept busy while traffic flows and for this long after.
    pub busy_poll: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            loops: 1,
            // MTU 1500 + Ethernet header + two VLAN tags.
            max_frame: 1500 + 14 + 8,
            ring: crate::bridge::DEFAULT_RING,
            pool_free: 4096,
            gso_buffers: 512,
            busy_poll: Duration::ZERO,
        }
    }
}

pub(crate) enum LoopCmd {
    Add {
        port: Arc<Port>,
        link: Box<dyn Link>,
        reply: Sender<io::Result<()>>,
    },
    Remove {
        id: PortId,
        reply: Sender<()>,
    },
    /// The port's rate limits changed (already stored in its `Port`): rebuild its buckets.
    Limit {
        id: PortId,
        reply: Sender<()>,
    },
}

pub(crate) struct LoopCtl {
    pub(crate) tx: Sender<LoopCmd>,
    pub(crate) waker: Arc<Waker>,
    pub(crate) ports: AtomicUsize,
    /// Nanoseconds the loop spent handling events (from `poll` returning to the end of the
    /// turn), not waiting: one monotonic clock read per turn, none per frame.
    pub(crate) busy_ns: AtomicU64,
}

/// State shared by the loops and every [`Datapath`].
pub(crate) struct Core {
    pub(crate) bridge: Bridge,
    pub(crate) loops: Vec<LoopCtl>,
    pub(crate) cfg: EngineConfig,
    pub(crate) stop: AtomicBool,
}

impl Core {
    pub(crate) fn wake_all(&self) {
        for l in &self.loops {
            let _ = l.waker.wake();
        }
    }
}

/// How long a control request waits for a loop's answer.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// How many more ports than the least loaded loop a loop may have and still take another port
/// of a network it serves.
pub const LOOP_SPILL: usize = 2;

/// The event loop for a new port: `load[i]` is loop i's port count, `same[i]` how many ports of
/// the new port's network loop i has. Ports of one network stay together on the loop that has
/// most of them (frames between them, and to the network's gateway, then never cross loops: a
/// cross-loop handoff costs a wake-up), unless that loop has [`LOOP_SPILL`] more ports than the
/// least loaded one; a new network starts on the least loaded loop. With many networks this
/// spreads networks over loops; with one big network it still spreads its ports.
pub fn pick_loop(load: &[usize], same: &[usize]) -> usize {
    if load.is_empty() {
        return 0;
    }
    let least = (0..load.len()).min_by_key(|&i| load[i]).unwrap_or(0);
    let home = (0..same.len()).filter(|&i| same[i] > 0).max_by_key(|&i| {
        (
            same[i],
            std::cmp::Reverse(load.get(i).copied().unwrap_or(0)),
        )
    });
    match home {
        Some(h) if load.get(h).copied().unwrap_or(0) < load[least] + LOOP_SPILL => h,
        _ => least,
    }
}

/// The datapath's narrow handle: the bridge, and links added to or taken from the loops. What
/// the control plane ([`crate::control`]) and the gateway build on; it knows nothing above it.
/// Cheap to clone.
#[derive(Clone)]
pub struct Datapath {
    core: Arc<Core>,
}

impl std::fmt::Debug for Datapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datapath")
            .field("loops", &self.core.loops.len())
            .finish_non_exhaustive()
    }
}

impl Datapath {
    /// The switching core.
    pub fn bridge(&self) -> &Bridge {
        &self.core.bridge
    }

    /// The engine's settings.
    pub fn config(&self) -> &EngineConfig {
        &self.core.cfg
    }

    /// Stops the loops (they close every link and exit).
    pub fn stop(&self) {
        self.core.stop.store(true, Ordering::Release);
        self.core.wake_all();
    }

    /// True once [`Self::stop`] was called.
    pub fn is_stopped(&self) -> bool {
        self.core.stop.load(Ordering::Acquire)
    }

    /// Ports each loop drives, by loop.
    pub fn loop_load(&self) -> Vec<usize> {
        self.core
            .loops
            .iter()
            .map(|l| l.ports.load(Ordering::Relaxed))
            .collect()
    }

    /// Time each loop has spent handling events since it started (not waiting in `poll`), by
    /// loop: its rate is the loop's utilisation.
    pub fn loop_busy(&self) -> Vec<Duration> {
        self.core
            .loops
            .iter()
            .map(|l| Duration::from_nanos(l.busy_ns.load(Ordering::Relaxed)))
            .collect()
    }

    /// Adds a port on `network` driven by `link`, on the loop [`pick_loop`] chooses: the one
    /// that serves most of the network's ports, unless it has [`LOOP_SPILL`] more ports than the
    /// least loaded loop. Returns once the loop has registered the link.
    pub fn add_link(
        &self,
        network: &str,
        name: &str,
        policy: PortPolicy,
        link: Box<dyn Link>,
    ) -> Result<PortId> {
        if self.is_stopped() {
            return Err(Error::Stopped);
        }
        let owner = {
            let load = self.loop_load();
            let mut same = vec![0; load.len()];
            if let Some(ne) = self.core.bridge.topology().network_by_name(network) {
                for p in &ne.ports {
                    if let Some(n) = same.get_mut(p.owner) {
                        *n += 1;
                    }
                }
            }
            pick_loop(&load, &same)
        };
        let port = self.core.bridge.add_port(
            network,
            NewPort {
                name: name.to_string(),
                kind: link.kind(),
                policy,
                ring: self.core.cfg.ring,
                owner,
            },
        )?;
        let id = port.id;
        let (tx, rx) = crossbeam_channel::bounded(1);
        let ctl = &self.core.loops[owner];
        let sent = ctl.tx.send(LoopCmd::Add {
            port,
            link,
            reply: tx,
        });
        if sent.is_err() {
            self.core.bridge.remove_port(id);
            return Err(Error::Stopped);
        }
        let _ = ctl.waker.wake();
        match rx.recv_timeout(REPLY_TIMEOUT) {
            Ok(Ok(())) => Ok(id),
            Ok(Err(e)) => {
                self.core.bridge.remove_port(id);
                Err(Error::Io(format!("registering port {name}"), e))
            }
            Err(_) => {
                self.core.bridge.remove_port(id);
                Err(Error::Timeout(owner))
            }
        }
    }

    /// Removes port `id` from the bridge and closes its link; returns once its loop let go of
    /// it. A port that is gone already is fine.
    pub fn remove_link(&self, id: PortId) -> Result<()> {
        let owner = self.core.bridge.topology().port(id).map(|p| p.owner);
        self.core.bridge.remove_port(id);
        match owner {
            Some(o) => self.detach(o, id),
            None => Ok(()),
        }
    }

    /// Sets the rate limits of port `id` ([`crate::bridge::limit`]); `None` (or all zero):
    /// unlimited. Returns once its loop applies them; token levels carry over.
    pub fn set_rate_limit(&self, id: PortId, limit: Option<RateLimit>) -> Result<()> {
        let topo = self.core.bridge.topology();
        let port = topo
            .port(id)
            .ok_or_else(|| BridgeError::NoSuchPort(id.0.to_string()))?;
        *port.rate_limit.lock() = limit.and_then(RateLimit::normalized);
        let owner = port.owner;
        let Some(ctl) = self.core.loops.get(owner) else {
            return Ok(());
        };
        let (tx, rx) = crossbeam_channel::bounded(1);
        if ctl.tx.send(LoopCmd::Limit { id, reply: tx }).is_err() {
            return Err(Error::Stopped);
        }
        let _ = ctl.waker.wake();
        rx.recv_timeout(REPLY_TIMEOUT)
            .map_err(|_| Error::Timeout(owner))
    }

    /// Tells loop `owner` to drop the link of `id` (already out of the bridge).
    pub(crate) fn detach(&self, owner: usize, id: PortId) -> Result<()> {
        let Some(ctl) = self.core.loops.get(owner) else {
            return Ok(());
        };
        let (tx, rx) = crossbeam_channel::bounded(1);
        if ctl.tx.send(LoopCmd::Remove { id, reply: tx }).is_err() {
            return Ok(()); // loop gone: the link is closed already
        }
        let _ = ctl.waker.wake();
        rx.recv_timeout(REPLY_TIMEOUT)
            .map_err(|_| Error::Timeout(owner))
    }

    #[cfg(test)]
    pub(crate) fn core(&self) -> &Core {
        &self.core
    }
}

/// The running loops. Dropping them stops the loops and closes every link.
pub struct Loops {
    dp: Datapath,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Loops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loops")
            .field("threads", &self.threads.len())
            .finish()
    }
}

impl Loops {
    /// Starts `cfg.loops` event loops on `clock`.
    pub fn start(mut cfg: EngineConfig, clock: Arc<dyn Clock>) -> io::Result<Loops> {
        cfg.loops = cfg.loops.max(1);
        let pool = FramePool::with_gso(cfg.max_frame, cfg.pool_free, cfg.gso_buffers);
        let mut polls = Vec::new();
        let mut ctls = Vec::new();
        let mut rxs = Vec::new();
        for _ in 0..cfg.loops {
            let poll = Poll::new()?;
            let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
            let (tx, rx) = crossbeam_channel::unbounded();
            ctls.push(LoopCtl {
                tx,
                waker,
                ports: AtomicUsize::new(0),
                busy_ns: AtomicU64::new(0),
            });
            polls.push(poll);
            rxs.push(rx);
        }
        let core = Arc::new(Core {
            bridge: Bridge::new(clock, pool),
            loops: ctls,
            cfg: cfg.clone(),
            stop: AtomicBool::new(false),
        });
        let mut threads = Vec::new();
        for (idx, (poll, rx)) in polls.into_iter().zip(rxs).enumerate() {
            let st = LoopState::new(idx, poll, core.clone(), rx);
            let t = std::thread::Builder::new()
                .name(format!("usernet-loop{idx}"))
                .spawn(move || st.run())?;
            threads.push(t);
        }
        Ok(Loops {
            dp: Datapath { core },
            threads,
        })
    }

    /// The datapath handle.
    pub fn datapath(&self) -> Datapath {
        self.dp.clone()
    }

    /// Waits for the loops to exit (after [`Datapath::stop`]).
    pub fn join(mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Loops {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.dp.stop();
            for t in self.threads.drain(..) {
                let _ = t.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use std::sync::Arc;

    use super::{EngineConfig, LoopCmd, Loops, pick_loop};
    use crate::bridge::MonotonicClock;
    use crate::bridge::{NewPort, PortPolicy};
    use crate::frame::Frame;
    use crate::link::memory::MemoryLink;

    /// A frame flooded to a port the bridge has and its loop has not registered yet (the
    /// window inside `Datapath::add_link`; a gateway's router advertisement hits it) is delivered
    /// once the port is registered, and so is every later frame: the port's flush flag does
    /// not stay raised. Before, the port got its frames only when it had something to read.
    #[test]
    fn frames_for_a_port_added_while_traffic_flows_are_delivered() {
        let loops =
            Loops::start(EngineConfig::default(), Arc::new(MonotonicClock::new())).expect("loops");
        let h = loops.datapath();
        h.bridge()
            .add_network("n", Default::default())
            .expect("network");
        let (a, a_peer) = MemoryLink::pair(64, 1518).expect("pair");
        h.add_link("n", "a", PortPolicy::default(), Box::new(a))
            .expect("port a");
        // The first half of `Datapath::add_link`: the bridge has "b", its loop does not.
        let shared = h.core();
        let port = shared
            .bridge
            .add_port(
                "n",
                NewPort {
                    name: "b".into(),
                    kind: "memory",
                    policy: PortPolicy::default(),
                    ring: shared.cfg.ring,
                    owner: 0,
                },
            )
            .expect("port b in the bridge");
        let flood = |n: u8| {
            let mut f = vec![0u8; 60];
            f[..6].copy_from_slice(&[0xff; 6]);
            f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
            f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
            f[14] = n;
            Frame::from_slice(&f)
        };
        a_peer.send(flood(1)).expect("send");
        // Wait until the loop has forwarded it (into b's ring).
        let a_port = shared
            .bridge
            .topology()
            .port_by_name("a")
            .cloned()
            .expect("a");
        let t = std::time::Instant::now();
        while a_port
            .counters
            .rx_frames
            .load(std::sync::atomic::Ordering::Relaxed)
            < 1
        {
            assert!(t.elapsed() < Duration::from_secs(5), "frame not read");
            std::thread::sleep(Duration::from_millis(5));
        }
        let (b, b_peer) = MemoryLink::pair(64, 1518).expect("pair");
        let (tx, rx) = crossbeam_channel::bounded(1);
        shared.loops[0]
            .tx
            .send(LoopCmd::Add {
                port,
                link: Box::new(b),
                reply: tx,
            })
            .expect("add command");
        let _ = shared.loops[0].waker.wake();
        rx.recv_timeout(Duration::from_secs(5))
            .expect("reply")
            .expect("registered");
        let got = b_peer
            .recv_timeout(Duration::from_secs(2))
            .expect("frame 1");
        assert_eq!(got.data()[14], 1);
        for n in 2..5 {
            a_peer.send(flood(n)).expect("send");
            let got = b_peer
                .recv_timeout(Duration::from_secs(2))
                .unwrap_or_else(|| panic!("frame {n} never delivered"));
            assert_eq!(got.data()[14], n);
        }
        h.stop();
        loops.join();
    }

    /// Places ports one by one: `nets[k]` is the network of port k; returns each one's loop.
    fn place(loops: usize, nets: &[usize]) -> Vec<usize> {
        let mut owner = Vec::new();
        for (k, &n) in nets.iter().enumerate() {
            let mut load = vec![0; loops];
            let mut same = vec![0; loops];
            for j in 0..k {
                load[owner[j]] += 1;
                if nets[j] == n {
                    same[owner[j]] += 1;
                }
            }
            owner.push(pick_loop(&load, &same));
        }
        owner
    }

    #[test]
    fn isolated_pairs_stay_on_one_loop_and_spread() {
        // Pairs on networks 0..4, added A0 B0 A1 B1 ...: each pair on one loop, pairs spread.
        let o = place(2, &[0, 0, 1, 1, 2, 2, 3, 3]);
        assert_eq!(o, vec![0, 0, 1, 1, 0, 0, 1, 1]);
    }

    #[test]
    fn one_big_network_still_spreads() {
        let o = place(2, &[0; 8]);
        let on0 = o.iter().filter(|&&l| l == 0).count();
        assert!((3..=5).contains(&on0), "{o:?}");
        assert_eq!(place(1, &[0, 1, 0]), vec![0, 0, 0]);
        assert_eq!(pick_loop(&[], &[]), 0);
    }
}
