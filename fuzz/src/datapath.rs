//! The whole datapath, driven by a sequence of events: a bridge with three networks, guest
//! ports, a gateway on each network (two with NAT, one internal), and NAT's host sockets replaced
//! by an in-memory fake ([`FakeHost`]) — all on one virtual clock, on one thread, deterministic.
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
//! - the virtual clock advancing (1 ms .. one hour), which ticks every gateway;
//! - host socket readiness delivered to the gateways (the fake's connects, echoes, errors).
//!
//! After every event, frames are pumped until the network is quiet (bounded rounds) and the
//! invariants are checked ([`World::check`]):
//! - every port: `rx_frames == forwarded + dropped` (every frame received is accounted for);
//! - every FDB holds at most its cap;
//! - no frame crosses networks: a frame leaving a port of network X has a source MAC that entered
//!   network X (from one of its ports, or its gateway); the gateway only sends from its own MAC;
//! - NAT: flows within `max_flows`, and exactly one live fake host socket per flow (no leak);
//! - bounded memory: neighbour tables, DNS-over-TCP connections, DHCP leases, the fake's queues;
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
use usernet::bridge::{Bridge, DropReason, FdbConfig, ManualClock, NewPort, Port, PortPolicy};
use usernet::frame::{FramePool, VnetHdr};
use usernet::gateway::dns::Upstreams;
use usernet::gateway::{self, Driver, Gateway, GatewayConfig, ndp};
use usernet::nat::host::{HostDatagram, HostSockets, HostStream};
use usernet::offload::{self, Offloads};
use usernet::wire::L2Header;
use usernet::wire::Mac;

use super::Reader;

/// Networks: name, subnet, IPv6 prefix, internal (no NAT), FDB cap.
const NETS: [(&str, &str, Option<&str>, bool, usize); 3] = [
    ("n0", "10.0.0.0/24", Some("fd00::/64"), false, 6),
    ("n1", "10.1.0.0/24", None, false, 4),
    ("n2", "10.2.0.0/24", Some("fd02::/64"), true, 4),
];
/// Guest ports per network.
const GUESTS: usize = 2;
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
}

fn lock(st: &Mutex<SockState>) -> std::sync::MutexGuard<'_, SockState> {
    st.lock().unwrap_or_else(|e| e.into_inner())
}

impl Source for FakeDgram {
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
        // A ping socket: the reply is the request with the reply type.
        let mut st = lock(&self.st);
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

impl Source for FakeStream {
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

/// Errno values (Linux), spelled out so this file needs no libc.
mod libc_consts {
    pub const EPIPE: i32 = 32;
    pub const EDESTADDRREQ: i32 = 89;
    pub const ENETUNREACH: i32 = 101;
    pub const ENOTCONN: i32 = 107;
    pub const ECONNREFUSED: i32 = 111;
    pub const EHOSTUNREACH: i32 = 113;
}

/// NAT's host side, in memory. Keeps a weak reference to every socket it made, to report
/// readiness and to count the live ones.
#[derive(Default)]
pub struct FakeHost {
    socks: Mutex<Vec<Weak<Mutex<SockState>>>>,
}

impl FakeHost {
    fn track(&self, st: &Arc<Mutex<SockState>>) {
        let mut v = self.socks.lock().unwrap_or_else(|e| e.into_inner());
        v.retain(|w| w.strong_count() > 0);
        v.push(Arc::downgrade(st));
    }

    /// Tokens of registered sockets with something to report.
    fn ready(&self) -> Vec<Token> {
        let v = self.socks.lock().unwrap_or_else(|e| e.into_inner());
        v.iter()
            .filter_map(Weak::upgrade)
            .filter_map(|s| {
                let st = lock(&s);
                st.token.filter(|_| st.ready())
            })
            .collect()
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
        if target.ip() == IpAddr::V4(UNREACHABLE) {
            return Err(os_err(libc_consts::ENETUNREACH));
        }
        let st = Arc::new(Mutex::new(SockState::default()));
        self.track(&st);
        Ok(Box::new(FakeDgram {
            st,
            target: Some(target),
        }))
    }

    fn ping(&self, _host: IpAddr, _bind: Option<SocketAddr>) -> io::Result<Box<dyn HostDatagram>> {
        let st = Arc::new(Mutex::new(SockState::default()));
        self.track(&st);
        Ok(Box::new(FakeDgram { st, target: None }))
    }

    fn tcp_connect(
        &self,
        to: SocketAddr,
        _bind: Option<SocketAddr>,
    ) -> io::Result<Box<dyn HostStream>> {
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

/// A guest station: a MAC and addresses behind a guest port.
#[derive(Debug, Clone, Copy)]
struct Station {
    net: usize,
    port: usize,
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
    _poll: Poll,
}

/// The simulated datapath. See the module docs.
pub struct World {
    clock: Arc<ManualClock>,
    br: Arc<Bridge>,
    nets: Vec<Net>,
    epoch: Instant,
    elapsed: Duration,
    seqs: HashMap<(Mac, u16, IpAddr, u16), Seq>,
}

fn gw_mac(i: usize) -> Mac {
    Mac([0x02, 0x47, 0, 0, 0, i as u8 + 1])
}

fn subnet(i: usize) -> ipnet::Ipv4Net {
    NETS[i].1.parse().expect("subnet")
}

impl World {
    /// Builds the bridge, the networks, their gateways and guest ports.
    pub fn new() -> World {
        let clock = Arc::new(ManualClock::new());
        let br = Arc::new(Bridge::new(clock.clone(), FramePool::new(1522, 64)));
        let epoch = Instant::now();
        let mut nets = Vec::new();
        for (i, &(name, _, v6, internal, cap)) in NETS.iter().enumerate() {
            br.add_network(
                name,
                FdbConfig {
                    max_entries: cap,
                    aging_ms: 300_000,
                },
            )
            .expect("network");
            let mut cfg = GatewayConfig::new(name, subnet(i));
            cfg.mac = gw_mac(i);
            cfg.ipv6 = v6.map(|p| p.parse().expect("prefix"));
            cfg.internal = internal;
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
                        policy: PortPolicy {
                            allowed_macs: vec![cfg.mac],
                            allowed_ips: cfg.own_addrs(),
                            port_security: Some(false),
                            ..PortPolicy::default()
                        },
                        ring: 64,
                        owner: 0,
                    },
                )
                .expect("gateway port");
            let guests = (0..GUESTS)
                .map(|p| {
                    br.add_port(
                        name,
                        NewPort {
                            name: format!("g{i}{p}"),
                            kind: "memory",
                            policy: PortPolicy::default(),
                            ring: 64,
                            owner: 0,
                        },
                    )
                    .expect("guest port")
                })
                .collect();
            let poll = Poll::new().expect("poll");
            let host = Arc::new(FakeHost::default());
            let names = port_names(br.clone(), gw_port.id);
            let guard = br
                .topology()
                .network_by_name(name)
                .map(|n| n.net.guard.clone())
                .expect("network guard");
            let (gw, mut driver) =
                gateway::standalone(cfg, &poll, names, guard, host.clone(), epoch)
                    .expect("gateway");
            *gw.port.lock() = Some(gw_port.id);
            driver.announce();
            nets.push(Net {
                gw,
                driver,
                host,
                gw_port,
                guests,
                seen: HashSet::from([gw_mac(i)]),
                delivered: 0,
                _poll: poll,
            });
        }
        World {
            clock,
            br,
            nets,
            epoch,
            elapsed: Duration::ZERO,
            seqs: HashMap::new(),
        }
    }

    fn now(&self) -> Instant {
        self.epoch + self.elapsed
    }

    /// Station `sel`: network `(sel & 3) % 3`, guest port `(sel >> 2) & 1`, station `(sel >> 3) & 1`.
    fn station(&self, sel: u8) -> Station {
        let net = usize::from(sel & 3) % NETS.len();
        let port = usize::from(sel >> 2) % GUESTS;
        let k = usize::from(sel >> 3) % STATIONS;
        let host = 10 + (port * STATIONS + k) as u8;
        let base = subnet(net).network().octets();
        Station {
            net,
            port,
            mac: Mac([0x02, 0, net as u8, port as u8, k as u8, 1]),
            ip: Ipv4Addr::new(base[0], base[1], base[2], host),
            ip6: Ipv6Addr::new(0xfd00 + net as u16, 0, 0, 0, 0, 0, 0, u16::from(host)),
        }
    }

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
        self.br
            .forward(&topo, &ingress, f, self.br.now(), &mut |q| {
                assert_eq!(q.network, ingress.network, "frame sent to another network");
                assert_ne!(q.id, ingress.id, "frame sent back out of its ingress");
            });
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
                        NETS[i].0
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
                            self.nets[i].driver.frame_with(g.data(), g.meta, now);
                        }
                    }
                }
                // As the gateway port does after each batch (an idle gateway needs no tick:
                // its timers move only with the clock, which ticks every gateway).
                if got {
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
                            assert_eq!(
                                q.network, ingress.network,
                                "gateway frame crossed networks"
                            );
                        });
                }
                // Frames to guests: check and learn TCP sequence numbers.
                // Guest port 0 is a link without offloads (what the engine gives it must be
                // complete frames within the MTU), port 1 an offload TAP (takes anything).
                for p in 0..GUESTS {
                    while let Some(f) = self.nets[i].guests[p].tx.pop() {
                        moved = true;
                        let src = Mac(f.data()[6..12].try_into().expect("mac"));
                        assert!(
                            self.nets[i].seen.contains(&src),
                            "port {} of {} got a frame from {src}, which never entered it",
                            p,
                            NETS[i].0
                        );
                        let accept = if p == 0 {
                            Offloads::NONE
                        } else {
                            Offloads::ALL
                        };
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

    /// Frames the guest ports of network `i` received, by port.
    pub fn guest_tx(&self, i: usize) -> Vec<u64> {
        self.nets[i]
            .guests
            .iter()
            .map(|p| p.counters.snapshot().tx_frames)
            .collect()
    }

    /// Checks the invariants (see the module docs).
    pub fn check(&self) {
        let topo = self.br.topology();
        for (i, n) in self.nets.iter().enumerate() {
            for p in n.guests.iter().chain([&n.gw_port]) {
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
                ne.net.fdb.len() <= NETS[i].4,
                "{}: FDB over its cap",
                NETS[i].0
            );
            let (live, queued) = n.host.live();
            match n.driver.nat_flows() {
                Some(c) => {
                    let total = c.tcp + c.udp + c.icmp;
                    assert!(
                        total <= MAX_FLOWS,
                        "{}: {total} NAT flows: {c:?}",
                        NETS[i].0
                    );
                    assert_eq!(live, total, "{}: host sockets leak: {c:?}", NETS[i].0);
                }
                None => assert_eq!(live, 0, "internal network {} opened sockets", NETS[i].0),
            }
            assert!(queued <= MAX_FLOWS * FAKE_TCP_BUF.max(FAKE_DGRAMS * 65536));
            assert!(n.driver.neighbours() <= 4096);
            assert!(n.driver.dns_tcp_connections() <= gateway::tcp::MAX_CONNS);
            assert!(
                n.gw.leases().len() <= 4,
                "{}: more leases than the pool",
                NETS[i].0
            );
            let frames = n.gw.counters.frames.load(Ordering::Relaxed);
            assert_eq!(frames, n.delivered, "gateway frames counter");
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
    v.extend(s.mac.0);
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
            s.mac.0[3] * 2 + s.mac.0[4]
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
        PacketBuilder::ethernet2(s.mac.0, Mac::BROADCAST.0)
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

/// Destinations the structured frames use: the gateway (host loopback, its services), an
/// outside host, an unreachable one, a loopback address (must not leave).
fn dst4(net: usize, sel: u8) -> Ipv4Addr {
    match sel % 4 {
        0 => gw4(net),
        1 => OUTSIDE,
        2 => UNREACHABLE,
        _ => Ipv4Addr::new(127, 0, 0, 1),
    }
}

fn gw4(net: usize) -> Ipv4Addr {
    let o = subnet(net).network().octets();
    Ipv4Addr::new(o[0], o[1], o[2], 1)
}

fn gw6(net: usize) -> Ipv6Addr {
    match NETS[net].2 {
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
    let eth = PacketBuilder::ethernet2(s.mac.0, dst_mac.0);
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
    fn structured(&mut self, kind: u8, r: &mut Reader<'_>) -> Option<(Station, Vec<u8>)> {
        let s = self.station(r.u8());
        let sel = r.u8();
        let gwm = gw_mac(s.net);
        let v6 = NETS[s.net].2.is_some() && sel & 0x80 != 0;
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
                    IpAddr::V6(if sel & 1 == 0 { gw6(s.net) } else { OUTSIDE6 })
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
                    IpAddr::V6(if sel & 1 == 0 { gw6(s.net) } else { OUTSIDE6 })
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
                    IpAddr::V6(if sel & 1 == 0 { gw6(s.net) } else { OUTSIDE6 })
                } else {
                    IpAddr::V4(dst4(s.net, sel))
                };
                let key = (s.mac, sport, dst, dport);
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
                NETS[s.net].2?;
                match sel % 3 {
                    0 => rs_frame(&s),
                    1 => ns_frame(&s, gw6(s.net)),
                    _ => ns_frame(&s, ndp::link_local(gwm)),
                }
            }
            _ => return None,
        };
        Some((s, frame))
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
        PacketBuilder::ethernet2(s.mac.0, ndp::multicast_mac(dst).0)
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
        PacketBuilder::ethernet2(s.mac.0, ndp::multicast_mac(dst).0)
            .ipv6(s.ip6.octets(), dst.octets(), 255)
            .icmpv6(Icmpv6Type::NeighborSolicitation)
            .write(v, &body)
    })
}

/// Clock steps an event can take.
const STEPS_MS: [u64; 8] = [1, 200, 1000, 4000, 11_000, 61_000, 400_000, 3_700_000];

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
        match op % 16 {
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
                if let Some((s, mut f)) = w.structured(k - 2, &mut r) {
                    let vnet = vb.map(|b| offload_state(&mut f, b)).unwrap_or_default();
                    w.inject_with(s.net, s.port, &f, vnet);
                }
            }
            9 => {
                // A structured frame with one byte flipped.
                let [k, at, x] = r.array::<3>();
                if let Some((s, mut f)) = w.structured(k % 7, &mut r) {
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
