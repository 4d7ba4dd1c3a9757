//! Cluster mode: the server hands out only addresses this node has claimed in the cluster's
//! store (etcd, see `control::cluster`), so two nodes serving one network never lease the same
//! address.
//!
//! # Theory of operation
//!
//! [`DhcpServer::restrict_to_claims`] turns the mode on with no address at all: until the
//! cluster thread claims some ([`DhcpServer::add_claim`]), DISCOVERs go unanswered and
//! REQUESTs are NAKed, never a guess. The thread keeps a few spare claims ahead of demand
//! ([`DhcpServer::spare_claims`]), so a client's exchange never waits on the store. When the
//! store is unreachable it gives the spares up ([`DhcpServer::drop_spare_claims`]): no new
//! address is handed out, while the addresses in use (bound, offered, reserved) stay claimed and
//! their clients keep renewing them. An address found to be someone else's is dropped
//! ([`DhcpServer::remove_claim`]); its client's next renewal is NAKed and it starts over.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use super::DhcpServer;

impl DhcpServer {
    /// Cluster mode: from now on only claimed addresses are offered, acknowledged or reserved
    /// (none yet).
    pub fn restrict_to_claims(&mut self) {
        if self.claimed.is_none() {
            self.claimed = Some(BTreeSet::new());
        }
    }

    /// The claimed addresses (None outside cluster mode).
    pub fn claims(&self) -> Option<&BTreeSet<Ipv4Addr>> {
        self.claimed.as_ref()
    }

    /// Adds a claimed address (cluster mode only; false otherwise or if it was there).
    pub fn add_claim(&mut self, ip: Ipv4Addr) -> bool {
        self.claimed.as_mut().is_some_and(|c| c.insert(ip))
    }

    /// Forgets a claim (the store says the address is another node's).
    pub fn remove_claim(&mut self, ip: Ipv4Addr) -> bool {
        self.claimed.as_mut().is_some_and(|c| c.remove(&ip))
    }

    /// Addresses in use at `now_ms`: offered, bound or reserved.
    pub fn in_use(&mut self, now_ms: u64) -> BTreeSet<Ipv4Addr> {
        self.purge(now_ms);
        self.bindings.keys().copied().collect()
    }

    /// Claimed addresses of the pool not in use at `now_ms` (what the next clients get; a
    /// port's fixed address outside the pool, once free, is not one).
    pub fn spare_claims(&mut self, now_ms: u64) -> usize {
        self.purge(now_ms);
        let pool = self.cfg.range_start..=self.cfg.range_end;
        self.claimed.as_ref().map_or(0, |c| {
            c.iter()
                .filter(|ip| pool.contains(*ip) && !self.bindings.contains_key(ip))
                .count()
        })
    }

    /// Gives up the spare claims beyond the `keep` lowest (many leases ended: the pool is
    /// shared, other nodes may need them); returns them, for the caller to release in the store.
    pub fn take_excess_spares(&mut self, now_ms: u64, keep: usize) -> Vec<Ipv4Addr> {
        self.purge(now_ms);
        let Some(c) = self.claimed.as_mut() else {
            return Vec::new();
        };
        let excess: Vec<Ipv4Addr> = c
            .iter()
            .copied()
            .filter(|ip| !self.bindings.contains_key(ip))
            .skip(keep)
            .collect();
        for ip in &excess {
            c.remove(ip);
        }
        excess
    }

    /// Gives up the spare claims (the store is unreachable: no new address may be handed
    /// out); returns them. The addresses in use stay.
    pub fn drop_spare_claims(&mut self, now_ms: u64) -> Vec<Ipv4Addr> {
        self.purge(now_ms);
        let Some(c) = self.claimed.as_mut() else {
            return Vec::new();
        };
        let spare: Vec<Ipv4Addr> = c
            .iter()
            .copied()
            .filter(|ip| !self.bindings.contains_key(ip))
            .collect();
        for ip in &spare {
            c.remove(ip);
        }
        spare
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use dhcproto::v4::{DhcpOption, MessageType};

    #[test]
    fn only_claimed_addresses_are_handed_out() {
        let mut s = server();
        s.restrict_to_claims();
        // Nothing claimed: no offer, a REQUEST is NAKed, no reservation.
        assert!(discover(&mut s, mac(1), T0).is_none());
        let mut r = msg(mac(1), MessageType::Request);
        r.opts_mut().insert(DhcpOption::RequestedIpAddress(ip(2)));
        assert_eq!(
            kind(&send(&mut s, &r, T0).expect("nak").0),
            MessageType::Nak
        );
        assert_eq!(s.reserve(mac(1), None, T0), None);
        // Claims are handed out in order, and only they.
        assert!(s.add_claim(ip(50)) && s.add_claim(ip(40)));
        assert!(!s.add_claim(ip(40)));
        assert_eq!(s.spare_claims(T0), 2);
        assert_eq!(dora(&mut s, mac(1), None, T0).0, ip(40));
        assert_eq!(dora(&mut s, mac(2), None, T0).0, ip(50));
        assert!(discover(&mut s, mac(3), T0).is_none());
        assert_eq!(s.spare_claims(T0), 0);
        assert_eq!(s.in_use(T0).len(), 2);
        // A requested address that is not claimed is refused even when free.
        let mut r = msg(mac(3), MessageType::Request);
        r.opts_mut().insert(DhcpOption::RequestedIpAddress(ip(60)));
        assert_eq!(
            kind(&send(&mut s, &r, T0).expect("nak").0),
            MessageType::Nak
        );
        assert_eq!(s.reserve(mac(3), Some(ip(60)), T0), None);
    }

    #[test]
    fn offline_keeps_leases_in_use_and_drops_the_spares() {
        let mut s = server();
        s.restrict_to_claims();
        for n in [10, 11, 12] {
            s.add_claim(ip(n));
        }
        let (a, _) = dora(&mut s, mac(1), None, T0);
        assert_eq!(s.drop_spare_claims(T0), vec![ip(11), ip(12)]);
        // The bound client renews; a new one gets nothing.
        assert_eq!(dora(&mut s, mac(1), None, T0 + 1000).0, a);
        assert!(discover(&mut s, mac(2), T0 + 1000).is_none());
        // A claim lost to another node: the renewal is NAKed.
        assert!(s.remove_claim(a));
        let mut r = msg(mac(1), MessageType::Request);
        r.set_ciaddr(a);
        r.opts_mut().insert(DhcpOption::RequestedIpAddress(a));
        assert_eq!(
            kind(&send(&mut s, &r, T0 + 2000).expect("nak").0),
            MessageType::Nak
        );
    }

    #[test]
    fn excess_spares_are_given_back_and_leases_kept() {
        let mut s = server();
        s.restrict_to_claims();
        for n in 10..20 {
            s.add_claim(ip(n));
        }
        let (a, _) = dora(&mut s, mac(1), None, T0);
        assert_eq!(a, ip(10));
        let back = s.take_excess_spares(T0, 3);
        assert_eq!(back, (14..20).map(ip).collect::<Vec<_>>());
        assert_eq!(s.spare_claims(T0), 3);
        assert!(s.claims().is_some_and(|c| c.contains(&a)));
        assert!(s.take_excess_spares(T0, 3).is_empty());
        // A claim outside the pool (a port's fixed address) is no spare.
        let mut c = base_cfg();
        c.range_end = ip(100);
        let mut s = super::super::DhcpServer::new(c).expect("server");
        s.restrict_to_claims();
        s.add_claim(ip(200));
        assert_eq!(s.spare_claims(T0), 0);
        assert!(discover(&mut s, mac(1), T0).is_none());
    }

    #[test]
    fn outside_cluster_mode_nothing_changes() {
        let mut s = server();
        assert!(s.claims().is_none());
        assert!(!s.add_claim(ip(9)));
        assert_eq!(dora(&mut s, mac(1), None, T0).0, ip(2));
        assert!(s.drop_spare_claims(T0).is_empty());
    }
}
