//! Services of cluster networks (`[[service]]`, issue 15 part 5): a published TCP port on
//! every node (Swarm's routing mesh) balanced over endpoints that live on any node. Pure
//! parts: the checks of a service's config, the endpoints a service has (from the names the
//! nodes publish in etcd), and the mesh protocol's lines (hostile input from the underlay:
//! bounded, parsed strictly, refused with the reason). The runtime is `mesh.rs`.
//!
//! # The mesh protocol
//!
//! A node opens a TCP connection to another node's mesh listener (`vtep:mesh_port`) and
//! sends one line, at most [`MAX_HELLO`] bytes:
//!
//! - `USERNET-MESH/1 CONNECT NET NAME PORT\n`: relay the rest of this connection to the
//!   receiving node's own endpoint `NAME` (a DHCP name on cluster network `NET`) on guest port
//!   `PORT`; the receiver accepts only an endpoint of a service it declares, living on it;
//! - `USERNET-MESH/1 CHECK\n`: the receiver answers one line, `UP NET/NAME:PORT ...\n` (its
//!   own endpoints of declared services that its health checks say are up), and closes.

// Without the feature `cluster` only the config checks are used.
#![cfg_attr(not(feature = "cluster"), allow(dead_code))]

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::gateway::EndpointInfo;
use crate::nat::balance::HealthSpec;
use crate::nat::balance::{Balance, PoolStats};
use crate::nat::forward::{Forward, ForwardSpec, Proto, Targets};

/// The mesh port when `[cluster] mesh_port` is not given.
pub const DEFAULT_MESH_PORT: u16 = 7950;

/// Longest first line of a mesh connection, `\n` included.
pub(crate) const MAX_HELLO: usize = 256;

/// Longest `UP` line a node answers or takes.
pub(crate) const MAX_UP: usize = 64 * 1024;

const MAGIC: &str = "USERNET-MESH/1";

/// A `[[service]]` table: a TCP port of cluster network `network` published on every node
/// and balanced over endpoints on any node (the keys a load-balanced `[[forward]]` has), and
/// optionally reachable from inside the network on a virtual IP (`vip`) and a DNS name
/// (`name`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Service {
    /// Its cluster network.
    pub network: String,
    /// What every node publishes (`8080:80/tcp`); the guest port is the one endpoints serve
    /// and the one the virtual IP answers on.
    #[serde(rename = "publish")]
    pub spec: ForwardSpec,
    /// Its endpoints: DHCP names, on any node.
    pub to: Targets,
    /// Refused (a service is relayed by usernet); kept so the error names the key.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub splice: bool,
    /// `round_robin` (default), `least_conn` or `source_hash`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balance: Option<String>,
    /// Health checks of the endpoints (defaults: see [`HealthSpec`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthSpec>,
    /// A virtual IP inside the network: guests connecting to `vip:GUESTPORT` reach the
    /// service (balanced as on the published port); the gateway answers ARP and ping for it,
    /// no DHCP lease or guest may take it. The same on every node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<Ipv4Addr>,
    /// A DNS name (a label) the gateways answer with `vip` (needs `vip`); no endpoint may
    /// take it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Service {
    /// A service publishing `spec` on cluster network `network`, balanced round robin over
    /// endpoints `to`, no virtual IP.
    pub fn new(network: &str, spec: ForwardSpec, to: &[&str]) -> Service {
        Service {
            network: network.to_owned(),
            spec,
            to: Targets(to.iter().map(|t| t.to_string()).collect()),
            splice: false,
            balance: None,
            health: None,
            vip: None,
            name: None,
        }
    }

    /// The load-balanced forward the service is, on each node.
    pub fn forward(&self) -> Forward {
        let mut f = Forward::to_many(&self.network, self.spec, self.to.0.clone());
        f.splice = self.splice;
        f.balance.clone_from(&self.balance);
        f.health = self.health;
        f
    }
}

/// A service of this node, as `ctl cluster` lists it (API op `cluster`, `services`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ServiceInfo {
    /// Its cluster network.
    pub network: String,
    /// What it publishes on every node (`8080:80/tcp`).
    pub publish: String,
    /// Its virtual IP, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<Ipv4Addr>,
    /// Its DNS name, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// How it balances.
    pub balance: Balance,
    /// Its endpoints on every live node (`NAME@NODE`), their state and this node's counters.
    pub endpoints: Vec<EndpointInfo>,
    /// This node's clients refused because no endpoint was up.
    pub refused: u64,
}

/// What the mesh thread shows of a service: its counters (replaced when its endpoints change).
#[derive(Debug, Clone)]
pub(crate) struct ServiceView {
    pub(crate) network: String,
    pub(crate) publish: String,
    pub(crate) vip: Option<Ipv4Addr>,
    pub(crate) name: Option<String>,
    pub(crate) balance: Balance,
    pub(crate) stats: Arc<PoolStats>,
}

impl ServiceView {
    /// As listed now.
    pub(crate) fn info(&self) -> ServiceInfo {
        ServiceInfo {
            network: self.network.clone(),
            publish: self.publish.clone(),
            vip: self.vip,
            name: self.name.clone(),
            balance: self.balance,
            endpoints: crate::control::forwards::endpoint_infos(&self.stats),
            refused: self.stats.refused(),
        }
    }
}

/// Checks `[[service]]` table `s` (index `i`), given the cluster networks' names; errors name
/// the key (`service[0].publish`).
pub fn check_service(s: &Service, i: usize, cluster_nets: &[&str]) -> Result<()> {
    let key = |k: &str| format!("service[{i}].{k}");
    if s.spec.proto != Proto::Tcp || s.spec.len() != 1 {
        return Err(Error::invalid(
            key("publish"),
            format!(
                "{}: a service publishes one TCP port (HOSTPORT:GUESTPORT/tcp)",
                s.spec
            ),
        ));
    }
    s.forward()
        .check(&format!("service[{i}]"))
        .map_err(|(field, why)| Error::invalid(field, why))?;
    if !cluster_nets.contains(&s.network.as_str()) {
        return Err(Error::invalid(
            key("network"),
            format!(
                "{:?} is not a cluster network (scope = \"cluster\")",
                s.network
            ),
        ));
    }
    if s.splice {
        return Err(Error::invalid(key("splice"), "not for a service"));
    }
    for (k, t) in s.to.iter().enumerate() {
        if !super::endpoints::label_ok(t) {
            return Err(Error::invalid(
                key(&format!("to[{k}]")),
                format!(
                    "{t:?}: a service's endpoints are DHCP names the nodes publish \
                     (lower-case letters, digits, '-', 1-63)"
                ),
            ));
        }
    }
    if let Some(n) = &s.name {
        if s.vip.is_none() {
            return Err(Error::invalid(
                key("name"),
                "a service's name resolves to its virtual IP: set `vip` too",
            ));
        }
        if !super::endpoints::label_ok(n) {
            return Err(Error::invalid(
                key("name"),
                format!("{n:?}: a DNS label (lower-case letters, digits, '-', 1-63)"),
            ));
        }
    }
    if let Some(v) = s.vip
        && (v.is_loopback() || v.is_unspecified() || v.is_multicast() || v.is_broadcast())
    {
        return Err(Error::invalid(
            key("vip"),
            format!("{v} is no unicast address of a network"),
        ));
    }
    Ok(())
}

/// Checks virtual IP `vip` of service `i` against its network: inside `subnet`, not its
/// network or broadcast address, not in `taken` (the gateway's addresses).
pub fn check_vip(
    vip: Ipv4Addr,
    i: usize,
    network: &str,
    subnet: ipnet::Ipv4Net,
    taken: &[Ipv4Addr],
) -> Result<()> {
    let why = if !subnet.contains(&vip) {
        format!("{vip} is outside network {network:?}'s subnet {subnet}")
    } else if vip == subnet.network() || vip == subnet.broadcast() {
        format!("{vip} is the network or broadcast address of {subnet}")
    } else if taken.contains(&vip) {
        format!("{vip} is the gateway's address on network {network:?}")
    } else {
        return Ok(());
    };
    Err(Error::invalid(format!("service[{i}].vip"), why))
}

/// Checks every service, and that no two publish the same host port.
pub fn check_services(services: &[Service], cluster_nets: &[&str]) -> Result<()> {
    for (i, s) in services.iter().enumerate() {
        check_service(s, i, cluster_nets)?;
        if let Some(j) = services[..i]
            .iter()
            .position(|o| o.spec.host_ports == s.spec.host_ports)
        {
            return Err(Error::invalid(
                format!("service[{i}].publish"),
                format!(
                    "host port {} is published by service[{j}] too",
                    s.spec.host_ports.0
                ),
            ));
        }
        if let Some(v) = s.vip
            && let Some(j) = services[..i]
                .iter()
                .position(|o| o.vip == Some(v) && o.spec.guest_ports == s.spec.guest_ports)
        {
            return Err(Error::invalid(
                format!("service[{i}].vip"),
                format!("{v}:{} is service[{j}]'s already", s.spec.guest_ports.0),
            ));
        }
        if let Some(n) = &s.name
            && let Some(j) = services[..i]
                .iter()
                .position(|o| o.name.as_ref() == Some(n) && o.vip != s.vip)
        {
            return Err(Error::invalid(
                format!("service[{i}].name"),
                format!("{n:?} is service[{j}]'s name, with another vip"),
            ));
        }
    }
    Ok(())
}

/// An endpoint of a service on a node's own network: `NET/NAME:PORT`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Target {
    /// Cluster network.
    pub(crate) net: String,
    /// DHCP name.
    pub(crate) name: String,
    /// Guest port.
    pub(crate) port: u16,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}:{}", self.net, self.name, self.port)
    }
}

impl Target {
    /// Parses `NET/NAME:PORT`, strictly.
    fn parse(s: &str) -> Option<Target> {
        let (net, rest) = s.split_once('/')?;
        let (name, port) = rest.split_once(':')?;
        Target::from_parts(net, name, port)
    }

    /// From its three words, strictly (the port in decimal digits only, 1-65535).
    fn from_parts(net: &str, name: &str, port: &str) -> Option<Target> {
        if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let port: u16 = port.parse().ok().filter(|p| *p > 0)?;
        if crate::bridge::validate_name(net).is_err() || !super::endpoints::label_ok(name) {
            return None;
        }
        Some(Target {
            net: net.into(),
            name: name.into(),
            port,
        })
    }
}

/// The first line of a mesh connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Hello {
    /// Report the endpoints that are up.
    Check,
    /// Relay to this endpoint.
    Connect(Target),
}

impl Hello {
    /// The line, `\n` included.
    pub(crate) fn line(&self) -> String {
        match self {
            Hello::Check => format!("{MAGIC} CHECK\n"),
            Hello::Connect(t) => format!("{MAGIC} CONNECT {} {} {}\n", t.net, t.name, t.port),
        }
    }

    /// Parses a line (`\n` included or not); the reason when it is not one.
    pub(crate) fn parse(line: &[u8]) -> std::result::Result<Hello, &'static str> {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = std::str::from_utf8(line).map_err(|_| "not UTF-8")?;
        let mut w = line.split(' ');
        if w.next() != Some(MAGIC) {
            return Err("not a mesh hello");
        }
        let hello = match (w.next(), w.next(), w.next(), w.next()) {
            (Some("CHECK"), None, None, None) => Hello::Check,
            (Some("CONNECT"), Some(net), Some(name), Some(port)) => {
                Hello::Connect(Target::from_parts(net, name, port).ok_or("bad target")?)
            }
            _ => return Err("unknown verb or wrong arguments"),
        };
        if w.next().is_some() {
            return Err("trailing words");
        }
        Ok(hello)
    }
}

/// How long the first line in `peeked` is (`\n` included): `Ok(None)` while it may still
/// come, an error once it cannot (longer than `max`).
pub(crate) fn line_len(peeked: &[u8], max: usize) -> std::result::Result<Option<usize>, ()> {
    match peeked.iter().take(max).position(|&b| b == b'\n') {
        Some(i) => Ok(Some(i + 1)),
        None if peeked.len() >= max => Err(()),
        None => Ok(None),
    }
}

/// The answer to a `CHECK`: the endpoints that are up.
pub(crate) fn up_line(up: &BTreeSet<Target>) -> String {
    let mut s = String::from("UP");
    for t in up {
        if s.len() + t.to_string().len() + 2 > MAX_UP {
            break;
        }
        s.push(' ');
        s.push_str(&t.to_string());
    }
    s.push('\n');
    s
}

/// Parses an `UP` line; words that are not a target are skipped (counted in the second value).
pub(crate) fn parse_up(
    line: &[u8],
) -> std::result::Result<(BTreeSet<Target>, usize), &'static str> {
    let line = line.strip_suffix(b"\n").ok_or("no end of line")?;
    let line = std::str::from_utf8(line).map_err(|_| "not UTF-8")?;
    let mut w = line.split(' ');
    if w.next() != Some("UP") {
        return Err("not an UP line");
    }
    let (mut up, mut bad) = (BTreeSet::new(), 0);
    for t in w {
        match Target::parse(t) {
            Some(t) => {
                up.insert(t);
            }
            None => bad += 1,
        }
    }
    Ok((up, bad))
}

/// One endpoint of a service: a name on a node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Endpoint {
    /// The DHCP name (one of the service's `to`).
    pub(crate) name: String,
    /// The node it lives on.
    pub(crate) node: String,
    /// Its address.
    pub(crate) ip: Ipv4Addr,
}

impl Endpoint {
    /// `NAME@NODE`, as listed.
    pub(crate) fn label(&self) -> String {
        format!("{}@{}", self.name, self.node)
    }
}

/// The endpoints of a service with endpoints `to` on network `net`: each name on each live
/// node that published it (`owners(net, name)`: `(node, address)`), in `to` order, then by
/// node.
pub(crate) fn endpoints(
    net: &str,
    to: &[String],
    owners: impl Fn(&str, &str) -> Vec<(String, Ipv4Addr)>,
    live: &BTreeSet<String>,
) -> Vec<Endpoint> {
    let mut v = Vec::new();
    for name in to {
        let mut on: Vec<_> = owners(net, name)
            .into_iter()
            .filter(|(node, _)| live.contains(node))
            .collect();
        on.sort();
        v.extend(on.into_iter().map(|(node, ip)| Endpoint {
            name: name.clone(),
            node,
            ip,
        }));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nat::balance::{Balance, Picker, PoolStats};

    fn t(net: &str, name: &str, port: u16) -> Target {
        Target {
            net: net.into(),
            name: name.into(),
            port,
        }
    }

    #[test]
    fn hello_lines_round_trip_and_hostile_ones_are_refused() {
        for h in [Hello::Check, Hello::Connect(t("web", "web1", 80))] {
            assert_eq!(Hello::parse(h.line().as_bytes()), Ok(h.clone()));
        }
        for bad in [
            &b""[..],
            b"\n",
            b"USERNET-MESH/1\n",
            b"USERNET-MESH/2 CHECK\n",
            b"USERNET-MESH/1 CHECK extra\n",
            b"USERNET-MESH/1 CONNECT web web1\n",
            b"USERNET-MESH/1 CONNECT web web1 0\n",
            b"USERNET-MESH/1 CONNECT web web1 65536\n",
            b"USERNET-MESH/1 CONNECT web Web1 80\n",
            b"USERNET-MESH/1 CONNECT w/b web1 80\n",
            b"USERNET-MESH/1 CONNECT web web1 80 x\n",
            b"USERNET-MESH/1 CONNECT web web1 +80\n",
            b"USERNET-MESH/1  CHECK\n",
            b"\xffUSERNET-MESH/1 CHECK\n",
            b"GET / HTTP/1.1\r\n",
        ] {
            assert!(
                Hello::parse(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(line_len(b"abc\ndef", 8), Ok(Some(4)));
        assert_eq!(line_len(b"abc", 8), Ok(None));
        assert_eq!(line_len(b"abcdefgh", 8), Err(()));
        assert_eq!(
            line_len(b"abcdefgh\n", 8),
            Err(()),
            "the newline is past the bound"
        );
    }

    #[test]
    fn up_lines_round_trip_and_bad_words_are_skipped() {
        let up = BTreeSet::from([t("web", "web1", 80), t("web", "web2", 8080)]);
        let line = up_line(&up);
        assert_eq!(line, "UP web/web1:80 web/web2:8080\n");
        assert_eq!(parse_up(line.as_bytes()), Ok((up, 0)));
        assert_eq!(parse_up(b"UP\n"), Ok((BTreeSet::new(), 0)));
        let (got, bad) = parse_up(b"UP web/a:1 x web/B:2 web/c:0 /a:1\n").expect("parses");
        assert_eq!((got.len(), bad), (1, 4));
        assert!(parse_up(b"UP web/a:1").is_err(), "no end of line");
        assert!(parse_up(b"DOWN\n").is_err());
        assert!(parse_up(b"UP \xff\n").is_err());
    }

    fn svc(json: &str) -> Service {
        serde_json::from_str(json).expect("parses")
    }

    #[test]
    fn service_checks_name_the_key() {
        let nets = ["web"];
        let ok = svc(r#"{"network":"web","publish":"8080:80","to":["web1","web2"]}"#);
        assert!(check_service(&ok, 0, &nets).is_ok());
        let field = |json: &str| {
            check_services(&[ok.clone(), svc(json)], &nets)
                .expect_err("refused")
                .to_string()
        };
        for (json, key) in [
            (
                r#"{"network":"lan","publish":"81:80","to":"a"}"#,
                "service[1].network",
            ),
            (
                r#"{"network":"web","publish":"81:80/udp","to":"a"}"#,
                "service[1].publish",
            ),
            (
                r#"{"network":"web","publish":"81-82:80-81","to":"a"}"#,
                "service[1].publish",
            ),
            (
                r#"{"network":"web","publish":"8080:81","to":"a"}"#,
                "service[1].publish",
            ),
            (
                r#"{"network":"web","publish":"81:80","to":["a","B"]}"#,
                "service[1].to[1]",
            ),
            (
                r#"{"network":"web","publish":"81:80","to":"10.0.0.1"}"#,
                "service[1].to[0]",
            ),
            (
                r#"{"network":"web","publish":"81:80","to":"a","splice":true}"#,
                "service[1].splice",
            ),
            (
                r#"{"network":"web","publish":"81:80","to":"a","balance":"x"}"#,
                "service[1].balance",
            ),
            (
                r#"{"network":"web","publish":"81:80","to":"a","health":{"fall":0}}"#,
                "service[1].health.fall",
            ),
            (
                r#"{"network":"web","publish":"81:80","to":"a","name":"api"}"#,
                "service[1].name",
            ),
            (
                r#"{"network":"web","publish":"81:80","to":"a","vip":"10.7.0.9","name":"A_"}"#,
                "service[1].name",
            ),
            (
                r#"{"network":"web","publish":"81:80","to":"a","vip":"127.0.0.1"}"#,
                "service[1].vip",
            ),
        ] {
            let e = field(json);
            assert!(e.contains(key), "{json}: {e}");
        }
    }

    #[test]
    fn virtual_ips_are_checked_against_the_network_and_each_other() {
        let net: ipnet::Ipv4Net = "10.70.0.0/24".parse().expect("net");
        let gw = [Ipv4Addr::new(10, 70, 0, 1)];
        assert!(check_vip(Ipv4Addr::new(10, 70, 0, 250), 0, "web", net, &gw).is_ok());
        for (bad, why) in [
            ([10, 71, 0, 5], "outside"),
            ([10, 70, 0, 0], "broadcast"),
            ([10, 70, 0, 255], "broadcast"),
            ([10, 70, 0, 1], "gateway"),
        ] {
            let e = check_vip(Ipv4Addr::from(bad), 3, "web", net, &gw)
                .expect_err("refused")
                .to_string();
            assert!(e.contains("service[3].vip") && e.contains(why), "{e}");
        }
        let a =
            svc(r#"{"network":"web","publish":"81:80","to":"a","vip":"10.70.0.9","name":"api"}"#);
        let b = svc(r#"{"network":"web","publish":"82:80","to":"b","vip":"10.70.0.9"}"#);
        let e = check_services(&[a.clone(), b], &["web"]).expect_err("same vip:port");
        assert!(e.to_string().contains("service[1].vip"), "{e}");
        let c =
            svc(r#"{"network":"web","publish":"82:81","to":"b","vip":"10.70.0.9","name":"api"}"#);
        assert!(
            check_services(&[a.clone(), c], &["web"]).is_ok(),
            "another port of one vip"
        );
        let d =
            svc(r#"{"network":"web","publish":"82:81","to":"b","vip":"10.70.0.8","name":"api"}"#);
        let e = check_services(&[a, d], &["web"]).expect_err("one name, two vips");
        assert!(e.to_string().contains("service[1].name"), "{e}");
    }

    #[test]
    fn endpoints_span_live_nodes_and_round_robin_spreads_over_them() {
        let owners = |_: &str, name: &str| match name {
            "web1" => vec![
                ("h2".to_string(), Ipv4Addr::new(10, 0, 0, 3)),
                ("h0".to_string(), Ipv4Addr::new(10, 0, 0, 2)),
            ],
            "web2" => vec![("h1".to_string(), Ipv4Addr::new(10, 0, 0, 4))],
            "web3" => vec![("dead".to_string(), Ipv4Addr::new(10, 0, 0, 5))],
            _ => vec![],
        };
        let live = BTreeSet::from(["h0".to_string(), "h1".to_string(), "h2".to_string()]);
        let to: Vec<String> = ["web1", "web2", "web3", "web4"].map(String::from).into();
        let eps = endpoints("web", &to, owners, &live);
        let labels: Vec<String> = eps.iter().map(Endpoint::label).collect();
        assert_eq!(labels, ["web1@h0", "web1@h2", "web2@h1"]);
        let pool = PoolStats::new(&labels);
        let mut p = Picker::default();
        let mut n = [0; 3];
        for i in 0..90u32 {
            let c = std::net::IpAddr::V4(Ipv4Addr::from(i));
            n[p.pick(Balance::RoundRobin, &pool, c).expect("up")] += 1;
        }
        assert_eq!(n, [30, 30, 30]);
        pool.endpoints[1].set_up(false);
        let c = std::net::IpAddr::V4(Ipv4Addr::LOCALHOST);
        for _ in 0..10 {
            assert_ne!(p.pick(Balance::RoundRobin, &pool, c), Some(1));
        }
    }
}
