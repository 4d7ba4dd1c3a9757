//! Networks: the one [`NetworkSpec`] the config file (`[[network]]`), the API (`add_network`),
//! the CLI and the binaries describe a network with, and the one place that creates a network
//! with its gateway ([`Handle::create_network`], [`Handle::add_network_with`]), rolling back
//! what it made when a later step fails.

use std::sync::Arc;

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use super::Handle;
use crate::bridge::FdbConfig;
use crate::bridge::fdb::{DEFAULT_AGING_MS, DEFAULT_MAX_ENTRIES};
use crate::error::{Error, Result};
use crate::gateway::dns::{DnsPolicy, DnsPolicySpec, Upstreams};
use crate::gateway::{Gateway, GatewayConfig};

/// Builds an [`FdbConfig`] from optional API/config values.
pub fn fdb_config(max_entries: Option<usize>, aging_secs: Option<u64>) -> FdbConfig {
    FdbConfig {
        max_entries: max_entries.unwrap_or(DEFAULT_MAX_ENTRIES),
        aging_ms: aging_secs.map_or(DEFAULT_AGING_MS, |s| s.saturating_mul(1000)),
    }
}

fn yes() -> bool {
    true
}

/// A static DHCP lease in a network's `static_leases`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct StaticLeaseSpec {
    /// Client MAC.
    pub mac: crate::wire::Mac,
    /// Address it always gets.
    pub ip: std::net::Ipv4Addr,
    /// DNS name registered for it.
    #[serde(default)]
    pub hostname: Option<String>,
}

/// One network (bridge domain) and its gateway: `[[network]]` in the config file, the API's
/// `add_network`, and what the binaries build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct NetworkSpec {
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
    pub static_leases: Vec<StaticLeaseSpec>,
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
    /// Which names the gateway resolves for guests (default: every name); see
    /// [`crate::gateway::dns::policy`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_policy: Option<DnsPolicySpec>,
    /// Policy rules of the network (see [`crate::policy`]): `egress` leaves through NAT,
    /// `ingress` comes in through a port forward; between guests, rules without a direction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<crate::policy::PolicySpec>,
    /// `local` (default): this node only; `cluster`: shared by the nodes of the `[cluster]`
    /// that declare it, over a VXLAN port usernet makes (see [`super::cluster`]).
    #[serde(default, skip_serializing_if = "is_local")]
    pub scope: super::cluster::Scope,
    /// The VNI of a cluster network (0..=16777215; the same on every node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vni: Option<u32>,
}

fn is_local(s: &super::cluster::Scope) -> bool {
    *s == super::cluster::Scope::Local
}

impl NetworkSpec {
    /// A network with every default.
    pub fn new(name: &str) -> Self {
        NetworkSpec {
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
            dns_policy: None,
            policy: None,
            scope: super::cluster::Scope::Local,
            vni: None,
        }
    }

    /// The gateway settings this section describes (None with `gateway = false`); errors name
    /// the key under `prefix`.
    pub fn gateway_config(&self, prefix: &str, engine_mtu: u32) -> Result<Option<GatewayConfig>> {
        if !self.gateway {
            if self.dns_policy.is_some() {
                return Err(Error::invalid(
                    format!("{prefix}.dns_policy"),
                    "needs the network's gateway (gateway = false serves no DNS)",
                ));
            }
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
        g.dns_policy = self
            .dns_policy
            .clone()
            .map(|p| DnsPolicy::new(p, &key("dns_policy")))
            .transpose()?;
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

/// A network's DNS name policy, as `usernet ctl dns policy` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DnsPolicyInfo {
    /// The network.
    pub network: String,
    /// The policy in force (None: every name allowed).
    pub policy: Option<DnsPolicySpec>,
    /// Queries it denied since the gateway started.
    pub denied: u64,
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

impl Handle {
    /// Creates the network `spec` describes: the bridge domain, its port-security default and
    /// its gateway (announcing the engine's MTU unless `spec.mtu` says otherwise). Errors name
    /// the key under `prefix` (e.g. `network[1].subnet`); nothing is left behind on failure.
    pub fn create_network(&self, spec: &NetworkSpec, prefix: &str) -> Result<()> {
        crate::bridge::validate_name(&spec.name)
            .map_err(|e| Error::invalid(format!("{prefix}.name"), e.to_string()))?;
        if spec.fdb_max_entries == Some(0) {
            return Err(Error::invalid(
                format!("{prefix}.fdb_max_entries"),
                "must be at least 1",
            ));
        }
        let engine_mtu = self.engine_mtu();
        if let Some(m) = spec.mtu
            && u32::from(m) > engine_mtu
        {
            return Err(Error::invalid(
                format!("{prefix}.mtu"),
                format!(
                    "{m} is above the engine's MTU {engine_mtu} (its buffers would drop every \
                     frame that large; start the daemon with a larger [engine] mtu)"
                ),
            ));
        }
        // Check the gateway settings and the policy before creating anything.
        let gw = spec.gateway_config(prefix, engine_mtu)?;
        let path = format!("{prefix}.policy");
        if let Some(p) = &spec.policy {
            crate::policy::Compiled::new(p, &path)?;
        }
        self.add_network_with(
            &spec.name,
            fdb_config(spec.fdb_max_entries, spec.fdb_aging_secs),
            spec.port_security,
            gw,
        )?;
        if let Some(p) = &spec.policy {
            let bridge = self.dp.bridge();
            let id = bridge
                .topology()
                .network_by_name(&spec.name)
                .map(|n| n.net.id);
            if let Some(id) = id {
                bridge
                    .policy()
                    .set(crate::policy::Scope::Network(id.0), p, &path)?;
            }
        }
        Ok(())
    }

    /// The one place a network and its gateway are made: the bridge domain with `fdb`, port
    /// security on or off by default if given, then the gateway if given; on failure the
    /// network is removed again. The binaries (`run`, `slirp4netns`, `demo`) build their own
    /// [`GatewayConfig`] and come here too.
    pub fn add_network_with(
        &self,
        name: &str,
        fdb: FdbConfig,
        port_security: Option<bool>,
        gateway: Option<GatewayConfig>,
    ) -> Result<()> {
        self.add_network(name, fdb)?;
        let rest = (|| {
            if let Some(on) = port_security {
                self.set_port_security(name, on)?;
            }
            if let Some(g) = gateway {
                self.add_gateway(g)?;
            }
            Ok(())
        })();
        if rest.is_err() {
            let _ = self.remove_network(name);
        }
        rest
    }

    /// The MTU the engine's buffers carry (its largest frame less Ethernet and two VLAN tags).
    pub fn engine_mtu(&self) -> u32 {
        u32::try_from(self.dp.config().max_frame.saturating_sub(14 + 8)).unwrap_or(1500)
    }

    /// Starts the gateway (ARP, ICMP, DHCP, DNS, NDP/RA) of an existing network.
    pub fn add_gateway(&self, cfg: GatewayConfig) -> Result<Arc<Gateway>> {
        self.check_running()?;
        let name = cfg.network.clone();
        if self.dp.bridge().topology().network_by_name(&name).is_none() {
            return Err(crate::bridge::BridgeError::NoSuchNetwork(name).into());
        }
        if self.node.gateways.lock().contains_key(&name) {
            return Err(Error::invalid(
                "gateway",
                format!("network {name:?} already has a gateway"),
            ));
        }
        let gw = crate::gateway::start(&self.dp, cfg)?;
        self.node.gateways.lock().insert(name, gw.clone());
        Ok(gw)
    }
    /// The gateway of `network`, if it has one.
    pub fn gateway(&self, network: &str) -> Option<Arc<Gateway>> {
        self.node.gateways.lock().get(network).cloned()
    }
    pub(super) fn gateways_of(&self, network: Option<&str>) -> Result<Vec<Arc<Gateway>>> {
        let g = self.node.gateways.lock();
        match network {
            Some(n) => {
                g.get(n).cloned().map(|x| vec![x]).ok_or_else(|| {
                    Error::invalid("network", format!("network {n:?} has no gateway"))
                })
            }
            None => Ok(g.values().cloned().collect()),
        }
    }
    /// Adds a DNS record `name` → `addr` on `network` (`name` relative to its domain, or a name
    /// inside the domain).
    pub fn dns_add(&self, network: &str, name: &str, addr: std::net::IpAddr) -> Result<()> {
        let g = self.gateways_of(Some(network))?.remove(0);
        g.records
            .add(name, addr)
            .map_err(|e| Error::invalid("name", e.to_string()))
    }
    /// Replaces the DNS name policy of `network`'s gateway (None, or a policy that changes
    /// nothing: every name allowed) and returns the one it replaced. Errors name the entry
    /// (`dns_policy.deny[2]`); a bad policy changes nothing.
    pub fn set_dns_policy(
        &self,
        network: &str,
        policy: Option<DnsPolicySpec>,
    ) -> Result<Option<DnsPolicySpec>> {
        let g = self.gateways_of(Some(network))?.remove(0);
        let policy = policy
            .filter(|p| !p.is_noop())
            .map(|p| DnsPolicy::new(p, "dns_policy"))
            .transpose()?;
        let old = g.dns.policy();
        g.dns.set_policy(policy);
        Ok(old)
    }
    /// The DNS name policy of `network`'s gateway (None: every name allowed) and how many
    /// queries it has denied.
    pub fn dns_policy(&self, network: &str) -> Result<DnsPolicyInfo> {
        let g = self.gateways_of(Some(network))?.remove(0);
        Ok(DnsPolicyInfo {
            network: network.to_string(),
            policy: g.dns.policy(),
            denied: g.dns.stats().policy_denied,
        })
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
}
