//! Frames and the buffer pool.
//!
//! # Theory of operation
//!
//! Every frame that crosses the switch lives in a [`Frame`]: a fixed-size buffer taken from a
//! [`FramePool`], the frame bytes at `[start, start + len)`, and [`FrameMeta`] carrying the
//! virtio-net header metadata that TAP and AF_PACKET links hand us. A frame always keeps
//! [`HEADROOM`] free bytes in front of its data so that a link can prepend a virtio-net header,
//! a VLAN tag or a VXLAN encapsulation in place, without copying the payload.
//!
//! Buffers are recycled: dropping a `Frame` returns its buffer to the pool it came from, so the
//! forwarding path allocates only while the pool warms up. The pool keeps at most `max_free`
//! idle buffers; beyond that, dropped buffers are freed, so memory is bounded by what is in
//! flight (the per-port rings are bounded) plus `max_free`.
//!
//! Frames are *moved* from the RX batch into the egress ring; only a flood to several ports
//! copies (every destination but the last gets a copy, the last gets the original).
//!
//! A live capture reads a large frame without copying it: [`Frame::share`] puts the buffer
//! behind an `Arc` ([`SharedBuf`]) the capture holds until it has written the bytes. The frame
//! goes on as before; any write to it while the buffer is still shared copies it first (copy
//! on write), so a capture sees the bytes as they were, and the last holder returns the buffer
//! to the pool.
//!
//! # Sharing the GSO buffers
//!
//! The 64 KiB buffers are few (a fixed number in flight) and shared by every port of the pool.
//! A port whose link stopped writing (a guest that no longer reads its TAP, a memory peer that
//! stalled) keeps the frames queued for it, its TX ring and its link's own queue, and each of
//! them can be a 64 KiB buffer: left alone, one stalled port would soon hold every GSO buffer and
//! every other port's bulk TCP would break (GSO frames arriving with no buffer to hold them are
//! dropped). So a port is only *admitted* a GSO frame of the shared pool while it holds fewer of them than there
//! are free ones ([`Frame::charge_to`]): the dynamic threshold of shared-memory switches
//! (Choudhury and Hahne, 1998, with α = 1). A frame refused is dropped and counted at its egress
//! port like a full ring (`ring_full`): a port that does not drain loses frames either way, and
//! its TCP senders back off. With `k` ports stalled, each holds at most `limit / (k + 1)` buffers
//! and as many stay free for the ports that flow, so the pool is never held whole; a lone busy
//! port that flows may use half of it, which is plenty for a full ring's burst. The charge
//! travels with the frame (into the link's queue, through segmenting) and is released when the
//! frame is dropped, sent or not, so no path can leak it. Frames not in a GSO buffer are never
//! refused here, nor frames of another pool (a gateway's private pool, which falls back to heap
//! buffers when it runs out, so holding it starves no one).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crossbeam_queue::ArrayQueue;

/// Free bytes kept in front of every frame's data: room for a 12-byte virtio-net header, an
/// 802.1Q tag and a VXLAN-over-IPv6 outer header (14 + 40 + 8 + 8 = 70 bytes).
pub const HEADROOM: usize = 128;

/// Size of the legacy `struct virtio_net_hdr` used by TAP (`IFF_VNET_HDR`) and AF_PACKET
/// (`PACKET_VNET_HDR`).
pub const VNET_HDR_LEN: usize = 10;

/// The virtio-net header of a frame (see `include/uapi/linux/virtio_net.h`). All zero means
/// "a plain, fully checksummed frame", which is what every link accepts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VnetHdr {
    /// `VIRTIO_NET_HDR_F_*` flags (1 = needs checksum, 2 = data valid).
    pub flags: u8,
    /// `VIRTIO_NET_HDR_GSO_*` type (0 = none, 1 = TCPv4, 3 = UDP, 4 = TCPv6, 0x80 = ECN).
    pub gso_type: u8,
    /// Length of the headers to replicate in each segment.
    pub hdr_len: u16,
    /// Maximum segment size for GSO.
    pub gso_size: u16,
    /// Where checksumming starts.
    pub csum_start: u16,
    /// Offset after `csum_start` where the checksum is stored.
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Flag: the checksum at `csum_start + csum_offset` still has to be computed.
    pub const F_NEEDS_CSUM: u8 = 1;

    /// Parses the 10-byte little-endian wire form (the byte order of the host, which is what the
    /// kernel uses for legacy virtio-net headers on x86 and arm64).
    pub fn from_bytes(b: &[u8; VNET_HDR_LEN]) -> Self {
        VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16::from_ne_bytes([b[2], b[3]]),
            gso_size: u16::from_ne_bytes([b[4], b[5]]),
            csum_start: u16::from_ne_bytes([b[6], b[7]]),
            csum_offset: u16::from_ne_bytes([b[8], b[9]]),
        }
    }

    /// Writes the 10-byte wire form.
    pub fn to_bytes(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
        b
    }

    /// True when the frame is a plain one: no pending checksum, no GSO.
    pub fn is_plain(&self) -> bool {
        self.flags & Self::F_NEEDS_CSUM == 0 && self.gso_type == 0
    }
}

/// Metadata that travels with a frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameMeta {
    /// Offload metadata from (or for) a virtio-net header.
    pub vnet: VnetHdr,
    /// The bridge port the frame came in on (its `PortId` number; 0: not from a port). Set by
    /// the bridge's forwarding decision, so an endpoint such as the gateway knows which port
    /// sent what it receives without trusting anything inside the frame.
    pub ingress: u32,
}

/// Largest frame a GSO buffer holds: a 64 KiB IP packet (the most a virtio-net header can
/// describe) behind an Ethernet header and two VLAN tags.
pub const GSO_MAX_FRAME: usize = 65_535 + 14 + 8;

/// Idle GSO buffers a pool keeps (each is 64 KiB).
const GSO_MAX_FREE: usize = 32;

struct SizeClass {
    free: ArrayQueue<Box<[u8]>>,
    buf_size: usize,
}

impl SizeClass {
    fn new(max_frame: usize, max_free: usize) -> Self {
        SizeClass {
            free: ArrayQueue::new(max_free.max(1)),
            buf_size: HEADROOM + max_frame,
        }
    }

    fn take(&self) -> Box<[u8]> {
        self.free
            .pop()
            .unwrap_or_else(|| vec![0u8; self.buf_size].into_boxed_slice())
    }
}

impl PoolInner {
    /// A buffer of `size` bytes from the size class that has them (for a copy on write: the
    /// frame keeps its place in the GSO accounting, so none is charged here).
    fn take_sized(&self, size: usize) -> Option<Box<[u8]>> {
        if size == self.small.buf_size {
            Some(self.small.take())
        } else {
            self.large
                .as_ref()
                .filter(|l| l.buf_size == size)
                .map(SizeClass::take)
        }
    }

    /// Puts an idle buffer back on its size class's free list (a full list frees it).
    fn recycle(&self, buf: Box<[u8]>) {
        if buf.len() == self.small.buf_size {
            let _ = self.small.free.push(buf);
        } else if let Some(large) = &self.large
            && buf.len() == large.buf_size
        {
            let _ = large.free.push(buf);
        }
    }
}

struct PoolInner {
    small: SizeClass,
    /// Buffers for GSO frames (up to [`GSO_MAX_FRAME`]), when the pool has them.
    large: Option<SizeClass>,
    /// Large buffers in flight (idle ones in the free list are not counted).
    large_live: AtomicUsize,
    /// Most large buffers allowed in flight at once.
    large_limit: usize,
}

/// Longest frame [`FramePool::compact`] still moves out of a GSO buffer when the pool's regular
/// buffers are jumbo ones.
pub const COMPACT_MAX: usize = 2048;

/// A pool of frame buffers in two size classes: buffers for frames up to the MTU, and (when
/// built with [`FramePool::with_gso`]) 64 KiB buffers for GSO frames from offload-capable links,
/// of which at most a fixed number are in flight at once. Cloning is cheap (an `Arc`); clones
/// share the buffers.
#[derive(Clone)]
pub struct FramePool {
    inner: Arc<PoolInner>,
}

impl std::fmt::Debug for FramePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FramePool")
            .field("buf_size", &self.inner.small.buf_size)
            .field("free", &self.inner.small.free.len())
            .field("large_live", &self.inner.large_live.load(Ordering::Relaxed))
            .finish()
    }
}

impl FramePool {
    /// A pool whose buffers hold frames of up to `max_frame` bytes (plus [`HEADROOM`]), keeping
    /// at most `max_free` idle buffers around. It has no GSO buffers.
    pub fn new(max_frame: usize, max_free: usize) -> Self {
        Self::build(max_frame, max_free, None)
    }

    /// Like [`FramePool::new`], plus GSO buffers of [`GSO_MAX_FRAME`] bytes, at most
    /// `large_limit` of them in flight at once (the memory bound for offloaded traffic:
    /// `large_limit` x 64 KiB).
    pub fn with_gso(max_frame: usize, max_free: usize, large_limit: usize) -> Self {
        Self::build(max_frame, max_free, Some(large_limit))
    }

    fn build(max_frame: usize, max_free: usize, large_limit: Option<usize>) -> Self {
        let large = large_limit
            .filter(|_| max_frame < GSO_MAX_FRAME)
            .map(|l| SizeClass::new(GSO_MAX_FRAME, GSO_MAX_FREE.min(l.max(1))));
        FramePool {
            inner: Arc::new(PoolInner {
                small: SizeClass::new(max_frame, max_free),
                large,
                large_live: AtomicUsize::new(0),
                large_limit: large_limit.unwrap_or(0),
            }),
        }
    }

    /// Largest frame a regular buffer of this pool holds.
    pub fn max_frame(&self) -> usize {
        self.inner.small.buf_size - HEADROOM
    }

    /// Largest frame any buffer of this pool holds: [`GSO_MAX_FRAME`] when the pool has GSO
    /// buffers (or its regular buffers are that large), else [`Self::max_frame`].
    pub fn max_large_frame(&self) -> usize {
        match &self.inner.large {
            Some(l) => l.buf_size - HEADROOM,
            None => self.max_frame(),
        }
    }

    /// Idle regular buffers currently held by the pool.
    pub fn idle(&self) -> usize {
        self.inner.small.free.len()
    }

    /// GSO buffers in flight now (idle ones in the free list are not counted).
    pub fn large_in_use(&self) -> usize {
        self.inner.large_live.load(Ordering::Relaxed)
    }

    fn frame(&self, buf: Box<[u8]>) -> Frame {
        Frame {
            buf: Some(Buf::Owned(buf)),
            start: HEADROOM,
            len: 0,
            meta: FrameMeta::default(),
            pool: Some(self.inner.clone()),
            charge: None,
        }
    }

    /// Takes an empty frame (length 0) from the pool, allocating only if the pool is empty.
    pub fn alloc(&self) -> Frame {
        self.frame(self.inner.small.take())
    }

    /// Takes an empty frame with room for [`Self::max_large_frame`] bytes. Without GSO buffers
    /// this is [`Self::alloc`]; `None` when the limit of GSO buffers in flight is reached.
    pub fn alloc_large(&self) -> Option<Frame> {
        let Some(large) = &self.inner.large else {
            return Some(self.alloc());
        };
        let inner = &self.inner;
        let prev = inner.large_live.fetch_add(1, Ordering::AcqRel);
        if prev >= inner.large_limit {
            inner.large_live.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(self.frame(large.take()))
    }

    /// Moves a small frame out of a GSO buffer: returns a regular-buffer copy and the emptied
    /// GSO frame (for the link to read into next), or `None` when `frame` already sits in the
    /// right buffer. Keeps 64 KiB buffers for the frames that need them (a cheap copy for a
    /// small frame). Not for frames over [`COMPACT_MAX`] when regular buffers are jumbo
    /// (16 KiB and more): there the copy is of up to 64 KiB per frame (17 % of the loop at MTU
    /// 65520, `bench/results/profile.md`) and a regular buffer could hold the next GSO frame
    /// almost as well.
    pub fn compact(&self, frame: &mut Frame) -> Option<Frame> {
        if frame.capacity() <= self.max_frame()
            || frame.len() > self.max_frame()
            || (self.max_frame() >= 16 * 1024 && frame.len() > COMPACT_MAX)
        {
            return None;
        }
        let mut small = self.frame_from(frame.data())?;
        small.meta = frame.meta;
        Some(std::mem::replace(frame, small))
    }

    /// A frame holding a copy of `data` (in a GSO buffer if it needs one), or `None` if `data`
    /// is longer than [`Self::max_large_frame`] or no GSO buffer is free.
    pub fn frame_from(&self, data: &[u8]) -> Option<Frame> {
        self.frame_from_parts(data, &[])
    }

    /// A frame holding `head` followed by `tail` (e.g. replicated headers and one segment's
    /// payload), with the same size rules as [`Self::frame_from`].
    pub fn frame_from_parts(&self, head: &[u8], tail: &[u8]) -> Option<Frame> {
        let len = head.len() + tail.len();
        let mut f = if len <= self.max_frame() {
            self.alloc()
        } else if len <= self.max_large_frame() {
            self.alloc_large()?
        } else {
            return None;
        };
        let area = &mut f.buf_mut()[HEADROOM..HEADROOM + len];
        area[..head.len()].copy_from_slice(head);
        area[head.len()..].copy_from_slice(tail);
        f.len = len;
        Some(f)
    }
}

/// A frame's buffer: its own, or shared read-only with a live capture (see [`Frame::share`]).
enum Buf {
    Owned(Box<[u8]>),
    Shared(Arc<SharedBuf>),
}

/// A frame buffer shared, read-only, between a frame and the captures that hold it until
/// written. The last holder to let go returns it to its pool (without touching the pool's GSO
/// accounting: that is the frame's, released when the frame is dropped).
pub struct SharedBuf {
    buf: Box<[u8]>,
    pool: Option<Arc<PoolInner>>,
}

impl SharedBuf {
    /// The whole buffer (headroom included).
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Bytes of memory the buffer holds (headroom included, as [`Frame::buffer_size`]).
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }
}

impl std::fmt::Debug for SharedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedBuf")
            .field("capacity", &self.buf.len())
            .finish()
    }
}

impl Drop for SharedBuf {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        if let Some(pool) = self.pool.take()
            && !buf.is_empty()
        {
            pool.recycle(buf);
        }
    }
}

/// One Ethernet frame in a pooled buffer. Dropping it returns the buffer to its pool.
pub struct Frame {
    buf: Option<Buf>,
    start: usize,
    len: usize,
    /// Offload metadata.
    pub meta: FrameMeta,
    pool: Option<Arc<PoolInner>>,
    /// The GSO share this frame counts against (see the module docs), released on drop.
    charge: Option<Arc<AtomicUsize>>,
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frame")
            .field("len", &self.len)
            .field("meta", &self.meta)
            .finish()
    }
}

impl Frame {
    /// A frame that owns a fresh heap buffer, not tied to any pool (for tests and embedders).
    pub fn from_slice(data: &[u8]) -> Frame {
        Frame::from_parts(data, &[])
    }

    /// Like [`Frame::from_slice`], for `head` followed by `tail` (the heap counterpart of
    /// [`FramePool::frame_from_parts`]).
    pub fn from_parts(head: &[u8], tail: &[u8]) -> Frame {
        let len = head.len() + tail.len();
        let mut buf = Vec::with_capacity(HEADROOM + len);
        buf.resize(HEADROOM, 0);
        buf.extend_from_slice(head);
        buf.extend_from_slice(tail);
        Frame {
            buf: Some(Buf::Owned(buf.into_boxed_slice())),
            start: HEADROOM,
            len,
            meta: FrameMeta::default(),
            pool: None,
            charge: None,
        }
    }

    fn buf(&self) -> &[u8] {
        // Invariant: `buf` is `Some` for the whole life of the frame; it is taken only in `drop`.
        match &self.buf {
            Some(Buf::Owned(b)) => b,
            Some(Buf::Shared(s)) => &s.buf,
            None => &[],
        }
    }

    /// The buffer, writable: a buffer still shared with a capture is first copied (copy on
    /// write), so what the capture holds never changes under it.
    fn buf_mut(&mut self) -> &mut [u8] {
        if let Some(Buf::Shared(shared)) = &mut self.buf {
            let owned = match Arc::get_mut(shared) {
                // The captures let go of it: it is the frame's again.
                Some(only) => std::mem::take(&mut only.buf),
                None => {
                    let size = shared.buf.len();
                    let mut b = self
                        .pool
                        .as_ref()
                        .and_then(|p| p.take_sized(size))
                        .unwrap_or_else(|| vec![0u8; size].into_boxed_slice());
                    let (s, l) = (self.start, self.len);
                    b[s..s + l].copy_from_slice(&shared.buf[s..s + l]);
                    b
                }
            };
            self.buf = Some(Buf::Owned(owned));
        }
        match &mut self.buf {
            Some(Buf::Owned(b)) => b,
            _ => &mut [],
        }
    }

    /// Shares the frame's buffer, read-only, with a capture: the returned handle reads the
    /// bytes at [`Self::data_range`] as they are now, for as long as it is held, with no copy.
    /// The frame goes on as before; should it be written to while the buffer is still held, it
    /// is copied first ([`Self::data_mut`] and every other writer does so).
    pub fn share(&mut self) -> Arc<SharedBuf> {
        if let Some(Buf::Owned(b)) = &mut self.buf {
            let buf = std::mem::take(b);
            self.buf = Some(Buf::Shared(Arc::new(SharedBuf {
                buf,
                pool: self.pool.clone(),
            })));
        }
        match &self.buf {
            Some(Buf::Shared(s)) => s.clone(),
            // Unreachable (the frame's buffer is only taken in `drop`): an empty share.
            _ => Arc::new(SharedBuf {
                buf: Box::default(),
                pool: None,
            }),
        }
    }

    /// True while the frame's buffer is shared with a capture that has not written it yet:
    /// a link that would write a prefix in front of the data sends it from elsewhere instead
    /// (see [`crate::link::tap`]), or the write copies the frame.
    pub fn is_shared(&self) -> bool {
        matches!(&self.buf, Some(Buf::Shared(s)) if Arc::strong_count(s) > 1)
    }

    /// Where the frame's bytes sit in its buffer ([`SharedBuf::bytes`]).
    pub fn data_range(&self) -> std::ops::Range<usize> {
        self.start..self.start + self.len
    }

    /// The frame bytes.
    pub fn data(&self) -> &[u8] {
        &self.buf()[self.start..self.start + self.len]
    }

    /// The frame bytes, mutable.
    pub fn data_mut(&mut self) -> &mut [u8] {
        let (s, l) = (self.start, self.len);
        &mut self.buf_mut()[s..s + l]
    }

    /// Length of the frame in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a zero-length frame.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of memory the frame's buffer holds (headroom included): what a capture sharing it
    /// holds ([`SharedBuf::capacity`]).
    pub fn buffer_size(&self) -> usize {
        self.buf().len()
    }

    /// Largest length this frame's buffer can hold without giving up headroom.
    pub fn capacity(&self) -> usize {
        self.buf().len() - HEADROOM
    }

    /// The whole buffer from `HEADROOM - pre` to its end, for a link to read into: `pre` bytes of
    /// prefix (e.g. a virtio-net header) followed by room for the frame. `pre` must not exceed
    /// [`HEADROOM`]; larger values are clamped.
    pub fn recv_area(&mut self, pre: usize) -> &mut [u8] {
        let pre = pre.min(HEADROOM);
        &mut self.buf_mut()[HEADROOM - pre..]
    }

    /// Sets the frame length after a link filled [`Self::recv_area`]; the data starts at
    /// [`HEADROOM`]. The length is clamped to the capacity.
    pub fn set_received(&mut self, len: usize) {
        self.start = HEADROOM;
        self.len = len.min(self.capacity());
    }

    /// Sets the frame length (data at the default offset), clamped to the capacity; for code that
    /// writes frames into [`Self::data_mut`] after a resize.
    pub fn set_len(&mut self, len: usize) {
        self.set_received(len);
    }

    /// The `pre` bytes in front of the data followed by the data, for a link that sends a prefix
    /// (e.g. a virtio-net header) together with the frame; `pre` is clamped to the headroom.
    pub fn with_prefix_mut(&mut self, pre: usize) -> &mut [u8] {
        let pre = pre.min(self.start);
        let (s, l) = (self.start, self.len);
        &mut self.buf_mut()[s - pre..s + l]
    }

    /// Inserts an 802.1Q/802.1ad tag (`tpid`, `tci`) after the MAC addresses, in place: the 12
    /// address bytes move 4 bytes into the headroom. The virtio-net offsets in [`Self::meta`]
    /// move with the payload. False (frame unchanged) when it is shorter than the addresses or
    /// no headroom is left.
    pub fn push_vlan(&mut self, tpid: u16, tci: u16) -> bool {
        if self.len < 12 || self.start < 4 {
            return false;
        }
        let s = self.start;
        let buf = self.buf_mut();
        if buf.len() < s + 12 {
            return false;
        }
        buf.copy_within(s..s + 12, s - 4);
        buf[s + 8..s + 10].copy_from_slice(&tpid.to_be_bytes());
        buf[s + 10..s + 12].copy_from_slice(&tci.to_be_bytes());
        self.start -= 4;
        self.len += 4;
        self.shift_vnet(4);
        true
    }

    /// Removes the tag after the MAC addresses (the 4 bytes at offset 12), in place: the 12
    /// address bytes move 4 bytes forward. Returns the TCI, or `None` (frame unchanged) when
    /// the frame is shorter than an Ethernet header plus a tag. The caller checks the TPID.
    pub fn pop_vlan(&mut self) -> Option<u16> {
        if self.len < 18 {
            return None;
        }
        let s = self.start;
        let buf = self.buf_mut();
        let tci = u16::from_be_bytes([buf[s + 14], buf[s + 15]]);
        buf.copy_within(s..s + 12, s + 4);
        self.start += 4;
        self.len -= 4;
        self.shift_vnet(-4);
        Some(tci)
    }

    /// Moves the virtio-net header's offsets (checksum start, header length) by `by` bytes, as
    /// a tag pushed or popped in front of them moves the payload.
    fn shift_vnet(&mut self, by: i32) {
        let v = &mut self.meta.vnet;
        let shift = |x: u16| (i32::from(x) + by).clamp(0, i32::from(u16::MAX)) as u16;
        if v.flags & VnetHdr::F_NEEDS_CSUM != 0 {
            v.csum_start = shift(v.csum_start);
        }
        if v.hdr_len != 0 {
            v.hdr_len = shift(v.hdr_len);
        }
    }

    /// True when the frame sits in one of its pool's 64 KiB GSO buffers.
    pub fn in_gso_buffer(&self) -> bool {
        let Some(pool) = &self.pool else {
            return false;
        };
        let size = self.buf().len();
        pool.large.as_ref().is_some_and(|l| size == l.buf_size)
    }

    /// Admits the frame to a holder (an egress port) that has `held` GSO buffers of `shared` in
    /// flight: true, and the frame counts in `held` until it is dropped, when it is not in a GSO
    /// buffer of `shared` or the holder holds fewer of them than `shared` has free; false (the
    /// caller drops it) otherwise. See the module docs. A frame charged to another holder moves
    /// to this one.
    pub fn charge_to(&mut self, shared: &FramePool, held: &Arc<AtomicUsize>) -> bool {
        let same = self
            .pool
            .as_ref()
            .is_some_and(|p| Arc::ptr_eq(p, &shared.inner));
        if !same || !self.in_gso_buffer() {
            return true;
        }
        if let Some(old) = self.charge.take() {
            old.fetch_sub(1, Ordering::AcqRel);
        }
        let Some(pool) = &self.pool else {
            return true;
        };
        let free = pool
            .large_limit
            .saturating_sub(pool.large_live.load(Ordering::Acquire));
        if held.load(Ordering::Acquire) >= free {
            return false;
        }
        held.fetch_add(1, Ordering::AcqRel);
        self.charge = Some(held.clone());
        true
    }

    /// A copy of this frame in a buffer from `pool` (used when a flood needs several copies).
    /// Returns `None` if the frame does not fit the pool's buffers.
    pub fn clone_in(&self, pool: &FramePool) -> Option<Frame> {
        let mut f = pool.frame_from(self.data())?;
        f.meta = self.meta;
        Some(f)
    }
}

impl Drop for Frame {
    fn drop(&mut self) {
        if let Some(held) = self.charge.take() {
            held.fetch_sub(1, Ordering::AcqRel);
        }
        let (Some(buf), Some(pool)) = (self.buf.take(), self.pool.take()) else {
            return;
        };
        let size = match &buf {
            Buf::Owned(b) => b.len(),
            Buf::Shared(s) => s.buf.len(),
        };
        // The frame's GSO buffer is no longer in flight, even while a capture still holds it
        // (bounded by the capture's queue, not by the pool's limit).
        if pool.large.as_ref().is_some_and(|l| size == l.buf_size) {
            pool.large_live.fetch_sub(1, Ordering::AcqRel);
        }
        match buf {
            // A full free list just frees the buffer.
            Buf::Owned(b) => pool.recycle(b),
            // The last holder (this frame or a capture) returns it.
            Buf::Shared(s) => drop(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vlan_push_pop_in_place() {
        let mut data: Vec<u8> = (0u8..12).collect();
        data.extend([0x08, 0x00, 0xaa, 0xbb]);
        let pool = FramePool::new(64, 4);
        let mut f = pool.frame_from(&data).expect("fits");
        f.meta.vnet = VnetHdr {
            flags: VnetHdr::F_NEEDS_CSUM,
            csum_start: 34,
            hdr_len: 54,
            ..VnetHdr::default()
        };
        assert!(f.push_vlan(0x8100, 0x200a));
        assert_eq!(&f.data()[..12], &data[..12]);
        assert_eq!(&f.data()[12..18], &[0x81, 0x00, 0x20, 0x0a, 0x08, 0x00]);
        assert_eq!(f.len(), data.len() + 4);
        assert_eq!((f.meta.vnet.csum_start, f.meta.vnet.hdr_len), (38, 58));
        // A second tag goes outside the first (Q-in-Q).
        assert!(f.push_vlan(0x88a8, 5));
        assert_eq!(
            &f.data()[12..20],
            &[0x88, 0xa8, 0, 5, 0x81, 0x00, 0x20, 0x0a]
        );
        assert_eq!(f.pop_vlan(), Some(5));
        assert_eq!(f.pop_vlan(), Some(0x200a));
        assert_eq!(f.data(), &data[..]);
        assert_eq!((f.meta.vnet.csum_start, f.meta.vnet.hdr_len), (34, 54));
        // Too short to hold a tag.
        let mut short = pool.frame_from(&data[..14]).expect("fits");
        assert_eq!(short.pop_vlan(), None);
        let mut tiny = pool.frame_from(&data[..6]).expect("fits");
        assert!(!tiny.push_vlan(0x8100, 1));
        assert_eq!(tiny.data(), &data[..6]);
    }

    #[test]
    fn a_shared_buffer_is_copied_on_write_and_recycled_by_its_last_holder() {
        let pool = FramePool::with_gso(1514, 4, 2);
        let mut f = pool.frame_from(b"abcdef").expect("fits");
        let held = f.share();
        assert!(f.is_shared());
        assert_eq!(&held.bytes()[f.data_range()], b"abcdef");
        // Reading does not copy; writing does, and the holder still sees the old bytes.
        assert_eq!(f.data(), b"abcdef");
        f.data_mut()[0] = b'X';
        assert!(!f.is_shared());
        assert_eq!(f.data(), b"Xbcdef");
        assert_eq!(&held.bytes()[HEADROOM..HEADROOM + 6], b"abcdef");
        drop(f);
        assert_eq!(pool.idle(), 1, "the frame's copy went back");
        drop(held);
        assert_eq!(
            pool.idle(),
            2,
            "the shared buffer went back when its holder let go"
        );

        // The frame goes first: the holder returns the buffer; a GSO buffer leaves the pool's
        // in-flight count with its frame.
        let mut g = pool.alloc_large().expect("GSO buffer");
        g.set_received(5000);
        let held = g.share();
        let range = g.data_range();
        drop(g);
        assert_eq!(pool.large_in_use(), 0);
        assert_eq!(held.bytes()[range].len(), 5000);
        drop(held);
        assert_eq!(pool.inner.large.as_ref().map(|l| l.free.len()), Some(1));

        // Shared, then let go before any write: the frame takes its buffer back, no copy.
        let mut h = pool.frame_from(b"xyz").expect("fits");
        let idle = pool.idle();
        drop(h.share());
        h.data_mut()[0] = b'Y';
        assert_eq!(h.data(), b"Yyz");
        assert_eq!(pool.idle(), idle, "no buffer taken for a copy");
    }

    #[test]
    fn pool_recycles_buffers() {
        let pool = FramePool::new(1514, 4);
        let f = pool.frame_from(&[1, 2, 3]).expect("fits");
        assert_eq!(f.data(), &[1, 2, 3]);
        assert_eq!(pool.idle(), 0);
        drop(f);
        assert_eq!(pool.idle(), 1);
        let g = pool.alloc();
        assert_eq!(pool.idle(), 0);
        assert!(g.is_empty());
    }

    #[test]
    fn oversize_is_refused() {
        let pool = FramePool::new(64, 4);
        assert!(pool.frame_from(&[0u8; 65]).is_none());
        assert!(pool.frame_from(&[0u8; 64]).is_some());
    }

    #[test]
    fn pool_keeps_at_most_max_free() {
        let pool = FramePool::new(64, 2);
        let frames: Vec<_> = (0..5).map(|_| pool.alloc()).collect();
        drop(frames);
        assert_eq!(pool.idle(), 2);
    }

    #[test]
    fn recv_area_and_prefix() {
        let pool = FramePool::new(64, 2);
        let mut f = pool.alloc();
        let area = f.recv_area(VNET_HDR_LEN);
        area[..VNET_HDR_LEN].copy_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        area[VNET_HDR_LEN..VNET_HDR_LEN + 3].copy_from_slice(b"abc");
        f.set_received(3);
        assert_eq!(f.data(), b"abc");
        let p = f.with_prefix_mut(VNET_HDR_LEN);
        assert_eq!(p.len(), VNET_HDR_LEN + 3);
        assert_eq!(p[0], 1);
    }

    #[test]
    fn compact_leaves_big_frames_of_a_jumbo_pool_in_place() {
        let pool = FramePool::with_gso(65_542, 4, 2);
        let mut f = pool.alloc_large().expect("GSO buffer");
        f.set_received(9000);
        assert!(pool.compact(&mut f).is_none(), "no 9000-byte copy");
        let mut g = pool.alloc_large().expect("GSO buffer");
        g.set_received(COMPACT_MAX);
        assert!(pool.compact(&mut g).is_some(), "a small frame still moves");
    }

    #[test]
    fn compact_moves_small_frames_out_of_gso_buffers() {
        let pool = FramePool::with_gso(1514, 4, 2);
        let mut f = pool.alloc_large().expect("GSO buffer");
        f.recv_area(0)[..3].copy_from_slice(b"abc");
        f.set_received(3);
        f.meta.vnet.flags = VnetHdr::F_NEEDS_CSUM;
        let big = pool.compact(&mut f).expect("moved");
        assert_eq!(f.data(), b"abc");
        assert_eq!(f.capacity(), 1514);
        assert_eq!(f.meta.vnet.flags, VnetHdr::F_NEEDS_CSUM, "metadata kept");
        assert_eq!(big.capacity(), GSO_MAX_FRAME);
        assert!(pool.compact(&mut f).is_none(), "already small");
        let mut g = pool.alloc_large().expect("second GSO buffer");
        assert!(pool.alloc_large().is_none(), "limit of 2 in flight");
        g.set_received(5000);
        assert!(pool.compact(&mut g).is_none(), "a large frame stays");
        drop((big, g));
        assert_eq!(pool.large_in_use(), 0);
    }

    #[test]
    fn a_holder_gets_gso_buffers_only_while_it_holds_fewer_than_are_free() {
        let pool = FramePool::with_gso(1514, 4, 8);
        let stalled = Arc::new(AtomicUsize::new(0));
        let mut kept = Vec::new();
        let mut refused = 0;
        for _ in 0..20 {
            let Some(mut f) = pool.alloc_large() else {
                panic!("the pool ran dry: {} held", stalled.load(Ordering::Relaxed));
            };
            if f.charge_to(&pool, &stalled) {
                kept.push(f);
            } else {
                refused += 1;
            }
        }
        assert_eq!(kept.len(), 4, "half of 8");
        assert_eq!(refused, 16);
        // A second holder still gets buffers, and the two leave some free.
        let other = Arc::new(AtomicUsize::new(0));
        let mut kept2 = Vec::new();
        while let Some(mut f) = pool.alloc_large() {
            if !f.charge_to(&pool, &other) {
                break;
            }
            kept2.push(f);
        }
        assert_eq!(kept2.len(), 2);
        assert!(pool.large_in_use() < 8);
        // Small frames are never refused; dropping releases the charge.
        assert!(pool.alloc().charge_to(&pool, &stalled));
        drop(kept);
        assert_eq!(stalled.load(Ordering::Relaxed), 0);
        // Another pool's frames (a gateway's, which falls back to the heap) are not counted.
        let private = FramePool::with_gso(1514, 4, 8);
        let mut f = private.alloc_large().expect("GSO buffer");
        assert!(f.charge_to(&pool, &stalled));
        assert_eq!(stalled.load(Ordering::Relaxed), 0);
        drop(kept2);
        assert_eq!((other.load(Ordering::Relaxed), pool.large_in_use()), (0, 0));
    }

    #[test]
    fn vnet_roundtrip() {
        let h = VnetHdr {
            flags: 1,
            gso_type: 1,
            hdr_len: 54,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
        };
        assert_eq!(VnetHdr::from_bytes(&h.to_bytes()), h);
        assert!(!h.is_plain());
        assert!(VnetHdr::default().is_plain());
    }
}
