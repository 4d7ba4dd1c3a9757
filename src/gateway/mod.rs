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
//! - DNS ([`dns`]) over UDP and TCP port 53 ([`tcp`], smoltcp): authoritative for the network's
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
pub mod dhcp;
pub mod dns;
pub mod dns_tcp;
pub mod ndp;
mod neigh;
mod port;

use crate::bridge::security::{Claim, NetGuard};
use crate::bridge::{PortId, PortPolicy};
use crate::control::Handle;
use crate::error::{Error, Result};
use crate::frame::{Frame, FrameMeta, VnetHdr};
use crate::nat::host::{HostSockets, OsSockets};
use crate::nat::{Nat, NatConfig, NatCounters};
use crate::wire::{L2Header, Mac};
use dhcp::{DhcpConfig, DhcpServer, NameEvent, ReplyTo, StaticLease};
use dns::{DnsConfig, DnsServer, Records, Transport, Upstreams};
use dns_tcp as tcp;
use neigh::{Unresolved, Via};

/// Settings of one network's gateway.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The network it serves.
    pub network: String,
    /// Its MAC.
    pub mac: Mac,
    /// The IPv4 subnet.
    pub subnet: Ipv4Net,
    /// Its IPv4 address (default: the subnet's first host).
    pub addr: Ipv4Addr,
    /// The IPv6 prefix (a /64 for SLAAC), if IPv6 is on.
    pub ipv6: Option<Ipv6Net>,
    /// The gateway's IPv6 address in that prefix; None: `prefix::1` (slirp4netns: `fd00::2`).
    pub ipv6_gateway: Option<Ipv6Addr>,
    /// A second IPv6 address that serves DNS only (slirp4netns's `fd00::3`), announced by RDNSS;
    /// None: the gateway's own IPv6 address serves DNS.
    pub dns_addr6: Option<Ipv6Addr>,
    /// Link MTU announced by DHCP and RA.
    pub mtu: u16,
    /// DNS domain of the network's endpoints.
    pub domain: String,
    /// Serve DHCPv4.
    pub dhcp: bool,
    /// DHCP lease time in seconds.
    pub lease_secs: u32,
    /// DHCP pool `(first, last)`; default: the whole subnet but the gateway.
    pub dhcp_range: Option<(Ipv4Addr, Ipv4Addr)>,
    /// Static DHCP leases.
    pub static_leases: Vec<StaticLease>,
    /// Where non-local DNS queries go.
    pub upstreams: Upstreams,
    /// A second IPv4 address that serves DNS only (slirp4netns's 10.0.2.3); None: the gateway's
    /// own address serves DNS.
    pub dns_addr: Option<Ipv4Addr>,
    /// `dns_addr` (and `dns_addr6`) are kept (they answer ARP/NDP and ping) but serve no DNS:
    /// queries to them get no answer at all, not even a reset (slirp4netns's `--disable-dns`);
    /// DHCP and RDNSS name no server.
    pub dns_silent: bool,
    /// No NAT egress at all (Docker `--internal`).
    pub internal: bool,
    /// Map the gateway's address (ports it does not serve) to the host's loopback.
    pub host_loopback: bool,
    /// Bind egress IPv4 sockets to this host address.
    pub outbound4: Option<Ipv4Addr>,
    /// Bind egress IPv6 sockets to this host address.
    pub outbound6: Option<Ipv6Addr>,
    /// Most NAT flows on this network.
    pub max_flows: usize,
    /// Most NAT flows per guest address.
    pub max_flows_per_guest: usize,
    /// DNS forwarding threads (0: none, names outside the network's domain get SERVFAIL).
    pub dns_workers: usize,
    /// Port security by default on the network's ports (see [`crate::bridge::security`]).
    pub port_security: bool,
    /// Let guests reach the cloud metadata service through NAT (169.254.169.254).
    pub allow_metadata: bool,
}

impl GatewayConfig {
    /// Defaults for `network` on `subnet`: gateway at the first host, IPv6 fd88::/64, MTU 1500,
    /// domain `usernet`, DHCP on, upstreams from `/etc/resolv.conf`.
    pub fn new(network: &str, subnet: Ipv4Net) -> Self {
        let addr = subnet.hosts().next().unwrap_or(subnet.network());
        GatewayConfig {
            network: network.to_string(),
            mac: Mac::random_local(),
            subnet,
            addr,
            ipv6: "fd88::/64".parse().ok(),
            ipv6_gateway: None,
            dns_addr6: None,
            mtu: 1500,
            domain: "usernet".into(),
            dhcp: true,
            lease_secs: 3600,
            dhcp_range: None,
            static_leases: Vec::new(),
            upstreams: Upstreams::ResolvConf("/etc/resolv.conf".into()),
            dns_addr: None,
            dns_silent: false,
            internal: false,
            host_loopback: true,
            outbound4: None,
            outbound6: None,
            max_flows: 2048,
            max_flows_per_guest: 1024,
            dns_workers: DnsConfig::default().workers,
            port_security: true,
            allow_metadata: false,
        }
    }

    /// The NAT settings, or `None` for an internal network.
    pub fn nat_config(&self) -> Option<NatConfig> {
        if self.internal {
            return None;
        }
        let mut n = NatConfig::new(self.addr, self.addr6());
        n.host_loopback = self.host_loopback;
        n.outbound4 = self.outbound4;
        n.outbound6 = self.outbound6;
        n.max_flows = self.max_flows;
        n.max_flows_per_guest = self.max_flows_per_guest;
        n.allow_metadata = self.allow_metadata;
        n.local_nets.push(ipnet::IpNet::V4(self.subnet));
        if let Some(p) = self.ipv6 {
            n.local_nets.push(ipnet::IpNet::V6(p));
        }
        Some(n)
    }

    /// The gateway's IPv6 address in the prefix (`ipv6_gateway`, default `prefix::1`).
    pub fn addr6(&self) -> Option<Ipv6Addr> {
        self.ipv6.map(|p| {
            self.ipv6_gateway
                .unwrap_or_else(|| Ipv6Addr::from(u128::from(p.network()) | 1))
        })
    }

    /// The IPv6 address serving DNS only (`dns_addr6`), when IPv6 is on.
    pub fn dns6(&self) -> Option<Ipv6Addr> {
        self.ipv6.and(self.dns_addr6)
    }

    /// Its link-local address.
    pub fn link_local(&self) -> Ipv6Addr {
        ndp::link_local(self.mac)
    }

    /// Every address the gateway answers on (owned by its port; no guest may use them).
    pub fn own_addrs(&self) -> Vec<IpAddr> {
        let mut v = vec![IpAddr::V4(self.addr)];
        v.extend(self.dns_addr.map(IpAddr::V4));
        if let Some(a6) = self.addr6() {
            v.push(IpAddr::V6(a6));
            v.push(IpAddr::V6(self.link_local()));
        }
        v.extend(self.dns6().map(IpAddr::V6));
        v
    }

    /// The bridge policy of the gateway's own port: its MAC and addresses are its own (no guest
    /// may use them), and its sources are not checked (NAT speaks for every address).
    pub fn port_policy(&self) -> PortPolicy {
        PortPolicy {
            allowed_macs: vec![self.mac],
            allowed_ips: self.own_addrs(),
            port_security: Some(false),
            ..PortPolicy::default()
        }
    }

    /// Makes `guard` the network's ownership table for this gateway: its scope, the network's
    /// port-security default, and `waker` woken when an address changes owner.
    fn attach_guard(&self, guard: &NetGuard, waker: &Arc<Waker>) {
        guard.set_scope(self.scope());
        guard.set_enabled(self.port_security);
        guard.set_waker(waker.clone());
    }

    /// What first-seen guest addresses may be on this network, for port security.
    pub fn scope(&self) -> crate::bridge::security::Scope {
        crate::bridge::security::Scope {
            subnet4: Some(self.subnet),
            prefix6: self.ipv6,
        }
    }
}

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
    cmd: Sender<Cmd>,
    waker: Arc<Waker>,
    epoch: Instant,
}

/// A port forward, as listed by `usernet ctl forward ls`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ForwardInfo {
    /// Its id (for `forward rm`).
    pub id: u64,
    /// Network.
    pub network: String,
    /// The `-p` spec.
    pub publish: String,
    /// Target endpoint name or IP.
    pub to: String,
    /// Relayed by the kernel (`splice`) from inside the endpoint's namespace.
    #[serde(default)]
    pub splice: bool,
}

/// Commands from the control API to a gateway's thread.
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
    /// registered on the gateway's thread.
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
            ..DnsConfig::default()
        },
        records.clone(),
    );
    let (cmd_tx, cmd_rx) = crossbeam_channel::unbounded();
    if cfg.host_loopback && !cfg.internal {
        // `host.<domain>` is the host's loopback, through the gateway's address.
        let _ = records.add("host", IpAddr::V4(cfg.addr));
        if let Some(a6) = cfg.addr6() {
            let _ = records.add("host", IpAddr::V6(a6));
        }
    }
    let gw = Arc::new(Gateway {
        cfg,
        records,
        dhcp,
        dns,
        counters: GatewayCounters::default(),
        port: Mutex::new(None),
        nat_counters: Arc::new(NatCounters::default()),
        forwards: Mutex::new(Vec::new()),
        cmd: cmd_tx,
        waker,
        epoch,
    });
    Ok((gw, cmd_rx))
}

/// Starts the gateway for `cfg.network` on a running engine: a port named `gw.<network>` and
/// a thread that runs a [`Driver`] with the kernel's sockets and the real clock.
pub fn start(handle: &Handle, cfg: GatewayConfig) -> Result<Arc<Gateway>> {
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
    let driver = Driver::new(
        gw.clone(),
        names,
        guard,
        waker,
        registry,
        cmd_rx,
        OsSockets::shared(),
        gw.epoch,
    );
    let link =
        port::GatewayPort::new(driver, poll).map_err(|e| Error::Io("gateway timer".into(), e))?;
    let port = handle.add_port(
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
fn topology_port_names(handle: Handle) -> PortNames {
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
        conn: tcp::ConnId,
        payload: Vec<u8>,
    },
}

/// Hands a DNS-over-TCP answer back to the driver; dropped unanswered (the DNS server drops
/// malformed input), it sends an empty answer, so the connection's in-flight count still goes
/// down.
struct TcpReply(Option<(Sender<Out>, Arc<Waker>, tcp::ConnId)>);

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
    tcp: tcp::TcpDns,
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

impl Driver {
    #[allow(clippy::too_many_arguments)]
    fn new(
        gw: Arc<Gateway>,
        names_of: PortNames,
        guard: Arc<NetGuard>,
        waker: Arc<Waker>,
        registry: mio::Registry,
        cmds: Receiver<Cmd>,
        host: Arc<dyn HostSockets>,
        epoch: Instant,
    ) -> Self {
        let mut addrs = vec![smoltcp::wire::IpCidr::new(
            smoltcp::wire::IpAddress::Ipv4(gw.cfg.addr),
            gw.cfg.subnet.prefix_len(),
        )];
        if let Some(d) = gw.cfg.dns_addr {
            addrs.push(smoltcp::wire::IpCidr::new(
                smoltcp::wire::IpAddress::Ipv4(d),
                gw.cfg.subnet.prefix_len(),
            ));
        }
        if let (Some(a), Some(p)) = (gw.cfg.addr6(), gw.cfg.ipv6) {
            addrs.push(smoltcp::wire::IpCidr::new(
                smoltcp::wire::IpAddress::Ipv6(a),
                p.prefix_len(),
            ));
            addrs.push(smoltcp::wire::IpCidr::new(
                smoltcp::wire::IpAddress::Ipv6(gw.cfg.link_local()),
                64,
            ));
            if let Some(d) = gw.cfg.dns6() {
                addrs.push(smoltcp::wire::IpCidr::new(
                    smoltcp::wire::IpAddress::Ipv6(d),
                    p.prefix_len(),
                ));
            }
        }
        let tcp = tcp::TcpDns::new(&addrs, usize::from(gw.cfg.mtu), epoch);
        let nat = gw.cfg.nat_config().map(|n| {
            Nat::new(
                n,
                gw.nat_counters.clone(),
                &addrs,
                usize::from(gw.cfg.mtu),
                host,
                epoch,
            )
        });
        let (out_tx, out_rx) = crossbeam_channel::unbounded();
        let max_frame = usize::from(gw.cfg.mtu) + 22;
        Driver {
            max_frame,
            pool: crate::frame::FramePool::with_gso(max_frame, OUT_FREE, OUT_GSO_BUFFERS),
            rx_vnet: VnetHdr::default(),
            gw,
            names_of,
            guard,
            ingress: 0,
            waker,
            out_tx,
            out_rx,
            neigh: HashMap::new(),
            neigh_of: HashMap::new(),
            unresolved: HashMap::new(),
            guard_gen: 0,
            now: epoch,
            names: HashMap::new(),
            port_names: HashMap::new(),
            reserved: HashMap::new(),
            leased: HashMap::new(),
            unnamed: std::collections::HashSet::new(),
            gone: std::collections::VecDeque::new(),
            tcp,
            tx: Vec::new(),
            next_ra: epoch,
            ra_burst: 3,
            next_expire: epoch + Duration::from_secs(1),
            registry,
            nat,
            cmds,
        }
    }

    /// The gateway it drives.
    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gw
    }

    /// Announces the gateway (a gratuitous ARP); done once, when it joins the network.
    pub fn announce(&mut self) {
        self.send(arp::gratuitous(self.gw.cfg.mac, self.gw.cfg.addr));
    }

    /// How long after `now` the next [`Driver::tick`] is due (timers, TCP retransmissions).
    pub fn timeout(&mut self, now: Instant) -> Duration {
        let mut t = self
            .next_expire
            .min(self.next_ra)
            .saturating_duration_since(now);
        if let Some(d) = self.tcp.poll_delay(now) {
            t = t.min(d);
        }
        if let Some(d) = self.nat.as_mut().and_then(|n| n.poll_delay(now)) {
            t = t.min(d);
        }
        if let Some(next) = self.next_solicit() {
            t = t.min(next.saturating_duration_since(now));
        }
        t
    }

    /// A NAT host socket registered under `token` is ready.
    pub fn host_ready(&mut self, token: Token, now: Instant) {
        self.now = now;
        self.recheck_owners();
        let Some(nat) = self.nat.as_mut() else {
            return;
        };
        let records = &self.gw.records;
        let domain = &self.gw.cfg.domain;
        let resolve = |name: &str| {
            let fqdn = if name.ends_with(&format!(".{domain}")) {
                name.to_string()
            } else {
                format!("{name}.{domain}")
            };
            records.lookup(&fqdn)
        };
        let mut out = Vec::new();
        nat.ready(&self.registry, token, &resolve, &mut out, now);
        for p in out {
            self.send_nat_ip(&p);
        }
    }

    /// Runs the control API's pending commands (port forwards).
    fn commands(&mut self) {
        while let Ok(c) = self.cmds.try_recv() {
            match (c, self.nat.as_mut()) {
                (Cmd::AddForward { id, bound, reply }, Some(nat)) => {
                    let _ = reply.send(nat.add_forward(&self.registry, id, bound));
                }
                (Cmd::AddForward { reply, .. }, None) => {
                    let _ = reply.send(Err(std::io::Error::other("internal network: no NAT")));
                }
                (Cmd::RemoveForward { id, reply }, Some(nat)) => {
                    let _ = reply.send(nat.remove_forward(&self.registry, id));
                }
                (Cmd::RemoveForward { reply, .. }, None) => {
                    let _ = reply.send(false);
                }
                (Cmd::Endpoint { ep, reply }, _) => {
                    self.endpoint(ep);
                    let _ = reply.send(());
                }
            }
        }
    }

    /// Everything not triggered by a frame: DNS answers that came back, the TCP state machines
    /// (DNS over TCP, NAT), and, when due, NAT and DHCP expiry and router advertisements.
    pub fn tick(&mut self, now: Instant) {
        while self
            .gone
            .front()
            .is_some_and(|g| now.saturating_duration_since(g.1) > GONE_FOR)
        {
            self.gone.pop_front();
        }
        self.now = now;
        self.recheck_owners();
        self.resolve_timers(now);
        for id in self.guard.take_removed() {
            self.forget_port(id.0, now);
        }
        while let Ok(o) = self.out_rx.try_recv() {
            match o {
                Out::Udp {
                    mac,
                    src,
                    dst,
                    payload,
                } => self.send_udp(mac, src, dst, &payload),
                Out::Tcp { conn, payload } => self.tcp.answer(conn, &payload, now),
            }
        }
        self.poll_tcp(now);
        let mut out = Vec::new();
        if let Some(nat) = self.nat.as_mut() {
            nat.poll(&self.registry, &mut out, now);
        }
        if now >= self.next_expire {
            self.next_expire = now + Duration::from_secs(1);
            if let Some(nat) = self.nat.as_mut() {
                nat.expire(&self.registry, &mut out, now);
            }
            if let Some(d) = &self.gw.dhcp {
                let events = d.lock().expire(self.gw.ms_at(now));
                self.names_from(events);
                self.sync_lease_claims(now);
            }
        }
        for p in &out {
            self.send_nat_ip(p);
        }
        if let Some(nat) = self.nat.as_mut() {
            nat.recycle(&mut out);
        }
        if now >= self.next_ra {
            self.router_advert(ndp::ALL_NODES, ndp::multicast_mac(ndp::ALL_NODES));
            // A few quick ones at start (RFC 4861 §6.2.4), then periodic.
            self.next_ra = now
                + if self.ra_burst > 0 {
                    self.ra_burst -= 1;
                    Duration::from_secs(4)
                } else {
                    RA_EVERY
                };
        }
    }

    /// The frames the gateway sent since the last call, oldest first.
    pub fn take_frames(&mut self) -> Vec<Vec<u8>> {
        self.tx.drain(..).map(|f| f.data().to_vec()).collect()
    }

    /// Like [`Self::take_frames`], with each frame's offload state: NAT's TCP segments leave
    /// their checksum to the last hop and may be 64 KiB GSO frames
    /// ([`crate::offload::adapt`] finishes them for links that need it).
    pub fn take_output(&mut self) -> Vec<Frame> {
        std::mem::take(&mut self.tx)
    }

    /// NAT's open flows (`None` on an internal network).
    pub fn nat_flows(&self) -> Option<crate::nat::FlowCounts> {
        self.nat.as_ref().map(Nat::counts)
    }

    /// Addresses in the gateway's neighbour table (bounded by an internal cap).
    pub fn neighbours(&self) -> usize {
        self.neigh.len()
    }

    /// The neighbour table: each address, its MAC and the port it was learned from.
    pub fn neighbour_entries(&self) -> Vec<(IpAddr, Mac, PortId)> {
        self.neigh
            .iter()
            .map(|(ip, (mac, port))| (*ip, *mac, PortId(*port)))
            .collect()
    }

    /// Adds a port forward on this driver's thread directly (a standalone driver has no
    /// thread for [`Gateway::add_forward`]'s command to reach).
    pub fn add_forward(
        &mut self,
        id: u64,
        bound: crate::nat::forward_rt::Bound,
    ) -> std::io::Result<()> {
        match self.nat.as_mut() {
            Some(nat) => nat.add_forward(&self.registry, id, bound),
            None => Err(std::io::Error::other("internal network: no NAT")),
        }
    }

    /// Open DNS-over-TCP connections.
    pub fn dns_tcp_connections(&self) -> usize {
        self.tcp.connections()
    }

    fn send(&mut self, frame: Vec<u8>) {
        self.queue(Frame::from_slice(&frame));
    }

    /// Queues a frame with its offload state in `meta.vnet` (a GSO frame may exceed the MTU).
    fn queue(&mut self, frame: Frame) {
        let fits = frame.len() <= self.max_frame
            || (frame.meta.vnet.gso_type != 0 && frame.len() <= crate::frame::GSO_MAX_FRAME);
        if fits && self.tx.len() < MAX_PENDING_FRAMES {
            self.tx.push(frame);
        }
    }

    fn is_ours6(&self, a: Ipv6Addr) -> bool {
        a == self.gw.cfg.link_local()
            || Some(a) == self.gw.cfg.addr6()
            || Some(a) == self.gw.cfg.dns6()
    }

    /// One frame from the network (whatever the bridge delivered to the gateway's port), from
    /// no known port.
    pub fn frame(&mut self, data: &[u8], now: Instant) {
        self.frame_with(data, FrameMeta::default(), now);
    }

    /// One frame with the offload state its link gave it: a frame whose checksum is pending
    /// (`NEEDS_CSUM`) or was checked by the kernel (`DATA_VALID`) is trusted as it is, and TCP
    /// frames may be 64 KiB GSO frames (NAT's TCP takes them whole). Any other TCP segment's
    /// checksum is verified here. `meta.ingress` is the port it came in on: what the gateway
    /// learns from the frame (neighbour entry, DNS name, DHCP lease) belongs to that port.
    pub fn frame_with(&mut self, data: &[u8], meta: FrameMeta, now: Instant) {
        self.rx_vnet = meta.vnet;
        self.ingress = meta.ingress;
        self.now = now;
        self.recheck_owners();
        inc(&self.gw.counters.frames);
        if !self.gone.is_empty() && self.gone.iter().any(|g| g.0 == meta.ingress) {
            // Sent by a port that is gone since.
            inc(&self.gw.counters.ignored);
            return;
        }
        let Ok(h) = L2Header::parse(data) else {
            inc(&self.gw.counters.malformed);
            return;
        };
        if h.dst != self.gw.cfg.mac && !h.dst.is_multicast()
            || h.vlan != 0
            || h.src == self.gw.cfg.mac
        {
            inc(&self.gw.counters.ignored);
            return;
        }
        let payload = &data[h.header_len..];
        let ok = match h.ethertype {
            0x0806 => self.arp(payload),
            0x0800 => self.ipv4(&h, payload, now),
            0x86dd => self.ipv6(&h, payload, now),
            _ => {
                inc(&self.gw.counters.ignored);
                true
            }
        };
        if !ok {
            inc(&self.gw.counters.malformed);
        }
    }

    fn arp(&mut self, payload: &[u8]) -> bool {
        let res = arp::handle(self.gw.cfg.mac, self.gw.cfg.addr, payload).map(|mut out| {
            // The DNS-only address answers ARP too.
            if let (None, Some(d)) = (&out.reply, self.gw.cfg.dns_addr)
                && let Ok(o2) = arp::handle(self.gw.cfg.mac, d, payload)
            {
                out.reply = o2.reply;
            }
            out
        });
        match res {
            Ok(out) => {
                if let Some((ip, mac)) = out.sender
                    && self.gw.cfg.subnet.contains(&ip)
                    && ip != self.gw.cfg.addr
                    && self.learn(IpAddr::V4(ip), mac)
                {
                    self.snoop(IpAddr::V4(ip));
                }
                if let Some(r) = out.reply {
                    inc(&self.gw.counters.arp_replies);
                    self.send(r);
                }
                true
            }
            Err(_) => false,
        }
    }

    /// Learns a configured endpoint: its neighbour entries and its name, as if it had sent
    /// an ARP for each address.
    fn endpoint(&mut self, ep: Endpoint) {
        let saved = self.ingress;
        self.ingress = ep.port.0;
        for ip in &ep.ips {
            if self.learn(*ip, ep.mac) {
                self.snoop(*ip);
            }
        }
        self.ingress = saved;
        if !ep.reserved.is_empty() {
            self.reserved
                .entry(ep.port.0)
                .or_default()
                .extend(ep.reserved.iter().map(|ip| (*ip, ep.mac)));
        }
    }

    /// Registers the name of the current frame's port as a DNS name for `ip`.
    fn snoop(&mut self, ip: IpAddr) {
        let port = self.ingress;
        let Some(name) = (self.names_of)(PortId(port)) else {
            return;
        };
        if self.gw.port.lock().is_some_and(|g| g.0 == port) {
            return;
        }
        self.port_names.insert(port, name.clone());
        let key = (name, ip.is_ipv4());
        if self.names.get(&key) == Some(&ip) {
            return;
        }
        if let Some(old) = self.names.get(&key) {
            self.gw.records.remove(&key.0, Some(*old));
        }
        if self.gw.records.add(&key.0, ip).is_ok() {
            tracing::debug!(name = %key.0, %ip, "endpoint name registered");
            self.names.insert(key, ip);
        }
    }

    fn names_from(&mut self, events: Vec<NameEvent>) {
        for e in events {
            match e {
                NameEvent::Register { name, ip } => {
                    let _ = self.gw.records.add(&name, IpAddr::V4(ip));
                }
                NameEvent::Unregister { name, ip } => {
                    self.gw.records.remove(&name, Some(IpAddr::V4(ip)));
                }
            }
        }
    }

    fn ipv4(&mut self, h: &L2Header, payload: &[u8], now: Instant) -> bool {
        let Ok(ip) = Ipv4Slice::from_slice(payload) else {
            return false;
        };
        let hdr = ip.header();
        if ip.is_payload_fragmented() {
            inc(&self.gw.counters.ignored);
            return true;
        }
        let (src, dst) = (hdr.source_addr(), hdr.destination_addr());
        let gw = self.gw.clone();
        let cfg = &gw.cfg;
        let dns_only = Some(dst) == cfg.dns_addr;
        let for_us = dst == cfg.addr || dns_only;
        let bcast = dst == Ipv4Addr::BROADCAST || dst == cfg.subnet.broadcast();
        if cfg.subnet.contains(&src) && src != cfg.addr {
            self.learn(IpAddr::V4(src), h.src);
        }
        let body = ip.payload().payload;
        let packet = payload
            .get(..usize::from(hdr.total_len()))
            .unwrap_or(payload);
        if ip.payload().ip_number == IpNumber::TCP && !self.tcp_checksum_ok(packet, body) {
            return false;
        }
        if dns_only {
            // The DNS-only address serves DNS and echo, nothing else (it is no host alias).
            let proto = ip.payload().ip_number;
            let dport = match proto {
                IpNumber::UDP => UdpSlice::from_slice(body)
                    .map(|u| u.destination_port())
                    .ok(),
                IpNumber::TCP => TcpSlice::from_slice(body)
                    .map(|t| t.destination_port())
                    .ok(),
                _ => None,
            };
            if proto != IpNumber::ICMP && (dport != Some(53) || cfg.dns_silent) {
                inc(&self.gw.counters.ignored);
                return true;
            }
        }
        if !for_us && !bcast {
            // Routed through us: NAT.
            return self.nat(
                now,
                packet,
                IpAddr::V4(src),
                IpAddr::V4(dst),
                ip.payload().ip_number,
                body,
            );
        }
        match ip.payload().ip_number {
            IpNumber::ICMP if for_us => {
                let Ok(icmp) = Icmpv4Slice::from_slice(body) else {
                    return false;
                };
                if let Icmpv4Type::EchoRequest(e) = icmp.icmp_type() {
                    let b = PacketBuilder::ethernet2(cfg.mac.0, h.src.0)
                        .ipv4(dst.octets(), src.octets(), 64)
                        .icmpv4_echo_reply(e.id, e.seq);
                    inc(&self.gw.counters.echo_replies);
                    self.send(build(b, icmp.payload()));
                }
                true
            }
            IpNumber::UDP => {
                let Ok(udp) = UdpSlice::from_slice(body) else {
                    return false;
                };
                match udp.destination_port() {
                    67 => self.dhcp(udp.payload(), now),
                    53 if for_us => {
                        inc(&self.gw.counters.dns_udp);
                        self.dns_udp(
                            h.src,
                            SocketAddr::new(IpAddr::V4(dst), 53),
                            SocketAddr::new(IpAddr::V4(src), udp.source_port()),
                            udp.payload(),
                        );
                        true
                    }
                    _ if for_us => self.nat(
                        now,
                        packet,
                        IpAddr::V4(src),
                        IpAddr::V4(dst),
                        IpNumber::UDP,
                        body,
                    ),
                    _ => {
                        inc(&self.gw.counters.ignored);
                        true
                    }
                }
            }
            IpNumber::TCP if for_us => {
                let Ok(tcp) = TcpSlice::from_slice(body) else {
                    return false;
                };
                if tcp.destination_port() == 53 {
                    self.tcp.input(packet, self.ingress);
                    true
                } else {
                    // The host's loopback, through the gateway's address.
                    self.nat(
                        now,
                        packet,
                        IpAddr::V4(src),
                        IpAddr::V4(dst),
                        IpNumber::TCP,
                        body,
                    )
                }
            }
            _ => {
                inc(&self.gw.counters.ignored);
                true
            }
        }
    }

    /// Hands a guest's IP packet to NAT (TCP, UDP, ICMP echo); replies go back to the guest.
    fn nat(
        &mut self,
        now: Instant,
        packet: &[u8],
        src: IpAddr,
        dst: IpAddr,
        proto: IpNumber,
        body: &[u8],
    ) -> bool {
        let Some(nat) = self.nat.as_mut() else {
            // An internal network: no egress.
            inc(&self.gw.counters.ignored);
            return true;
        };
        let mut out = Vec::new();
        let ok = nat.from_guest(
            &self.registry,
            now,
            self.ingress,
            packet,
            src,
            dst,
            proto,
            body,
            &mut out,
        );
        for p in out {
            self.send_nat_ip(&p);
        }
        ok
    }

    /// True when a DHCP message's `chaddr` may be served for the current frame's port: a MAC
    /// the port owns (or may claim, within its cap), never another port's.
    fn dhcp_client_ok(&self, payload: &[u8]) -> bool {
        // chaddr at 28..34 when hlen (byte 2) is 6; the server refuses other lengths itself.
        let Some(ch) = payload.get(28..34).filter(|_| payload.get(2) == Some(&6)) else {
            return true;
        };
        let mac = Mac([ch[0], ch[1], ch[2], ch[3], ch[4], ch[5]]);
        let port = PortId(self.ingress);
        match self.guard.mac_owner(mac) {
            Some(o) => o == port,
            None if self.guard.is_secured(port) => self.guard.claim_mac(port, mac).is_ok(),
            None => true,
        }
    }

    /// A lease for `ip` was acknowledged to the current frame's port: remember it for
    /// [`Self::forget_port`], and give the lease its name back in DNS if a removed port took
    /// it along (its MAC returned).
    fn lease_acked(&mut self, ip: Ipv4Addr, now: Instant) {
        let mine = self.leased.entry(self.ingress).or_default();
        if !mine.contains(&ip) {
            if mine.len() >= MAX_LEASED_PER_PORT {
                mine.remove(0);
            }
            mine.push(ip);
        }
        if !self.unnamed.remove(&ip) {
            return;
        }
        let name = self.gw.dhcp.as_ref().and_then(|d| {
            d.lock()
                .leases(self.gw.ms_at(now))
                .into_iter()
                .find(|l| l.ip == ip)
                .and_then(|l| l.hostname)
        });
        if let Some(name) = name {
            let _ = self.gw.records.add(&name, IpAddr::V4(ip));
        }
    }

    /// Leases that ended (released, declined, expired) stop being their port's address.
    fn sync_lease_claims(&self, now: Instant) {
        if let Some(d) = &self.gw.dhcp {
            let bound = d
                .lock()
                .leases(self.gw.ms_at(now))
                .into_iter()
                .map(|l| l.ip)
                .collect();
            self.guard.release_leases_except(&bound);
        }
    }

    fn dhcp(&mut self, payload: &[u8], now: Instant) -> bool {
        let Some(d) = &self.gw.dhcp else {
            inc(&self.gw.counters.ignored);
            return true;
        };
        inc(&self.gw.counters.dhcp_requests);
        if !self.dhcp_client_ok(payload) {
            inc(&self.gw.counters.dhcp_spoofed);
            tracing::debug!(network = %self.gw.cfg.network, port = self.ingress, "DHCP: chaddr of another port, refused");
            return true;
        }
        // Addresses other ports own are not offered to this one.
        let foreign = self.guard.ips_not_of(PortId(self.ingress));
        let res = {
            let mut srv = d.lock();
            srv.set_foreign(foreign);
            srv.handle(payload, self.gw.ms_at(now))
        };
        self.sync_lease_claims(now);
        let out = match res {
            Ok(Some(o)) => o,
            Ok(None) => return true,
            Err(e) => {
                tracing::debug!(network = %self.gw.cfg.network, "DHCP: {e}");
                inc(&self.gw.counters.errors);
                return true;
            }
        };
        let (ip, mac) = match out.to {
            ReplyTo::Broadcast => (Ipv4Addr::BROADCAST, Mac::BROADCAST),
            ReplyTo::Unicast { ip, mac } => (ip, mac),
        };
        // The bound address of an ACK is the port's address too.
        if let Some((client, yiaddr)) = acked(&out.payload) {
            let port = PortId(self.ingress);
            if self.ingress != 0
                && let Err(e) = self.guard.claim_ip(port, IpAddr::V4(yiaddr), Claim::Lease)
            {
                tracing::warn!(network = %self.gw.cfg.network, %yiaddr, error = %e, "DHCP: leased address not claimed for its port");
            }
            if self.learn(IpAddr::V4(yiaddr), client) {
                self.snoop(IpAddr::V4(yiaddr));
            }
        }
        self.names_from(out.names);
        if let Some((_, yiaddr)) = acked(&out.payload)
            && self.ingress != 0
        {
            self.lease_acked(yiaddr, now);
        }
        inc(&self.gw.counters.dhcp_replies);
        let b = PacketBuilder::ethernet2(self.gw.cfg.mac.0, mac.0)
            .ipv4(self.gw.cfg.addr.octets(), ip.octets(), 64)
            .udp(67, 68);
        self.send(build(b, &out.payload));
        true
    }

    fn dns_udp(&mut self, client_mac: Mac, local: SocketAddr, client: SocketAddr, msg: &[u8]) {
        let tx = self.out_tx.clone();
        let waker = self.waker.clone();
        self.gw.dns.handle(
            msg,
            Transport::Udp { max_size: 512 },
            Box::new(move |payload| {
                let _ = tx.send(Out::Udp {
                    mac: client_mac,
                    src: local,
                    dst: client,
                    payload,
                });
                let _ = waker.wake();
            }),
        );
    }

    fn send_udp(&mut self, mac: Mac, src: SocketAddr, dst: SocketAddr, payload: &[u8]) {
        let frame = match (src.ip(), dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => build(
                PacketBuilder::ethernet2(self.gw.cfg.mac.0, mac.0)
                    .ipv4(s.octets(), d.octets(), 64)
                    .udp(src.port(), dst.port()),
                payload,
            ),
            (IpAddr::V6(s), IpAddr::V6(d)) => build(
                PacketBuilder::ethernet2(self.gw.cfg.mac.0, mac.0)
                    .ipv6(s.octets(), d.octets(), 64)
                    .udp(src.port(), dst.port()),
                payload,
            ),
            _ => return,
        };
        self.send(frame);
    }

    fn poll_tcp(&mut self, now: Instant) {
        let tx = self.out_tx.clone();
        let waker = self.waker.clone();
        let dns = &self.gw.dns;
        let counters = &self.gw.counters;
        let packets = self.tcp.poll(now, |conn, msg| {
            inc(&counters.dns_tcp);
            let reply = TcpReply(Some((tx.clone(), waker.clone(), conn)));
            dns.handle(
                &msg,
                Transport::Tcp,
                Box::new(move |payload| reply.send(payload)),
            );
        });
        for p in packets {
            self.send_ip(&p);
        }
    }

    /// True when the TCP segment `body` of IP packet `packet` may go on: its checksum is right,
    /// or its link vouched for it (pending or kernel-checked checksum).
    fn tcp_checksum_ok(&self, packet: &[u8], body: &[u8]) -> bool {
        const DATA_VALID: u8 = 2;
        self.rx_vnet.flags & (VnetHdr::F_NEEDS_CSUM | DATA_VALID) != 0
            || crate::offload::l4_checksum_ok(packet, body, 6)
    }

    /// Sends an IP packet from NAT. TCP segments leave their checksum to the last hop, and
    /// smoltcp's large segments (NAT's device MTU is 64 KiB) go out as GSO frames cut at the
    /// flow's MSS, by the guest's kernel or by [`crate::offload::adapt`].
    fn send_nat_ip(&mut self, packet: &[u8]) {
        let Some(l4) = crate::offload::transport(packet)
            .filter(|t| t.proto == 6)
            .map(|t| t.l4)
        else {
            return self.send_ip(packet);
        };
        let mtu = usize::from(self.gw.cfg.mtu);
        let gso_size = self
            .nat
            .as_ref()
            .and_then(|n| n.tcp_gso_size(packet))
            .unwrap_or_else(|| mtu.saturating_sub(l4 + 20).max(1) as u16);
        let Some(mut f) = self.eth_frame(packet, Via::Nat) else {
            return;
        };
        let vnet = crate::offload::tcp_partial(&mut f.data_mut()[14..], l4, 14, mtu, gso_size);
        f.meta.vnet = vnet.unwrap_or_default();
        self.queue(f);
    }

    /// Wraps an IP packet from smoltcp in Ethernet towards its destination's MAC.
    fn send_ip(&mut self, packet: &[u8]) {
        if let Some(f) = self.eth_frame(packet, Via::Plain) {
            self.queue(f);
        }
    }

    /// `packet` in an Ethernet frame to its destination's MAC (`None` if malformed, or while the
    /// MAC is resolved: then the packet is held, see [`Self::hold`]):
    /// one copy of the packet, into a buffer from the driver's pool (reused: a 64 KiB segment
    /// costs no allocation and no fresh pages), or from the heap when the pool's GSO buffers
    /// are all in flight.
    fn eth_frame(&mut self, packet: &[u8], via: Via) -> Option<Frame> {
        let (dst, ethertype) = match packet.first().map(|b| b >> 4) {
            Some(4) => (
                IpAddr::V4(
                    Ipv4Slice::from_slice(packet)
                        .ok()?
                        .header()
                        .destination_addr(),
                ),
                0x0800u16,
            ),
            Some(6) => (
                IpAddr::V6(
                    Ipv6Slice::from_slice(packet)
                        .ok()?
                        .header()
                        .destination_addr(),
                ),
                0x86dd,
            ),
            _ => return None,
        };
        let Some((mac, _)) = self.neigh.get(&dst) else {
            self.hold(dst, packet, via);
            return None;
        };
        let mut eth = [0u8; 14];
        eth[..6].copy_from_slice(&mac.0);
        eth[6..12].copy_from_slice(&self.gw.cfg.mac.0);
        eth[12..14].copy_from_slice(&ethertype.to_be_bytes());
        Some(
            self.pool
                .frame_from_parts(&eth, packet)
                .unwrap_or_else(|| Frame::from_parts(&eth, packet)),
        )
    }

    fn router_advert(&mut self, dst: Ipv6Addr, mac: Mac) {
        let (Some(prefix), Some(a6)) = (self.gw.cfg.ipv6, self.gw.cfg.addr6()) else {
            return;
        };
        let p = ndp::RaParams {
            gw_mac: self.gw.cfg.mac,
            prefix,
            mtu: u32::from(self.gw.cfg.mtu),
            dns: if self.gw.cfg.dns_silent && self.gw.cfg.dns6().is_some() {
                Vec::new()
            } else {
                vec![self.gw.cfg.dns6().unwrap_or(a6)]
            },
            router_lifetime: 1800,
        };
        inc(&self.gw.counters.router_adverts);
        self.send(ndp::router_advert(&p, dst, mac));
    }

    fn ipv6(&mut self, h: &L2Header, payload: &[u8], now: Instant) -> bool {
        if self.gw.cfg.ipv6.is_none() {
            inc(&self.gw.counters.ignored);
            return true;
        }
        let Ok(ip) = Ipv6Slice::from_slice(payload) else {
            return false;
        };
        let hdr = ip.header();
        let (src, dst) = (hdr.source_addr(), hdr.destination_addr());
        let gw = self.gw.clone();
        let cfg = &gw.cfg;
        let ours = self.is_ours6(dst);
        let ours_sn = dst.is_multicast()
            && (dst == ndp::ALL_NODES
                || dst == Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2)
                || dst == ndp::solicited_node(cfg.link_local())
                || cfg.addr6().is_some_and(|a| dst == ndp::solicited_node(a))
                || cfg.dns6().is_some_and(|a| dst == ndp::solicited_node(a)));
        let packet = payload
            .get(..40 + usize::from(hdr.payload_length()))
            .unwrap_or(payload);
        if ip.payload().ip_number == IpNumber::TCP
            && !self.tcp_checksum_ok(packet, ip.payload().payload)
        {
            return false;
        }
        if !ours && !ours_sn {
            if dst.is_multicast() || ip.payload().fragmented {
                inc(&self.gw.counters.ignored);
                return true;
            }
            if !src.is_unspecified() && !src.is_multicast() {
                self.learn(IpAddr::V6(src), h.src);
            }
            return self.nat(
                now,
                packet,
                IpAddr::V6(src),
                IpAddr::V6(dst),
                ip.payload().ip_number,
                ip.payload().payload,
            );
        }
        if ip.payload().fragmented {
            inc(&self.gw.counters.ignored);
            return true;
        }
        if !src.is_unspecified() && !src.is_multicast() {
            self.learn(IpAddr::V6(src), h.src);
        }
        let body = ip.payload().payload;
        match ip.payload().ip_number {
            IpNumber::IPV6_ICMP => {
                let Ok(icmp) = Icmpv6Slice::from_slice(body) else {
                    return false;
                };
                if !icmp.is_checksum_valid(hdr.source(), hdr.destination()) {
                    return false;
                }
                match icmp.icmp_type() {
                    Icmpv6Type::NeighborSolicitation => {
                        let Ok(ns) =
                            etherparse::icmpv6::NeighborSolicitationPayloadSlice::from_slice(
                                icmp.payload(),
                            )
                        else {
                            return false;
                        };
                        let target = ns.target_address();
                        if self.is_ours6(target) {
                            inc(&self.gw.counters.ndp_adverts);
                            self.send(ndp::neighbor_advert(cfg.mac, target, target, src, h.src));
                        }
                        if !src.is_unspecified()
                            && self.gw.cfg.ipv6.is_some_and(|p| p.contains(&src))
                            && self
                                .neigh
                                .get(&IpAddr::V6(src))
                                .is_some_and(|e| e.1 == self.ingress)
                        {
                            self.snoop(IpAddr::V6(src));
                        }
                    }
                    Icmpv6Type::RouterSolicitation => {
                        if src.is_unspecified() {
                            self.router_advert(ndp::ALL_NODES, ndp::multicast_mac(ndp::ALL_NODES));
                        } else {
                            self.router_advert(src, h.src);
                        }
                    }
                    Icmpv6Type::EchoRequest(e) if ours => {
                        let b = PacketBuilder::ethernet2(cfg.mac.0, h.src.0)
                            .ipv6(dst.octets(), src.octets(), 64)
                            .icmpv6_echo_reply(e.id, e.seq);
                        inc(&self.gw.counters.echo_replies);
                        self.send(build(b, icmp.payload()));
                    }
                    _ => inc(&self.gw.counters.ignored),
                }
                true
            }
            IpNumber::UDP if ours => {
                let Ok(udp) = UdpSlice::from_slice(body) else {
                    return false;
                };
                if udp.destination_port() == 53 && !(cfg.dns_silent && Some(dst) == cfg.dns6()) {
                    inc(&self.gw.counters.dns_udp);
                    self.dns_udp(
                        h.src,
                        SocketAddr::new(IpAddr::V6(dst), 53),
                        SocketAddr::new(IpAddr::V6(src), udp.source_port()),
                        udp.payload(),
                    );
                    true
                } else if Some(dst) == cfg.addr6() {
                    self.nat(
                        now,
                        packet,
                        IpAddr::V6(src),
                        IpAddr::V6(dst),
                        IpNumber::UDP,
                        body,
                    )
                } else {
                    inc(&self.gw.counters.ignored);
                    true
                }
            }
            IpNumber::TCP if ours => {
                let Ok(tcp) = TcpSlice::from_slice(body) else {
                    return false;
                };
                if tcp.destination_port() == 53 && !(cfg.dns_silent && Some(dst) == cfg.dns6()) {
                    self.tcp.input(packet, self.ingress);
                    true
                } else if Some(dst) == cfg.addr6() {
                    self.nat(
                        now,
                        packet,
                        IpAddr::V6(src),
                        IpAddr::V6(dst),
                        IpNumber::TCP,
                        body,
                    )
                } else {
                    inc(&self.gw.counters.ignored);
                    true
                }
            }
            _ => {
                inc(&self.gw.counters.ignored);
                true
            }
        }
    }
}

/// The client MAC and bound address of a DHCPACK we built (None for anything else).
fn acked(reply: &[u8]) -> Option<(Mac, Ipv4Addr)> {
    use dhcproto::{Decodable, Decoder, v4};
    let msg = v4::Message::decode(&mut Decoder::new(reply)).ok()?;
    if msg.opts().msg_type() != Some(v4::MessageType::Ack) || msg.yiaddr().is_unspecified() {
        return None;
    }
    let ch = msg.chaddr();
    let mac: [u8; 6] = ch.get(..6)?.try_into().ok()?;
    Some((Mac(mac), msg.yiaddr()))
}

fn build<B: Builder>(b: B, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len(payload.len()));
    b.put(&mut out, payload);
    out
}

/// The etherparse builder steps we finish with a payload.
trait Builder {
    fn len(&self, payload: usize) -> usize;
    fn put(self, out: &mut Vec<u8>, payload: &[u8]);
}

macro_rules! builder {
    ($t:ty) => {
        impl Builder for etherparse::PacketBuilderStep<$t> {
            fn len(&self, payload: usize) -> usize {
                self.size(payload)
            }
            fn put(self, out: &mut Vec<u8>, payload: &[u8]) {
                // Writing into a Vec cannot fail.
                let _ = self.write(out, payload);
            }
        }
    };
}
builder!(etherparse::UdpHeader);
builder!(etherparse::Icmpv4Header);
builder!(etherparse::Icmpv6Header);
