//! Socket options the standard library does not offer.

use std::io;
use std::os::fd::AsFd;
use std::time::Duration;

/// Makes closing `sock` reset the connection (`SO_LINGER` on, 0 seconds), so the peer sees the
/// failure instead of an orderly end of stream.
pub(crate) fn set_linger_zero(sock: impl AsFd) -> io::Result<()> {
    Ok(rustix::net::sockopt::set_socket_linger(
        sock,
        Some(Duration::ZERO),
    )?)
}
