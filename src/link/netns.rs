//! Network-namespace and interface helpers for the OS links.
//!
//! # Theory of operation
//!
//! Interfaces are configured with the classic `ioctl`s (`SIOCGIFFLAGS`/`SIOCSIFFLAGS`,
//! `SIOCGIFMTU`/`SIOCSIFMTU`, `SIOCGIFINDEX`, `SIOCGIFNAME`; issued by `sys::ifreq`)
//! rather than netlink: they need no
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
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use super::OpenError;
use crate::sys::ifreq::{self, IfReq, IfReqOp};
use crate::sys::ns;
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

/// A fresh `AF_INET` datagram socket in the calling thread's namespace, for interface ioctls.
fn ctl_socket(what: &str) -> Result<OwnedFd, OpenError> {
    ifreq::ctl_socket().map_err(|e| OpenError::new(format!("{what}: control socket"), e))
}

/// Sets `IFF_UP` on `ifname`, using the namespace of socket `fd`.
pub(crate) fn set_link_up_on(fd: BorrowedFd<'_>, ifname: &str) -> Result<(), OpenError> {
    validate_ifname(ifname)?;
    let what = || format!("bringing up {ifname}");
    let mut ifr = IfReq::new(ifname);
    ifr.ioctl(fd, IfReqOp::GetFlags)
        .map_err(|e| OpenError::new(what(), e))?;
    let flags = ifr.flags();
    if flags & libc::IFF_UP as libc::c_short != 0 {
        return Ok(());
    }
    ifr.set_flags(flags | libc::IFF_UP as libc::c_short);
    ifr.ioctl(fd, IfReqOp::SetFlags)
        .map_err(|e| OpenError::new(what(), e))
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
    let mut ifr = IfReq::new(ifname);
    ifr.set_mtu(mtu);
    ifr.ioctl(fd, IfReqOp::SetMtu)
        .map_err(|e| OpenError::new(what, e))
}

/// The MTU of `ifname`, using the namespace of socket `fd`.
pub(crate) fn mtu_on(fd: BorrowedFd<'_>, ifname: &str) -> Result<u32, OpenError> {
    validate_ifname(ifname)?;
    let mut ifr = IfReq::new(ifname);
    ifr.ioctl(fd, IfReqOp::GetMtu)
        .map_err(|e| OpenError::new(format!("reading MTU of {ifname}"), e))?;
    Ok(u32::try_from(ifr.mtu()).unwrap_or(0))
}

/// The index of `ifname`, using the namespace of socket `fd`.
pub(crate) fn if_index_on(fd: BorrowedFd<'_>, ifname: &str) -> Result<u32, OpenError> {
    validate_ifname(ifname)?;
    let mut ifr = IfReq::new(ifname);
    ifr.ioctl(fd, IfReqOp::GetIndex)
        .map_err(|e| OpenError::new(format!("looking up interface {ifname}"), e))?;
    Ok(u32::try_from(ifr.index()).unwrap_or(0))
}

/// The name of interface `ifindex` in the namespace of socket `fd` (`ENODEV` if there is none).
pub(crate) fn if_name_on(fd: BorrowedFd<'_>, ifindex: u32) -> io::Result<String> {
    let mut ifr = IfReq::new("");
    ifr.set_index(
        libc::c_int::try_from(ifindex).map_err(|_| io::Error::from_raw_os_error(libc::ENODEV))?,
    );
    ifr.ioctl(fd, IfReqOp::GetName)?;
    Ok(ifr.name())
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
    let mut ifr = IfReq::new(ifname);
    ifr.ioctl(s.as_fd(), IfReqOp::GetHwAddr)
        .map_err(|e| OpenError::new(what(), e))?;
    let (family, mac) = ifr.hw_addr();
    if family != libc::ARPHRD_ETHER {
        return Err(OpenError::new(
            what(),
            io::Error::new(
                io::ErrorKind::Unsupported,
                format!("not an Ethernet interface (type {family})"),
            ),
        ));
    }
    Ok(Mac(mac))
}

/// The interface index of `ifname` in the calling thread's network namespace
/// (`if_nametoindex`).
pub fn if_index(ifname: &str) -> Result<u32, OpenError> {
    validate_ifname(ifname)?;
    let what = || format!("looking up interface {ifname}");
    CString::new(ifname)
        .map_err(|e| OpenError::new(what(), io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    crate::sys::ifreq::name_to_index(ifname).map_err(|e| OpenError::new(what(), e))
}

/// True if an interface with index `ifindex` exists in the calling thread's network namespace
/// (`if_indextoname`).
pub fn link_exists(ifindex: u32) -> bool {
    crate::sys::ifreq::index_to_name(ifindex).is_ok()
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
            // setns only changes the calling (helper) thread's network namespace.
            ns::enter_net(ns.as_fd())
                .map_err(|e| OpenError::new(format!("entering netns {thread_label}"), e))?;
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
