//! The [`PortSpec`] a config file, the API or the CLI describes a port with: its backend, its
//! networks (access or 802.1Q trunk), its policy, and the checks that name the bad field.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::super::AddrSpec;
use crate::bridge::{PortPolicy, RateLimit};
use crate::error::{Error, Result};
use crate::link::vxlan::VxlanSpec;
use crate::wire::Mac;

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
    /// the control socket, or [`crate::control::Handle::attach_fd`]) instead of being created by usernet: a
    /// rootless attach (see [`crate::control::rootless`]). The address fields are planned as for `netns` and
    /// answered; the sender configures the interface.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fd: bool,
    /// Capture the port's frames, both directions, into this file (pcapng) from the moment
    /// the port is added until it goes (a stream port: each peer adds a section).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcap: Option<PathBuf>,
    /// Rate limits, token buckets each direction: `{ rx_mbit, tx_mbit, rx_pps, tx_pps,
    /// burst_kib }` (0 or absent: unlimited; `rx` is what usernet receives from the port's
    /// link, `tx` what it sends to it). See [`crate::bridge::limit`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Policy rules of this port (see [`crate::policy`]): checked before the network's,
    /// `ingress` towards the port, `egress` from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<crate::policy::PolicySpec>,
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
            rate_limit: None,
            policy: None,
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
        check_rate_limit(self.rate_limit.as_ref(), &format!("{prefix}.rate_limit"))?;
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
            rate_limit: self.rate_limit.and_then(RateLimit::normalized),
            rules: self.policy.clone(),
        }
    }
}

/// Checks a rate limit's ranges; errors name the field as `{field}.{key}`.
pub fn check_rate_limit(limit: Option<&RateLimit>, field: &str) -> Result<()> {
    match limit.map(RateLimit::check) {
        Some(Err((key, why))) => Err(Error::invalid(format!("{field}.{key}"), why)),
        _ => Ok(()),
    }
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

#[cfg(all(test, feature = "toml"))]
mod tests {
    fn parse(limit: &str) -> crate::Result<crate::config::Config> {
        crate::config::Config::parse(&format!(
            "[[network]]\nname = \"n\"\n[[port]]\nnetwork = \"n\"\nname = \"p\"\ntap = \"t0\"\n\
             rate_limit = {{ {limit} }}\n"
        ))
    }

    #[test]
    fn rate_limit_key_parses_and_errors_name_the_field() {
        let cfg = parse("rx_mbit = 100, tx_mbit = 100, rx_pps = 0, tx_pps = 0, burst_kib = 256")
            .expect("parses");
        let l = cfg.port[0].rate_limit.expect("limit");
        assert_eq!((l.rx_mbit, l.tx_mbit, l.burst_kib), (100, 100, 256));
        let pol = cfg.port[0].policy();
        assert_eq!(pol.rate_limit, Some(l));
        // All zero is no limit at all.
        let cfg = parse("rx_mbit = 0").expect("parses");
        assert_eq!(cfg.port[0].policy().rate_limit, None);
        for (bad, field) in [
            ("rx_mbit = 99999999", "port[0].rate_limit.rx_mbit"),
            ("tx_pps = 9999999999", "port[0].rate_limit.tx_pps"),
            ("burst_kib = 99999999", "port[0].rate_limit.burst_kib"),
            ("rx_mbit = -5", "rx_mbit"),
            ("rx_mbits = 5", "rx_mbits"),
        ] {
            let e = parse(bad).expect_err(bad).to_string();
            assert!(e.contains(field), "{bad}: {e}");
        }
    }
}
