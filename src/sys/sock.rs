//! Sockets and socket options the standard library does not offer.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use rustix::net::{AddressFamily, SocketFlags, SocketType, ipproto};

/// A non-blocking, close-on-exec ping socket (`SOCK_DGRAM` with `IPPROTO_ICMP`, or
/// `IPPROTO_ICMPV6` when `v6`): ICMP echo without privileges, for the groups in
/// `net.ipv4.ping_group_range`.
pub(crate) fn ping_socket(v6: bool) -> io::Result<OwnedFd> {
    let (family, proto) = if v6 {
        (AddressFamily::INET6, ipproto::ICMPV6)
    } else {
        (AddressFamily::INET, ipproto::ICMP)
    };
    Ok(rustix::net::socket_with(
        family,
        SocketType::DGRAM,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        Some(proto),
    )?)
}

/// Binds `sock` to `addr` (for sockets std does not create, such as [`ping_socket`]'s).
pub(crate) fn bind(sock: impl AsFd, addr: SocketAddr) -> io::Result<()> {
    Ok(rustix::net::bind(sock, &addr)?)
}

/// Makes closing `sock` reset the connection (`SO_LINGER` on, 0 seconds), so the peer sees the
/// failure instead of an orderly end of stream.
pub(crate) fn set_linger_zero(sock: impl AsFd) -> io::Result<()> {
    Ok(rustix::net::sockopt::set_socket_linger(
        sock,
        Some(Duration::ZERO),
    )?)
}
