//! Interface requests: the classic `ioctl`s on a `struct ifreq` (`SIOCGIFFLAGS`/`SIOCSIFFLAGS`,
//! `SIOCGIFMTU`/`SIOCSIFMTU`, `SIOCGIFINDEX`, `SIOCGIFNAME`, and the TUN driver's `TUNSETIFF`/
//! `TUNGETIFF`), behind one safe wrapper.
//!
//! An [`IfReq`] is always fully initialised (all-zero, then a name), and [`IfReq::ioctl`] only
//! issues the requests of [`IfReqOp`], each of which reads and/or writes exactly one
//! `struct ifreq`: that is what makes the wrapper safe. The interface requests act on the
//! network namespace *of the socket they are issued on* ([`ctl_socket`] opens one in the
//! calling thread's namespace; see [`crate::link::netns`]).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use rustix::net::{AddressFamily, SocketFlags, SocketType};

/// The `ifreq` requests [`IfReq::ioctl`] issues; each reads and/or writes one `struct ifreq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IfReqOp {
    /// `SIOCGIFFLAGS`: read the interface flags into [`IfReq::flags`].
    GetFlags,
    /// `SIOCSIFFLAGS`: set the interface flags from [`IfReq::flags`].
    SetFlags,
    /// `SIOCGIFMTU`: read the MTU into [`IfReq::mtu`].
    GetMtu,
    /// `SIOCSIFMTU`: set the MTU from [`IfReq::mtu`].
    SetMtu,
    /// `SIOCGIFINDEX`: the index of the named interface into [`IfReq::index`].
    GetIndex,
    /// `SIOCGIFNAME`: the name of the interface [`IfReq::index`] into [`IfReq::name`].
    GetName,
    /// `SIOCGIFHWADDR`: the hardware address into [`IfReq::hw_addr`].
    GetHwAddr,
    /// `TUNSETIFF` (on a `/dev/net/tun` descriptor): create or attach the named device with
    /// [`IfReq::flags`]; the kernel writes back the name it chose.
    TunSetIff,
    /// `TUNGETIFF` (on a TUN/TAP descriptor): its name and flags.
    TunGetIff,
}

impl IfReqOp {
    fn code(self) -> libc::c_ulong {
        match self {
            IfReqOp::GetFlags => libc::SIOCGIFFLAGS,
            IfReqOp::SetFlags => libc::SIOCSIFFLAGS,
            IfReqOp::GetMtu => libc::SIOCGIFMTU,
            IfReqOp::SetMtu => libc::SIOCSIFMTU,
            IfReqOp::GetIndex => libc::SIOCGIFINDEX,
            IfReqOp::GetName => libc::SIOCGIFNAME,
            IfReqOp::GetHwAddr => libc::SIOCGIFHWADDR,
            IfReqOp::TunSetIff => libc::TUNSETIFF,
            IfReqOp::TunGetIff => libc::TUNGETIFF,
        }
    }
}

/// A `struct ifreq`: an interface name and one value (flags, MTU or index).
pub(crate) struct IfReq(libc::ifreq);

impl IfReq {
    /// An `ifreq` naming `ifname` (validated by the caller; cut to `IFNAMSIZ - 1` bytes so the
    /// name stays NUL-terminated), everything else zero.
    pub(crate) fn new(ifname: &str) -> IfReq {
        // SAFETY: `ifreq` is a plain C struct (a name array and a union of integers, sockaddrs
        // and a pointer); all-zero bytes are a valid value for every field.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in ifr.ifr_name[..libc::IFNAMSIZ - 1]
            .iter_mut()
            .zip(ifname.bytes())
        {
            *dst = src as libc::c_char;
        }
        IfReq(ifr)
    }

    /// The name stored in the request (up to the first NUL).
    pub(crate) fn name(&self) -> String {
        let bytes: Vec<u8> = self
            .0
            .ifr_name
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c.to_ne_bytes()[0]) // c_char: i8 on x86_64, u8 on aarch64
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The `ifru_flags` member.
    pub(crate) fn flags(&self) -> libc::c_short {
        // SAFETY: the union was zero-initialised and holds only plain integers, sockaddrs and a
        // pointer-sized field: every bit pattern is a valid `c_short`.
        unsafe { self.0.ifr_ifru.ifru_flags }
    }

    /// Sets the `ifru_flags` member.
    pub(crate) fn set_flags(&mut self, flags: libc::c_short) {
        self.0.ifr_ifru.ifru_flags = flags;
    }

    /// The `ifru_mtu` member.
    pub(crate) fn mtu(&self) -> libc::c_int {
        // SAFETY: as in `flags`: every bit pattern is a valid `c_int`.
        unsafe { self.0.ifr_ifru.ifru_mtu }
    }

    /// Sets the `ifru_mtu` member.
    pub(crate) fn set_mtu(&mut self, mtu: libc::c_int) {
        self.0.ifr_ifru.ifru_mtu = mtu;
    }

    /// The `ifru_ifindex` member.
    pub(crate) fn index(&self) -> libc::c_int {
        // SAFETY: as in `flags`: every bit pattern is a valid `c_int`.
        unsafe { self.0.ifr_ifru.ifru_ifindex }
    }

    /// The hardware address after [`IfReqOp::GetHwAddr`]: its family (`ARPHRD_*`) and the
    /// first 6 bytes of its data (the MAC of an Ethernet interface).
    pub(crate) fn hw_addr(&self) -> (u16, [u8; 6]) {
        // SAFETY: as in `flags`: a `sockaddr` is plain integers, every bit pattern is valid.
        let sa = unsafe { self.0.ifr_ifru.ifru_hwaddr };
        let mut mac = [0u8; 6];
        for (d, s) in mac.iter_mut().zip(sa.sa_data.iter()) {
            *d = s.to_ne_bytes()[0]; // c_char: i8 on x86_64, u8 on aarch64
        }
        (sa.sa_family, mac)
    }

    /// Sets the `ifru_ifindex` member.
    pub(crate) fn set_index(&mut self, index: libc::c_int) {
        self.0.ifr_ifru.ifru_ifindex = index;
    }

    /// Issues `op` with this request on `fd`.
    pub(crate) fn ioctl(&mut self, fd: BorrowedFd<'_>, op: IfReqOp) -> io::Result<()> {
        // SAFETY: every `IfReqOp` reads and/or writes one `struct ifreq`, and `self.0` is a
        // valid, exclusively borrowed `ifreq` for the duration of the call.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), op.code() as _, &mut self.0) };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

/// A fresh `AF_INET` datagram socket (close-on-exec) in the calling thread's namespace, for
/// interface ioctls.
pub(crate) fn ctl_socket() -> io::Result<OwnedFd> {
    Ok(rustix::net::socket_with(
        AddressFamily::INET,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// `if_nametoindex`: the index of interface `name` in the calling thread's network namespace
/// (`ENODEV` for a name too long to exist or containing NUL, as libc's).
pub(crate) fn name_to_index(name: &str) -> io::Result<u32> {
    if name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(io::Error::from_raw_os_error(libc::ENODEV));
    }
    let s = ctl_socket()?;
    let mut r = IfReq::new(name);
    r.ioctl(s.as_fd(), IfReqOp::GetIndex)?;
    Ok(r.index() as u32)
}

/// `if_indextoname`: the name of interface `index` in the calling thread's network namespace.
pub(crate) fn index_to_name(index: u32) -> io::Result<String> {
    let index =
        libc::c_int::try_from(index).map_err(|_| io::Error::from_raw_os_error(libc::ENXIO))?;
    let s = ctl_socket()?;
    let mut r = IfReq::new("");
    r.set_index(index);
    r.ioctl(s.as_fd(), IfReqOp::GetName)?;
    Ok(r.name())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_and_index_lookups() {
        assert_eq!(name_to_index("lo").expect("lo"), 1);
        assert_eq!(index_to_name(1).expect("1"), "lo");
        let long = name_to_index("a234567890abcdefgh").expect_err("too long");
        assert_eq!(long.raw_os_error(), Some(libc::ENODEV));
        assert!(index_to_name(u32::MAX).is_err());
    }

    #[test]
    fn names_round_trip_and_are_cut_to_ifnamsiz() {
        assert_eq!(IfReq::new("eth0").name(), "eth0");
        assert_eq!(IfReq::new("").name(), "");
        assert_eq!(IfReq::new("a234567890abcdefgh").name(), "a234567890abcde");
    }

    #[test]
    fn loopback_by_name_and_by_index() {
        let s = ctl_socket().expect("socket");
        let mut r = IfReq::new("lo");
        r.ioctl(s.as_fd(), IfReqOp::GetIndex)
            .expect("SIOCGIFINDEX lo");
        assert_eq!(r.index(), 1);
        let mut r = IfReq::new("");
        r.set_index(1);
        r.ioctl(s.as_fd(), IfReqOp::GetName).expect("SIOCGIFNAME 1");
        assert_eq!(r.name(), "lo");
        let mut r = IfReq::new("lo");
        r.ioctl(s.as_fd(), IfReqOp::GetMtu).expect("SIOCGIFMTU lo");
        assert!(r.mtu() > 0);
    }
}
