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
//! ## VLAN trunks
//!
//! A port is an *access* port of one network (the usual case), or an 802.1Q *trunk* carrying
//! several networks, one VLAN id each, and optionally a *native* network for untagged frames
//! ([`TrunkSpec`], resolved into the port's [`Trunk`]). A trunk port is in the port list of
//! every network it carries, so floods in network X reach it, and unicast to it is allowed
//! from X; the FDB and port security stay per network (a trunk has one owned-address set per
//! network). A frame from a trunk port is classified by its outer 802.1Q tag into that VLAN's
//! network, and the tag is popped in place; an untagged (or priority-tagged) one goes to the
//! native network. A frame tagged with a VLAN id the trunk does not map, or untagged without a
//! native network, is dropped (`unmapped_vlan`). A frame leaving on a trunk port for network X
//! gets X's tag pushed in place (in the frame's headroom); for the native network it leaves
//! untagged, unless it carries an 802.1Q tag of its own: then the peer would read it as that
//! VLAN (VLAN hopping), so it is dropped (`native_tagged`). Access ports never look at tags: a tagged frame (802.1Q or 802.1ad, Q-in-Q)
//! is forwarded untouched within the port's network, so a tag can never move a frame into
//! another network. Access ports pay one branch for all this.
//!
//! ## Port security
//!
//! Before a source MAC is learned, [`security::NetGuard::check`] makes sure the port owns it
//! and the frame's other source addresses (ARP, NDP, IP), and drops router advertisements and
//! DHCP server messages from guests: see [`security`]. Every forwarded frame carries its
//! ingress port in [`crate::frame::FrameMeta::ingress`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use arc_swap::{ArcSwap, Guard};
use crossbeam_queue::ArrayQueue;
use parking_lot::Mutex;

pub mod clock;
pub mod fdb;
pub mod limit;
pub mod security;

mod counters;
mod topology;
mod trunk;

pub use clock::{Clock, ManualClock, MonotonicClock};
pub use counters::{DropReason, PortCounters, PortStats};
pub use fdb::{Fdb, FdbConfig, FdbEntry, Learned};
pub use limit::{Limiter, RateLimit};
pub use topology::{
    DEFAULT_RING, GATEWAY_KIND, NetEntry, Network, NetworkId, Port, PortId, PortPolicy, Topology,
};
use trunk::resolve_trunk;
pub use trunk::{Trunk, TrunkSpec, TrunkVlan};

use crate::frame::{Frame, FramePool};
use crate::wire::L2Header;

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
    /// A trunk map that cannot be used: the field and the reason.
    #[error("{0}: {1}")]
    BadTrunk(String, String),
    /// A port's policy rules that cannot be used: the field and the reason.
    #[error("invalid {0}: {1}")]
    BadPolicy(String, String),
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
    policy: Arc<crate::policy::Table>,
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
            policy: Arc::default(),
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

    /// The policy rules of networks and ports ([`crate::policy`]), read by the decision
    /// below and by the gateways' NAT.
    pub fn policy(&self) -> &Arc<crate::policy::Table> {
        &self.policy
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
        let removed = self.update(|t| {
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
                // A trunk goes with any network it carries: out of the others too.
                detach_from_networks(t, p);
            }
            Ok((ne.net.id, ne.ports))
        })?;
        self.policy
            .remove(crate::policy::Scope::Network(removed.0.0));
        for p in &removed.1 {
            self.policy.remove(crate::policy::Scope::Port(p.id.0));
        }
        Ok(removed.1)
    }

    /// Adds a port to `network`; a port whose policy has a `trunk` joins the networks of its
    /// trunk instead (`network` is not used).
    pub fn add_port(&self, network: &str, spec: NewPort) -> Result<Arc<Port>, BridgeError> {
        validate_name(&spec.name)?;
        if let Some(r) = &spec.policy.rules {
            crate::policy::Compiled::new(r, "port.policy").map_err(policy_error)?;
        }
        self.update(|t| {
            if t.port_by_name(&spec.name).is_some() {
                return Err(BridgeError::PortExists(spec.name.clone()));
            }
            let id = PortId(self.next_id.fetch_add(1, Ordering::Relaxed));
            let (net_id, trunk) = match &spec.policy.trunk {
                None => (
                    t.network_by_name(network)
                        .map(|n| n.net.id)
                        .ok_or_else(|| BridgeError::NoSuchNetwork(network.to_string()))?,
                    None,
                ),
                Some(ts) => {
                    let tr = resolve_trunk(t, &spec.name, ts)?;
                    let home = tr.native.as_ref().or(tr.vlans.first());
                    let home = home.map(|v| v.network).ok_or_else(|| {
                        BridgeError::BadTrunk(format!("port {:?}.trunk", spec.name), "empty".into())
                    })?;
                    (home, Some(Box::new(tr)))
                }
            };
            let owned = match &trunk {
                None => Arc::new(security::PortOwned::default()),
                Some(tr) => tr
                    .all()
                    .find(|v| v.network == net_id)
                    .map(|v| v.owned.clone())
                    .unwrap_or_default(),
            };
            // Register in every network's guard; undo on failure.
            let regs: Vec<(NetworkId, Arc<security::PortOwned>)> = match &trunk {
                None => vec![(net_id, owned.clone())],
                Some(tr) => tr.all().map(|v| (v.network, v.owned.clone())).collect(),
            };
            for (i, (net, o)) in regs.iter().enumerate() {
                let Some(ne) = t.nets.get(net) else { continue };
                if let Err(e) = ne.net.guard.register(
                    id,
                    o.clone(),
                    spec.policy.port_security,
                    &spec.policy.allowed_macs,
                    &spec.policy.allowed_ips,
                ) {
                    for (done, _) in &regs[..i] {
                        if let Some(ne) = t.nets.get(done) {
                            ne.net.guard.unregister(id);
                        }
                    }
                    return Err(BridgeError::AddressInUse(spec.name.clone(), e.to_string()));
                }
            }
            let port = Arc::new(Port {
                id,
                name: spec.name.clone(),
                network: net_id,
                trunk,
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
                rate_limit: Mutex::new(spec.policy.rate_limit.and_then(RateLimit::normalized)),
                throttled: AtomicBool::new(false),
            });
            if let Some(r) = &spec.policy.rules {
                let scope = crate::policy::Scope::Port(id.0);
                if let Err(e) = self.policy.set(scope, r, "port.policy") {
                    for (net, _) in &regs {
                        if let Some(ne) = t.nets.get(net) {
                            ne.net.guard.unregister(id);
                        }
                    }
                    return Err(policy_error(e));
                }
            }
            for (net, _) in &regs {
                if let Some(ne) = t.nets.get_mut(net) {
                    ne.ports.push(port.clone());
                }
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
                detach_from_networks(t, &p);
                Ok(p)
            })
            .ok()?;
        self.policy.remove(crate::policy::Scope::Port(id.0));
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
        let topo = self.topology();
        for net in port.networks() {
            if let Some(ne) = topo.network(net) {
                ne.net.fdb.flush_port(port.id);
            }
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
        // The network the frame is in: the port's, or the one of its VLAN on a trunk.
        let (net, owned) = match &ingress.trunk {
            None => (ingress.network, &*ingress.owned),
            Some(t) => match t.classify(&mut frame) {
                Ok(v) => (v.network, &*v.owned),
                Err(reason) => {
                    c.drop_n(reason, 1);
                    return;
                }
            },
        };
        match self.decide(topo, ingress, net, owned, &frame, now) {
            Err(reason) => {
                c.drop_n(reason, 1);
                if reason.is_security() && security::NetGuard::should_warn(owned, now) {
                    tracing::warn!(
                        port = %ingress.name,
                        reason = reason.name(),
                        src = ?L2Header::parse(frame.data()).ok().map(|h| h.src),
                        "port security dropped a frame (further drops of this port counted, logged once a minute)"
                    );
                }
            }
            Ok(Target::One(p)) => {
                if !self.policy_allows(ingress, p, net, &frame) {
                    c.drop_n(DropReason::PolicyDenied, 1);
                    return;
                }
                c.forwarded.fetch_add(1, Ordering::Relaxed);
                enqueue(&self.pool, p, net, frame, on_enqueue);
            }
            Ok(Target::Flood(ne, broadcast)) => {
                let mut denied = false;
                let mut targets = ne.ports.iter().filter(|p| {
                    p.id != ingress.id
                        && (broadcast || p.policy.flood)
                        && !(ingress.policy.isolated && p.policy.isolated)
                        && (self.policy_allows(ingress, p, net, &frame) || {
                            denied = true;
                            false
                        })
                });
                let Some(mut cur) = targets.next() else {
                    drop(targets);
                    let reason = if denied {
                        DropReason::PolicyDenied
                    } else {
                        DropReason::NoDestination
                    };
                    c.drop_n(reason, 1);
                    return;
                };
                c.forwarded.fetch_add(1, Ordering::Relaxed);
                for next in targets {
                    match frame.clone_in(&self.pool) {
                        Some(copy) => enqueue(&self.pool, cur, net, copy, on_enqueue),
                        None => cur.counters.drop_n(DropReason::LinkError, 1),
                    }
                    cur = next;
                }
                enqueue(&self.pool, cur, net, frame, on_enqueue);
            }
        }
    }

    /// The policy check of a frame between two guest ports ([`crate::policy`]): one flag
    /// when no policy exists; frames from or to a gateway and non-IP frames always pass.
    fn policy_allows(&self, from: &Port, to: &Port, net: NetworkId, frame: &Frame) -> bool {
        if !self.policy.active() || from.kind == GATEWAY_KIND || to.kind == GATEWAY_KIND {
            return true;
        }
        let Some(pkt) = crate::policy::Packet::from_frame(frame.data()) else {
            return true;
        };
        let way = crate::policy::Way::Between {
            from: from.id.0,
            to: to.id.0,
        };
        let snap = self.policy.load();
        snap.check(net.0, way, &pkt, frame.len() as u64).is_ok()
    }

    fn decide<'t>(
        &self,
        topo: &'t Topology,
        ingress: &Port,
        net: NetworkId,
        owned: &security::PortOwned,
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
        let ne = topo.nets.get(&net).ok_or(DropReason::NoDestination)?;
        ne.net
            .guard
            .check(ingress.id, owned, pol.port_security, &h, frame.data())?;
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
            if let Some(p) = topo.ports.get(&pid).filter(|p| p.carries(net)) {
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

/// A policy error as a bridge error (its field and reason kept).
fn policy_error(e: crate::policy::Invalid) -> BridgeError {
    BridgeError::BadPolicy(e.field, e.reason)
}

/// Takes `port` out of every network it is in (port lists, FDBs, guards).
fn detach_from_networks(t: &mut Topology, port: &Port) {
    for net in port.networks() {
        if let Some(ne) = t.nets.get_mut(&net) {
            ne.ports.retain(|q| q.id != port.id);
            ne.net.fdb.flush_port(port.id);
            ne.net.guard.unregister(port.id);
        }
    }
}

fn enqueue(
    pool: &FramePool,
    p: &Arc<Port>,
    net: NetworkId,
    mut frame: Frame,
    on_enqueue: &mut dyn FnMut(&Arc<Port>),
) {
    // A trunk tags the frame with its network's VLAN (in place).
    if let Some(t) = &p.trunk
        && let Err(reason) = t.tag(net, &mut frame)
    {
        p.counters.drop_n(reason, 1);
        return;
    }
    // A port past its share of the shared GSO buffers is full for GSO frames.
    if !frame.charge_to(pool, &p.gso_held) {
        p.counters.drop_n(full_reason(p), 1);
        return;
    }
    match p.tx.push(frame) {
        Ok(()) => on_enqueue(p),
        Err(_dropped) => p.counters.drop_n(full_reason(p), 1),
    }
}

/// Why a frame found `p`'s ring full: its tx rate limit holds the ring back, or the link is
/// slow.
fn full_reason(p: &Port) -> DropReason {
    if p.throttled.load(Ordering::Relaxed) {
        DropReason::RateLimited
    } else {
        DropReason::RingFull
    }
}

#[cfg(test)]
mod tests;
