//! IPv6 neighbour discovery for the gateway (RFC 4861) and router advertisements (RFC 4861,
//! RFC 8106 for RDNSS).
//!
//! The gateway owns two IPv6 addresses: a link-local one derived from its MAC (EUI-64) and the
//! network's ULA gateway address (`prefix::1`). It answers neighbour solicitations for both,
//! answers router solicitations with a router advertisement, and sends unsolicited ones
//! periodically. The advertisement carries the prefix (on-link, autonomous: SLAAC), the MTU, the
//! gateway's link-layer address and its DNS server (RDNSS), so a guest with `accept_ra` gets an
//! address, a default route and a resolver with no DHCPv6.
//!
//! Headers go through etherparse (which computes the ICMPv6 checksum over the pseudo-header);
//! the NDP options, which etherparse only reads, are written here: each is a type, a length in
//! units of 8 bytes, and a fixed layout.

use std::net::Ipv6Addr;

use etherparse::icmpv6::{NeighborAdvertisementHeader, RouterAdvertisementHeader};
use etherparse::{Icmpv6Type, PacketBuilder};
use ipnet::Ipv6Net;

use crate::wire::Mac;

/// The hop limit every NDP message must carry (RFC 4861 §7.1).
pub const NDP_HOP_LIMIT: u8 = 255;
/// Most DNS servers one RDNSS option can carry (its length byte counts 8-byte units).
pub const MAX_RDNSS: usize = 127;

/// All-nodes multicast.
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// The EUI-64 link-local address for `mac` (fe80::/64).
pub fn link_local(mac: Mac) -> Ipv6Addr {
    let m = mac.0;
    Ipv6Addr::from([
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        m[0] ^ 0x02,
        m[1],
        m[2],
        0xff,
        0xfe,
        m[3],
        m[4],
        m[5],
    ])
}

/// The Ethernet multicast address for an IPv6 multicast address (33:33 + low 32 bits).
pub fn multicast_mac(addr: Ipv6Addr) -> Mac {
    let o = addr.octets();
    Mac([0x33, 0x33, o[12], o[13], o[14], o[15]])
}

/// The solicited-node multicast address of `addr` (ff02::1:ffXX:XXXX).
pub fn solicited_node(addr: Ipv6Addr) -> Ipv6Addr {
    let o = addr.octets();
    Ipv6Addr::from([
        0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, o[13], o[14], o[15],
    ])
}

fn lladdr_option(kind: u8, mac: Mac) -> [u8; 8] {
    let m = mac.0;
    [kind, 1, m[0], m[1], m[2], m[3], m[4], m[5]]
}

fn write(builder: PacketBuilder_, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(builder.size(payload.len()));
    // Writing into a Vec cannot fail.
    let _ = builder.write(&mut out, payload);
    out
}

type PacketBuilder_ = etherparse::PacketBuilderStep<etherparse::Icmpv6Header>;

/// A neighbour advertisement for `target` (one of our addresses), answering a solicitation from
/// `dst_ip`/`dst_mac`; to all-nodes when the solicitation came from `::` (DAD).
pub fn neighbor_advert(
    gw_mac: Mac,
    src_ip: Ipv6Addr,
    target: Ipv6Addr,
    dst_ip: Ipv6Addr,
    dst_mac: Mac,
) -> Vec<u8> {
    let (dst_ip, dst_mac, solicited) = if dst_ip.is_unspecified() {
        (ALL_NODES, multicast_mac(ALL_NODES), false)
    } else {
        (dst_ip, dst_mac, true)
    };
    let b = PacketBuilder::ethernet2(gw_mac.0, dst_mac.0)
        .ipv6(src_ip.octets(), dst_ip.octets(), NDP_HOP_LIMIT)
        .icmpv6(Icmpv6Type::NeighborAdvertisement(
            NeighborAdvertisementHeader {
                router: true,
                solicited,
                r#override: true,
            },
        ));
    let mut payload = Vec::with_capacity(24);
    payload.extend_from_slice(&target.octets());
    payload.extend_from_slice(&lladdr_option(2, gw_mac));
    write(b, &payload)
}

/// A neighbour solicitation from the gateway (`src_ip`, its link-local address) for `target`,
/// to the target's solicited-node multicast group, with the gateway's link-layer address.
pub fn neighbor_solicit(gw_mac: Mac, src_ip: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
    let dst = solicited_node(target);
    let b = PacketBuilder::ethernet2(gw_mac.0, multicast_mac(dst).0)
        .ipv6(src_ip.octets(), dst.octets(), NDP_HOP_LIMIT)
        .icmpv6(Icmpv6Type::NeighborSolicitation);
    let mut payload = Vec::with_capacity(24);
    payload.extend_from_slice(&target.octets());
    payload.extend_from_slice(&lladdr_option(1, gw_mac));
    write(b, &payload)
}

/// What goes into a router advertisement.
#[derive(Debug, Clone)]
pub struct RaParams {
    /// The gateway's MAC.
    pub gw_mac: Mac,
    /// The on-link, autonomous prefix (a /64 for SLAAC).
    pub prefix: Ipv6Net,
    /// The link MTU.
    pub mtu: u32,
    /// DNS servers (RDNSS).
    pub dns: Vec<Ipv6Addr>,
    /// Router lifetime in seconds (0 = not a default router).
    pub router_lifetime: u16,
}

/// How many of `p.dns` a router advertisement carries: the RDNSS length byte counts 8-byte
/// units (1 + 2 per address), so at most [`MAX_RDNSS`]; fewer if the advertisement would not fit
/// the link MTU (IPv6 40 + ICMPv6 8 + 56 bytes of other options + 8 of RDNSS header).
pub fn rdnss_count(p: &RaParams) -> usize {
    let room = (p.mtu as usize).saturating_sub(40 + 8 + 56 + 8) / 16;
    p.dns.len().min(MAX_RDNSS).min(room)
}

/// A router advertisement from the gateway's link-local address to `dst_ip`/`dst_mac`
/// (all-nodes for unsolicited ones).
pub fn router_advert(p: &RaParams, dst_ip: Ipv6Addr, dst_mac: Mac) -> Vec<u8> {
    let src = link_local(p.gw_mac);
    let b = PacketBuilder::ethernet2(p.gw_mac.0, dst_mac.0)
        .ipv6(src.octets(), dst_ip.octets(), NDP_HOP_LIMIT)
        .icmpv6(Icmpv6Type::RouterAdvertisement(RouterAdvertisementHeader {
            cur_hop_limit: 64,
            managed_address_config: false,
            other_config: false,
            router_lifetime: p.router_lifetime,
        }));
    let mut o = Vec::with_capacity(96);
    // Reachable time and retrans timer: unspecified.
    o.extend_from_slice(&[0u8; 8]);
    // Source link-layer address.
    o.extend_from_slice(&lladdr_option(1, p.gw_mac));
    // MTU (type 5, len 1).
    o.extend_from_slice(&[5, 1, 0, 0]);
    o.extend_from_slice(&p.mtu.to_be_bytes());
    // Prefix information (type 3, len 4): on-link + autonomous, valid 1 day, preferred 4 h.
    o.extend_from_slice(&[3, 4, p.prefix.prefix_len(), 0xc0]);
    o.extend_from_slice(&86_400u32.to_be_bytes());
    o.extend_from_slice(&14_400u32.to_be_bytes());
    o.extend_from_slice(&[0u8; 4]);
    o.extend_from_slice(&p.prefix.network().octets());
    // RDNSS (type 25, len 1 + 2 per address), lifetime 1 h.
    let n = rdnss_count(p);
    if n > 0 {
        o.push(25);
        o.push((1 + 2 * n) as u8);
        o.extend_from_slice(&[0, 0]);
        o.extend_from_slice(&3600u32.to_be_bytes());
        for a in &p.dns[..n] {
            o.extend_from_slice(&a.octets());
        }
    }
    write(b, &o)
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{Icmpv6Slice, Ipv6Slice};

    const GW: Mac = Mac([0x02, 0x11, 0x22, 0x33, 0x44, 0x55]);

    #[test]
    fn addresses() {
        assert_eq!(
            link_local(GW),
            "fe80::11:22ff:fe33:4455".parse::<Ipv6Addr>().expect("addr")
        );
        let a: Ipv6Addr = "fd88::1234:5678".parse().expect("addr");
        assert_eq!(
            solicited_node(a),
            "ff02::1:ff34:5678".parse::<Ipv6Addr>().expect("addr")
        );
        assert_eq!(multicast_mac(ALL_NODES), Mac([0x33, 0x33, 0, 0, 0, 1]));
    }

    #[test]
    fn advert_and_ra_have_valid_checksums() {
        let guest: Ipv6Addr = "fd88::9".parse().expect("addr");
        let na = neighbor_advert(
            GW,
            "fd88::1".parse().expect("a"),
            "fd88::1".parse().expect("a"),
            guest,
            Mac([2, 0, 0, 0, 0, 9]),
        );
        let ip = Ipv6Slice::from_slice(&na[14..]).expect("ipv6");
        assert_eq!(ip.header().hop_limit(), 255);
        let icmp = Icmpv6Slice::from_slice(ip.payload().payload).expect("icmp");
        assert!(icmp.is_checksum_valid(ip.header().source(), ip.header().destination()));
        assert!(matches!(icmp.icmp_type(), Icmpv6Type::NeighborAdvertisement(h) if h.solicited));

        let ra = router_advert(
            &RaParams {
                gw_mac: GW,
                prefix: "fd88::/64".parse().expect("net"),
                mtu: 1500,
                dns: vec!["fd88::1".parse().expect("a")],
                router_lifetime: 1800,
            },
            ALL_NODES,
            multicast_mac(ALL_NODES),
        );
        let ip = Ipv6Slice::from_slice(&ra[14..]).expect("ipv6");
        let icmp = Icmpv6Slice::from_slice(ip.payload().payload).expect("icmp");
        assert!(icmp.is_checksum_valid(ip.header().source(), ip.header().destination()));
        match icmp.icmp_type() {
            Icmpv6Type::RouterAdvertisement(h) => assert_eq!(h.router_lifetime, 1800),
            other => panic!("{other:?}"),
        }
        // 8 (times) + 8 (SLLA) + 8 (MTU) + 32 (prefix) + 24 (RDNSS)
        assert_eq!(icmp.payload().len(), 80);
    }
}
