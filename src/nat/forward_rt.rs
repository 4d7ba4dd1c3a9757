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

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, UdpSocket};
use mio::{Interest, Registry, Token};

use super::host::{HostDatagram, HostListener, HostStream};
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

/// A forward's bound sockets and its target.
#[derive(Debug)]
pub struct Bound {
    /// The host sockets, one per host port.
    pub listeners: Vec<Listener>,
    /// Endpoint name or IP address.
    pub to: String,
    /// Splice the connections whose client address the guest could not see (TCP only).
    pub splice: Option<SpliceHook>,
}

/// Where a spliced forward's connections go: the relay, and the guest's namespace to connect
/// from.
#[derive(Debug, Clone)]
pub struct SpliceHook {
    /// The relay thread.
    pub splicer: Arc<Splicer>,
    /// The guest's network namespace (`/run/netns/NAME`, `/proc/PID/ns/net`).
    pub netns: PathBuf,
}

struct Entry {
    id: u64,
    listener: Listener,
    to: String,
    splice: Option<SpliceHook>,
}

/// The forwards of one gateway.
#[derive(Default)]
pub struct Forwards {
    entries: Vec<Option<Entry>>,
    by_id: HashMap<u64, Vec<usize>>,
    udp_rev: HashMap<(SocketAddr, SocketAddr), (usize, SocketAddr, Instant)>,
}

/// Most reverse UDP mappings kept.
const MAX_UDP_REV: usize = 4096;

impl Forwards {
    /// Registers a forward's sockets.
    pub fn add(&mut self, reg: &Registry, id: u64, b: Bound) -> io::Result<()> {
        let mut idxs = Vec::new();
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
            self.entries[idx] = Some(Entry {
                id,
                listener: l,
                to: b.to.clone(),
                splice: b.splice.clone(),
            });
            idxs.push(idx);
        }
        self.by_id.insert(id, idxs);
        Ok(())
    }

    /// Closes a forward's sockets. False if unknown.
    pub fn remove(&mut self, reg: &Registry, id: u64) -> bool {
        let Some(idxs) = self.by_id.remove(&id) else {
            return false;
        };
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
        self.udp_rev
            .retain(|_, (i, _, _)| self.entries.get(*i).is_some_and(Option::is_some));
        true
    }

    /// Accepts every pending connection on a TCP forward: `(client stream, source for the
    /// guest, guest address)` for each one whose target resolves. A spliced forward's
    /// connections from clients the guest cannot see (loopback, other family) go to the relay
    /// here and are not returned.
    pub fn accept(
        &mut self,
        tok: Token,
        cfg: &NatConfig,
        resolve: &dyn Fn(&str) -> Vec<IpAddr>,
        allow: &Allow<'_>,
    ) -> Vec<(Box<dyn HostStream>, SocketAddr, SocketAddr)> {
        let mut v = Vec::new();
        let Some(Some(e)) = self.entries.get_mut(token::split(tok).1) else {
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
                    let ip = target(&e.to, client.ip(), resolve);
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
                                v.push((s, from, guest));
                            }
                            continue;
                        }
                    };
                    if let Some(hook) = &e.splice {
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
                            hook.splicer
                                .splice_forward(e.id, stream.into(), &hook.netns, guest);
                            continue;
                        }
                    }
                    let Some(ip) = ip else {
                        tracing::debug!(to = %e.to, "port forward target does not resolve; closing");
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
                    v.push((Box::new(stream), from, guest));
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
    /// Returns how many.
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
                    let Some(ip) = target(&e.to, client.ip(), resolve) else {
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
                        self.udp_rev
                            .insert((guest, from), (idx, client, Instant::now()));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        n
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
