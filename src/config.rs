//! The TOML configuration file of `usernet up`, parsed with serde and validated into typed values.
//!
//! Unknown keys are errors (with the line and the list of valid keys, from serde); values are
//! checked and errors name the key as `network[1].subnet`, `port[0].tap` and so on. Every key is
//! documented in README.md.

use std::net::IpAddr;
use std::path::Path;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::control::api::fdb_config;
use crate::control::{Handle, PortSpec};
use crate::engine::EngineConfig;
use crate::error::{Error, Result};

/// `[engine]`: process-wide settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSection {
    /// Event-loop threads.
    pub loops: usize,
    /// Largest MTU of any port (sizes frame buffers).
    pub mtu: u32,
    /// TX ring capacity per port, in frames.
    pub ring: usize,
}

impl Default for EngineSection {
    fn default() -> Self {
        EngineSection {
            loops: 1,
            mtu: 1500,
            ring: crate::bridge::DEFAULT_RING,
        }
    }
}

/// `[[network]]`: one network (bridge domain).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSection {
    /// Unique name.
    pub name: String,
    /// IPv4 subnet of the network's gateway (gateway services: not yet implemented).
    #[serde(default)]
    pub subnet: Option<Ipv4Net>,
    /// IPv6 prefix (gateway services: not yet implemented).
    #[serde(default)]
    pub ipv6: Option<Ipv6Net>,
    /// DNS domain (gateway services: not yet implemented).
    #[serde(default)]
    pub domain: Option<String>,
    /// No NAT egress (NAT: not yet implemented).
    #[serde(default)]
    pub internal: bool,
    /// DNS upstreams (gateway services: not yet implemented).
    #[serde(default)]
    pub dns_upstreams: Vec<IpAddr>,
    /// FDB size cap (default 8192).
    #[serde(default)]
    pub fdb_max_entries: Option<usize>,
    /// FDB aging in seconds (default 300; 0 = never).
    #[serde(default)]
    pub fdb_aging_secs: Option<u64>,
}

/// A whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
    /// `[[forward]]` tables: refused until port forwarding exists.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forward: Vec<toml::Table>,
}

impl Config {
    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<Config> {
        let cfg: Config =
            toml::from_str(text).map_err(|e| Error::invalid("config", e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads, parses and validates a file.
    pub fn load(path: &Path) -> Result<Config> {
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
        if !self.forward.is_empty() {
            return Err(Error::invalid(
                "forward[0]",
                "port forwarding is not implemented yet in this version",
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
            if let Some(s) = n.subnet {
                if s.prefix_len() > 30 {
                    return Err(Error::invalid(
                        format!("network[{i}].subnet"),
                        format!("{s} leaves no room for a gateway and guests (use /30 or larger)"),
                    ));
                }
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
            ..EngineConfig::default()
        }
    }

    /// Creates the networks and ports on a running engine.
    pub fn apply(&self, h: &Handle) -> Result<()> {
        for n in &self.network {
            if n.subnet.is_some()
                || n.ipv6.is_some()
                || n.domain.is_some()
                || !n.dns_upstreams.is_empty()
                || n.internal
            {
                tracing::warn!(
                    network = %n.name,
                    "subnet/ipv6/domain/internal/dns_upstreams are accepted but gateway and NAT services are not implemented yet"
                );
            }
            h.add_network(&n.name, fdb_config(n.fdb_max_entries, n.fdb_aging_secs))?;
        }
        for p in &self.port {
            h.open_port(p)?;
        }
        Ok(())
    }
}

/// Parses a CIDR string (for CLI flags).
pub fn parse_net(s: &str, field: &str) -> Result<IpNet> {
    s.parse()
        .map_err(|e| Error::invalid(field, format!("{s:?}: {e}")))
}

#[cfg(test)]
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
        assert!(err("[[forward]]\npublish = \"8080:80\"").contains("forward"));
        assert!(err("[[network]]\nname = \"a\"\nfdb_max_entries = 0").contains("fdb_max_entries"));
    }
}
