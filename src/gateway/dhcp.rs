//! DHCPv4 server of a network's virtual gateway (RFC 2131, options from RFC 2132/3397).
//!
//! # What it does
//!
//! [`DhcpServer`] is pure protocol logic: it takes the UDP payload a client sent to port 67
//! ([`DhcpServer::handle`]) and returns the payload to send back plus where to send it
//! ([`ReplyTo`]); the gateway's driver does the UDP/IP/Ethernet wrapping. It does no I/O and reads
//! no clock: time comes in as monotonic milliseconds (`now_ms`), so tests drive a stopped clock.
//! Wire encoding and decoding is `dhcproto`'s; this module only adds the checks that crate does
//! not make (magic cookie, hardware address length, option lengths, message size).
//!
//! One server serves one subnet with one dynamic pool (`range_start..=range_end`) plus static
//! leases keyed by MAC address. Clients are identified by their hardware address (`chaddr`).
//!
//! ```text
//!  DISCOVER ─► choose address ─► Offered (held 30 s) ─► OFFER
//!  REQUEST  ─► check address  ─► Bound (lease_secs)  ─► ACK  (+ NameEvent::Register)
//!                          └──── refused ──────────────► NAK (broadcast)
//!  RELEASE / expiry ─► binding dropped (+ NameEvent::Unregister); the MAC→IP memory stays
//!  DECLINE ─► binding dropped, address unusable for 10 min
//!  INFORM  ─► ACK with configuration options, no address, no lease time
//! ```
//!
//! Address choice for a DISCOVER, first that applies: the MAC's static lease; its current
//! binding; the address it last held (remembered across expiry and release) if still free; the
//! requested address (option 50) if free and in the pool; the lowest free pool address. A REQUEST
//! is ACKed when its address (option 50, or `ciaddr` when renewing) is bound or offered to this
//! MAC, is this MAC's static address, or is free and inside the pool; otherwise it is NAKed. A
//! REQUEST naming another server's identifier withdraws our offer and gets no reply.
//!
//! # Invariants
//!
//! - A MAC has at most one binding (offered or bound) and an address at most one binding:
//!   `by_mac` and `bindings` mirror each other.
//! - Dynamic addresses come only from the pool and are never the network, broadcast or server
//!   address, a static lease's address, or a declined address (until the decline hold ends).
//! - Every `Register` is eventually matched by an `Unregister` with the same name and address
//!   (on release, decline, expiry, rebinding elsewhere, or a hostname change), and every name
//!   event is delivered exactly once: in the [`DhcpOutput`] of the message that caused it, or,
//!   when that message gets no reply (RELEASE, DECLINE) or the event comes from lazy expiry, in
//!   the next [`DhcpOutput`], [`DhcpServer::expire`] or [`DhcpServer::drain_names`], whichever
//!   comes first.
//! - Input never panics the server: lengths are checked before `dhcproto` reads them (its
//!   `Message::chaddr` slices `[..hlen]` and panics for `hlen > 16`; its option decoder
//!   `debug_assert!`s on some option lengths and silently stops at the first undecodable
//!   option), and replies are built only from validated values (a 6-byte MAC, addresses,
//!   configured options).
//!
//! # Limits
//!
//! - No relay agents: `giaddr` is echoed but replies go to the local link (a usernet network is
//!   one L2 segment). The client identifier (option 61) is ignored; the MAC is the identity.
//! - No persistence: bindings and the MAC→IP memory live as long as the process.
//! - Option overload (option 52, options in `sname`/`file`) is not supported.
//! - dhcproto stops decoding options at the first one it cannot decode (e.g. a hostname that is
//!   not UTF-8). If that hides the message type, requested address, server identifier or
//!   maximum message size the message is refused as malformed; otherwise the lost options
//!   (typically the hostname) are simply absent.
//! - A static lease always wins: its MAC gets its address even while that address is declined.
//! - Lease times requested by the client are ignored; every lease is `lease_secs`.
//! - Expired bindings are dropped lazily at the start of each [`DhcpServer::handle`] and by
//!   [`DhcpServer::expire`]; allocation scans the pool from `range_start` past addresses in use.
//! - Messages longer than [`MAX_MESSAGE_LEN`] are rejected. Replies fit the client's maximum
//!   message size (option 57, at least 576 bytes of IP datagram); if they would not, the search
//!   list, then the domain name, then the MTU option are left out.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, HType, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder, Name};
use ipnet::Ipv4Net;
use serde::Serialize;

use crate::wire::Mac;

/// Default lease time in seconds.
pub const DEFAULT_LEASE_SECS: u32 = 3600;
/// Shortest lease time [`DhcpServer::new`] accepts, in seconds.
pub const MIN_LEASE_SECS: u32 = 10;
/// How long an offered address is held for the client that was offered it, in milliseconds.
pub const OFFER_HOLD_MS: u64 = 30_000;
/// How long a declined address is kept out of use, in milliseconds.
pub const DECLINE_HOLD_MS: u64 = 600_000;
/// Longest DHCP message accepted, in bytes; real clients send 300–600.
pub const MAX_MESSAGE_LEN: usize = 4096;
/// Most DNS servers a configuration may list (so that the mandatory options always fit).
pub const MAX_DNS_SERVERS: usize = 16;

/// Fixed BOOTP header before the magic cookie.
const HEADER_LEN: usize = 236;
/// Header plus magic cookie: where the options start.
const OPTIONS_OFFSET: usize = 240;
/// The DHCP magic cookie (RFC 2131 §3).
const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
/// BOOTP minimum message length; replies are zero-padded to it (RFC 1542 §3.4 relays need it).
const MIN_REPLY_LEN: usize = 300;
/// Every client accepts an IP datagram of 576 bytes (RFC 2131 §2).
const MIN_MAX_DATAGRAM: u16 = 576;
/// IPv4 plus UDP header, subtracted from option 57 to get the DHCP message budget.
const IP_UDP_HEADER_LEN: usize = 28;

/// A fixed address for one MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StaticLease {
    /// The client's hardware address.
    pub mac: Mac,
    /// The address it always gets; inside the subnet, may be inside or outside the pool.
    pub ip: Ipv4Addr,
    /// DNS name registered for it; takes precedence over the hostname the client sends.
    pub hostname: Option<String>,
}

impl StaticLease {
    /// `mac` always gets `ip`; `hostname`, if given, is registered in DNS for it.
    pub fn new(mac: Mac, ip: Ipv4Addr, hostname: Option<String>) -> StaticLease {
        StaticLease { mac, ip, hostname }
    }
}

/// Configuration of one [`DhcpServer`]; validated by [`DhcpServer::new`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DhcpConfig {
    /// Gateway address, also the server identifier (option 54).
    pub server: Ipv4Addr,
    /// The served subnet; gives the subnet mask (option 1) and broadcast address (option 28).
    pub subnet: Ipv4Net,
    /// First address of the dynamic pool.
    pub range_start: Ipv4Addr,
    /// Last address of the dynamic pool (inclusive).
    pub range_end: Ipv4Addr,
    /// Lease time in seconds (option 51); T1 is half of it, T2 seven eighths.
    pub lease_secs: u32,
    /// Default router (option 3).
    pub router: Option<Ipv4Addr>,
    /// DNS servers (option 6).
    pub dns: Vec<Ipv4Addr>,
    /// Interface MTU (option 26).
    pub mtu: Option<u16>,
    /// Domain name (option 15).
    pub domain: Option<String>,
    /// Domain search list (option 119, RFC 3397).
    pub search: Vec<String>,
    /// Fixed addresses by MAC.
    pub static_leases: Vec<StaticLease>,
}

impl DhcpConfig {
    /// Defaults for `subnet` served from `server`: the pool is `.2 ..= broadcast-1` without the
    /// server (when the server splits that span, the larger side), leases of
    /// [`DEFAULT_LEASE_SECS`], the server as router and DNS server, no MTU, domain or search list.
    pub fn for_subnet(subnet: Ipv4Net, server: Ipv4Addr) -> Self {
        let (range_start, range_end) = default_pool(subnet.trunc(), server);
        DhcpConfig {
            server,
            subnet,
            range_start,
            range_end,
            lease_secs: DEFAULT_LEASE_SECS,
            router: Some(server),
            dns: vec![server],
            mtu: None,
            domain: None,
            search: Vec::new(),
            static_leases: Vec::new(),
        }
    }
}

/// The largest run of `.2 ..= broadcast-1` not containing `server` (falling back to `.1` for
/// subnets too small to have one). An empty result (`start > end`) is rejected by `new`.
fn default_pool(net: Ipv4Net, server: Ipv4Addr) -> (Ipv4Addr, Ipv4Addr) {
    let first = u32::from(net.network()).saturating_add(1);
    let last = u32::from(net.broadcast()).saturating_sub(1);
    let s = u32::from(server);
    let mut runs: Vec<(u32, u32)> = Vec::new();
    for lo in [first.saturating_add(1), first] {
        if net.contains(&server) && (lo..=last).contains(&s) {
            runs.push((lo, s.saturating_sub(1)));
            runs.push((s.saturating_add(1), last));
        } else {
            runs.push((lo, last));
        }
        if runs.iter().any(|&(a, b)| a <= b) {
            break;
        }
    }
    let best = runs
        .into_iter()
        .filter(|&(a, b)| a <= b)
        .max_by_key(|&(a, b)| (b - a, a))
        .unwrap_or((last, first));
    (Ipv4Addr::from(best.0), Ipv4Addr::from(best.1))
}

/// Why a message was rejected or a configuration refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DhcpError {
    /// The input is not a usable DHCP request; the text says what was wrong.
    #[error("malformed DHCP message: {0}")]
    Malformed(String),
    /// A configuration field is invalid.
    #[error("invalid DHCP configuration: {field}: {reason}")]
    Config {
        /// The field, e.g. `range_start` or `static_leases[2].ip`.
        field: String,
        /// What is wrong with its value.
        reason: String,
    },
}

fn config_err(field: impl Into<String>, reason: impl Into<String>) -> DhcpError {
    DhcpError::Config {
        field: field.into(),
        reason: reason.into(),
    }
}

fn malformed(reason: impl Into<String>) -> DhcpError {
    DhcpError::Malformed(reason.into())
}

/// Where the gateway must send a reply (RFC 2131 §4.1, without relay agents).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ReplyTo {
    /// To 255.255.255.255 and ff:ff:ff:ff:ff:ff, UDP port 68.
    Broadcast,
    /// To `ip` at `mac`, UDP port 68, without ARP (the client may not answer ARP yet).
    Unicast {
        /// Destination IP address.
        ip: Ipv4Addr,
        /// Destination MAC address (the client's `chaddr`).
        mac: Mac,
    },
}

/// A change to the gateway DNS names derived from leases.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum NameEvent {
    /// `name` now resolves to `ip`.
    Register {
        /// A DNS label (see [`sanitize_hostname`]).
        name: String,
        /// Its address.
        ip: Ipv4Addr,
    },
    /// `name` no longer resolves to `ip`.
    Unregister {
        /// A DNS label previously registered.
        name: String,
        /// The address it was registered with.
        ip: Ipv4Addr,
    },
}

/// A reply to send and the name changes the message caused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpOutput {
    /// The DHCP message: UDP payload from port 67 to port 68.
    pub payload: Vec<u8>,
    /// Where to send it.
    pub to: ReplyTo,
    /// Name changes to apply, in order (an `Unregister` precedes the `Register` replacing it).
    pub names: Vec<NameEvent>,
}

/// State of a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseState {
    /// Offered in an OFFER and held for [`OFFER_HOLD_MS`], not yet requested.
    Offered,
    /// Acknowledged: the client uses the address.
    Bound,
    /// Held for a port whose address usernet configured itself (`attach --ip auto`, CNI): it
    /// never expires and is given back with [`DhcpServer::unreserve`]. A DHCP client on that
    /// MAC gets the same address.
    Reserved,
}

/// One binding as shown by `usernet ctl leases`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Lease {
    /// Client hardware address.
    pub mac: Mac,
    /// Leased address.
    pub ip: Ipv4Addr,
    /// Registered DNS name, if any.
    pub hostname: Option<String>,
    /// Seconds until the binding expires (rounded up; 0 for a reserved one, which never does).
    pub expires_in_secs: u64,
    /// Offered or bound.
    pub state: LeaseState,
    /// The address comes from a static lease.
    pub is_static: bool,
}

/// Message counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct DhcpStats {
    /// DISCOVERs received.
    pub discover: u64,
    /// OFFERs sent.
    pub offer: u64,
    /// REQUESTs received.
    pub request: u64,
    /// ACKs sent (to REQUESTs and INFORMs).
    pub ack: u64,
    /// NAKs sent.
    pub nak: u64,
    /// RELEASEs received.
    pub release: u64,
    /// DECLINEs received.
    pub decline: u64,
    /// INFORMs received.
    pub inform: u64,
    /// Messages rejected as malformed.
    pub malformed: u64,
    /// DISCOVERs left unanswered because no address was free.
    pub pool_exhausted: u64,
}

/// Turns a client-supplied hostname (option 12) into a DNS label, or `None` if it cannot be.
///
/// Trailing NULs are dropped, only the first dot-separated label is kept, ASCII letters are
/// lowercased and `_` becomes `-`. The result must be 1..=63 characters of `[a-z0-9-]` that
/// neither starts nor ends with `-`; anything else (other characters, empty, too long) is `None`.
pub fn sanitize_hostname(raw: &str) -> Option<String> {
    let raw = raw.trim_end_matches('\0');
    let label = raw.split('.').next().unwrap_or_default();
    let mut out = String::with_capacity(label.len());
    for c in label.chars() {
        match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '-') => out.push(c),
            '_' => out.push('-'),
            _ => return None,
        }
    }
    if out.is_empty() || out.len() > 63 || out.starts_with('-') || out.ends_with('-') {
        return None;
    }
    Some(out)
}

/// A syntactically valid domain name: labels of 1..=63 `[A-Za-z0-9-]` not starting or ending
/// with `-`, at most 253 characters, an optional trailing dot.
fn valid_domain(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// One binding of an address to a MAC.
#[derive(Debug, Clone)]
struct Binding {
    mac: Mac,
    state: LeaseState,
    expires_ms: u64,
    /// The registered DNS name (only ever set while bound).
    name: Option<String>,
}

/// Why an address cannot be given to a MAC; the text goes into the NAK's message option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    OutsideSubnet,
    Reserved,
    StaticElsewhere,
    HeldByOther,
    Declined,
    OutsidePool,
}

impl Refusal {
    fn text(self) -> &'static str {
        match self {
            Refusal::OutsideSubnet => "address not in this subnet",
            Refusal::Reserved => "address reserved",
            Refusal::StaticElsewhere => "client has a different fixed address",
            Refusal::HeldByOther => "address in use by another client",
            Refusal::Declined => "address recently declined",
            Refusal::OutsidePool => "address not available",
        }
    }
}

/// A decoded, checked client request.
struct Request {
    msg: Message,
    kind: MessageType,
    mac: Mac,
    requested: Option<Ipv4Addr>,
    server_id: Option<Ipv4Addr>,
    hostname: Option<String>,
    /// Largest DHCP message (UDP payload) the client accepts.
    max_len: usize,
}

/// A built reply, before encoding.
struct Reply {
    msg: Message,
    to: ReplyTo,
    max_len: usize,
}

/// The DHCPv4 server of one network. See the module documentation.
#[derive(Debug)]
pub struct DhcpServer {
    cfg: DhcpConfig,
    search: Vec<Name>,
    statics: HashMap<Mac, StaticLease>,
    static_ips: HashMap<Ipv4Addr, Mac>,
    bindings: BTreeMap<Ipv4Addr, Binding>,
    by_mac: HashMap<Mac, Ipv4Addr>,
    /// Declined address → end of its hold.
    declined: BTreeMap<Ipv4Addr, u64>,
    /// Last address each MAC was bound to, and its inverse (bounded by the subnet size).
    prev_by_mac: HashMap<Mac, Ipv4Addr>,
    prev_by_ip: HashMap<Ipv4Addr, Mac>,
    /// Name events not yet handed out.
    pending: Vec<NameEvent>,
    /// At or before the earliest expiry among bindings and declines (`u64::MAX` if none):
    /// until then `purge` has nothing to do.
    next_deadline: u64,
    stats: DhcpStats,
    /// Addresses in use by other clients outside DHCP's knowledge (port security: owned by
    /// another port); never offered or acknowledged. Set before each message.
    foreign: std::collections::HashSet<Ipv4Addr>,
}

impl DhcpServer {
    /// Validates `cfg` and makes a server with no bindings.
    ///
    /// Checks: the subnet has room for hosts (prefix ≤ 30); the server is a host address of
    /// the subnet; the pool is non-empty, inside the subnet, and excludes the network,
    /// broadcast and server addresses; the router is a host address of the subnet; DNS servers
    /// are unicast and at most [`MAX_DNS_SERVERS`]; the MTU is at least 68; the lease is at
    /// least [`MIN_LEASE_SECS`] and finite; domain and search names are valid; static leases
    /// have unicast MACs, host addresses of the subnet other than the server, unique MACs and
    /// addresses, and hostnames that are DNS labels (normalised by [`sanitize_hostname`]).
    /// The error names the offending field.
    pub fn new(mut cfg: DhcpConfig) -> Result<Self, DhcpError> {
        let net = cfg.subnet.trunc();
        cfg.subnet = net;
        if net.prefix_len() > 30 {
            return Err(config_err(
                "subnet",
                format!("{net} has no room for a server and clients (prefix must be ≤ 30)"),
            ));
        }
        let is_host =
            |ip: Ipv4Addr| net.contains(&ip) && ip != net.network() && ip != net.broadcast();
        if !is_host(cfg.server) {
            return Err(config_err(
                "server",
                format!("{} is not a host address of {net}", cfg.server),
            ));
        }
        for (field, ip) in [
            ("range_start", cfg.range_start),
            ("range_end", cfg.range_end),
        ] {
            if !is_host(ip) {
                return Err(config_err(
                    field,
                    format!("{ip} is not a host address of {net} (network and broadcast excluded)"),
                ));
            }
        }
        if cfg.range_start > cfg.range_end {
            return Err(config_err(
                "range_end",
                format!("{} is below range_start {}", cfg.range_end, cfg.range_start),
            ));
        }
        if (cfg.range_start..=cfg.range_end).contains(&cfg.server) {
            return Err(config_err(
                "server",
                format!(
                    "{} lies inside the pool {}-{}",
                    cfg.server, cfg.range_start, cfg.range_end
                ),
            ));
        }
        if cfg.lease_secs < MIN_LEASE_SECS || cfg.lease_secs == u32::MAX {
            return Err(config_err(
                "lease_secs",
                format!(
                    "{} is out of range ({MIN_LEASE_SECS}..{})",
                    cfg.lease_secs,
                    u32::MAX
                ),
            ));
        }
        if let Some(r) = cfg.router
            && !is_host(r)
        {
            return Err(config_err(
                "router",
                format!("{r} is not a host address of {net}"),
            ));
        }
        if cfg.dns.len() > MAX_DNS_SERVERS {
            return Err(config_err(
                "dns",
                format!(
                    "{} servers listed, at most {MAX_DNS_SERVERS}",
                    cfg.dns.len()
                ),
            ));
        }
        for (i, ip) in cfg.dns.iter().enumerate() {
            if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() {
                return Err(config_err(
                    format!("dns[{i}]"),
                    format!("{ip} is not a unicast address"),
                ));
            }
        }
        if let Some(mtu) = cfg.mtu
            && mtu < 68
        {
            return Err(config_err(
                "mtu",
                format!("{mtu} is below the IPv4 minimum of 68"),
            ));
        }
        if let Some(d) = &cfg.domain
            && !valid_domain(d)
        {
            return Err(config_err(
                "domain",
                format!("{d:?} is not a valid domain name"),
            ));
        }
        let mut search = Vec::with_capacity(cfg.search.len());
        for (i, s) in cfg.search.iter().enumerate() {
            let name = if valid_domain(s) {
                Name::from_ascii(s).ok()
            } else {
                None
            };
            match name {
                Some(n) => search.push(n),
                None => {
                    return Err(config_err(
                        format!("search[{i}]"),
                        format!("{s:?} is not a valid domain name"),
                    ));
                }
            }
        }
        let mut statics = HashMap::new();
        let mut static_ips = HashMap::new();
        for (i, s) in cfg.static_leases.iter_mut().enumerate() {
            if !s.mac.is_valid_source() {
                return Err(config_err(
                    format!("static_leases[{i}].mac"),
                    format!("{} is not a unicast MAC address", s.mac),
                ));
            }
            if !is_host(s.ip) || s.ip == cfg.server {
                return Err(config_err(
                    format!("static_leases[{i}].ip"),
                    format!(
                        "{} is not a host address of {net} other than the server {}",
                        s.ip, cfg.server
                    ),
                ));
            }
            if let Some(h) = &s.hostname {
                match sanitize_hostname(h) {
                    Some(clean) => s.hostname = Some(clean),
                    None => {
                        return Err(config_err(
                            format!("static_leases[{i}].hostname"),
                            format!("{h:?} is not a DNS label ([a-z0-9-], 1-63 characters)"),
                        ));
                    }
                }
            }
            if statics.insert(s.mac, s.clone()).is_some() {
                return Err(config_err(
                    format!("static_leases[{i}].mac"),
                    format!("{} has more than one static lease", s.mac),
                ));
            }
            if static_ips.insert(s.ip, s.mac).is_some() {
                return Err(config_err(
                    format!("static_leases[{i}].ip"),
                    format!("{} is given to more than one MAC", s.ip),
                ));
            }
        }
        Ok(DhcpServer {
            cfg,
            search,
            statics,
            static_ips,
            bindings: BTreeMap::new(),
            by_mac: HashMap::new(),
            declined: BTreeMap::new(),
            prev_by_mac: HashMap::new(),
            prev_by_ip: HashMap::new(),
            pending: Vec::new(),
            next_deadline: u64::MAX,
            stats: DhcpStats::default(),
            foreign: std::collections::HashSet::new(),
        })
    }

    /// Sets the addresses that other clients use (owned by other ports): the next messages
    /// handled neither offer nor acknowledge them.
    pub fn set_foreign(&mut self, foreign: std::collections::HashSet<Ipv4Addr>) {
        self.foreign = foreign;
    }

    /// The validated configuration (subnet normalised, static hostnames sanitised).
    pub fn config(&self) -> &DhcpConfig {
        &self.cfg
    }

    /// Handles one DHCP message (the UDP payload a client sent to port 67).
    ///
    /// `Ok(None)` means nothing to send: a RELEASE or DECLINE, a REQUEST for another server, a
    /// BOOTREPLY, a message type a server does not answer, or a DISCOVER when the pool is
    /// exhausted. `Err(Malformed)` (counted in [`DhcpStats::malformed`]) for input that is not a
    /// well-formed DHCP request: too short or too long, wrong op code, bad magic cookie,
    /// `hlen != 6`, a non-unicast `chaddr`, an option running past the end, an undecodable
    /// essential option, no message type.
    pub fn handle(&mut self, payload: &[u8], now_ms: u64) -> Result<Option<DhcpOutput>, DhcpError> {
        self.purge(now_ms);
        let req = match parse_request(payload) {
            Ok(Some(req)) => req,
            Ok(None) => return Ok(None),
            Err(e) => {
                self.stats.malformed += 1;
                tracing::debug!(error = %e, len = payload.len(), "dhcp: rejected message");
                return Err(e);
            }
        };
        let mut names = Vec::new();
        let reply = match req.kind {
            MessageType::Discover => self.discover(&req, now_ms),
            MessageType::Request => self.request(&req, now_ms, &mut names)?,
            MessageType::Release => {
                self.release(&req, &mut names);
                None
            }
            MessageType::Decline => {
                self.decline(&req, now_ms, &mut names);
                None
            }
            MessageType::Inform => Some(self.inform(&req)),
            other => {
                tracing::debug!(mac = %req.mac, kind = ?other, "dhcp: ignoring message type");
                None
            }
        };
        let Some(reply) = reply else {
            self.pending.append(&mut names);
            return Ok(None);
        };
        let Some(payload) = encode_reply(reply.msg, reply.max_len) else {
            self.pending.append(&mut names);
            return Ok(None);
        };
        let mut all = std::mem::take(&mut self.pending);
        all.append(&mut names);
        Ok(Some(DhcpOutput {
            payload,
            to: reply.to,
            names: all,
        }))
    }

    /// Current (unexpired) bindings, ordered by address.
    pub fn leases(&self, now_ms: u64) -> Vec<Lease> {
        self.bindings
            .iter()
            .filter(|(_, b)| b.expires_ms > now_ms)
            .map(|(&ip, b)| Lease {
                mac: b.mac,
                ip,
                hostname: b.name.clone(),
                expires_in_secs: if b.state == LeaseState::Reserved {
                    0
                } else {
                    (b.expires_ms - now_ms).div_ceil(1000)
                },
                state: b.state,
                is_static: self.static_ips.get(&ip) == Some(&b.mac),
            })
            .collect()
    }

    /// Drops expired offers, leases and declines; returns the name events not yet handed out,
    /// including an `Unregister` for every expired lease that had a name.
    pub fn expire(&mut self, now_ms: u64) -> Vec<NameEvent> {
        self.purge(now_ms);
        self.drain_names()
    }

    /// Name events queued by messages that got no reply (RELEASE, DECLINE) or by lazy expiry,
    /// for a caller that wants them before the next reply or [`DhcpServer::expire`].
    pub fn drain_names(&mut self) -> Vec<NameEvent> {
        std::mem::take(&mut self.pending)
    }

    /// Message counters.
    pub fn stats(&self) -> DhcpStats {
        self.stats
    }

    /// Earliest time (ms) at which a binding or decline expires, if any: when to call
    /// [`DhcpServer::expire`] next.
    pub fn next_expiry(&self) -> Option<u64> {
        self.bindings
            .values()
            .map(|b| b.expires_ms)
            .chain(self.declined.values().copied())
            .min()
    }

    // ---- message handlers ----

    fn discover(&mut self, req: &Request, now: u64) -> Option<Reply> {
        self.stats.discover += 1;
        let Some(ip) = self.choose_offer(req.mac, req.requested) else {
            self.stats.pool_exhausted += 1;
            tracing::warn!(mac = %req.mac, "dhcp: pool exhausted, DISCOVER unanswered");
            return None;
        };
        let mut names = Vec::new();
        match self.bindings.get_mut(&ip) {
            Some(b) if b.mac == req.mac => {
                if b.state == LeaseState::Offered {
                    b.expires_ms = now.saturating_add(OFFER_HOLD_MS);
                }
            }
            _ => {
                self.drop_mac(req.mac, &mut names);
                self.drop_ip(ip, &mut names);
                self.insert_binding(
                    ip,
                    Binding {
                        mac: req.mac,
                        state: LeaseState::Offered,
                        expires_ms: now.saturating_add(OFFER_HOLD_MS),
                        name: None,
                    },
                );
            }
        }
        self.pending.append(&mut names);
        self.stats.offer += 1;
        tracing::debug!(mac = %req.mac, %ip, "dhcp: OFFER");
        let mut msg = self.reply_header(req, MessageType::Offer, ip, Ipv4Addr::UNSPECIFIED);
        self.add_config_options(&mut msg, true);
        let to = reply_to(&req.msg, ip, req.mac);
        Some(Reply {
            msg,
            to,
            max_len: req.max_len,
        })
    }

    fn request(
        &mut self,
        req: &Request,
        now: u64,
        names: &mut Vec<NameEvent>,
    ) -> Result<Option<Reply>, DhcpError> {
        self.stats.request += 1;
        let ciaddr = req.msg.ciaddr();
        let ip = if let Some(sid) = req.server_id {
            if sid != self.cfg.server {
                // SELECTING another server: withdraw our offer, stay silent.
                if let Some(&ip) = self.by_mac.get(&req.mac)
                    && self
                        .bindings
                        .get(&ip)
                        .is_some_and(|b| b.state == LeaseState::Offered)
                {
                    self.drop_ip(ip, names);
                }
                tracing::debug!(mac = %req.mac, server = %sid, "dhcp: client chose another server");
                return Ok(None);
            }
            // SELECTING us.
            match req
                .requested
                .or((!ciaddr.is_unspecified()).then_some(ciaddr))
            {
                Some(ip) => ip,
                None => {
                    self.stats.malformed += 1;
                    return Err(malformed(format!(
                        "REQUEST from {} names this server but no address (option 50 or ciaddr)",
                        req.mac
                    )));
                }
            }
        } else if !ciaddr.is_unspecified() {
            // RENEWING (unicast) or REBINDING (broadcast).
            ciaddr
        } else if let Some(ip) = req.requested {
            // INIT-REBOOT.
            ip
        } else {
            self.stats.malformed += 1;
            return Err(malformed(format!(
                "REQUEST from {} has no server identifier, requested address or ciaddr",
                req.mac
            )));
        };
        match self.check(req.mac, ip) {
            Ok(()) => {
                self.commit(req, ip, now, names);
                self.stats.ack += 1;
                tracing::debug!(mac = %req.mac, %ip, "dhcp: ACK");
                let mut msg = self.reply_header(req, MessageType::Ack, ip, ciaddr);
                self.add_config_options(&mut msg, true);
                Ok(Some(Reply {
                    to: reply_to(&req.msg, ip, req.mac),
                    msg,
                    max_len: req.max_len,
                }))
            }
            Err(why) => {
                self.stats.nak += 1;
                tracing::debug!(mac = %req.mac, %ip, reason = why.text(), "dhcp: NAK");
                let mut msg = self.reply_header(
                    req,
                    MessageType::Nak,
                    Ipv4Addr::UNSPECIFIED,
                    Ipv4Addr::UNSPECIFIED,
                );
                msg.opts_mut()
                    .insert(DhcpOption::Message(why.text().to_string()));
                Ok(Some(Reply {
                    msg,
                    to: ReplyTo::Broadcast,
                    max_len: req.max_len,
                }))
            }
        }
    }

    fn release(&mut self, req: &Request, names: &mut Vec<NameEvent>) {
        self.stats.release += 1;
        if req.server_id.is_some_and(|s| s != self.cfg.server) {
            return;
        }
        let ip = req.msg.ciaddr();
        // A reservation is usernet's, not the client's, to give back.
        if self
            .bindings
            .get(&ip)
            .is_some_and(|b| b.mac == req.mac && b.state != LeaseState::Reserved)
        {
            tracing::debug!(mac = %req.mac, %ip, "dhcp: RELEASE");
            self.drop_ip(ip, names);
        }
    }

    fn decline(&mut self, req: &Request, now: u64, names: &mut Vec<NameEvent>) {
        self.stats.decline += 1;
        if req.server_id.is_some_and(|s| s != self.cfg.server) {
            return;
        }
        let Some(ip) = req.requested else {
            return;
        };
        // Only the client an address was given to may decline it (no pool draining by others).
        if self
            .bindings
            .get(&ip)
            .is_none_or(|b| b.mac != req.mac || b.state == LeaseState::Reserved)
        {
            return;
        }
        tracing::warn!(mac = %req.mac, %ip, "dhcp: DECLINE, address in use on the link");
        self.drop_ip(ip, names);
        let until = now.saturating_add(DECLINE_HOLD_MS);
        self.declined.insert(ip, until);
        self.next_deadline = self.next_deadline.min(until);
        if self.prev_by_ip.remove(&ip).is_some() && self.prev_by_mac.get(&req.mac) == Some(&ip) {
            self.prev_by_mac.remove(&req.mac);
        }
    }

    fn inform(&mut self, req: &Request) -> Reply {
        self.stats.inform += 1;
        self.stats.ack += 1;
        let ciaddr = req.msg.ciaddr();
        let mut msg = self.reply_header(req, MessageType::Ack, Ipv4Addr::UNSPECIFIED, ciaddr);
        self.add_config_options(&mut msg, false);
        Reply {
            msg,
            to: reply_to(&req.msg, Ipv4Addr::UNSPECIFIED, req.mac),
            max_len: req.max_len,
        }
    }

    // ---- address management ----

    /// The address to offer `req.mac`, or `None` if none is free.
    fn choose_offer(&self, mac: Mac, requested: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
        if let Some(s) = self.statics.get(&mac) {
            return Some(s.ip);
        }
        if let Some(&ip) = self.by_mac.get(&mac)
            && !self.foreign.contains(&ip)
        {
            return Some(ip);
        }
        if let Some(&ip) = self.prev_by_mac.get(&mac)
            && self.check(mac, ip).is_ok()
        {
            return Some(ip);
        }
        if let Some(ip) = requested
            && self.check(mac, ip).is_ok()
        {
            return Some(ip);
        }
        (u32::from(self.cfg.range_start)..=u32::from(self.cfg.range_end))
            .map(Ipv4Addr::from)
            .find(|&ip| self.check(mac, ip).is_ok())
    }

    /// Whether `ip` may be bound to `mac` now (expired bindings already purged).
    fn check(&self, mac: Mac, ip: Ipv4Addr) -> Result<(), Refusal> {
        let net = self.cfg.subnet;
        if !net.contains(&ip) {
            return Err(Refusal::OutsideSubnet);
        }
        if ip == net.network() || ip == net.broadcast() || ip == self.cfg.server {
            return Err(Refusal::Reserved);
        }
        if self.foreign.contains(&ip) {
            return Err(Refusal::HeldByOther);
        }
        if let Some(s) = self.statics.get(&mac) {
            return if s.ip == ip {
                Ok(())
            } else {
                Err(Refusal::StaticElsewhere)
            };
        }
        if self.static_ips.contains_key(&ip) {
            return Err(Refusal::HeldByOther);
        }
        if let Some(b) = self.bindings.get(&ip) {
            return if b.mac == mac {
                Ok(())
            } else {
                Err(Refusal::HeldByOther)
            };
        }
        if self.declined.contains_key(&ip) {
            return Err(Refusal::Declined);
        }
        if !(self.cfg.range_start..=self.cfg.range_end).contains(&ip) {
            return Err(Refusal::OutsidePool);
        }
        Ok(())
    }

    /// Binds `ip` to `req.mac` for a lease, emitting name events.
    fn commit(&mut self, req: &Request, ip: Ipv4Addr, now: u64, names: &mut Vec<NameEvent>) {
        let mac = req.mac;
        if self.by_mac.get(&mac).is_some_and(|&old| old != ip) {
            self.drop_mac(mac, names);
        }
        if self.bindings.get(&ip).is_some_and(|b| b.mac != mac) {
            self.drop_ip(ip, names);
        }
        let old_name = self.bindings.get(&ip).and_then(|b| b.name.clone());
        let new_name = match self.statics.get(&mac) {
            Some(s) if s.hostname.is_some() => s.hostname.clone(),
            _ => req
                .hostname
                .as_deref()
                .and_then(sanitize_hostname)
                .or_else(|| old_name.clone()),
        };
        if old_name != new_name {
            if let Some(name) = old_name {
                names.push(NameEvent::Unregister { name, ip });
            }
            if let Some(name) = new_name.clone() {
                names.push(NameEvent::Register { name, ip });
            }
        }
        let lease_ms = u64::from(self.cfg.lease_secs) * 1000;
        // A reservation stays one when its port's DHCP client asks for it.
        let reserved = self
            .bindings
            .get(&ip)
            .is_some_and(|b| b.mac == mac && b.state == LeaseState::Reserved);
        self.insert_binding(
            ip,
            Binding {
                mac,
                state: if reserved {
                    LeaseState::Reserved
                } else {
                    LeaseState::Bound
                },
                expires_ms: if reserved {
                    u64::MAX
                } else {
                    now.saturating_add(lease_ms)
                },
                name: new_name,
            },
        );
        self.remember(mac, ip);
    }

    /// Reserves an address for `mac` outside the DHCP exchange, for a port whose address
    /// usernet configures itself (`attach --ip auto`, the CNI plugin): `wanted` if given and
    /// free (it may lie outside the pool, not outside the subnet), else the MAC's static,
    /// current or previous address, else the first free one of the pool. Addresses set with
    /// [`DhcpServer::set_foreign`] are skipped. The reservation never expires; a DHCP client
    /// on that MAC gets the same address. `None` when nothing is free (or `wanted` is taken).
    pub fn reserve(&mut self, mac: Mac, wanted: Option<Ipv4Addr>, now_ms: u64) -> Option<Ipv4Addr> {
        self.purge(now_ms);
        let free = |s: &Self, ip: Ipv4Addr| match s.check(mac, ip) {
            Ok(()) | Err(Refusal::OutsidePool) => true,
            Err(_) => false,
        };
        let ip = match wanted {
            Some(ip) => Some(ip).filter(|&ip| free(self, ip))?,
            None => self.choose_offer(mac, None)?,
        };
        let mut names = Vec::new();
        if self.by_mac.get(&mac).is_some_and(|&old| old != ip) {
            self.drop_mac(mac, &mut names);
        }
        let name = self
            .bindings
            .get(&ip)
            .filter(|b| b.mac == mac)
            .and_then(|b| b.name.clone());
        self.insert_binding(
            ip,
            Binding {
                mac,
                state: LeaseState::Reserved,
                expires_ms: u64::MAX,
                name,
            },
        );
        self.remember(mac, ip);
        self.pending.append(&mut names);
        Some(ip)
    }

    /// Gives back a reservation of `ip` by `mac` (its port is gone). False if `ip` was not
    /// reserved for `mac`.
    pub fn unreserve(&mut self, ip: Ipv4Addr, mac: Mac) -> bool {
        let ours = self
            .bindings
            .get(&ip)
            .is_some_and(|b| b.mac == mac && b.state == LeaseState::Reserved);
        if ours {
            let mut names = Vec::new();
            self.drop_ip(ip, &mut names);
            self.pending.append(&mut names);
        }
        ours
    }

    fn insert_binding(&mut self, ip: Ipv4Addr, b: Binding) {
        self.next_deadline = self.next_deadline.min(b.expires_ms);
        self.by_mac.insert(b.mac, ip);
        self.bindings.insert(ip, b);
    }

    /// Records `ip` as the address `mac` last held, forgetting stale pairings on both sides.
    fn remember(&mut self, mac: Mac, ip: Ipv4Addr) {
        if let Some(old_mac) = self.prev_by_ip.insert(ip, mac)
            && old_mac != mac
            && self.prev_by_mac.get(&old_mac) == Some(&ip)
        {
            self.prev_by_mac.remove(&old_mac);
        }
        if let Some(old_ip) = self.prev_by_mac.insert(mac, ip)
            && old_ip != ip
            && self.prev_by_ip.get(&old_ip) == Some(&mac)
        {
            self.prev_by_ip.remove(&old_ip);
        }
    }

    /// Removes the binding of `ip`, if any.
    fn drop_ip(&mut self, ip: Ipv4Addr, names: &mut Vec<NameEvent>) {
        if let Some(b) = self.bindings.remove(&ip) {
            if self.by_mac.get(&b.mac) == Some(&ip) {
                self.by_mac.remove(&b.mac);
            }
            if let Some(name) = b.name {
                names.push(NameEvent::Unregister { name, ip });
            }
        }
    }

    /// Removes the binding of `mac`, if any.
    fn drop_mac(&mut self, mac: Mac, names: &mut Vec<NameEvent>) {
        if let Some(&ip) = self.by_mac.get(&mac) {
            self.drop_ip(ip, names);
        }
    }

    /// Drops everything expired at `now`, queueing name events.
    fn purge(&mut self, now: u64) {
        if now < self.next_deadline {
            return;
        }
        let expired: Vec<Ipv4Addr> = self
            .bindings
            .iter()
            .filter(|(_, b)| b.expires_ms <= now)
            .map(|(&ip, _)| ip)
            .collect();
        let mut names = Vec::new();
        for ip in expired {
            self.drop_ip(ip, &mut names);
        }
        self.pending.append(&mut names);
        self.declined.retain(|_, &mut until| until > now);
        self.next_deadline = self
            .bindings
            .values()
            .map(|b| b.expires_ms)
            .chain(self.declined.values().copied())
            .min()
            .unwrap_or(u64::MAX);
    }

    // ---- reply construction ----

    /// A BOOTREPLY echoing the request's xid, flags, giaddr, htype and chaddr.
    fn reply_header(
        &self,
        req: &Request,
        kind: MessageType,
        yiaddr: Ipv4Addr,
        ciaddr: Ipv4Addr,
    ) -> Message {
        let mut msg = Message::new_with_id(
            req.msg.xid(),
            ciaddr,
            yiaddr,
            Ipv4Addr::UNSPECIFIED,
            req.msg.giaddr(),
            &req.mac.0,
        );
        msg.set_opcode(Opcode::BootReply)
            .set_htype(req.msg.htype())
            .set_flags(req.msg.flags());
        let opts = msg.opts_mut();
        opts.insert(DhcpOption::MessageType(kind));
        opts.insert(DhcpOption::ServerIdentifier(self.cfg.server));
        msg
    }

    /// Network configuration options; lease times only with `lease` (not for INFORM).
    fn add_config_options(&self, msg: &mut Message, lease: bool) {
        let cfg = &self.cfg;
        let opts = msg.opts_mut();
        if lease {
            let secs = cfg.lease_secs;
            opts.insert(DhcpOption::AddressLeaseTime(secs));
            opts.insert(DhcpOption::Renewal(secs / 2));
            let t2 = u64::from(secs) * 7 / 8;
            opts.insert(DhcpOption::Rebinding(u32::try_from(t2).unwrap_or(secs)));
        }
        opts.insert(DhcpOption::SubnetMask(cfg.subnet.netmask()));
        opts.insert(DhcpOption::BroadcastAddr(cfg.subnet.broadcast()));
        if let Some(r) = cfg.router {
            opts.insert(DhcpOption::Router(vec![r]));
        }
        if !cfg.dns.is_empty() {
            opts.insert(DhcpOption::DomainNameServer(cfg.dns.clone()));
        }
        if let Some(d) = &cfg.domain {
            opts.insert(DhcpOption::DomainName(d.clone()));
        }
        if !self.search.is_empty() {
            opts.insert(DhcpOption::DomainSearch(self.search.clone()));
        }
        if let Some(mtu) = cfg.mtu {
            opts.insert(DhcpOption::InterfaceMtu(mtu));
        }
    }
}

/// RFC 2131 §4.1 destination (no relays): NAKs are handled by the caller; `ciaddr` set →
/// unicast to it; broadcast flag → broadcast; no address to send to → broadcast; else unicast
/// to `yiaddr` at `chaddr`.
fn reply_to(req: &Message, yiaddr: Ipv4Addr, mac: Mac) -> ReplyTo {
    let ciaddr = req.ciaddr();
    if !ciaddr.is_unspecified() {
        ReplyTo::Unicast { ip: ciaddr, mac }
    } else if req.flags().broadcast() || yiaddr.is_unspecified() {
        ReplyTo::Broadcast
    } else {
        ReplyTo::Unicast { ip: yiaddr, mac }
    }
}

/// Encodes `msg`, leaving out optional options until it fits `max_len`, and pads it to the
/// BOOTP minimum. `None` only if dhcproto fails to encode (not reachable from input).
fn encode_reply(mut msg: Message, max_len: usize) -> Option<Vec<u8>> {
    let droppable = [
        None,
        Some(OptionCode::DomainSearch),
        Some(OptionCode::DomainName),
        Some(OptionCode::InterfaceMtu),
    ];
    let mut buf = Vec::new();
    for drop in droppable {
        if let Some(code) = drop {
            msg.opts_mut().remove(code);
        }
        buf.clear();
        if let Err(e) = msg.encode(&mut Encoder::new(&mut buf)) {
            tracing::error!(error = %e, "dhcp: could not encode reply");
            return None;
        }
        if buf.len() <= max_len {
            break;
        }
    }
    if buf.len() < MIN_REPLY_LEN {
        buf.resize(MIN_REPLY_LEN, 0);
    }
    Some(buf)
}

/// Checks the options area's TLV structure (which dhcproto does not report: it stops decoding
/// at the first bad option and keeps what it read). Returns which option codes occur.
///
/// Also refuses the lengths on which dhcproto 0.15 `debug_assert!`s (a panic in debug builds):
/// see [`dhcproto_len_ok`]. Lengths are checked per run of adjacent same-code options, which
/// dhcproto concatenates (RFC 3396) before decoding.
fn scan_options(area: &[u8]) -> Result<[bool; 256], DhcpError> {
    let mut seen = [false; 256];
    // The current run of adjacent same-code options: (code, total length, offset).
    let mut run: Option<(u8, usize, usize)> = None;
    let end_run = |run: Option<(u8, usize, usize)>| match run {
        Some((code, len, at)) if !dhcproto_len_ok(code, len) => Err(malformed(format!(
            "option {code} at offset {at} has invalid length {len}"
        ))),
        _ => Ok(()),
    };
    let mut i = 0usize;
    while let Some(&code) = area.get(i) {
        match code {
            0 => {
                end_run(run.take())?;
                i += 1;
            }
            255 => break,
            _ => {
                let Some(&len) = area.get(i + 1) else {
                    return Err(malformed(format!(
                        "option {code} at offset {} has no length byte",
                        OPTIONS_OFFSET + i
                    )));
                };
                let end = i + 2 + usize::from(len);
                if end > area.len() {
                    return Err(malformed(format!(
                        "option {code} at offset {} claims {len} bytes but only {} remain",
                        OPTIONS_OFFSET + i,
                        area.len() - (i + 2)
                    )));
                }
                run = match run {
                    Some((c, total, at)) if c == code => Some((c, total + usize::from(len), at)),
                    prev => {
                        end_run(prev)?;
                        Some((code, usize::from(len), OPTIONS_OFFSET + i))
                    }
                };
                seen[usize::from(code)] = true;
                i = end;
            }
        }
    }
    // A missing END is accepted when every option is complete, like most servers do.
    end_run(run)?;
    Ok(seen)
}

/// Whether dhcproto 0.15 decodes option `code` of (concatenated) length `len` without hitting
/// one of its `debug_assert!`s: rapid commit (80) must be empty, client network interface (94)
/// 3 bytes, bulk leasequery times (152–155) 4 bytes, client FQDN (81) at least 3 bytes.
fn dhcproto_len_ok(code: u8, len: usize) -> bool {
    match code {
        80 => len == 0,
        81 => len >= 3,
        94 => len == 3,
        152..=155 => len == 4,
        _ => true,
    }
}

/// Decodes and checks a client message. `Ok(None)` for a BOOTREPLY.
fn parse_request(payload: &[u8]) -> Result<Option<Request>, DhcpError> {
    if payload.len() < OPTIONS_OFFSET {
        return Err(malformed(format!(
            "{} bytes is shorter than the {OPTIONS_OFFSET}-byte header and magic cookie",
            payload.len()
        )));
    }
    if payload.len() > MAX_MESSAGE_LEN {
        return Err(malformed(format!(
            "{} bytes exceeds the {MAX_MESSAGE_LEN}-byte limit",
            payload.len()
        )));
    }
    let cookie = payload.get(HEADER_LEN..OPTIONS_OFFSET).unwrap_or_default();
    if cookie != MAGIC_COOKIE {
        return Err(malformed(format!(
            "magic cookie {cookie:02x?} is not 63:82:53:63"
        )));
    }
    let seen = scan_options(payload.get(OPTIONS_OFFSET..).unwrap_or_default())?;
    let msg = Message::decode(&mut Decoder::new(payload))
        .map_err(|e| malformed(format!("dhcproto could not decode it: {e}")))?;
    match msg.opcode() {
        Opcode::BootRequest => {}
        Opcode::BootReply => return Ok(None),
        Opcode::Unknown(op) => {
            return Err(malformed(format!(
                "op {op} is neither BOOTREQUEST (1) nor BOOTREPLY (2)"
            )));
        }
    }
    // Checked before `chaddr()`, which slices `[..hlen]` and panics for hlen > 16.
    if msg.hlen() != 6 {
        return Err(malformed(format!(
            "hlen {} is not 6 (Ethernet)",
            msg.hlen()
        )));
    }
    if msg.htype() != HType::Eth {
        return Err(malformed(format!(
            "htype {:?} is not Ethernet",
            msg.htype()
        )));
    }
    let mac = match <[u8; 6]>::try_from(msg.chaddr()) {
        Ok(b) => Mac(b),
        Err(_) => return Err(malformed("chaddr is not 6 bytes")),
    };
    if !mac.is_valid_source() {
        return Err(malformed(format!(
            "chaddr {mac} is not a unicast MAC address"
        )));
    }
    // An option dhcproto could not decode ends its decoding: everything after it is lost.
    // Refuse the message if that lost something the server acts on.
    for code in [
        OptionCode::MessageType,
        OptionCode::RequestedIpAddress,
        OptionCode::ServerIdentifier,
        OptionCode::MaxMessageSize,
    ] {
        if seen[usize::from(u8::from(code))] && !msg.opts().contains(code) {
            return Err(malformed(format!(
                "option {} is present but could not be decoded (bad length or an earlier \
                 undecodable option)",
                u8::from(code)
            )));
        }
    }
    let opts = msg.opts();
    let kind = opts
        .msg_type()
        .ok_or_else(|| malformed(format!("no message type option (53) from {mac}")))?;
    let requested = match opts.get(OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
        _ => None,
    };
    let server_id = match opts.get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
        _ => None,
    };
    let hostname = match opts.get(OptionCode::Hostname) {
        Some(DhcpOption::Hostname(h)) => Some(h.clone()),
        _ => None,
    };
    let max_datagram = match opts.get(OptionCode::MaxMessageSize) {
        Some(DhcpOption::MaxMessageSize(n)) => (*n).max(MIN_MAX_DATAGRAM),
        _ => MIN_MAX_DATAGRAM,
    };
    Ok(Some(Request {
        kind,
        mac,
        requested,
        server_id,
        hostname,
        max_len: usize::from(max_datagram) - IP_UDP_HEADER_LEN,
        msg,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dhcproto::v4;

    const NET: &str = "10.88.0.0/24";
    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 1);
    const T0: u64 = 1_000_000;

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 88, 0, last)
    }

    fn mac(n: u8) -> Mac {
        Mac([0x02, 0, 0, 0, 0, n])
    }

    fn base_cfg() -> DhcpConfig {
        let mut c = DhcpConfig::for_subnet(NET.parse().unwrap(), SERVER);
        c.domain = Some("usernet".into());
        c.search = vec!["usernet".into(), "example.com".into()];
        c.mtu = Some(1400);
        c
    }

    fn server() -> DhcpServer {
        DhcpServer::new(base_cfg()).unwrap()
    }

    /// A client message of `kind` from `mac`.
    fn msg(mac: Mac, kind: MessageType) -> Message {
        let mut m = Message::new_with_id(
            0xdead_beef,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &mac.0,
        );
        m.opts_mut().insert(DhcpOption::MessageType(kind));
        m
    }

    fn enc(m: &Message) -> Vec<u8> {
        let mut buf = Vec::new();
        m.encode(&mut Encoder::new(&mut buf)).unwrap();
        buf
    }

    fn dec(b: &[u8]) -> Message {
        Message::decode(&mut Decoder::new(b)).unwrap()
    }

    /// Sends `m`; returns the decoded reply and the output.
    fn send(s: &mut DhcpServer, m: &Message, now: u64) -> Option<(Message, DhcpOutput)> {
        s.handle(&enc(m), now)
            .unwrap()
            .map(|o| (dec(&o.payload), o))
    }

    fn kind(m: &Message) -> MessageType {
        m.opts().msg_type().unwrap()
    }

    fn discover(s: &mut DhcpServer, mac: Mac, now: u64) -> Option<(Message, DhcpOutput)> {
        send(s, &msg(mac, MessageType::Discover), now)
    }

    fn select(mac: Mac, addr: Ipv4Addr, host: Option<&str>) -> Message {
        let mut m = msg(mac, MessageType::Request);
        m.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
        m.opts_mut().insert(DhcpOption::RequestedIpAddress(addr));
        if let Some(h) = host {
            m.opts_mut().insert(DhcpOption::Hostname(h.into()));
        }
        m
    }

    /// DISCOVER, OFFER, REQUEST, ACK; returns the bound address and the ACK's output.
    fn dora(s: &mut DhcpServer, mac: Mac, host: Option<&str>, now: u64) -> (Ipv4Addr, DhcpOutput) {
        let (offer, _) = discover(s, mac, now).expect("offer");
        assert_eq!(kind(&offer), MessageType::Offer);
        let (ack, out) = send(s, &select(mac, offer.yiaddr(), host), now).expect("ack");
        assert_eq!(kind(&ack), MessageType::Ack);
        assert_eq!(ack.yiaddr(), offer.yiaddr());
        (ack.yiaddr(), out)
    }

    fn opt(m: &Message, c: OptionCode) -> Option<&DhcpOption> {
        m.opts().get(c)
    }

    #[test]
    fn full_dora() {
        let mut s = server();
        let mut d = msg(mac(1), MessageType::Discover);
        d.set_xid(0x0102_0304).set_giaddr(Ipv4Addr::UNSPECIFIED);
        let (offer, out) = send(&mut s, &d, T0).unwrap();
        assert_eq!(offer.opcode(), Opcode::BootReply);
        assert_eq!(offer.xid(), 0x0102_0304);
        assert_eq!(offer.chaddr(), &mac(1).0);
        assert_eq!(offer.yiaddr(), ip(2));
        assert!(out.payload.len() >= MIN_REPLY_LEN);
        assert_eq!(
            out.to,
            ReplyTo::Unicast {
                ip: ip(2),
                mac: mac(1)
            }
        );
        assert!(out.names.is_empty());
        let want = [
            DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)),
            DhcpOption::Router(vec![SERVER]),
            DhcpOption::DomainNameServer(vec![SERVER]),
            DhcpOption::DomainName("usernet".into()),
            DhcpOption::InterfaceMtu(1400),
            DhcpOption::AddressLeaseTime(3600),
            DhcpOption::ServerIdentifier(SERVER),
            DhcpOption::Renewal(1800),
            DhcpOption::Rebinding(3150),
            DhcpOption::BroadcastAddr(ip(255)),
        ];
        for w in want {
            assert_eq!(opt(&offer, OptionCode::from(&w)), Some(&w));
        }
        match opt(&offer, OptionCode::DomainSearch) {
            Some(DhcpOption::DomainSearch(names)) => {
                let got: Vec<String> = names.iter().map(|n| n.to_ascii()).collect();
                assert_eq!(got, ["usernet.", "example.com."]);
            }
            other => panic!("no search list: {other:?}"),
        }
        let leases = s.leases(T0);
        assert_eq!(leases.len(), 1);
        assert_eq!(leases[0].state, LeaseState::Offered);
        assert_eq!(leases[0].expires_in_secs, 30);

        let (ack, out) = send(&mut s, &select(mac(1), ip(2), Some("web")), T0 + 100).unwrap();
        assert_eq!(kind(&ack), MessageType::Ack);
        assert_eq!(ack.yiaddr(), ip(2));
        assert_eq!(ack.xid(), 0xdead_beef);
        assert_eq!(
            opt(&ack, OptionCode::AddressLeaseTime),
            Some(&DhcpOption::AddressLeaseTime(3600))
        );
        assert_eq!(
            out.to,
            ReplyTo::Unicast {
                ip: ip(2),
                mac: mac(1)
            }
        );
        assert_eq!(
            out.names,
            [NameEvent::Register {
                name: "web".into(),
                ip: ip(2)
            }]
        );
        let l = &s.leases(T0 + 100)[0];
        assert_eq!(
            (
                l.mac,
                l.ip,
                l.hostname.as_deref(),
                l.state,
                l.is_static,
                l.expires_in_secs
            ),
            (mac(1), ip(2), Some("web"), LeaseState::Bound, false, 3600)
        );
        let st = s.stats();
        assert_eq!(
            (st.discover, st.offer, st.request, st.ack, st.nak),
            (1, 1, 1, 1, 0)
        );
        let json = serde_json::to_string(l).unwrap();
        assert!(
            json.contains("\"state\":\"bound\"") && json.contains("02:00:00:00:00:01"),
            "{json}"
        );
    }

    #[test]
    fn two_clients_get_different_addresses() {
        let mut s = server();
        let (a, _) = dora(&mut s, mac(1), None, T0);
        let (b, _) = dora(&mut s, mac(2), None, T0);
        assert_eq!((a, b), (ip(2), ip(3)));
        // Two outstanding offers are distinct too.
        let (o3, _) = discover(&mut s, mac(3), T0).unwrap();
        let (o4, _) = discover(&mut s, mac(4), T0).unwrap();
        assert_eq!((o3.yiaddr(), o4.yiaddr()), (ip(4), ip(5)));
        // A repeated DISCOVER gets the same offer.
        assert_eq!(discover(&mut s, mac(3), T0 + 1).unwrap().0.yiaddr(), ip(4));
    }

    #[test]
    fn static_lease_honoured() {
        let mut cfg = base_cfg();
        cfg.static_leases = vec![
            StaticLease {
                mac: mac(9),
                ip: ip(2),
                hostname: Some("DB".into()),
            },
            StaticLease {
                mac: mac(8),
                ip: ip(200),
                hostname: None,
            },
        ];
        let mut s = DhcpServer::new(cfg).unwrap();
        // A dynamic client never gets the static address, even when asking for it.
        let mut d = msg(mac(1), MessageType::Discover);
        d.opts_mut().insert(DhcpOption::RequestedIpAddress(ip(2)));
        assert_eq!(send(&mut s, &d, T0).unwrap().0.yiaddr(), ip(3));
        // The static client gets its address; its configured name beats the one it sends.
        let (a, out) = dora(&mut s, mac(9), Some("other"), T0);
        assert_eq!(a, ip(2));
        assert_eq!(
            out.names,
            [NameEvent::Register {
                name: "db".into(),
                ip: ip(2)
            }]
        );
        let l = s.leases(T0).into_iter().find(|l| l.ip == ip(2)).unwrap();
        assert!(l.is_static);
        // A static address outside the pool works; asking for another address is refused.
        assert_eq!(dora(&mut s, mac(8), Some("eight"), T0).0, ip(200));
        let mut r = msg(mac(8), MessageType::Request);
        r.opts_mut().insert(DhcpOption::RequestedIpAddress(ip(50)));
        assert_eq!(kind(&send(&mut s, &r, T0).unwrap().0), MessageType::Nak);
        // Another client's INIT-REBOOT for a static address is refused.
        let mut r = msg(mac(1), MessageType::Request);
        r.opts_mut().insert(DhcpOption::RequestedIpAddress(ip(200)));
        assert_eq!(kind(&send(&mut s, &r, T0).unwrap().0), MessageType::Nak);
    }

    #[test]
    fn same_mac_after_restart_gets_same_ip() {
        let mut s = server();
        assert_eq!(dora(&mut s, mac(1), None, T0).0, ip(2));
        assert_eq!(dora(&mut s, mac(2), None, T0).0, ip(3));
        let later = T0 + 3_601_000;
        s.expire(later);
        assert!(s.leases(later).is_empty());
        // mac 2 comes back first with a new xid and no option 50: still .3, not the lowest .2.
        let mut d = msg(mac(2), MessageType::Discover);
        d.set_xid(42);
        assert_eq!(send(&mut s, &d, later).unwrap().0.yiaddr(), ip(3));
        assert_eq!(discover(&mut s, mac(1), later).unwrap().0.yiaddr(), ip(2));
        // ... also after a release.
        let (a, _) = dora(&mut s, mac(1), None, later);
        let mut rel = msg(mac(1), MessageType::Release);
        rel.set_ciaddr(a)
            .opts_mut()
            .insert(DhcpOption::ServerIdentifier(SERVER));
        assert!(send(&mut s, &rel, later).is_none());
        assert_eq!(dora(&mut s, mac(1), None, later + 5).0, ip(2));
    }

    #[test]
    fn released_address_reused_by_new_client() {
        let mut s = server();
        assert_eq!(dora(&mut s, mac(1), Some("one"), T0).0, ip(2));
        assert_eq!(dora(&mut s, mac(2), None, T0).0, ip(3));
        let mut rel = msg(mac(1), MessageType::Release);
        rel.set_ciaddr(ip(2))
            .opts_mut()
            .insert(DhcpOption::ServerIdentifier(SERVER));
        assert!(send(&mut s, &rel, T0 + 10).is_none());
        assert_eq!(s.stats().release, 1);
        assert_eq!(s.leases(T0 + 10).len(), 1);
        // The unregister is queued and handed out once.
        let unreg = NameEvent::Unregister {
            name: "one".into(),
            ip: ip(2),
        };
        let (offer, out) = discover(&mut s, mac(3), T0 + 20).unwrap();
        assert_eq!(offer.yiaddr(), ip(2));
        assert_eq!(out.names, [unreg]);
        let (c, out) = dora(&mut s, mac(3), None, T0 + 20);
        assert_eq!(c, ip(2));
        assert!(out.names.is_empty());
        assert!(s.expire(T0 + 30).is_empty());
        // A RELEASE from a MAC that does not hold the address is ignored.
        let mut rel = msg(mac(9), MessageType::Release);
        rel.set_ciaddr(ip(3));
        assert!(send(&mut s, &rel, T0 + 40).is_none());
        assert_eq!(s.leases(T0 + 40).len(), 2);
    }

    #[test]
    fn renew_extends_lease() {
        let mut s = server();
        let (a, _) = dora(&mut s, mac(1), Some("host"), T0);
        let t1 = T0 + 1_800_000;
        let mut r = msg(mac(1), MessageType::Request);
        r.set_ciaddr(a);
        let (ack, out) = send(&mut s, &r, t1).unwrap();
        assert_eq!(kind(&ack), MessageType::Ack);
        assert_eq!((ack.yiaddr(), ack.ciaddr()), (a, a));
        assert_eq!(out.to, ReplyTo::Unicast { ip: a, mac: mac(1) });
        assert!(
            out.names.is_empty(),
            "no re-registration of an unchanged name"
        );
        assert_eq!(s.leases(t1)[0].expires_in_secs, 3600);
        // Past the original expiry the lease is still there.
        let t2 = T0 + 3_700_000;
        assert!(s.expire(t2).is_empty());
        assert_eq!(s.leases(t2)[0].ip, a);
        // Renewing an address held by someone else is refused.
        dora(&mut s, mac(2), None, t2);
        let mut r = msg(mac(1), MessageType::Request);
        r.set_ciaddr(ip(3));
        let (nak, out) = send(&mut s, &r, t2).unwrap();
        assert_eq!(kind(&nak), MessageType::Nak);
        assert_eq!(out.to, ReplyTo::Broadcast);
    }

    #[test]
    fn init_reboot() {
        let mut s = server();
        let (a, _) = dora(&mut s, mac(1), None, T0);
        let reboot = |m: Mac, addr: Ipv4Addr| {
            let mut r = msg(m, MessageType::Request);
            r.opts_mut().insert(DhcpOption::RequestedIpAddress(addr));
            r
        };
        // Wrong subnet (a laptop moved networks): NAK, broadcast, with a reason.
        let (nak, out) = send(&mut s, &reboot(mac(1), Ipv4Addr::new(192, 168, 1, 50)), T0).unwrap();
        assert_eq!(kind(&nak), MessageType::Nak);
        assert_eq!(nak.yiaddr(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(
            opt(&nak, OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(SERVER))
        );
        assert!(
            matches!(opt(&nak, OptionCode::Message), Some(DhcpOption::Message(t)) if t.contains("subnet"))
        );
        assert_eq!(out.to, ReplyTo::Broadcast);
        // Its own address: ACK.
        let (ack, _) = send(&mut s, &reboot(mac(1), a), T0).unwrap();
        assert_eq!((kind(&ack), ack.yiaddr()), (MessageType::Ack, a));
        // Someone else's: NAK. Free and in the pool: ACK (e.g. after a server restart).
        assert_eq!(
            kind(&send(&mut s, &reboot(mac(2), a), T0).unwrap().0),
            MessageType::Nak
        );
        let (ack, _) = send(&mut s, &reboot(mac(2), ip(77)), T0).unwrap();
        assert_eq!((kind(&ack), ack.yiaddr()), (MessageType::Ack, ip(77)));
        // The server's own address, or an address outside the pool: NAK.
        assert_eq!(
            kind(&send(&mut s, &reboot(mac(3), SERVER), T0).unwrap().0),
            MessageType::Nak
        );
        assert_eq!(s.stats().nak, 3);
    }

    #[test]
    fn selecting_another_server_withdraws_offer() {
        let mut s = server();
        let (offer, _) = discover(&mut s, mac(1), T0).unwrap();
        let mut r = select(mac(1), offer.yiaddr(), None);
        r.opts_mut()
            .insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 88, 0, 254)));
        assert!(send(&mut s, &r, T0).is_none());
        assert!(s.leases(T0).is_empty());
        assert_eq!(discover(&mut s, mac(2), T0).unwrap().0.yiaddr(), ip(2));
    }

    #[test]
    fn decline_excludes_address() {
        let mut s = server();
        let (a, _) = dora(&mut s, mac(1), Some("dup"), T0);
        let mut d = msg(mac(1), MessageType::Decline);
        d.opts_mut().insert(DhcpOption::RequestedIpAddress(a));
        d.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
        assert!(send(&mut s, &d, T0).is_none());
        assert_eq!(s.stats().decline, 1);
        assert!(s.leases(T0).is_empty());
        assert_eq!(
            s.drain_names(),
            [NameEvent::Unregister {
                name: "dup".into(),
                ip: a
            }]
        );
        // Neither the decliner nor anyone else gets it for 10 minutes.
        assert_eq!(discover(&mut s, mac(1), T0).unwrap().0.yiaddr(), ip(3));
        assert_eq!(discover(&mut s, mac(2), T0).unwrap().0.yiaddr(), ip(4));
        let mut r = msg(mac(5), MessageType::Request);
        r.opts_mut().insert(DhcpOption::RequestedIpAddress(a));
        assert_eq!(kind(&send(&mut s, &r, T0).unwrap().0), MessageType::Nak);
        // Afterwards it is the lowest free address again.
        let later = T0 + DECLINE_HOLD_MS + 1;
        s.expire(later);
        assert_eq!(discover(&mut s, mac(6), later).unwrap().0.yiaddr(), a);
        // A client cannot decline an address it does not hold.
        let mut d = msg(mac(7), MessageType::Decline);
        d.opts_mut().insert(DhcpOption::RequestedIpAddress(a));
        assert!(send(&mut s, &d, later).is_none());
        assert_eq!(s.leases(later)[0].ip, a);
    }

    #[test]
    fn inform_gets_options_without_address() {
        let mut s = server();
        let mut m = msg(mac(1), MessageType::Inform);
        m.set_ciaddr(ip(77));
        let (ack, out) = send(&mut s, &m, T0).unwrap();
        assert_eq!(kind(&ack), MessageType::Ack);
        assert_eq!(
            (ack.yiaddr(), ack.ciaddr()),
            (Ipv4Addr::UNSPECIFIED, ip(77))
        );
        assert_eq!(
            out.to,
            ReplyTo::Unicast {
                ip: ip(77),
                mac: mac(1)
            }
        );
        assert_eq!(
            opt(&ack, OptionCode::DomainNameServer),
            Some(&DhcpOption::DomainNameServer(vec![SERVER]))
        );
        assert!(opt(&ack, OptionCode::AddressLeaseTime).is_none());
        assert!(opt(&ack, OptionCode::Renewal).is_none());
        assert!(s.leases(T0).is_empty());
        assert_eq!((s.stats().inform, s.stats().ack), (1, 1));
    }

    #[test]
    fn pool_exhaustion() {
        let mut cfg = base_cfg();
        cfg.range_start = ip(10);
        cfg.range_end = ip(12);
        let mut s = DhcpServer::new(cfg).unwrap();
        for n in 1..=3 {
            assert_eq!(discover(&mut s, mac(n), T0).unwrap().0.yiaddr(), ip(9 + n));
        }
        assert!(discover(&mut s, mac(4), T0).is_none());
        assert_eq!(s.stats().pool_exhausted, 1);
        // Unrequested offers lapse after the hold time.
        let later = T0 + OFFER_HOLD_MS;
        assert_eq!(discover(&mut s, mac(4), later).unwrap().0.yiaddr(), ip(10));
    }

    #[test]
    fn expiry_unregisters_name() {
        let mut s = server();
        let (a, out) = dora(&mut s, mac(1), Some("Laptop_1"), T0);
        assert_eq!(
            out.names,
            [NameEvent::Register {
                name: "laptop-1".into(),
                ip: a
            }]
        );
        assert_eq!(s.next_expiry(), Some(T0 + 3_600_000));
        assert!(s.expire(T0 + 3_599_999).is_empty());
        assert_eq!(s.leases(T0 + 3_599_999)[0].expires_in_secs, 1);
        assert_eq!(
            s.expire(T0 + 3_600_000),
            [NameEvent::Unregister {
                name: "laptop-1".into(),
                ip: a
            }]
        );
        assert!(s.leases(T0 + 3_600_000).is_empty());
        assert!(s.expire(T0 + 3_700_000).is_empty());
        assert_eq!(s.next_expiry(), None);
    }

    #[test]
    fn lazy_expiry_events_ride_on_next_reply() {
        let mut s = server();
        let (a, _) = dora(&mut s, mac(1), Some("gone"), T0);
        let later = T0 + 4_000_000;
        let (_, out) = discover(&mut s, mac(2), later).unwrap();
        assert_eq!(
            out.names,
            [NameEvent::Unregister {
                name: "gone".into(),
                ip: a
            }]
        );
        assert!(s.expire(later).is_empty());
    }

    #[test]
    fn hostname_sanitising() {
        let cases = [
            ("web", Some("web")),
            ("My-Host", Some("my-host")),
            ("host.example.com", Some("host")),
            ("under_score", Some("under-score")),
            ("name\0", Some("name")),
            ("a1-b2", Some("a1-b2")),
            ("-lead", None),
            ("trail-", None),
            ("", None),
            (".x", None),
            ("héllo", None),
            ("sp ace", None),
            ("x*", None),
        ];
        for (raw, want) in cases {
            assert_eq!(sanitize_hostname(raw).as_deref(), want, "{raw:?}");
        }
        assert_eq!(
            sanitize_hostname(&"a".repeat(63)).map(|s| s.len()),
            Some(63)
        );
        assert_eq!(sanitize_hostname(&"a".repeat(64)), None);

        // Name change on renew: unregister the old, register the new; invalid names ignored.
        let mut s = server();
        let (a, out) = dora(&mut s, mac(1), Some("bad name!"), T0);
        assert!(out.names.is_empty());
        assert_eq!(s.leases(T0)[0].hostname, None);
        let renew = |h: &str| {
            let mut r = msg(mac(1), MessageType::Request);
            r.set_ciaddr(a)
                .opts_mut()
                .insert(DhcpOption::Hostname(h.into()));
            r
        };
        let (_, out) = send(&mut s, &renew("First"), T0 + 1).unwrap();
        assert_eq!(
            out.names,
            [NameEvent::Register {
                name: "first".into(),
                ip: a
            }]
        );
        let (_, out) = send(&mut s, &renew("second"), T0 + 2).unwrap();
        assert_eq!(
            out.names,
            [
                NameEvent::Unregister {
                    name: "first".into(),
                    ip: a
                },
                NameEvent::Register {
                    name: "second".into(),
                    ip: a
                },
            ]
        );
        let (_, out) = send(&mut s, &renew("-invalid"), T0 + 3).unwrap();
        assert!(out.names.is_empty());
        assert_eq!(s.leases(T0 + 3)[0].hostname.as_deref(), Some("second"));
    }

    #[test]
    fn reply_addressing_rules() {
        let mut s = server();
        // Broadcast flag set: broadcast, and the flag is echoed.
        let mut d = msg(mac(1), MessageType::Discover);
        d.set_flags(v4::Flags::default().set_broadcast());
        let (offer, out) = send(&mut s, &d, T0).unwrap();
        assert_eq!(out.to, ReplyTo::Broadcast);
        assert!(offer.flags().broadcast());
        // No flag, no ciaddr: unicast to yiaddr at chaddr.
        let (_, out) = discover(&mut s, mac(2), T0).unwrap();
        assert_eq!(
            out.to,
            ReplyTo::Unicast {
                ip: ip(3),
                mac: mac(2)
            }
        );
        // ciaddr set wins over the broadcast flag.
        let (a, _) = dora(&mut s, mac(3), None, T0);
        let mut r = msg(mac(3), MessageType::Request);
        r.set_ciaddr(a)
            .set_flags(v4::Flags::default().set_broadcast());
        assert_eq!(
            send(&mut s, &r, T0).unwrap().1.to,
            ReplyTo::Unicast { ip: a, mac: mac(3) }
        );
        // NAK: always broadcast, even with ciaddr.
        let mut r = msg(mac(3), MessageType::Request);
        r.set_ciaddr(Ipv4Addr::new(172, 16, 0, 9));
        assert_eq!(send(&mut s, &r, T0).unwrap().1.to, ReplyTo::Broadcast);
        // giaddr is echoed.
        let mut d = msg(mac(4), MessageType::Discover);
        d.set_giaddr(ip(250));
        assert_eq!(send(&mut s, &d, T0).unwrap().0.giaddr(), ip(250));
    }

    /// A valid DISCOVER with `opts` as the raw options area.
    fn raw_with_options(opts: &[u8]) -> Vec<u8> {
        let mut b = enc(&msg(mac(1), MessageType::Discover));
        b.truncate(OPTIONS_OFFSET);
        b.extend_from_slice(opts);
        b
    }

    #[test]
    fn malformed_inputs_are_errors() {
        let mut s = server();
        let good = enc(&msg(mac(1), MessageType::Discover));
        let mut cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("10 bytes", good[..10].to_vec()),
            ("header only", good[..239].to_vec()),
            // 53 ok, then option 12 claiming 200 bytes with 5 present.
            (
                "option past end",
                raw_with_options(&[53, 1, 1, 12, 200, b'a', b'b', b'c', b'd', b'e']),
            ),
            ("length byte missing", raw_with_options(&[53, 1, 1, 12])),
            ("10 KB garbage", raw_with_options(&[0xab; 10 * 1024])),
            ("3 KB garbage", raw_with_options(&[0x7f; 3 * 1024])),
            ("no message type", raw_with_options(&[12, 1, b'x', 255])),
            // Message type with a bad length: dhcproto would drop it silently.
            ("bad option 53", raw_with_options(&[53, 0, 255])),
            (
                "bad option 50",
                raw_with_options(&[50, 3, 1, 2, 3, 53, 1, 1, 255]),
            ),
        ];
        let mut bad_op = good.clone();
        bad_op[0] = 3;
        cases.push(("wrong op", bad_op));
        for hlen in [0u8, 16, 17, 200, 255] {
            let mut b = good.clone();
            b[2] = hlen;
            cases.push(("hlen", b));
        }
        let mut bad_magic = good.clone();
        bad_magic[236] = 0;
        cases.push(("magic", bad_magic));
        let mut multicast = good.clone();
        multicast[28] = 0x01;
        cases.push(("multicast chaddr", multicast));
        let n = cases.len() as u64;
        for (what, b) in cases {
            match s.handle(&b, T0) {
                Err(DhcpError::Malformed(m)) => assert!(!m.is_empty(), "{what}"),
                other => panic!("{what}: expected Malformed, got {other:?}"),
            }
        }
        assert_eq!(s.stats().malformed, n);
        assert_eq!(s.stats().discover, 0);
        assert!(s.leases(T0).is_empty());
        // A BOOTREPLY (e.g. another server's reply) is ignored, not an error.
        let mut reply = good.clone();
        reply[0] = 2;
        assert_eq!(s.handle(&reply, T0), Ok(None));
        // A message without END but with complete options is accepted.
        assert!(
            s.handle(&raw_with_options(&[53, 1, 1]), T0)
                .unwrap()
                .is_some()
        );
    }

    /// Deterministic fuzzing: mutations of valid messages never panic.
    #[test]
    fn mutations_never_panic() {
        let mut s = server();
        let mut seeds = vec![enc(&msg(mac(1), MessageType::Discover))];
        let mut r = select(mac(2), ip(9), Some("fuzz"));
        r.opts_mut().insert(DhcpOption::MaxMessageSize(1500));
        r.opts_mut()
            .insert(DhcpOption::ParameterRequestList(vec![OptionCode::Router]));
        seeds.push(enc(&r));
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..20_000u64 {
            let mut b = seeds[(i % 2) as usize].clone();
            for _ in 0..(1 + rnd() % 8) {
                let len = b.len();
                match rnd() % 4 {
                    0 => {
                        let at = rnd() as usize % len;
                        b[at] = rnd() as u8;
                    }
                    1 => {
                        let at = OPTIONS_OFFSET + rnd() as usize % (len - OPTIONS_OFFSET).max(1);
                        b.truncate(at.min(len));
                    }
                    2 => b.extend((0..rnd() % 64).map(|_| rnd() as u8)),
                    _ => {
                        let at = OPTIONS_OFFSET.min(len) + rnd() as usize % 16;
                        if at < b.len() {
                            b[at] = rnd() as u8;
                        }
                    }
                }
            }
            if let Ok(Some(out)) = s.handle(&b, T0 + i * 1000) {
                assert!(out.payload.len() >= MIN_REPLY_LEN);
                dec(&out.payload);
            }
            s.expire(T0 + i * 1000);
        }
    }

    /// Every option code with short lengths and varied contents: no panic (dhcproto has
    /// `debug_assert!`s on some lengths), and a message is either handled or Malformed.
    #[test]
    fn every_option_code_and_length_is_safe() {
        let mut s = server();
        let fills: [fn(usize) -> u8; 3] = [|_| 0, |_| 0xff, |i| (i * 37 + 11) as u8];
        for code in 1..=254u8 {
            for len in 0..=18usize {
                for fill in fills {
                    for twice in [false, true] {
                        let mut o = vec![53, 1, 1, code, len as u8];
                        o.extend((0..len).map(fill));
                        if twice {
                            o.extend([code, 1, fill(len)]);
                        }
                        o.push(255);
                        let _ = s.handle(&raw_with_options(&o), T0);
                    }
                }
            }
        }
        // Lengths dhcproto would assert on are refused up front.
        for o in [&[80u8, 1, 0][..], &[94, 2, 1, 2], &[152, 3, 1, 2, 3]] {
            let mut v = vec![53, 1, 1];
            v.extend_from_slice(o);
            assert!(matches!(
                s.handle(&raw_with_options(&v), T0),
                Err(DhcpError::Malformed(_))
            ));
        }
        // ... but rapid commit as clients send it (empty) is fine.
        assert!(
            s.handle(&raw_with_options(&[53, 1, 1, 80, 0, 255]), T0)
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn oversized_reply_drops_search_list() {
        let mut cfg = base_cfg();
        cfg.search = (0..12)
            .map(|i| format!("domain-number-{i}.some-long-zone.example.org"))
            .collect();
        let mut s = DhcpServer::new(cfg).unwrap();
        let (offer, out) = discover(&mut s, mac(1), T0).unwrap();
        assert!(out.payload.len() <= 576 - 28, "{}", out.payload.len());
        assert!(opt(&offer, OptionCode::DomainSearch).is_none());
        assert!(opt(&offer, OptionCode::DomainName).is_some());
        // A client announcing a larger maximum gets the full list.
        let mut d = msg(mac(2), MessageType::Discover);
        d.opts_mut().insert(DhcpOption::MaxMessageSize(1500));
        let (offer, out) = send(&mut s, &d, T0).unwrap();
        assert!(out.payload.len() > 576 - 28);
        assert!(opt(&offer, OptionCode::DomainSearch).is_some());
    }

    #[test]
    fn for_subnet_defaults() {
        let c = DhcpConfig::for_subnet(NET.parse().unwrap(), SERVER);
        assert_eq!(
            (c.range_start, c.range_end, c.lease_secs),
            (ip(2), ip(254), 3600)
        );
        assert_eq!((c.router, c.dns.clone()), (Some(SERVER), vec![SERVER]));
        DhcpServer::new(c).unwrap();
        let c = DhcpConfig::for_subnet(NET.parse().unwrap(), ip(100));
        assert_eq!((c.range_start, c.range_end), (ip(101), ip(254)));
        DhcpServer::new(c).unwrap();
        let c = DhcpConfig::for_subnet(NET.parse().unwrap(), ip(254));
        assert_eq!((c.range_start, c.range_end), (ip(2), ip(253)));
        DhcpServer::new(c).unwrap();
        let c = DhcpConfig::for_subnet("10.0.0.0/30".parse().unwrap(), Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(
            (c.range_start, c.range_end),
            (Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 2))
        );
        DhcpServer::new(c).unwrap();
        let c = DhcpConfig::for_subnet("10.0.0.0/30".parse().unwrap(), Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(
            (c.range_start, c.range_end),
            (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 1))
        );
        DhcpServer::new(c).unwrap();
        // Host bits in the subnet are ignored.
        let c = DhcpConfig::for_subnet("10.88.0.1/24".parse().unwrap(), SERVER);
        assert_eq!(
            DhcpServer::new(c).unwrap().config().subnet,
            NET.parse::<Ipv4Net>().unwrap()
        );
    }

    #[test]
    fn config_validation_names_the_field() {
        let check = |f: &dyn Fn(&mut DhcpConfig), field: &str| {
            let mut c = base_cfg();
            f(&mut c);
            match DhcpServer::new(c) {
                Err(DhcpError::Config { field: got, reason }) => {
                    assert_eq!(got, field, "{reason}");
                    assert!(!reason.is_empty());
                }
                other => panic!("{field}: expected a config error, got {other:?}"),
            }
        };
        check(
            &|c| c.range_start = Ipv4Addr::new(10, 99, 0, 2),
            "range_start",
        );
        check(&|c| c.range_end = Ipv4Addr::new(10, 99, 0, 2), "range_end");
        check(&|c| c.range_start = ip(0), "range_start");
        check(&|c| c.range_end = ip(255), "range_end");
        check(
            &|c| (c.range_start, c.range_end) = (ip(50), ip(40)),
            "range_end",
        );
        check(&|c| c.range_start = SERVER, "server");
        check(&|c| c.server = Ipv4Addr::new(192, 168, 0, 1), "server");
        check(&|c| c.subnet = "10.88.0.0/31".parse().unwrap(), "subnet");
        check(&|c| c.lease_secs = 0, "lease_secs");
        check(
            &|c| c.router = Some(Ipv4Addr::new(192, 168, 0, 1)),
            "router",
        );
        check(&|c| c.dns = vec![SERVER, Ipv4Addr::UNSPECIFIED], "dns[1]");
        check(&|c| c.mtu = Some(20), "mtu");
        check(&|c| c.domain = Some("bad domain".into()), "domain");
        check(
            &|c| c.search = vec!["ok.example".into(), "-bad".into()],
            "search[1]",
        );
        let sl = |n: u8, last: u8, h: Option<&str>| StaticLease {
            mac: mac(n),
            ip: ip(last),
            hostname: h.map(String::from),
        };
        check(
            &|c| c.static_leases = vec![sl(1, 10, None), sl(2, 10, None)],
            "static_leases[1].ip",
        );
        check(
            &|c| c.static_leases = vec![sl(1, 10, None), sl(1, 11, None)],
            "static_leases[1].mac",
        );
        check(
            &|c| {
                c.static_leases = vec![StaticLease {
                    mac: Mac::BROADCAST,
                    ip: ip(10),
                    hostname: None,
                }]
            },
            "static_leases[0].mac",
        );
        check(
            &|c| {
                c.static_leases = vec![StaticLease {
                    mac: mac(1),
                    ip: Ipv4Addr::new(10, 99, 0, 1),
                    hostname: None,
                }]
            },
            "static_leases[0].ip",
        );
        check(
            &|c| c.static_leases = vec![sl(1, 1, None)],
            "static_leases[0].ip",
        );
        check(
            &|c| c.static_leases = vec![sl(1, 10, Some("no way"))],
            "static_leases[0].hostname",
        );
        let e = DhcpServer::new({
            let mut c = base_cfg();
            c.range_end = Ipv4Addr::new(10, 99, 0, 2);
            c
        })
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid DHCP configuration: range_end: 10.99.0.2 is not a host address of \
             10.88.0.0/24 (network and broadcast excluded)"
        );
    }

    #[test]
    fn reserve_holds_an_address_for_a_mac_until_unreserved() {
        let mut s = server();
        let (a, b) = (mac(1), mac(2));
        let ip_a = s.reserve(a, None, 0).expect("reserved");
        assert!(s.config().range_start <= ip_a && ip_a <= s.config().range_end);
        // Same MAC again: same address; never expires; DHCP gives it to that MAC.
        assert_eq!(s.reserve(a, None, 10), Some(ip_a));
        let leases = s.leases(u64::MAX - 1);
        assert_eq!(leases.len(), 1);
        assert_eq!(leases[0].state, LeaseState::Reserved);
        let (got, _) = dora(&mut s, a, None, 1000);
        assert_eq!(got, ip_a);
        assert_eq!(s.leases(u64::MAX - 1)[0].state, LeaseState::Reserved);
        // Another MAC neither gets it by DHCP nor by reservation.
        let (got_b, _) = dora(&mut s, b, None, 2000);
        assert_ne!(got_b, ip_a);
        assert_eq!(s.reserve(b, Some(ip_a), 3000), None);
        // A wanted address outside the pool but inside the subnet is fine; outside is not.
        let mut c = base_cfg();
        c.range_end = Ipv4Addr::new(10, 88, 0, 100);
        let mut s2 = DhcpServer::new(c).expect("server");
        let out_of_pool = Ipv4Addr::new(10, 88, 0, 250);
        assert_eq!(s2.reserve(b, Some(out_of_pool), 0), Some(out_of_pool));
        assert_eq!(s2.reserve(a, Some(Ipv4Addr::new(10, 89, 0, 5)), 0), None);
        // Only the reserving MAC gives it back.
        assert!(!s.unreserve(ip_a, b));
        assert!(s.unreserve(ip_a, a));
        assert!(s.leases(5000).iter().all(|l| l.ip != ip_a));
    }
}
