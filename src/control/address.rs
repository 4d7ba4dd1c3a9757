//! Addresses usernet configures on a port's interface itself (`attach --ip`, the API's
//! `add_port` with `ips`, the CNI plugin): the plan (`Handle::address_plan`), what the caller
//! gets back ([`Attached`]), and the hand-over to the gateway, which then knows the port's MAC
//! and name before the guest sends anything.
//!
//! An address is checked against the network (not the gateway's, DNS's, network or broadcast
//! address; not owned by another port; not leased to another MAC), reserved in the DHCP
//! server when it lies in the network's subnet (so the pool never hands it out, and a DHCP
//! client on that MAC gets the same one), and claimed for the port (port security) before the
//! port exists. Reservations go back when the port is removed.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use super::{Handle, PortSpec};
use crate::bridge::PortId;
use crate::error::{Error, Result};
use crate::gateway::Gateway;
use crate::link::ifconfig::{IfConfig, Route, eui64, random_mac};
use crate::wire::Mac;

/// One entry of [`PortSpec::ips`]: a fixed address, or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum AddrSpec {
    /// `ADDR/PREFIX`.
    Fixed(IpNet),
    /// `ADDR` alone: the prefix of the network it lies in (its subnet or IPv6 prefix), else a
    /// host route (/32, /128).
    Bare(IpAddr),
    /// An IPv4 address from the network's DHCP pool (reserved for the port), plus the SLAAC
    /// address in the network's IPv6 prefix if it has one.
    Auto,
}

impl FromStr for AddrSpec {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let s = s.trim();
        if s == "auto" {
            return Ok(AddrSpec::Auto);
        }
        if s.contains('/') {
            return s
                .parse::<IpNet>()
                .map(AddrSpec::Fixed)
                .map_err(|_| format!("{s:?} is not ADDR/PREFIX"));
        }
        s.parse::<IpAddr>()
            .map(AddrSpec::Bare)
            .map_err(|_| format!("{s:?} is not an IP address, ADDR/PREFIX or `auto`"))
    }
}

impl TryFrom<String> for AddrSpec {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        s.parse()
    }
}

impl From<AddrSpec> for String {
    fn from(a: AddrSpec) -> String {
        a.to_string()
    }
}

impl fmt::Display for AddrSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddrSpec::Fixed(n) => write!(f, "{n}"),
            AddrSpec::Bare(a) => write!(f, "{a}"),
            AddrSpec::Auto => f.write_str("auto"),
        }
    }
}

/// What [`Handle::attach`] did: the port, and the configuration its interface got (what a
/// runtime puts into its own records, e.g. a CNI result).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attached {
    /// The port (`None` for a stream port, which appears when its peer connects).
    pub id: Option<PortId>,
    /// The interface's MAC, when usernet set or chose it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<Mac>,
    /// Addresses configured, with prefix length.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpNet>,
    /// Default gateways installed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<IpAddr>,
    /// The interface's MTU, when usernet set it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Every route installed (the default ones included), `{"dst": CIDR, "via": IP}`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
}

/// The configuration of one port's interface, with what was reserved for it.
#[derive(Debug)]
pub(super) struct Plan {
    pub(super) cfg: IfConfig,
    pub(super) mac: Mac,
    pub(super) reserved: Vec<Ipv4Addr>,
    pub(super) gateways: Vec<IpAddr>,
}

impl Plan {
    /// The configured addresses, without prefix.
    pub(super) fn ips(&self) -> Vec<IpAddr> {
        self.cfg.addrs.iter().map(|a| a.addr()).collect()
    }

    /// The caller's view.
    pub(super) fn attached(&self, id: Option<PortId>) -> Attached {
        Attached {
            id,
            mac: Some(self.mac),
            ips: self.cfg.addrs.clone(),
            gateways: self.gateways.clone(),
            mtu: self.cfg.mtu,
            routes: self.cfg.routes.clone(),
        }
    }
}

/// The network's own addresses a guest may not take.
fn reserved_reason(gw: &Gateway, ip: IpAddr) -> Option<&'static str> {
    let c = &gw.cfg;
    match ip {
        IpAddr::V4(a) => {
            if a == c.addr {
                Some("the gateway's address")
            } else if Some(a) == c.dns_addr {
                Some("the DNS address")
            } else if c.subnet.contains(&a) && a == c.subnet.network() {
                Some("the network address")
            } else if c.subnet.contains(&a) && a == c.subnet.broadcast() {
                Some("the broadcast address")
            } else {
                None
            }
        }
        IpAddr::V6(a) => {
            if Some(a) == c.addr6() || a == c.link_local() {
                Some("the gateway's address")
            } else {
                None
            }
        }
    }
}

impl Handle {
    /// The interface configuration for a `netns` port with address fields (`None` when it has
    /// none: the interface is only brought up). Reserves DHCP addresses; the caller gives them
    /// back with [`Handle::drop_plan`] if the port then fails.
    pub(super) fn address_plan(&self, spec: &PortSpec) -> Result<Option<Plan>> {
        if spec.ips.is_empty()
            && spec.mac.is_none()
            && spec.gateway.is_empty()
            && spec.routes.is_empty()
        {
            return Ok(None);
        }
        let gw = self.gateway(&spec.network);
        let guard = self
            .dp
            .bridge()
            .topology()
            .network_by_name(&spec.network)
            .map(|n| n.net.guard.clone())
            .ok_or_else(|| crate::bridge::BridgeError::NoSuchNetwork(spec.network.clone()))?;
        let mac = spec.mac.unwrap_or_else(random_mac);
        if !mac.is_valid_source() {
            return Err(Error::invalid(
                "port.mac",
                format!("{mac} is not a unicast MAC address"),
            ));
        }
        if let Some(o) = guard.mac_owner(mac) {
            return Err(Error::invalid(
                "port.mac",
                format!("{mac} is in use by another port (id {})", o.0),
            ));
        }
        let mut plan = Plan {
            cfg: IfConfig {
                mac: Some(mac),
                mtu: spec
                    .mtu
                    .or_else(|| gw.as_ref().map(|g| u32::from(g.announced_mtu()))),
                lo_up: !spec.ips.is_empty(),
                ..IfConfig::default()
            },
            mac,
            reserved: Vec::new(),
            gateways: Vec::new(),
        };
        if let Err(e) = self.plan_addresses(spec, gw.as_deref(), &guard, &mut plan) {
            self.drop_plan(&spec.network, &plan);
            return Err(e);
        }
        Ok(Some(plan))
    }

    fn plan_addresses(
        &self,
        spec: &PortSpec,
        gw: Option<&Gateway>,
        guard: &crate::bridge::security::NetGuard,
        plan: &mut Plan,
    ) -> Result<()> {
        let field = |i: usize| format!("port.ips[{i}]");
        let now = gw.map(|g| g.now_ms()).unwrap_or(0);
        for (i, a) in spec.ips.iter().enumerate() {
            let nets: Vec<IpNet> = match *a {
                AddrSpec::Auto => {
                    let Some(g) = gw else {
                        return Err(Error::invalid(
                            field(i),
                            format!("`auto` needs a gateway on network {:?}", spec.network),
                        ));
                    };
                    let Some(d) = &g.dhcp else {
                        return Err(Error::invalid(
                            field(i),
                            format!("`auto` needs DHCP on network {:?} (its pool)", spec.network),
                        ));
                    };
                    let ip = {
                        let mut srv = d.lock();
                        srv.set_foreign(guard.ips_not_of(PortId(0)));
                        srv.reserve(plan.mac, None, now)
                    };
                    let Some(ip) = ip else {
                        return Err(Error::invalid(
                            field(i),
                            format!("the DHCP pool of network {:?} is exhausted", spec.network),
                        ));
                    };
                    plan.reserved.push(ip);
                    let mut v = vec![IpNet::V4(
                        Ipv4Net::new(ip, g.cfg.subnet.prefix_len())
                            .map_err(|e| Error::invalid(field(i), e.to_string()))?,
                    )];
                    if let Some(p) = g.cfg.ipv6 {
                        v.push(IpNet::V6(
                            Ipv6Net::new(eui64(p, plan.mac), p.prefix_len().max(64))
                                .map_err(|e| Error::invalid(field(i), e.to_string()))?,
                        ));
                    }
                    v
                }
                AddrSpec::Fixed(n) => vec![n],
                AddrSpec::Bare(ip) => {
                    let prefix = match (ip, gw) {
                        (IpAddr::V4(v), Some(g)) if g.cfg.subnet.contains(&v) => {
                            g.cfg.subnet.prefix_len()
                        }
                        (IpAddr::V6(v), Some(g)) if g.cfg.ipv6.is_some_and(|p| p.contains(&v)) => {
                            g.cfg.ipv6.map(|p| p.prefix_len()).unwrap_or(128)
                        }
                        (IpAddr::V4(_), _) => 32,
                        (IpAddr::V6(_), _) => 128,
                    };
                    vec![
                        IpNet::new(ip, prefix)
                            .map_err(|e| Error::invalid(field(i), e.to_string()))?,
                    ]
                }
            };
            for n in nets {
                let ip = n.addr();
                if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() {
                    return Err(Error::invalid(
                        field(i),
                        format!("{ip} is not a unicast address a guest can use"),
                    ));
                }
                if let Some(why) = gw.and_then(|g| reserved_reason(g, ip)) {
                    return Err(Error::invalid(field(i), format!("{ip} is {why}")));
                }
                if let Some(o) = guard.ip_owner(ip) {
                    return Err(Error::invalid(
                        field(i),
                        format!("{ip} is in use by another port (id {})", o.0),
                    ));
                }
                if plan.cfg.addrs.iter().any(|x| x.addr() == ip) {
                    return Err(Error::invalid(field(i), format!("{ip} is listed twice")));
                }
                if let (IpAddr::V4(v), Some(g)) = (ip, gw)
                    && g.cfg.subnet.contains(&v)
                    && !plan.reserved.contains(&v)
                    && let Some(d) = &g.dhcp
                {
                    // A cluster network's address is claimed in etcd first.
                    self.claim_fixed(&spec.network, v)
                        .map_err(|why| Error::invalid(field(i), why))?;
                    let got = {
                        let mut srv = d.lock();
                        srv.set_foreign(guard.ips_not_of(PortId(0)));
                        srv.reserve(plan.mac, Some(v), now)
                    };
                    if got.is_none() {
                        return Err(Error::invalid(
                            field(i),
                            format!("{v} is leased to another client"),
                        ));
                    }
                    plan.reserved.push(v);
                }
                plan.cfg.addrs.push(n);
            }
        }
        // Routes: through the given gateways, else the network gateway of each family the
        // port has an address in.
        let mut gws: Vec<IpAddr> = spec.gateway.clone();
        if gws.is_empty()
            && let Some(g) = gw
        {
            let has = |f: &dyn Fn(IpAddr) -> bool| plan.cfg.addrs.iter().any(|a| f(a.addr()));
            if has(&|a| matches!(a, IpAddr::V4(v) if g.cfg.subnet.contains(&v))) {
                gws.push(IpAddr::V4(g.cfg.addr));
            }
            if let Some(a6) = g.cfg.addr6()
                && has(
                    &|a| matches!(a, IpAddr::V6(v) if g.cfg.ipv6.is_some_and(|p| p.contains(&v))),
                )
            {
                gws.push(IpAddr::V6(a6));
            }
        }
        if spec.default_route.unwrap_or(!spec.ips.is_empty()) {
            for (i, g) in gws.iter().enumerate() {
                if plan
                    .cfg
                    .routes
                    .iter()
                    .any(|r| r.via.is_ipv4() == g.is_ipv4())
                {
                    return Err(Error::invalid(
                        format!("port.gateway[{i}]"),
                        "one default gateway per address family",
                    ));
                }
                plan.cfg.routes.push(Route::default_via(*g));
            }
            plan.gateways = gws.clone();
        }
        for (i, dst) in spec.routes.iter().enumerate() {
            let via = gws
                .iter()
                .find(|g| g.is_ipv4() == matches!(dst, IpNet::V4(_)))
                .ok_or_else(|| {
                    Error::invalid(
                        format!("port.routes[{i}]"),
                        format!("no gateway of {dst}'s family"),
                    )
                })?;
            plan.cfg.routes.push(Route {
                dst: dst.trunc(),
                via: *via,
            });
        }
        Ok(())
    }

    /// Gives back what [`Handle::address_plan`] reserved.
    pub(super) fn drop_plan(&self, network: &str, plan: &Plan) {
        if let Some(d) = self.gateway(network).as_ref().and_then(|g| g.dhcp.as_ref()) {
            let mut srv = d.lock();
            for ip in &plan.reserved {
                srv.unreserve(*ip, plan.mac);
            }
        }
    }

    /// Tells the gateway of `port`'s network that `ips` are at `mac` behind `port`: for a port
    /// whose interface usernet configured itself some other way (`usernet run`, the
    /// slirp4netns mode's `-c`), so its name and forwards work before it sends anything. The
    /// port should own the addresses (`allowed_ips`). No-op without a gateway.
    pub fn announce_addresses(&self, port: PortId, mac: Mac, ips: Vec<IpAddr>) -> Result<()> {
        let topo = self.dp.bridge().topology();
        let p = topo
            .port(port)
            .ok_or_else(|| crate::bridge::BridgeError::NoSuchPort(format!("id {}", port.0)))?;
        let Some(net) = topo.network(p.network).map(|n| n.net.name.clone()) else {
            return Ok(());
        };
        match self.gateway(&net) {
            Some(g) => g.add_endpoint(crate::gateway::Endpoint {
                port,
                mac,
                ips,
                reserved: Vec::new(),
            }),
            None => Ok(()),
        }
    }

    /// Tells the network's gateway about a configured port (neighbour entries, DNS name).
    pub(super) fn announce_endpoint(&self, network: &str, id: PortId, plan: &Plan) -> Result<()> {
        match self.gateway(network) {
            Some(g) => g.add_endpoint(crate::gateway::Endpoint {
                port: id,
                mac: plan.mac,
                ips: plan.ips(),
                reserved: plan.reserved.clone(),
            }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addr_spec_parses_and_prints() {
        assert_eq!("auto".parse::<AddrSpec>(), Ok(AddrSpec::Auto));
        let a: AddrSpec = "10.0.0.5/24".parse().expect("fixed");
        assert_eq!(a.to_string(), "10.0.0.5/24");
        let b: AddrSpec = "fd00::5".parse().expect("bare");
        assert_eq!(b, AddrSpec::Bare("fd00::5".parse().expect("ip")));
        assert!("10.0.0.5/33".parse::<AddrSpec>().is_err());
        assert!("web".parse::<AddrSpec>().is_err());
        let j: Vec<AddrSpec> = serde_json::from_str(r#"["auto","10.1.0.2/16"]"#).expect("json");
        assert_eq!(
            serde_json::to_string(&j).ok().as_deref(),
            Some(r#"["auto","10.1.0.2/16"]"#)
        );
    }
}
