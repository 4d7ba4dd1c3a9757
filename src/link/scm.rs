//! Descriptor passing over UNIX sockets (`SCM_RIGHTS`): a TAP created inside a rootless
//! container's namespaces travels from the helper that created it to `usernet attach`, and from
//! there to the daemon with its `add_port` request (see [`crate::control::rootless`]).
//!
//! The receiving side always offers room for [`MAX_RECV_FDS`] descriptors, takes ownership of
//! every one the kernel installed (so each is closed when dropped, whatever the caller does with
//! the message), and reports a cut control message (`MSG_CTRUNC`: the sender passed more than
//! fits; the kernel closed the rest) so the caller can refuse the message.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Room for this many descriptors is offered to every `recvmsg`; more are cut by the kernel
/// (and the message is then reported [`Received::truncated`]).
pub const MAX_RECV_FDS: usize = 4;

/// What one `recvmsg` returned.
#[derive(Debug)]
pub struct Received {
    /// Bytes read into the buffer (0: the peer closed).
    pub len: usize,
    /// Descriptors that came with them (close-on-exec), owned.
    pub fds: Vec<OwnedFd>,
    /// The control data was cut (`MSG_CTRUNC`): the peer sent more descriptors than fit.
    pub truncated: bool,
}

/// Sends `data` on the connected socket `sock`, with `fd` attached to its first byte when
/// given. A stream socket may take the data in several writes; the descriptor goes with the
/// first one only.
pub fn send_with_fd(
    sock: BorrowedFd<'_>,
    data: &[u8],
    fd: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    let mut off = 0;
    let mut pass = fd.map(|f| f.as_raw_fd());
    while off < data.len() || pass.is_some() {
        let rest = &data[off..];
        let mut iov = libc::iovec {
            iov_base: rest.as_ptr() as *mut libc::c_void,
            iov_len: rest.len(),
        };
        // SAFETY: CMSG_SPACE is a pure size computation.
        let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
        let mut cbuf = vec![0u8; space];
        // SAFETY: an all-zero msghdr is valid; the pointers set below outlive the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if let Some(fd) = pass {
            msg.msg_control = cbuf.as_mut_ptr().cast();
            msg.msg_controllen = space as _;
            // SAFETY: the control buffer holds exactly one cmsg of one descriptor.
            unsafe {
                let c = libc::CMSG_FIRSTHDR(&msg);
                (*c).cmsg_level = libc::SOL_SOCKET;
                (*c).cmsg_type = libc::SCM_RIGHTS;
                (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<RawFd>(), fd);
            }
        }
        // SAFETY: msg describes valid buffers for the duration of the call.
        let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        pass = None;
        off += n as usize;
        if rest.is_empty() {
            break;
        }
    }
    Ok(())
}

/// Receives into `buf` from `sock`, taking ownership of any descriptors that came along
/// (at most [`MAX_RECV_FDS`]; see [`Received::truncated`]). Retries on `EINTR`.
pub fn recv_with_fds(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Received> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: pure size computation.
    let space =
        unsafe { libc::CMSG_SPACE((MAX_RECV_FDS * std::mem::size_of::<RawFd>()) as u32) } as usize;
    // u64 elements: the control buffer must be aligned for `cmsghdr`.
    let mut cbuf = vec![0u64; space.div_ceil(8)];
    loop {
        // SAFETY: an all-zero msghdr is valid; pointers outlive the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: recvmsg writes into the buffers described by msg.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let mut fds = Vec::new();
        // SAFETY: walks the control messages the kernel wrote into cbuf; every descriptor in
        // an SCM_RIGHTS message is a fresh one installed for us, owned from here on.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(c);
                    let bytes = (*c).cmsg_len as usize - (data as usize - c as usize);
                    for i in 0..bytes / std::mem::size_of::<RawFd>() {
                        let fd = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                        fds.push(OwnedFd::from_raw_fd(fd));
                    }
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        return Ok(Received {
            len: n as usize,
            fds,
            truncated: msg.msg_flags & libc::MSG_CTRUNC != 0,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn one_descriptor_travels_with_its_message() {
        let (a, b) = UnixStream::pair().expect("pair");
        let (r, _w) = UnixStream::pair().expect("payload");
        send_with_fd(a.as_fd(), b"hello\n", Some(r.as_fd())).expect("send");
        let mut buf = [0u8; 64];
        let got = recv_with_fds(b.as_fd(), &mut buf).expect("recv");
        assert_eq!(&buf[..got.len], b"hello\n");
        assert_eq!(got.fds.len(), 1);
        assert!(!got.truncated);
        send_with_fd(a.as_fd(), b"plain\n", None).expect("send");
        let got = recv_with_fds(b.as_fd(), &mut buf).expect("recv");
        assert_eq!(&buf[..got.len], b"plain\n");
        assert!(got.fds.is_empty());
    }
}
