//! VXLAN link (RFC 7348): the port's frames travel inside UDP datagrams between this host and
//! its remote VTEPs (other usernet instances, or Linux's `vxlan` driver), one VNI per port.
//!
//! # Theory of operation
//!
//! - **Sockets.** One UDP socket bound to `local:port` (default 4789) receives every datagram
//!   and is the descriptor the engine polls. A small pool of sockets bound to `local:0` sends:
//!   each has its own kernel-chosen source port (in the ephemeral range, 32768..61000 by
//!   default, as Linux's vxlan picks its source ports), and a hash of the inner flow (MACs,
//!   addresses, ports) picks one, so the underlay can spread flows (ECMP, RSS) while one flow
//!   keeps its order. A pool socket that would block gives way to the receive socket; if that
//!   blocks too the batch stops with the frame still queued, and the receive socket's
//!   writable edge resumes the engine. Every socket sets `IP_MTU_DISCOVER=IP_PMTUDISC_DO`
//!   (`IPV6_MTU_DISCOVER` over IPv6): no outer fragment ever leaves (RFC 7348 4.3).
//! - **Decapsulation** ([`decap`]): 8-byte header, flags exactly the I bit (0x08), the port's
//!   VNI; the outer source IP must be one of the remotes (any source port, as the kernel varies
//!   it). Everything else is dropped and counted by reason ([`VxlanStats::drops`]); nothing a
//!   sender does is fatal to the port. Inner frames over the inner MTU + 14 (+4 for one VLAN
//!   tag) are dropped too.
//! - **The VTEP table.** Like the kernel's vxlan FDB, the link keeps MAC -> VTEP, learned from
//!   the inner source MAC of each accepted frame and aged with the network's FDB aging time.
//!   On transmit, known unicast goes to its VTEP only; broadcast, multicast and unknown unicast
//!   go to every remote (head-end replication). Split horizon is the bridge's: it never sends a
//!   frame back out the port it came in on, so a frame from one VTEP never reaches another.
//! - **MTU.** Inner MTU = underlay MTU - 50 (IPv4) / 70 (IPv6), the underlay's being the MTU of
//!   the interface holding `local` (1500 if unknown), or `mtu` as given. Larger inner frames are
//!   dropped and counted before sending. [`LinkCaps`] says no transmit offloads, so GSO frames
//!   are segmented by the engine ([`crate::offload::adapt`]) before they get here.
//! - **Gateway stays local** (a multi-host network without a control plane): frames whose
//!   source is this host's gateway MAC never leave (its ARP replies, DHCP offers, RAs); frames
//!   arriving with that MAC as source, and DHCP requests (UDP to port 67) from remote guests,
//!   are dropped: each host's gateway serves its own guests.
//! - **Runtime.** [`VxlanShared`] is what the control plane keeps: remotes can be added and
//!   removed while the link runs (removing one forgets its MACs), and it answers the counters
//!   and the VTEP of a MAC for `ctl fdb`.

use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rustix::net::{RecvAncillaryBuffer, RecvFlags, SendAncillaryBuffer, SendFlags};
use serde::{Deserialize, Serialize};

use super::{Link, LinkCaps, LinkError, OpenError, RecvStats, SendStats};
use crate::frame::{Frame, FramePool};
use crate::wire::Mac;

/// The IANA VXLAN port.
pub const DEFAULT_PORT: u16 = 4789;
/// Length of the VXLAN header.
pub const HEADER_LEN: usize = 8;
/// The I flag: the VNI is valid (the only flag RFC 7348 defines).
pub const FLAG_I: u8 = 0x08;
/// Largest VNI (24 bits).
pub const MAX_VNI: u32 = 0x00ff_ffff;
/// Outer overhead over an IPv4 underlay: IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14.
pub const OVERHEAD_V4: u32 = 50;
/// Outer overhead over an IPv6 underlay: IPv6 40 + UDP 8 + VXLAN 8 + inner Ethernet 14.
pub const OVERHEAD_V6: u32 = 70;
/// Sending sockets in the pool (distinct outer source ports).
const TX_SOCKETS: usize = 8;
/// Most MACs the VTEP table holds; past it new MACs are not learned (they are flooded).
const MAX_MACS: usize = 16384;
const ETH_HLEN: usize = 14;

fn default_port() -> u16 {
    DEFAULT_PORT
}

/// The `vxlan` key of a port: `{ vni = 42, local = "192.0.2.1", remotes = ["192.0.2.2"],
/// port = 4789, mtu = 1450 }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct VxlanSpec {
    /// VXLAN network identifier (0..=16777215).
    pub vni: u32,
    /// The local underlay address: bound, and the outer source address.
    pub local: IpAddr,
    /// Remote VTEPs (same family as `local`): where floods go, and the only accepted senders.
    #[serde(default)]
    pub remotes: Vec<IpAddr>,
    /// UDP port, both bound and sent to (default 4789).
    #[serde(default = "default_port")]
    pub port: u16,
    /// Inner MTU (default: the underlay interface's MTU minus 50, or 70 over IPv6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

impl VxlanSpec {
    /// A spec for `vni` on `local`, no remotes yet, port 4789, MTU from the underlay.
    pub fn new(vni: u32, local: IpAddr) -> Self {
        VxlanSpec {
            vni,
            local,
            remotes: Vec::new(),
            port: DEFAULT_PORT,
            mtu: None,
        }
    }

    /// Checks the values; the error is `(field suffix, reason)`, e.g. `("vni", "...")`.
    pub fn check(&self) -> Result<(), (String, String)> {
        if self.vni > MAX_VNI {
            return Err(("vni".into(), format!("{} is over {MAX_VNI}", self.vni)));
        }
        if self.port == 0 {
            return Err(("port".into(), "0 is not a UDP port".into()));
        }
        if self.local.is_unspecified() || self.local.is_multicast() {
            return Err((
                "local".into(),
                format!("{} is not a unicast address of this host", self.local),
            ));
        }
        if let Some(m) = self.mtu
            && !(68..=65535).contains(&m)
        {
            return Err(("mtu".into(), format!("{m} is outside 68..=65535")));
        }
        for (i, r) in self.remotes.iter().enumerate() {
            check_remote(self.local, *r).map_err(|e| (format!("remotes[{i}]"), e))?;
            if self.remotes[..i].contains(r) {
                return Err((format!("remotes[{i}]"), format!("{r} is listed twice")));
            }
        }
        Ok(())
    }

    fn overhead(&self) -> u32 {
        if self.local.is_ipv4() {
            OVERHEAD_V4
        } else {
            OVERHEAD_V6
        }
    }
}

/// A remote VTEP address is acceptable beside `local`: same family, unicast, not `local`.
pub fn check_remote(local: IpAddr, r: IpAddr) -> Result<(), String> {
    if r.is_ipv4() != local.is_ipv4() {
        return Err(format!(
            "{r} is not of the same family as local address {local}"
        ));
    }
    if r.is_unspecified() || r.is_multicast() || r == IpAddr::V4(Ipv4Addr::BROADCAST) {
        return Err(format!(
            "{r} is not a unicast address (multicast groups are not supported: list the remotes)"
        ));
    }
    if r == local {
        return Err(format!("{r} is the local address"));
    }
    Ok(())
}

/// Why a datagram was not a VXLAN frame of this VNI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecapError {
    /// Shorter than the VXLAN header plus an Ethernet header.
    #[error("truncated VXLAN datagram")]
    Truncated,
    /// Flags other than exactly the I bit (or reserved bits set).
    #[error("bad VXLAN flags")]
    Flags,
    /// Another VNI.
    #[error("VNI {0} is not this port's")]
    Vni(u32),
}

/// The VXLAN header for `vni` (flags = I, reserved bits zero).
pub fn encap(vni: u32) -> [u8; HEADER_LEN] {
    let v = (vni & MAX_VNI).to_be_bytes();
    [FLAG_I, 0, 0, 0, v[1], v[2], v[3], 0]
}

/// Checks a VXLAN header (the first 8 bytes of a datagram) against `vni`.
pub fn check_header(h: &[u8], vni: u32) -> Result<(), DecapError> {
    let Some(h) = h.get(..HEADER_LEN) else {
        return Err(DecapError::Truncated);
    };
    // As Linux: the flags word must be exactly the I bit (no GBP/GPE extensions here).
    if h[..4] != [FLAG_I, 0, 0, 0] {
        return Err(DecapError::Flags);
    }
    let got = u32::from_be_bytes([0, h[4], h[5], h[6]]);
    if got != vni {
        return Err(DecapError::Vni(got));
    }
    Ok(())
}

/// Decapsulates one datagram for `vni`: the inner Ethernet frame, or why not. Pure (no state):
/// what a fuzz target calls.
pub fn decap(datagram: &[u8], vni: u32) -> Result<&[u8], DecapError> {
    check_header(datagram, vni)?;
    let inner = &datagram[HEADER_LEN..];
    if inner.len() < ETH_HLEN {
        return Err(DecapError::Truncated);
    }
    Ok(inner)
}

/// Largest inner frame for an inner `mtu`: Ethernet header, plus one VLAN tag if `frame` has one.
fn inner_limit(frame: &[u8], mtu: u32) -> usize {
    let tagged = frame.len() >= ETH_HLEN && matches!(&frame[12..14], [0x81, 0x00] | [0x88, 0xa8]);
    mtu as usize + ETH_HLEN + if tagged { 4 } else { 0 }
}

/// The L3 part of a frame after up to two VLAN tags: (ethertype, payload).
fn l3(frame: &[u8]) -> Option<(u16, &[u8])> {
    let mut off = 12;
    loop {
        let et = u16::from_be_bytes([*frame.get(off)?, *frame.get(off + 1)?]);
        if (et == 0x8100 || et == 0x88a8) && off < 20 {
            off += 4;
            continue;
        }
        return Some((et, frame.get(off + 2..)?));
    }
}

/// A DHCPv4 client-to-server message (IPv4 UDP to port 67, first fragment).
fn is_dhcp_to_server(frame: &[u8]) -> bool {
    let Some((0x0800, ip)) = l3(frame) else {
        return false;
    };
    if ip.len() < 20 || ip[0] >> 4 != 4 || ip[9] != 17 {
        return false;
    }
    let frag = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff;
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    frag == 0 && ip.get(ihl + 2..ihl + 4) == Some(&[0, 67][..])
}

/// FNV-1a hash of the inner flow: MACs, ethertype, and for IP its addresses, protocol and
/// TCP/UDP ports (the fields Linux's `skb_get_hash` takes). Same flow, same source port.
pub fn flow_hash(frame: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    let mut eat = |b: &[u8]| {
        for x in b {
            h ^= u32::from(*x);
            h = h.wrapping_mul(0x0100_0193);
        }
    };
    eat(frame.get(..12).unwrap_or(frame));
    if let Some((et, ip)) = l3(frame) {
        eat(&et.to_be_bytes());
        let (addrs, proto, l4) = match et {
            0x0800 if ip.len() >= 20 => {
                let ihl = usize::from(ip[0] & 0x0f) * 4;
                let frag = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff;
                (
                    &ip[12..20],
                    ip[9],
                    if frag == 0 { ip.get(ihl..) } else { None },
                )
            }
            0x86dd if ip.len() >= 40 => (&ip[8..40], ip[6], ip.get(40..)),
            _ => (&[][..], 0, None),
        };
        eat(addrs);
        eat(&[proto]);
        if matches!(proto, 6 | 17)
            && let Some(ports) = l4.and_then(|l| l.get(..4))
        {
            eat(ports);
        }
    }
    h
}

/// Counters of a VXLAN port.
#[derive(Debug, Default)]
struct Counters {
    rx_frames: AtomicU64,
    rx_bytes: AtomicU64,
    tx_frames: AtomicU64,
    tx_datagrams: AtomicU64,
    tx_bytes: AtomicU64,
    truncated: AtomicU64,
    bad_flags: AtomicU64,
    wrong_vni: AtomicU64,
    unknown_vtep: AtomicU64,
    rx_oversize: AtomicU64,
    tx_oversize: AtomicU64,
    rx_gateway_mac: AtomicU64,
    tx_gateway_mac: AtomicU64,
    rx_dhcp: AtomicU64,
    no_remote: AtomicU64,
    tx_errors: AtomicU64,
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A VXLAN port's counters, as shown by `ctl stats` (`vxlan` of the port's row).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct VxlanStats {
    /// VNI.
    pub vni: u32,
    /// Inner MTU.
    pub mtu: u32,
    /// Frames decapsulated and handed to the bridge.
    pub rx_frames: u64,
    /// Their bytes (inner frames).
    pub rx_bytes: u64,
    /// Frames sent (each once, however many remotes it went to).
    pub tx_frames: u64,
    /// Datagrams sent (a flooded frame counts once per remote).
    pub tx_datagrams: u64,
    /// Inner bytes sent, per datagram.
    pub tx_bytes: u64,
    /// Drops by reason: `truncated`, `bad_flags`, `wrong_vni`, `unknown_vtep`, `rx_oversize`,
    /// `tx_oversize`, `rx_gateway_mac`, `tx_gateway_mac`, `rx_dhcp`, `no_remote`, `tx_errors`.
    pub drops: std::collections::BTreeMap<String, u64>,
}

/// A remote VTEP, as listed by `ctl vxlan NAME remotes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RemoteInfo {
    /// The VTEP's address.
    pub remote: IpAddr,
    /// MACs learned behind it.
    pub macs: usize,
    /// Frames accepted from it.
    pub rx_frames: u64,
    /// Datagrams sent to it (floods included).
    pub tx_frames: u64,
}

#[derive(Debug)]
struct Remote {
    ip: IpAddr,
    rx: u64,
    tx: u64,
}

#[derive(Debug, Clone, Copy)]
struct MacEntry {
    vtep: IpAddr,
    seen: Instant,
}

#[derive(Debug)]
struct Table {
    remotes: Vec<Remote>,
    macs: HashMap<Mac, MacEntry>,
}

/// What a VXLAN port shares with the control plane: its remotes, its VTEP table and counters.
#[derive(Debug)]
pub struct VxlanShared {
    vni: u32,
    local: IpAddr,
    port: u16,
    mtu: u32,
    /// Entry lifetime; `None`: never age.
    aging: Option<Duration>,
    table: Mutex<Table>,
    counters: Counters,
}

impl VxlanShared {
    fn new(spec: &VxlanSpec, mtu: u32, aging_ms: u64) -> Self {
        VxlanShared {
            vni: spec.vni,
            local: spec.local,
            port: spec.port,
            mtu,
            aging: (aging_ms > 0).then(|| Duration::from_millis(aging_ms)),
            table: Mutex::new(Table {
                remotes: spec
                    .remotes
                    .iter()
                    .map(|ip| Remote {
                        ip: *ip,
                        rx: 0,
                        tx: 0,
                    })
                    .collect(),
                macs: HashMap::new(),
            }),
            counters: Counters::default(),
        }
    }

    /// The inner MTU.
    pub fn mtu(&self) -> u32 {
        self.mtu
    }

    /// The VNI.
    pub fn vni(&self) -> u32 {
        self.vni
    }

    fn fresh(&self, e: &MacEntry, now: Instant) -> bool {
        self.aging
            .is_none_or(|a| now.saturating_duration_since(e.seen) < a)
    }

    /// The remotes, with their MAC counts and counters.
    pub fn remotes(&self) -> Vec<RemoteInfo> {
        let now = Instant::now();
        let t = self.table.lock();
        t.remotes
            .iter()
            .map(|r| RemoteInfo {
                remote: r.ip,
                macs: t
                    .macs
                    .values()
                    .filter(|e| e.vtep == r.ip && self.fresh(e, now))
                    .count(),
                rx_frames: r.rx,
                tx_frames: r.tx,
            })
            .collect()
    }

    /// Adds a remote VTEP; the error names why not (the caller names the field).
    pub fn add_remote(&self, ip: IpAddr) -> Result<(), String> {
        check_remote(self.local, ip)?;
        let mut t = self.table.lock();
        if t.remotes.iter().any(|r| r.ip == ip) {
            return Err(format!("{ip} is already a remote"));
        }
        t.remotes.push(Remote { ip, rx: 0, tx: 0 });
        Ok(())
    }

    /// Removes a remote VTEP and forgets the MACs learned behind it.
    pub fn remove_remote(&self, ip: IpAddr) -> Result<(), String> {
        let mut t = self.table.lock();
        let before = t.remotes.len();
        t.remotes.retain(|r| r.ip != ip);
        if t.remotes.len() == before {
            return Err(format!("{ip} is not a remote"));
        }
        t.macs.retain(|_, e| e.vtep != ip);
        Ok(())
    }

    /// The VTEP `mac` was last seen behind, while its entry is fresh.
    pub fn vtep_of(&self, mac: Mac) -> Option<IpAddr> {
        let now = Instant::now();
        let t = self.table.lock();
        t.macs
            .get(&mac)
            .filter(|e| self.fresh(e, now))
            .map(|e| e.vtep)
    }

    /// The counters.
    pub fn stats(&self) -> VxlanStats {
        let c = &self.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let drops = [
            ("truncated", &c.truncated),
            ("bad_flags", &c.bad_flags),
            ("wrong_vni", &c.wrong_vni),
            ("unknown_vtep", &c.unknown_vtep),
            ("rx_oversize", &c.rx_oversize),
            ("tx_oversize", &c.tx_oversize),
            ("rx_gateway_mac", &c.rx_gateway_mac),
            ("tx_gateway_mac", &c.tx_gateway_mac),
            ("rx_dhcp", &c.rx_dhcp),
            ("no_remote", &c.no_remote),
            ("tx_errors", &c.tx_errors),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), g(v)))
        .collect();
        VxlanStats {
            vni: self.vni,
            mtu: self.mtu,
            rx_frames: g(&c.rx_frames),
            rx_bytes: g(&c.rx_bytes),
            tx_frames: g(&c.tx_frames),
            tx_datagrams: g(&c.tx_datagrams),
            tx_bytes: g(&c.tx_bytes),
            drops,
        }
    }

    /// Accepts a datagram from `src` carrying an inner frame with source `mac`: false (counted)
    /// if `src` is not a remote; learns `mac` behind it.
    fn admit(&self, src: IpAddr, mac: Mac, now: Instant) -> bool {
        let mut t = self.table.lock();
        let Some(r) = t.remotes.iter_mut().find(|r| r.ip == src) else {
            inc(&self.counters.unknown_vtep);
            return false;
        };
        r.rx += 1;
        if mac.is_valid_source() && (t.macs.len() < MAX_MACS || t.macs.contains_key(&mac)) {
            t.macs.insert(
                mac,
                MacEntry {
                    vtep: src,
                    seen: now,
                },
            );
        }
        true
    }

    /// Where a frame to `dst` goes: its VTEP if known (and still a remote), else every remote.
    fn destinations(&self, dst: Mac, now: Instant, out: &mut Vec<SocketAddr>) {
        out.clear();
        let t = self.table.lock();
        if !dst.is_multicast()
            && let Some(e) = t.macs.get(&dst)
            && self.fresh(e, now)
            && t.remotes.iter().any(|r| r.ip == e.vtep)
        {
            out.push(SocketAddr::new(e.vtep, self.port));
            return;
        }
        out.extend(t.remotes.iter().map(|r| SocketAddr::new(r.ip, self.port)));
    }

    fn sent_to(&self, ip: IpAddr) {
        let mut t = self.table.lock();
        if let Some(r) = t.remotes.iter_mut().find(|r| r.ip == ip) {
            r.tx += 1;
        }
    }

    fn sweep(&self, now: Instant) {
        if self.aging.is_some() {
            let mut t = self.table.lock();
            t.macs.retain(|_, e| self.fresh(e, now));
        }
    }
}

/// A VXLAN port's link. See the module docs.
pub struct VxlanLink {
    shared: Arc<VxlanShared>,
    rx: UdpSocket,
    tx: Vec<UdpSocket>,
    hdr: [u8; HEADER_LEN],
    gw_mac: Option<Mac>,
    max_frame: usize,
    /// Destinations of the front frame of the queue, and how many it was sent to already.
    dests: Vec<SocketAddr>,
    sent: usize,
    started: bool,
    last_sweep: Instant,
    what: String,
}

impl std::fmt::Debug for VxlanLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VxlanLink")
            .field("vni", &self.shared.vni)
            .field("local", &self.shared.local)
            .field("port", &self.shared.port)
            .finish()
    }
}

/// The MTU of the underlay interface holding `local`, if it can be found.
fn underlay_mtu(local: IpAddr) -> Option<u32> {
    super::rtnl::Rtnl::open()
        .and_then(|mut r| r.mtu_of_address(local))
        .ok()
        .flatten()
}

fn udp_socket(addr: SocketAddr, what: &str) -> Result<UdpSocket, OpenError> {
    let s =
        UdpSocket::bind(addr).map_err(|e| OpenError::new(format!("{what}: binding {addr}"), e))?;
    s.set_nonblocking(true)
        .map_err(|e| OpenError::new(format!("{what}: non-blocking"), e))?;
    // RFC 7348 4.3: a VTEP must not fragment; an oversize datagram fails with EMSGSIZE.
    let df = if addr.is_ipv4() {
        rustix::net::sockopt::set_ip_mtu_discover(
            &s,
            rustix::net::sockopt::Ipv4PathMtuDiscovery::DO,
        )
    } else {
        rustix::net::sockopt::set_ipv6_mtu_discover(
            &s,
            rustix::net::sockopt::Ipv6PathMtuDiscovery::DO,
        )
    };
    df.map_err(|e| OpenError::new(format!("{what}: setting don't-fragment"), e.into()))?;
    // Room for bursts; best effort.
    let _ = rustix::net::sockopt::set_socket_send_buffer_size(&s, 1 << 20);
    Ok(s)
}

impl VxlanLink {
    /// Binds the sockets for `spec`. `aging_ms` is the network's FDB aging (0 = never);
    /// `gw_mac` the local gateway's MAC (its frames never leave); `what` names the port in logs.
    pub fn open(
        spec: &VxlanSpec,
        aging_ms: u64,
        gw_mac: Option<Mac>,
        what: &str,
    ) -> Result<(VxlanLink, Arc<VxlanShared>), OpenError> {
        let mtu = match spec.mtu {
            Some(m) => m,
            None => underlay_mtu(spec.local)
                .unwrap_or(1500)
                .saturating_sub(spec.overhead())
                .max(68),
        };
        let rx = udp_socket(SocketAddr::new(spec.local, spec.port), what)?;
        let _ = rustix::net::sockopt::set_socket_recv_buffer_size(&rx, 4 << 20);
        let mut tx = Vec::with_capacity(TX_SOCKETS);
        for _ in 0..TX_SOCKETS {
            let s = udp_socket(SocketAddr::new(spec.local, 0), what)?;
            // Nothing is ever read from the sending sockets: keep their receive queues tiny.
            let _ = rustix::net::sockopt::set_socket_recv_buffer_size(&s, 1);
            tx.push(s);
        }
        let shared = Arc::new(VxlanShared::new(spec, mtu, aging_ms));
        let link = VxlanLink {
            shared: shared.clone(),
            rx,
            tx,
            hdr: encap(spec.vni),
            gw_mac,
            max_frame: mtu as usize + ETH_HLEN + 4,
            dests: Vec::new(),
            sent: 0,
            started: false,
            last_sweep: Instant::now(),
            what: what.to_string(),
        };
        tracing::info!(port = %what, vni = spec.vni, local = %spec.local, mtu, "VXLAN port open");
        Ok((link, shared))
    }

    /// The state shared with the control plane.
    pub fn shared(&self) -> &Arc<VxlanShared> {
        &self.shared
    }

    /// The address the receive socket is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.rx.local_addr()
    }

    fn maybe_sweep(&mut self, now: Instant) {
        if now.saturating_duration_since(self.last_sweep) >= Duration::from_secs(1) {
            self.last_sweep = now;
            self.shared.sweep(now);
        }
    }

    /// Checks one received inner frame; true: hand it to the bridge.
    fn accept(&self, src: IpAddr, inner: &[u8], now: Instant) -> bool {
        let c = &self.shared.counters;
        if inner.len() > inner_limit(inner, self.shared.mtu) {
            inc(&c.rx_oversize);
            return false;
        }
        let mut m = [0u8; 6];
        m.copy_from_slice(&inner[6..12]);
        let smac = Mac(m);
        if !self.shared.admit(src, smac, now) {
            return false;
        }
        if self.gw_mac == Some(smac) {
            inc(&c.rx_gateway_mac);
            return false;
        }
        if self.gw_mac.is_some() && is_dhcp_to_server(inner) {
            inc(&c.rx_dhcp);
            return false;
        }
        true
    }

    /// Sends the front frame to `dest` from the socket the flow hash picks; `WouldBlock` when
    /// both it and the receive socket would block.
    fn send_one(&self, dest: SocketAddr, data: &[u8], hash: u32) -> io::Result<()> {
        let iov = [IoSlice::new(&self.hdr), IoSlice::new(data)];
        let flags = SendFlags::DONTWAIT | SendFlags::NOSIGNAL;
        let pick = &self.tx[hash as usize % self.tx.len()];
        for s in [pick, &self.rx] {
            loop {
                match rustix::net::sendmsg_addr(
                    s,
                    &dest,
                    &iov,
                    &mut SendAncillaryBuffer::default(),
                    flags,
                ) {
                    Ok(_) => return Ok(()),
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(rustix::io::Errno::AGAIN) => break,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Err(io::ErrorKind::WouldBlock.into())
    }
}

impl Link for VxlanLink {
    fn kind(&self) -> &'static str {
        "vxlan"
    }

    fn as_raw_fd(&self) -> RawFd {
        self.rx.as_raw_fd()
    }

    fn caps(&self) -> LinkCaps {
        LinkCaps {
            vnet_hdr: false,
            max_frame: self.max_frame,
            ..LinkCaps::default()
        }
    }

    fn recv_batch(
        &mut self,
        pool: &FramePool,
        out: &mut Vec<Frame>,
        max: usize,
    ) -> Result<RecvStats, LinkError> {
        let mut st = RecvStats::default();
        let now = Instant::now();
        self.maybe_sweep(now);
        let c = &self.shared.counters;
        // Bound the reads so a stream of dropped datagrams cannot hold the loop.
        let mut reads_left = max.saturating_mul(4).saturating_add(16);
        while st.frames < max && reads_left > 0 {
            reads_left -= 1;
            let mut frame = pool.alloc();
            let mut hdr = [0u8; HEADER_LEN];
            let (res, cap) = {
                let area = frame.recv_area(0);
                let cap = area.len();
                let mut iov = [IoSliceMut::new(&mut hdr), IoSliceMut::new(area)];
                let res = rustix::net::recvmsg(
                    &self.rx,
                    &mut iov,
                    &mut RecvAncillaryBuffer::default(),
                    RecvFlags::TRUNC | RecvFlags::DONTWAIT,
                );
                (res, cap)
            };
            let msg = match res {
                Ok(m) => m,
                Err(rustix::io::Errno::AGAIN) => {
                    st.drained = true;
                    break;
                }
                Err(rustix::io::Errno::INTR) => continue,
                // A pending ICMP error from an earlier send (port unreachable): not fatal.
                Err(
                    rustix::io::Errno::CONNREFUSED
                    | rustix::io::Errno::HOSTUNREACH
                    | rustix::io::Errno::NETUNREACH
                    | rustix::io::Errno::MSGSIZE,
                ) => continue,
                Err(e) => {
                    let e = super::classify(e.into());
                    if e.is_fatal() || st.frames == 0 {
                        return Err(e);
                    }
                    break;
                }
            };
            let Some(src) = msg
                .address
                .and_then(|a| SocketAddr::try_from(a).ok())
                .map(|a| canonical(a.ip()))
            else {
                inc(&c.unknown_vtep);
                continue;
            };
            let n = msg.bytes;
            if n < HEADER_LEN + ETH_HLEN {
                // Not even the header (or no Ethernet header inside): whatever its flags.
                if n < HEADER_LEN || check_header(&hdr, self.shared.vni).is_ok() {
                    inc(&c.truncated);
                    continue;
                }
            }
            match check_header(&hdr, self.shared.vni) {
                Ok(()) => {}
                Err(DecapError::Truncated) => {
                    inc(&c.truncated);
                    continue;
                }
                Err(DecapError::Flags) => {
                    inc(&c.bad_flags);
                    continue;
                }
                Err(DecapError::Vni(_)) => {
                    inc(&c.wrong_vni);
                    continue;
                }
            }
            let inner = n - HEADER_LEN;
            if inner > cap {
                inc(&c.rx_oversize);
                st.oversize += 1;
                continue;
            }
            frame.set_received(inner);
            if !self.accept(src, frame.data(), now) {
                continue;
            }
            c.rx_frames.fetch_add(1, Ordering::Relaxed);
            c.rx_bytes.fetch_add(inner as u64, Ordering::Relaxed);
            out.push(frame);
            st.frames += 1;
        }
        Ok(st)
    }

    fn send_batch(&mut self, queue: &mut VecDeque<Frame>) -> Result<SendStats, LinkError> {
        let mut st = SendStats::default();
        let now = Instant::now();
        self.maybe_sweep(now);
        while let Some(f) = queue.front() {
            let data = f.data();
            let c = &self.shared.counters;
            if !self.started {
                if data.len() < ETH_HLEN {
                    queue.pop_front();
                    st.errors += 1;
                    continue;
                }
                if data.len() > inner_limit(data, self.shared.mtu) {
                    inc(&c.tx_oversize);
                    queue.pop_front();
                    st.errors += 1;
                    continue;
                }
                let mut m = [0u8; 6];
                m.copy_from_slice(&data[6..12]);
                if self.gw_mac == Some(Mac(m)) {
                    // This host's gateway serves this host's guests only.
                    inc(&c.tx_gateway_mac);
                    queue.pop_front();
                    continue;
                }
                m.copy_from_slice(&data[..6]);
                let mut dests = std::mem::take(&mut self.dests);
                self.shared.destinations(Mac(m), now, &mut dests);
                self.dests = dests;
                if self.dests.is_empty() {
                    inc(&c.no_remote);
                    queue.pop_front();
                    st.errors += 1;
                    continue;
                }
                self.started = true;
                self.sent = 0;
            }
            let hash = flow_hash(data);
            while self.sent < self.dests.len() {
                let dest = self.dests[self.sent];
                match self.send_one(dest, data, hash) {
                    Ok(()) => {
                        inc(&c.tx_datagrams);
                        c.tx_bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                        self.shared.sent_to(dest.ip());
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(st),
                    Err(e) => {
                        inc(&c.tx_errors);
                        tracing::trace!(port = %self.what, %dest, error = %e, "VXLAN send failed");
                    }
                }
                self.sent += 1;
            }
            inc(&c.tx_frames);
            st.frames += 1;
            st.bytes += data.len();
            self.started = false;
            queue.pop_front();
        }
        Ok(st)
    }
}

/// An IPv4-mapped IPv6 source as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eth(dst: [u8; 6], src: [u8; 6], et: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        f.extend_from_slice(&et.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn encap_decap_round_trip_and_refusals() {
        let h = encap(42);
        assert_eq!(h, [0x08, 0, 0, 0, 0, 0, 42, 0]);
        assert_eq!(encap(MAX_VNI)[4..7], [0xff, 0xff, 0xff]);
        let inner = eth([0xff; 6], [2, 0, 0, 0, 0, 1], 0x0806, &[0; 28]);
        let mut d = h.to_vec();
        d.extend_from_slice(&inner);
        assert_eq!(decap(&d, 42), Ok(&inner[..]));
        assert_eq!(decap(&d, 43), Err(DecapError::Vni(42)));
        assert_eq!(decap(&d[..7], 42), Err(DecapError::Truncated));
        assert_eq!(decap(&d[..8 + 13], 42), Err(DecapError::Truncated));
        assert_eq!(decap(&[], 42), Err(DecapError::Truncated));
        let mut bad = d.clone();
        bad[0] = 0;
        assert_eq!(decap(&bad, 42), Err(DecapError::Flags));
        bad[0] = 0x88; // G bit (GBP) too
        assert_eq!(decap(&bad, 42), Err(DecapError::Flags));
        let mut bad = d.clone();
        bad[2] = 1; // reserved
        assert_eq!(decap(&bad, 42), Err(DecapError::Flags));
        // The last reserved byte is ignored on receipt (RFC 7348).
        let mut ok = d.clone();
        ok[7] = 0xaa;
        assert!(decap(&ok, 42).is_ok());
    }

    #[test]
    fn decap_never_panics_on_any_short_input() {
        let mut buf = Vec::new();
        for n in 0..64u8 {
            buf.push(n.wrapping_mul(37));
            let _ = decap(&buf, 42);
            let _ = flow_hash(&buf);
            let _ = is_dhcp_to_server(&buf);
            let _ = inner_limit(&buf, 1450);
        }
    }

    fn ipv4_udp(src_port: u16, dst_port: u16) -> Vec<u8> {
        let mut ip = vec![
            0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 2, 10, 0, 0, 3,
        ];
        ip.extend_from_slice(&src_port.to_be_bytes());
        ip.extend_from_slice(&dst_port.to_be_bytes());
        ip.extend_from_slice(&[0, 8, 0, 0]);
        ip
    }

    #[test]
    fn dhcp_requests_and_vlan_limits_are_recognised() {
        let f = eth([0xff; 6], [2, 0, 0, 0, 0, 1], 0x0800, &ipv4_udp(68, 67));
        assert!(is_dhcp_to_server(&f));
        let f = eth([0xff; 6], [2, 0, 0, 0, 0, 1], 0x0800, &ipv4_udp(67, 68));
        assert!(!is_dhcp_to_server(&f));
        let mut tagged = eth([0xff; 6], [2, 0, 0, 0, 0, 1], 0x8100, &[0, 10, 0x08, 0x00]);
        tagged.extend_from_slice(&ipv4_udp(68, 67));
        assert!(is_dhcp_to_server(&tagged));
        assert_eq!(inner_limit(&tagged, 1450), 1468);
        assert_eq!(inner_limit(&f, 1450), 1464);
    }

    #[test]
    fn flow_hash_follows_the_flow() {
        let a = eth([2; 6], [4; 6], 0x0800, &ipv4_udp(1000, 53));
        let b = eth([2; 6], [4; 6], 0x0800, &ipv4_udp(1001, 53));
        assert_eq!(flow_hash(&a), flow_hash(&a.clone()));
        assert_ne!(flow_hash(&a), flow_hash(&b));
        // The payload does not matter.
        let mut c = a.clone();
        c.extend_from_slice(&[9; 100]);
        assert_eq!(flow_hash(&a), flow_hash(&c));
    }

    #[test]
    fn spec_checks_name_the_field() {
        let local: IpAddr = "192.0.2.1".parse().expect("ip");
        let mut s = VxlanSpec::new(42, local);
        assert!(s.check().is_ok());
        s.vni = MAX_VNI + 1;
        assert_eq!(s.check().map_err(|e| e.0), Err("vni".to_string()));
        s.vni = 1;
        s.remotes = vec![
            "192.0.2.2".parse().expect("ip"),
            "2001:db8::1".parse().expect("ip"),
        ];
        assert_eq!(s.check().map_err(|e| e.0), Err("remotes[1]".to_string()));
        s.remotes = vec!["192.0.2.2".parse().expect("ip"); 2];
        assert_eq!(s.check().map_err(|e| e.0), Err("remotes[1]".to_string()));
        s.remotes = vec![local];
        assert_eq!(s.check().map_err(|e| e.0), Err("remotes[0]".to_string()));
        s.remotes = vec!["239.1.1.1".parse().expect("ip")];
        assert!(s.check().is_err());
        s.remotes.clear();
        s.mtu = Some(20);
        assert_eq!(s.check().map_err(|e| e.0), Err("mtu".to_string()));
    }

    #[test]
    fn default_mtu_is_the_underlay_interfaces_minus_the_overhead() {
        let lo: u32 = std::fs::read_to_string("/sys/class/net/lo/mtu")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(65536);
        for (addr, overhead) in [("127.0.0.1", OVERHEAD_V4), ("::1", OVERHEAD_V6)] {
            let mut s = VxlanSpec::new(1, addr.parse().expect("ip"));
            s.port = 0;
            let Ok((l, sh)) = VxlanLink::open(&s, 0, None, "t") else {
                continue; // no IPv6 here
            };
            assert_eq!(sh.mtu(), lo - overhead, "{addr}");
            assert_eq!(l.caps().max_frame, (lo - overhead) as usize + 18);
        }
    }

    fn pair() -> (VxlanLink, VxlanLink, FramePool) {
        let lo: IpAddr = "127.0.0.1".parse().expect("ip");
        let lo2: IpAddr = "127.0.0.2".parse().expect("ip");
        let mut a = VxlanSpec::new(7, lo);
        a.port = 0;
        a.mtu = Some(1450);
        let mut b = VxlanSpec::new(7, lo2);
        b.port = 0;
        b.mtu = Some(1450);
        let (la, _) = VxlanLink::open(&a, 300_000, None, "a").expect("a");
        let (lb, _) = VxlanLink::open(&b, 300_000, None, "b").expect("b");
        (la, lb, FramePool::new(1522, 64))
    }

    #[test]
    fn frames_cross_between_two_links_and_strangers_are_counted() {
        // Bound to port 0: a test-only setup where each side's port differs; send by hand.
        let (a, mut b, pool) = pair();
        let pb = b.local_addr().expect("addr").port();
        a.shared
            .add_remote("127.0.0.2".parse().expect("ip"))
            .expect("add");
        b.shared
            .add_remote("127.0.0.1".parse().expect("ip"))
            .expect("add");
        // The links send to their own port number: point each at the other's by hand.
        let send = |from: &UdpSocket, to: u16, d: &[u8]| {
            from.send_to(d, ("127.0.0.2", to)).expect("send");
        };
        let inner = eth([0xff; 6], [2, 0, 0, 0, 0, 0xa], 0x0806, &[0; 28]);
        let mut d = encap(7).to_vec();
        d.extend_from_slice(&inner);
        send(&a.tx[0], pb, &d);
        // Wrong VNI, bad flags, truncated, oversize.
        let mut w = encap(8).to_vec();
        w.extend_from_slice(&inner);
        send(&a.tx[0], pb, &w);
        let mut f = d.clone();
        f[0] = 0x0c;
        send(&a.tx[0], pb, &f);
        send(&a.tx[0], pb, &d[..5]);
        let mut big = encap(7).to_vec();
        big.extend_from_slice(&eth([2; 6], [2, 0, 0, 0, 0, 0xa], 0x0800, &[0; 1500]));
        send(&a.tx[0], pb, &big);
        // A stranger (127.0.0.3 is not a remote).
        let s = UdpSocket::bind("127.0.0.3:0").expect("stranger");
        send(&s, pb, &d);
        std::thread::sleep(Duration::from_millis(50));
        let mut out = Vec::new();
        let st = b.recv_batch(&pool, &mut out, 64).expect("recv");
        assert_eq!(st.frames, 1);
        assert_eq!(out[0].data(), &inner[..]);
        let stats = b.shared.stats();
        for k in [
            "wrong_vni",
            "bad_flags",
            "truncated",
            "rx_oversize",
            "unknown_vtep",
        ] {
            assert_eq!(stats.drops[k], 1, "{k}: {stats:?}");
        }
        assert_eq!(
            b.shared.vtep_of(Mac([2, 0, 0, 0, 0, 0xa])),
            Some("127.0.0.1".parse().expect("ip"))
        );
        // Removing the remote forgets its MACs.
        b.shared
            .remove_remote("127.0.0.1".parse().expect("ip"))
            .expect("rm");
        assert_eq!(b.shared.vtep_of(Mac([2, 0, 0, 0, 0, 0xa])), None);
        assert!(
            b.shared
                .remove_remote("127.0.0.1".parse().expect("ip"))
                .is_err()
        );
        drop(a);
    }

    #[test]
    fn transmit_floods_unknown_and_unicasts_known_and_drops_oversize_and_gateway() {
        let lo: IpAddr = "127.0.0.1".parse().expect("ip");
        let gw = Mac([2, 0, 0, 0, 0, 0x99]);
        // Two "remotes", both listening on one port number on different loopback addresses.
        let r2 = UdpSocket::bind("127.0.0.2:0").expect("r2");
        let port = r2.local_addr().expect("addr").port();
        let r3 = UdpSocket::bind(("127.0.0.3", port)).expect("r3");
        r2.set_nonblocking(true).expect("nb");
        r3.set_nonblocking(true).expect("nb");
        let mut spec = VxlanSpec::new(9, lo);
        spec.port = port;
        spec.mtu = Some(1450);
        spec.remotes = vec![
            "127.0.0.2".parse().expect("ip"),
            "127.0.0.3".parse().expect("ip"),
        ];
        let (mut l, sh) = VxlanLink::open(&spec, 300_000, Some(gw), "t").expect("open");
        let count = |s: &UdpSocket| {
            let mut b = [0u8; 2048];
            let mut n = 0;
            while let Ok(len) = s.recv(&mut b) {
                assert_eq!(&b[..8], &encap(9));
                assert!(len >= 8 + 14);
                n += 1;
            }
            n
        };
        let known = Mac([2, 0, 0, 0, 0, 3]);
        sh.admit("127.0.0.3".parse().expect("ip"), known, Instant::now());
        let mut q: VecDeque<Frame> = [
            Frame::from_slice(&eth([0xff; 6], [2, 0, 0, 0, 0, 1], 0x0806, &[0; 28])),
            Frame::from_slice(&eth(known.0, [2, 0, 0, 0, 0, 1], 0x0800, &[0; 100])),
            Frame::from_slice(&eth(
                [2, 0, 0, 0, 0, 4],
                [2, 0, 0, 0, 0, 1],
                0x0800,
                &[0; 100],
            )),
            Frame::from_slice(&eth(known.0, [2, 0, 0, 0, 0, 1], 0x0800, &[0; 1451])),
            Frame::from_slice(&eth([0xff; 6], gw.0, 0x0806, &[0; 28])),
        ]
        .into_iter()
        .collect();
        let st = l.send_batch(&mut q).expect("send");
        assert!(q.is_empty());
        assert_eq!(st.frames, 3);
        std::thread::sleep(Duration::from_millis(50));
        // Broadcast + unknown unicast to both; known unicast to .3 only.
        assert_eq!((count(&r2), count(&r3)), (2, 3));
        let s = sh.stats();
        assert_eq!((s.tx_frames, s.tx_datagrams), (3, 5));
        assert_eq!((s.drops["tx_oversize"], s.drops["tx_gateway_mac"]), (1, 1));
        let rem = sh.remotes();
        assert_eq!(rem[0].tx_frames, 2);
        assert_eq!((rem[1].tx_frames, rem[1].macs), (3, 1));
        // No remotes: dropped and counted.
        sh.remove_remote("127.0.0.2".parse().expect("ip"))
            .expect("rm");
        sh.remove_remote("127.0.0.3".parse().expect("ip"))
            .expect("rm");
        let mut q: VecDeque<Frame> = [Frame::from_slice(&eth(
            [0xff; 6],
            [2, 0, 0, 0, 0, 1],
            0x0806,
            &[0; 28],
        ))]
        .into_iter()
        .collect();
        l.send_batch(&mut q).expect("send");
        assert_eq!(sh.stats().drops["no_remote"], 1);
    }
}
