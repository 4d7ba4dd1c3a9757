//! `dhcp_server`: sequences of messages through [`DhcpServer::handle`] with an advancing clock.
//!
//! Input: records `[op][len: u16 big-endian][len bytes of DHCP message]` (the last one may be
//! short). `op` bits 0-2 pick how far the clock moves before the message (0, 1 ms, 999 ms,
//! 10 s, 29.999 s, 30.001 s, 60 s = one lease, 600.001 s = past a decline hold); bit 3 calls
//! `expire` after it, bit 4 `drain_names`; bit 5 "repairs" the message first (op 1, Ethernet
//! hardware type, hlen 6, magic cookie) so mutations of valid messages keep reaching the state
//! machine. Cluster mode (the claims of `gateway/dhcp/claims.rs`): when the first record's bit
//! 6 is set the server hands out only claimed addresses; then every record with bit 6 first
//! changes the claims: bit 7 clear claims pool address `.2 + len % 5`, set gives the spares up
//! (even length) or all but one of them (odd length).
//!
//! The server: subnet 10.88.0.0/28, server .1, pool .2-.6 (5 addresses), a static lease
//! 02:00:00:00:00:aa → .10 named `fixed`, 60 s leases, router/DNS/MTU/domain/search options.
//!
//! Invariants, after every message:
//! - a reply decodes with dhcproto: a BOOTREPLY with the request's xid and chaddr, of type
//!   OFFER, ACK or NAK, between 300 bytes and the client's maximum message size (option 57,
//!   at least 576 bytes of datagram, minus 28); a NAK is broadcast with no address; an OFFER's
//!   or ACK's `yiaddr` is 0.0.0.0 (INFORM) or a host address of the subnet other than the
//!   server, in the pool or the client's static address; a unicast reply goes to the chaddr;
//! - `leases()` holds at most 5 dynamic leases (the pool) plus the static one, each a host of
//!   the subnet, dynamic ones inside the pool, no MAC twice, none expiring later than the lease
//!   time;
//! - in cluster mode every dynamic lease (offered, bound) is on a claimed address;
//! - name events form a ledger: an `Unregister` removes a name/address that is registered; at
//!   the end, expiring everything unregisters every name.

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder};
use ipnet::Ipv4Net;
use usernet::gateway::dhcp::{DhcpConfig, DhcpServer, LeaseState, NameEvent, ReplyTo, StaticLease};
use usernet::wire::Mac;

/// The served subnet.
pub const SUBNET: &str = "10.88.0.0/28";
/// The server (gateway) address.
pub const SERVER: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 1);
/// First pool address.
pub const POOL_START: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 2);
/// Last pool address.
pub const POOL_END: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 6);
/// The MAC with a static lease.
pub const STATIC_MAC: Mac = Mac([0x02, 0, 0, 0, 0, 0xaa]);
/// Its address.
pub const STATIC_IP: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 10);
/// Lease time, seconds.
pub const LEASE_SECS: u32 = 60;
/// The clock steps `op & 7` picks.
pub const STEPS_MS: [u64; 8] = [0, 1, 999, 10_000, 29_999, 30_001, 60_000, 600_001];

/// The server configuration of this target.
pub fn config() -> DhcpConfig {
    let subnet: Ipv4Net = SUBNET.parse().expect("subnet");
    let mut c = DhcpConfig::for_subnet(subnet, SERVER);
    c.range_start = POOL_START;
    c.range_end = POOL_END;
    c.lease_secs = LEASE_SECS;
    c.mtu = Some(1500);
    c.domain = Some("usernet".into());
    c.search = vec!["usernet".into(), "example.com".into()];
    c.static_leases = vec![StaticLease::new(
        STATIC_MAC,
        STATIC_IP,
        Some("fixed".into()),
    )];
    c
}

/// Splits an input into `(op, message)` records.
pub fn records(data: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    let mut rest = data;
    while let [op, tail @ ..] = rest {
        let (len, tail) = match tail {
            [a, b, t @ ..] => (usize::from(u16::from_be_bytes([*a, *b])), t),
            _ => (0, &[][..]),
        };
        let n = len.min(tail.len());
        out.push((*op, &tail[..n]));
        rest = &tail[n..];
    }
    out
}

/// Encodes records (for building seeds).
pub fn encode_records(recs: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (op, msg) in recs {
        out.push(*op);
        out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
        out.extend_from_slice(msg);
    }
    out
}

#[derive(Default)]
struct Ledger {
    registered: BTreeMap<(String, Ipv4Addr), usize>,
}

impl Ledger {
    fn apply(&mut self, events: &[NameEvent]) {
        for e in events {
            match e {
                NameEvent::Register { name, ip } => {
                    assert!(!name.is_empty() && name.len() <= 63, "bad name {name:?}");
                    *self.registered.entry((name.clone(), *ip)).or_default() += 1;
                }
                NameEvent::Unregister { name, ip } => {
                    let key = (name.clone(), *ip);
                    let n = self
                        .registered
                        .get_mut(&key)
                        .unwrap_or_else(|| panic!("Unregister of {key:?}, never registered"));
                    *n -= 1;
                    if *n == 0 {
                        self.registered.remove(&key);
                    }
                }
            }
        }
    }
}

fn in_pool(ip: Ipv4Addr) -> bool {
    (POOL_START..=POOL_END).contains(&ip)
}

fn check_reply(req_bytes: &[u8], payload: &[u8], to: ReplyTo) {
    // The server accepted the request, so its lengths and options passed the server's checks
    // (which keep dhcproto's debug assertions and chaddr slicing away).
    let req = Message::decode(&mut Decoder::new(req_bytes)).expect("accepted request decodes");
    let rep = Message::decode(&mut Decoder::new(payload))
        .unwrap_or_err_hex(payload, "reply does not decode with dhcproto");
    let chaddr: [u8; 6] = req.chaddr()[..6].try_into().expect("6-byte chaddr");
    let mac = Mac(chaddr);
    assert_eq!(rep.opcode(), Opcode::BootReply);
    assert_eq!(rep.xid(), req.xid());
    assert_eq!(&rep.chaddr()[..6], &chaddr[..]);
    let max_datagram = match req.opts().get(OptionCode::MaxMessageSize) {
        Some(DhcpOption::MaxMessageSize(n)) => (*n).max(576),
        _ => 576,
    };
    let max_len = usize::from(max_datagram) - 28;
    assert!(payload.len() >= 300, "reply of {} bytes", payload.len());
    assert!(
        payload.len() <= max_len.max(300),
        "reply of {} bytes over the client's limit {max_len}",
        payload.len()
    );
    let kind = rep.opts().msg_type().expect("reply has a message type");
    let y = rep.yiaddr();
    match kind {
        MessageType::Nak => {
            assert!(y.is_unspecified(), "NAK with yiaddr {y}");
            assert_eq!(to, ReplyTo::Broadcast, "NAK not broadcast");
        }
        MessageType::Offer | MessageType::Ack => {
            let net: Ipv4Net = SUBNET.parse().expect("subnet");
            if kind == MessageType::Offer || !y.is_unspecified() {
                assert!(
                    net.contains(&y) && y != net.network() && y != net.broadcast(),
                    "{kind:?} yiaddr {y} outside the subnet's hosts"
                );
                assert_ne!(y, SERVER, "{kind:?} gives away the server address");
                if mac == STATIC_MAC {
                    assert_eq!(y, STATIC_IP, "static client got {y}");
                } else {
                    assert!(in_pool(y), "{kind:?} yiaddr {y} outside the pool");
                }
            }
            assert_eq!(
                rep.opts().get(OptionCode::ServerIdentifier),
                Some(&DhcpOption::ServerIdentifier(SERVER))
            );
        }
        other => panic!("reply of type {other:?}"),
    }
    if let ReplyTo::Unicast { mac: to_mac, .. } = to {
        assert_eq!(to_mac, mac, "unicast reply to another MAC");
    }
}

trait OrHex<T> {
    fn unwrap_or_err_hex(self, bytes: &[u8], what: &str) -> T;
}

impl<T, E: std::fmt::Debug> OrHex<T> for Result<T, E> {
    fn unwrap_or_err_hex(self, bytes: &[u8], what: &str) -> T {
        match self {
            Ok(v) => v,
            Err(e) => panic!("{what}: {e:?}; bytes {bytes:02x?}"),
        }
    }
}

fn check_leases(srv: &DhcpServer, now: u64) {
    let net: Ipv4Net = SUBNET.parse().expect("subnet");
    let leases = srv.leases(now);
    let pool = (u32::from(POOL_END) - u32::from(POOL_START) + 1) as usize;
    let dynamic = leases.iter().filter(|l| !l.is_static).count();
    assert!(
        dynamic <= pool,
        "{dynamic} dynamic leases for a pool of {pool}"
    );
    assert!(leases.len() <= pool + 1, "{} leases", leases.len());
    let mut macs = HashSet::new();
    for l in &leases {
        assert!(macs.insert(l.mac), "{} holds two leases", l.mac);
        assert!(
            net.contains(&l.ip) && l.ip != net.network() && l.ip != net.broadcast(),
            "lease {} outside the subnet's hosts",
            l.ip
        );
        assert_ne!(l.ip, SERVER);
        if l.is_static {
            assert_eq!((l.mac, l.ip), (STATIC_MAC, STATIC_IP));
        } else {
            assert!(in_pool(l.ip), "dynamic lease {} outside the pool", l.ip);
            assert_ne!(l.mac, STATIC_MAC, "static client holds a dynamic lease");
        }
        assert!(l.expires_in_secs >= 1 && l.expires_in_secs <= u64::from(LEASE_SECS));
        if l.state == LeaseState::Offered {
            assert!(
                l.expires_in_secs <= 30,
                "offer held {} s",
                l.expires_in_secs
            );
        }
    }
}

/// Forces the fields `handle` checks first into their valid values.
fn repair(msg: &[u8]) -> Vec<u8> {
    let mut m = msg.to_vec();
    if m.len() >= 240 {
        m[0] = 1; // BOOTREQUEST
        m[1] = 1; // Ethernet
        m[2] = 6; // hlen
        m[236..240].copy_from_slice(&[99, 130, 83, 99]);
    }
    m
}

/// One input.
pub fn dhcp_server(data: &[u8]) {
    let mut srv = DhcpServer::new(config()).expect("valid config");
    let mut ledger = Ledger::default();
    let mut now: u64 = 1_000_000;
    let recs = records(data);
    let cluster = recs.first().is_some_and(|(op, _)| op & 0x40 != 0);
    if cluster {
        srv.restrict_to_claims();
    }
    for (op, msg) in recs {
        now += STEPS_MS[usize::from(op & 7)];
        if cluster && op & 0x40 != 0 {
            let ip = Ipv4Addr::from(u32::from(POOL_START) + (msg.len() % 5) as u32);
            if op & 0x80 == 0 {
                srv.add_claim(ip);
            } else if msg.len() % 2 == 0 {
                srv.drop_spare_claims(now);
            } else {
                srv.take_excess_spares(now, 1);
            }
        }
        let msg = if op & 0x20 != 0 {
            repair(msg)
        } else {
            msg.to_vec()
        };
        if let Ok(Some(out)) = srv.handle(&msg, now) {
            check_reply(&msg, &out.payload, out.to);
            ledger.apply(&out.names);
        }
        if op & 0x08 != 0 {
            ledger.apply(&srv.expire(now));
        }
        if op & 0x10 != 0 {
            ledger.apply(&srv.drain_names());
        }
        check_leases(&srv, now);
        if let Some(claimed) = srv.claims() {
            for l in srv.leases(now).iter().filter(|l| !l.is_static) {
                assert!(claimed.contains(&l.ip), "lease of {} not claimed", l.ip);
            }
        }
        if let Some(t) = srv.next_expiry() {
            // Anything already past is purged lazily; a future deadline is at most one lease
            // or one decline hold away.
            assert!(t <= now + 600_000, "next expiry {t} far after now {now}");
        }
    }
    // Everything expires eventually, and every name with it.
    let end = now + 1_000_000;
    ledger.apply(&srv.expire(end));
    assert!(srv.leases(end).is_empty(), "leases left after expiry");
    assert!(
        ledger.registered.is_empty(),
        "names still registered after every lease expired: {:?}",
        ledger.registered
    );
}
