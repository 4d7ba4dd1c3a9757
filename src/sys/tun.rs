//! The TUN/TAP driver's descriptor calls: opening `/dev/net/tun`, and the `TUN*` ioctls that take
//! an integer (or nothing) rather than an `ifreq` (those are [`super::ifreq::IfReqOp`]).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use rustix::fs::{Mode, OFlags};

/// Opens `/dev/net/tun` read-write, non-blocking and close-on-exec.
pub(crate) fn open_tun() -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        "/dev/net/tun",
        OFlags::RDWR | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// `ioctl(fd, req, arg)`, mapping -1 to the OS error.
///
/// # Safety
/// `arg` must be what `req` expects (a valid pointer to the right type, or an integer).
unsafe fn ioctl<T>(fd: BorrowedFd<'_>, req: libc::c_ulong, arg: T) -> io::Result<libc::c_int> {
    // SAFETY: guaranteed by the caller.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// `TUNGETFEATURES`: the `IFF_*` flags the driver supports.
pub(crate) fn features(fd: BorrowedFd<'_>) -> io::Result<libc::c_uint> {
    let mut features: libc::c_uint = 0;
    // SAFETY: TUNGETFEATURES writes one unsigned int through the pointer.
    unsafe { ioctl(fd, libc::TUNGETFEATURES, &mut features) }?;
    Ok(features)
}

/// `TUNSETOFFLOAD`: asks for the `TUN_F_*` offloads in `flags`.
pub(crate) fn set_offload(fd: BorrowedFd<'_>, flags: libc::c_uint) -> io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its flags as the integer argument.
    unsafe { ioctl(fd, libc::TUNSETOFFLOAD, flags as libc::c_ulong) }.map(drop)
}

/// `TUNGETVNETHDRSZ`: the virtio-net header size.
pub(crate) fn vnet_hdr_size(fd: BorrowedFd<'_>) -> io::Result<libc::c_int> {
    let mut sz: libc::c_int = 0;
    // SAFETY: TUNGETVNETHDRSZ writes one int through the pointer.
    unsafe { ioctl(fd, libc::TUNGETVNETHDRSZ, &mut sz) }?;
    Ok(sz)
}

/// `TUNSETVNETHDRSZ`: sets the virtio-net header size.
pub(crate) fn set_vnet_hdr_size(fd: BorrowedFd<'_>, size: libc::c_int) -> io::Result<()> {
    // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer.
    unsafe { ioctl(fd, libc::TUNSETVNETHDRSZ, &size) }.map(drop)
}

/// `SIOCGSKNS`: the network namespace of the socket (or TAP) `fd`, as a new descriptor.
pub(crate) fn socket_netns(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: SIOCGSKNS takes no argument and returns a new namespace fd (or -1).
    let ns = unsafe { ioctl(fd, libc::SIOCGSKNS, 0usize) }?;
    // SAFETY: `ns` is a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(ns) })
}

/// Sets `O_NONBLOCK` on `fd`, keeping its other status flags.
pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let fl = rustix::fs::fcntl_getfl(fd)?;
    Ok(rustix::fs::fcntl_setfl(fd, fl | OFlags::NONBLOCK)?)
}
