//! `usernet ctl capture`: a port's live capture, into a file (`-w FILE`: opened here, its
//! descriptor passed to the daemon, which writes it) or stdout (`-w -`: streamed by the daemon
//! over the control socket and copied out here). Ctrl-C (SIGINT, SIGTERM) asks the daemon to
//! end the capture (the connection's write side is shut); it finishes the output: the file
//! ends on a whole block and reads back complete.

use std::io::{self, BufRead, BufReader, IsTerminal, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;
use usernet::capture::Format;
use usernet::control::api::Request;

/// How long the daemon has to end a capture once asked.
const END_WAIT: Duration = Duration::from_secs(5);

/// `usernet ctl capture PORT -w FILE|- [--count N] [--snaplen N] [--format pcapng|pcap]`.
///
/// `-w FILE`: the file is opened here and its descriptor passed with the request
/// (`"fd": true`): the daemon's capture thread writes it directly and this process only waits
/// for the summary. A daemon that does not know `"fd"` gets the streaming form, as `-w -` does.
pub(crate) fn run(
    sock: &Path,
    port: String,
    write: &str,
    count: Option<u64>,
    snaplen: Option<u32>,
    format: Format,
) -> anyhow::Result<()> {
    let to_stdout = write == "-";
    if to_stdout && io::stdout().is_terminal() {
        bail!(
            "-w -: stdout is a terminal; give -w FILE, or pipe it (usernet ctl capture {port} -w - | tshark -r -)"
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    let req = |fd| Request::Capture {
        port: port.clone(),
        snaplen,
        count,
        format: Some(format),
        fd,
    };
    let out: Box<dyn Write> = if to_stdout {
        Box::new(io::stdout().lock())
    } else {
        let existed = Path::new(write).exists();
        let file = std::fs::File::create(write).with_context(|| format!("-w {write}"))?;
        match to_file(sock, &port, &req(true), &file, &stop) {
            Ok(Some(())) => return Ok(()),
            // An older daemon: it streams, and the file is written here.
            Ok(None) => Box::new(io::BufWriter::new(
                usernet::control::capture::DropBehind::new(file),
            )),
            Err(e) => {
                if !existed {
                    let _ = std::fs::remove_file(write);
                }
                return Err(e);
            }
        }
    };
    streamed(sock, &port, &req(false), out, format, &stop)
}

/// A read that timed out or was interrupted: keep waiting.
fn waiting(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// When the capture was asked to end (Ctrl-C).
struct Ending(Option<Instant>);

impl Ending {
    /// On the first check after a signal, shuts the connection's write side: the daemon sees
    /// the end of our requests, finishes the output and closes. True once it has had
    /// [`END_WAIT`] to do so.
    fn overdue(&mut self, conn: &UnixStream, stop: &AtomicBool) -> bool {
        if stop.load(Ordering::Relaxed) && self.0.is_none() {
            let _ = conn.shutdown(std::net::Shutdown::Write);
            self.0 = Some(Instant::now());
        }
        self.0.is_some_and(|t| t.elapsed() > END_WAIT)
    }
}

/// The answer line of a capture request: its `result`, or the daemon's error.
fn answer(rd: &mut impl BufRead) -> anyhow::Result<Result<Value, String>> {
    let mut answer = String::new();
    rd.read_line(&mut answer)
        .context("reading the daemon's answer")?;
    let v: Value = serde_json::from_str(&answer)
        .with_context(|| format!("the daemon's answer: {answer:?}"))?;
    if v.get("ok") == Some(&Value::Bool(true)) {
        return Ok(Ok(v.get("result").cloned().unwrap_or(Value::Null)));
    }
    let msg = v.get("error").and_then(Value::as_str).unwrap_or("refused");
    Ok(Err(msg.to_string()))
}

/// The capture written by the daemon into `file`, passed with the request. `None`: the daemon
/// does not know `"fd"` (an older version): nothing started, stream instead.
fn to_file(
    sock: &Path,
    port: &str,
    req: &Request,
    file: &std::fs::File,
    stop: &AtomicBool,
) -> anyhow::Result<Option<()>> {
    let conn = usernet::control::server::connect_with_fd(sock, req, Some(file.as_fd()))?;
    let mut rd = BufReader::new(&conn);
    match answer(&mut rd)? {
        Ok(r) if r.get("fd") == Some(&Value::Bool(true)) => {}
        Ok(_) => bail!("capture of {port:?}: the daemon did not take the file"),
        Err(msg) if msg.contains("unknown field `fd`") => return Ok(None),
        Err(msg) => bail!("capture of {port:?}: {msg}"),
    }
    conn.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut ending = Ending(None);
    let mut line = String::new();
    let summary = loop {
        match rd.read_line(&mut line) {
            Ok(0) => break None,
            Ok(_) if line.ends_with('\n') => break serde_json::from_str::<Value>(&line).ok(),
            Ok(_) => {}
            Err(e) if waiting(&e) => {}
            Err(e) => return Err(e).context("waiting for the capture's end"),
        }
        if ending.overdue(&conn, stop) {
            bail!("the daemon did not end the capture in time; the file may be cut");
        }
    };
    let Some(sum) = summary.as_ref().and_then(|v| v.get("summary")) else {
        bail!("the daemon closed the capture without its summary; the file may be cut");
    };
    let n = |k: &str| sum.get(k).and_then(Value::as_u64).unwrap_or(0);
    eprintln!(
        "usernet: {} frames captured on {port}, {} dropped (capture queue full)",
        n("captured"),
        n("dropped")
    );
    if let Some(e) = sum.get("end").and_then(|e| e.get("write_error")) {
        bail!("writing the capture: {e}");
    }
    Ok(Some(()))
}

/// The capture streamed over the connection by the daemon, written here into `out`.
fn streamed(
    sock: &Path,
    port: &str,
    req: &Request,
    mut out: Box<dyn Write>,
    format: Format,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let conn =
        UnixStream::connect(sock).with_context(|| format!("control socket {}", sock.display()))?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut line = serde_json::to_string(req)?;
    line.push('\n');
    (&conn).write_all(line.as_bytes())?;
    let mut rd = BufReader::with_capacity(256 << 10, &conn);
    if let Err(msg) = answer(&mut rd)? {
        bail!("capture of {port:?}: {msg}");
    }
    conn.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut blocks = Blocks::new(format);
    let mut chunk = vec![0u8; 256 << 10];
    let mut ending = Ending(None);
    let mut out_err = None;
    loop {
        match rd.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                blocks.feed(&chunk[..n]);
                // Whole chunks as they come: a reader (tshark, tail) sees frames at once.
                let w = out.write_all(&chunk[..n]).and_then(|()| out.flush());
                if let Err(e) = w {
                    // The reader went (tshark quit): end the capture, nothing more to write.
                    out_err = Some(e);
                    let _ = conn.shutdown(std::net::Shutdown::Both);
                    break;
                }
            }
            Err(e) if waiting(&e) => {}
            Err(e) => return Err(e).context("reading the capture"),
        }
        if ending.overdue(&conn, stop) {
            eprintln!("usernet: the daemon did not end the capture in time; the file may be cut");
            break;
        }
    }
    if out_err.is_none() {
        out.flush().context("writing the capture")?;
    }
    drop(out);
    match (format, blocks.dropped) {
        (Format::Pcapng, Some(d)) => eprintln!(
            "usernet: {} frames captured on {port}, {d} dropped (capture queue full)",
            blocks.frames
        ),
        _ => eprintln!("usernet: {} frames captured on {port}", blocks.frames),
    }
    if let Some(e) = out_err
        && e.kind() != io::ErrorKind::BrokenPipe
    {
        return Err(e).context("writing the capture");
    }
    Ok(())
}

/// Follows the capture's blocks as they stream past, to count frames and read the drop count
/// of pcapng's closing interface statistics block. Both formats are little endian (the
/// daemon writes them so).
struct Blocks {
    format: Format,
    /// Bytes of the current header (or statistics block) gathered so far.
    head: Vec<u8>,
    /// Bytes still to pass over (a packet's data).
    skip: usize,
    /// The pcap file header is behind us.
    started: bool,
    broken: bool,
    frames: u64,
    dropped: Option<u64>,
}

const EPB: u32 = 6;
const ISB: u32 = 5;

impl Blocks {
    fn new(format: Format) -> Blocks {
        Blocks {
            format,
            head: Vec::new(),
            skip: 0,
            started: false,
            broken: false,
            frames: 0,
            dropped: None,
        }
    }

    fn u32_at(b: &[u8], at: usize) -> usize {
        b.get(at..at + 4)
            .and_then(|s| s.try_into().ok())
            .map_or(0, |a: [u8; 4]| u32::from_le_bytes(a) as usize)
    }

    /// How many bytes of header to gather before deciding.
    fn want(&self) -> usize {
        match self.format {
            Format::Pcap if !self.started => 24,
            Format::Pcap => 16,
            Format::Pcapng => {
                if self.head.len() < 8 {
                    8
                } else if Self::u32_at(&self.head, 0) as u32 == ISB {
                    Self::u32_at(&self.head, 4).min(4096)
                } else {
                    8
                }
            }
        }
    }

    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() && !self.broken {
            if self.skip > 0 {
                let k = self.skip.min(data.len());
                self.skip -= k;
                data = &data[k..];
                continue;
            }
            let want = self.want();
            let k = (want - self.head.len().min(want)).min(data.len());
            self.head.extend_from_slice(&data[..k]);
            data = &data[k..];
            if self.head.len() < self.want() {
                continue;
            }
            self.block();
        }
    }

    /// A whole header (or statistics block) is in `head`.
    fn block(&mut self) {
        let h = std::mem::take(&mut self.head);
        match self.format {
            Format::Pcap if !self.started => self.started = true,
            Format::Pcap => {
                self.frames += 1;
                self.skip = Self::u32_at(&h, 8);
            }
            Format::Pcapng => {
                let (ty, len) = (Self::u32_at(&h, 0) as u32, Self::u32_at(&h, 4));
                if len < 12 || len % 4 != 0 {
                    self.broken = true;
                    return;
                }
                if ty == ISB && h.len() == len {
                    self.dropped = isb_ifdrop(&h);
                } else {
                    if ty == EPB {
                        self.frames += 1;
                    }
                    self.skip = len - h.len();
                }
            }
        }
    }
}

/// `isb_ifdrop` (option 5) of a whole little-endian interface statistics block.
fn isb_ifdrop(b: &[u8]) -> Option<u64> {
    // Type, length, interface id, timestamp (8), options, trailing length.
    let mut at = 20;
    while at + 4 <= b.len().saturating_sub(4) {
        let code = u16::from_le_bytes([b[at], b[at + 1]]);
        let len = u16::from_le_bytes([b[at + 2], b[at + 3]]) as usize;
        let val = b.get(at + 4..at + 4 + len)?;
        if code == 0 {
            return None;
        }
        if code == 5 && len == 8 {
            return val.try_into().ok().map(u64::from_le_bytes);
        }
        at += 4 + len.div_ceil(4) * 4;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use usernet::capture::{CaptureOptions, Direction, EndReason, Tap};
    use usernet::frame::Frame;

    fn capture(format: Format, frames: usize) -> Vec<u8> {
        let tap = Arc::new(Tap::default());
        let opts = CaptureOptions::new(None, None, Some(format)).expect("opts");
        let s = tap.start("p", &opts).expect("start");
        for i in 0..frames {
            let mut f = Frame::from_slice(&vec![i as u8; 60 + i]);
            tap.record(Direction::Rx, [&mut f]);
        }
        let mut out = Vec::new();
        s.run(&mut out, || Some(EndReason::Stopped));
        out
    }

    #[test]
    fn counts_frames_and_drops_across_any_chunking() {
        for format in [Format::Pcapng, Format::Pcap] {
            let bytes = capture(format, 7);
            for step in [1, 3, 7, 64, bytes.len()] {
                let mut b = Blocks::new(format);
                for c in bytes.chunks(step) {
                    b.feed(c);
                }
                assert!(!b.broken, "{format:?} step {step}");
                assert_eq!(b.frames, 7, "{format:?} step {step}");
                if format == Format::Pcapng {
                    assert_eq!(b.dropped, Some(0), "step {step}");
                }
            }
        }
    }
}
