//! Stream link: Ethernet frames over a UNIX or TCP stream socket, each preceded by its length as
//! a 4-byte big-endian integer — the framing of QEMU's `-netdev stream` (and `-netdev socket`)
//! and of passt. A VM joins a usernet network with
//! `qemu-system-x86_64 -netdev stream,id=n0,addr.type=unix,addr.path=SOCK -device virtio-net,netdev=n0`.
//!
//! Reading: bytes accumulate in a receive buffer; every complete record becomes a frame (one copy,
//! into a pooled buffer). A record longer than the link's maximum frame is skipped (its bytes
//! read and discarded as they come, never buffered) and counted as `oversize`, as a TAP counts
//! a truncated frame: the port stays. The peer closing in the middle of a record means it is
//! broken: the link reports [`LinkError::Gone`] and the engine removes the port (nothing else is
//! affected); a close between records is an orderly one ([`LinkError::is_orderly_close`]).
//!
//! The framing itself is a pure [`Decoder`] (no I/O), which the link feeds with what it reads:
//! after it has returned every complete record, it holds less than one record (at most
//! `4 + max_frame - 1` bytes), so a peer cannot make it buffer without bound.
//!
//! Writing: frames are framed into a bounded send buffer and written as far as the socket takes
//! them; the rest waits for the next writable event, so a slow VM backs up into its own TX ring
//! only.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;

use super::{Link, LinkCaps, LinkError, RecvStats, SendStats, classify};
use crate::frame::{Frame, FramePool};

/// Most bytes queued in the send buffer before frames wait in the port's ring.
const SEND_BUF: usize = 256 * 1024;

/// A byte stream carrying length-prefixed frames. See the module docs.
pub struct StreamLink {
    sock: Box<dyn Stream>,
    max_frame: usize,
    rx: Decoder,
    tx: Vec<u8>,
    tx_off: usize,
    what: String,
}

/// A non-blocking byte stream with a descriptor.
pub trait Stream: Read + Write + Send + 'static {
    /// The descriptor to poll.
    fn fd(&self) -> RawFd;
}

impl Stream for UnixStream {
    fn fd(&self) -> RawFd {
        self.as_raw_fd()
    }
}

impl Stream for std::net::TcpStream {
    fn fd(&self) -> RawFd {
        self.as_raw_fd()
    }
}

impl std::fmt::Debug for StreamLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamLink")
            .field("peer", &self.what)
            .finish()
    }
}

impl StreamLink {
    /// Wraps a connected stream (made non-blocking here); `max_frame` is the largest frame
    /// accepted from the peer; `what` names the peer in errors.
    pub fn new<S: Stream>(sock: S, max_frame: usize, what: &str) -> io::Result<StreamLink> {
        // SAFETY: `Stream::fd` is the descriptor `sock` owns; `sock` is alive (and keeps it
        // open) for the whole borrow, which ends with this statement.
        crate::sys::io::set_nonblocking(unsafe { BorrowedFd::borrow_raw(sock.fd()) })?;
        Ok(StreamLink {
            sock: Box::new(sock),
            max_frame,
            rx: Decoder::new(),
            tx: Vec::with_capacity(64 * 1024),
            tx_off: 0,
            what: what.to_string(),
        })
    }

    fn gone(&self, why: String) -> LinkError {
        LinkError::Gone(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("stream peer {}: {why}", self.what),
        ))
    }

    /// Extracts complete records from the receive buffer.
    fn parse(
        &mut self,
        pool: &FramePool,
        out: &mut Vec<Frame>,
        st: &mut RecvStats,
        max: usize,
    ) -> Result<(), LinkError> {
        let limit = self.max_frame.min(pool.max_frame());
        while st.frames < max {
            match self.rx.next_frame(limit) {
                Ok(Some(data)) => {
                    if let Some(f) = pool.frame_from(data) {
                        out.push(f);
                        st.frames += 1;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(peer = %self.what, "{e}: skipped");
                    st.oversize += 1;
                }
            }
        }
        Ok(())
    }

    fn flush_tx(&mut self) -> Result<bool, LinkError> {
        while self.tx_off < self.tx.len() {
            match self.sock.write(&self.tx[self.tx_off..]) {
                Ok(0) => return Err(self.gone("closed".into())),
                Ok(n) => self.tx_off += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(classify(e)),
            }
        }
        self.tx.clear();
        self.tx_off = 0;
        Ok(true)
    }
}

impl Link for StreamLink {
    fn kind(&self) -> &'static str {
        "stream"
    }

    fn as_raw_fd(&self) -> RawFd {
        self.sock.fd()
    }

    fn caps(&self) -> LinkCaps {
        LinkCaps::plain(self.max_frame)
    }

    fn recv_batch(
        &mut self,
        pool: &FramePool,
        out: &mut Vec<Frame>,
        max: usize,
    ) -> Result<RecvStats, LinkError> {
        let mut st = RecvStats::default();
        // Records already buffered first.
        self.parse(pool, out, &mut st, max)?;
        let mut buf = [0u8; 16 * 1024];
        while st.frames < max {
            match self.sock.read(&mut buf) {
                Ok(0) => {
                    if st.frames > 0 {
                        return Ok(st);
                    }
                    if self.rx.buffered() > 0 || self.rx.skipping() {
                        return Err(self.gone("closed in the middle of a frame".into()));
                    }
                    return Err(LinkError::Gone(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        format!("stream peer {}: closed", self.what),
                    )));
                }
                Ok(n) => {
                    self.rx.push(&buf[..n]);
                    self.parse(pool, out, &mut st, max)?;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    st.drained = true;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(classify(e)),
            }
        }
        Ok(st)
    }

    fn send_batch(&mut self, queue: &mut VecDeque<Frame>) -> Result<SendStats, LinkError> {
        let mut st = SendStats::default();
        if !self.flush_tx()? {
            return Ok(st);
        }
        while let Some(f) = queue.front() {
            if self.tx.len() + f.len() + 4 > SEND_BUF && !self.tx.is_empty() {
                break;
            }
            let Some(f) = queue.pop_front() else { break };
            if f.len() > self.max_frame {
                st.errors += 1;
                continue;
            }
            encode_record(f.data(), &mut self.tx);
            st.frames += 1;
            st.bytes += f.len();
        }
        self.flush_tx()?;
        Ok(st)
    }
}

/// A record whose length prefix is over the maximum frame: the peer is broken or hostile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("record of {len} bytes is over the maximum frame of {max}")]
pub struct FrameTooLong {
    /// The length the prefix announced.
    pub len: usize,
    /// The maximum it was checked against.
    pub max: usize,
}

/// The stream framing's decoder: bytes in ([`Decoder::push`], in pieces of any size), complete
/// records out ([`Decoder::next_frame`]), in order. No I/O; used by [`StreamLink`] and fuzzed
/// on its own.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    start: usize,
    /// Bytes of an oversize record still to discard.
    skip: usize,
}

/// Consumed bytes kept at the front of the buffer before it is compacted.
const COMPACT_AT: usize = 64 * 1024;

impl Decoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Decoder {
            buf: Vec::with_capacity(64 * 1024),
            start: 0,
            skip: 0,
        }
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete record's frame, if one is buffered; `Err` when the next record's length
    /// is over `max_frame`: that record is skipped (its bytes discarded as they arrive, never
    /// buffered) and the next call goes on after it. Once this returns `Ok(None)` the decoder
    /// holds less than `4 + max_frame` bytes.
    pub fn next_frame(&mut self, max_frame: usize) -> Result<Option<&[u8]>, FrameTooLong> {
        if self.skip > 0 {
            let n = self.skip.min(self.buf.len() - self.start);
            self.start += n;
            self.skip -= n;
        }
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > COMPACT_AT {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let avail = self.buf.get(self.start..).unwrap_or_default();
        let Some(prefix) = avail.first_chunk::<4>() else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(*prefix) as usize;
        if len > max_frame {
            self.start += 4;
            self.skip = len;
            return Err(FrameTooLong {
                len,
                max: max_frame,
            });
        }
        if avail.len() - 4 < len {
            return Ok(None);
        }
        let from = self.start + 4;
        self.start = from + len;
        Ok(self.buf.get(from..from + len))
    }

    /// True while the rest of an oversize record is being discarded.
    pub fn skipping(&self) -> bool {
        self.skip > 0
    }

    /// Bytes buffered and not returned yet (a partial record, or records not asked for).
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Bytes the decoder's buffer holds, consumed ones included (its memory use).
    pub fn held(&self) -> usize {
        self.buf.len()
    }
}

/// Frames `frame` as one record: its length as 4 bytes big-endian, then its bytes.
pub fn encode_record(frame: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(frame.len() as u32).to_be_bytes());
    out.extend_from_slice(frame);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (StreamLink, UnixStream) {
        let (a, b) = UnixStream::pair().expect("pair");
        (StreamLink::new(a, 1514, "test").expect("link"), b)
    }

    fn record(data: &[u8]) -> Vec<u8> {
        let mut v = (data.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn frames_split_across_reads_and_both_ways() {
        let pool = FramePool::new(1514, 8);
        let (mut link, mut peer) = pair();
        let mut bytes = record(&[1u8; 60]);
        bytes.extend(record(&[2u8; 1514]));
        // Send in awkward pieces.
        peer.write_all(&bytes[..3]).expect("w");
        let mut out = Vec::new();
        assert_eq!(
            link.recv_batch(&pool, &mut out, 64).expect("recv").frames,
            0
        );
        peer.write_all(&bytes[3..100]).expect("w");
        assert_eq!(
            link.recv_batch(&pool, &mut out, 64).expect("recv").frames,
            1
        );
        peer.write_all(&bytes[100..]).expect("w");
        assert_eq!(
            link.recv_batch(&pool, &mut out, 64).expect("recv").frames,
            1
        );
        assert_eq!(out[0].data(), &[1u8; 60][..]);
        assert_eq!(out[1].data(), &[2u8; 1514][..]);

        let mut q: VecDeque<Frame> = [Frame::from_slice(&[7u8; 64])].into_iter().collect();
        assert_eq!(link.send_batch(&mut q).expect("send").frames, 1);
        let mut got = [0u8; 68];
        peer.read_exact(&mut got).expect("read");
        assert_eq!(&got[..4], &64u32.to_be_bytes());
        assert_eq!(&got[4..], &[7u8; 64][..]);
    }

    #[test]
    fn oversize_record_is_skipped_truncation_drops_the_peer() {
        let pool = FramePool::new(1514, 8);
        let (mut link, mut peer) = pair();
        // A 9000-byte record on a 1514-byte link, in two writes, then a good frame.
        peer.write_all(&9000u32.to_be_bytes()).expect("w");
        peer.write_all(&[7u8; 5000]).expect("w");
        let mut out = Vec::new();
        let st = link.recv_batch(&pool, &mut out, 64).expect("still up");
        assert_eq!((st.frames, st.oversize), (0, 1));
        peer.write_all(&[7u8; 4000]).expect("w");
        peer.write_all(&record(&[1u8; 100])).expect("w");
        let st = link.recv_batch(&pool, &mut out, 64).expect("still up");
        assert_eq!(st.frames, 1);
        assert_eq!(out[0].data(), &[1u8; 100][..]);
        // An orderly close between records.
        drop(peer);
        let e = link.recv_batch(&pool, &mut out, 64).expect_err("gone");
        assert!(e.is_orderly_close(), "{e}");

        let (mut link, mut peer) = pair();
        peer.write_all(&record(&[1u8; 100])[..50]).expect("w");
        drop(peer);
        let e = link.recv_batch(&pool, &mut out, 64).expect_err("gone");
        assert!(e.to_string().contains("middle"), "{e}");
        assert!(!e.is_orderly_close());
    }

    #[test]
    fn decoder_byte_by_byte_in_order_and_bounded() {
        let mut stream = Vec::new();
        for n in [0usize, 1, 60, 1514] {
            encode_record(&vec![n as u8; n], &mut stream);
        }
        let mut d = Decoder::new();
        let mut got = Vec::new();
        for b in &stream {
            d.push(std::slice::from_ref(b));
            while let Some(f) = d.next_frame(1514).expect("within the maximum") {
                got.push(f.to_vec());
            }
            assert!(d.buffered() < 4 + 1514);
        }
        let lens: Vec<usize> = got.iter().map(Vec::len).collect();
        assert_eq!(lens, [0, 1, 60, 1514]);
        assert!(
            got.iter()
                .all(|f| f.iter().all(|&b| usize::from(b) == f.len() % 256))
        );
        assert_eq!(d.buffered(), 0);

        // A length over the maximum is reported once its prefix is complete.
        d.push(&[0, 0, 0x05]);
        assert_eq!(d.next_frame(1514), Ok(None));
        d.push(&[0xeb]);
        assert_eq!(
            d.next_frame(1514),
            Err(FrameTooLong {
                len: 1515,
                max: 1514
            })
        );
    }
}
