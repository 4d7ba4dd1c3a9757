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
//! 2. **Local zones.** [`Records`] (shared with the control API) maps names inside the network's
//!    domain (e.g. `web.usernet`) to addresses. The server is authoritative (AA set, TTL
//!    [`LOCAL_TTL`] s) for the domain and for the reverse name (`in-addr.arpa` / `ip6.arpa`) of
//!    every address in `Records`: A/AAAA/ANY/PTR answers, NODATA (NOERROR, empty answer, SOA in
//!    authority) when the name exists without that type (empty non-terminals included), NXDOMAIN
//!    with SOA for unknown names in the domain. The apex answers SOA (and NODATA for every other
//!    type, NS included: the server does not know the address it is reached on). Names compare
//!    case-insensitively; the question is echoed as the client sent it.
//! 3. **Cache.** Other questions are looked up in a cache keyed by (lowercased name, type,
//!    class). Hits are answered at once with the client's id and TTLs decremented by the age of
//!    the entry.
//! 4. **Forwarding.** Misses are queued on a bounded crossbeam channel (`max_pending`) served by
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
//! 5. **Reply.** Every reply carries the client's id and question. UDP replies larger than the
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

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6, TcpStream, UdpSocket};
use std::os::unix::fs::MetadataExt;
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use hickory_proto::op::{
    Edns, Header, Message, MessageType, Metadata, OpCode, Query, ResponseCode,
};
use hickory_proto::rr::rdata::{A, AAAA, PTR, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use tracing::{debug, error, info, warn};

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
/// Longest single blocking wait of a worker, so that shutdown is noticed quickly.
const WAIT_SLICE: Duration = Duration::from_millis(100);
/// Largest DNS message (UDP datagram or TCP message).
const MAX_MESSAGE: usize = 65535;

/// Errors of the DNS records API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DnsError {
    /// A name that is not a valid DNS name for a record.
    #[error("invalid DNS name {name:?}: {reason}")]
    BadName {
        /// The name as given.
        name: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A fully qualified name outside the network's domain.
    #[error("DNS name {name:?} is outside the domain {domain:?}")]
    OutsideDomain {
        /// The name as given.
        name: String,
        /// The network's domain.
        domain: String,
    },
}

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

/// One name → address mapping, as listed by [`Records::list`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[non_exhaustive]
pub struct RecordEntry {
    /// Fully qualified name, lowercase, without trailing dot (e.g. `web.usernet`).
    pub name: String,
    /// One address of the name.
    pub addr: IpAddr,
}

#[derive(Debug, Default)]
struct RecordsInner {
    /// Full lowercase name without trailing dot → its addresses, in insertion order.
    by_name: BTreeMap<String, Vec<IpAddr>>,
    /// Lowercase reverse name without trailing dot (`1.0.88.10.in-addr.arpa`) → the names that
    /// have this address, sorted.
    by_reverse: HashMap<String, Vec<String>>,
}

/// The local names of one network: thread-safe, shared through an `Arc` between the gateway's
/// DNS server and the control API.
#[derive(Debug)]
pub struct Records {
    /// The domain, lowercase, without leading or trailing dots.
    domain: String,
    /// The domain as an FQDN, when it is a valid name.
    apex: Option<Name>,
    /// SOA serial, bumped on every change.
    serial: AtomicU32,
    inner: RwLock<RecordsInner>,
}

/// Checks one label of a record name: 1 to 63 bytes of letters, digits, `-` and `_`, not
/// starting or ending with `-`.
fn check_label(label: &str) -> Result<(), String> {
    if label.is_empty() {
        return Err("empty label".into());
    }
    if label.len() > 63 {
        return Err(format!("label {label:?} is longer than 63 bytes"));
    }
    if let Some(c) = label
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(format!(
            "label {label:?} contains {c:?} (allowed: letters, digits, '-', '_')"
        ));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(format!("label {label:?} starts or ends with '-'"));
    }
    Ok(())
}

/// The reverse-lookup name of `addr`, lowercase, without trailing dot.
fn reverse_key(addr: IpAddr) -> String {
    let name = Name::from(addr).to_lowercase().to_ascii();
    name.trim_end_matches('.').to_string()
}

impl Records {
    /// An empty record set for `domain` (e.g. `usernet`; case and surrounding dots ignored).
    /// An invalid domain leaves the set unusable: [`Records::add`] fails and the server is
    /// authoritative for no name (everything is forwarded).
    pub fn new(domain: &str) -> Self {
        let domain = domain.trim_matches('.').to_ascii_lowercase();
        let valid = !domain.is_empty()
            && domain.len() <= 253
            && domain.split('.').all(|l| check_label(l).is_ok());
        let apex = if valid {
            Name::from_ascii(format!("{domain}.")).ok()
        } else {
            None
        };
        if apex.is_none() {
            warn!(domain = %domain, "invalid DNS domain: no local names will be served");
        }
        Self {
            domain,
            apex,
            serial: AtomicU32::new(1),
            inner: RwLock::new(RecordsInner::default()),
        }
    }

    /// The domain, lowercase, without trailing dot.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Turns a label (`web`) or an FQDN inside the domain (`web.usernet`, `Web.Usernet.`) into
    /// the stored key (`web.usernet`).
    fn normalize(&self, name: &str) -> Result<String, DnsError> {
        let bad = |reason: String| DnsError::BadName {
            name: name.to_string(),
            reason,
        };
        if self.apex.is_none() {
            return Err(bad(format!(
                "the network's DNS domain {:?} is invalid",
                self.domain
            )));
        }
        let lower = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        if lower.is_empty() {
            return Err(bad("empty name".into()));
        }
        if lower == self.domain {
            return Err(bad("is the domain apex itself".into()));
        }
        let relative = match lower
            .strip_suffix(self.domain.as_str())
            .and_then(|r| r.strip_suffix('.'))
        {
            Some(r) => r,
            None if lower.contains('.') => {
                return Err(DnsError::OutsideDomain {
                    name: name.to_string(),
                    domain: self.domain.clone(),
                });
            }
            None => lower.as_str(),
        };
        for label in relative.split('.') {
            check_label(label).map_err(bad)?;
        }
        let full = format!("{relative}.{}", self.domain);
        if full.len() > 253 {
            return Err(bad(format!("{full:?} is longer than 253 bytes")));
        }
        Ok(full)
    }

    /// Adds `addr` to `name` — a label (`web`) or an FQDN inside the domain (`web.usernet`).
    /// A name may have several addresses, IPv4 (A) and IPv6 (AAAA); adding an existing pair is
    /// a no-op.
    pub fn add(&self, name: &str, addr: IpAddr) -> Result<(), DnsError> {
        let key = self.normalize(name)?;
        let mut inner = self.inner.write();
        let addrs = inner.by_name.entry(key.clone()).or_default();
        if addrs.contains(&addr) {
            return Ok(());
        }
        addrs.push(addr);
        let names = inner.by_reverse.entry(reverse_key(addr)).or_default();
        if let Err(pos) = names.binary_search(&key) {
            names.insert(pos, key);
        }
        self.serial.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Removes `addr` from `name`, or every address of `name` when `addr` is `None`. Returns
    /// whether anything was removed (an invalid name removes nothing).
    pub fn remove(&self, name: &str, addr: Option<IpAddr>) -> bool {
        let Ok(key) = self.normalize(name) else {
            return false;
        };
        let mut inner = self.inner.write();
        let Some(addrs) = inner.by_name.get_mut(&key) else {
            return false;
        };
        let removed: Vec<IpAddr> = match addr {
            Some(a) => {
                let before = addrs.len();
                addrs.retain(|x| *x != a);
                if addrs.len() == before {
                    return false;
                }
                vec![a]
            }
            None => std::mem::take(addrs),
        };
        if addrs.is_empty() {
            inner.by_name.remove(&key);
        }
        for a in removed {
            let rkey = reverse_key(a);
            if let Some(names) = inner.by_reverse.get_mut(&rkey) {
                names.retain(|n| *n != key);
                if names.is_empty() {
                    inner.by_reverse.remove(&rkey);
                }
            }
        }
        self.serial.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Every (name, address) pair, sorted by name then address.
    pub fn list(&self) -> Vec<RecordEntry> {
        let inner = self.inner.read();
        let mut out: Vec<RecordEntry> = inner
            .by_name
            .iter()
            .flat_map(|(name, addrs)| {
                addrs.iter().map(|a| RecordEntry {
                    name: name.clone(),
                    addr: *a,
                })
            })
            .collect();
        out.sort();
        out
    }

    /// The addresses of a name (an FQDN like `web.usernet`, with or without trailing dot, or a
    /// label), in insertion order; empty for unknown or invalid names.
    pub fn lookup(&self, fqdn: &str) -> Vec<IpAddr> {
        let Ok(key) = self.normalize(fqdn) else {
            return Vec::new();
        };
        self.inner
            .read()
            .by_name
            .get(&key)
            .cloned()
            .unwrap_or_default()
    }

    /// The SOA record of a local zone whose apex is `owner`.
    fn soa(&self, owner: &Name) -> Option<Record> {
        let apex = self.apex.as_ref()?;
        let rname = Name::from_ascii("hostmaster")
            .ok()?
            .append_domain(apex)
            .ok()?;
        let soa = SOA::new(
            apex.clone(),
            rname,
            self.serial.load(Ordering::Relaxed),
            3600,
            600,
            86400,
            LOCAL_TTL,
        );
        Some(Record::from_rdata(
            owner.clone(),
            LOCAL_TTL,
            RData::SOA(soa),
        ))
    }

    /// Answers `q` if it falls in a local zone.
    fn resolve(&self, q: &Query) -> Option<LocalAnswer> {
        let apex = self.apex.as_ref()?;
        let qname = &q.name;
        if apex.zone_of(qname) {
            return Some(self.resolve_forward(apex, q));
        }
        let rkey = qname.to_lowercase().to_ascii();
        let rkey = rkey.trim_end_matches('.');
        if !(rkey.ends_with(".in-addr.arpa") || rkey.ends_with(".ip6.arpa")) {
            return None;
        }
        let names = self.inner.read().by_reverse.get(rkey).cloned()?;
        let mut ans = LocalAnswer::new(ResponseCode::NoError, qname.clone());
        if !class_ok(q.query_class) {
            ans.rcode = ResponseCode::Refused;
            return Some(ans);
        }
        if matches!(q.query_type, RecordType::PTR | RecordType::ANY) {
            for n in names {
                if let Ok(target) = Name::from_ascii(format!("{n}.")) {
                    ans.answers.push(Record::from_rdata(
                        qname.clone(),
                        LOCAL_TTL,
                        RData::PTR(PTR(target)),
                    ));
                }
            }
        }
        Some(ans)
    }

    /// Answers `q`, a question inside the domain.
    fn resolve_forward(&self, apex: &Name, q: &Query) -> LocalAnswer {
        let qname = &q.name;
        let mut ans = LocalAnswer::new(ResponseCode::NoError, apex.clone());
        if !class_ok(q.query_class) || matches!(q.query_type, RecordType::AXFR | RecordType::IXFR) {
            ans.rcode = ResponseCode::Refused;
            ans.soa_owner = None;
            return ans;
        }
        let extra = usize::from(qname.num_labels().saturating_sub(apex.num_labels()));
        if extra == 0 {
            if matches!(q.query_type, RecordType::SOA | RecordType::ANY) {
                if let Some(mut soa) = self.soa(apex) {
                    soa.name = qname.clone();
                    ans.answers.push(soa);
                }
                ans.soa_owner = None;
            }
            return ans;
        }
        // The labels in front of the apex, which must all be valid record labels.
        let mut labels = Vec::with_capacity(extra);
        for raw in qname.iter().take(extra) {
            match std::str::from_utf8(raw) {
                Ok(l) if check_label(l).is_ok() => labels.push(l.to_ascii_lowercase()),
                _ => {
                    ans.rcode = ResponseCode::NXDomain;
                    return ans;
                }
            }
        }
        let key = format!("{}.{}", labels.join("."), self.domain);
        let inner = self.inner.read();
        match inner.by_name.get(&key) {
            Some(addrs) => {
                for addr in addrs {
                    let data = match (q.query_type, addr) {
                        (RecordType::A | RecordType::ANY, IpAddr::V4(v4)) => RData::A(A(*v4)),
                        (RecordType::AAAA | RecordType::ANY, IpAddr::V6(v6)) => {
                            RData::AAAA(AAAA(*v6))
                        }
                        _ => continue,
                    };
                    ans.answers
                        .push(Record::from_rdata(qname.clone(), LOCAL_TTL, data));
                }
                if !ans.answers.is_empty() {
                    ans.soa_owner = None;
                }
            }
            None => {
                // An empty non-terminal (`app.usernet` when `db.app.usernet` exists) exists.
                let suffix = format!(".{key}");
                if !inner.by_name.keys().any(|k| k.ends_with(&suffix)) {
                    ans.rcode = ResponseCode::NXDomain;
                }
            }
        }
        ans
    }
}

/// Classes the local zones answer.
fn class_ok(class: DNSClass) -> bool {
    matches!(class, DNSClass::IN | DNSClass::ANY)
}

/// An authoritative answer from the local zones.
struct LocalAnswer {
    rcode: ResponseCode,
    answers: Vec<Record>,
    /// Owner of the SOA put in the authority section (None: no SOA).
    soa_owner: Option<Name>,
}

impl LocalAnswer {
    fn new(rcode: ResponseCode, soa_owner: Name) -> Self {
        Self {
            rcode,
            answers: Vec::new(),
            soa_owner: Some(soa_owner),
        }
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
        }
    }
}

/// Parses the `nameserver` lines of a resolv.conf text, in order, with port 53. Comments (`#`,
/// `;`) and unparseable addresses are skipped; an IPv6 zone (`fe80::1%eth0`) becomes the scope
/// id.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or("");
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(word) = words.next() else { continue };
        if let Ok(ip) = word.parse::<IpAddr>() {
            out.push(SocketAddr::new(ip, 53));
        } else if let Some((ip, zone)) = word.split_once('%')
            && let Ok(ip) = ip.parse::<Ipv6Addr>()
            && let Some(scope) = scope_id(zone)
        {
            out.push(SocketAddr::V6(SocketAddrV6::new(ip, 53, 0, scope)));
        } else {
            debug!(line, "ignoring unparseable nameserver line");
        }
    }
    out
}

/// The scope id of an IPv6 zone: a number or an interface name.
fn scope_id(zone: &str) -> Option<u32> {
    if let Ok(n) = zone.parse() {
        return Some(n);
    }
    let c = CString::new(zone).ok()?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (idx != 0).then_some(idx)
}

/// Follows a resolv.conf file: re-reads it when its mtime, length or inode changes, checking at
/// most once per `interval`.
///
/// A file that cannot be read (it vanished while being replaced, or `open` is refused because
/// the sandbox is on, or EACCES) keeps the last upstreams read: one warning per failing spell,
/// and the next change is read again. Only a file read successfully replaces the list (an
/// empty list too, if it has no `nameserver` line).
#[derive(Debug)]
struct ResolvConfWatcher {
    path: PathBuf,
    interval: Duration,
    last_check: Option<Instant>,
    /// (mtime, len, inode) of the version last read successfully.
    stamp: Option<(Option<SystemTime>, u64, u64)>,
    servers: Vec<SocketAddr>,
    /// True while the file cannot be read (warned once).
    failing: bool,
}

impl ResolvConfWatcher {
    fn new(path: PathBuf, interval: Duration) -> Self {
        Self {
            path,
            interval,
            last_check: None,
            stamp: None,
            servers: Vec::new(),
            failing: false,
        }
    }

    fn current(&mut self) -> Vec<SocketAddr> {
        let now = Instant::now();
        if self
            .last_check
            .is_some_and(|t| now.duration_since(t) < self.interval)
        {
            return self.servers.clone();
        }
        let first = self.last_check.is_none();
        self.last_check = Some(now);
        let read = std::fs::metadata(&self.path).and_then(|m| {
            let stamp = Some((m.modified().ok(), m.len(), m.ino()));
            if !first && stamp == self.stamp {
                return Ok(None);
            }
            std::fs::read_to_string(&self.path).map(|text| Some((stamp, text)))
        });
        match read {
            Ok(None) => {}
            Ok(Some((stamp, text))) => {
                let servers = parse_resolv_conf(&text);
                if first || self.failing || servers != self.servers {
                    info!(path = %self.path.display(), ?servers, "DNS upstreams");
                }
                self.failing = false;
                self.stamp = stamp;
                self.servers = servers;
            }
            Err(e) => {
                if !self.failing {
                    warn!(path = %self.path.display(), error = %e, kept = ?self.servers,
                        "cannot read resolv.conf: keeping the last upstreams");
                }
                self.failing = true;
            }
        }
        self.servers.clone()
    }
}

#[derive(Debug)]
enum UpstreamSource {
    Explicit(Vec<SocketAddr>),
    ResolvConf(Mutex<ResolvConfWatcher>),
}

impl UpstreamSource {
    fn current(&self) -> Vec<SocketAddr> {
        match self {
            Self::Explicit(v) => v.clone(),
            Self::ResolvConf(w) => w.lock().current(),
        }
    }
}

/// Cache key: lowercased name, type, class.
type CacheKey = (Name, u16, u16);

struct CacheEntry {
    seq: u64,
    msg: Message,
    stored: Instant,
    ttl: u32,
}

/// Bounded answer cache, evicting the oldest insertion first.
struct Cache {
    cap: usize,
    map: HashMap<CacheKey, CacheEntry>,
    order: BTreeMap<u64, CacheKey>,
    next_seq: u64,
}

impl Cache {
    fn new(cap: usize) -> Self {
        Self {
            cap,
            map: HashMap::new(),
            order: BTreeMap::new(),
            next_seq: 0,
        }
    }

    /// The cached answer for `key` with TTLs decremented by its age.
    fn get(&mut self, key: &CacheKey, now: Instant) -> Option<Message> {
        let entry = self.map.get(key)?;
        let age = now.saturating_duration_since(entry.stored).as_secs();
        if age >= u64::from(entry.ttl) {
            let seq = entry.seq;
            self.map.remove(key);
            self.order.remove(&seq);
            return None;
        }
        let age = u32::try_from(age).unwrap_or(u32::MAX);
        let mut msg = entry.msg.clone();
        for r in msg
            .answers
            .iter_mut()
            .chain(msg.authorities.iter_mut())
            .chain(msg.additionals.iter_mut())
        {
            r.decrement_ttl(age);
        }
        Some(msg)
    }

    fn insert(&mut self, key: CacheKey, msg: Message, ttl: u32, now: Instant) {
        if self.cap == 0 || ttl == 0 {
            return;
        }
        if let Some(old) = self.map.remove(&key) {
            self.order.remove(&old.seq);
        }
        while self.map.len() >= self.cap {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.map.remove(&oldest);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.order.insert(seq, key.clone());
        self.map.insert(
            key,
            CacheEntry {
                seq,
                msg,
                stored: now,
                ttl,
            },
        );
    }
}

/// How long an upstream answer may be cached, if at all.
fn cache_ttl(resp: &Message) -> Option<u32> {
    if resp.metadata.truncation {
        return None;
    }
    let rcode = resp.metadata.response_code;
    if rcode != ResponseCode::NoError && rcode != ResponseCode::NXDomain {
        return None;
    }
    let ttl = if rcode == ResponseCode::NXDomain || resp.answers.is_empty() {
        resp.authorities
            .iter()
            .filter_map(|r| match &r.data {
                RData::SOA(soa) => Some(soa.minimum.min(r.ttl)),
                _ => None,
            })
            .min()?
            .min(MAX_NEGATIVE_TTL)
    } else {
        resp.answers
            .iter()
            .map(|r| r.ttl)
            .min()?
            .min(MAX_POSITIVE_TTL)
    };
    (ttl > 0).then_some(ttl)
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

type ReplyFn = Box<dyn FnOnce(Vec<u8>) + Send>;

/// Calls the reply callback exactly once: with the answer, or with SERVFAIL when dropped
/// unanswered.
struct Responder {
    reply: Option<ReplyFn>,
    servfail: Vec<u8>,
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
struct Job {
    query: Message,
    key: CacheKey,
    /// UDP size limit; None for TCP.
    limit: Option<usize>,
    responder: Responder,
}

/// State shared between [`DnsServer`] and its workers.
struct Shared {
    records: Arc<Records>,
    upstreams: UpstreamSource,
    timeout: Duration,
    cache: Mutex<Cache>,
    stats: Counters,
    stop: AtomicBool,
}

impl Shared {
    /// Encodes `msg`, truncating it to `limit`; counts NXDOMAIN and truncation. None only when
    /// even a header-only reply cannot be encoded.
    fn encode(&self, msg: &Message, limit: Option<usize>) -> Option<Vec<u8>> {
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

    fn servfail_bytes(&self, query: &Message) -> Vec<u8> {
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
fn client_reply(mut resp: Message, client: &Message) -> Message {
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

fn worker_loop(shared: Arc<Shared>, rx: Receiver<Job>) {
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
    use super::*;
    use hickory_proto::op::Query;
    use std::net::TcpListener;
    use std::sync::atomic::AtomicUsize;

    const WAIT: Duration = Duration::from_secs(5);

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn query_bytes(id: u16, qname: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
        let mut m = Message::new(id, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.queries.push(Query::query(name(qname), qtype));
        if let Some(size) = edns {
            let mut e = Edns::new();
            e.set_max_payload(size);
            m.edns = Some(e);
        }
        m.to_vec().unwrap()
    }

    /// Calls `handle` and returns the reply, if any, within `WAIT`.
    fn ask_raw(srv: &DnsServer, bytes: &[u8], transport: Transport) -> Option<Message> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        srv.handle(bytes, transport, Box::new(move |b| drop(tx.send(b))));
        rx.recv_timeout(WAIT)
            .ok()
            .map(|b| Message::from_vec(&b).expect("reply decodes"))
    }

    fn ask(srv: &DnsServer, qname: &str, qtype: RecordType) -> Message {
        ask_raw(
            srv,
            &query_bytes(0x1234, qname, qtype, None),
            Transport::Udp { max_size: 512 },
        )
        .expect("a reply")
    }

    fn local_server() -> DnsServer {
        let records = Arc::new(Records::new("usernet"));
        records.add("web", "10.88.0.5".parse().unwrap()).unwrap();
        records
            .add("web.usernet", "fd00::5".parse().unwrap())
            .unwrap();
        records
            .add("db.app.usernet", "10.88.0.6".parse().unwrap())
            .unwrap();
        let mut cfg = DnsConfig::new("usernet", Upstreams::Explicit(vec![]));
        cfg.timeout = Duration::from_millis(200);
        cfg.workers = 1;
        DnsServer::new(cfg, records)
    }

    fn addrs(m: &Message) -> Vec<IpAddr> {
        m.answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            })
            .collect()
    }

    fn has_soa(m: &Message) -> bool {
        m.authorities
            .iter()
            .any(|r| r.record_type() == RecordType::SOA)
    }

    #[test]
    fn local_a_aaaa() {
        let srv = local_server();
        let m = ask(&srv, "web.usernet.", RecordType::A);
        assert_eq!(m.metadata.id, 0x1234);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.metadata.authoritative);
        assert_eq!(addrs(&m), vec!["10.88.0.5".parse::<IpAddr>().unwrap()]);
        assert_eq!(m.answers[0].ttl, LOCAL_TTL);
        let m = ask(&srv, "web.usernet.", RecordType::AAAA);
        assert_eq!(addrs(&m), vec!["fd00::5".parse::<IpAddr>().unwrap()]);
        let s = srv.stats();
        assert_eq!((s.queries, s.local_answers, s.forwarded), (2, 2, 0));
    }

    #[test]
    fn local_ptr() {
        let srv = local_server();
        let m = ask(&srv, "5.0.88.10.in-addr.arpa.", RecordType::PTR);
        assert!(m.metadata.authoritative);
        let targets: Vec<String> = m
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::PTR(p) => Some(p.0.to_ascii()),
                _ => None,
            })
            .collect();
        assert_eq!(targets, vec!["web.usernet.".to_string()]);
        let v6 = Name::from("fd00::5".parse::<IpAddr>().unwrap()).to_ascii();
        let m = ask(&srv, &v6.to_uppercase(), RecordType::PTR);
        assert_eq!(m.answers.len(), 1);
        // The name exists without that type.
        let m = ask(&srv, "5.0.88.10.in-addr.arpa.", RecordType::TXT);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty() && has_soa(&m));
    }

    #[test]
    fn local_nxdomain_nodata_apex() {
        let srv = local_server();
        let m = ask(&srv, "nope.usernet.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert!(m.metadata.authoritative && has_soa(&m) && m.answers.is_empty());
        // Below an existing name: NXDOMAIN too.
        let m = ask(&srv, "x.web.usernet.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        // Invalid label inside the domain.
        let mut b = header(0x0100, 1, 0);
        question(&mut b, &[b"a*b", b"usernet"]);
        let m = ask_raw(&srv, &b, Transport::Udp { max_size: 512 }).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        // NODATA: the name has A and AAAA but not MX.
        let m = ask(&srv, "web.usernet.", RecordType::MX);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty() && has_soa(&m));
        // db.app exists with an A record only.
        let m = ask(&srv, "db.app.usernet.", RecordType::AAAA);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty() && has_soa(&m));
        // Empty non-terminal.
        let m = ask(&srv, "app.usernet.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());
        // Apex: SOA answered, other types NODATA.
        let m = ask(&srv, "usernet.", RecordType::SOA);
        assert_eq!(m.answers.len(), 1);
        assert_eq!(m.answers[0].record_type(), RecordType::SOA);
        let m = ask(&srv, "usernet.", RecordType::NS);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty() && has_soa(&m));
        let m = ask(&srv, "usernet.", RecordType::AXFR);
        assert_eq!(m.metadata.response_code, ResponseCode::Refused);
        let s = srv.stats();
        assert_eq!(s.nxdomain, 3);
        assert_eq!(s.forwarded, 0);
    }

    #[test]
    fn case_insensitive() {
        let srv = local_server();
        let m = ask(&srv, "WeB.UserNET.", RecordType::A);
        assert_eq!(addrs(&m).len(), 1);
        // The question is echoed as sent.
        assert_eq!(m.queries[0].name.to_ascii(), "WeB.UserNET.");
        let r = Records::new("UserNet.");
        r.add("Web.USERNET.", "10.0.0.1".parse().unwrap()).unwrap();
        assert_eq!(r.lookup("web.usernet").len(), 1);
        assert_eq!(r.lookup("WEB").len(), 1);
        assert_eq!(r.list()[0].name, "web.usernet");
    }

    #[test]
    fn records_add_remove_list() {
        let r = Records::new("usernet");
        let a: IpAddr = "10.88.0.5".parse().unwrap();
        let b: IpAddr = "fd00::5".parse().unwrap();
        r.add("web", a).unwrap();
        r.add("web", a).unwrap(); // idempotent
        r.add("web", b).unwrap();
        r.add("api", a).unwrap();
        assert_eq!(r.lookup("web.usernet."), vec![a, b]);
        let list = r.list();
        assert_eq!(
            list.iter()
                .map(|e| (e.name.as_str(), e.addr))
                .collect::<Vec<_>>(),
            vec![("api.usernet", a), ("web.usernet", a), ("web.usernet", b)]
        );
        assert!(r.remove("web", Some(a)));
        assert!(!r.remove("web", Some(a)));
        assert_eq!(r.lookup("web"), vec![b]);
        assert!(r.remove("web.usernet", None));
        assert!(r.lookup("web").is_empty());
        assert!(!r.remove("web", None));
        // The PTR of `a` now only names `api`.
        let inner = r.inner.read();
        assert_eq!(
            inner.by_reverse.get("5.0.88.10.in-addr.arpa"),
            Some(&vec!["api.usernet".to_string()])
        );
        assert_eq!(inner.by_reverse.len(), 1);
        drop(inner);
        // Bad names are rejected with the input in the message.
        for bad in [
            "",
            "-x",
            "a b",
            "x.example.com",
            "usernet",
            &"a".repeat(64),
            "a..b",
        ] {
            let e = r.add(bad, a).unwrap_err();
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
        assert!(matches!(
            r.add("web.example", a),
            Err(DnsError::OutsideDomain { .. })
        ));
        assert!(matches!(
            Records::new("bad domain!").add("x", a),
            Err(DnsError::BadName { .. })
        ));
        // Names served are updated live.
        let records = Arc::new(Records::new("usernet"));
        let cfg = DnsConfig::new("usernet", Upstreams::Explicit(vec![]));
        let srv = DnsServer::new(cfg, records.clone());
        assert_eq!(
            ask(&srv, "late.usernet.", RecordType::A)
                .metadata
                .response_code,
            ResponseCode::NXDomain
        );
        records.add("late", a).unwrap();
        assert_eq!(addrs(&ask(&srv, "late.usernet.", RecordType::A)), vec![a]);
        records.remove("late", None);
        assert_eq!(
            ask(&srv, "late.usernet.", RecordType::A)
                .metadata
                .response_code,
            ResponseCode::NXDomain
        );
    }

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
    fn cache_unit() {
        let mut c = Cache::new(2);
        let now = Instant::now();
        let key = |s: &str| (name(s), 1u16, 1u16);
        let mut msg = Message::response(0, OpCode::Query);
        msg.answers.push(Record::from_rdata(
            name("a."),
            100,
            RData::A(A(Ipv4Addr::LOCALHOST)),
        ));
        c.insert(key("a."), msg.clone(), 100, now);
        c.insert(key("b."), msg.clone(), 100, now);
        c.insert(key("c."), msg.clone(), 100, now); // evicts a.
        assert!(c.get(&key("a."), now).is_none());
        let m = c.get(&key("b."), now + Duration::from_secs(30)).unwrap();
        assert_eq!(m.answers[0].ttl, 70);
        assert!(c.get(&key("c."), now + Duration::from_secs(100)).is_none());
        assert_eq!(c.map.len(), 1);
        assert_eq!(c.order.len(), 1);
        // TTL rules.
        assert_eq!(cache_ttl(&msg), Some(100));
        msg.answers[0].ttl = 99_999;
        assert_eq!(cache_ttl(&msg), Some(MAX_POSITIVE_TTL));
        msg.answers[0].ttl = 0;
        assert_eq!(cache_ttl(&msg), None);
        msg.answers.clear();
        assert_eq!(cache_ttl(&msg), None); // NODATA without SOA
        let mut q = Message::query();
        q.queries
            .push(Query::query(name("x.test.zone."), RecordType::A));
        let mut nx = zone_answer(&q);
        assert_eq!(cache_ttl(&nx), Some(60));
        nx.queries[0].name = name("nx.test.zone.");
        let nx = zone_answer(&nx);
        assert_eq!(cache_ttl(&nx), Some(30));
        let mut c0 = Cache::new(0);
        c0.insert(key("a."), msg, 100, now);
        assert!(c0.map.is_empty());
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

    #[test]
    fn resolv_conf_parse() {
        let text = "# comment\nsearch example.com\nnameserver 192.0.2.53\nnameserver  2001:db8::1 # v6\n\
                    nameserver fe80::1%7\nnameserver bogus\n;nameserver 192.0.2.99\noptions ndots:2\nnameserver 192.0.2.54";
        let v = parse_resolv_conf(text);
        assert_eq!(
            v,
            vec![
                "192.0.2.53:53".parse::<SocketAddr>().unwrap(),
                "[2001:db8::1]:53".parse().unwrap(),
                "[fe80::1%7]:53".parse().unwrap(),
                "192.0.2.54:53".parse().unwrap(),
            ]
        );
        assert!(parse_resolv_conf("").is_empty());
    }

    #[test]
    fn resolv_conf_reread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resolv.conf");
        std::fs::write(&path, "nameserver 192.0.2.1\n").unwrap();
        // Interval zero: every call checks the file.
        let mut w = ResolvConfWatcher::new(path.clone(), Duration::ZERO);
        assert_eq!(w.current(), vec!["192.0.2.1:53".parse().unwrap()]);
        std::fs::write(&path, "nameserver 192.0.2.2\nnameserver 192.0.2.3\n").unwrap();
        assert_eq!(
            w.current(),
            vec![
                "192.0.2.2:53".parse().unwrap(),
                "192.0.2.3:53".parse::<SocketAddr>().unwrap()
            ]
        );
        // An empty file empties the list (a successful read).
        std::fs::write(&path, "search example.com\n").unwrap();
        assert!(w.current().is_empty());
        // The real interval: a change is seen only after it.
        std::fs::write(&path, "nameserver 192.0.2.1\n").unwrap();
        let mut w = ResolvConfWatcher::new(path.clone(), Duration::from_millis(300));
        assert_eq!(w.current().len(), 1);
        std::fs::write(&path, "nameserver 192.0.2.7\nnameserver 192.0.2.8\n").unwrap();
        assert_eq!(w.current().len(), 1);
        thread::sleep(Duration::from_millis(350));
        assert_eq!(w.current().len(), 2);
    }

    /// A resolv.conf that vanishes or cannot be read (as under the sandbox, where `open` fails
    /// with EPERM) keeps the last upstreams; the next readable version is taken.
    #[test]
    fn resolv_conf_unreadable_keeps_upstreams() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resolv.conf");
        std::fs::write(&path, "nameserver 192.0.2.1\n").unwrap();
        let mut w = ResolvConfWatcher::new(path.clone(), Duration::ZERO);
        let one: Vec<SocketAddr> = vec!["192.0.2.1:53".parse().unwrap()];
        assert_eq!(w.current(), one);
        // Removed (e.g. between unlink and rename of a resolver manager).
        std::fs::remove_file(&path).unwrap();
        assert_eq!(w.current(), one);
        assert_eq!(w.current(), one);
        // Back, changed: read.
        std::fs::write(&path, "nameserver 192.0.2.2\n").unwrap();
        let two: Vec<SocketAddr> = vec!["192.0.2.2:53".parse().unwrap()];
        assert_eq!(w.current(), two);
        // Changed and unreadable. Root reads mode 000 files anyway: a directory in the file's
        // place stands for "open succeeds, read fails" there.
        std::fs::write(&path, "nameserver 192.0.2.3\nnameserver 192.0.2.4\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o000)).unwrap();
        if std::fs::read(&path).is_err() {
            assert_eq!(w.current(), two);
        }
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        assert_eq!(w.current(), two);
        std::fs::remove_dir(&path).unwrap();
        std::fs::write(&path, "nameserver 192.0.2.5\n").unwrap();
        assert_eq!(
            w.current(),
            vec!["192.0.2.5:53".parse::<SocketAddr>().unwrap()]
        );
    }

    #[test]
    fn resolv_conf_without_nameservers_servfail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resolv.conf");
        std::fs::write(&path, "search example.com\n").unwrap();
        let mut cfg = DnsConfig::new("usernet", Upstreams::ResolvConf(path));
        cfg.timeout = Duration::from_millis(200);
        let records = Arc::new(Records::new("usernet"));
        records.add("web", "10.88.0.5".parse().unwrap()).unwrap();
        let srv = DnsServer::new(cfg, records);
        let t0 = Instant::now();
        let m = ask(&srv, "www.test.zone.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
        assert!(t0.elapsed() < Duration::from_millis(500));
        // Local names still work.
        assert_eq!(addrs(&ask(&srv, "web.usernet.", RecordType::A)).len(), 1);
    }

    // ---- malformed input -----------------------------------------------------------------

    /// A 12-byte header: id 0xbeef, flags, counts.
    fn header(flags: u16, qd: u16, an: u16) -> Vec<u8> {
        let mut h = vec![0xbe, 0xef];
        h.extend_from_slice(&flags.to_be_bytes());
        h.extend_from_slice(&qd.to_be_bytes());
        h.extend_from_slice(&an.to_be_bytes());
        h.extend_from_slice(&[0, 0, 0, 0]);
        h
    }

    fn rcode_of(srv: &DnsServer, bytes: &[u8]) -> Option<ResponseCode> {
        ask_raw(srv, bytes, Transport::Udp { max_size: 512 }).map(|m| {
            assert_eq!(m.metadata.id, 0xbeef);
            assert_eq!(m.metadata.message_type, MessageType::Response);
            m.metadata.response_code
        })
    }

    fn question(bytes: &mut Vec<u8>, labels: &[&[u8]]) {
        for l in labels {
            bytes.push(l.len() as u8);
            bytes.extend_from_slice(l);
        }
        bytes.extend_from_slice(&[0, 0, 1, 0, 1]);
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
