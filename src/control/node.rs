//! The control plane's own state, and the public [`Engine`]: the datapath's loops
//! ([`crate::engine::Loops`]) plus a `Node` that owns what only the control plane needs -
//! gateways, stream listeners, the namespaces of ports, the splice relay, and liveness watches
//! for ports whose death no descriptor reports. The datapath knows none of it.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::Handle;
use crate::bridge::{Clock, MonotonicClock, PortId};
use crate::engine::{EngineConfig, Loops};
use crate::gateway::Gateway;

/// A liveness check for a port whose death the kernel does not report on its descriptor: a TAP
/// inside a namespace that we keep alive ourselves (our fd pins it), an AF_PACKET interface
/// deleted while down.
pub(crate) struct Watch {
    pub(crate) port: PortId,
    pub(crate) what: String,
    pub(crate) alive: Box<dyn Fn() -> bool + Send>,
}

/// What the control plane keeps beside the datapath.
#[derive(Default)]
pub(crate) struct Node {
    pub(crate) watches: Mutex<Vec<Watch>>,
    /// Stream ports' listeners, by port name (set to stop one).
    pub(crate) streams: Mutex<HashMap<String, Arc<AtomicBool>>>,
    /// Gateways by network.
    pub(crate) gateways: Mutex<BTreeMap<String, Arc<Gateway>>>,
    /// Network namespace of each port that lives in one (for spliced forwards).
    pub(crate) port_netns: Mutex<HashMap<String, PathBuf>>,
    /// VXLAN ports' shared state (remotes, VTEP table, counters), by port name.
    pub(crate) vxlan: Mutex<HashMap<String, Arc<crate::link::vxlan::VxlanShared>>>,
    /// Each port forward's endpoint states and counters, by forward id (see `forwards.rs`).
    pub(crate) forward_stats: Mutex<HashMap<u64, Arc<crate::nat::balance::PoolStats>>>,
    /// The relay thread for spliced forwards, started on first use.
    pub(crate) splicer: Mutex<Option<Arc<crate::nat::splice::Splicer>>>,
    /// Captures running (see [`super::capture`]): a stopping engine lets them finish.
    pub(crate) captures: Arc<std::sync::atomic::AtomicUsize>,
    /// Event subscribers and what they were last told (see [`super::events`]).
    pub(crate) events: super::events::EventBus,
    /// The cluster thread's shared state, once the node joined a cluster (see
    /// [`super::cluster`]).
    pub(crate) cluster: Mutex<Option<Arc<super::cluster::Shared>>>,
}

/// A running engine: the event loops and the control plane. Dropping it stops the loops and
/// closes every link.
pub struct Engine {
    handle: Handle,
    loops: Option<Loops>,
    watch: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("loops", &self.loops)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Starts the event loops with the system clock.
    pub fn start(cfg: EngineConfig) -> std::io::Result<Engine> {
        Self::start_with_clock(cfg, Arc::new(MonotonicClock::new()))
    }

    /// Starts the event loops with the given clock (tests use a [`crate::bridge::ManualClock`]).
    pub fn start_with_clock(cfg: EngineConfig, clock: Arc<dyn Clock>) -> std::io::Result<Engine> {
        // Every NAT flow holds a descriptor: use the whole allowance, and budget it (NAT
        // refuses new flows well before EMFILE; see `nat::host::raise_nofile`).
        let nofile = crate::nat::host::raise_nofile();
        tracing::debug!(nofile, "RLIMIT_NOFILE");
        let loops = Loops::start(cfg, clock)?;
        let handle = Handle::new(loops.datapath(), Arc::new(Node::default()));
        let h = handle.clone();
        let watch = std::thread::Builder::new()
            .name("usernet-watch".into())
            .spawn(move || watch_loop(h))?;
        Ok(Engine {
            handle,
            loops: Some(loops),
            watch: Some(watch),
        })
    }

    /// A control handle (cheap to clone, usable from any thread).
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// Blocks until [`Handle::shutdown`] is called (from a signal handler thread, the control
    /// socket, or an embedder), then joins the loops.
    pub fn wait(mut self) {
        self.join();
    }

    /// Stops the loops and waits for them.
    pub fn shutdown(mut self) {
        self.handle.shutdown();
        self.join();
    }

    fn join(&mut self) {
        if let Some(l) = self.loops.take() {
            l.join();
        }
        // The loops ended every capture (their ports are gone): let the writers finish.
        super::capture::wait_finished(&self.handle.node().captures, super::capture::FINISH_WAIT);
        if let Some(w) = self.watch.take() {
            let _ = w.join();
        }
        super::cluster::wait_left(&self.handle, std::time::Duration::from_secs(3));
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if self.loops.is_some() {
            self.handle.shutdown();
            self.join();
        }
    }
}

/// How often the watcher checks ports whose death the kernel does not signal.
const WATCH_EVERY: Duration = Duration::from_millis(500);

/// Removes ports whose [`Watch`] says they are gone (e.g. the namespace of a TAP was deleted:
/// our own TAP descriptor keeps that namespace alive, so no read ever fails), and forgets the
/// namespaces of ports that went some other way.
fn watch_loop(h: Handle) {
    let mut last = Instant::now();
    let mut last_events = Instant::now();
    while !h.is_stopped() {
        std::thread::sleep(Duration::from_millis(50));
        if last_events.elapsed() >= super::events::TICK {
            last_events = Instant::now();
            super::events::tick(&h);
        }
        if last.elapsed() < WATCH_EVERY {
            continue;
        }
        last = Instant::now();
        let dead: Vec<(PortId, String)> = {
            let topo = h.bridge().topology();
            h.node()
                .port_netns
                .lock()
                .retain(|name, _| topo.port_by_name(name).is_some());
            h.node()
                .vxlan
                .lock()
                .retain(|name, _| topo.port_by_name(name).is_some());
            let mut w = h.node().watches.lock();
            w.retain(|x| topo.port(x.port).is_some());
            w.iter()
                .filter(|x| !(x.alive)())
                .map(|x| (x.port, x.what.clone()))
                .collect()
        };
        for (id, what) in dead {
            let name = h.bridge().topology().port(id).map(|p| p.name.clone());
            if let Some(name) = name {
                tracing::warn!(port = %name, "{what} is gone; port removed");
                let _ = h.remove_port(&name);
            }
        }
    }
}
