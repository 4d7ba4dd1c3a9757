//! TAP devices.
//!
//! # Theory of operation
//!
//! A TAP device is a virtual Ethernet interface whose "wire" is a file descriptor on
//! `/dev/net/tun`: every frame the kernel transmits on the interface can be `read()` from the
//! fd, and every frame `write()`n to the fd is received by the interface. A [`TapLink`] owns
//! that fd (non-blocking) and moves one frame per `read`/`write` syscall.
//!
//! A `TapLink` is obtained in one of three ways:
//! - [`TapLink::create`]: `TUNSETIFF` with `IFF_TAP | IFF_NO_PI` creates the interface (or
//!   attaches to an existing persistent TAP of that name), then sets the MTU and brings it up.
//! - [`TapLink::create_in_netns`]: the same, on a helper thread that has joined another network
//!   namespace (a container's), so the interface appears there while the fd works here.
//! - [`TapLink::from_fd`]: adopts a TAP fd that a container runtime or VMM already opened;
//!   `TUNGETIFF` tells us its name and whether it carries virtio-net headers.
//!
//! When the kernel offers `IFF_VNET_HDR` (see `TUNGETFEATURES`) and [`TapOptions::vnet_hdr`] is
//! set, every frame on the fd is preceded by a virtio-net header (10 bytes by default, 12 if an
//! adopted fd was configured that way). The header is parsed into [`FrameMeta`] on receive and
//! written back from it on send; it is read straight into, and written straight from, the
//! frame's headroom, so no payload is copied.
//!
//! Offloads ([`TapOptions::offload`], on by default): `TUNSETOFFLOAD` announces checksum, TSO4,
//! TSO6 (with ECN) and, on Linux 6.2+, USO4/USO6 on the interface, so the stack in the
//! namespace hands us TCP and UDP super-frames of up to 64 KiB and leaves checksums to us
//! (`NEEDS_CSUM`). Such a link reads into 64 KiB GSO buffers from the pool (a small frame read
//! that way moves to a regular buffer at once); writes take any GSO frame, since the kernel
//! accepts them with virtio-net headers whatever the interface announces. Links without
//! offloads get segmented, checksummed frames ([`crate::offload`]).
//!
//! Receiving uses `readv` into the frame's buffer plus one spare byte: the kernel silently
//! truncates a frame that does not fit and returns the truncated length, so a read that reaches
//! the spare byte marks a frame too large for the pool's buffers (dropped, counted as
//! oversize), while a frame that exactly fills the buffer is kept.
//!
//! Errors: a TAP whose interface was deleted answers `EBADFD` to reads and writes, which
//! `classify` maps to [`LinkError::Gone`]. Writing while the interface is down fails with
//! `EIO`; such frames are dropped and counted.
//!
//! [`FrameMeta`]: crate::frame::FrameMeta

use std::collections::VecDeque;
use std::io;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;

use super::ifconfig::IfConfig;
use super::netns::{self, validate_ifname};
use super::{Link, LinkCaps, LinkError, OpenError, RecvStats, SendStats, classify};
use crate::frame::{Frame, FramePool, VNET_HDR_LEN, VnetHdr};
use crate::sys::ifreq::{IfReq, IfReqOp};
use crate::sys::tun;

/// Ethernet header plus one 802.1Q tag: what a frame adds to the interface MTU.
const L2_OVERHEAD: usize = 14 + 4;
/// MTU assumed when the interface's cannot be read.
const DEFAULT_MTU: u32 = 1500;
/// The virtio-net header with `num_buffers` (`struct virtio_net_hdr_mrg_rxbuf`).
const VNET_HDR_MRG_LEN: usize = 12;

/// How to create a TAP device.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TapOptions {
    /// Ask for virtio-net headers (`IFF_VNET_HDR`) when the kernel supports them. Default: true.
    pub vnet_hdr: bool,
    /// MTU to set on the interface; `None` keeps the kernel's (1500 for a new TAP).
    pub mtu: Option<u32>,
    /// Bring the interface up. Default: true.
    pub up: bool,
    /// Enable offloads (`TUNSETOFFLOAD`: checksum, TSO4/6 with ECN, USO4/6 where the kernel
    /// has them) when virtio-net headers are in use, so the kernel hands over 64 KiB TCP and
    /// UDP super-frames and leaves checksums to us. Default: true.
    pub offload: bool,
}

impl Default for TapOptions {
    fn default() -> Self {
        TapOptions {
            vnet_hdr: true,
            mtu: None,
            up: true,
            offload: true,
        }
    }
}

/// A TAP device fd. See the module docs.
#[derive(Debug)]
pub struct TapLink {
    fd: OwnedFd,
    name: String,
    /// Bytes of virtio-net header in front of each frame on the fd (0, 10 or 12).
    vnet_len: usize,
    max_frame: usize,
    /// Offloads enabled with `TUNSETOFFLOAD`: the kernel may hand over GSO frames.
    rx_gso: bool,
    /// A pooled frame kept between reads that found nothing, so empty reads do not churn the
    /// pool.
    spare: Option<Frame>,
}

impl TapLink {
    /// Creates the TAP interface `name` in the calling thread's network namespace, or attaches
    /// to an existing persistent TAP of that name, then applies `opts` (MTU, up).
    ///
    /// `name` may be a kernel pattern such as `"tap%d"`; [`Self::name`] reports the name the
    /// kernel chose.
    pub fn create(name: &str, opts: &TapOptions) -> Result<TapLink, OpenError> {
        validate_ifname(name)?;
        let what = || format!("creating TAP {name}");
        let fd = tun::open_tun()
            .map_err(|e| OpenError::new(format!("{}: opening /dev/net/tun", what()), e))?;
        let have_vnet = match tun::features(fd.as_fd()) {
            Ok(features) => features & libc::IFF_VNET_HDR as libc::c_uint != 0,
            Err(_) => false,
        };
        let vnet = opts.vnet_hdr && have_vnet;
        if opts.vnet_hdr && !vnet {
            tracing::debug!(tap = name, "kernel lacks IFF_VNET_HDR; using plain frames");
        }

        let mut ifr = IfReq::new(name);
        let mut flags = libc::IFF_TAP | libc::IFF_NO_PI;
        if vnet {
            flags |= libc::IFF_VNET_HDR;
        }
        ifr.set_flags(flags as libc::c_short);
        ifr.ioctl(fd.as_fd(), IfReqOp::TunSetIff)
            .map_err(|e| OpenError::new(what(), e))?;
        let name = ifr.name();

        let vnet_len = if vnet {
            vnet_hdr_size(fd.as_fd(), &name)?
        } else {
            0
        };
        let rx_gso = vnet_len > 0 && opts.offload && set_offloads(fd.as_fd(), &name);
        if let Some(mtu) = opts.mtu {
            netns::set_mtu(&name, mtu)?;
        }
        if opts.up {
            netns::set_link_up(&name)?;
        }
        let mtu = netns::mtu(&name).unwrap_or(DEFAULT_MTU);
        tracing::debug!(tap = %name, vnet_len, mtu, rx_gso, "TAP open");
        Ok(TapLink::assemble(fd, name, vnet_len, mtu, rx_gso))
    }

    /// Creates (or attaches to) the TAP interface `ifname` inside the network namespace at
    /// `netns` (e.g. `/run/netns/NAME` or `/proc/PID/ns/net`); the MTU and up state are set
    /// there too. The returned link is used from any thread.
    pub fn create_in_netns(
        netns: &Path,
        ifname: &str,
        opts: &TapOptions,
    ) -> Result<TapLink, OpenError> {
        validate_ifname(ifname)?;
        let (ifname, opts) = (ifname.to_string(), opts.clone());
        netns::run_in_netns_with(netns, move || TapLink::create(&ifname, &opts))
    }

    /// Like [`TapLink::create_in_netns`], then configures the new interface inside the
    /// namespace (MAC, MTU, addresses, routes, `lo`; see [`IfConfig`]). `opts.up` is ignored:
    /// the configuration brings the link up.
    pub fn create_configured_in_netns(
        netns: &Path,
        ifname: &str,
        opts: &TapOptions,
        cfg: &IfConfig,
    ) -> Result<TapLink, OpenError> {
        validate_ifname(ifname)?;
        let (ifname, cfg) = (ifname.to_string(), cfg.clone());
        let opts = TapOptions {
            up: false,
            mtu: None,
            ..opts.clone()
        };
        netns::run_in_netns_with(netns, move || {
            let mut tap = TapLink::create(&ifname, &opts)?;
            cfg.apply(&ifname)
                .map_err(|e| OpenError::new(format!("configuring {ifname}"), e))?;
            if let Ok(mtu) = netns::mtu(&ifname) {
                tap.max_frame = mtu as usize + L2_OVERHEAD;
            }
            Ok(tap)
        })
    }

    /// Adopts an open TAP fd (handed over by a container runtime or a VMM). Its name and
    /// virtio-net header setting are read from the kernel; the fd is made non-blocking, and
    /// offloads are enabled when it carries virtio-net headers. Fails for a TUN (layer 3) fd or
    /// one opened without `IFF_NO_PI`.
    pub fn from_fd(fd: OwnedFd) -> Result<TapLink, OpenError> {
        let raw = fd.as_raw_fd();
        let mut ifr = IfReq::new("");
        ifr.ioctl(fd.as_fd(), IfReqOp::TunGetIff)
            .map_err(|e| OpenError::new(format!("adopting TAP fd {raw}"), e))?;
        let name = ifr.name();
        let flags = libc::c_int::from(ifr.flags()) & 0xffff;
        let refuse = |why: &str| {
            OpenError::new(
                format!("adopting TAP fd {raw} ({name})"),
                io::Error::new(io::ErrorKind::InvalidInput, why.to_string()),
            )
        };
        if flags & libc::IFF_TAP == 0 {
            return Err(refuse("not a TAP (layer 2) device"));
        }
        if flags & libc::IFF_NO_PI == 0 {
            return Err(refuse("opened without IFF_NO_PI"));
        }
        let vnet_len = if flags & libc::IFF_VNET_HDR != 0 {
            vnet_hdr_size(fd.as_fd(), &name)?
        } else {
            0
        };

        tun::set_nonblocking(fd.as_fd())
            .map_err(|e| OpenError::new(format!("setting O_NONBLOCK on TAP {name}"), e))?;

        let rx_gso = vnet_len > 0 && set_offloads(fd.as_fd(), &name);
        let mtu = adopted_mtu(&fd, &name).unwrap_or(DEFAULT_MTU);
        tracing::debug!(tap = %name, vnet_len, mtu, rx_gso, "TAP adopted");
        Ok(TapLink::assemble(fd, name, vnet_len, mtu, rx_gso))
    }

    fn assemble(fd: OwnedFd, name: String, vnet_len: usize, mtu: u32, rx_gso: bool) -> TapLink {
        TapLink {
            fd,
            name,
            vnet_len,
            max_frame: mtu as usize + L2_OVERHEAD,
            rx_gso,
            spare: None,
        }
    }

    /// Gives up the link and returns its descriptor (the interface stays while it is open).
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// Sizes reads for `mtu`: for an adopted TAP whose MTU is set by someone else after the
    /// fact (a rootless attach configures it only once the daemon has the port), where
    /// [`TapLink::from_fd`] could not read it.
    pub fn expect_mtu(&mut self, mtu: u32) {
        self.max_frame = mtu as usize + L2_OVERHEAD;
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// True when frames on the fd carry a virtio-net header.
    pub fn vnet_hdr(&self) -> bool {
        self.vnet_len > 0
    }

    /// True when offloads are on: reads may return GSO frames of up to 64 KiB.
    pub fn offloads(&self) -> bool {
        self.rx_gso
    }

    /// A frame to read into: the spare one if it is the size wanted, else a new one from
    /// `pool` (a GSO buffer when offloads are on and one is free).
    fn take_frame(&mut self, pool: &FramePool) -> Frame {
        let want = if self.rx_gso {
            pool.max_large_frame()
        } else {
            pool.max_frame()
        };
        match self.spare.take() {
            Some(f) if f.capacity() == want => f,
            _ if self.rx_gso => pool.alloc_large().unwrap_or_else(|| pool.alloc()),
            _ => pool.alloc(),
        }
    }
}

/// Asks the kernel for checksum, TSO and USO offloads on TAP fd `fd` (USO only exists since
/// Linux 6.2, so it is dropped if refused). Returns false if no offload could be enabled.
fn set_offloads(fd: BorrowedFd<'_>, name: &str) -> bool {
    let base = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN;
    for flags in [base | libc::TUN_F_USO4 | libc::TUN_F_USO6, base] {
        if tun::set_offload(fd, flags).is_ok() {
            return true;
        }
    }
    tracing::debug!(tap = name, "TUNSETOFFLOAD refused; no offloads");
    false
}

/// The virtio-net header size of TAP fd `fd`; 10 or 12, otherwise reset to 10.
fn vnet_hdr_size(fd: BorrowedFd<'_>, name: &str) -> Result<usize, OpenError> {
    match tun::vnet_hdr_size(fd) {
        Ok(sz) if sz == VNET_HDR_LEN as libc::c_int || sz == VNET_HDR_MRG_LEN as libc::c_int => {
            Ok(sz as usize)
        }
        _ => {
            let want = VNET_HDR_LEN as libc::c_int;
            tun::set_vnet_hdr_size(fd, want).map_err(|e| {
                OpenError::new(format!("setting virtio-net header size on TAP {name}"), e)
            })?;
            Ok(VNET_HDR_LEN)
        }
    }
}

/// The MTU of an adopted TAP, read in the TAP's own namespace (found with `SIOCGSKNS`), which
/// may not be ours; falls back to our namespace.
fn adopted_mtu(fd: &OwnedFd, name: &str) -> Option<u32> {
    match tun::socket_netns(fd.as_fd()) {
        Ok(ns) => {
            let name = name.to_string();
            netns::run_in_netns_fd(ns, "of adopted TAP".into(), move || netns::mtu(&name)).ok()
        }
        Err(_) => netns::mtu(name).ok(),
    }
}

impl AsFd for TapLink {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Link for TapLink {
    fn kind(&self) -> &'static str {
        "tap"
    }

    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn caps(&self) -> LinkCaps {
        LinkCaps::kernel(self.vnet_hdr(), self.max_frame, self.rx_gso)
    }

    fn recv_batch(
        &mut self,
        pool: &FramePool,
        out: &mut Vec<Frame>,
        max: usize,
    ) -> Result<RecvStats, LinkError> {
        let mut st = RecvStats::default();
        let vl = self.vnet_len;
        // Bound the reads so a stream of dropped (runt, oversize) frames cannot hold the loop.
        let mut reads_left = max.saturating_mul(4).saturating_add(16);
        while st.frames < max && reads_left > 0 {
            reads_left -= 1;
            let mut frame = self.take_frame(pool);
            let area = frame.recv_area(vl);
            let cap = area.len();
            // One byte past the buffer: a frame that reaches it did not fit. (A truncated read
            // returns the buffer length, so without it a frame that exactly fills the buffer
            // could not be told from a truncated one.)
            let mut tail = 0u8;
            let read = crate::sys::io::readv(
                &self.fd,
                &mut [
                    IoSliceMut::new(&mut area[..]),
                    IoSliceMut::new(std::slice::from_mut(&mut tail)),
                ],
            );
            let n = match read {
                Ok(n) => n,
                Err(err) => {
                    self.spare = Some(frame);
                    match err.raw_os_error() {
                        Some(libc::EINTR) => continue,
                        Some(libc::EAGAIN) => {
                            st.drained = true;
                            break;
                        }
                        _ => {
                            let e = classify(err);
                            // A transient error after some frames: report those; the caller
                            // comes back and sees the error again if it persists.
                            if e.is_fatal() || st.frames == 0 {
                                return Err(e);
                            }
                            break;
                        }
                    }
                }
            };
            let n = n as usize;
            if n > cap {
                st.oversize += 1;
                self.spare = Some(frame);
                continue;
            }
            if n < vl + 14 {
                // Runt: no room for an Ethernet header. Skip it.
                self.spare = Some(frame);
                continue;
            }
            let mut meta = VnetHdr::default();
            if vl > 0 {
                let mut h = [0u8; VNET_HDR_LEN];
                h.copy_from_slice(&area[..VNET_HDR_LEN]);
                meta = VnetHdr::from_bytes(&h);
            }
            let len = n - vl;
            if len > self.max_frame && meta.gso_type == 0 {
                // Larger than the MTU and not a GSO frame: what a NIC would not have sent.
                st.oversize += 1;
                self.spare = Some(frame);
                continue;
            }
            frame.set_received(len);
            // A small frame read into a GSO buffer moves to a regular one; the GSO buffer
            // stays spare.
            if let Some(big) = pool.compact(&mut frame) {
                self.spare = Some(big);
            }
            frame.meta.vnet = meta;
            out.push(frame);
            st.frames += 1;
        }
        Ok(st)
    }

    fn send_batch(&mut self, queue: &mut VecDeque<Frame>) -> Result<SendStats, LinkError> {
        let mut st = SendStats::default();
        let vl = self.vnet_len;
        while let Some(frame) = queue.front_mut() {
            let len = frame.len();
            let hdr = frame.meta.vnet.to_bytes();
            let res = if vl > 0 && frame.is_shared() {
                // A capture still reads the buffer (see `Frame::share`): the header goes from
                // here, not from the headroom, so the frame is not copied.
                let mut pre = [0u8; VNET_HDR_MRG_LEN];
                pre[..VNET_HDR_LEN].copy_from_slice(&hdr);
                let iov = [
                    IoSlice::new(&pre[..vl.min(VNET_HDR_MRG_LEN)]),
                    IoSlice::new(frame.data()),
                ];
                crate::sys::io::writev(&self.fd, &iov)
            } else {
                let buf = frame.with_prefix_mut(vl);
                if buf.len() != vl + len {
                    // Not enough headroom for the header: cannot happen for pooled frames.
                    queue.pop_front();
                    st.errors += 1;
                    continue;
                }
                if vl > 0 {
                    buf[..VNET_HDR_LEN].copy_from_slice(&hdr);
                    buf[VNET_HDR_LEN..vl].fill(0);
                }
                crate::sys::io::write(&self.fd, buf)
            };
            let err = match res {
                Ok(_) => {
                    queue.pop_front();
                    st.frames += 1;
                    st.bytes += len;
                    continue;
                }
                Err(err) => err,
            };
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) => break,
                _ => {
                    let e = classify(err);
                    if e.is_fatal() {
                        return Err(e);
                    }
                    // EIO (interface down), EINVAL (malformed), ...: drop this frame.
                    tracing::trace!(tap = %self.name, error = %e, "TAP write dropped a frame");
                    queue.pop_front();
                    st.errors += 1;
                }
            }
        }
        Ok(st)
    }
}
