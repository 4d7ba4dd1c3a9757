//! IPv4/IPv6 packet views and the packet builders NAT and the gateway share.
//!
//! Views read an IP packet (no Ethernet header) in place: [`transport`] finds the transport
//! header behind an IPv4 (with options) or IPv6 header, [`addresses`] reads the source and
//! destination, [`tcp_endpoints`] both ends of a TCP segment, [`tcp_segment`] the segment
//! itself. None of them panics on any input.
//!
//! Builders write whole IP packets (no Ethernet header) with etherparse, with computed
//! checksums and a TTL / hop limit of [`TTL`]: a UDP datagram ([`build_udp`]), a TCP RST
//! answering a segment ([`tcp_rst`]) and an ICMP/ICMPv6 destination unreachable quoting a
//! packet ([`icmp_unreachable`]).

use std::net::{IpAddr, SocketAddr};

use etherparse::{
    Icmpv4Type, Icmpv6Type, Ipv4HeaderSlice, Ipv6HeaderSlice, PacketBuilder, TcpSlice,
    icmpv4::DestUnreachableHeader, icmpv6::DestUnreachableCode,
};

/// TTL / hop limit of the packets built here.
pub const TTL: u8 = 64;

/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const PROTO_UDP: u8 = 17;

/// Most bytes of the offending packet an ICMPv6 error quotes (RFC 4443 §2.4: the error fits
/// the IPv6 minimum MTU of 1280, less its own 40 + 8 bytes of headers).
const ICMP6_QUOTE: usize = 1232;

/// The transport layer of an IP packet, as [`transport`] finds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transport {
    /// IPv4 (else IPv6).
    pub v4: bool,
    /// IP protocol number of the transport header (6 TCP, 17 UDP, ...).
    pub proto: u8,
    /// Offset of the transport header in the packet.
    pub l4: usize,
}

/// Where the transport header of IP packet `ip` starts (after IPv4 options) and which protocol
/// it is; `None` for anything else or a header cut short. IPv6 extension headers are not
/// walked: Linux's TCP and UDP do not send them with offloads, and NAT does not take them.
pub fn transport(ip: &[u8]) -> Option<Transport> {
    match ip.first()? >> 4 {
        4 => {
            let h = Ipv4HeaderSlice::from_slice(ip).ok()?;
            Some(Transport {
                v4: true,
                proto: h.protocol().0,
                l4: h.slice().len(),
            })
        }
        6 => {
            let h = Ipv6HeaderSlice::from_slice(ip).ok()?;
            Some(Transport {
                v4: false,
                proto: h.next_header().0,
                l4: h.slice().len(),
            })
        }
        _ => None,
    }
}

/// Source and destination address of IP packet `ip`, read from the fixed header (IPv4 options
/// and the header length are not checked: use [`transport`] for a validated header).
pub fn addresses(ip: &[u8]) -> Option<(IpAddr, IpAddr)> {
    match ip.first()? >> 4 {
        4 => {
            let s: [u8; 4] = ip.get(12..16)?.try_into().ok()?;
            let d: [u8; 4] = ip.get(16..20)?.try_into().ok()?;
            Some((IpAddr::from(s), IpAddr::from(d)))
        }
        6 => {
            let s: [u8; 16] = ip.get(8..24)?.try_into().ok()?;
            let d: [u8; 16] = ip.get(24..40)?.try_into().ok()?;
            Some((IpAddr::from(s), IpAddr::from(d)))
        }
        _ => None,
    }
}

/// The header length a TCP header at offset `l4` of `ip` announces (its data offset, in bytes;
/// not checked against 20 or the packet's length).
pub fn tcp_header_len(ip: &[u8], l4: usize) -> Option<usize> {
    Some(usize::from(ip.get(l4.checked_add(12)?)? >> 4) * 4)
}

/// Source, destination and TCP header length of an IP packet carrying TCP.
pub fn tcp_endpoints(packet: &[u8]) -> Option<(SocketAddr, SocketAddr, usize)> {
    let t = transport(packet).filter(|t| t.proto == PROTO_TCP)?;
    let (src, dst) = addresses(packet)?;
    let l4 = t.l4;
    let ports = packet.get(l4..l4 + 4)?;
    let thl = tcp_header_len(packet, l4)?;
    Some((
        SocketAddr::new(src, u16::from_be_bytes([ports[0], ports[1]])),
        SocketAddr::new(dst, u16::from_be_bytes([ports[2], ports[3]])),
        thl,
    ))
}

/// The TCP segment of a whole IP packet (IPv4 or IPv6, its length fields checked).
pub fn tcp_segment(packet: &[u8]) -> Option<TcpSlice<'_>> {
    let payload = match packet.first()? >> 4 {
        4 => {
            etherparse::Ipv4Slice::from_slice(packet)
                .ok()?
                .payload()
                .payload
        }
        6 => {
            etherparse::Ipv6Slice::from_slice(packet)
                .ok()?
                .payload()
                .payload
        }
        _ => return None,
    };
    TcpSlice::from_slice(payload).ok()
}

/// An IP + UDP packet `src` → `dst` carrying `payload`, with its checksum; `None` if the
/// families differ or it is too big.
pub fn build_udp(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Option<Vec<u8>> {
    let b = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => PacketBuilder::ipv4(s.octets(), d.octets(), TTL),
        (IpAddr::V6(s), IpAddr::V6(d)) => PacketBuilder::ipv6(s.octets(), d.octets(), TTL),
        _ => return None,
    }
    .udp(src.port(), dst.port());
    let mut v = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut v, payload).ok()?;
    Some(v)
}

/// An RST answering `seg` (sent by `src` to `dst`), from `dst` to `src` (RFC 9293 §3.10.7.1).
/// Empty if the families differ.
pub fn tcp_rst(src: SocketAddr, dst: SocketAddr, seg: &TcpSlice<'_>) -> Vec<u8> {
    let seg_len = seg.payload().len() as u32 + u32::from(seg.syn()) + u32::from(seg.fin());
    let (seq, ack) = if seg.ack() {
        (seg.acknowledgment_number(), None)
    } else {
        (0, Some(seg.sequence_number().wrapping_add(seg_len)))
    };
    let mut out = Vec::new();
    match (dst.ip(), src.ip()) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let mut t = PacketBuilder::ipv4(a.octets(), b.octets(), TTL)
                .tcp(dst.port(), src.port(), seq, 0)
                .rst();
            if let Some(n) = ack {
                t = t.ack(n);
            }
            let _ = t.write(&mut out, &[]);
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let mut t = PacketBuilder::ipv6(a.octets(), b.octets(), TTL)
                .tcp(dst.port(), src.port(), seq, 0)
                .rst();
            if let Some(n) = ack {
                t = t.ack(n);
            }
            let _ = t.write(&mut out, &[]);
        }
        _ => {}
    }
    out
}

/// Why a destination is unreachable, as an ICMP (v4) or ICMPv6 code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreachable {
    /// No route to the network (ICMP code 0 "net unreachable", ICMPv6 code 0 "no route").
    Net,
    /// The host does not answer (ICMP code 1 "host unreachable", ICMPv6 code 3 "address
    /// unreachable").
    Host,
    /// Nothing listens on the port (ICMP code 3, ICMPv6 code 4).
    Port,
}

/// An ICMP or ICMPv6 destination unreachable quoting `packet` (an IP packet: its header and
/// the first 8 bytes behind it for IPv4, up to 1232 bytes for IPv6), from the packet's
/// destination back to its source. Only the IP header of `packet` is read (its length fields
/// are not checked, so a quote rebuilt from a few header bytes will do); `None` if it is not
/// an IP header.
pub fn icmp_unreachable(packet: &[u8], why: Unreachable) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    match packet.first()? >> 4 {
        4 => {
            let h = Ipv4HeaderSlice::from_slice(packet).ok()?;
            let quote = &packet[..packet.len().min(h.slice().len() + 8)];
            let code = match why {
                Unreachable::Net => DestUnreachableHeader::Network,
                Unreachable::Host => DestUnreachableHeader::Host,
                Unreachable::Port => DestUnreachableHeader::Port,
            };
            let b = PacketBuilder::ipv4(h.destination(), h.source(), TTL)
                .icmpv4(Icmpv4Type::DestinationUnreachable(code));
            out.reserve(b.size(quote.len()));
            b.write(&mut out, quote).ok()?;
        }
        6 => {
            let h = Ipv6HeaderSlice::from_slice(packet).ok()?;
            let quote = &packet[..packet.len().min(ICMP6_QUOTE)];
            let code = match why {
                Unreachable::Net => DestUnreachableCode::NoRoute,
                Unreachable::Host => DestUnreachableCode::Address,
                Unreachable::Port => DestUnreachableCode::Port,
            };
            let b = PacketBuilder::ipv6(h.destination(), h.source(), TTL)
                .icmpv6(Icmpv6Type::DestinationUnreachable(code));
            out.reserve(b.size(quote.len()));
            b.write(&mut out, quote).ok()?;
        }
        _ => return None,
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

    fn syn(v4: bool) -> Vec<u8> {
        let b = if v4 {
            PacketBuilder::ipv4([10, 0, 0, 2], [1, 2, 3, 4], 64)
        } else {
            PacketBuilder::ipv6([0xfd; 16], [0x20; 16], 64)
        };
        let b = b
            .tcp(40000, 80, 1, 65535)
            .syn()
            .options(&[
                etherparse::TcpOptionElement::Noop,
                etherparse::TcpOptionElement::MaximumSegmentSize(1460),
                etherparse::TcpOptionElement::WindowScale(7),
            ])
            .expect("options");
        let mut out = Vec::new();
        b.write(&mut out, &[]).expect("builds");
        out
    }

    #[test]
    fn transport_finds_the_l4_header() {
        let mut v4 = vec![0u8; 24];
        v4[0] = 0x46; // IPv4, 24-byte header (one option word)
        v4[9] = PROTO_TCP;
        assert_eq!(
            transport(&v4),
            Some(Transport {
                v4: true,
                proto: PROTO_TCP,
                l4: 24
            })
        );
        let mut v6 = vec![0u8; 40];
        v6[0] = 0x60;
        v6[6] = PROTO_UDP;
        assert_eq!(transport(&v6).map(|t| (t.v4, t.l4)), Some((false, 40)));
        for bad in [&v4[..10], &v6[..20], &[0x45][..], &[0x44; 30][..], &[][..]] {
            assert_eq!(transport(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn endpoints_of_a_packet() {
        let p = syn(true);
        let (s, d, thl) = tcp_endpoints(&p).expect("tcp");
        assert_eq!(s, "10.0.0.2:40000".parse().expect("addr"));
        assert_eq!(d, "1.2.3.4:80".parse().expect("addr"));
        assert_eq!(thl, 28, "20 bytes + NOP, MSS, window scale");
        assert!(tcp_endpoints(&p[..10]).is_none());
        let p6 = syn(false);
        assert_eq!(tcp_endpoints(&p6).map(|e| e.1.port()), Some(80));
        assert_eq!(tcp_segment(&p6).map(|s| s.syn()), Some(true));
        assert!(tcp_segment(&p6[..50]).is_none());
    }

    #[test]
    fn rst_answers_a_syn() {
        for v4 in [true, false] {
            let p = syn(v4);
            let (s, d, _) = tcp_endpoints(&p).expect("tcp");
            let seg = tcp_segment(&p).expect("seg");
            let rst = tcp_rst(s, d, &seg);
            let (rs, rd, _) = tcp_endpoints(&rst).expect("rst");
            assert_eq!((rs, rd), (d, s));
            let r = tcp_segment(&rst).expect("seg");
            assert!(r.rst() && r.ack());
            assert_eq!(r.acknowledgment_number(), 2, "SYN's sequence number + 1");
        }
    }

    #[test]
    fn unreachable_quotes_and_reverses() {
        for (v4, why) in [(true, Unreachable::Host), (false, Unreachable::Port)] {
            let p = syn(v4);
            let u = icmp_unreachable(&p, why).expect("icmp");
            let pkt = SlicedPacket::from_ip(&u).expect("parse");
            match (&pkt.net, &pkt.transport) {
                (Some(NetSlice::Ipv4(ip)), Some(TransportSlice::Icmpv4(i))) => {
                    assert_eq!(ip.header().destination(), [10, 0, 0, 2]);
                    assert_eq!(
                        i.icmp_type(),
                        Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Host)
                    );
                    assert_eq!(i.payload(), &p[..28]);
                }
                (Some(NetSlice::Ipv6(ip)), Some(TransportSlice::Icmpv6(i))) => {
                    assert_eq!(ip.header().destination(), [0xfd; 16]);
                    assert_eq!(
                        i.icmp_type(),
                        Icmpv6Type::DestinationUnreachable(DestUnreachableCode::Port)
                    );
                    assert_eq!(i.payload(), &p[..]);
                }
                other => panic!("not an ICMP error: {other:?}"),
            }
        }
        assert!(icmp_unreachable(&[0x45, 0], Unreachable::Net).is_none());
        assert!(icmp_unreachable(&[], Unreachable::Net).is_none());
    }

    #[test]
    fn udp_needs_one_family() {
        let a: SocketAddr = "10.0.0.1:1".parse().expect("a");
        let b: SocketAddr = "[fd00::1]:2".parse().expect("b");
        assert!(build_udp(a, b, b"x").is_none());
        let p = build_udp(a, "10.0.0.2:2".parse().expect("c"), b"x").expect("udp");
        assert_eq!(p.len(), 20 + 8 + 1);
    }
}
