//! Sockets and socket options the standard library does not offer.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixListener;
use std::path::Path;
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

/// Binds a listening UNIX stream socket at `path` that is mode 0600 from its creation (see
/// `control::server`'s module docs): the socket inode is `fchmod`ed before `bind`, and the file's mode is checked
/// after it (a kernel that ignored the inode's mode fails here, closed, rather than serving a
/// wider socket). Does not remove an existing file.
pub fn bind_private(path: &Path) -> io::Result<UnixListener> {
    let sock = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)?;
    make_private(&sock)?;
    sock.bind(&socket2::SockAddr::unix(path)?)?;
    let mode = std::fs::symlink_metadata(path).map(|m| m.mode() & 0o7777);
    if !matches!(mode, Ok(m) if m & 0o077 == 0) {
        let _ = std::fs::remove_file(path);
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("the socket was not created private (mode {mode:?}, wanted 0600)"),
        ));
    }
    sock.listen(128)?;
    // SAFETY: the descriptor is a listening UNIX stream socket we own; ownership moves.
    Ok(unsafe { UnixListener::from_raw_fd(sock.into_raw_fd()) })
}

/// `fchmod(sock, 0600)`: a UNIX socket bound after it gets a file of that mode (see
/// [`bind_private`]).
pub(crate) fn make_private(sock: impl AsFd) -> io::Result<()> {
    Ok(rustix::fs::fchmod(
        sock,
        rustix::fs::Mode::from_raw_mode(0o600),
    )?)
}

/// Dissolves a datagram socket's association (`connect` to `AF_UNSPEC`).
pub(crate) fn disconnect(sock: impl AsFd) -> io::Result<()> {
    Ok(rustix::net::connect_unspec(sock)?)
}

/// `recvfrom(2)` with `MSG_TRUNC` into `buf`: the datagram's real length (larger than
/// `buf.len()` when it was cut) and its sender.
pub(crate) fn recv_from_trunc(
    sock: &socket2::Socket,
    buf: &mut [u8],
) -> io::Result<(usize, socket2::SockAddr)> {
    // SAFETY: `[u8]` and `[MaybeUninit<u8>]` have the same layout; recvfrom only writes
    // initialised bytes into it, and the uninit view does not outlive this call.
    let uninit = unsafe { &mut *(buf as *mut [u8] as *mut [std::mem::MaybeUninit<u8>]) };
    sock.recv_from_with_flags(uninit, libc::MSG_TRUNC)
}
