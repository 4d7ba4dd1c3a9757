//! The host side of NAT: where guest flows become sockets.
//!
//! # Theory of operation
//!
//! NAT ([`super`]) never opens a socket itself: it asks a [`HostSockets`] for a connected UDP
//! socket, a ping socket or a TCP connect, and gets back boxed [`HostDatagram`] /
//! [`HostStream`] objects. Those are mio [`Source`]s, so they are registered with the gateway's
//! `Registry` under NAT's tokens exactly like plain mio sockets.
//!
//! In production the implementation is [`OsSockets`]: real, non-blocking kernel sockets
//! (`mio::net::UdpSocket`, ping sockets, `mio::net::TcpStream`). Simulations and the fuzzer pass
//! an in-memory implementation instead (see `fuzz/src/datapath.rs`): it learns each socket's
//! token when NAT registers it and reports readiness itself, so a whole gateway runs
//! deterministically without the kernel's network stack. NAT's own logic (flow tables, limits,
//! timeouts, packet building) is the same code either way.
//!
//! Errors follow the kernel's conventions, since NAT maps them to what the guest sees:
//! `WouldBlock` for "try later", `ECONNREFUSED` for a refused port (an RST or ICMP port
//! unreachable), `EHOSTUNREACH`/`ENETUNREACH` for ICMP host/network unreachable,
//! `EACCES`/`EPERM` from [`HostSockets::ping`] for forbidden ping sockets.

use std::fmt::Debug;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mio::event::Source;
use mio::net::{TcpStream, UdpSocket};

use crate::sys::sock;

/// Descriptors kept free of NAT for everything else (ports, control connections, DNS, logs).
const FD_RESERVE: u64 = 256;
/// Descriptors NAT's host sockets may use in all, process-wide (set by [`raise_nofile`]).
static FD_BUDGET: AtomicUsize = AtomicUsize::new(768);
/// Running NATs (one per gateway network that is not internal).
static NATS: AtomicUsize = AtomicUsize::new(0);

/// Raises `RLIMIT_NOFILE`'s soft limit to its hard limit and sizes NAT's descriptor budget to
/// three quarters of what is left after a reserve, so NAT refuses new flows (counted) well
/// before the process would hit `EMFILE`. Returns the soft limit now in force.
pub fn raise_nofile() -> u64 {
    let soft = crate::sys::process::raise_nofile_limit();
    let budget = soft.saturating_sub(FD_RESERVE).saturating_mul(3) / 4;
    FD_BUDGET.store(
        usize::try_from(budget).unwrap_or(usize::MAX).max(64),
        Ordering::Relaxed,
    );
    soft
}

/// The flows one network's NAT may hold so that descriptors suffice for every network: the
/// process budget shared equally among running NATs (each TCP or UDP flow or ping holds one).
pub fn fd_share() -> usize {
    FD_BUDGET.load(Ordering::Relaxed) / NATS.load(Ordering::Relaxed).max(1)
}

/// Counts a running NAT for [`fd_share`] while alive.
#[derive(Debug)]
pub struct NatSlot(());

impl NatSlot {
    /// Registers one more running NAT.
    pub fn new() -> NatSlot {
        NATS.fetch_add(1, Ordering::Relaxed);
        NatSlot(())
    }
}

impl Default for NatSlot {
    fn default() -> Self {
        NatSlot::new()
    }
}

impl Drop for NatSlot {
    fn drop(&mut self) {
        NATS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A datagram socket on the host: a connected UDP socket or an ICMP ping socket.
pub trait HostDatagram: Source + Debug + Send {
    /// Sends to the connected peer.
    fn send(&self, buf: &[u8]) -> io::Result<usize>;
    /// Sends to `to` (ping sockets).
    fn send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize>;
    /// Receives one datagram from the connected peer.
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// Receives one datagram and its sender (ping sockets).
    fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)>;
}

/// A TCP connection on the host (outgoing NAT connects and accepted port-forward clients).
pub trait HostStream: Source + Read + Write + Send {
    /// The pending socket error (`SO_ERROR`), taken.
    fn take_error(&self) -> io::Result<Option<io::Error>>;
    /// The peer's address; `NotConnected` while a connect is in progress.
    fn peer_addr(&self) -> io::Result<SocketAddr>;
    /// Shuts one or both directions down.
    fn shutdown(&self, how: Shutdown) -> io::Result<()>;
    /// Makes the coming close send an RST (`SO_LINGER` 0).
    fn reset_on_close(&self);
}

/// A port forward's TCP listener that is not a kernel socket (simulations, the fuzzer; see
/// [`super::forward_rt::Listener::HostTcp`]). Its connections are never spliced.
pub trait HostListener: Source + Debug + Send {
    /// Accepts one pending connection: the stream and the client's address (`WouldBlock` when
    /// none is pending).
    fn accept(&self) -> io::Result<(Box<dyn HostStream>, SocketAddr)>;
}

/// Opens host sockets for NAT. See the module docs.
pub trait HostSockets: Send + Sync {
    /// A non-blocking UDP socket bound to `bind` and connected to `target`.
    fn udp(&self, bind: SocketAddr, target: SocketAddr) -> io::Result<Box<dyn HostDatagram>>;
    /// A non-blocking ping socket for the family of `host`, bound to `bind` if given.
    fn ping(&self, host: IpAddr, bind: Option<SocketAddr>) -> io::Result<Box<dyn HostDatagram>>;
    /// A non-blocking TCP connect to `to` (in progress when it returns), from `bind` if given.
    fn tcp_connect(
        &self,
        to: SocketAddr,
        bind: Option<SocketAddr>,
    ) -> io::Result<Box<dyn HostStream>>;
}

/// The production [`HostSockets`]: the kernel's sockets.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsSockets;

impl OsSockets {
    /// A shared handle, as NAT takes it.
    pub fn shared() -> Arc<dyn HostSockets> {
        Arc::new(OsSockets)
    }
}

impl HostDatagram for UdpSocket {
    fn send(&self, buf: &[u8]) -> io::Result<usize> {
        UdpSocket::send(self, buf)
    }
    fn send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
        UdpSocket::send_to(self, buf, to)
    }
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        UdpSocket::recv(self, buf)
    }
    fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        UdpSocket::recv_from(self, buf)
    }
}

impl HostStream for TcpStream {
    fn take_error(&self) -> io::Result<Option<io::Error>> {
        TcpStream::take_error(self)
    }
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        TcpStream::peer_addr(self)
    }
    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        TcpStream::shutdown(self, how)
    }
    fn reset_on_close(&self) {
        let _ = socket2::SockRef::from(self).set_linger(Some(Duration::ZERO));
    }
}

impl HostSockets for OsSockets {
    fn udp(&self, bind: SocketAddr, target: SocketAddr) -> io::Result<Box<dyn HostDatagram>> {
        let s = UdpSocket::bind(bind)?;
        s.connect(target)?;
        Ok(Box::new(s))
    }

    fn ping(&self, host: IpAddr, bind: Option<SocketAddr>) -> io::Result<Box<dyn HostDatagram>> {
        let s = ping_socket(host)?;
        if let Some(b) = bind {
            bind_socket(&s, b)?;
        }
        Ok(Box::new(s))
    }

    fn tcp_connect(
        &self,
        to: SocketAddr,
        bind: Option<SocketAddr>,
    ) -> io::Result<Box<dyn HostStream>> {
        let domain = socket2::Domain::for_address(to);
        let s = socket2::Socket::new(domain, socket2::Type::STREAM.nonblocking().cloexec(), None)?;
        if let Some(b) = bind {
            s.bind(&b.into())?;
        }
        let _ = s.set_tcp_nodelay(true);
        match s.connect(&to.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        Ok(Box::new(TcpStream::from_std(s.into())))
    }
}

/// Opens a non-blocking ping socket for the family of `host`.
fn ping_socket(host: IpAddr) -> io::Result<UdpSocket> {
    let owned = sock::ping_socket(host.is_ipv6())?;
    // A ping socket is a datagram socket: std's UdpSocket send_to/recv_from are plain
    // sendto/recvfrom on it.
    Ok(UdpSocket::from_std(std::net::UdpSocket::from(owned)))
}

/// Binds `sock` to `addr`.
fn bind_socket(s: &UdpSocket, addr: SocketAddr) -> io::Result<()> {
    sock::bind(s, addr)
}
