//! What the demo does inside its namespaces to show the network works: DNS queries, an HTTP
//! server and client, ICMP echo, and the bulk TCP transfer. Every wait is bounded.

use std::hash::Hasher;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use rustix::event::{PollFd, PollFlags, Timespec};
use socket2::{Domain, Protocol, Socket, Type};
use usernet::Handle;
use usernet::link::netns::run_in_netns;

use super::{PAGE, TCP_PORT, check};

/// The usual spelling of a DNS response code (`NOERROR`, `SERVFAIL`, ...).
pub(super) fn rcode(c: ResponseCode) -> String {
    match c {
        ResponseCode::NoError => "NOERROR".into(),
        ResponseCode::FormErr => "FORMERR".into(),
        ResponseCode::ServFail => "SERVFAIL".into(),
        ResponseCode::NXDomain => "NXDOMAIN".into(),
        ResponseCode::Refused => "REFUSED".into(),
        other => other.to_string(),
    }
}

/// What the gateway answered to an A query.
pub(super) struct DnsAnswer {
    pub(super) code: ResponseCode,
    pub(super) addrs: Vec<Ipv4Addr>,
    pub(super) authoritative: bool,
    pub(super) took: Duration,
}

/// Asks `server` for the A records of `name` over UDP from inside `netns` (three tries of 1 s).
pub(super) fn resolve(netns: PathBuf, server: Ipv4Addr, name: &str) -> anyhow::Result<DnsAnswer> {
    let sock = run_in_netns(&netns, move || {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        s.connect((server, 53))?;
        s.set_read_timeout(Some(Duration::from_millis(200)))?;
        Ok(s)
    })?;
    let id = Message::query().metadata.id; // a random id
    let mut q = Message::new(id, MessageType::Query, OpCode::Query);
    q.metadata.recursion_desired = true;
    let qname = Name::from_ascii(format!("{name}."))?;
    q.queries.push(Query::query(qname.clone(), RecordType::A));
    let bytes = q.to_vec()?;
    let start = Instant::now();
    let mut buf = [0u8; 1500];
    for _ in 0..3 {
        sock.send(&bytes)?;
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline {
            let Ok(n) = sock.recv(&mut buf) else {
                continue; // timeout tick; the loop checks the deadline
            };
            let Ok(m) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            if m.metadata.id != id || m.metadata.message_type != MessageType::Response {
                continue;
            }
            let addrs = m
                .answers
                .iter()
                .filter(|r| r.name == qname)
                .filter_map(|r| match &r.data {
                    RData::A(a) => Some(a.0),
                    _ => None,
                })
                .collect();
            return Ok(DnsAnswer {
                code: m.metadata.response_code,
                addrs,
                authoritative: m.metadata.authoritative,
                took: start.elapsed(),
            });
        }
    }
    bail!("DNS: no answer from {server} for {name} within 3 s")
}

/// A small HTTP/1.1 server on a thread, listening inside a namespace; serves [`PAGE`] at `/`
/// and 404 elsewhere, at most `max` requests, and stops when dropped.
pub(super) struct HttpServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    pub(super) fn start(netns: &Path, port: u16, max: u32) -> anyhow::Result<HttpServer> {
        let listener = run_in_netns(netns, move || {
            TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))
        })?;
        Self::serve(listener, max)
    }

    /// Serves on an already bound listener.
    pub(super) fn serve(listener: TcpListener, max: u32) -> anyhow::Result<HttpServer> {
        // Non-blocking and polled, so that the thread notices `stop` within 50 ms.
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("usernet-demo-http".into())
            .spawn(move || {
                let mut served = 0;
                while served < max && !flag.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((conn, _)) => {
                            served += 1;
                            if let Err(e) = serve(conn) {
                                tracing::warn!("demo HTTP server: {e}");
                            }
                        }
                        Err(_) => wait_readable(&listener, Duration::from_millis(50)),
                    }
                }
            })?;
        Ok(HttpServer {
            stop,
            thread: Some(thread),
        })
    }
}

/// Waits until `l` has a connection to accept, at most `max`.
fn wait_readable(l: &TcpListener, max: Duration) {
    let mut pfd = [PollFd::new(l, PollFlags::IN)];
    let ts = Timespec::try_from(max).unwrap_or(Timespec {
        tv_sec: 1,
        tv_nsec: 0,
    });
    let rc = rustix::event::poll(&mut pfd, Some(&ts));
    if rc.is_err() {
        // EINTR or worse: do not spin.
        std::thread::sleep(max);
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Answers one request on `conn` (read and write each bounded by 2 s) and closes it.
fn serve(mut conn: TcpStream) -> std::io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    conn.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 8192 {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            break;
        }
        req.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&req);
    let mut first = head.lines().next().unwrap_or_default().split_whitespace();
    let (status, body) = match (first.next(), first.next()) {
        (Some("GET"), Some("/")) => ("200 OK", PAGE),
        (Some("GET"), _) => ("404 Not Found", "not found\n"),
        _ => ("400 Bad Request", "bad request\n"),
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\nServer: usernet-demo\r\nContent-Type: text/html; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(resp.as_bytes())
}

/// An HTTP response.
pub(super) struct HttpResponse {
    pub(super) status: u16,
    pub(super) reason: String,
    pub(super) body: String,
    pub(super) took: Duration,
}

/// `GET path` with `Host: host` from inside `netns` (or the host) to `addr:port`; bounded by
/// 5 s per step.
pub(super) fn http_get(
    netns: Option<PathBuf>,
    addr: Ipv4Addr,
    port: u16,
    host: &str,
    path: &str,
) -> anyhow::Result<HttpResponse> {
    let start = Instant::now();
    let to = SocketAddr::from((addr, port));
    let mut s = match netns {
        Some(ns) => run_in_netns(&ns, move || {
            TcpStream::connect_timeout(&to, Duration::from_secs(5))
        })?,
        None => TcpStream::connect_timeout(&to, Duration::from_secs(5))?,
    };
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: usernet-demo\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.take(1 << 20)
        .read_to_end(&mut raw)
        .context("reading the HTTP response")?;
    let took = start.elapsed();
    let text = String::from_utf8(raw).context("HTTP response is not UTF-8")?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("HTTP response without end of headers")?;
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let (Some(version), Some(code), reason) = (parts.next(), parts.next(), parts.next()) else {
        bail!("bad HTTP status line {status_line:?}");
    };
    if !version.starts_with("HTTP/1.") {
        bail!("bad HTTP status line {status_line:?}");
    }
    let status: u16 = code
        .parse()
        .with_context(|| format!("bad HTTP status line {status_line:?}"))?;
    let length = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok());
    if length.is_some_and(|n| n != body.len()) {
        bail!(
            "HTTP: Content-Length {length:?} but {} body bytes",
            body.len()
        );
    }
    Ok(HttpResponse {
        status,
        reason: reason.unwrap_or_default().to_string(),
        body: body.to_string(),
        took,
    })
}

/// Sends `n` ICMP echo requests from inside `netns` to `dst`; returns the round-trip times.
pub(super) fn ping(netns: PathBuf, dst: Ipv4Addr, n: u16) -> anyhow::Result<Vec<Duration>> {
    let sock = run_in_netns(&netns, || {
        Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))
    })?;
    let _ = sock.set_read_timeout(Some(Duration::from_millis(200)));
    let id = (std::process::id() & 0xffff) as u16;
    let mut rtts = Vec::new();
    for seq in 1..=n {
        let payload = [0x55u8; 56];
        let hdr = etherparse::Icmpv4Header::with_checksum(
            etherparse::Icmpv4Type::EchoRequest(etherparse::IcmpEchoHeader { id, seq }),
            &payload,
        );
        let mut pkt = hdr.to_bytes().to_vec();
        pkt.extend_from_slice(&payload);
        let start = Instant::now();
        if let Err(e) = sock.send_to(&pkt, &SocketAddrV4::new(dst, 0).into()) {
            bail!("ping {dst}: {e}");
        }
        let deadline = start + Duration::from_secs(2);
        loop {
            if Instant::now() > deadline {
                bail!("ping {dst}: no reply to echo request {seq} within 2 s");
            }
            let mut buf = [0u8; 1500];
            let Ok(got) = (&sock).read(&mut buf) else {
                continue; // timeout tick; loop checks the deadline
            };
            let Ok(ip) = etherparse::Ipv4Slice::from_slice(&buf[..got]) else {
                continue;
            };
            let Ok(icmp) = etherparse::Icmpv4Slice::from_slice(ip.payload().payload) else {
                continue;
            };
            if let etherparse::Icmpv4Type::EchoReply(e) = icmp.icmp_type()
                && e.id == id
                && e.seq == seq
                && ip.header().source_addr() == dst
            {
                rtts.push(start.elapsed());
                break;
            }
        }
    }
    Ok(rtts)
}

/// How long the TCP transfer may make no progress.
const STALL: Duration = Duration::from_secs(10);

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock
            | std::io::ErrorKind::TimedOut
            | std::io::ErrorKind::Interrupted
    )
}

/// Streams `bytes` over TCP from `client_ns` to a listener in `server_ns`; checks a hash of the
/// received bytes against the sent ones. Returns (Gbit/s, seconds).
pub(super) fn transfer(
    h: &Handle,
    server_ns: PathBuf,
    client_ns: PathBuf,
    server: Ipv4Addr,
    bytes: u64,
) -> anyhow::Result<(f64, f64)> {
    let addr = SocketAddrV4::new(server, TCP_PORT);
    let listener = run_in_netns(&server_ns, move || {
        let l = TcpListener::bind(addr)?;
        l.set_nonblocking(true)?;
        Ok(l)
    })?;
    let rh = h.clone();
    let rx = std::thread::spawn(move || -> anyhow::Result<(u64, u64)> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut c = loop {
            match listener.accept() {
                Ok((c, _)) => break c,
                Err(_) if Instant::now() < deadline => {
                    check(&rh)?;
                    wait_readable(&listener, Duration::from_millis(50));
                }
                Err(e) => return Err(e).context("no connection within 5 s"),
            }
        };
        c.set_nonblocking(false)?;
        c.set_read_timeout(Some(Duration::from_millis(500)))?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0u64;
        let mut progress = Instant::now();
        loop {
            match c.read(&mut buf) {
                Ok(0) => return Ok((total, h.finish())),
                Ok(n) => {
                    h.write(&buf[..n]);
                    total += n as u64;
                    progress = Instant::now();
                }
                Err(e) if is_timeout(&e) => {
                    check(&rh)?;
                    if progress.elapsed() > STALL {
                        bail!("nothing received for {} s", STALL.as_secs());
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    });
    let mut stream = run_in_netns(&client_ns, move || {
        TcpStream::connect_timeout(&addr.into(), Duration::from_secs(5))
    })?;
    stream.set_write_timeout(Some(Duration::from_millis(500)))?;
    let mut block = vec![0u8; 1 << 16];
    let mut x: u32 = 0x1234_5678;
    for b in block.iter_mut() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    let mut hash = std::collections::hash_map::DefaultHasher::new();
    let start = Instant::now();
    let mut sent = 0u64;
    let mut progress = Instant::now();
    while sent < bytes {
        let n = (bytes - sent).min(block.len() as u64) as usize;
        // Vary the block so reordering or duplication would change the hash.
        block[0] = (sent >> 16) as u8;
        let mut off = 0;
        while off < n {
            // Short timeouts, so that Ctrl-C and a stall are noticed within a second.
            match stream.write(&block[off..n]) {
                Ok(k) => {
                    off += k;
                    progress = Instant::now();
                }
                Err(e) if is_timeout(&e) => {
                    check(h)?;
                    if progress.elapsed() > STALL {
                        bail!(
                            "TCP transfer stalled: nothing sent for {} s",
                            STALL.as_secs()
                        );
                    }
                }
                Err(e) => return Err(e).context("sending"),
            }
        }
        hash.write(&block[..n]);
        sent += n as u64;
        if sent.is_multiple_of(16 << 20) {
            check(h)?;
        }
    }
    stream.shutdown(std::net::Shutdown::Write)?;
    let (got, got_hash) = rx
        .join()
        .map_err(|_| anyhow::anyhow!("receiver thread panicked"))?
        .context("receiving the TCP stream")?;
    let secs = start.elapsed().as_secs_f64();
    if got != sent || got_hash != hash.finish() {
        bail!("transfer corrupted: sent {sent} bytes, received {got}, hashes differ");
    }
    Ok((sent as f64 * 8.0 / secs / 1e9, secs))
}
