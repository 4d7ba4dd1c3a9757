//! NAT in userspace: guest TCP/UDP/ICMP become host socket calls, and port forwards run the
//! other way.
//!
//! # Theory of operation
//!
//! The gateway hands NAT every IP packet a guest sends to an address that is not the gateway's
//! own (or to the gateway's address on a port the gateway does not serve: that is the host's
//! loopback, see [`host_destination`]). NAT turns each flow into a host socket:
//!
//! - TCP (`tcp.rs`): the guest's connection is terminated in userspace with smoltcp (accepting any
//!   destination address) and spliced to a host `TcpStream`; the SYN is answered only once the
//!   host connect succeeded, so a refused port is an RST and an unreachable host an ICMP error.
//! - UDP (`udp.rs`): a flow table (guest address:port, destination) → a connected host UDP socket,
//!   with idle timeouts; ICMP port-unreachable from the host maps back.
//! - ICMP echo (`icmp.rs`): unprivileged ping sockets (`SOCK_DGRAM, IPPROTO_ICMP`).
//! - Port forwards ([`forward`]): host listeners; accepted connections become connections *to*
//!   the guest, from the client's own address when it is not a loopback one.
//!
//! Everything runs in the gateway's driver on its event loop and mio `Poll`; host sockets are registered there with
//! tokens from the crate-private `token` module. The sockets come from a [`host::HostSockets`] (the kernel's in
//! production, an in-memory fake in the fuzzer), and every entry point takes the gateway's `now`,
//! so a whole NAT can be driven synchronously on a virtual clock.
//!
//! Every flow of every protocol is in one table ([`flow::FlowTable`]): one id space (a host
//! socket's token is its protocol and its flow's id), one key map, one per-port accounting and
//! one limit check ([`NatConfig`]'s limits): when a limit is hit, the new flow is refused and
//! counted, existing ones are untouched.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use etherparse::{Icmpv4Slice, Icmpv4Type, Icmpv6Slice, Icmpv6Type, IpNumber, TcpSlice, UdpSlice};
use mio::Registry;

use crate::wire::ip::{Unreachable, icmp_unreachable};

pub use flow::{FORWARD_KEY, FlowCounts, GuestKey, flow_cap};
use flow::{FlowKey, FlowTable, Opener};
pub use tcp::ETH_FRONT;

pub mod balance;
pub(crate) mod buffers;
pub mod flow;
pub mod forward;
pub mod forward_rt;
pub mod host;
pub(crate) mod icmp;
pub(crate) mod probe;
pub(crate) mod splice;
pub(crate) mod tcp;
pub(crate) mod udp;
pub mod vip;

/// NAT settings of one network.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NatConfig {
    /// The gateway's IPv4 address (its host loopback alias).
    pub gateway4: Ipv4Addr,
    /// The gateway's IPv6 address, if IPv6 is on.
    pub gateway6: Option<Ipv6Addr>,
    /// Map connections to the gateway's address (ports it does not serve) to the host's
    /// loopback (127.0.0.1 / ::1), like slirp4netns's 10.0.2.2.
    pub host_loopback: bool,
    /// Bind egress IPv4 sockets to this host address.
    pub outbound4: Option<Ipv4Addr>,
    /// Bind egress IPv6 sockets to this host address.
    pub outbound6: Option<Ipv6Addr>,
    /// Most flows (TCP + UDP + ICMP) per network.
    pub max_flows: usize,
    /// Most flows per guest address.
    pub max_flows_per_guest: usize,
    /// Most TCP connections waiting for their host connect (SYN backlog).
    pub syn_backlog: usize,
    /// Most TCP connections of one guest port not established yet (connecting, or half-open:
    /// the host side connected, the guest's handshake not finished), so one port cannot hold
    /// the whole SYN backlog.
    pub syn_backlog_per_guest: usize,
    /// Idle timeout of a UDP flow.
    pub udp_idle: Duration,
    /// Idle timeout of an ICMP echo flow.
    pub icmp_idle: Duration,
    /// Idle timeout of a TCP connection with no data either way.
    pub tcp_idle: Duration,
    /// How long a host TCP connect may take before the guest gets an RST.
    pub connect_timeout: Duration,
    /// How long a connection may stay half-open (the host side connected, the guest never
    /// completing its handshake) before it is dropped.
    pub handshake_timeout: Duration,
    /// The network's own subnets: on-link destinations, never NATed.
    pub local_nets: Vec<ipnet::IpNet>,
    /// Let guests reach the cloud metadata service (169.254.169.254, fd00:ec2::254).
    pub allow_metadata: bool,
    /// Bytes of TCP flow buffers the network may hold beyond the regular size: a new flow
    /// gets 1 MiB each way (2 MiB on jumbo links) while this budget has room for it, else
    /// 128 KiB (256 KiB); it gives its share back when it ends. 0: every flow the regular
    /// size. Bulk flows need the big window (see `tcp.rs`); the budget bounds the memory.
    pub tcp_buffer_budget: usize,
}

impl NatConfig {
    /// Defaults for a gateway at `gateway4` (and `gateway6`).
    pub fn new(gateway4: Ipv4Addr, gateway6: Option<Ipv6Addr>) -> Self {
        NatConfig {
            gateway4,
            gateway6,
            host_loopback: true,
            outbound4: None,
            outbound6: None,
            max_flows: 2048,
            max_flows_per_guest: 1024,
            syn_backlog: 256,
            syn_backlog_per_guest: 64,
            udp_idle: Duration::from_secs(60),
            icmp_idle: Duration::from_secs(10),
            tcp_idle: Duration::from_secs(7200),
            connect_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            local_nets: Vec::new(),
            allow_metadata: false,
            tcp_buffer_budget: TCP_BUFFER_BUDGET,
        }
    }
}

/// [`NatConfig::tcp_buffer_budget`]'s default: 16 flows with 1 MiB each way (8 on jumbo links)
/// per network.
pub const TCP_BUFFER_BUDGET: usize = 32 << 20;

/// Lets NAT's big TCP flow buffers (1-2 MiB, see [`NatConfig::tcp_buffer_budget`]) leave no
/// resident memory behind when their flows end: glibc then serves allocations of 512 KiB and
/// more with mappings of their own, returned to the system on free (without it, glibc keeps
/// freed blocks of that size for reuse once it has freed one; usernet also trims the heap
/// after big flows end, which gives back most of it). Process-wide (`mallopt`), so a library
/// does not do it unasked: the `usernet` binary calls it at start; an embedder may.
pub fn release_big_buffers_promptly() {
    crate::sys::process::mmap_allocations_from(512 * 1024);
}

/// Where a guest's packet to `dst` really goes on the host, or `None` if it must not leave.
///
/// Refused, in every spelling the host kernel would route to itself or to a link it should not
/// reach: loopback (127.0.0.0/8, `::1`), "this host" (0.0.0.0/8, `::`), multicast, broadcast,
/// link-local (169.254.0.0/16 — so the cloud metadata service 169.254.169.254 too, unless
/// [`NatConfig::allow_metadata`] — and fe80::/10), IPv4 embedded in IPv6 (IPv4-mapped
/// `::ffff:a.b.c.d`, IPv4-compatible `::a.b.c.d`, SIIT `::ffff:0:a.b.c.d`, NAT64
/// `64:ff9b::/96`, 6to4 `2002::/16`) when the embedded address is refused, the local-use NAT64
/// prefix `64:ff9b:1::/48` whole, and the network's own subnets ([`NatConfig::local_nets`]:
/// on-link, never routed). The gateway's own address is the host's loopback when
/// [`NatConfig::host_loopback`] is on, refused when it is off.
pub fn host_destination(cfg: &NatConfig, dst: IpAddr) -> Option<IpAddr> {
    match dst {
        IpAddr::V4(a) if a == cfg.gateway4 => {
            cfg.host_loopback.then_some(IpAddr::V4(Ipv4Addr::LOCALHOST))
        }
        IpAddr::V6(a) if Some(a) == cfg.gateway6 => {
            cfg.host_loopback.then_some(IpAddr::V6(Ipv6Addr::LOCALHOST))
        }
        _ if cfg.local_nets.iter().any(|n| n.contains(&dst)) => None,
        IpAddr::V4(a) => (!v4_refused(cfg, a)).then_some(dst),
        IpAddr::V6(a) => (!v6_refused(cfg, a)).then_some(dst),
    }
}

/// The cloud metadata service's addresses (EC2, GCE, Azure, OpenStack: IPv4; EC2: IPv6).
const METADATA4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
const METADATA6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);

fn v4_refused(cfg: &NatConfig, a: Ipv4Addr) -> bool {
    if a == METADATA4 {
        return !cfg.allow_metadata;
    }
    a.is_loopback()
        || a.octets()[0] == 0
        || a.is_multicast()
        || a.is_broadcast()
        || a.is_link_local()
        || a == cfg.gateway4
}

fn v6_refused(cfg: &NatConfig, a: Ipv6Addr) -> bool {
    if a == METADATA6 {
        return !cfg.allow_metadata;
    }
    if a.is_loopback() || a.is_unspecified() || a.is_multicast() || a.is_unicast_link_local() {
        return true;
    }
    let s = a.segments();
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    let v4 = match s {
        // IPv4-mapped ::ffff:a.b.c.d and IPv4-compatible ::a.b.c.d.
        [0, 0, 0, 0, 0, 0xffff, hi, lo] | [0, 0, 0, 0, 0, 0, hi, lo] => Some(embedded(hi, lo)),
        // SIIT IPv4-translated ::ffff:0:a.b.c.d.
        [0, 0, 0, 0, 0xffff, 0, hi, lo] => Some(embedded(hi, lo)),
        // NAT64 well-known prefix 64:ff9b::/96.
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => Some(embedded(hi, lo)),
        // NAT64 local-use prefix 64:ff9b:1::/48: whatever the host's translator maps it to.
        [0x64, 0xff9b, 1, ..] => return true,
        // 6to4 2002:a.b.c.d::/48.
        [0x2002, hi, lo, ..] => Some(embedded(hi, lo)),
        _ => None,
    };
    v4.is_some_and(|v| {
        v4_refused(cfg, v) || cfg.local_nets.iter().any(|n| n.contains(&IpAddr::V4(v)))
    })
}

/// NAT counters (shared, relaxed atomics).
#[derive(Debug, Default)]
pub struct NatCounters {
    /// TCP connections spliced to the host.
    pub tcp_flows: AtomicU64,
    /// UDP flows opened.
    pub udp_flows: AtomicU64,
    /// ICMP echo flows opened.
    pub icmp_flows: AtomicU64,
    /// New flows refused because a limit was hit.
    pub refused_limit: AtomicU64,
    /// Host connects refused (became an RST to the guest).
    pub refused_host: AtomicU64,
    /// Host unreachable (became ICMP unreachable to the guest).
    pub unreachable: AtomicU64,
    /// Echo requests dropped because ping sockets are forbidden (`ping_group_range`).
    pub ping_forbidden: AtomicU64,
    /// Packets to destinations that must not leave (loopback in any spelling, link-local,
    /// multicast, the network's own subnet...; see [`host_destination`]).
    pub dropped_dest: AtomicU64,
    /// Half-open TCP flows dropped after [`NatConfig::handshake_timeout`].
    pub half_open_expired: AtomicU64,
    /// Connections accepted on port forwards.
    pub forward_conns: AtomicU64,
    /// Datagrams received on UDP port forwards.
    pub forward_datagrams: AtomicU64,
    /// Errors on host sockets.
    pub errors: AtomicU64,
    /// Guest packets, forward connections and forward datagrams a policy rule denied (see
    /// [`crate::policy`]).
    pub policy_denied: AtomicU64,
    /// Open flows now, by protocol (gauges the flow table keeps; not in [`Self::snapshot`]).
    open: [AtomicU64; 3],
}

impl NatCounters {
    /// Adds one to `c`.
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// All counters by name.
    pub fn snapshot(&self) -> std::collections::BTreeMap<&'static str, u64> {
        [
            ("tcp_flows", &self.tcp_flows),
            ("udp_flows", &self.udp_flows),
            ("icmp_flows", &self.icmp_flows),
            ("refused_limit", &self.refused_limit),
            ("refused_host", &self.refused_host),
            ("unreachable", &self.unreachable),
            ("ping_forbidden", &self.ping_forbidden),
            ("dropped_dest", &self.dropped_dest),
            ("half_open_expired", &self.half_open_expired),
            ("forward_conns", &self.forward_conns),
            ("forward_datagrams", &self.forward_datagrams),
            ("errors", &self.errors),
            ("policy_denied", &self.policy_denied),
        ]
        .into_iter()
        .map(|(k, v)| (k, v.load(Ordering::Relaxed)))
        .collect()
    }

    /// Open flows now, by protocol (what the flow table holds, as of its last change).
    pub fn open_flows(&self) -> FlowCounts {
        let g = |i: usize| self.open[i].load(Ordering::Relaxed) as usize;
        FlowCounts {
            tcp: g(0),
            udp: g(1),
            icmp: g(2),
        }
    }

    /// Records the flow table's open flows (called by the table on every change).
    pub(crate) fn set_open_flows(&self, c: FlowCounts) {
        for (slot, n) in self.open.iter().zip([c.tcp, c.udp, c.icmp]) {
            slot.store(n as u64, Ordering::Relaxed);
        }
    }
}

/// mio tokens of NAT sockets: the kind in the top bits, an index below.
pub(crate) mod token {
    use mio::Token;

    /// Bits for the index.
    pub const SHIFT: u32 = 40;
    /// TCP host connections.
    pub const TCP: usize = 1;
    /// UDP host sockets.
    pub const UDP: usize = 2;
    /// ICMP ping sockets.
    pub const ICMP: usize = 3;
    /// Port-forward TCP listeners.
    pub const FWD_TCP: usize = 4;
    /// Port-forward UDP sockets.
    pub const FWD_UDP: usize = 5;

    /// The token for index `i` of `kind`.
    pub fn make(kind: usize, i: usize) -> Token {
        Token((kind << SHIFT) | (i & ((1 << SHIFT) - 1)))
    }

    /// `(kind, index)` of a token.
    pub fn split(t: Token) -> (usize, usize) {
        (t.0 >> SHIFT, t.0 & ((1 << SHIFT) - 1))
    }
}

/// The policy check NAT asks (set by the gateway, see [`crate::policy`]): `true` lets the
/// packet of `bytes` bytes through. `Way::In { port: None }` is a forward's packet to a guest
/// whose port the hook finds by the destination address.
pub type PolicyHook =
    Arc<dyn Fn(crate::policy::Way, &crate::policy::Packet, u64) -> bool + Send + Sync>;

/// A packet of `proto` from `from` to `to` with no fragment: what a forward's connection or
/// datagram looks like to the policy.
fn forward_packet(proto: u8, from: SocketAddr, to: SocketAddr) -> crate::policy::Packet {
    crate::policy::Packet {
        src: from.ip(),
        dst: to.ip(),
        proto,
        sport: Some(from.port()),
        dport: Some(to.port()),
        icmp_type: None,
        frag: crate::policy::Frag::Whole,
    }
}

/// The policy's verdict on a forward's connection or datagram of `bytes` bytes from `from`
/// to `to` (`Way::In`, the hook finds the guest's port); a denial is counted.
fn forward_allowed(
    policy: Option<&PolicyHook>,
    counters: &NatCounters,
    proto: u8,
    from: SocketAddr,
    to: SocketAddr,
    bytes: u64,
) -> bool {
    let ok = policy.is_none_or(|hook| {
        let p = forward_packet(proto, from, to);
        hook(crate::policy::Way::In { port: None }, &p, bytes)
    });
    if !ok {
        NatCounters::inc(&counters.policy_denied);
    }
    ok
}

/// A gateway's whole NAT: TCP, UDP, ICMP echo and port forwards, driven by the gateway on its event loop.
pub struct Nat {
    /// Settings.
    pub cfg: Arc<NatConfig>,
    /// Counters.
    pub counters: Arc<NatCounters>,
    flows: FlowTable,
    tcp: tcp::TcpNat,
    udp: udp::UdpNat,
    icmp: icmp::IcmpNat,
    fwd: forward_rt::Forwards,
    policy: Option<PolicyHook>,
    vips: Option<Arc<vip::ServiceIps>>,
    _slot: host::NatSlot,
}

impl Nat {
    /// NAT for a gateway with addresses `addrs` and link MTU `mtu`, opening its host sockets
    /// through `host`; its clock starts at `epoch`.
    pub fn new(
        cfg: NatConfig,
        counters: Arc<NatCounters>,
        addrs: &[smoltcp::wire::IpCidr],
        mtu: usize,
        host: Arc<dyn host::HostSockets>,
        epoch: Instant,
    ) -> Self {
        let cfg = Arc::new(cfg);
        Nat {
            tcp: tcp::TcpNat::with_host(
                cfg.clone(),
                counters.clone(),
                addrs,
                mtu,
                host.clone(),
                epoch,
            ),
            udp: udp::UdpNat::with_host(cfg.clone(), counters.clone(), host.clone()),
            icmp: icmp::IcmpNat::with_host(cfg.clone(), counters.clone(), host),
            fwd: forward_rt::Forwards::default(),
            policy: None,
            vips: None,
            flows: FlowTable::new(cfg.clone(), counters.clone()),
            _slot: host::NatSlot::new(),
            cfg,
            counters,
        }
    }

    /// The GSO segment size for a TCP packet NAT sent towards a guest (see
    /// `TcpNat::gso_size` in `tcp.rs`).
    pub fn tcp_gso_size(&self, packet: &[u8]) -> Option<u16> {
        self.tcp.gso_size(&self.flows, packet)
    }

    /// Sends guests' TCP connections to services' virtual IPs on this network by `vips`
    /// ([`vip::ServiceIps`]); the only destinations inside the network's own subnet NAT
    /// connects.
    pub fn set_service_ips(&mut self, vips: Arc<vip::ServiceIps>) {
        self.tcp.set_service_ips(vips.clone());
        self.vips = Some(vips);
    }

    /// Sets the policy check of guest packets and forwards ([`PolicyHook`]).
    pub fn set_policy(&mut self, hook: PolicyHook) {
        self.policy = Some(hook);
    }

    /// True when the policy lets the guest behind port `owner` send IP packet `packet` out
    /// through NAT. A guest's packet inside a port forward's connection or datagram exchange
    /// is not checked (the forward was, when it started); a denial is counted.
    #[allow(clippy::too_many_arguments)]
    fn egress_allowed(
        &self,
        owner: GuestKey,
        packet: &[u8],
        src: IpAddr,
        dst: IpAddr,
        proto: IpNumber,
        body: &[u8],
    ) -> bool {
        let Some(hook) = &self.policy else {
            return true;
        };
        let ends = |b: &[u8]| -> Option<(SocketAddr, SocketAddr)> {
            let p = b.get(..4)?;
            Some((
                SocketAddr::new(src, u16::from_be_bytes([p[0], p[1]])),
                SocketAddr::new(dst, u16::from_be_bytes([p[2], p[3]])),
            ))
        };
        let of_forward = match (proto, ends(body)) {
            (IpNumber::TCP, Some((g, r))) => {
                self.flows.owner(&FlowKey::Tcp(g, r)) == Some(FORWARD_KEY)
            }
            (IpNumber::UDP, Some((g, r))) => self.fwd.has_udp_reply(g, r),
            _ => false,
        };
        if of_forward {
            return true;
        }
        let Some(pkt) = crate::policy::Packet::from_ip(packet) else {
            return true;
        };
        let ok = hook(
            crate::policy::Way::Out { port: owner },
            &pkt,
            packet.len() as u64,
        );
        if !ok {
            NatCounters::inc(&self.counters.policy_denied);
        }
        ok
    }

    /// Current flow counts.
    pub fn counts(&self) -> FlowCounts {
        self.flows.counts()
    }

    /// A guest's IP packet routed to NAT, from the guest behind port `owner`. Packets to send
    /// back to guests are appended to `out`. Returns false for a malformed transport header.
    /// `now` is the gateway's clock.
    ///
    /// A destination that must not leave ([`host_destination`]) is refused here, before any
    /// table is looked at, and answered at once with an ICMP network unreachable (the guest's
    /// `connect` fails with "Network is unreachable", as with slirp4netns), except for
    /// multicast or broadcast destinations and ICMP messages other than echo requests.
    #[allow(clippy::too_many_arguments)]
    pub fn from_guest(
        &mut self,
        reg: &Registry,
        now: Instant,
        owner: GuestKey,
        packet: &[u8],
        src: IpAddr,
        dst: IpAddr,
        proto: IpNumber,
        body: &[u8],
        out: &mut Vec<Vec<u8>>,
    ) -> bool {
        if !self.egress_allowed(owner, packet, src, dst, proto, body) {
            return true;
        }
        if host_destination(&self.cfg, dst).is_none()
            && !self.is_known(proto, src, dst, body)
            && !(proto == IpNumber::TCP && self.vips.as_ref().is_some_and(|v| v.contains(dst)))
        {
            return self.refuse(packet, dst, proto, body, out);
        }
        match proto {
            IpNumber::TCP => {
                let Ok(seg) = TcpSlice::from_slice(body) else {
                    return false;
                };
                self.tcp.from_guest(
                    reg,
                    &mut self.flows,
                    now,
                    owner,
                    packet,
                    SocketAddr::new(src, seg.source_port()),
                    SocketAddr::new(dst, seg.destination_port()),
                    &seg,
                    out,
                );
                true
            }
            IpNumber::UDP => {
                let Ok(u) = UdpSlice::from_slice(body) else {
                    return false;
                };
                let guest = SocketAddr::new(src, u.source_port());
                let to = SocketAddr::new(dst, u.destination_port());
                if self.fwd.udp_reply(guest, to, u.payload()) {
                    return true;
                }
                self.udp
                    .from_guest(reg, &mut self.flows, owner, guest, to, u.payload(), now);
                true
            }
            IpNumber::ICMP | IpNumber::IPV6_ICMP => {
                let echo = if proto == IpNumber::ICMP {
                    let Ok(icmp) = Icmpv4Slice::from_slice(body) else {
                        return false;
                    };
                    match icmp.icmp_type() {
                        Icmpv4Type::EchoRequest(e) => Some((e, icmp.payload())),
                        _ => None,
                    }
                } else {
                    let Ok(icmp) = Icmpv6Slice::from_slice(body) else {
                        return false;
                    };
                    match icmp.icmp_type() {
                        Icmpv6Type::EchoRequest(e) => Some((e, icmp.payload())),
                        _ => None,
                    }
                };
                if let Some((e, payload)) = echo {
                    let f = &mut self.flows;
                    self.icmp
                        .from_guest(reg, f, owner, src, dst, e.id, e.seq, payload, now);
                }
                true
            }
            _ => {
                NatCounters::inc(&self.counters.dropped_dest);
                true
            }
        }
    }

    /// True when the packet belongs to a flow NAT already has (a port forward's connection or
    /// datagram exchange towards a guest, whose peer may be an address guests cannot open
    /// flows to, like the gateway's with host loopback off).
    fn is_known(&self, proto: IpNumber, src: IpAddr, dst: IpAddr, body: &[u8]) -> bool {
        match proto {
            IpNumber::TCP => TcpSlice::from_slice(body).is_ok_and(|t| {
                self.flows.contains(&FlowKey::Tcp(
                    SocketAddr::new(src, t.source_port()),
                    SocketAddr::new(dst, t.destination_port()),
                ))
            }),
            IpNumber::UDP => UdpSlice::from_slice(body).is_ok_and(|u| {
                self.fwd.has_udp_reply(
                    SocketAddr::new(src, u.source_port()),
                    SocketAddr::new(dst, u.destination_port()),
                )
            }),
            _ => false,
        }
    }

    /// A packet to a destination that must not leave: counted, and answered with an ICMP
    /// network unreachable where an answer makes sense. Returns false for a malformed
    /// transport header.
    fn refuse(
        &self,
        packet: &[u8],
        dst: IpAddr,
        proto: IpNumber,
        body: &[u8],
        out: &mut Vec<Vec<u8>>,
    ) -> bool {
        NatCounters::inc(&self.counters.dropped_dest);
        let answer = match proto {
            IpNumber::TCP => match TcpSlice::from_slice(body) {
                Ok(seg) => !seg.rst(),
                Err(_) => return false,
            },
            IpNumber::UDP => true,
            IpNumber::ICMP => matches!(
                Icmpv4Slice::from_slice(body).map(|i| i.icmp_type()),
                Ok(Icmpv4Type::EchoRequest(_))
            ),
            IpNumber::IPV6_ICMP => matches!(
                Icmpv6Slice::from_slice(body).map(|i| i.icmp_type()),
                Ok(Icmpv6Type::EchoRequest(_))
            ),
            _ => false,
        };
        let group = match dst {
            IpAddr::V4(a) => a.is_multicast() || a.is_broadcast(),
            IpAddr::V6(a) => a.is_multicast(),
        };
        if answer
            && !group
            && let Some(p) = icmp_unreachable(packet, Unreachable::Net)
        {
            out.push(p);
        }
        true
    }

    /// Readiness of a NAT token. Returns false if the token is not NAT's.
    pub fn ready(
        &mut self,
        reg: &Registry,
        tok: mio::Token,
        resolve: &dyn Fn(&str) -> Vec<IpAddr>,
        out: &mut Vec<Vec<u8>>,
        now: Instant,
    ) -> bool {
        match token::split(tok).0 {
            token::TCP => self.tcp.ready(reg, &mut self.flows, tok, out),
            token::UDP => self.udp.ready(tok, out, now),
            token::ICMP => self.icmp.ready(tok, out, now),
            token::FWD_TCP => {
                let allow = |proto: u8, from: SocketAddr, to: SocketAddr, bytes: u64| {
                    forward_allowed(self.policy.as_ref(), &self.counters, proto, from, to, bytes)
                };
                for (stream, from, guest, hold) in self.fwd.accept(tok, &self.cfg, resolve, &allow)
                {
                    NatCounters::inc(&self.counters.forward_conns);
                    // Over the network's limit, the client is closed at once.
                    if !self.flows.admit(Opener::Forward) {
                        continue;
                    }
                    let flows = &mut self.flows;
                    if let Err(e) = self
                        .tcp
                        .connect_to_guest(reg, flows, now, stream, from, guest, hold)
                    {
                        tracing::debug!("port forward to {guest}: {e}");
                        NatCounters::inc(&self.counters.errors);
                    }
                }
            }
            token::FWD_UDP => {
                let allow = |proto: u8, from: SocketAddr, to: SocketAddr, bytes: u64| {
                    forward_allowed(self.policy.as_ref(), &self.counters, proto, from, to, bytes)
                };
                let n = self.fwd.recv_udp(tok, &self.cfg, resolve, &allow, out);
                self.counters
                    .forward_datagrams
                    .fetch_add(n as u64, Ordering::Relaxed);
            }
            _ => return false,
        }
        true
    }

    /// Runs the TCP state machines and splices; packets for guests go to `out`, each in a
    /// frame [`ETH_FRONT`] bytes in, the room left for its Ethernet header (the caller writes
    /// it and sends the frame as it is: no copy of the segment).
    pub fn poll(&mut self, reg: &Registry, out: &mut Vec<crate::frame::Frame>, now: Instant) {
        self.tcp.poll(reg, &mut self.flows, out, now);
    }

    /// Builds the packets of [`Self::poll`] in `pool`'s buffers (a pool with GSO buffers: TCP
    /// segments towards guests are up to 64 KiB); until then NAT uses a small pool of its own.
    pub fn set_pool(&mut self, pool: crate::frame::FramePool) {
        self.tcp.set_pool(pool);
    }

    /// Timeouts: idle flows, connects that take too long.
    pub fn expire(&mut self, reg: &Registry, out: &mut Vec<Vec<u8>>, now: Instant) {
        self.tcp.expire(reg, &mut self.flows, out, now);
        self.udp.expire(reg, &mut self.flows, now);
        self.icmp.expire(reg, &mut self.flows, now);
        self.fwd.expire(now, self.cfg.udp_idle);
    }

    /// Runs the port forwards' health checks (see `probe.rs`): results in, due checks out.
    pub fn health(&mut self, reg: &Registry, now: Instant, resolve: &dyn Fn(&str) -> Vec<IpAddr>) {
        let (tcp, flows) = (&mut self.tcp, &mut self.flows);
        self.fwd
            .health(now, &self.cfg, resolve, &mut |op| match op {
                probe::ProbeOp::Start { from, to, stream } => {
                    // A check is a flow like any: over the network's limit, no check.
                    if !flows.admit(Opener::Forward) {
                        return None;
                    }
                    tcp.connect_to_guest(reg, flows, now, stream, from, to, None)
                        .ok()
                }
                probe::ProbeOp::Abort(id) => {
                    tcp.abort(id);
                    None
                }
            });
    }

    /// When the TCP machinery or a health check next needs to run.
    pub fn poll_delay(&mut self, now: Instant) -> Option<Duration> {
        let check = self
            .fwd
            .next_check()
            .map(|t| t.saturating_duration_since(now));
        match (self.tcp.poll_delay(now), check) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Closes every flow (TCP, UDP, ICMP) of the guest behind port `guest`, a port that was
    /// removed: its host sockets close now, not after the idle timeouts. Returns how many.
    /// A forward's connections ([`FORWARD_KEY`]) are not a guest's: they stay.
    pub fn forget_guest(&mut self, reg: &Registry, guest: GuestKey) -> usize {
        let mut closed = 0;
        for (id, key) in self.flows.of_guest(guest) {
            let done = match key {
                // The host peer gets an RST, the guest (gone) nothing.
                FlowKey::Tcp(..) if guest == FORWARD_KEY => false,
                FlowKey::Tcp(..) => self.tcp.close(reg, &mut self.flows, id, true),
                FlowKey::Udp(..) => self.udp.close(reg, &mut self.flows, id),
                FlowKey::Icmp(..) => self.icmp.close(reg, &mut self.flows, id),
            };
            closed += usize::from(done);
        }
        closed
    }

    /// Adds a port forward's listeners (already bound by the caller).
    pub fn add_forward(
        &mut self,
        reg: &Registry,
        id: u64,
        f: forward_rt::Bound,
    ) -> std::io::Result<()> {
        self.fwd.add(reg, id, f)
    }

    /// Removes a port forward: its listeners close now.
    pub fn remove_forward(&mut self, reg: &Registry, id: u64) -> bool {
        self.fwd.remove(reg, id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_destination_rules() {
        let cfg = NatConfig::new(
            Ipv4Addr::new(10, 88, 0, 1),
            Some("fd88::1".parse().expect("a")),
        );
        let v4 = |s: &str| IpAddr::V4(s.parse().expect("v4"));
        assert_eq!(
            host_destination(&cfg, v4("10.88.0.1")),
            Some(v4("127.0.0.1"))
        );
        assert_eq!(
            host_destination(&cfg, v4("192.0.2.7")),
            Some(v4("192.0.2.7"))
        );
        assert_eq!(host_destination(&cfg, v4("127.0.0.1")), None);
        assert_eq!(host_destination(&cfg, v4("224.0.0.1")), None);
        assert_eq!(host_destination(&cfg, v4("255.255.255.255")), None);
        let v6 = |s: &str| IpAddr::V6(s.parse().expect("v6"));
        assert_eq!(host_destination(&cfg, v6("fd88::1")), Some(v6("::1")));
        assert_eq!(host_destination(&cfg, v6("fe80::1")), None);
        let off = NatConfig {
            host_loopback: false,
            ..cfg
        };
        assert_eq!(host_destination(&off, v4("10.88.0.1")), None);
        let t = token::make(token::UDP, 77);
        assert_eq!(token::split(t), (token::UDP, 77));
    }

    #[test]
    fn loopback_refused_in_every_spelling() {
        let mut cfg = NatConfig::new(
            Ipv4Addr::new(10, 88, 0, 1),
            Some("fd88::1".parse().expect("a")),
        );
        cfg.local_nets = vec![
            "10.88.0.0/24".parse().expect("n"),
            "fd88::/64".parse().expect("n"),
        ];
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        for s in [
            "127.0.0.1",
            "127.1.2.3",
            "0.0.0.0",
            "0.1.2.3",
            "169.254.169.254",
            "169.254.1.1",
            "224.0.0.1",
            "255.255.255.255",
            "10.88.0.7",
            "::1",
            "::",
            "::ffff:127.0.0.1",
            "::ffff:0.0.0.0",
            "::127.0.0.1",
            "::ffff:0:127.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b:1::1",
            "2002:7f00:1::1",
            "fe80::1",
            "ff02::1",
            "fd88::7",
            "::ffff:10.88.0.7",
            "fd00:ec2::254",
        ] {
            assert_eq!(host_destination(&cfg, ip(s)), None, "{s}");
        }
        for s in [
            "192.0.2.7",
            "2001:db8::7",
            "::ffff:192.0.2.7",
            "64:ff9b::c000:207",
        ] {
            assert_eq!(host_destination(&cfg, ip(s)), Some(ip(s)), "{s}");
        }
        cfg.host_loopback = false;
        assert_eq!(host_destination(&cfg, ip("10.88.0.1")), None);
        assert_eq!(host_destination(&cfg, ip("fd88::1")), None);
        cfg.allow_metadata = true;
        assert_eq!(
            host_destination(&cfg, ip("169.254.169.254")),
            Some(ip("169.254.169.254"))
        );
    }
}
