//! The switching core: networks, ports, the FDB and the forwarding decision. No file descriptors.
//!
//! # Theory of operation
//!
//! A [`Bridge`] holds any number of *networks* (bridge domains). Each network has its own
//! [`Fdb`] and its own set of [`Port`]s; a frame never leaves the network of the port it came in
//! on, so networks are isolated by construction (there is no code path that looks up a port of
//! another network: unicast targets are checked to belong to the ingress network, flood targets
//! are taken from the ingress network's port list).
//!
//! The set of networks and ports is an immutable [`Topology`] snapshot behind an `ArcSwap`:
//! the datapath loads it once per batch without locking; control operations build a new
//! snapshot under a writer mutex and swap it in (read-copy-update). Ports and networks change
//! rarely, frames arrive constantly.
//!
//! [`Bridge::forward`] is the whole per-frame decision, in the order of the frame path
//! (docs/ARCHITECTURE.md): parse L2 once → policy (valid source, 802.1D reserved group, allowed source MACs,
//! isolation) → learn → decide (unicast to the learned port, or flood) → push into each egress
//! port's bounded lock-free TX ring. It never blocks and never allocates except for the extra
//! copies of a flood (every target but the last gets a copy; the last gets the original buffer).
//!
//! ## Accounting invariant
//!
//! For every port: `rx_frames == forwarded + Σ rx drops` — every received frame is either
//! forwarded (handed to at least one egress ring) or counted under exactly one drop reason.
//! Egress-side losses (a full TX ring, a link that refuses a frame) are counted on the egress
//! port as TX drops, since they are that port's congestion.
//!
//! ## Rules (as the Linux bridge)
//! - Frames with a multicast or all-zero source MAC are dropped (`invalid_source`), never learned.
//! - Frames to 01:80:C2:00:00:00–0F are not forwarded (`reserved`).
//! - Broadcast always floods; unknown unicast and multicast flood to ports with `flood` set.
//! - A frame is never sent back out of its ingress port (`hairpin` when the FDB says the
//!   destination is on the ingress port).
//! - An isolated port reaches only non-isolated ports (Docker `--icc=false`; the gateway is not
//!   isolated), and receives only from them.
//!
//! ## Port security
//!
//! Before a source MAC is learned, [`security::NetGuard::check`] makes sure the port owns it
//! and the frame's other source addresses (ARP, NDP, IP), and drops router advertisements and
//! DHCP server messages from guests: see [`security`]. Every forwarded frame carries its
//! ingress port in [`crate::frame::FrameMeta::ingress`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use arc_swap::{ArcSwap, Guard};
use crossbeam_queue::ArrayQueue;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

pub mod clock;
pub mod fdb;
pub mod security;

pub use clock::{Clock, ManualClock, MonotonicClock};
pub use fdb::{Fdb, FdbConfig, FdbEntry, Learned};

use crate::frame::{Frame, FramePool};
use crate::wire::{L2Header, Mac};

/// Identifies a port for the life of the process (never reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortId(pub u32);

/// Identifies a network for the life of the process (never reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NetworkId(pub u32);

/// Why a frame was dropped. Each has its own counter per port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(usize)]
#[non_exhaustive]
pub enum DropReason {
    /// Shorter than an Ethernet header (or than its VLAN tag).
    Runt = 0,
    /// Longer than the receive buffer (truncated by the kernel).
    Oversize,
    /// Multicast or all-zero source MAC.
    InvalidSource,
    /// Destination in the 802.1D reserved range.
    Reserved,
    /// Port policy: source MAC not allowed, or isolation.
    Policy,
    /// Destination learned on the ingress port itself.
    Hairpin,
    /// No other port to deliver to.
    NoDestination,
    /// Egress: the port's TX ring was full, or the port already held its share of the shared
    /// GSO buffers (see [`crate::frame`]).
    RingFull,
    /// Egress: the link refused the frame.
    LinkError,
    /// Egress: a GSO or partial-checksum frame whose headers did not allow segmenting or
    /// checksumming it for a link without offloads.
    BadOffload,
    /// Port security: a source MAC the port does not own (another port's, the gateway's).
    SpoofedSource,
    /// Port security: an IP source the port does not own or may not use.
    SpoofedIp,
    /// Port security: an ARP sender MAC or IP the port does not own.
    SpoofedArp,
    /// Port security: an NDP target or link-layer option the port does not own.
    SpoofedNd,
    /// Port security: a router advertisement, redirect or DHCP/DHCPv6 server message from a
    /// guest (RA guard, DHCP guard).
    RogueServer,
    /// Port security: the port already owns as many MACs as it may.
    AddressLimit,
}

impl DropReason {
    /// Number of reasons.
    pub const COUNT: usize = 16;
    /// Every reason, in counter order.
    pub const ALL: [DropReason; Self::COUNT] = [
        DropReason::Runt,
        DropReason::Oversize,
        DropReason::InvalidSource,
        DropReason::Reserved,
        DropReason::Policy,
        DropReason::Hairpin,
        DropReason::NoDestination,
        DropReason::RingFull,
        DropReason::LinkError,
        DropReason::BadOffload,
        DropReason::SpoofedSource,
        DropReason::SpoofedIp,
        DropReason::SpoofedArp,
        DropReason::SpoofedNd,
        DropReason::RogueServer,
        DropReason::AddressLimit,
    ];

    /// Stable name used in stats output.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Runt => "runt",
            DropReason::Oversize => "oversize",
            DropReason::InvalidSource => "invalid_source",
            DropReason::Reserved => "reserved",
            DropReason::Policy => "policy",
            DropReason::Hairpin => "hairpin",
            DropReason::NoDestination => "no_destination",
            DropReason::RingFull => "ring_full",
            DropReason::LinkError => "link_error",
            DropReason::BadOffload => "bad_offload",
            DropReason::SpoofedSource => "spoofed_source",
            DropReason::SpoofedIp => "spoofed_ip",
            DropReason::SpoofedArp => "spoofed_arp",
            DropReason::SpoofedNd => "spoofed_nd",
            DropReason::RogueServer => "rogue_server",
            DropReason::AddressLimit => "address_limit",
        }
    }

    /// True for reasons counted on the egress side.
    pub fn is_egress(self) -> bool {
        matches!(
            self,
            DropReason::RingFull | DropReason::LinkError | DropReason::BadOffload
        )
    }
}

/// Per-port counters, updated with relaxed atomics (each is written by one loop).
#[derive(Debug, Default)]
pub struct PortCounters {
    /// Frames received from the link.
    pub rx_frames: AtomicU64,
    /// Bytes received from the link.
    pub rx_bytes: AtomicU64,
    /// Received frames handed to at least one egress ring.
    pub forwarded: AtomicU64,
    /// Frames written to the link.
    pub tx_frames: AtomicU64,
    /// Bytes written to the link.
    pub tx_bytes: AtomicU64,
    drops: [AtomicU64; DropReason::COUNT],
}

impl PortCounters {
    /// Counts `n` drops for `reason`.
    pub fn drop_n(&self, reason: DropReason, n: u64) {
        self.drops[reason as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// Drops counted for `reason`.
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize].load(Ordering::Relaxed)
    }

    /// A consistent-enough copy for display.
    pub fn snapshot(&self) -> PortStats {
        PortStats {
            rx_frames: self.rx_frames.load(Ordering::Relaxed),
            rx_bytes: self.rx_bytes.load(Ordering::Relaxed),
            forwarded: self.forwarded.load(Ordering::Relaxed),
            tx_frames: self.tx_frames.load(Ordering::Relaxed),
            tx_bytes: self.tx_bytes.load(Ordering::Relaxed),
            drops: DropReason::ALL
                .iter()
                .map(|r| (r.name().to_string(), self.drops(*r)))
                .collect(),
        }
    }
}

/// A copy of a port's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PortStats {
    /// Frames received.
    pub rx_frames: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Received frames forwarded.
    pub forwarded: u64,
    /// Frames sent.
    pub tx_frames: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Drops by reason name (every reason listed, zero or not).
    pub drops: std::collections::BTreeMap<String, u64>,
}

impl PortStats {
    /// Sum of the ingress-side drops.
    pub fn rx_dropped(&self) -> u64 {
        DropReason::ALL
            .iter()
            .filter(|r| !r.is_egress())
            .map(|r| self.drops.get(r.name()).copied().unwrap_or(0))
            .sum()
    }
}

/// Forwarding policy of one port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct PortPolicy {
    /// Learn source MACs seen on this port.
    pub learning: bool,
    /// Receive unknown-unicast and multicast floods (broadcast is always received).
    pub flood: bool,
    /// Isolated ports cannot exchange frames with each other, only with non-isolated ports.
    pub isolated: bool,
    /// If non-empty, frames whose source MAC is not listed are dropped (anti-spoofing); with
    /// port security, the port owns exactly these MACs.
    pub allowed_macs: Vec<Mac>,
    /// IP addresses the port owns from the start (port security; see [`security`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed_ips: Vec<std::net::IpAddr>,
    /// Check this port's source addresses ([`security`]); `None`: the network's default (on
    /// for networks with a gateway).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port_security: Option<bool>,
}

impl Default for PortPolicy {
    fn default() -> Self {
        PortPolicy {
            learning: true,
            flood: true,
            isolated: false,
            allowed_macs: Vec::new(),
            allowed_ips: Vec::new(),
            port_security: None,
        }
    }
}

/// Default capacity of a port's TX ring, in frames.
pub const DEFAULT_RING: usize = 1024;

/// The bridge side of a port: identity, policy, counters and its TX ring.
pub struct Port {
    /// Unique id.
    pub id: PortId,
    /// Unique name (also the endpoint's DNS name in later features).
    pub name: String,
    /// The network it belongs to.
    pub network: NetworkId,
    /// The link kind behind it (`"tap"`, `"packet"`, `"memory"`).
    pub kind: &'static str,
    /// Forwarding policy.
    pub policy: PortPolicy,
    /// Counters.
    pub counters: PortCounters,
    /// Frames waiting to be written to this port's link (bounded, lock-free).
    pub tx: ArrayQueue<Frame>,
    /// Index of the event loop that owns this port's link.
    pub owner: usize,
    /// Set by another loop that pushed into `tx`; cleared by the owner before it drains.
    pub(crate) tx_pending: AtomicBool,
    /// Owner-loop bookkeeping: already on this batch's flush list.
    pub(crate) dirty_local: AtomicBool,
    /// The addresses it owns (port security).
    pub owned: Arc<security::PortOwned>,
    /// Set when the port is removed from the bridge: frames its link still delivers before
    /// its loop detaches it are dropped, never learned.
    pub(crate) removed: AtomicBool,
    /// GSO buffers held by frames queued for this port (its fair share, see
    /// [`crate::frame`]).
    pub(crate) gso_held: Arc<std::sync::atomic::AtomicUsize>,
    /// Live captures of the port's frames (see [`crate::capture`]).
    pub capture: Arc<crate::capture::Tap>,
}

impl std::fmt::Debug for Port {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Port")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("network", &self.network)
            .field("kind", &self.kind)
            .finish()
    }
}

/// A network (bridge domain).
#[derive(Debug)]
pub struct Network {
    /// Unique id.
    pub id: NetworkId,
    /// Unique name.
    pub name: String,
    /// Its MAC table.
    pub fdb: Fdb,
    /// Who owns which address (port security).
    pub guard: Arc<security::NetGuard>,
}

/// A network and its current ports, in a topology snapshot.
#[derive(Debug, Clone)]
pub struct NetEntry {
    /// The network.
    pub net: Arc<Network>,
    /// Its ports, in the order they were added.
    pub ports: Vec<Arc<Port>>,
}

/// An immutable snapshot of networks and ports.
#[derive(Debug, Clone, Default)]
pub struct Topology {
    nets: HashMap<NetworkId, NetEntry, ahash::RandomState>,
    ports: HashMap<PortId, Arc<Port>, ahash::RandomState>,
}

impl Topology {
    /// The network with this id.
    pub fn network(&self, id: NetworkId) -> Option<&NetEntry> {
        self.nets.get(&id)
    }

    /// The network with this name.
    pub fn network_by_name(&self, name: &str) -> Option<&NetEntry> {
        self.nets.values().find(|n| n.net.name == name)
    }

    /// All networks, sorted by id.
    pub fn networks(&self) -> Vec<&NetEntry> {
        let mut v: Vec<_> = self.nets.values().collect();
        v.sort_by_key(|n| n.net.id);
        v
    }

    /// The port with this id.
    pub fn port(&self, id: PortId) -> Option<&Arc<Port>> {
        self.ports.get(&id)
    }

    /// The port with this name.
    pub fn port_by_name(&self, name: &str) -> Option<&Arc<Port>> {
        self.ports.values().find(|p| p.name == name)
    }

    /// All ports, sorted by id.
    pub fn ports(&self) -> Vec<&Arc<Port>> {
        let mut v: Vec<_> = self.ports.values().collect();
        v.sort_by_key(|p| p.id);
        v
    }
}

/// A topology change that could not be made; the message names the object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BridgeError {
    /// A network with this name exists.
    #[error("network {0:?} already exists")]
    NetworkExists(String),
    /// No network with this name.
    #[error("no network named {0:?}")]
    NoSuchNetwork(String),
    /// A port with this name exists.
    #[error("port {0:?} already exists")]
    PortExists(String),
    /// No port with this name.
    #[error("no port named {0:?}")]
    NoSuchPort(String),
    /// A name that cannot be used.
    #[error("invalid name {0:?}: use 1-64 characters from [A-Za-z0-9_.-]")]
    BadName(String),
    /// A port's configured address (`allowed_macs`, `allowed_ips`) belongs to another port.
    #[error("port {0:?}: {1}")]
    AddressInUse(String, String),
}

/// Checks a network or port name: 1-64 of `[A-Za-z0-9_.-]`.
pub fn validate_name(name: &str) -> Result<(), BridgeError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(BridgeError::BadName(name.to_string()))
    }
}

/// What [`Bridge::add_port`] needs to know about a new port.
#[derive(Debug, Clone)]
pub struct NewPort {
    /// Unique name.
    pub name: String,
    /// Link kind, for display.
    pub kind: &'static str,
    /// Forwarding policy.
    pub policy: PortPolicy,
    /// TX ring capacity in frames.
    pub ring: usize,
    /// Owning event loop.
    pub owner: usize,
}

/// The switching core. See the module docs.
pub struct Bridge {
    topo: ArcSwap<Topology>,
    writer: Mutex<()>,
    clock: Arc<dyn Clock>,
    pool: FramePool,
    next_id: AtomicU32,
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridge")
            .field("topology", &*self.topo.load())
            .finish()
    }
}

impl Bridge {
    /// An empty bridge reading time from `clock` and copying floods into `pool`.
    pub fn new(clock: Arc<dyn Clock>, pool: FramePool) -> Self {
        Bridge {
            topo: ArcSwap::from_pointee(Topology::default()),
            writer: Mutex::new(()),
            clock,
            pool,
            next_id: AtomicU32::new(1),
        }
    }

    /// Now, in the bridge clock's milliseconds.
    pub fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    /// The frame pool.
    pub fn pool(&self) -> &FramePool {
        &self.pool
    }

    /// The current topology snapshot (cheap; no lock).
    pub fn topology(&self) -> Guard<Arc<Topology>> {
        self.topo.load()
    }

    fn update<T>(
        &self,
        f: impl FnOnce(&mut Topology) -> Result<T, BridgeError>,
    ) -> Result<T, BridgeError> {
        let _w = self.writer.lock();
        let mut t = Topology::clone(&self.topo.load());
        let r = f(&mut t)?;
        self.topo.store(Arc::new(t));
        Ok(r)
    }

    /// Adds a network.
    pub fn add_network(&self, name: &str, fdb: FdbConfig) -> Result<Arc<Network>, BridgeError> {
        validate_name(name)?;
        self.update(|t| {
            if t.network_by_name(name).is_some() {
                return Err(BridgeError::NetworkExists(name.to_string()));
            }
            let net = Arc::new(Network {
                id: NetworkId(self.next_id.fetch_add(1, Ordering::Relaxed)),
                name: name.to_string(),
                fdb: Fdb::new(fdb),
                guard: Arc::new(security::NetGuard::default()),
            });
            t.nets.insert(
                net.id,
                NetEntry {
                    net: net.clone(),
                    ports: Vec::new(),
                },
            );
            Ok(net)
        })
    }

    /// Removes a network and all its ports; returns the removed ports.
    pub fn remove_network(&self, name: &str) -> Result<Vec<Arc<Port>>, BridgeError> {
        self.update(|t| {
            let id = t
                .network_by_name(name)
                .map(|n| n.net.id)
                .ok_or_else(|| BridgeError::NoSuchNetwork(name.to_string()))?;
            let ne = t
                .nets
                .remove(&id)
                .ok_or_else(|| BridgeError::NoSuchNetwork(name.to_string()))?;
            for p in &ne.ports {
                p.removed.store(true, Ordering::Release);
                t.ports.remove(&p.id);
                ne.net.guard.unregister(p.id);
            }
            Ok(ne.ports)
        })
    }

    /// Adds a port to `network`.
    pub fn add_port(&self, network: &str, spec: NewPort) -> Result<Arc<Port>, BridgeError> {
        validate_name(&spec.name)?;
        self.update(|t| {
            if t.port_by_name(&spec.name).is_some() {
                return Err(BridgeError::PortExists(spec.name.clone()));
            }
            let net_id = t
                .network_by_name(network)
                .map(|n| n.net.id)
                .ok_or_else(|| BridgeError::NoSuchNetwork(network.to_string()))?;
            let id = PortId(self.next_id.fetch_add(1, Ordering::Relaxed));
            let owned = Arc::new(security::PortOwned::default());
            if let Some(ne) = t.nets.get(&net_id) {
                ne.net
                    .guard
                    .register(
                        id,
                        owned.clone(),
                        spec.policy.port_security,
                        &spec.policy.allowed_macs,
                        &spec.policy.allowed_ips,
                    )
                    .map_err(|e| BridgeError::AddressInUse(spec.name.clone(), e.to_string()))?;
            }
            let port = Arc::new(Port {
                id,
                name: spec.name.clone(),
                network: net_id,
                kind: spec.kind,
                policy: spec.policy.clone(),
                counters: PortCounters::default(),
                tx: ArrayQueue::new(spec.ring.max(1)),
                owner: spec.owner,
                tx_pending: AtomicBool::new(false),
                dirty_local: AtomicBool::new(false),
                owned,
                removed: AtomicBool::new(false),
                gso_held: Arc::default(),
                capture: Arc::default(),
            });
            if let Some(ne) = t.nets.get_mut(&net_id) {
                ne.ports.push(port.clone());
            }
            t.ports.insert(port.id, port.clone());
            Ok(port)
        })
    }

    /// Removes a port and forgets the MACs learned on it.
    pub fn remove_port(&self, id: PortId) -> Option<Arc<Port>> {
        let removed = self
            .update(|t| {
                let p = t
                    .ports
                    .remove(&id)
                    .ok_or_else(|| BridgeError::NoSuchPort(id.0.to_string()))?;
                p.removed.store(true, Ordering::Release);
                if let Some(ne) = t.nets.get_mut(&p.network) {
                    ne.ports.retain(|q| q.id != id);
                    ne.net.fdb.flush_port(id);
                    ne.net.guard.unregister(id);
                }
                Ok(p)
            })
            .ok()?;
        // Free the queued frames now rather than when the last snapshot goes.
        while removed.tx.pop().is_some() {}
        Some(removed)
    }

    /// Forgets, once more, the MACs learned on `port`, a port already removed from the
    /// bridge, and frees its queued frames. Its event loop calls this once it has detached
    /// the port's link: a frame read between [`Self::remove_port`]'s flush and the detach
    /// may have been learned for the port in that window (the port's removed mark is checked
    /// before learning, but the check and the learning are not one step). After this no entry
    /// of the port can appear again, since nothing reads its link any more.
    pub fn forget_removed(&self, port: &Port) {
        if let Some(ne) = self.topology().network(port.network) {
            ne.net.fdb.flush_port(port.id);
        }
        while port.tx.pop().is_some() {}
    }

    /// Ages out stale FDB entries in every network. Returns how many were removed.
    pub fn sweep(&self) -> usize {
        let now = self.now();
        self.topology()
            .nets
            .values()
            .map(|n| n.net.fdb.sweep(now))
            .sum()
    }

    /// Makes the forwarding decision for one frame received on `ingress` and pushes it into the
    /// egress rings. `on_enqueue` is called for each port that got a frame (so the caller can
    /// schedule a flush). Never panics, whatever the frame holds.
    pub fn forward(
        &self,
        topo: &Topology,
        ingress: &Port,
        mut frame: Frame,
        now: u64,
        on_enqueue: &mut dyn FnMut(&Arc<Port>),
    ) {
        let c = &ingress.counters;
        c.rx_frames.fetch_add(1, Ordering::Relaxed);
        c.rx_bytes.fetch_add(frame.len() as u64, Ordering::Relaxed);
        if ingress.removed.load(Ordering::Acquire) {
            // Read from its link after the port was removed, before its loop detached it.
            c.drop_n(DropReason::NoDestination, 1);
            return;
        }
        frame.meta.ingress = ingress.id.0;
        match self.decide(topo, ingress, &frame, now) {
            Err(reason) => {
                c.drop_n(reason, 1);
                if reason >= DropReason::SpoofedSource
                    && security::NetGuard::should_warn(&ingress.owned, now)
                {
                    tracing::warn!(
                        port = %ingress.name,
                        reason = reason.name(),
                        src = ?L2Header::parse(frame.data()).ok().map(|h| h.src),
                        "port security dropped a frame (further drops of this port counted, logged once a minute)"
                    );
                }
            }
            Ok(Target::One(p)) => {
                c.forwarded.fetch_add(1, Ordering::Relaxed);
                enqueue(&self.pool, p, frame, on_enqueue);
            }
            Ok(Target::Flood(ne, broadcast)) => {
                let mut targets = ne.ports.iter().filter(|p| {
                    p.id != ingress.id
                        && (broadcast || p.policy.flood)
                        && !(ingress.policy.isolated && p.policy.isolated)
                });
                let Some(mut cur) = targets.next() else {
                    c.drop_n(DropReason::NoDestination, 1);
                    return;
                };
                c.forwarded.fetch_add(1, Ordering::Relaxed);
                for next in targets {
                    match frame.clone_in(&self.pool) {
                        Some(copy) => enqueue(&self.pool, cur, copy, on_enqueue),
                        None => cur.counters.drop_n(DropReason::LinkError, 1),
                    }
                    cur = next;
                }
                enqueue(&self.pool, cur, frame, on_enqueue);
            }
        }
    }

    fn decide<'t>(
        &self,
        topo: &'t Topology,
        ingress: &Port,
        frame: &Frame,
        now: u64,
    ) -> Result<Target<'t>, DropReason> {
        let h = L2Header::parse(frame.data()).map_err(|_| DropReason::Runt)?;
        if !h.src.is_valid_source() {
            return Err(DropReason::InvalidSource);
        }
        if h.dst.is_link_local_reserved() {
            return Err(DropReason::Reserved);
        }
        let pol = &ingress.policy;
        if !pol.allowed_macs.is_empty() && !pol.allowed_macs.contains(&h.src) {
            return Err(DropReason::Policy);
        }
        let ne = topo
            .nets
            .get(&ingress.network)
            .ok_or(DropReason::NoDestination)?;
        ne.net.guard.check(
            ingress.id,
            &ingress.owned,
            pol.port_security,
            &h,
            frame.data(),
        )?;
        if pol.learning {
            ne.net.fdb.learn(h.vlan, h.src, ingress.id, now);
        }
        if h.dst.is_multicast() {
            return Ok(Target::Flood(ne, h.dst.is_broadcast()));
        }
        if let Some(pid) = ne.net.fdb.lookup(h.vlan, h.dst, now) {
            if pid == ingress.id {
                return Err(DropReason::Hairpin);
            }
            // A stale entry (port just removed) or one from another network falls back to
            // flooding within the ingress network.
            if let Some(p) = topo
                .ports
                .get(&pid)
                .filter(|p| p.network == ingress.network)
            {
                if pol.isolated && p.policy.isolated {
                    return Err(DropReason::Policy);
                }
                return Ok(Target::One(p));
            }
        }
        Ok(Target::Flood(ne, false))
    }
}

enum Target<'t> {
    One(&'t Arc<Port>),
    Flood(&'t NetEntry, bool),
}

fn enqueue(
    pool: &FramePool,
    p: &Arc<Port>,
    mut frame: Frame,
    on_enqueue: &mut dyn FnMut(&Arc<Port>),
) {
    // A port past its share of the shared GSO buffers is full for GSO frames.
    if !frame.charge_to(pool, &p.gso_held) {
        p.counters.drop_n(DropReason::RingFull, 1);
        return;
    }
    match p.tx.push(frame) {
        Ok(()) => on_enqueue(p),
        Err(_dropped) => p.counters.drop_n(DropReason::RingFull, 1),
    }
}

#[cfg(test)]
mod tests;
