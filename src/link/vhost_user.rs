//! vhost-user-net backend: a VM's virtio-net queues served straight from its shared memory,
//! for QEMU `-netdev vhost-user,chardev=c0` (`-chardev socket,id=c0,path=SOCK`) and libvirt
//! `<interface type='vhostuser'>`. Built on the rust-vmm crates (`vhost-user-backend`,
//! `virtio-queue`, `vm-memory`).
//!
//! usernet listens on a UNIX socket (mode 0600 from creation); the VMM connects as the vhost-user
//! front-end, shares the guest's memory (QEMU needs `-object memory-backend-memfd,id=m,share=on,
//! size=...` and `-numa node,memdev=m`) and hands over the two queues' rings and eventfds.
//! One connection at a time; when it goes, the socket takes the next one.
//!
//! Inside usernet the port is one end of an in-process [`MemoryLink`] pair: the engine owns the
//! other end like any link. The backend's worker thread moves frames between the pair and the
//! queues: on a TX kick it reads each chain (virtio-net header, then the frame) into a frame; on
//! frames from the engine (the pair's eventfd, registered with the worker) or an RX kick it fills
//! the guest's RX buffers (a 12-byte header with `num_buffers = 1`, then the frame). Frames wait
//! in a bounded queue while the guest has posted no RX buffers; past it they are dropped. A chain
//! that is malformed (unmapped address, no room) is returned to the guest with nothing used and
//! counted; nothing the guest does is fatal to the port.
//!
//! Features offered: `VIRTIO_F_VERSION_1` (so the header is always 12 bytes) and vhost-user's
//! protocol features (the library adds `REPLY_ACK`); no offloads, no mergeable buffers, one
//! queue pair.
//!
//! The library accepts its connection itself, so usernet accepts the VMM's and relays the
//! control messages to it over a private socket (the rings and eventfds are passed through, so
//! the data path does not cross the relay). The relay fixes one incompatibility: QEMU 7.2 sends
//! `SET_VRING_ENABLE` when the guest sets its features, before `SET_FEATURES`, and
//! vhost-user-backend drops a connection that does that; the relay holds those requests and
//! passes the last one per ring on right after `SET_FEATURES`.
//!
//! QEMU 7.2 under TCG crashes starting any vhost device whose virtio-pci function uses MSI-X
//! (a null `vector_irqfd`, KVM-only); with TCG use `-device virtio-net-pci,netdev=n0,vectors=0`.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use vhost::vhost_user::Listener;
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackendMut, VhostUserDaemon, VringRwLock, VringT};
use virtio_queue::{QueueT, Reader, Writer};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    EventConsumer, EventFlag, EventNotifier, new_event_consumer_and_notifier,
};

use super::memory::MemoryLink;
use super::{Link, LinkCaps, LinkError, OpenError, RecvStats, SendStats};
use crate::frame::{Frame, FramePool};
use crate::sys::io::wait_readable;
use crate::sys::scm;

/// `VIRTIO_F_VERSION_1`.
const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// The virtio-net header with `VIRTIO_F_VERSION_1` (`num_buffers` included).
const HDR_LEN: usize = 12;
/// RX and TX.
const QUEUES: usize = 2;
const RX: u16 = 0;
const TX: u16 = 1;
/// The worker's event id for frames from the engine (ids up to [`QUEUES`] are the library's).
const ENGINE_EVENT: u16 = QUEUES as u16 + 1;
const QUEUE_SIZE: usize = 256;
/// Frames from the engine held while the guest has no RX buffer.
const PENDING_MAX: usize = 256;

/// Counters of a vhost-user port's backend (beyond the port's own).
#[derive(Debug, Default)]
pub struct VhostUserStats {
    /// Chains from the guest that could not be read or written (bad address, too short or too
    /// long for a frame): returned unused and dropped.
    pub bad_chains: AtomicU64,
    /// Frames for the guest dropped because it posted no RX buffer in time.
    pub rx_dropped: AtomicU64,
    /// Front-end connections accepted so far.
    pub connections: AtomicU64,
}

struct NetBackend {
    mem: GuestMemoryAtomic<GuestMemoryMmap>,
    end: MemoryLink,
    pool: FramePool,
    pending: VecDeque<Frame>,
    max_frame: usize,
    exit: Option<(EventConsumer, EventNotifier)>,
    stats: Arc<VhostUserStats>,
}

impl NetBackend {
    /// Guest TX: every available chain becomes a frame for the engine.
    fn tx(&mut self, vring: &VringRwLock) -> io::Result<()> {
        let mem = self.mem.memory();
        let mut used = false;
        loop {
            let chain = {
                let mut st = vring.get_mut();
                st.get_queue_mut().pop_descriptor_chain(mem.clone())
            };
            let Some(chain) = chain else { break };
            let head = chain.head_index();
            let frame = Reader::new(&*mem, chain).ok().and_then(|mut r| {
                let total = r.available_bytes();
                if total < HDR_LEN + 14 || total - HDR_LEN > self.max_frame {
                    return None;
                }
                let mut hdr = [0u8; HDR_LEN];
                r.read_exact(&mut hdr).ok()?;
                let mut f = self.pool.alloc();
                let area = f.recv_area(0);
                let n = total - HDR_LEN;
                r.read_exact(area.get_mut(..n)?).ok()?;
                f.set_received(n);
                Some(f)
            });
            match frame {
                Some(f) => {
                    // A full engine queue drops the frame (counted by the pair).
                    let _ = self.end.send(f);
                }
                None => {
                    self.stats.bad_chains.fetch_add(1, Ordering::Relaxed);
                }
            }
            vring
                .add_used(head, 0)
                .map_err(|e| io::Error::other(format!("TX add_used: {e}")))?;
            used = true;
        }
        if used {
            vring.signal_used_queue()?;
        }
        Ok(())
    }

    /// Guest RX: frames from the engine into the guest's posted buffers.
    fn rx(&mut self, vring: &VringRwLock) -> io::Result<()> {
        let mut fresh = Vec::new();
        // Drains the pair's eventfd too.
        if self.end.recv_batch(&self.pool, &mut fresh, 1024).is_err() {
            // The engine dropped its end (port removed): nothing more to deliver.
            self.pending.clear();
            return Ok(());
        }
        self.pending.extend(fresh);
        while self.pending.len() > PENDING_MAX {
            self.pending.pop_front();
            self.stats.rx_dropped.fetch_add(1, Ordering::Relaxed);
        }
        if !vring.get_ref().get_queue().ready() {
            return Ok(());
        }
        let mem = self.mem.memory();
        let mut used = false;
        while let Some(f) = self.pending.front() {
            let chain = {
                let mut st = vring.get_mut();
                st.get_queue_mut().pop_descriptor_chain(mem.clone())
            };
            let Some(chain) = chain else { break };
            let head = chain.head_index();
            let mut hdr = [0u8; HDR_LEN];
            hdr[10] = 1; // num_buffers
            let written = Writer::new(&*mem, chain).ok().and_then(|mut w| {
                if w.available_bytes() < HDR_LEN + f.len() {
                    return None;
                }
                w.write_all(&hdr).ok()?;
                w.write_all(f.data()).ok()?;
                Some(HDR_LEN + f.len())
            });
            if written.is_none() {
                self.stats.bad_chains.fetch_add(1, Ordering::Relaxed);
            }
            // A buffer too small for this frame is lost for it alone; the frame is dropped too
            // (the guest chose the size).
            self.pending.pop_front();
            vring
                .add_used(head, written.unwrap_or(0) as u32)
                .map_err(|e| io::Error::other(format!("RX add_used: {e}")))?;
            used = true;
        }
        if used {
            vring.signal_used_queue()?;
        }
        Ok(())
    }
}

impl VhostUserBackendMut for NetBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        QUEUES
    }

    fn max_queue_size(&self) -> usize {
        QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        // The protocol features are needed: QEMU 7.2 without them crashes at device start.
        VIRTIO_F_VERSION_1 | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::empty()
    }

    fn set_event_idx(&mut self, _enabled: bool) {}

    fn update_memory(&mut self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        self.mem = mem;
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        let (c, n) = self.exit.as_ref()?;
        Some((c.try_clone().ok()?, n.try_clone().ok()?))
    }

    fn handle_event(
        &mut self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        tracing::trace!(device_event, ?evset, "vhost-user event");
        if evset != EventSet::IN {
            return Ok(());
        }
        let (Some(rx), Some(tx)) = (vrings.get(RX as usize), vrings.get(TX as usize)) else {
            return Ok(());
        };
        match device_event {
            RX | ENGINE_EVENT => self.rx(rx),
            TX => {
                self.tx(tx)?;
                // Answers (the gateway's) may be waiting already.
                self.rx(rx)
            }
            _ => Ok(()),
        }
    }
}

/// A vhost-user-net port's backend: the listening socket and its service thread. Dropping it
/// stops the thread, closes the VMM connection and removes the socket file.
pub struct VhostUserNet {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    stats: Arc<VhostUserStats>,
}

impl std::fmt::Debug for VhostUserNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhostUserNet").finish_non_exhaustive()
    }
}

impl VhostUserNet {
    /// Binds `path` (which must not exist; mode 0600) and serves vhost-user-net front-ends on
    /// it, one at a time. Returns the backend and the link the engine adds as the port.
    /// `max_frame` is the largest frame either way; `what` names the port in logs.
    pub fn listen(
        path: &Path,
        max_frame: usize,
        what: &str,
    ) -> Result<(VhostUserNet, VhostUserLink), OpenError> {
        let err = |w: &str, e| OpenError::new(format!("{w} {}", path.display()), e);
        let listener = crate::sys::sock::bind_private(path)
            .map_err(|e| err("binding vhost-user socket", e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| err("vhost-user socket", e))?;
        let (engine_end, end) =
            MemoryLink::pair(1024, max_frame).map_err(|e| err("vhost-user frame queue", e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(VhostUserStats::default());
        let backend = NetBackend {
            mem: GuestMemoryAtomic::new(GuestMemoryMmap::new()),
            end,
            pool: FramePool::new(max_frame, 256),
            pending: VecDeque::new(),
            max_frame,
            exit: None,
            stats: stats.clone(),
        };
        let ctx = Service {
            path: path.to_path_buf(),
            what: what.to_string(),
            stop: stop.clone(),
            backend: Arc::new(RwLock::new(backend)),
            stats: stats.clone(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("usernet-vhost-{what}"))
            .spawn(move || ctx.run(listener))
            .map_err(|e| err("spawning the vhost-user thread for", e))?;
        Ok((
            VhostUserNet {
                stop,
                thread: Some(thread),
                stats,
            },
            VhostUserLink(engine_end),
        ))
    }

    /// The backend's counters.
    pub fn stats(&self) -> &VhostUserStats {
        &self.stats
    }

    /// The flag that stops the service (set it, and the thread ends within 100 ms).
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Lets the service run on its own: it stops when its stop flag is set or the engine drops
    /// the port's link.
    pub fn detach(mut self) {
        self.thread.take();
    }
}

impl Drop for VhostUserNet {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.stop.store(true, Ordering::Release);
            let _ = t.join();
        }
    }
}

struct Service {
    path: PathBuf,
    what: String,
    stop: Arc<AtomicBool>,
    backend: Arc<RwLock<NetBackend>>,
    stats: Arc<VhostUserStats>,
}

impl Service {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire) || self.engine_gone()
    }

    fn engine_gone(&self) -> bool {
        self.backend
            .read()
            .map(|b| b.end.peer_closed())
            .unwrap_or(true)
    }

    fn run(self, listener: UnixListener) {
        let mut n = 0u64;
        while !self.stopped() {
            let ready = wait_readable([listener.as_fd()], Some(Duration::from_millis(100)));
            if !matches!(ready, Ok([true])) {
                continue;
            }
            let Ok((front, _)) = listener.accept() else {
                continue;
            };
            n += 1;
            if let Err(e) = self.serve_one(front, n) {
                tracing::warn!(port = %self.what, "vhost-user front-end: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let _ = std::fs::remove_file(&self.path);
    }

    /// Accepts one front-end and serves it until it goes (or the port is removed).
    fn serve_one(&self, front: UnixStream, n: u64) -> Result<(), String> {
        front
            .set_nonblocking(false)
            .map_err(|e| format!("front-end socket: {e}"))?;
        let exit = new_event_consumer_and_notifier(EventFlag::NONBLOCK)
            .map_err(|e| format!("exit event: {e}"))?;
        let exit_notify = exit.1.try_clone().map_err(|e| format!("exit event: {e}"))?;
        {
            let mut b = self.backend.write().map_err(|_| "backend lock poisoned")?;
            b.exit = Some(exit);
            b.pending.clear();
            b.mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        }
        let mut daemon = VhostUserDaemon::new(
            format!("usernet-vhost-{}", self.what),
            self.backend.clone(),
            GuestMemoryAtomic::new(GuestMemoryMmap::new()),
        )
        .map_err(|e| format!("{e}"))?;
        let engine_fd = self
            .backend
            .read()
            .map_err(|_| "backend lock poisoned")?
            .end
            .as_raw_fd();
        for h in daemon.get_epoll_handlers() {
            h.register_listener(engine_fd, EventSet::IN, u64::from(ENGINE_EVENT))
                .map_err(|e| format!("registering the frame queue: {e}"))?;
        }
        // The library accepts its connection itself: hand it ours through a private socket
        // (0600, removed once accepted) with the relay in between.
        let inner = PathBuf::from(format!(
            "{}.{}-{n}.relay",
            self.path.display(),
            std::process::id()
        ));
        let _ = std::fs::remove_file(&inner);
        let l = crate::sys::sock::bind_private(&inner)
            .map_err(|e| format!("relay socket {}: {e}", inner.display()))?;
        let back = UnixStream::connect(&inner);
        let started = daemon.start(&mut Listener::from(l));
        let _ = std::fs::remove_file(&inner);
        let back = back.map_err(|e| format!("relay connect: {e}"))?;
        started.map_err(|e| format!("{e}"))?;
        let relay = std::thread::Builder::new()
            .name(format!("usernet-vhost-relay-{}", self.what))
            .spawn(move || relay(front, back))
            .map_err(|e| format!("relay thread: {e}"))?;
        self.stats.connections.fetch_add(1, Ordering::Relaxed);
        tracing::info!(port = %self.what, "vhost-user front-end connected");
        // Watches for the port's removal while the connection lasts.
        let done = Arc::new(AtomicBool::new(false));
        let watcher = daemon.shutdown_handle().map(|h| {
            let (done, stop, backend) = (done.clone(), self.stop.clone(), self.backend.clone());
            std::thread::spawn(move || {
                while !done.load(Ordering::Acquire) {
                    let gone = backend.read().map(|b| b.end.peer_closed()).unwrap_or(true);
                    if stop.load(Ordering::Acquire) || gone {
                        h.shutdown();
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        });
        let r = daemon.wait();
        let _ = relay.join();
        done.store(true, Ordering::Release);
        if let Some(w) = watcher {
            let _ = w.join();
        }
        let _ = exit_notify.notify();
        tracing::info!(port = %self.what, "vhost-user front-end gone");
        r.map_err(|e| format!("{e}"))
    }
}

/// The engine's side of a vhost-user port: frames to and from the backend's worker.
#[derive(Debug)]
pub struct VhostUserLink(MemoryLink);

impl Link for VhostUserLink {
    fn kind(&self) -> &'static str {
        "vhost-user"
    }

    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }

    fn caps(&self) -> LinkCaps {
        self.0.caps()
    }

    fn recv_batch(
        &mut self,
        pool: &FramePool,
        out: &mut Vec<Frame>,
        max: usize,
    ) -> Result<RecvStats, LinkError> {
        self.0.recv_batch(pool, out, max)
    }

    fn send_batch(&mut self, queue: &mut VecDeque<Frame>) -> Result<SendStats, LinkError> {
        self.0.send_batch(queue)
    }
}

/// vhost-user requests the relay looks at.
const REQ_SET_FEATURES: u32 = 2;
const REQ_RESET_OWNER: u32 = 4;
const REQ_SET_VRING_ENABLE: u32 = 18;
/// Header flags: version 1, reply, need-reply.
const FLAG_VERSION: u32 = 0x1;
const FLAG_REPLY: u32 = 0x4;
const FLAG_NEED_REPLY: u32 = 0x8;
/// Largest message body relayed (the memory table with 8 regions is 328 bytes).
const MAX_BODY: usize = 4096;
/// Most descriptors one message carries (SET_MEM_TABLE: 8).
const MAX_FDS: usize = scm::MAX_MANY_FDS;

/// One vhost-user message: header fields, body, attached descriptors.
struct Msg {
    req: u32,
    flags: u32,
    body: Vec<u8>,
    fds: Vec<std::os::fd::OwnedFd>,
}

/// Reads one message (`None`: closed or broken).
fn read_msg(sock: &UnixStream) -> Option<Msg> {
    let mut hdr = [0u8; 12];
    let got = scm::recv_with_many_fds(sock.as_fd(), &mut hdr).ok()?;
    if got.len != hdr.len() {
        return None;
    }
    let fds = got.fds;
    let word = |i: usize| u32::from_le_bytes([hdr[i], hdr[i + 1], hdr[i + 2], hdr[i + 3]]);
    let (req, flags, size) = (word(0), word(4), word(8) as usize);
    if size > MAX_BODY {
        return None;
    }
    let mut body = vec![0u8; size];
    let mut r = sock;
    r.read_exact(&mut body).ok()?;
    Some(Msg {
        req,
        flags,
        body,
        fds,
    })
}

/// Writes one message with its descriptors.
fn write_msg(sock: &UnixStream, m: &Msg) -> bool {
    let mut buf = Vec::with_capacity(12 + m.body.len());
    buf.extend_from_slice(&m.req.to_le_bytes());
    buf.extend_from_slice(&m.flags.to_le_bytes());
    buf.extend_from_slice(&(m.body.len() as u32).to_le_bytes());
    buf.extend_from_slice(&m.body);
    let mut fds = [sock.as_fd(); MAX_FDS];
    let Some(fds) = fds.get_mut(..m.fds.len()) else {
        return false;
    };
    for (slot, fd) in fds.iter_mut().zip(&m.fds) {
        *slot = fd.as_fd();
    }
    scm::send_with_fds(sock.as_fd(), &buf, fds).is_ok()
}

/// Relays vhost-user messages between the front-end (the VMM) and the library's handler, until
/// either side closes. One fix-up: QEMU sends `SET_VRING_ENABLE` when the guest sets its
/// features, before `SET_FEATURES` acks `VHOST_USER_F_PROTOCOL_FEATURES`; vhost-user-backend
/// rejects that (and drops the connection). Until `SET_FEATURES`, such a request is answered
/// here (acked if asked) and held; the last state of each ring is passed on right after
/// `SET_FEATURES`.
fn relay(front: UnixStream, back: UnixStream) {
    let mut features_set = false;
    // The last enable state asked for each ring before SET_FEATURES, replayed after it.
    let mut held: Vec<(Vec<u8>, Msg)> = Vec::new();
    loop {
        let ready = match wait_readable([front.as_fd(), back.as_fd()], None) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        if ready[0] {
            let Some(m) = read_msg(&front) else { break };
            tracing::trace!(req = m.req, flags = m.flags, body = ?m.body, fds = m.fds.len(), "vhost-user request");
            if m.req == REQ_RESET_OWNER {
                features_set = false;
            }
            if m.req == REQ_SET_FEATURES {
                features_set = true;
                if !write_msg(&back, &m) {
                    break;
                }
                let mut ok = true;
                for (_, h) in held.drain(..) {
                    ok &= write_msg(&back, &h);
                }
                if !ok {
                    break;
                }
                continue;
            }
            if m.req == REQ_SET_VRING_ENABLE && !features_set {
                // The ring index is the body's first 4 bytes.
                let index = m.body.get(..4).unwrap_or_default().to_vec();
                let replay = Msg {
                    req: m.req,
                    flags: FLAG_VERSION,
                    body: m.body.clone(),
                    fds: Vec::new(),
                };
                held.retain(|(i, _)| *i != index);
                held.push((index, replay));
                if m.flags & FLAG_NEED_REPLY != 0 {
                    let ack = Msg {
                        req: m.req,
                        flags: FLAG_VERSION | FLAG_REPLY,
                        body: 0u64.to_le_bytes().to_vec(),
                        fds: Vec::new(),
                    };
                    if !write_msg(&front, &ack) {
                        break;
                    }
                }
                continue;
            }
            if !write_msg(&back, &m) {
                break;
            }
        }
        if ready[1] {
            let Some(m) = read_msg(&back) else { break };
            if !write_msg(&front, &m) {
                break;
            }
        }
    }
    let _ = front.shutdown(std::net::Shutdown::Both);
    let _ = back.shutdown(std::net::Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(req: u32, flags: u32, body: &[u8]) -> Msg {
        Msg {
            req,
            flags,
            body: body.to_vec(),
            fds: Vec::new(),
        }
    }

    fn readable(s: &UnixStream, ms: u64) -> bool {
        matches!(
            wait_readable([s.as_fd()], Some(Duration::from_millis(ms))),
            Ok([true])
        )
    }

    #[test]
    fn relay_holds_early_vring_enable_until_set_features_and_passes_fds() {
        let (vmm, front) = UnixStream::pair().expect("pair");
        let (back, lib) = UnixStream::pair().expect("pair");
        // A message that never comes fails the test instead of hanging it.
        for s in [&vmm, &lib] {
            s.set_read_timeout(Some(Duration::from_secs(2)))
                .expect("timeout");
        }
        let t = std::thread::spawn(move || relay(front, back));
        let enable = |ring: u8, on: u8| [ring, 0, 0, 0, on, 0, 0, 0];
        // Early enables: held; the one asking for a reply is acked by the relay itself.
        assert!(write_msg(
            &vmm,
            &msg(REQ_SET_VRING_ENABLE, FLAG_VERSION, &enable(0, 0))
        ));
        assert!(write_msg(
            &vmm,
            &msg(REQ_SET_VRING_ENABLE, FLAG_VERSION, &enable(0, 1))
        ));
        assert!(write_msg(
            &vmm,
            &msg(
                REQ_SET_VRING_ENABLE,
                FLAG_VERSION | FLAG_NEED_REPLY,
                &enable(1, 1)
            )
        ));
        let ack = read_msg(&vmm).expect("ack");
        assert_eq!(
            (ack.req, ack.flags),
            (REQ_SET_VRING_ENABLE, FLAG_VERSION | FLAG_REPLY)
        );
        assert_eq!(ack.body, vec![0u8; 8]);
        assert!(
            !readable(&lib, 100),
            "nothing reaches the library before SET_FEATURES"
        );
        // SET_FEATURES, then the last state of each ring.
        assert!(write_msg(
            &vmm,
            &msg(REQ_SET_FEATURES, FLAG_VERSION, &[0, 0, 0, 0x40, 1, 0, 0, 0])
        ));
        let f = read_msg(&lib).expect("features");
        assert_eq!(f.req, REQ_SET_FEATURES);
        let a = read_msg(&lib).expect("ring 0");
        let b = read_msg(&lib).expect("ring 1");
        assert_eq!(
            (a.req, a.body),
            (REQ_SET_VRING_ENABLE, enable(0, 1).to_vec())
        );
        assert_eq!(
            (b.req, b.body),
            (REQ_SET_VRING_ENABLE, enable(1, 1).to_vec())
        );
        // After it, enables pass straight through; descriptors cross both ways.
        assert!(write_msg(
            &vmm,
            &msg(REQ_SET_VRING_ENABLE, FLAG_VERSION, &enable(0, 0))
        ));
        assert_eq!(read_msg(&lib).expect("enable").body, enable(0, 0).to_vec());
        let (passed, _other) = UnixStream::pair().expect("pair");
        let mut kick = msg(12, FLAG_VERSION, &[0; 8]);
        kick.fds.push(std::os::fd::OwnedFd::from(passed));
        assert!(write_msg(&vmm, &kick));
        let got = read_msg(&lib).expect("kick");
        assert_eq!((got.req, got.fds.len()), (12, 1));
        assert!(write_msg(&lib, &msg(1, FLAG_VERSION | FLAG_REPLY, &[1; 8])));
        assert_eq!(read_msg(&vmm).expect("reply").body, vec![1; 8]);
        // A body over the limit ends the connection (both sides), nothing else.
        let mut hdr = Vec::new();
        for w in [1u32, FLAG_VERSION, (MAX_BODY + 1) as u32] {
            hdr.extend_from_slice(&w.to_le_bytes());
        }
        (&vmm).write_all(&hdr).expect("write");
        t.join().expect("relay ends");
        assert!(read_msg(&lib).is_none(), "library side closed");
    }
}
