//! `AF_PACKET` links: a raw socket bound to an existing interface.
//!
//! # Theory of operation
//!
//! A [`PacketLink`] owns a non-blocking `AF_PACKET`/`SOCK_RAW` socket for `ETH_P_ALL`, bound to
//! one interface (one end of a veth pair, a NIC, a bridge). It reads every frame the interface
//! receives and transmits frames as if they had been sent by the interface's own stack. It is
//! the way to attach the switch to an interface that already exists (a container's veth whose
//! peer is in the container's namespace, say) instead of creating a TAP.
//!
//! Frames move in batches: `recvmmsg` fills up to `max` pooled frames per syscall and `sendmmsg`
//! writes up to the whole queue per syscall. The `mmsghdr`, `iovec` and `sockaddr_ll` arrays are
//! allocated once and kept in the link; the receive frames not filled by a call are kept for the
//! next, so a quiet link does not churn the pool.
//!
//! Each `recv_batch` consumes at most [`read_budget`]`(max)` messages, whatever becomes of
//! them, like the TAP's bound on its reads: frames that are dropped (outgoing, truncated,
//! oversize) never count towards `max`, so without it a port flooded with such frames would
//! keep its loop in one call and starve the loop's other ports. Past the budget the call
//! returns not drained, and the engine reads the port again next turn.
//!
//! Frames we send are not read back: `PACKET_IGNORE_OUTGOING` is set (Linux 4.20+), and as a
//! fallback, received frames whose `sll_pkttype` is `PACKET_OUTGOING` (which also covers frames
//! the host's own stack sends on the interface) are skipped. Frames larger than the pool's
//! buffers are detected with `MSG_TRUNC` and dropped, counted as oversize.
//!
//! Errors: when the interface goes down, the socket reports `ENETDOWN` once; when it is deleted,
//! it reports `ENETDOWN` and sends then fail with `ENXIO`. The link tells the two apart by
//! asking (on its own socket, hence in its own namespace) whether the interface index still
//! exists: a down interface is [`LinkError::Transient`], a deleted one [`LinkError::Gone`].
//!
//! VLANs: the kernel takes the outer 802.1Q/802.1ad tag off every frame it receives (in
//! `__netif_receive_skb`, before packet sockets see it, or in the NIC) and keeps it beside the
//! frame; a packet socket gets it only as `PACKET_AUXDATA` control data. The link asks for that
//! (`PACKET_AUXDATA`), gives every `recvmmsg` message its own small control buffer, and puts
//! the tag back into the frame in place ([`Frame::push_vlan`], into the headroom: no copy),
//! with its TPID when the kernel reports one (`TP_STATUS_VLAN_TPID_VALID`, else 802.1Q) and
//! its priority bits; the virtio-net header's offsets, which the kernel computed for the
//! untagged frame, move with it. So a tagged frame arrives tagged, as on every other link, and
//! a Q-in-Q frame arrives with both tags. Frames are sent as they are: a tagged frame leaves
//! tagged (the tag in the bytes; the kernel's VLAN devices on the other side take it from
//! there).

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use super::netns::{self, validate_ifname};
use super::{Link, LinkCaps, LinkError, OpenError, RecvStats, SendStats, classify};
use crate::frame::{Frame, FramePool, VNET_HDR_LEN, VnetHdr};

/// Ethernet header plus one 802.1Q tag: what a frame adds to the interface MTU.
const L2_OVERHEAD: usize = 14 + 4;
/// MTU assumed when the interface's cannot be read.
const DEFAULT_MTU: u32 = 1500;
/// Initial size of the batch arrays; they grow to the largest `max` asked for.
const INITIAL_BATCH: usize = 64;

/// Control buffer of one received message, in 8-byte words: room for one `cmsghdr` carrying a
/// `tpacket_auxdata` (16 + 20 bytes, aligned: 40), with some to spare.
const CTRL_WORDS: usize = 8;

/// Receive slots per `recvmmsg` call when frames may be 64 KiB GSO frames: bounds the GSO
/// buffers one packet link keeps ready (8 x 64 KiB).
const GSO_BATCH: usize = 8;

/// Most messages one `recv_batch(max)` consumes, frames kept or dropped: the TAP's bound.
pub fn read_budget(max: usize) -> usize {
    max.saturating_mul(4).saturating_add(16)
}

/// How to open a packet link.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PacketOptions {
    /// Bring the interface up if it is down.
    pub up: bool,
    /// Put the interface in promiscuous mode (needed to see unicast frames for MACs other than
    /// the interface's own, i.e. to switch for other hosts). The kernel drops the membership
    /// when the socket closes.
    pub promisc: bool,
    /// Use virtio-net headers (`PACKET_VNET_HDR`): frames keep their offload state (pending
    /// checksums, GSO) both ways, so bulk TCP from a veth peer with TSO and checksum offload
    /// (Linux's defaults) arrives as it should. Default: true.
    pub offload: bool,
}

impl Default for PacketOptions {
    fn default() -> Self {
        PacketOptions {
            up: false,
            promisc: false,
            offload: true,
        }
    }
}

/// The per-message arrays handed to `recvmmsg`/`sendmmsg`.
struct Batch {
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_ll>,
    /// One control buffer per message, for `PACKET_AUXDATA` (8-byte aligned, as `cmsghdr`
    /// needs).
    ctrl: Vec<[u64; CTRL_WORDS]>,
}

// SAFETY: the raw pointers inside `hdrs` and `iovs` are scratch values: they are rewritten to
// point at the link's own buffers right before every syscall and never dereferenced otherwise,
// so moving the arrays to another thread cannot create shared access.
unsafe impl Send for Batch {}

impl Batch {
    fn new() -> Batch {
        let mut b = Batch {
            hdrs: Vec::new(),
            iovs: Vec::new(),
            addrs: Vec::new(),
            ctrl: Vec::new(),
        };
        b.reserve(INITIAL_BATCH);
        b
    }

    /// Makes room for `n` messages (allocates only when `n` exceeds what was seen so far).
    fn reserve(&mut self, n: usize) {
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
    }
}

/// An `AF_PACKET` socket bound to one interface. See the module docs.
pub struct PacketLink {
    fd: OwnedFd,
    ifname: String,
    ifindex: u32,
    max_frame: usize,
    /// Bytes of virtio-net header in front of each frame (0 or 10).
    vnet_len: usize,
    /// `PACKET_AUXDATA` is on: received messages carry the tag the kernel took off.
    auxdata: bool,
    batch: Batch,
    /// Receive buffers; slot `i` backs message `i`. Filled slots are handed out, the others
    /// are kept for the next call.
    slots: Vec<Option<Frame>>,
}

impl std::fmt::Debug for PacketLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PacketLink")
            .field("fd", &self.fd)
            .field("ifname", &self.ifname)
            .field("ifindex", &self.ifindex)
            .field("max_frame", &self.max_frame)
            .finish()
    }
}

/// `setsockopt(fd, level, name, &val)`.
fn setsockopt<T>(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    val: &T,
) -> io::Result<()> {
    // SAFETY: passes a pointer to `val` and its exact size; the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
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

impl PacketLink {
    /// Opens a packet socket on the existing interface `ifname` in the calling thread's network
    /// namespace and applies `opts`.
    pub fn open(ifname: &str, opts: &PacketOptions) -> Result<PacketLink, OpenError> {
        validate_ifname(ifname)?;
        let what = |step: &str| format!("opening packet socket on {ifname}: {step}");
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: socket() takes no pointers; the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                libc::c_int::from(proto),
            )
        };
        if raw < 0 {
            return Err(OpenError::last_os(what("socket")));
        }
        // SAFETY: `raw` is a fresh descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };

        // Every interface query below goes through this socket, i.e. its namespace.
        let ifindex = netns::if_index_on(fd.as_fd(), ifname)?;
        if opts.up {
            netns::set_link_up_on(fd.as_fd(), ifname)?;
        }

        // SAFETY: sockaddr_ll is a plain C struct; all-zero is valid.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as libc::c_ushort;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex as libc::c_int;
        // SAFETY: binds to a valid sockaddr_ll of the size passed.
        let rc = unsafe {
            libc::bind(
                raw,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(OpenError::last_os(what("bind")));
        }

        if opts.promisc {
            // SAFETY: packet_mreq is a plain C struct; all-zero is valid.
            let mut mreq: libc::packet_mreq = unsafe { std::mem::zeroed() };
            mreq.mr_ifindex = ifindex as libc::c_int;
            mreq.mr_type = libc::PACKET_MR_PROMISC as libc::c_ushort;
            setsockopt(
                fd.as_fd(),
                libc::SOL_PACKET,
                libc::PACKET_ADD_MEMBERSHIP,
                &mreq,
            )
            .map_err(|e| OpenError::new(what("promiscuous mode"), e))?;
        }

        let one: libc::c_int = 1;
        if let Err(e) = setsockopt(
            fd.as_fd(),
            libc::SOL_PACKET,
            libc::PACKET_IGNORE_OUTGOING,
            &one,
        ) {
            // Pre-4.20 kernel: the PACKET_OUTGOING filter in recv_batch does the job.
            tracing::debug!(ifname, error = %e, "PACKET_IGNORE_OUTGOING unavailable");
        }

        let vnet_len = if opts.offload {
            match setsockopt(fd.as_fd(), libc::SOL_PACKET, libc::PACKET_VNET_HDR, &one) {
                Ok(()) => VNET_HDR_LEN,
                Err(e) => {
                    tracing::debug!(ifname, error = %e, "PACKET_VNET_HDR unavailable");
                    0
                }
            }
        } else {
            0
        };

        // The tag the kernel takes off received frames comes back as control data.
        let auxdata = match setsockopt(fd.as_fd(), libc::SOL_PACKET, libc::PACKET_AUXDATA, &one) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(ifname, error = %e, "PACKET_AUXDATA unavailable: VLAN tags of received frames are lost");
                false
            }
        };

        let mtu = netns::mtu_on(fd.as_fd(), ifname).unwrap_or(DEFAULT_MTU);
        tracing::debug!(ifname, ifindex, mtu, vnet_len, "packet link open");
        Ok(PacketLink {
            fd,
            ifname: ifname.to_string(),
            ifindex,
            max_frame: mtu as usize + L2_OVERHEAD,
            vnet_len,
            auxdata,
            batch: Batch::new(),
            slots: Vec::new(),
        })
    }

    /// Like [`Self::open`], for interface `ifname` inside the network namespace at `netns`.
    pub fn open_in_netns(
        netns: &Path,
        ifname: &str,
        opts: &PacketOptions,
    ) -> Result<PacketLink, OpenError> {
        validate_ifname(ifname)?;
        let (ifname, opts) = (ifname.to_string(), opts.clone());
        netns::run_in_netns_with(netns, move || PacketLink::open(&ifname, &opts))
    }

    /// The interface name given at open time.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// The interface index.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Whether our interface still exists, asked in the socket's own namespace.
    fn link_exists(&self) -> bool {
        match netns::if_name_on(self.fd.as_fd(), self.ifindex) {
            Ok(_) => true,
            Err(e) => e.raw_os_error() != Some(libc::ENODEV),
        }
    }

    /// Maps an error from the socket: `ENETDOWN` is transient while the interface exists.
    fn classify(&self, err: io::Error) -> LinkError {
        match err.raw_os_error() {
            Some(libc::ENETDOWN) if !self.link_exists() => LinkError::Gone(err),
            Some(libc::ENETDOWN) => LinkError::Transient(err),
            _ => classify(err),
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

impl AsFd for PacketLink {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Link for PacketLink {
    fn kind(&self) -> &'static str {
        "packet"
    }

    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn caps(&self) -> LinkCaps {
        let vnet = self.vnet_len > 0;
        LinkCaps {
            vnet_hdr: vnet,
            max_frame: self.max_frame,
            // `packet_snd` builds GSO skbs from the header (`virtio_net_hdr_to_skb`); the
            // kernel segments them if the interface cannot.
            tx: if vnet {
                crate::offload::Offloads::ALL
            } else {
                crate::offload::Offloads::NONE
            },
            rx_gso: vnet,
        }
    }

    fn recv_batch(
        &mut self,
        pool: &FramePool,
        out: &mut Vec<Frame>,
        max: usize,
    ) -> Result<RecvStats, LinkError> {
        let mut st = RecvStats::default();
        if max == 0 {
            return Ok(st);
        }
        let vl = self.vnet_len;
        // With virtio-net headers a frame may be a 64 KiB GSO frame: fewer, larger slots.
        let per_call = if vl > 0 { max.min(GSO_BATCH) } else { max };
        let want_cap = if vl > 0 {
            pool.max_large_frame()
        } else {
            pool.max_frame()
        };
        self.batch.reserve(per_call);
        if self.slots.len() < per_call {
            self.slots.resize_with(per_call, || None);
        }
        let mut msgs_left = read_budget(max);
        while st.frames < max && msgs_left > 0 {
            let want = (max - st.frames).min(per_call).min(msgs_left);
            for i in 0..want {
                let slot = &mut self.slots[i];
                let frame = match slot.take() {
                    Some(f) if f.capacity() == want_cap => f,
                    _ if vl > 0 => pool.alloc_large().unwrap_or_else(|| pool.alloc()),
                    _ => pool.alloc(),
                };
                let frame = slot.insert(frame);
                let area = frame.recv_area(vl);
                self.batch.iovs[i] = libc::iovec {
                    iov_base: area.as_mut_ptr().cast(),
                    iov_len: area.len(),
                };
                let hdr = &mut self.batch.hdrs[i];
                hdr.msg_len = 0;
                hdr.msg_hdr.msg_name = (&mut self.batch.addrs[i] as *mut libc::sockaddr_ll).cast();
                hdr.msg_hdr.msg_namelen =
                    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
                hdr.msg_hdr.msg_iov = &mut self.batch.iovs[i];
                hdr.msg_hdr.msg_iovlen = 1;
                if self.auxdata {
                    let ctrl = &mut self.batch.ctrl[i];
                    hdr.msg_hdr.msg_control = ctrl.as_mut_ptr().cast();
                    hdr.msg_hdr.msg_controllen = std::mem::size_of_val(ctrl) as _;
                } else {
                    hdr.msg_hdr.msg_control = std::ptr::null_mut();
                    hdr.msg_hdr.msg_controllen = 0;
                }
                hdr.msg_hdr.msg_flags = 0;
            }
            // SAFETY: the first `want` headers point at valid, exclusively owned iovecs,
            // frame buffers, address structs and control buffers of the sizes given, which
            // outlive the call.
            let r = unsafe {
                libc::recvmmsg(
                    self.fd.as_raw_fd(),
                    self.batch.hdrs.as_mut_ptr(),
                    want as libc::c_uint,
                    libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                    std::ptr::null_mut(),
                )
            };
            if r < 0 {
                let err = io::Error::last_os_error();
                match err.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::EAGAIN) => {
                        st.drained = true;
                        break;
                    }
                    _ => {
                        let e = self.classify(err);
                        if e.is_fatal() || st.frames == 0 {
                            return Err(e);
                        }
                        // A transient error after some frames: report those.
                        break;
                    }
                }
            }
            let r = (r as usize).min(want);
            if r == 0 {
                break;
            }
            msgs_left -= r;
            for i in 0..r {
                let hdr = &self.batch.hdrs[i];
                let len = hdr.msg_len as usize;
                let outgoing = self.batch.addrs[i].sll_pkttype == libc::PACKET_OUTGOING;
                let truncated = hdr.msg_hdr.msg_flags & libc::MSG_TRUNC != 0
                    || len > self.batch.iovs[i].iov_len;
                if outgoing || len <= vl {
                    continue;
                }
                if truncated {
                    st.oversize += 1;
                    continue;
                }
                let Some(mut f) = self.slots[i].take() else {
                    continue;
                };
                let mut meta = VnetHdr::default();
                if vl > 0 {
                    let mut h = [0u8; VNET_HDR_LEN];
                    h.copy_from_slice(&f.recv_area(vl)[..VNET_HDR_LEN]);
                    meta = VnetHdr::from_bytes(&h);
                }
                if len - vl > self.max_frame && meta.gso_type == 0 {
                    // Larger than the MTU and not a GSO frame.
                    st.oversize += 1;
                    self.slots[i] = Some(f);
                    continue;
                }
                f.set_received(len - vl);
                // A small frame in a GSO buffer moves to a regular one; the slot keeps the
                // GSO buffer for the next call.
                if let Some(big) = pool.compact(&mut f) {
                    self.slots[i] = Some(big);
                }
                f.meta.vnet = meta;
                if let Some((tpid, tci)) = vlan_tag(&hdr.msg_hdr) {
                    // Fails only for a runt shorter than the MAC addresses (a received frame
                    // has its whole headroom), which the bridge then drops as such.
                    let _ = f.push_vlan(tpid, tci);
                }
                out.push(f);
                st.frames += 1;
            }
            if r < want {
                // The socket is drained for now (recvmmsg returned fewer than asked).
                st.drained = true;
                break;
            }
        }
        Ok(st)
    }

    fn send_batch(&mut self, queue: &mut VecDeque<Frame>) -> Result<SendStats, LinkError> {
        let mut st = SendStats::default();
        while !queue.is_empty() {
            let n = queue.len().min(self.batch.hdrs.len());
            let vl = self.vnet_len;
            for (i, frame) in queue.iter_mut().take(n).enumerate() {
                let h = frame.meta.vnet.to_bytes();
                let data = frame.with_prefix_mut(vl);
                if vl > 0 && data.len() >= vl {
                    data[..vl].copy_from_slice(&h[..vl]);
                }
                self.batch.iovs[i] = libc::iovec {
                    // The kernel only reads through this pointer (sendmmsg).
                    iov_base: data.as_mut_ptr().cast(),
                    iov_len: data.len(),
                };
                let hdr = &mut self.batch.hdrs[i];
                hdr.msg_len = 0;
                // The socket is bound: no destination address needed.
                hdr.msg_hdr.msg_name = std::ptr::null_mut();
                hdr.msg_hdr.msg_namelen = 0;
                hdr.msg_hdr.msg_iov = &mut self.batch.iovs[i];
                hdr.msg_hdr.msg_iovlen = 1;
                hdr.msg_hdr.msg_control = std::ptr::null_mut();
                hdr.msg_hdr.msg_controllen = 0;
                hdr.msg_hdr.msg_flags = 0;
            }
            // SAFETY: the first `n` headers point at valid iovecs describing the frames at the
            // front of `queue`, which are neither moved nor dropped during the call.
            let r = unsafe {
                libc::sendmmsg(
                    self.fd.as_raw_fd(),
                    self.batch.hdrs.as_mut_ptr(),
                    n as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if r >= 0 {
                let r = (r as usize).min(n);
                if r == 0 {
                    break;
                }
                for f in queue.drain(..r) {
                    st.frames += 1;
                    st.bytes += f.len();
                }
                // If r < n the next call reports the error of the frame that stopped it.
                continue;
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) => break,
                _ => {
                    let e = self.classify(err);
                    if e.is_fatal() {
                        return Err(e);
                    }
                    // ENETDOWN (interface down), EMSGSIZE, EINVAL, ENOBUFS (qdisc drop): the
                    // front frame is refused; drop it and go on.
                    tracing::trace!(ifname = %self.ifname, error = %e, "packet send dropped a frame");
                    queue.pop_front();
                    st.errors += 1;
                }
            }
        }
        Ok(st)
    }
}
