//! The gateway's IPv4 side: ARP, the IPv4 dispatch (ICMP echo, DHCP, DNS, NAT), endpoint names
//! learned from ARP and DHCP, and the UDP/ICMP replies it builds.

use super::*;

impl Driver {
    pub(super) fn arp(&mut self, payload: &[u8]) -> bool {
        let res = arp::handle(self.gw.cfg.mac, self.gw.cfg.addr, payload).map(|mut out| {
            // The DNS-only address answers ARP too.
            if let (None, Some(d)) = (&out.reply, self.gw.cfg.dns_addr)
                && let Ok(o2) = arp::handle(self.gw.cfg.mac, d, payload)
            {
                out.reply = o2.reply;
            }
            if out.reply.is_none() {
                out.reply = self.gw.proxy.arp_reply(self.gw.cfg.mac, payload);
            }
            // Services' virtual IPs are the gateway's.
            if out.reply.is_none()
                && !self.gw.vips.is_empty()
                && let Some(t) = arp_target(payload)
                && self.gw.vips.contains(IpAddr::V4(t))
            {
                out.reply = arp::handle(self.gw.cfg.mac, t, payload)
                    .ok()
                    .and_then(|o| o.reply);
            }
            out
        });
        match res {
            Ok(out) => {
                if let Some((ip, mac)) = out.sender
                    && self.gw.cfg.subnet.contains(&ip)
                    && ip != self.gw.cfg.addr
                    && self.learn(IpAddr::V4(ip), mac)
                {
                    self.snoop(IpAddr::V4(ip));
                }
                if let Some(r) = out.reply {
                    inc(&self.gw.counters.arp_replies);
                    self.send(r);
                }
                true
            }
            Err(_) => false,
        }
    }

    /// Learns a configured endpoint: its neighbour entries and its name, as if it had sent
    /// an ARP for each address.
    pub(super) fn endpoint(&mut self, ep: Endpoint) {
        let saved = self.ingress;
        self.ingress = ep.port.0;
        for ip in &ep.ips {
            if self.learn(*ip, ep.mac) {
                self.snoop(*ip);
            }
        }
        self.ingress = saved;
        if !ep.reserved.is_empty() {
            self.reserved
                .entry(ep.port.0)
                .or_default()
                .extend(ep.reserved.iter().map(|ip| (*ip, ep.mac)));
        }
    }

    /// Registers the name of the current frame's port as a DNS name for `ip`.
    pub(super) fn snoop(&mut self, ip: IpAddr) {
        let port = self.ingress;
        let Some(name) = (self.names_of)(PortId(port)) else {
            return;
        };
        if self.gw.port.lock().is_some_and(|g| g.0 == port) {
            return;
        }
        self.port_names.insert(port, name.clone());
        let key = (name, ip.is_ipv4());
        if self.names.get(&key) == Some(&ip) {
            return;
        }
        if let Some(old) = self.names.get(&key) {
            self.gw.records.remove(&key.0, Some(*old));
        }
        if self.gw.records.add(&key.0, ip).is_ok() {
            tracing::debug!(name = %key.0, %ip, "endpoint name registered");
            self.names.insert(key, ip);
        }
    }

    pub(super) fn names_from(&mut self, events: Vec<NameEvent>) {
        for e in events {
            match e {
                NameEvent::Register { name, ip } => {
                    let _ = self.gw.records.add(&name, IpAddr::V4(ip));
                }
                NameEvent::Unregister { name, ip } => {
                    self.gw.records.remove(&name, Some(IpAddr::V4(ip)));
                }
            }
        }
    }

    pub(super) fn ipv4(&mut self, h: &L2Header, payload: &[u8], now: Instant) -> bool {
        let Ok(ip) = Ipv4Slice::from_slice(payload) else {
            return false;
        };
        let hdr = ip.header();
        if ip.is_payload_fragmented() {
            inc(&self.gw.counters.ignored);
            return true;
        }
        let (src, dst) = (hdr.source_addr(), hdr.destination_addr());
        let gw = self.gw.clone();
        let cfg = &gw.cfg;
        let dns_only = Some(dst) == cfg.dns_addr;
        let for_us = dst == cfg.addr || dns_only;
        let bcast = dst == Ipv4Addr::BROADCAST || dst == cfg.subnet.broadcast();
        if cfg.subnet.contains(&src) && src != cfg.addr {
            self.learn(IpAddr::V4(src), h.src);
        }
        let body = ip.payload().payload;
        let packet = payload
            .get(..usize::from(hdr.total_len()))
            .unwrap_or(payload);
        if ip.payload().ip_number == IpNumber::TCP && !self.tcp_checksum_ok(packet, body) {
            return false;
        }
        if dns_only {
            // The DNS-only address serves DNS and echo, nothing else (it is no host alias).
            let proto = ip.payload().ip_number;
            let dport = match proto {
                IpNumber::UDP => UdpSlice::from_slice(body)
                    .map(|u| u.destination_port())
                    .ok(),
                IpNumber::TCP => TcpSlice::from_slice(body)
                    .map(|t| t.destination_port())
                    .ok(),
                _ => None,
            };
            if proto != IpNumber::ICMP && (dport != Some(53) || cfg.dns_silent) {
                inc(&self.gw.counters.ignored);
                return true;
            }
        }
        if !for_us
            && ip.payload().ip_number != IpNumber::TCP
            && !gw.vips.is_empty()
            && gw.vips.contains(IpAddr::V4(dst))
        {
            // A service's virtual IP: TCP goes to NAT (its service, or an RST), ping is
            // answered, nothing else.
            if ip.payload().ip_number == IpNumber::ICMP {
                return self.echo(h, src, dst, body);
            }
            inc(&self.gw.counters.ignored);
            return true;
        }
        if !for_us && !bcast {
            // Routed through us: NAT.
            return self.nat(
                now,
                packet,
                IpAddr::V4(src),
                IpAddr::V4(dst),
                ip.payload().ip_number,
                body,
            );
        }
        match ip.payload().ip_number {
            IpNumber::ICMP if for_us => self.echo(h, src, dst, body),
            IpNumber::UDP => {
                let Ok(udp) = UdpSlice::from_slice(body) else {
                    return false;
                };
                match udp.destination_port() {
                    67 => self.dhcp(udp.payload(), now),
                    53 if for_us => {
                        inc(&self.gw.counters.dns_udp);
                        self.dns_udp(
                            h.src,
                            SocketAddr::new(IpAddr::V4(dst), 53),
                            SocketAddr::new(IpAddr::V4(src), udp.source_port()),
                            udp.payload(),
                        );
                        true
                    }
                    _ if for_us => self.nat(
                        now,
                        packet,
                        IpAddr::V4(src),
                        IpAddr::V4(dst),
                        IpNumber::UDP,
                        body,
                    ),
                    _ => {
                        inc(&self.gw.counters.ignored);
                        true
                    }
                }
            }
            IpNumber::TCP if for_us => {
                let Ok(tcp) = TcpSlice::from_slice(body) else {
                    return false;
                };
                if tcp.destination_port() == 53 {
                    self.tcp.input(packet, self.ingress);
                    true
                } else {
                    // The host's loopback, through the gateway's address.
                    self.nat(
                        now,
                        packet,
                        IpAddr::V4(src),
                        IpAddr::V4(dst),
                        IpNumber::TCP,
                        body,
                    )
                }
            }
            _ => {
                inc(&self.gw.counters.ignored);
                true
            }
        }
    }

    /// Answers an ICMP echo request `body` to our address `dst` from `src`.
    fn echo(&mut self, h: &L2Header, src: Ipv4Addr, dst: Ipv4Addr, body: &[u8]) -> bool {
        let Ok(icmp) = Icmpv4Slice::from_slice(body) else {
            return false;
        };
        if let Icmpv4Type::EchoRequest(e) = icmp.icmp_type() {
            let b = PacketBuilder::ethernet2(self.gw.cfg.mac.0, h.src.0)
                .ipv4(dst.octets(), src.octets(), 64)
                .icmpv4_echo_reply(e.id, e.seq);
            inc(&self.gw.counters.echo_replies);
            self.send(build(b, icmp.payload()));
        }
        true
    }

    /// Hands a guest's IP packet to NAT (TCP, UDP, ICMP echo); replies go back to the guest.
    pub(super) fn nat(
        &mut self,
        now: Instant,
        packet: &[u8],
        src: IpAddr,
        dst: IpAddr,
        proto: IpNumber,
        body: &[u8],
    ) -> bool {
        let Some(nat) = self.nat.as_mut() else {
            // An internal network: no egress.
            inc(&self.gw.counters.ignored);
            return true;
        };
        let mut out = Vec::new();
        let ok = nat.from_guest(
            &self.registry,
            now,
            self.ingress,
            packet,
            src,
            dst,
            proto,
            body,
            &mut out,
        );
        for p in out {
            self.send_nat_ip(&p);
        }
        ok
    }

    /// True when a DHCP message's `chaddr` may be served for the current frame's port: a MAC
    /// the port owns (or may claim, within its cap), never another port's.
    pub(super) fn dhcp_client_ok(&self, payload: &[u8]) -> bool {
        // chaddr at 28..34 when hlen (byte 2) is 6; the server refuses other lengths itself.
        let Some(ch) = payload.get(28..34).filter(|_| payload.get(2) == Some(&6)) else {
            return true;
        };
        let mac = Mac([ch[0], ch[1], ch[2], ch[3], ch[4], ch[5]]);
        let port = PortId(self.ingress);
        match self.guard.mac_owner(mac) {
            Some(o) => o == port,
            None if self.guard.is_secured(port) => self.guard.claim_mac(port, mac).is_ok(),
            None => true,
        }
    }

    /// A lease for `ip` was acknowledged to the current frame's port: remember it for
    /// [`Self::forget_port`], and give the lease its name back in DNS if a removed port took
    /// it along (its MAC returned).
    pub(super) fn lease_acked(&mut self, ip: Ipv4Addr, now: Instant) {
        let mine = self.leased.entry(self.ingress).or_default();
        if !mine.contains(&ip) {
            if mine.len() >= MAX_LEASED_PER_PORT {
                mine.remove(0);
            }
            mine.push(ip);
        }
        if !self.unnamed.remove(&ip) {
            return;
        }
        let name = self.gw.dhcp.as_ref().and_then(|d| {
            d.lock()
                .leases(self.gw.ms_at(now))
                .into_iter()
                .find(|l| l.ip == ip)
                .and_then(|l| l.hostname)
        });
        if let Some(name) = name {
            let _ = self.gw.records.add(&name, IpAddr::V4(ip));
        }
    }

    /// Leases that ended (released, declined, expired) stop being their port's address.
    pub(super) fn sync_lease_claims(&self, now: Instant) {
        if let Some(d) = &self.gw.dhcp {
            let bound = d
                .lock()
                .leases(self.gw.ms_at(now))
                .into_iter()
                .map(|l| l.ip)
                .collect();
            self.guard.release_leases_except(&bound);
        }
    }

    pub(super) fn dhcp(&mut self, payload: &[u8], now: Instant) -> bool {
        let Some(d) = &self.gw.dhcp else {
            inc(&self.gw.counters.ignored);
            return true;
        };
        inc(&self.gw.counters.dhcp_requests);
        if !self.dhcp_client_ok(payload) {
            inc(&self.gw.counters.dhcp_spoofed);
            tracing::debug!(network = %self.gw.cfg.network, port = self.ingress, "DHCP: chaddr of another port, refused");
            return true;
        }
        // Addresses other ports own are not offered to this one.
        let foreign = self.guard.ips_not_of(PortId(self.ingress));
        let res = {
            let mut srv = d.lock();
            srv.set_foreign(foreign);
            srv.handle(payload, self.gw.ms_at(now))
        };
        self.sync_lease_claims(now);
        let out = match res {
            Ok(Some(o)) => o,
            Ok(None) => return true,
            Err(e) => {
                tracing::debug!(network = %self.gw.cfg.network, "DHCP: {e}");
                inc(&self.gw.counters.errors);
                return true;
            }
        };
        let (ip, mac) = match out.to {
            ReplyTo::Broadcast => (Ipv4Addr::BROADCAST, Mac::BROADCAST),
            ReplyTo::Unicast { ip, mac } => (ip, mac),
        };
        // The bound address of an ACK is the port's address too.
        if let Some((client, yiaddr)) = acked(&out.payload) {
            let port = PortId(self.ingress);
            if self.ingress != 0
                && let Err(e) = self.guard.claim_ip(port, IpAddr::V4(yiaddr), Claim::Lease)
            {
                tracing::warn!(network = %self.gw.cfg.network, %yiaddr, error = %e, "DHCP: leased address not claimed for its port");
            }
            if self.learn(IpAddr::V4(yiaddr), client) {
                self.snoop(IpAddr::V4(yiaddr));
            }
        }
        self.names_from(out.names);
        if let Some((_, yiaddr)) = acked(&out.payload)
            && self.ingress != 0
        {
            self.lease_acked(yiaddr, now);
        }
        inc(&self.gw.counters.dhcp_replies);
        let b = PacketBuilder::ethernet2(self.gw.cfg.mac.0, mac.0)
            .ipv4(self.gw.cfg.addr.octets(), ip.octets(), 64)
            .udp(67, 68);
        self.send(build(b, &out.payload));
        true
    }

    pub(super) fn dns_udp(
        &mut self,
        client_mac: Mac,
        local: SocketAddr,
        client: SocketAddr,
        msg: &[u8],
    ) {
        let tx = self.out_tx.clone();
        let waker = self.waker.clone();
        self.gw.dns.handle(
            msg,
            Transport::Udp { max_size: 512 },
            Box::new(move |payload| {
                let _ = tx.send(Out::Udp {
                    mac: client_mac,
                    src: local,
                    dst: client,
                    payload,
                });
                let _ = waker.wake();
            }),
        );
    }

    pub(super) fn send_udp(&mut self, mac: Mac, src: SocketAddr, dst: SocketAddr, payload: &[u8]) {
        let frame = match (src.ip(), dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => build(
                PacketBuilder::ethernet2(self.gw.cfg.mac.0, mac.0)
                    .ipv4(s.octets(), d.octets(), 64)
                    .udp(src.port(), dst.port()),
                payload,
            ),
            (IpAddr::V6(s), IpAddr::V6(d)) => build(
                PacketBuilder::ethernet2(self.gw.cfg.mac.0, mac.0)
                    .ipv6(s.octets(), d.octets(), 64)
                    .udp(src.port(), dst.port()),
                payload,
            ),
            _ => return,
        };
        self.send(frame);
    }
}

/// The client MAC and bound address of a DHCPACK we built (None for anything else).
pub(super) fn acked(reply: &[u8]) -> Option<(Mac, Ipv4Addr)> {
    use dhcproto::{Decodable, Decoder, v4};
    let msg = v4::Message::decode(&mut Decoder::new(reply)).ok()?;
    if msg.opts().msg_type() != Some(v4::MessageType::Ack) || msg.yiaddr().is_unspecified() {
        return None;
    }
    let ch = msg.chaddr();
    let mac: [u8; 6] = ch.get(..6)?.try_into().ok()?;
    Some((Mac(mac), msg.yiaddr()))
}

pub(super) fn build<B: Builder>(b: B, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len(payload.len()));
    b.put(&mut out, payload);
    out
}

/// The etherparse builder steps we finish with a payload.
pub(super) trait Builder {
    fn len(&self, payload: usize) -> usize;
    fn put(self, out: &mut Vec<u8>, payload: &[u8]);
}

macro_rules! builder {
    ($t:ty) => {
        impl Builder for etherparse::PacketBuilderStep<$t> {
            fn len(&self, payload: usize) -> usize {
                self.size(payload)
            }
            fn put(self, out: &mut Vec<u8>, payload: &[u8]) {
                // Writing into a Vec cannot fail.
                let _ = self.write(out, payload);
            }
        }
    };
}
builder!(etherparse::UdpHeader);
builder!(etherparse::Icmpv4Header);
builder!(etherparse::Icmpv6Header);

/// The target address of an Ethernet/IPv4 ARP packet (`payload`, after the Ethernet header).
fn arp_target(payload: &[u8]) -> Option<Ipv4Addr> {
    let p = etherparse::ArpPacket::from_slice(payload).ok()?;
    Some(p.try_eth_ipv4().ok()?.target_ipv4_addr())
}
