//! The JSON control API: one request per line, one response per line.
//!
//! Request: `{"op": "ports"}`, `{"op": "fdb", "network": "net0"}`, `{"op": "stats"}`,
//! `{"op": "metrics"}` (the Prometheus text as one string),
//! `{"op": "networks"}`, `{"op": "add_network", "name": "net1"}`,
//! `{"op": "remove_network", "name": "net1"}`,
//! `{"op": "add_port", "port": {"network": "net0", "name": "c3", "netns": "/run/netns/c3"}}`,
//! `{"op": "remove_port", "name": "c3"}`,
//! `{"op": "add_static_mac", "port": "c3", "mac": "02:00:00:00:00:03"}`,
//! `{"op": "vxlan_remotes", "port": "vx0"}`, `{"op": "cluster"}`,
//! `{"op": "vxlan_add_remote", "port": "vx0", "remote": "192.0.2.3"}`,
//! `{"op": "vxlan_rm_remote", "port": "vx0", "remote": "192.0.2.3"}`,
//! `{"op": "port_limit", "port": "c3", "rate_limit": {"rx_mbit": 100, "tx_pps": 5000}}` (absent
//! or all zero: unlimited), `{"op": "shutdown"}`,
//! `{"op": "capture", "port": "c3", "snaplen": 262144, "count": 0, "format": "pcapng"}` (answered
//! with one line, then the connection carries the capture: see [`super::capture`]).
//! `{"op": "policy_ls", "network": "net0"}`,
//! `{"op": "policy_add", "network": "net0", "port": "c1", "index": 0, "rule": {"action": "deny", "proto": "tcp", "dst_port": "22"}}`,
//! `{"op": "policy_rm", "network": "net0", "index": 0}`,
//! `{"op": "policy_default", "network": "net0", "default": "deny"}`,
//! `{"op": "subscribe"}` (answered with one line, then one JSON event per line: see
//! [`super::events`]).
//!
//! Response: `{"ok": true, "result": ...}` or `{"ok": false, "error": "..."}`; a request that
//! does not parse gets an error naming the field and the reason (serde's message). An error
//! from the operating system also carries its number, `"errno": N` (e.g. 1, `EPERM`, when the
//! daemon may not enter a namespace: `usernet attach` then passes a TAP itself).
//!
//! One request may come with a descriptor (`SCM_RIGHTS`, see [`handle_line_passed`]): only
//! `add_port` whose port has `"fd": true` takes it (a rootless attach, [`super::rootless`]),
//! and `capture` with `"fd": true` (the file the capture is written to, [`super::capture`]).

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Handle, PortSpec};
use crate::error::Result;
use crate::wire::Mac;

/// A control request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum Request {
    /// List ports.
    Ports {},
    /// List networks.
    Networks {},
    /// Dump the FDB of one network or all.
    Fdb {
        /// Only this network.
        #[serde(default)]
        network: Option<String>,
    },
    /// Per-port counters.
    Stats {},
    /// Every counter in the Prometheus text format (the result is that text, one string).
    Metrics {},
    /// Add a network.
    AddNetwork {
        /// Its name.
        name: String,
        /// FDB cap (default 8192).
        #[serde(default)]
        fdb_max_entries: Option<usize>,
        /// FDB aging in seconds (default 300; 0 = never).
        #[serde(default)]
        fdb_aging_secs: Option<u64>,
        /// Start a gateway (default false here; the other gateway keys imply true).
        #[serde(default)]
        gateway: Option<bool>,
        /// Gateway: IPv4 subnet (default 10.88.0.0/24).
        #[serde(default)]
        subnet: Option<ipnet::Ipv4Net>,
        /// Gateway: IPv6 /64 prefix, or "off".
        #[serde(default)]
        ipv6: Option<String>,
        /// Gateway: DNS domain.
        #[serde(default)]
        domain: Option<String>,
        /// Gateway: MTU announced by DHCP and RA.
        #[serde(default)]
        mtu: Option<u16>,
        /// Gateway: DNS upstreams, `IP` or `IP:PORT`.
        #[serde(default)]
        dns_upstreams: Option<Vec<String>>,
        /// Gateway: no NAT egress.
        #[serde(default)]
        internal: Option<bool>,
        /// Gateway: the gateway's address reaches the host's loopback (default true).
        #[serde(default)]
        host_loopback: Option<bool>,
        /// Port security by default on the network's ports (default: on with a gateway).
        #[serde(default)]
        port_security: Option<bool>,
        /// Gateway: NAT may reach the cloud metadata service (default false).
        #[serde(default)]
        allow_metadata: Option<bool>,
        /// Policy rules of the network (see [`crate::policy`]).
        #[serde(default)]
        policy: Option<crate::policy::PolicySpec>,
        /// Gateway: which names it resolves (the `dns_policy` key; see
        /// [`crate::gateway::dns::policy`]).
        #[serde(default)]
        dns_policy: Option<crate::gateway::dns::DnsPolicySpec>,
    },
    /// Remove a network and its ports.
    RemoveNetwork {
        /// Its name.
        name: String,
    },
    /// Add a port.
    AddPort {
        /// What to attach (boxed: the largest request by far).
        port: Box<PortSpec>,
    },
    /// Remove a port.
    RemovePort {
        /// Its name.
        name: String,
    },
    /// Add a static FDB entry.
    AddStaticMac {
        /// Port name.
        port: String,
        /// MAC address.
        mac: Mac,
        /// VLAN id (default 0).
        #[serde(default)]
        vlan: u16,
    },
    /// Gateways: addresses and counters.
    Gateways {},
    /// The cluster view of this node: its nodes, their VTEPs and networks, the connection
    /// state, the last etcd revision seen (see [`super::cluster`]).
    Cluster {},
    /// DHCP leases.
    Leases {
        /// Only this network.
        #[serde(default)]
        network: Option<String>,
    },
    /// What each port owns (port security).
    Owners {
        /// Only this network.
        #[serde(default)]
        network: Option<String>,
    },
    /// Add a DNS record.
    DnsAdd {
        /// Network.
        network: String,
        /// Name (relative to the network's domain, or inside it).
        name: String,
        /// Address.
        addr: std::net::IpAddr,
    },
    /// Remove DNS records.
    DnsRm {
        /// Network.
        network: String,
        /// Name.
        name: String,
        /// Only this address (default: all of the name).
        #[serde(default)]
        addr: Option<std::net::IpAddr>,
    },
    /// Show a network's DNS name policy; with `policy`, replace it first; with `clear`, remove
    /// it (every name allowed). Answers the policy in force and its denied count.
    DnsPolicy {
        /// Network.
        network: String,
        /// The new policy (`default`, `allow`, `deny`, `answer`).
        #[serde(default)]
        policy: Option<crate::gateway::dns::DnsPolicySpec>,
        /// Remove the policy.
        #[serde(default)]
        clear: bool,
    },
    /// List DNS records.
    DnsLs {
        /// Only this network.
        #[serde(default)]
        network: Option<String>,
    },
    /// Add a port forward.
    ForwardAdd {
        /// The forward: `network`, `publish` (Docker `-p` spec), `to` (endpoint name or IP, or a
        /// list of them), optional `splice`, `balance`, `health`.
        forward: crate::nat::forward::Forward,
    },
    /// Remove a port forward by id or by its `-p` spec.
    ForwardRm {
        /// Id or spec.
        forward: String,
    },
    /// List port forwards.
    ForwardLs {
        /// Only this network.
        #[serde(default)]
        network: Option<String>,
    },
    /// Capture a port's frames: over the control socket, answered with one line, then the
    /// connection carries the capture (pcapng or pcap bytes) until it ends.
    Capture {
        /// Port name.
        port: String,
        /// Bytes kept of each frame (default and 0: 262144).
        #[serde(default)]
        snaplen: Option<u32>,
        /// Stop after this many frames (default and 0: until stopped).
        #[serde(default)]
        count: Option<u64>,
        /// `pcapng` (default) or `pcap`.
        #[serde(default)]
        format: Option<crate::capture::Format>,
        /// The output comes with the request: a descriptor opened for writing (a file, a pipe),
        /// passed with `SCM_RIGHTS` on the request line. The daemon writes the capture into it
        /// directly and the connection carries only the answer, then one line with the
        /// capture's summary when it ends (see [`super::capture`]).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        fd: bool,
    },
    /// Subscribe to the node's events: over the control socket, answered with one line, then
    /// the connection carries one JSON event per line until the client goes (see
    /// [`super::events`]).
    Subscribe {},
    /// The remote VTEPs of a VXLAN port, with their counters.
    VxlanRemotes {
        /// The VXLAN port's name.
        port: String,
    },
    /// Add a remote VTEP to a VXLAN port.
    VxlanAddRemote {
        /// The VXLAN port's name.
        port: String,
        /// The remote's underlay address.
        remote: std::net::IpAddr,
    },
    /// Remove a remote VTEP from a VXLAN port (its learned MACs are forgotten).
    VxlanRmRemote {
        /// The VXLAN port's name.
        port: String,
        /// The remote's underlay address.
        remote: std::net::IpAddr,
    },
    /// Set a port's rate limits at run time; `rate_limit` absent, `null` or all zero: unlimited.
    PortLimit {
        /// Port name.
        port: String,
        /// `{rx_mbit, tx_mbit, rx_pps, tx_pps, burst_kib}`, as the port key.
        #[serde(default)]
        rate_limit: Option<crate::bridge::RateLimit>,
    },
    /// List policy rules with their counters: every network's (and ports' that have one),
    /// one network's and its ports', or one port's.
    PolicyLs {
        /// Only this network.
        #[serde(default)]
        network: Option<String>,
        /// Only this port.
        #[serde(default)]
        port: Option<String>,
    },
    /// Insert a policy rule into a network's (or one of its ports') rules.
    PolicyAdd {
        /// Network.
        network: String,
        /// The port whose policy it joins (default: the network's).
        #[serde(default)]
        port: Option<String>,
        /// Position (default: the end; first match wins).
        #[serde(default)]
        index: Option<usize>,
        /// The rule (`action`, `direction`, `proto`, `src`, `dst`, `src_port`, `dst_port`,
        /// `icmp_type`).
        rule: crate::policy::RuleSpec,
    },
    /// Remove a policy rule by index.
    PolicyRm {
        /// Network.
        network: String,
        /// The port whose rule it is (default: the network's).
        #[serde(default)]
        port: Option<String>,
        /// The rule's index (as listed).
        index: usize,
    },
    /// Set a policy's default action: `allow`, `deny`, or `null` (a network: allow; a port:
    /// its network's).
    PolicyDefault {
        /// Network.
        network: String,
        /// The port (default: the network).
        #[serde(default)]
        port: Option<String>,
        /// The default.
        default: Option<crate::policy::Action>,
    },
    /// Stop the daemon.
    Shutdown {},
}

pub use super::networks::fdb_config;

impl Request {
    /// True for an `add_network` that starts a gateway: `gateway` if given, else any of the
    /// gateway's own keys (`subnet`, `ipv6`, `domain`, `mtu`, `dns_upstreams`, `internal`,
    /// `host_loopback`, `allow_metadata`) being set.
    pub fn wants_gateway(&self) -> bool {
        let Request::AddNetwork {
            gateway,
            subnet,
            ipv6,
            domain,
            mtu,
            dns_upstreams,
            internal,
            host_loopback,
            allow_metadata,
            dns_policy,
            ..
        } = self
        else {
            return false;
        };
        gateway.unwrap_or(
            subnet.is_some()
                || ipv6.is_some()
                || domain.is_some()
                || mtu.is_some()
                || dns_upstreams.is_some()
                || internal.is_some()
                || host_loopback.is_some()
                || allow_metadata.is_some()
                || dns_policy.is_some(),
        )
    }
}

/// Runs one request against a handle.
pub fn execute(h: &Handle, req: Request) -> Result<Value> {
    let wants_gw = req.wants_gateway();
    Ok(match req {
        Request::Ports {} => json!(h.ports()),
        Request::Networks {} => json!(h.networks()),
        Request::Fdb { network } => json!(h.fdb(network.as_deref())?),
        Request::Stats {} => json!(h.stats()),
        Request::Metrics {} => Value::String(h.metrics()),
        Request::AddNetwork {
            name,
            fdb_max_entries,
            fdb_aging_secs,
            gateway: _,
            subnet,
            ipv6,
            domain,
            mtu,
            dns_upstreams,
            internal,
            host_loopback,
            port_security,
            allow_metadata,
            policy,
            dns_policy,
        } => {
            let mut spec = super::networks::NetworkSpec::new(&name);
            spec.gateway = wants_gw;
            spec.subnet = subnet;
            spec.ipv6 = ipv6;
            spec.domain = domain;
            spec.mtu = mtu;
            spec.dns_upstreams = dns_upstreams;
            spec.internal = internal.unwrap_or(false);
            spec.host_loopback = host_loopback.unwrap_or(true);
            spec.port_security = port_security;
            spec.allow_metadata = allow_metadata.unwrap_or(false);
            spec.fdb_max_entries = fdb_max_entries;
            spec.fdb_aging_secs = fdb_aging_secs;
            spec.policy = policy;
            spec.dns_policy = dns_policy;
            h.create_network(&spec, "network")?;
            Value::Null
        }
        Request::RemoveNetwork { name } => {
            h.remove_network(&name)?;
            Value::Null
        }
        Request::AddPort { port } => json!(h.attach(&port)?),
        Request::RemovePort { name } => {
            h.remove_port(&name)?;
            Value::Null
        }
        Request::AddStaticMac { port, mac, vlan } => {
            if vlan > 4095 {
                return Err(crate::Error::invalid(
                    "vlan",
                    format!("{vlan} is over 4095"),
                ));
            }
            h.add_static_mac(&port, mac, vlan)?;
            Value::Null
        }
        Request::PolicyLs { network, port } => {
            json!(h.policy_ls(network.as_deref(), port.as_deref())?)
        }
        Request::PolicyAdd {
            network,
            port,
            index,
            rule,
        } => json!({"index": h.policy_add(&network, port.as_deref(), index, &rule)?}),
        Request::PolicyRm {
            network,
            port,
            index,
        } => json!(h.policy_rm(&network, port.as_deref(), index)?),
        Request::PolicyDefault {
            network,
            port,
            default,
        } => {
            h.policy_default(&network, port.as_deref(), default)?;
            Value::Null
        }
        Request::Gateways {} => json!(h.gateways()),
        Request::Cluster {} => json!(h.cluster()?),
        Request::Leases { network } => json!(h.leases(network.as_deref())?),
        Request::Owners { network } => json!(h.owners(network.as_deref())?),
        Request::DnsAdd {
            network,
            name,
            addr,
        } => {
            h.dns_add(&network, &name, addr)?;
            Value::Null
        }
        Request::DnsRm {
            network,
            name,
            addr,
        } => {
            if !h.dns_remove(&network, &name, addr)? {
                return Err(crate::Error::invalid(
                    "name",
                    format!("no record {name:?} on network {network:?}"),
                ));
            }
            Value::Null
        }
        Request::DnsPolicy {
            network,
            policy,
            clear,
        } => {
            if clear && policy.is_some() {
                return Err(crate::Error::invalid(
                    "clear",
                    "give either `policy` (replace) or `clear` (remove), not both",
                ));
            }
            if clear || policy.is_some() {
                h.set_dns_policy(&network, policy)?;
            }
            json!(h.dns_policy(&network)?)
        }
        Request::DnsLs { network } => json!(h.dns_list(network.as_deref())?),
        Request::ForwardAdd { forward } => json!(h.add_forward(&forward)?),
        Request::ForwardRm { forward } => json!(h.remove_forward(&forward)?),
        Request::ForwardLs { network } => json!(h.forwards(network.as_deref())?),
        Request::Capture { .. } => {
            return Err(crate::Error::invalid(
                "op",
                "capture streams frames: send it on a control socket connection of its own \
                 (usernet ctl capture), or use Handle::capture",
            ));
        }
        Request::Subscribe {} => {
            return Err(crate::Error::invalid(
                "op",
                "subscribe streams events: send it on a control socket connection of its own \
                 (usernet ctl events), or use Handle::subscribe",
            ));
        }
        Request::VxlanRemotes { port } => json!(h.vxlan_remotes(&port)?),
        Request::PortLimit { port, rate_limit } => {
            h.set_port_limit(&port, rate_limit)?;
            Value::Null
        }
        Request::VxlanAddRemote { port, remote } => {
            h.vxlan_add_remote(&port, remote)?;
            Value::Null
        }
        Request::VxlanRmRemote { port, remote } => {
            h.vxlan_rm_remote(&port, remote)?;
            Value::Null
        }
        Request::Shutdown {} => {
            h.shutdown();
            Value::Null
        }
    })
}

/// Parses one request line and runs it; always returns a response object.
pub fn handle_line(h: &Handle, line: &str) -> Value {
    handle_line_passed(h, line, Passed::default())
}

/// Descriptors that came with a request line (`SCM_RIGHTS` on the control socket).
#[derive(Debug, Default)]
pub struct Passed {
    /// The one descriptor sent with the line.
    pub fd: Option<std::os::fd::OwnedFd>,
    /// More than one came (all closed), or the kernel cut some: the request is refused.
    pub refused: bool,
}

/// Like [`handle_line`], for a line that came with descriptors: one descriptor is taken only by
/// `add_port` with `"fd": true` (the TAP of a rootless attach) - and by `capture` with
/// `"fd": true`, which the control server serves before this ([`super::capture`]); with any
/// other request, or more than one, the request is refused and every descriptor closed, as it
/// is on any error.
pub fn handle_line_passed(h: &Handle, line: &str, passed: Passed) -> Value {
    let req: Request = match serde_json::from_str(line) {
        Ok(r) => r,
        Err(e) => return json!({ "ok": false, "error": format!("bad request: {e}") }),
    };
    let res = if passed.refused {
        Err(crate::Error::invalid(
            "descriptors",
            "at most one descriptor may come with a request (the TAP of add_port with \"fd\": true)",
        ))
    } else {
        match (req, passed.fd) {
            (Request::AddPort { port }, Some(fd)) => h.attach_fd(&port, fd).map(|a| json!(a)),
            (_, Some(_fd)) => Err(crate::Error::invalid(
                "descriptors",
                "a descriptor is only accepted with add_port whose port has \"fd\": true",
            )),
            (req, None) => execute(h, req),
        }
    };
    match res {
        Ok(v) => json!({ "ok": true, "result": v }),
        Err(e) => match errno(&e) {
            Some(n) => json!({ "ok": false, "error": e.to_string(), "errno": n }),
            None => json!({ "ok": false, "error": e.to_string() }),
        },
    }
}

/// The OS error number behind `e`, if it has one (`EPERM` for a permission refusal of
/// usernet's own, e.g. the sandbox's).
fn errno(e: &crate::Error) -> Option<i32> {
    let io = match e {
        crate::Error::Open(o) => &o.source,
        crate::Error::Io(_, io) => io,
        _ => return None,
    };
    io.raw_os_error()
        .or_else(|| (io.kind() == std::io::ErrorKind::PermissionDenied).then_some(libc::EPERM))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_requests_and_rejects_unknown_fields() {
        let r: Request = serde_json::from_str(r#"{"op":"fdb","network":"n"}"#).expect("ok");
        assert_eq!(
            r,
            Request::Fdb {
                network: Some("n".into())
            }
        );
        let r: Request = serde_json::from_str(
            r#"{"op":"add_port","port":{"network":"n","name":"p","tap":"t0"}}"#,
        )
        .expect("ok");
        assert!(matches!(r, Request::AddPort { .. }));
        let e = serde_json::from_str::<Request>(r#"{"op":"ports","x":1}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
        let e = serde_json::from_str::<Request>(
            r#"{"op":"add_port","port":{"network":"n","name":"p","tapp":"t0"}}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("tapp"), "{e}");
        assert!(serde_json::from_str::<Request>(r#"{"op":"nope"}"#).is_err());
    }

    #[test]
    fn add_network_takes_a_dns_policy_and_names_a_bad_entry() {
        let engine = crate::Engine::start(crate::EngineConfig::default()).expect("engine");
        let h = engine.handle();
        let req = |j: &str| serde_json::from_str::<Request>(j).expect("request");
        // A dns_policy alone implies the gateway.
        execute(
            &h,
            req(
                r#"{"op":"add_network","name":"n","subnet":"10.95.0.0/24","ipv6":"off",
                 "dns_upstreams":[],"dns_policy":{"default":"allow","deny":["ads.test"]}}"#,
            ),
        )
        .expect("add_network");
        let info = h.dns_policy("n").expect("policy");
        let policy = info.policy.expect("set");
        assert_eq!(policy.deny, ["ads.test"]);
        execute(
            &h,
            req(r#"{"op":"add_network","name":"m","dns_upstreams":[],"dns_policy":{"deny":["x.test"]}}"#),
        )
        .expect("gateway implied");
        assert!(h.dns_policy("m").expect("gateway").policy.is_some());
        let e = execute(
            &h,
            req(r#"{"op":"add_network","name":"b","dns_upstreams":[],"dns_policy":{"deny":["bad name"]}}"#),
        )
        .expect_err("bad entry");
        assert!(e.to_string().contains("dns_policy.deny[0]"), "{e}");
        assert!(h.networks().iter().all(|n| n.name != "b"), "nothing made");
        engine.shutdown();
    }
}
