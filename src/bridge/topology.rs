//! What the bridge is made of: ports (with their forwarding policy, rings and counters),
//! networks, and the [`Topology`] snapshot the loops read (swapped whole on every change).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use crossbeam_queue::ArrayQueue;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::{Fdb, PortCounters, RateLimit, Trunk, TrunkSpec, security};
use crate::frame::Frame;
use crate::wire::Mac;

/// Identifies a port for the life of the process (never reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortId(pub u32);

/// Identifies a network for the life of the process (never reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NetworkId(pub u32);

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
    /// Make the port an 802.1Q trunk carrying these networks (see the module docs); `None`:
    /// an access port of the network it is added to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trunk: Option<TrunkSpec>,
    /// The rate limits the port starts with ([`super::limit`]); `None`: unlimited. Changed at run
    /// time with [`crate::engine::Datapath::set_rate_limit`]; [`Port::rate_limit`] is the
    /// current one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// The port's policy rules ([`crate::policy`]), installed before the port carries a frame.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rules: Option<crate::policy::PolicySpec>,
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
            trunk: None,
            rate_limit: None,
            rules: None,
        }
    }
}

/// The link kind of a gateway's port (its frames are not policy-checked on the bridge).
pub const GATEWAY_KIND: &str = "gateway";

/// Default capacity of a port's TX ring, in frames.
pub const DEFAULT_RING: usize = 1024;

/// The bridge side of a port: identity, policy, counters and its TX ring.
pub struct Port {
    /// Unique id.
    pub id: PortId,
    /// Unique name (also the endpoint's DNS name in later features).
    pub name: String,
    /// The network it belongs to; for a trunk port, its native network or else its lowest
    /// VLAN's (all of them are in [`Self::trunk`]).
    pub network: NetworkId,
    /// The networks of a trunk port; `None` for an access port.
    pub trunk: Option<Box<Trunk>>,
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
    /// The current rate limits (written by the control plane, read for display; the owner
    /// loop keeps its own token buckets).
    pub(crate) rate_limit: Mutex<Option<RateLimit>>,
    /// Set by the owner loop while a frame waits for tokens of the port's tx limit: a full
    /// ring then drops as `rate_limited`, not `ring_full`.
    pub(crate) throttled: AtomicBool,
}

impl Port {
    /// True when the port is in network `net` (its own, or one of a trunk's).
    pub fn carries(&self, net: NetworkId) -> bool {
        self.network == net
            || self
                .trunk
                .as_ref()
                .is_some_and(|t| t.all().any(|v| v.network == net))
    }

    /// The port's current rate limits; `None`: unlimited.
    pub fn rate_limit(&self) -> Option<RateLimit> {
        *self.rate_limit.lock()
    }

    /// Every network the port is in.
    pub fn networks(&self) -> Vec<NetworkId> {
        match &self.trunk {
            None => vec![self.network],
            Some(t) => t.all().map(|v| v.network).collect(),
        }
    }
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
    pub(super) nets: HashMap<NetworkId, NetEntry, ahash::RandomState>,
    pub(super) ports: HashMap<PortId, Arc<Port>, ahash::RandomState>,
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
