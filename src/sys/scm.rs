//! Descriptor passing over UNIX sockets (`SCM_RIGHTS`): a TAP created inside a rootless
//! container's namespaces travels from the helper that created it to `usernet attach`, and from
//! there to the daemon with its `add_port` request (see [`crate::control::rootless`]).
//!
//! The receiving side always offers room for [`MAX_RECV_FDS`] descriptors, takes ownership of
//! every one the kernel installed (so each is closed when dropped, whatever the caller does with
//! the message), and reports a cut control message (`MSG_CTRUNC`: the sender passed more than
//! fits; the kernel closed the rest) so the caller can refuse the message.

use std::io;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};

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

/// A connected pair of `SOCK_SEQPACKET` UNIX sockets (close-on-exec), for a parent and the
/// child it forks: one end each.
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// Writes the one byte `b` to `fd` (the helpers' handshake steps).
pub fn write_byte(fd: BorrowedFd<'_>, b: u8) -> io::Result<()> {
    match rustix::io::write(fd, &[b])? {
        1 => Ok(()),
        _ => Err(io::Error::new(io::ErrorKind::WriteZero, "wrote no byte")),
    }
}

/// Reads one byte from `fd`, retrying on `EINTR`; end of file is `UnexpectedEof` ("peer
/// closed").
pub fn read_byte(fd: BorrowedFd<'_>) -> io::Result<u8> {
    let mut b = [0u8];
    loop {
        match rustix::io::read(fd, &mut b) {
            Ok(1) => return Ok(b[0]),
            Ok(_) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "peer closed")),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Sends `data` on the connected socket `sock`, with `fd` attached to its first byte when
/// given. A stream socket may take the data in several writes; the descriptor goes with the
/// first one only.
pub fn send_with_fd(
    sock: BorrowedFd<'_>,
    data: &[u8],
    fd: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    send_with_fds(sock, data, fd.as_slice())
}

/// Most descriptors [`send_with_fds`] attaches to one message, and room offered by
/// [`recv_with_many_fds`] (vhost-user's largest message, `SET_MEM_TABLE`, carries 8).
pub const MAX_MANY_FDS: usize = 32;

/// Sends `data` on the connected socket `sock`, with `fds` (at most [`MAX_MANY_FDS`]) attached
/// to its first byte. A stream socket may take the data in several writes; the descriptors go
/// with the first one only. Retries on `EINTR`; never raises `SIGPIPE`.
pub fn send_with_fds(sock: BorrowedFd<'_>, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    if fds.len() > MAX_MANY_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "SCM_RIGHTS: {} descriptors, at most {MAX_MANY_FDS}",
                fds.len()
            ),
        ));
    }
    let mut off = 0;
    let mut pass = fds;
    while off < data.len() || !pass.is_empty() {
        let rest = &data[off..];
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_MANY_FDS))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !pass.is_empty() && !control.push(SendAncillaryMessage::ScmRights(pass)) {
            return Err(io::Error::other("SCM_RIGHTS: control buffer too small"));
        }
        let n = match rustix::net::sendmsg(
            sock,
            &[IoSlice::new(rest)],
            &mut control,
            SendFlags::NOSIGNAL,
        ) {
            Ok(n) => n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        pass = &[];
        off += n;
        if rest.is_empty() {
            break;
        }
    }
    Ok(())
}

/// Receives into `buf` from `sock`, taking ownership of any descriptors that came along
/// (at most [`MAX_RECV_FDS`]; see [`Received::truncated`]). Retries on `EINTR`.
pub fn recv_with_fds(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Received> {
    // Aligned for `cmsghdr` and sized for exactly MAX_RECV_FDS descriptors, so a fifth is cut
    // (MSG_CTRUNC) rather than fitting in alignment slack.
    #[repr(C, align(8))]
    struct Space([MaybeUninit<u8>; rustix::cmsg_aligned_space!(ScmRights(MAX_RECV_FDS))]);
    let mut space =
        Space([MaybeUninit::uninit(); rustix::cmsg_aligned_space!(ScmRights(MAX_RECV_FDS))]);
    recv_into(sock, buf, &mut space.0)
}

/// [`recv_with_fds`] with room for [`MAX_MANY_FDS`] descriptors (vhost-user messages).
pub fn recv_with_many_fds(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Received> {
    #[repr(C, align(8))]
    struct Space([MaybeUninit<u8>; rustix::cmsg_aligned_space!(ScmRights(MAX_MANY_FDS))]);
    let mut space =
        Space([MaybeUninit::uninit(); rustix::cmsg_aligned_space!(ScmRights(MAX_MANY_FDS))]);
    recv_into(sock, buf, &mut space.0)
}

/// One `recvmsg` with `space` as the control buffer; retries on `EINTR`.
fn recv_into(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    space: &mut [MaybeUninit<u8>],
) -> io::Result<Received> {
    loop {
        let mut control = RecvAncillaryBuffer::new(space);
        let got = match rustix::net::recvmsg(
            sock,
            &mut [IoSliceMut::new(buf)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(got) => got,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        // Every descriptor in an SCM_RIGHTS message is a fresh one installed for us, owned from
        // here on (rustix closes any left in the buffer when it is dropped).
        let mut fds = Vec::new();
        for msg in control.drain() {
            if let RecvAncillaryMessage::ScmRights(it) = msg {
                fds.extend(it);
            }
        }
        return Ok(Received {
            len: got.bytes,
            fds,
            truncated: got.flags.contains(ReturnFlags::CTRUNC),
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

    #[test]
    fn more_descriptors_than_the_room_are_cut_and_reported() {
        let (a, b) = UnixStream::pair().expect("pair");
        let pipes: Vec<_> = (0..MAX_RECV_FDS + 1)
            .map(|_| UnixStream::pair().expect("payload").0)
            .collect();
        let fds: Vec<_> = pipes.iter().map(|p| p.as_fd()).collect();
        let mut space = [MaybeUninit::<u8>::uninit(); 256];
        let mut control = SendAncillaryBuffer::new(&mut space);
        assert!(control.push(SendAncillaryMessage::ScmRights(&fds)));
        rustix::net::sendmsg(
            a.as_fd(),
            &[IoSlice::new(b"x")],
            &mut control,
            SendFlags::empty(),
        )
        .expect("send");
        let mut buf = [0u8; 8];
        let got = recv_with_fds(b.as_fd(), &mut buf).expect("recv");
        assert_eq!(got.len, 1);
        assert!(got.truncated);
        assert!(got.fds.len() <= MAX_RECV_FDS);
    }
}
