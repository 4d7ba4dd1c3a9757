//! Live packet capture of a port's frames, in both directions, to pcapng or pcap.
//!
//! # Theory of operation
//!
//! Every port carries a [`Tap`]. With no capture running, the event loop's whole cost is one
//! relaxed atomic load per batch ([`Tap::is_active`]) on receive and one on transmit. A capture
//! attaches a [`Sink`] to the tap; while one is attached the loop queues each frame, with a
//! timestamp, on each sink's bounded lock-free queue ([`crossbeam_queue::ArrayQueue`]) and goes
//! on: it never waits, never takes a lock and never makes a system call for a capture. A frame
//! the capture keeps whole, of [`SHARE_MIN`] bytes or more, is not copied: the capture holds
//! the frame's own buffer, read-only, until written ([`Frame::share`]; the frame goes on, and
//! is copied only if something writes to it meanwhile). A smaller frame, or the `snaplen`
//! bytes kept of a longer one, is copied. When a queue is full (or holds [`QUEUE_BYTES`] already)
//! the frame is not captured and counted (`capture_dropped`, per capture and per port); the
//! forwarding path is the same either way.
//!
//! Where the loop copies: on receive, each frame read from the link, before the bridge sees it
//! ("rx": from the link into the switch, whatever the switch then does with it); on transmit,
//! each frame handed to the link ("tx": from the switch to the link), after
//! [`crate::offload::adapt`] - so a 64 KiB GSO frame for a link that takes offloads is captured
//! as that one big frame (as tcpdump on a TAP shows it), and its segments for a link that does
//! not. pcapng records the direction in each packet's `epb_flags` (inbound = rx, outbound =
//! tx); classic pcap has no place for it.
//!
//! A capture's writer ([`Session::run`], on a thread of its own: a control connection's, or
//! one started for a port's `pcap` file; usernet runs both at `SCHED_IDLE`, so the writer
//! takes only CPU time nothing else wants and a capture never slows forwarding: on a
//! saturated machine its queue fills and the frames it cannot take are dropped, counted)
//! drains its queue into the output, flushing after each
//! drain, and sleeps up to [`POLL`] between drains (the loop wakes it early when its queue
//! reaches half its frames or [`WAKE_BYTES`]: one `unpark` per crossing, not per frame). The
//! buffers it has written go back to the loop for the next frames (a bounded free list), so a
//! steady capture allocates nothing per frame. It ends when the count is reached,
//! when the port goes ([`Tap::close`], called by the loop that drops the port's link: what was
//! queued is still written), or when its caller says so (a client that went away, the engine
//! stopping). It then writes an interface statistics block (pcapng: frames captured, frames
//! dropped) and flushes, so the file ends on a whole block and reads back complete.

use std::borrow::Cow;
use std::cell::RefCell;
use std::io::{self, Write};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use crossbeam_queue::ArrayQueue;
use parking_lot::Mutex;
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::blocks::interface_statistics::{
    InterfaceStatisticsBlock, InterfaceStatisticsOption,
};
use pcap_file::pcapng::blocks::section_header::{SectionHeaderBlock, SectionHeaderOption};
use serde::{Deserialize, Serialize};

use crate::frame::{Frame, SharedBuf};

mod epb;

/// Default (and largest) bytes kept of each frame: tcpdump's default, more than a 64 KiB GSO
/// frame.
pub const MAX_SNAPLEN: u32 = 262_144;
/// Frames a capture's queue holds.
pub const QUEUE_FRAMES: usize = 4096;
/// Bytes of frame data a capture's queue holds.
pub const QUEUE_BYTES: usize = 16 << 20;
/// Longest a writer sleeps between two drains of its queue.
pub const POLL: Duration = Duration::from_millis(50);
/// Queued bytes at which the loop wakes the writer early (as it does at half the frames): a
/// queue of 64 KiB frames reaches its byte limit at 256 frames, long before half its frames.
pub const WAKE_BYTES: usize = QUEUE_BYTES / 4;
/// Buffers a writer gives back to the loop for reuse.
const FREE_BUFFERS: usize = 256;
/// Buffers up to this size are always given back (an MTU-sized frame's).
const REUSE_MAX: usize = 2048;
/// Larger ones (up to a 64 KiB GSO frame's) only while the free list holds fewer than
/// [`FREE_BIG`]: at most a few MiB kept per capture, and no allocation per big frame.
const REUSE_BIG: usize = 65_536 + 256;
const FREE_BIG: usize = 64;

/// Which way a captured frame went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Read from the port's link, into the switch.
    Rx,
    /// Handed by the switch to the port's link.
    Tx,
}

/// The file format of a capture.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// pcapng (the default): the port's name, each frame's direction, and the drop count.
    #[default]
    Pcapng,
    /// Classic pcap (nanosecond timestamps): frames only.
    Pcap,
}

/// What to capture.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CaptureOptions {
    /// Bytes kept of each frame (1..=[`MAX_SNAPLEN`]).
    pub snaplen: u32,
    /// Stop after this many frames (0: until stopped).
    pub count: u64,
    /// Output format.
    pub format: Format,
}

impl Default for CaptureOptions {
    fn default() -> Self {
        CaptureOptions {
            snaplen: MAX_SNAPLEN,
            count: 0,
            format: Format::Pcapng,
        }
    }
}

impl CaptureOptions {
    /// Options from the API's fields (absent: the defaults; a `snaplen` of 0 means the
    /// largest). Errors name the field.
    pub fn new(
        snaplen: Option<u32>,
        count: Option<u64>,
        format: Option<Format>,
    ) -> crate::Result<Self> {
        let snaplen = match snaplen {
            None | Some(0) => MAX_SNAPLEN,
            Some(n) if n > MAX_SNAPLEN => {
                return Err(crate::Error::invalid(
                    "snaplen",
                    format!("{n} is over {MAX_SNAPLEN}"),
                ));
            }
            Some(n) => n,
        };
        Ok(CaptureOptions {
            snaplen,
            count: count.unwrap_or(0),
            format: format.unwrap_or_default(),
        })
    }
}

struct Record {
    ts: Duration,
    dir: Direction,
    orig_len: u32,
    data: Bytes,
}

/// A captured frame's bytes: a copy (small frames, or a snaplen that keeps a part), or the
/// frame's own buffer, shared read-only until written (see [`Frame::share`]).
enum Bytes {
    Copy(Vec<u8>),
    Shared(Arc<SharedBuf>, std::ops::Range<usize>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Copy(v) => v,
            Bytes::Shared(b, r) => b.bytes().get(r.clone()).unwrap_or(&[]),
        }
    }
}

impl Bytes {
    /// Bytes of memory the record holds (what [`QUEUE_BYTES`] bounds).
    fn held(&self) -> usize {
        match self {
            Bytes::Copy(v) => v.len(),
            Bytes::Shared(b, _) => b.capacity(),
        }
    }
}

/// Frames from this long are shared with the capture instead of copied, when kept whole and
/// filling at least a quarter of their buffer (a short frame in a 64 KiB buffer is copied: the
/// copy is cheaper than holding the buffer).
pub const SHARE_MIN: usize = 1024;

/// Whether a frame of `len` bytes in a buffer of `capacity`, of which a capture keeps
/// `snaplen`, is shared rather than copied.
fn shares(len: usize, capacity: usize, snaplen: usize) -> bool {
    len >= SHARE_MIN && len <= snaplen && len.saturating_mul(4) >= capacity
}

/// One capture's queue: filled by the port's event loop, drained by the capture's writer.
pub struct Sink {
    queue: ArrayQueue<Record>,
    free: ArrayQueue<Vec<u8>>,
    snaplen: usize,
    bytes: AtomicUsize,
    dropped: AtomicU64,
    /// The port went: the writer drains what is queued and ends.
    port_gone: AtomicBool,
    /// The writer, woken when the queue reaches half its frames or [`WAKE_BYTES`].
    writer: OnceLock<std::thread::Thread>,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink")
            .field("queued", &self.queue.len())
            .field("dropped", &self.dropped.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Sink {
    fn new(snaplen: u32) -> Sink {
        Sink {
            queue: ArrayQueue::new(QUEUE_FRAMES),
            free: ArrayQueue::new(FREE_BUFFERS),
            snaplen: snaplen.max(1) as usize,
            bytes: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
            port_gone: AtomicBool::new(false),
            writer: OnceLock::new(),
        }
    }

    /// Queues `frame`'s first `snaplen` bytes: the frame's buffer itself, shared, when it is
    /// kept whole and large ([`SHARE_MIN`]), else a copy. False when there was no room
    /// (counted).
    fn push(&self, ts: Duration, dir: Direction, frame: &mut Frame) -> bool {
        let len = frame.len();
        let n = len.min(self.snaplen);
        let share = shares(len, frame.buffer_size(), self.snaplen);
        // What the record holds until written; `pop` takes back the same (`Bytes::held`).
        let held = if share { frame.buffer_size() } else { n };
        if self.queue.is_full() || self.bytes.load(Ordering::Relaxed) + held > QUEUE_BYTES {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let data = if share {
            Bytes::Shared(frame.share(), frame.data_range())
        } else {
            let mut buf = self.free.pop().unwrap_or_default();
            buf.clear();
            buf.extend_from_slice(&frame.data()[..n]);
            Bytes::Copy(buf)
        };
        let before = self.bytes.fetch_add(held, Ordering::Relaxed);
        let rec = Record {
            ts,
            dir,
            orig_len: u32::try_from(len).unwrap_or(u32::MAX),
            data,
        };
        match self.queue.push(rec) {
            Ok(()) => {
                if wake_writer(self.queue.len(), before, held)
                    && let Some(t) = self.writer.get()
                {
                    t.unpark();
                }
                true
            }
            Err(_) => {
                self.bytes.fetch_sub(held, Ordering::Relaxed);
                self.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    fn pop(&self) -> Option<Record> {
        let r = self.queue.pop()?;
        self.bytes.fetch_sub(r.data.held(), Ordering::Relaxed);
        Some(r)
    }

    /// Done with a record's bytes: a copy's buffer goes back for the next copies, a shared
    /// frame buffer to its pool (when its frame is gone too).
    fn recycle(&self, data: Bytes) {
        let Bytes::Copy(mut buf) = data else {
            return;
        };
        let cap = buf.capacity();
        if cap <= REUSE_MAX || (cap <= REUSE_BIG && self.free.len() < FREE_BIG) {
            buf.clear();
            let _ = self.free.push(buf);
        }
    }

    /// Frames this capture could not queue.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Whether the push that made the queue `frames` long, adding `n` bytes to `before`, wakes
/// the writer: once when the queue reaches half its frames, once when it reaches
/// [`WAKE_BYTES`] (one `unpark` per crossing, not per frame).
fn wake_writer(frames: usize, before: usize, n: usize) -> bool {
    frames == QUEUE_FRAMES / 2 || (before < WAKE_BYTES && before + n >= WAKE_BYTES)
}

/// A port's capture point: the captures attached to it.
#[derive(Default)]
pub struct Tap {
    active: AtomicBool,
    sinks: ArcSwap<Vec<Arc<Sink>>>,
    /// The port went: no capture may attach any more. Taken by attach, detach and close.
    closed: Mutex<bool>,
    dropped: AtomicU64,
}

impl std::fmt::Debug for Tap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tap")
            .field("captures", &self.sinks.load().len())
            .field("dropped", &self.dropped())
            .finish()
    }
}

impl Tap {
    /// True while at least one capture is attached: the one check the datapath makes.
    #[inline]
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// Frames not captured because a capture's queue was full, over all the port's captures.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Captures running on the port.
    pub fn captures(&self) -> usize {
        self.sinks.load().len()
    }

    /// Queues each frame for every capture attached (the loop calls it only when
    /// [`Self::is_active`]): a large frame's buffer is shared with the captures (a frame written
    /// to afterwards is copied first, see [`Frame::share`]), a small one copied. Never blocks.
    pub fn record<'a>(&self, dir: Direction, frames: impl IntoIterator<Item = &'a mut Frame>) {
        let sinks = self.sinks.load();
        if sinks.is_empty() {
            return;
        }
        for f in frames {
            let ts = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            for s in sinks.iter() {
                if !s.push(ts, dir, f) {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    fn publish(&self, sinks: Vec<Arc<Sink>>) {
        self.active.store(!sinks.is_empty(), Ordering::Relaxed);
        self.sinks.store(Arc::new(sinks));
    }

    /// Starts a capture on this port's tap; `port` names it in the file. Fails once the port
    /// is gone ([`Self::close`]).
    pub fn start(self: &Arc<Self>, port: &str, opts: &CaptureOptions) -> crate::Result<Session> {
        let closed = self.closed.lock();
        if *closed {
            return Err(crate::Error::invalid(
                "port",
                format!("port {port:?} is being removed"),
            ));
        }
        let sink = Arc::new(Sink::new(opts.snaplen));
        let mut list: Vec<Arc<Sink>> = self.sinks.load().iter().cloned().collect();
        list.push(sink.clone());
        self.publish(list);
        drop(closed);
        Ok(Session {
            tap: self.clone(),
            sink,
            port: port.to_string(),
            opts: opts.clone(),
        })
    }

    fn detach(&self, sink: &Arc<Sink>) {
        let _closed = self.closed.lock();
        let list: Vec<Arc<Sink>> = self
            .sinks
            .load()
            .iter()
            .filter(|s| !Arc::ptr_eq(s, sink))
            .cloned()
            .collect();
        self.publish(list);
    }

    /// The port is gone (its loop dropped the link): every capture drains what it has and ends;
    /// none may start any more. The loop calls it after its last [`Self::record`].
    pub fn close(&self) {
        let mut closed = self.closed.lock();
        *closed = true;
        let list = self.sinks.load_full();
        self.publish(Vec::new());
        drop(closed);
        for s in list.iter() {
            s.port_gone.store(true, Ordering::Release);
            if let Some(t) = s.writer.get() {
                t.unpark();
            }
        }
    }
}

/// Why a capture ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EndReason {
    /// The count asked for was reached.
    Count,
    /// The port was removed (or its link failed, or the engine stopped).
    PortRemoved,
    /// The caller stopped it (the client closed its end, the engine stops).
    Stopped,
    /// The output could not be written.
    WriteError(String),
}

/// How a capture went.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Summary {
    /// Frames written.
    pub captured: u64,
    /// Frames not captured: the queue was full.
    pub dropped: u64,
    /// Why it ended.
    pub end: EndReason,
}

/// A capture attached to a port; [`Self::run`] writes it out. Dropping it unattached detaches
/// it.
#[derive(Debug)]
pub struct Session {
    tap: Arc<Tap>,
    sink: Arc<Sink>,
    port: String,
    opts: CaptureOptions,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.tap.detach(&self.sink);
    }
}

/// The output, shared by the format's writer and the flushes between drains (pcap-file's
/// `PcapWriter` does not lend its writer).
struct Shared<W: Write>(Rc<RefCell<io::BufWriter<W>>>);

impl<W: Write> Write for Shared<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.borrow_mut().write(buf)
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0.borrow_mut().write_all(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.borrow_mut().flush()
    }
}

enum Writer<W: Write> {
    Ng(PcapNgWriter<Shared<W>>),
    Pcap(pcap_file::pcap::PcapWriter<Shared<W>>),
}

struct Out<W: Write> {
    buf: Rc<RefCell<io::BufWriter<W>>>,
    fmt: Writer<W>,
}

fn io_err(e: pcap_file::PcapError) -> io::Error {
    match e {
        pcap_file::PcapError::IoError(e) => e,
        other => io::Error::other(other.to_string()),
    }
}

/// pcap-file 2.0 writes an ISB's 64-bit timestamp as one integer in the section's byte order;
/// pcapng wants the high 32 bits first, then the low ones, each in that order. In a little
/// endian section that is the value with its halves swapped.
fn isb_timestamp_le(nanos: u64) -> u64 {
    nanos.rotate_left(32)
}

impl<W: Write> Out<W> {
    fn new(w: W, port: &str, opts: &CaptureOptions) -> io::Result<Self> {
        let buf = Rc::new(RefCell::new(io::BufWriter::with_capacity(256 << 10, w)));
        let w = Shared(buf.clone());
        let fmt = match opts.format {
            Format::Pcapng => {
                let shb = SectionHeaderBlock {
                    endianness: pcap_file::Endianness::Little,
                    options: vec![SectionHeaderOption::UserApplication(Cow::Owned(format!(
                        "usernet {}",
                        env!("CARGO_PKG_VERSION")
                    )))],
                    ..SectionHeaderBlock::default()
                };
                let mut ng = PcapNgWriter::with_section_header(w, shb).map_err(io_err)?;
                let idb = InterfaceDescriptionBlock {
                    linktype: pcap_file::DataLink::ETHERNET,
                    snaplen: opts.snaplen,
                    options: vec![
                        InterfaceDescriptionOption::IfName(Cow::Owned(port.to_string())),
                        InterfaceDescriptionOption::IfDescription(Cow::Owned(format!(
                            "usernet port {port}"
                        ))),
                        InterfaceDescriptionOption::IfTsResol(9),
                    ],
                };
                ng.write_pcapng_block(idb).map_err(io_err)?;
                Writer::Ng(ng)
            }
            Format::Pcap => {
                let header = pcap_file::pcap::PcapHeader {
                    snaplen: opts.snaplen,
                    datalink: pcap_file::DataLink::ETHERNET,
                    ts_resolution: pcap_file::TsResolution::NanoSecond,
                    endianness: pcap_file::Endianness::Little,
                    ..pcap_file::pcap::PcapHeader::default()
                };
                Writer::Pcap(pcap_file::pcap::PcapWriter::with_header(w, header).map_err(io_err)?)
            }
        };
        Ok(Out { buf, fmt })
    }

    fn packet(&mut self, r: &Record) -> io::Result<()> {
        match &mut self.fmt {
            // The block pcap-file would write, without copying large frames into the buffer.
            Writer::Ng(_) => epb::write(&mut self.buf.borrow_mut(), r)?,
            Writer::Pcap(p) => {
                let pkt = pcap_file::pcap::PcapPacket::new(r.ts, r.orig_len, &r.data);
                p.write_packet(&pkt).map_err(io_err)?;
            }
        }
        Ok(())
    }

    fn finish(&mut self, captured: u64, dropped: u64) -> io::Result<()> {
        if let Writer::Ng(ng) = &mut self.fmt {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            let nanos = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX);
            let isb = InterfaceStatisticsBlock {
                interface_id: 0,
                timestamp: isb_timestamp_le(nanos),
                options: vec![
                    InterfaceStatisticsOption::IsbIfDrop(dropped),
                    InterfaceStatisticsOption::IsbUsrDeliv(captured),
                ],
            };
            ng.write_pcapng_block(isb).map_err(io_err)?;
        }
        self.flush()
    }

    fn flush(&mut self) -> io::Result<()> {
        self.buf.borrow_mut().flush()
    }
}

impl Session {
    /// Frames not captured so far: the queue was full.
    pub fn dropped(&self) -> u64 {
        self.sink.dropped()
    }

    /// The capture's settings.
    pub fn options(&self) -> &CaptureOptions {
        &self.opts
    }

    /// Writes the capture to `out` (a file, a socket) until the count is reached, the port
    /// goes, or `stop` (asked before each wait) says why to end. The output ends on a whole
    /// block: the file reads back complete. Runs on the calling thread.
    pub fn run<W: Write>(self, out: W, mut stop: impl FnMut() -> Option<EndReason>) -> Summary {
        let _ = self.sink.writer.set(std::thread::current());
        let mut captured = 0u64;
        let mut out =
            match Out::new(out, &self.port, &self.opts).and_then(|mut o| o.flush().map(|()| o)) {
                Ok(o) => o,
                Err(e) => {
                    return Summary {
                        captured,
                        dropped: self.dropped(),
                        end: EndReason::WriteError(e.to_string()),
                    };
                }
            };
        let end = 'run: loop {
            let mut wrote = false;
            while let Some(r) = self.sink.pop() {
                let res = out.packet(&r);
                self.sink.recycle(r.data);
                if let Err(e) = res {
                    break 'run EndReason::WriteError(e.to_string());
                }
                wrote = true;
                captured += 1;
                if self.opts.count > 0 && captured >= self.opts.count {
                    break 'run EndReason::Count;
                }
            }
            if wrote && let Err(e) = out.flush() {
                break 'run EndReason::WriteError(e.to_string());
            }
            if self.sink.port_gone.load(Ordering::Acquire) {
                if self.sink.queue.is_empty() {
                    break EndReason::PortRemoved;
                }
                continue;
            }
            if let Some(why) = stop() {
                break why;
            }
            std::thread::park_timeout(POLL);
        };
        // Nothing more is queued for it; what was queued is written unless the count is met.
        self.tap.detach(&self.sink);
        if !matches!(end, EndReason::Count | EndReason::WriteError(_)) {
            while let Some(r) = self.sink.pop() {
                if out.packet(&r).is_err() {
                    break;
                }
                captured += 1;
                if self.opts.count > 0 && captured >= self.opts.count {
                    break;
                }
            }
        }
        let dropped = self.dropped();
        let end = match out.finish(captured, dropped) {
            Err(e) if !matches!(end, EndReason::WriteError(_)) => {
                EndReason::WriteError(e.to_string())
            }
            _ => end,
        };
        tracing::info!(port = %self.port, captured, dropped, end = ?end, "capture ended");
        Summary {
            captured,
            dropped,
            end,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketOption;

    fn frame(n: u8, len: usize) -> Frame {
        let mut f = vec![n; len];
        f[..6].copy_from_slice(&[0xff; 6]);
        Frame::from_slice(&f)
    }

    /// Reads back a pcapng capture: (direction flags, original length, data) of each packet, and
    /// the ISB's drop count.
    /// (epb_flags, original length, data) of a packet.
    type Pkt = (u32, u32, Vec<u8>);

    fn read_ng(bytes: &[u8]) -> (Vec<Pkt>, Option<u64>, String) {
        use pcap_file::pcapng::{Block, PcapNgReader};
        let mut r = PcapNgReader::new(bytes).expect("pcapng header");
        let mut pkts = Vec::new();
        let mut drops = None;
        let mut name = String::new();
        while let Some(b) = r.next_block() {
            match b.expect("block") {
                Block::EnhancedPacket(p) => {
                    let flags = p
                        .options
                        .iter()
                        .find_map(|o| match o {
                            EnhancedPacketOption::Flags(f) => Some(*f),
                            _ => None,
                        })
                        .unwrap_or(0);
                    pkts.push((flags, p.original_len, p.data.to_vec()));
                }
                Block::InterfaceDescription(i) => {
                    for o in &i.options {
                        if let InterfaceDescriptionOption::IfName(n) = o {
                            name = n.to_string();
                        }
                    }
                }
                Block::InterfaceStatistics(s) => {
                    for o in &s.options {
                        if let InterfaceStatisticsOption::IsbIfDrop(d) = o {
                            drops = Some(*d);
                        }
                    }
                }
                _ => {}
            }
        }
        (pkts, drops, name)
    }

    #[test]
    fn captures_both_directions_truncated_to_snaplen() {
        let tap = Arc::new(Tap::default());
        assert!(!tap.is_active());
        let opts = CaptureOptions::new(Some(64), Some(3), None).expect("opts");
        let s = tap.start("web", &opts).expect("start");
        assert!(tap.is_active());
        tap.record(Direction::Rx, [&mut frame(1, 100)]);
        tap.record(
            Direction::Tx,
            [&mut frame(2, 60), &mut frame(3, 60), &mut frame(4, 60)],
        );
        let mut out = Vec::new();
        let sum = s.run(&mut out, || Some(EndReason::Stopped));
        assert_eq!(sum.end, EndReason::Count);
        assert_eq!(sum.captured, 3);
        assert!(!tap.is_active(), "detached once done");
        let (pkts, drops, name) = read_ng(&out);
        assert_eq!(name, "web");
        assert_eq!(drops, Some(0));
        assert_eq!(pkts.len(), 3);
        assert_eq!((pkts[0].0, pkts[0].1, pkts[0].2.len()), (1, 100, 64));
        assert_eq!((pkts[1].0, pkts[1].1, pkts[1].2[6]), (2, 60, 2));
        assert_eq!(pkts[2].2[6], 3);
    }

    #[test]
    fn shared_frames_count_their_whole_buffer_against_the_queue_bound() {
        let tap = Arc::new(Tap::default());
        let s = tap.start("p", &CaptureOptions::default()).expect("start");
        let mut frames: Vec<Frame> = (0..300).map(|_| frame(1, 65_000)).collect();
        let size = frames[0].buffer_size();
        tap.record(Direction::Rx, frames.iter_mut());
        let fit = QUEUE_BYTES / size;
        assert_eq!(
            s.sink.queue.len(),
            fit,
            "held by the 16 MiB bound, not the frame count"
        );
        assert_eq!(s.sink.bytes.load(Ordering::Relaxed), fit * size);
        assert_eq!(s.dropped(), (300 - fit) as u64);
        drop(frames);
        // Copies and shares together: draining gives back exactly what was counted.
        let mut small = frame(2, 100);
        tap.record(Direction::Tx, [&mut small]);
        while s.sink.pop().is_some() {}
        assert_eq!(s.sink.bytes.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn large_frames_are_shared_not_copied_and_read_back_as_they_were() {
        let tap = Arc::new(Tap::default());
        let two = |n| {
            tap.start("p", &CaptureOptions::new(n, None, None).expect("opts"))
                .expect("start")
        };
        let (whole, cut) = (two(None), two(Some(1500)));
        let mut big = frame(5, 9000);
        let mut small = frame(6, 200);
        tap.record(Direction::Rx, [&mut big, &mut small]);
        assert!(
            big.is_shared(),
            "a whole capture holds the 9000-byte frame's own buffer"
        );
        assert!(!small.is_shared(), "a small frame is copied");
        // The datapath writes to the frame after the capture took it (a VLAN tag, a checksum):
        // the frame is copied first, the capture keeps what went by.
        big.data_mut()[6] = 0xee;
        assert!(!big.is_shared());
        drop(big);
        for (s, caplen) in [(whole, 9000), (cut, 1500)] {
            let mut out = Vec::new();
            s.run(&mut out, || Some(EndReason::Stopped));
            let (pkts, _, _) = read_ng(&out);
            assert_eq!(pkts.len(), 2);
            assert_eq!((pkts[0].1, pkts[0].2.len()), (9000, caplen));
            assert!(
                pkts[0].2[6..].iter().all(|&b| b == 5),
                "the bytes as captured"
            );
            assert_eq!(pkts[1].2, frame(6, 200).data());
        }
        assert!(!tap.is_active());
    }

    #[test]
    fn full_queue_drops_and_counts_never_blocks() {
        let tap = Arc::new(Tap::default());
        let s = tap.start("p", &CaptureOptions::default()).expect("start");
        let mut f = frame(7, 60);
        for _ in 0..QUEUE_FRAMES + 10 {
            tap.record(Direction::Rx, [&mut f]);
        }
        assert_eq!(s.dropped(), 10);
        assert_eq!(tap.dropped(), 10);
        let mut out = Vec::new();
        let sum = s.run(&mut out, || Some(EndReason::Stopped));
        assert_eq!(sum.end, EndReason::Stopped);
        assert_eq!((sum.captured, sum.dropped), (QUEUE_FRAMES as u64, 10));
        let (pkts, drops, _) = read_ng(&out);
        assert_eq!(pkts.len(), QUEUE_FRAMES);
        assert_eq!(drops, Some(10));
    }

    #[test]
    fn port_removal_ends_captures_and_refuses_new_ones() {
        let tap = Arc::new(Tap::default());
        let a = tap.start("p", &CaptureOptions::default()).expect("a");
        let b = tap.start("p", &CaptureOptions::default()).expect("b");
        tap.record(Direction::Rx, [&mut frame(1, 60)]);
        tap.close();
        assert!(!tap.is_active());
        assert!(tap.start("p", &CaptureOptions::default()).is_err());
        for s in [a, b] {
            let mut out = Vec::new();
            let sum = s.run(&mut out, || None);
            assert_eq!(sum.end, EndReason::PortRemoved);
            assert_eq!(read_ng(&out).0.len(), 1);
        }
    }

    #[test]
    fn classic_pcap_reads_back() {
        let tap = Arc::new(Tap::default());
        let opts = CaptureOptions::new(None, Some(2), Some(Format::Pcap)).expect("opts");
        let s = tap.start("p", &opts).expect("start");
        tap.record(Direction::Rx, [&mut frame(1, 70), &mut frame(2, 80)]);
        let mut out = Vec::new();
        s.run(&mut out, || None);
        let mut r = pcap_file::pcap::PcapReader::new(&out[..]).expect("header");
        assert_eq!(
            r.header().ts_resolution,
            pcap_file::TsResolution::NanoSecond
        );
        let p = r.next_packet().expect("one").expect("ok");
        assert_eq!(p.data.len(), 70);
        let p = r.next_packet().expect("two").expect("ok");
        assert_eq!(p.data[6], 2);
        assert!(r.next_packet().is_none());
    }

    #[test]
    fn the_writer_is_woken_once_per_crossing_of_frames_or_bytes() {
        // Small frames: at half the frames only.
        let wakes = (0..QUEUE_FRAMES)
            .filter(|&i| wake_writer(i + 1, i * 60, 60))
            .count();
        assert_eq!(wakes, 1);
        // 64 KiB frames: the byte threshold is crossed long before half the frames.
        let big = 65_550;
        let at: Vec<usize> = (0..QUEUE_BYTES / big)
            .filter(|&i| wake_writer(i + 1, i * big, big))
            .collect();
        assert_eq!(at, vec![WAKE_BYTES / big]);
    }

    #[test]
    fn big_buffers_are_reused_up_to_a_bound() {
        let sink = Sink::new(MAX_SNAPLEN);
        for _ in 0..FREE_BIG + 10 {
            sink.recycle(Bytes::Copy(Vec::with_capacity(65_000)));
        }
        assert_eq!(sink.free.len(), FREE_BIG);
        sink.recycle(Bytes::Copy(Vec::with_capacity(1500)));
        assert_eq!(sink.free.len(), FREE_BIG + 1);
        sink.recycle(Bytes::Copy(Vec::with_capacity(REUSE_BIG + 1)));
        assert_eq!(sink.free.len(), FREE_BIG + 1);
    }

    #[test]
    fn isb_timestamp_is_high_word_first() {
        let ts = 0x0011_2233_4455_6677u64;
        let mut b = Vec::new();
        b.extend_from_slice(&isb_timestamp_le(ts).to_le_bytes());
        assert_eq!(&b[..4], &0x0011_2233u32.to_le_bytes());
        assert_eq!(&b[4..], &0x4455_6677u32.to_le_bytes());
    }

    #[test]
    fn options_name_the_field() {
        let e = CaptureOptions::new(Some(MAX_SNAPLEN + 1), None, None).unwrap_err();
        assert!(e.to_string().contains("snaplen"), "{e}");
        assert_eq!(
            CaptureOptions::new(Some(0), None, None).expect("0").snaplen,
            MAX_SNAPLEN
        );
    }
}
