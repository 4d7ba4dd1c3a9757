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
//!
//! # Where things are
//!
//! - this file: the public types (results, leases, counters, errors) and the server's state;
//! - `config.rs`: [`DhcpConfig`] and its validation ([`DhcpServer::new`]);
//! - `server.rs`: the message state machine ([`DhcpServer::handle`] and one handler per type);
//! - `pool.rs`: address choice, bindings, expiry, the MAC→IP memory, reservations
//!   ([`DhcpServer::reserve`], [`DhcpServer::unreserve`]) and [`DhcpServer::leases`];
//! - `options.rs`: the wire: request parsing and option checks, reply options and encoding.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use dhcproto::Name;
use serde::Serialize;

use crate::wire::Mac;

mod claims;
mod config;
mod options;
mod pool;
mod server;
#[cfg(test)]
mod testutil;

pub use config::{DhcpConfig, StaticLease};
pub use options::scan_options;

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

/// One binding of an address to a MAC.
#[derive(Debug, Clone)]
struct Binding {
    mac: Mac,
    state: LeaseState,
    expires_ms: u64,
    /// The registered DNS name (only ever set while bound).
    name: Option<String>,
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
    /// Cluster mode (see `claims.rs`): only these addresses, claimed in the cluster's store,
    /// are offered, acknowledged or reserved. `None`: the whole pool is this server's.
    claimed: Option<std::collections::BTreeSet<Ipv4Addr>>,
}
