//! The whole datapath, driven by a sequence of events: a bridge with four networks, guest
//! ports (port security on), a gateway on each network (three with NAT — one with
//! `host_loopback`, two without — and one internal), and NAT's host sockets and port forwards
//! replaced by an in-memory fake ([`FakeHost`]) — all on one virtual clock, on one thread,
//! deterministic.
//!
//! # Input
//!
//! A list of events, each an op byte then its fields (read with [`Reader`], zeros past the end):
//! - raw frames from a guest port (op 0: a 1-byte length, op 1: 2 bytes, big-endian);
//! - plausible frames from a *station* (a MAC and an address on a guest port): ARP, DHCP
//!   (discover, request, release, decline, inform), DNS over UDP (A/AAAA/ANY/PTR for local and
//!   outside names), ICMP echo, UDP, TCP segments (SYN, ACK with data, FIN, RST — with sequence
//!   numbers tracked from what the gateway sent, so handshakes complete), IPv6 (RS, NS, echo,
//!   UDP, TCP);
//! - any of those with one byte flipped, or (op bit 0x40) with offload state as an offload TAP
//!   would hand it over: pending checksum, a GSO frame, a kernel-checked checksum, or raw
//!   virtio-net header fields;
//! - with op bit 0x20, a structured frame from a *spoofed* station (4 more bytes, see
//!   [`World::spoof`]): foreign, the gateway's or invented MACs and addresses, source churn;
//! - hostile frames (op 16): rogue RA, DHCP and DHCPv6 server messages, overriding NA, ARP
//!   claims, redirects; destinations in every spelling of the host's loopback ([`dst4`],
//!   [`dst6`]);
//! - a client of the fake host connecting to a TCP port forward (op 17) or sending a datagram
//!   to the UDP one (op 18);
//! - frames from an 802.1Q trunk port carrying n0, n1, n2 as VLANs 10, 11, 12 and n3 as its
//!   native network (op 19, see [`World::inject_trunk`]): a station's structured frame tagged
//!   with its network's VLAN, or with another VLAN, an unmapped one, a priority tag, an
//!   802.1ad or a Q-in-Q tag, or a raw frame;
//! - the virtual clock advancing (1 ms .. one hour), which ticks every gateway;
//! - host socket readiness delivered to the gateways (the fake's connects, echoes, errors).
//!
//! After every event, frames are pumped until the network is quiet (bounded rounds) and the
//! invariants are checked ([`World::check`]):
//! - every port: `rx_frames == forwarded + dropped` (every frame received is accounted for);
//! - every FDB holds at most its cap;
//! - no frame crosses networks: a frame leaving a port of network X has a source MAC that entered
//!   network X (from one of its ports, or its gateway); the gateway only sends from its own MAC;
//!   every port a frame is queued for is in the network the frame belongs to; on the trunk,
//!   a frame's outer 802.1Q tag names the network it belongs to (untagged: the native
//!   network; never a VLAN the trunk does not map), and a frame of an unmapped VLAN is never
//!   forwarded;
//! - ownership ([`World::check_owned_sources`], [`World::check_ownership`],
//!   [`World::check_gateway_dst`]): a guest port forwards only sources it owns and no server
//!   messages; one owner per MAC/IP, per-port caps; neighbour entries, bound leases and DNS
//!   names only point at addresses of their own port (or of nobody); the gateway sends to the
//!   MAC of the port owning the destination;
//! - NAT destination policy: the fake refuses (panics) to open any socket for the internal
//!   network, or one to loopback in any spelling, link-local, multicast or the network's own
//!   subnets (exactly 127.0.0.1 and ::1 with `host_loopback`);
//! - NAT: flows within `max_flows`, live sockets per guest port within
//!   `max_flows_per_guest`, and exactly one live fake host socket per flow (no leak);
//! - bounded memory: neighbour tables, DNS-over-TCP connections, DHCP leases, the fake's queues;
//! - policy rules ([`set_policies`]): no frame a rule denies between guests reaches a guest;
//! - offloads: the engine's adaptation ([`usernet::offload::adapt`]) runs on every egress as in
//!   the engine; guest port 0 has no offloads, and every gateway frame it gets is complete (no
//!   offload state, within the MTU, right TCP checksum); port 1 takes GSO frames as they are.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use dhcproto::v4::{DhcpOption, Message as DhcpMessage, MessageType as DhcpType};
use dhcproto::{Encodable, Encoder};
use etherparse::{
    ArpEthIpv4Packet, ArpOperation, ArpPacket, Icmpv6Type, NetSlice, PacketBuilder, SlicedPacket,
    TransportSlice,
};
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use mio::event::Source;
use mio::{Interest, Poll, Registry, Token};
use usernet::bridge::security::{Claim, MAX_MACS, MAX_SEEN_V4, MAX_SEEN_V6, NetGuard};
use usernet::bridge::{
    Bridge, DropReason, FdbConfig, Limiter, ManualClock, NetworkId, NewPort, Port, PortId,
    PortPolicy, RateLimit, TrunkSpec,
};
use usernet::frame::{Frame, FramePool, VnetHdr};
use usernet::gateway::dns::Upstreams;
use usernet::gateway::{self, Driver, Gateway, GatewayConfig, ndp};
use usernet::nat::forward_rt::{Bound, Listener};
use usernet::nat::host::{HostDatagram, HostListener, HostSockets, HostStream};
use usernet::offload::{self, Offloads};
use usernet::policy::{PolicySpec, RuleSpec, Scope};
use usernet::wire::L2Header;
use usernet::wire::Mac;

use super::Reader;

/// One simulated network.
struct NetDef {
    name: &'static str,
    subnet: &'static str,
    /// IPv6 prefix (gateway IPv6, SLAAC), if any.
    v6: Option<&'static str>,
    /// No NAT at all (`internal = true`).
    internal: bool,
    /// The gateway's address reaches the host's loopback (`host_loopback`).
    loopback: bool,
    /// FDB cap.
    cap: usize,
}

/// The networks: n0 dual-stack with host loopback, n1 IPv4 only and n3 dual-stack with
/// `host_loopback = false`, n2 internal.
const NETS: [NetDef; 4] = [
    NetDef {
        name: "n0",
        subnet: "10.0.0.0/24",
        v6: Some("fd00::/64"),
        internal: false,
        loopback: true,
        cap: 6,
    },
    NetDef {
        name: "n1",
        subnet: "10.1.0.0/24",
        v6: None,
        internal: false,
        loopback: false,
        cap: 4,
    },
    NetDef {
        name: "n2",
        subnet: "10.2.0.0/24",
        v6: Some("fd02::/64"),
        internal: true,
        loopback: false,
        cap: 4,
    },
    NetDef {
        name: "n3",
        subnet: "10.3.0.0/24",
        v6: Some("fd03::/64"),
        internal: false,
        loopback: false,
        cap: 6,
    },
];
/// Guest ports per network.
const GUESTS: usize = 2;
/// The trunk port's VLAN ids of n0, n1, n2; n3 is its native network.
const TRUNK_VIDS: [u16; 3] = [10, 11, 12];
/// The trunk's native network.
const TRUNK_NATIVE: usize = 3;
/// Stations (MAC + address) per guest port.
const STATIONS: usize = 2;
/// NAT limits of every gateway (small, so they are hit).
const MAX_FLOWS: usize = 6;
const MAX_FLOWS_PER_GUEST: usize = 4;
/// Most events per input, and pump rounds per event.
const MAX_EVENTS: usize = 256;
const PUMP_ROUNDS: usize = 8;
/// Bytes a fake TCP peer buffers; datagrams a fake UDP/ping socket queues.
const FAKE_TCP_BUF: usize = 8192;
const FAKE_DGRAMS: usize = 8;

/// An unreachable network for the fake host (connects fail with `EHOSTUNREACH`).
const UNREACHABLE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// An outside host that answers everything.
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 5);
const OUTSIDE6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 5);

// ---- the fake host ----

/// One fake host socket's state, shared between the socket NAT owns and the [`FakeHost`].
#[derive(Debug, Default)]
struct SockState {
    token: Option<Token>,
    /// Datagrams (with their sender) waiting to be received.
    dgrams: VecDeque<(Vec<u8>, SocketAddr)>,
    /// Stream bytes waiting to be read.
    bytes: VecDeque<u8>,
    /// An error the next receive returns (or `take_error`, for streams).
    error: Option<i32>,
    /// TCP: connect state.
    connected: bool,
    /// TCP: the peer never answers the connect.
    hangs: bool,
    /// TCP: we shut our write side (the peer then closes after echoing).
    shut: bool,
    /// TCP: readiness reported once for a connect.
    signalled: bool,
    peer: Option<SocketAddr>,
    /// The guest port whose frame opened it (0: none, e.g. a port forward's).
    port: u32,
    /// A forward's UDP socket: answers sent to clients.
    sent: u64,
}

impl SockState {
    fn ready(&self) -> bool {
        !self.dgrams.is_empty()
            || self.error.is_some()
            || (self.peer.is_some() && !self.hangs && !self.signalled)
    }
}

fn os_err(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

fn would_block() -> io::Error {
    io::Error::from(io::ErrorKind::WouldBlock)
}

/// A fake datagram socket: UDP echoes on port 7, is refused on ports 10-19, discards elsewhere;
/// ping echoes (except from [`UNREACHABLE`]).
#[derive(Debug)]
struct FakeDgram {
    st: Arc<Mutex<SockState>>,
    target: Option<SocketAddr>,
    policy: Arc<Policy>,
    /// A UDP port forward's socket: `send_to` answers a client (counted, not echoed).
    forward: bool,
}

fn lock<T>(st: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    st.lock().unwrap_or_else(|e| e.into_inner())
}

/// `mio::event::Source` for a fake socket: registering keeps the token in its shared state
/// (`self.st`), where the fake host finds it to wake the gateway.
macro_rules! token_source {
    ($t:ty) => {
        impl Source for $t {
            fn register(&mut self, _: &Registry, token: Token, _: Interest) -> io::Result<()> {
                lock(&self.st).token = Some(token);
                Ok(())
            }
            fn reregister(&mut self, _: &Registry, token: Token, _: Interest) -> io::Result<()> {
                lock(&self.st).token = Some(token);
                Ok(())
            }
            fn deregister(&mut self, _: &Registry) -> io::Result<()> {
                lock(&self.st).token = None;
                Ok(())
            }
        }
    };
}

token_source!(FakeDgram);

impl HostDatagram for FakeDgram {
    fn send(&self, buf: &[u8]) -> io::Result<usize> {
        let Some(to) = self.target else {
            return Err(os_err(libc_consts::EDESTADDRREQ));
        };
        let mut st = lock(&self.st);
        match to.port() {
            7 if st.dgrams.len() < FAKE_DGRAMS => st.dgrams.push_back((buf.to_vec(), to)),
            10..=19 => st.error = Some(libc_consts::ECONNREFUSED),
            _ => {}
        }
        Ok(buf.len())
    }
    fn send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
        let mut st = lock(&self.st);
        if self.forward {
            // A guest's answer to a forwarded datagram's client.
            st.sent += 1;
            return Ok(buf.len());
        }
        // A ping socket: the reply is the request with the reply type.
        self.policy.check("ping", to.ip());
        if to.ip() == IpAddr::V4(UNREACHABLE) {
            return Err(os_err(libc_consts::EHOSTUNREACH));
        }
        if buf.len() >= 8 && st.dgrams.len() < FAKE_DGRAMS {
            let mut r = buf.to_vec();
            r[0] = if r[0] == 8 { 0 } else { 129 };
            st.dgrams.push_back((r, to));
        }
        Ok(buf.len())
    }
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.recv_from(buf).map(|(n, _)| n)
    }
    fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        let mut st = lock(&self.st);
        if let Some(e) = st.error.take() {
            return Err(os_err(e));
        }
        let Some((d, from)) = st.dgrams.pop_front() else {
            return Err(would_block());
        };
        let n = d.len().min(buf.len());
        buf[..n].copy_from_slice(&d[..n]);
        Ok((n, from))
    }
}

/// A fake TCP connection: connects to ports 100-199 are refused late, to 200-299 never complete;
/// others connect and echo what they get, closing after we shut our side.
#[derive(Debug)]
struct FakeStream {
    st: Arc<Mutex<SockState>>,
}

token_source!(FakeStream);

impl Read for FakeStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut st = lock(&self.st);
        if !st.connected {
            return Err(os_err(libc_consts::ENOTCONN));
        }
        if st.bytes.is_empty() {
            return if st.shut { Ok(0) } else { Err(would_block()) };
        }
        let n = buf.len().min(st.bytes.len());
        for (b, v) in buf.iter_mut().zip(st.bytes.drain(..n)) {
            *b = v;
        }
        Ok(n)
    }
}

impl Write for FakeStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut st = lock(&self.st);
        if !st.connected {
            return Err(os_err(libc_consts::ENOTCONN));
        }
        if st.shut {
            return Err(os_err(libc_consts::EPIPE));
        }
        let room = FAKE_TCP_BUF - st.bytes.len();
        if room == 0 {
            return Err(would_block());
        }
        let n = buf.len().min(room);
        st.bytes.extend(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl HostStream for FakeStream {
    fn take_error(&self) -> io::Result<Option<io::Error>> {
        let mut st = lock(&self.st);
        st.signalled = true;
        Ok(st.error.take().map(os_err))
    }
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        let st = lock(&self.st);
        match (st.connected, st.peer) {
            (true, Some(p)) => Ok(p),
            _ => Err(io::Error::from(io::ErrorKind::NotConnected)),
        }
    }
    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        if how != Shutdown::Read {
            lock(&self.st).shut = true;
        }
        Ok(())
    }
    fn reset_on_close(&self) {}
}

/// A port forward's TCP listener on the fake host: clients the harness makes connect wait in
/// `pending` until NAT accepts them.
#[derive(Debug, Default)]
struct ListenState {
    token: Option<Token>,
    pending: VecDeque<(Arc<Mutex<SockState>>, SocketAddr)>,
}

#[derive(Debug)]
struct FakeListener {
    st: Arc<Mutex<ListenState>>,
    host: Weak<FakeHost>,
}

token_source!(FakeListener);

impl HostListener for FakeListener {
    fn accept(&self) -> io::Result<(Box<dyn HostStream>, SocketAddr)> {
        let Some((st, client)) = lock(&self.st).pending.pop_front() else {
            return Err(would_block());
        };
        // A live flow from now on: counted with NAT's sockets (tagged port 0).
        if let Some(h) = self.host.upgrade() {
            h.track(&st);
        }
        Ok((Box::new(FakeStream { st }), client))
    }
}

/// Errno values (Linux), spelled out so this file needs no libc.
mod libc_consts {
    pub const EPIPE: i32 = 32;
    pub const EDESTADDRREQ: i32 = 89;
    pub const ENETUNREACH: i32 = 101;
    pub const ENOTCONN: i32 = 107;
    pub const ECONNREFUSED: i32 = 111;
    pub const EHOSTUNREACH: i32 = 113;
}

/// Where one network's NAT may open host sockets; [`FakeHost`] checks every socket it is asked
/// for (and every ping's destination) against it, independently of `nat::host_destination`.
#[derive(Debug)]
struct Policy {
    net: &'static str,
    /// No socket at all: an internal network.
    none: bool,
    /// Exactly 127.0.0.1 and ::1 are allowed: the gateway's address mapped to the host's
    /// loopback (`host_loopback = true`).
    loopback: bool,
    /// The network's own subnets (on-link, never NATed).
    local: Vec<ipnet::IpNet>,
}

impl Policy {
    fn of(i: usize, cfg: &GatewayConfig) -> Policy {
        let mut local = vec![ipnet::IpNet::V4(cfg.subnet)];
        local.extend(cfg.ipv6.map(ipnet::IpNet::V6));
        Policy {
            net: NETS[i].name,
            none: cfg.internal,
            loopback: cfg.host_loopback,
            local,
        }
    }

    /// Panics unless NAT may open a host socket (`what`) to `to`.
    fn check(&self, what: &str, to: IpAddr) {
        assert!(
            !self.none,
            "{}: internal network opened a host {what} socket to {to}",
            self.net
        );
        let lo = to == IpAddr::V4(Ipv4Addr::LOCALHOST) || to == IpAddr::V6(Ipv6Addr::LOCALHOST);
        if self.loopback && lo {
            return;
        }
        if let Some(why) = self.forbidden(to) {
            panic!(
                "{}: NAT opened a host {what} socket to {to} ({why}; host_loopback = {})",
                self.net, self.loopback
            );
        }
    }

    /// Why `to` is a destination that must never get a host socket (loopback in any spelling,
    /// this host, link-local, multicast, the network's own subnets), or `None`.
    fn forbidden(&self, to: IpAddr) -> Option<&'static str> {
        if self.local.iter().any(|n| n.contains(&to)) {
            return Some("the network's own subnet");
        }
        let a = match to {
            IpAddr::V4(a) => return v4_forbidden(a),
            IpAddr::V6(a) => a,
        };
        let s = a.segments();
        if a.is_loopback() {
            return Some("IPv6 loopback");
        }
        if a.is_unspecified() {
            return Some("IPv6 unspecified");
        }
        if s[0] & 0xff00 == 0xff00 {
            return Some("IPv6 multicast");
        }
        if s[0] & 0xffc0 == 0xfe80 {
            return Some("IPv6 link-local");
        }
        if s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1 {
            return Some("local-use NAT64 prefix");
        }
        if a == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
            return Some("IPv6 metadata service");
        }
        let v4 = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
        let embedded = match s {
            [0, 0, 0, 0, 0, 0xffff, hi, lo] | [0, 0, 0, 0, 0, 0, hi, lo] => Some(v4(hi, lo)),
            [0, 0, 0, 0, 0xffff, 0, hi, lo] => Some(v4(hi, lo)),
            [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => Some(v4(hi, lo)),
            [0x2002, hi, lo, ..] => Some(v4(hi, lo)),
            _ => None,
        }?;
        if self.local.iter().any(|n| n.contains(&IpAddr::V4(embedded))) {
            return Some("IPv4 of the network's own subnet embedded in IPv6");
        }
        v4_forbidden(embedded).map(|_| "a forbidden IPv4 address embedded in IPv6")
    }
}

/// Why an IPv4 destination must never get a host socket, or `None`.
fn v4_forbidden(a: Ipv4Addr) -> Option<&'static str> {
    let o = a.octets();
    match o[0] {
        127 => Some("IPv4 loopback"),
        0 => Some("this host (0.0.0.0/8)"),
        169 if o[1] == 254 => Some("IPv4 link-local / metadata"),
        224..=239 => Some("IPv4 multicast"),
        _ if a.is_broadcast() => Some("broadcast"),
        _ => None,
    }
}

/// NAT's host side, in memory. Keeps a weak reference to every socket it made, to report
/// readiness and to count the live ones (by the guest port whose frame opened it), and checks
/// every destination against its network's [`Policy`].
pub struct FakeHost {
    socks: Mutex<Vec<Weak<Mutex<SockState>>>>,
    policy: Arc<Policy>,
    /// The port of the frame the gateway is handling (0 outside frames).
    ingress: std::sync::atomic::AtomicU32,
    /// Port forwards' listeners and UDP sockets (not NAT flows; never counted as such).
    listeners: Mutex<Vec<Arc<Mutex<ListenState>>>>,
    fwd_udp: Mutex<Vec<Arc<Mutex<SockState>>>>,
}

impl FakeHost {
    fn new(policy: Policy) -> FakeHost {
        FakeHost {
            socks: Mutex::new(Vec::new()),
            policy: Arc::new(policy),
            ingress: std::sync::atomic::AtomicU32::new(0),
            listeners: Mutex::new(Vec::new()),
            fwd_udp: Mutex::new(Vec::new()),
        }
    }

    /// A new TCP forward listener (its index in `listeners`).
    fn listener(self: &Arc<Self>) -> FakeListener {
        let st = Arc::new(Mutex::new(ListenState::default()));
        self.listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(st.clone());
        FakeListener {
            st,
            host: Arc::downgrade(self),
        }
    }

    /// A new UDP forward socket.
    fn forward_udp(&self) -> FakeDgram {
        let st = Arc::new(Mutex::new(SockState::default()));
        self.fwd_udp
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(st.clone());
        FakeDgram {
            st,
            target: None,
            policy: self.policy.clone(),
            forward: true,
        }
    }

    /// A client connects to TCP forward listener `k` from `client`, sending `hello`.
    fn connect_client(&self, k: usize, client: SocketAddr, hello: &[u8]) -> Option<Token> {
        let ls = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        let l = ls.get(k % ls.len().max(1))?;
        let mut l = lock(l);
        if l.pending.len() >= FAKE_DGRAMS {
            return l.token;
        }
        let st = SockState {
            peer: Some(client),
            connected: true,
            bytes: hello.iter().copied().collect(),
            ..SockState::default()
        };
        l.pending.push_back((Arc::new(Mutex::new(st)), client));
        l.token
    }

    /// A client sends a datagram to UDP forward `k`.
    fn datagram(&self, k: usize, client: SocketAddr, data: &[u8]) -> Option<Token> {
        let v = self.fwd_udp.lock().unwrap_or_else(|e| e.into_inner());
        let s = v.get(k % v.len().max(1))?;
        let mut st = lock(s);
        if st.dgrams.len() < FAKE_DGRAMS {
            st.dgrams.push_back((data.to_vec(), client));
        }
        st.token
    }

    fn track(&self, st: &Arc<Mutex<SockState>>) {
        lock(st).port = self.ingress.load(Ordering::Relaxed);
        let mut v = self.socks.lock().unwrap_or_else(|e| e.into_inner());
        v.retain(|w| w.strong_count() > 0);
        v.push(Arc::downgrade(st));
    }

    /// Live sockets by the guest port that opened them (port 0: opened outside a frame).
    fn live_by_port(&self) -> HashMap<u32, usize> {
        let v = self.socks.lock().unwrap_or_else(|e| e.into_inner());
        let mut m = HashMap::new();
        for s in v.iter().filter_map(Weak::upgrade) {
            *m.entry(lock(&s).port).or_insert(0) += 1;
        }
        m
    }

    /// Tokens of registered sockets with something to report.
    fn ready(&self) -> Vec<Token> {
        let v = self.socks.lock().unwrap_or_else(|e| e.into_inner());
        let mut t: Vec<Token> = v
            .iter()
            .filter_map(Weak::upgrade)
            .filter_map(|s| {
                let st = lock(&s);
                st.token.filter(|_| st.ready())
            })
            .collect();
        for l in self
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let l = lock(l);
            t.extend(l.token.filter(|_| !l.pending.is_empty()));
        }
        for u in self
            .fwd_udp
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let u = lock(u);
            t.extend(u.token.filter(|_| !u.dgrams.is_empty()));
        }
        t
    }

    /// Sockets NAT still holds, and the bytes/datagrams they queue.
    fn live(&self) -> (usize, usize) {
        let v = self.socks.lock().unwrap_or_else(|e| e.into_inner());
        let mut n = 0;
        let mut queued = 0;
        for s in v.iter().filter_map(Weak::upgrade) {
            n += 1;
            let st = lock(&s);
            queued += st.bytes.len() + st.dgrams.iter().map(|d| d.0.len()).sum::<usize>();
        }
        (n, queued)
    }
}

impl HostSockets for FakeHost {
    fn udp(&self, _bind: SocketAddr, target: SocketAddr) -> io::Result<Box<dyn HostDatagram>> {
        self.policy.check("UDP", target.ip());
        if target.ip() == IpAddr::V4(UNREACHABLE) {
            return Err(os_err(libc_consts::ENETUNREACH));
        }
        let st = Arc::new(Mutex::new(SockState::default()));
        self.track(&st);
        Ok(Box::new(FakeDgram {
            st,
            target: Some(target),
            policy: self.policy.clone(),
            forward: false,
        }))
    }

    fn ping(&self, host: IpAddr, _bind: Option<SocketAddr>) -> io::Result<Box<dyn HostDatagram>> {
        self.policy.check("ping", host);
        let st = Arc::new(Mutex::new(SockState::default()));
        self.track(&st);
        Ok(Box::new(FakeDgram {
            st,
            target: None,
            policy: self.policy.clone(),
            forward: false,
        }))
    }

    fn tcp_connect(
        &self,
        to: SocketAddr,
        _bind: Option<SocketAddr>,
    ) -> io::Result<Box<dyn HostStream>> {
        self.policy.check("TCP", to.ip());
        if to.ip() == IpAddr::V4(UNREACHABLE) {
            return Err(os_err(libc_consts::EHOSTUNREACH));
        }
        if (1..100).contains(&to.port()) && to.port() != 80 && to.port() != 22 {
            return Err(os_err(libc_consts::ECONNREFUSED));
        }
        let mut s = SockState {
            peer: Some(to),
            ..SockState::default()
        };
        match to.port() {
            100..=199 => s.error = Some(libc_consts::ECONNREFUSED),
            200..=299 => s.hangs = true,
            _ => s.connected = true,
        }
        let st = Arc::new(Mutex::new(s));
        self.track(&st);
        Ok(Box::new(FakeStream { st }))
    }
}

// ---- the world ----

/// A guest station: a MAC and addresses behind a guest port. `eth` is the Ethernet source its
/// frames carry and `mac` the MAC inside them (ARP sender, DHCP `chaddr`, NDP link-layer
/// option): the same for an honest station, not for a spoofed one ([`World::spoof`]).
#[derive(Debug, Clone, Copy)]
struct Station {
    net: usize,
    port: usize,
    eth: Mac,
    mac: Mac,
    ip: Ipv4Addr,
    ip6: Ipv6Addr,
}

/// TCP sequence state of one (station, source port, destination) flow, as the harness sees it.
#[derive(Debug, Default, Clone, Copy)]
struct Seq {
    ours: u32,
    theirs: Option<u32>,
}

struct Net {
    gw: Arc<Gateway>,
    driver: Driver,
    host: Arc<FakeHost>,
    gw_port: Arc<Port>,
    guests: Vec<Arc<Port>>,
    /// Source MACs that entered this network.
    seen: HashSet<Mac>,
    /// Frames the bridge delivered to the gateway.
    delivered: u64,
    /// The network's ownership table, and its generation when the gateway last ran.
    guard: Arc<usernet::bridge::security::NetGuard>,
    seen_gen: u64,
    /// Guest port [`LIMITED`]'s tx rate limit.
    limit: TxLimit,
    _poll: Poll,
}

/// The guest port of each network with a tx rate limit.
const LIMITED: usize = 1;

/// The limit of guest port [`LIMITED`]: 1 Mbit/s with a 2 KiB bucket, 200 frames/s. Small, so
/// fuzz inputs exhaust it.
fn tx_limit() -> RateLimit {
    let mut l = RateLimit::new(0, 1, 0, 200);
    l.burst_kib = 2;
    l
}

/// A tx rate limit applied where the harness drains the port's ring, as the engine's flush
/// does: a frame without tokens is held, and the ring waits behind it. Checks that what passes
/// stays within the buckets: capacity + rate × time + one frame.
struct TxLimit {
    lim: Limiter,
    held: Option<Frame>,
    bytes: u64,
    frames: u64,
    biggest: u64,
}

impl TxLimit {
    fn new() -> Self {
        TxLimit {
            lim: tx_limit().tx().expect("limited"),
            held: None,
            bytes: 0,
            frames: 0,
            biggest: 0,
        }
    }

    /// The next frame for the port at `now_ns` (since the start), if the limit lets one go.
    fn next(&mut self, port: &Port, now_ns: u64) -> Option<Frame> {
        let f = match self.held.take() {
            Some(f) => f,
            None => port.tx.pop()?,
        };
        if self.lim.admit(f.len(), now_ns).is_err() {
            self.held = Some(f);
            return None;
        }
        let len = f.len() as u64;
        self.bytes += len;
        self.frames += 1;
        self.biggest = self.biggest.max(len);
        let b = self.lim.bytes().expect("byte bucket");
        let most = b.capacity() + b.rate() * now_ns / 1_000_000_000 + self.biggest;
        assert!(
            self.bytes <= most,
            "rate limit let {} bytes through, at most {most}",
            self.bytes
        );
        let p = self.lim.packets().expect("packet bucket");
        let most = p.capacity() + p.rate() * now_ns / 1_000_000_000 + 1;
        assert!(
            self.frames <= most,
            "rate limit let {} frames through, at most {most}",
            self.frames
        );
        Some(f)
    }
}

/// The simulated datapath. See the module docs.
pub struct World {
    clock: Arc<ManualClock>,
    br: Arc<Bridge>,
    nets: Vec<Net>,
    /// An 802.1Q trunk port in every network (see [`TRUNK_VIDS`]).
    trunk: Arc<Port>,
    epoch: Instant,
    elapsed: Duration,
    seqs: HashMap<(Mac, u16, IpAddr, u16), Seq>,
}

fn gw_mac(i: usize) -> Mac {
    Mac([0x02, 0x47, 0, 0, 0, i as u8 + 1])
}

fn subnet(i: usize) -> ipnet::Ipv4Net {
    NETS[i].subnet.parse().expect("subnet")
}

impl World {
    /// Builds the bridge, the networks, their gateways and guest ports.
    pub fn new() -> World {
        let clock = Arc::new(ManualClock::new());
        let br = Arc::new(Bridge::new(clock.clone(), FramePool::new(1522, 64)));
        let epoch = Instant::now();
        let mut nets = Vec::new();
        for (i, d) in NETS.iter().enumerate() {
            let (name, v6, internal, cap) = (d.name, d.v6, d.internal, d.cap);
            br.add_network(name, FdbConfig::new(cap, 300_000))
                .expect("network");
            let mut cfg = GatewayConfig::new(name, subnet(i));
            cfg.mac = gw_mac(i);
            cfg.ipv6 = v6.map(|p| p.parse().expect("prefix"));
            cfg.internal = internal;
            cfg.host_loopback = d.loopback;
            cfg.upstreams = Upstreams::Explicit(Vec::new());
            cfg.dns_workers = 0;
            cfg.max_flows = MAX_FLOWS;
            cfg.max_flows_per_guest = MAX_FLOWS_PER_GUEST;
            cfg.lease_secs = 120;
            let base = u32::from(subnet(i).network());
            cfg.dhcp_range = Some((Ipv4Addr::from(base + 100), Ipv4Addr::from(base + 103)));
            let gw_port = br
                .add_port(
                    name,
                    NewPort {
                        name: format!("gw.{name}"),
                        kind: "memory",
                        policy: cfg.port_policy(),
                        ring: 64,
                        owner: 0,
                    },
                )
                .expect("gateway port");
            let guests: Vec<Arc<Port>> = (0..GUESTS)
                .map(|p| {
                    br.add_port(
                        name,
                        NewPort {
                            name: format!("g{i}{p}"),
                            kind: "memory",
                            policy: {
                                let mut pol = PortPolicy::default();
                                pol.rate_limit = (p == LIMITED).then(tx_limit);
                                pol
                            },
                            ring: 64,
                            owner: 0,
                        },
                    )
                    .expect("guest port")
                })
                .collect();
            let poll = Poll::new().expect("poll");
            let host = Arc::new(FakeHost::new(Policy::of(i, &cfg)));
            let names = port_names(br.clone(), gw_port.id);
            let guard = br
                .topology()
                .network_by_name(name)
                .map(|n| n.net.guard.clone())
                .expect("network guard");
            let (gw, mut driver) =
                gateway::standalone(cfg, &poll, names, guard.clone(), host.clone(), epoch)
                    .expect("gateway");
            *gw.port.lock() = Some(gw_port.id);
            let net_id = br.topology().network_by_name(name).map(|n| n.net.id);
            driver.set_policy(br.policy().clone(), net_id.expect("network id"));
            set_policies(&br, i, net_id.expect("network id"), &guests);
            driver.announce();
            if !internal {
                // Port forwards, on the fake host: TCP to guest port 0's name, to a station's
                // address, to a DHCP hostname; UDP to guest port 1's name.
                let tcp = |to: String, guest_port: u16| {
                    Bound::new(
                        vec![Listener::HostTcp {
                            sock: Box::new(host.listener()),
                            guest_port,
                        }],
                        to,
                    )
                };
                let fwds = [
                    tcp(format!("g{i}0"), 80),
                    tcp(station_in(i, 0x08).ip.to_string(), 22),
                    tcp("h2".into(), 8080),
                    Bound::new(
                        vec![Listener::HostUdp {
                            sock: Box::new(host.forward_udp()),
                            guest_port: 7,
                        }],
                        format!("g{i}1"),
                    ),
                ];
                for (id, b) in fwds.into_iter().enumerate() {
                    driver.add_forward(id as u64 + 1, b).expect("forward");
                }
            }
            nets.push(Net {
                gw,
                driver,
                host,
                gw_port,
                guests,
                seen: HashSet::from([gw_mac(i)]),
                delivered: 0,
                seen_gen: guard.generation(),
                guard,
                limit: TxLimit::new(),
                _poll: poll,
            });
        }
        let mut policy = PortPolicy::default();
        policy.trunk = Some(TrunkSpec::new(
            NETS[..3].iter().zip(TRUNK_VIDS).map(|(n, v)| (n.name, v)),
            Some(NETS[TRUNK_NATIVE].name),
        ));
        let trunk = br
            .add_port(
                "",
                NewPort {
                    name: "trunk".into(),
                    kind: "memory",
                    policy,
                    ring: 64,
                    owner: 0,
                },
            )
            .expect("trunk port");
        World {
            clock,
            br,
            nets,
            trunk,
            epoch,
            elapsed: Duration::ZERO,
            seqs: HashMap::new(),
        }
    }

    fn now(&self) -> Instant {
        self.epoch + self.elapsed
    }

    /// The next frame the engine would hand guest port `p` of network `i` (through its rate
    /// limit, for [`LIMITED`]).
    fn next_for_guest(&mut self, i: usize, p: usize) -> Option<Frame> {
        let n = &mut self.nets[i];
        if p != LIMITED {
            return n.guests[p].tx.pop();
        }
        let now_ns = u64::try_from(self.elapsed.as_nanos()).unwrap_or(u64::MAX);
        n.limit.next(&n.guests[p], now_ns)
    }

    /// Station `sel`: network `sel & 3`, guest port `(sel >> 2) & 1`, station `(sel >> 3) & 1`.
    fn station(&self, sel: u8) -> Station {
        station_in(usize::from(sel & 3) % NETS.len(), sel)
    }

    /// The station `spoof` makes of `s` (4 input bytes `[macs, ips, other, x]`): its Ethernet
    /// source (low nibble of `macs`) and inner MAC (high nibble) become another station's
    /// (`other`: of the same network unless its bit 7 is set), the gateway's, an invented,
    /// multicast or zero MAC; its IPv4 (low nibble of `ips`) and IPv6 (high nibble) sources
    /// another station's, a fresh address of the subnet/prefix (source churn, picked by
    /// `other`/`x`), the gateway's, out-of-subnet, unspecified, loopback, broadcast, link-local
    /// or IPv4-mapped ones. Values past the list keep the station's own.
    fn spoof(&self, s: Station, b: [u8; 4]) -> Station {
        let [macs, ips, o, x] = b;
        let other = if o & 0x80 != 0 {
            self.station(o)
        } else {
            station_in(s.net, o)
        };
        let mac = |k: u8| match k {
            1 => other.mac,
            2 => gw_mac(s.net),
            3 => Mac([0x02, 0xee, s.net as u8, s.port as u8, o, x]),
            4 => Mac([0x01, 0, 0x5e, 0, o, x]),
            5 => Mac([0; 6]),
            _ => s.mac,
        };
        let base = subnet(s.net).network().octets();
        let ip = match ips & 15 {
            1 => other.ip,
            2 => Ipv4Addr::new(base[0], base[1], base[2], x),
            3 => gw4(s.net),
            4 => Ipv4Addr::new(198, 18, o, x),
            5 => Ipv4Addr::UNSPECIFIED,
            6 => Ipv4Addr::new(127, 0, 0, x),
            7 => Ipv4Addr::BROADCAST,
            8 => subnet(s.net).broadcast(),
            _ => s.ip,
        };
        let p6 = 0xfd00 + s.net as u16;
        let y = u16::from_be_bytes([o, x]);
        let ip6 = match ips >> 4 {
            1 => other.ip6,
            2 => Ipv6Addr::new(p6, 0, 0, 0, 0x0200, 0, 0, y),
            3 => gw6(s.net),
            4 => Ipv6Addr::new(0xfe80, 0, 0, 0, 0x0200, 0, 0, y),
            5 => Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, y),
            6 => Ipv6Addr::LOCALHOST,
            7 => Ipv4Addr::new(base[0], base[1], base[2], x).to_ipv6_mapped(),
            8 => Ipv6Addr::UNSPECIFIED,
            9 => ndp::link_local(gw_mac(s.net)),
            _ => s.ip6,
        };
        Station {
            eth: mac(macs & 15),
            mac: mac(macs >> 4),
            ip,
            ip6,
            ..s
        }
    }
}

/// Station `sel` of network `net`: guest port `(sel >> 2) & 1`, station `(sel >> 3) & 1`.
fn station_in(net: usize, sel: u8) -> Station {
    let port = usize::from(sel >> 2) % GUESTS;
    let k = usize::from(sel >> 3) % STATIONS;
    let host = 10 + (port * STATIONS + k) as u8;
    let base = subnet(net).network().octets();
    let mac = Mac([0x02, 0, net as u8, port as u8, k as u8, 1]);
    Station {
        net,
        port,
        eth: mac,
        mac,
        ip: Ipv4Addr::new(base[0], base[1], base[2], host),
        ip6: Ipv6Addr::new(0xfd00 + net as u16, 0, 0, 0, 0, 0, 0, u16::from(host)),
    }
}

impl World {
    /// Sends `frame` into the bridge from guest port `port` of network `net`.
    fn inject(&mut self, net: usize, port: usize, frame: &[u8]) {
        self.inject_with(net, port, frame, VnetHdr::default());
    }

    /// Like [`Self::inject`], for a frame with offload state (as from an offload TAP).
    fn inject_with(&mut self, net: usize, port: usize, frame: &[u8], vnet: VnetHdr) {
        let n = &mut self.nets[net];
        if let Some(src) = frame.get(6..12).and_then(|s| <[u8; 6]>::try_from(s).ok()) {
            n.seen.insert(Mac(src));
        }
        let ingress = n.guests[port].clone();
        let Some(mut f) = self.br.pool().frame_from(frame) else {
            return;
        };
        f.meta.vnet = vnet;
        let topo = self.br.topology();
        let before = ingress.counters.forwarded.load(Ordering::Relaxed);
        self.br
            .forward(&topo, &ingress, f, self.br.now(), &mut |q| {
                assert!(q.carries(ingress.network), "frame sent to another network");
                assert_ne!(q.id, ingress.id, "frame sent back out of its ingress");
            });
        if ingress.counters.forwarded.load(Ordering::Relaxed) != before {
            self.check_owned_sources(net, &ingress, frame);
        }
    }

    /// The network a frame from the trunk belongs to, as the trunk maps its outer 802.1Q tag
    /// (index into [`NETS`]); `None`: an unmapped VLAN (or a runt), to be dropped.
    fn trunk_net(frame: &[u8]) -> Option<usize> {
        if frame.len() < 14 {
            return None;
        }
        if frame[12..14] != [0x81, 0x00] {
            return Some(TRUNK_NATIVE);
        }
        let vid = u16::from_be_bytes([*frame.get(14)?, *frame.get(15)?]) & 0x0fff;
        if frame.len() < 18 {
            return None;
        }
        if vid == 0 {
            return Some(TRUNK_NATIVE);
        }
        TRUNK_VIDS.iter().position(|v| *v == vid)
    }

    fn net_id(&self, i: usize) -> NetworkId {
        self.nets[i].gw_port.network
    }

    /// Sends `frame` into the bridge from the trunk port: it must reach only ports of the
    /// network its tag maps to, or nothing (counted) when the VLAN is not mapped; its sources
    /// are the trunk's own in that network.
    fn inject_trunk(&mut self, frame: &[u8]) {
        let net = Self::trunk_net(frame);
        let mut inner = frame.to_vec();
        if let Some(i) = net {
            if let Some(src) = frame.get(6..12).and_then(|s| <[u8; 6]>::try_from(s).ok()) {
                self.nets[i].seen.insert(Mac(src));
            }
            if inner.len() >= 18 && inner[12..14] == [0x81, 0x00] {
                inner.drain(12..16);
            }
        }
        let Some(f) = self.br.pool().frame_from(frame) else {
            return;
        };
        let trunk = self.trunk.clone();
        let want = net.map(|i| self.net_id(i));
        let topo = self.br.topology();
        let c = &trunk.counters;
        let (before, unmapped) = (
            c.forwarded.load(Ordering::Relaxed),
            c.drops(DropReason::UnmappedVlan),
        );
        self.br.forward(&topo, &trunk, f, self.br.now(), &mut |q| {
            let Some(want) = want else {
                panic!("a frame of an unmapped VLAN was forwarded to {}", q.name);
            };
            assert!(q.carries(want), "trunk frame sent to another network");
            assert_ne!(q.id, trunk.id, "frame sent back out of the trunk");
        });
        if net.is_none() && frame.len() >= 18 {
            assert_eq!(
                c.drops(DropReason::UnmappedVlan),
                unmapped + 1,
                "unmapped VLAN not counted"
            );
        }
        if let Some(i) = net
            && c.forwarded.load(Ordering::Relaxed) != before
        {
            self.check_owned_sources(i, &trunk, &inner);
        }
    }

    /// A frame a (checked) guest port just forwarded: every source in it is the port's own,
    /// and it is no router advertisement, redirect or DHCP server message.
    fn check_owned_sources(&self, net: usize, port: &Port, frame: &[u8]) {
        let guard = &self.guard(net);
        let me = Some(port.id);
        let who = &port.name;
        let Ok(h) = L2Header::parse(frame) else {
            return;
        };
        assert_eq!(
            guard.mac_owner(h.src),
            me,
            "{who} forwarded a frame from {}, not its MAC",
            h.src
        );
        let Ok(p) = SlicedPacket::from_ethernet(frame) else {
            return;
        };
        let ip_ok = |ip: IpAddr, what: &str| {
            assert_eq!(
                guard.ip_owner(ip),
                me,
                "{who} forwarded a frame with {what} {ip}, not its address"
            );
        };
        match &p.net {
            Some(NetSlice::Arp(a)) => {
                if let Ok(mac) = <[u8; 6]>::try_from(a.sender_hw_addr()) {
                    assert_eq!(
                        guard.mac_owner(Mac(mac)),
                        me,
                        "{who} forwarded an ARP with sender MAC {}",
                        Mac(mac)
                    );
                }
                if let Ok(ip) = <[u8; 4]>::try_from(a.sender_protocol_addr()) {
                    let ip = Ipv4Addr::from(ip);
                    if !ip.is_unspecified() {
                        ip_ok(IpAddr::V4(ip), "ARP sender");
                    }
                }
            }
            Some(NetSlice::Ipv4(ip)) => {
                let src = ip.header().source_addr();
                let dhcp = matches!(&p.transport, Some(TransportSlice::Udp(u))
                    if u.source_port() == 68 && u.destination_port() == 67);
                if !(src.is_unspecified() && dhcp) {
                    ip_ok(IpAddr::V4(src), "IPv4 source");
                }
                if let Some(TransportSlice::Udp(u)) = &p.transport {
                    assert_ne!(u.source_port(), 67, "{who} forwarded a DHCP server message");
                }
            }
            Some(NetSlice::Ipv6(ip)) => {
                let src = ip.header().source_addr();
                let icmp = matches!(&p.transport, Some(TransportSlice::Icmpv6(_)));
                if !(src.is_unspecified() && icmp) {
                    ip_ok(IpAddr::V6(src), "IPv6 source");
                }
                match &p.transport {
                    Some(TransportSlice::Udp(u)) => {
                        assert_ne!(
                            u.source_port(),
                            547,
                            "{who} forwarded a DHCPv6 server message"
                        );
                    }
                    Some(TransportSlice::Icmpv6(i)) => {
                        let t = i.type_u8();
                        assert!(
                            t != 134 && t != 137,
                            "{who} forwarded an ICMPv6 type {t} (RA/redirect)"
                        );
                        // NDP link-layer address options are the port's MACs.
                        let skip = match t {
                            133 => 4,
                            135 | 136 => 20,
                            _ => usize::MAX,
                        };
                        let mut o = i.payload().get(skip..).unwrap_or(&[]);
                        while o.len() >= 8 && o[1] != 0 {
                            let n = usize::from(o[1]) * 8;
                            if (o[0] == 1 || o[0] == 2) && o.len() >= n && n >= 8 {
                                let m = Mac([o[2], o[3], o[4], o[5], o[6], o[7]]);
                                assert_eq!(
                                    guard.mac_owner(m),
                                    me,
                                    "{who} forwarded NDP with link-layer option {m}"
                                );
                            }
                            o = o.get(n..).unwrap_or(&[]);
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }

    /// Network `net`'s ownership table.
    fn guard(&self, net: usize) -> Arc<NetGuard> {
        let topo = self.br.topology();
        topo.network(self.nets[net].gw_port.network)
            .expect("network")
            .net
            .guard
            .clone()
    }

    /// A unicast IP frame the gateway sent reached guest port `p` (as addressed, or flooded):
    /// its destination MAC belongs to the port that owns its destination address (the
    /// gateway's neighbour entry follows the address's owner).
    fn check_gateway_dst(&self, net: usize, p: usize, frame: &[u8]) {
        let Ok(pk) = SlicedPacket::from_ethernet(frame) else {
            return;
        };
        let dst = match &pk.net {
            Some(NetSlice::Ipv4(ip)) => IpAddr::V4(ip.header().destination_addr()),
            Some(NetSlice::Ipv6(ip)) => IpAddr::V6(ip.header().destination_addr()),
            _ => return,
        };
        let Ok(h) = L2Header::parse(frame) else {
            return;
        };
        if h.dst.is_multicast() {
            return;
        }
        let guard = self.guard(net);
        if let Some(o) = guard.ip_owner(dst) {
            let m = guard.mac_owner(h.dst);
            assert_eq!(
                m,
                Some(o),
                "{}: the gateway sent a frame for {dst} to {} (port {m:?}; seen on {}), but port #{} owns {dst}",
                NETS[net].name,
                h.dst,
                self.nets[net].guests[p].name,
                o.0
            );
        }
    }

    /// A client of the fake host connects to one of network `net`'s TCP forwards (input:
    /// network, forward, client, payload length).
    fn forward_connect(&mut self, r: &mut Reader<'_>) {
        let [n, k, c, len] = r.array::<4>();
        let net = usize::from(n & 3) % NETS.len();
        let client = fwd_client(c);
        let hello = vec![b'h'; usize::from(len % 64)];
        let now = self.now();
        let nt = &mut self.nets[net];
        if let Some(t) = nt.host.connect_client(usize::from(k), client, &hello) {
            nt.driver.host_ready(t, now);
        }
    }

    /// A client sends a datagram to network `net`'s UDP forward.
    fn forward_datagram(&mut self, r: &mut Reader<'_>) {
        let [n, c, len] = r.array::<3>();
        let net = usize::from(n & 3) % NETS.len();
        let client = fwd_client(c);
        let data = vec![b'u'; usize::from(len % 128)];
        let now = self.now();
        let nt = &mut self.nets[net];
        if let Some(t) = nt.host.datagram(0, client, &data) {
            nt.driver.host_ready(t, now);
        }
    }

    /// Delivers frames until the network is quiet (bounded).
    // The index also names the network's constants and gateway MAC; `self` is borrowed again
    // inside (`observe`), so an iterator over `self.nets` does not fit.
    #[allow(clippy::needless_range_loop)]
    fn pump(&mut self) {
        let now = self.now();
        for _ in 0..PUMP_ROUNDS {
            let mut moved = false;
            for i in 0..self.nets.len() {
                // Frames to the gateway.
                let mut got = false;
                while let Some(f) = self.nets[i].gw_port.tx.pop() {
                    moved = true;
                    got = true;
                    let src = Mac(f.data()[6..12].try_into().expect("mac"));
                    assert!(
                        self.nets[i].seen.contains(&src),
                        "gateway of {} got a frame from {src}, which never entered it",
                        NETS[i].name
                    );
                    // What the engine does on the gateway port's flush.
                    let mut q = VecDeque::new();
                    if offload::adapt(f, gateway::GATEWAY_OFFLOADS, self.br.pool(), &mut q).is_ok()
                    {
                        for g in q {
                            assert!(
                                gateway::GATEWAY_OFFLOADS.accepts(&g.meta.vnet),
                                "adapt let through a frame the gateway link does not take"
                            );
                            self.nets[i].delivered += 1;
                            let nt = &mut self.nets[i];
                            nt.host.ingress.store(g.meta.ingress, Ordering::Relaxed);
                            nt.driver.frame_with(g.data(), g.meta, now);
                            nt.host.ingress.store(0, Ordering::Relaxed);
                        }
                    }
                }
                // As the gateway port does after each batch, and when the network's ownership
                // table changed (the table wakes the gateway; otherwise an idle gateway needs
                // no tick: its timers move only with the clock, which ticks every gateway).
                let generation = self.nets[i].guard.generation();
                if got || generation != self.nets[i].seen_gen {
                    self.nets[i].seen_gen = generation;
                    self.nets[i].driver.tick(now);
                }
                let out = self.nets[i].driver.take_output();
                assert!(out.len() <= gateway::MAX_PENDING_FRAMES);
                for fr in out {
                    moved = true;
                    assert!(fr.len() >= 14, "runt frame from the gateway");
                    assert_eq!(
                        &fr.data()[6..12],
                        &gw_mac(i).0,
                        "gateway sent from a foreign MAC"
                    );
                    // As the engine's gateway port hands them over: the driver's own buffers.
                    let ingress = self.nets[i].gw_port.clone();
                    let topo = self.br.topology();
                    self.br
                        .forward(&topo, &ingress, fr, self.br.now(), &mut |q| {
                            assert!(q.carries(ingress.network), "gateway frame crossed networks");
                        });
                }
                // Frames to guests: check and learn TCP sequence numbers.
                // Guest port 0 is a link without offloads (what the engine gives it must be
                // complete frames within the MTU), port 1 an offload TAP (takes anything).
                for p in 0..GUESTS {
                    while let Some(f) = self.next_for_guest(i, p) {
                        moved = true;
                        let src = Mac(f.data()[6..12].try_into().expect("mac"));
                        assert!(
                            self.nets[i].seen.contains(&src),
                            "port {} of {} got a frame from {src}, which never entered it",
                            p,
                            NETS[i].name
                        );
                        let accept = if p == 0 {
                            Offloads::NONE
                        } else {
                            Offloads::ALL
                        };
                        if src == gw_mac(i) {
                            self.check_gateway_dst(i, p, f.data());
                        } else {
                            assert!(
                                !policy_denied(i, p, f.data()),
                                "port {p} of {} got a frame its policy denies",
                                NETS[i].name
                            );
                        }
                        let mut q = VecDeque::new();
                        if offload::adapt(f, accept, self.br.pool(), &mut q).is_err() {
                            continue;
                        }
                        for g in q {
                            if p == 0 && src == gw_mac(i) {
                                check_complete(g.data(), &g.meta.vnet);
                            }
                            self.observe(g.data());
                        }
                    }
                }
            }
            // Frames to the trunk: the outer tag names a network the frame may be in.
            while let Some(f) = self.trunk.tx.pop() {
                moved = true;
                let d = f.data();
                let i = Self::trunk_net(d).unwrap_or_else(|| {
                    panic!(
                        "the trunk sent a frame of an unmapped VLAN: {:02x?}",
                        &d[..d.len().min(18)]
                    )
                });
                let src = Mac(d[6..12].try_into().expect("mac"));
                assert!(
                    self.nets[i].seen.contains(&src),
                    "the trunk sent a frame from {src} as {}'s, which it never entered",
                    NETS[i].name
                );
                if i == TRUNK_NATIVE {
                    assert_ne!(&d[12..14], &[0x81, 0x00], "native frame with an 802.1Q tag");
                }
            }
            if !moved {
                break;
            }
        }
    }

    /// Learns the gateway's TCP sequence numbers from a frame to a station.
    fn observe(&mut self, frame: &[u8]) {
        let Ok(p) = SlicedPacket::from_ethernet(frame) else {
            return;
        };
        let Some(TransportSlice::Tcp(t)) = p.transport else {
            return;
        };
        let src = match p.net {
            Some(NetSlice::Ipv4(ip)) => IpAddr::V4(ip.header().source_addr()),
            Some(NetSlice::Ipv6(ip)) => IpAddr::V6(ip.header().source_addr()),
            _ => return,
        };
        let Some(mac) = frame.get(..6).and_then(|m| <[u8; 6]>::try_from(m).ok()) else {
            return;
        };
        let key = (Mac(mac), t.destination_port(), src, t.source_port());
        let len = t.payload().len() as u32 + u32::from(t.syn()) + u32::from(t.fin());
        let e = self.seqs.entry(key).or_default();
        e.theirs = Some(t.sequence_number().wrapping_add(len));
        if t.rst() {
            self.seqs.remove(&key);
        }
    }

    /// Delivers every ready fake socket's token to its gateway.
    fn host_ready(&mut self) {
        let now = self.now();
        for n in &mut self.nets {
            for t in n.host.ready() {
                n.driver.host_ready(t, now);
            }
        }
    }

    /// Moves the clock on and ticks every gateway.
    fn advance(&mut self, d: Duration) {
        self.elapsed += d;
        self.clock.advance(d);
        let now = self.now();
        for n in &mut self.nets {
            n.driver.tick(now);
        }
    }

    /// The gateway of network `i` (0..3).
    pub fn gateway(&self, i: usize) -> &Arc<Gateway> {
        &self.nets[i].gw
    }

    /// The trunk port's counters.
    pub fn trunk_stats(&self) -> usernet::bridge::PortStats {
        self.trunk.counters.snapshot()
    }

    /// Frames the guest ports of network `i` received, by port.
    pub fn guest_tx(&self, i: usize) -> Vec<u64> {
        self.nets[i]
            .guests
            .iter()
            .map(|p| p.counters.snapshot().tx_frames)
            .collect()
    }

    /// Frames the guest ports of network `i` dropped on ingress, by port.
    pub fn guest_rx_dropped(&self, i: usize) -> Vec<u64> {
        self.nets[i]
            .guests
            .iter()
            .map(|p| p.counters.snapshot().rx_dropped())
            .collect()
    }

    /// Checks the invariants (see the module docs).
    pub fn check(&self) {
        let topo = self.br.topology();
        for (i, n) in self.nets.iter().enumerate() {
            let trunk = (i == 0).then_some(&self.trunk);
            for p in n.guests.iter().chain([&n.gw_port]).chain(trunk) {
                // What `PortStats::rx_dropped` sums, without building a snapshot per event.
                let c = &p.counters;
                let dropped: u64 = DropReason::ALL
                    .iter()
                    .filter(|r| !r.is_egress())
                    .map(|r| c.drops(*r))
                    .sum();
                let rx = c.rx_frames.load(Ordering::Relaxed);
                let fwd = c.forwarded.load(Ordering::Relaxed);
                assert_eq!(
                    rx,
                    fwd + dropped,
                    "accounting of {}: {:?}",
                    p.name,
                    c.snapshot()
                );
            }
            let ne = topo.network(n.gw_port.network).expect("network");
            assert!(
                ne.net.fdb.len() <= NETS[i].cap,
                "{}: FDB over its cap",
                NETS[i].name
            );
            let (live, queued) = n.host.live();
            match n.driver.nat_flows() {
                Some(c) => {
                    let total = c.tcp + c.udp + c.icmp;
                    assert!(
                        total <= MAX_FLOWS,
                        "{}: {total} NAT flows: {c:?}",
                        NETS[i].name
                    );
                    assert_eq!(live, total, "{}: host sockets leak: {c:?}", NETS[i].name);
                }
                None => assert_eq!(live, 0, "internal network {} opened sockets", NETS[i].name),
            }
            assert!(queued <= MAX_FLOWS * FAKE_TCP_BUF.max(FAKE_DGRAMS * 65536));
            assert!(n.driver.neighbours() <= 4096);
            assert!(n.driver.dns_tcp_connections() <= gateway::dns_tcp::MAX_CONNS);
            assert!(
                n.gw.leases().len() <= 4,
                "{}: more leases than the pool",
                NETS[i].name
            );
            let frames = n.gw.counters.frames.load(Ordering::Relaxed);
            assert_eq!(frames, n.delivered, "gateway frames counter");
            for (port, k) in n.host.live_by_port() {
                assert!(
                    port == 0 || k <= MAX_FLOWS_PER_GUEST,
                    "{}: port #{port} holds {k} NAT host sockets (limit {MAX_FLOWS_PER_GUEST})",
                    NETS[i].name
                );
            }
            self.check_ownership(i);
        }
    }

    /// Ownership: one owner per MAC and IP address, per-port caps; every neighbour entry, DNS
    /// name and DHCP lease of the gateway belongs to the port that owns its address.
    fn check_ownership(&self, i: usize) {
        let n = &self.nets[i];
        let name = NETS[i].name;
        let guard = self.guard(i);
        let gw_id = n.gw_port.id;
        let mut macs = HashMap::new();
        let mut ips = HashMap::new();
        for row in guard.dump() {
            for (m, _) in &row.macs {
                if let Some(o) = macs.insert(*m, row.port) {
                    panic!("{name}: {m} owned by ports #{} and #{}", o.0, row.port.0);
                }
            }
            for (a, _) in &row.ips {
                if let Some(o) = ips.insert(*a, row.port) {
                    panic!("{name}: {a} owned by ports #{} and #{}", o.0, row.port.0);
                }
            }
            if row.port == gw_id {
                continue;
            }
            let seen = |v6: bool| {
                row.ips
                    .iter()
                    .filter(|(a, how)| *how == Claim::Seen && a.is_ipv6() == v6)
                    .count()
            };
            assert!(
                row.macs.len() <= MAX_MACS
                    && seen(false) <= MAX_SEEN_V4
                    && seen(true) <= MAX_SEEN_V6,
                "{name}: port #{} owns more than its caps: {row:?}",
                row.port.0
            );
        }
        // The gateway's addresses are its port's.
        assert_eq!(macs.get(&gw_mac(i)), Some(&gw_id), "{name}: gateway MAC");
        for a in n.gw.cfg.own_addrs() {
            assert_eq!(ips.get(&a), Some(&gw_id), "{name}: gateway address {a}");
        }
        // Neighbour entries: learned from the port that owns the MAC, for an address that
        // port owns (or nobody does).
        for (ip, mac, port) in n.driver.neighbour_entries() {
            assert_ne!(
                port, gw_id,
                "{name}: neighbour {ip} learned from the gateway"
            );
            assert_eq!(
                macs.get(&mac),
                Some(&port),
                "{name}: neighbour {ip} -> {mac} on port #{}, which does not own {mac}",
                port.0
            );
            if let Some(o) = ips.get(&ip) {
                assert_eq!(
                    *o, port,
                    "{name}: neighbour {ip} -> {mac} on port #{}, but port #{} owns {ip}",
                    port.0, o.0
                );
            }
        }
        // DHCP: a bound lease's address is owned by the port owning its MAC.
        let now_ms = n.gw.ms_at(self.now());
        let all =
            n.gw.dhcp
                .as_ref()
                .map(|d| d.lock().leases(0))
                .unwrap_or_default();
        for l in all.iter().filter(|l| l.expires_in_secs > 0) {
            let _ = now_ms;
            let Some(owner) = macs.get(&l.mac) else {
                panic!("{name}: lease {} for {}, a MAC no port owns", l.ip, l.mac);
            };
            if l.state == usernet::gateway::dhcp::LeaseState::Bound {
                assert_eq!(
                    ips.get(&IpAddr::V4(l.ip)),
                    Some(owner),
                    "{name}: lease {} of {} (port #{}) not owned by that port",
                    l.ip,
                    l.mac,
                    owner.0
                );
            }
        }
        // DNS names: a guest port's name, or a lease's hostname, points only at addresses of
        // that port (or of nobody).
        for r in n.gw.records.list() {
            let label = r.name.split('.').next().unwrap_or_default();
            let Some(owner) = ips.get(&r.addr) else {
                continue;
            };
            if *owner == gw_id && label == "host" {
                continue;
            }
            let mut allowed: Vec<PortId> = n
                .guests
                .iter()
                .chain([&self.trunk])
                .filter(|p| p.name.eq_ignore_ascii_case(label))
                .map(|p| p.id)
                .collect();
            allowed.extend(
                all.iter()
                    .filter(|l| {
                        l.hostname
                            .as_deref()
                            .is_some_and(|h| h.eq_ignore_ascii_case(label))
                    })
                    .filter_map(|l| macs.get(&l.mac).copied()),
            );
            assert!(
                allowed.contains(owner),
                "{name}: DNS name {} -> {} but port #{} owns {}; the name belongs to {allowed:?}",
                r.name,
                r.addr,
                owner.0,
                r.addr
            );
        }
    }
}

impl Default for World {
    fn default() -> Self {
        Self::new()
    }
}

fn port_names(br: Arc<Bridge>, me: usernet::bridge::PortId) -> gateway::PortNames {
    Box::new(move |id| {
        if id == me {
            return None;
        }
        br.topology().port(id).map(|p| p.name.clone())
    })
}

// ---- frame builders ----

fn write(
    b: impl FnOnce(&mut Vec<u8>) -> Result<(), etherparse::err::packet::BuildWriteError>,
) -> Vec<u8> {
    let mut v = Vec::new();
    let _ = b(&mut v);
    v
}

fn arp_frame(s: &Station, target: Ipv4Addr, reply: bool) -> Vec<u8> {
    let p = ArpPacket::from(ArpEthIpv4Packet {
        operation: if reply {
            ArpOperation::REPLY
        } else {
            ArpOperation::REQUEST
        },
        sender_mac: s.mac.0,
        sender_ipv4: s.ip.octets(),
        target_mac: [0; 6],
        target_ipv4: target.octets(),
    });
    let mut v = Vec::new();
    v.extend(Mac::BROADCAST.0);
    v.extend(s.eth.0);
    v.extend([0x08, 0x06]);
    v.extend(p.to_bytes().as_slice());
    v
}

fn dhcp_frame(s: &Station, kind: u8, xid: u32, want: Ipv4Addr, host: bool) -> Vec<u8> {
    let (t, ci) = match kind % 5 {
        0 => (DhcpType::Discover, Ipv4Addr::UNSPECIFIED),
        1 => (DhcpType::Request, Ipv4Addr::UNSPECIFIED),
        2 => (DhcpType::Release, want),
        3 => (DhcpType::Decline, Ipv4Addr::UNSPECIFIED),
        _ => (DhcpType::Inform, s.ip),
    };
    let mut m = DhcpMessage::new_with_id(
        xid,
        ci,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &s.mac.0,
    );
    m.opts_mut().insert(DhcpOption::MessageType(t));
    if matches!(t, DhcpType::Request | DhcpType::Decline) {
        m.opts_mut().insert(DhcpOption::RequestedIpAddress(want));
    }
    if host {
        m.opts_mut().insert(DhcpOption::Hostname(format!(
            "h{}",
            u16::from(s.mac.0[3]) * 2 + u16::from(s.mac.0[4])
        )));
    }
    let mut payload = Vec::new();
    let _ = m.encode(&mut Encoder::new(&mut payload));
    let src = if ci.is_unspecified() {
        [0; 4]
    } else {
        ci.octets()
    };
    write(|v| {
        PacketBuilder::ethernet2(s.eth.0, Mac::BROADCAST.0)
            .ipv4(src, [255; 4], 64)
            .udp(68, 67)
            .write(v, &payload)
    })
}

const NAMES: [&str; 8] = [
    "gw",
    "host",
    "g00",
    "g01",
    "h1",
    "example.com.",
    "1.0.0.10.in-addr.arpa.",
    "usernet.",
];

fn dns_payload(id: u16, sel: u8) -> Vec<u8> {
    let name = NAMES[usize::from(sel) % NAMES.len()];
    let fqdn = if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.usernet.")
    };
    let qtype = [
        RecordType::A,
        RecordType::AAAA,
        RecordType::ANY,
        RecordType::PTR,
        RecordType::SOA,
    ][usize::from(sel >> 3) % 5];
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    if let Ok(n) = Name::from_ascii(&fqdn) {
        m.queries.push(Query::query(n, qtype));
    }
    m.to_vec().unwrap_or_default()
}

/// IPv4 destinations the structured frames use (`sel & 15`): the gateway (host loopback, its
/// services), an outside host, an unreachable one, and the ones that must not leave: loopback,
/// "this host", link-local and the metadata service, multicast, broadcast, the subnet's own
/// hosts and broadcast.
fn dst4(net: usize, sel: u8) -> Ipv4Addr {
    let o = subnet(net).network().octets();
    match sel & 15 {
        0 => gw4(net),
        1 | 14 => OUTSIDE,
        2 => UNREACHABLE,
        3 => Ipv4Addr::new(127, 0, 0, 1),
        4 => Ipv4Addr::new(127, 1, 2, 3),
        5 => Ipv4Addr::UNSPECIFIED,
        6 => Ipv4Addr::new(0, 1, 2, 3),
        7 => Ipv4Addr::new(169, 254, 169, 254),
        8 => Ipv4Addr::new(169, 254, 1, 1),
        9 => Ipv4Addr::new(224, 0, 0, 1),
        10 => Ipv4Addr::BROADCAST,
        11 => subnet(net).broadcast(),
        12 => Ipv4Addr::new(o[0], o[1], o[2], 12),
        13 => gw4((net + 1) % NETS.len()),
        _ => Ipv4Addr::new(192, 0, 2, 1),
    }
}

/// IPv6 destinations (`sel & 15`): the gateway, an outside host, and every spelling of the
/// host's loopback or of a forbidden IPv4 address in IPv6 (unspecified, IPv4-mapped,
/// IPv4-compatible, SIIT, NAT64 well-known and local-use prefixes, 6to4), link-local,
/// multicast, the metadata service, the gateway's IPv4 mapped; and allowed embeddings of an
/// outside address (IPv4-mapped, NAT64).
fn dst6(net: usize, sel: u8) -> Ipv6Addr {
    let g = gw4(net).octets();
    let out = u32::from(OUTSIDE);
    let (hi, lo) = ((out >> 16) as u16, out as u16);
    match sel & 15 {
        0 => gw6(net),
        1 => OUTSIDE6,
        2 => Ipv6Addr::LOCALHOST,
        3 => Ipv6Addr::UNSPECIFIED,
        4 => Ipv4Addr::LOCALHOST.to_ipv6_mapped(),
        5 => Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0x7f00, 1),
        6 => Ipv6Addr::new(0, 0, 0, 0, 0xffff, 0, 0x7f00, 1),
        7 => Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0x7f00, 1),
        8 => Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 1),
        9 => Ipv6Addr::new(0x2002, 0x7f00, 1, 0, 0, 0, 0, 1),
        10 => Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1),
        11 => Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1),
        12 => Ipv4Addr::from(g).to_ipv6_mapped(),
        13 => Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, hi, lo),
        14 => OUTSIDE.to_ipv6_mapped(),
        _ => Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254),
    }
}

fn gw4(net: usize) -> Ipv4Addr {
    let o = subnet(net).network().octets();
    Ipv4Addr::new(o[0], o[1], o[2], 1)
}

fn gw6(net: usize) -> Ipv6Addr {
    match NETS[net].v6 {
        Some(p) => {
            let p: ipnet::Ipv6Net = p.parse().expect("prefix");
            Ipv6Addr::from(u128::from(p.network()) | 1)
        }
        None => Ipv6Addr::LOCALHOST,
    }
}

const PORTS: [u16; 8] = [7, 9, 53, 10, 80, 150, 250, 8080];

fn ip_frame(
    s: &Station,
    dst_mac: Mac,
    dst: IpAddr,
    build: impl FnOnce(PacketBuilderIp) -> Vec<u8>,
) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(s.eth.0, dst_mac.0);
    match dst {
        IpAddr::V4(d) => build(PacketBuilderIp::V4(eth.ipv4(s.ip.octets(), d.octets(), 64))),
        IpAddr::V6(d) => build(PacketBuilderIp::V6(eth.ipv6(
            s.ip6.octets(),
            d.octets(),
            64,
        ))),
    }
}

/// An Ethernet + IP builder of either family.
enum PacketBuilderIp {
    V4(etherparse::PacketBuilderStep<etherparse::IpHeaders>),
    V6(etherparse::PacketBuilderStep<etherparse::IpHeaders>),
}

impl PacketBuilderIp {
    fn udp(self, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let b = match self {
            Self::V4(b) | Self::V6(b) => b,
        };
        write(|v| b.udp(sport, dport).write(v, payload))
    }
    fn tcp(
        self,
        sport: u16,
        dport: u16,
        seq: u32,
        flags: u8,
        ack: Option<u32>,
        payload: &[u8],
    ) -> Vec<u8> {
        let b = match self {
            Self::V4(b) | Self::V6(b) => b,
        };
        let mut t = b.tcp(sport, dport, seq, 64240);
        if flags & 1 != 0 {
            t = t.syn();
        }
        if flags & 2 != 0 {
            t = t.fin();
        }
        if flags & 4 != 0 {
            t = t.rst();
        }
        if flags & 8 != 0 {
            t = t.psh();
        }
        if let Some(a) = ack {
            t = t.ack(a);
        }
        write(|v| t.write(v, payload))
    }
    fn echo(self, id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
        match self {
            Self::V4(b) => write(|v| b.icmpv4_echo_request(id, seq).write(v, payload)),
            Self::V6(b) => write(|v| b.icmpv6_echo_request(id, seq).write(v, payload)),
        }
    }
}

impl World {
    /// One structured frame from the input (or `None` for an event that is not a frame).
    /// `spoof`: the station's addresses are replaced first ([`Self::spoof`]); the frame still
    /// enters at the station's port.
    fn structured(
        &mut self,
        kind: u8,
        spoof: Option<[u8; 4]>,
        r: &mut Reader<'_>,
    ) -> Option<(Station, Vec<u8>)> {
        let s = self.station(r.u8());
        let s = match spoof {
            Some(b) => self.spoof(s, b),
            None => s,
        };
        let sel = r.u8();
        let gwm = gw_mac(s.net);
        let v6 = NETS[s.net].v6.is_some() && sel & 0x80 != 0;
        let frame = match kind {
            0 => {
                let target = match sel % 3 {
                    0 => gw4(s.net),
                    1 => self.station(sel >> 2).ip,
                    _ => s.ip,
                };
                arp_frame(&s, target, sel & 4 != 0)
            }
            1 => {
                let [a, b] = r.array::<2>();
                let base = u32::from(subnet(s.net).network());
                let want = Ipv4Addr::from(base + 98 + u32::from(a % 8));
                dhcp_frame(&s, sel, u32::from(b), want, a & 0x80 != 0)
            }
            2 => {
                let [id, q] = r.array::<2>();
                let payload = dns_payload(u16::from(id), q);
                let dst = if v6 {
                    IpAddr::V6(gw6(s.net))
                } else {
                    IpAddr::V4(gw4(s.net))
                };
                ip_frame(&s, gwm, dst, |b| b.udp(40000 + u16::from(id), 53, &payload))
            }
            3 => {
                let [id, seq, len] = r.array::<3>();
                let payload = vec![0xab; usize::from(len % 64)];
                let dst = if v6 {
                    IpAddr::V6(dst6(s.net, sel))
                } else {
                    IpAddr::V4(dst4(s.net, sel))
                };
                ip_frame(&s, gwm, dst, |b| {
                    b.echo(u16::from(id % 4), u16::from(seq), &payload)
                })
            }
            4 => {
                let [port, sport, len] = r.array::<3>();
                let payload = vec![0x5a; usize::from(len % 128)];
                let dport = PORTS[usize::from(port) % PORTS.len()];
                let dst = if v6 {
                    IpAddr::V6(dst6(s.net, sel))
                } else {
                    IpAddr::V4(dst4(s.net, sel))
                };
                ip_frame(&s, gwm, dst, |b| {
                    b.udp(5000 + u16::from(sport % 4), dport, &payload)
                })
            }
            5 => {
                let [port, sport, flags, len] = r.array::<4>();
                let dport = PORTS[usize::from(port) % PORTS.len()];
                let sport = 6000 + u16::from(sport % 4);
                let dst = if v6 {
                    IpAddr::V6(dst6(s.net, sel))
                } else {
                    IpAddr::V4(dst4(s.net, sel))
                };
                let key = (s.eth, sport, dst, dport);
                let st = self.seqs.entry(key).or_insert(Seq {
                    ours: 1000,
                    theirs: None,
                });
                // Flags: SYN, then ACK (+data, +FIN), or RST, picked by `flags`.
                let (fl, ack, data): (u8, Option<u32>, Vec<u8>) = match flags % 6 {
                    0 => (1, None, Vec::new()),
                    1 | 2 => (8, st.theirs, dns_tcp(len)),
                    3 => (2, st.theirs, Vec::new()),
                    4 => (4, st.theirs, Vec::new()),
                    _ => (0, st.theirs, Vec::new()),
                };
                let seq = st.ours;
                if fl & 1 != 0 {
                    st.ours = st.ours.wrapping_add(1);
                    st.theirs = None;
                } else if fl & 4 == 0 {
                    st.ours = st
                        .ours
                        .wrapping_add(data.len() as u32 + u32::from(fl & 2 != 0));
                }
                ip_frame(&s, gwm, dst, |b| b.tcp(sport, dport, seq, fl, ack, &data))
            }
            6 => {
                NETS[s.net].v6?;
                match sel % 3 {
                    0 => rs_frame(&s),
                    1 => ns_frame(&s, gw6(s.net)),
                    _ => ns_frame(&s, ndp::link_local(gwm)),
                }
            }
            7 => {
                let other = station_in(s.net, r.u8());
                rogue_frame(&s, &other, sel)
            }
            _ => return None,
        };
        Some((s, frame))
    }
}

/// What a hostile guest sends besides spoofed sources (`sel % 6`): a router advertisement with
/// a rogue prefix and default route, a DHCP OFFER (server message), a DHCPv6 ADVERTISE, an
/// unsolicited overriding neighbour advertisement for another station's (or the gateway's)
/// IPv6 address, an ARP reply to the gateway claiming another station's (or the gateway's)
/// IPv4 address, an ICMPv6 redirect.
fn rogue_frame(s: &Station, other: &Station, sel: u8) -> Vec<u8> {
    let all = ndp::ALL_NODES;
    match sel % 6 {
        0 => ndp::router_advert(
            &ndp::RaParams {
                gw_mac: s.mac,
                prefix: "2001:db8:bad::/64".parse().expect("prefix"),
                mtu: 1280,
                dns: vec![s.ip6],
                router_lifetime: 9000,
            },
            all,
            ndp::multicast_mac(all),
        ),
        1 => {
            let mut m = DhcpMessage::new_with_id(
                u32::from(sel),
                Ipv4Addr::UNSPECIFIED,
                other.ip,
                s.ip,
                Ipv4Addr::UNSPECIFIED,
                &other.mac.0,
            );
            m.set_opcode(dhcproto::v4::Opcode::BootReply);
            m.opts_mut()
                .insert(DhcpOption::MessageType(if sel & 0x40 != 0 {
                    DhcpType::Ack
                } else {
                    DhcpType::Offer
                }));
            m.opts_mut().insert(DhcpOption::ServerIdentifier(s.ip));
            m.opts_mut().insert(DhcpOption::Router(vec![s.ip]));
            let mut payload = Vec::new();
            let _ = m.encode(&mut Encoder::new(&mut payload));
            write(|v| {
                PacketBuilder::ethernet2(s.eth.0, Mac::BROADCAST.0)
                    .ipv4(s.ip.octets(), [255; 4], 64)
                    .udp(67, 68)
                    .write(v, &payload)
            })
        }
        2 => {
            let dst = if sel & 0x40 != 0 {
                ndp::link_local(other.mac)
            } else {
                all
            };
            // ADVERTISE, a transaction id, a server id option.
            let payload = [2, 0, 0, sel, 0, 2, 0, 4, 0, 3, 0, 1];
            write(|v| {
                PacketBuilder::ethernet2(s.eth.0, ndp::multicast_mac(all).0)
                    .ipv6(ndp::link_local(s.mac).octets(), dst.octets(), 255)
                    .udp(547, 546)
                    .write(v, &payload)
            })
        }
        3 => {
            let target = match sel >> 6 {
                0 => other.ip6,
                1 => ndp::link_local(other.mac),
                2 => gw6(s.net),
                _ => ndp::link_local(gw_mac(s.net)),
            };
            let mut body = target.octets().to_vec();
            body.extend([2, 1]);
            body.extend(s.mac.0);
            write(|v| {
                PacketBuilder::ethernet2(s.eth.0, ndp::multicast_mac(all).0)
                    .ipv6(s.ip6.octets(), all.octets(), 255)
                    .icmpv6(Icmpv6Type::NeighborAdvertisement(
                        etherparse::icmpv6::NeighborAdvertisementHeader {
                            router: sel & 0x20 != 0,
                            solicited: false,
                            r#override: true,
                        },
                    ))
                    .write(v, &body)
            })
        }
        4 => {
            let claimed = if sel & 0x40 != 0 {
                gw4(s.net)
            } else {
                other.ip
            };
            let p = ArpPacket::from(ArpEthIpv4Packet {
                operation: ArpOperation::REPLY,
                sender_mac: s.mac.0,
                sender_ipv4: claimed.octets(),
                target_mac: gw_mac(s.net).0,
                target_ipv4: gw4(s.net).octets(),
            });
            let mut v = Vec::new();
            v.extend(gw_mac(s.net).0);
            v.extend(s.eth.0);
            v.extend([0x08, 0x06]);
            v.extend(p.to_bytes().as_slice());
            v
        }
        _ => {
            // Redirect: reserved, target (use me), destination (other).
            let mut body = ndp::link_local(s.mac).octets().to_vec();
            body.extend(other.ip6.octets());
            write(|v| {
                PacketBuilder::ethernet2(s.eth.0, other.mac.0)
                    .ipv6(ndp::link_local(s.mac).octets(), other.ip6.octets(), 255)
                    .icmpv6(Icmpv6Type::Unknown {
                        type_u8: 137,
                        code_u8: 0,
                        bytes5to8: [0; 4],
                    })
                    .write(v, &body)
            })
        }
    }
}

/// A TCP payload: a DNS query with its length prefix, or plain bytes.
fn dns_tcp(len: u8) -> Vec<u8> {
    if len & 1 == 0 {
        let q = dns_payload(u16::from(len), len >> 1);
        let mut v = (q.len() as u16).to_be_bytes().to_vec();
        v.extend(q);
        v
    } else {
        vec![b'x'; usize::from(len)]
    }
}

fn rs_frame(s: &Station) -> Vec<u8> {
    let dst = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
    let mut opts = vec![1, 1];
    opts.extend(s.mac.0);
    write(|v| {
        PacketBuilder::ethernet2(s.eth.0, ndp::multicast_mac(dst).0)
            .ipv6(ndp::link_local(s.mac).octets(), dst.octets(), 255)
            .icmpv6(Icmpv6Type::RouterSolicitation)
            .write(v, &opts)
    })
}

fn ns_frame(s: &Station, target: Ipv6Addr) -> Vec<u8> {
    let dst = ndp::solicited_node(target);
    let mut body = target.octets().to_vec();
    body.extend([1, 1]);
    body.extend(s.mac.0);
    write(|v| {
        PacketBuilder::ethernet2(s.eth.0, ndp::multicast_mac(dst).0)
            .ipv6(s.ip6.octets(), dst.octets(), 255)
            .icmpv6(Icmpv6Type::NeighborSolicitation)
            .write(v, &body)
    })
}

/// A port-forward client (`c`): loopback (IPv4 or IPv6: the guest sees the gateway), a real
/// outside address (the guest sees it), IPv4-mapped.
fn fwd_client(c: u8) -> SocketAddr {
    let port = 40000 + u16::from(c >> 2);
    let ip = match c & 3 {
        0 => IpAddr::V4(Ipv4Addr::LOCALHOST),
        1 => IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9)),
        2 => IpAddr::V6(Ipv6Addr::LOCALHOST),
        _ => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 9)),
    };
    SocketAddr::new(ip, port)
}

/// Clock steps an event can take.
const STEPS_MS: [u64; 8] = [1, 200, 1000, 4000, 11_000, 61_000, 400_000, 3_700_000];

/// Policy rules ([`usernet::policy`]): n0 denies TCP to port 2222 between its guests (checked
/// in [`World::pump`]: no such frame reaches a guest) and through NAT and forwards, its guest
/// port 1 may not send ICMP echo requests (egress) nor take UDP to port 9999 (ingress); n2 (internal)
/// denies by default with an exception for its guest port 0; the others have none.
fn set_policies(br: &Bridge, net: usize, id: NetworkId, guests: &[Arc<Port>]) {
    let rule = |kv: &[(&str, &str)]| {
        let mut r = RuleSpec::new("deny");
        for (k, v) in kv {
            r.set(k, v).expect("rule key");
        }
        r
    };
    let set = |scope: Scope, default: Option<&str>, rules: Vec<RuleSpec>| {
        let mut p = PolicySpec::default();
        p.default = default.map(str::to_string);
        p.rules = rules;
        br.policy().set(scope, &p, "fuzz").expect("policy");
    };
    match net {
        0 => {
            set(
                Scope::Network(id.0),
                None,
                vec![rule(&[("proto", "tcp"), ("dst_port", "2222")])],
            );
            set(
                Scope::Port(guests[1].id.0),
                None,
                vec![
                    rule(&[
                        ("direction", "egress"),
                        ("proto", "icmp"),
                        ("icmp_type", "8"),
                    ]),
                    rule(&[
                        ("direction", "ingress"),
                        ("proto", "udp"),
                        ("dst_port", "9999"),
                    ]),
                ],
            );
        }
        2 => {
            set(Scope::Network(id.0), Some("deny"), vec![]);
            set(Scope::Port(guests[0].id.0), Some("allow"), vec![]);
        }
        _ => {}
    }
}

/// True for a frame the policy of network `net` must have kept from guest port `port`.
fn policy_denied(net: usize, port: usize, frame: &[u8]) -> bool {
    let Some(p) = usernet::policy::Packet::from_frame(frame) else {
        return false;
    };
    net == 0
        && ((p.proto == 6 && p.dport == Some(2222))
            || (port == 1 && p.proto == 17 && p.dport == Some(9999)))
}

/// Runs one input through the datapath, checking the invariants after every event.
pub fn datapath(data: &[u8]) {
    run(data);
}

/// [`datapath`], returning the world for inspection.
pub fn run(data: &[u8]) -> World {
    let mut w = World::new();
    let mut r = Reader::new(data);
    w.pump();
    w.check();
    for _ in 0..MAX_EVENTS {
        if r.rest().is_empty() {
            break;
        }
        let op = r.u8();
        // Ops 16..=19 are new; the others (and 20..=31) keep their meaning modulo 16, bits
        // 0x20 (spoofed station) and 0x40 (offload state) modify structured frames.
        let code = match op & 0x1f {
            c @ 16..=19 => c,
            c => c % 16,
        };
        match code {
            16 => {
                // A hostile frame (RA, DHCP server, NA, ARP claim, redirect), maybe spoofed.
                let spoof = (op & 0x20 != 0).then(|| r.array::<4>());
                if let Some((s, f)) = w.structured(7, spoof, &mut r) {
                    w.inject(s.net, s.port, &f);
                }
            }
            17 => w.forward_connect(&mut r),
            18 => w.forward_datagram(&mut r),
            19 => {
                // A frame from the trunk: `how` bit 7 a raw frame (1-byte length), else a
                // station's structured frame (kind = next byte), tagged as `how` says.
                let how = r.u8();
                if how & 0x80 != 0 {
                    let len = usize::from(r.u8()).min(r.rest().len());
                    let bytes = r.rest()[..len].to_vec();
                    for _ in 0..len {
                        r.u8();
                    }
                    w.inject_trunk(&bytes);
                } else {
                    let kind = r.u8() % 8;
                    let x = r.u8();
                    if let Some((s, f)) = w.structured(kind, None, &mut r) {
                        w.inject_trunk(&trunk_tagged(&f, s.net, how, x));
                    }
                }
            }
            k @ (0 | 1) => {
                // A raw frame from a guest port: op 0 with a 1-byte length, op 1 with 2 bytes.
                let port = r.u8();
                let len = if k == 0 {
                    usize::from(r.u8())
                } else {
                    usize::from(u16::from_be_bytes(r.array::<2>()))
                };
                let net = usize::from(port & 3) % NETS.len();
                let p = usize::from(port >> 2) % GUESTS;
                let n = len.min(r.rest().len());
                let bytes = r.rest()[..n].to_vec();
                for _ in 0..n {
                    r.u8();
                }
                w.inject(net, p, &bytes);
            }
            k @ 2..=8 => {
                // With bit 0x40: the frame comes with offload state, as from an offload TAP.
                let vb = if op & 0x40 != 0 {
                    Some(r.array::<4>())
                } else {
                    None
                };
                let spoof = (op & 0x20 != 0).then(|| r.array::<4>());
                if let Some((s, mut f)) = w.structured(k - 2, spoof, &mut r) {
                    let vnet = vb.map(|b| offload_state(&mut f, b)).unwrap_or_default();
                    w.inject_with(s.net, s.port, &f, vnet);
                }
            }
            9 => {
                // A structured frame with one byte flipped.
                let [k, at, x] = r.array::<3>();
                let spoof = (op & 0x20 != 0).then(|| r.array::<4>());
                if let Some((s, mut f)) = w.structured(k % 8, spoof, &mut r) {
                    let i = usize::from(at) % f.len().max(1);
                    if let Some(b) = f.get_mut(i) {
                        *b ^= x | 1;
                    }
                    w.inject(s.net, s.port, &f);
                }
            }
            10 | 11 => {
                let ms = STEPS_MS[usize::from(r.u8()) % STEPS_MS.len()];
                w.advance(Duration::from_millis(ms));
            }
            12 | 13 => w.host_ready(),
            14 => {
                w.br.sweep();
            }
            _ => {
                w.advance(Duration::from_millis(1));
                w.host_ready();
            }
        }
        w.pump();
        w.check();
    }
    w
}

/// A station's frame as it comes in on the trunk, by `how % 8`: tagged with its network's
/// VLAN (untagged for the native network), untagged, with VLAN `x` (mapped or not), with a
/// priority tag (VLAN 0), with an 802.1ad tag, with its VLAN outside a Q-in-Q inner tag `x`,
/// or with n0's VLAN whatever its network (a frame claiming another network).
fn trunk_tagged(frame: &[u8], net: usize, how: u8, x: u8) -> Vec<u8> {
    let own = TRUNK_VIDS.get(net).copied();
    let tags: Vec<(u16, u16)> = match how % 8 {
        0 => own.map(|v| vec![(0x8100, v)]).unwrap_or_default(),
        1 => Vec::new(),
        2 => vec![(0x8100, u16::from(x) % 16)],
        3 => vec![(0x8100, u16::from(x) << 13)],
        4 => vec![(0x88a8, u16::from(x) % 16)],
        5 => [own.map(|v| (0x8100, v)), Some((0x8100, u16::from(x) % 16))]
            .into_iter()
            .flatten()
            .collect(),
        _ => vec![(0x8100, TRUNK_VIDS[0])],
    };
    let mut f = frame.get(..12).unwrap_or(frame).to_vec();
    for (tpid, tci) in tags {
        f.extend(tpid.to_be_bytes());
        f.extend(tci.to_be_bytes());
    }
    f.extend(frame.get(12..).unwrap_or_default());
    f
}

/// Offload state for a structured frame, from 4 input bytes: a pending checksum done right
/// (the field holds the pseudo-header sum), the same as a GSO frame cut at a small MSS, a
/// kernel-checked checksum, or raw header fields (whatever a guest could write).
fn offload_state(frame: &mut [u8], b: [u8; 4]) -> VnetHdr {
    let l3 = match L2Header::parse(frame) {
        Ok(h) => h.header_len,
        Err(_) => 14,
    };
    let raw = VnetHdr {
        flags: b[1],
        gso_type: b[2],
        hdr_len: u16::from(b[3]),
        gso_size: u16::from(b[3]) * 4,
        csum_start: u16::from(b[1]) + 14,
        csum_offset: u16::from(b[2] % 24),
    };
    let (v4, proto) = match frame.get(l3).map(|x| x >> 4) {
        Some(4) => (true, frame.get(l3 + 9).copied()),
        Some(6) => (false, frame.get(l3 + 6).copied()),
        _ => return raw,
    };
    let l4 = if v4 {
        l3 + usize::from(frame[l3] & 0x0f) * 4
    } else {
        l3 + 40
    };
    match (b[0] % 4, proto) {
        (0 | 1, Some(6)) => {
            let mss = 8 + u16::from(b[3] % 64);
            let ip = &mut frame[l3..];
            match offload::tcp_partial(ip, l4 - l3, l3, if b[0] % 4 == 1 { 40 } else { 65535 }, mss)
            {
                Some(v) => v,
                None => raw,
            }
        }
        (2, _) => VnetHdr {
            flags: 2,
            ..VnetHdr::default()
        },
        _ => raw,
    }
}

/// A frame the engine hands a link without offloads: no offload state left, within the MTU,
/// and (for TCP) a right checksum.
fn check_complete(frame: &[u8], vnet: &VnetHdr) {
    assert!(
        vnet.is_plain(),
        "offload state left on a frame for a plain link: {vnet:?}"
    );
    assert!(
        frame.len() <= 1500 + 18,
        "{}-byte frame for a plain link",
        frame.len()
    );
    if let Ok(p) = SlicedPacket::from_ethernet(frame)
        && let Some(TransportSlice::Tcp(t)) = &p.transport
    {
        let ok = match &p.net {
            Some(NetSlice::Ipv4(ip)) => t
                .to_header()
                .calc_checksum_ipv4(&ip.header().to_header(), t.payload())
                .is_ok_and(|c| c == t.checksum()),
            Some(NetSlice::Ipv6(ip)) => t
                .to_header()
                .calc_checksum_ipv6(&ip.header().to_header(), t.payload())
                .is_ok_and(|c| c == t.checksum()),
            _ => true,
        };
        assert!(
            ok,
            "gateway TCP segment with a wrong checksum reached a plain link"
        );
    }
}

/// The event bytes of a captured exchange: each frame a guest sent, as a raw-frame event from
/// guest port `port` of network `net` (op 1, 2-byte length), each followed by a 1 ms clock step
/// with host readiness (op 15), so replies and NAT completions flow as they did live.
pub fn events_from_frames(net: u8, port: u8, frames: &[Vec<u8>]) -> Vec<u8> {
    let mut v = Vec::new();
    for f in frames {
        let n = f.len().min(usize::from(u16::MAX));
        v.push(1);
        v.push((net & 3) | ((port & 1) << 2));
        v.extend((n as u16).to_be_bytes());
        v.extend_from_slice(&f[..n]);
        v.push(15);
    }
    v
}

/// The gateway MAC of network `i` in this harness (captured frames are rewritten to it).
pub fn gateway_mac(i: usize) -> Mac {
    gw_mac(i)
}
