//! The TOML configuration file of `usernet up`, parsed with serde and validated into typed values.
//!
//! Unknown keys are errors (with the line and the list of valid keys, from serde); values are
//! checked and errors name the key as `network[1].subnet`, `port[0].tap` and so on. Every key is
//! documented in README.md.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::control::cluster::{ClusterNet, ClusterSpec, Scope};
pub use crate::control::networks::{
    NetworkSpec as NetworkSection, StaticLeaseSpec as StaticLeaseSection, parse_upstream,
};
use crate::control::{Handle, PortSpec};
use crate::engine::EngineConfig;
use crate::error::{Error, Result};

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
    /// Serve Prometheus metrics over HTTP at `http://ADDR:PORT/metrics` (`usernet up`; its
    /// `--metrics` flag wins); see [`crate::control::metrics::serve`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<std::net::SocketAddr>,
}

impl Default for EngineSection {
    fn default() -> Self {
        EngineSection {
            loops: 1,
            mtu: 1500,
            ring: crate::bridge::DEFAULT_RING,
            busy_poll_us: 0,
            metrics: None,
        }
    }
}

/// How long `usernet up` waits for a cluster network's first address claims when a port takes
/// its address from the pool.
const CLAIM_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Largest `[engine] busy_poll_us`: a second.
const MAX_BUSY_POLL_US: u32 = 1_000_000;

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
    /// `[[service]]` tables: load-balanced services of cluster networks, published on every
    /// node (feature `cluster`); see `control/cluster/services.rs`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service: Vec<crate::control::cluster::services::Service>,
    /// `[cluster]`: this node's cluster (feature `cluster`); see [`crate::control::cluster`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterSpec>,
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
            if let Some(m) = n.mtu
                && u32::from(m) > self.engine.mtu
            {
                return Err(Error::invalid(
                    format!("network[{i}].mtu"),
                    format!(
                        "{m} is above engine.mtu {} (the engine's buffers would drop every \
                         frame that large): raise [engine] mtu to at least {m}",
                        self.engine.mtu
                    ),
                ));
            }
            n.gateway_config(&format!("network[{i}]"), self.engine.mtu)?;
            if let Some(p) = &n.policy {
                crate::policy::Compiled::new(p, &format!("network[{i}].policy"))?;
            }
        }
        self.validate_cluster()?;
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
            f.check(&format!("forward[{i}]"))
                .map_err(|(field, why)| Error::invalid(field, why))?;
        }
        let mut ports = std::collections::HashSet::new();
        for (i, p) in self.port.iter().enumerate() {
            p.backend(&format!("port[{i}]"))?;
            if let Some(pol) = &p.policy {
                crate::policy::Compiled::new(pol, &format!("port[{i}].policy"))?;
            }
            if let Some(m) = p.mtu
                && m > self.engine.mtu
            {
                return Err(Error::invalid(
                    format!("port[{i}].mtu"),
                    format!(
                        "{m} is above engine.mtu {}: raise [engine] mtu to at least {m}",
                        self.engine.mtu
                    ),
                ));
            }
            for (key, net) in p.networks() {
                if !names.contains(net) {
                    return Err(Error::invalid(
                        format!("port[{i}].{key}"),
                        format!("no [[network]] named {net:?}"),
                    ));
                }
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

    /// `[cluster]` and the cluster networks: errors name the key.
    fn validate_cluster(&self) -> Result<()> {
        let vtep = match &self.cluster {
            Some(c) => Some(c.check("cluster")?),
            None => None,
        };
        let mut vnis = std::collections::HashMap::new();
        for (i, n) in self.network.iter().enumerate() {
            let key = |k: &str| format!("network[{i}].{k}");
            if n.scope != Scope::Cluster {
                if n.vni.is_some() {
                    return Err(Error::invalid(
                        key("vni"),
                        "only for a cluster network (scope = \"cluster\")",
                    ));
                }
                continue;
            }
            if vtep.is_none() {
                return Err(Error::invalid(
                    key("scope"),
                    "a cluster network needs a [cluster] section",
                ));
            }
            let vni = crate::control::cluster::check_vni(n.vni, &key("vni"))?;
            if let Some(other) = vnis.insert(vni, n.name.as_str()) {
                return Err(Error::invalid(
                    key("vni"),
                    format!("{vni} is also the VNI of network {other:?}"),
                ));
            }
            if n.name.len() > 61 {
                return Err(Error::invalid(
                    key("name"),
                    "a cluster network's name has at most 61 characters (its VXLAN port is vx.NAME)",
                ));
            }
            if !n.static_leases.is_empty() {
                return Err(Error::invalid(
                    key("static_leases"),
                    "not on a cluster network yet: its addresses come from the cluster's shared pool",
                ));
            }
        }
        let nets = self.cluster_nets();
        let names: Vec<&str> = nets.iter().map(|n| n.name.as_str()).collect();
        if !self.service.is_empty() && self.cluster.is_none() {
            return Err(Error::invalid(
                "service[0]",
                "services need a [cluster] section",
            ));
        }
        crate::control::cluster::services::check_services(&self.service, &names)?;
        if let Some(i) = self.port.iter().position(|p| {
            self.cluster_nets()
                .iter()
                .any(|n| p.name == crate::control::cluster::port_name(&n.name))
        }) {
            return Err(Error::invalid(
                format!("port[{i}].name"),
                "vx.NAME is the VXLAN port usernet makes for cluster network NAME",
            ));
        }
        Ok(())
    }

    /// The cluster networks and their VNIs.
    pub fn cluster_nets(&self) -> Vec<ClusterNet> {
        self.network
            .iter()
            .filter(|n| n.scope == Scope::Cluster)
            .filter_map(|n| {
                Some(ClusterNet {
                    name: n.name.clone(),
                    vni: n.vni?,
                })
            })
            .collect()
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
        if self.cluster.is_some() && !cfg!(feature = "cluster") {
            return Err(Error::invalid(
                "cluster",
                "this usernet was built without the `cluster` feature (cargo build --features cluster)",
            ));
        }
        for (i, n) in self.network.iter().enumerate() {
            h.create_network(n, &format!("network[{i}]"))?;
        }
        if let Some(c) = &self.cluster {
            // Each cluster network's VXLAN port comes first: ports added after it take its MTU.
            let vtep = c.check("cluster")?;
            for n in self.cluster_nets() {
                h.restrict_dhcp_to_claims(&n.name);
                let mut p = PortSpec::new(&n.name, &crate::control::cluster::port_name(&n.name));
                p.vxlan = Some(crate::link::vxlan::VxlanSpec::new(n.vni, vtep));
                h.open_port(&p)?;
            }
        }
        if let Some(c) = &self.cluster {
            h.reserve_service_ips(&self.service)?;
            h.start_cluster(c, self.cluster_nets())?;
            // Ports taking an address from a cluster network's pool (`ips = ["auto"]`) wait
            // for the first claims.
            for (i, p) in self.port.iter().enumerate() {
                let auto = p.ips.contains(&crate::control::AddrSpec::Auto);
                let net = p.home_network();
                if auto
                    && self.cluster_nets().iter().any(|n| n.name == net)
                    && !h.wait_cluster_claims(net, CLAIM_WAIT)
                {
                    return Err(Error::invalid(
                        format!("port[{i}].ips"),
                        format!(
                            "no address of cluster network {net:?} was claimed in etcd within {} s (is etcd reachable?)",
                            CLAIM_WAIT.as_secs()
                        ),
                    ));
                }
            }
        }
        for p in &self.port {
            h.open_port(p)?;
        }
        for f in &self.forward {
            h.add_forward(f)?;
        }
        h.start_services(&self.service)?;
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
    fn dns_policy_parses_and_errors_name_the_entry() {
        let c = Config::parse(
            "[[network]]\nname = \"n\"\ndns_policy = { default = \"deny\", allow = [\"*.corp.example\"], answer = \"refused\" }\n",
        )
        .expect("valid");
        let p = c.network[0].dns_policy.as_ref().expect("a policy");
        assert_eq!(p.allow, ["*.corp.example"]);
        for (body, key) in [
            (
                "deny = [\"ok.example\", \"bad name\"]",
                "network[0].dns_policy.deny[1]",
            ),
            (
                "allow = [\"a.example\"], deny = [\"A.example\"]",
                "network[0].dns_policy.deny[0]",
            ),
            ("default = \"maybe\"", "default"),
            ("answer = \"servfail\"", "answer"),
            ("block = []", "block"),
        ] {
            let e = err(&format!(
                "[[network]]\nname = \"n\"\ndns_policy = {{ {body} }}\n"
            ));
            assert!(e.contains(key), "{body}: {e}");
        }
        let e = err(
            "[[network]]\nname = \"n\"\ngateway = false\ndns_policy = { deny = [\"x.example\"] }\n",
        );
        assert!(e.contains("network[0].dns_policy"), "{e}");
    }

    #[test]
    fn trunk_ports_parse_and_errors_name_the_key() {
        let nets =
            "[[network]]\nname = \"n0\"\n[[network]]\nname = \"n1\"\n[[network]]\nname = \"n2\"\n";
        let port =
            |body: &str| format!("{nets}[[port]]\nname = \"t\"\npacket = \"eth1\"\n{body}\n");
        let c =
            Config::parse(&port("trunk = { n0 = 10, n1 = 20 }\nnative = \"n2\"")).expect("valid");
        let t = c.port[0].trunk_spec().expect("a trunk");
        assert_eq!((t.vlans["n0"], t.vlans["n1"]), (10, 20));
        assert_eq!(c.port[0].home_network(), "n2");
        for (body, key, why) in [
            (
                "trunk = { n0 = 10, nx = 20 }",
                "port[0].trunk.nx",
                "no [[network]]",
            ),
            ("trunk = { n0 = 0 }", "port[0].trunk.n0", "outside 1..=4094"),
            (
                "trunk = { n0 = 4095 }",
                "port[0].trunk.n0",
                "outside 1..=4094",
            ),
            (
                "trunk = { n0 = 10, n1 = 10 }",
                "port[0].trunk.n1",
                "also the one of",
            ),
            (
                "network = \"n0\"\ntrunk = { n1 = 10 }",
                "port[0].trunk",
                "both `network` and `trunk`",
            ),
            (
                "trunk = { n0 = 10 }\nnative = \"n0\"",
                "port[0].native",
                "also in the trunk map",
            ),
            (
                "trunk = { n0 = 10 }\nnative = \"nx\"",
                "port[0].native",
                "no [[network]]",
            ),
            (
                "native = \"n0\"",
                "port[0].native",
                "only meaningful with `trunk`",
            ),
            ("", "port[0].network", "missing"),
        ] {
            let e = err(&port(body));
            assert!(e.contains(key) && e.contains(why), "{body}: {e}");
        }
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
        let e = err("[engine]\nmetrics = \"127.0.0.1\"");
        assert!(e.contains("metrics") && e.contains("socket address"), "{e}");
        let c = Config::parse("[engine]\nmetrics = \"127.0.0.1:9600\"").expect("valid");
        assert_eq!(
            c.engine.metrics,
            Some("127.0.0.1:9600".parse().expect("addr"))
        );
        assert!(err("[[forward]]\npublish = \"8080:80\"").contains("forward"));
        assert!(err("[[network]]\nname = \"a\"\nfdb_max_entries = 0").contains("fdb_max_entries"));
        let e = err("[[network]]\nname = \"a\"\nmtu = 9000");
        assert!(
            e.contains("network[0].mtu") && e.contains("engine.mtu 1500"),
            "{e}"
        );
        assert!(
            Config::parse("[engine]\nmtu = 9000\n[[network]]\nname = \"a\"\nmtu = 9000").is_ok()
        );
        let e = err(
            "[[network]]\nname = \"a\"\n[[port]]\nnetwork = \"a\"\nname = \"p\"\ntap = \"t\"\nmtu = 9000",
        );
        assert!(e.contains("port[0].mtu") && e.contains("engine.mtu"), "{e}");
    }

    #[test]
    fn cluster_keys_parse_and_errors_name_the_key() {
        let cl =
            "[cluster]\netcd = [\"http://127.0.0.1:2379\"]\nnode = \"a\"\nvtep = \"192.0.2.1\"\n";
        let net = "[[network]]\nname = \"web\"\nscope = \"cluster\"\nvni = 70\n";
        let c = Config::parse(&format!("{cl}{net}")).expect("valid");
        let spec = c.cluster.as_ref().expect("cluster");
        assert_eq!((spec.prefix.as_str(), spec.ttl_s), ("/usernet", 10));
        assert_eq!(c.cluster_nets().len(), 1);
        assert_eq!(c.cluster_nets()[0].vni, 70);
        for (text, key) in [
            (net.to_string(), "network[0].scope"),
            (
                format!("{cl}[[network]]\nname = \"w\"\nscope = \"cluster\"\n"),
                "network[0].vni",
            ),
            (
                format!("{cl}[[network]]\nname = \"w\"\nscope = \"cluster\"\nvni = 16777216\n"),
                "network[0].vni",
            ),
            (
                format!("{cl}[[network]]\nname = \"w\"\nvni = 5\n"),
                "network[0].vni",
            ),
            (
                format!("{cl}{net}[[network]]\nname = \"x\"\nscope = \"cluster\"\nvni = 70\n"),
                "network[1].vni",
            ),
            (
                format!("{cl}[[network]]\nname = \"w\"\nscope = \"global\"\n"),
                "scope",
            ),
            (
                format!(
                    "{cl}{net}static_leases = [{{ mac = \"02:00:00:00:00:01\", ip = \"10.88.0.5\" }}]\n"
                ),
                "network[0].static_leases",
            ),
            (
                format!("{cl}{net}[[port]]\nnetwork = \"web\"\nname = \"vx.web\"\ntap = \"t\"\n"),
                "port[0].name",
            ),
            (
                cl.replace("http://127.0.0.1:2379", "127.0.0.1:2379"),
                "cluster.etcd[0]",
            ),
            (
                cl.replace("[\"http://127.0.0.1:2379\"]", "[]"),
                "cluster.etcd",
            ),
            (cl.replace("\"a\"", "\"a b\""), "cluster.node"),
            (cl.replace("192.0.2.1", "host-a"), "cluster.vtep"),
            (cl.replace("192.0.2.1", "0.0.0.0"), "cluster.vtep"),
            (format!("{cl}prefix = \"usernet/\"\n"), "cluster.prefix"),
            (format!("{cl}ttl_s = 1\n"), "cluster.ttl_s"),
            (format!("{cl}cert = \"/c.pem\"\n"), "cluster.key"),
            (format!("{cl}ca = \"/ca.pem\"\n"), "cluster.etcd[0]"),
            (format!("{cl}members = 3\n"), "members"),
        ] {
            let e = err(&text);
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn service_keys_parse_and_errors_name_the_key() {
        let cl =
            "[cluster]\netcd = [\"http://127.0.0.1:2379\"]\nnode = \"a\"\nvtep = \"192.0.2.1\"\n";
        let net = "[[network]]\nname = \"web\"\nscope = \"cluster\"\nvni = 70\n";
        let svc = "[[service]]\nnetwork = \"web\"\npublish = \"8080:80/tcp\"\n\
                   to = [\"web1\", \"web2\"]\nbalance = \"least_conn\"\n\
                   health = { interval_ms = 500, timeout_ms = 200 }\n";
        let c = Config::parse(&format!("{cl}mesh_port = 7000\n{net}{svc}")).expect("valid");
        assert_eq!(c.cluster.as_ref().map(|c| c.mesh_port), Some(7000));
        assert_eq!(c.service.len(), 1);
        assert_eq!(c.service[0].to.len(), 2);
        let c = Config::parse(&format!("{cl}{net}")).expect("valid");
        assert_eq!(
            c.cluster.as_ref().map(|c| c.mesh_port),
            Some(crate::control::cluster::DEFAULT_MESH_PORT)
        );
        for (text, key) in [
            (format!("{net}{svc}"), "network[0].scope"),
            (
                format!("{cl}{net}{}", svc.replace("8080:80/tcp", "8080:80/udp")),
                "service[0].publish",
            ),
            (
                format!("{cl}{net}{}", svc.replace("\"web2\"", "\"Web2\"")),
                "service[0].to[1]",
            ),
            (
                format!(
                    "{cl}{net}{}",
                    svc.replace("network = \"web\"", "network = \"lan\"")
                ),
                "service[0].network",
            ),
            (format!("{cl}{net}{svc}{svc}"), "service[1].publish"),
            (format!("{cl}mesh_port = 0\n{net}"), "cluster.mesh_port"),
            (
                format!(
                    "{cl}{net}{}",
                    svc.replace("timeout_ms = 200", "timeout_ms = 900")
                ),
                "service[0].health.timeout_ms",
            ),
        ] {
            let e = err(&text);
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn policy_keys_parse_and_errors_name_the_rule_field() {
        let text = |net: &str, port: &str| {
            format!(
                "[[network]]\nname = \"net0\"\npolicy = {net}\n\
                 [[port]]\nnetwork = \"net0\"\nname = \"c1\"\ntap = \"t1\"\npolicy = {port}\n"
            )
        };
        let good = text(
            r#"{ default = "allow", rules = [
                { action = "deny", proto = "tcp", dst = "10.88.0.0/24", dst_port = "22" },
                { action = "deny", proto = "icmp", icmp_type = 8, src = "10.88.0.5/32" },
                { action = "allow", direction = "egress", proto = "udp", dst_port = "53-54" } ] }"#,
            r#"{ rules = [ { action = "deny", direction = "ingress", proto = "tcp", dst_port = 80 } ] }"#,
        );
        let c = Config::parse(&good).expect("valid");
        assert_eq!(c.network[0].policy.as_ref().map(|p| p.rules.len()), Some(3));
        assert_eq!(c.port[0].policy().rules.map(|p| p.rules.len()), Some(1));
        let e = err(&text(
            r#"{ rules = [ { action = "deny" }, { action = "deny", proto = "tcp", dst_port = "99999" } ] }"#,
            "{}",
        ));
        assert!(
            e.contains("network[0].policy.rules[1].dst_port: 99999 is outside"),
            "{e}"
        );
        let e = err(&text("{}", r#"{ default = "reject" }"#));
        assert!(e.contains("port[0].policy.default: "), "{e}");
        let e = err(&text(
            r#"{ rules = [ { action = "deny", port = 1 } ] }"#,
            "{}",
        ));
        assert!(e.contains("unknown field `port`"), "{e}");
    }
}
