//! Control: the [`Handle`] embedders use, and the JSON API the CLI speaks over a UNIX socket.
//!
//! Every operation of the daemon is a method of [`Handle`]; the socket server ([`server`])
//! only decodes a JSON [`api::Request`], calls the same method, and encodes the answer. So the
//! CLI, runtimes that speak JSON and Rust embedders get exactly the same behaviour and errors.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::bridge::{Bridge, FdbConfig, NewPort, PortId, PortPolicy, PortStats};
use std::os::unix::fs::MetadataExt;

use crate::engine::{LoopCmd, Shared, Watch as EngineWatch};
use crate::gateway::{ForwardInfo, Gateway, GatewayConfig, GatewayInfo};
use crate::nat::forward::{Forward, Proto};
use crate::nat::forward_rt::{Bound, Listener};

static NEXT_FORWARD: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
use crate::link::OpenError;

type Watch = (String, Box<dyn Fn() -> bool + Send>);
use crate::error::{Error, Result};
use crate::link::Link;
use crate::link::packet::{PacketLink, PacketOptions};
use crate::link::tap::{TapLink, TapOptions};
use crate::wire::Mac;

pub mod address;
pub mod api;
pub mod rootless;
pub mod server;

pub use address::{AddrSpec, Attached};

const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a port's frames come from: the backend part of a [`PortSpec`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// A TAP device in usernet's own namespace, created if missing.
    Tap {
        /// Interface name.
        name: String,
    },
    /// A TAP device created inside another network namespace.
    NetnsTap {
        /// Namespace path: `/run/netns/NAME` or `/proc/PID/ns/net`.
        netns: PathBuf,
        /// Interface name inside it.
        ifname: String,
    },
    /// An AF_PACKET socket on an existing interface.
    Packet {
        /// Interface name.
        ifname: String,
    },
    /// A UNIX stream socket usernet listens on; a peer (QEMU `-netdev stream`, passt framing)
    /// that connects becomes the port.
    Stream {
        /// Socket path.
        path: PathBuf,
    },
}

fn yes() -> bool {
    true
}

/// A port as written in the config file (`[[port]]`) or sent over the JSON API (`add_port`).
/// Exactly one of `tap`, `netns`, `packet` must be set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct PortSpec {
    /// The network to join.
    pub network: String,
    /// Unique port name (later: the endpoint's DNS name).
    pub name: String,
    /// A TAP in usernet's own namespace (created if missing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap: Option<String>,
    /// A namespace path; a TAP named `ifname` is created inside it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<PathBuf>,
    /// Interface name inside `netns` (default `eth0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ifname: Option<String>,
    /// An existing interface to attach with AF_PACKET.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packet: Option<String>,
    /// A UNIX socket path usernet listens on for a VM (QEMU `-netdev stream`) or any peer
    /// speaking 4-byte length-prefixed frames.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<PathBuf>,
    /// MTU to set on a TAP usernet creates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// TAP offloads (TSO/USO and checksum via `TUNSETOFFLOAD`; see [`crate::offload`]).
    /// Default: on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offload: Option<bool>,
    /// Isolated ports reach only non-isolated ones (Docker `--icc=false`).
    #[serde(default)]
    pub isolated: bool,
    /// Learn source MACs on this port.
    #[serde(default = "yes")]
    pub learning: bool,
    /// Receive floods of unknown unicast and multicast.
    #[serde(default = "yes")]
    pub flood: bool,
    /// If set, only these source MACs are accepted from the port (with port security: the
    /// MACs it owns).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_macs: Vec<Mac>,
    /// IP addresses the port owns from the start (port security), e.g. a static address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_ips: Vec<std::net::IpAddr>,
    /// Check the port's source addresses (port security); default: the network's setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_security: Option<bool>,
    /// MAC of the interface usernet creates in `netns` (default: the kernel's, or a random
    /// local one when addresses are configured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<Mac>,
    /// Addresses to configure on that interface (`netns` only): `ADDR/PREFIX`, `ADDR` (the
    /// network's prefix), or `auto` (IPv4 reserved from the network's DHCP pool, plus the
    /// SLAAC address in its IPv6 prefix). The port owns them from the start (port security),
    /// and the gateway knows them at once (DNS name, forwards). See [`address`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<AddrSpec>,
    /// Default gateways to route through (default: the network gateway's address of each
    /// configured family).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateway: Vec<std::net::IpAddr>,
    /// Install default routes (default: yes when `ips` is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_route: Option<bool>,
    /// More destinations routed through the gateway of their family.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<ipnet::IpNet>,
    /// The TAP in `netns` comes with the request (a descriptor passed with `SCM_RIGHTS` over
    /// the control socket, or [`Handle::attach_fd`]) instead of being created by usernet: a
    /// rootless attach (see [`rootless`]). The address fields are planned as for `netns` and
    /// answered; the sender configures the interface.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fd: bool,
}

impl PortSpec {
    /// A spec with default policy and no backend chosen yet.
    pub fn new(network: &str, name: &str) -> Self {
        PortSpec {
            network: network.into(),
            name: name.into(),
            tap: None,
            netns: None,
            ifname: None,
            packet: None,
            stream: None,
            mtu: None,
            offload: None,
            isolated: false,
            learning: true,
            flood: true,
            allowed_macs: Vec::new(),
            allowed_ips: Vec::new(),
            port_security: None,
            mac: None,
            ips: Vec::new(),
            gateway: Vec::new(),
            default_route: None,
            routes: Vec::new(),
            fd: false,
        }
    }

    /// The backend, checked: exactly one kind, valid interface names. Errors name the field
    /// as `{prefix}.{key}`.
    pub fn backend(&self, prefix: &str) -> Result<Backend> {
        let set = [
            self.tap.is_some(),
            self.netns.is_some(),
            self.packet.is_some(),
            self.stream.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if set != 1 {
            return Err(Error::invalid(
                prefix,
                format!(
                    "port {:?} needs exactly one of `tap`, `netns`, `packet`, `stream` (found {set})",
                    self.name
                ),
            ));
        }
        for (key, set) in [
            ("ifname", self.ifname.is_some()),
            ("mac", self.mac.is_some()),
            ("ips", !self.ips.is_empty()),
            ("gateway", !self.gateway.is_empty()),
            ("default_route", self.default_route.is_some()),
            ("routes", !self.routes.is_empty()),
            ("fd", self.fd),
        ] {
            if set && self.netns.is_none() {
                return Err(Error::invalid(
                    format!("{prefix}.{key}"),
                    "only meaningful with `netns`",
                ));
            }
        }
        if let Some(m) = self.mtu
            && !(68..=65535).contains(&m)
        {
            return Err(Error::invalid(
                format!("{prefix}.mtu"),
                format!("{m} is outside 68..=65535"),
            ));
        }
        crate::bridge::validate_name(&self.name)
            .map_err(|e| Error::invalid(format!("{prefix}.name"), e.to_string()))?;
        if let Some(t) = &self.tap {
            check_ifname(t, &format!("{prefix}.tap"))?;
            return Ok(Backend::Tap { name: t.clone() });
        }
        if let Some(p) = &self.stream {
            if p.as_os_str().is_empty() {
                return Err(Error::invalid(format!("{prefix}.stream"), "empty path"));
            }
            return Ok(Backend::Stream { path: p.clone() });
        }
        if let Some(p) = &self.packet {
            check_ifname(p, &format!("{prefix}.packet"))?;
            return Ok(Backend::Packet { ifname: p.clone() });
        }
        let netns = self.netns.clone().unwrap_or_default();
        if netns.as_os_str().is_empty() {
            return Err(Error::invalid(format!("{prefix}.netns"), "empty path"));
        }
        let ifname = self.ifname.clone().unwrap_or_else(|| "eth0".into());
        check_ifname(&ifname, &format!("{prefix}.ifname"))?;
        Ok(Backend::NetnsTap { netns, ifname })
    }

    /// The forwarding policy.
    pub fn policy(&self) -> PortPolicy {
        PortPolicy {
            learning: self.learning,
            flood: self.flood,
            isolated: self.isolated,
            allowed_macs: self.allowed_macs.clone(),
            allowed_ips: self.allowed_ips.clone(),
            port_security: self.port_security,
        }
    }
}

/// A TAP handed over for a rootless attach: it must be the interface the spec names; reads are
/// sized for the MTU the sender will set (the daemon may not be able to read it: the device
/// lives in a namespace it has no rights in).
fn adopt_tap(
    fd: std::os::fd::OwnedFd,
    spec: &PortSpec,
    ifname: &str,
    plan: Option<&address::Plan>,
) -> Result<TapLink> {
    let mut link = TapLink::from_fd(fd)?;
    if link.name() != ifname {
        return Err(Error::invalid(
            "port.ifname",
            format!(
                "{ifname:?}, but the descriptor passed is TAP {:?}",
                link.name()
            ),
        ));
    }
    if let Some(m) = plan.and_then(|p| p.cfg.mtu).or(spec.mtu) {
        link.expect_mtu(m);
    }
    Ok(link)
}

fn unreachable_stream() -> Result<Box<dyn Link>> {
    Err(Error::invalid(
        "stream",
        "stream ports are opened by listen_stream",
    ))
}

/// Checks a Linux interface name: 1-15 bytes, no `/`, whitespace or `:`.
pub fn check_ifname(name: &str, field: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0);
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            field,
            format!(
                "{name:?} is not a valid interface name (1-15 characters, no '/', ':' or spaces)"
            ),
        ))
    }
}

/// A port, as listed by `usernet ctl ports`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PortInfo {
    /// Port id.
    pub id: PortId,
    /// Port name.
    pub name: String,
    /// Network name.
    pub network: String,
    /// Link kind.
    pub kind: String,
    /// Owning event loop.
    pub event_loop: usize,
    /// Isolated port.
    pub isolated: bool,
}

/// A network, as listed by the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct NetworkInfo {
    /// Name.
    pub name: String,
    /// Names of its ports.
    pub ports: Vec<String>,
    /// FDB entries.
    pub fdb_entries: usize,
    /// FDB cap.
    pub fdb_max_entries: usize,
    /// FDB aging in seconds (0 = never).
    pub fdb_aging_secs: u64,
}

/// One FDB entry, as shown by `usernet ctl fdb`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct FdbRow {
    /// Network name.
    pub network: String,
    /// VLAN id.
    pub vlan: u16,
    /// MAC.
    pub mac: Mac,
    /// Port name.
    pub port: String,
    /// Seconds since last seen.
    pub age_secs: f64,
    /// Configured, never ages.
    pub is_static: bool,
}

/// What one port owns (port security), as shown by `usernet ctl owners`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct OwnerRow {
    /// Network name.
    pub network: String,
    /// Port name.
    pub port: String,
    /// Its source addresses are checked.
    pub port_security: bool,
    /// MACs it owns, each with how it came to (`config`, `lease`, `seen`).
    pub macs: Vec<(Mac, String)>,
    /// IP addresses it owns, each with how it came to.
    pub ips: Vec<(std::net::IpAddr, String)>,
}

/// One port's counters, as shown by `usernet ctl stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PortStatsRow {
    /// Port name.
    pub port: String,
    /// Network name.
    pub network: String,
    /// Counters.
    pub stats: PortStats,
}

/// A DHCP lease, as shown by `usernet ctl leases`.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct LeaseRow {
    /// Network name.
    pub network: String,
    /// The lease.
    #[serde(flatten)]
    pub lease: crate::gateway::dhcp::Lease,
}

/// A DNS record, as shown by `usernet ctl dns ls`.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct DnsRow {
    /// Network name.
    pub network: String,
    /// Fully qualified name.
    pub name: String,
    /// Address.
    pub addr: std::net::IpAddr,
}

/// Control handle for a running [`crate::engine::Engine`]. Cheap to clone; every method may be
/// called from any thread.
#[derive(Clone)]
pub struct Handle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle").finish_non_exhaustive()
    }
}

/// How many more ports than the least loaded loop a loop may have and still take another port
/// of a network it serves.
pub const LOOP_SPILL: usize = 2;

/// The event loop for a new port: `load[i]` is loop i's port count, `same[i]` how many ports of
/// the new port's network loop i has. Ports of one network stay together on the loop that has
/// most of them (frames between them, and to the network's gateway, then never cross loops: a
/// cross-loop handoff costs a wake-up), unless that loop has [`LOOP_SPILL`] more ports than the
/// least loaded one; a new network starts on the least loaded loop. With many networks this
/// spreads networks over loops; with one big network it still spreads its ports.
pub fn pick_loop(load: &[usize], same: &[usize]) -> usize {
    if load.is_empty() {
        return 0;
    }
    let least = (0..load.len()).min_by_key(|&i| load[i]).unwrap_or(0);
    let home = (0..same.len()).filter(|&i| same[i] > 0).max_by_key(|&i| {
        (
            same[i],
            std::cmp::Reverse(load.get(i).copied().unwrap_or(0)),
        )
    });
    match home {
        Some(h) if load.get(h).copied().unwrap_or(0) < load[least] + LOOP_SPILL => h,
        _ => least,
    }
}

impl Handle {
    pub(crate) fn from_shared(shared: Arc<Shared>) -> Self {
        Handle { shared }
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    /// The switching core, for embedders that want direct access (e.g. to add static MACs in
    /// bulk or read counters without copying).
    pub fn bridge(&self) -> &Bridge {
        &self.shared.bridge
    }

    fn check_running(&self) -> Result<()> {
        if self.is_stopped() {
            Err(Error::Stopped)
        } else {
            Ok(())
        }
    }

    /// Adds a network with the given FDB settings.
    pub fn add_network(&self, name: &str, fdb: FdbConfig) -> Result<()> {
        self.check_running()?;
        self.shared.bridge.add_network(name, fdb)?;
        tracing::info!(network = name, "network added");
        Ok(())
    }

    /// Turns port security on or off by default for a network's ports (those whose own
    /// `port_security` is unset). A gateway sets its network's default when it starts.
    pub fn set_port_security(&self, network: &str, on: bool) -> Result<()> {
        let topo = self.shared.bridge.topology();
        let ne = topo
            .network_by_name(network)
            .ok_or_else(|| crate::bridge::BridgeError::NoSuchNetwork(network.to_string()))?;
        ne.net.guard.set_enabled(on);
        Ok(())
    }

    /// Removes a network and closes all its ports (its gateway stops with its port).
    pub fn remove_network(&self, name: &str) -> Result<()> {
        let ports = self.shared.bridge.remove_network(name)?;
        self.shared.gateways.lock().remove(name);
        for p in ports {
            self.shared.port_netns.lock().remove(&p.name);
            self.detach_link(p.owner, p.id)?;
        }
        Ok(())
    }

    /// Adds a port on `network` driven by `link`. The link is handed to the event loop chosen
    /// by [`pick_loop`]: the one that serves most of the network's ports, unless it has
    /// [`LOOP_SPILL`] more ports than the least loaded loop.
    pub fn add_port(
        &self,
        network: &str,
        name: &str,
        policy: PortPolicy,
        link: Box<dyn Link>,
    ) -> Result<PortId> {
        self.check_running()?;
        let owner = {
            let loops = &self.shared.loops;
            let load: Vec<usize> = loops
                .iter()
                .map(|l| l.ports.load(Ordering::Relaxed))
                .collect();
            let mut same = vec![0; loops.len()];
            if let Some(ne) = self.shared.bridge.topology().network_by_name(network) {
                for p in &ne.ports {
                    if let Some(n) = same.get_mut(p.owner) {
                        *n += 1;
                    }
                }
            }
            pick_loop(&load, &same)
        };
        let port = self.shared.bridge.add_port(
            network,
            NewPort {
                name: name.to_string(),
                kind: link.kind(),
                policy,
                ring: self.shared.cfg.ring,
                owner,
            },
        )?;
        let id = port.id;
        let (tx, rx) = crossbeam_channel::bounded(1);
        let ctl = &self.shared.loops[owner];
        let sent = ctl.tx.send(LoopCmd::Add {
            port,
            link,
            reply: tx,
        });
        if sent.is_err() {
            self.shared.bridge.remove_port(id);
            return Err(Error::Stopped);
        }
        let _ = ctl.waker.wake();
        match rx.recv_timeout(REPLY_TIMEOUT) {
            Ok(Ok(())) => Ok(id),
            Ok(Err(e)) => {
                self.shared.bridge.remove_port(id);
                Err(Error::Io(format!("registering port {name}"), e))
            }
            Err(_) => {
                self.shared.bridge.remove_port(id);
                Err(Error::Timeout(owner))
            }
        }
    }

    /// Opens the link a [`PortSpec`] describes (creating TAPs as needed) and adds the port.
    /// For a `stream` port, binds the socket and returns `None`: the port appears when a peer
    /// connects, and is removed when it goes (then the next peer may connect).
    pub fn open_port(&self, spec: &PortSpec) -> Result<Option<PortId>> {
        self.attach(spec).map(|a| a.id)
    }

    /// Like [`Handle::open_port`], and says how the port's interface was configured: a
    /// `netns` port with address fields (`mac`, `ips`, `gateway`, `routes`) gets them over
    /// rtnetlink inside the namespace, with `lo` up; the port owns its addresses from the
    /// start and the network's gateway knows its MAC and name at once (see [`address`]).
    pub fn attach(&self, spec: &PortSpec) -> Result<Attached> {
        self.attach_with(spec, None)
    }

    /// Like [`Handle::attach`] for a `netns` port whose TAP was created by the caller (inside
    /// a rootless container's namespaces, which this process cannot enter; see [`rootless`]):
    /// adopts `tap` instead of creating one, plans the addresses as for any `netns` port and
    /// answers them; the caller applies them inside the namespace. `spec.fd` must be true. The
    /// port is removed when `spec.netns` disappears (the container's `/proc/PID/ns/net`); the
    /// descriptor is closed on any error.
    pub fn attach_fd(&self, spec: &PortSpec, tap: std::os::fd::OwnedFd) -> Result<Attached> {
        self.attach_with(spec, Some(tap))
    }

    fn attach_with(&self, spec: &PortSpec, tap: Option<std::os::fd::OwnedFd>) -> Result<Attached> {
        let backend = spec.backend("port")?;
        match (spec.fd, &tap) {
            (true, None) => {
                return Err(Error::invalid(
                    "port.fd",
                    "true, but no descriptor came with the request (send the TAP's descriptor \
                     with SCM_RIGHTS in the same message as the request line)",
                ));
            }
            (false, Some(_)) => {
                return Err(Error::invalid(
                    "port.fd",
                    "a descriptor came with the request, but `fd` is not true",
                ));
            }
            _ => {}
        }
        if let Backend::Stream { path } = &backend {
            if self
                .shared
                .bridge
                .topology()
                .network_by_name(&spec.network)
                .is_none()
            {
                return Err(crate::bridge::BridgeError::NoSuchNetwork(spec.network.clone()).into());
            }
            self.listen_stream(spec.clone(), path)?;
            return Ok(Attached::default());
        }
        if self
            .shared
            .bridge
            .topology()
            .port_by_name(&spec.name)
            .is_some()
        {
            return Err(crate::bridge::BridgeError::PortExists(spec.name.clone()).into());
        }
        if self
            .shared
            .bridge
            .topology()
            .network_by_name(&spec.network)
            .is_none()
        {
            return Err(crate::bridge::BridgeError::NoSuchNetwork(spec.network.clone()).into());
        }
        // Adopting a TAP handed over needs nothing the sandbox takes away.
        if crate::sandbox::is_applied() && tap.is_none() {
            let what = match &backend {
                Backend::Tap { .. } => "a new TAP (`tap`)",
                Backend::NetnsTap { .. } => "a port in a network namespace (`netns`)",
                Backend::Packet { .. } => "an AF_PACKET port (`packet`)",
                Backend::Stream { .. } => "a stream port",
            };
            if let Backend::NetnsTap { .. } = backend {
                // A permission error (`errno` 1 in the API): `usernet attach` then creates the
                // TAP itself and passes it (`"fd": true`), which works under the sandbox.
                return Err(Error::Io(
                    format!("port {:?}", spec.name),
                    std::io::Error::new(
                        std::io::ErrorKind::PermissionDenied,
                        format!(
                            "{} (a TAP passed with the request, \"fd\": true, is taken)",
                            crate::sandbox::refused(what)
                        ),
                    ),
                ));
            }
            return Err(Error::invalid(
                format!("port {:?}", spec.name),
                crate::sandbox::refused(what),
            ));
        }
        let tap_opts = TapOptions {
            mtu: spec.mtu,
            offload: spec.offload.unwrap_or(true),
            ..TapOptions::default()
        };
        let plan = match &backend {
            Backend::NetnsTap { .. } => self.address_plan(spec)?,
            _ => None,
        };
        let res = self.open_planned(spec, &backend, &tap_opts, plan.as_ref(), tap);
        match (res, plan) {
            (Ok(id), Some(plan)) => {
                if let Err(e) = self.announce_endpoint(&spec.network, id, &plan) {
                    tracing::warn!(port = %spec.name, "gateway not told of the port's addresses: {e}");
                }
                Ok(plan.attached(Some(id)))
            }
            (Ok(id), None) => Ok(Attached {
                id: Some(id),
                ..Attached::default()
            }),
            (Err(e), plan) => {
                if let Some(p) = plan {
                    self.drop_plan(&spec.network, &p);
                }
                Err(e)
            }
        }
    }

    fn open_planned(
        &self,
        spec: &PortSpec,
        backend: &Backend,
        tap_opts: &TapOptions,
        plan: Option<&address::Plan>,
        tap: Option<std::os::fd::OwnedFd>,
    ) -> Result<PortId> {
        let (link, watch): (Box<dyn Link>, Option<Watch>) = match backend {
            Backend::Tap { name } => (Box::new(TapLink::create(name, tap_opts)?), None),
            Backend::NetnsTap { netns, ifname } => {
                // Our TAP descriptor keeps the namespace alive after `ip netns del` or after the
                // container's last process exits, so the kernel never tells us; watch the path.
                let id = std::fs::metadata(netns)
                    .map(|m| (m.dev(), m.ino()))
                    .map_err(|e| OpenError::new(format!("netns {}", netns.display()), e))?;
                let link = match (tap, plan) {
                    (Some(fd), p) => adopt_tap(fd, spec, ifname, p)?,
                    (None, Some(p)) => {
                        TapLink::create_configured_in_netns(netns, ifname, tap_opts, &p.cfg)?
                    }
                    (None, None) => TapLink::create_in_netns(netns, ifname, tap_opts)?,
                };
                let path = netns.clone();
                let alive =
                    move || std::fs::metadata(&path).is_ok_and(|m| (m.dev(), m.ino()) == id);
                let what = format!("namespace {}", netns.display());
                (
                    Box::new(link),
                    Some((what, Box::new(alive) as Box<dyn Fn() -> bool + Send>)),
                )
            }
            Backend::Stream { .. } => (unreachable_stream()?, None),
            Backend::Packet { ifname } => {
                let link = PacketLink::open(
                    ifname,
                    &PacketOptions {
                        up: true,
                        promisc: true,
                        offload: spec.offload.unwrap_or(true),
                    },
                )?;
                let idx = link.ifindex();
                let alive = move || crate::link::netns::link_exists(idx);
                let what = format!("interface {ifname}");
                (
                    Box::new(link),
                    Some((what, Box::new(alive) as Box<dyn Fn() -> bool + Send>)),
                )
            }
        };
        let mut policy = spec.policy();
        if let Some(p) = plan {
            policy.allowed_ips.extend(p.ips());
        }
        let id = self.add_port(&spec.network, &spec.name, policy, link)?;
        if let Backend::NetnsTap { netns, .. } = backend {
            self.set_port_netns(&spec.name, netns.clone());
        }
        if let Some((what, alive)) = watch {
            self.shared.watches.lock().push(EngineWatch {
                port: id,
                what,
                alive,
            });
        }
        Ok(id)
    }

    fn listen_stream(&self, spec: PortSpec, path: &std::path::Path) -> Result<()> {
        if path.exists() {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(Error::invalid(
                    "stream",
                    format!("{} is in use by a live socket", path.display()),
                ));
            }
            let _ = std::fs::remove_file(path);
        }
        // 0600 from creation: only this user's VMs may connect.
        let l = server::bind_private(path)
            .map_err(|e| Error::Io(format!("binding stream socket {}", path.display()), e))?;
        l.set_nonblocking(true)
            .map_err(|e| Error::Io(format!("stream socket {}", path.display()), e))?;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        self.shared
            .streams
            .lock()
            .insert(spec.name.clone(), stop.clone());
        let h = self.clone();
        let path = path.to_path_buf();
        let max = self.shared.cfg.max_frame;
        std::thread::Builder::new()
            .name(format!("usernet-stream-{}", spec.name))
            .spawn(move || {
                while !h.is_stopped() && !stop.load(Ordering::Acquire) {
                    match l.accept() {
                        Ok((conn, _)) => {
                            if h.bridge().topology().port_by_name(&spec.name).is_some() {
                                tracing::warn!(port = %spec.name, "second stream peer refused: port busy");
                                continue;
                            }
                            let what = format!("{} on {}", spec.name, path.display());
                            match crate::link::stream::StreamLink::new(conn, max, &what) {
                                Ok(link) => {
                                    if let Err(e) =
                                        h.add_port(&spec.network, &spec.name, spec.policy(), Box::new(link))
                                    {
                                        tracing::warn!(port = %spec.name, "stream peer: {e}");
                                    } else {
                                        tracing::info!(port = %spec.name, "stream peer connected");
                                    }
                                }
                                Err(e) => tracing::warn!(port = %spec.name, "stream peer: {e}"),
                            }
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(50)),
                    }
                }
                let _ = std::fs::remove_file(&path);
            })
            .map_err(|e| Error::Io("spawning stream listener".into(), e))?;
        Ok(())
    }

    /// Removes a port by name and closes its link (a TAP usernet created disappears; a stream
    /// port stops listening too).
    pub fn remove_port(&self, name: &str) -> Result<()> {
        if let Some(stop) = self.shared.streams.lock().remove(name) {
            stop.store(true, Ordering::Release);
            if self.shared.bridge.topology().port_by_name(name).is_none() {
                return Ok(());
            }
        }
        let port = self
            .shared
            .bridge
            .topology()
            .port_by_name(name)
            .cloned()
            .ok_or_else(|| crate::bridge::BridgeError::NoSuchPort(name.to_string()))?;
        self.shared.bridge.remove_port(port.id);
        self.shared.port_netns.lock().remove(name);
        self.detach_link(port.owner, port.id)
    }

    fn detach_link(&self, owner: usize, id: PortId) -> Result<()> {
        let ctl = &self.shared.loops[owner];
        let (tx, rx) = crossbeam_channel::bounded(1);
        if ctl.tx.send(LoopCmd::Remove { id, reply: tx }).is_err() {
            return Ok(()); // loop gone: the link is closed already
        }
        let _ = ctl.waker.wake();
        rx.recv_timeout(REPLY_TIMEOUT)
            .map_err(|_| Error::Timeout(owner))
    }

    /// Adds a static FDB entry: `mac` on `vlan` is always behind port `port`.
    pub fn add_static_mac(&self, port: &str, mac: Mac, vlan: u16) -> Result<()> {
        let topo = self.shared.bridge.topology();
        let p = topo
            .port_by_name(port)
            .ok_or_else(|| crate::bridge::BridgeError::NoSuchPort(port.to_string()))?;
        let ne = topo
            .network(p.network)
            .ok_or_else(|| crate::bridge::BridgeError::NoSuchPort(port.to_string()))?;
        ne.net.fdb.add_static(vlan, mac, p.id);
        Ok(())
    }

    /// All ports.
    pub fn ports(&self) -> Vec<PortInfo> {
        let topo = self.shared.bridge.topology();
        topo.ports()
            .into_iter()
            .map(|p| PortInfo {
                id: p.id,
                name: p.name.clone(),
                network: topo
                    .network(p.network)
                    .map(|n| n.net.name.clone())
                    .unwrap_or_default(),
                kind: p.kind.to_string(),
                event_loop: p.owner,
                isolated: p.policy.isolated,
            })
            .collect()
    }

    /// All networks.
    pub fn networks(&self) -> Vec<NetworkInfo> {
        let topo = self.shared.bridge.topology();
        topo.networks()
            .into_iter()
            .map(|n| {
                let cfg = n.net.fdb.config();
                NetworkInfo {
                    name: n.net.name.clone(),
                    ports: n.ports.iter().map(|p| p.name.clone()).collect(),
                    fdb_entries: n.net.fdb.len(),
                    fdb_max_entries: cfg.max_entries,
                    fdb_aging_secs: cfg.aging_ms / 1000,
                }
            })
            .collect()
    }

    /// The FDB of one network, or of all.
    pub fn fdb(&self, network: Option<&str>) -> Result<Vec<FdbRow>> {
        let topo = self.shared.bridge.topology();
        if let Some(n) = network
            && topo.network_by_name(n).is_none()
        {
            return Err(crate::bridge::BridgeError::NoSuchNetwork(n.to_string()).into());
        }
        let now = self.shared.bridge.now();
        let mut rows = Vec::new();
        for ne in topo.networks() {
            if network.is_some_and(|n| n != ne.net.name) {
                continue;
            }
            for e in ne.net.fdb.dump(now) {
                rows.push(FdbRow {
                    network: ne.net.name.clone(),
                    vlan: e.vlan,
                    mac: e.mac,
                    port: topo
                        .port(e.port)
                        .map(|p| p.name.clone())
                        .unwrap_or_else(|| format!("#{}", e.port.0)),
                    age_secs: e.age_ms as f64 / 1000.0,
                    is_static: e.is_static,
                });
            }
        }
        Ok(rows)
    }

    /// What every port owns (port security), by network.
    pub fn owners(&self, network: Option<&str>) -> Result<Vec<OwnerRow>> {
        let topo = self.shared.bridge.topology();
        if let Some(n) = network
            && topo.network_by_name(n).is_none()
        {
            return Err(crate::bridge::BridgeError::NoSuchNetwork(n.to_string()).into());
        }
        let how = |c: crate::bridge::security::Claim| {
            serde_json::to_value(c)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default()
        };
        let mut rows = Vec::new();
        for ne in topo.networks() {
            if network.is_some_and(|n| n != ne.net.name) {
                continue;
            }
            for r in ne.net.guard.dump() {
                rows.push(OwnerRow {
                    network: ne.net.name.clone(),
                    port: topo
                        .port(r.port)
                        .map(|p| p.name.clone())
                        .unwrap_or_else(|| format!("#{}", r.port.0)),
                    port_security: r.secured,
                    macs: r.macs.into_iter().map(|(m, c)| (m, how(c))).collect(),
                    ips: r.ips.into_iter().map(|(a, c)| (a, how(c))).collect(),
                });
            }
        }
        Ok(rows)
    }

    /// Counters of every port.
    pub fn stats(&self) -> Vec<PortStatsRow> {
        let topo = self.shared.bridge.topology();
        topo.ports()
            .into_iter()
            .map(|p| PortStatsRow {
                port: p.name.clone(),
                network: topo
                    .network(p.network)
                    .map(|n| n.net.name.clone())
                    .unwrap_or_default(),
                stats: p.counters.snapshot(),
            })
            .collect()
    }

    /// Starts the gateway (ARP, ICMP, DHCP, DNS, NDP/RA) of an existing network.
    pub fn add_gateway(&self, cfg: GatewayConfig) -> Result<Arc<Gateway>> {
        self.check_running()?;
        let name = cfg.network.clone();
        if self
            .shared
            .bridge
            .topology()
            .network_by_name(&name)
            .is_none()
        {
            return Err(crate::bridge::BridgeError::NoSuchNetwork(name).into());
        }
        if self.shared.gateways.lock().contains_key(&name) {
            return Err(Error::invalid(
                "gateway",
                format!("network {name:?} already has a gateway"),
            ));
        }
        let gw = crate::gateway::start(self, cfg)?;
        self.shared.gateways.lock().insert(name, gw.clone());
        Ok(gw)
    }

    /// The gateway of `network`, if it has one.
    pub fn gateway(&self, network: &str) -> Option<Arc<Gateway>> {
        self.shared.gateways.lock().get(network).cloned()
    }

    fn gateways_of(&self, network: Option<&str>) -> Result<Vec<Arc<Gateway>>> {
        let g = self.shared.gateways.lock();
        match network {
            Some(n) => {
                g.get(n).cloned().map(|x| vec![x]).ok_or_else(|| {
                    Error::invalid("network", format!("network {n:?} has no gateway"))
                })
            }
            None => Ok(g.values().cloned().collect()),
        }
    }

    /// Addresses and counters of every gateway.
    pub fn gateways(&self) -> Vec<GatewayInfo> {
        self.shared
            .gateways
            .lock()
            .values()
            .map(|g| g.info())
            .collect()
    }

    /// DHCP leases of one network's gateway, or of all.
    pub fn leases(&self, network: Option<&str>) -> Result<Vec<LeaseRow>> {
        let mut rows = Vec::new();
        for g in self.gateways_of(network)? {
            for lease in g.leases() {
                rows.push(LeaseRow {
                    network: g.cfg.network.clone(),
                    lease,
                });
            }
        }
        Ok(rows)
    }

    /// Adds a DNS record `name` → `addr` on `network` (`name` relative to its domain, or a name
    /// inside the domain).
    pub fn dns_add(&self, network: &str, name: &str, addr: std::net::IpAddr) -> Result<()> {
        let g = self.gateways_of(Some(network))?.remove(0);
        g.records
            .add(name, addr)
            .map_err(|e| Error::invalid("name", e.to_string()))
    }

    /// Removes DNS records of `name` on `network` (one address, or all). False if none matched.
    pub fn dns_remove(
        &self,
        network: &str,
        name: &str,
        addr: Option<std::net::IpAddr>,
    ) -> Result<bool> {
        let g = self.gateways_of(Some(network))?.remove(0);
        Ok(g.records.remove(name, addr))
    }

    /// DNS records of one network, or of all.
    pub fn dns_list(&self, network: Option<&str>) -> Result<Vec<DnsRow>> {
        let mut rows = Vec::new();
        for g in self.gateways_of(network)? {
            for r in g.records.list() {
                rows.push(DnsRow {
                    network: g.cfg.network.clone(),
                    name: r.name,
                    addr: r.addr,
                });
            }
        }
        Ok(rows)
    }

    /// Publishes a guest port on the host (Docker `-p`): binds the host sockets now (a port in
    /// use is an error naming it) and hands them to the network's gateway.
    pub fn add_forward(&self, f: &Forward) -> Result<ForwardInfo> {
        let g = self.gateways_of(Some(&f.network))?.remove(0);
        if g.cfg.internal {
            return Err(Error::invalid(
                "network",
                format!(
                    "network {:?} is internal: no NAT, no port forwards",
                    f.network
                ),
            ));
        }
        if f.splice && crate::sandbox::is_applied() {
            return Err(Error::invalid(
                "splice",
                crate::sandbox::refused(
                    "a spliced forward (it enters the guest's namespace for every connection)",
                ),
            ));
        }
        let splice = if f.splice {
            Some(crate::nat::forward_rt::SpliceHook {
                netns: self.splice_target(f)?,
                splicer: self.splicer()?,
            })
        } else {
            None
        };
        let ip = f.spec.bind_ip();
        let mut listeners = Vec::new();
        for (hp, gp) in f.spec.pairs() {
            let at = std::net::SocketAddr::new(ip, hp);
            let what = || format!("host port {at}/{}", f.spec.proto);
            match f.spec.proto {
                Proto::Tcp => {
                    let l = std::net::TcpListener::bind(at).map_err(|e| Error::Io(what(), e))?;
                    l.set_nonblocking(true).map_err(|e| Error::Io(what(), e))?;
                    listeners.push(Listener::Tcp {
                        sock: mio::net::TcpListener::from_std(l),
                        guest_port: gp,
                    });
                }
                Proto::Udp => {
                    let u = std::net::UdpSocket::bind(at).map_err(|e| Error::Io(what(), e))?;
                    u.set_nonblocking(true).map_err(|e| Error::Io(what(), e))?;
                    listeners.push(Listener::Udp {
                        sock: mio::net::UdpSocket::from_std(u),
                        guest_port: gp,
                    });
                }
            }
        }
        let info = ForwardInfo {
            id: NEXT_FORWARD.fetch_add(1, Ordering::Relaxed),
            network: f.network.clone(),
            publish: f.spec.to_string(),
            to: f.to.clone(),
            splice: splice.is_some(),
        };
        g.add_forward(
            info.clone(),
            Bound {
                listeners,
                to: f.to.clone(),
                splice,
            },
        )?;
        tracing::info!(network = %f.network, publish = %info.publish, to = %f.to, splice = info.splice, "port forward added");
        Ok(info)
    }

    /// The namespace a spliced forward connects from: that of the port named by `f.to`, which
    /// must be one usernet can enter.
    fn splice_target(&self, f: &Forward) -> Result<PathBuf> {
        if f.spec.proto != Proto::Tcp {
            return Err(Error::invalid(
                "splice",
                "only TCP forwards can be spliced".to_string(),
            ));
        }
        let netns = self.shared.port_netns.lock().get(&f.to).cloned();
        let Some(netns) = netns else {
            return Err(Error::invalid(
                "splice",
                format!(
                    "{:?} is not a port whose network namespace usernet knows (a netns port, or the \
                     command of `usernet run`); give the port name as `to`",
                    f.to
                ),
            ));
        };
        crate::link::netns::run_in_netns(&netns, || Ok(()))
            .map_err(|e| Error::invalid("splice", format!("cannot enter the namespace: {e}")))?;
        Ok(netns)
    }

    /// The relay thread for spliced forwards, started on first use.
    fn splicer(&self) -> Result<Arc<crate::nat::splice::Splicer>> {
        let mut s = self.shared.splicer.lock();
        if let Some(sp) = s.as_ref() {
            return Ok(sp.clone());
        }
        let sp = Arc::new(
            crate::nat::splice::Splicer::start()
                .map_err(|e| Error::Io("starting the splice relay".into(), e))?,
        );
        *s = Some(sp.clone());
        Ok(sp)
    }

    /// Records the network namespace of port `name` (for spliced forwards to it). Ports with a
    /// `netns` backend are recorded when added; an embedder that hands in a TAP created in a
    /// namespace (as `usernet run` does) says so here.
    pub fn set_port_netns(&self, name: &str, netns: PathBuf) {
        self.shared
            .port_netns
            .lock()
            .insert(name.to_string(), netns);
    }

    /// Removes a port forward by id or by its `-p` spec (as listed); its host sockets are closed
    /// when this returns.
    pub fn remove_forward(&self, which: &str) -> Result<ForwardInfo> {
        let canonical = which
            .parse::<crate::nat::forward::ForwardSpec>()
            .map(|s| s.to_string())
            .unwrap_or_else(|_| which.to_string());
        for g in self.gateways_of(None)? {
            let found = g
                .forwards
                .lock()
                .iter()
                .find(|f| f.id.to_string() == which || f.publish == canonical)
                .cloned();
            if let Some(info) = found {
                g.remove_forward(info.id)?;
                return Ok(info);
            }
        }
        Err(Error::invalid(
            "forward",
            format!("no port forward {which:?}"),
        ))
    }

    /// Port forwards of one network, or of all.
    pub fn forwards(&self, network: Option<&str>) -> Result<Vec<ForwardInfo>> {
        Ok(self
            .gateways_of(network)?
            .iter()
            .flat_map(|g| g.forwards.lock().clone())
            .collect())
    }

    /// Asks the engine to stop: loops exit and close their links.
    pub fn shutdown(&self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.wake_all();
    }

    /// True once [`Self::shutdown`] was called.
    pub fn is_stopped(&self) -> bool {
        self.shared.stop.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::pick_loop;

    /// Places ports one by one: `nets[k]` is the network of port k; returns each one's loop.
    fn place(loops: usize, nets: &[usize]) -> Vec<usize> {
        let mut owner = Vec::new();
        for (k, &n) in nets.iter().enumerate() {
            let mut load = vec![0; loops];
            let mut same = vec![0; loops];
            for j in 0..k {
                load[owner[j]] += 1;
                if nets[j] == n {
                    same[owner[j]] += 1;
                }
            }
            owner.push(pick_loop(&load, &same));
        }
        owner
    }

    #[test]
    fn isolated_pairs_stay_on_one_loop_and_spread() {
        // Pairs on networks 0..4, added A0 B0 A1 B1 ...: each pair on one loop, pairs spread.
        let o = place(2, &[0, 0, 1, 1, 2, 2, 3, 3]);
        assert_eq!(o, vec![0, 0, 1, 1, 0, 0, 1, 1]);
    }

    #[test]
    fn one_big_network_still_spreads() {
        let o = place(2, &[0; 8]);
        let on0 = o.iter().filter(|&&l| l == 0).count();
        assert!((3..=5).contains(&on0), "{o:?}");
        assert_eq!(place(1, &[0, 1, 0]), vec![0, 0, 0]);
        assert_eq!(pick_loop(&[], &[]), 0);
    }
}
