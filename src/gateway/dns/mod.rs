//! The gateway's DNS server: authoritative for the endpoint names of one network, a caching
//! forwarder for everything else.
//!
//! # Theory of operation
//!
//! The gateway's driver receives DNS messages on the gateway address (UDP payloads, or TCP messages
//! without their 2-byte length prefix) and hands each one to [`DnsServer::handle`] together with
//! a one-shot `reply` callback. `handle` never blocks on the network:
//!
//! 1. **Header check.** The 12-byte header is decoded first. Input whose header does not decode,
//!    or that is a response rather than a query, is dropped (no reply; counted as `malformed`).
//!    An opcode other than QUERY gets NOTIMP; a question count other than one, or a body that
//!    does not decode (truncated message, a name over 255 bytes, a compression pointer that does
//!    not point strictly backwards — which rules out loops —, a label over 63 bytes...), gets
//!    FORMERR. Every decode goes through `hickory-proto`, inside `catch_unwind` as a second line
//!    of defence, so no reply is ever built from an unchecked length.
//! 2. **Policy.** A network may restrict the names its guests resolve ([`DnsPolicy`], see
//!    `policy.rs`): a denied question is answered NXDOMAIN or REFUSED at once, before the
//!    local zones, the cache or an upstream see it (counted as `policy_denied`).
//! 3. **Local zones.** [`Records`] (shared with the control API) maps names inside the network's
//!    domain (e.g. `web.usernet`) to addresses. The server is authoritative (AA set, TTL
//!    [`LOCAL_TTL`] s) for the domain and for the reverse name (`in-addr.arpa` / `ip6.arpa`) of
//!    every address in `Records`: A/AAAA/ANY/PTR answers, NODATA (NOERROR, empty answer, SOA in
//!    authority) when the name exists without that type (empty non-terminals included), NXDOMAIN
//!    with SOA for unknown names in the domain. The apex answers SOA (and NODATA for every other
//!    type, NS included: the server does not know the address it is reached on). Names compare
//!    case-insensitively; the question is echoed as the client sent it.
//! 4. **Cache.** Other questions are looked up in a cache keyed by (lowercased name, type,
//!    class). Hits are answered at once with the client's id and TTLs decremented by the age of
//!    the entry.
//! 5. **Forwarding.** Misses are queued on a bounded crossbeam channel (`max_pending`) served by
//!    `workers` threads; a full queue answers SERVFAIL at once (`dropped_overload`). A worker
//!    tries the upstreams in order, each with `timeout`: a fresh connected UDP socket with a
//!    random source port and a random query id; an answer whose id, opcode or question does not
//!    match is ignored (anti-spoofing) and the wait goes on until the deadline. An answer with TC
//!    set is retried over TCP to the same upstream (with its own `timeout`). SERVFAIL, REFUSED,
//!    a timeout or a socket error moves on to the next upstream; when none is left the client
//!    gets SERVFAIL (`upstream_failures`). Accepted answers are cached: positive ones for the
//!    smallest answer TTL (at most [`MAX_POSITIVE_TTL`]), negative ones (NXDOMAIN, NODATA) for
//!    min(SOA TTL, SOA minimum, [`MAX_NEGATIVE_TTL`]); negative answers without SOA, truncated
//!    answers and TTL 0 are not cached. The cache holds at most `cache_entries` entries and
//!    evicts the oldest insertion first.
//! 6. **Reply.** Every reply carries the client's id and question. UDP replies larger than the
//!    client's limit are truncated: TC set, every record section emptied, so the client retries
//!    over TCP. The limit is `max(max_size, min(EDNS payload size, 1232))` where `max_size` is
//!    the transport's [`Transport::Udp`] value (512 unless the gateway knows better); 1232 bytes
//!    keeps answers within one IPv4 or IPv6 packet on a 1280+ MTU. Replies to EDNS queries carry
//!    an OPT record (payload [`EDNS_PAYLOAD`]); EDNS versions other than 0 get BADVERS.
//!
//! # Invariants
//!
//! - `reply` is called exactly once for every message that is not dropped: synchronously for
//!   local, cached and error answers, later from a worker for forwarded ones. A forwarded job
//!   carries a guard that answers SERVFAIL if the job is dropped unanswered (shutdown, a panic in
//!   a worker).
//! - Upstreams come from [`Upstreams`]: an explicit list, or every `nameserver` line of a
//!   resolv.conf file (port 53, in file order), re-read when its mtime, length or inode changes,
//!   checked at most once per second. Zero nameservers (or a file missing from the start)
//!   answer SERVFAIL; a file that can no longer be read keeps the last upstreams read.
//! - Dropping the [`DnsServer`] stops the workers: queued jobs are answered SERVFAIL, an exchange
//!   in flight stops within about 100 ms (a TCP connect within `timeout`), and the join waits at
//!   most `timeout` + 1 s before detaching a worker that is still busy.
//!
//! # Limits
//!
//! Upstream failover keeps no state between queries (a dead first upstream costs `timeout` on
//! every cache miss). No DNSSEC validation, no zone transfers (AXFR/IXFR in the local zones are
//! REFUSED), only class IN (and ANY) in the local zones. The cache ignores the DO and CD bits.
//! Each forwarded query holds one worker for up to `timeout` per upstream (twice with a TC
//! retry), so `workers` bounds the number of concurrent upstream exchanges.
//!
//! # Where things are
//!
//! - this file: configuration, counters, reply helpers and [`DnsServer`] (steps 1 and 6, and
//!   the dispatch between 2, 3, 4 and 5);
//! - `policy.rs`: [`DnsPolicy`], the name policy (step 2);
//! - `zone.rs`: [`Records`] and the authoritative answers (step 3);
//! - `forward.rs`: the cache and the forwarding workers (steps 4 and 5);
//! - `resolv.rs`: [`parse_resolv_conf`] and the resolv.conf watcher behind [`Upstreams`].

use std::net::SocketAddr;
use std::panic;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError};
use hickory_proto::op::{Edns, Header, Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use parking_lot::Mutex;
use serde::Serialize;
use tracing::{debug, error, warn};

mod cache;
mod forward;
pub mod policy;
mod resolv;
#[cfg(test)]
mod testutil;
mod zone;

use cache::{Cache, CacheKey};
use forward::{Job, ReplyFn, Responder, Shared, client_reply, worker_loop};
pub use policy::{DenyAnswer, DnsAction, DnsPolicy, DnsPolicySpec};
pub use resolv::parse_resolv_conf;
use resolv::{ResolvConfWatcher, UpstreamSource};
pub use zone::{DnsError, RecordEntry, Records};

/// TTL, in seconds, of the records the server answers authoritatively (and of their SOA).
pub const LOCAL_TTL: u32 = 10;
/// Longest time, in seconds, a positive forwarded answer stays in the cache.
pub const MAX_POSITIVE_TTL: u32 = 3600;
/// Longest time, in seconds, a negative forwarded answer (NXDOMAIN, NODATA) stays in the cache.
pub const MAX_NEGATIVE_TTL: u32 = 300;
/// EDNS UDP payload size the server advertises, and the largest EDNS-negotiated UDP reply it
/// sends unless the transport allows more.
pub const EDNS_PAYLOAD: u16 = 1232;
/// How often, at most, a resolv.conf file is checked for changes.
pub const RESOLV_CONF_RECHECK: Duration = Duration::from_secs(1);

/// Classic DNS UDP payload limit.
const UDP_MIN: usize = 512;

/// Where forwarded queries go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstreams {
    /// These servers, tried in order.
    Explicit(Vec<SocketAddr>),
    /// Every `nameserver` line of this resolv.conf file (port 53), in order; the file is re-read
    /// when its mtime or length changes (checked at most once per second). Zero nameservers (or
    /// a file missing from the start) make every forwarded query fail with SERVFAIL; a file
    /// that can no longer be read (removed, or refused under the sandbox) keeps the last list.
    ResolvConf(PathBuf),
}

/// Configuration of a [`DnsServer`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DnsConfig {
    /// The network's domain (e.g. `usernet`), without trailing dot.
    pub domain: String,
    /// Where names outside the local zones are resolved.
    pub upstreams: Upstreams,
    /// Time allowed for each upstream attempt (default 1500 ms).
    pub timeout: Duration,
    /// Maximum number of cached forwarded answers (default 4096; 0 disables the cache).
    pub cache_entries: usize,
    /// Number of forwarding threads (default 4). 0 starts none: queries not answered locally
    /// or from the cache get SERVFAIL at once (counted as `upstream_failures`), synchronously.
    pub workers: usize,
    /// Maximum number of forwarded queries waiting for a worker (default 256; at least 1).
    pub max_pending: usize,
    /// Which names guests may resolve (default none: every name).
    pub policy: Option<DnsPolicy>,
}

impl DnsConfig {
    /// A configuration with the default timeout, cache size, worker count and queue bound.
    pub fn new(domain: &str, upstreams: Upstreams) -> Self {
        Self {
            domain: domain.to_string(),
            upstreams,
            timeout: Duration::from_millis(1500),
            cache_entries: 4096,
            workers: 4,
            max_pending: 256,
            policy: None,
        }
    }
}

impl Default for DnsConfig {
    /// Domain `usernet`, upstreams from the host's `/etc/resolv.conf`.
    fn default() -> Self {
        Self::new(
            "usernet",
            Upstreams::ResolvConf(PathBuf::from("/etc/resolv.conf")),
        )
    }
}

/// How a message reached the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A UDP datagram. `max_size` is the largest reply the gateway sends for a query without
    /// EDNS (512 unless it knows better); a query's EDNS payload size raises the limit, up to
    /// [`EDNS_PAYLOAD`]. Larger replies are truncated (TC set, records removed).
    Udp {
        /// Reply size limit in bytes, before EDNS.
        max_size: usize,
    },
    /// A TCP message (without its length prefix); replies are never truncated below 64 KiB.
    Tcp,
}

/// Counters of a [`DnsServer`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct DnsStats {
    /// Messages passed to [`DnsServer::handle`].
    pub queries: u64,
    /// Queries answered from the local zones (NXDOMAIN and NODATA included).
    pub local_answers: u64,
    /// Replies with NXDOMAIN (local, cached or forwarded).
    pub nxdomain: u64,
    /// Queries queued for forwarding.
    pub forwarded: u64,
    /// Queries answered from the cache.
    pub cache_hits: u64,
    /// Forwarded queries that no upstream answered (the client got SERVFAIL).
    pub upstream_failures: u64,
    /// UDP replies truncated to fit the client's limit.
    pub truncated: u64,
    /// Malformed input: dropped messages, FORMERR, NOTIMP and BADVERS replies.
    pub malformed: u64,
    /// Queries answered SERVFAIL because the forwarding queue was full.
    pub dropped_overload: u64,
    /// Queries the network's DNS policy denied (answered NXDOMAIN or REFUSED).
    pub policy_denied: u64,
}

#[derive(Debug, Default)]
struct Counters {
    queries: AtomicU64,
    local_answers: AtomicU64,
    nxdomain: AtomicU64,
    forwarded: AtomicU64,
    cache_hits: AtomicU64,
    upstream_failures: AtomicU64,
    truncated: AtomicU64,
    malformed: AtomicU64,
    dropped_overload: AtomicU64,
    policy_denied: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    fn snapshot(&self) -> DnsStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DnsStats {
            queries: g(&self.queries),
            local_answers: g(&self.local_answers),
            nxdomain: g(&self.nxdomain),
            forwarded: g(&self.forwarded),
            cache_hits: g(&self.cache_hits),
            upstream_failures: g(&self.upstream_failures),
            truncated: g(&self.truncated),
            malformed: g(&self.malformed),
            dropped_overload: g(&self.dropped_overload),
            policy_denied: g(&self.policy_denied),
        }
    }
}

/// Decodes a message with hickory-proto; a panic inside the decoder counts as a failure.
fn decode(bytes: &[u8]) -> Option<Message> {
    panic::catch_unwind(|| Message::from_vec(bytes).ok())
        .ok()
        .flatten()
}

/// Decodes only the 12-byte header.
fn decode_header(bytes: &[u8]) -> Option<Header> {
    panic::catch_unwind(|| Header::read(&mut BinDecoder::new(bytes)).ok())
        .ok()
        .flatten()
}

/// The OPT record of a reply to `query`, if it had one.
fn reply_edns(query: &Message) -> Option<Edns> {
    let qe = query.edns.as_ref()?;
    let mut e = Edns::new();
    e.set_max_payload(EDNS_PAYLOAD);
    e.flags_mut().dnssec_ok = qe.flags().dnssec_ok;
    Some(e)
}

/// A reply skeleton for `query`: its id, RD and CD bits and question, RA set.
fn reply_to(query: &Message, rcode: ResponseCode) -> Message {
    let mut m = Message::response(query.metadata.id, OpCode::Query);
    m.metadata = Metadata::response_from_request(&query.metadata);
    m.metadata.recursion_available = true;
    m.metadata.response_code = rcode;
    m.queries = query.queries.clone();
    m.edns = reply_edns(query);
    m
}

/// A reply built from the header only (NOTIMP, FORMERR): no question section.
fn reply_to_header(header: &Header, rcode: ResponseCode) -> Message {
    let mut m = Message::response(header.metadata.id, header.metadata.op_code);
    m.metadata = Metadata::response_from_request(&header.metadata);
    m.metadata.recursion_available = true;
    m.metadata.response_code = rcode;
    m
}

/// The UDP size limit for a reply to `query`.
fn udp_limit(max_size: usize, query: Option<&Message>) -> usize {
    let edns = query
        .and_then(|q| q.edns.as_ref())
        .map_or(UDP_MIN, |e| usize::from(e.max_payload().min(EDNS_PAYLOAD)));
    max_size.max(edns).max(UDP_MIN)
}

/// The DNS server of one network's gateway: local names from [`Records`], a cache, and a pool of
/// forwarding threads. See the module documentation.
pub struct DnsServer {
    shared: Arc<Shared>,
    tx: Option<Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServer")
            .field("domain", &self.shared.records.domain())
            .field("upstreams", &self.shared.upstreams)
            .field("workers", &self.workers.len())
            .finish()
    }
}

impl DnsServer {
    /// Starts a server for `records` with `cfg.workers` forwarding threads.
    /// `cfg.domain` should match the domain `records` was created with; the records' domain is
    /// the one served.
    pub fn new(cfg: DnsConfig, records: Arc<Records>) -> Self {
        if !cfg
            .domain
            .trim_matches('.')
            .eq_ignore_ascii_case(records.domain())
        {
            warn!(config = %cfg.domain, records = %records.domain(),
                "DNS config domain differs from the records' domain; serving the records' domain");
        }
        let upstreams = match cfg.upstreams {
            Upstreams::Explicit(v) => UpstreamSource::Explicit(v),
            Upstreams::ResolvConf(p) => {
                let mut w = ResolvConfWatcher::new(p, RESOLV_CONF_RECHECK);
                w.current();
                UpstreamSource::ResolvConf(Mutex::new(w))
            }
        };
        let shared = Arc::new(Shared {
            records,
            upstreams,
            timeout: cfg.timeout.max(Duration::from_millis(1)),
            cache: Mutex::new(Cache::new(cfg.cache_entries)),
            stats: Counters::default(),
            stop: AtomicBool::new(false),
            policy: arc_swap::ArcSwapOption::from(cfg.policy.map(Arc::new)),
        });
        let (tx, rx) = crossbeam_channel::bounded(cfg.max_pending.max(1));
        let mut workers = Vec::new();
        for i in 0..cfg.workers {
            let (s, r) = (shared.clone(), rx.clone());
            match thread::Builder::new()
                .name(format!("dns-fwd-{i}"))
                .spawn(move || worker_loop(s, r))
            {
                Ok(h) => workers.push(h),
                Err(e) => error!(error = %e, "cannot start a DNS forwarding thread"),
            }
        }
        Self {
            shared,
            tx: (!workers.is_empty()).then_some(tx),
            workers,
        }
    }

    /// The records served.
    pub fn records(&self) -> &Arc<Records> {
        &self.shared.records
    }

    /// Handles one query (a UDP payload, or a TCP message without its 2-byte length prefix).
    /// Calls `reply` exactly once with the answer bytes — synchronously for local, cached and
    /// error answers, later from a worker for forwarded ones — or never, for input that must be
    /// dropped (unparseable header, a response instead of a query); drops are counted.
    pub fn handle(&self, msg: &[u8], transport: Transport, reply: Box<dyn FnOnce(Vec<u8>) + Send>) {
        let stats = &self.shared.stats;
        bump(&stats.queries);
        let Some(header) = decode_header(msg) else {
            bump(&stats.malformed);
            debug!(
                len = msg.len(),
                "dropping a DNS message without a valid header"
            );
            return;
        };
        if header.metadata.message_type != MessageType::Query {
            bump(&stats.malformed);
            debug!("dropping a DNS response sent to the server");
            return;
        }
        let udp_max = match transport {
            Transport::Udp { max_size } => Some(max_size),
            Transport::Tcp => None,
        };
        let header_limit = udp_max.map(|s| udp_limit(s, None));
        let rejected = if header.metadata.op_code != OpCode::Query {
            Some(ResponseCode::NotImp)
        } else if header.counts.queries != 1 {
            Some(ResponseCode::FormErr)
        } else {
            None
        };
        if let Some(rcode) = rejected {
            bump(&stats.malformed);
            return self.respond(&reply_to_header(&header, rcode), header_limit, reply);
        }
        let Some(query) = decode(msg).filter(|m| m.queries.len() == 1) else {
            bump(&stats.malformed);
            let m = reply_to_header(&header, ResponseCode::FormErr);
            return self.respond(&m, header_limit, reply);
        };
        let Some(q) = query.queries.first() else {
            return;
        };
        let limit = udp_max.map(|s| udp_limit(s, Some(&query)));
        if query.edns.as_ref().is_some_and(|e| e.version() != 0) {
            bump(&stats.malformed);
            return self.respond(&reply_to(&query, ResponseCode::BADVERS), limit, reply);
        }

        // Policy.
        if let Some(p) = self.shared.policy.load().as_deref()
            && p.decide(&q.name.to_ascii()) == DnsAction::Deny
        {
            bump(&stats.policy_denied);
            let rcode = match p.answer() {
                DenyAnswer::Nxdomain => ResponseCode::NXDomain,
                DenyAnswer::Refused => ResponseCode::Refused,
            };
            return self.respond(&reply_to(&query, rcode), limit, reply);
        }

        // Local zones.
        if let Some(local) = self.shared.records.resolve(q) {
            bump(&stats.local_answers);
            let mut m = reply_to(&query, local.rcode);
            m.metadata.authoritative = local.rcode != ResponseCode::Refused;
            m.answers = local.answers;
            if let Some(owner) = local.soa_owner
                && let Some(soa) = self.shared.records.soa(&owner)
            {
                m.authorities.push(soa);
            }
            return self.respond(&m, limit, reply);
        }

        // Cache.
        let key: CacheKey = (
            q.name.to_lowercase(),
            u16::from(q.query_type),
            u16::from(q.query_class),
        );
        let cached = self.shared.cache.lock().get(&key, Instant::now());
        if let Some(resp) = cached {
            bump(&stats.cache_hits);
            return self.respond(&client_reply(resp, &query), limit, reply);
        }

        // Forwarding.
        let responder = Responder {
            reply: Some(reply),
            servfail: self.shared.servfail_bytes(&query),
        };
        let Some(tx) = &self.tx else {
            bump(&stats.upstream_failures);
            drop(responder); // answers SERVFAIL
            return;
        };
        let job = Job {
            query,
            key,
            limit,
            responder,
        };
        match tx.try_send(job) {
            Ok(()) => bump(&stats.forwarded),
            Err(TrySendError::Full(job)) => {
                bump(&stats.dropped_overload);
                debug!("DNS forwarding queue full; answering SERVFAIL");
                drop(job);
            }
            Err(TrySendError::Disconnected(job)) => {
                bump(&stats.upstream_failures);
                drop(job);
            }
        }
    }

    /// Encodes `m` within `limit` and passes it to `reply`.
    fn respond(&self, m: &Message, limit: Option<usize>, reply: ReplyFn) {
        if let Some(bytes) = self.shared.encode(m, limit) {
            reply(bytes);
        }
    }

    /// Replaces the name policy (None: every name allowed). Queries already being answered keep
    /// the policy they started with; the next one sees the new policy.
    pub fn set_policy(&self, policy: Option<DnsPolicy>) {
        self.shared.policy.store(policy.map(Arc::new));
    }

    /// The name policy in force, as written.
    pub fn policy(&self) -> Option<DnsPolicySpec> {
        self.shared
            .policy
            .load()
            .as_deref()
            .map(|p| p.spec().clone())
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> DnsStats {
        self.shared.stats.snapshot()
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.tx = None; // workers drain the queue (SERVFAIL) and exit
        let deadline = Instant::now() + self.shared.timeout + Duration::from_secs(1);
        for h in self.workers.drain(..) {
            while !h.is_finished() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(5));
            }
            if h.is_finished() {
                let _ = h.join();
            } else {
                warn!("DNS forwarding thread still busy at shutdown; detaching it");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;
    use hickory_proto::rr::RecordType;

    fn rcode_of(srv: &DnsServer, bytes: &[u8]) -> Option<ResponseCode> {
        ask_raw(srv, bytes, Transport::Udp { max_size: 512 }).map(|m| {
            assert_eq!(m.metadata.id, 0xbeef);
            assert_eq!(m.metadata.message_type, MessageType::Response);
            m.metadata.response_code
        })
    }

    #[test]
    fn malformed_short_header_dropped() {
        let srv = local_server();
        assert_eq!(rcode_of(&srv, &[]), None);
        assert_eq!(rcode_of(&srv, &[0xbe, 0xef, 1, 0, 0]), None);
        assert_eq!(srv.stats().malformed, 2);
    }

    #[test]
    fn malformed_response_dropped() {
        let srv = local_server();
        let mut b = header(0x8000, 1, 0);
        question(&mut b, &[b"web", b"usernet"]);
        assert_eq!(rcode_of(&srv, &b), None);
        assert_eq!(srv.stats().malformed, 1);
    }

    #[test]
    fn malformed_question_count() {
        let srv = local_server();
        assert_eq!(
            rcode_of(&srv, &header(0x0100, 0, 0)),
            Some(ResponseCode::FormErr)
        );
        let mut b = header(0x0100, 2, 0);
        question(&mut b, &[b"web", b"usernet"]);
        question(&mut b, &[b"web", b"usernet"]);
        assert_eq!(rcode_of(&srv, &b), Some(ResponseCode::FormErr));
        assert_eq!(srv.stats().malformed, 2);
    }

    #[test]
    fn malformed_opcode_notimp() {
        let srv = local_server();
        for opcode in [1u16, 2, 4, 5, 15] {
            let mut b = header(opcode << 11, 1, 0);
            question(&mut b, &[b"web", b"usernet"]);
            assert_eq!(
                rcode_of(&srv, &b),
                Some(ResponseCode::NotImp),
                "opcode {opcode}"
            );
        }
    }

    #[test]
    fn malformed_name_too_long() {
        let srv = local_server();
        let label = [b'a'; 63];
        let mut b = header(0x0100, 1, 0);
        question(&mut b, &[&label, &label, &label, &label, &label]);
        assert_eq!(rcode_of(&srv, &b), Some(ResponseCode::FormErr));
        // A label over 63 bytes (length byte 0x40 is a reserved label type).
        let mut b = header(0x0100, 1, 0);
        question(&mut b, &[&[b'a'; 64]]);
        assert_eq!(rcode_of(&srv, &b), Some(ResponseCode::FormErr));
    }

    #[test]
    fn malformed_compression_loops() {
        let srv = local_server();
        // A pointer to itself (offset 12).
        let mut b = header(0x0100, 1, 0);
        b.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        assert_eq!(rcode_of(&srv, &b), Some(ResponseCode::FormErr));
        // Two pointers pointing at each other.
        let mut b = header(0x0100, 1, 0);
        b.extend_from_slice(&[0xc0, 14, 0xc0, 12, 0, 1, 0, 1]);
        assert_eq!(rcode_of(&srv, &b), Some(ResponseCode::FormErr));
        // A forward pointer.
        let mut b = header(0x0100, 1, 0);
        b.extend_from_slice(&[0xc0, 20, 0, 1, 0, 1, 3, b'w', b'e', b'b', 0]);
        assert_eq!(rcode_of(&srv, &b), Some(ResponseCode::FormErr));
        // A pointer into the header.
        let mut b = header(0x0100, 1, 0);
        b.extend_from_slice(&[0xc0, 2, 0, 1, 0, 1]);
        assert!(rcode_of(&srv, &b).is_some());
    }

    #[test]
    fn malformed_truncated_messages() {
        let srv = local_server();
        let full = query_bytes(0xbeef, "web.usernet.", RecordType::A, Some(1232));
        for cut in 12..full.len() {
            let r = rcode_of(&srv, &full[..cut]);
            assert_eq!(r, Some(ResponseCode::FormErr), "cut at {cut}");
        }
        assert_eq!(rcode_of(&srv, &full), Some(ResponseCode::NoError));
        // Counts promising records that are not there.
        let mut b = header(0x0100, 1, 500);
        question(&mut b, &[b"web", b"usernet"]);
        assert_eq!(rcode_of(&srv, &b), Some(ResponseCode::FormErr));
        // Two OPT records.
        let mut b = header(0x0100, 1, 0);
        b[11] = 2;
        question(&mut b, &[b"web", b"usernet"]);
        for _ in 0..2 {
            b.extend_from_slice(&[0, 0, 41, 4, 0, 0, 0, 0, 0, 0, 0]);
        }
        assert_eq!(rcode_of(&srv, &b), Some(ResponseCode::FormErr));
    }

    #[test]
    fn edns_version_badvers() {
        let srv = local_server();
        let mut b = header(0x0100, 1, 0);
        b[11] = 1;
        question(&mut b, &[b"web", b"usernet"]);
        b.extend_from_slice(&[0, 0, 41, 4, 0, 0, 1, 0, 0, 0, 0]);
        // hickory-proto decodes extended rcode 16 as BADSIG (same value as BADVERS).
        let rcode = rcode_of(&srv, &b).map(u16::from);
        assert_eq!(rcode, Some(u16::from(ResponseCode::BADVERS)));
    }

    #[test]
    fn fuzz_never_panics() {
        let srv = local_server();
        let base = query_bytes(0xbeef, "web.usernet.", RecordType::A, Some(1232));
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for i in 0..20_000 {
            let mut b = if i % 2 == 0 {
                base.clone()
            } else {
                (0..next() % 80).map(|_| next() as u8).collect()
            };
            for _ in 0..(next() % 4) {
                if !b.is_empty() {
                    let at = (next() as usize) % b.len();
                    b[at] = next() as u8;
                }
            }
            // Local answers only: the single worker has no upstream, so nothing leaves.
            let (tx, rx) = crossbeam_channel::bounded(1);
            srv.handle(
                &b,
                Transport::Udp { max_size: 512 },
                Box::new(move |r| drop(tx.send(r))),
            );
            if let Ok(r) = rx.recv_timeout(WAIT) {
                assert!(r.len() <= 1232);
                Message::from_vec(&r).expect("reply decodes");
            }
        }
    }
}
