//! The HTTP endpoint of `usernet up --metrics ADDR:PORT` (see the parent module's docs): one
//! thread, one connection at a time, `GET /metrics` only.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::CONTENT_TYPE;
use crate::control::Handle;
use crate::error::{Error, Result};

/// Largest HTTP request head [`serve`] reads; a longer one is answered 431.
pub const MAX_REQUEST: usize = 8 * 1024;
/// How long [`serve`] gives a client to send its request head, and again to read the answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the server's thread looks whether it should stop.
const STOP_CHECK: Duration = Duration::from_millis(200);

/// The HTTP metrics endpoint [`serve`] started; stops its thread when dropped.
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// The address it listens on (the port the kernel picked, for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serves [`Handle::metrics`] at `http://ADDR/metrics` on one thread (`usernet-metrics`),
/// until the returned guard is dropped or the engine stops. See the module docs for the bounds.
pub fn serve(h: Handle, addr: SocketAddr) -> Result<MetricsServer> {
    let ctx = || format!("metrics listener {addr}");
    let std_listener = std::net::TcpListener::bind(addr).map_err(|e| Error::Io(ctx(), e))?;
    std_listener
        .set_nonblocking(true)
        .map_err(|e| Error::Io(ctx(), e))?;
    let local = std_listener.local_addr().map_err(|e| Error::Io(ctx(), e))?;
    let mut listener = mio::net::TcpListener::from_std(std_listener);
    let mut poll = mio::Poll::new().map_err(|e| Error::Io(ctx(), e))?;
    poll.registry()
        .register(&mut listener, mio::Token(0), mio::Interest::READABLE)
        .map_err(|e| Error::Io(ctx(), e))?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let thread = std::thread::Builder::new()
        .name("usernet-metrics".into())
        .spawn(move || {
            let mut events = mio::Events::with_capacity(4);
            while !stop2.load(Ordering::Acquire) && !h.is_stopped() {
                if let Err(e) = poll.poll(&mut events, Some(STOP_CHECK))
                    && e.kind() != io::ErrorKind::Interrupted
                {
                    tracing::error!("metrics listener: poll failed: {e}");
                    return;
                }
                // Edge-triggered: take every connection waiting.
                while !events.is_empty() {
                    match listener.accept() {
                        Ok((conn, _)) => answer(&h, conn),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            // Out of descriptors, say: try again at the next readiness.
                            tracing::warn!("metrics listener: accept failed: {e}");
                            break;
                        }
                    }
                }
            }
        })
        .map_err(|e| Error::Io("starting the metrics thread".into(), e))?;
    tracing::info!("metrics at http://{local}/metrics");
    Ok(MetricsServer {
        addr: local,
        stop,
        thread: Some(thread),
    })
}

/// Answers one HTTP connection and closes it; every error just closes it.
fn answer(h: &Handle, conn: mio::net::TcpStream) {
    let mut s = std::net::TcpStream::from(std::os::fd::OwnedFd::from(conn));
    if s.set_nonblocking(false).is_err() || s.set_write_timeout(Some(REQUEST_TIMEOUT)).is_err() {
        return;
    }
    let reply = match read_head(&mut s) {
        Ok(head) => respond(&head, || h.metrics()),
        Err(HeadError::TooLarge) => status(431, "Request Header Fields Too Large"),
        Err(HeadError::Io) => return,
    };
    let _ = s.write_all(&reply);
    let _ = s.shutdown(std::net::Shutdown::Write);
    // Read what the client still sends (a body, the rest of an oversized head) for a moment:
    // closing with unread input would reset the connection, and the client could lose the
    // answer. Bounded in bytes and time like the request.
    if s.set_read_timeout(Some(LINGER)).is_ok() {
        let deadline = Instant::now() + LINGER;
        let (mut left, mut sink) = (LINGER_BYTES, [0u8; 4096]);
        while left > 0 && Instant::now() < deadline {
            match s.read(&mut sink) {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    }
}

/// How long, and how many bytes, [`answer`] reads after its answer before it closes.
const LINGER: Duration = Duration::from_millis(200);
const LINGER_BYTES: usize = 256 * 1024;

#[derive(Debug, PartialEq, Eq)]
enum HeadError {
    /// More than [`MAX_REQUEST`] bytes without the blank line that ends a head.
    TooLarge,
    /// Closed, failed or too slow.
    Io,
}

/// Reads a request head (up to the blank line) within [`REQUEST_TIMEOUT`] in all.
fn read_head(s: &mut impl ReadTimeout) -> std::result::Result<Vec<u8>, HeadError> {
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if head_end(&buf).is_some() {
            return Ok(buf);
        }
        if buf.len() >= MAX_REQUEST {
            return Err(HeadError::TooLarge);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HeadError::Io);
        }
        s.read_timeout(left).map_err(|_| HeadError::Io)?;
        let room = (MAX_REQUEST - buf.len()).min(chunk.len());
        match s.read(&mut chunk[..room]) {
            Ok(0) => return Err(HeadError::Io),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(HeadError::Io),
        }
    }
}

/// A reader whose read timeout can be set (a `TcpStream`; a fake in tests).
trait ReadTimeout: Read {
    fn read_timeout(&mut self, t: Duration) -> io::Result<()>;
}

impl ReadTimeout for std::net::TcpStream {
    fn read_timeout(&mut self, t: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(t))
    }
}

/// Where the head ends: after `\r\n\r\n` (or a bare `\n\n`).
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The whole HTTP answer to a request head; `body` is called only for `GET /metrics`.
fn respond(head: &[u8], body: impl FnOnce() -> String) -> Vec<u8> {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (method, target, version) = (parts.next(), parts.next(), parts.next());
    let ok_version = version.is_some_and(|v| v == "HTTP/1.0" || v == "HTTP/1.1");
    let (Some(method), Some(target), true, None) = (method, target, ok_version, parts.next())
    else {
        return status(400, "Bad Request");
    };
    let path = target.split('?').next().unwrap_or_default();
    if path != "/metrics" {
        return status(404, "Not Found");
    }
    if method != "GET" {
        let mut r = status(405, "Method Not Allowed");
        // Insert the Allow header before the blank line.
        let at = r.len() - 2;
        r.splice(at..at, b"Allow: GET\r\n".iter().copied());
        return r;
    }
    let body = body();
    let mut r = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {CONTENT_TYPE}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body.as_bytes());
    r
}

/// A bodyless answer with `code`, ending in the blank line.
fn status(code: u16, reason: &str) -> Vec<u8> {
    format!("HTTP/1.1 {code} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake {
        data: Vec<u8>,
        at: usize,
        chunk: usize,
    }
    impl Read for Fake {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.chunk.min(out.len()).min(self.data.len() - self.at);
            out[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }
    impl ReadTimeout for Fake {
        fn read_timeout(&mut self, _: Duration) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn reads_a_head_in_pieces_and_bounds_it() {
        let mut f = Fake {
            data: b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\nbody".to_vec(),
            at: 0,
            chunk: 3,
        };
        let head = read_head(&mut f).expect("head");
        assert!(head.starts_with(b"GET /metrics HTTP/1.1\r\n"));
        let mut big = b"GET /metrics HTTP/1.1\r\n".to_vec();
        big.extend(std::iter::repeat_n(b'a', 3 * MAX_REQUEST));
        let mut f = Fake {
            data: big,
            at: 0,
            chunk: 1000,
        };
        assert_eq!(read_head(&mut f), Err(HeadError::TooLarge));
        assert!(f.at <= MAX_REQUEST, "read {} bytes", f.at);
        let mut f = Fake {
            data: b"GET /metrics HTTP/1.1\r\n".to_vec(),
            at: 0,
            chunk: 100,
        };
        assert_eq!(
            read_head(&mut f),
            Err(HeadError::Io),
            "closed before the end"
        );
    }

    #[test]
    fn answers_get_metrics_only() {
        let ok = String::from_utf8(respond(b"GET /metrics HTTP/1.1\r\n\r\n", || "x 1\n".into()))
            .expect("utf8");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains(&format!("Content-Type: {CONTENT_TYPE}\r\n")));
        assert!(
            ok.ends_with("Content-Length: 4\r\nConnection: close\r\n\r\nx 1\n"),
            "{ok}"
        );
        let q = respond(b"GET /metrics?x=1 HTTP/1.0\n\n", || "y\n".into());
        assert!(q.starts_with(b"HTTP/1.1 200 "));
        let code = |head: &[u8]| {
            let r = respond(head, || panic!("no body for {head:?}"));
            String::from_utf8_lossy(&r[9..12]).into_owned()
        };
        assert_eq!(code(b"GET / HTTP/1.1\r\n\r\n"), "404");
        assert_eq!(code(b"GET /metricsx HTTP/1.1\r\n\r\n"), "404");
        assert_eq!(code(b"POST /metrics HTTP/1.1\r\n\r\n"), "405");
        assert_eq!(code(b"GET /metrics\r\n\r\n"), "400");
        assert_eq!(code(b"GET /metrics HTTP/2 x\r\n\r\n"), "400");
        assert_eq!(code(b"\xff\xfe\r\n\r\n"), "400");
        let r = String::from_utf8(respond(b"PUT /metrics HTTP/1.1\r\n\r\n", String::new))
            .expect("utf8");
        assert!(r.ends_with("Allow: GET\r\n\r\n"), "{r}");
    }
}
