//! `AF_PACKET` sockets: opening and binding one to an interface, its `SOL_PACKET` options, and
//! batched `recvmmsg`/`sendmmsg` with per-message `PACKET_AUXDATA` (the VLAN tag the kernel
//! took off a received frame).
//!
//! [`MmsgBatch`] owns the `mmsghdr`/`iovec`/`sockaddr_ll`/control arrays the two calls need and
//! grows them only when a larger batch is asked for: the link's hot path allocates nothing per
//! call. The buffers themselves stay the caller's (frames from the pool); the arrays point at
//! them only for the duration of one call.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// Control buffer per received message, in 8-byte words: room for one `PACKET_AUXDATA`
/// (`cmsghdr` 16 + `tpacket_auxdata` 20, aligned) with slack.
const CTRL_WORDS: usize = 8;

/// `ETH_P_ALL` in network byte order, as `socket` and `sockaddr_ll` want it.
fn eth_p_all() -> u16 {
    (libc::ETH_P_ALL as u16).to_be()
}

/// A non-blocking, close-on-exec raw `AF_PACKET` socket for every protocol, not yet bound.
pub(crate) fn socket() -> io::Result<OwnedFd> {
    // SAFETY: socket() takes no pointers; the result is checked before use.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            libc::c_int::from(eth_p_all()),
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Binds a packet socket to interface `ifindex` (every protocol).
pub(crate) fn bind(fd: BorrowedFd<'_>, ifindex: u32) -> io::Result<()> {
    let ifindex = libc::c_int::try_from(ifindex)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface index too large"))?;
    // SAFETY: sockaddr_ll is a plain C struct; all-zero is valid.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as libc::c_ushort;
    sll.sll_protocol = eth_p_all();
    sll.sll_ifindex = ifindex;
    // SAFETY: binds to a valid sockaddr_ll of the size passed.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `setsockopt(fd, SOL_PACKET, name, &val)` for a `T` the kernel only reads.
fn set_opt<T: Copy>(fd: BorrowedFd<'_>, name: libc::c_int, val: &T) -> io::Result<()> {
    // SAFETY: passes a pointer to `val` and its exact size; the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            name,
            (val as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Puts interface `ifindex` in promiscuous mode for as long as the socket is open
/// (`PACKET_ADD_MEMBERSHIP` with `PACKET_MR_PROMISC`; the kernel drops it on close).
pub(crate) fn add_promisc(fd: BorrowedFd<'_>, ifindex: u32) -> io::Result<()> {
    // SAFETY: packet_mreq is a plain C struct; all-zero is valid.
    let mut mreq: libc::packet_mreq = unsafe { std::mem::zeroed() };
    mreq.mr_ifindex = libc::c_int::try_from(ifindex)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface index too large"))?;
    mreq.mr_type = libc::PACKET_MR_PROMISC as libc::c_ushort;
    set_opt(fd, libc::PACKET_ADD_MEMBERSHIP, &mreq)
}

/// A boolean `SOL_PACKET` option usernet turns on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flag {
    /// `PACKET_IGNORE_OUTGOING` (4.20+): the socket does not see frames it (or the host) sends.
    IgnoreOutgoing,
    /// `PACKET_VNET_HDR`: a virtio-net header before every frame, both ways.
    VnetHdr,
    /// `PACKET_AUXDATA`: received messages carry metadata, the VLAN tag among it.
    Auxdata,
}

/// Turns `flag` on.
pub(crate) fn enable(fd: BorrowedFd<'_>, flag: Flag) -> io::Result<()> {
    let name = match flag {
        Flag::IgnoreOutgoing => libc::PACKET_IGNORE_OUTGOING,
        Flag::VnetHdr => libc::PACKET_VNET_HDR,
        Flag::Auxdata => libc::PACKET_AUXDATA,
    };
    let one: libc::c_int = 1;
    set_opt(fd, name, &one)
}

/// What one message of the last [`MmsgBatch::recv`] held.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Received {
    /// Bytes of the message (the whole frame, even when it did not fit the buffer).
    pub len: usize,
    /// The frame was larger than its buffer and was cut (`MSG_TRUNC`).
    pub truncated: bool,
    /// A frame this host sent (`PACKET_OUTGOING`), seen because the kernel lacks
    /// `PACKET_IGNORE_OUTGOING`.
    pub outgoing: bool,
    /// The VLAN tag (TPID, TCI) the kernel took off the frame, from `PACKET_AUXDATA`.
    pub vlan: Option<(u16, u16)>,
}

/// The per-message arrays handed to `recvmmsg`/`sendmmsg`. See the module docs.
pub(crate) struct MmsgBatch {
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_ll>,
    /// One control buffer per message, 8-byte aligned as `cmsghdr` needs.
    ctrl: Vec<[u64; CTRL_WORDS]>,
    /// What the last `recv` got, per message.
    got: Vec<Received>,
}

// SAFETY: the raw pointers inside `hdrs` and `iovs` are scratch values: they are rewritten to
// point at the caller's buffers right before every syscall and never dereferenced otherwise,
// so moving the arrays to another thread cannot create shared access.
unsafe impl Send for MmsgBatch {}

impl MmsgBatch {
    /// Arrays for `n` messages.
    pub(crate) fn new(n: usize) -> MmsgBatch {
        let mut b = MmsgBatch {
            hdrs: Vec::new(),
            iovs: Vec::new(),
            addrs: Vec::new(),
            ctrl: Vec::new(),
            got: Vec::new(),
        };
        b.reserve(n);
        b
    }

    /// Messages one call can take now.
    pub(crate) fn capacity(&self) -> usize {
        self.hdrs.len()
    }

    /// Makes room for `n` messages (allocates only when `n` exceeds what was seen so far).
    pub(crate) fn reserve(&mut self, n: usize) {
        if self.hdrs.len() >= n {
            return;
        }
        // SAFETY: mmsghdr, iovec and sockaddr_ll are plain C structs; all-zero is valid for each
        // (null pointers, zero lengths).
        let (h, i, a) = unsafe { (std::mem::zeroed(), std::mem::zeroed(), std::mem::zeroed()) };
        self.hdrs.resize(n, h);
        self.iovs.resize(n, i);
        self.addrs.resize(n, a);
        self.ctrl.resize(n, [0; CTRL_WORDS]);
        self.got.resize(n, Received::default());
    }

    /// Points header `i` at `iov` (and its address and control buffers when asked).
    fn point(&mut self, i: usize, base: *mut libc::c_void, len: usize, name: bool, ctrl: bool) {
        self.iovs[i] = libc::iovec {
            iov_base: base,
            iov_len: len,
        };
        let hdr = &mut self.hdrs[i];
        hdr.msg_len = 0;
        if name {
            hdr.msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_ll).cast();
            hdr.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        } else {
            // A bound socket needs no destination address.
            hdr.msg_hdr.msg_name = std::ptr::null_mut();
            hdr.msg_hdr.msg_namelen = 0;
        }
        hdr.msg_hdr.msg_iov = &mut self.iovs[i];
        hdr.msg_hdr.msg_iovlen = 1;
        if ctrl {
            let c = &mut self.ctrl[i];
            hdr.msg_hdr.msg_control = c.as_mut_ptr().cast();
            hdr.msg_hdr.msg_controllen = std::mem::size_of_val(c) as _;
        } else {
            hdr.msg_hdr.msg_control = std::ptr::null_mut();
            hdr.msg_hdr.msg_controllen = 0;
        }
        hdr.msg_hdr.msg_flags = 0;
    }

    /// One `recvmmsg(MSG_DONTWAIT | MSG_TRUNC)` into `bufs` (one buffer per message, at most
    /// [`Self::capacity`]), with `PACKET_AUXDATA` control data when `auxdata`. Returns the
    /// number of messages received (0 never: `EAGAIN` is an error of kind `WouldBlock`); what
    /// each held is [`Self::received`].
    pub(crate) fn recv<'a>(
        &mut self,
        fd: BorrowedFd<'_>,
        bufs: impl Iterator<Item = &'a mut [u8]>,
        auxdata: bool,
    ) -> io::Result<usize> {
        let mut n = 0;
        for buf in bufs.take(self.hdrs.len()) {
            self.point(n, buf.as_mut_ptr().cast(), buf.len(), true, auxdata);
            n += 1;
        }
        if n == 0 {
            return Ok(0);
        }
        // SAFETY: the first `n` headers point at valid, exclusively borrowed buffers (the
        // iterator's `&mut` borrows last as long as `'a`, past this call), and at this batch's
        // own iovecs, address structs and control buffers of the sizes given.
        let r = unsafe {
            libc::recvmmsg(
                fd.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let r = (r as usize).min(n);
        for i in 0..r {
            let hdr = &self.hdrs[i];
            let len = hdr.msg_len as usize;
            self.got[i] = Received {
                len,
                truncated: hdr.msg_hdr.msg_flags & libc::MSG_TRUNC != 0
                    || len > self.iovs[i].iov_len,
                outgoing: self.addrs[i].sll_pkttype == libc::PACKET_OUTGOING,
                vlan: if auxdata {
                    vlan_tag(&hdr.msg_hdr)
                } else {
                    None
                },
            };
        }
        Ok(r)
    }

    /// What message `i` of the last [`Self::recv`] held (default past what it received).
    pub(crate) fn received(&self, i: usize) -> Received {
        self.got.get(i).copied().unwrap_or_default()
    }

    /// One `sendmmsg(MSG_DONTWAIT)` of `bufs` (one frame per message, at most
    /// [`Self::capacity`]) on a bound socket. Returns how many were sent, from the front;
    /// fewer than given means the next call reports the error of the first one left.
    pub(crate) fn send<'a>(
        &mut self,
        fd: BorrowedFd<'_>,
        bufs: impl Iterator<Item = &'a [u8]>,
    ) -> io::Result<usize> {
        let mut n = 0;
        for buf in bufs.take(self.hdrs.len()) {
            // The kernel only reads through this pointer (sendmmsg).
            self.point(n, buf.as_ptr().cast_mut().cast(), buf.len(), false, false);
            n += 1;
        }
        if n == 0 {
            return Ok(0);
        }
        // SAFETY: the first `n` headers point at valid iovecs describing buffers borrowed for
        // `'a` (beyond this call), which the kernel only reads.
        let r = unsafe {
            libc::sendmmsg(
                fd.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok((r as usize).min(n))
        }
    }
}

/// The VLAN tag (TPID, TCI) the kernel took off a received frame, from its `PACKET_AUXDATA`
/// control message; `None` when the frame had none (or no control data came).
fn vlan_tag(msg: &libc::msghdr) -> Option<(u16, u16)> {
    if msg.msg_control.is_null() || msg.msg_controllen < std::mem::size_of::<libc::cmsghdr>() as _ {
        return None;
    }
    // SAFETY: `msg` is a header the kernel filled: `msg_control` points at our control buffer
    // and `msg_controllen` is what the kernel wrote into it, so the CMSG_* walk stays inside it.
    let mut c = unsafe { libc::CMSG_FIRSTHDR(msg) };
    while !c.is_null() {
        // SAFETY: `c` is a non-null cmsghdr inside the buffer (CMSG_FIRSTHDR/CMSG_NXTHDR check
        // that its header fits).
        let h = unsafe { &*c };
        // SAFETY: CMSG_LEN only computes a length.
        let want = unsafe { libc::CMSG_LEN(std::mem::size_of::<libc::tpacket_auxdata>() as u32) };
        if h.cmsg_level == libc::SOL_PACKET
            && h.cmsg_type == libc::PACKET_AUXDATA
            && h.cmsg_len >= want as _
        {
            // SAFETY: the message holds a whole tpacket_auxdata (length checked above); it may
            // be unaligned for the struct, hence read_unaligned.
            let aux = unsafe {
                std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::tpacket_auxdata>())
            };
            if aux.tp_status & libc::TP_STATUS_VLAN_VALID == 0 {
                return None;
            }
            let tpid = if aux.tp_status & libc::TP_STATUS_VLAN_TPID_VALID != 0 {
                aux.tp_vlan_tpid
            } else {
                0x8100
            };
            return Some((tpid, aux.tp_vlan_tci));
        }
        // SAFETY: `msg` and `c` as above.
        c = unsafe { libc::CMSG_NXTHDR(msg, c) };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_grows_only_when_asked_for_more() {
        let mut b = MmsgBatch::new(4);
        assert_eq!(b.capacity(), 4);
        b.reserve(2);
        assert_eq!(b.capacity(), 4);
        b.reserve(9);
        assert_eq!(b.capacity(), 9);
        assert_eq!(b.received(8), Received::default());
        assert_eq!(b.received(100), Received::default());
    }

    #[test]
    fn no_control_data_no_tag() {
        // SAFETY: msghdr is a plain C struct; all-zero is valid (null control buffer).
        let m: libc::msghdr = unsafe { std::mem::zeroed() };
        assert_eq!(vlan_tag(&m), None);
    }
}
