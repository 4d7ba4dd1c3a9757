//! The gateway's neighbour table: which guest address is at which MAC, behind which port.
//!
//! Entries are learned only from the port a frame came in on (the bridge stamps it), and only
//! for addresses no other port owns ([`crate::bridge::security`]); each port has a quota and
//! the table a cap, and it is never cleared wholesale. When the ownership table says an address
//! changed owner, entries and port names that no longer belong are dropped
//! ([`Driver::recheck_owners`]). A packet for a guest whose MAC is not known yet is held in a
//! small queue per address while the gateway asks for it (ARP request, neighbour
//! solicitation), as the kernel's neighbour queue does. A removed port's entries, names and
//! NAT flows go with it ([`Driver::forget_port`]).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{Driver, MAX_GONE, arp, inc, ndp};
use crate::wire::Mac;

/// Most entries in a gateway's neighbour table; past it new addresses are not learned (the
/// table is never cleared wholesale).
const MAX_NEIGH: usize = 4096;
/// Most neighbour entries one port may have; past it the port's oldest goes.
const MAX_NEIGH_PER_PORT: usize = 64;
/// Packets held for one unresolved address (like the kernel's neighbour queue); past it the
/// oldest goes.
const UNRESOLVED_PACKETS: usize = 16;
/// Bytes held for one unresolved address.
const UNRESOLVED_BYTES: usize = 256 * 1024;
/// Addresses being resolved at once.
const UNRESOLVED_MAX: usize = 256;
/// Solicitations per address (one a second) before its packets are dropped.
const SOLICITS: u8 = 3;

/// How a held packet is sent once its neighbour resolves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Via {
    /// NAT's output (TCP segments get offload metadata).
    Nat,
    /// As it is.
    Plain,
}

/// Packets waiting for a guest's MAC (ARP / NDP in progress).
#[derive(Debug)]
pub(super) struct Unresolved {
    packets: std::collections::VecDeque<(Vec<u8>, Via)>,
    bytes: usize,
    solicits: u8,
    next: Instant,
}

impl Driver {
    /// When the next solicitation is due, if an address is being resolved.
    pub(super) fn next_solicit(&self) -> Option<Instant> {
        self.unresolved.values().map(|u| u.next).min()
    }

    /// Learns that `ip` is at `mac` behind the current frame's port, unless another port owns
    /// `ip` (port security) or the port's quota or the table is full. True if the entry is
    /// (now) the port's.
    pub(super) fn learn(&mut self, ip: IpAddr, mac: Mac) -> bool {
        let port = self.ingress;
        match self.neigh.get(&ip) {
            Some(&(m, p)) if p == port && m == mac => return true,
            _ => {}
        }
        if self.guard.ip_owner(ip).is_some_and(|o| o.0 != port) {
            return false;
        }
        if let Some((_, old)) = self.neigh.get(&ip).copied() {
            if old != port {
                self.unlink_neigh(old, ip);
            }
        } else if self.neigh.len() >= MAX_NEIGH {
            inc(&self.gw.counters.neigh_refused);
            return false;
        }
        let mine = self.neigh_of.entry(port).or_default();
        if !mine.contains(&ip) {
            if mine.len() >= MAX_NEIGH_PER_PORT
                && let Some(oldest) = mine.pop_front()
            {
                inc(&self.gw.counters.neigh_refused);
                self.neigh.remove(&oldest);
            }
            self.neigh_of.entry(port).or_default().push_back(ip);
        }
        self.neigh.insert(ip, (mac, port));
        if let Some(u) = self.unresolved.remove(&ip) {
            for (p, via) in u.packets {
                match via {
                    Via::Nat => self.send_nat_ip(&p),
                    Via::Plain => self.send_ip(&p),
                }
            }
        }
        true
    }

    /// Holds `packet` for `dst`, whose MAC is not known, and asks for it (ARP / neighbour
    /// solicitation) unless a request is out already.
    pub(super) fn hold(&mut self, dst: IpAddr, packet: &[u8], via: Via) {
        let on_link = match dst {
            IpAddr::V4(a) => {
                self.gw.cfg.subnet.contains(&a)
                    && a != self.gw.cfg.subnet.broadcast()
                    && a != self.gw.cfg.subnet.network()
            }
            IpAddr::V6(a) => {
                a.is_unicast_link_local() || self.gw.cfg.ipv6.is_some_and(|p| p.contains(&a))
            }
        };
        if !on_link
            || packet.len() > UNRESOLVED_BYTES
            || (!self.unresolved.contains_key(&dst) && self.unresolved.len() >= UNRESOLVED_MAX)
        {
            inc(&self.gw.counters.neigh_unresolved);
            return;
        }
        let now = self.now;
        let u = self.unresolved.entry(dst).or_insert_with(|| Unresolved {
            packets: std::collections::VecDeque::new(),
            bytes: 0,
            solicits: 0,
            next: now,
        });
        while u.packets.len() >= UNRESOLVED_PACKETS || u.bytes + packet.len() > UNRESOLVED_BYTES {
            let Some((old, _)) = u.packets.pop_front() else {
                break;
            };
            u.bytes -= old.len();
            inc(&self.gw.counters.neigh_unresolved);
        }
        u.bytes += packet.len();
        u.packets.push_back((packet.to_vec(), via));
        if u.solicits == 0 {
            u.solicits = 1;
            u.next = now + Duration::from_secs(1);
            self.solicit(dst);
        }
    }

    /// Asks the network for `dst`'s MAC.
    pub(super) fn solicit(&mut self, dst: IpAddr) {
        inc(&self.gw.counters.neigh_solicits);
        let frame = match dst {
            IpAddr::V4(a) => arp::request(self.gw.cfg.mac, self.gw.cfg.addr, a),
            IpAddr::V6(a) => ndp::neighbor_solicit(self.gw.cfg.mac, self.gw.cfg.link_local(), a),
        };
        self.send(frame);
    }

    /// Repeats solicitations that got no answer; drops what waited for [`SOLICITS`] of them.
    pub(super) fn resolve_timers(&mut self, now: Instant) {
        let due: Vec<IpAddr> = self
            .unresolved
            .iter()
            .filter(|(_, u)| u.next <= now)
            .map(|(a, _)| *a)
            .collect();
        for a in due {
            let Some(u) = self.unresolved.get_mut(&a) else {
                continue;
            };
            if u.solicits >= SOLICITS {
                let n = u.packets.len() as u64;
                self.unresolved.remove(&a);
                self.gw
                    .counters
                    .neigh_unresolved
                    .fetch_add(n, Ordering::Relaxed);
                continue;
            }
            u.solicits += 1;
            u.next = now + Duration::from_secs(1);
            self.solicit(a);
        }
    }

    pub(super) fn unlink_neigh(&mut self, port: u32, ip: IpAddr) {
        if let Some(v) = self.neigh_of.get_mut(&port) {
            v.retain(|a| *a != ip);
            if v.is_empty() {
                self.neigh_of.remove(&port);
            }
        }
    }

    /// Forgets everything learned from a removed port: neighbour entries, its DNS names, its
    /// NAT flows (closed; the guest is gone, so nobody gets an RST). Its late frames are
    /// ignored from now on.
    pub(super) fn forget_port(&mut self, port: u32, now: Instant) {
        if self.gone.len() >= MAX_GONE {
            self.gone.pop_front();
        }
        self.gone.push_back((port, now));
        if let Some(nat) = self.nat.as_mut() {
            nat.forget_guest(&self.registry, port);
        }
        if let (Some(ips), Some(d)) = (self.leased.remove(&port), &self.gw.dhcp) {
            // Names of its leases, unless another port has the lease now (its MAC came back).
            let ips: Vec<Ipv4Addr> = ips
                .into_iter()
                .filter(|ip| !self.leased.values().any(|v| v.contains(ip)))
                .collect();
            let leases = d.lock().leases(self.gw.ms_at(now));
            for l in leases.iter().filter(|l| ips.contains(&l.ip)) {
                if let Some(name) = &l.hostname
                    && self.gw.records.remove(name, Some(IpAddr::V4(l.ip)))
                {
                    self.unnamed.insert(l.ip);
                }
            }
        }
        if let (Some(held), Some(d)) = (self.reserved.remove(&port), &self.gw.dhcp) {
            let mut srv = d.lock();
            for (ip, mac) in held {
                srv.unreserve(ip, mac);
            }
        }
        for ip in self.neigh_of.remove(&port).unwrap_or_default() {
            self.neigh.remove(&ip);
        }
        if let Some(name) = self.port_names.remove(&port) {
            for v4 in [true, false] {
                if let Some(ip) = self.names.remove(&(name.clone(), v4)) {
                    self.gw.records.remove(&name, Some(ip));
                }
            }
        }
    }

    /// When addresses changed owner (claimed, a port's first-seen address evicted, a lease
    /// ended, a port removed; the ownership table wakes the gateway), drops neighbour entries
    /// and port names whose address another port owns now: what the gateway learned from a
    /// port stays that port's only while no other port owns the address. One atomic load when
    /// nothing changed.
    pub(super) fn recheck_owners(&mut self) {
        let g = self.guard.generation();
        if g == self.guard_gen {
            return;
        }
        self.guard_gen = g;
        let stale: Vec<(IpAddr, u32)> = self
            .neigh
            .iter()
            .filter(|(ip, (_, port))| self.guard.ip_owner(**ip).is_some_and(|o| o.0 != *port))
            .map(|(ip, (_, port))| (*ip, *port))
            .collect();
        for (ip, port) in stale {
            self.neigh.remove(&ip);
            self.unlink_neigh(port, ip);
        }
        // Port names, whether or not a neighbour entry still backs them.
        let stale_names: Vec<((String, bool), IpAddr)> = self
            .names
            .iter()
            .filter(|((name, _), ip)| {
                let port = self
                    .port_names
                    .iter()
                    .find(|(_, n)| *n == name)
                    .map(|(p, _)| *p);
                port.zip(self.guard.ip_owner(**ip))
                    .is_some_and(|(p, o)| o.0 != p)
            })
            .map(|(k, ip)| (k.clone(), *ip))
            .collect();
        for (key, ip) in stale_names {
            self.names.remove(&key);
            self.gw.records.remove(&key.0, Some(ip));
        }
    }
}
