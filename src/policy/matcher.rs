//! The pure part of policy: the header fields a rule looks at ([`Packet`], read from a frame or
//! an IP packet without allocating) and whether a rule matches them ([`matches()`],
//! [`first_match`]).
//!
//! Fragments: the first fragment carries the transport header and matches like a whole
//! packet. A later fragment (IPv4 offset > 0, or an IPv6 fragment header with offset > 0) has
//! no ports and no ICMP type: it matches only rules without port and ICMP-type conditions
//! (addresses, protocol, direction), as in iptables. A first fragment cut before its ports is
//! treated the same way.

use std::net::IpAddr;

use super::rule::{Direction, Proto, Rule};

/// Which fragment a packet is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frag {
    /// Not fragmented, or the first fragment.
    Whole,
    /// A later fragment: no transport header.
    Later,
}

/// What rules match on, read from one IP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IP protocol number (after IPv6 extension headers).
    pub proto: u8,
    /// TCP/UDP source port (`None`: not TCP/UDP, a later fragment, or cut short).
    pub sport: Option<u16>,
    /// TCP/UDP destination port.
    pub dport: Option<u16>,
    /// ICMP/ICMPv6 type.
    pub icmp_type: Option<u8>,
    /// Fragment position.
    pub frag: Frag,
}

const ETH_IPV4: u16 = 0x0800;
const ETH_IPV6: u16 = 0x86dd;
/// IPv6 extension headers walked at most (hop-by-hop, routing, destination options, fragment).
const MAX_EXT: usize = 8;

impl Packet {
    /// Reads the IP packet of an Ethernet frame (after at most one VLAN tag); `None` for
    /// non-IP frames (ARP, ...) and IP headers cut short.
    pub fn from_frame(frame: &[u8]) -> Option<Packet> {
        let h = crate::wire::L2Header::parse(frame).ok()?;
        match h.ethertype {
            ETH_IPV4 | ETH_IPV6 => Packet::from_ip(frame.get(h.header_len..)?),
            _ => None,
        }
    }

    /// Reads an IP packet (no Ethernet header); `None` if it is not IPv4/IPv6 or its header
    /// is cut short.
    pub fn from_ip(ip: &[u8]) -> Option<Packet> {
        let (src, dst) = crate::wire::ip::addresses(ip)?;
        let (proto, l4, frag) = match ip.first()? >> 4 {
            4 => {
                let ihl = usize::from(ip.first()? & 0x0f) * 4;
                if ihl < 20 {
                    return None;
                }
                let off = u16::from_be_bytes([*ip.get(6)?, *ip.get(7)?]) & 0x1fff;
                let frag = if off == 0 { Frag::Whole } else { Frag::Later };
                (*ip.get(9)?, ihl, frag)
            }
            _ => {
                let mut next = *ip.get(6)?;
                let mut at = 40usize;
                let mut frag = Frag::Whole;
                for _ in 0..MAX_EXT {
                    match next {
                        0 | 43 | 60 => {
                            let len = (usize::from(*ip.get(at + 1)?) + 1) * 8;
                            next = *ip.get(at)?;
                            at += len;
                        }
                        44 => {
                            let off = u16::from_be_bytes([*ip.get(at + 2)?, *ip.get(at + 3)?]) >> 3;
                            if off != 0 {
                                frag = Frag::Later;
                            }
                            next = *ip.get(at)?;
                            at += 8;
                        }
                        _ => break,
                    }
                }
                (next, at, frag)
            }
        };
        let mut p = Packet {
            src,
            dst,
            proto,
            sport: None,
            dport: None,
            icmp_type: None,
            frag,
        };
        if frag == Frag::Whole {
            match proto {
                6 | 17 => {
                    if let Some(b) = ip.get(l4..l4 + 4) {
                        p.sport = Some(u16::from_be_bytes([b[0], b[1]]));
                        p.dport = Some(u16::from_be_bytes([b[2], b[3]]));
                    }
                }
                1 | 58 => p.icmp_type = ip.get(l4).copied(),
                _ => {}
            }
        }
        Some(p)
    }
}

fn in_net(n: &Option<ipnet::IpNet>, a: IpAddr) -> bool {
    n.as_ref().is_none_or(|n| n.contains(&a))
}

/// True when `rule` matches packet `p` seen in direction `dir` (`Any`: a network rule
/// applied to traffic between its guests, where only direction-less rules apply). Pure, no
/// allocation.
pub fn matches(rule: &Rule, dir: Direction, p: &Packet) -> bool {
    if rule.direction != Direction::Any && rule.direction != dir {
        return false;
    }
    if let Some(n) = rule.proto.number()
        && n != p.proto
    {
        return false;
    }
    // A family-specific rule (by its addresses or its ICMP flavour) skips the other family.
    if matches!(rule.proto, Proto::Icmp) && !p.src.is_ipv4() {
        return false;
    }
    if !in_net(&rule.src, p.src) || !in_net(&rule.dst, p.dst) {
        return false;
    }
    let port_ok = |r: &Option<super::rule::PortRange>, v: Option<u16>| match r {
        None => true,
        Some(r) => v.is_some_and(|v| r.contains(v)),
    };
    if !port_ok(&rule.src_port, p.sport) || !port_ok(&rule.dst_port, p.dport) {
        return false;
    }
    match rule.icmp_type {
        None => true,
        Some(t) => p.icmp_type == Some(t),
    }
}

/// The index of the first rule of `rules` that matches `p` in direction `dir`.
pub fn first_match<'a>(
    rules: impl IntoIterator<Item = &'a Rule>,
    dir: Direction,
    p: &Packet,
) -> Option<usize> {
    rules.into_iter().position(|r| matches(r, dir, p))
}

#[cfg(test)]
mod tests {
    use super::super::rule::{Action, RuleSpec};
    use super::*;

    fn rule(kv: &[(&str, &str)]) -> Rule {
        let mut r = RuleSpec::new("deny");
        for (k, v) in kv {
            r.set(k, v).expect("key");
        }
        r.compile("t").expect("valid")
    }

    fn v4(proto: u8, src: [u8; 4], dst: [u8; 4], l4: &[u8], frag_off: u16) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 0, 0, 0];
        p.extend(frag_off.to_be_bytes());
        p.extend([64, proto, 0, 0]);
        p.extend(src);
        p.extend(dst);
        p.extend(l4);
        p
    }

    fn eth(ethertype: u16, ip: &[u8]) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1];
        f.extend(ethertype.to_be_bytes());
        f.extend(ip);
        f
    }

    fn tcp(sport: u16, dport: u16) -> Vec<u8> {
        let mut t = sport.to_be_bytes().to_vec();
        t.extend(dport.to_be_bytes());
        t.extend([0u8; 16]);
        t
    }

    #[test]
    fn reads_ipv4_tcp_and_icmp_from_frames() {
        let f = eth(
            ETH_IPV4,
            &v4(6, [10, 88, 0, 5], [10, 88, 0, 6], &tcp(40000, 22), 0),
        );
        let p = Packet::from_frame(&f).expect("ip");
        assert_eq!((p.proto, p.sport, p.dport), (6, Some(40000), Some(22)));
        assert_eq!(p.dst, IpAddr::from([10, 88, 0, 6]));
        let f = eth(
            ETH_IPV4,
            &v4(1, [10, 88, 0, 5], [10, 88, 0, 6], &[8, 0, 0, 0], 0),
        );
        assert_eq!(Packet::from_frame(&f).expect("ip").icmp_type, Some(8));
        // ARP and runts are not IP.
        assert_eq!(Packet::from_frame(&eth(0x0806, &[0u8; 28])), None);
        assert_eq!(Packet::from_frame(&eth(ETH_IPV4, &[0x45, 0, 0])), None);
        // Cut before the ports: no ports, still a packet.
        let p = Packet::from_ip(&v4(6, [1, 1, 1, 1], [2, 2, 2, 2], &[0, 1], 0)).expect("ip");
        assert_eq!(p.dport, None);
    }

    #[test]
    fn reads_ipv6_through_extension_headers() {
        let mut ip = vec![0x60, 0, 0, 0, 0, 0, 0, 64];
        ip.extend("fd00::5".parse::<std::net::Ipv6Addr>().expect("a").octets());
        ip.extend("fd00::6".parse::<std::net::Ipv6Addr>().expect("a").octets());
        ip[6] = 0; // hop-by-hop, then a fragment header, then UDP
        ip.extend([44, 0, 0, 0, 0, 0, 0, 0]);
        ip.extend([17, 0, 0, 0, 0, 0, 0, 1]);
        ip.extend(tcp(5353, 53));
        let p = Packet::from_ip(&ip).expect("ip");
        assert_eq!((p.proto, p.dport, p.frag), (17, Some(53), Frag::Whole));
        // The same as a later fragment (offset 8): no ports.
        ip[40 + 8 + 2] = 0;
        ip[40 + 8 + 3] = 8;
        let p = Packet::from_ip(&ip).expect("ip");
        assert_eq!((p.proto, p.dport, p.frag), (17, None, Frag::Later));
        let r = rule(&[("proto", "udp"), ("dst", "fd00::/64")]);
        assert!(matches(&r, Direction::Ingress, &p), "addresses only");
        let r = rule(&[("proto", "udp"), ("dst_port", "53")]);
        assert!(
            !matches(&r, Direction::Ingress, &p),
            "no ports on a later fragment"
        );
        let r = rule(&[("proto", "icmpv6"), ("icmp_type", "128")]);
        let mut echo = ip[..40].to_vec();
        echo[6] = 58;
        echo.extend([128, 0, 0, 0]);
        assert!(matches(
            &r,
            Direction::Egress,
            &Packet::from_ip(&echo).expect("ip")
        ));
    }

    #[test]
    fn ports_ranges_cidrs_and_directions() {
        let p = Packet::from_ip(&v4(6, [10, 88, 0, 5], [10, 88, 0, 6], &tcp(40000, 22), 0))
            .expect("ip");
        assert!(matches(
            &rule(&[("proto", "tcp"), ("dst_port", "22")]),
            Direction::Any,
            &p
        ));
        assert!(matches(
            &rule(&[("proto", "tcp"), ("dst_port", "20-22")]),
            Direction::Any,
            &p
        ));
        assert!(!matches(
            &rule(&[("proto", "tcp"), ("dst_port", "23-30")]),
            Direction::Any,
            &p
        ));
        assert!(!matches(&rule(&[("proto", "udp")]), Direction::Any, &p));
        assert!(matches(
            &rule(&[("proto", "tcp"), ("src_port", "40000-65535")]),
            Direction::Any,
            &p
        ));
        assert!(matches(
            &rule(&[("dst", "10.88.0.0/24")]),
            Direction::Any,
            &p
        ));
        assert!(!matches(
            &rule(&[("dst", "10.88.1.0/24")]),
            Direction::Any,
            &p
        ));
        assert!(
            !matches(&rule(&[("src", "fd00::/8")]), Direction::Any, &p),
            "other family"
        );
        assert!(matches(&rule(&[("src", "10.88.0.5")]), Direction::Any, &p));
        let eg = rule(&[("direction", "egress")]);
        assert!(matches(&eg, Direction::Egress, &p));
        assert!(!matches(&eg, Direction::Ingress, &p));
        assert!(
            !matches(&eg, Direction::Any, &p),
            "between guests: only direction-less"
        );
        // Later IPv4 fragment: addresses and protocol only.
        let f = Packet::from_ip(&v4(6, [10, 88, 0, 5], [10, 88, 0, 6], &[9; 8], 185)).expect("ip");
        assert_eq!(f.frag, Frag::Later);
        assert!(!matches(
            &rule(&[("proto", "tcp"), ("dst_port", "0-65535")]),
            Direction::Any,
            &f
        ));
        assert!(matches(&rule(&[("proto", "tcp")]), Direction::Any, &f));
    }

    #[test]
    fn icmp_types_and_first_match_wins() {
        let echo =
            Packet::from_ip(&v4(1, [10, 88, 0, 5], [10, 88, 0, 6], &[8, 0, 0, 0], 0)).expect("ip");
        let reply =
            Packet::from_ip(&v4(1, [10, 88, 0, 6], [10, 88, 0, 5], &[0, 0, 0, 0], 0)).expect("ip");
        let r = rule(&[("proto", "icmp"), ("icmp_type", "8")]);
        assert!(matches(&r, Direction::Any, &echo));
        assert!(!matches(&r, Direction::Any, &reply));
        let mut allow = RuleSpec::new("allow");
        allow.src = Some("10.88.0.5".into());
        let rules = [allow.compile("t").expect("valid"), r, rule(&[])];
        assert_eq!(first_match(&rules, Direction::Any, &echo), Some(0));
        assert_eq!(first_match(&rules, Direction::Any, &reply), Some(2));
        assert_eq!(rules[2].action, Action::Deny);
        assert_eq!(first_match(&rules[1..2], Direction::Any, &reply), None);
    }
}
