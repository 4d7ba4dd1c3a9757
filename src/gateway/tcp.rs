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

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Checksum, Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::tcp;
use smoltcp::time::Instant as SInstant;
use smoltcp::wire::{HardwareAddress, IpCidr};

/// Most TCP connections at once (listeners included).
pub const MAX_CONNS: usize = 64;
const LISTENERS: usize = 4;
/// Idle connections are closed after this long.
pub const IDLE: Duration = Duration::from_secs(30);
const MAX_MSG: usize = 65535;

/// A smoltcp device at the IP medium backed by two queues: packets to feed in, packets it sent.
pub(crate) struct QueueDevice {
    pub(crate) rx: VecDeque<Vec<u8>>,
    pub(crate) tx: Vec<Vec<u8>>,
    pub(crate) mtu: usize,
    /// What smoltcp does with TCP checksums. Never verify on receive: the gateway checks the
    /// segments that need it before they get here (`Driver::frame_with`), and segments from
    /// offload links carry a partial checksum that only the final hop completes.
    pub(crate) tcp_checksum: Checksum,
    /// Receive buffers smoltcp is done with, for the next packets (64 KiB segments would
    /// otherwise cost an allocation and fresh pages each).
    spare: Vec<Vec<u8>>,
    /// Transmit buffers handed back by the device's user ([`Self::recycle`]).
    tx_spare: Vec<Vec<u8>>,
}

/// Receive buffers a [`QueueDevice`] keeps for reuse.
const SPARE_BUFFERS: usize = 16;

impl QueueDevice {
    /// A device with empty queues.
    pub(crate) fn new(mtu: usize, tcp_checksum: Checksum) -> Self {
        QueueDevice {
            rx: VecDeque::new(),
            tx: Vec::new(),
            mtu,
            tcp_checksum,
            spare: Vec::new(),
            tx_spare: Vec::new(),
        }
    }

    /// Takes back packets of [`Self::tx`] the caller is done with, to build later ones in.
    pub(crate) fn recycle(&mut self, bufs: impl Iterator<Item = Vec<u8>>) {
        for b in bufs {
            if self.tx_spare.len() >= SPARE_BUFFERS {
                break;
            }
            self.tx_spare.push(b);
        }
    }

    /// Queues a copy of `packet` for smoltcp, in a reused buffer when one is spare; returns it
    /// for last edits.
    pub(crate) fn push_rx(&mut self, packet: &[u8]) -> &mut Vec<u8> {
        let mut b = self.spare.pop().unwrap_or_default();
        b.clear();
        b.extend_from_slice(packet);
        self.rx.push_back(b);
        let last = self.rx.len() - 1;
        &mut self.rx[last]
    }
}

pub(crate) struct Rx<'a>(Vec<u8>, &'a mut Vec<Vec<u8>>);
pub(crate) struct Tx<'a>(&'a mut Vec<Vec<u8>>, &'a mut Vec<Vec<u8>>);

impl RxToken for Rx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let Rx(buf, spare) = self;
        let r = f(&buf);
        if spare.len() < SPARE_BUFFERS {
            spare.push(buf);
        }
        r
    }
}

impl TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let Tx(queue, spare) = self;
        let mut b = spare.pop().unwrap_or_default();
        b.clear();
        b.resize(len, 0);
        let r = f(&mut b);
        queue.push(b);
        r
    }
}

impl Device for QueueDevice {
    type RxToken<'a> = Rx<'a>;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _t: SInstant) -> Option<(Rx<'_>, Tx<'_>)> {
        let p = self.rx.pop_front()?;
        Some((Rx(p, &mut self.spare), Tx(&mut self.tx, &mut self.tx_spare)))
    }

    fn transmit(&mut self, _t: SInstant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.tx, &mut self.tx_spare))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ip;
        c.max_transmission_unit = self.mtu;
        c.checksum.tcp = self.tcp_checksum;
        c
    }
}

#[derive(Default)]
struct Conn {
    inbuf: Vec<u8>,
    out: VecDeque<u8>,
    /// Queries handed to the DNS server and not answered yet.
    pending: usize,
    last: Option<std::time::Instant>,
}

/// The DNS-over-TCP endpoint. See the module docs.
pub struct TcpDns {
    iface: Interface,
    dev: QueueDevice,
    sockets: SocketSet<'static>,
    listeners: Vec<SocketHandle>,
    conns: HashMap<SocketHandle, Conn>,
    epoch: std::time::Instant,
}

/// A connection handle, to route an answer back.
pub type ConnId = SocketHandle;

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
            epoch,
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

    /// Feeds one IP packet (a TCP segment for port 53 on a gateway address).
    pub fn input(&mut self, ip_packet: &[u8]) {
        if self.dev.rx.len() < 256 {
            self.dev.push_rx(ip_packet);
        }
    }

    /// Runs the TCP state machines. Complete queries are passed to `on_query(conn, message)`;
    /// returns the IP packets to send. `clock` is the gateway's clock.
    pub fn poll(
        &mut self,
        clock: std::time::Instant,
        mut on_query: impl FnMut(ConnId, Vec<u8>),
    ) -> Vec<Vec<u8>> {
        let now = self.smol(clock);
        self.iface.poll(now, &mut self.dev, &mut self.sockets);
        // Listeners that accepted become connections.
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
            self.conns.insert(
                h,
                Conn {
                    last: Some(clock),
                    ..Conn::default()
                },
            );
        }
        let mut closed = Vec::new();
        for (h, c) in self.conns.iter_mut() {
            let s = self.sockets.get_mut::<tcp::Socket>(*h);
            let mut buf = [0u8; 4096];
            while s.can_recv() {
                match s.recv_slice(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        c.inbuf.extend_from_slice(&buf[..n]);
                        c.last = Some(clock);
                    }
                }
            }
            while c.inbuf.len() >= 2 {
                let len = usize::from(u16::from_be_bytes([c.inbuf[0], c.inbuf[1]]));
                if c.inbuf.len() < 2 + len {
                    break;
                }
                let msg = c.inbuf[2..2 + len].to_vec();
                c.inbuf.drain(..2 + len);
                c.pending += 1;
                on_query(*h, msg);
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
            let idle = c
                .last
                .is_some_and(|t| clock.saturating_duration_since(t) > IDLE);
            // The client closed its side and has every answer: close ours.
            let done = s.state() == tcp::State::CloseWait && c.out.is_empty() && c.pending == 0;
            if done || idle {
                s.close();
            }
            if matches!(s.state(), tcp::State::Closed | tcp::State::TimeWait)
                || c.inbuf.len() > MAX_MSG + 2
            {
                closed.push(*h);
            }
        }
        for h in closed {
            self.conns.remove(&h);
            self.sockets.remove(h);
        }
        self.refill();
        // Flush what the state machines want to send now.
        self.iface.poll(now, &mut self.dev, &mut self.sockets);
        std::mem::take(&mut self.dev.tx)
    }

    /// Queues an answer on connection `conn` (with its length prefix).
    pub fn answer(&mut self, conn: ConnId, msg: &[u8], now: std::time::Instant) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.pending = c.pending.saturating_sub(1);
            c.last = Some(now);
            if msg.len() <= MAX_MSG {
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
