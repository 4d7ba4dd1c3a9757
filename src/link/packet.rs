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
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;

use super::netns::{self, validate_ifname};
use super::{Link, LinkCaps, LinkError, OpenError, RecvStats, SendStats, classify};
use crate::frame::{Frame, FramePool, VNET_HDR_LEN, VnetHdr};
use crate::sys::packet::{self as sys, Flag, MmsgBatch};

/// Ethernet header plus one 802.1Q tag: what a frame adds to the interface MTU.
const L2_OVERHEAD: usize = 14 + 4;
/// MTU assumed when the interface's cannot be read.
const DEFAULT_MTU: u32 = 1500;
/// Initial size of the batch arrays; they grow to the largest `max` asked for.
const INITIAL_BATCH: usize = 64;

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
    batch: MmsgBatch,
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

impl PacketLink {
    /// Opens a packet socket on the existing interface `ifname` in the calling thread's network
    /// namespace and applies `opts`.
    pub fn open(ifname: &str, opts: &PacketOptions) -> Result<PacketLink, OpenError> {
        validate_ifname(ifname)?;
        let what = |step: &str| format!("opening packet socket on {ifname}: {step}");
        let fd = sys::socket().map_err(|e| OpenError::new(what("socket"), e))?;

        // Every interface query below goes through this socket, i.e. its namespace.
        let ifindex = netns::if_index_on(fd.as_fd(), ifname)?;
        if opts.up {
            netns::set_link_up_on(fd.as_fd(), ifname)?;
        }
        sys::bind(fd.as_fd(), ifindex).map_err(|e| OpenError::new(what("bind"), e))?;
        if opts.promisc {
            sys::add_promisc(fd.as_fd(), ifindex)
                .map_err(|e| OpenError::new(what("promiscuous mode"), e))?;
        }
        if let Err(e) = sys::enable(fd.as_fd(), Flag::IgnoreOutgoing) {
            // Pre-4.20 kernel: the PACKET_OUTGOING filter in recv_batch does the job.
            tracing::debug!(ifname, error = %e, "PACKET_IGNORE_OUTGOING unavailable");
        }
        let vnet_len = if opts.offload {
            match sys::enable(fd.as_fd(), Flag::VnetHdr) {
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
        let auxdata = match sys::enable(fd.as_fd(), Flag::Auxdata) {
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
            batch: MmsgBatch::new(INITIAL_BATCH),
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
        // `packet_snd` builds GSO skbs from the virtio-net header.
        let vnet = self.vnet_len > 0;
        LinkCaps::kernel(vnet, self.max_frame, vnet)
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
            for slot in &mut self.slots[..want] {
                let frame = match slot.take() {
                    Some(f) if f.capacity() == want_cap => f,
                    _ if vl > 0 => pool.alloc_large().unwrap_or_else(|| pool.alloc()),
                    _ => pool.alloc(),
                };
                *slot = Some(frame);
            }
            let bufs = self.slots[..want]
                .iter_mut()
                .filter_map(|s| s.as_mut().map(|f| f.recv_area(vl)));
            let r = match self.batch.recv(self.fd.as_fd(), bufs, self.auxdata) {
                Ok(r) => r,
                Err(err) => match err.raw_os_error() {
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
                },
            };
            if r == 0 {
                break;
            }
            msgs_left -= r;
            for i in 0..r {
                let got = self.batch.received(i);
                let len = got.len;
                if got.outgoing || len <= vl {
                    continue;
                }
                if got.truncated {
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
                if let Some((tpid, tci)) = got.vlan {
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
            let n = queue.len().min(self.batch.capacity());
            let vl = self.vnet_len;
            let bufs = queue.iter_mut().take(n).map(|frame| -> &[u8] {
                let h = frame.meta.vnet.to_bytes();
                let data = frame.with_prefix_mut(vl);
                if vl > 0 && data.len() >= vl {
                    data[..vl].copy_from_slice(&h[..vl]);
                }
                data
            });
            let err = match self.batch.send(self.fd.as_fd(), bufs) {
                Ok(0) => break,
                Ok(r) => {
                    for f in queue.drain(..r) {
                        st.frames += 1;
                        st.bytes += f.len();
                    }
                    // If r < n the next call reports the error of the frame that stopped it.
                    continue;
                }
                Err(err) => err,
            };
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
