//! The CNI plugin (CNI spec 1.0.0, with STATUS and GC from 1.1): `usernet` installed or linked as
//! `/opt/cni/bin/usernet` acts as the plugin whenever `CNI_COMMAND` is set.
//!
//! The datapath is a long-lived `usernet up` (the plugin's daemon, on its own socket,
//! [`DEFAULT_SOCKET`]); the plugin is a client of its control API. The first ADD on a machine
//! starts the daemon (detached: new session, no stdio) when its socket is absent. Everything an
//! ADD set up is recorded under the state directory ([`DEFAULT_STATE`]) as the API requests
//! that recreate it, and a daemon started with `up --cni-state DIR` replays them: a daemon
//! restart keeps networks, addresses, names and forwards (the container's interface comes back
//! with the same MAC and address).
//!
//! Per attachment: a TAP named `CNI_IFNAME` in `CNI_NETNS`, configured by usernet (address,
//! routes, MTU, `lo` up); the address from usernet's own pool (a reservation freed on DEL), or
//! from a delegated IPAM plugin (`ipam.type`, e.g. host-local); the container's name
//! (`K8S_POD_NAME` in `CNI_ARGS`, else the container id) and `runtimeConfig.aliases` in the
//! network's DNS; `runtimeConfig.portMappings` as forwards.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::IpAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use usernet::control::api::Request;
use usernet::control::{AddrSpec, Attached, PortSpec};
use usernet::nat::forward::Forward;

mod ctx;
mod state;

pub use ctx::Ctx;
pub use state::replay;

/// The daemon's control socket unless the network config says `socket` (not the socket of a
/// user's own `usernet up`).
pub const DEFAULT_SOCKET: &str = "/run/usernet/cni.sock";
/// Where attachments are recorded unless the network config says `state_dir`.
pub const DEFAULT_STATE: &str = "/var/lib/usernet/cni";
/// CNI versions this plugin speaks.
pub const SUPPORTED: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// A CNI error: the spec's well-known codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    /// 1 incompatible version, 2 unsupported field, 3 unknown container, 4 invalid
    /// environment, 5 I/O, 6 decoding, 7 invalid network config, 11 try again later,
    /// 50 plugin not available.
    pub code: u32,
    /// What went wrong.
    pub msg: String,
    /// More about it.
    pub details: String,
}

impl CniError {
    fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }
    fn env(msg: impl Into<String>) -> Self {
        CniError::new(4, msg, "")
    }
    fn config(msg: impl Into<String>) -> Self {
        CniError::new(7, "invalid network config", msg)
    }
    fn io(what: impl Into<String>, e: impl std::fmt::Display) -> Self {
        CniError::new(5, what, e.to_string())
    }
    fn daemon(e: impl std::fmt::Display) -> Self {
        CniError::new(11, "usernet daemon refused the request", e.to_string())
    }
}

/// The network configuration on stdin (unknown keys are ignored: runtimes add their own).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct NetConf {
    /// CNI version of the config (and of the result).
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    /// Network name (the runtime's).
    #[serde(default)]
    pub name: String,
    /// Plugin type (`usernet`).
    #[serde(rename = "type", default)]
    pub kind: String,
    /// usernet network to join (default: `name`).
    #[serde(default)]
    pub network: Option<String>,
    /// Its IPv4 subnet (needed when the network does not exist yet).
    #[serde(default)]
    pub subnet: Option<ipnet::Ipv4Net>,
    /// IPv6 prefix, or "off".
    #[serde(default)]
    pub ipv6: Option<String>,
    /// MTU of the network and its interfaces.
    #[serde(default)]
    pub mtu: Option<u16>,
    /// DNS domain of the network.
    #[serde(default)]
    pub domain: Option<String>,
    /// Upstream resolvers of the network's DNS (default: the host's resolv.conf).
    #[serde(default)]
    pub dns_upstreams: Option<Vec<String>>,
    /// NAT may reach the host's loopback through the gateway address (default: yes).
    #[serde(default)]
    pub host_loopback: Option<bool>,
    /// The daemon's control socket.
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// Where attachments are recorded.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// Delegated IPAM (`{"type": "host-local", ...}`); absent: usernet's own pool.
    #[serde(default)]
    pub ipam: Option<Value>,
    /// Capability arguments from the runtime.
    #[serde(rename = "runtimeConfig", default)]
    pub runtime_config: RuntimeConfig,
    /// CHECK: the result of ADD.
    #[serde(
        rename = "prevResult",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub prev_result: Option<Value>,
    /// GC: the attachments still in use.
    #[serde(
        rename = "cni.dev/valid-attachments",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub valid_attachments: Option<Vec<ValidAttachment>>,
}

/// `runtimeConfig`: the capabilities usernet honours.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct RuntimeConfig {
    /// `portMappings`.
    #[serde(rename = "portMappings", default)]
    pub port_mappings: Vec<PortMapping>,
    /// `aliases`: network name → more DNS names of the container.
    #[serde(default)]
    pub aliases: BTreeMap<String, Vec<String>>,
}

/// One entry of the `portMappings` capability.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct PortMapping {
    /// Host port.
    #[serde(rename = "hostPort")]
    pub host_port: u16,
    /// Container port.
    #[serde(rename = "containerPort")]
    pub container_port: u16,
    /// `tcp` or `udp`.
    #[serde(default = "tcp")]
    pub protocol: String,
    /// Host address to bind (default: all).
    #[serde(rename = "hostIP", default)]
    pub host_ip: String,
}

fn tcp() -> String {
    "tcp".into()
}

/// One entry of `cni.dev/valid-attachments` (GC).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ValidAttachment {
    /// Container id.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// Interface name.
    #[serde(default)]
    pub ifname: String,
}

/// What the runtime asks for, whatever its plugin protocol (CNI or netavark).
#[derive(Debug, Clone)]
pub struct Want {
    /// Container id.
    pub container_id: String,
    /// Namespace path.
    pub netns: PathBuf,
    /// Interface name inside.
    pub ifname: String,
    /// The container's name (its DNS name).
    pub name: Option<String>,
    /// More DNS names.
    pub aliases: Vec<String>,
    /// Published ports.
    pub ports: Vec<PortMapping>,
    /// Fixed addresses (from IPAM), or empty for usernet's pool.
    pub ips: Vec<ipnet::IpNet>,
    /// Gateways (from IPAM).
    pub gateways: Vec<IpAddr>,
    /// The interface's MAC, if the runtime chose it.
    pub mac: Option<usernet::wire::Mac>,
}

/// `CNI_ARGS`: `K=V;K=V`.
pub fn cni_args(s: &str) -> BTreeMap<String, String> {
    s.split(';')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// A name usable as a port and DNS name: `[a-z0-9-]`, at most 63 characters.
pub fn dns_label(s: &str) -> Option<String> {
    let l: String = s
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let l = l.trim_matches('-').chars().take(63).collect::<String>();
    let l = l.trim_end_matches('-').to_string();
    (!l.is_empty()).then_some(l)
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Runs the plugin if `CNI_COMMAND` is set; returns the exit code.
pub fn main_if_plugin() -> Option<u8> {
    let cmd = std::env::var("CNI_COMMAND").ok()?;
    // Every command gets the config on stdin (VERSION: just `{"cniVersion": ...}`).
    let mut input = Vec::new();
    let _ = std::io::stdin().take(16 << 20).read_to_end(&mut input);
    let conf_version = serde_json::from_slice::<Value>(&input)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(Value::as_str)
                .map(String::from)
        })
        .unwrap_or_else(|| "1.0.0".into());
    let out = run(&cmd, &input);
    let mut stdout = std::io::stdout();
    match out {
        Ok(Some(v)) => {
            let _ = writeln!(stdout, "{v}");
            Some(0)
        }
        Ok(None) => Some(0),
        Err(e) => {
            let v = json!({
                "cniVersion": conf_version,
                "code": e.code,
                "msg": e.msg,
                "details": e.details,
            });
            let _ = writeln!(stdout, "{v}");
            Some(1)
        }
    }
}

fn run(cmd: &str, input: &[u8]) -> Result<Option<Value>, CniError> {
    if cmd == "VERSION" {
        return Ok(Some(json!({
            "cniVersion": "1.0.0",
            "supportedVersions": SUPPORTED,
        })));
    }
    let conf: NetConf = serde_json::from_slice(input)
        .map_err(|e| CniError::new(6, "cannot decode the network config", e.to_string()))?;
    if !SUPPORTED.contains(&conf.cni_version.as_str()) {
        return Err(CniError::new(
            1,
            "incompatible CNI version",
            format!(
                "cniVersion {:?}; supported: {}",
                conf.cni_version,
                SUPPORTED.join(", ")
            ),
        ));
    }
    if conf.name.is_empty() {
        return Err(CniError::config("`name` is missing"));
    }
    let ctx = Ctx::new(&conf);
    match cmd {
        "ADD" => {
            let want = want_from_env(&conf)?;
            ctx.locked(|| ctx.add(&conf, want, input)).map(Some)
        }
        "DEL" => {
            let cid = env("CNI_CONTAINERID")
                .ok_or_else(|| CniError::env("CNI_CONTAINERID is not set"))?;
            let ifname = env("CNI_IFNAME").unwrap_or_else(|| "eth0".into());
            ctx.locked(|| ctx.del(&conf, &cid, &ifname)).map(|()| None)
        }
        "CHECK" => {
            let cid = env("CNI_CONTAINERID")
                .ok_or_else(|| CniError::env("CNI_CONTAINERID is not set"))?;
            let ifname = env("CNI_IFNAME").ok_or_else(|| CniError::env("CNI_IFNAME is not set"))?;
            let netns = env("CNI_NETNS").ok_or_else(|| CniError::env("CNI_NETNS is not set"))?;
            ctx.check(&conf, &cid, &ifname, Path::new(&netns))
                .map(|()| None)
        }
        "STATUS" => ctx.status().map(|()| None),
        "GC" => ctx.locked(|| ctx.gc(&conf)).map(|()| None),
        other => Err(CniError::env(format!(
            "CNI_COMMAND {other:?} is not one of ADD, DEL, CHECK, VERSION, STATUS, GC"
        ))),
    }
}

fn want_from_env(conf: &NetConf) -> Result<Want, CniError> {
    let container_id =
        env("CNI_CONTAINERID").ok_or_else(|| CniError::env("CNI_CONTAINERID is not set"))?;
    let netns = env("CNI_NETNS").ok_or_else(|| CniError::env("CNI_NETNS is not set"))?;
    let ifname = env("CNI_IFNAME").ok_or_else(|| CniError::env("CNI_IFNAME is not set"))?;
    let netns = PathBuf::from(netns);
    if !netns.exists() {
        return Err(CniError::new(
            3,
            "container namespace does not exist",
            netns.display().to_string(),
        ));
    }
    let args = cni_args(&env("CNI_ARGS").unwrap_or_default());
    Ok(Want {
        container_id,
        netns,
        ifname,
        name: args.get("K8S_POD_NAME").cloned(),
        aliases: conf
            .runtime_config
            .aliases
            .get(&conf.name)
            .cloned()
            .unwrap_or_default(),
        ports: conf.runtime_config.port_mappings.clone(),
        ips: Vec::new(),
        gateways: Vec::new(),
        mac: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cni_args_split() {
        let a = cni_args("IgnoreUnknown=1;K8S_POD_NAME=web;K8S_POD_NAMESPACE=default");
        assert_eq!(a.get("K8S_POD_NAME").map(String::as_str), Some("web"));
        assert_eq!(a.get("IgnoreUnknown").map(String::as_str), Some("1"));
        assert!(cni_args("").is_empty());
    }

    #[test]
    fn labels() {
        assert_eq!(dns_label("Web_1").as_deref(), Some("web-1"));
        assert_eq!(dns_label("--").as_deref(), None);
        assert_eq!(dns_label(&"a".repeat(100)).map(|s| s.len()), Some(63));
    }

    #[test]
    fn conf_parses_podman_shape() {
        let c: NetConf = serde_json::from_str(
            r#"{"cniVersion":"1.0.0","name":"un","type":"usernet","subnet":"10.89.0.0/24",
               "runtimeConfig":{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp","hostIP":"127.0.0.1"}]},
               "someOtherKey":1}"#,
        )
        .expect("conf");
        assert_eq!(c.runtime_config.port_mappings[0].host_port, 8080);
        assert_eq!(
            c.subnet.map(|s| s.to_string()).as_deref(),
            Some("10.89.0.0/24")
        );
    }
}
