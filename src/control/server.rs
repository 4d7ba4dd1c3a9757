//! The control socket: JSON lines over a UNIX stream socket, mode 0600.
//!
//! [`serve`] binds the socket (refusing to steal one that a live instance answers on, removing a
//! stale one), then answers requests on a background thread until the engine stops. Each
//! connection may send any number of request lines; a line longer than 1 MiB ends the connection.
//! [`request`] is the client side used by `usernet ctl`.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;

use super::Handle;
use super::api::{Request, handle_line};
use crate::error::{Error, Result};

const MAX_LINE: u64 = 1 << 20;

/// The default control socket path: `$USERNET_SOCKET`, else `/run/usernet/usernet.sock` for
/// root, else `$XDG_RUNTIME_DIR/usernet.sock`, else `/tmp/usernet-UID.sock`.
pub fn default_socket_path() -> PathBuf {
    if let Some(p) = std::env::var_os("USERNET_SOCKET") {
        return PathBuf::from(p);
    }
    // SAFETY: geteuid cannot fail and touches no memory.
    let uid = unsafe { libc::geteuid() };
    if uid == 0 {
        return PathBuf::from("/run/usernet/usernet.sock");
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR") {
        return Path::new(&d).join("usernet.sock");
    }
    PathBuf::from(format!("/tmp/usernet-{uid}.sock"))
}

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
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Io(format!("creating {}", dir.display()), e))?;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
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
    let listener = UnixListener::bind(path)
        .map_err(|e| Error::Io(format!("binding control socket {}", path.display()), e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::Io(format!("chmod 0600 {}", path.display()), e))?;
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

fn accept_loop(handle: Handle, listener: UnixListener, stop: Arc<AtomicBool>) {
    while !handle.is_stopped() && !stop.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((conn, _)) => {
                let h = handle.clone();
                let _ = std::thread::Builder::new()
                    .name("usernet-ctl-conn".into())
                    .spawn(move || serve_conn(h, conn));
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
    let mut reader = BufReader::new(conn);
    loop {
        let mut line = String::new();
        match (&mut reader).take(MAX_LINE).read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if !line.ends_with('\n') && line.len() as u64 >= MAX_LINE {
            let _ = writeln!(out, r#"{{"ok":false,"error":"request longer than 1 MiB"}}"#);
            return;
        }
        if line.trim().is_empty() {
            continue;
        }
        let resp = handle_line(&handle, line.trim());
        if writeln!(out, "{resp}").is_err() {
            return;
        }
    }
}

/// Sends one request to the daemon at `path` and returns its `result`; a refused request comes
/// back as [`Error::Io`] carrying the daemon's error message.
pub fn request(path: &Path, req: &Request) -> Result<Value> {
    let ctx = || format!("control socket {}", path.display());
    let mut s = UnixStream::connect(path).map_err(|e| Error::Io(ctx(), e))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| Error::Io(ctx(), e))?;
    let line = serde_json::to_string(req).map_err(|e| Error::invalid("request", e.to_string()))?;
    writeln!(s, "{line}").map_err(|e| Error::Io(ctx(), e))?;
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
        Err(Error::Io("request refused".into(), io::Error::other(msg)))
    }
}
