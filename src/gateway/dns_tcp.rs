//! DNS over TCP on the gateway's addresses, terminated with smoltcp.
//!
//! smoltcp runs at the IP medium: the gateway strips the Ethernet header of TCP segments for
//! port 53 and feeds the IP packet in; smoltcp's output IP packets are wrapped in Ethernet by
//! the gateway using its neighbour table. ARP and NDP stay with the gateway, so smoltcp never
//! needs a link layer.
//!
//! A few listening sockets are kept on port 53; when one accepts a connection, another takes its
//! place (up to [`MAX_CONNS`]). Each connection carries DNS messages with a 2-byte length prefix
//! (RFC 1035 §4.2.2); complete messages go to the DNS server and answers come back through
//! [`TcpDns::answer`]. A connection that idles for [`IDLE`] is closed.
//!
//! # Bounds
//!
//! A guest can pipeline queries on a connection and never read the answers. Every buffer is
//! bounded, per connection and in total:
//! - At most [`MAX_INFLIGHT`] queries of a connection are with the DNS server at once, and no
//!   further query is taken while [`MAX_QUEUED`] bytes of answers wait for the client to read
//!   them. Past either limit the connection is simply not read: its queries stay in smoltcp's
//!   receive buffer, the TCP window closes and the client blocks, as with a real server that
//!   stops reading (RFC 7766 §6.2.3 lets a server pace a client this way). Backpressure rather
//!   than closing keeps a legitimate client that pipelines a large batch working, and costs the
//!   gateway no more than the fixed buffers; a client that neither reads nor sends is closed by
//!   the idle timer. A connection's memory is thus at most its smoltcp buffers, one message being
//!   assembled (64 KiB) and `MAX_QUEUED` plus `MAX_INFLIGHT` answers.
//! - At most [`MAX_CONNS`] connections at once (listeners included), and at most
//!   [`MAX_CONNS_PER_CLIENT`] per client ([`ClientKey`], its ingress port); a client's
//!   connection beyond that is reset as soon as it is accepted.
//! - Answers are routed by [`ConnId`], unique for the endpoint's life: an answer for a connection
//!   that has closed is dropped, never delivered to a later connection that reuses its socket.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::Duration;

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::Instant as SInstant;
use smoltcp::wire::{HardwareAddress, IpCidr};

use crate::queue_device::QueueDevice;

/// Most TCP connections at once (listeners included).
pub const MAX_CONNS: usize = 64;
const LISTENERS: usize = 4;
/// Most connections one client ([`ClientKey`]) holds at once; more are reset.
pub const MAX_CONNS_PER_CLIENT: usize = 8;
/// Most queries of one connection with the DNS server at once; past it the connection is not
/// read until answers come back.
pub const MAX_INFLIGHT: usize = 16;
/// Most answer bytes queued for one connection beyond smoltcp's send buffer; past it the
/// connection is not read until the client reads its answers.
pub const MAX_QUEUED: usize = 16 * 1024;
/// Idle connections are closed after this long.
pub const IDLE: Duration = Duration::from_secs(30);
const MAX_MSG: usize = 65535;

/// Whom the per-client connection cap counts by: the bridge port the client's segments came in
/// on (with port security, the only port that may use the client's address), so a guest
/// cannot multiply its share by using more addresses.
pub type ClientKey = u32;

/// Most source addresses remembered with their port for [`ClientKey`].
const MAX_CLIENT_ADDRS: usize = 4096;

struct Conn {
    handle: SocketHandle,
    client: Option<ClientKey>,
    inbuf: Vec<u8>,
    out: VecDeque<u8>,
    /// Queries handed to the DNS server and not answered yet.
    pending: usize,
    last: std::time::Instant,
}

impl Conn {
    /// True while the connection may hand another query to the DNS server.
    fn may_query(&self) -> bool {
        self.pending < MAX_INFLIGHT && self.out.len() < MAX_QUEUED
    }
}

/// A complete length-prefixed message at the front of `buf`, if there is one.
fn message_len(buf: &[u8]) -> Option<usize> {
    let len = usize::from(u16::from_be_bytes([*buf.first()?, *buf.get(1)?]));
    (buf.len() >= 2 + len).then_some(len)
}

/// Bytes still missing from the message at the front of `buf` (its length prefix included).
fn missing(buf: &[u8]) -> usize {
    match buf {
        [a, b, rest @ ..] => (usize::from(u16::from_be_bytes([*a, *b]))).saturating_sub(rest.len()),
        _ => 2 - buf.len(),
    }
}

/// The DNS-over-TCP endpoint. See the module docs.
pub struct TcpDns {
    iface: Interface,
    dev: QueueDevice,
    sockets: SocketSet<'static>,
    listeners: Vec<SocketHandle>,
    conns: HashMap<ConnId, Conn>,
    /// Connections reset at accept (over the per-client cap): removed at the next poll, once
    /// their reset has gone out.
    rejected: Vec<SocketHandle>,
    next_id: u64,
    epoch: std::time::Instant,
    /// The port each client address was last seen on.
    client_of: HashMap<IpAddr, ClientKey>,
}

/// A connection's identity, to route an answer back: unique for the endpoint's life (never
/// reused, unlike smoltcp's socket handles).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnId(u64);

impl TcpDns {
    /// An endpoint on `addrs` (the gateway's addresses with their prefixes), whose clock starts
    /// at `epoch`.
    pub fn new(addrs: &[IpCidr], mtu: usize, epoch: std::time::Instant) -> Self {
        let mut dev = QueueDevice::new(mtu, smoltcp::phy::Checksum::Tx);
        let mut iface = Interface::new(Config::new(HardwareAddress::Ip), &mut dev, SInstant::ZERO);
        iface.update_ip_addrs(|a| {
            for c in addrs {
                let _ = a.push(*c);
            }
        });
        let mut me = TcpDns {
            iface,
            dev,
            sockets: SocketSet::new(Vec::new()),
            listeners: Vec::new(),
            conns: HashMap::new(),
            rejected: Vec::new(),
            next_id: 0,
            epoch,
            client_of: HashMap::new(),
        };
        me.refill();
        me
    }

    fn smol(&self, now: std::time::Instant) -> SInstant {
        SInstant::from_micros(now.saturating_duration_since(self.epoch).as_micros() as i64)
    }

    fn refill(&mut self) {
        while self.listeners.len() < LISTENERS
            && self.listeners.len() + self.conns.len() < MAX_CONNS
        {
            let mut s = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; 8192]),
                tcp::SocketBuffer::new(vec![0; 16384]),
            );
            if s.listen(53).is_err() {
                return;
            }
            self.listeners.push(self.sockets.add(s));
        }
    }

    /// Feeds one IP packet (a TCP segment for port 53 on a gateway address) from `client`
    /// (its ingress port).
    pub fn input(&mut self, ip_packet: &[u8], client: ClientKey) {
        if self.dev.rx.len() >= 256 {
            return;
        }
        let src = match ip_packet.first().map(|b| b >> 4) {
            Some(4) => ip_packet
                .get(12..16)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map(IpAddr::from),
            Some(6) => ip_packet
                .get(8..24)
                .and_then(|b| <[u8; 16]>::try_from(b).ok())
                .map(IpAddr::from),
            _ => None,
        };
        if let Some(src) = src
            && self.client_of.get(&src) != Some(&client)
        {
            if self.client_of.len() >= MAX_CLIENT_ADDRS
                && let Some(k) = self.client_of.keys().next().copied()
            {
                self.client_of.remove(&k);
            }
            self.client_of.insert(src, client);
        }
        self.dev.push_rx(ip_packet);
    }

    /// Runs the TCP state machines. Complete queries are passed to `on_query(conn, message)`;
    /// each must be answered with [`Self::answer`] (an empty answer when the DNS server drops
    /// the query) so that the connection's in-flight count goes down. Returns the IP packets to
    /// send. `clock` is the gateway's clock.
    pub fn poll(
        &mut self,
        clock: std::time::Instant,
        mut on_query: impl FnMut(ConnId, Vec<u8>),
    ) -> Vec<Vec<u8>> {
        let now = self.smol(clock);
        self.iface.poll(now, &mut self.dev, &mut self.sockets);
        for h in self.rejected.drain(..) {
            self.sockets.remove(h);
        }
        // Listeners that accepted become connections, within the per-client cap.
        let mut accepted = Vec::new();
        self.listeners.retain(|h| {
            let s = self.sockets.get::<tcp::Socket>(*h);
            if s.state() == tcp::State::Listen {
                true
            } else {
                accepted.push(*h);
                false
            }
        });
        for h in accepted {
            let s = self.sockets.get_mut::<tcp::Socket>(h);
            let client: Option<ClientKey> = s
                .remote_endpoint()
                .and_then(|e| self.client_of.get(&IpAddr::from(e.addr)).copied());
            let held = self
                .conns
                .values()
                .filter(|c| c.client.is_some() && c.client == client)
                .count();
            if held >= MAX_CONNS_PER_CLIENT {
                tracing::debug!(?client, "DNS over TCP: per-client connection cap, reset");
                s.abort();
                self.rejected.push(h);
                continue;
            }
            let id = ConnId(self.next_id);
            self.next_id += 1;
            self.conns.insert(
                id,
                Conn {
                    handle: h,
                    client,
                    inbuf: Vec::new(),
                    out: VecDeque::new(),
                    pending: 0,
                    last: clock,
                },
            );
        }
        let mut closed = Vec::new();
        for (id, c) in self.conns.iter_mut() {
            let s = self.sockets.get_mut::<tcp::Socket>(c.handle);
            // Take queries while the connection is within its bounds; read only what the
            // message being assembled still lacks, so `inbuf` never holds more than one.
            while c.may_query() {
                if let Some(len) = message_len(&c.inbuf) {
                    let msg = c.inbuf[2..2 + len].to_vec();
                    c.inbuf.drain(..2 + len);
                    c.pending += 1;
                    on_query(*id, msg);
                    continue;
                }
                let mut buf = [0u8; 4096];
                let want = missing(&c.inbuf).clamp(1, buf.len());
                match s.recv_slice(&mut buf[..want]) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        c.inbuf.extend_from_slice(&buf[..n]);
                        c.last = clock;
                    }
                }
            }
            while !c.out.is_empty() && s.can_send() {
                let (a, _) = c.out.as_slices();
                match s.send_slice(a) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        c.out.drain(..n);
                    }
                }
            }
            let idle = clock.saturating_duration_since(c.last) > IDLE;
            // The client closed its side and has every answer: close ours.
            let done = s.state() == tcp::State::CloseWait && c.out.is_empty() && c.pending == 0;
            if done || idle {
                s.close();
            }
            if matches!(s.state(), tcp::State::Closed | tcp::State::TimeWait) {
                closed.push(*id);
            }
        }
        for id in closed {
            if let Some(c) = self.conns.remove(&id) {
                self.sockets.remove(c.handle);
            }
        }
        self.refill();
        // Flush what the state machines want to send now.
        self.iface.poll(now, &mut self.dev, &mut self.sockets);
        std::mem::take(&mut self.dev.tx)
    }

    /// Queues an answer on connection `conn` (with its length prefix). An empty `msg` only
    /// settles the query (the DNS server dropped it). Answers for a connection that has closed
    /// are dropped.
    pub fn answer(&mut self, conn: ConnId, msg: &[u8], now: std::time::Instant) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.pending = c.pending.saturating_sub(1);
            c.last = now;
            if !msg.is_empty() && msg.len() <= MAX_MSG {
                c.out.extend((msg.len() as u16).to_be_bytes());
                c.out.extend(msg);
            }
        }
    }

    /// How long until smoltcp needs to run again (retransmissions, timers).
    pub fn poll_delay(&mut self, clock: std::time::Instant) -> Option<Duration> {
        let now = self.smol(clock);
        self.iface
            .poll_delay(now, &self.sockets)
            .map(|d| Duration::from_micros(d.total_micros()))
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::phy::Checksum;
    use smoltcp::wire::{IpAddress, Ipv4Address};
    use std::time::Instant;

    const SERVER: Ipv4Address = Ipv4Address::new(10, 0, 0, 1);

    /// A guest's TCP stack (smoltcp too), wired to the endpoint by [`World::step`].
    struct Client {
        addr: Ipv4Address,
        iface: Interface,
        dev: QueueDevice,
        sockets: SocketSet<'static>,
        next_port: u16,
    }

    impl Client {
        fn new(last: u8) -> Client {
            let mut dev = QueueDevice::new(1500, Checksum::Tx);
            let mut iface =
                Interface::new(Config::new(HardwareAddress::Ip), &mut dev, SInstant::ZERO);
            let addr = Ipv4Address::new(10, 0, 0, last);
            iface.update_ip_addrs(|a| {
                let _ = a.push(IpCidr::new(IpAddress::Ipv4(addr), 24));
            });
            Client {
                addr,
                iface,
                dev,
                sockets: SocketSet::new(Vec::new()),
                next_port: 40000,
            }
        }

        /// Connects to port 53 with a receive buffer of `rx` bytes.
        fn connect(&mut self, rx: usize) -> SocketHandle {
            let mut s = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; rx]),
                tcp::SocketBuffer::new(vec![0; 65536]),
            );
            self.next_port += 1;
            s.connect(
                self.iface.context(),
                (IpAddress::Ipv4(SERVER), 53),
                self.next_port,
            )
            .expect("connect");
            self.sockets.add(s)
        }

        fn sock(&mut self, h: SocketHandle) -> &mut tcp::Socket<'static> {
            self.sockets.get_mut::<tcp::Socket>(h)
        }
    }

    /// A query message with its length prefix.
    fn query(id: u16) -> Vec<u8> {
        let mut m = vec![0, 27];
        m.extend(id.to_be_bytes());
        m.extend([1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        m.extend(b"\x01x\x07usernet\x00\x00\x01\x00\x01");
        m
    }

    struct World {
        srv: TcpDns,
        clients: Vec<Client>,
        t: Instant,
        epoch: Instant,
        /// Queries the endpoint handed out and the test has not answered yet.
        queries: Vec<(ConnId, Vec<u8>)>,
        handed: usize,
    }

    impl World {
        fn new(clients: &[u8]) -> World {
            let epoch = Instant::now();
            World {
                srv: TcpDns::new(&[IpCidr::new(IpAddress::Ipv4(SERVER), 24)], 1500, epoch),
                clients: clients.iter().map(|&l| Client::new(l)).collect(),
                t: epoch,
                epoch,
                queries: Vec::new(),
                handed: 0,
            }
        }

        fn step(&mut self) {
            self.t += Duration::from_millis(5);
            let now = SInstant::from_micros((self.t - self.epoch).as_micros() as i64);
            for c in &mut self.clients {
                c.iface.poll(now, &mut c.dev, &mut c.sockets);
                for p in c.dev.tx.drain(..) {
                    // One port per client address here.
                    let key = u32::from_be_bytes([p[12], p[13], p[14], p[15]]);
                    self.srv.input(&p, key);
                }
            }
            let mut got = Vec::new();
            let out = self.srv.poll(self.t, |id, m| got.push((id, m)));
            self.handed += got.len();
            self.queries.extend(got);
            for p in out {
                let dst = Ipv4Address::new(p[16], p[17], p[18], p[19]);
                if let Some(c) = self.clients.iter_mut().find(|c| c.addr == dst) {
                    c.dev.rx.push_back(p);
                }
            }
        }

        fn steps(&mut self, n: usize) {
            for _ in 0..n {
                self.step();
            }
        }

        /// Answers every query handed out so far with a `size`-byte message.
        fn answer_all(&mut self, size: usize) {
            for (id, _) in std::mem::take(&mut self.queries) {
                self.srv.answer(id, &vec![0xab; size], self.t);
            }
        }
    }

    #[test]
    fn a_client_that_never_reads_is_paced_not_buffered() {
        let mut w = World::new(&[2]);
        let h = w.clients[0].connect(1024);
        w.steps(5);
        let total = 4000u16;
        let mut sent = 0u16;
        for _ in 0..3000 {
            let s = w.clients[0].sock(h);
            while sent < total && s.send_capacity() - s.send_queue() >= 30 {
                s.send_slice(&query(sent)).expect("send");
                sent += 1;
            }
            w.step();
            w.answer_all(200);
            let c = w.srv.conns.values().next().expect("connection");
            assert!(c.pending <= MAX_INFLIGHT, "{} in flight", c.pending);
            assert!(
                c.out.len() <= MAX_QUEUED + MAX_INFLIGHT * 202,
                "{} bytes queued",
                c.out.len()
            );
        }
        // The client never read: it was paced well before it could send everything.
        assert!(
            w.handed < usize::from(total) / 2,
            "{} queries taken",
            w.handed
        );
        assert_eq!(w.srv.connections(), 1, "paced, not closed");
        // Once it reads, every query is answered: backpressure, not loss.
        let mut answers = 0usize;
        for _ in 0..20_000 {
            let s = w.clients[0].sock(h);
            while sent < total && s.send_capacity() - s.send_queue() >= 30 {
                s.send_slice(&query(sent)).expect("send");
                sent += 1;
            }
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = s.recv_slice(&mut buf) {
                answers += n;
            }
            w.step();
            w.answer_all(200);
            if answers == usize::from(total) * 202 {
                break;
            }
        }
        assert_eq!(answers, usize::from(total) * 202, "every answer arrives");
    }

    #[test]
    fn queries_in_flight_are_capped_per_connection() {
        let mut w = World::new(&[2]);
        let h = w.clients[0].connect(65536);
        w.steps(5);
        for i in 0..100 {
            w.clients[0].sock(h).send_slice(&query(i)).expect("send");
        }
        w.steps(50);
        assert_eq!(w.handed, MAX_INFLIGHT, "only the cap is handed out");
        // Answers (and dropped queries: empty answers) make room for more.
        let q = std::mem::take(&mut w.queries);
        for (i, (id, _)) in q.into_iter().enumerate() {
            let msg: &[u8] = if i % 2 == 0 { &[1, 2, 3] } else { &[] };
            w.srv.answer(id, msg, w.t);
        }
        w.steps(50);
        assert_eq!(w.handed, 2 * MAX_INFLIGHT);
    }

    #[test]
    fn connections_are_capped_per_client_and_in_total() {
        let mut w = World::new(&(2..12).collect::<Vec<u8>>());
        let mut handles = Vec::new();
        for _ in 0..MAX_CONNS_PER_CLIENT + 3 {
            handles.push(w.clients[0].connect(4096));
            w.steps(3);
        }
        w.steps(20);
        assert_eq!(w.srv.connections(), MAX_CONNS_PER_CLIENT);
        let open = handles
            .iter()
            .filter(|h| w.clients[0].sock(**h).state() == tcp::State::Established)
            .count();
        assert_eq!(open, MAX_CONNS_PER_CLIENT, "the extra ones were reset");
        // Another client still gets in, and all of them together stay within the total cap.
        for c in 1..w.clients.len() {
            for _ in 0..MAX_CONNS_PER_CLIENT {
                w.clients[c].connect(4096);
                w.steps(3);
            }
        }
        w.steps(20);
        assert!(w.srv.connections() <= MAX_CONNS, "{}", w.srv.connections());
        assert!(w.srv.connections() > 2 * MAX_CONNS_PER_CLIENT);
        assert!(w.srv.sockets.iter().count() <= MAX_CONNS + LISTENERS);
    }

    #[test]
    fn an_answer_never_reaches_a_later_connection_on_the_same_socket() {
        let mut w = World::new(&[2]);
        let a = w.clients[0].connect(4096);
        w.steps(5);
        w.clients[0].sock(a).send_slice(&query(1)).expect("send");
        w.steps(5);
        let (old, _) = w.queries.pop().expect("a's query");
        let old_handle = w.srv.conns[&old].handle;
        w.clients[0].sock(a).abort();
        w.steps(5);
        assert_eq!(w.srv.connections(), 0);
        // New connections until one sits in A's old socket slot.
        let mut reused = None;
        for _ in 0..2 * LISTENERS {
            let b = w.clients[0].connect(4096);
            w.steps(5);
            if w.srv.conns.values().any(|c| c.handle == old_handle) {
                reused = Some(b);
                break;
            }
        }
        let b = reused.expect("a later connection reuses the socket slot");
        // The late answer for A is dropped.
        w.srv.answer(old, b"\xde\xad\xbe\xef", w.t);
        w.steps(10);
        assert!(w.srv.conns.values().all(|c| c.out.is_empty()));
        let mut buf = [0u8; 64];
        assert!(matches!(
            w.clients[0].sock(b).recv_slice(&mut buf),
            Ok(0) | Err(_)
        ));
    }
}
