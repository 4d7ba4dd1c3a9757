//! The TOML configuration file of `usernet up`, parsed with serde and validated into typed values.
//!
//! Unknown keys are errors (with the line and the list of valid keys, from serde); values are
//! checked and errors name the key as `network[1].subnet`, `port[0].tap` and so on. Every key is
//! documented in README.md.

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::control::api::fdb_config;
use crate::control::{Handle, PortSpec};
use crate::engine::EngineConfig;
use crate::error::{Error, Result};
use crate::gateway::GatewayConfig;
use crate::gateway::dns::Upstreams;

/// `[engine]`: process-wide settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct EngineSection {
    /// Event-loop threads.
    pub loops: usize,
    /// Largest MTU of any port (sizes frame buffers).
    pub mtu: u32,
    /// TX ring capacity per port, in frames.
    pub ring: usize,
    /// Adaptive busy-polling window in µs (0 = off); see [`EngineConfig::busy_poll`].
    pub busy_poll_us: u32,
}

impl Default for EngineSection {
    fn default() -> Self {
        EngineSection {
            loops: 1,
            mtu: 1500,
            ring: crate::bridge::DEFAULT_RING,
            busy_poll_us: 0,
        }
    }
}

/// Largest `[engine] busy_poll_us`: a second.
const MAX_BUSY_POLL_US: u32 = 1_000_000;

fn yes() -> bool {
    true
}

/// A static DHCP lease in `[[network]] static_leases`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct StaticLeaseSection {
    /// Client MAC.
    pub mac: crate::wire::Mac,
    /// Address it always gets.
    pub ip: std::net::Ipv4Addr,
    /// DNS name registered for it.
    #[serde(default)]
    pub hostname: Option<String>,
}

/// `[[network]]`: one network (bridge domain) and its gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct NetworkSection {
    /// Unique name.
    pub name: String,
    /// Run a gateway (ARP, ICMP, DHCP, DNS, NDP/RA) on this network (default true).
    #[serde(default = "yes")]
    pub gateway: bool,
    /// IPv4 subnet; the gateway is its first host (default 10.88.0.0/24).
    #[serde(default)]
    pub subnet: Option<Ipv4Net>,
    /// IPv6 prefix for SLAAC, a /64 (default fd88::/64); `"off"` disables IPv6 on the gateway.
    #[serde(default)]
    pub ipv6: Option<String>,
    /// DNS domain of the endpoints (default `usernet`).
    #[serde(default)]
    pub domain: Option<String>,
    /// Link MTU the gateway announces by DHCP and RA (default: `[engine] mtu`).
    #[serde(default)]
    pub mtu: Option<u16>,
    /// No NAT egress (Docker `--internal`).
    #[serde(default)]
    pub internal: bool,
    /// DNS upstreams: `"IP"` or `"IP:PORT"` (`"[IPv6]:PORT"`); default: the nameservers of
    /// `/etc/resolv.conf`, re-read when it changes.
    #[serde(default)]
    pub dns_upstreams: Option<Vec<String>>,
    /// Serve DHCPv4 (default true).
    #[serde(default = "yes")]
    pub dhcp: bool,
    /// DHCP pool `"FIRST-LAST"` (default: the whole subnet but the gateway).
    #[serde(default)]
    pub dhcp_range: Option<String>,
    /// DHCP lease time in seconds (default 3600).
    #[serde(default)]
    pub lease_secs: Option<u32>,
    /// Static DHCP leases.
    #[serde(default)]
    pub static_leases: Vec<StaticLeaseSection>,
    /// Map the gateway's address to the host's loopback (default true).
    #[serde(default = "yes")]
    pub host_loopback: bool,
    /// Bind NAT egress IPv4 sockets to this host address.
    #[serde(default)]
    pub outbound_addr: Option<std::net::Ipv4Addr>,
    /// Bind NAT egress IPv6 sockets to this host address.
    #[serde(default)]
    pub outbound_addr6: Option<std::net::Ipv6Addr>,
    /// Most NAT flows on the network (default 2048).
    #[serde(default)]
    pub max_flows: Option<usize>,
    /// Most NAT flows per guest address (default 1024).
    #[serde(default)]
    pub max_flows_per_guest: Option<usize>,
    /// FDB size cap (default 8192).
    #[serde(default)]
    pub fdb_max_entries: Option<usize>,
    /// FDB aging in seconds (default 300; 0 = never).
    #[serde(default)]
    pub fdb_aging_secs: Option<u64>,
    /// Port security on the network's ports by default (default: on with a gateway, off
    /// without): every source MAC/IP owned by its port, RA and DHCP-server guard.
    #[serde(default)]
    pub port_security: Option<bool>,
    /// Let guests reach the cloud metadata service (169.254.169.254) through NAT (default false).
    #[serde(default)]
    pub allow_metadata: bool,
}

impl NetworkSection {
    /// A network with every default.
    pub fn new(name: &str) -> Self {
        NetworkSection {
            name: name.to_string(),
            gateway: true,
            subnet: None,
            ipv6: None,
            domain: None,
            mtu: None,
            internal: false,
            dns_upstreams: None,
            dhcp: true,
            dhcp_range: None,
            lease_secs: None,
            static_leases: Vec::new(),
            host_loopback: true,
            outbound_addr: None,
            outbound_addr6: None,
            max_flows: None,
            max_flows_per_guest: None,
            fdb_max_entries: None,
            fdb_aging_secs: None,
            port_security: None,
            allow_metadata: false,
        }
    }

    /// The gateway settings this section describes (None with `gateway = false`); errors name
    /// the key under `prefix`.
    pub fn gateway_config(&self, prefix: &str, engine_mtu: u32) -> Result<Option<GatewayConfig>> {
        if !self.gateway {
            return Ok(None);
        }
        let key = |k: &str| format!("{prefix}.{k}");
        let subnet = self
            .subnet
            .unwrap_or_else(|| {
                Ipv4Net::new(std::net::Ipv4Addr::new(10, 88, 0, 0), 24).unwrap_or_default()
            })
            .trunc();
        if subnet.prefix_len() > 30 {
            return Err(Error::invalid(
                key("subnet"),
                format!("{subnet} leaves no room for a gateway and guests (use /30 or larger)"),
            ));
        }
        let mut g = GatewayConfig::new(&self.name, subnet);
        g.ipv6 = match self.ipv6.as_deref() {
            None => g.ipv6,
            Some("off") | Some("none") | Some("") => None,
            Some(text) => {
                let p: Ipv6Net = text.parse().map_err(|e| {
                    Error::invalid(key("ipv6"), format!("{text:?}: {e} (or \"off\")"))
                })?;
                if p.prefix_len() != 64 {
                    return Err(Error::invalid(
                        key("ipv6"),
                        format!("{p}: SLAAC needs a /64 prefix"),
                    ));
                }
                Some(p.trunc())
            }
        };
        if let Some(d) = &self.domain {
            let ok = !d.is_empty()
                && d.len() <= 200
                && d.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                        && !l.starts_with('-')
                        && !l.ends_with('-')
                });
            if !ok {
                return Err(Error::invalid(
                    key("domain"),
                    format!("{d:?} is not a DNS domain"),
                ));
            }
            g.domain = d.to_ascii_lowercase();
        }
        let mtu = self.mtu.map(u32::from).unwrap_or(engine_mtu);
        if !(576..=65535).contains(&mtu) {
            return Err(Error::invalid(
                key("mtu"),
                format!("{mtu} is outside 576..=65535"),
            ));
        }
        g.mtu = mtu as u16;
        if let Some(ups) = &self.dns_upstreams {
            let mut v = Vec::new();
            for (i, u) in ups.iter().enumerate() {
                v.push(parse_upstream(u).ok_or_else(|| {
                    Error::invalid(
                        format!("{prefix}.dns_upstreams[{i}]"),
                        format!("{u:?} is not IP or IP:PORT"),
                    )
                })?);
            }
            g.upstreams = Upstreams::Explicit(v);
        }
        g.dhcp = self.dhcp;
        g.internal = self.internal;
        g.host_loopback = self.host_loopback;
        g.port_security = self.port_security.unwrap_or(true);
        g.allow_metadata = self.allow_metadata;
        g.outbound4 = self.outbound_addr;
        g.outbound6 = self.outbound_addr6;
        for (k, v, dst) in [
            ("max_flows", self.max_flows, &mut g.max_flows),
            (
                "max_flows_per_guest",
                self.max_flows_per_guest,
                &mut g.max_flows_per_guest,
            ),
        ] {
            if let Some(v) = v {
                if v == 0 || v > 1_000_000 {
                    return Err(Error::invalid(
                        key(k),
                        format!("{v} is outside 1..=1000000"),
                    ));
                }
                *dst = v;
            }
        }
        if let Some(r) = &self.dhcp_range {
            let bad = || {
                Error::invalid(
                    key("dhcp_range"),
                    format!("{r:?} is not FIRST-LAST inside {subnet}"),
                )
            };
            let (a, b) = r.split_once('-').ok_or_else(bad)?;
            let a: std::net::Ipv4Addr = a.trim().parse().map_err(|_| bad())?;
            let b: std::net::Ipv4Addr = b.trim().parse().map_err(|_| bad())?;
            if !subnet.contains(&a) || !subnet.contains(&b) || a > b {
                return Err(bad());
            }
            g.dhcp_range = Some((a, b));
        }
        if let Some(l) = self.lease_secs {
            if l < 60 {
                return Err(Error::invalid(
                    key("lease_secs"),
                    format!("{l} is under 60"),
                ));
            }
            g.lease_secs = l;
        }
        for (i, s) in self.static_leases.iter().enumerate() {
            if !subnet.contains(&s.ip) {
                return Err(Error::invalid(
                    format!("{prefix}.static_leases[{i}].ip"),
                    format!("{} is outside {subnet}", s.ip),
                ));
            }
            g.static_leases.push(crate::gateway::dhcp::StaticLease {
                mac: s.mac,
                ip: s.ip,
                hostname: s.hostname.clone(),
            });
        }
        Ok(Some(g))
    }
}

/// Parses a DNS upstream: `IP` (port 53), `IP:PORT`, `[IPv6]:PORT`.
pub fn parse_upstream(s: &str) -> Option<std::net::SocketAddr> {
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return Some(sa);
    }
    s.parse::<std::net::IpAddr>()
        .ok()
        .map(|ip| std::net::SocketAddr::new(ip, 53))
}

/// A whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Config {
    /// `[engine]`.
    #[serde(default)]
    pub engine: EngineSection,
    /// `[[network]]` tables.
    #[serde(default)]
    pub network: Vec<NetworkSection>,
    /// `[[port]]` tables.
    #[serde(default)]
    pub port: Vec<PortSpec>,
    /// `[[forward]]` tables: port forwards (Docker `-p`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forward: Vec<crate::nat::forward::Forward>,
}

impl Config {
    /// Parses and validates TOML text (feature `toml`, on by default).
    #[cfg(feature = "toml")]
    pub fn parse(text: &str) -> Result<Config> {
        let cfg: Config =
            toml::from_str(text).map_err(|e| Error::invalid("config", e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads, parses and validates a file (feature `toml`, on by default).
    #[cfg(feature = "toml")]
    pub fn load(path: &std::path::Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Io(format!("reading {}", path.display()), e))?;
        Self::parse(&text).map_err(|e| match e {
            Error::Invalid { field, reason } => Error::Invalid {
                field: format!("{}: {field}", path.display()),
                reason,
            },
            other => other,
        })
    }

    /// Checks cross-references and values; errors name the key.
    pub fn validate(&self) -> Result<()> {
        let e = &self.engine;
        if !(1..=64).contains(&e.loops) {
            return Err(Error::invalid(
                "engine.loops",
                format!("{} is outside 1..=64", e.loops),
            ));
        }
        if e.busy_poll_us > MAX_BUSY_POLL_US {
            return Err(Error::invalid(
                "engine.busy_poll_us",
                format!("{} is above {MAX_BUSY_POLL_US} (1 s)", e.busy_poll_us),
            ));
        }
        if !(68..=65535).contains(&e.mtu) {
            return Err(Error::invalid(
                "engine.mtu",
                format!("{} is outside 68..=65535", e.mtu),
            ));
        }
        if !(1..=1 << 20).contains(&e.ring) {
            return Err(Error::invalid(
                "engine.ring",
                format!("{} is outside 1..=1048576", e.ring),
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, n) in self.network.iter().enumerate() {
            crate::bridge::validate_name(&n.name)
                .map_err(|er| Error::invalid(format!("network[{i}].name"), er.to_string()))?;
            if !names.insert(n.name.as_str()) {
                return Err(Error::invalid(
                    format!("network[{i}].name"),
                    format!("network {:?} is defined twice", n.name),
                ));
            }
            if n.fdb_max_entries == Some(0) {
                return Err(Error::invalid(
                    format!("network[{i}].fdb_max_entries"),
                    "must be at least 1",
                ));
            }
            n.gateway_config(&format!("network[{i}]"), self.engine.mtu)?;
        }
        for (i, f) in self.forward.iter().enumerate() {
            let Some(n) = self.network.iter().find(|n| n.name == f.network) else {
                return Err(Error::invalid(
                    format!("forward[{i}].network"),
                    format!("no [[network]] named {:?}", f.network),
                ));
            };
            if !n.gateway || n.internal {
                return Err(Error::invalid(
                    format!("forward[{i}].network"),
                    format!(
                        "network {:?} has no NAT (gateway = false or internal = true)",
                        f.network
                    ),
                ));
            }
            if f.to.trim().is_empty() {
                return Err(Error::invalid(format!("forward[{i}].to"), "empty target"));
            }
        }
        let mut ports = std::collections::HashSet::new();
        for (i, p) in self.port.iter().enumerate() {
            p.backend(&format!("port[{i}]"))?;
            if !names.contains(p.network.as_str()) {
                return Err(Error::invalid(
                    format!("port[{i}].network"),
                    format!("no [[network]] named {:?}", p.network),
                ));
            }
            if !ports.insert(p.name.as_str()) {
                return Err(Error::invalid(
                    format!("port[{i}].name"),
                    format!("port {:?} is defined twice", p.name),
                ));
            }
        }
        Ok(())
    }

    /// Engine settings from `[engine]`.
    pub fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            loops: self.engine.loops,
            max_frame: self.engine.mtu as usize + 14 + 8,
            ring: self.engine.ring,
            busy_poll: std::time::Duration::from_micros(self.engine.busy_poll_us.into()),
            ..EngineConfig::default()
        }
    }

    /// Creates the networks and ports on a running engine.
    pub fn apply(&self, h: &Handle) -> Result<()> {
        for (i, n) in self.network.iter().enumerate() {
            h.add_network(&n.name, fdb_config(n.fdb_max_entries, n.fdb_aging_secs))?;
            if let Some(on) = n.port_security {
                h.set_port_security(&n.name, on)?;
            }
            if let Some(g) = n.gateway_config(&format!("network[{i}]"), self.engine.mtu)? {
                h.add_gateway(g)?;
            }
        }
        for p in &self.port {
            h.open_port(p)?;
        }
        for f in &self.forward {
            h.add_forward(f)?;
        }
        Ok(())
    }
}

/// Parses a CIDR string (for CLI flags).
pub fn parse_net(s: &str, field: &str) -> Result<IpNet> {
    s.parse()
        .map_err(|e| Error::invalid(field, format!("{s:?}: {e}")))
}

#[cfg(all(test, feature = "toml"))]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[engine]
loops = 2

[[network]]
name = "net0"
subnet = "10.88.0.0/24"
fdb_aging_secs = 0

[[port]]
network = "net0"
name = "web"
tap = "t1"

[[port]]
network = "net0"
name = "db"
netns = "/run/netns/c1"
isolated = true

[[port]]
network = "net0"
name = "up"
packet = "veth0"
"#;

    #[test]
    fn parses_the_documented_shape() {
        let c = Config::parse(GOOD).expect("valid");
        assert_eq!(c.engine.loops, 2);
        assert_eq!(c.network[0].fdb_aging_secs, Some(0));
        assert_eq!(c.port.len(), 3);
        assert!(c.port[1].isolated);
        assert_eq!(c.engine_config().loops, 2);
    }

    fn err(text: &str) -> String {
        Config::parse(text).expect_err("invalid").to_string()
    }

    #[test]
    fn errors_name_the_key() {
        assert!(err("[[network]]\nname = \"a\"\nsubnett = \"x\"").contains("subnett"));
        assert!(err("[[network]]\nname = \"a\"\nsubnet = \"10.0.0.0/33\"").contains("subnet"));
        let e =
            err("[[network]]\nname = \"a\"\n[[port]]\nnetwork = \"b\"\nname = \"p\"\ntap = \"t\"");
        assert!(e.contains("port[0].network"), "{e}");
        let e = err("[[network]]\nname = \"a\"\n[[port]]\nnetwork = \"a\"\nname = \"p\"");
        assert!(e.contains("port[0]") && e.contains("exactly one"), "{e}");
        let e = err(
            "[[network]]\nname = \"a\"\n[[port]]\nnetwork = \"a\"\nname = \"p\"\ntap = \"waytoolongname0123\"",
        );
        assert!(e.contains("port[0].tap"), "{e}");
        let e = err("[[network]]\nname = \"a\"\n[[network]]\nname = \"a\"");
        assert!(e.contains("network[1].name"), "{e}");
        assert!(err("[engine]\nloops = 0").contains("engine.loops"));
        assert!(err("[engine]\nbusy_poll_us = 2000000").contains("engine.busy_poll_us"));
        assert!(err("[[forward]]\npublish = \"8080:80\"").contains("forward"));
        assert!(err("[[network]]\nname = \"a\"\nfdb_max_entries = 0").contains("fdb_max_entries"));
    }
}
