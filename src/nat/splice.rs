//! Spliced port forwards: kernel-to-kernel relays for forwards into a namespace usernet can
//! enter.
//!
//! # Theory of operation
//!
//! A normal forward turns each accepted host connection into a TCP connection that usernet's
//! own TCP stack (smoltcp) opens towards the guest over its virtual link: every byte is copied
//! into userspace, cut into segments and written to the guest's TAP. When the guest's network
//! namespace is reachable (a `netns` port, `usernet run`), there is a shorter path, the one
//! pasta calls "splice": open a socket *inside* the guest's namespace (on a helper thread that
//! joined it with `setns`), connect it to the guest's address there (the kernel routes that over
//! the namespace's loopback), and move bytes between the two kernel sockets with `splice(2)`
//! through a pipe per direction, so they never enter userspace.
//!
//! The price: the guest sees the connection coming from its own address (a loopback-path
//! connection), not from the client. So a spliced forward (`splice = true`, a per-forward
//! choice, off by default) splices only the connections whose client address the guest could
//! not see on the regular path either (loopback clients, clients of the other IP family); a
//! connection from a real client takes the regular path and the guest sees its address (the
//! choice is made at accept, in [`super::forward_rt`]). This is pasta's rule too.
//!
//! One relay thread ([`Splicer`]) runs a mio loop over every spliced connection. For each
//! direction it alternates "socket -> pipe" and "pipe -> socket" splices until both would block;
//! edge-triggered readiness on the two sockets brings it back. End of stream on one side becomes
//! a `shutdown(SHUT_WR)` on the other once the pipe is drained (half-close works); an error on
//! either side resets both (`SO_LINGER` 0). Connects into the namespace are non-blocking; a
//! refused or failed connect resets the client.
//!
//! Bounds ([`SpliceLimits`]): each relayed connection holds four descriptors and two pipes, so a
//! forward relays at most [`DEFAULT_MAX_PER_FORWARD`] connections at once (a client beyond that
//! is reset at once, counted as `refused`), and a connection that moves no byte either way for
//! [`DEFAULT_IDLE`] (the NAT's TCP idle timeout, RFC 5382's two hours) is reset on both sides
//! (counted as `idle_closed`); that also ends connects the guest never answers. The relay sleeps
//! until the earliest idle deadline, so an idle relay does not wake up.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};

use super::balance::ConnGuard;
use crate::sys::pipe::{self, splice_once};
use crate::sys::sock;

/// The relay's waker; connection tokens are `id << 1 | side`.
const WAKE: Token = Token(usize::MAX);
/// Pipe size asked for each direction (the kernel may grant less).
const PIPE_SIZE: usize = 1 << 20;
/// Most connections one forward relays at once, by default.
pub const DEFAULT_MAX_PER_FORWARD: usize = 256;
/// A relayed connection with no byte either way for this long is closed, by default.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(7200);

/// The bounds of a [`Splicer`]. See the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SpliceLimits {
    /// Most connections relayed at once for one forward; more are reset.
    pub max_per_forward: usize,
    /// A connection with no byte either way for this long is reset on both sides.
    pub idle: Duration,
}

impl Default for SpliceLimits {
    fn default() -> Self {
        SpliceLimits {
            max_per_forward: DEFAULT_MAX_PER_FORWARD,
            idle: DEFAULT_IDLE,
        }
    }
}

/// The forward a connection counts against when none is named ([`Splicer::splice`]).
const ANY_FORWARD: u64 = u64::MAX;

/// Counters of a [`Splicer`].
#[derive(Debug, Default)]
pub struct SpliceCounters {
    /// Connections relayed (connect inside the namespace succeeded).
    pub connections: AtomicU64,
    /// Connects inside the namespace that failed (refused, unreachable, netns gone).
    pub connect_failed: AtomicU64,
    /// Bytes moved client -> guest.
    pub bytes_to_guest: AtomicU64,
    /// Bytes moved guest -> client.
    pub bytes_to_client: AtomicU64,
    /// Clients reset because their forward already relayed its most connections.
    pub refused: AtomicU64,
    /// Connections reset after moving no byte for the idle timeout.
    pub idle_closed: AtomicU64,
}

struct Job {
    /// A balanced forward's endpoint guard: held while the connection is relayed.
    hold: Option<ConnGuard>,
    forward: u64,
    client: std::net::TcpStream,
    to: Target,
}

/// Where a job's other side comes from.
enum Target {
    /// Connect to `guest` from inside the namespace at `netns`.
    Netns { netns: PathBuf, guest: SocketAddr },
    /// A non-blocking socket the caller made (connected or connecting).
    Socket(TcpStream),
}

enum Msg {
    Job(Job),
    Stop,
}

/// The relay thread for spliced forwards. Dropping it stops the thread and closes every
/// connection it relays.
pub struct Splicer {
    tx: Sender<Msg>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
    counters: Arc<SpliceCounters>,
}

impl std::fmt::Debug for Splicer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Splicer")
            .field("counters", &self.counters)
            .finish()
    }
}

impl Splicer {
    /// Starts the relay thread with the default [`SpliceLimits`].
    pub fn start() -> io::Result<Splicer> {
        Self::start_with(SpliceLimits::default())
    }

    /// Starts the relay thread with `limits`.
    pub fn start_with(limits: SpliceLimits) -> io::Result<Splicer> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
        let (tx, rx) = crossbeam_channel::unbounded();
        let counters = Arc::new(SpliceCounters::default());
        let c = counters.clone();
        let thread = std::thread::Builder::new()
            .name("usernet-splice".into())
            .spawn(move || Relay::new(poll, rx, c, limits).run())?;
        Ok(Splicer {
            tx,
            waker,
            thread: Some(thread),
            counters,
        })
    }

    /// Relays `client` (an accepted host connection) to `guest` as seen from inside the network
    /// namespace at `netns`. Returns at once; the connect happens on the relay thread.
    /// All connections relayed this way count against one shared cap; see
    /// [`Self::splice_forward`].
    pub fn splice(&self, client: std::net::TcpStream, netns: &Path, guest: SocketAddr) {
        self.splice_forward(ANY_FORWARD, client, netns, guest);
    }

    /// Like [`Self::splice`], counting the connection against forward `forward`'s cap.
    pub fn splice_forward(
        &self,
        forward: u64,
        client: std::net::TcpStream,
        netns: &Path,
        guest: SocketAddr,
    ) {
        self.splice_held(forward, client, netns, guest, None);
    }

    /// Like [`Self::splice_forward`], holding `hold` (a balanced forward's endpoint guard)
    /// while the connection is relayed.
    pub fn splice_held(
        &self,
        forward: u64,
        client: std::net::TcpStream,
        netns: &Path,
        guest: SocketAddr,
        hold: Option<ConnGuard>,
    ) {
        let job = Job {
            hold,
            forward,
            client,
            to: Target::Netns {
                netns: netns.to_path_buf(),
                guest,
            },
        };
        self.send(Msg::Job(job));
    }

    /// Relays `client` and `peer` (a non-blocking socket the caller opened: connected, or
    /// connecting) to each other, counting against forward `forward`'s cap and holding `hold`
    /// while it lasts. The cluster's service mesh relays its hops this way.
    pub fn relay(
        &self,
        forward: u64,
        client: std::net::TcpStream,
        peer: TcpStream,
        hold: Option<ConnGuard>,
    ) {
        let job = Job {
            hold,
            forward,
            client,
            to: Target::Socket(peer),
        };
        self.send(Msg::Job(job));
    }

    fn send(&self, m: Msg) {
        if self.tx.send(m).is_ok() {
            let _ = self.waker.wake();
        }
    }

    /// The relay's counters.
    pub fn counters(&self) -> &SpliceCounters {
        &self.counters
    }
}

impl Drop for Splicer {
    fn drop(&mut self) {
        self.send(Msg::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One direction of a relayed connection.
struct Dir {
    pipe_r: OwnedFd,
    pipe_w: OwnedFd,
    pipe_cap: usize,
    in_pipe: usize,
    eof: bool,
    shut: bool,
}

impl Dir {
    fn new() -> io::Result<Dir> {
        // A larger pipe moves more per call; refusal (pipe-max-size) keeps the default.
        let (pipe_r, pipe_w) = pipe::pipe(PIPE_SIZE)?;
        let cap = pipe::pipe_size(&pipe_w).unwrap_or(0);
        Ok(Dir {
            pipe_r,
            pipe_w,
            pipe_cap: if cap > 0 { cap } else { 65536 },
            in_pipe: 0,
            eof: false,
            shut: false,
        })
    }

    /// Moves what it can from `from` to `to`; returns bytes delivered to `to`.
    fn pump(&mut self, from: &TcpStream, to: &TcpStream) -> io::Result<u64> {
        let mut moved = 0u64;
        loop {
            let mut progress = false;
            if !self.eof && self.in_pipe < self.pipe_cap {
                let room = self.pipe_cap - self.in_pipe;
                match splice_once(from, &self.pipe_w, room)? {
                    Some(0) => self.eof = true,
                    Some(n) => {
                        self.in_pipe += n;
                        progress = true;
                    }
                    None => {}
                }
            }
            if self.in_pipe > 0
                && let Some(n) = splice_once(&self.pipe_r, to, self.in_pipe)?
            {
                self.in_pipe -= n;
                moved += n as u64;
                progress |= n > 0;
            }
            if self.eof && self.in_pipe == 0 && !self.shut {
                let _ = to.shutdown(std::net::Shutdown::Write);
                self.shut = true;
            }
            if !progress {
                return Ok(moved);
            }
        }
    }
}

struct Conn {
    _hold: Option<ConnGuard>,
    forward: u64,
    client: TcpStream,
    guest: TcpStream,
    connected: bool,
    /// When a byte last moved (or the connection started).
    last: Instant,
    to_guest: Dir,
    to_client: Dir,
}

impl Conn {
    fn done(&self) -> bool {
        self.to_guest.shut && self.to_client.shut
    }
}

struct Relay {
    poll: Poll,
    rx: Receiver<Msg>,
    conns: HashMap<usize, Conn>,
    next: usize,
    counters: Arc<SpliceCounters>,
    limits: SpliceLimits,
    /// Connections relayed per forward.
    per_forward: HashMap<u64, usize>,
    /// No connection goes idle before this (`None`: no connection).
    next_sweep: Option<Instant>,
}

/// Resets a TCP connection on close (SO_LINGER 0) so the peer sees the failure.
fn reset(s: &TcpStream) {
    let _ = sock::set_linger_zero(s);
}

/// A non-blocking TCP socket created inside the namespace at `netns`, connecting to `guest`.
fn connect_in(netns: &Path, guest: SocketAddr) -> io::Result<TcpStream> {
    let sock = crate::link::netns::run_in_netns(netns, move || start_connect(guest, None))
        .map_err(|e| io::Error::new(e.source.kind(), e.to_string()))?;
    Ok(TcpStream::from_std(sock.into()))
}

/// A non-blocking TCP socket (no Nagle) connecting to `to`, from address `from` if given
/// (port chosen by the kernel): the connect is in progress or done.
pub(crate) fn start_connect(
    to: SocketAddr,
    from: Option<std::net::IpAddr>,
) -> io::Result<socket2::Socket> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(to),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    s.set_nonblocking(true)?;
    s.set_tcp_nodelay(true)?;
    if let Some(ip) = from {
        s.bind(&SocketAddr::new(ip, 0).into())?;
    }
    match s.connect(&to.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(s)
}

impl Relay {
    fn new(
        poll: Poll,
        rx: Receiver<Msg>,
        counters: Arc<SpliceCounters>,
        limits: SpliceLimits,
    ) -> Self {
        Relay {
            poll,
            rx,
            conns: HashMap::new(),
            next: 0,
            counters,
            limits,
            per_forward: HashMap::new(),
            next_sweep: None,
        }
    }

    /// Resets the connections idle for the limit, and notes when the next one can go idle.
    fn sweep(&mut self, now: Instant) {
        let idle = self.limits.idle;
        let expired: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| now.saturating_duration_since(c.last) >= idle)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            tracing::debug!("spliced forward: connection idle for {idle:?}; resetting both sides");
            self.counters.idle_closed.fetch_add(1, Ordering::Relaxed);
            self.close(id, true);
        }
        self.next_sweep = self.conns.values().map(|c| c.last + idle).min();
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(256);
        loop {
            let timeout = self
                .next_sweep
                .map(|t| t.saturating_duration_since(Instant::now()));
            if let Err(e) = self.poll.poll(&mut events, timeout)
                && e.kind() != io::ErrorKind::Interrupted
            {
                tracing::error!("splice relay poll failed: {e}");
                return;
            }
            let mut touched = Vec::new();
            for ev in events.iter() {
                if ev.token() == WAKE {
                    while let Ok(m) = self.rx.try_recv() {
                        match m {
                            Msg::Job(job) => self.start(job),
                            Msg::Stop => return,
                        }
                    }
                } else {
                    touched.push(ev.token().0 >> 1);
                }
            }
            touched.dedup();
            for id in touched {
                self.service(id);
            }
            let now = Instant::now();
            if self.next_sweep.is_some_and(|t| now >= t) {
                self.sweep(now);
            }
        }
    }

    fn start(&mut self, job: Job) {
        let held = self.per_forward.get(&job.forward).copied().unwrap_or(0);
        if held >= self.limits.max_per_forward {
            tracing::debug!(
                forward = job.forward,
                "spliced forward: {held} connections already relayed; resetting the client"
            );
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
            let _ = job.client.set_nonblocking(true);
            reset(&TcpStream::from_std(job.client));
            return;
        }
        let connected = match job.to {
            Target::Netns { netns, guest } => connect_in(&netns, guest).map_err(|e| (guest, e)),
            Target::Socket(s) => Ok(s),
        };
        let guest = match connected {
            Ok(g) => g,
            Err((guest, e)) => {
                tracing::debug!(guest = %guest, "spliced forward: connect failed: {e}");
                self.counters.connect_failed.fetch_add(1, Ordering::Relaxed);
                let _ = job.client.set_nonblocking(true);
                let c = TcpStream::from_std(job.client);
                reset(&c);
                return;
            }
        };
        if job.client.set_nonblocking(true).is_err() {
            return;
        }
        let client = TcpStream::from_std(job.client);
        let (to_guest, to_client) = match (Dir::new(), Dir::new()) {
            (Ok(a), Ok(b)) => (a, b),
            _ => {
                reset(&client);
                reset(&guest);
                return;
            }
        };
        let id = self.next;
        self.next = self.next.wrapping_add(1) & (usize::MAX >> 3);
        let now = Instant::now();
        let mut conn = Conn {
            _hold: job.hold,
            forward: job.forward,
            client,
            guest,
            connected: false,
            last: now,
            to_guest,
            to_client,
        };
        let both = Interest::READABLE | Interest::WRITABLE;
        let reg = self.poll.registry();
        if reg
            .register(&mut conn.client, Token(id << 1), both)
            .is_err()
            || reg
                .register(&mut conn.guest, Token((id << 1) | 1), both)
                .is_err()
        {
            reset(&conn.client);
            return;
        }
        *self.per_forward.entry(job.forward).or_insert(0) += 1;
        self.conns.insert(id, conn);
        let deadline = now + self.limits.idle;
        self.next_sweep = Some(self.next_sweep.map_or(deadline, |t| t.min(deadline)));
    }

    fn service(&mut self, id: usize) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if !conn.connected {
            match conn.guest.take_error() {
                Ok(None) => {}
                Ok(Some(_)) | Err(_) => {
                    self.counters.connect_failed.fetch_add(1, Ordering::Relaxed);
                    self.close(id, true);
                    return;
                }
            }
            match conn.guest.peer_addr() {
                Ok(_) => {
                    conn.connected = true;
                    self.counters.connections.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(_) => {
                    self.counters.connect_failed.fetch_add(1, Ordering::Relaxed);
                    self.close(id, true);
                    return;
                }
            }
        }
        let r = conn
            .to_guest
            .pump(&conn.client, &conn.guest)
            .and_then(|a| Ok((a, conn.to_client.pump(&conn.guest, &conn.client)?)));
        match r {
            Ok((a, b)) => {
                let c = &self.counters;
                c.bytes_to_guest.fetch_add(a, Ordering::Relaxed);
                c.bytes_to_client.fetch_add(b, Ordering::Relaxed);
                if a > 0 || b > 0 {
                    conn.last = Instant::now();
                }
                if conn.done() {
                    self.close(id, false);
                }
            }
            Err(e) => {
                tracing::debug!("spliced forward: {e}; resetting both sides");
                self.close(id, true);
            }
        }
    }

    fn close(&mut self, id: usize, with_reset: bool) {
        if let Some(mut c) = self.conns.remove(&id) {
            if let Some(n) = self.per_forward.get_mut(&c.forward) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.per_forward.remove(&c.forward);
                }
            }
            let reg = self.poll.registry();
            let _ = reg.deregister(&mut c.client);
            let _ = reg.deregister(&mut c.guest);
            if with_reset {
                reset(&c.client);
                reset(&c.guest);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::time::Duration;

    const SELF_NS: &str = "/proc/self/ns/net";

    /// Entering a namespace (even our own) takes CAP_SYS_ADMIN.
    fn can_setns() -> bool {
        let root = crate::sys::process::is_root();
        if !root {
            eprintln!("SKIP: splice tests need root (setns)");
        }
        root
    }

    /// A client connection accepted on a loopback listener (what a forward's listener gives).
    fn accepted_pair() -> (std::net::TcpStream, std::net::TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let c = std::net::TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (a, _) = l.accept().expect("accept");
        (c, a)
    }

    #[test]
    fn relays_both_ways_with_half_close() {
        if !can_setns() {
            return;
        }
        let sp = Splicer::start().expect("splicer");
        let guest = TcpListener::bind("127.0.0.1:0").expect("guest listener");
        let gaddr = guest.local_addr().expect("addr");
        let (mut client, accepted) = accepted_pair();
        sp.splice(accepted, Path::new(SELF_NS), gaddr);
        let (mut g, _) = guest.accept().expect("guest accepts");
        for s in [&client, &g] {
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
        }
        let up: Vec<u8> = (0..8u32 << 20).map(|i| ((i * 31) >> 7) as u8).collect();
        let down: Vec<u8> = (0..3u32 << 20).map(|i| ((i * 17) >> 5) as u8).collect();
        let up2 = up.clone();
        let writer = std::thread::spawn(move || {
            client.write_all(&up2).expect("client writes");
            client
                .shutdown(std::net::Shutdown::Write)
                .expect("half-close");
            let mut got = Vec::new();
            client.read_to_end(&mut got).expect("client reads");
            got
        });
        let mut got_up = Vec::new();
        g.read_to_end(&mut got_up).expect("guest reads to EOF");
        assert_eq!(got_up.len(), up.len());
        assert!(got_up == up, "client -> guest bytes intact");
        g.write_all(&down)
            .expect("guest writes after the client's half-close");
        drop(g);
        let got_down = writer.join().expect("writer");
        assert!(got_down == down, "guest -> client bytes intact");
        let c = sp.counters();
        assert_eq!(c.connections.load(Ordering::Relaxed), 1);
        assert_eq!(c.bytes_to_guest.load(Ordering::Relaxed), up.len() as u64);
    }

    #[test]
    fn relays_to_a_socket_the_caller_made() {
        let sp = Splicer::start().expect("splicer");
        let far = TcpListener::bind("127.0.0.1:0").expect("listener");
        let peer = TcpStream::connect(far.local_addr().expect("addr")).expect("connect");
        let (mut client, accepted) = accepted_pair();
        sp.relay(7, accepted, peer, None);
        let (mut f, _) = far.accept().expect("accept");
        for s in [&client, &f] {
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
        }
        client.write_all(b"ping").expect("write");
        let mut b = [0u8; 4];
        f.read_exact(&mut b).expect("far end reads");
        assert_eq!(&b, b"ping");
        f.write_all(b"pong").expect("write back");
        drop(f);
        let mut got = Vec::new();
        client.read_to_end(&mut got).expect("client reads to EOF");
        assert_eq!(got, b"pong");
    }

    /// True when `s` sees the connection end (EOF or reset) within `within`.
    fn ends_within(s: &mut std::net::TcpStream, within: Duration) -> bool {
        s.set_read_timeout(Some(within)).expect("timeout");
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() == io::ErrorKind::ConnectionReset,
        }
    }

    #[test]
    fn connections_per_forward_are_capped() {
        if !can_setns() {
            return;
        }
        let sp = Splicer::start_with(SpliceLimits {
            max_per_forward: 2,
            ..SpliceLimits::default()
        })
        .expect("splicer");
        let guest = TcpListener::bind("127.0.0.1:0").expect("guest listener");
        let gaddr = guest.local_addr().expect("addr");
        let ns = Path::new(SELF_NS);
        let mut kept = Vec::new();
        for _ in 0..2 {
            let (client, accepted) = accepted_pair();
            sp.splice_forward(7, accepted, ns, gaddr);
            let (g, _) = guest.accept().expect("guest accepts");
            kept.push((client, g));
        }
        // The third connection of forward 7 is reset; the guest never sees it.
        let (mut third, accepted) = accepted_pair();
        sp.splice_forward(7, accepted, ns, gaddr);
        assert!(ends_within(&mut third, Duration::from_secs(5)), "reset");
        assert_eq!(sp.counters().refused.load(Ordering::Relaxed), 1);
        // Another forward has its own budget.
        let (mut other, accepted) = accepted_pair();
        sp.splice_forward(8, accepted, ns, gaddr);
        let (mut g, _) = guest.accept().expect("guest accepts forward 8's");
        other.write_all(b"ping").expect("write");
        let mut buf = [0u8; 4];
        g.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        g.read_exact(&mut buf).expect("relayed");
        assert_eq!(&buf, b"ping");
        // A closed connection frees its place.
        let (c, g) = kept.pop().expect("kept");
        drop((c, g));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let (mut again, accepted) = accepted_pair();
            sp.splice_forward(7, accepted, ns, gaddr);
            if !ends_within(&mut again, Duration::from_millis(300)) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "no place freed");
        }
    }

    #[test]
    fn idle_connections_are_closed() {
        if !can_setns() {
            return;
        }
        let sp = Splicer::start_with(SpliceLimits {
            idle: Duration::from_millis(600),
            ..SpliceLimits::default()
        })
        .expect("splicer");
        let guest = TcpListener::bind("127.0.0.1:0").expect("guest listener");
        let gaddr = guest.local_addr().expect("addr");
        let ns = Path::new(SELF_NS);
        let (mut idle, accepted) = accepted_pair();
        sp.splice(accepted, ns, gaddr);
        let (mut idle_g, _) = guest.accept().expect("guest accepts");
        let (mut busy, accepted) = accepted_pair();
        sp.splice(accepted, ns, gaddr);
        let (mut busy_g, _) = guest.accept().expect("guest accepts");
        busy_g
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        // The busy one moves a byte every 150 ms for 2 s and stays open.
        for _ in 0..13 {
            busy.write_all(b"x").expect("busy write");
            let mut b = [0u8; 1];
            busy_g.read_exact(&mut b).expect("busy read");
            std::thread::sleep(Duration::from_millis(150));
        }
        // The idle one was reset on both sides.
        assert!(ends_within(&mut idle, Duration::from_secs(1)), "client");
        assert!(ends_within(&mut idle_g, Duration::from_secs(1)), "guest");
        assert_eq!(sp.counters().idle_closed.load(Ordering::Relaxed), 1);
        busy.write_all(b"y").expect("busy still open");
        let mut b = [0u8; 1];
        busy_g.read_exact(&mut b).expect("busy still relayed");
    }

    #[test]
    fn refused_guest_port_resets_the_client() {
        if !can_setns() {
            return;
        }
        let sp = Splicer::start().expect("splicer");
        // A port nobody listens on: bind, take the address, close.
        let gaddr = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("addr");
        let (mut client, accepted) = accepted_pair();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        sp.splice(accepted, Path::new(SELF_NS), gaddr);
        let mut buf = [0u8; 16];
        let r = client.read(&mut buf);
        assert!(
            matches!(r, Ok(0))
                || r.as_ref()
                    .is_err_and(|e| e.kind() == io::ErrorKind::ConnectionReset),
            "client sees EOF or reset, got {r:?}"
        );
        assert_eq!(sp.counters().connect_failed.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn missing_namespace_resets_the_client() {
        let sp = Splicer::start().expect("splicer");
        let (mut client, accepted) = accepted_pair();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        sp.splice(
            accepted,
            Path::new("/run/netns/usernet-no-such-namespace"),
            "127.0.0.1:9".parse().expect("addr"),
        );
        let mut buf = [0u8; 16];
        let r = client.read(&mut buf);
        assert!(matches!(r, Ok(0)) || r.is_err(), "got {r:?}");
        assert_eq!(sp.counters().connect_failed.load(Ordering::Relaxed), 1);
    }
}
