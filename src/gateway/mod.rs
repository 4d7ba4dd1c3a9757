//! The virtual gateway of a network: ARP, ICMP echo, DHCPv4, DNS, IPv6 NDP/RA.
//!
//! # Theory of operation
//!
//! A gateway is an endpoint attached to its network's bridge like any other port, with its own
//! MAC and addresses (`subnet`.1 and `prefix::1`, plus an EUI-64 link-local address). So the
//! switching core stays pure: to the bridge the gateway is just a port, learned, flooded to and
//! isolated like the others.
//!
//! All the work is done synchronously by a [`Driver`] — [`Driver::frame`] for a frame,
//! [`Driver::host_ready`] for a NAT socket's readiness, [`Driver::tick`] for timers — each with
//! an explicit `now`; it collects the frames to send. In the engine the driver *is* the port's
//! link (`port::GatewayPort`): the event loop that owns the port hands it the bridge's frames,
//! reads its answers like any link's frames, and polls its host sockets, waker and timer through
//! one epoll descriptor, so a gateway has no thread of its own and a frame to NAT and its answer
//! cross no thread. NAT opens its host sockets through a [`HostSockets`]: the
//! kernel's ([`OsSockets`]) in the engine; [`standalone`] builds a gateway and driver with any
//! other (the `datapath` fuzz target passes an in-memory fake and a virtual clock), so the code
//! fuzzed is the code that runs. It handles:
//! - ARP requests for its address, and announces itself with a gratuitous ARP ([`arp`]);
//! - ICMP and ICMPv6 echo to its addresses;
//! - DHCPv4 ([`dhcp`]): leases from the subnet, the client's hostname registered in DNS;
//! - DNS ([`dns`]) over UDP and TCP port 53 ([`dns_tcp`], smoltcp): authoritative for the network's
//!   domain (endpoint names), everything else forwarded to upstream resolvers on worker threads,
//!   whose answers come back through a channel and the loop's `Waker`;
//! - NDP neighbour and router solicitations, and periodic router advertisements with the prefix
//!   (SLAAC), MTU and RDNSS ([`ndp`]).
//! - neighbour resolution of its own: a packet for a guest whose MAC it does not know (a port
//!   forward to a guest that has sent nothing yet) is held in a small queue per address (16
//!   packets, 256 KiB) while the gateway sends ARP requests or neighbour solicitations, one a
//!   second, three at most; the answer releases the queue, silence drops it (counted as
//!   `neigh_unresolved`).
//!
//! Names: an endpoint is known in DNS by the DHCP hostname it sends, by its *port name* (the
//! gateway looks the client's MAC up in the network's FDB, so the port `web` answers as
//! `web.<domain>` with whatever address its guest got or uses — seen in DHCP ACKs and ARP), and by
//! records added through the control API. Names live per network, so a name resolves only on
//! its own network.
//!
//! Frames not for the gateway (unicast to another MAC, which the bridge floods while the MAC is
//! unknown) are ignored. Frames that fail to parse are counted as `malformed` and dropped;
//! nothing is ever built from an unchecked length (etherparse checks every header).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use etherparse::{
    Icmpv4Slice, Icmpv4Type, Icmpv6Slice, Icmpv6Type, IpNumber, Ipv4Slice, Ipv6Slice,
    PacketBuilder, TcpSlice, UdpSlice,
};
use ipnet::{Ipv4Net, Ipv6Net};
use mio::{Poll, Token, Waker};
use parking_lot::Mutex;
use serde::Serialize;

pub mod arp;
mod config;
pub mod dhcp;
pub mod dns;
pub mod dns_tcp;
mod driver;
mod ipv4;
mod ipv6;
pub mod ndp;
mod neigh;
mod port;
pub mod proxy;

use crate::bridge::security::{Claim, NetGuard};
use crate::bridge::{PortId, PortPolicy};
use crate::engine::Datapath;
use crate::error::{Error, Result};
use crate::frame::{Frame, FrameMeta, VnetHdr};
use crate::nat::host::{HostSockets, OsSockets};
use crate::nat::{Nat, NatConfig, NatCounters};
use crate::wire::{L2Header, Mac};
use dhcp::{DhcpConfig, DhcpServer, NameEvent, ReplyTo, StaticLease};
use dns::{DnsConfig, DnsServer, Records, Transport, Upstreams};
use neigh::{Unresolved, Via};

pub use config::GatewayConfig;
use ipv4::build;

/// Gateway counters.
#[derive(Debug, Default)]
pub struct GatewayCounters {
    /// Frames received from the network.
    pub frames: AtomicU64,
    /// ARP requests for the gateway answered.
    pub arp_replies: AtomicU64,
    /// ICMP/ICMPv6 echo requests answered.
    pub echo_replies: AtomicU64,
    /// DHCP messages received.
    pub dhcp_requests: AtomicU64,
    /// DHCP replies sent.
    pub dhcp_replies: AtomicU64,
    /// DNS queries over UDP.
    pub dns_udp: AtomicU64,
    /// DNS queries over TCP.
    pub dns_tcp: AtomicU64,
    /// Neighbour advertisements sent.
    pub ndp_adverts: AtomicU64,
    /// Router advertisements sent.
    pub router_adverts: AtomicU64,
    /// Frames that failed to parse (dropped).
    pub malformed: AtomicU64,
    /// Frames that were not for the gateway (ignored).
    pub ignored: AtomicU64,
    /// Errors from the DHCP or DNS logic.
    pub errors: AtomicU64,
    /// DHCP messages refused because their `chaddr` is not a MAC of the port that sent them.
    pub dhcp_spoofed: AtomicU64,
    /// Neighbour entries refused: the port's quota or the table was full.
    pub neigh_refused: AtomicU64,
    /// ARP requests and neighbour solicitations the gateway sent to resolve a guest.
    pub neigh_solicits: AtomicU64,
    /// Packets to guests dropped because their address did not resolve (or a queue was full).
    pub neigh_unresolved: AtomicU64,
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A gateway's addresses and counters, as shown by `usernet ctl gateway`.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct GatewayInfo {
    /// Network name.
    pub network: String,
    /// MAC.
    pub mac: Mac,
    /// IPv4 address with prefix.
    pub ipv4: String,
    /// IPv6 address with prefix, if on.
    pub ipv6: Option<String>,
    /// Link-local address.
    pub link_local: Ipv6Addr,
    /// DNS domain.
    pub domain: String,
    /// Counters by name.
    pub counters: std::collections::BTreeMap<&'static str, u64>,
    /// DHCP counters.
    pub dhcp: Option<dhcp::DhcpStats>,
    /// DNS counters.
    pub dns: dns::DnsStats,
    /// NAT counters (absent on internal networks).
    pub nat: Option<std::collections::BTreeMap<&'static str, u64>>,
}

/// A running gateway, shared between its driver (on an event loop) and the control API.
pub struct Gateway {
    /// Its settings.
    pub cfg: GatewayConfig,
    /// The network's DNS records.
    pub records: Arc<Records>,
    /// The DHCP server, if on.
    pub dhcp: Option<Mutex<DhcpServer>>,
    /// The DNS server.
    pub dns: DnsServer,
    /// Counters.
    pub counters: GatewayCounters,
    /// Its port on the bridge.
    pub port: Mutex<Option<PortId>>,
    /// NAT counters.
    pub nat_counters: Arc<NatCounters>,
    /// Port forwards, for listing.
    pub forwards: Mutex<Vec<ForwardInfo>>,
    /// Remote endpoints it answers ARP and neighbour solicitations for (cluster mode).
    pub proxy: proxy::NeighProxy,
    /// Services' virtual IPs on the network (cluster mode): answered (ARP, ping) and
    /// connected by NAT to their services (see [`crate::nat::vip`]).
    pub vips: Arc<crate::nat::vip::ServiceIps>,
    /// The MTU announced by DHCP and RA: `cfg.mtu`, lowered by [`Gateway::lower_announced_mtu`]
    /// (a VXLAN port with a smaller inner MTU on the network).
    announced_mtu: std::sync::atomic::AtomicU16,
    cmd: Sender<Cmd>,
    waker: Arc<Waker>,
    epoch: Instant,
}

/// A port forward, as listed by `usernet ctl forward ls`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
#[non_exhaustive]
pub struct ForwardInfo {
    /// Its id (for `forward rm`).
    pub id: u64,
    /// Network.
    pub network: String,
    /// The `-p` spec.
    pub publish: String,
    /// Target endpoint name or IP (a string), or several (a list).
    pub to: crate::nat::forward::Targets,
    /// Relayed by the kernel (`splice`) from inside the endpoint's namespace.
    #[serde(default)]
    pub splice: bool,
    /// How new connections pick an endpoint.
    #[serde(default)]
    pub balance: crate::nat::balance::Balance,
    /// Health checks, if on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<crate::nat::balance::HealthSpec>,
    /// Each endpoint's state and counters (filled in when listed).
    #[serde(default)]
    pub endpoints: Vec<EndpointInfo>,
    /// New connections or flows refused because no endpoint was up.
    #[serde(default)]
    pub refused: u64,
}

/// One endpoint of a port forward, as listed.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
#[non_exhaustive]
pub struct EndpointInfo {
    /// The endpoint (name or IP, as in `to`).
    pub to: String,
    /// `up` (in the rotation) or `down` (its health checks fail).
    pub state: String,
    /// Connections (TCP) or flows (UDP) open to it now.
    pub live: u64,
    /// Connections or flows sent to it so far.
    pub connections: u64,
}

/// Commands from the control API to the gateway's driver (run on its event loop).
enum Cmd {
    AddForward {
        id: u64,
        bound: crate::nat::forward_rt::Bound,
        reply: Sender<std::io::Result<()>>,
    },
    RemoveForward {
        id: u64,
        reply: Sender<bool>,
    },
    Endpoint {
        ep: Endpoint,
        reply: Sender<()>,
    },
}

/// A port whose addresses usernet configured itself (`attach --ip`, CNI, `run`): the gateway
/// knows its MAC and name up front, so forwards and names work before the guest sends anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The port.
    pub port: PortId,
    /// Its interface's MAC.
    pub mac: Mac,
    /// Its addresses.
    pub ips: Vec<IpAddr>,
    /// IPv4 addresses reserved for it in the DHCP server, given back when the port goes.
    pub reserved: Vec<Ipv4Addr>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("network", &self.cfg.network)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// Milliseconds since the gateway started (the DHCP clock).
    pub fn now_ms(&self) -> u64 {
        self.ms_at(Instant::now())
    }

    /// The DHCP clock at `now`: milliseconds since the gateway started.
    pub fn ms_at(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// The MTU announced by DHCP (option 26) and RA (the MTU option).
    pub fn announced_mtu(&self) -> u16 {
        self.announced_mtu.load(Ordering::Relaxed)
    }

    /// Announces at most `mtu` from now on (a VXLAN port's inner MTU is below the network's):
    /// new DHCP replies and RAs carry it.
    pub fn lower_announced_mtu(&self, mtu: u16) {
        let old = self.announced_mtu.fetch_min(mtu, Ordering::Relaxed);
        if mtu < old
            && let Some(d) = &self.dhcp
        {
            d.lock().set_mtu(mtu);
        }
    }

    /// Addresses and counters.
    pub fn info(&self) -> GatewayInfo {
        let c = &self.counters;
        let counters = [
            ("frames", &c.frames),
            ("arp_replies", &c.arp_replies),
            ("echo_replies", &c.echo_replies),
            ("dhcp_requests", &c.dhcp_requests),
            ("dhcp_replies", &c.dhcp_replies),
            ("dns_udp", &c.dns_udp),
            ("dns_tcp", &c.dns_tcp),
            ("ndp_adverts", &c.ndp_adverts),
            ("router_adverts", &c.router_adverts),
            ("malformed", &c.malformed),
            ("ignored", &c.ignored),
            ("errors", &c.errors),
            ("dhcp_spoofed", &c.dhcp_spoofed),
            ("neigh_refused", &c.neigh_refused),
            ("neigh_solicits", &c.neigh_solicits),
            ("neigh_unresolved", &c.neigh_unresolved),
            ("proxy_answers", &self.proxy.answered),
        ]
        .into_iter()
        .map(|(k, v)| (k, v.load(Ordering::Relaxed)))
        .collect();
        GatewayInfo {
            network: self.cfg.network.clone(),
            mac: self.cfg.mac,
            ipv4: format!("{}/{}", self.cfg.addr, self.cfg.subnet.prefix_len()),
            ipv6: self
                .cfg
                .addr6()
                .zip(self.cfg.ipv6)
                .map(|(a, p)| format!("{a}/{}", p.prefix_len())),
            link_local: self.cfg.link_local(),
            domain: self.cfg.domain.clone(),
            counters,
            dhcp: self.dhcp.as_ref().map(|d| d.lock().stats()),
            dns: self.dns.stats(),
            nat: (!self.cfg.internal).then(|| self.nat_counters.snapshot()),
        }
    }

    /// Adds a port forward whose host sockets are already bound; returns once they are
    /// registered by the gateway's driver on its event loop.
    pub fn add_forward(
        &self,
        info: ForwardInfo,
        bound: crate::nat::forward_rt::Bound,
    ) -> Result<()> {
        if self.cfg.internal {
            return Err(Error::invalid(
                "forward",
                format!(
                    "network {:?} is internal (no NAT, no forwards)",
                    self.cfg.network
                ),
            ));
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.cmd
            .send(Cmd::AddForward {
                id: info.id,
                bound,
                reply: tx,
            })
            .map_err(|_| Error::Stopped)?;
        let _ = self.waker.wake();
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => {
                self.forwards.lock().push(info);
                Ok(())
            }
            Ok(Err(e)) => Err(Error::Io(
                format!("registering forward {}", info.publish),
                e,
            )),
            Err(_) => Err(Error::Stopped),
        }
    }

    /// Removes a port forward by id; its host sockets are closed when this returns.
    pub fn remove_forward(&self, id: u64) -> Result<bool> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.cmd
            .send(Cmd::RemoveForward { id, reply: tx })
            .map_err(|_| Error::Stopped)?;
        let _ = self.waker.wake();
        let found = rx
            .recv_timeout(Duration::from_secs(5))
            .map_err(|_| Error::Stopped)?;
        self.forwards.lock().retain(|f| f.id != id);
        Ok(found)
    }

    /// Tells the gateway about a port whose addresses usernet configured: it learns the
    /// neighbour entries and registers the port's name at once. Returns once that is done.
    pub fn add_endpoint(&self, ep: Endpoint) -> Result<()> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.cmd
            .send(Cmd::Endpoint { ep, reply: tx })
            .map_err(|_| Error::Stopped)?;
        let _ = self.waker.wake();
        rx.recv_timeout(Duration::from_secs(5))
            .map_err(|_| Error::Stopped)
    }

    /// The DHCP leases.
    pub fn leases(&self) -> Vec<dhcp::Lease> {
        match &self.dhcp {
            Some(d) => d.lock().leases(self.now_ms()),
            None => Vec::new(),
        }
    }
}

/// Builds a gateway's shared state — validated settings, DHCP server, DNS server and records —
/// with no port and no thread. Its clock starts at `epoch`.
fn build_gateway(
    cfg: GatewayConfig,
    waker: Arc<Waker>,
    epoch: Instant,
) -> Result<(Arc<Gateway>, Receiver<Cmd>)> {
    let field = |k: &str| format!("network {:?}: {k}", cfg.network);
    if !cfg.subnet.contains(&cfg.addr)
        || cfg.addr == cfg.subnet.network()
        || cfg.addr == cfg.subnet.broadcast()
    {
        return Err(Error::invalid(
            field("gateway address"),
            format!("{} is not a host of {}", cfg.addr, cfg.subnet),
        ));
    }
    if let Some(p) = cfg.ipv6 {
        for (k, a) in [
            ("ipv6 gateway", cfg.ipv6_gateway),
            ("ipv6 dns address", cfg.dns_addr6),
        ] {
            if let Some(a) = a
                && (!p.contains(&a) || a == p.network())
            {
                return Err(Error::invalid(
                    field(k),
                    format!("{a} is not a host of {p}"),
                ));
            }
        }
        if cfg.dns_addr6.is_some() && cfg.dns_addr6 == cfg.addr6() {
            return Err(Error::invalid(
                field("ipv6 dns address"),
                "the gateway's own address (leave it unset for that)",
            ));
        }
    }
    let dhcp = if cfg.dhcp {
        let mut d = DhcpConfig::for_subnet(cfg.subnet, cfg.addr);
        if let Some((a, b)) = cfg.dhcp_range {
            d.range_start = a;
            d.range_end = b;
        }
        d.lease_secs = cfg.lease_secs;
        d.router = Some(cfg.addr);
        d.dns = if cfg.dns_silent && cfg.dns_addr.is_some() {
            Vec::new()
        } else {
            vec![cfg.dns_addr.unwrap_or(cfg.addr)]
        };
        d.mtu = Some(cfg.mtu);
        d.domain = Some(cfg.domain.clone());
        d.search = vec![cfg.domain.clone()];
        d.static_leases = cfg.static_leases.clone();
        Some(Mutex::new(
            DhcpServer::new(d).map_err(|e| Error::invalid(field("dhcp"), e.to_string()))?,
        ))
    } else {
        None
    };
    let records = Arc::new(Records::new(&cfg.domain));
    let dns = DnsServer::new(
        DnsConfig {
            domain: cfg.domain.clone(),
            upstreams: cfg.upstreams.clone(),
            // An internal network reaches nothing outside, not even through DNS.
            workers: if cfg.internal { 0 } else { cfg.dns_workers },
            policy: cfg.dns_policy.clone(),
            ..DnsConfig::default()
        },
        records.clone(),
    );
    let (cmd_tx, cmd_rx) = crossbeam_channel::unbounded();
    if cfg.host_loopback && !cfg.internal {
        // `host.<domain>` is the host's loopback, through the gateway's address.
        let _ = records.reserve("host", IpAddr::V4(cfg.addr));
        if let Some(a6) = cfg.addr6() {
            let _ = records.reserve("host", IpAddr::V6(a6));
        }
    }
    let mtu = cfg.mtu;
    let gw = Arc::new(Gateway {
        cfg,
        records,
        dhcp,
        dns,
        counters: GatewayCounters::default(),
        port: Mutex::new(None),
        nat_counters: Arc::new(NatCounters::default()),
        forwards: Mutex::new(Vec::new()),
        proxy: proxy::NeighProxy::default(),
        vips: Arc::default(),
        announced_mtu: std::sync::atomic::AtomicU16::new(mtu),
        cmd: cmd_tx,
        waker,
        epoch,
    });
    Ok((gw, cmd_rx))
}

/// Starts the gateway for `cfg.network` on a running engine: a port named `gw.<network>` whose
/// link (`GatewayPort`) runs a [`Driver`] with the kernel's sockets and the real clock
/// on the event loop that owns the port (no thread of its own).
pub fn start(handle: &Datapath, cfg: GatewayConfig) -> Result<Arc<Gateway>> {
    let poll = Poll::new().map_err(|e| Error::Io("gateway poll".into(), e))?;
    let waker = Arc::new(
        Waker::new(poll.registry(), WAKE).map_err(|e| Error::Io("gateway waker".into(), e))?,
    );
    let (gw, cmd_rx) = build_gateway(cfg.clone(), waker.clone(), Instant::now())?;
    let registry = poll
        .registry()
        .try_clone()
        .map_err(|e| Error::Io("gateway poll".into(), e))?;
    let names = topology_port_names(handle.clone());
    let guard = handle
        .bridge()
        .topology()
        .network_by_name(&cfg.network)
        .map(|n| n.net.guard.clone())
        .ok_or_else(|| crate::bridge::BridgeError::NoSuchNetwork(cfg.network.clone()))?;
    cfg.attach_guard(&guard, &waker);
    let net_id = handle
        .bridge()
        .topology()
        .network_by_name(&cfg.network)
        .map(|n| n.net.id)
        .ok_or_else(|| crate::bridge::BridgeError::NoSuchNetwork(cfg.network.clone()))?;
    let mut driver = Driver::new(
        gw.clone(),
        names,
        guard,
        waker,
        registry,
        cmd_rx,
        OsSockets::shared(),
        gw.epoch,
    );
    driver.set_policy(handle.bridge().policy().clone(), net_id);
    let link =
        port::GatewayPort::new(driver, poll).map_err(|e| Error::Io("gateway timer".into(), e))?;
    let port = handle.add_link(
        &cfg.network,
        &format!("gw.{}", cfg.network),
        cfg.port_policy(),
        Box::new(link),
    )?;
    // Its MAC never moves (and no guest frame can use it: the port owns it).
    if let Some(ne) = handle.bridge().topology().network_by_name(&cfg.network) {
        ne.net.fdb.add_static(0, cfg.mac, port);
    }
    *gw.port.lock() = Some(port);
    tracing::info!(
        network = %cfg.network,
        addr = %cfg.addr,
        ipv6 = ?gw.cfg.addr6(),
        "gateway up"
    );
    Ok(gw)
}

/// A gateway and its [`Driver`], attached to nothing: the caller feeds it frames and readiness
/// and carries its output frames, on its own clock (`epoch` is the gateway's time zero). For
/// fuzzing, simulations and embedders with their own switch. `poll` provides the `Registry`
/// host sockets register with and the waker DNS answers use; `names` maps a port to its name
/// (for endpoint names), `guard` is the network's ownership table (the bridge's, or a fresh
/// one), `host` opens NAT's host sockets.
pub fn standalone(
    cfg: GatewayConfig,
    poll: &Poll,
    names: PortNames,
    guard: Arc<NetGuard>,
    host: Arc<dyn HostSockets>,
    epoch: Instant,
) -> Result<(Arc<Gateway>, Driver)> {
    let waker = Arc::new(
        Waker::new(poll.registry(), WAKE).map_err(|e| Error::Io("gateway waker".into(), e))?,
    );
    let registry = poll
        .registry()
        .try_clone()
        .map_err(|e| Error::Io("gateway poll".into(), e))?;
    cfg.attach_guard(&guard, &waker);
    let (gw, cmd_rx) = build_gateway(cfg, waker.clone(), epoch)?;
    let driver = Driver::new(
        gw.clone(),
        names,
        guard,
        waker,
        registry,
        cmd_rx,
        host,
        epoch,
    );
    Ok((gw, driver))
}

/// The names of the engine's ports: the engine's [`PortNames`].
fn topology_port_names(handle: Datapath) -> PortNames {
    Box::new(move |id| handle.bridge().topology().port(id).map(|p| p.name.clone()))
}

/// The offloads the gateway's link takes: TCP segmentation and pending checksums.
pub const GATEWAY_OFFLOADS: crate::offload::Offloads = crate::offload::Offloads {
    csum: true,
    tso4: true,
    tso6: true,
    tso_ecn: true,
    uso: false,
};

/// The token of a gateway's waker on its poll.
const WAKE: Token = Token(1);
const RA_EVERY: Duration = Duration::from_secs(60);
/// Most DHCP addresses remembered per port for [`Driver::forget_port`].
const MAX_LEASED_PER_PORT: usize = 8;
/// How long the gateway ignores frames of a removed port (its last frames are in flight for
/// one engine turn at most).
const GONE_FOR: Duration = Duration::from_secs(2);
/// Most removed ports remembered for [`GONE_FOR`].
const MAX_GONE: usize = 1024;
/// Work finished elsewhere (DNS workers), handed back to the driver.
enum Out {
    Udp {
        mac: Mac,
        src: SocketAddr,
        dst: SocketAddr,
        payload: Vec<u8>,
    },
    Tcp {
        conn: dns_tcp::ConnId,
        payload: Vec<u8>,
    },
}

/// Hands a DNS-over-TCP answer back to the driver; dropped unanswered (the DNS server drops
/// malformed input), it sends an empty answer, so the connection's in-flight count still goes
/// down.
struct TcpReply(Option<(Sender<Out>, Arc<Waker>, dns_tcp::ConnId)>);

impl TcpReply {
    fn send(mut self, payload: Vec<u8>) {
        if let Some((tx, waker, conn)) = self.0.take() {
            let _ = tx.send(Out::Tcp { conn, payload });
            let _ = waker.wake();
        }
    }
}

impl Drop for TcpReply {
    fn drop(&mut self) {
        if let Some((tx, waker, conn)) = self.0.take() {
            let _ = tx.send(Out::Tcp {
                conn,
                payload: Vec::new(),
            });
            let _ = waker.wake();
        }
    }
}

/// Names a port of the gateway's network (`None` for an unknown port): how endpoints get their
/// port name in DNS. The port is the one a frame came in on (the bridge stamps it), never one
/// derived from an address inside the frame.
pub type PortNames = Box<dyn Fn(PortId) -> Option<String> + Send>;

/// Drives one gateway synchronously: frames in ([`Driver::frame`]), host socket readiness in
/// ([`Driver::host_ready`]), timers ([`Driver::tick`]), frames out ([`Driver::take_frames`]).
/// Every entry point takes `now`, the gateway's clock: the engine's event loop passes the
/// real time, a simulation or the fuzzer a virtual one. It does no I/O of its own besides NAT's
/// host sockets, which come from the [`HostSockets`] it was built with.
pub struct Driver {
    gw: Arc<Gateway>,
    names_of: PortNames,
    guard: Arc<NetGuard>,
    /// The port the frame being handled came in on (0: none).
    ingress: u32,
    waker: Arc<Waker>,
    out_tx: Sender<Out>,
    out_rx: Receiver<Out>,
    /// IP → (MAC, port that owns it). Learned only from the owning port.
    neigh: HashMap<IpAddr, (Mac, u32)>,
    /// Each port's neighbour entries, oldest first (quota [`MAX_NEIGH_PER_PORT`]).
    neigh_of: HashMap<u32, std::collections::VecDeque<IpAddr>>,
    /// Packets for guests whose MAC is being resolved.
    unresolved: HashMap<IpAddr, Unresolved>,
    /// The ownership generation the neighbour table was last checked against.
    guard_gen: u64,
    /// The gateway clock of the call in progress.
    now: Instant,
    names: HashMap<(String, bool), IpAddr>,
    /// The name each port got in DNS (removed with the port).
    port_names: HashMap<u32, String>,
    /// The DHCP addresses acknowledged to each port, newest last (at most
    /// [`MAX_LEASED_PER_PORT`]): the names of those leases leave DNS with the port (the
    /// lease itself stays for its MAC's return, which brings the name back).
    leased: HashMap<u32, Vec<Ipv4Addr>>,
    /// DHCP reservations of configured endpoints, by port: given back when the port goes.
    reserved: HashMap<u32, Vec<(Ipv4Addr, Mac)>>,
    /// Leases whose name left DNS with their port; an ACK to their MAC brings it back.
    /// Only addresses the DHCP server leased, so bounded by its range.
    unnamed: std::collections::HashSet<Ipv4Addr>,
    /// Ports removed lately and when the gateway forgot them, oldest first (for [`GONE_FOR`],
    /// at most [`MAX_GONE`]): frames they sent just before their removal may still reach the
    /// gateway after it forgot them, and must not bring back a neighbour entry, a name or a
    /// NAT flow.
    gone: std::collections::VecDeque<(u32, Instant)>,
    tcp: dns_tcp::TcpDns,
    max_frame: usize,
    tx: Vec<Frame>,
    /// Buffers of the frames it sends; they come back when the engine is done with them.
    pool: crate::frame::FramePool,
    /// The virtio-net header of the frame being handled (offload state from its link).
    rx_vnet: VnetHdr,
    next_ra: Instant,
    ra_burst: u32,
    next_expire: Instant,
    registry: mio::Registry,
    nat: Option<Nat>,
    cmds: Receiver<Cmd>,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("network", &self.gw.cfg.network)
            .finish_non_exhaustive()
    }
}

/// Idle output buffers a driver keeps (MTU-sized).
const OUT_FREE: usize = 256;
/// 64 KiB output buffers a driver has in flight at most (4 MiB); past that, NAT's large
/// segments take heap buffers.
const OUT_GSO_BUFFERS: usize = 64;

/// Most frames a driver holds for its caller between two [`Driver::take_frames`]; more are
/// dropped, as a full queue towards the bridge would.
pub const MAX_PENDING_FRAMES: usize = 4096;
