//! Port forwards at run time: host listeners whose connections and datagrams go to a guest.
//!
//! Listeners are bound by the caller (so "port in use" is reported to whoever asked, naming the
//! port) and handed over as a [`Bound`]; here they are registered on the gateway's poll. A TCP
//! connection accepted on one becomes a smoltcp connection to the guest (see `tcp.rs`); a
//! UDP datagram becomes a UDP packet to the guest, and the guest's replies to that source go back
//! to the client through the same host socket (a reverse table with idle expiry).
//!
//! Source address seen by the guest: the client's own address when it is a real one of the same
//! family; the gateway's address (with the client's port) for loopback clients, whose address
//! means nothing inside the guest.
//!
//! A TCP forward with a [`SpliceHook`] (`splice = true`) hands exactly those connections — the
//! ones whose client address the guest could not see anyway — to the kernel-to-kernel relay
//! (`splice.rs`); connections from real clients still take the path above, so the guest
//! sees their addresses. One listener, one forward: the choice is made per connection.
//!
//! The target (`to`) is resolved at each new connection — an endpoint name through the
//! network's DNS records, or an IP — so a forward follows its endpoint across DHCP changes.
//!
//! A forward with several endpoints (`to = [...]`) picks one per new TCP connection, or per
//! new UDP flow (a client address not seen for the UDP idle timeout), with the forward's
//! [`Balance`] among the endpoints that are up (`balance.rs`); both the regular and the
//! spliced path take the pick. Each connection holds a [`ConnGuard`] for its endpoint while it
//! lives. With no endpoint up, a TCP client is reset and a datagram dropped (counted in
//! [`PoolStats::refused`]). Health checks run from `Forwards::health` (`probe.rs`).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, UdpSocket};
use mio::{Interest, Registry, Token};

use super::balance::{Balance, ConnGuard, Health, HealthSpec, Picker, PoolStats};
use super::flow::FlowId;
use super::forward::Targets;
use super::host::{HostDatagram, HostListener, HostStream};
use super::probe::{self, InFlight, ProbeOp, ProbeStream};
use super::splice::Splicer;
use super::{NatConfig, token};
use crate::wire::ip::{PROTO_TCP, PROTO_UDP, build_udp};

/// One bound host socket of a forward.
#[derive(Debug)]
pub enum Listener {
    /// A TCP listener and the guest port it maps to.
    Tcp {
        /// The listener.
        sock: TcpListener,
        /// Guest port.
        guest_port: u16,
    },
    /// A UDP socket and the guest port it maps to.
    Udp {
        /// The socket.
        sock: UdpSocket,
        /// Guest port.
        guest_port: u16,
    },
    /// A TCP listener that is not a kernel socket (simulations, the fuzzer).
    HostTcp {
        /// The listener.
        sock: Box<dyn HostListener>,
        /// Guest port.
        guest_port: u16,
    },
    /// A UDP socket that is not a kernel socket (simulations, the fuzzer).
    HostUdp {
        /// The socket.
        sock: Box<dyn HostDatagram>,
        /// Guest port.
        guest_port: u16,
    },
}

/// The policy check of a forward's new connection or datagram: `(IP protocol, source the
/// guest sees, guest address, bytes)`, true to let it through.
pub type Allow<'a> = dyn Fn(u8, SocketAddr, SocketAddr, u64) -> bool + 'a;

/// An accepted port-forward connection: a kernel socket (which a spliced forward may hand to
/// the relay) or another [`HostStream`].
enum Accepted {
    Kernel(mio::net::TcpStream),
    Host(Box<dyn HostStream>),
}

impl Accepted {
    /// Closes it with an RST (no endpoint to send it to).
    fn refuse(self) {
        match self {
            Accepted::Kernel(s) => HostStream::reset_on_close(&s),
            Accepted::Host(s) => s.reset_on_close(),
        }
    }
}

/// A forward's bound sockets, its endpoints and how it balances over them.
#[derive(Debug)]
pub struct Bound {
    /// The host sockets, one per host port.
    pub listeners: Vec<Listener>,
    /// Endpoint names or IP addresses (one or more).
    pub to: Targets,
    /// How a new connection or flow picks its endpoint.
    pub balance: Balance,
    /// Health checks of the endpoints (TCP), if any.
    pub health: Option<HealthSpec>,
    /// Splice the connections whose client address the guest could not see (TCP only).
    pub splice: Option<SpliceHook>,
    /// Per-endpoint state and counters, shared with whoever lists them.
    pub stats: Arc<PoolStats>,
}

impl Bound {
    /// `listeners` forwarding to `to`: round robin, no health checks, not spliced.
    pub fn new(listeners: Vec<Listener>, to: impl Into<Targets>) -> Bound {
        let to = to.into();
        Bound {
            listeners,
            stats: PoolStats::new(&to),
            to,
            balance: Balance::default(),
            health: None,
            splice: None,
        }
    }
}

/// Where a spliced forward's connections go: the relay, and the guests' namespaces to connect
/// from.
#[derive(Debug, Clone)]
pub struct SpliceHook {
    /// The relay thread.
    pub splicer: Arc<Splicer>,
    /// Each endpoint's network namespace (`/run/netns/NAME`, `/proc/PID/ns/net`), in `to`
    /// order.
    pub netns: Vec<PathBuf>,
}

struct Entry {
    id: u64,
    listener: Listener,
}

/// One forward's balancing state (shared by its listeners).
struct Pool {
    to: Targets,
    balance: Balance,
    picker: Picker,
    stats: Arc<PoolStats>,
    splice: Option<SpliceHook>,
    health: Option<HealthSpec>,
    /// The guest port health checks connect to (the first listener's).
    check_port: u16,
    /// Per endpoint: its health, when its next check is due, the check in flight.
    checks: Vec<(Health, Instant, Option<InFlight>)>,
}

impl Pool {
    /// The endpoint for a new connection from `client` and its guard, resolved; `None` (and
    /// counted) when none is up.
    fn choose(
        &mut self,
        client: IpAddr,
        resolve: &dyn Fn(&str) -> Vec<IpAddr>,
    ) -> Option<(usize, Option<IpAddr>)> {
        let Some(i) = self.picker.pick(self.balance, &self.stats, client) else {
            self.stats.refuse();
            tracing::debug!(to = %self.to, "port forward: no endpoint is up; refusing");
            return None;
        };
        Some((i, target(&self.to[i], client, resolve)))
    }
}

/// The forwards of one gateway.
#[derive(Default)]
pub struct Forwards {
    entries: Vec<Option<Entry>>,
    by_id: HashMap<u64, Vec<usize>>,
    pools: HashMap<u64, Pool>,
    udp_rev: HashMap<(SocketAddr, SocketAddr), (usize, SocketAddr, Instant)>,
    /// Each UDP client's endpoint (by listener and client), and its live flow.
    udp_sticky: HashMap<(usize, SocketAddr), (usize, Option<ConnGuard>, Instant)>,
    next_probe_port: u16,
}

/// Most reverse UDP mappings kept.
const MAX_UDP_REV: usize = 4096;

impl Forwards {
    /// Registers a forward's sockets.
    pub fn add(&mut self, reg: &Registry, id: u64, b: Bound) -> io::Result<()> {
        let mut idxs = Vec::new();
        let check_port = match b.listeners.first() {
            Some(
                Listener::Tcp { guest_port, .. }
                | Listener::Udp { guest_port, .. }
                | Listener::HostTcp { guest_port, .. }
                | Listener::HostUdp { guest_port, .. },
            ) => *guest_port,
            None => 0,
        };
        let now = Instant::now();
        self.pools.insert(
            id,
            Pool {
                checks: (0..b.to.len())
                    .map(|_| (Health::default(), now, None))
                    .collect(),
                to: b.to,
                balance: b.balance,
                picker: Picker::default(),
                stats: b.stats,
                splice: b.splice,
                health: b.health,
                check_port,
            },
        );
        for mut l in b.listeners {
            let idx = match self.entries.iter().position(Option::is_none) {
                Some(i) => i,
                None => {
                    self.entries.push(None);
                    self.entries.len() - 1
                }
            };
            let r = match &mut l {
                Listener::Tcp { sock, .. } => {
                    reg.register(sock, token::make(token::FWD_TCP, idx), Interest::READABLE)
                }
                Listener::Udp { sock, .. } => {
                    reg.register(sock, token::make(token::FWD_UDP, idx), Interest::READABLE)
                }
                Listener::HostTcp { sock, .. } => {
                    reg.register(sock, token::make(token::FWD_TCP, idx), Interest::READABLE)
                }
                Listener::HostUdp { sock, .. } => {
                    reg.register(sock, token::make(token::FWD_UDP, idx), Interest::READABLE)
                }
            };
            if let Err(e) = r {
                self.by_id.insert(id, idxs);
                self.remove(reg, id);
                return Err(e);
            }
            self.entries[idx] = Some(Entry { id, listener: l });
            idxs.push(idx);
        }
        self.by_id.insert(id, idxs);
        Ok(())
    }

    /// Closes a forward's sockets. False if unknown. Its connections stay (their guards keep
    /// its counters alive until they end).
    pub fn remove(&mut self, reg: &Registry, id: u64) -> bool {
        let Some(idxs) = self.by_id.remove(&id) else {
            return false;
        };
        self.pools.remove(&id);
        for i in idxs {
            if let Some(mut e) = self.entries.get_mut(i).and_then(Option::take) {
                let _ = match &mut e.listener {
                    Listener::Tcp { sock, .. } => reg.deregister(sock),
                    Listener::Udp { sock, .. } => reg.deregister(sock),
                    Listener::HostTcp { sock, .. } => reg.deregister(sock),
                    Listener::HostUdp { sock, .. } => reg.deregister(sock),
                };
                debug_assert_eq!(e.id, id);
            }
        }
        let live = |i: &usize| self.entries.get(*i).is_some_and(Option::is_some);
        self.udp_rev.retain(|_, (i, _, _)| live(i));
        self.udp_sticky.retain(|(i, _), _| live(i));
        true
    }

    /// Accepts every pending connection on a TCP forward: `(client stream, source for the
    /// guest, guest address, endpoint guard)` for each one whose endpoint is up and resolves.
    /// A spliced forward's connections from clients the guest cannot see (loopback, other
    /// family) go to the relay here and are not returned. With no endpoint up, the client is
    /// reset.
    #[allow(clippy::type_complexity)]
    pub fn accept(
        &mut self,
        tok: Token,
        cfg: &NatConfig,
        resolve: &dyn Fn(&str) -> Vec<IpAddr>,
        allow: &Allow<'_>,
    ) -> Vec<(
        Box<dyn HostStream>,
        SocketAddr,
        SocketAddr,
        Option<ConnGuard>,
    )> {
        let mut v = Vec::new();
        let Some(Some(e)) = self.entries.get_mut(token::split(tok).1) else {
            return v;
        };
        let Some(pool) = self.pools.get_mut(&e.id) else {
            return v;
        };
        loop {
            let (next, guest_port) = match &e.listener {
                Listener::Tcp { sock, guest_port } => (
                    sock.accept().map(|(s, c)| (Accepted::Kernel(s), c)),
                    guest_port,
                ),
                Listener::HostTcp { sock, guest_port } => (
                    sock.accept().map(|(s, c)| (Accepted::Host(s), c)),
                    guest_port,
                ),
                _ => return v,
            };
            match next {
                Ok((stream, client)) => {
                    let client = unmap(client);
                    let Some((i, ip)) = pool.choose(client.ip(), resolve) else {
                        stream.refuse();
                        continue;
                    };
                    let stream = match stream {
                        Accepted::Kernel(s) => s,
                        Accepted::Host(s) => {
                            let Some(ip) = ip else {
                                continue;
                            };
                            let guest = SocketAddr::new(ip, *guest_port);
                            if let Some(from) = source_for(client, guest, cfg)
                                && allow(PROTO_TCP, from, guest, 0)
                            {
                                v.push((s, from, guest, pool.stats.hold(i)));
                            }
                            continue;
                        }
                    };
                    if let Some(hook) = &pool.splice
                        && let Some(netns) = hook.netns.get(i)
                    {
                        // Inside the namespace, a name the records do not know is the
                        // namespace's own loopback (`usernet run`'s command).
                        let guest = SocketAddr::new(
                            ip.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                            *guest_port,
                        );
                        if ip.is_none() || source_for(client, guest, cfg) != Some(client) {
                            // The guest sees the connection from its own loopback; the policy
                            // sees it as the others, from the client's source for the guest.
                            let from = source_for(client, guest, cfg).unwrap_or(client);
                            if !allow(PROTO_TCP, from, guest, 0) {
                                continue;
                            }
                            hook.splicer.splice_held(
                                e.id,
                                stream.into(),
                                netns,
                                guest,
                                pool.stats.hold(i),
                            );
                            continue;
                        }
                    }
                    let Some(ip) = ip else {
                        tracing::debug!(to = %pool.to[i], "port forward target does not resolve; closing");
                        continue;
                    };
                    let guest = SocketAddr::new(ip, *guest_port);
                    let Some(from) = source_for(client, guest, cfg) else {
                        continue;
                    };
                    if !allow(PROTO_TCP, from, guest, 0) {
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    v.push((Box::new(stream), from, guest, pool.stats.hold(i)));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    tracing::debug!("port forward accept: {err}");
                    break;
                }
            }
        }
        v
    }

    /// Reads every pending datagram on a UDP forward and turns it into a packet to the guest.
    /// A client address not seen recently is a new flow: it picks its endpoint, and keeps it
    /// while it stays active. Returns how many.
    pub fn recv_udp(
        &mut self,
        tok: Token,
        cfg: &NatConfig,
        resolve: &dyn Fn(&str) -> Vec<IpAddr>,
        allow: &Allow<'_>,
        out: &mut Vec<Vec<u8>>,
    ) -> usize {
        let idx = token::split(tok).1;
        let Some(Some(e)) = self.entries.get_mut(idx) else {
            return 0;
        };
        let Some(pool) = self.pools.get_mut(&e.id) else {
            return 0;
        };
        let (sock, guest_port): (&dyn HostDatagram, &u16) = match &e.listener {
            Listener::Udp { sock, guest_port } => (sock, guest_port),
            Listener::HostUdp { sock, guest_port } => (sock.as_ref(), guest_port),
            _ => return 0,
        };
        let mut n = 0;
        let mut buf = vec![0u8; 65536];
        loop {
            match sock.recv_from(&mut buf) {
                Ok((len, client)) => {
                    let client = unmap(client);
                    let now = Instant::now();
                    let ep = match self.udp_sticky.get_mut(&(idx, client)) {
                        Some((ep, _, seen)) => {
                            *seen = now;
                            *ep
                        }
                        None => {
                            let Some(i) = pool.picker.pick(pool.balance, &pool.stats, client.ip())
                            else {
                                pool.stats.refuse();
                                continue;
                            };
                            if self.udp_sticky.len() < MAX_UDP_REV {
                                self.udp_sticky
                                    .insert((idx, client), (i, pool.stats.hold(i), now));
                            }
                            i
                        }
                    };
                    let Some(ip) = pool
                        .to
                        .get(ep)
                        .and_then(|t| target(t, client.ip(), resolve))
                    else {
                        continue;
                    };
                    let guest = SocketAddr::new(ip, *guest_port);
                    let Some(from) = source_for(client, guest, cfg) else {
                        continue;
                    };
                    if !allow(PROTO_UDP, from, guest, len as u64 + 28) {
                        continue;
                    }
                    if let Some(p) = build_udp(from, guest, &buf[..len]) {
                        out.push(p);
                        n += 1;
                    }
                    if self.udp_rev.len() < MAX_UDP_REV || self.udp_rev.contains_key(&(guest, from))
                    {
                        self.udp_rev.insert((guest, from), (idx, client, now));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        n
    }

    /// Runs the health checks (see `probe.rs`): reads the results of those in flight, moves
    /// endpoints in and out of the rotation, starts those due. `op` is NAT's TCP.
    pub(crate) fn health(
        &mut self,
        now: Instant,
        cfg: &NatConfig,
        resolve: &dyn Fn(&str) -> Vec<IpAddr>,
        op: &mut dyn FnMut(ProbeOp) -> Option<FlowId>,
    ) {
        for (id, pool) in &mut self.pools {
            let Some(spec) = pool.health else {
                continue;
            };
            let timeout = Duration::from_millis(spec.timeout_ms);
            for (i, (health, next, inflight)) in pool.checks.iter_mut().enumerate() {
                if let Some((good, open)) = inflight.as_ref().and_then(|p| p.result(now, timeout)) {
                    if let Some(flow) = open {
                        op(ProbeOp::Abort(flow));
                    }
                    *inflight = None;
                    if let Some(up) = health.record(good, &spec)
                        && let Some(st) = pool.stats.endpoints.get(i)
                    {
                        st.set_up(up);
                        let state = if up { "up" } else { "down" };
                        tracing::info!(forward = id, endpoint = %st.name, "port forward endpoint is {state}");
                    }
                }
                if inflight.is_some() || now < *next {
                    continue;
                }
                *next = now + Duration::from_millis(spec.interval_ms);
                let any = IpAddr::V4(Ipv4Addr::LOCALHOST);
                let Some(ip) = target(&pool.to[i], any, resolve) else {
                    continue; // No address (yet): no verdict.
                };
                let gw = match ip {
                    IpAddr::V4(_) => IpAddr::V4(cfg.gateway4),
                    IpAddr::V6(_) => match cfg.gateway6 {
                        Some(g) => IpAddr::V6(g),
                        None => continue,
                    },
                };
                let port = self
                    .next_probe_port
                    .clamp(*probe::PORTS.start(), *probe::PORTS.end());
                self.next_probe_port = if port == *probe::PORTS.end() {
                    *probe::PORTS.start()
                } else {
                    port + 1
                };
                let (stream, cell) = ProbeStream::open();
                let start = ProbeOp::Start {
                    from: SocketAddr::new(gw, port),
                    to: SocketAddr::new(ip, pool.check_port),
                    stream,
                };
                if let Some(flow) = op(start) {
                    *inflight = Some(InFlight::new(cell, flow, now));
                }
            }
        }
    }

    /// When the health checks next need a look (a check due, or one timing out).
    pub fn next_check(&self) -> Option<Instant> {
        self.pools
            .values()
            .filter_map(|p| Some((p, p.health?)))
            .flat_map(|(p, spec)| {
                let timeout = Duration::from_millis(spec.timeout_ms);
                p.checks
                    .iter()
                    .map(move |(_, next, inflight)| match inflight {
                        Some(f) => f.deadline(timeout),
                        None => *next,
                    })
            })
            .min()
    }

    /// A guest's UDP datagram from `guest` to `to`: if it answers a forwarded datagram, send it
    /// to that client and return true.
    pub fn udp_reply(&mut self, guest: SocketAddr, to: SocketAddr, payload: &[u8]) -> bool {
        let Some((idx, client, seen)) = self.udp_rev.get_mut(&(guest, to)) else {
            return false;
        };
        *seen = Instant::now();
        match self.entries.get(*idx) {
            Some(Some(Entry {
                listener: Listener::Udp { sock, .. },
                ..
            })) => {
                let _ = sock.send_to(payload, *client);
            }
            Some(Some(Entry {
                listener: Listener::HostUdp { sock, .. },
                ..
            })) => {
                let _ = sock.send_to(payload, *client);
            }
            _ => {}
        }
        true
    }

    /// True if a guest's datagram from `guest` to `to` would answer a forwarded datagram.
    pub fn has_udp_reply(&self, guest: SocketAddr, to: SocketAddr) -> bool {
        self.udp_rev.contains_key(&(guest, to))
    }

    /// Forgets reverse UDP mappings idle for longer than `idle`.
    pub fn expire(&mut self, now: Instant, idle: Duration) {
        self.udp_rev
            .retain(|_, (_, _, seen)| now.duration_since(*seen) < idle);
        self.udp_sticky
            .retain(|_, (_, _, seen)| now.duration_since(*seen) < idle);
    }
}

/// `::ffff:a.b.c.d` → `a.b.c.d`.
fn unmap(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
            None => a,
        },
        IpAddr::V4(_) => a,
    }
}

/// The guest address for `to`: an IP, or a name's address (same family as the client first).
fn target(to: &str, client: IpAddr, resolve: &dyn Fn(&str) -> Vec<IpAddr>) -> Option<IpAddr> {
    if let Ok(ip) = to.parse::<IpAddr>() {
        return Some(ip);
    }
    let addrs = resolve(to);
    addrs
        .iter()
        .find(|a| a.is_ipv4() == client.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
}

/// The source address the guest sees for `client` (see the module docs).
pub fn source_for(client: SocketAddr, guest: SocketAddr, cfg: &NatConfig) -> Option<SocketAddr> {
    let same_family = client.is_ipv4() == guest.is_ipv4();
    if same_family && !client.ip().is_loopback() && !client.ip().is_unspecified() {
        return Some(client);
    }
    let gw = match guest.ip() {
        IpAddr::V4(_) => IpAddr::V4(cfg.gateway4),
        IpAddr::V6(_) => IpAddr::V6(cfg.gateway6?),
    };
    Some(SocketAddr::new(gw, client.port()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn source_rules() {
        let cfg = NatConfig::new(Ipv4Addr::new(10, 88, 0, 1), None);
        let guest: SocketAddr = "10.88.0.5:80".parse().expect("addr");
        let real: SocketAddr = "192.0.2.9:40000".parse().expect("addr");
        assert_eq!(source_for(real, guest, &cfg), Some(real));
        let lo: SocketAddr = "127.0.0.1:40001".parse().expect("addr");
        assert_eq!(
            source_for(lo, guest, &cfg),
            Some("10.88.0.1:40001".parse().expect("addr"))
        );
        let v6: SocketAddr = "[2001:db8::1]:5".parse().expect("addr");
        assert_eq!(
            source_for(v6, guest, &cfg),
            Some("10.88.0.1:5".parse().expect("addr"))
        );
        assert_eq!(
            unmap("[::ffff:192.0.2.1]:7".parse().expect("a")),
            "192.0.2.1:7".parse().expect("a")
        );
    }

    #[test]
    fn targets() {
        let r = |n: &str| {
            if n == "web" {
                vec![
                    "fd88::5".parse().expect("a"),
                    "10.88.0.5".parse().expect("a"),
                ]
            } else {
                vec![]
            }
        };
        let c4: IpAddr = "127.0.0.1".parse().expect("a");
        assert_eq!(target("web", c4, &r), Some("10.88.0.5".parse().expect("a")));
        assert_eq!(
            target("10.88.0.9", c4, &r),
            Some("10.88.0.9".parse().expect("a"))
        );
        assert_eq!(target("nope", c4, &r), None);
    }
}
