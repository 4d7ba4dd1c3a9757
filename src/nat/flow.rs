//! The flow table: every NAT flow of a network, TCP, UDP and ICMP echo, in one table.
//!
//! # Theory of operation
//!
//! A *flow* is one guest conversation NAT carries to the host: a TCP connection (guest-opened,
//! or opened towards a guest by a port forward), a UDP exchange or an ICMP echo sequence. Each
//! has an id ([`FlowId`]): its index in one table shared by all protocols, reused once the flow
//! is gone. A host socket's mio token is its protocol and its flow's id
//! (`token::make(kind, id)`), so readiness finds its flow in O(1).
//!
//! The table holds what every flow has, whatever its protocol:
//! - its key ([`FlowKey`]: the protocol, the guest's side and the destination as the guest
//!   addressed it), in one map from key to id;
//! - its owner ([`GuestKey`]: the guest's bridge port, or [`FORWARD_KEY`] for a forward's
//!   connection), for the per-port accounting, and so a removed port's flows can be found
//!   ([`FlowTable::of_guest`]);
//! - its phase ([`Phase`]): TCP connects in progress and TCP flows not established yet are
//!   counted here, for the SYN backlogs.
//!
//! Every new flow passes one limit check, [`FlowTable::admit`], which counts a refusal as
//! `refused_limit`: the network's flows of every protocol against [`flow_cap`], the opening
//! guest port's flows of every protocol against `max_flows_per_guest`, and for a guest's TCP
//! SYN the network's and the port's SYN backlogs. Existing flows are never touched by a
//! refusal.
//!
//! What a flow needs beyond that (sockets, smoltcp handles, timers, buffers) stays with its
//! protocol (`tcp.rs`, `udp.rs`, `icmp.rs`), in a [`Slots`] indexed by the
//! same id; the protocol inserts into the table when it opens a flow and removes from it when
//! it closes one, so the two never disagree.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use mio::Registry;
use serde::Serialize;

use super::host::{self, HostDatagram};
use super::{NatConfig, NatCounters};

/// Who a flow counts against in the per-guest limits: the guest's bridge port (its `PortId`
/// number), never an address the guest chooses, so a guest that owns several addresses (or
/// spoofs some, where port security is off) has one budget.
pub type GuestKey = u32;

/// The [`GuestKey`] of connections port forwards open towards guests (host-initiated; bound
/// by the network's `max_flows`).
pub const FORWARD_KEY: GuestKey = 0;

/// A flow's id: its index in the [`FlowTable`], shared by all protocols.
pub type FlowId = usize;

/// The most flows a network's NAT may hold now: its `max_flows`, and its share of the
/// process's descriptor budget ([`host::fd_share`]), whichever is lower.
pub fn flow_cap(cfg: &NatConfig) -> usize {
    cfg.max_flows.min(host::fd_share())
}

/// Current flow counts, for limits and display.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct FlowCounts {
    /// Open TCP connections (pending connects included).
    pub tcp: usize,
    /// Open UDP flows.
    pub udp: usize,
    /// Open ICMP echo flows.
    pub icmp: usize,
}

impl FlowCounts {
    /// Flows of every protocol.
    pub fn total(&self) -> usize {
        self.tcp + self.udp + self.icmp
    }
}

/// What identifies a flow: its protocol, the guest's side, and the destination as the guest
/// addressed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlowKey {
    /// A TCP connection: (guest address:port, remote address:port).
    Tcp(SocketAddr, SocketAddr),
    /// A UDP flow: (guest address:port, destination address:port).
    Udp(SocketAddr, SocketAddr),
    /// An ICMP echo flow: (guest address, guest echo id, destination).
    Icmp(IpAddr, u16, IpAddr),
}

/// Where a flow is in its life, for the SYN backlogs. UDP and ICMP flows are always
/// [`Phase::Established`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// TCP: the host connect is in progress (counts in `syn_backlog` and
    /// `syn_backlog_per_guest`).
    Connecting,
    /// TCP: not established yet (the guest's handshake, or a forward's connection to a guest,
    /// has not finished; counts in `syn_backlog_per_guest`).
    HalfOpen,
    /// Open.
    Established,
}

/// Who opens a new flow, which decides the limits it is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opener {
    /// A guest's datagram or echo request (UDP, ICMP): the network's and the port's limits.
    Guest(GuestKey),
    /// A guest's TCP SYN: also the network's and the port's SYN backlogs.
    GuestSyn(GuestKey),
    /// A port forward's accepted connection (host-initiated): the network's limit only.
    Forward,
}

#[derive(Debug)]
struct Entry {
    key: FlowKey,
    owner: GuestKey,
    phase: Phase,
}

/// Every NAT flow of one network. See the module docs.
pub struct FlowTable {
    cfg: Arc<NatConfig>,
    counters: Arc<NatCounters>,
    entries: Vec<Option<Entry>>,
    free: Vec<FlowId>,
    by_key: HashMap<FlowKey, FlowId>,
    /// Flows of each guest port, all protocols.
    per_guest: HashMap<GuestKey, usize>,
    counts: FlowCounts,
    /// TCP host connects in progress.
    connecting: usize,
    /// Each guest port's TCP flows not established yet (connecting or half-open).
    unestablished: HashMap<GuestKey, usize>,
}

/// `map[k] += 1`.
fn up(map: &mut HashMap<GuestKey, usize>, k: GuestKey) {
    *map.entry(k).or_insert(0) += 1;
}

/// `map[k] -= 1`, forgetting `k` at zero.
fn down(map: &mut HashMap<GuestKey, usize>, k: GuestKey) {
    if let Some(n) = map.get_mut(&k) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(&k);
        }
    }
}

impl FlowTable {
    /// An empty table with `cfg`'s limits, counting refusals into `counters`.
    pub fn new(cfg: Arc<NatConfig>, counters: Arc<NatCounters>) -> Self {
        FlowTable {
            cfg,
            counters,
            entries: Vec::new(),
            free: Vec::new(),
            by_key: HashMap::new(),
            per_guest: HashMap::new(),
            counts: FlowCounts::default(),
            connecting: 0,
            unestablished: HashMap::new(),
        }
    }

    /// The limit check of every new flow: true when `who` may open one more. A refusal is
    /// counted (`refused_limit`).
    pub fn admit(&self, who: Opener) -> bool {
        let cfg = &self.cfg;
        let over = self.counts.total() >= flow_cap(cfg)
            || match who {
                Opener::Forward => false,
                Opener::Guest(g) => self.flows_of(g) >= cfg.max_flows_per_guest,
                Opener::GuestSyn(g) => {
                    self.flows_of(g) >= cfg.max_flows_per_guest
                        || self.connecting >= cfg.syn_backlog
                        || self.unestablished.get(&g).copied().unwrap_or(0)
                            >= cfg.syn_backlog_per_guest
                }
            };
        if over {
            NatCounters::inc(&self.counters.refused_limit);
        }
        !over
    }

    /// Adds a flow (which [`Self::admit`] let in) and returns its id.
    pub fn insert(&mut self, key: FlowKey, owner: GuestKey, phase: Phase) -> FlowId {
        up(&mut self.per_guest, owner);
        self.account(key, owner, phase, 1);
        let e = Entry { key, owner, phase };
        let id = match self.free.pop() {
            Some(i) => {
                self.entries[i] = Some(e);
                i
            }
            None => {
                self.entries.push(Some(e));
                self.entries.len() - 1
            }
        };
        self.by_key.insert(key, id);
        id
    }

    /// Removes flow `id`; its key and owner, or `None` if there is no such flow.
    pub fn remove(&mut self, id: FlowId) -> Option<(FlowKey, GuestKey)> {
        let e = self.entries.get_mut(id).and_then(Option::take)?;
        self.by_key.remove(&e.key);
        down(&mut self.per_guest, e.owner);
        self.account(e.key, e.owner, e.phase, -1);
        self.free.push(id);
        // Give memory back when the table shrank to nothing.
        if self.by_key.is_empty() {
            self.entries.clear();
            self.free.clear();
        }
        Some((e.key, e.owner))
    }

    /// Moves flow `id` on to `phase` (a TCP connect finished, a handshake completed).
    pub fn advance(&mut self, id: FlowId, phase: Phase) {
        let Some(Some(e)) = self.entries.get(id) else {
            return;
        };
        let (key, owner, was) = (e.key, e.owner, e.phase);
        if was == phase {
            return;
        }
        self.account(key, owner, was, -1);
        self.account(key, owner, phase, 1);
        if let Some(Some(e)) = self.entries.get_mut(id) {
            e.phase = phase;
        }
    }

    /// Adds (`d` = 1) or takes away (-1) a flow's share of the protocol and phase counts.
    fn account(&mut self, key: FlowKey, owner: GuestKey, phase: Phase, d: isize) {
        let n = match key {
            FlowKey::Tcp(..) => &mut self.counts.tcp,
            FlowKey::Udp(..) => &mut self.counts.udp,
            FlowKey::Icmp(..) => &mut self.counts.icmp,
        };
        *n = n.saturating_add_signed(d);
        self.counters.set_open_flows(self.counts);
        if phase == Phase::Connecting {
            self.connecting = self.connecting.saturating_add_signed(d);
        }
        if phase != Phase::Established {
            if d > 0 {
                up(&mut self.unestablished, owner);
            } else {
                down(&mut self.unestablished, owner);
            }
        }
    }

    /// The id of the flow with `key`.
    pub fn get(&self, key: &FlowKey) -> Option<FlowId> {
        self.by_key.get(key).copied()
    }

    /// The owner of the flow with `key`, if one is open.
    pub fn owner(&self, key: &FlowKey) -> Option<GuestKey> {
        let id = self.by_key.get(key)?;
        self.entries.get(*id)?.as_ref().map(|e| e.owner)
    }

    /// True if a flow with `key` is open.
    pub fn contains(&self, key: &FlowKey) -> bool {
        self.by_key.contains_key(key)
    }

    /// Open flows per protocol.
    pub fn counts(&self) -> FlowCounts {
        self.counts
    }

    /// Open flows of guest port `owner`, all protocols.
    pub fn flows_of(&self, owner: GuestKey) -> usize {
        self.per_guest.get(&owner).copied().unwrap_or(0)
    }

    /// The flows of guest port `owner`: TCP first, then UDP, then ICMP, each by id.
    pub fn of_guest(&self, owner: GuestKey) -> Vec<(FlowId, FlowKey)> {
        if self.flows_of(owner) == 0 {
            return Vec::new();
        }
        let mut v: Vec<(FlowId, FlowKey)> = self
            .entries
            .iter()
            .enumerate()
            .filter_map(|(i, e)| e.as_ref().filter(|e| e.owner == owner).map(|e| (i, e.key)))
            .collect();
        v.sort_by_key(|&(i, k)| {
            let kind = match k {
                FlowKey::Tcp(..) => 0,
                FlowKey::Udp(..) => 1,
                FlowKey::Icmp(..) => 2,
            };
            (kind, i)
        });
        v
    }
}

/// A protocol's per-flow state, indexed by [`FlowId`] (sparse: the ids are shared with the
/// other protocols).
#[derive(Debug)]
pub struct Slots<T> {
    v: Vec<Option<T>>,
    n: usize,
}

impl<T> Default for Slots<T> {
    fn default() -> Self {
        Slots {
            v: Vec::new(),
            n: 0,
        }
    }
}

impl<T> Slots<T> {
    /// Stores `t` as flow `id`'s state (replacing any).
    pub fn put(&mut self, id: FlowId, t: T) {
        if self.v.len() <= id {
            self.v.resize_with(id + 1, || None);
        }
        if self.v[id].replace(t).is_none() {
            self.n += 1;
        }
    }

    /// Flow `id`'s state.
    pub fn get(&self, id: FlowId) -> Option<&T> {
        self.v.get(id)?.as_ref()
    }

    /// Flow `id`'s state, to change.
    pub fn get_mut(&mut self, id: FlowId) -> Option<&mut T> {
        self.v.get_mut(id)?.as_mut()
    }

    /// Takes flow `id`'s state out; memory goes back when the last one is taken.
    pub fn take(&mut self, id: FlowId) -> Option<T> {
        let t = self.v.get_mut(id)?.take()?;
        self.n -= 1;
        if self.n == 0 {
            self.v.clear();
        }
        Some(t)
    }

    /// One past the highest id that may hold state (for index loops).
    pub fn end(&self) -> FlowId {
        self.v.len()
    }

    /// The ids whose state `pick` picks, in order.
    pub fn ids_where(&self, pick: impl Fn(&T) -> bool) -> Vec<FlowId> {
        self.v
            .iter()
            .enumerate()
            .filter(|(_, t)| t.as_ref().is_some_and(&pick))
            .map(|(i, _)| i)
            .collect()
    }
}

/// A flow whose host side is one datagram socket (UDP, ICMP echo).
pub trait DatagramFlow {
    /// Its host socket.
    fn sock(&mut self) -> &mut dyn HostDatagram;
    /// When a datagram last went either way.
    fn last_used(&self) -> Instant;
}

/// Closes datagram flow `id` of `proto` ("UDP", "ICMP"): deregisters and drops its socket and
/// frees its id. False if there is no such flow.
pub fn close_datagram<T: DatagramFlow>(
    slots: &mut Slots<T>,
    flows: &mut FlowTable,
    reg: &Registry,
    id: FlowId,
    proto: &str,
) -> bool {
    let Some(mut f) = slots.take(id) else {
        return false;
    };
    if let Err(e) = reg.deregister(f.sock()) {
        tracing::debug!(error = %e, "{proto} NAT: deregister failed");
    }
    flows.remove(id);
    true
}

/// Closes the datagram flows idle for longer than `idle` at `now`. Returns how many.
pub fn expire_datagrams<T: DatagramFlow>(
    slots: &mut Slots<T>,
    flows: &mut FlowTable,
    reg: &Registry,
    now: Instant,
    idle: std::time::Duration,
    proto: &str,
) -> usize {
    let doomed = slots.ids_where(|f| now.saturating_duration_since(f.last_used()) > idle);
    for &id in &doomed {
        close_datagram(slots, flows, reg, id, proto);
    }
    doomed.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn table(max_flows: usize, per_guest: usize) -> FlowTable {
        let cfg = NatConfig {
            max_flows,
            max_flows_per_guest: per_guest,
            syn_backlog: 2,
            syn_backlog_per_guest: 1,
            ..NatConfig::new(Ipv4Addr::new(10, 88, 0, 1), None)
        };
        FlowTable::new(Arc::new(cfg), Arc::new(NatCounters::default()))
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }

    #[test]
    fn one_budget_across_protocols() {
        let mut t = table(3, 2);
        let g = IpAddr::V4(Ipv4Addr::new(10, 88, 0, 9));
        assert!(t.admit(Opener::Guest(1)));
        let u = t.insert(
            FlowKey::Udp(sa("10.88.0.9:1"), sa("1.2.3.4:53")),
            1,
            Phase::Established,
        );
        let i = t.insert(FlowKey::Icmp(g, 7, g), 1, Phase::Established);
        assert_ne!(u, i, "one id space");
        assert!(!t.admit(Opener::Guest(1)), "port 1 has its 2 flows");
        assert!(!t.admit(Opener::GuestSyn(1)));
        assert!(t.admit(Opener::Guest(2)));
        t.insert(
            FlowKey::Tcp(sa("10.88.0.10:1"), sa("1.2.3.4:80")),
            2,
            Phase::Established,
        );
        assert!(!t.admit(Opener::Forward), "the network has its 3 flows");
        assert_eq!(
            t.counts,
            FlowCounts {
                tcp: 1,
                udp: 1,
                icmp: 1
            }
        );
        assert_eq!(t.counters.refused_limit.load(Ordering::Relaxed), 3);
        assert_eq!(
            t.counters.open_flows(),
            t.counts,
            "the gauges mirror the table"
        );
        assert_eq!(t.remove(u).map(|(_, o)| o), Some(1));
        assert!(t.remove(u).is_none());
        assert_eq!((t.flows_of(1), t.counts.total()), (1, 2));
        assert_eq!(t.counters.open_flows().udp, 0);
        assert!(t.admit(Opener::Forward));
    }

    #[test]
    fn syn_backlogs_follow_the_phase() {
        let mut t = table(100, 100);
        let a = t.insert(
            FlowKey::Tcp(sa("10.88.0.9:1"), sa("1.2.3.4:80")),
            1,
            Phase::Connecting,
        );
        assert!(!t.admit(Opener::GuestSyn(1)), "port 1's backlog is 1");
        assert!(t.admit(Opener::Guest(1)), "datagrams are not bound by it");
        assert!(t.admit(Opener::GuestSyn(2)));
        let b = t.insert(
            FlowKey::Tcp(sa("10.88.0.10:1"), sa("1.2.3.4:80")),
            2,
            Phase::Connecting,
        );
        assert!(!t.admit(Opener::GuestSyn(3)), "the network's backlog is 2");
        t.advance(a, Phase::HalfOpen);
        assert!(t.admit(Opener::GuestSyn(3)));
        assert!(
            !t.admit(Opener::GuestSyn(1)),
            "half-open still counts for its port"
        );
        t.advance(a, Phase::Established);
        assert!(t.admit(Opener::GuestSyn(1)));
        t.remove(b);
        assert_eq!((t.connecting, t.unestablished.len()), (0, 0));
        assert_eq!(t.of_guest(1).len(), 1);
        assert!(t.of_guest(2).is_empty());
    }

    #[test]
    fn slots_give_memory_back() {
        let mut s = Slots::default();
        s.put(3, "c");
        s.put(1, "a");
        assert_eq!((s.get(3), s.end()), (Some(&"c"), 4));
        assert_eq!(s.ids_where(|_| true), vec![1, 3]);
        assert_eq!(s.take(3), Some("c"));
        assert_eq!(s.take(3), None);
        assert_eq!(s.take(1), Some("a"));
        assert_eq!(s.end(), 0);
    }

    use std::sync::atomic::Ordering;
}
