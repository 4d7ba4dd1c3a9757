//! Forwarding: the worker threads that send cache misses to the upstreams (step 4 of the
//! server's theory of operation); the answer cache they fill is `cache.rs`.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use parking_lot::Mutex;
use tracing::{debug, error, warn};

use super::cache::{Cache, CacheKey, cache_ttl};
use super::resolv::UpstreamSource;
use super::{Counters, EDNS_PAYLOAD, Records, bump, decode, reply_edns, reply_to};

/// Longest single blocking wait of a worker, so that shutdown is noticed quickly.
const WAIT_SLICE: Duration = Duration::from_millis(100);
/// Largest DNS message (UDP datagram or TCP message).
const MAX_MESSAGE: usize = 65535;

pub(super) type ReplyFn = Box<dyn FnOnce(Vec<u8>) + Send>;

/// Calls the reply callback exactly once: with the answer, or with SERVFAIL when dropped
/// unanswered.
pub(super) struct Responder {
    pub(super) reply: Option<ReplyFn>,
    pub(super) servfail: Vec<u8>,
}

impl Responder {
    fn send(mut self, bytes: Vec<u8>) {
        if let Some(r) = self.reply.take() {
            r(bytes);
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if let Some(r) = self.reply.take() {
            r(std::mem::take(&mut self.servfail));
        }
    }
}

/// A query waiting for a forwarding worker.
pub(super) struct Job {
    pub(super) query: Message,
    pub(super) key: CacheKey,
    /// UDP size limit; None for TCP.
    pub(super) limit: Option<usize>,
    pub(super) responder: Responder,
}

/// State shared between [`DnsServer`] and its workers.
pub(super) struct Shared {
    pub(super) records: Arc<Records>,
    pub(super) upstreams: UpstreamSource,
    pub(super) timeout: Duration,
    pub(super) cache: Mutex<Cache>,
    pub(super) stats: Counters,
    pub(super) stop: AtomicBool,
    /// The name policy (see `policy.rs`); swapped whole at run time.
    pub(super) policy: arc_swap::ArcSwapOption<super::DnsPolicy>,
}

impl Shared {
    /// Encodes `msg`, truncating it to `limit`; counts NXDOMAIN and truncation. None only when
    /// even a header-only reply cannot be encoded.
    pub(super) fn encode(&self, msg: &Message, limit: Option<usize>) -> Option<Vec<u8>> {
        let bytes = match msg.to_vec() {
            Ok(b) if b.len() <= limit.unwrap_or(MAX_MESSAGE) => b,
            Ok(_) => {
                bump(&self.stats.truncated);
                msg.truncate().to_vec().ok()?
            }
            Err(e) => {
                warn!(error = %e, "cannot encode DNS reply; answering SERVFAIL");
                let mut m = msg.truncate();
                m.metadata.truncation = false;
                m.metadata.response_code = ResponseCode::ServFail;
                m.to_vec().ok()?
            }
        };
        if msg.metadata.response_code == ResponseCode::NXDomain {
            bump(&self.stats.nxdomain);
        }
        Some(bytes)
    }

    pub(super) fn servfail_bytes(&self, query: &Message) -> Vec<u8> {
        reply_to(query, ResponseCode::ServFail)
            .to_vec()
            .unwrap_or_default()
    }

    /// Serves one job on a worker: upstreams in order, then cache and reply.
    fn forward(&self, job: Job) {
        let Job {
            query,
            key,
            limit,
            responder,
        } = job;
        let mut answer = None;
        for up in self.upstreams.current() {
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            match self.exchange(up, &query) {
                Ok(resp)
                    if matches!(
                        resp.metadata.response_code,
                        ResponseCode::ServFail | ResponseCode::Refused
                    ) =>
                {
                    debug!(%up, rcode = %resp.metadata.response_code, "upstream refused; trying the next");
                }
                Ok(resp) => {
                    answer = Some(resp);
                    break;
                }
                Err(e) => debug!(%up, error = %e, "upstream failed; trying the next"),
            }
        }
        let reply = match answer {
            Some(mut resp) => {
                resp.edns = None;
                resp.signature = None;
                if let Some(ttl) = cache_ttl(&resp) {
                    self.cache
                        .lock()
                        .insert(key, resp.clone(), ttl, Instant::now());
                }
                client_reply(resp, &query)
            }
            None => {
                bump(&self.stats.upstream_failures);
                reply_to(&query, ResponseCode::ServFail)
            }
        };
        if let Some(bytes) = self.encode(&reply, limit) {
            responder.send(bytes);
        }
    }

    /// One upstream attempt: UDP, then TCP if the answer is truncated.
    fn exchange(&self, up: SocketAddr, client: &Message) -> io::Result<Message> {
        let question = client
            .queries
            .first()
            .ok_or_else(|| io::Error::other("query without question"))?;
        let id = Message::query().metadata.id; // a random id
        let mut q = Message::new(id, MessageType::Query, OpCode::Query);
        q.metadata.recursion_desired = true;
        q.metadata.checking_disabled = client.metadata.checking_disabled;
        q.queries = vec![question.clone()];
        if let Some(ce) = &client.edns {
            let mut e = Edns::new();
            e.set_max_payload(EDNS_PAYLOAD);
            e.flags_mut().dnssec_ok = ce.flags().dnssec_ok;
            q.edns = Some(e);
        }
        let bytes = q.to_vec().map_err(io::Error::other)?;
        let resp = self.udp_exchange(up, &bytes, id, question)?;
        if resp.metadata.truncation {
            debug!(%up, "truncated UDP answer; retrying over TCP");
            return self.tcp_exchange(up, &bytes, id, question);
        }
        Ok(resp)
    }

    /// Checks an upstream answer against the query; None if it must be ignored.
    fn accept(&self, bytes: &[u8], id: u16, question: &Query) -> Option<Message> {
        let m = decode(bytes)?;
        let ok = m.metadata.message_type == MessageType::Response
            && m.metadata.id == id
            && m.metadata.op_code == OpCode::Query
            && matches!(m.queries.as_slice(), [q] if q.name == question.name
                && q.query_type == question.query_type
                && q.query_class == question.query_class);
        if !ok {
            debug!("ignoring an upstream answer that does not match the query");
        }
        ok.then_some(m)
    }

    fn udp_exchange(
        &self,
        up: SocketAddr,
        bytes: &[u8],
        id: u16,
        question: &Query,
    ) -> io::Result<Message> {
        let deadline = Instant::now() + self.timeout;
        let local: SocketAddr = if up.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let sock = UdpSocket::bind(local)?;
        sock.connect(up)?;
        sock.send(bytes)?;
        let mut buf = vec![0u8; MAX_MESSAGE];
        loop {
            let wait = self.wait_slice(deadline)?;
            sock.set_read_timeout(Some(wait))?;
            match sock.recv(&mut buf) {
                Ok(n) => {
                    if let Some(m) = buf.get(..n).and_then(|b| self.accept(b, id, question)) {
                        return Ok(m);
                    }
                }
                Err(e) if is_timeout(&e) => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn tcp_exchange(
        &self,
        up: SocketAddr,
        bytes: &[u8],
        id: u16,
        question: &Query,
    ) -> io::Result<Message> {
        let deadline = Instant::now() + self.timeout;
        let len = u16::try_from(bytes.len()).map_err(io::Error::other)?;
        let mut stream = TcpStream::connect_timeout(&up, self.timeout)?;
        let _ = stream.set_nodelay(true);
        let mut out = Vec::with_capacity(bytes.len() + 2);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(bytes);
        stream.set_write_timeout(Some(self.wait_slice(deadline)?.max(self.timeout / 2)))?;
        stream.write_all(&out)?;
        let mut len_buf = [0u8; 2];
        self.read_full(&mut stream, &mut len_buf, deadline)?;
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len_buf))];
        self.read_full(&mut stream, &mut buf, deadline)?;
        self.accept(&buf, id, question)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "mismatched TCP answer"))
    }

    /// Fills `buf` from `stream` before `deadline`.
    fn read_full(
        &self,
        stream: &mut TcpStream,
        buf: &mut [u8],
        deadline: Instant,
    ) -> io::Result<()> {
        let mut filled = 0;
        while filled < buf.len() {
            stream.set_read_timeout(Some(self.wait_slice(deadline)?))?;
            let rest = buf.get_mut(filled..).unwrap_or_default();
            match stream.read(rest) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => filled += n,
                Err(e) if is_timeout(&e) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// How long the next blocking wait may last: at most [`WAIT_SLICE`], never past `deadline`;
    /// an error once the deadline passed or the server is stopping.
    fn wait_slice(&self, deadline: Instant) -> io::Result<Duration> {
        if self.stop.load(Ordering::Relaxed) {
            return Err(io::Error::new(
                io::ErrorKind::Interrupted,
                "DNS server stopping",
            ));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        Ok(left.min(WAIT_SLICE).max(Duration::from_millis(1)))
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// Turns an upstream (or cached) answer into the reply to `client`.
pub(super) fn client_reply(mut resp: Message, client: &Message) -> Message {
    resp.metadata.id = client.metadata.id;
    resp.metadata.message_type = MessageType::Response;
    resp.metadata.recursion_desired = client.metadata.recursion_desired;
    resp.metadata.checking_disabled = client.metadata.checking_disabled;
    resp.metadata.recursion_available = true;
    resp.metadata.authoritative = false;
    resp.metadata.truncation = false;
    resp.queries = client.queries.clone();
    resp.edns = reply_edns(client);
    resp.signature = None;
    resp
}

pub(super) fn worker_loop(shared: Arc<Shared>, rx: Receiver<Job>) {
    while let Ok(job) = rx.recv() {
        if shared.stop.load(Ordering::Relaxed) {
            drop(job); // its Responder answers SERVFAIL
            continue;
        }
        if panic::catch_unwind(AssertUnwindSafe(|| shared.forward(job))).is_err() {
            error!("panic while forwarding a DNS query; answered SERVFAIL");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::{DnsConfig, DnsServer, Transport, Upstreams, udp_limit};
    use super::*;
    use hickory_proto::rr::rdata::{A, SOA};
    use hickory_proto::rr::{RData, Record, RecordType};
    use std::net::{IpAddr, TcpListener};
    use std::sync::atomic::AtomicUsize;
    use std::thread::{self, JoinHandle};

    // ---- fake upstreams ------------------------------------------------------------------

    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    enum Mode {
        /// Answers the test zone.
        Answer,
        /// Over UDP: answers with TC set and no records; over TCP: answers fully.
        TruncateUdp,
        /// Answers SERVFAIL.
        ServFail,
        /// Sends answers with a wrong id and a wrong question before the right one.
        Spoof,
    }

    struct FakeUpstream {
        addr: SocketAddr,
        udp_queries: Arc<AtomicUsize>,
        tcp_queries: Arc<AtomicUsize>,
        stop: Arc<AtomicBool>,
        threads: Vec<JoinHandle<()>>,
    }

    impl Drop for FakeUpstream {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            for t in self.threads.drain(..) {
                let _ = t.join();
            }
        }
    }

    /// The fake zone `test.zone.`: every name has A 192.0.2.1 (TTL 60), except `nx.*`
    /// (NXDOMAIN) and `big.*` (60 A records); AAAA is NODATA.
    fn zone_answer(q: &Message) -> Message {
        let mut m = Message::response(q.metadata.id, OpCode::Query);
        m.metadata.recursion_available = true;
        m.queries = q.queries.clone();
        let Some(qq) = q.queries.first() else {
            m.metadata.response_code = ResponseCode::FormErr;
            return m;
        };
        let qname = qq.name.to_lowercase().to_ascii();
        let soa = Record::from_rdata(
            name("test.zone."),
            120,
            RData::SOA(SOA::new(
                name("ns.test.zone."),
                name("h.test.zone."),
                1,
                1,
                1,
                1,
                30,
            )),
        );
        if qname.starts_with("nx.") {
            m.metadata.response_code = ResponseCode::NXDomain;
            m.authorities.push(soa);
        } else if qq.query_type == RecordType::AAAA {
            m.authorities.push(soa);
        } else {
            let n = if qname.starts_with("big.") { 60 } else { 1 };
            for i in 0..n {
                m.answers.push(Record::from_rdata(
                    qq.name.clone(),
                    60,
                    RData::A(A(Ipv4Addr::new(192, 0, 2, 1 + i as u8))),
                ));
            }
        }
        m
    }

    /// Binds UDP and TCP on the same 127.0.0.1 port.
    fn bind_pair() -> (UdpSocket, TcpListener) {
        for _ in 0..50 {
            let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
            if let Ok(tcp) = TcpListener::bind(udp.local_addr().unwrap()) {
                return (udp, tcp);
            }
        }
        panic!("no free port pair");
    }

    fn fake_upstream(mode: Mode) -> FakeUpstream {
        let (udp, tcp) = bind_pair();
        let addr = udp.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let udp_queries = Arc::new(AtomicUsize::new(0));
        let tcp_queries = Arc::new(AtomicUsize::new(0));
        let mut threads = Vec::new();
        {
            let (stop, count) = (stop.clone(), udp_queries.clone());
            udp.set_read_timeout(Some(Duration::from_millis(20)))
                .unwrap();
            threads.push(thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, from)) = udp.recv_from(&mut buf) else {
                        continue;
                    };
                    let Ok(q) = Message::from_vec(&buf[..n]) else {
                        continue;
                    };
                    count.fetch_add(1, Ordering::Relaxed);
                    let mut resp = zone_answer(&q);
                    match mode {
                        Mode::Answer => {}
                        Mode::TruncateUdp => {
                            resp = resp.truncate();
                        }
                        Mode::ServFail => {
                            resp.answers.clear();
                            resp.metadata.response_code = ResponseCode::ServFail;
                        }
                        Mode::Spoof => {
                            let mut wrong_id = resp.clone();
                            wrong_id.metadata.id = resp.metadata.id.wrapping_add(1);
                            wrong_id.answers[0].data = RData::A(A(Ipv4Addr::new(6, 6, 6, 6)));
                            let _ = udp.send_to(&wrong_id.to_vec().unwrap(), from);
                            let mut wrong_q = wrong_id.clone();
                            wrong_q.metadata.id = resp.metadata.id;
                            wrong_q.queries[0].name = name("evil.test.zone.");
                            let _ = udp.send_to(&wrong_q.to_vec().unwrap(), from);
                            let _ = udp.send_to(b"\x00\x01garbage", from);
                        }
                    }
                    let _ = udp.send_to(&resp.to_vec().unwrap(), from);
                }
            }));
        }
        {
            let (stop, count) = (stop.clone(), tcp_queries.clone());
            tcp.set_nonblocking(true).unwrap();
            threads.push(thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Ok((mut s, _)) = tcp.accept() else {
                        thread::sleep(Duration::from_millis(10));
                        continue;
                    };
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                    let mut len = [0u8; 2];
                    if s.read_exact(&mut len).is_err() {
                        continue;
                    }
                    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
                    if s.read_exact(&mut buf).is_err() {
                        continue;
                    }
                    let Ok(q) = Message::from_vec(&buf) else {
                        continue;
                    };
                    count.fetch_add(1, Ordering::Relaxed);
                    let out = zone_answer(&q).to_vec().unwrap();
                    let mut framed = (out.len() as u16).to_be_bytes().to_vec();
                    framed.extend_from_slice(&out);
                    let _ = s.write_all(&framed);
                }
            }));
        }
        FakeUpstream {
            addr,
            udp_queries,
            tcp_queries,
            stop,
            threads,
        }
    }

    fn forwarding_server(upstreams: Vec<SocketAddr>) -> DnsServer {
        let mut cfg = DnsConfig::new("usernet", Upstreams::Explicit(upstreams));
        cfg.timeout = Duration::from_millis(200);
        cfg.workers = 2;
        DnsServer::new(cfg, Arc::new(Records::new("usernet")))
    }

    fn a192() -> Vec<IpAddr> {
        vec!["192.0.2.1".parse().unwrap()]
    }

    #[test]
    fn forwards_to_upstream() {
        let up = fake_upstream(Mode::Answer);
        let srv = forwarding_server(vec![up.addr]);
        let m = ask(&srv, "www.Test.Zone.", RecordType::A);
        assert_eq!(m.metadata.id, 0x1234);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(!m.metadata.authoritative && m.metadata.recursion_available);
        assert_eq!(m.queries[0].name.to_ascii(), "www.Test.Zone.");
        assert_eq!(addrs(&m), a192());
        let m = ask(&srv, "nx.test.zone.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        // Unknown reverse names are forwarded too.
        let m = ask(&srv, "9.0.88.10.in-addr.arpa.", RecordType::PTR);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        let s = srv.stats();
        assert_eq!((s.forwarded, s.local_answers, s.nxdomain), (3, 0, 1));
        assert_eq!(up.udp_queries.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn failover_silent_and_closed() {
        let good = fake_upstream(Mode::Answer);
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let closed = {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.local_addr().unwrap()
        };
        let servfail = fake_upstream(Mode::ServFail);
        let srv = forwarding_server(vec![
            silent.local_addr().unwrap(),
            closed,
            servfail.addr,
            good.addr,
        ]);
        let t0 = Instant::now();
        let m = ask(&srv, "www.test.zone.", RecordType::A);
        let took = t0.elapsed();
        assert_eq!(addrs(&m), a192());
        // One silent upstream costs one timeout (200 ms); the rest fail fast.
        assert!(took >= Duration::from_millis(150), "{took:?}");
        assert!(took < Duration::from_millis(1500), "{took:?}");
        assert_eq!(servfail.udp_queries.load(Ordering::Relaxed), 1);
        assert_eq!(srv.stats().upstream_failures, 0);
    }

    #[test]
    fn all_upstreams_fail_servfail() {
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let servfail = fake_upstream(Mode::ServFail);
        let srv = forwarding_server(vec![silent.local_addr().unwrap(), servfail.addr]);
        let t0 = Instant::now();
        let m = ask(&srv, "www.test.zone.", RecordType::A);
        assert!(t0.elapsed() < Duration::from_millis(1500));
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
        assert_eq!(m.metadata.id, 0x1234);
        assert_eq!(srv.stats().upstream_failures, 1);
        // Nothing was cached.
        let m = ask(&srv, "www.test.zone.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
        assert_eq!(servfail.udp_queries.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn truncated_upstream_retried_over_tcp() {
        let up = fake_upstream(Mode::TruncateUdp);
        let srv = forwarding_server(vec![up.addr]);
        let m = ask_raw(
            &srv,
            &query_bytes(7, "www.test.zone.", RecordType::A, None),
            Transport::Tcp,
        )
        .unwrap();
        assert!(!m.metadata.truncation);
        assert_eq!(addrs(&m), a192());
        assert_eq!(up.udp_queries.load(Ordering::Relaxed), 1);
        assert_eq!(up.tcp_queries.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn spoofed_answers_ignored() {
        let up = fake_upstream(Mode::Spoof);
        let srv = forwarding_server(vec![up.addr]);
        let m = ask(&srv, "www.test.zone.", RecordType::A);
        assert_eq!(addrs(&m), a192());
    }

    #[test]
    fn cache_hits_and_ttl() {
        let up = fake_upstream(Mode::Answer);
        let srv = forwarding_server(vec![up.addr]);
        let m1 = ask(&srv, "www.test.zone.", RecordType::A);
        let m2 = ask_raw(
            &srv,
            &query_bytes(0x4321, "WWW.test.zone.", RecordType::A, None),
            Transport::Udp { max_size: 512 },
        )
        .unwrap();
        assert_eq!(m2.metadata.id, 0x4321);
        assert_eq!(m2.queries[0].name.to_ascii(), "WWW.test.zone.");
        assert_eq!(addrs(&m1), addrs(&m2));
        assert!(m2.answers[0].ttl <= 60);
        // Negative answers are cached too.
        ask(&srv, "nx.test.zone.", RecordType::A);
        let m = ask(&srv, "nx.test.zone.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        ask(&srv, "www.test.zone.", RecordType::AAAA);
        ask(&srv, "www.test.zone.", RecordType::AAAA);
        assert_eq!(up.udp_queries.load(Ordering::Relaxed), 3);
        let s = srv.stats();
        assert_eq!((s.forwarded, s.cache_hits), (3, 3));
    }

    #[test]
    fn cache_ttl_of_zone_answers() {
        let mut q = Message::query();
        q.queries
            .push(Query::query(name("x.test.zone."), RecordType::A));
        let mut nx = zone_answer(&q);
        assert_eq!(cache_ttl(&nx), Some(60));
        nx.queries[0].name = name("nx.test.zone.");
        let nx = zone_answer(&nx);
        assert_eq!(cache_ttl(&nx), Some(30));
    }

    #[test]
    fn udp_truncation_then_tcp() {
        let up = fake_upstream(Mode::Answer);
        let srv = forwarding_server(vec![up.addr]);
        let m = ask(&srv, "big.test.zone.", RecordType::A);
        assert!(m.metadata.truncation);
        assert!(m.answers.is_empty());
        assert_eq!(m.queries.len(), 1);
        assert_eq!(srv.stats().truncated, 1);
        // With EDNS 4096 the limit becomes 1232, which fits 60 A records (~1 KB).
        let m = ask_raw(
            &srv,
            &query_bytes(9, "big.test.zone.", RecordType::A, Some(4096)),
            Transport::Udp { max_size: 512 },
        )
        .unwrap();
        assert!(!m.metadata.truncation);
        assert_eq!(m.answers.len(), 60);
        assert!(m.edns.is_some());
        let m = ask_raw(
            &srv,
            &query_bytes(9, "big.test.zone.", RecordType::A, None),
            Transport::Tcp,
        )
        .unwrap();
        assert_eq!(m.answers.len(), 60);
        assert_eq!(up.udp_queries.load(Ordering::Relaxed), 1);
        assert_eq!(udp_limit(512, None), 512);
        assert_eq!(udp_limit(100, None), 512);
        assert_eq!(udp_limit(1400, None), 1400);
    }

    #[test]
    fn overload_servfail() {
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut cfg = DnsConfig::new(
            "usernet",
            Upstreams::Explicit(vec![silent.local_addr().unwrap()]),
        );
        cfg.timeout = Duration::from_millis(300);
        cfg.workers = 1;
        cfg.max_pending = 1;
        let srv = DnsServer::new(cfg, Arc::new(Records::new("usernet")));
        let (tx, rx) = crossbeam_channel::unbounded();
        for i in 0..6u16 {
            let tx = tx.clone();
            let q = query_bytes(i, &format!("n{i}.test.zone."), RecordType::A, None);
            srv.handle(
                &q,
                Transport::Udp { max_size: 512 },
                Box::new(move |b| drop(tx.send(b))),
            );
        }
        // At most one in flight and one queued: at least 4 were refused synchronously.
        let s = srv.stats();
        assert!(s.dropped_overload >= 4, "{s:?}");
        assert_eq!(s.dropped_overload + s.forwarded, 6);
        let mut immediate = 0;
        while let Ok(b) = rx.try_recv() {
            let m = Message::from_vec(&b).unwrap();
            assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
            immediate += 1;
        }
        assert_eq!(immediate as u64, s.dropped_overload);
        // The others complete (SERVFAIL after the timeout), each exactly once.
        for _ in 0..s.forwarded {
            let b = rx.recv_timeout(WAIT).unwrap();
            let m = Message::from_vec(&b).unwrap();
            assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
        }
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
    }

    #[test]
    fn shutdown_answers_pending() {
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut cfg = DnsConfig::new(
            "usernet",
            Upstreams::Explicit(vec![silent.local_addr().unwrap()]),
        );
        cfg.timeout = Duration::from_secs(10);
        cfg.workers = 1;
        let srv = DnsServer::new(cfg, Arc::new(Records::new("usernet")));
        let (tx, rx) = crossbeam_channel::unbounded();
        for i in 0..3u16 {
            let tx = tx.clone();
            let q = query_bytes(i, "x.test.zone.", RecordType::A, None);
            srv.handle(&q, Transport::Tcp, Box::new(move |b| drop(tx.send(b))));
        }
        let t0 = Instant::now();
        drop(srv);
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
        for _ in 0..3 {
            let b = rx.recv_timeout(WAIT).unwrap();
            let m = Message::from_vec(&b).unwrap();
            assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
        }
    }
}
