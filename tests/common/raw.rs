//! Raw Ethernet frames from inside a guest namespace: what a hostile guest (root in its own
//! namespace) can send.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use super::Netns;
use usernet::link::netns::run_in_netns;

/// An AF_PACKET socket opened inside a namespace, sending on one of its interfaces. Opened
/// with protocol 0 ([`RawEth::open`]) it receives nothing; [`RawEth::open_rx`] reads every
/// frame of the interface too.
pub struct RawEth {
    fd: OwnedFd,
    ifindex: i32,
}

impl RawEth {
    pub fn open(ns: &Netns, ifname: &'static str) -> RawEth {
        Self::open_proto(ns, ifname, 0)
    }

    /// Like [`Self::open`], also receiving every frame of the interface ([`Self::recv`]).
    #[allow(dead_code)]
    pub fn open_rx(ns: &Netns, ifname: &'static str) -> RawEth {
        Self::open_proto(ns, ifname, (libc::ETH_P_ALL as u16).to_be())
    }

    /// Opens the socket for protocol `proto` (network order; 0: receive nothing), bound to the
    /// interface when it receives.
    fn open_proto(ns: &Netns, ifname: &'static str, proto: u16) -> RawEth {
        run_in_netns(&ns.path(), move || {
            let name = std::ffi::CString::new(ifname).expect("name");
            // SAFETY: a NUL-terminated name.
            let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
            if ifindex == 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: plain socket(2); the fd is owned right away.
            let fd = unsafe {
                libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    i32::from(proto),
                )
            };
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: a fresh descriptor nobody else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            if proto != 0 {
                // SAFETY: sockaddr_ll is plain data; zero is valid.
                let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                sll.sll_family = libc::AF_PACKET as u16;
                sll.sll_protocol = proto;
                sll.sll_ifindex = ifindex;
                // SAFETY: a valid sockaddr_ll of the size given.
                let rc = unsafe {
                    libc::bind(
                        fd.as_raw_fd(),
                        (&sll as *const libc::sockaddr_ll).cast(),
                        std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                    )
                };
                if rc < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(RawEth { fd, ifindex })
        })
        .expect("AF_PACKET socket in namespace")
    }

    /// The next frame the interface saw (sent or received), waiting up to `wait_ms`; needs
    /// [`Self::open_rx`].
    #[allow(dead_code)]
    pub fn recv(&self, wait_ms: i32) -> Option<Vec<u8>> {
        if !super::wait_readable(self.fd.as_raw_fd(), wait_ms) {
            return None;
        }
        let mut buf = vec![0u8; 2048];
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            return None;
        }
        buf.truncate(n as usize);
        Some(buf)
    }

    /// Sends one frame as is; Ok(()) if the kernel accepted it, else its errno.
    pub fn send(&self, frame: &[u8]) -> Result<(), i32> {
        // SAFETY: sockaddr_ll is plain data; zero is valid.
        let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sa.sll_family = libc::AF_PACKET as u16;
        sa.sll_ifindex = self.ifindex;
        sa.sll_halen = 6;
        if frame.len() >= 14 {
            sa.sll_protocol = u16::from_ne_bytes([frame[12], frame[13]]);
            sa.sll_addr[..6].copy_from_slice(&frame[..6]);
        }
        // SAFETY: `frame` is valid for reads of its length; `sa` is a valid sockaddr_ll.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                libc::MSG_DONTWAIT,
                (&sa as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if n < 0 {
            Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
        } else {
            Ok(())
        }
    }

    /// Sends, retrying briefly while the socket buffer is full (bounded).
    pub fn send_retry(&self, frame: &[u8]) -> Result<(), i32> {
        let mut r = self.send(frame);
        for _ in 0..50 {
            match r {
                Err(e) if e == libc::EAGAIN || e == libc::ENOBUFS => {
                    std::thread::sleep(Duration::from_micros(200));
                    r = self.send(frame);
                }
                _ => break,
            }
        }
        r
    }
}
