//! What `usernet ctl` shows: the rows of ports, networks, FDB, ownership, counters, leases and
//! DNS records, and the [`Handle`] queries that produce them.

use serde::{Deserialize, Serialize};

use super::Handle;
use crate::bridge::{PortId, PortStats};
use crate::error::Result;
use crate::gateway::GatewayInfo;
use crate::wire::Mac;

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
    /// A trunk port's networks by VLAN id (`network` is then its native network or its lowest
    /// VLAN's); absent for an access port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trunk: Option<crate::bridge::TrunkSpec>,
    /// The port's current rate limits; absent: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<crate::bridge::RateLimit>,
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
    /// For a MAC behind a VXLAN port: the remote VTEP it was last seen behind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vtep: Option<std::net::IpAddr>,
    /// A remote endpoint cluster mode installed (static, its VTEP from its node's record).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cluster: bool,
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
    /// Frames its live captures could not keep up with (see [`crate::capture`]).
    #[serde(default)]
    pub capture_dropped: u64,
    /// A VXLAN port's own counters (decapsulation drops by reason, datagrams sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vxlan: Option<crate::link::vxlan::VxlanStats>,
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

impl Handle {
    /// All ports.
    pub fn ports(&self) -> Vec<PortInfo> {
        let topo = self.dp.bridge().topology();
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
                trunk: p.policy.trunk.clone(),
                rate_limit: p.rate_limit(),
            })
            .collect()
    }
    /// All networks.
    pub fn networks(&self) -> Vec<NetworkInfo> {
        let topo = self.dp.bridge().topology();
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
        let topo = self.dp.bridge().topology();
        if let Some(n) = network
            && topo.network_by_name(n).is_none()
        {
            return Err(crate::bridge::BridgeError::NoSuchNetwork(n.to_string()).into());
        }
        let now = self.dp.bridge().now();
        let mut rows = Vec::new();
        for ne in topo.networks() {
            if network.is_some_and(|n| n != ne.net.name) {
                continue;
            }
            for e in ne.net.fdb.dump(now) {
                let port = topo
                    .port(e.port)
                    .map(|p| p.name.clone())
                    .unwrap_or_else(|| format!("#{}", e.port.0));
                let cluster = e.is_static
                    && self
                        .node
                        .vxlan
                        .lock()
                        .get(&port)
                        .is_some_and(|v| v.is_pinned(e.mac));
                rows.push(FdbRow {
                    network: ne.net.name.clone(),
                    vlan: e.vlan,
                    mac: e.mac,
                    cluster,
                    vtep: self.vtep_of(&port, e.mac),
                    port,
                    age_secs: e.age_ms as f64 / 1000.0,
                    is_static: e.is_static,
                });
            }
        }
        Ok(rows)
    }
    /// What every port owns (port security), by network.
    pub fn owners(&self, network: Option<&str>) -> Result<Vec<OwnerRow>> {
        let topo = self.dp.bridge().topology();
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
        let topo = self.dp.bridge().topology();
        topo.ports()
            .into_iter()
            .map(|p| PortStatsRow {
                port: p.name.clone(),
                network: topo
                    .network(p.network)
                    .map(|n| n.net.name.clone())
                    .unwrap_or_default(),
                stats: p.counters.snapshot(),
                capture_dropped: p.capture.dropped(),
                vxlan: self.vxlan_stats(&p.name),
            })
            .collect()
    }
    /// Addresses and counters of every gateway.
    pub fn gateways(&self) -> Vec<GatewayInfo> {
        self.node
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
}
