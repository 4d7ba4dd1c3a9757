//! TCP NAT: guest connections terminated with smoltcp and spliced to host sockets.
//!
//! # Theory of operation
//!
//! One smoltcp `Interface` per gateway runs at the IP medium with `any_ip` on and default routes
//! via the gateway's own addresses, so it accepts segments for *any* destination: it plays the
//! remote server to the guest. For each flow there is a smoltcp socket (the guest-facing end)
//! and a host `TcpStream` (the outside end), both owned here.
//!
//! Outbound (guest → world): a guest SYN for a new (guest, destination) pair starts a
//! non-blocking host connect and is *held*. Only when the connect succeeds is a socket listening
//! on that destination created and the SYN fed in, so the guest's handshake completes exactly
//! when the real one did. A refused connect becomes an RST to the guest at once, an unreachable
//! host an ICMP unreachable, a connect timeout an RST. SYN retransmissions while connecting are
//! dropped. A segment for an unknown flow (not a SYN) gets an RST.
//!
//! Inbound (port forward): an accepted host connection becomes a smoltcp socket connecting to
//! the guest, from the client's own address when it is not a loopback one (the guest then sees
//! the real client), else from the gateway's address.
//!
//! Splicing, with backpressure both ways:
//! - guest → host: bytes are taken from the smoltcp receive buffer only while the host socket
//!   accepts them; when the host is slow, the buffer fills and the guest's window closes;
//! - host → guest: the host socket is read only into free space of the smoltcp send buffer;
//!   when the guest is slow, the kernel's socket buffer fills and the host peer's window closes.
//! - FIN each way is a half-close: guest FIN → `shutdown(Write)` on the host socket; host EOF →
//!   smoltcp `close()` after the queued data. An RST either way resets the other side.
//!
//! Large segments: NAT's smoltcp device has a 64 KiB MTU and TCP checksums off. A guest's SYN
//! (or SYN-ACK, for a forward) has its MSS option read and replaced by [`BIG_MSS`] before
//! smoltcp sees it, so smoltcp sends segments of up to 64 KiB; the gateway sends them as GSO
//! frames cut at the guest's real MSS ([`TcpNat::gso_size`]) with a partial checksum, which
//! the guest's kernel (an offload TAP) or [`crate::offload::adapt`] finishes. Towards the host,
//! smoltcp takes a guest's 64 KiB TSO frames whole. One pass through smoltcp per 64 KiB instead
//! of per 1.5 KiB either way. smoltcp writes each segment straight into a pooled frame (the
//! gateway's pool, [`TcpNat::set_pool`]) behind [`ETH_FRONT`] bytes that the gateway fills with
//! the Ethernet header: no zeroing and no copy between smoltcp and the link.
//!
//! Buffers (`buffers.rs`): 1 MiB each way (2 MiB above MTU 9000) while the network's budget
//! ([`NatConfig::tcp_buffer_budget`]) has room, else 128 KiB (256 KiB). The buffer is the
//! window each side sees: with 128 KiB a bulk flow waits on it (`ss -ti`: the senders were
//! `rwnd_limited` 55-73 % of the time, `bench/results/profile.md`), with 1 MiB it does not.
//! Window scaling is in use and a 65520-byte MTU path is not capped at 64 KiB. Limits (checked by the NAT's [`FlowTable`], which
//! counts every protocol): flows per network and per guest port, and the SYN backlogs
//! (connects in progress, and a port's connections not established yet); a SYN over a limit
//! is refused (RST) and counted.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etherparse::TcpSlice;
use mio::{Interest, Registry, Token};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::Instant as SInstant;
use smoltcp::wire::{HardwareAddress, IpCidr, IpListenEndpoint};

use super::balance::ConnGuard;
use super::buffers::Budget;
use super::flow::{FORWARD_KEY, FlowId, FlowKey, FlowTable, GuestKey, Opener, Phase, Slots};
use super::host::{HostSockets, HostStream};
use super::{NatConfig, NatCounters, host_destination, token};
use crate::frame::{Frame, FramePool};
use crate::queue_device::QueueDevice;
use crate::wire::ip::{
    Transport, Unreachable, icmp_unreachable, tcp_endpoints, tcp_header_len, tcp_rst, tcp_segment,
    transport,
};

/// The MTU of NAT's smoltcp device: it sends segments of up to 64 KiB to guests, which go out
/// as GSO frames (cut to the guest's real MSS by the guest's kernel or by [`crate::offload`]).
pub const GSO_MTU: usize = 65_535;
/// The MSS smoltcp is told a guest announced (the real one is kept per flow): the largest
/// segment that fits [`GSO_MTU`] behind IPv6 and TCP headers with options.
pub const BIG_MSS: u16 = 65_535 - 60 - 40;

/// Bytes in front of each packet NAT's TCP returns ([`crate::nat::Nat::poll`]): its frame's
/// Ethernet header.
pub const ETH_FRONT: usize = 14;
/// Idle regular buffers of the pool a NAT starts with (until [`TcpNat::set_pool`]).
const OWN_FREE: usize = 16;
/// GSO buffers in flight from the pool a NAT starts with.
const OWN_GSO_BUFFERS: usize = 16;

type Key = (SocketAddr, SocketAddr);

enum State {
    /// Host connect in progress; the guest's SYN waits here.
    Connecting { syn: Vec<u8>, since: Instant },
    /// Spliced.
    Open,
}

struct Flow {
    key: Key,
    /// The MSS the guest announced (segments towards it are cut to this).
    mss: u16,
    /// The host socket may have data: set by a readiness event, cleared when a read would
    /// block. Idle flows cost no read syscall per turn.
    host_rd: bool,
    /// The host socket may take data: cleared when a write would block, set by an event.
    host_wr: bool,
    host: Box<dyn HostStream>,
    sock: Option<SocketHandle>,
    state: State,
    host_eof: bool,
    host_shut: bool,
    fin_sent: bool,
    established: bool,
    last: Instant,
    /// When the flow was created (half-open flows expire [`NatConfig::handshake_timeout`]
    /// after it).
    born: Instant,
    /// A balanced forward's connection: live for its endpoint while the flow is.
    _hold: Option<ConnGuard>,
    /// Its smoltcp socket's buffers are a share of the big-buffer [`Budget`].
    big: bool,
}

impl Flow {
    /// A flow born `now` in `state`, its host socket ready both ways (until it says
    /// otherwise), no guest socket yet.
    fn new(key: Key, mss: u16, host: Box<dyn HostStream>, state: State, now: Instant) -> Self {
        Flow {
            key,
            mss,
            host_rd: true,
            host_wr: true,
            host,
            sock: None,
            state,
            host_eof: false,
            host_shut: false,
            fin_sent: false,
            established: false,
            last: now,
            born: now,
            _hold: None,
            big: false,
        }
    }
}

/// The TCP half of a gateway's NAT. See the module docs.
pub struct TcpNat {
    cfg: Arc<NatConfig>,
    host: Arc<dyn HostSockets>,
    counters: Arc<NatCounters>,
    iface: Interface,
    dev: QueueDevice,
    sockets: SocketSet<'static>,
    /// Each flow's state, by its id in the [`FlowTable`] (which keeps its key, owner and
    /// phase, and does the accounting and the limit check).
    slots: Slots<Flow>,
    buf: Budget,
    epoch: Instant,
    /// Services' virtual IPs on the network (cluster mode), if any.
    vips: Option<Arc<super::vip::ServiceIps>>,
}

/// smoltcp's clock: microseconds from `epoch` to `now`.
fn smol_now(epoch: Instant, now: Instant) -> SInstant {
    SInstant::from_micros(now.saturating_duration_since(epoch).as_micros() as i64)
}

impl TcpNat {
    /// A NAT whose host connections come from `host` and whose clock starts at `epoch`.
    pub fn with_host(
        cfg: Arc<NatConfig>,
        counters: Arc<NatCounters>,
        addrs: &[IpCidr],
        mtu: usize,
        host: Arc<dyn HostSockets>,
        epoch: Instant,
    ) -> Self {
        // Large segments both ways (see the module docs): smoltcp may send IP packets of up to
        // 64 KiB, and leaves TCP checksums to the frame's last hop. They are built in frames,
        // behind room for the Ethernet header (see `set_pool`).
        let pool = FramePool::with_gso(mtu + ETH_FRONT + 8, OWN_FREE, OWN_GSO_BUFFERS);
        let mut dev = QueueDevice::framed(GSO_MTU, smoltcp::phy::Checksum::None, pool, ETH_FRONT);
        let mut iface = Interface::new(Config::new(HardwareAddress::Ip), &mut dev, SInstant::ZERO);
        iface.update_ip_addrs(|a| {
            for c in addrs {
                let _ = a.push(*c);
            }
        });
        iface.set_any_ip(true);
        let _ = iface.routes_mut().add_default_ipv4_route(cfg.gateway4);
        if let Some(g6) = cfg.gateway6 {
            let _ = iface.routes_mut().add_default_ipv6_route(g6);
        }
        let buf = Budget::new(mtu, cfg.tcp_buffer_budget);
        TcpNat {
            cfg,
            host,
            counters,
            iface,
            dev,
            sockets: SocketSet::new(Vec::new()),
            slots: Slots::default(),
            buf,
            epoch,
            vips: None,
        }
    }

    /// Sends new connections to services' virtual IPs by `vips` (see `vip.rs`).
    pub(crate) fn set_service_ips(&mut self, vips: Arc<super::vip::ServiceIps>) {
        self.vips = Some(vips);
    }

    /// Adds flow `f` of `owner` to the table in `phase`; its id.
    fn alloc(&mut self, flows: &mut FlowTable, f: Flow, owner: GuestKey, phase: Phase) -> FlowId {
        let id = flows.insert(FlowKey::Tcp(f.key.0, f.key.1), owner, phase);
        self.slots.put(id, f);
        id
    }

    /// Closes flow `id`: its host socket (with an RST to the host peer if `reset_host`), its
    /// smoltcp socket (if any, without a word to the guest) and its table entry.
    fn remove(&mut self, reg: &Registry, flows: &mut FlowTable, id: FlowId, reset_host: bool) {
        let Some(mut f) = self.slots.take(id) else {
            return;
        };
        let _ = reg.deregister(&mut *f.host);
        if reset_host {
            // SO_LINGER 0: close sends an RST to the host peer.
            f.host.reset_on_close();
        }
        if let Some(h) = f.sock {
            self.sockets.remove(h);
        }
        if f.big {
            self.buf.give();
            self.buf.trim(Instant::now());
        }
        flows.remove(id);
    }

    /// Closes flow `id` at once: its smoltcp socket is aborted, its host socket closed (with
    /// an RST to the host peer if `reset_host`). False if there is no such flow.
    pub fn close(
        &mut self,
        reg: &Registry,
        flows: &mut FlowTable,
        id: FlowId,
        reset_host: bool,
    ) -> bool {
        let Some(f) = self.slots.get(id) else {
            return false;
        };
        if let Some(h) = f.sock {
            self.sockets.get_mut::<tcp::Socket>(h).abort();
        }
        self.remove(reg, flows, id, reset_host);
        true
    }

    /// A TCP segment from the guest behind port `owner`, as the whole IP packet. A SYN for
    /// a new flow passes the table's limit check ([`FlowTable::admit`]). Returns packets to
    /// send back (RST, ICMP). `now` is the gateway's clock.
    #[allow(clippy::too_many_arguments)]
    // Named for the direction (a packet from the guest), not a conversion.
    #[allow(clippy::wrong_self_convention)]
    pub fn from_guest(
        &mut self,
        reg: &Registry,
        flows: &mut FlowTable,
        now: Instant,
        owner: GuestKey,
        packet: &[u8],
        src: SocketAddr,
        dst: SocketAddr,
        seg: &TcpSlice<'_>,
        out: &mut Vec<Vec<u8>>,
    ) {
        let key = (src, dst);
        if let Some(idx) = flows.get(&FlowKey::Tcp(src, dst)) {
            if let Some(f) = self.slots.get_mut(idx) {
                f.last = now;
                match f.state {
                    State::Connecting { .. } => {} // SYN retransmission: still connecting
                    State::Open => {
                        let p = self.dev.push_rx(packet);
                        if seg.syn() {
                            // A guest's SYN-ACK to a forward's connection.
                            f.mss = take_mss(p, dst.is_ipv4());
                        }
                    }
                }
            }
            return;
        }
        if seg.rst() {
            return;
        }
        if !seg.syn() || seg.ack() {
            out.push(tcp_rst(src, dst, seg));
            return;
        }
        let to = match self.vips.as_ref().and_then(|v| v.target(dst)) {
            // A service's virtual IP: its listener, or refused (no other port of it is open).
            Some(Some(to)) => to,
            Some(None) => {
                NatCounters::inc(&self.counters.refused_host);
                out.push(tcp_rst(src, dst, seg));
                return;
            }
            None => match host_destination(&self.cfg, dst.ip()) {
                Some(ip) => SocketAddr::new(ip, dst.port()),
                None => {
                    NatCounters::inc(&self.counters.dropped_dest);
                    return;
                }
            },
        };
        if !flows.admit(Opener::GuestSyn(owner)) {
            out.push(tcp_rst(src, dst, seg));
            return;
        }
        let host = match connect(&*self.host, to, &self.cfg) {
            Ok(h) => h,
            Err(e) => {
                out.push(self.connect_failed(&e, src, dst, seg, packet));
                return;
            }
        };
        let mut syn = packet.to_vec();
        let mss = take_mss(&mut syn, dst.is_ipv4());
        let flow = Flow::new(key, mss, host, State::Connecting { syn, since: now }, now);
        let idx = self.alloc(flows, flow, owner, Phase::Connecting);
        if let Some(f) = self.slots.get_mut(idx)
            && reg
                .register(
                    &mut *f.host,
                    token::make(token::TCP, idx),
                    Interest::READABLE | Interest::WRITABLE,
                )
                .is_err()
        {
            NatCounters::inc(&self.counters.errors);
            self.remove(reg, flows, idx, false);
        }
    }

    fn connect_failed(
        &self,
        e: &io::Error,
        src: SocketAddr,
        dst: SocketAddr,
        seg: &TcpSlice<'_>,
        packet: &[u8],
    ) -> Vec<u8> {
        match e.raw_os_error() {
            Some(libc::EHOSTUNREACH) | Some(libc::ENETUNREACH) => {
                NatCounters::inc(&self.counters.unreachable);
                let why = if e.raw_os_error() == Some(libc::ENETUNREACH) {
                    Unreachable::Net
                } else {
                    Unreachable::Host
                };
                icmp_unreachable(packet, why).unwrap_or_else(|| tcp_rst(src, dst, seg))
            }
            _ => {
                NatCounters::inc(&self.counters.refused_host);
                tcp_rst(src, dst, seg)
            }
        }
    }

    /// Starts a connection *to* a guest for a port forward: `host` is the accepted client,
    /// `from` the source the guest will see, `guest` the guest's address and port, `hold` its
    /// endpoint's guard (kept while the flow lives). The caller checked the limits
    /// ([`Opener::Forward`]). Returns the flow's id.
    #[allow(clippy::too_many_arguments)]
    pub fn connect_to_guest(
        &mut self,
        reg: &Registry,
        flows: &mut FlowTable,
        now: Instant,
        host: Box<dyn HostStream>,
        from: SocketAddr,
        guest: SocketAddr,
        hold: Option<ConnGuard>,
    ) -> io::Result<FlowId> {
        if flows.contains(&FlowKey::Tcp(guest, from)) {
            // Two host clients the guest would see as one (loopback IPv4 and IPv6 clients with
            // the same port both appear as the gateway's address): one flow per address pair,
            // or the first one's entry would be overwritten and escape the flow count.
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("a forwarded connection {from} -> {guest} is open already"),
            ));
        }
        let (size, big) = self.buf.take();
        let mut s = new_socket(size);
        if let Err(e) = s.connect(self.iface.context(), guest, from) {
            if big {
                self.buf.give();
            }
            return Err(io::Error::other(format!("connect to guest {guest}: {e}")));
        }
        let h = self.sockets.add(s);
        let flow = Flow {
            sock: Some(h),
            _hold: hold,
            big,
            ..Flow::new(
                (guest, from),
                default_mss(guest.is_ipv4()),
                host,
                State::Open,
                now,
            )
        };
        let idx = self.alloc(flows, flow, FORWARD_KEY, Phase::HalfOpen);
        if let Some(f) = self.slots.get_mut(idx)
            && let Err(e) = reg.register(
                &mut *f.host,
                token::make(token::TCP, idx),
                Interest::READABLE | Interest::WRITABLE,
            )
        {
            self.remove(reg, flows, idx, true);
            return Err(e);
        }
        Ok(idx)
    }

    /// Aborts flow `id`'s guest side (an RST to the guest at the next poll, which then drops
    /// the flow).
    pub fn abort(&mut self, id: FlowId) {
        if let Some(h) = self.slots.get(id).and_then(|f| f.sock) {
            self.sockets.get_mut::<tcp::Socket>(h).abort();
        }
    }

    /// Readiness of a host socket (token kind TCP).
    pub fn ready(
        &mut self,
        reg: &Registry,
        flows: &mut FlowTable,
        tok: Token,
        out: &mut Vec<Vec<u8>>,
    ) {
        let (_, idx) = token::split(tok);
        let Some(f) = self.slots.get_mut(idx) else {
            return;
        };
        let State::Connecting { syn, .. } = &f.state else {
            // Open flows are pumped in `poll`; the event says the socket may be readable or
            // writable again.
            f.host_rd = true;
            f.host_wr = true;
            return;
        };
        // Connect finished one way or the other?
        match f.host.take_error() {
            Ok(None) => {}
            Ok(Some(e)) | Err(e) => {
                let syn = syn.clone();
                let (src, dst) = f.key;
                if let Some(seg) = tcp_segment(&syn) {
                    out.push(self.connect_failed(&e, src, dst, &seg, &syn));
                }
                self.remove(reg, flows, idx, false);
                return;
            }
        }
        match f.host.peer_addr() {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return, // still in progress
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => return,
            Err(_) => {
                let syn = syn.clone();
                let (src, dst) = f.key;
                if let Some(seg) = tcp_segment(&syn) {
                    out.push(tcp_rst(src, dst, &seg));
                }
                NatCounters::inc(&self.counters.refused_host);
                self.remove(reg, flows, idx, false);
                return;
            }
        }
        // Connected: create the guest-facing socket and let the held SYN in.
        let syn = syn.clone();
        let dst = f.key.1;
        let (size, big) = self.buf.take();
        f.big = big;
        let mut s = new_socket(size);
        if s.listen(IpListenEndpoint {
            addr: Some(dst.ip().into()),
            port: dst.port(),
        })
        .is_err()
        {
            self.remove(reg, flows, idx, true);
            return;
        }
        let h = self.sockets.add(s);
        f.sock = Some(h);
        f.state = State::Open;
        flows.advance(idx, Phase::HalfOpen);
        NatCounters::inc(&self.counters.tcp_flows);
        self.dev.rx.push_back(syn);
    }

    /// Runs smoltcp and splices every open flow. Returns the IP packets for guests in `out`,
    /// each [`ETH_FRONT`] bytes into its frame (the room for the Ethernet header).
    pub fn poll(
        &mut self,
        reg: &Registry,
        flows: &mut FlowTable,
        out: &mut Vec<Frame>,
        clock: Instant,
    ) {
        let now = smol_now(self.epoch, clock);
        self.iface.poll(now, &mut self.dev, &mut self.sockets);
        let mut dead = Vec::new();
        for idx in 0..self.slots.end() {
            let Some(f) = self.slots.get_mut(idx) else {
                continue;
            };
            let Some(h) = f.sock else {
                continue;
            };
            let s = self.sockets.get_mut::<tcp::Socket>(h);
            let was = f.established;
            let r = pump(f, s, clock);
            if !was && f.established {
                flows.advance(idx, Phase::Established);
            }
            match r {
                Pump::Alive => {}
                Pump::Done => dead.push((idx, false)),
                Pump::Reset => dead.push((idx, true)),
            }
        }
        for (idx, reset) in dead {
            self.remove(reg, flows, idx, reset);
        }
        self.iface.poll(now, &mut self.dev, &mut self.sockets);
        out.append(&mut self.dev.frames);
    }

    /// Builds the packets of [`Self::poll`] in `pool`'s buffers from now on (the gateway's
    /// pool, so that NAT keeps no idle buffers of its own).
    pub fn set_pool(&mut self, pool: FramePool) {
        if let Some(fr) = self.dev.framed_mut() {
            fr.pool = pool;
        }
    }

    /// Connect timeouts and idle flows. Returns packets (RSTs) for guests.
    pub fn expire(
        &mut self,
        reg: &Registry,
        flows: &mut FlowTable,
        out: &mut Vec<Vec<u8>>,
        now: Instant,
    ) {
        self.buf.trim(now);
        let mut dead = Vec::new();
        for idx in 0..self.slots.end() {
            let Some(f) = self.slots.get(idx) else {
                continue;
            };
            match &f.state {
                State::Connecting { syn, since }
                    if now.saturating_duration_since(*since) > self.cfg.connect_timeout =>
                {
                    if let Some(seg) = tcp_segment(syn) {
                        out.push(tcp_rst(f.key.0, f.key.1, &seg));
                    }
                    dead.push((idx, false));
                }
                State::Open if now.saturating_duration_since(f.last) > self.cfg.tcp_idle => {
                    dead.push((idx, true))
                }
                // Half-open: the host side connected, the guest never finished its handshake
                // (a spoofed or abandoned SYN). Seconds, not the idle timeout's hours.
                State::Open
                    if !f.established
                        && now.saturating_duration_since(f.born) > self.cfg.handshake_timeout =>
                {
                    NatCounters::inc(&self.counters.half_open_expired);
                    dead.push((idx, true))
                }
                _ => {}
            }
        }
        for (idx, reset) in dead {
            self.close(reg, flows, idx, reset);
        }
    }

    /// The GSO segment size for `packet`, an IP packet smoltcp sent towards a guest: the flow's
    /// MSS less the TCP options this packet carries. `None` if it belongs to no flow.
    pub fn gso_size(&self, flows: &FlowTable, packet: &[u8]) -> Option<u16> {
        let (src, dst, thl) = tcp_endpoints(packet)?;
        let f = self.slots.get(flows.get(&FlowKey::Tcp(dst, src))?)?;
        Some(f.mss.saturating_sub(thl.saturating_sub(20) as u16).max(1))
    }

    /// When smoltcp next needs to run (retransmissions, delayed ACKs).
    pub fn poll_delay(&mut self, clock: Instant) -> Option<Duration> {
        let now = smol_now(self.epoch, clock);
        self.iface
            .poll_delay(now, &self.sockets)
            .map(|d| Duration::from_micros(d.total_micros()))
    }
}

fn new_socket(buf: usize) -> tcp::Socket<'static> {
    let mut s = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; buf]),
        tcp::SocketBuffer::new(vec![0; buf]),
    );
    s.set_nagle_enabled(false);
    s.set_ack_delay(None);
    s
}

/// Starts a host connect to `to` through `host`, from the configured outbound address (also
/// towards the host's loopback, as slirp4netns's `--outbound-addr` does, and as UDP flows do).
fn connect(
    host: &dyn HostSockets,
    to: SocketAddr,
    cfg: &NatConfig,
) -> io::Result<Box<dyn HostStream>> {
    let bind = match (to.ip(), cfg.outbound4, cfg.outbound6) {
        (IpAddr::V4(_), Some(a), _) => Some(SocketAddr::new(IpAddr::V4(a), 0)),
        (IpAddr::V6(_), _, Some(a)) => Some(SocketAddr::new(IpAddr::V6(a), 0)),
        _ => None,
    };
    host.tcp_connect(to, bind)
}

enum Pump {
    Alive,
    Done,
    Reset,
}

fn pump(f: &mut Flow, s: &mut tcp::Socket<'_>, now: Instant) -> Pump {
    use tcp::State as S;
    if matches!(
        s.state(),
        S::Established
            | S::FinWait1
            | S::FinWait2
            | S::CloseWait
            | S::Closing
            | S::LastAck
            | S::TimeWait
    ) {
        f.established = true;
    }
    // Guest -> host: straight from smoltcp's receive buffer into the host socket; what the
    // socket does not take stays there (and the window the guest sees shrinks).
    while f.host_wr && s.can_recv() {
        let mut err = None;
        let r = s.recv(|buf| match f.host.write(buf) {
            Ok(n) => (n, n),
            Err(e) => {
                err = Some(e.kind());
                (0, 0)
            }
        });
        let Ok(n) = r else { break };
        match err {
            None if n == 0 => return Pump::Reset, // the host socket takes no more
            None => f.last = now,
            Some(io::ErrorKind::WouldBlock) => f.host_wr = false,
            Some(io::ErrorKind::Interrupted) => {}
            Some(_) => {
                s.abort();
                return Pump::Reset;
            }
        }
    }
    let guest_closed = matches!(
        s.state(),
        S::CloseWait | S::LastAck | S::Closing | S::TimeWait
    ) || (s.state() == S::Closed && f.established);
    if guest_closed && !s.can_recv() && !f.host_shut {
        let _ = f.host.shutdown(Shutdown::Write);
        f.host_shut = true;
    }
    // Host -> guest.
    while !f.host_eof && f.host_rd && s.can_send() {
        let mut err = None;
        let r = s.send(|buf| match f.host.read(buf) {
            Ok(0) => {
                err = Some(io::ErrorKind::UnexpectedEof);
                (0, ())
            }
            Ok(n) => (n, ()),
            Err(e) => {
                err = Some(e.kind());
                (0, ())
            }
        });
        if r.is_err() {
            break;
        }
        match err {
            None => f.last = now,
            Some(io::ErrorKind::UnexpectedEof) => f.host_eof = true,
            Some(io::ErrorKind::WouldBlock) => {
                f.host_rd = false;
                break;
            }
            Some(io::ErrorKind::Interrupted) => continue,
            Some(_) => {
                s.abort();
                return Pump::Reset;
            }
        }
    }
    if f.host_eof && !f.fin_sent && matches!(s.state(), S::Established | S::CloseWait) {
        s.close();
        f.fin_sent = true;
    }
    match s.state() {
        // A socket that had the guest's SYN and is back in LISTEN was reset during the
        // handshake: the flow is dead (else it would catch the next SYN to that destination).
        S::Listen => Pump::Reset,
        S::Closed if f.established || f.fin_sent => {
            // Both sides done (or the guest reset us).
            if f.host_eof && f.host_shut {
                Pump::Done
            } else {
                Pump::Reset
            }
        }
        S::Closed => Pump::Reset, // forward to a guest port where nothing listens: RST
        S::TimeWait => Pump::Done,
        _ => Pump::Alive,
    }
}

/// The MSS a guest gets when it announces none (RFC 9293: 536 for IPv4, 1220 for IPv6).
fn default_mss(v4: bool) -> u16 {
    if v4 { 536 } else { 1220 }
}

/// Reads the MSS option of the SYN or SYN-ACK in `packet` (an IP packet) and replaces it by
/// [`BIG_MSS`], so smoltcp sends large segments; returns the guest's own MSS. The TCP checksum
/// is not updated: smoltcp does not verify it (the gateway checked it on arrival).
fn take_mss(packet: &mut [u8], v4: bool) -> u16 {
    let Some(Transport { l4, .. }) = transport(packet) else {
        return default_mss(v4);
    };
    let Some(off) = tcp_header_len(packet, l4) else {
        return default_mss(v4);
    };
    let end = (l4 + off).min(packet.len());
    let mut i = l4 + 20;
    while i < end {
        match packet[i] {
            0 => break,
            1 => i += 1,
            kind => {
                let Some(&len) = packet.get(i + 1) else { break };
                let len = usize::from(len);
                if len < 2 || i + len > end {
                    break;
                }
                if kind == 2 && len == 4 {
                    let mss = u16::from_be_bytes([packet[i + 2], packet[i + 3]]);
                    packet[i + 2..i + 4].copy_from_slice(&BIG_MSS.to_be_bytes());
                    return mss.max(64);
                }
                i += len;
            }
        }
    }
    default_mss(v4)
}

#[cfg(test)]
mod gso_tests {
    use super::*;
    use etherparse::PacketBuilder;

    fn syn_with_mss(v4: bool, mss: Option<u16>) -> Vec<u8> {
        let b = if v4 {
            PacketBuilder::ipv4([10, 0, 0, 2], [1, 2, 3, 4], 64)
        } else {
            PacketBuilder::ipv6([0xfd; 16], [0x20; 16], 64)
        };
        let mut opts = vec![etherparse::TcpOptionElement::Noop];
        if let Some(m) = mss {
            opts.push(etherparse::TcpOptionElement::MaximumSegmentSize(m));
        }
        opts.push(etherparse::TcpOptionElement::WindowScale(7));
        let b = b
            .tcp(40000, 80, 1, 65535)
            .syn()
            .options(&opts)
            .expect("options");
        let mut out = Vec::new();
        b.write(&mut out, &[]).expect("builds");
        out
    }

    #[test]
    fn mss_is_taken_and_replaced() {
        for v4 in [true, false] {
            let mut p = syn_with_mss(v4, Some(1460));
            assert_eq!(take_mss(&mut p, v4), 1460);
            let again = take_mss(&mut p.clone(), v4);
            assert_eq!(again, BIG_MSS, "the option now says BIG_MSS");
            let mut none = syn_with_mss(v4, None);
            assert_eq!(take_mss(&mut none, v4), default_mss(v4));
        }
        // Garbage never panics.
        for n in 0..60 {
            let mut p = syn_with_mss(true, Some(1400));
            p.truncate(n);
            let _ = take_mss(&mut p, true);
        }
    }
}
