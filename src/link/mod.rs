//! Links: the OS shims that move frames between a file descriptor and the switch.
//!
//! # Theory of operation
//!
//! A [`Link`] is the only code that touches a port's file descriptor. It is non-blocking and
//! batch-oriented: [`Link::recv_batch`] reads frames until the fd would block or the batch is
//! full; [`Link::send_batch`] writes queued frames until the fd would block. The engine polls
//! [`Link::as_raw_fd`] with mio (edge-triggered, readable and writable) and calls these two
//! methods; nothing else in the crate does I/O on a port.
//!
//! Kinds:
//! - [`tap`]: a TAP device, created by name, created inside another network namespace, or
//!   adopted from an fd a container runtime hands us; opened with `IFF_VNET_HDR` when the kernel
//!   offers it.
//! - [`packet`]: an `AF_PACKET` socket bound to an existing interface (veth, a NIC), batched with
//!   `recvmmsg`/`sendmmsg`.
//! - [`stream`], [`dgram`]: a VM (QEMU `-netdev stream` / `-netdev dgram`) over a UNIX socket;
//!   [`vhost_user`]: a VM's virtio-net queues in its shared memory (QEMU `-netdev vhost-user`).
//! - [`vxlan`]: a VXLAN tunnel (RFC 7348) to remote VTEPs over host UDP sockets.
//! - [`memory`]: an in-process pair for tests, benchmarks, fuzzing and embedders.
//!
//! Errors: `WouldBlock` never leaves a link (it ends a batch). Any other error from
//! `recv_batch` means the link is gone (its TAP deleted, its namespace destroyed) and the engine
//! removes the port. Errors from `send_batch` for a single frame are counted as drops by the
//! caller unless [`LinkError::is_fatal`] says the link is gone.

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;

use crate::frame::{Frame, FramePool};

pub mod dgram;
pub mod ifconfig;
pub mod memory;
pub mod netns;
pub mod packet;
pub(crate) mod rtnl;
pub mod stream;
pub mod tap;
pub mod userns;
pub mod vhost_user;
pub mod vxlan;

/// Error from a link operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// The link is gone for good (device deleted, peer closed); the port must be removed.
    #[error("link gone: {0}")]
    Gone(#[source] io::Error),
    /// A transient error on one frame or one call; the frame is dropped and counted.
    #[error("link error: {0}")]
    Transient(#[source] io::Error),
}

impl LinkError {
    /// True when the port using this link must be removed.
    pub fn is_fatal(&self) -> bool {
        matches!(self, LinkError::Gone(_))
    }

    /// True for a peer that went away in order (a VM shut down, a stream peer closed between
    /// frames): nothing to warn about.
    pub fn is_orderly_close(&self) -> bool {
        matches!(self, LinkError::Gone(e) if e.kind() == io::ErrorKind::ConnectionAborted)
    }
}

/// Capabilities a link reports to the engine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LinkCaps {
    /// Frames on this link carry a virtio-net header (offload metadata).
    pub vnet_hdr: bool,
    /// Largest frame (Ethernet header included, virtio-net header excluded) the link carries
    /// as a plain frame; GSO frames the link accepts ([`LinkCaps::tx`]) may be larger.
    pub max_frame: usize,
    /// Offloaded frames the link takes as they are on transmit; others are segmented or
    /// checksummed in software first ([`crate::offload::adapt`]).
    pub tx: crate::offload::Offloads,
    /// The link may hand over GSO frames of up to 64 KiB (it reads into GSO buffers).
    pub rx_gso: bool,
}

impl LinkCaps {
    /// A link of plain frames up to `max_frame` bytes: no virtio-net header, no offloads
    /// (stream, dgram and VXLAN links).
    pub fn plain(max_frame: usize) -> Self {
        LinkCaps {
            max_frame,
            ..LinkCaps::default()
        }
    }

    /// A kernel link (TAP, AF_PACKET) whose frames carry a virtio-net header when `vnet_hdr`:
    /// then the kernel takes any GSO frame on write (`virtio_net_hdr_to_skb` segments what the
    /// interface cannot), and it hands over GSO frames on read when `rx_gso`.
    pub fn kernel(vnet_hdr: bool, max_frame: usize, rx_gso: bool) -> Self {
        LinkCaps {
            vnet_hdr,
            max_frame,
            tx: if vnet_hdr {
                crate::offload::Offloads::ALL
            } else {
                crate::offload::Offloads::NONE
            },
            rx_gso,
        }
    }
}

/// A frame source and sink over one file descriptor. See the module docs.
pub trait Link: Send + 'static {
    /// Short name of the kind: `"tap"`, `"packet"`, `"memory"`.
    fn kind(&self) -> &'static str;

    /// The descriptor the engine polls for readability and writability (edge-triggered).
    fn as_raw_fd(&self) -> RawFd;

    /// What the link supports.
    fn caps(&self) -> LinkCaps;

    /// Reads up to `max` frames into buffers from `pool`, appending them to `out`. Returns the
    /// number read; fewer than `max` means the descriptor would block now. Frames longer than the
    /// pool's buffers are truncated by the kernel and must be dropped by the link (counted in
    /// the returned [`RecvStats`]).
    fn recv_batch(
        &mut self,
        pool: &FramePool,
        out: &mut Vec<Frame>,
        max: usize,
    ) -> Result<RecvStats, LinkError>;

    /// Writes frames from the front of `queue`, removing each one written (or dropped because the
    /// link refused it). Stops when the descriptor would block; what remains in `queue` is sent
    /// on the next writable event.
    fn send_batch(&mut self, queue: &mut VecDeque<Frame>) -> Result<SendStats, LinkError>;

    /// True when the link has frames to hand over that its descriptor may not signal (an
    /// in-process peer that answered during [`Link::send_batch`]): the engine then reads it
    /// again in its next turn. Default: false (the descriptor tells).
    fn wants_rx(&self) -> bool {
        false
    }
}

/// Outcome of one [`Link::recv_batch`] call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecvStats {
    /// Frames appended to the output.
    pub frames: usize,
    /// Frames read but dropped because they were larger than the buffer (truncated).
    pub oversize: usize,
    /// True when the descriptor returned `EAGAIN` (fully drained).
    pub drained: bool,
}

/// Outcome of one [`Link::send_batch`] call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SendStats {
    /// Frames written.
    pub frames: usize,
    /// Bytes written (frame bytes, without any virtio-net header).
    pub bytes: usize,
    /// Frames the link refused (e.g. `EMSGSIZE`, interface down) and dropped.
    pub errors: usize,
}

/// Classifies an I/O error from reading or writing a port's descriptor.
pub(crate) fn classify(err: io::Error) -> LinkError {
    match err.raw_os_error() {
        Some(libc::EBADF)
        | Some(libc::EBADFD)
        | Some(libc::ENODEV)
        | Some(libc::ENXIO)
        | Some(libc::EPIPE)
        | Some(libc::ECONNRESET) => LinkError::Gone(err),
        _ => LinkError::Transient(err),
    }
}

/// Error opening or configuring a link: what was being done, on which object, and the OS error.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct OpenError {
    /// What failed, naming the device or path (e.g. `"creating TAP t1"`).
    pub what: String,
    /// The underlying OS error.
    #[source]
    pub source: io::Error,
}

impl OpenError {
    /// An error for `what`, from `source`.
    pub fn new(what: impl Into<String>, source: io::Error) -> Self {
        OpenError {
            what: what.into(),
            source,
        }
    }

    /// An error for `what` from the calling thread's last OS error (`errno`).
    pub fn last_os(what: impl Into<String>) -> Self {
        Self::new(what, io::Error::last_os_error())
    }
}
