//! Raw Ethernet frames from inside a guest namespace: what a hostile guest (root in its own
//! namespace) can send.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use super::Netns;
use usernet::link::netns::run_in_netns;

/// An AF_PACKET socket opened inside a namespace, sending on one of its interfaces. Opened
/// with protocol 0, so it receives nothing.
pub struct RawEth {
    fd: OwnedFd,
    ifindex: i32,
}

impl RawEth {
    pub fn open(ns: &Netns, ifname: &'static str) -> RawEth {
        run_in_netns(&ns.path(), move || {
            let name = std::ffi::CString::new(ifname).expect("name");
            // SAFETY: a NUL-terminated name.
            let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
            if ifindex == 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: plain socket(2); the fd is owned right away.
            let fd =
                unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: a fresh descriptor nobody else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            Ok(RawEth { fd, ifindex })
        })
        .expect("AF_PACKET socket in namespace")
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
