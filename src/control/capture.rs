//! Live packet capture from the control plane: [`Handle::capture`] (embedders), the API's
//! `capture` op (its connection becomes the capture's byte stream, see `stream`), and a
//! port's `pcap` file (started with the port, `Handle::start_pcap`).
//!
//! The datapath side (the per-port [`crate::capture::Tap`], queues, the writer) is in
//! [`crate::capture`]. Every capture running counts in the node (`Running`), so that the
//! engine, when it stops, waits a moment for their files to be finished.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use super::Handle;
use super::api::{Passed, Request};
use crate::bridge::PortId;
use crate::capture::{CaptureOptions, EndReason, Session, Summary};
use crate::error::{Error, Result};

/// The writer of capture files (`ctl capture -w FILE`, a port's `pcap`): the same bytes as the
/// plain file, but each 8 MiB written is sent to disk at once and leaves the page cache once
/// on disk, so a capture of GBs neither fills the cache nor keeps taking fresh pages for it.
pub use crate::sys::file::DropBehind;

/// How long a stopping engine waits for running captures to finish their output.
pub(crate) const FINISH_WAIT: Duration = Duration::from_secs(3);
/// A port missing from the topology this long ends its captures (the loop normally ends them
/// first, when it drops the link).
const GONE_GRACE: Duration = Duration::from_millis(300);

/// Counts one running capture in the node while it lives.
pub(crate) struct Running(Arc<AtomicUsize>);

impl Running {
    fn new(n: &Arc<AtomicUsize>) -> Running {
        n.fetch_add(1, Ordering::AcqRel);
        Running(n.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Waits until no capture runs, at most `limit`.
pub(crate) fn wait_finished(n: &AtomicUsize, limit: Duration) {
    let t = Instant::now();
    while n.load(Ordering::Acquire) > 0 && t.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Handle {
    /// Starts capturing port `port`'s frames (both directions). Write them out with
    /// [`Session::run`] on a thread of your own; the capture ends when the count is reached,
    /// the port goes, or `run`'s `stop` says so.
    pub fn capture(&self, port: &str, opts: &CaptureOptions) -> Result<Session> {
        self.capture_port(port, opts).map(|(s, _)| s)
    }

    fn capture_port(&self, port: &str, opts: &CaptureOptions) -> Result<(Session, PortId)> {
        self.check_running()?;
        let topo = self.dp.bridge().topology();
        let p = topo
            .port_by_name(port)
            .ok_or_else(|| Error::invalid("port", format!("no port named {port:?} to capture")))?;
        Ok((p.capture.start(port, opts)?, p.id))
    }

    /// Ends a capture when the engine stops or port `id` stays out of the topology (it was
    /// never registered, or its loop is gone).
    fn capture_stop(&self, id: PortId) -> impl FnMut() -> Option<EndReason> + use<> {
        let h = self.clone();
        let mut missing: Option<Instant> = None;
        move || {
            if h.is_stopped() {
                return Some(EndReason::Stopped);
            }
            if h.bridge().topology().port(id).is_some() {
                missing = None;
                return None;
            }
            let since = *missing.get_or_insert_with(Instant::now);
            (since.elapsed() >= GONE_GRACE).then_some(EndReason::PortRemoved)
        }
    }

    /// Runs a capture of port `name` into `file` (opened by [`open_pcap`] from `path`) from
    /// now until the port goes, on a thread of its own: the `pcap` key of a port.
    pub(crate) fn start_pcap(&self, name: &str, path: &Path, file: File) {
        let (session, id) = match self.capture_port(name, &CaptureOptions::default()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(port = %name, "pcap {}: {e}", path.display());
                return;
            }
        };
        let running = Running::new(&self.node.captures);
        let stop = self.capture_stop(id);
        let what = format!("{name} to {}", path.display());
        let spawned = std::thread::Builder::new()
            .name(format!("usernet-pcap-{name}"))
            .spawn(move || {
                let _running = running;
                writer_priority();
                let sum = session.run(DropBehind::new(file), stop);
                tracing::info!(
                    "capture of {what} ended ({:?}): {} frames, {} dropped",
                    sum.end,
                    sum.captured,
                    sum.dropped
                );
            });
        if let Err(e) = spawned {
            tracing::warn!(port = %name, "pcap: spawning the writer: {e}");
        }
    }
}

/// A capture's writer (a thread that ends with its capture) runs at `SCHED_IDLE`: it gets
/// only the CPU time that forwarding and everything else leave, so a capture never slows
/// forwarding; on a saturated machine its queue fills and frames are dropped from the capture
/// (counted) instead.
fn writer_priority() {
    if let Err(e) = crate::sys::process::sched_idle_this_thread() {
        tracing::debug!("capture writer: SCHED_IDLE: {e}");
    }
}

/// Opens a port's `pcap` file: created or emptied, or (`append`) added to.
pub(crate) fn open_pcap(path: &Path, append: bool) -> Result<File> {
    let mut o = std::fs::OpenOptions::new();
    if append {
        o.append(true).create(true);
    } else {
        o.write(true).create(true).truncate(true);
    }
    o.open(path)
        .map_err(|e| Error::Io(format!("port.pcap: {}", path.display()), e))
}

/// Ends a capture when the client closes its end of the connection (or sends anything).
fn client_gone(conn: &UnixStream) -> bool {
    let mut b = [0u8; 64];
    match (&*conn).read(&mut b) {
        // End of file (the client shut its side) or bytes: either way it is done.
        Ok(0 | 1..) => true,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock
                | std::io::ErrorKind::TimedOut
                | std::io::ErrorKind::Interrupted
        ),
    }
}

/// The output a `capture` request names: its connection (`fd` absent or false, no
/// descriptor), or the descriptor that came with it (`"fd": true`, exactly one, open for
/// writing). Anything else is an error naming the field, and the descriptors are closed.
fn output(fd: bool, passed: Passed) -> Result<Option<File>> {
    if passed.refused {
        return Err(Error::invalid(
            "descriptors",
            "at most one descriptor may come with a request (the output of capture with \"fd\": true)",
        ));
    }
    match (fd, passed.fd) {
        (false, None) => Ok(None),
        (false, Some(_)) => Err(Error::invalid(
            "descriptors",
            "a descriptor comes with capture only when it has \"fd\": true",
        )),
        (true, None) => Err(Error::invalid(
            "fd",
            "\"fd\": true, but no descriptor came with the request (SCM_RIGHTS)",
        )),
        (true, Some(d)) => {
            let writable = crate::sys::file::is_writable(std::os::fd::AsFd::as_fd(&d))
                .map_err(|e| Error::Io("fd: the descriptor passed".into(), e))?;
            if !writable {
                return Err(Error::invalid(
                    "fd",
                    "the descriptor passed is not open for writing",
                ));
            }
            Ok(Some(File::from(d)))
        }
    }
}

/// Serves a `capture` request on its control connection: one JSON line (the answer), then, if
/// it was accepted, the capture's bytes until it ends, and the connection closes. With
/// `"fd": true` the capture goes into the descriptor that came with the request instead (see
/// [`output`]): the connection then carries the answer and, when the capture ends, one line
/// `{"summary": {"captured": N, "dropped": N, "end": ...}}`; the client ends the capture as in
/// the streaming form, by shutting its side. `passed` is taken only by a capture request.
/// Returns `None` when `line` is not a capture request (the caller answers it as usual).
pub(crate) fn stream(
    h: &Handle,
    line: &str,
    conn: &UnixStream,
    passed: &mut Passed,
) -> Option<Option<Summary>> {
    let Ok(Request::Capture {
        port,
        snaplen,
        count,
        format,
        fd,
    }) = serde_json::from_str::<Request>(line)
    else {
        return None;
    };
    // The descriptor belongs to this request: taken below, or closed when it returns.
    let passed = std::mem::take(passed);
    let mut out = conn;
    let started = output(fd, passed).and_then(|file| {
        let opts = CaptureOptions::new(snaplen, count, format)?;
        let (s, id) = h.capture_port(&port, &opts)?;
        Ok((s, opts, id, file))
    });
    let (session, opts, id, file) = match started {
        Ok(x) => x,
        Err(e) => {
            let _ = writeln!(out, "{}", json!({ "ok": false, "error": e.to_string() }));
            return Some(None);
        }
    };
    let running = Running::new(&h.node.captures);
    let mut result = json!({
        "port": port, "format": opts.format, "snaplen": opts.snaplen, "count": opts.count,
    });
    if fd {
        result["fd"] = json!(true);
    }
    if writeln!(out, "{}", json!({ "ok": true, "result": result })).is_err() {
        return Some(None);
    }
    let _ = conn.set_read_timeout(Some(Duration::from_millis(1)));
    // A client that stops reading for this long ends the capture (the loop never waits).
    let _ = conn.set_write_timeout(Some(Duration::from_secs(30)));
    let mut engine_stop = h.capture_stop(id);
    let stop = || {
        if client_gone(conn) {
            return Some(EndReason::Stopped);
        }
        engine_stop()
    };
    // The connection ends with the capture: its thread may stay at the writer's priority.
    writer_priority();
    let sum = match file {
        // Written here, to the file: the client only waits for the summary.
        Some(f) => {
            let sum = session.run(DropBehind::new(f), stop);
            let _ = writeln!(out, "{}", json!({ "summary": sum }));
            sum
        }
        None => session.run(conn, stop),
    };
    drop(running);
    let to = if fd {
        "a passed descriptor"
    } else {
        "the control socket"
    };
    tracing::info!(port = %port, "capture to {to} ended ({:?}): {} frames, {} dropped", sum.end, sum.captured, sum.dropped);
    Some(Some(sum))
}

#[cfg(test)]
mod tests {
    use super::super::PortSpec;
    use super::{Passed, output};

    fn passed(path: &str, write: bool) -> Passed {
        let f = std::fs::File::options()
            .read(!write)
            .write(write)
            .open(path)
            .expect("open");
        Passed {
            fd: Some(f.into()),
            refused: false,
        }
    }

    #[test]
    fn the_output_is_the_descriptor_only_when_announced() {
        assert!(output(false, Passed::default()).expect("stream").is_none());
        assert!(
            output(true, passed("/dev/null", true))
                .expect("fd")
                .is_some()
        );
        let e = output(false, passed("/dev/null", true))
            .unwrap_err()
            .to_string();
        assert!(e.contains("descriptors"), "{e}");
        let e = output(true, Passed::default()).unwrap_err().to_string();
        assert!(e.contains("fd"), "{e}");
        let e = output(true, passed("/dev/null", false))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not open for writing"), "{e}");
        let refused = Passed {
            fd: None,
            refused: true,
        };
        let e = output(true, refused).unwrap_err().to_string();
        assert!(e.contains("at most one"), "{e}");
    }

    #[test]
    fn an_empty_pcap_path_is_an_error_naming_the_key() {
        let mut p = PortSpec::new("n", "p");
        p.tap = Some("t0".into());
        p.pcap = Some("".into());
        let e = p.backend("port[0]").unwrap_err().to_string();
        assert!(e.contains("port[0].pcap"), "{e}");
    }
}
