//! The per-frame check: does every source address a frame carries belong to its ingress port?
//!
//! Reads the Ethernet source, then by EtherType the ARP sender, the IPv4 source (and the UDP
//! ports of a DHCP server message), or the IPv6 source behind any extension headers (and the
//! ICMPv6 type and NDP options, the UDP port of a DHCPv6 server message). An address the port
//! owns passes on a few relaxed loads ([`PortOwned`]'s fast slots); one it does not own yet is
//! claimed if it may be ([`NetGuard::claim_mac`], [`NetGuard::claim_ip`]), else the frame is
//! dropped under the reason that names what was wrong.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::Ordering;

use super::{Claim, ClaimError, NetGuard, PortOwned};
use crate::bridge::{DropReason, PortId};
use crate::wire::{L2Header, Mac};

impl NetGuard {
    /// The per-frame check of a frame `data` (parsed as `h`) from port `port`, which owns
    /// `owned`. `secured` is the port's own setting (`None`: the network's default). `Ok` lets
    /// the frame go on to learning and forwarding.
    pub fn check(
        &self,
        port: PortId,
        owned: &PortOwned,
        secured: Option<bool>,
        h: &L2Header,
        data: &[u8],
    ) -> Result<(), DropReason> {
        if !secured.unwrap_or_else(|| self.enabled()) {
            // Unchecked: anything but what others own.
            if self.any.load(Ordering::Relaxed) && self.mac_owner(h.src).is_some_and(|o| o != port)
            {
                return Err(DropReason::SpoofedSource);
            }
            return Ok(());
        }
        if !owned.has_mac(h.src) {
            self.claim_mac(port, h.src).map_err(|e| match e {
                ClaimError::Limit(_) => DropReason::AddressLimit,
                _ => DropReason::SpoofedSource,
            })?;
        }
        let l3 = data.get(h.header_len..).unwrap_or_default();
        match h.ethertype {
            0x0806 => self.check_arp(port, owned, l3),
            0x0800 => self.check_ipv4(port, owned, l3),
            0x86dd => self.check_ipv6(port, owned, l3),
            // A second VLAN tag: the inner frame could carry any source unseen.
            0x8100 | 0x88a8 | 0x9100 => Err(DropReason::SpoofedSource),
            _ => Ok(()),
        }
    }

    fn own_mac(
        &self,
        port: PortId,
        set: &PortOwned,
        mac: Mac,
        why: DropReason,
    ) -> Result<(), DropReason> {
        if set.has_mac(mac) {
            return Ok(());
        }
        self.claim_mac(port, mac).map_err(|_| why)
    }

    fn own_ip(
        &self,
        port: PortId,
        set: &PortOwned,
        ip: IpAddr,
        why: DropReason,
    ) -> Result<(), DropReason> {
        if set.has_ip(ip) {
            return Ok(());
        }
        self.claim_ip(port, ip, Claim::Seen).map_err(|_| why)
    }

    fn check_arp(&self, port: PortId, set: &PortOwned, arp: &[u8]) -> Result<(), DropReason> {
        // Ethernet/IPv4 ARP only: htype 1, ptype 0x0800, hlen 6, plen 4.
        if arp.len() < 28 || arp[..6] != [0, 1, 8, 0, 6, 4] {
            return Err(DropReason::SpoofedArp);
        }
        let sha = Mac([arp[8], arp[9], arp[10], arp[11], arp[12], arp[13]]);
        let spa = Ipv4Addr::new(arp[14], arp[15], arp[16], arp[17]);
        self.own_mac(port, set, sha, DropReason::SpoofedArp)?;
        if spa.is_unspecified() {
            return Ok(()); // an ARP probe (RFC 5227)
        }
        self.own_ip(port, set, IpAddr::V4(spa), DropReason::SpoofedArp)
    }

    fn check_ipv4(&self, port: PortId, set: &PortOwned, ip: &[u8]) -> Result<(), DropReason> {
        if ip.len() < 20 || ip[0] >> 4 != 4 {
            return Err(DropReason::SpoofedIp);
        }
        let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        if ihl < 20 {
            return Err(DropReason::SpoofedIp);
        }
        let first_fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff == 0;
        let udp_ports = (ip[9] == 17 && first_fragment)
            .then(|| ip.get(ihl..ihl + 4))
            .flatten()
            .map(|p| {
                (
                    u16::from_be_bytes([p[0], p[1]]),
                    u16::from_be_bytes([p[2], p[3]]),
                )
            });
        if src.is_unspecified() {
            // Only a DHCP client without an address yet.
            return if udp_ports == Some((68, 67)) {
                Ok(())
            } else {
                Err(DropReason::SpoofedIp)
            };
        }
        self.own_ip(port, set, IpAddr::V4(src), DropReason::SpoofedIp)?;
        if udp_ports.is_some_and(|(s, _)| s == 67) {
            return Err(DropReason::RogueServer);
        }
        Ok(())
    }

    fn check_ipv6(&self, port: PortId, set: &PortOwned, ip: &[u8]) -> Result<(), DropReason> {
        use etherparse::{IpNumber, Ipv6Slice};
        if ip.len() < 40 || ip[0] >> 4 != 6 {
            return Err(DropReason::SpoofedIp);
        }
        let mut a = [0u8; 16];
        a.copy_from_slice(&ip[8..24]);
        let src = Ipv6Addr::from(a);
        // The upper layer, behind any extension headers. A packet etherparse cannot walk is
        // dropped: nothing legitimate hides its transport header.
        let Ok(p) = Ipv6Slice::from_slice(ip) else {
            return Err(DropReason::SpoofedIp);
        };
        let payload = p.payload();
        let later_fragment = payload.fragmented
            && p.extensions().clone().into_iter().any(|e| {
                matches!(e, etherparse::Ipv6ExtensionSlice::Fragment(f) if f.fragment_offset().value() != 0)
            });
        if later_fragment {
            // Later fragments carry no transport header: they pass on the owned-source check
            // alone (the first fragment was checked in full).
            return self.own_ip(port, set, IpAddr::V6(src), DropReason::SpoofedIp);
        }
        let body = payload.payload;
        let icmp_type = (payload.ip_number == IpNumber::IPV6_ICMP)
            .then(|| body.first().copied())
            .flatten();
        if payload.fragmented && payload.ip_number == IpNumber::IPV6_ICMP && body.len() < 8 {
            return Err(DropReason::RogueServer);
        }
        if src.is_unspecified() {
            // DAD (neighbour solicitation), router solicitation, MLD reports.
            return match icmp_type {
                Some(133 | 135 | 131 | 143) => Ok(()),
                _ => Err(DropReason::SpoofedIp),
            };
        }
        self.own_ip(port, set, IpAddr::V6(src), DropReason::SpoofedIp)?;
        match icmp_type {
            // Router advertisement, redirect: only the gateway routes here.
            Some(134 | 137) => Err(DropReason::RogueServer),
            // Neighbour solicitation: its source link-layer option must be the port's.
            Some(135) => self.check_nd_options(port, set, body.get(24..), 1),
            // Neighbour advertisement: the target must be the port's, and its target
            // link-layer option.
            Some(136) => {
                let Some(t) = body.get(8..24) else {
                    return Err(DropReason::SpoofedNd);
                };
                let mut b = [0u8; 16];
                b.copy_from_slice(t);
                self.own_ip(
                    port,
                    set,
                    IpAddr::V6(Ipv6Addr::from(b)),
                    DropReason::SpoofedNd,
                )?;
                self.check_nd_options(port, set, body.get(24..), 2)
            }
            _ if payload.ip_number == IpNumber::UDP
                && body.get(..2) == Some(&547u16.to_be_bytes()[..]) =>
            {
                Err(DropReason::RogueServer)
            }
            _ => Ok(()),
        }
    }

    /// Every link-layer address option of type `kind` in NDP options `opts` is the port's.
    fn check_nd_options(
        &self,
        port: PortId,
        set: &PortOwned,
        opts: Option<&[u8]>,
        kind: u8,
    ) -> Result<(), DropReason> {
        let mut opts = opts.unwrap_or_default();
        while opts.len() >= 2 {
            let len = usize::from(opts[1]) * 8;
            if len == 0 || len > opts.len() {
                return Err(DropReason::SpoofedNd);
            }
            if opts[0] == kind {
                let Some(m) = opts.get(2..8) else {
                    return Err(DropReason::SpoofedNd);
                };
                let mac = Mac([m[0], m[1], m[2], m[3], m[4], m[5]]);
                self.own_mac(port, set, mac, DropReason::SpoofedNd)?;
            }
            opts = &opts[len..];
        }
        Ok(())
    }
}
