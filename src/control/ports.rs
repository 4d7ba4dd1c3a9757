//! Ports: the [`PortSpec`] a config file, the API or the CLI describes a port with, and how it
//! becomes a link on the datapath (a TAP created here or in a namespace, a TAP handed in, an
//! AF_PACKET socket, a stream listener), with the addresses usernet configures
//! (`control/address.rs`) and the liveness watch for ports whose death no read reports.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::node::Watch as EngineWatch;
use super::{AddrSpec, Attached, Handle, address, server};
use crate::bridge::{PortId, PortPolicy};
use crate::error::{Error, Result};
use crate::link::packet::{PacketLink, PacketOptions};
use crate::link::tap::{TapLink, TapOptions};
use crate::link::vxlan::VxlanSpec;
use crate::link::{Link, OpenError};
use crate::wire::Mac;

type Watch = (String, Box<dyn Fn() -> bool + Send>);

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
    /// A UNIX datagram socket usernet binds, one frame per datagram (QEMU `-netdev dgram`,
    /// vfkit, gvproxy `unixgram`).
    Dgram {
        /// Socket path.
        path: PathBuf,
        /// The peer's socket path; `None`: learned from the first datagram.
        peer: Option<PathBuf>,
    },
    /// A vhost-user-net backend listening on a UNIX socket (QEMU `-netdev vhost-user`).
    VhostUser {
        /// Socket path.
        path: PathBuf,
    },
    /// A VXLAN tunnel to remote VTEPs over host UDP sockets ([`crate::link::vxlan`]).
    Vxlan {
        /// VNI, addresses, port, MTU.
        spec: VxlanSpec,
    },
}

/// The `dgram` key of a port: the socket path usernet binds (`"PATH"`), or a table with the
/// peer's path too (`{ path = "PATH", peer = "VM_PATH" }`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DgramSpec {
    /// Just the socket path; the peer is learned from the first datagram.
    Path(PathBuf),
    /// The socket path and, optionally, the peer's.
    Full(DgramAddrs),
}

/// The socket paths of a `dgram` port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DgramAddrs {
    /// The socket path usernet binds.
    pub path: PathBuf,
    /// The peer's bound socket path (the VM's); default: learned from the first datagram.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<PathBuf>,
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
    /// The network to join (an access port). Empty for a trunk port (`trunk`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub network: String,
    /// Instead of `network`: an 802.1Q trunk port carrying these networks, network name →
    /// VLAN id (1-4094), tagged on the wire (see [`crate::bridge`]).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub trunk: std::collections::BTreeMap<String, u16>,
    /// With `trunk`: the network of untagged frames (default: none, they are dropped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub native: Option<String>,
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
    /// A UNIX datagram socket path usernet binds for a VM (QEMU `-netdev dgram`, vfkit), one
    /// frame per datagram; optionally with the peer's path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dgram: Option<DgramSpec>,
    /// A UNIX socket path usernet listens on as a vhost-user-net backend (QEMU `-netdev
    /// vhost-user`, libvirt `type='vhostuser'`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhost_user: Option<PathBuf>,
    /// A VXLAN tunnel (RFC 7348) to other hosts: `{ vni, local, remotes, port, mtu }`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vxlan: Option<VxlanSpec>,
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
    /// and the gateway knows them at once (DNS name, forwards). See `control/address.rs`.
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
    /// rootless attach (see [`super::rootless`]). The address fields are planned as for `netns` and
    /// answered; the sender configures the interface.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fd: bool,
    /// Capture the port's frames, both directions, into this file (pcapng) from the moment
    /// the port is added until it goes (a stream port: each peer adds a section).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcap: Option<PathBuf>,
}
impl PortSpec {
    /// A spec with default policy and no backend chosen yet.
    pub fn new(network: &str, name: &str) -> Self {
        PortSpec {
            network: network.into(),
            trunk: Default::default(),
            native: None,
            name: name.into(),
            tap: None,
            netns: None,
            ifname: None,
            packet: None,
            stream: None,
            dgram: None,
            vhost_user: None,
            vxlan: None,
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
            pcap: None,
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
            self.dgram.is_some(),
            self.vhost_user.is_some(),
            self.vxlan.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if set != 1 {
            return Err(Error::invalid(
                prefix,
                format!(
                    "port {:?} needs exactly one of `tap`, `netns`, `packet`, `stream`, `dgram`, `vhost_user`, `vxlan` (found {set})",
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
        self.check_networks(prefix)?;
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
        if self.pcap.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            return Err(Error::invalid(format!("{prefix}.pcap"), "empty path"));
        }
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
        if let Some(d) = &self.dgram {
            let (path, peer) = match d {
                DgramSpec::Path(p) => (p.clone(), None),
                DgramSpec::Full(a) => (a.path.clone(), a.peer.clone()),
            };
            if path.as_os_str().is_empty() {
                return Err(Error::invalid(format!("{prefix}.dgram"), "empty path"));
            }
            if peer.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                return Err(Error::invalid(format!("{prefix}.dgram.peer"), "empty path"));
            }
            return Ok(Backend::Dgram { path, peer });
        }
        if let Some(p) = &self.vhost_user {
            if p.as_os_str().is_empty() {
                return Err(Error::invalid(format!("{prefix}.vhost_user"), "empty path"));
            }
            return Ok(Backend::VhostUser { path: p.clone() });
        }
        if let Some(v) = &self.vxlan {
            v.check()
                .map_err(|(k, r)| Error::invalid(format!("{prefix}.vxlan.{k}"), r))?;
            return Ok(Backend::Vxlan { spec: v.clone() });
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

    /// Checks `network` / `trunk` / `native`: an access port names its network, a trunk port
    /// maps networks to distinct VLAN ids (1-4094) and has no address fields. Errors name the
    /// field as `{prefix}.{key}`.
    fn check_networks(&self, prefix: &str) -> Result<()> {
        if self.trunk.is_empty() {
            if self.native.is_some() {
                return Err(Error::invalid(
                    format!("{prefix}.native"),
                    "only meaningful with `trunk`",
                ));
            }
            if self.network.is_empty() {
                return Err(Error::invalid(
                    format!("{prefix}.network"),
                    "missing: the network to join (or `trunk` for an 802.1Q trunk port)",
                ));
            }
            return Ok(());
        }
        if !self.network.is_empty() {
            return Err(Error::invalid(
                format!("{prefix}.trunk"),
                format!(
                    "port {:?} has both `network` and `trunk`: give one (a trunk's untagged network is `native`)",
                    self.name
                ),
            ));
        }
        for (key, set) in [
            ("mac", self.mac.is_some()),
            ("ips", !self.ips.is_empty()),
            ("gateway", !self.gateway.is_empty()),
            ("default_route", self.default_route.is_some()),
            ("routes", !self.routes.is_empty()),
            ("fd", self.fd),
        ] {
            if set {
                return Err(Error::invalid(
                    format!("{prefix}.{key}"),
                    "not with `trunk` (addresses are configured on an access port of one network)",
                ));
            }
        }
        self.trunk_spec()
            .unwrap_or_default()
            .check(&format!("{prefix}.trunk"))
            .map_err(|(field, why)| {
                // `native` is a sibling of `trunk`, not a key inside it.
                let field = field.replace(".trunk.native", ".native");
                Error::invalid(field, why)
            })
    }

    /// The trunk's networks, for the bridge; `None` for an access port.
    pub fn trunk_spec(&self) -> Option<crate::bridge::TrunkSpec> {
        if self.trunk.is_empty() {
            return None;
        }
        Some(crate::bridge::TrunkSpec::new(
            self.trunk.iter().map(|(n, v)| (n.as_str(), *v)),
            self.native.as_deref(),
        ))
    }

    /// Every network the port joins: `network`, or a trunk's networks and `native`, each with
    /// the field that names it (`network`, `trunk.NAME`, `native`).
    pub fn networks(&self) -> Vec<(String, &str)> {
        if self.trunk.is_empty() {
            return vec![("network".into(), self.network.as_str())];
        }
        self.trunk
            .keys()
            .map(|n| (format!("trunk.{n}"), n.as_str()))
            .chain(self.native.as_deref().map(|n| ("native".into(), n)))
            .collect()
    }

    /// The network the port is listed under: `network`, or a trunk's `native`, or the
    /// network of its lowest VLAN id (as the bridge does).
    pub fn home_network(&self) -> &str {
        if self.trunk.is_empty() {
            return &self.network;
        }
        self.native
            .as_deref()
            .or_else(|| {
                self.trunk
                    .iter()
                    .min_by_key(|(_, v)| **v)
                    .map(|(n, _)| n.as_str())
            })
            .unwrap_or_default()
    }

    /// The forwarding policy. A VXLAN port carries the guests of other hosts (each host checks
    /// its own): port security is off on it unless `port_security` says otherwise.
    pub fn policy(&self) -> PortPolicy {
        PortPolicy {
            learning: self.learning,
            flood: self.flood,
            isolated: self.isolated,
            allowed_macs: self.allowed_macs.clone(),
            allowed_ips: self.allowed_ips.clone(),
            port_security: self.port_security.or(self.vxlan.as_ref().map(|_| false)),
            trunk: self.trunk_spec(),
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
/// Parses a trunk map as the command line writes it: `net0=10,net1=20` (network name = VLAN
/// id). Ranges and duplicates are checked later, with the rest of the port.
pub fn parse_trunk(
    s: &str,
) -> std::result::Result<std::collections::BTreeMap<String, u16>, String> {
    let mut m = std::collections::BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (net, vid) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?}: expected NETWORK=VLAN_ID"))?;
        let vid: u16 = vid
            .trim()
            .parse()
            .map_err(|_| format!("{part:?}: {:?} is not a VLAN id (1-4094)", vid.trim()))?;
        if m.insert(net.trim().to_string(), vid).is_some() {
            return Err(format!("network {:?} is given twice", net.trim()));
        }
    }
    if m.is_empty() {
        return Err("empty: expected NETWORK=VLAN_ID[,NETWORK=VLAN_ID...]".into());
    }
    Ok(m)
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

impl Handle {
    /// Adds a port on `network` driven by `link`. The link is handed to the event loop chosen
    /// by [`crate::engine::pick_loop`]: the one that serves most of the network's ports, unless it has
    /// [`crate::engine::LOOP_SPILL`] more ports than the least loaded loop.
    pub fn add_port(
        &self,
        network: &str,
        name: &str,
        policy: PortPolicy,
        link: Box<dyn Link>,
    ) -> Result<PortId> {
        self.dp.add_link(network, name, policy, link)
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
    /// start and the network's gateway knows its MAC and name at once (see `control/address.rs`).
    pub fn attach(&self, spec: &PortSpec) -> Result<Attached> {
        self.attach_with(spec, None)
    }
    /// Like [`Handle::attach`] for a `netns` port whose TAP was created by the caller (inside
    /// a rootless container's namespaces, which this process cannot enter; see [`super::rootless`]):
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
        self.check_networks_exist(spec)?;
        if let Backend::Stream { path } = &backend {
            self.listen_stream(spec.clone(), path)?;
            return Ok(Attached::default());
        }
        if self
            .dp
            .bridge()
            .topology()
            .port_by_name(&spec.name)
            .is_some()
        {
            return Err(crate::bridge::BridgeError::PortExists(spec.name.clone()).into());
        }
        // Adopting a TAP handed over needs nothing the sandbox takes away.
        if crate::sandbox::is_applied() && tap.is_none() {
            let what = match &backend {
                Backend::Tap { .. } => "a new TAP (`tap`)",
                Backend::NetnsTap { .. } => "a port in a network namespace (`netns`)",
                Backend::Packet { .. } => "an AF_PACKET port (`packet`)",
                Backend::Stream { .. } => "a stream port",
                Backend::Dgram { .. } => "a datagram socket port (`dgram`)",
                Backend::VhostUser { .. } => "a vhost-user port (`vhost_user`)",
                Backend::Vxlan { .. } => "a VXLAN port (`vxlan`)",
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
        let pcap = match &spec.pcap {
            Some(p) => Some((p, super::capture::open_pcap(p, false)?)),
            None => None,
        };
        let res = self.open_planned(spec, &backend, &tap_opts, plan.as_ref(), tap);
        if let (Ok(_), Some((path, file))) = (&res, pcap) {
            self.start_pcap(&spec.name, path, file);
        }
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
    /// Every network `spec` joins exists (an access port's: `NoSuchNetwork`, as before; a
    /// trunk's: an error naming the key).
    fn check_networks_exist(&self, spec: &PortSpec) -> Result<()> {
        let topo = self.dp.bridge().topology();
        for (key, net) in spec.networks() {
            if topo.network_by_name(net).is_none() {
                if spec.trunk.is_empty() {
                    return Err(crate::bridge::BridgeError::NoSuchNetwork(net.to_string()).into());
                }
                return Err(Error::invalid(
                    format!("port.{key}"),
                    format!("no network named {net:?}"),
                ));
            }
        }
        Ok(())
    }
    fn open_planned(
        &self,
        spec: &PortSpec,
        backend: &Backend,
        tap_opts: &TapOptions,
        plan: Option<&address::Plan>,
        tap: Option<std::os::fd::OwnedFd>,
    ) -> Result<PortId> {
        let mut vxlan = None;
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
            Backend::Dgram { path, peer } => (
                Box::new(self.bind_dgram(&spec.name, path, peer.as_deref())?),
                None,
            ),
            Backend::VhostUser { path } => {
                (Box::new(self.listen_vhost_user(&spec.name, path)?), None)
            }
            Backend::Vxlan { spec: v } => {
                let link = self.open_vxlan(spec, v)?;
                vxlan = Some(link.shared().clone());
                (Box::new(link), None)
            }
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
        let id = self.add_port(spec.home_network(), &spec.name, policy, link)?;
        if let Some(v) = vxlan {
            self.vxlan_added(spec.home_network(), &spec.name, v);
        }
        if let Backend::NetnsTap { netns, .. } = backend {
            self.set_port_netns(&spec.name, netns.clone());
        }
        if let Some((what, alive)) = watch {
            self.node.watches.lock().push(EngineWatch {
                port: id,
                what,
                alive,
            });
        }
        Ok(id)
    }
    fn bind_dgram(
        &self,
        name: &str,
        path: &std::path::Path,
        peer: Option<&std::path::Path>,
    ) -> Result<crate::link::dgram::DgramLink> {
        if let Ok(m) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            if !m.file_type().is_socket() {
                return Err(Error::invalid(
                    "dgram",
                    format!("{} exists and is not a socket", path.display()),
                ));
            }
            let probe = std::os::unix::net::UnixDatagram::unbound()
                .map_err(|e| Error::Io("datagram socket".into(), e))?;
            // Refused: a stale socket file, replaced. Connected, or EPERM (a live datagram socket
            // connected elsewhere), or a stream socket's EPROTOTYPE: in use.
            match probe.connect(path) {
                Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                    let _ = std::fs::remove_file(path);
                }
                _ => {
                    return Err(Error::invalid(
                        "dgram",
                        format!("{} is in use by a live socket", path.display()),
                    ));
                }
            }
        }
        let what = format!("{name} on {}", path.display());
        Ok(crate::link::dgram::DgramLink::bind(
            path,
            peer,
            self.dp.config().max_frame,
            &what,
        )?)
    }

    fn listen_vhost_user(
        &self,
        name: &str,
        path: &std::path::Path,
    ) -> Result<crate::link::vhost_user::VhostUserLink> {
        if path.exists() {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(Error::invalid(
                    "vhost_user",
                    format!("{} is in use by a live socket", path.display()),
                ));
            }
            let _ = std::fs::remove_file(path);
        }
        let what = format!("{name} on {}", path.display());
        let (backend, link) =
            crate::link::vhost_user::VhostUserNet::listen(path, self.dp.config().max_frame, &what)?;
        // Removing the port stops the backend (as a stream port's listener).
        self.node
            .streams
            .lock()
            .insert(name.to_string(), backend.stop_flag());
        backend.detach();
        Ok(link)
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
        // The first peer's capture empties the file; later peers' add sections to it.
        let mut pcap = match &spec.pcap {
            Some(p) => Some(super::capture::open_pcap(p, false)?),
            None => None,
        };
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        self.node
            .streams
            .lock()
            .insert(spec.name.clone(), stop.clone());
        let h = self.clone();
        let path = path.to_path_buf();
        let max = self.dp.config().max_frame;
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
                                        h.add_port(spec.home_network(), &spec.name, spec.policy(), Box::new(link))
                                    {
                                        tracing::warn!(port = %spec.name, "stream peer: {e}");
                                    } else {
                                        tracing::info!(port = %spec.name, "stream peer connected");
                                        if let Some(p) = &spec.pcap {
                                            let file = match pcap.take() {
                                                Some(f) => Ok(f),
                                                None => super::capture::open_pcap(p, true),
                                            };
                                            match file {
                                                Ok(f) => h.start_pcap(&spec.name, p, f),
                                                Err(e) => tracing::warn!(port = %spec.name, "{e}"),
                                            }
                                        }
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
        if let Some(stop) = self.node.streams.lock().remove(name) {
            stop.store(true, Ordering::Release);
            if self.dp.bridge().topology().port_by_name(name).is_none() {
                return Ok(());
            }
        }
        let port = self
            .dp
            .bridge()
            .topology()
            .port_by_name(name)
            .cloned()
            .ok_or_else(|| crate::bridge::BridgeError::NoSuchPort(name.to_string()))?;
        self.dp.bridge().remove_port(port.id);
        self.node.port_netns.lock().remove(name);
        self.node.vxlan.lock().remove(name);
        self.detach_link(port.owner, port.id)
    }
    pub(super) fn detach_link(&self, owner: usize, id: PortId) -> Result<()> {
        self.dp.detach(owner, id)
    }
    /// Adds a static FDB entry: `mac` on `vlan` is always behind port `port`.
    pub fn add_static_mac(&self, port: &str, mac: Mac, vlan: u16) -> Result<()> {
        let topo = self.dp.bridge().topology();
        let p = topo
            .port_by_name(port)
            .ok_or_else(|| crate::bridge::BridgeError::NoSuchPort(port.to_string()))?;
        let ne = topo
            .network(p.network)
            .ok_or_else(|| crate::bridge::BridgeError::NoSuchPort(port.to_string()))?;
        ne.net.fdb.add_static(vlan, mac, p.id);
        Ok(())
    }
}
