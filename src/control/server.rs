//! The control socket: JSON lines over a UNIX stream socket, mode 0600 from its creation.
//!
//! [`serve`] binds the socket (refusing to steal one that a live instance answers on, removing a
//! stale one), then answers requests on a background thread until the engine stops. Each
//! connection may send any number of request lines; a line longer than 1 MiB ends the connection.
//! At most [`MAX_CONNS`] connections are served at once: one more gets a one-line JSON error and
//! is closed. [`request`] is the client side used by `usernet ctl`.
//!
//! Requests are read with `recvmsg`, so a descriptor may come with a line (`SCM_RIGHTS`; sent
//! with the line's first byte, see [`request_with_fd`]): it belongs to the line being read when
//! it arrives, and only `add_port` with `"fd": true` takes it ([`super::api::handle_line_passed`]),
//! or `capture` with `"fd": true` (its output file, [`super::capture`]).
//! At most one is kept per line: more are closed at once and the line is refused, so a peer
//! cannot pile descriptors up in the daemon. Wait for a request's answer before sending the next
//! one with a descriptor.
//!
//! Every UNIX socket usernet listens on (this one, stream ports, the slirp4netns API) is bound
//! by [`bind_private`]: the socket's inode is made 0600 *before* `bind(2)`, so the file appears
//! with that mode (Linux creates it with the socket inode's mode minus the umask) and there is
//! no window in which another user could connect. Not the umask: it is process-wide, and other
//! threads (event loops, DNS, the control thread binding a stream port) run while a socket is
//! bound.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;

use super::Handle;
use super::api::{Passed, Request, handle_line_passed};
use crate::error::{Error, Result};

const MAX_LINE: u64 = 1 << 20;

/// Most control connections served at once; one more is answered with an error and closed.
pub const MAX_CONNS: usize = 64;

/// The default control socket path: `$USERNET_SOCKET`, else `/run/usernet/usernet.sock` for
/// root, else `$XDG_RUNTIME_DIR/usernet.sock`.
///
/// Without any of them this is an error, not a path in a shared directory: a fixed name in
/// `/tmp` can be created first by another user (who then receives the requests), and a random
/// private directory (`mkdtemp`) is safe but cannot be found by `usernet ctl`.
pub fn default_socket_path() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("USERNET_SOCKET")
        && !p.is_empty()
    {
        return Ok(PathBuf::from(p));
    }
    if crate::sys::process::is_root() {
        return Ok(PathBuf::from("/run/usernet/usernet.sock"));
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR")
        && !d.is_empty()
    {
        return Ok(Path::new(&d).join("usernet.sock"));
    }
    Err(Error::invalid(
        "socket",
        "no control socket path: give --socket PATH, or set USERNET_SOCKET or XDG_RUNTIME_DIR \
         (usernet does not fall back to a shared directory such as /tmp)",
    ))
}

pub use crate::sys::sock::bind_private;

/// A running control server; dropping it removes the socket file.
#[derive(Debug)]
pub struct Server {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds `path` and serves `handle` on it until the engine stops or the [`Server`] is dropped.
pub fn serve(handle: Handle, path: &Path) -> Result<Server> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
        && !dir.exists()
    {
        // 0700 from creation (the last component; parents as the umask gives).
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::Io(format!("creating {}", dir.display()), e))?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(Error::Io(
                format!("control socket {}", path.display()),
                io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another usernet instance is answering there (use --socket)",
                ),
            ));
        }
        let _ = std::fs::remove_file(path);
    }
    let listener = bind_private(path)
        .map_err(|e| Error::Io(format!("binding control socket {}", path.display()), e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::Io("control socket".into(), e))?;
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    let thread = std::thread::Builder::new()
        .name("usernet-control".into())
        .spawn(move || accept_loop(handle, listener, st))
        .map_err(|e| Error::Io("spawning control thread".into(), e))?;
    Ok(Server {
        path: path.to_path_buf(),
        stop,
        thread: Some(thread),
    })
}

/// Counts a live control connection; the count drops with it.
struct ConnSlot(Arc<AtomicUsize>);

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn accept_loop(handle: Handle, listener: UnixListener, stop: Arc<AtomicBool>) {
    let live = Arc::new(AtomicUsize::new(0));
    while !handle.is_stopped() && !stop.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((mut conn, _)) => {
                if live.fetch_add(1, Ordering::AcqRel) >= MAX_CONNS {
                    live.fetch_sub(1, Ordering::AcqRel);
                    tracing::warn!("control socket: {MAX_CONNS} connections open, one refused");
                    let _ = conn.set_write_timeout(Some(Duration::from_millis(100)));
                    let _ = writeln!(
                        conn,
                        r#"{{"ok":false,"error":"too many control connections (at most {MAX_CONNS}); try again later"}}"#
                    );
                    continue;
                }
                let slot = ConnSlot(live.clone());
                let h = handle.clone();
                let _ = std::thread::Builder::new()
                    .name("usernet-ctl-conn".into())
                    .spawn(move || {
                        let _slot = slot;
                        serve_conn(h, conn)
                    });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                tracing::warn!("control socket accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn serve_conn(handle: Handle, conn: UnixStream) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(60)));
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    let mut passed = Passed::default();
    loop {
        if let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            // The descriptors go with this line, and are closed with it unless taken.
            let mut passed = std::mem::take(&mut passed);
            let Ok(line) = std::str::from_utf8(&line) else {
                return;
            };
            if line.trim().is_empty() {
                continue;
            }
            // A capture turns the connection into its byte stream, until it ends.
            // (With "fd": true it takes the descriptor that came with it: its output file.)
            if super::capture::stream(&handle, line.trim(), &conn, &mut passed).is_some() {
                return;
            }
            // So does a subscription, into its event stream.
            if super::events::stream(&handle, line.trim(), &conn) {
                return;
            }
            let resp = handle_line_passed(&handle, line.trim(), passed);
            if writeln!(out, "{resp}").is_err() {
                return;
            }
            continue;
        }
        if buf.len() as u64 >= MAX_LINE {
            let _ = writeln!(out, r#"{{"ok":false,"error":"request longer than 1 MiB"}}"#);
            return;
        }
        let room = (MAX_LINE as usize - buf.len()).min(chunk.len());
        let got = match crate::sys::scm::recv_with_fds(conn.as_fd(), &mut chunk[..room]) {
            Ok(g) => g,
            Err(_) => return,
        };
        if got.len == 0 {
            // The peer is done: a last line without its newline is still answered.
            if let Ok(line) = std::str::from_utf8(&buf)
                && !line.trim().is_empty()
            {
                let resp = handle_line_passed(&handle, line.trim(), passed);
                let _ = writeln!(out, "{resp}");
            }
            return;
        }
        buf.extend_from_slice(&chunk[..got.len]);
        if got.truncated {
            passed.refused = true;
        }
        for fd in got.fds {
            if passed.fd.is_none() && !passed.refused {
                passed.fd = Some(fd);
            } else {
                // A second one: close both now, refuse the line.
                passed.refused = true;
                passed.fd = None;
                drop(fd);
            }
        }
    }
}

/// Connects to the daemon at `path` and sends `req` (one line), with `fd` attached when given
/// (`SCM_RIGHTS`); returns the connection (read timeout 30 s) for the caller to read the
/// answer and what follows it: a `capture` with `"fd": true` (`usernet ctl capture -w FILE`).
pub fn connect_with_fd(
    path: &Path,
    req: &Request,
    fd: Option<std::os::fd::BorrowedFd<'_>>,
) -> Result<UnixStream> {
    let ctx = || format!("control socket {}", path.display());
    let s = UnixStream::connect(path).map_err(|e| Error::Io(ctx(), e))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| Error::Io(ctx(), e))?;
    let mut line =
        serde_json::to_string(req).map_err(|e| Error::invalid("request", e.to_string()))?;
    line.push('\n');
    crate::sys::scm::send_with_fd(s.as_fd(), line.as_bytes(), fd)
        .map_err(|e| Error::Io(ctx(), e))?;
    Ok(s)
}

/// Sends one request to the daemon at `path` and returns its `result`; a refused request comes
/// back as [`Error::Io`] carrying the daemon's error message (of the kind of its `errno`, when
/// the daemon sent one: e.g. [`io::ErrorKind::PermissionDenied`] for `EPERM`).
pub fn request(path: &Path, req: &Request) -> Result<Value> {
    request_with_fd(path, req, None)
}

/// Like [`request`], passing `fd` with the request line (`SCM_RIGHTS`): the TAP of an
/// `add_port` whose port has `"fd": true` (see [`super::rootless`]).
pub fn request_with_fd(
    path: &Path,
    req: &Request,
    fd: Option<std::os::fd::BorrowedFd<'_>>,
) -> Result<Value> {
    let ctx = || format!("control socket {}", path.display());
    let s = connect_with_fd(path, req, fd)?;
    let mut resp = String::new();
    BufReader::new(&s)
        .take(64 << 20)
        .read_line(&mut resp)
        .map_err(|e| Error::Io(ctx(), e))?;
    let v: Value = serde_json::from_str(&resp)
        .map_err(|e| Error::invalid("response", format!("{e}: {resp:?}")))?;
    if v.get("ok") == Some(&Value::Bool(true)) {
        Ok(v.get("result").cloned().unwrap_or(Value::Null))
    } else {
        let msg = v
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("unknown error")
            .to_string();
        let kind = v
            .get("errno")
            .and_then(Value::as_i64)
            .and_then(|n| i32::try_from(n).ok())
            .filter(|n| *n > 0)
            .map_or(io::ErrorKind::Other, |n| {
                io::Error::from_raw_os_error(n).kind()
            });
        Err(Error::Io(
            "request refused".into(),
            io::Error::new(kind, msg),
        ))
    }
}
