//! The gateway's IPv6 side: neighbour discovery (NS/NA, RS/RA), ICMPv6 echo, DNS and NAT over
//! IPv6.

use super::*;

impl Driver {
    pub(super) fn is_ours6(&self, a: Ipv6Addr) -> bool {
        a == self.gw.cfg.link_local()
            || Some(a) == self.gw.cfg.addr6()
            || Some(a) == self.gw.cfg.dns6()
    }

    pub(super) fn router_advert(&mut self, dst: Ipv6Addr, mac: Mac) {
        let (Some(prefix), Some(a6)) = (self.gw.cfg.ipv6, self.gw.cfg.addr6()) else {
            return;
        };
        let p = ndp::RaParams {
            gw_mac: self.gw.cfg.mac,
            prefix,
            mtu: u32::from(self.gw.announced_mtu()),
            dns: if self.gw.cfg.dns_silent && self.gw.cfg.dns6().is_some() {
                Vec::new()
            } else {
                vec![self.gw.cfg.dns6().unwrap_or(a6)]
            },
            router_lifetime: 1800,
        };
        inc(&self.gw.counters.router_adverts);
        self.send(ndp::router_advert(&p, dst, mac));
    }

    /// A TCP or UDP packet to one of the gateway's own IPv6 addresses that is not DNS: through
    /// NAT to the host when it is for the gateway's address, else ignored.
    fn for_gateway6(
        &mut self,
        now: Instant,
        packet: &[u8],
        (src, dst): (Ipv6Addr, Ipv6Addr),
        proto: IpNumber,
        body: &[u8],
    ) -> bool {
        if Some(dst) == self.gw.cfg.addr6() {
            self.nat(now, packet, IpAddr::V6(src), IpAddr::V6(dst), proto, body)
        } else {
            inc(&self.gw.counters.ignored);
            true
        }
    }

    pub(super) fn ipv6(&mut self, h: &L2Header, payload: &[u8], now: Instant) -> bool {
        if self.gw.cfg.ipv6.is_none() {
            inc(&self.gw.counters.ignored);
            return true;
        }
        let Ok(ip) = Ipv6Slice::from_slice(payload) else {
            return false;
        };
        let hdr = ip.header();
        let (src, dst) = (hdr.source_addr(), hdr.destination_addr());
        let gw = self.gw.clone();
        let cfg = &gw.cfg;
        let ours = self.is_ours6(dst);
        let ours_sn = dst.is_multicast()
            && (dst == ndp::ALL_NODES
                || dst == Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2)
                || dst == ndp::solicited_node(cfg.link_local())
                || cfg.addr6().is_some_and(|a| dst == ndp::solicited_node(a))
                || cfg.dns6().is_some_and(|a| dst == ndp::solicited_node(a)));
        let packet = payload
            .get(..40 + usize::from(hdr.payload_length()))
            .unwrap_or(payload);
        if ip.payload().ip_number == IpNumber::TCP
            && !self.tcp_checksum_ok(packet, ip.payload().payload)
        {
            return false;
        }
        if !ours && !ours_sn {
            if dst.is_multicast() || ip.payload().fragmented {
                inc(&self.gw.counters.ignored);
                return true;
            }
            if !src.is_unspecified() && !src.is_multicast() {
                self.learn(IpAddr::V6(src), h.src);
            }
            return self.nat(
                now,
                packet,
                IpAddr::V6(src),
                IpAddr::V6(dst),
                ip.payload().ip_number,
                ip.payload().payload,
            );
        }
        if ip.payload().fragmented {
            inc(&self.gw.counters.ignored);
            return true;
        }
        if !src.is_unspecified() && !src.is_multicast() {
            self.learn(IpAddr::V6(src), h.src);
        }
        let body = ip.payload().payload;
        match ip.payload().ip_number {
            IpNumber::IPV6_ICMP => {
                let Ok(icmp) = Icmpv6Slice::from_slice(body) else {
                    return false;
                };
                if !icmp.is_checksum_valid(hdr.source(), hdr.destination()) {
                    return false;
                }
                match icmp.icmp_type() {
                    Icmpv6Type::NeighborSolicitation => {
                        let Ok(ns) =
                            etherparse::icmpv6::NeighborSolicitationPayloadSlice::from_slice(
                                icmp.payload(),
                            )
                        else {
                            return false;
                        };
                        let target = ns.target_address();
                        if self.is_ours6(target) {
                            inc(&self.gw.counters.ndp_adverts);
                            self.send(ndp::neighbor_advert(cfg.mac, target, target, src, h.src));
                        }
                        if !src.is_unspecified()
                            && self.gw.cfg.ipv6.is_some_and(|p| p.contains(&src))
                            && self
                                .neigh
                                .get(&IpAddr::V6(src))
                                .is_some_and(|e| e.1 == self.ingress)
                        {
                            self.snoop(IpAddr::V6(src));
                        }
                    }
                    Icmpv6Type::RouterSolicitation => {
                        if src.is_unspecified() {
                            self.router_advert(ndp::ALL_NODES, ndp::multicast_mac(ndp::ALL_NODES));
                        } else {
                            self.router_advert(src, h.src);
                        }
                    }
                    Icmpv6Type::EchoRequest(e) if ours => {
                        let b = PacketBuilder::ethernet2(cfg.mac.0, h.src.0)
                            .ipv6(dst.octets(), src.octets(), 64)
                            .icmpv6_echo_reply(e.id, e.seq);
                        inc(&self.gw.counters.echo_replies);
                        self.send(build(b, icmp.payload()));
                    }
                    _ => inc(&self.gw.counters.ignored),
                }
                true
            }
            IpNumber::UDP if ours => {
                let Ok(udp) = UdpSlice::from_slice(body) else {
                    return false;
                };
                if udp.destination_port() == 53 && !(cfg.dns_silent && Some(dst) == cfg.dns6()) {
                    inc(&self.gw.counters.dns_udp);
                    self.dns_udp(
                        h.src,
                        SocketAddr::new(IpAddr::V6(dst), 53),
                        SocketAddr::new(IpAddr::V6(src), udp.source_port()),
                        udp.payload(),
                    );
                    true
                } else {
                    self.for_gateway6(now, packet, (src, dst), IpNumber::UDP, body)
                }
            }
            IpNumber::TCP if ours => {
                let Ok(tcp) = TcpSlice::from_slice(body) else {
                    return false;
                };
                if tcp.destination_port() == 53 && !(cfg.dns_silent && Some(dst) == cfg.dns6()) {
                    self.tcp.input(packet, self.ingress);
                    true
                } else {
                    self.for_gateway6(now, packet, (src, dst), IpNumber::TCP, body)
                }
            }
            _ => {
                inc(&self.gw.counters.ignored);
                true
            }
        }
    }
}
