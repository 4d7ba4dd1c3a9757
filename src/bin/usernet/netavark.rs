//! The netavark plugin (netavark's `plugin-API.md`, API 1.0.0): `usernet info|create|setup
//! NETNS|teardown NETNS` with JSON on stdin, on the same code as the CNI plugin ([`crate::cni`]):
//! the same daemon, state directory, addresses, names and forwards. Installed (or linked) as
//! `usernet` in one of netavark's plugin directories, it serves networks created with
//! `podman network create -d usernet`.
//!
//! Network `options` understood: `socket`, `state_dir`, `mtu`, `domain`, `dns_upstreams`
//! (comma-separated), `host_loopback` (`true`/`false`), `network` (the usernet network name).

use std::io::{Read, Write};
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::cni::{CniError, Ctx, NetConf, PortMapping, Want};

/// The subcommands netavark calls.
pub const COMMANDS: &[&str] = &["info", "create", "setup", "teardown"];

/// netavark's `Network` (only what usernet reads; the rest is passed through on create).
#[derive(Debug, Clone, Deserialize)]
struct Network {
    name: String,
    #[serde(default)]
    subnets: Option<Vec<Subnet>>,
    #[serde(default)]
    ipv6_enabled: bool,
    #[serde(default)]
    options: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Deserialize)]
struct Subnet {
    subnet: ipnet::IpNet,
    #[serde(default)]
    gateway: Option<std::net::IpAddr>,
}

/// `setup`/`teardown` input (netavark's `NetworkPluginExec`).
#[derive(Debug, Clone, Deserialize)]
struct Exec {
    container_id: String,
    #[serde(default)]
    container_name: String,
    #[serde(default)]
    port_mappings: Option<Vec<NvPort>>,
    network: Network,
    network_options: NetOpts,
}

#[derive(Debug, Clone, Deserialize)]
struct NvPort {
    container_port: u16,
    #[serde(default)]
    host_ip: String,
    host_port: u16,
    #[serde(default = "tcp")]
    protocol: String,
    #[serde(default = "one")]
    range: u16,
}

fn tcp() -> String {
    "tcp".into()
}

fn one() -> u16 {
    1
}

#[derive(Debug, Clone, Deserialize)]
struct NetOpts {
    #[serde(default)]
    aliases: Option<Vec<String>>,
    interface_name: String,
    #[serde(default)]
    static_ips: Option<Vec<std::net::IpAddr>>,
    #[serde(default)]
    static_mac: Option<String>,
}

/// Runs the plugin if `args[1]` is one of [`COMMANDS`]; returns the exit code.
pub fn main_if_plugin(args: &[String]) -> Option<u8> {
    let cmd = args.get(1).filter(|c| COMMANDS.contains(&c.as_str()))?;
    let mut input = Vec::new();
    if cmd != "info" {
        let _ = std::io::stdin().take(16 << 20).read_to_end(&mut input);
    }
    let r = run(cmd, args.get(2).map(String::as_str), &input);
    let mut out = std::io::stdout();
    match r {
        Ok(Some(v)) => {
            let _ = writeln!(out, "{v}");
            Some(0)
        }
        Ok(None) => Some(0),
        Err(e) => {
            let msg = if e.details.is_empty() {
                e.msg
            } else {
                format!("{}: {}", e.msg, e.details)
            };
            let _ = writeln!(out, "{}", json!({ "error": msg }));
            Some(1)
        }
    }
}

fn bad(e: impl std::fmt::Display) -> CniError {
    CniError {
        code: 6,
        msg: "cannot decode the input".into(),
        details: e.to_string(),
    }
}

fn run(cmd: &str, netns: Option<&str>, input: &[u8]) -> Result<Option<Value>, CniError> {
    match cmd {
        "info" => Ok(Some(json!({
            "version": env!("CARGO_PKG_VERSION"),
            "api_version": "1.0.0",
            "description": "usernet: userspace bridge, gateway, DNS, NAT and port forwards",
        }))),
        "create" => create(input).map(Some),
        "setup" | "teardown" => {
            let netns = netns.ok_or_else(|| CniError {
                code: 4,
                msg: format!("{cmd} needs the namespace path as its argument"),
                details: String::new(),
            })?;
            let ex: Exec = serde_json::from_slice(input).map_err(bad)?;
            let conf = net_conf(&ex.network)?;
            let ctx = Ctx::new(&conf);
            if cmd == "setup" {
                let want = want(&ex, netns)?;
                let raw = serde_json::to_vec(&conf).map_err(bad)?;
                let r = ctx.locked(|| ctx.add(&conf, want, &raw))?;
                Ok(Some(status_block(&ex, &r)))
            } else {
                ctx.locked(|| {
                    ctx.del(&conf, &ex.container_id, &ex.network_options.interface_name)
                })?;
                Ok(None)
            }
        }
        _ => Ok(None),
    }
}

/// `create`: fills in a subnet (10.90.0.0/24 when none is given) and its gateway, checks the
/// options, and prints the network back.
fn create(input: &[u8]) -> Result<Value, CniError> {
    let mut v: Value = serde_json::from_slice(input).map_err(bad)?;
    let n: Network = serde_json::from_value(v.clone()).map_err(bad)?;
    let subnets = n.subnets.clone().unwrap_or_default();
    let v4 = subnets.iter().find(|s| s.subnet.addr().is_ipv4());
    if subnets.iter().any(|s| s.subnet.addr().is_ipv6()) && v4.is_none() {
        return Err(CniError {
            code: 7,
            msg: "usernet needs an IPv4 subnet".into(),
            details: "add --subnet with an IPv4 CIDR".into(),
        });
    }
    if v4.is_none() {
        let mut s = subnets
            .iter()
            .map(|s| json!({"subnet": s.subnet, "gateway": s.gateway}))
            .collect::<Vec<_>>();
        s.insert(0, json!({"subnet": "10.90.0.0/24", "gateway": "10.90.0.1"}));
        v["subnets"] = json!(s);
    } else if let Some(arr) = v["subnets"].as_array_mut() {
        for s in arr.iter_mut() {
            if s.get("gateway").is_none_or(Value::is_null)
                && let Some(net) = s["subnet"]
                    .as_str()
                    .and_then(|t| t.parse::<ipnet::IpNet>().ok())
                && let Some(gw) = net.hosts().next()
            {
                s["gateway"] = json!(gw.to_string());
            }
        }
    }
    let n: Network = serde_json::from_value(v.clone()).map_err(bad)?;
    net_conf(&n)?;
    Ok(v)
}

/// The CNI-plugin view of a netavark network.
fn net_conf(n: &Network) -> Result<NetConf, CniError> {
    let opts = n.options.clone().unwrap_or_default();
    let subnets = n.subnets.clone().unwrap_or_default();
    let subnet = subnets.iter().find_map(|s| match s.subnet {
        ipnet::IpNet::V4(v) => Some(v),
        ipnet::IpNet::V6(_) => None,
    });
    let v6 = subnets.iter().find_map(|s| match s.subnet {
        ipnet::IpNet::V6(v) => Some(v.to_string()),
        ipnet::IpNet::V4(_) => None,
    });
    let conf_err = |k: &str, why: String| CniError {
        code: 7,
        msg: format!("network option {k}"),
        details: why,
    };
    let mtu = match opts.get("mtu") {
        Some(m) => Some(
            m.parse::<u16>()
                .map_err(|e| conf_err("mtu", e.to_string()))?,
        ),
        None => None,
    };
    let host_loopback = match opts.get("host_loopback").map(String::as_str) {
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(o) => {
            return Err(conf_err(
                "host_loopback",
                format!("{o:?} is not true or false"),
            ));
        }
        None => None,
    };
    Ok(NetConf {
        cni_version: "1.0.0".into(),
        name: n.name.clone(),
        kind: "usernet".into(),
        network: opts.get("network").cloned(),
        subnet,
        ipv6: if n.ipv6_enabled { v6 } else { None },
        mtu,
        domain: opts.get("domain").cloned(),
        dns_upstreams: opts
            .get("dns_upstreams")
            .map(|s| s.split(',').map(|x| x.trim().to_string()).collect()),
        host_loopback,
        socket: opts.get("socket").map(PathBuf::from),
        state_dir: opts.get("state_dir").map(PathBuf::from),
        ..NetConf::default()
    })
}

fn want(ex: &Exec, netns: &str) -> Result<Want, CniError> {
    let mut ports = Vec::new();
    for p in ex.port_mappings.iter().flatten() {
        for i in 0..p.range.max(1) {
            for proto in p.protocol.split(',') {
                ports.push(PortMapping {
                    host_port: p.host_port.saturating_add(i),
                    container_port: p.container_port.saturating_add(i),
                    protocol: proto.to_string(),
                    host_ip: p.host_ip.clone(),
                });
            }
        }
    }
    let subnets = ex.network.subnets.clone().unwrap_or_default();
    let mut ips = Vec::new();
    for ip in ex.network_options.static_ips.iter().flatten() {
        let prefix = subnets
            .iter()
            .find(|s| s.subnet.contains(ip))
            .map(|s| s.subnet.prefix_len())
            .unwrap_or(if ip.is_ipv4() { 32 } else { 128 });
        ips.push(ipnet::IpNet::new(*ip, prefix).map_err(bad)?);
    }
    let mac = match &ex.network_options.static_mac {
        Some(m) => Some(m.parse().map_err(|_| CniError {
            code: 7,
            msg: "static_mac".into(),
            details: format!("{m:?} is not a MAC address"),
        })?),
        None => None,
    };
    Ok(Want {
        container_id: ex.container_id.clone(),
        netns: PathBuf::from(netns),
        ifname: ex.network_options.interface_name.clone(),
        name: (!ex.container_name.is_empty()).then(|| ex.container_name.clone()),
        aliases: ex.network_options.aliases.clone().unwrap_or_default(),
        ports,
        ips,
        gateways: Vec::new(),
        mac,
    })
}

/// The CNI result as netavark's `StatusBlock`.
fn status_block(ex: &Exec, r: &Value) -> Value {
    let subnets: Vec<Value> = r["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|ip| {
            let mut s = json!({ "ipnet": ip["address"] });
            if let Some(g) = ip.get("gateway") {
                s["gateway"] = g.clone();
            }
            s
        })
        .collect();
    json!({
        "dns_search_domains": r["dns"]["search"].as_array().cloned().unwrap_or_default(),
        "dns_server_ips": r["dns"]["nameservers"].as_array().cloned().unwrap_or_default(),
        "interfaces": {
            ex.network_options.interface_name.clone(): {
                "mac_address": r["interfaces"][0]["mac"],
                "subnets": subnets,
            }
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_fills_subnet_and_gateway() {
        let v = create(br#"{"name":"n","id":"x","driver":"usernet","subnets":[{"subnet":"10.91.0.0/24"}],"ipv6_enabled":false,"internal":false,"dns_enabled":false,"options":{"mtu":"1400"}}"#)
            .expect("create");
        assert_eq!(v["subnets"][0]["gateway"], "10.91.0.1");
        assert_eq!(v["id"], "x");
        let v = create(br#"{"name":"n","id":"x","driver":"usernet"}"#).expect("default");
        assert_eq!(v["subnets"][0]["subnet"], "10.90.0.0/24");
        let e = create(br#"{"name":"n","driver":"usernet","options":{"mtu":"big"}}"#);
        assert!(e.is_err_and(|e| e.msg.contains("mtu")));
    }
}
