//! `ndp_ra`: the pure parts of `usernet::gateway::ndp` — the address helpers and the
//! neighbour/router advertisement builders — fed with fuzzed parameters, plus the ICMPv6
//! parsing the gateway does before calling them.
//!
//! Input: `[gw_mac: 6][prefix: 16][prefix_len % 129][mtu: u32][router_lifetime: u16][n % 128][n DNS
//! addresses: 16 each][frame...]` (fields past the end read as zeros). The frame goes through
//! the gateway's path (`State::ipv6` in src/gateway/mod.rs, which is private, so it is mirrored
//! here with the same etherparse calls): Ethernet header, IPv6, addressed to one of the
//! gateway's addresses or its multicast groups, not fragmented, ICMPv6 with a valid checksum;
//! a neighbour solicitation for one of the gateway's addresses gets `neighbor_advert`, a router
//! solicitation `router_advert`. Independently, `neighbor_advert` and `router_advert` are also
//! called with the fuzzed parameters and addresses taken from the frame.
//!
//! Invariants on every frame built: Ethernet from the gateway's MAC to the expected MAC,
//! EtherType IPv6; IPv6 with hop limit 255, the expected addresses and a payload length that
//! matches the frame; ICMPv6 with a valid checksum (etherparse) and the expected type and
//! flags. A neighbour advertisement carries the target and a target link-layer option with the
//! gateway's MAC (solicited unless answering `::`, then to all-nodes). A router advertisement's
//! options tile its payload exactly (each a non-zero multiple of 8 bytes) and carry the
//! gateway's MAC, the MTU, the prefix (length, network) and, when DNS servers are given, an
//! RDNSS option whose length is `1 + 2n` listing exactly them. The address helpers: the
//! link-local address is fe80::/64 EUI-64 of the MAC, the solicited-node group is
//! ff02::1:ffXX:XXXX of the address's low 24 bits, its MAC 33:33 + the group's low 32 bits.

use std::net::Ipv6Addr;

use etherparse::icmpv6::NeighborSolicitationPayloadSlice;
use etherparse::{Icmpv6Slice, Icmpv6Type, IpNumber, Ipv6Slice};
use ipnet::Ipv6Net;
use usernet::gateway::ndp::{self, ALL_NODES, RaParams};
use usernet::wire::{L2Header, Mac};

use super::Reader;

/// Most DNS servers put in a router advertisement here. `router_advert` writes the RDNSS
/// length byte as `(1 + 2n) as u8`, which wrapped from 128 servers on (fixed: the option now
/// carries at most 127 and only what fits the MTU; `ndp_rdnss_128_servers` in
/// tests/fuzz_regressions.rs replays the input).
pub const MAX_DNS: usize = 255;

/// Parameters read from the front of an input.
pub struct Params {
    /// What goes into router advertisements.
    pub ra: RaParams,
    /// The gateway's address in the prefix (`prefix::1`, as `GatewayConfig::addr6`).
    pub addr6: Ipv6Addr,
}

/// Reads the parameters; returns them and the rest (the frame).
pub fn params(data: &[u8]) -> (Params, &[u8]) {
    let mut r = Reader::new(data);
    let gw_mac = Mac(r.array());
    let net = Ipv6Addr::from(r.array::<16>());
    let plen = r.u8() % 129;
    let prefix = Ipv6Net::new(net, plen)
        .expect("prefix length ≤ 128")
        .trunc();
    let mtu = u32::from_be_bytes(r.array());
    let router_lifetime = u16::from_be_bytes(r.array());
    let n = usize::from(r.u8()) % (MAX_DNS + 1);
    let dns = (0..n).map(|_| Ipv6Addr::from(r.array::<16>())).collect();
    let addr6 = Ipv6Addr::from(u128::from(prefix.network()) | 1);
    (
        Params {
            ra: RaParams {
                gw_mac,
                prefix,
                mtu,
                dns,
                router_lifetime,
            },
            addr6,
        },
        r.rest(),
    )
}

/// Checks the Ethernet and IPv6 headers and the ICMPv6 checksum of a frame built by the
/// gateway; returns the ICMPv6 part.
fn check_frame<'a>(
    frame: &'a [u8],
    gw_mac: Mac,
    dst_mac: Mac,
    src: Ipv6Addr,
    dst: Ipv6Addr,
) -> Icmpv6Slice<'a> {
    let h = L2Header::parse(frame).expect("Ethernet header");
    assert_eq!(
        (h.src, h.dst, h.ethertype, h.vlan),
        (gw_mac, dst_mac, 0x86dd, 0)
    );
    let ip = Ipv6Slice::from_slice(&frame[14..]).expect("IPv6 packet");
    let hdr = ip.header();
    assert_eq!(hdr.hop_limit(), ndp::NDP_HOP_LIMIT);
    assert_eq!((hdr.source_addr(), hdr.destination_addr()), (src, dst));
    assert_eq!(
        usize::from(hdr.payload_length()),
        frame.len() - 14 - 40,
        "IPv6 payload length"
    );
    assert_eq!(ip.payload().ip_number, IpNumber::IPV6_ICMP);
    let icmp = Icmpv6Slice::from_slice(ip.payload().payload).expect("ICMPv6");
    assert!(
        icmp.is_checksum_valid(hdr.source(), hdr.destination()),
        "bad ICMPv6 checksum"
    );
    icmp
}

/// Checks a neighbour advertisement built for `target` in answer to `dst_ip`/`dst_mac`.
fn check_na(
    frame: &[u8],
    gw_mac: Mac,
    src_ip: Ipv6Addr,
    target: Ipv6Addr,
    dst_ip: Ipv6Addr,
    dst_mac: Mac,
) {
    let dad = dst_ip.is_unspecified();
    let (to_ip, to_mac) = if dad {
        (ALL_NODES, ndp::multicast_mac(ALL_NODES))
    } else {
        (dst_ip, dst_mac)
    };
    let icmp = check_frame(frame, gw_mac, to_mac, src_ip, to_ip);
    match icmp.icmp_type() {
        Icmpv6Type::NeighborAdvertisement(h) => {
            assert!(h.router && h.r#override);
            assert_eq!(h.solicited, !dad);
        }
        other => panic!("not a neighbour advertisement: {other:?}"),
    }
    let p = icmp.payload();
    assert_eq!(p.len(), 24);
    assert_eq!(&p[..16], &target.octets());
    assert_eq!(&p[16..18], &[2, 1]);
    assert_eq!(&p[18..24], &gw_mac.0);
}

/// Checks a router advertisement built from `ra` to `dst_ip`/`dst_mac`.
fn check_ra(frame: &[u8], ra: &RaParams, dst_ip: Ipv6Addr, dst_mac: Mac) {
    let icmp = check_frame(
        frame,
        ra.gw_mac,
        dst_mac,
        ndp::link_local(ra.gw_mac),
        dst_ip,
    );
    match icmp.icmp_type() {
        Icmpv6Type::RouterAdvertisement(h) => {
            assert_eq!(h.router_lifetime, ra.router_lifetime);
            assert_eq!(h.cur_hop_limit, 64);
        }
        other => panic!("not a router advertisement: {other:?}"),
    }
    let p = icmp.payload();
    assert!(p.len() >= 8, "no reachable/retrans timers");
    let (mut slla, mut mtu, mut prefix, mut rdnss) = (None, None, None, None);
    let mut i = 8;
    while i < p.len() {
        assert!(i + 2 <= p.len(), "option header past the end at {i}");
        let (kind, units) = (p[i], usize::from(p[i + 1]));
        assert!(units > 0, "option {kind} at {i} has length 0");
        let end = i + 8 * units;
        assert!(
            end <= p.len(),
            "option {kind} at {i} claims {} bytes, {} remain",
            8 * units,
            p.len() - i
        );
        let body = &p[i..end];
        match kind {
            1 => slla = Some(body.to_vec()),
            5 => mtu = Some(body.to_vec()),
            3 => prefix = Some(body.to_vec()),
            25 => rdnss = Some(body.to_vec()),
            _ => panic!("unexpected option {kind}"),
        }
        i = end;
    }
    let slla = slla.expect("source link-layer option");
    assert_eq!(&slla[2..8], &ra.gw_mac.0);
    let mtu = mtu.expect("MTU option");
    assert_eq!(&mtu[4..8], &ra.mtu.to_be_bytes());
    let prefix = prefix.expect("prefix option");
    assert_eq!(prefix.len(), 32);
    assert_eq!(prefix[2], ra.prefix.prefix_len());
    assert_eq!(&prefix[16..32], &ra.prefix.network().octets());
    match rdnss {
        None => assert_eq!(
            usernet::gateway::ndp::rdnss_count(ra),
            0,
            "no RDNSS option for {} servers",
            ra.dns.len()
        ),
        Some(r) => {
            let n = usernet::gateway::ndp::rdnss_count(ra);
            assert!(n <= 127 && n <= ra.dns.len());
            assert_eq!(
                usize::from(r[1]),
                1 + 2 * n,
                "RDNSS length for {} servers",
                ra.dns.len()
            );
            let listed: Vec<Ipv6Addr> = r[8..]
                .chunks_exact(16)
                .map(|c| Ipv6Addr::from(<[u8; 16]>::try_from(c).expect("16 bytes")))
                .collect();
            assert_eq!(listed, ra.dns[..n]);
        }
    }
}

fn check_helpers(mac: Mac, addr: Ipv6Addr) {
    let ll = ndp::link_local(mac);
    let o = ll.octets();
    assert!(ll.is_unicast_link_local());
    assert_eq!(&o[..8], &[0xfe, 0x80, 0, 0, 0, 0, 0, 0]);
    assert_eq!(
        [o[8] ^ 0x02, o[9], o[10], o[13], o[14], o[15]],
        mac.0,
        "EUI-64 of {mac}"
    );
    assert_eq!((o[11], o[12]), (0xff, 0xfe));
    let sn = ndp::solicited_node(addr);
    assert!(sn.is_multicast());
    let s = sn.octets();
    assert_eq!(&s[..13], &[0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff]);
    assert_eq!(&s[13..], &addr.octets()[13..]);
    let m = ndp::multicast_mac(sn);
    assert!(m.is_multicast());
    assert_eq!(m.0, [0x33, 0x33, 0xff, s[13], s[14], s[15]]);
}

/// One input.
pub fn ndp_ra(data: &[u8]) {
    let (p, frame) = params(data);
    let gw_mac = p.ra.gw_mac;
    let ll = ndp::link_local(gw_mac);
    check_helpers(gw_mac, p.addr6);

    // Unsolicited advertisement, as the gateway sends periodically.
    let ra = ndp::router_advert(&p.ra, ALL_NODES, ndp::multicast_mac(ALL_NODES));
    check_ra(&ra, &p.ra, ALL_NODES, ndp::multicast_mac(ALL_NODES));

    // The frame, through the gateway's parsing.
    let Ok(h) = L2Header::parse(frame) else {
        return;
    };
    if h.ethertype != 0x86dd {
        return;
    }
    let Ok(ip) = Ipv6Slice::from_slice(&frame[h.header_len..]) else {
        return;
    };
    let hdr = ip.header();
    let (src, dst) = (hdr.source_addr(), hdr.destination_addr());
    check_helpers(h.src, src);
    // The builders with addresses from the frame, whether or not the gateway would answer.
    let na = ndp::neighbor_advert(gw_mac, dst, src, src, h.src);
    check_na(&na, gw_mac, dst, src, src, h.src);
    let ra = ndp::router_advert(&p.ra, src, h.src);
    check_ra(&ra, &p.ra, src, h.src);

    let is_ours = |a: Ipv6Addr| a == ll || a == p.addr6;
    let ours_sn = dst.is_multicast()
        && (dst == ALL_NODES
            || dst == Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2)
            || dst == ndp::solicited_node(ll)
            || dst == ndp::solicited_node(p.addr6));
    if !is_ours(dst) && !ours_sn || ip.payload().fragmented {
        return;
    }
    if ip.payload().ip_number != IpNumber::IPV6_ICMP {
        return;
    }
    let Ok(icmp) = Icmpv6Slice::from_slice(ip.payload().payload) else {
        return;
    };
    if !icmp.is_checksum_valid(hdr.source(), hdr.destination()) {
        return;
    }
    match icmp.icmp_type() {
        Icmpv6Type::NeighborSolicitation => {
            let Ok(ns) = NeighborSolicitationPayloadSlice::from_slice(icmp.payload()) else {
                return;
            };
            let target = ns.target_address();
            if is_ours(target) {
                let na = ndp::neighbor_advert(gw_mac, target, target, src, h.src);
                check_na(&na, gw_mac, target, target, src, h.src);
            }
        }
        Icmpv6Type::RouterSolicitation => {
            let (to, mac) = if src.is_unspecified() {
                (ALL_NODES, ndp::multicast_mac(ALL_NODES))
            } else {
                (src, h.src)
            };
            let ra = ndp::router_advert(&p.ra, to, mac);
            check_ra(&ra, &p.ra, to, mac);
        }
        _ => {}
    }
}
