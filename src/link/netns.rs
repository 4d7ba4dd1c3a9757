//! Network-namespace and interface helpers for the OS links.
//!
//! # Theory of operation
//!
//! Interfaces are configured with the classic `ioctl`s (`SIOCGIFFLAGS`/`SIOCSIFFLAGS`,
//! `SIOCGIFMTU`/`SIOCSIFMTU`, `SIOCGIFINDEX`, `SIOCGIFNAME`) rather than netlink: they need no
//! extra crate and are enough for "bring it up, set its MTU, find its index". These ioctls act
//! on the network namespace *of the socket they are issued on*. The public helpers open a
//! throw-away `AF_INET`/`SOCK_DGRAM` socket, so they act on the calling thread's namespace; the
//! crate-internal `*_on` variants take an existing socket (an `AF_PACKET` socket of a
//! [`PacketLink`](super::packet::PacketLink), say) so that a link opened inside another
//! namespace keeps talking to the right one after its opening thread is gone.
//!
//! [`run_in_netns`] runs a closure on a fresh thread that has joined another namespace with
//! `setns(CLONE_NEWNET)`. Only that thread changes namespace, and only for its lifetime;
//! sockets and TAP file descriptors created there stay bound to that namespace wherever they
//! are used afterwards, which is how a port lives in a container's namespace while the switch
//! runs in the host's.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

use super::OpenError;
use crate::wire::Mac;

/// Checks that `ifname` is a usable Linux interface name: non-empty, shorter than `IFNAMSIZ`
/// (at most 15 bytes), without `/`, whitespace or NUL, and not `.` or `..`.
pub fn validate_ifname(ifname: &str) -> Result<(), OpenError> {
    let bad = |why: &str| {
        Err(OpenError::new(
            format!("invalid interface name {ifname:?}"),
            io::Error::new(io::ErrorKind::InvalidInput, why.to_string()),
        ))
    };
    if ifname.is_empty() {
        return bad("empty");
    }
    if ifname.len() >= libc::IFNAMSIZ {
        return bad("longer than 15 bytes (IFNAMSIZ)");
    }
    if ifname == "." || ifname == ".." {
        return bad("reserved name");
    }
    if ifname
        .chars()
        .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace())
    {
        return bad("contains '/', ':', NUL or whitespace");
    }
    Ok(())
}

/// An `ifreq` naming `ifname` (already validated), everything else zero.
pub(crate) fn ifreq_for(ifname: &str) -> libc::ifreq {
    // SAFETY: `ifreq` is a plain C struct (a name array and a union of integers, sockaddrs and a
    // pointer); all-zero bytes are a valid value for every field.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(ifname.bytes()) {
        *dst = src as libc::c_char;
    }
    ifr
}

/// The name stored in an `ifreq` (up to the first NUL).
pub(crate) fn ifreq_name(ifr: &libc::ifreq) -> String {
    let bytes: Vec<u8> = ifr
        .ifr_name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c.to_ne_bytes()[0]) // c_char: i8 on x86_64, u8 on aarch64
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Issues `req` with `ifr` on `fd`.
fn ifreq_ioctl(fd: BorrowedFd<'_>, req: libc::c_ulong, ifr: &mut libc::ifreq) -> io::Result<()> {
    // SAFETY: every request used in this module reads and/or writes one `struct ifreq`, and
    // `ifr` is a valid, exclusively borrowed `ifreq` for the duration of the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, ifr as *mut libc::ifreq) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A fresh `AF_INET` datagram socket in the calling thread's namespace, for interface ioctls.
fn ctl_socket(what: &str) -> Result<OwnedFd, OpenError> {
    // SAFETY: socket() takes no pointers; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(OpenError::last_os(format!("{what}: control socket")));
    }
    // SAFETY: `fd` is a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sets `IFF_UP` on `ifname`, using the namespace of socket `fd`.
pub(crate) fn set_link_up_on(fd: BorrowedFd<'_>, ifname: &str) -> Result<(), OpenError> {
    validate_ifname(ifname)?;
    let what = || format!("bringing up {ifname}");
    let mut ifr = ifreq_for(ifname);
    ifreq_ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr).map_err(|e| OpenError::new(what(), e))?;
    // SAFETY: SIOCGIFFLAGS filled the `ifru_flags` member of the union.
    let flags = unsafe { ifr.ifr_ifru.ifru_flags };
    if flags & libc::IFF_UP as libc::c_short != 0 {
        return Ok(());
    }
    ifr.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    ifreq_ioctl(fd, libc::SIOCSIFFLAGS, &mut ifr).map_err(|e| OpenError::new(what(), e))
}

/// Sets the MTU of `ifname`, using the namespace of socket `fd`.
pub(crate) fn set_mtu_on(fd: BorrowedFd<'_>, ifname: &str, mtu: u32) -> Result<(), OpenError> {
    validate_ifname(ifname)?;
    let what = format!("setting MTU {mtu} on {ifname}");
    let mtu = libc::c_int::try_from(mtu).map_err(|_| {
        OpenError::new(
            what.clone(),
            io::Error::new(io::ErrorKind::InvalidInput, "MTU out of range"),
        )
    })?;
    let mut ifr = ifreq_for(ifname);
    ifr.ifr_ifru.ifru_mtu = mtu;
    ifreq_ioctl(fd, libc::SIOCSIFMTU, &mut ifr).map_err(|e| OpenError::new(what, e))
}

/// The MTU of `ifname`, using the namespace of socket `fd`.
pub(crate) fn mtu_on(fd: BorrowedFd<'_>, ifname: &str) -> Result<u32, OpenError> {
    validate_ifname(ifname)?;
    let mut ifr = ifreq_for(ifname);
    ifreq_ioctl(fd, libc::SIOCGIFMTU, &mut ifr)
        .map_err(|e| OpenError::new(format!("reading MTU of {ifname}"), e))?;
    // SAFETY: SIOCGIFMTU filled the `ifru_mtu` member of the union.
    let mtu = unsafe { ifr.ifr_ifru.ifru_mtu };
    Ok(u32::try_from(mtu).unwrap_or(0))
}

/// The index of `ifname`, using the namespace of socket `fd`.
pub(crate) fn if_index_on(fd: BorrowedFd<'_>, ifname: &str) -> Result<u32, OpenError> {
    validate_ifname(ifname)?;
    let mut ifr = ifreq_for(ifname);
    ifreq_ioctl(fd, libc::SIOCGIFINDEX, &mut ifr)
        .map_err(|e| OpenError::new(format!("looking up interface {ifname}"), e))?;
    // SAFETY: SIOCGIFINDEX filled the `ifru_ifindex` member of the union.
    let idx = unsafe { ifr.ifr_ifru.ifru_ifindex };
    Ok(u32::try_from(idx).unwrap_or(0))
}

/// The name of interface `ifindex` in the namespace of socket `fd` (`ENODEV` if there is none).
pub(crate) fn if_name_on(fd: BorrowedFd<'_>, ifindex: u32) -> io::Result<String> {
    let mut ifr = ifreq_for("");
    ifr.ifr_ifru.ifru_ifindex =
        libc::c_int::try_from(ifindex).map_err(|_| io::Error::from_raw_os_error(libc::ENODEV))?;
    ifreq_ioctl(fd, libc::SIOCGIFNAME, &mut ifr)?;
    Ok(ifreq_name(&ifr))
}

/// Brings `ifname` up (sets `IFF_UP`) in the calling thread's network namespace. A no-op if it
/// is already up.
pub fn set_link_up(ifname: &str) -> Result<(), OpenError> {
    let s = ctl_socket(&format!("bringing up {ifname}"))?;
    set_link_up_on(s.as_fd(), ifname)
}

/// Sets the MTU of `ifname` in the calling thread's network namespace.
pub fn set_mtu(ifname: &str, mtu: u32) -> Result<(), OpenError> {
    let s = ctl_socket(&format!("setting MTU on {ifname}"))?;
    set_mtu_on(s.as_fd(), ifname, mtu)
}

/// The MTU of `ifname` in the calling thread's network namespace.
pub fn mtu(ifname: &str) -> Result<u32, OpenError> {
    let s = ctl_socket(&format!("reading MTU of {ifname}"))?;
    mtu_on(s.as_fd(), ifname)
}

/// The Ethernet (MAC) address of `ifname` in the calling thread's network namespace
/// (`SIOCGIFHWADDR`); an `Unsupported` error if it is not an Ethernet interface.
pub fn hw_addr(ifname: &str) -> Result<Mac, OpenError> {
    validate_ifname(ifname)?;
    let what = || format!("reading the MAC of {ifname}");
    let s = ctl_socket(&what())?;
    let mut ifr = ifreq_for(ifname);
    ifreq_ioctl(s.as_fd(), libc::SIOCGIFHWADDR, &mut ifr).map_err(|e| OpenError::new(what(), e))?;
    // SAFETY: SIOCGIFHWADDR filled the `ifru_hwaddr` member of the union.
    let sa = unsafe { ifr.ifr_ifru.ifru_hwaddr };
    if sa.sa_family != libc::ARPHRD_ETHER {
        return Err(OpenError::new(
            what(),
            io::Error::new(
                io::ErrorKind::Unsupported,
                format!("not an Ethernet interface (type {})", sa.sa_family),
            ),
        ));
    }
    let mut mac = [0u8; 6];
    for (d, s) in mac.iter_mut().zip(sa.sa_data.iter()) {
        *d = *s as u8;
    }
    Ok(Mac(mac))
}

/// The interface index of `ifname` in the calling thread's network namespace
/// (`if_nametoindex`).
pub fn if_index(ifname: &str) -> Result<u32, OpenError> {
    validate_ifname(ifname)?;
    let what = || format!("looking up interface {ifname}");
    let c = CString::new(ifname)
        .map_err(|e| OpenError::new(what(), io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(OpenError::last_os(what()));
    }
    Ok(idx)
}

/// True if an interface with index `ifindex` exists in the calling thread's network namespace
/// (`if_indextoname`).
pub fn link_exists(ifindex: u32) -> bool {
    let mut buf = [0 as libc::c_char; libc::IFNAMSIZ];
    // SAFETY: `buf` has the IFNAMSIZ bytes if_indextoname writes at most.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    !p.is_null()
}

/// Runs `f` on a new thread that has joined the network namespace at `netns` (a bind-mounted
/// namespace such as `/run/netns/NAME`, or `/proc/PID/ns/net`), and returns its result.
///
/// Only the helper thread changes namespace. Descriptors that `f` creates (TAP fds, sockets)
/// stay attached to that namespace after the thread has exited, so `f` typically opens a link
/// and returns it.
pub fn run_in_netns<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> Result<T, OpenError> {
    let label = netns.display().to_string();
    run_in_netns_with(netns, move || {
        f().map_err(|e| OpenError::new(format!("in netns {label}"), e))
    })
}

/// Like [`run_in_netns`], for a closure that already reports [`OpenError`]s.
pub(crate) fn run_in_netns_with<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> Result<T, OpenError> + Send + 'static,
) -> Result<T, OpenError> {
    let ns = File::open(netns)
        .map_err(|e| OpenError::new(format!("opening netns {}", netns.display()), e))?;
    run_in_netns_fd(OwnedFd::from(ns), netns.display().to_string(), f)
}

/// Runs `f` on a new thread that has joined the namespace referred to by `ns`.
pub(crate) fn run_in_netns_fd<T: Send + 'static>(
    ns: OwnedFd,
    label: String,
    f: impl FnOnce() -> Result<T, OpenError> + Send + 'static,
) -> Result<T, OpenError> {
    let thread_label = label.clone();
    let handle = std::thread::Builder::new()
        .name("usernet-netns".into())
        .spawn(move || {
            // SAFETY: `ns` is an open namespace descriptor; setns only changes the calling
            // (helper) thread's network namespace.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc < 0 {
                return Err(OpenError::last_os(format!("entering netns {thread_label}")));
            }
            drop(ns);
            f()
        })
        .map_err(|e| OpenError::new(format!("spawning thread for netns {label}"), e))?;
    handle.join().map_err(|_| {
        OpenError::new(
            format!("in netns {label}"),
            io::Error::other("helper thread panicked"),
        )
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifname_validation() {
        assert!(validate_ifname("eth0").is_ok());
        assert!(validate_ifname("a234567890abcde").is_ok());
        assert!(validate_ifname("a234567890abcdef").is_err());
        assert!(validate_ifname("").is_err());
        assert!(validate_ifname("a/b").is_err());
        assert!(validate_ifname("a b").is_err());
        assert!(validate_ifname("..").is_err());
        let e = validate_ifname("x/y").err().map(|e| e.to_string());
        assert!(e.is_some_and(|m| m.contains("x/y")));
    }

    #[test]
    fn loopback_is_found() {
        // Every namespace has `lo`, and it is always index 1.
        assert_eq!(if_index("lo").ok(), Some(1));
        assert!(link_exists(1));
        assert!(!link_exists(u32::MAX));
        assert!(if_index("nonexistent0").is_err());
        assert!(mtu("lo").is_ok_and(|m| m > 0));
    }
}
