//! Addresses: which one a MAC gets, the bindings (offered, bound, reserved) and their expiry,
//! the MAC→IP memory, declined addresses, reservations for ports usernet configures itself,
//! and the lease list.

use std::net::Ipv4Addr;

use super::options::Request;
use super::{Binding, DhcpServer, Lease, LeaseState, NameEvent, sanitize_hostname};
use crate::wire::Mac;

/// Why an address cannot be given to a MAC; the text goes into the NAK's message option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    OutsideSubnet,
    Reserved,
    StaticElsewhere,
    HeldByOther,
    Declined,
    OutsidePool,
    /// Cluster mode: not claimed by this node in the cluster's store.
    NotClaimed,
}

impl Refusal {
    pub(super) fn text(self) -> &'static str {
        match self {
            Refusal::OutsideSubnet => "address not in this subnet",
            Refusal::Reserved => "address reserved",
            Refusal::StaticElsewhere => "client has a different fixed address",
            Refusal::HeldByOther => "address in use by another client",
            Refusal::Declined => "address recently declined",
            Refusal::OutsidePool | Refusal::NotClaimed => "address not available",
        }
    }
}

impl DhcpServer {
    /// Current (unexpired) bindings, ordered by address.
    pub fn leases(&self, now_ms: u64) -> Vec<Lease> {
        self.bindings
            .iter()
            .filter(|(_, b)| b.expires_ms > now_ms)
            .map(|(&ip, b)| Lease {
                mac: b.mac,
                ip,
                hostname: b.name.clone(),
                expires_in_secs: if b.state == LeaseState::Reserved {
                    0
                } else {
                    (b.expires_ms - now_ms).div_ceil(1000)
                },
                state: b.state,
                is_static: self.static_ips.get(&ip) == Some(&b.mac),
            })
            .collect()
    }

    /// Drops expired offers, leases and declines; returns the name events not yet handed out,
    /// including an `Unregister` for every expired lease that had a name.
    pub fn expire(&mut self, now_ms: u64) -> Vec<NameEvent> {
        self.purge(now_ms);
        self.drain_names()
    }

    /// Earliest time (ms) at which a binding or decline expires, if any: when to call
    /// [`DhcpServer::expire`] next.
    pub fn next_expiry(&self) -> Option<u64> {
        self.bindings
            .values()
            .map(|b| b.expires_ms)
            .chain(self.declined.values().copied())
            .min()
    }

    // ---- address management ----

    /// The address to offer `req.mac`, or `None` if none is free.
    pub(super) fn choose_offer(&self, mac: Mac, requested: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
        if let Some(s) = self.statics.get(&mac) {
            return Some(s.ip);
        }
        if let Some(&ip) = self.by_mac.get(&mac)
            && !self.foreign.contains(&ip)
        {
            return Some(ip);
        }
        if let Some(&ip) = self.prev_by_mac.get(&mac)
            && self.check(mac, ip).is_ok()
        {
            return Some(ip);
        }
        if let Some(ip) = requested
            && self.check(mac, ip).is_ok()
        {
            return Some(ip);
        }
        if let Some(claimed) = &self.claimed {
            return claimed
                .iter()
                .copied()
                .find(|&ip| self.check(mac, ip).is_ok());
        }
        (u32::from(self.cfg.range_start)..=u32::from(self.cfg.range_end))
            .map(Ipv4Addr::from)
            .find(|&ip| self.check(mac, ip).is_ok())
    }

    /// Whether `ip` may be bound to `mac` now (expired bindings already purged).
    pub(super) fn check(&self, mac: Mac, ip: Ipv4Addr) -> Result<(), Refusal> {
        let net = self.cfg.subnet;
        if !net.contains(&ip) {
            return Err(Refusal::OutsideSubnet);
        }
        if ip == net.network() || ip == net.broadcast() || ip == self.cfg.server {
            return Err(Refusal::Reserved);
        }
        if self.foreign.contains(&ip) {
            return Err(Refusal::HeldByOther);
        }
        if self.claimed.as_ref().is_some_and(|c| !c.contains(&ip)) {
            return Err(Refusal::NotClaimed);
        }
        if let Some(s) = self.statics.get(&mac) {
            return if s.ip == ip {
                Ok(())
            } else {
                Err(Refusal::StaticElsewhere)
            };
        }
        if self.static_ips.contains_key(&ip) {
            return Err(Refusal::HeldByOther);
        }
        if let Some(b) = self.bindings.get(&ip) {
            return if b.mac == mac {
                Ok(())
            } else {
                Err(Refusal::HeldByOther)
            };
        }
        if self.declined.contains_key(&ip) {
            return Err(Refusal::Declined);
        }
        if !(self.cfg.range_start..=self.cfg.range_end).contains(&ip) {
            return Err(Refusal::OutsidePool);
        }
        Ok(())
    }

    /// Binds `ip` to `req.mac` for a lease, emitting name events.
    pub(super) fn commit(
        &mut self,
        req: &Request,
        ip: Ipv4Addr,
        now: u64,
        names: &mut Vec<NameEvent>,
    ) {
        let mac = req.mac;
        if self.by_mac.get(&mac).is_some_and(|&old| old != ip) {
            self.drop_mac(mac, names);
        }
        if self.bindings.get(&ip).is_some_and(|b| b.mac != mac) {
            self.drop_ip(ip, names);
        }
        let old_name = self.bindings.get(&ip).and_then(|b| b.name.clone());
        let new_name = match self.statics.get(&mac) {
            Some(s) if s.hostname.is_some() => s.hostname.clone(),
            _ => req
                .hostname
                .as_deref()
                .and_then(sanitize_hostname)
                .or_else(|| old_name.clone()),
        };
        if old_name != new_name {
            if let Some(name) = old_name {
                names.push(NameEvent::Unregister { name, ip });
            }
            if let Some(name) = new_name.clone() {
                names.push(NameEvent::Register { name, ip });
            }
        }
        let lease_ms = u64::from(self.cfg.lease_secs) * 1000;
        // A reservation stays one when its port's DHCP client asks for it.
        let reserved = self
            .bindings
            .get(&ip)
            .is_some_and(|b| b.mac == mac && b.state == LeaseState::Reserved);
        self.insert_binding(
            ip,
            Binding {
                mac,
                state: if reserved {
                    LeaseState::Reserved
                } else {
                    LeaseState::Bound
                },
                expires_ms: if reserved {
                    u64::MAX
                } else {
                    now.saturating_add(lease_ms)
                },
                name: new_name,
            },
        );
        self.remember(mac, ip);
    }

    /// Reserves an address for `mac` outside the DHCP exchange, for a port whose address
    /// usernet configures itself (`attach --ip auto`, the CNI plugin): `wanted` if given and
    /// free (it may lie outside the pool, not outside the subnet), else the MAC's static,
    /// current or previous address, else the first free one of the pool. Addresses set with
    /// [`DhcpServer::set_foreign`] are skipped. The reservation never expires; a DHCP client
    /// on that MAC gets the same address. `None` when nothing is free (or `wanted` is taken).
    pub fn reserve(&mut self, mac: Mac, wanted: Option<Ipv4Addr>, now_ms: u64) -> Option<Ipv4Addr> {
        self.purge(now_ms);
        let free = |s: &Self, ip: Ipv4Addr| match s.check(mac, ip) {
            Ok(()) | Err(Refusal::OutsidePool) => true,
            Err(_) => false,
        };
        let ip = match wanted {
            Some(ip) => Some(ip).filter(|&ip| free(self, ip))?,
            None => self.choose_offer(mac, None)?,
        };
        let mut names = Vec::new();
        if self.by_mac.get(&mac).is_some_and(|&old| old != ip) {
            self.drop_mac(mac, &mut names);
        }
        let name = self
            .bindings
            .get(&ip)
            .filter(|b| b.mac == mac)
            .and_then(|b| b.name.clone());
        self.insert_binding(
            ip,
            Binding {
                mac,
                state: LeaseState::Reserved,
                expires_ms: u64::MAX,
                name,
            },
        );
        self.remember(mac, ip);
        self.pending.append(&mut names);
        Some(ip)
    }

    /// Gives back a reservation of `ip` by `mac` (its port is gone). False if `ip` was not
    /// reserved for `mac`.
    pub fn unreserve(&mut self, ip: Ipv4Addr, mac: Mac) -> bool {
        let ours = self
            .bindings
            .get(&ip)
            .is_some_and(|b| b.mac == mac && b.state == LeaseState::Reserved);
        if ours {
            let mut names = Vec::new();
            self.drop_ip(ip, &mut names);
            self.pending.append(&mut names);
        }
        ours
    }

    pub(super) fn insert_binding(&mut self, ip: Ipv4Addr, b: Binding) {
        self.next_deadline = self.next_deadline.min(b.expires_ms);
        self.by_mac.insert(b.mac, ip);
        self.bindings.insert(ip, b);
    }

    /// Records `ip` as the address `mac` last held, forgetting stale pairings on both sides.
    pub(super) fn remember(&mut self, mac: Mac, ip: Ipv4Addr) {
        if let Some(old_mac) = self.prev_by_ip.insert(ip, mac)
            && old_mac != mac
            && self.prev_by_mac.get(&old_mac) == Some(&ip)
        {
            self.prev_by_mac.remove(&old_mac);
        }
        if let Some(old_ip) = self.prev_by_mac.insert(mac, ip)
            && old_ip != ip
            && self.prev_by_ip.get(&old_ip) == Some(&mac)
        {
            self.prev_by_ip.remove(&old_ip);
        }
    }

    /// Removes the binding of `ip`, if any.
    pub(super) fn drop_ip(&mut self, ip: Ipv4Addr, names: &mut Vec<NameEvent>) {
        if let Some(b) = self.bindings.remove(&ip) {
            if self.by_mac.get(&b.mac) == Some(&ip) {
                self.by_mac.remove(&b.mac);
            }
            if let Some(name) = b.name {
                names.push(NameEvent::Unregister { name, ip });
            }
        }
    }

    /// Removes the binding of `mac`, if any.
    pub(super) fn drop_mac(&mut self, mac: Mac, names: &mut Vec<NameEvent>) {
        if let Some(&ip) = self.by_mac.get(&mac) {
            self.drop_ip(ip, names);
        }
    }

    /// Drops everything expired at `now`, queueing name events.
    pub(super) fn purge(&mut self, now: u64) {
        if now < self.next_deadline {
            return;
        }
        let expired: Vec<Ipv4Addr> = self
            .bindings
            .iter()
            .filter(|(_, b)| b.expires_ms <= now)
            .map(|(&ip, _)| ip)
            .collect();
        let mut names = Vec::new();
        for ip in expired {
            self.drop_ip(ip, &mut names);
        }
        self.pending.append(&mut names);
        self.declined.retain(|_, &mut until| until > now);
        self.next_deadline = self
            .bindings
            .values()
            .map(|b| b.expires_ms)
            .chain(self.declined.values().copied())
            .min()
            .unwrap_or(u64::MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::{DECLINE_HOLD_MS, OFFER_HOLD_MS, StaticLease};
    use super::*;
    use dhcproto::v4::{DhcpOption, MessageType};

    #[test]
    fn two_clients_get_different_addresses() {
        let mut s = server();
        let (a, _) = dora(&mut s, mac(1), None, T0);
        let (b, _) = dora(&mut s, mac(2), None, T0);
        assert_eq!((a, b), (ip(2), ip(3)));
        // Two outstanding offers are distinct too.
        let (o3, _) = discover(&mut s, mac(3), T0).unwrap();
        let (o4, _) = discover(&mut s, mac(4), T0).unwrap();
        assert_eq!((o3.yiaddr(), o4.yiaddr()), (ip(4), ip(5)));
        // A repeated DISCOVER gets the same offer.
        assert_eq!(discover(&mut s, mac(3), T0 + 1).unwrap().0.yiaddr(), ip(4));
    }

    #[test]
    fn static_lease_honoured() {
        let mut cfg = base_cfg();
        cfg.static_leases = vec![
            StaticLease {
                mac: mac(9),
                ip: ip(2),
                hostname: Some("DB".into()),
            },
            StaticLease {
                mac: mac(8),
                ip: ip(200),
                hostname: None,
            },
        ];
        let mut s = DhcpServer::new(cfg).unwrap();
        // A dynamic client never gets the static address, even when asking for it.
        let mut d = msg(mac(1), MessageType::Discover);
        d.opts_mut().insert(DhcpOption::RequestedIpAddress(ip(2)));
        assert_eq!(send(&mut s, &d, T0).unwrap().0.yiaddr(), ip(3));
        // The static client gets its address; its configured name beats the one it sends.
        let (a, out) = dora(&mut s, mac(9), Some("other"), T0);
        assert_eq!(a, ip(2));
        assert_eq!(
            out.names,
            [NameEvent::Register {
                name: "db".into(),
                ip: ip(2)
            }]
        );
        let l = s.leases(T0).into_iter().find(|l| l.ip == ip(2)).unwrap();
        assert!(l.is_static);
        // A static address outside the pool works; asking for another address is refused.
        assert_eq!(dora(&mut s, mac(8), Some("eight"), T0).0, ip(200));
        let mut r = msg(mac(8), MessageType::Request);
        r.opts_mut().insert(DhcpOption::RequestedIpAddress(ip(50)));
        assert_eq!(kind(&send(&mut s, &r, T0).unwrap().0), MessageType::Nak);
        // Another client's INIT-REBOOT for a static address is refused.
        let mut r = msg(mac(1), MessageType::Request);
        r.opts_mut().insert(DhcpOption::RequestedIpAddress(ip(200)));
        assert_eq!(kind(&send(&mut s, &r, T0).unwrap().0), MessageType::Nak);
    }

    #[test]
    fn same_mac_after_restart_gets_same_ip() {
        let mut s = server();
        assert_eq!(dora(&mut s, mac(1), None, T0).0, ip(2));
        assert_eq!(dora(&mut s, mac(2), None, T0).0, ip(3));
        let later = T0 + 3_601_000;
        s.expire(later);
        assert!(s.leases(later).is_empty());
        // mac 2 comes back first with a new xid and no option 50: still .3, not the lowest .2.
        let mut d = msg(mac(2), MessageType::Discover);
        d.set_xid(42);
        assert_eq!(send(&mut s, &d, later).unwrap().0.yiaddr(), ip(3));
        assert_eq!(discover(&mut s, mac(1), later).unwrap().0.yiaddr(), ip(2));
        // ... also after a release.
        let (a, _) = dora(&mut s, mac(1), None, later);
        let mut rel = msg(mac(1), MessageType::Release);
        rel.set_ciaddr(a)
            .opts_mut()
            .insert(DhcpOption::ServerIdentifier(SERVER));
        assert!(send(&mut s, &rel, later).is_none());
        assert_eq!(dora(&mut s, mac(1), None, later + 5).0, ip(2));
    }

    #[test]
    fn released_address_reused_by_new_client() {
        let mut s = server();
        assert_eq!(dora(&mut s, mac(1), Some("one"), T0).0, ip(2));
        assert_eq!(dora(&mut s, mac(2), None, T0).0, ip(3));
        let mut rel = msg(mac(1), MessageType::Release);
        rel.set_ciaddr(ip(2))
            .opts_mut()
            .insert(DhcpOption::ServerIdentifier(SERVER));
        assert!(send(&mut s, &rel, T0 + 10).is_none());
        assert_eq!(s.stats().release, 1);
        assert_eq!(s.leases(T0 + 10).len(), 1);
        // The unregister is queued and handed out once.
        let unreg = NameEvent::Unregister {
            name: "one".into(),
            ip: ip(2),
        };
        let (offer, out) = discover(&mut s, mac(3), T0 + 20).unwrap();
        assert_eq!(offer.yiaddr(), ip(2));
        assert_eq!(out.names, [unreg]);
        let (c, out) = dora(&mut s, mac(3), None, T0 + 20);
        assert_eq!(c, ip(2));
        assert!(out.names.is_empty());
        assert!(s.expire(T0 + 30).is_empty());
        // A RELEASE from a MAC that does not hold the address is ignored.
        let mut rel = msg(mac(9), MessageType::Release);
        rel.set_ciaddr(ip(3));
        assert!(send(&mut s, &rel, T0 + 40).is_none());
        assert_eq!(s.leases(T0 + 40).len(), 2);
    }

    #[test]
    fn decline_excludes_address() {
        let mut s = server();
        let (a, _) = dora(&mut s, mac(1), Some("dup"), T0);
        let mut d = msg(mac(1), MessageType::Decline);
        d.opts_mut().insert(DhcpOption::RequestedIpAddress(a));
        d.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
        assert!(send(&mut s, &d, T0).is_none());
        assert_eq!(s.stats().decline, 1);
        assert!(s.leases(T0).is_empty());
        assert_eq!(
            s.drain_names(),
            [NameEvent::Unregister {
                name: "dup".into(),
                ip: a
            }]
        );
        // Neither the decliner nor anyone else gets it for 10 minutes.
        assert_eq!(discover(&mut s, mac(1), T0).unwrap().0.yiaddr(), ip(3));
        assert_eq!(discover(&mut s, mac(2), T0).unwrap().0.yiaddr(), ip(4));
        let mut r = msg(mac(5), MessageType::Request);
        r.opts_mut().insert(DhcpOption::RequestedIpAddress(a));
        assert_eq!(kind(&send(&mut s, &r, T0).unwrap().0), MessageType::Nak);
        // Afterwards it is the lowest free address again.
        let later = T0 + DECLINE_HOLD_MS + 1;
        s.expire(later);
        assert_eq!(discover(&mut s, mac(6), later).unwrap().0.yiaddr(), a);
        // A client cannot decline an address it does not hold.
        let mut d = msg(mac(7), MessageType::Decline);
        d.opts_mut().insert(DhcpOption::RequestedIpAddress(a));
        assert!(send(&mut s, &d, later).is_none());
        assert_eq!(s.leases(later)[0].ip, a);
    }

    #[test]
    fn pool_exhaustion() {
        let mut cfg = base_cfg();
        cfg.range_start = ip(10);
        cfg.range_end = ip(12);
        let mut s = DhcpServer::new(cfg).unwrap();
        for n in 1..=3 {
            assert_eq!(discover(&mut s, mac(n), T0).unwrap().0.yiaddr(), ip(9 + n));
        }
        assert!(discover(&mut s, mac(4), T0).is_none());
        assert_eq!(s.stats().pool_exhausted, 1);
        // Unrequested offers lapse after the hold time.
        let later = T0 + OFFER_HOLD_MS;
        assert_eq!(discover(&mut s, mac(4), later).unwrap().0.yiaddr(), ip(10));
    }

    #[test]
    fn expiry_unregisters_name() {
        let mut s = server();
        let (a, out) = dora(&mut s, mac(1), Some("Laptop_1"), T0);
        assert_eq!(
            out.names,
            [NameEvent::Register {
                name: "laptop-1".into(),
                ip: a
            }]
        );
        assert_eq!(s.next_expiry(), Some(T0 + 3_600_000));
        assert!(s.expire(T0 + 3_599_999).is_empty());
        assert_eq!(s.leases(T0 + 3_599_999)[0].expires_in_secs, 1);
        assert_eq!(
            s.expire(T0 + 3_600_000),
            [NameEvent::Unregister {
                name: "laptop-1".into(),
                ip: a
            }]
        );
        assert!(s.leases(T0 + 3_600_000).is_empty());
        assert!(s.expire(T0 + 3_700_000).is_empty());
        assert_eq!(s.next_expiry(), None);
    }

    #[test]
    fn lazy_expiry_events_ride_on_next_reply() {
        let mut s = server();
        let (a, _) = dora(&mut s, mac(1), Some("gone"), T0);
        let later = T0 + 4_000_000;
        let (_, out) = discover(&mut s, mac(2), later).unwrap();
        assert_eq!(
            out.names,
            [NameEvent::Unregister {
                name: "gone".into(),
                ip: a
            }]
        );
        assert!(s.expire(later).is_empty());
    }

    #[test]
    fn reserve_holds_an_address_for_a_mac_until_unreserved() {
        let mut s = server();
        let (a, b) = (mac(1), mac(2));
        let ip_a = s.reserve(a, None, 0).expect("reserved");
        assert!(s.config().range_start <= ip_a && ip_a <= s.config().range_end);
        // Same MAC again: same address; never expires; DHCP gives it to that MAC.
        assert_eq!(s.reserve(a, None, 10), Some(ip_a));
        let leases = s.leases(u64::MAX - 1);
        assert_eq!(leases.len(), 1);
        assert_eq!(leases[0].state, LeaseState::Reserved);
        let (got, _) = dora(&mut s, a, None, 1000);
        assert_eq!(got, ip_a);
        assert_eq!(s.leases(u64::MAX - 1)[0].state, LeaseState::Reserved);
        // Another MAC neither gets it by DHCP nor by reservation.
        let (got_b, _) = dora(&mut s, b, None, 2000);
        assert_ne!(got_b, ip_a);
        assert_eq!(s.reserve(b, Some(ip_a), 3000), None);
        // A wanted address outside the pool but inside the subnet is fine; outside is not.
        let mut c = base_cfg();
        c.range_end = Ipv4Addr::new(10, 88, 0, 100);
        let mut s2 = DhcpServer::new(c).expect("server");
        let out_of_pool = Ipv4Addr::new(10, 88, 0, 250);
        assert_eq!(s2.reserve(b, Some(out_of_pool), 0), Some(out_of_pool));
        assert_eq!(s2.reserve(a, Some(Ipv4Addr::new(10, 89, 0, 5)), 0), None);
        // Only the reserving MAC gives it back.
        assert!(!s.unreserve(ip_a, b));
        assert!(s.unreserve(ip_a, a));
        assert!(s.leases(5000).iter().all(|l| l.ip != ip_a));
    }
}
