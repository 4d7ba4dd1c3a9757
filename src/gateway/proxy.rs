//! The gateway's ARP and NS proxy (cluster mode): it answers ARP requests and IPv6 neighbour
//! solicitations for the addresses of endpoints on other hosts with their MACs, so a guest
//! resolves a remote neighbour without a broadcast crossing the underlay (the VXLAN port does
//! not flood those requests: `link/vxlan/local.rs`). As Linux's vxlan `proxy` flag
//! (Docker's overlay) and Flannel do.
//!
//! The table ([`NeighProxy`]) is filled by the cluster thread from the endpoints other nodes
//! published (swapped whole, `ArcSwap`); the driver reads it for each ARP request or NS it
//! sees, lock-free. The answer's Ethernet source is the gateway's MAC (so no bridge learns
//! the remote MAC on the gateway's port); the ARP sender hardware address and the NA's target
//! link-layer option carry the remote endpoint's MAC.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use etherparse::{ArpEthIpv4Packet, ArpOperation, ArpPacket, Icmpv6Type, PacketBuilder};

use crate::wire::Mac;

/// Remote endpoints' addresses and MACs a gateway answers for.
#[derive(Debug, Default)]
pub struct NeighProxy {
    table: ArcSwap<HashMap<IpAddr, Mac>>,
    /// Answers sent.
    pub answered: AtomicU64,
}

impl NeighProxy {
    /// Replaces the table.
    pub fn set(&self, table: HashMap<IpAddr, Mac>) {
        self.table.store(Arc::new(table));
    }

    /// The MAC `ip` is answered with, if proxied.
    pub fn lookup(&self, ip: IpAddr) -> Option<Mac> {
        self.table.load().get(&ip).copied()
    }

    /// Number of addresses proxied.
    pub fn len(&self) -> usize {
        self.table.load().len()
    }

    /// True when nothing is proxied.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The ARP reply for an ARP `payload` (after the Ethernet header) if it is a request for a
    /// proxied address from a sender with an address: from `gw_mac`, saying the target is at
    /// its remote MAC.
    pub fn arp_reply(&self, gw_mac: Mac, payload: &[u8]) -> Option<Vec<u8>> {
        if self.is_empty() {
            return None;
        }
        let pkt = ArpPacket::from_slice(payload).ok()?;
        let arp = pkt.try_eth_ipv4().ok()?;
        if arp.operation != ArpOperation::REQUEST || arp.sender_ipv4_addr().is_unspecified() {
            return None;
        }
        let target: Ipv4Addr = arp.target_ipv4_addr();
        let mac = self.lookup(IpAddr::V4(target))?;
        let reply = ArpEthIpv4Packet {
            operation: ArpOperation::REPLY,
            sender_mac: mac.0,
            sender_ipv4: target.octets(),
            target_mac: arp.sender_mac,
            target_ipv4: arp.sender_ipv4,
        };
        let b = PacketBuilder::ethernet2(gw_mac.0, arp.sender_mac).arp(ArpPacket::from(reply));
        let mut out = Vec::with_capacity(b.size());
        b.write(&mut out).ok()?;
        self.answered.fetch_add(1, Ordering::Relaxed);
        Some(out)
    }

    /// The neighbour advertisement answering a solicitation for `target` from `src` (MAC
    /// `src_mac`), if `target` is proxied: solicited, not a router, override, with the remote
    /// MAC as target link-layer address.
    pub fn neighbor_advert(
        &self,
        gw_mac: Mac,
        target: Ipv6Addr,
        src: Ipv6Addr,
        src_mac: Mac,
    ) -> Option<Vec<u8>> {
        if self.is_empty() {
            return None;
        }
        let mac = self.lookup(IpAddr::V6(target))?;
        let (dst, dst_mac, solicited) = if src.is_unspecified() {
            let all = super::ndp::ALL_NODES;
            (all, super::ndp::multicast_mac(all), false)
        } else {
            (src, src_mac, true)
        };
        let b = PacketBuilder::ethernet2(gw_mac.0, dst_mac.0)
            .ipv6(target.octets(), dst.octets(), 255)
            .icmpv6(Icmpv6Type::NeighborAdvertisement(
                etherparse::icmpv6::NeighborAdvertisementHeader {
                    router: false,
                    solicited,
                    r#override: true,
                },
            ));
        let mut payload = Vec::with_capacity(24);
        payload.extend_from_slice(&target.octets());
        payload.extend_from_slice(&[2, 1]);
        payload.extend_from_slice(&mac.0);
        let mut out = Vec::with_capacity(b.size(payload.len()));
        b.write(&mut out, &payload).ok()?;
        self.answered.fetch_add(1, Ordering::Relaxed);
        Some(out)
    }
}

impl super::Driver {
    /// Answers a neighbour solicitation for a proxied address (`ip` the packet, `h` its
    /// Ethernet header). True if it was one (answered; the caller is done with it).
    pub(super) fn proxy_ns(
        &mut self,
        h: &crate::wire::L2Header,
        ip: &etherparse::Ipv6Slice,
    ) -> bool {
        use etherparse::{Icmpv6Slice, IpNumber};
        let hdr = ip.header();
        if ip.payload().ip_number != IpNumber::IPV6_ICMP || ip.payload().fragmented {
            return false;
        }
        let Ok(icmp) = Icmpv6Slice::from_slice(ip.payload().payload) else {
            return false;
        };
        if icmp.icmp_type() != Icmpv6Type::NeighborSolicitation
            || !icmp.is_checksum_valid(hdr.source(), hdr.destination())
        {
            return false;
        }
        let Ok(ns) =
            etherparse::icmpv6::NeighborSolicitationPayloadSlice::from_slice(icmp.payload())
        else {
            return false;
        };
        match self.gw.proxy.neighbor_advert(
            self.gw.cfg.mac,
            ns.target_address(),
            hdr.source_addr(),
            h.src,
        ) {
            Some(na) => {
                self.send(na);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GW: Mac = Mac([2, 0, 0, 0, 0, 1]);
    const GUEST: Mac = Mac([2, 0, 0, 0, 0, 9]);
    const REMOTE: Mac = Mac([2, 0, 0, 0, 0, 0x77]);

    #[test]
    fn answers_only_requests_for_proxied_addresses_with_the_remote_mac() {
        let p = NeighProxy::default();
        let remote: Ipv4Addr = "10.0.0.7".parse().expect("ip");
        let req = super::super::arp::request(GUEST, "10.0.0.2".parse().expect("ip"), remote);
        assert_eq!(p.arp_reply(GW, &req[14..]), None, "empty table");
        p.set(HashMap::from([
            (IpAddr::V4(remote), REMOTE),
            (IpAddr::V6("fd00::7".parse().expect("ip")), REMOTE),
        ]));
        let r = p.arp_reply(GW, &req[14..]).expect("answered");
        assert_eq!(&r[..6], &GUEST.0, "to the asker");
        assert_eq!(&r[6..12], &GW.0, "from the gateway");
        let arp = ArpPacket::from_slice(&r[14..]).expect("arp");
        let a = arp.try_eth_ipv4().expect("eth ipv4");
        assert_eq!(a.operation, ArpOperation::REPLY);
        assert_eq!((Mac(a.sender_mac), a.sender_ipv4_addr()), (REMOTE, remote));
        // Another target, a reply, a probe (sender 0.0.0.0), garbage: not answered.
        let other = super::super::arp::request(
            GUEST,
            "10.0.0.2".parse().expect("ip"),
            [10, 0, 0, 8].into(),
        );
        assert_eq!(p.arp_reply(GW, &other[14..]), None);
        let probe = super::super::arp::request(GUEST, Ipv4Addr::UNSPECIFIED, remote);
        assert_eq!(p.arp_reply(GW, &probe[14..]), None);
        for n in 0..req.len() - 14 {
            assert_eq!(p.arp_reply(GW, &req[14..14 + n]), None);
        }
        let na = p
            .neighbor_advert(
                GW,
                "fd00::7".parse().expect("ip"),
                "fd00::2".parse().expect("ip"),
                GUEST,
            )
            .expect("advert");
        assert_eq!(&na[..6], &GUEST.0);
        assert_eq!(&na[na.len() - 6..], &REMOTE.0, "target link-layer address");
        assert!(
            p.neighbor_advert(
                GW,
                "fd00::8".parse().expect("ip"),
                "fd00::2".parse().expect("ip"),
                GUEST
            )
            .is_none()
        );
        assert_eq!(p.answered.load(Ordering::Relaxed), 2);
    }
}
