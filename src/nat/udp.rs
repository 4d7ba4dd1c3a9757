//! UDP NAT: guest datagrams become sends on connected host UDP sockets, one per flow.
//!
//! # Theory of operation
//!
//! A *flow* is keyed by (guest address:port, destination address:port as the guest addressed
//! it). Its first datagram opens a host `UdpSocket` (non-blocking, bound to the configured
//! outbound address or the unspecified one, port chosen by the kernel) *connected* to
//! [`host_destination`] of the destination — so the kernel filters replies to that peer, and
//! an ICMP port unreachable from the host comes back as `ECONNREFUSED` on the next receive.
//! The socket is registered with the gateway's mio `Registry` under
//! `token::make(token::UDP, id)`, `id` being the flow's id in the NAT's [`FlowTable`], so a
//! token maps to its flow in O(1).
//!
//! On readiness ([`UdpNat::ready`]) the socket is read until `WouldBlock`; each datagram becomes
//! an IPv4/IPv6 + UDP packet *to* the guest, from the destination as the guest addressed it
//! (the gateway's address for the host-loopback mapping), with a computed checksum. A receive
//! error becomes an ICMP/ICMPv6 destination unreachable (port, host or network) to the guest,
//! quoting an IP + UDP header rebuilt from the flow's last datagram (its addresses, ports and
//! length are all the flow keeps, a few bytes).
//!
//! Invariants and limits:
//! - Memory is bounded: at most `max_flows` flows (and `max_flows_per_guest` per guest
//!   port), one 64 KiB receive buffer shared by all flows, and at most
//!   [`MAX_PACKETS_PER_READY`] packets appended per readiness event — datagrams beyond that are
//!   read and dropped, as a full socket buffer would. A new flow over a limit is refused and
//!   counted (`refused_limit`); existing flows are untouched.
//! - Limits count the flows of every protocol: the [`FlowTable`] checks them
//!   ([`FlowTable::admit`]) and keeps each flow's key and owner; this module keeps its socket.
//! - A flow lives while datagrams move either way; [`UdpNat::expire`] closes those idle longer
//!   than `udp_idle`.
//! - Nothing here panics on guest or host input; packets too big to build are counted as errors.
//! - Replies are not fragmented: a host datagram larger than the guest's MTU yields an IP packet
//!   larger than the MTU.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use etherparse::{IpNumber, Ipv4Header, Ipv6FlowLabel, Ipv6Header, UdpHeader};
use mio::{Interest, Registry, Token};

use super::flow::{
    DatagramFlow, FlowId, FlowKey, FlowTable, GuestKey, Opener, Phase, Slots, close_datagram,
    expire_datagrams,
};
use super::host::{HostDatagram, HostSockets};
use super::{NatConfig, NatCounters, host_destination, token};
use crate::wire::ip::{TTL, Unreachable, build_udp, icmp_unreachable};

/// Most packets one [`UdpNat::ready`] call appends for one flow.
pub const MAX_PACKETS_PER_READY: usize = 256;

/// Largest datagram a UDP socket can return.
const RECV_BUF: usize = 65536;

/// One UDP flow.
#[derive(Debug)]
struct Flow {
    sock: Box<dyn HostDatagram>,
    guest: SocketAddr,
    dst: SocketAddr,
    last_used: Instant,
    /// UDP payload length of the guest's last datagram (for the ICMP quote).
    last_len: u16,
}

impl DatagramFlow for Flow {
    fn sock(&mut self) -> &mut dyn HostDatagram {
        &mut *self.sock
    }

    fn last_used(&self) -> Instant {
        self.last_used
    }
}

/// The UDP flow table of one network.
pub struct UdpNat {
    cfg: Arc<NatConfig>,
    host: Arc<dyn HostSockets>,
    counters: Arc<NatCounters>,
    /// Each flow's state, by its id in the [`FlowTable`].
    slots: Slots<Flow>,
    buf: Vec<u8>,
}

impl UdpNat {
    /// An empty table using `cfg`'s limits and timeouts, counting into `counters`, with the
    /// kernel's sockets.
    #[cfg(test)]
    pub fn new(cfg: Arc<NatConfig>, counters: Arc<NatCounters>) -> Self {
        Self::with_host(cfg, counters, super::host::OsSockets::shared())
    }

    /// An empty table whose host sockets come from `host`.
    pub fn with_host(
        cfg: Arc<NatConfig>,
        counters: Arc<NatCounters>,
        host: Arc<dyn HostSockets>,
    ) -> Self {
        UdpNat {
            cfg,
            host,
            counters,
            slots: Slots::default(),
            buf: vec![0; RECV_BUF],
        }
    }

    /// A datagram a guest sent from `guest` to `dst` (the destination as the guest addressed
    /// it). Opens a flow on first use — a host socket connected to [`host_destination`]`(dst)`
    /// and registered with `reg` — unless a flow limit is reached (counted as
    /// `refused_limit`) or the destination must not leave (`dropped_dest`). A datagram the host
    /// socket cannot take right now is dropped, as UDP allows.
    #[allow(clippy::too_many_arguments)]
    // Named for the direction (a packet from the guest), not a conversion.
    #[allow(clippy::wrong_self_convention)]
    pub fn from_guest(
        &mut self,
        reg: &Registry,
        flows: &mut FlowTable,
        owner: GuestKey,
        guest: SocketAddr,
        dst: SocketAddr,
        payload: &[u8],
        now: Instant,
    ) {
        let idx = match flows.get(&FlowKey::Udp(guest, dst)) {
            Some(i) => i,
            None => match self.open(reg, flows, owner, guest, dst, now) {
                Some(i) => i,
                None => return,
            },
        };
        let Some(flow) = self.slots.get_mut(idx) else {
            return;
        };
        flow.last_used = now;
        flow.last_len = u16::try_from(payload.len()).unwrap_or(u16::MAX);
        for attempt in 0..2 {
            match flow.sock.send(payload) {
                Ok(_) => return,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // A pending error from an earlier datagram's ICMP: it is consumed now, retry once.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused && attempt == 0 => {}
                Err(e) => {
                    match e.raw_os_error() {
                        Some(libc::ENETUNREACH | libc::EHOSTUNREACH | libc::ECONNREFUSED) => {
                            NatCounters::inc(&self.counters.unreachable);
                        }
                        _ => {
                            tracing::debug!(%guest, %dst, error = %e, "UDP NAT send failed");
                            NatCounters::inc(&self.counters.errors);
                        }
                    }
                    return;
                }
            }
        }
    }

    /// Opens a flow for `(guest, dst)`; `None` (counted) if refused or failed.
    fn open(
        &mut self,
        reg: &Registry,
        flows: &mut FlowTable,
        owner: GuestKey,
        guest: SocketAddr,
        dst: SocketAddr,
        now: Instant,
    ) -> Option<usize> {
        if guest.is_ipv4() != dst.is_ipv4() {
            NatCounters::inc(&self.counters.dropped_dest);
            return None;
        }
        let Some(host_ip) = host_destination(&self.cfg, dst.ip()) else {
            NatCounters::inc(&self.counters.dropped_dest);
            return None;
        };
        if !flows.admit(Opener::Guest(owner)) {
            return None;
        }
        let bind: SocketAddr = match host_ip {
            IpAddr::V4(_) => SocketAddr::new(
                IpAddr::V4(self.cfg.outbound4.unwrap_or(Ipv4Addr::UNSPECIFIED)),
                0,
            ),
            IpAddr::V6(_) => SocketAddr::new(
                IpAddr::V6(self.cfg.outbound6.unwrap_or(Ipv6Addr::UNSPECIFIED)),
                0,
            ),
        };
        let target = SocketAddr::new(host_ip, dst.port());
        let mut sock = match self.host.udp(bind, target) {
            Ok(s) => s,
            Err(e) => {
                match e.raw_os_error() {
                    Some(libc::ENETUNREACH | libc::EHOSTUNREACH | libc::EADDRNOTAVAIL) => {
                        NatCounters::inc(&self.counters.unreachable);
                    }
                    _ => {
                        tracing::warn!(%guest, %dst, %target, error = %e, "UDP NAT: cannot open host socket");
                        NatCounters::inc(&self.counters.errors);
                    }
                }
                return None;
            }
        };
        let idx = flows.insert(FlowKey::Udp(guest, dst), owner, Phase::Established);
        if let Err(e) = reg.register(&mut *sock, token::make(token::UDP, idx), Interest::READABLE) {
            tracing::warn!(%guest, %dst, error = %e, "UDP NAT: cannot register host socket");
            NatCounters::inc(&self.counters.errors);
            flows.remove(idx);
            return None;
        }
        self.slots.put(
            idx,
            Flow {
                sock,
                guest,
                dst,
                last_used: now,
                last_len: 0,
            },
        );
        NatCounters::inc(&self.counters.udp_flows);
        tracing::trace!(%guest, %dst, %target, idx, "UDP NAT flow opened");
        Some(idx)
    }

    /// Readiness for a token of kind [`token::UDP`]: reads the flow's socket until
    /// `WouldBlock` and appends one raw IP packet per datagram (or ICMP error) to `out`.
    /// Unknown tokens are ignored.
    pub fn ready(&mut self, token: Token, out: &mut Vec<Vec<u8>>, now: Instant) {
        let (kind, idx) = token::split(token);
        if kind != token::UDP {
            return;
        }
        let Some(flow) = self.slots.get_mut(idx) else {
            return;
        };
        let mut produced = 0usize;
        let mut failures = 0usize;
        loop {
            match flow.sock.recv(&mut self.buf) {
                Ok(n) => {
                    flow.last_used = now;
                    if produced >= MAX_PACKETS_PER_READY {
                        continue;
                    }
                    let Some(data) = self.buf.get(..n) else {
                        continue;
                    };
                    match build_udp(flow.dst, flow.guest, data) {
                        Some(p) => {
                            out.push(p);
                            produced += 1;
                        }
                        None => NatCounters::inc(&self.counters.errors),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let why = match e.raw_os_error() {
                        Some(libc::ECONNREFUSED) => Unreachable::Port,
                        Some(libc::EHOSTUNREACH) => Unreachable::Host,
                        Some(libc::ENETUNREACH) => Unreachable::Net,
                        _ => {
                            tracing::debug!(guest = %flow.guest, dst = %flow.dst, error = %e, "UDP NAT receive failed");
                            NatCounters::inc(&self.counters.errors);
                            // Socket errors are reported once and the next read goes on; a
                            // socket that keeps failing is left until its next readiness.
                            failures += 1;
                            if failures > 4 {
                                break;
                            }
                            continue;
                        }
                    };
                    NatCounters::inc(&self.counters.unreachable);
                    if produced < MAX_PACKETS_PER_READY {
                        match unreachable_packet(flow.guest, flow.dst, flow.last_len, why) {
                            Some(p) => {
                                out.push(p);
                                produced += 1;
                            }
                            None => NatCounters::inc(&self.counters.errors),
                        }
                    }
                }
            }
        }
    }

    /// Closes flows idle (no datagram either way) for longer than `udp_idle`: deregisters and
    /// drops their sockets. Returns how many were closed.
    pub fn expire(&mut self, reg: &Registry, flows: &mut FlowTable, now: Instant) -> usize {
        expire_datagrams(&mut self.slots, flows, reg, now, self.cfg.udp_idle, "UDP")
    }

    /// Closes flow `id` (its guest port was removed, say): deregisters and drops its socket.
    /// False if there is no such flow.
    pub fn close(&mut self, reg: &Registry, flows: &mut FlowTable, id: FlowId) -> bool {
        close_datagram(&mut self.slots, flows, reg, id, "UDP")
    }
}

/// An ICMP(v6) destination unreachable from `dst` to `guest`, quoting the IP + UDP header of a
/// `len`-byte datagram `guest` → `dst` (rebuilt: the flow keeps no packet).
fn unreachable_packet(
    guest: SocketAddr,
    dst: SocketAddr,
    len: u16,
    why: Unreachable,
) -> Option<Vec<u8>> {
    let udp_len = len.checked_add(8)?;
    let udp = UdpHeader {
        source_port: guest.port(),
        destination_port: dst.port(),
        length: udp_len,
        checksum: 0,
    };
    let mut quote = Vec::with_capacity(48);
    match (guest.ip(), dst.ip()) {
        (IpAddr::V4(g), IpAddr::V4(d)) => {
            let ip = Ipv4Header::new(udp_len, TTL, IpNumber::UDP, g.octets(), d.octets()).ok()?;
            ip.write(&mut quote).ok()?;
        }
        (IpAddr::V6(g), IpAddr::V6(d)) => {
            let ip = Ipv6Header {
                traffic_class: 0,
                flow_label: Ipv6FlowLabel::ZERO,
                payload_length: udp_len,
                next_header: IpNumber::UDP,
                hop_limit: TTL,
                source: g.octets(),
                destination: d.octets(),
            };
            ip.write(&mut quote).ok()?;
        }
        _ => return None,
    }
    udp.write(&mut quote).ok()?;
    icmp_unreachable(&quote, why)
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{
        Icmpv4Type, NetSlice, SlicedPacket, TransportSlice, icmpv4::DestUnreachableHeader,
    };
    use mio::{Events, Poll};
    use std::time::Duration;

    const GW: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 1);

    /// A [`UdpNat`] and the flow table it works in, as [`super::super::Nat`] holds them.
    fn pair(cfg: Arc<NatConfig>, counters: Arc<NatCounters>) -> (UdpNat, FlowTable) {
        (
            UdpNat::new(cfg.clone(), counters.clone()),
            FlowTable::new(cfg, counters),
        )
    }

    /// What [`super::super::Nat::forget_guest`] does with a port's UDP flows.
    fn forget(nat: &mut UdpNat, flows: &mut FlowTable, reg: &Registry, owner: GuestKey) -> usize {
        let ids = flows.of_guest(owner);
        ids.into_iter()
            .filter(|&(id, _)| nat.close(reg, flows, id))
            .count()
    }

    fn setup(cfg: NatConfig) -> (Poll, UdpNat, FlowTable, Arc<NatCounters>) {
        let counters = Arc::new(NatCounters::default());
        let poll = Poll::new().expect("poll");
        let (nat, flows) = pair(Arc::new(cfg), counters.clone());
        (poll, nat, flows, counters)
    }

    /// Polls (bounded) until `want` packets came out or the deadline passes.
    fn pump(poll: &mut Poll, nat: &mut UdpNat, want: usize) -> Vec<Vec<u8>> {
        let mut events = Events::with_capacity(64);
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while out.len() < want && Instant::now() < deadline {
            poll.poll(&mut events, Some(Duration::from_millis(100)))
                .expect("poll");
            for ev in events.iter() {
                nat.ready(ev.token(), &mut out, Instant::now());
            }
        }
        out
    }

    /// A UDP echo server on 127.0.0.1, serving until `n` datagrams were echoed or 10 s passed.
    fn echo_server(n: usize) -> (u16, std::thread::JoinHandle<()>) {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let port = s.local_addr().expect("addr").port();
        let h = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut buf = [0u8; 2048];
            let mut done = 0;
            while done < n && Instant::now() < deadline {
                if let Ok((len, from)) = s.recv_from(&mut buf) {
                    let _ = s.send_to(&buf[..len], from);
                    done += 1;
                }
            }
        });
        (port, h)
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }

    #[test]
    fn echo_through_host_loopback() {
        let (port, server) = echo_server(2);
        let (mut poll, mut nat, mut flows, counters) = setup(NatConfig::new(GW, None));
        let guest = sa("10.88.0.9:5555");
        let dst = SocketAddr::new(IpAddr::V4(GW), port);
        nat.from_guest(
            poll.registry(),
            &mut flows,
            1,
            guest,
            dst,
            b"hello nat",
            Instant::now(),
        );
        assert_eq!(flows.counts().udp, 1);
        assert_eq!(flows.flows_of(1), 1);
        let out = pump(&mut poll, &mut nat, 1);
        assert_eq!(out.len(), 1, "no reply");
        let pkt = SlicedPacket::from_ip(&out[0]).expect("parse");
        let Some(NetSlice::Ipv4(ip)) = &pkt.net else {
            panic!("not IPv4")
        };
        assert_eq!(ip.header().source_addr(), GW);
        assert_eq!(ip.header().destination_addr(), Ipv4Addr::new(10, 88, 0, 9));
        let Some(TransportSlice::Udp(udp)) = &pkt.transport else {
            panic!("not UDP")
        };
        assert_eq!(udp.source_port(), port);
        assert_eq!(udp.destination_port(), 5555);
        assert_eq!(udp.payload(), b"hello nat");
        let want = udp
            .to_header()
            .calc_checksum_ipv4(&ip.header().to_header(), udp.payload())
            .expect("checksum");
        assert_eq!(udp.checksum(), want, "bad UDP checksum");
        // Same flow reused for a second datagram.
        nat.from_guest(
            poll.registry(),
            &mut flows,
            1,
            guest,
            dst,
            b"again",
            Instant::now(),
        );
        assert_eq!(flows.counts().udp, 1);
        let out = pump(&mut poll, &mut nat, 1);
        assert_eq!(out.len(), 1);
        assert_eq!(
            counters
                .udp_flows
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        server.join().expect("server");
    }

    #[test]
    fn echo_ipv6_through_host_loopback() {
        let s = match std::net::UdpSocket::bind("[::1]:0") {
            Ok(s) => s,
            Err(e) => {
                eprintln!("skipping: no IPv6 loopback ({e})");
                return;
            }
        };
        let port = s.local_addr().expect("addr").port();
        let gw6: Ipv6Addr = "fd88::1".parse().expect("v6");
        let (mut poll, mut nat, mut flows, _) = setup(NatConfig::new(GW, Some(gw6)));
        let guest = sa("[fd88::9]:4444");
        let dst = SocketAddr::new(IpAddr::V6(gw6), port);
        nat.from_guest(
            poll.registry(),
            &mut flows,
            1,
            guest,
            dst,
            b"six",
            Instant::now(),
        );
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut buf = [0u8; 64];
        let (n, from) = s.recv_from(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"six");
        s.send_to(b"back", from).expect("send");
        let out = pump(&mut poll, &mut nat, 1);
        assert_eq!(out.len(), 1);
        let pkt = SlicedPacket::from_ip(&out[0]).expect("parse");
        let Some(NetSlice::Ipv6(ip)) = &pkt.net else {
            panic!("not IPv6")
        };
        assert_eq!(ip.header().source_addr(), gw6);
        let Some(TransportSlice::Udp(udp)) = &pkt.transport else {
            panic!("not UDP")
        };
        assert_eq!(udp.payload(), b"back");
        assert_eq!(udp.destination_port(), 4444);
        let want = udp
            .to_header()
            .calc_checksum_ipv6(&ip.header().to_header(), udp.payload())
            .expect("checksum");
        assert_eq!(udp.checksum(), want);
    }

    #[test]
    fn refused_port_becomes_icmp_unreachable() {
        // A port that was just free: bind, note, close.
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let (mut poll, mut nat, mut flows, counters) = setup(NatConfig::new(GW, None));
        let guest = sa("10.88.0.9:5555");
        let dst = SocketAddr::new(IpAddr::V4(GW), port);
        nat.from_guest(
            poll.registry(),
            &mut flows,
            1,
            guest,
            dst,
            b"anyone?",
            Instant::now(),
        );
        let out = pump(&mut poll, &mut nat, 1);
        assert_eq!(out.len(), 1, "no ICMP error");
        let pkt = SlicedPacket::from_ip(&out[0]).expect("parse");
        let Some(NetSlice::Ipv4(ip)) = &pkt.net else {
            panic!("not IPv4")
        };
        assert_eq!(ip.header().source_addr(), GW);
        assert_eq!(ip.header().destination_addr(), Ipv4Addr::new(10, 88, 0, 9));
        let Some(TransportSlice::Icmpv4(icmp)) = &pkt.transport else {
            panic!("not ICMP")
        };
        assert_eq!(
            icmp.icmp_type(),
            Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port)
        );
        // The quote: the guest's datagram header.
        let qip = etherparse::Ipv4HeaderSlice::from_slice(icmp.payload()).expect("quote");
        assert_eq!(qip.source_addr(), Ipv4Addr::new(10, 88, 0, 9));
        assert_eq!(qip.destination_addr(), GW);
        assert_eq!(qip.protocol(), IpNumber::UDP);
        assert_eq!(icmp.payload().len(), 28);
        let udp = UdpHeader::from_slice(&icmp.payload()[20..]).expect("udp").0;
        assert_eq!((udp.source_port, udp.destination_port), (5555, port));
        assert_eq!(usize::from(udp.length), 8 + b"anyone?".len());
        assert!(
            counters
                .unreachable
                .load(std::sync::atomic::Ordering::Relaxed)
                >= 1
        );
    }

    #[test]
    fn limits_refuse_new_flows_and_keep_old_ones() {
        let (port, server) = echo_server(3);
        let cfg = NatConfig {
            max_flows: 3,
            max_flows_per_guest: 2,
            ..NatConfig::new(GW, None)
        };
        let (mut poll, mut nat, mut flows, counters) = setup(cfg);
        let dst = SocketAddr::new(IpAddr::V4(GW), port);
        let now = Instant::now();
        nat.from_guest(
            poll.registry(),
            &mut flows,
            1,
            sa("10.88.0.9:1"),
            dst,
            b"a",
            now,
        );
        nat.from_guest(
            poll.registry(),
            &mut flows,
            1,
            sa("10.88.0.9:2"),
            dst,
            b"b",
            now,
        );
        // Per-guest limit.
        nat.from_guest(
            poll.registry(),
            &mut flows,
            1,
            sa("10.88.0.9:3"),
            dst,
            b"c",
            now,
        );
        assert_eq!(flows.flows_of(1), 2);
        nat.from_guest(
            poll.registry(),
            &mut flows,
            2,
            sa("10.88.0.10:1"),
            dst,
            b"d",
            now,
        );
        // Total limit.
        nat.from_guest(
            poll.registry(),
            &mut flows,
            3,
            sa("10.88.0.11:1"),
            dst,
            b"e",
            now,
        );
        assert_eq!(flows.counts().udp, 3);
        assert_eq!(
            counters
                .refused_limit
                .load(std::sync::atomic::Ordering::Relaxed),
            2
        );
        // Destinations that must not leave.
        nat.from_guest(
            poll.registry(),
            &mut flows,
            1,
            sa("10.88.0.9:1"),
            sa("127.0.0.1:53"),
            b"x",
            now,
        );
        nat.from_guest(
            poll.registry(),
            &mut flows,
            1,
            sa("10.88.0.9:1"),
            sa("224.0.0.1:53"),
            b"x",
            now,
        );
        assert_eq!(
            counters
                .dropped_dest
                .load(std::sync::atomic::Ordering::Relaxed),
            2
        );
        // The existing flows still work, each reply to its own guest.
        let out = pump(&mut poll, &mut nat, 3);
        assert_eq!(out.len(), 3);
        let mut got: Vec<(SocketAddr, Vec<u8>)> = out
            .iter()
            .map(|p| {
                let pkt = SlicedPacket::from_ip(p).expect("parse");
                let Some(NetSlice::Ipv4(ip)) = &pkt.net else {
                    panic!("v4")
                };
                let Some(TransportSlice::Udp(udp)) = &pkt.transport else {
                    panic!("udp")
                };
                (
                    SocketAddr::new(
                        IpAddr::V4(ip.header().destination_addr()),
                        udp.destination_port(),
                    ),
                    udp.payload().to_vec(),
                )
            })
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                (sa("10.88.0.9:1"), b"a".to_vec()),
                (sa("10.88.0.9:2"), b"b".to_vec()),
                (sa("10.88.0.10:1"), b"d".to_vec()),
            ]
        );
        server.join().expect("server");
    }

    #[test]
    fn expire_closes_idle_flows() {
        let cfg = NatConfig {
            udp_idle: Duration::from_secs(60),
            max_flows: 2,
            ..NatConfig::new(GW, None)
        };
        let (poll, mut nat, mut flows, _) = setup(cfg);
        // A sink that never answers.
        let sink = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let dst = SocketAddr::new(IpAddr::V4(GW), sink.local_addr().expect("addr").port());
        let t0 = Instant::now();
        nat.from_guest(
            poll.registry(),
            &mut flows,
            1,
            sa("10.88.0.9:1"),
            dst,
            b"a",
            t0,
        );
        nat.from_guest(
            poll.registry(),
            &mut flows,
            1,
            sa("10.88.0.9:2"),
            dst,
            b"b",
            t0 + Duration::from_secs(30),
        );
        assert_eq!(flows.counts().udp, 2);
        assert_eq!(
            nat.expire(poll.registry(), &mut flows, t0 + Duration::from_secs(59)),
            0
        );
        assert_eq!(
            nat.expire(poll.registry(), &mut flows, t0 + Duration::from_secs(61)),
            1
        );
        assert_eq!(flows.counts().udp, 1);
        assert_eq!(flows.flows_of(1), 1);
        // The freed slot is reusable (the table was full).
        nat.from_guest(
            poll.registry(),
            &mut flows,
            1,
            sa("10.88.0.9:3"),
            dst,
            b"c",
            t0 + Duration::from_secs(62),
        );
        assert_eq!(flows.counts().udp, 2);
        assert_eq!(
            nat.expire(poll.registry(), &mut flows, t0 + Duration::from_secs(200)),
            2
        );
        assert_eq!(flows.counts().udp, 0);
        assert_eq!(flows.flows_of(1), 0);
        // Unknown tokens are ignored.
        let mut out = Vec::new();
        nat.ready(token::make(token::UDP, 5), &mut out, t0);
        nat.ready(token::make(token::ICMP, 0), &mut out, t0);
        assert!(out.is_empty());
    }

    #[test]
    fn forget_guest_closes_only_that_guests_flows() {
        let (poll, mut nat, mut flows, _) = setup(NatConfig::new(GW, None));
        let sink = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let dst = SocketAddr::new(IpAddr::V4(GW), sink.local_addr().expect("addr").port());
        let now = Instant::now();
        nat.from_guest(
            poll.registry(),
            &mut flows,
            1,
            sa("10.88.0.9:1"),
            dst,
            b"a",
            now,
        );
        nat.from_guest(
            poll.registry(),
            &mut flows,
            1,
            sa("10.88.0.9:2"),
            dst,
            b"b",
            now,
        );
        nat.from_guest(
            poll.registry(),
            &mut flows,
            2,
            sa("10.88.0.10:1"),
            dst,
            b"c",
            now,
        );
        assert_eq!(forget(&mut nat, &mut flows, poll.registry(), 1), 2);
        assert_eq!(
            (flows.counts().udp, flows.flows_of(1), flows.flows_of(2)),
            (1, 0, 1)
        );
        assert!(!flows.contains(&FlowKey::Udp(sa("10.88.0.9:1"), dst)));
        assert_eq!(forget(&mut nat, &mut flows, poll.registry(), 1), 0);
        // The same guest address on a new port opens a new flow.
        nat.from_guest(
            poll.registry(),
            &mut flows,
            3,
            sa("10.88.0.9:1"),
            dst,
            b"d",
            now,
        );
        assert_eq!((flows.counts().udp, flows.flows_of(3)), (2, 1));
        assert_eq!(forget(&mut nat, &mut flows, poll.registry(), 2), 1);
        assert_eq!(forget(&mut nat, &mut flows, poll.registry(), 3), 1);
        assert_eq!(flows.counts().udp, 0);
    }
}
