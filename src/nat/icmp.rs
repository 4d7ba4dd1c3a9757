//! ICMP echo NAT: guest pings become echo requests on unprivileged ping sockets.
//!
//! # Theory of operation
//!
//! Linux lets unprivileged processes send ICMP echo requests through *ping sockets*
//! (`socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP)`, `IPPROTO_ICMPV6` for IPv6) when the process's
//! group is in `net.ipv4.ping_group_range` (which governs both families). The kernel owns the
//! echo identifier: it rewrites the id of every request to the socket's own, and delivers to the
//! socket only replies carrying that id.
//!
//! A *flow* is keyed by (guest address, guest echo id, destination as the guest addressed it)
//! and owns one ping socket, registered with the gateway's mio `Registry` under
//! `token::make(token::ICMP, id)` (`id`: the flow's id in the NAT's [`FlowTable`]). [`IcmpNat::from_guest`] sends the guest's sequence number
//! and payload to [`host_destination`] of the destination (so pinging the gateway's address
//! pings the host's loopback). [`IcmpNat::ready`] reads replies until `WouldBlock` and builds
//! an ICMP/ICMPv6 echo reply to the guest with the guest's *own* id, the reply's sequence
//! number and payload, from the destination as the guest addressed it.
//!
//! If ping sockets are forbidden (`EACCES`/`EPERM` from `socket()`), requests are dropped and
//! counted (`ping_forbidden`), with one warning that says how to allow them. The socket is
//! retried on each new flow, so changing the sysctl takes effect without a restart.
//!
//! Invariants and limits:
//! - Memory is bounded: at most `max_flows` flows (`max_flows_per_guest` per guest port;
//!   over a limit the request is dropped and counted as `refused_limit`), one receive buffer,
//!   and at most [`MAX_PACKETS_PER_READY`] packets appended per readiness event.
//! - Limits count the flows of every protocol: the [`FlowTable`] checks them
//!   ([`FlowTable::admit`]) and keeps each flow's key and owner; this module keeps its socket.
//! - Only echo is carried; ICMP errors the host receives for a ping are not relayed (the guest
//!   sees a timeout).
//! - Flows idle longer than `icmp_idle` are closed by [`IcmpNat::expire`].

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use etherparse::PacketBuilder;
use mio::{Interest, Registry, Token};

use super::flow::{
    DatagramFlow, FlowId, FlowKey, FlowTable, GuestKey, Opener, Phase, Slots, close_datagram,
    expire_datagrams,
};
use super::host::{HostDatagram, HostSockets};
use super::{NatConfig, NatCounters, host_destination, token};

/// Most packets one [`IcmpNat::ready`] call appends for one flow.
pub const MAX_PACKETS_PER_READY: usize = 256;

/// TTL / hop limit of packets built towards the guest.
const TTL: u8 = 64;

/// Receive buffer: the largest echo reply a ping socket returns (ICMP header + payload).
const RECV_BUF: usize = 65536;

/// ICMP type of an echo request / reply, per family.
const ECHO_REQUEST_V4: u8 = 8;
const ECHO_REPLY_V4: u8 = 0;
const ECHO_REQUEST_V6: u8 = 128;
const ECHO_REPLY_V6: u8 = 129;

/// One echo flow.
#[derive(Debug)]
struct Flow {
    sock: Box<dyn HostDatagram>,
    guest: IpAddr,
    id: u16,
    dst: IpAddr,
    host: IpAddr,
    last_used: Instant,
}

impl DatagramFlow for Flow {
    fn sock(&mut self) -> &mut dyn HostDatagram {
        &mut *self.sock
    }

    fn last_used(&self) -> Instant {
        self.last_used
    }
}

/// The ICMP echo flow table of one network.
pub struct IcmpNat {
    cfg: Arc<NatConfig>,
    host: Arc<dyn HostSockets>,
    counters: Arc<NatCounters>,
    /// Each flow's state, by its id in the [`FlowTable`].
    slots: Slots<Flow>,
    warned: bool,
    buf: Vec<u8>,
    send_buf: Vec<u8>,
}

impl IcmpNat {
    /// An empty table using `cfg`'s limits and timeouts, counting into `counters`, with the
    /// kernel's ping sockets.
    #[cfg(test)]
    pub fn new(cfg: Arc<NatConfig>, counters: Arc<NatCounters>) -> Self {
        Self::with_host(cfg, counters, super::host::OsSockets::shared())
    }

    /// An empty table whose ping sockets come from `host`.
    pub fn with_host(
        cfg: Arc<NatConfig>,
        counters: Arc<NatCounters>,
        host: Arc<dyn HostSockets>,
    ) -> Self {
        IcmpNat {
            cfg,
            host,
            counters,
            slots: Slots::default(),
            warned: false,
            buf: vec![0; RECV_BUF],
            send_buf: Vec::new(),
        }
    }

    /// An echo request a guest at `guest` sent to `dst` with identifier `id`, sequence `seq`
    /// and `payload` (the data after the 8-byte echo header). Opens a flow (a ping socket
    /// registered with `reg`) on first use, unless a limit is reached (`refused_limit`), the
    /// destination must not leave (`dropped_dest`) or ping sockets are forbidden
    /// (`ping_forbidden`). The kernel replaces `id` with the socket's own on the wire.
    #[allow(clippy::too_many_arguments)]
    // Named for the direction (a packet from the guest), not a conversion.
    #[allow(clippy::wrong_self_convention)]
    pub fn from_guest(
        &mut self,
        reg: &Registry,
        flows: &mut FlowTable,
        owner: GuestKey,
        guest: IpAddr,
        dst: IpAddr,
        id: u16,
        seq: u16,
        payload: &[u8],
        now: Instant,
    ) {
        let idx = match flows.get(&FlowKey::Icmp(guest, id, dst)) {
            Some(i) => i,
            None => match self.open(reg, flows, owner, guest, dst, id, now) {
                Some(i) => i,
                None => return,
            },
        };
        let Some(flow) = self.slots.get_mut(idx) else {
            return;
        };
        flow.last_used = now;
        let kind = if flow.host.is_ipv4() {
            ECHO_REQUEST_V4
        } else {
            ECHO_REQUEST_V6
        };
        // Echo header: type, code, checksum (the kernel computes it), id (the kernel
        // rewrites it), sequence; then the payload.
        self.send_buf.clear();
        self.send_buf.extend_from_slice(&[kind, 0, 0, 0]);
        self.send_buf.extend_from_slice(&id.to_be_bytes());
        self.send_buf.extend_from_slice(&seq.to_be_bytes());
        self.send_buf.extend_from_slice(payload);
        match flow
            .sock
            .send_to(&self.send_buf, SocketAddr::new(flow.host, 0))
        {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => match e.raw_os_error() {
                Some(libc::ENETUNREACH | libc::EHOSTUNREACH | libc::EADDRNOTAVAIL) => {
                    NatCounters::inc(&self.counters.unreachable);
                }
                _ => {
                    tracing::debug!(%guest, %dst, error = %e, "ICMP NAT send failed");
                    NatCounters::inc(&self.counters.errors);
                }
            },
        }
    }

    /// Opens a flow; `None` (counted) if refused or failed.
    #[allow(clippy::too_many_arguments)]
    fn open(
        &mut self,
        reg: &Registry,
        flows: &mut FlowTable,
        owner: GuestKey,
        guest: IpAddr,
        dst: IpAddr,
        id: u16,
        now: Instant,
    ) -> Option<usize> {
        if guest.is_ipv4() != dst.is_ipv4() {
            NatCounters::inc(&self.counters.dropped_dest);
            return None;
        }
        let Some(host) = host_destination(&self.cfg, dst) else {
            NatCounters::inc(&self.counters.dropped_dest);
            return None;
        };
        if !flows.admit(Opener::Guest(owner)) {
            return None;
        }
        let bind = match host {
            IpAddr::V4(_) => self.cfg.outbound4.map(IpAddr::V4),
            IpAddr::V6(_) => self.cfg.outbound6.map(IpAddr::V6),
        };
        let mut sock = match self.host.ping(host, bind.map(|b| SocketAddr::new(b, 0))) {
            Ok(s) => s,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM)) => {
                if !self.warned {
                    self.warned = true;
                    tracing::warn!(
                        error = %e,
                        "ICMP echo from guests is dropped: ping sockets are forbidden for this \
                         process's group; allow them with `sysctl -w \
                         net.ipv4.ping_group_range=\"0 2147483647\"` (or a range holding gid {})",
                        crate::sys::process::egid()
                    );
                }
                NatCounters::inc(&self.counters.ping_forbidden);
                return None;
            }
            Err(e) => {
                tracing::warn!(%guest, %dst, error = %e, "ICMP NAT: cannot open ping socket");
                NatCounters::inc(&self.counters.errors);
                return None;
            }
        };
        let idx = flows.insert(FlowKey::Icmp(guest, id, dst), owner, Phase::Established);
        if let Err(e) = reg.register(
            &mut *sock,
            token::make(token::ICMP, idx),
            Interest::READABLE,
        ) {
            tracing::warn!(%guest, %dst, error = %e, "ICMP NAT: cannot register ping socket");
            NatCounters::inc(&self.counters.errors);
            flows.remove(idx);
            return None;
        }
        self.slots.put(
            idx,
            Flow {
                sock,
                guest,
                id,
                dst,
                host,
                last_used: now,
            },
        );
        NatCounters::inc(&self.counters.icmp_flows);
        tracing::trace!(%guest, %dst, %host, id, idx, "ICMP NAT flow opened");
        Some(idx)
    }

    /// Readiness for a token of kind [`token::ICMP`]: reads echo replies until `WouldBlock`
    /// and appends an echo-reply IP packet to the guest for each one to `out`. Unknown tokens
    /// are ignored.
    pub fn ready(&mut self, token: Token, out: &mut Vec<Vec<u8>>, now: Instant) {
        let (kind, idx) = token::split(token);
        if kind != token::ICMP {
            return;
        }
        let Some(flow) = self.slots.get_mut(idx) else {
            return;
        };
        let mut produced = 0usize;
        let mut failures = 0usize;
        loop {
            match flow.sock.recv_from(&mut self.buf) {
                Ok((n, from)) => {
                    if from.ip() != flow.host || produced >= MAX_PACKETS_PER_READY {
                        continue;
                    }
                    let Some(msg) = self.buf.get(..n) else {
                        continue;
                    };
                    let Some(pkt) = echo_reply(flow, msg) else {
                        continue;
                    };
                    flow.last_used = now;
                    out.push(pkt);
                    produced += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!(guest = %flow.guest, dst = %flow.dst, error = %e, "ICMP NAT receive failed");
                    NatCounters::inc(&self.counters.errors);
                    failures += 1;
                    if failures > 4 {
                        break;
                    }
                }
            }
        }
    }

    /// Closes flows idle for longer than `icmp_idle`: deregisters and drops their sockets.
    /// Returns how many were closed.
    pub fn expire(&mut self, reg: &Registry, flows: &mut FlowTable, now: Instant) -> usize {
        expire_datagrams(&mut self.slots, flows, reg, now, self.cfg.icmp_idle, "ICMP")
    }

    /// Closes flow `id` (its guest port was removed, say): deregisters and drops its socket.
    /// False if there is no such flow.
    pub fn close(&mut self, reg: &Registry, flows: &mut FlowTable, id: FlowId) -> bool {
        close_datagram(&mut self.slots, flows, reg, id, "ICMP")
    }
}

/// The echo reply to the guest for a reply `msg` (ICMP header + payload) a ping socket
/// returned; `None` if it is not an echo reply.
fn echo_reply(flow: &Flow, msg: &[u8]) -> Option<Vec<u8>> {
    let (hdr, payload) = msg.split_at_checked(8)?;
    let seq = u16::from_be_bytes([hdr[6], hdr[7]]);
    let b = match (flow.dst, flow.guest) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            if hdr[0] != ECHO_REPLY_V4 {
                return None;
            }
            PacketBuilder::ipv4(s.octets(), d.octets(), TTL).icmpv4_echo_reply(flow.id, seq)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            if hdr[0] != ECHO_REPLY_V6 {
                return None;
            }
            let b =
                PacketBuilder::ipv6(s.octets(), d.octets(), TTL).icmpv6_echo_reply(flow.id, seq);
            let mut v = Vec::with_capacity(b.size(payload.len()));
            b.write(&mut v, payload).ok()?;
            return Some(v);
        }
        _ => return None,
    };
    let mut v = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut v, payload).ok()?;
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{Icmpv4Type, Icmpv6Type, NetSlice, SlicedPacket, TransportSlice};
    use mio::{Events, Poll};
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    const GW: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 1);

    /// An [`IcmpNat`] and the flow table it works in, as [`super::super::Nat`] holds them.
    fn pair(cfg: Arc<NatConfig>, counters: Arc<NatCounters>) -> (IcmpNat, FlowTable) {
        (
            IcmpNat::new(cfg.clone(), counters.clone()),
            FlowTable::new(cfg, counters),
        )
    }

    const SYSCTL: &str = "/proc/sys/net/ipv4/ping_group_range";

    /// Serialises the tests that change the (host-global) sysctl.
    static SYSCTL_LOCK: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

    /// Sets `ping_group_range` and restores the previous value on drop.
    struct PingRange {
        old: String,
    }

    impl PingRange {
        /// `None` (with a message) when not root or the sysctl cannot be written.
        fn set(value: &str) -> Option<PingRange> {
            if !crate::sys::process::is_root() {
                eprintln!("skipping: needs root to set net.ipv4.ping_group_range");
                return None;
            }
            let old = std::fs::read_to_string(SYSCTL).ok()?.trim().to_string();
            if let Err(e) = std::fs::write(SYSCTL, value) {
                eprintln!("skipping: cannot write {SYSCTL}: {e}");
                return None;
            }
            Some(PingRange { old })
        }
    }

    impl Drop for PingRange {
        fn drop(&mut self) {
            if let Err(e) = std::fs::write(SYSCTL, &self.old) {
                eprintln!("could not restore {SYSCTL} to {:?}: {e}", self.old);
            }
        }
    }

    fn pump(poll: &mut Poll, nat: &mut IcmpNat, want: usize) -> Vec<Vec<u8>> {
        let mut events = Events::with_capacity(16);
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

    #[test]
    fn echo_to_host_loopback() {
        let _lock = SYSCTL_LOCK.lock();
        let Some(_range) = PingRange::set("0 2147483647") else {
            return;
        };
        let gw6: Ipv6Addr = "fd88::1".parse().expect("v6");
        let counters = Arc::new(NatCounters::default());
        let mut poll = Poll::new().expect("poll");
        let (mut nat, mut flows) = pair(Arc::new(NatConfig::new(GW, Some(gw6))), counters.clone());
        let guest = IpAddr::V4(Ipv4Addr::new(10, 88, 0, 9));
        let now = Instant::now();
        nat.from_guest(
            poll.registry(),
            &mut flows,
            1,
            guest,
            IpAddr::V4(GW),
            0x1234,
            7,
            b"ping!",
            now,
        );
        nat.from_guest(
            poll.registry(),
            &mut flows,
            1,
            guest,
            IpAddr::V4(GW),
            0x1234,
            8,
            b"ping!",
            now,
        );
        assert_eq!(flows.counts().icmp, 1);
        assert_eq!(flows.flows_of(1), 1);
        let out = pump(&mut poll, &mut nat, 2);
        assert_eq!(out.len(), 2, "no echo replies");
        let mut seqs = Vec::new();
        for p in &out {
            let pkt = SlicedPacket::from_ip(p).expect("parse");
            let Some(NetSlice::Ipv4(ip)) = &pkt.net else {
                panic!("not IPv4")
            };
            assert_eq!(ip.header().source_addr(), GW);
            assert_eq!(ip.header().destination_addr(), Ipv4Addr::new(10, 88, 0, 9));
            let Some(TransportSlice::Icmpv4(icmp)) = &pkt.transport else {
                panic!("not ICMP")
            };
            let Icmpv4Type::EchoReply(e) = icmp.icmp_type() else {
                panic!("not an echo reply: {:?}", icmp.icmp_type())
            };
            assert_eq!(e.id, 0x1234);
            assert_eq!(icmp.payload(), b"ping!");
            let want = etherparse::Icmpv4Header::with_checksum(icmp.icmp_type(), icmp.payload());
            assert_eq!(icmp.checksum(), want.checksum, "bad ICMP checksum");
            seqs.push(e.seq);
        }
        seqs.sort();
        assert_eq!(seqs, vec![7, 8]);
        assert_eq!(counters.icmp_flows.load(Ordering::Relaxed), 1);

        // IPv6: the gateway's v6 address maps to ::1.
        let guest6 = IpAddr::V6("fd88::9".parse().expect("v6"));
        nat.from_guest(
            poll.registry(),
            &mut flows,
            1,
            guest6,
            IpAddr::V6(gw6),
            99,
            1,
            b"six",
            now,
        );
        let out = pump(&mut poll, &mut nat, 1);
        if out.is_empty() {
            eprintln!("no ICMPv6 echo reply from ::1 (IPv6 ping sockets unavailable?)");
        } else {
            let pkt = SlicedPacket::from_ip(&out[0]).expect("parse");
            let Some(NetSlice::Ipv6(ip)) = &pkt.net else {
                panic!("not IPv6")
            };
            assert_eq!(ip.header().source_addr(), gw6);
            let Some(TransportSlice::Icmpv6(icmp)) = &pkt.transport else {
                panic!("not ICMPv6")
            };
            let Icmpv6Type::EchoReply(e) = icmp.icmp_type() else {
                panic!("not an echo reply")
            };
            assert_eq!((e.id, e.seq), (99, 1));
            assert_eq!(icmp.payload(), b"six");
        }

        // Limits and idle expiry.
        assert_eq!(
            nat.expire(poll.registry(), &mut flows, now + Duration::from_secs(5)),
            0
        );
        assert_eq!(
            nat.expire(
                poll.registry(),
                &mut flows,
                Instant::now() + Duration::from_secs(11)
            ),
            2
        );
        assert_eq!(flows.counts().icmp, 0);
    }

    #[test]
    fn limits_and_dropped_destinations() {
        let _lock = SYSCTL_LOCK.lock();
        let Some(_range) = PingRange::set("0 2147483647") else {
            return;
        };
        let counters = Arc::new(NatCounters::default());
        let poll = Poll::new().expect("poll");
        let cfg = NatConfig {
            max_flows: 2,
            max_flows_per_guest: 1,
            ..NatConfig::new(GW, None)
        };
        let (mut nat, mut flows) = pair(Arc::new(cfg), counters.clone());
        let g1 = IpAddr::V4(Ipv4Addr::new(10, 88, 0, 9));
        let g2 = IpAddr::V4(Ipv4Addr::new(10, 88, 0, 10));
        let g3 = IpAddr::V4(Ipv4Addr::new(10, 88, 0, 11));
        let gw = IpAddr::V4(GW);
        let now = Instant::now();
        nat.from_guest(poll.registry(), &mut flows, 1, g1, gw, 1, 1, b"", now);
        nat.from_guest(poll.registry(), &mut flows, 1, g1, gw, 2, 1, b"", now); // per guest
        nat.from_guest(poll.registry(), &mut flows, 2, g2, gw, 1, 1, b"", now);
        nat.from_guest(poll.registry(), &mut flows, 3, g3, gw, 1, 1, b"", now); // total
        assert_eq!(flows.counts().icmp, 2);
        assert_eq!(counters.refused_limit.load(Ordering::Relaxed), 2);
        nat.from_guest(
            poll.registry(),
            &mut flows,
            1,
            g1,
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            1,
            1,
            b"",
            now,
        );
        assert_eq!(counters.dropped_dest.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn forbidden_ping_sockets_are_counted() {
        let _lock = SYSCTL_LOCK.lock();
        // "1 0" is an empty range: nobody, not even root, may open ping sockets.
        let guard = PingRange::set("1 0");
        if guard.is_none() {
            let cur = std::fs::read_to_string(SYSCTL).unwrap_or_default();
            if cur.split_whitespace().collect::<Vec<_>>() != ["1", "0"] {
                eprintln!("skipping: ping sockets may be allowed here ({cur:?})");
                return;
            }
        }
        let counters = Arc::new(NatCounters::default());
        let poll = Poll::new().expect("poll");
        let (mut nat, mut flows) = pair(Arc::new(NatConfig::new(GW, None)), counters.clone());
        let guest = IpAddr::V4(Ipv4Addr::new(10, 88, 0, 9));
        for seq in 0..3 {
            nat.from_guest(
                poll.registry(),
                &mut flows,
                1,
                guest,
                IpAddr::V4(GW),
                5,
                seq,
                b"x",
                Instant::now(),
            );
        }
        assert_eq!(flows.counts().icmp, 0);
        assert_eq!(counters.ping_forbidden.load(Ordering::Relaxed), 3);
        assert!(nat.warned);
        drop(guard);
    }
}
