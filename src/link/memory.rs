//! In-process link pair.
//!
//! [`MemoryLink::pair`] returns two connected ends. Each direction is a bounded lock-free queue
//! of [`Frame`]s (frames are moved, never copied) plus an `eventfd` that the sender signals so
//! the receiving end can be polled by mio like any other descriptor. A full queue drops the frame
//! and counts it, like a full NIC ring. Dropping one end makes the other end's
//! [`Link::recv_batch`] report [`LinkError::Gone`] once the queue is drained.
//!
//! Used by the tests, the benchmarks and the fuzzers, and by embedders that bring their own
//! network stack (a unikernel, smoltcp, a VMM with its own virtio queue).

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;

use super::{Link, LinkCaps, LinkError, RecvStats, SendStats};
use crate::frame::{Frame, FramePool, GSO_MAX_FRAME};
use crate::offload::Offloads;
use crate::sys::io::EventFd;

struct Dir {
    queue: ArrayQueue<Frame>,
    efd: EventFd,
    closed: AtomicBool,
    dropped: AtomicU64,
}

impl Dir {
    fn new(capacity: usize) -> io::Result<Self> {
        Ok(Dir {
            queue: ArrayQueue::new(capacity.max(1)),
            efd: EventFd::new()?,
            closed: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
        })
    }

    fn signal(&self) {
        self.efd.signal();
    }

    fn reset(&self) {
        self.efd.reset();
    }
}

/// One end of an in-process link pair. See the module docs.
pub struct MemoryLink {
    rx: Arc<Dir>,
    tx: Arc<Dir>,
    max_frame: usize,
    offloads: Offloads,
}

impl std::fmt::Debug for MemoryLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryLink")
            .field("rx_queued", &self.rx.queue.len())
            .field("tx_queued", &self.tx.queue.len())
            .finish()
    }
}

impl MemoryLink {
    /// Two connected ends; each direction queues at most `capacity` frames of at most
    /// `max_frame` bytes.
    pub fn pair(capacity: usize, max_frame: usize) -> io::Result<(MemoryLink, MemoryLink)> {
        Self::pair_with_offloads(capacity, max_frame, Offloads::NONE)
    }

    /// Like [`Self::pair`], for a peer that handles offloaded frames itself (an in-process VMM
    /// with virtio-net, say): frames whose [`VnetHdr`](crate::frame::VnetHdr) `offloads`
    /// accepts pass both ways untouched, GSO frames up to [`GSO_MAX_FRAME`] bytes.
    pub fn pair_with_offloads(
        capacity: usize,
        max_frame: usize,
        offloads: Offloads,
    ) -> io::Result<(MemoryLink, MemoryLink)> {
        let a = Arc::new(Dir::new(capacity)?);
        let b = Arc::new(Dir::new(capacity)?);
        Ok((
            MemoryLink {
                rx: a.clone(),
                tx: b.clone(),
                max_frame,
                offloads,
            },
            MemoryLink {
                rx: b,
                tx: a,
                max_frame,
                offloads,
            },
        ))
    }

    /// True once the other end has been dropped (frames it sent may still be queued).
    pub fn peer_closed(&self) -> bool {
        self.rx.closed.load(Ordering::Acquire)
    }

    /// True when `frame` may cross this link: within the MTU, or a GSO frame the link accepts.
    fn fits(&self, frame: &Frame) -> bool {
        let h = &frame.meta.vnet;
        frame.len() <= self.max_frame
            || (h.gso_type != 0 && self.offloads.accepts(h) && frame.len() <= GSO_MAX_FRAME)
    }

    /// Queues a frame towards the other end. Returns the frame back if the queue is full or the
    /// frame is larger than the link's maximum.
    pub fn send(&self, frame: Frame) -> Result<(), Frame> {
        if !self.fits(&frame) {
            return Err(frame);
        }
        self.tx.queue.push(frame)?;
        self.tx.signal();
        Ok(())
    }

    /// Queues several frames and wakes the other end once (one `eventfd` write for the lot).
    /// Returns how many were queued; the others (full queue, too large) are dropped.
    pub fn send_all(&self, frames: impl IntoIterator<Item = Frame>) -> usize {
        let mut n = 0;
        for f in frames {
            if self.fits(&f) && self.tx.queue.push(f).is_ok() {
                n += 1;
            }
        }
        if n > 0 {
            self.tx.signal();
        }
        n
    }

    /// Copies `data` into a new frame and queues it; false if the queue is full or `data` is
    /// larger than the link's maximum frame.
    pub fn send_bytes(&self, data: &[u8]) -> bool {
        self.send(Frame::from_slice(data)).is_ok()
    }

    /// Takes the next frame from the other end, if any.
    pub fn try_recv(&self) -> Option<Frame> {
        self.rx.queue.pop()
    }

    /// Waits up to `timeout` for the next frame.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Frame> {
        let deadline = Instant::now() + timeout;
        loop {
            self.rx.reset();
            if let Some(f) = self.rx.queue.pop() {
                return Some(f);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let _ = crate::sys::io::wait_readable([self.rx.efd.as_fd()], Some(left));
        }
    }

    /// Frames dropped because this end's outgoing queue was full.
    pub fn tx_dropped(&self) -> u64 {
        self.tx.dropped.load(Ordering::Relaxed)
    }

    /// Frames waiting to be read by this end.
    pub fn rx_queued(&self) -> usize {
        self.rx.queue.len()
    }
}

impl Drop for MemoryLink {
    fn drop(&mut self) {
        // Tell the peer we are gone: it sees `Gone` once it has drained what we sent.
        self.tx.closed.store(true, Ordering::Release);
        self.tx.signal();
    }
}

impl Link for MemoryLink {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn as_raw_fd(&self) -> RawFd {
        self.rx.efd.as_raw_fd()
    }

    fn caps(&self) -> LinkCaps {
        LinkCaps {
            vnet_hdr: false,
            max_frame: self.max_frame,
            tx: self.offloads,
            rx_gso: self.offloads != Offloads::NONE,
        }
    }

    fn recv_batch(
        &mut self,
        _pool: &FramePool,
        out: &mut Vec<Frame>,
        max: usize,
    ) -> Result<RecvStats, LinkError> {
        // Reset the eventfd before draining: a frame pushed after the drain signals again.
        self.rx.reset();
        let mut st = RecvStats::default();
        while st.frames < max {
            match self.rx.queue.pop() {
                Some(f) => {
                    out.push(f);
                    st.frames += 1;
                }
                None => {
                    st.drained = true;
                    break;
                }
            }
        }
        if st.drained && st.frames == 0 && self.rx.closed.load(Ordering::Acquire) {
            return Err(LinkError::Gone(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "memory link peer dropped",
            )));
        }
        Ok(st)
    }

    fn send_batch(&mut self, queue: &mut VecDeque<Frame>) -> Result<SendStats, LinkError> {
        let mut st = SendStats::default();
        if queue.is_empty() {
            return Ok(st);
        }
        while let Some(f) = queue.pop_front() {
            let len = f.len();
            if !self.fits(&f) {
                st.errors += 1;
                continue;
            }
            match self.tx.queue.push(f) {
                Ok(()) => {
                    st.frames += 1;
                    st.bytes += len;
                }
                Err(_) => {
                    // The other end is not keeping up: drop, like a full NIC ring.
                    self.tx.dropped.fetch_add(1, Ordering::Relaxed);
                    st.errors += 1;
                }
            }
        }
        if st.frames > 0 {
            self.tx.signal();
        }
        Ok(st)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_cross_and_peer_drop_is_seen() {
        let pool = FramePool::new(1514, 8);
        let (mut a, b) = MemoryLink::pair(4, 1514).expect("pair");
        assert!(b.send_bytes(b"hello"));
        let mut out = Vec::new();
        let st = a.recv_batch(&pool, &mut out, 64).expect("recv");
        assert_eq!(st.frames, 1);
        assert!(st.drained);
        assert_eq!(out[0].data(), b"hello");

        let mut q: VecDeque<Frame> = (0..6).map(|i| Frame::from_slice(&[i; 20])).collect();
        let st = a.send_batch(&mut q).expect("send");
        assert_eq!((st.frames, st.errors), (4, 2));
        assert_eq!(
            b.recv_timeout(Duration::from_millis(10))
                .map(|f| f.data()[0]),
            Some(0)
        );

        drop(b);
        out.clear();
        assert!(matches!(
            a.recv_batch(&pool, &mut out, 64),
            Err(LinkError::Gone(_))
        ));
    }
}
