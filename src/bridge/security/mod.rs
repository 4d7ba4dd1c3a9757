//! Port security: every MAC and IP address a guest may use as a source is owned by its port.
//!
//! # Theory of operation
//!
//! A guest is root in its own namespace and can send any frame. Without checks, one guest can
//! take another's MAC (the FDB moves it, and the victim's traffic with it), answer ARP for
//! another's address (the gateway's neighbour table and DNS names move), pose as the gateway,
//! send router advertisements or DHCP offers to the others, or open NAT flows from sources it
//! invents. OVS/OpenStack "port security" and a hardened Linux bridge (ebtables/nftables
//! anti-spoofing, RA guard, DHCP snooping) stop this; so does this module, in the bridge's
//! forwarding decision, before any learning:
//!
//! - **MACs.** A port owns its configured `allowed_macs` (exactly those, when set), else the
//!   first source MACs it uses, up to [`MAX_MACS`]. A frame whose Ethernet source, ARP sender
//!   hardware address or NDP link-layer option is not the port's is dropped
//!   (`spoofed_source`, `spoofed_arp`, `spoofed_nd`; `address_limit` past the cap). A MAC owned
//!   by one port is never accepted from another, whether or not that other port is checked: the
//!   FDB can no longer be moved by a claim. The gateway's MAC is owned by the gateway's port.
//! - **IP addresses.** A port owns its configured `allowed_ips`, the addresses its DHCP leases
//!   bind (the gateway claims them, [`NetGuard::claim_ip`]), and addresses it uses first within
//!   the network's subnet or IPv6 prefix or link-local range ([`Scope`]), at most
//!   [`MAX_SEEN_V4`] / [`MAX_SEEN_V6`] of those (past the cap the port's oldest first-seen
//!   address of that family is released: it only ever costs the port itself). An address
//!   owned by another port, the gateway's addresses, out-of-scope, multicast, loopback or
//!   broadcast sources are dropped (`spoofed_ip`). `0.0.0.0` is allowed only for DHCP
//!   (UDP 68 → 67) and ARP probes, `::` only for DAD, router solicitations and MLD reports.
//! - **Servers.** Router advertisements and redirects, DHCPv4 server messages (UDP from port
//!   67) and DHCPv6 server messages (from port 547) from a checked port are dropped
//!   (`rogue_server`): RA guard and DHCP guard. Extension headers are walked (etherparse), so
//!   an RA cannot hide behind them; an IPv6 first fragment whose upper-layer header is not in
//!   it is dropped as the RA-guard RFC 7113 asks.
//!
//! Ports are checked when [`crate::bridge::PortPolicy::port_security`] says so, or, when it is
//! unset, when their network's default does ([`NetGuard::set_enabled`]: on for networks with a
//! gateway). An unchecked port (a router VM) may use any source except MACs and addresses other
//! ports own.
//!
//! ## Cost and concurrency
//!
//! The per-frame check reads the port's [`Owned`] set through an `ArcSwap` (no lock) and
//! compares a few addresses at fixed offsets; only a source the port does not own yet takes the
//! network's table lock ([`NetGuard`]), to claim it or to refuse it. Claims and releases build a
//! new `Owned` and swap it in, as the topology does.
//!
//! ## Invariants
//!
//! - A MAC or IP address has at most one owner port; an owned one changes owner only when its
//!   owner is removed (then all its claims go at once) or releases it.
//! - A checked port forwards no frame with a source (MAC, ARP sender, NDP target/lladdr, IP)
//!   it does not own.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arc_swap::ArcSwap;
use ipnet::{Ipv4Net, Ipv6Net};
use parking_lot::Mutex;

use super::PortId;
use crate::wire::Mac;

mod check;
mod pin;

/// Most MACs a port without `allowed_macs` may own (first seen).
pub const MAX_MACS: usize = 4;
/// Most IPv4 addresses a port owns by first use (leases and configured ones not counted).
pub const MAX_SEEN_V4: usize = 4;
/// Most IPv6 addresses a port owns by first use: link-local, SLAAC and a few temporary ones.
pub const MAX_SEEN_V6: usize = 16;

/// How a port came to own an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Claim {
    /// Configured (`allowed_macs`, `allowed_ips`, the gateway's own).
    Config,
    /// Bound by a DHCP lease.
    Lease,
    /// Used first by the port.
    Seen,
}

/// The addresses one port owns, read on every frame it sends.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Owned {
    /// Source MACs.
    pub macs: Vec<Mac>,
    /// Source IP addresses.
    pub ips: Vec<IpAddr>,
}

/// Owned MACs and IPv4 addresses mirrored into plain atomics, so the common check is a few
/// relaxed loads (no `ArcSwap` guard); a miss falls back to the full set.
const FAST_SLOTS: usize = 8;
/// Marks a used fast slot (a MAC or IPv4 address never has bit 63 set).
const FAST_USED: u64 = 1 << 63;

fn mac_key(m: Mac) -> u64 {
    let b = m.0;
    FAST_USED | u64::from_be_bytes([0, 0, b[0], b[1], b[2], b[3], b[4], b[5]])
}

fn v4_key(a: Ipv4Addr) -> u64 {
    FAST_USED | u64::from(u32::from(a))
}

/// A port's owned set, shared by the port (readers) and its network's [`NetGuard`] (writer).
#[derive(Debug, Default)]
pub struct PortOwned {
    set: ArcSwap<Owned>,
    fast_macs: [AtomicU64; FAST_SLOTS],
    fast_v4: [AtomicU64; FAST_SLOTS],
    /// When the last drop warning for this port was logged (ms of the bridge clock + 1).
    warned: AtomicU64,
}

impl PortOwned {
    /// A copy of what the port owns.
    pub fn snapshot(&self) -> Owned {
        Owned::clone(&self.set.load())
    }

    /// True if the port owns `m` (fast slots first).
    fn has_mac(&self, m: Mac) -> bool {
        let k = mac_key(m);
        self.fast_macs
            .iter()
            .any(|s| s.load(Ordering::Relaxed) == k)
            || self.set.load().macs.contains(&m)
    }

    /// True if the port owns `ip` (fast slots first for IPv4).
    fn has_ip(&self, ip: IpAddr) -> bool {
        if let IpAddr::V4(a) = ip {
            let k = v4_key(a);
            if self.fast_v4.iter().any(|s| s.load(Ordering::Relaxed) == k) {
                return true;
            }
        }
        self.set.load().ips.contains(&ip)
    }

    fn store(&self, set: Owned) {
        let v4: Vec<u64> = set
            .ips
            .iter()
            .filter_map(|a| match a {
                IpAddr::V4(v) => Some(v4_key(*v)),
                IpAddr::V6(_) => None,
            })
            .collect();
        for (i, slot) in self.fast_macs.iter().enumerate() {
            slot.store(
                set.macs.get(i).map_or(0, |m| mac_key(*m)),
                Ordering::Relaxed,
            );
        }
        for (i, slot) in self.fast_v4.iter().enumerate() {
            slot.store(v4.get(i).copied().unwrap_or(0), Ordering::Relaxed);
        }
        self.set.store(Arc::new(set));
    }
}

/// What a network's addresses look like, for first-seen claims (set by its gateway).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// The IPv4 subnet: first-seen IPv4 sources must be hosts of it.
    pub subnet4: Option<Ipv4Net>,
    /// The IPv6 prefix: first-seen global IPv6 sources must be inside it.
    pub prefix6: Option<Ipv6Net>,
}

/// Why a claim was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClaimError {
    /// Another port owns it.
    #[error("{0} is owned by another port")]
    Taken(String),
    /// Not an address a guest may use as a source here.
    #[error("{0} is not a usable source address on this network")]
    OutOfScope(String),
    /// The port owns as many as it may.
    #[error("port owns its maximum of {0} MACs")]
    Limit(usize),
    /// The port takes only its configured MACs.
    #[error("{0} is not one of the port's allowed_macs")]
    NotAllowed(String),
}

#[derive(Debug)]
struct PortClaims {
    owned: Arc<PortOwned>,
    /// `Some(x)`: the port's own setting; `None`: the network's default.
    secured: Option<bool>,
    /// Only configured MACs (`allowed_macs` was set).
    fixed_macs: bool,
    macs: Vec<(Mac, Claim)>,
    ips: Vec<(IpAddr, Claim)>,
    /// First-seen addresses, oldest first (each also in `ips`).
    seen4: VecDeque<Ipv4Addr>,
    seen6: VecDeque<Ipv6Addr>,
}

impl PortClaims {
    fn publish(&self) {
        self.owned.store(Owned {
            macs: self.macs.iter().map(|(m, _)| *m).collect(),
            ips: self.ips.iter().map(|(a, _)| *a).collect(),
        });
    }
}

#[derive(Debug, Default)]
struct Table {
    macs: HashMap<Mac, PortId>,
    ips: HashMap<IpAddr, PortId>,
    ports: HashMap<PortId, PortClaims>,
    /// Ports removed since the gateway last asked ([`NetGuard::take_removed`]); bounded.
    removed: Vec<PortId>,
}

/// Most removed ports remembered for [`NetGuard::take_removed`] between two calls.
const MAX_REMOVED: usize = 4096;
/// Least time between two drop warnings of one port.
const WARN_EVERY_MS: u64 = 60_000;

/// A network's address ownership table and port-security default. See the module docs.
#[derive(Debug)]
pub struct NetGuard {
    enabled: AtomicBool,
    scope: ArcSwap<Scope>,
    table: Mutex<Table>,
    /// Some port has claims (an unchecked port's frames need no lookup while none has).
    any: AtomicBool,
    /// Bumped whenever an IP address changes owner (claimed, released, evicted, port removed),
    /// so holders of derived state (the gateway's neighbour table and names) check it again.
    generation: AtomicU64,
    /// Woken on every bump (the gateway's), so it checks at once, not at its next event.
    waker: Mutex<Option<Arc<mio::Waker>>>,
}

impl Default for NetGuard {
    fn default() -> Self {
        NetGuard::new(false)
    }
}

/// One port's ownership, as `usernet ctl` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct OwnedRow {
    /// The port.
    pub port: PortId,
    /// Checked (port security on)?
    pub secured: bool,
    /// MACs and how they were claimed.
    pub macs: Vec<(Mac, Claim)>,
    /// IP addresses and how they were claimed.
    pub ips: Vec<(IpAddr, Claim)>,
}

impl NetGuard {
    /// A table with nothing owned; ports are checked by default when `enabled`.
    pub fn new(enabled: bool) -> Self {
        NetGuard {
            enabled: AtomicBool::new(enabled),
            scope: ArcSwap::from_pointee(Scope::default()),
            table: Mutex::new(Table::default()),
            any: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            waker: Mutex::new(None),
        }
    }

    /// Sets the network's default (ports whose policy leaves `port_security` unset follow it).
    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
    }

    /// The network's default.
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Sets where first-seen addresses may come from.
    pub fn set_scope(&self, scope: Scope) {
        self.scope.store(Arc::new(scope));
    }

    /// Registers a port and claims its configured MACs and addresses. Fails, claiming
    /// nothing, if one is owned by another port.
    pub fn register(
        &self,
        id: PortId,
        owned: Arc<PortOwned>,
        secured: Option<bool>,
        macs: &[Mac],
        ips: &[IpAddr],
    ) -> Result<(), ClaimError> {
        let mut t = self.table.lock();
        for m in macs {
            if t.macs.get(m).is_some_and(|o| *o != id) {
                return Err(ClaimError::Taken(m.to_string()));
            }
        }
        for a in ips {
            if t.ips.get(a).is_some_and(|o| *o != id) {
                return Err(ClaimError::Taken(a.to_string()));
            }
        }
        let pc = PortClaims {
            owned,
            secured,
            fixed_macs: !macs.is_empty(),
            macs: macs.iter().map(|m| (*m, Claim::Config)).collect(),
            ips: ips.iter().map(|a| (*a, Claim::Config)).collect(),
            seen4: VecDeque::new(),
            seen6: VecDeque::new(),
        };
        for m in macs {
            t.macs.insert(*m, id);
        }
        for a in ips {
            t.ips.insert(*a, id);
        }
        pc.publish();
        t.ports.insert(id, pc);
        self.any
            .store(!t.macs.is_empty() || !t.ips.is_empty(), Ordering::Relaxed);
        Ok(())
    }

    /// Changes whenever an IP address changed owner (see [`NetGuard::ip_owner`]).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn bump(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Some(w) = self.waker.lock().as_ref() {
            let _ = w.wake();
        }
    }

    /// Wakes `waker` whenever an IP address changes owner (see [`NetGuard::generation`]).
    pub fn set_waker(&self, waker: Arc<mio::Waker>) {
        *self.waker.lock() = Some(waker);
    }

    /// Forgets a port and releases everything it owned.
    pub fn unregister(&self, id: PortId) {
        let mut t = self.table.lock();
        if let Some(pc) = t.ports.remove(&id) {
            for (m, _) in &pc.macs {
                t.macs.remove(m);
            }
            for (a, _) in &pc.ips {
                t.ips.remove(a);
            }
            pc.owned.store(Owned::default());
        }
        if t.removed.len() < MAX_REMOVED {
            t.removed.push(id);
        }
        drop(t);
        self.bump();
    }

    /// Ports removed since the last call (for the gateway, which forgets their neighbour
    /// entries and names).
    pub fn take_removed(&self) -> Vec<PortId> {
        std::mem::take(&mut self.table.lock().removed)
    }

    /// True if `port` is checked.
    pub fn is_secured(&self, port: PortId) -> bool {
        let t = self.table.lock();
        t.ports
            .get(&port)
            .and_then(|p| p.secured)
            .unwrap_or_else(|| self.enabled())
    }

    /// The port that owns `mac`.
    pub fn mac_owner(&self, mac: Mac) -> Option<PortId> {
        self.table.lock().macs.get(&mac).copied()
    }

    /// The port that owns `ip`.
    pub fn ip_owner(&self, ip: IpAddr) -> Option<PortId> {
        self.table.lock().ips.get(&ip).copied()
    }

    /// The IPv4 addresses owned by ports other than `port` (what DHCP must not give it).
    pub fn ips_not_of(&self, port: PortId) -> std::collections::HashSet<Ipv4Addr> {
        self.table
            .lock()
            .ips
            .iter()
            .filter(|(_, o)| **o != port)
            .filter_map(|(a, _)| match a {
                IpAddr::V4(v) => Some(*v),
                IpAddr::V6(_) => None,
            })
            .collect()
    }

    /// Every registered port's ownership, by port id.
    pub fn dump(&self) -> Vec<OwnedRow> {
        let t = self.table.lock();
        let mut v: Vec<OwnedRow> = t
            .ports
            .iter()
            .map(|(id, pc)| OwnedRow {
                port: *id,
                secured: pc.secured.unwrap_or_else(|| self.enabled()),
                macs: pc.macs.clone(),
                ips: pc.ips.clone(),
            })
            .collect();
        v.sort_by_key(|r| r.port);
        v
    }

    /// Claims `mac` for `port` (first seen), within the port's cap.
    pub fn claim_mac(&self, port: PortId, mac: Mac) -> Result<(), ClaimError> {
        if !mac.is_valid_source() {
            return Err(ClaimError::OutOfScope(mac.to_string()));
        }
        let mut t = self.table.lock();
        match t.macs.get(&mac) {
            Some(o) if *o == port => return Ok(()),
            Some(_) => return Err(ClaimError::Taken(mac.to_string())),
            None => {}
        }
        let Some(pc) = t.ports.get_mut(&port) else {
            return Err(ClaimError::OutOfScope(mac.to_string()));
        };
        if pc.fixed_macs {
            return Err(ClaimError::NotAllowed(mac.to_string()));
        }
        if pc.macs.len() >= MAX_MACS {
            return Err(ClaimError::Limit(MAX_MACS));
        }
        pc.macs.push((mac, Claim::Seen));
        pc.publish();
        t.macs.insert(mac, port);
        self.any.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Claims `ip` for `port`: `Claim::Seen` within the network's scope and the port's
    /// first-seen cap (its oldest first-seen address of the family goes when full);
    /// `Claim::Lease` and `Claim::Config` for any unicast address nobody else owns.
    pub fn claim_ip(&self, port: PortId, ip: IpAddr, how: Claim) -> Result<(), ClaimError> {
        if !self.usable(ip, how) {
            return Err(ClaimError::OutOfScope(ip.to_string()));
        }
        let mut t = self.table.lock();
        match t.ips.get(&ip) {
            Some(o) if *o == port => {
                // A lease for an address the port used first: it is the lease's now.
                if how != Claim::Seen
                    && let Some(pc) = t.ports.get_mut(&port)
                    && let Some(e) = pc.ips.iter_mut().find(|(a, _)| *a == ip)
                    && e.1 == Claim::Seen
                {
                    e.1 = how;
                    pc.seen4.retain(|a| IpAddr::V4(*a) != ip);
                    pc.seen6.retain(|a| IpAddr::V6(*a) != ip);
                }
                return Ok(());
            }
            Some(_) => return Err(ClaimError::Taken(ip.to_string())),
            None => {}
        }
        let Some(pc) = t.ports.get_mut(&port) else {
            return Err(ClaimError::OutOfScope(ip.to_string()));
        };
        let mut evicted = None;
        if how == Claim::Seen {
            match ip {
                IpAddr::V4(a) => {
                    if pc.seen4.len() >= MAX_SEEN_V4 {
                        evicted = pc.seen4.pop_front().map(IpAddr::V4);
                    }
                    pc.seen4.push_back(a);
                }
                IpAddr::V6(a) => {
                    if pc.seen6.len() >= MAX_SEEN_V6 {
                        evicted = pc.seen6.pop_front().map(IpAddr::V6);
                    }
                    pc.seen6.push_back(a);
                }
            }
        }
        if let Some(old) = evicted {
            pc.ips.retain(|(a, _)| *a != old);
        }
        pc.ips.push((ip, how));
        pc.publish();
        if let Some(old) = evicted {
            t.ips.remove(&old);
        }
        t.ips.insert(ip, port);
        self.any.store(true, Ordering::Relaxed);
        drop(t);
        // A new owner: what another port learned of this address (a name, a neighbour entry
        // from before it was released) must be checked again.
        self.bump();
        Ok(())
    }

    /// Releases `ip` if `port` owns it.
    pub fn release_ip(&self, port: PortId, ip: IpAddr) {
        let mut t = self.table.lock();
        if t.ips.get(&ip) != Some(&port) {
            return;
        }
        t.ips.remove(&ip);
        if let Some(pc) = t.ports.get_mut(&port) {
            pc.ips.retain(|(a, _)| *a != ip);
            pc.seen4.retain(|a| IpAddr::V4(*a) != ip);
            pc.seen6.retain(|a| IpAddr::V6(*a) != ip);
            pc.publish();
        }
        drop(t);
        self.bump();
    }

    /// Releases every lease claim whose address is not in `bound` (the DHCP server's current
    /// bindings): a released, declined or expired lease stops being its port's.
    pub fn release_leases_except(&self, bound: &std::collections::HashSet<Ipv4Addr>) {
        let mut t = self.table.lock();
        let mut gone = Vec::new();
        for pc in t.ports.values_mut() {
            let before = pc.ips.len();
            pc.ips.retain(|(a, how)| match (a, how) {
                (IpAddr::V4(v), Claim::Lease) if !bound.contains(v) => {
                    gone.push(*a);
                    false
                }
                _ => true,
            });
            if pc.ips.len() != before {
                pc.publish();
            }
        }
        let changed = !gone.is_empty();
        for a in gone {
            t.ips.remove(&a);
        }
        drop(t);
        if changed {
            self.bump();
        }
    }

    /// Whether `ip` may be claimed the way `how` says.
    fn usable(&self, ip: IpAddr, how: Claim) -> bool {
        let scope = self.scope.load();
        match ip {
            IpAddr::V4(a) => {
                if a.is_unspecified()
                    || a.is_broadcast()
                    || a.is_multicast()
                    || a.is_loopback()
                    || a.octets()[0] == 0
                {
                    return false;
                }
                match scope.subnet4 {
                    Some(n) if how == Claim::Seen => {
                        n.contains(&a) && a != n.network() && a != n.broadcast()
                    }
                    _ => true,
                }
            }
            IpAddr::V6(a) => {
                if a.is_unspecified()
                    || a.is_multicast()
                    || a.is_loopback()
                    || a.to_ipv4_mapped().is_some()
                {
                    return false;
                }
                if a.is_unicast_link_local() || how != Claim::Seen {
                    return true;
                }
                scope.prefix6.is_none_or(|p| p.contains(&a))
            }
        }
    }

    /// True when a drop warning for `owned`'s port is due at `now` (ms): one per minute.
    pub fn should_warn(owned: &PortOwned, now: u64) -> bool {
        let last = owned.warned.load(Ordering::Relaxed);
        if last != 0 && now.saturating_add(1).saturating_sub(last) < WARN_EVERY_MS {
            return false;
        }
        owned
            .warned
            .compare_exchange(
                last,
                now.saturating_add(1),
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::DropReason;
    use crate::wire::L2Header;

    fn port(g: &NetGuard, id: u32, macs: &[Mac]) -> Arc<PortOwned> {
        let o = Arc::new(PortOwned::default());
        g.register(PortId(id), o.clone(), None, macs, &[])
            .expect("register");
        o
    }

    fn frame(src: Mac, ethertype: u16, l3: &[u8]) -> (L2Header, Vec<u8>) {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&src.0);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(l3);
        (L2Header::parse(&f).expect("l2"), f)
    }

    fn ipv4(src: Ipv4Addr, proto: u8, sport: u16, dport: u16) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 28, 0, 0, 0, 0, 64, proto, 0, 0];
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&[10, 0, 0, 1]);
        p.extend_from_slice(&sport.to_be_bytes());
        p.extend_from_slice(&dport.to_be_bytes());
        p.extend_from_slice(&[0, 8, 0, 0]);
        p
    }

    #[test]
    fn macs_and_addresses_have_one_owner() {
        let g = NetGuard::new(true);
        g.set_scope(Scope {
            subnet4: Some("10.0.0.0/24".parse().expect("n")),
            prefix6: None,
        });
        let gw = Mac([2, 0, 0, 0, 0, 1]);
        let _gwo = port(&g, 1, &[gw]);
        let a = port(&g, 2, &[]);
        let b = port(&g, 3, &[]);
        let (ma, mb) = (Mac([2, 0, 0, 0, 0, 2]), Mac([2, 0, 0, 0, 0, 3]));
        let ip_a = Ipv4Addr::new(10, 0, 0, 2);
        let (h, f) = frame(ma, 0x0800, &ipv4(ip_a, 17, 1, 2));
        assert_eq!(g.check(PortId(2), &a, None, &h, &f), Ok(()));
        assert_eq!(g.ip_owner(IpAddr::V4(ip_a)), Some(PortId(2)));
        // B with A's MAC, the gateway's MAC, A's address, an outside address.
        let (h, f) = frame(ma, 0x0800, &ipv4(Ipv4Addr::new(10, 0, 0, 3), 17, 1, 2));
        assert_eq!(
            g.check(PortId(3), &b, None, &h, &f),
            Err(DropReason::SpoofedSource)
        );
        let (h, f) = frame(gw, 0x0800, &ipv4(Ipv4Addr::new(10, 0, 0, 3), 17, 1, 2));
        assert_eq!(
            g.check(PortId(3), &b, None, &h, &f),
            Err(DropReason::SpoofedSource)
        );
        let (h, f) = frame(mb, 0x0800, &ipv4(ip_a, 17, 1, 2));
        assert_eq!(
            g.check(PortId(3), &b, None, &h, &f),
            Err(DropReason::SpoofedIp)
        );
        let (h, f) = frame(mb, 0x0800, &ipv4(Ipv4Addr::new(192, 0, 2, 1), 6, 1, 2));
        assert_eq!(
            g.check(PortId(3), &b, None, &h, &f),
            Err(DropReason::SpoofedIp)
        );
        // 0.0.0.0 only for DHCP; DHCP server replies from a guest are rogue.
        let (h, f) = frame(mb, 0x0800, &ipv4(Ipv4Addr::UNSPECIFIED, 17, 68, 67));
        assert_eq!(g.check(PortId(3), &b, None, &h, &f), Ok(()));
        let (h, f) = frame(mb, 0x0800, &ipv4(Ipv4Addr::UNSPECIFIED, 6, 68, 67));
        assert_eq!(
            g.check(PortId(3), &b, None, &h, &f),
            Err(DropReason::SpoofedIp)
        );
        let (h, f) = frame(mb, 0x0800, &ipv4(Ipv4Addr::new(10, 0, 0, 3), 17, 67, 68));
        assert_eq!(
            g.check(PortId(3), &b, None, &h, &f),
            Err(DropReason::RogueServer)
        );
        // An unchecked port still cannot use an owned MAC.
        let c = port(&g, 4, &[]);
        let (h, f) = frame(ma, 0x0800, &ipv4(Ipv4Addr::new(192, 0, 2, 1), 6, 1, 2));
        assert_eq!(
            g.check(PortId(4), &c, Some(false), &h, &f),
            Err(DropReason::SpoofedSource)
        );
        // Removing A frees its MAC and address.
        g.unregister(PortId(2));
        assert_eq!(g.mac_owner(ma), None);
        assert_eq!(g.ip_owner(IpAddr::V4(ip_a)), None);
        assert_eq!(g.take_removed(), vec![PortId(2)]);
    }

    #[test]
    fn caps_cost_only_the_port_itself() {
        let g = NetGuard::new(true);
        let a = port(&g, 2, &[]);
        for i in 0..MAX_MACS as u8 {
            assert_eq!(g.claim_mac(PortId(2), Mac([2, 0, 0, 0, 1, i])), Ok(()));
        }
        assert_eq!(
            g.claim_mac(PortId(2), Mac([2, 0, 0, 0, 1, 99])),
            Err(ClaimError::Limit(MAX_MACS))
        );
        for i in 0..10u8 {
            g.claim_ip(
                PortId(2),
                IpAddr::V4(Ipv4Addr::new(10, 0, 0, 10 + i)),
                Claim::Seen,
            )
            .expect("claim");
        }
        let owned = a.snapshot();
        assert_eq!(owned.ips.len(), MAX_SEEN_V4);
        assert!(owned.ips.contains(&IpAddr::V4(Ipv4Addr::new(10, 0, 0, 19))));
        // A lease survives first-seen churn, and ends when DHCP no longer has it.
        g.claim_ip(
            PortId(2),
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 99)),
            Claim::Lease,
        )
        .expect("lease");
        for i in 0..10u8 {
            g.claim_ip(
                PortId(2),
                IpAddr::V4(Ipv4Addr::new(10, 0, 0, 30 + i)),
                Claim::Seen,
            )
            .expect("claim");
        }
        assert_eq!(
            g.ip_owner(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 99))),
            Some(PortId(2))
        );
        // Every address that stops being a port's moves the generation on.
        let gen0 = g.generation();
        g.release_leases_except(&std::collections::HashSet::new());
        assert_eq!(g.ip_owner(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 99))), None);
        assert!(g.generation() > gen0);
    }
}
