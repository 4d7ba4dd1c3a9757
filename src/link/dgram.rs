//! Datagram link: Ethernet frames over a UNIX datagram socket, one frame per datagram with no
//! header or length prefix — the transport of QEMU's `-netdev dgram`, vfkit and gvproxy
//! (`unixgram://`), libkrun. usernet binds the socket (mode 0600 from creation); a VM joins with
//! `qemu-system-x86_64 -netdev dgram,id=n0,local.type=unix,local.path=VM_SOCK,remote.type=unix,remote.path=SOCK`.
//!
//! The peer: given (a path), or learned from the first datagram's source address (the VM's own
//! bound socket, `local.path` above). Datagrams from any other sender are dropped and counted
//! ([`DgramLink::foreign`]); a sender without an address (an unbound socket) can never be answered
//! and is dropped too. A learned peer that is gone (its socket closed: a connect probe or a send
//! is refused) is forgotten, so the next VM on the same port is learned in turn. vfkit's old
//! 4-byte `VFKT` greeting is consumed (it only teaches the peer).
//!
//! Reading: each datagram is received straight into a pooled frame buffer; its real length is
//! asked for (`MSG_TRUNC`), so a datagram longer than the link's maximum frame is dropped and
//! counted as `oversize`. A datagram shorter than an Ethernet header is handed on and counted
//! as a runt by the bridge. Nothing a sender does is fatal to the port.
//!
//! Writing: `sendto` the peer, one datagram per frame. A full peer queue (`EAGAIN`) connects the
//! socket to the peer, which makes the kernel signal writability when the peer has read (an
//! unconnected datagram socket is always "writable"); once the backlog is gone the socket is
//! disconnected again, so a new VM may be learned. With no peer yet, frames are dropped and
//! counted as link errors.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use socket2::{Domain, SockAddr, Socket, Type};

use super::{Link, LinkCaps, LinkError, OpenError, RecvStats, SendStats};
use crate::frame::{Frame, FramePool};

/// vfkit's greeting datagram (older vfkit versions send it first; gvproxy consumes it too).
const VFKIT_MAGIC: &[u8] = b"VFKT";

/// Least time between two liveness probes of a learned peer (one per foreign datagram at most).
const PROBE_EVERY: Duration = Duration::from_millis(500);

/// A UNIX datagram socket carrying one frame per datagram. See the module docs.
pub struct DgramLink {
    sock: Socket,
    path: PathBuf,
    /// Device and inode of the socket file we bound, so drop removes only our own.
    ident: Option<(u64, u64)>,
    peer: Option<SockAddr>,
    /// The peer was given (never forgotten), not learned.
    fixed: bool,
    /// The socket is connected to the peer (while sends would block).
    connected: bool,
    max_frame: usize,
    foreign: u64,
    last_probe: Option<Instant>,
    what: String,
}

impl std::fmt::Debug for DgramLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DgramLink")
            .field("path", &self.path)
            .field("peer", &self.peer.as_ref().map(describe))
            .finish()
    }
}

fn describe(a: &SockAddr) -> String {
    if let Some(p) = a.as_pathname() {
        p.display().to_string()
    } else if let Some(n) = a.as_abstract_namespace() {
        format!("@{}", String::from_utf8_lossy(n))
    } else {
        "(unnamed)".into()
    }
}

/// Same UNIX address (a path, or an abstract name); unnamed addresses are never the same.
fn same(a: &SockAddr, b: &SockAddr) -> bool {
    match (a.as_pathname(), b.as_pathname()) {
        (Some(x), Some(y)) => x == y,
        (None, None) => matches!(
            (a.as_abstract_namespace(), b.as_abstract_namespace()),
            (Some(x), Some(y)) if x == y
        ),
        _ => false,
    }
}

/// True while a datagram socket is bound at `addr` (a connect probe from a fresh socket: it
/// sends nothing; a live socket connected elsewhere refuses with `EPERM`, still alive).
fn alive(addr: &SockAddr) -> bool {
    match Socket::new(Domain::UNIX, Type::DGRAM, None) {
        Ok(s) => match s.connect(addr) {
            Ok(()) => true,
            Err(e) => !peer_gone(&e),
        },
        // Cannot tell: keep the peer.
        Err(_) => true,
    }
}

/// A sender that can be answered: bound to a path or an abstract name (an unbound sender's
/// address comes back empty).
fn named(a: &SockAddr) -> bool {
    a.as_pathname().is_some() || a.as_abstract_namespace().is_some()
}

fn peer_gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ECONNREFUSED) | Some(libc::ENOENT) | Some(libc::ENOTCONN)
    )
}

impl DgramLink {
    /// Binds a datagram socket at `path` (which must not exist; mode 0600 from creation) with
    /// `peer` as the fixed peer, or none to learn it. `max_frame` is the largest frame taken
    /// from the peer; `what` names the port in logs.
    pub fn bind(
        path: &Path,
        peer: Option<&Path>,
        max_frame: usize,
        what: &str,
    ) -> Result<DgramLink, OpenError> {
        let err = |w: &str, e| OpenError::new(format!("{w} {}", path.display()), e);
        let sock = Socket::new(Domain::UNIX, Type::DGRAM.nonblocking().cloexec(), None)
            .map_err(|e| err("creating datagram socket", e))?;
        // The bound file takes the inode's mode.
        crate::sys::sock::make_private(&sock).map_err(|e| err("fchmod", e))?;
        let addr = SockAddr::unix(path).map_err(|e| err("socket path", e))?;
        sock.bind(&addr).map_err(|e| err("binding", e))?;
        let meta = std::fs::symlink_metadata(path);
        let mode = meta.as_ref().map(|m| m.mode() & 0o7777);
        if !matches!(mode, Ok(m) if m & 0o077 == 0) {
            let _ = std::fs::remove_file(path);
            return Err(err(
                "binding",
                io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!("the socket was not created private (mode {mode:?}, wanted 0600)"),
                ),
            ));
        }
        // Room for bursts both ways (as gvproxy sets them); best effort.
        let _ = sock.set_send_buffer_size(1 << 20);
        let _ = sock.set_recv_buffer_size(4 << 20);
        let peer =
            match peer {
                Some(p) => Some(SockAddr::unix(p).map_err(|e| {
                    OpenError::new(format!("datagram peer path {}", p.display()), e)
                })?),
                None => None,
            };
        Ok(DgramLink {
            sock,
            path: path.to_path_buf(),
            ident: meta.ok().map(|m| (m.dev(), m.ino())),
            fixed: peer.is_some(),
            peer,
            connected: false,
            max_frame,
            foreign: 0,
            last_probe: None,
            what: what.to_string(),
        })
    }

    /// The peer's address (a path or `@abstract`), once known.
    pub fn peer(&self) -> Option<String> {
        self.peer.as_ref().map(describe)
    }

    /// Datagrams dropped because they came from another sender than the peer (or from an
    /// unbound socket that cannot be answered).
    pub fn foreign(&self) -> u64 {
        self.foreign
    }

    /// Accepts (true) or drops (false) a datagram from `src`, learning the peer if needed.
    fn admit(&mut self, src: &SockAddr) -> bool {
        if let Some(p) = &self.peer {
            if same(p, src) {
                return true;
            }
            if !named(src) || self.fixed {
                return self.refuse(src);
            }
            // A learned peer that is gone gives way to the new sender.
            let due = self.last_probe.is_none_or(|t| t.elapsed() >= PROBE_EVERY);
            if !due {
                return self.refuse(src);
            }
            self.last_probe = Some(Instant::now());
            if alive(p) {
                return self.refuse(src);
            }
            tracing::info!(port = %self.what, old = %describe(p), "datagram peer gone");
            self.forget();
        }
        if !named(src) {
            return self.refuse(src);
        }
        tracing::info!(port = %self.what, peer = %describe(src), "datagram peer learned");
        self.peer = Some(src.clone());
        true
    }

    fn refuse(&mut self, src: &SockAddr) -> bool {
        self.foreign += 1;
        if self.foreign == 1 || self.foreign.is_power_of_two() {
            tracing::warn!(
                port = %self.what,
                from = %describe(src),
                dropped = self.foreign,
                "datagram from another sender than the peer dropped"
            );
        }
        false
    }

    fn forget(&mut self) {
        if !self.fixed {
            self.peer = None;
        }
        self.disconnect();
    }

    fn disconnect(&mut self) {
        if !self.connected {
            return;
        }
        self.connected = false;
        let _ = crate::sys::sock::disconnect(&self.sock);
    }
}

impl Drop for DgramLink {
    fn drop(&mut self) {
        // Remove the socket file if it is still the one we bound.
        let ours = std::fs::symlink_metadata(&self.path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if ours.is_some() && ours == self.ident {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Link for DgramLink {
    fn kind(&self) -> &'static str {
        "dgram"
    }

    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
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
        let limit = self.max_frame.min(pool.max_frame());
        // Bound the reads so a stream of dropped datagrams cannot hold the loop.
        let mut reads_left = max.saturating_mul(4).saturating_add(16);
        while st.frames < max && reads_left > 0 {
            reads_left -= 1;
            let mut frame = pool.alloc();
            let area = frame.recv_area(0);
            let cap = area.len();
            match crate::sys::sock::recv_from_trunc(&self.sock, area) {
                Ok((n, src)) => {
                    if !self.admit(&src) {
                        continue;
                    }
                    if n > cap || n > limit {
                        st.oversize += 1;
                        continue;
                    }
                    frame.set_received(n);
                    if frame.data() == VFKIT_MAGIC {
                        continue;
                    }
                    out.push(frame);
                    st.frames += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    st.drained = true;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if peer_gone(&e) || e.raw_os_error() == Some(libc::ECONNRESET) => {
                    // A pending error from an earlier send to a peer now gone: not ours.
                    self.forget();
                }
                Err(e) => {
                    let e = super::classify(e);
                    if e.is_fatal() || st.frames == 0 {
                        return Err(e);
                    }
                    break;
                }
            }
        }
        Ok(st)
    }

    fn send_batch(&mut self, queue: &mut VecDeque<Frame>) -> Result<SendStats, LinkError> {
        let mut st = SendStats::default();
        let mut connect_tried = false;
        while let Some(f) = queue.front() {
            let Some(peer) = &self.peer else {
                // Nobody to send to yet.
                st.errors += queue.len();
                queue.clear();
                break;
            };
            if f.len() > self.max_frame {
                queue.pop_front();
                st.errors += 1;
                continue;
            }
            match self
                .sock
                .send_to_with_flags(f.data(), peer, libc::MSG_NOSIGNAL)
            {
                Ok(_) => {
                    st.frames += 1;
                    st.bytes += f.len();
                    queue.pop_front();
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.raw_os_error() == Some(libc::ENOBUFS) =>
                {
                    if self.connected || connect_tried {
                        // The kernel wakes us when the peer has read.
                        return Ok(st);
                    }
                    connect_tried = true;
                    if self.sock.connect(peer).is_ok() {
                        self.connected = true;
                    } else {
                        return Ok(st);
                    }
                }
                Err(e) if peer_gone(&e) => {
                    if !self.fixed {
                        tracing::info!(port = %self.what, peer = %describe(peer), "datagram peer gone");
                        self.forget();
                        st.errors += queue.len();
                        queue.clear();
                        break;
                    }
                    // A given peer that is not there (yet): this frame is lost.
                    self.disconnect();
                    queue.pop_front();
                    st.errors += 1;
                }
                Err(e) => {
                    let e = super::classify(e);
                    if e.is_fatal() {
                        return Err(e);
                    }
                    tracing::trace!(port = %self.what, error = %e, "datagram send dropped a frame");
                    queue.pop_front();
                    st.errors += 1;
                }
            }
        }
        if queue.is_empty() {
            self.disconnect();
        }
        Ok(st)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    fn setup() -> (tempfile::TempDir, DgramLink, FramePool) {
        let dir = tempfile::tempdir().expect("tempdir");
        let link = DgramLink::bind(&dir.path().join("u.sock"), None, 1514, "t").expect("bind");
        (dir, link, FramePool::new(1514, 64))
    }

    #[test]
    fn learns_the_peer_drops_strangers_oversize_and_greeting() {
        let (dir, mut link, pool) = setup();
        let mode = std::fs::metadata(dir.path().join("u.sock"))
            .expect("meta")
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let vm = UnixDatagram::bind(dir.path().join("vm.sock")).expect("vm");
        vm.connect(dir.path().join("u.sock")).expect("connect");
        vm.send(VFKIT_MAGIC).expect("greet");
        vm.send(&[1u8; 60]).expect("send");
        vm.send(&[2u8; 1515]).expect("oversize");
        vm.send(&[3u8; 1514]).expect("send");
        let stranger = UnixDatagram::unbound().expect("unbound");
        stranger
            .send_to(&[9u8; 60], dir.path().join("u.sock"))
            .expect("stranger");
        let mut out = Vec::new();
        let st = link.recv_batch(&pool, &mut out, 64).expect("recv");
        let lens: Vec<usize> = out.iter().map(Frame::len).collect();
        assert_eq!(
            (st.frames, st.oversize, st.drained),
            (2, 1, true),
            "{lens:?}"
        );
        assert_eq!(out[0].data(), &[1u8; 60][..]);
        assert_eq!(out[1].data(), &[3u8; 1514][..]);
        assert_eq!(link.foreign(), 1);
        assert_eq!(
            link.peer().as_deref(),
            Some(dir.path().join("vm.sock").to_str().expect("utf-8"))
        );

        // Replies go to the learned peer, one datagram per frame.
        let mut q: VecDeque<Frame> = [Frame::from_slice(&[7u8; 64]), Frame::from_slice(&[8u8; 99])]
            .into_iter()
            .collect();
        let st = link.send_batch(&mut q).expect("send");
        assert_eq!((st.frames, st.errors), (2, 0));
        let mut b = [0u8; 2048];
        assert_eq!(vm.recv(&mut b).expect("recv"), 64);
        assert_eq!(vm.recv(&mut b).expect("recv"), 99);

        // The peer goes; a new VM is learned on its first datagram.
        drop(vm);
        let vm2 = UnixDatagram::bind(dir.path().join("vm2.sock")).expect("vm2");
        vm2.send_to(&[4u8; 60], dir.path().join("u.sock"))
            .expect("send");
        let st = link.recv_batch(&pool, &mut out, 64).expect("recv");
        assert_eq!(st.frames, 1);
        assert!(link.peer().is_some_and(|p| p.ends_with("vm2.sock")));
        drop(link);
        assert!(!dir.path().join("u.sock").exists(), "socket file removed");
    }

    #[test]
    fn backpressure_keeps_frames_until_the_peer_reads() {
        let (dir, mut link, pool) = setup();
        let vm = UnixDatagram::bind(dir.path().join("vm.sock")).expect("vm");
        vm.send_to(&[1u8; 60], dir.path().join("u.sock"))
            .expect("send");
        let mut out = Vec::new();
        link.recv_batch(&pool, &mut out, 8).expect("recv");
        let mut q: VecDeque<Frame> = (0..2000).map(|_| Frame::from_slice(&[5u8; 1000])).collect();
        let st = link.send_batch(&mut q).expect("send");
        assert!(st.frames > 0 && !q.is_empty(), "the peer's queue fills");
        assert_eq!(st.errors, 0);
        assert!(link.connected);
        // The peer reads everything; the rest goes on later calls.
        vm.set_nonblocking(true).expect("nb");
        let mut got = st.frames;
        let mut b = [0u8; 2048];
        let deadline = Instant::now() + Duration::from_secs(10);
        while got < 2000 {
            assert!(Instant::now() < deadline, "stuck at {got}");
            while vm.recv(&mut b).is_ok() {}
            got += link.send_batch(&mut q).expect("send").frames;
        }
        assert!(q.is_empty() && !link.connected);
    }

    #[test]
    fn fixed_peer_refuses_others_and_survives_absence() {
        let dir = tempfile::tempdir().expect("tempdir");
        let vm_path = dir.path().join("vm.sock");
        let mut link =
            DgramLink::bind(&dir.path().join("u.sock"), Some(&vm_path), 1514, "t").expect("bind");
        let pool = FramePool::new(1514, 8);
        // Not there yet: the frame is lost, the link stays.
        let mut q: VecDeque<Frame> = [Frame::from_slice(&[7u8; 64])].into_iter().collect();
        assert_eq!(link.send_batch(&mut q).expect("send").errors, 1);
        let other = UnixDatagram::bind(dir.path().join("o.sock")).expect("o");
        other
            .send_to(&[1u8; 60], dir.path().join("u.sock"))
            .expect("send");
        let vm = UnixDatagram::bind(&vm_path).expect("vm");
        vm.send_to(&[2u8; 60], dir.path().join("u.sock"))
            .expect("send");
        let mut out = Vec::new();
        let st = link.recv_batch(&pool, &mut out, 8).expect("recv");
        assert_eq!(st.frames, 1);
        assert_eq!(out[0].data(), &[2u8; 60][..]);
        assert_eq!(link.foreign(), 1);
        let mut q: VecDeque<Frame> = [Frame::from_slice(&[7u8; 64])].into_iter().collect();
        assert_eq!(link.send_batch(&mut q).expect("send").frames, 1);
    }
}
