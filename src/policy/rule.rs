//! Policy rules as written (config, API, `ctl policy add`) and their checked, compiled form.
//!
//! A [`RuleSpec`] keeps every field as the user wrote it (strings and numbers), so that
//! [`RuleSpec::compile`] can name the bad field in its error
//! (`network[0].policy.rules[1].dst_port: 70000 is outside 0..=65535`), whatever the input
//! format. A [`PolicySpec`] is a default action and an ordered list of rules.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{Invalid as Error, Result};

/// Most rules in one policy (a network's or a port's): matching is a linear walk.
pub const MAX_RULES: usize = 1024;

/// What a rule (or a default) does with a packet it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Let it through.
    Allow,
    /// Drop it (silently, like a firewall's DROP; counted).
    Deny,
}

impl Action {
    /// `"allow"` or `"deny"`.
    pub fn name(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        }
    }

    fn parse(s: &str) -> Option<Action> {
        match s {
            "allow" => Some(Action::Allow),
            "deny" => Some(Action::Deny),
            _ => None,
        }
    }
}

/// Which way a rule applies, seen from the port or network that holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Both ways (and, on a network, also traffic between its guests).
    #[default]
    Any,
    /// Towards the port (a guest receives it); on a network: coming in through a port forward.
    Ingress,
    /// From the port (a guest sends it); on a network: leaving through NAT.
    Egress,
}

impl Direction {
    /// `"any"`, `"ingress"` or `"egress"`.
    pub fn name(self) -> &'static str {
        match self {
            Direction::Any => "any",
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

/// The protocol a rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Proto {
    /// Any IP packet.
    #[default]
    Any,
    /// TCP (IP protocol 6).
    Tcp,
    /// UDP (17).
    Udp,
    /// ICMP (1, IPv4 only).
    Icmp,
    /// ICMPv6 (58, IPv6 only).
    Icmpv6,
}

impl Proto {
    /// The IP protocol number (`None` for any).
    pub fn number(self) -> Option<u8> {
        match self {
            Proto::Any => None,
            Proto::Tcp => Some(6),
            Proto::Udp => Some(17),
            Proto::Icmp => Some(1),
            Proto::Icmpv6 => Some(58),
        }
    }

    fn parse(s: &str) -> Option<Proto> {
        Some(match s {
            "any" => Proto::Any,
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            "icmp" => Proto::Icmp,
            "icmpv6" => Proto::Icmpv6,
            _ => return None,
        })
    }
}

/// A port or port range as written: `22`, `"22"` or `"53-54"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PortValue {
    /// A number.
    Num(i64),
    /// `"N"` or `"LO-HI"`.
    Text(String),
}

/// An inclusive port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    /// First port.
    pub lo: u16,
    /// Last port (inclusive).
    pub hi: u16,
}

impl PortRange {
    /// True when `p` is in the range.
    pub fn contains(&self, p: u16) -> bool {
        self.lo <= p && p <= self.hi
    }

    fn parse(v: &PortValue) -> std::result::Result<PortRange, String> {
        let one = |s: &str| -> std::result::Result<u16, String> {
            let n: i64 = s
                .trim()
                .parse()
                .map_err(|_| format!("{s:?} is not a port number (use N or LO-HI)"))?;
            u16::try_from(n).map_err(|_| format!("{n} is outside 0..=65535"))
        };
        let (lo, hi) = match v {
            PortValue::Num(n) => {
                let p = u16::try_from(*n).map_err(|_| format!("{n} is outside 0..=65535"))?;
                (p, p)
            }
            PortValue::Text(s) => match s.split_once('-') {
                Some((a, b)) => (one(a)?, one(b)?),
                None => {
                    let p = one(s)?;
                    (p, p)
                }
            },
        };
        if lo > hi {
            return Err(format!("range {lo}-{hi} is empty (first port above last)"));
        }
        Ok(PortRange { lo, hi })
    }
}

/// One rule as written. Every condition is optional: a rule with none matches every IP
/// packet. See README.md ("Policy rules") for the meaning of each key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RuleSpec {
    /// `allow` or `deny`.
    pub action: String,
    /// `any` (default), `ingress` or `egress`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
    /// `any` (default), `tcp`, `udp`, `icmp` or `icmpv6`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto: Option<String>,
    /// Source CIDR (IPv4 or IPv6; a bare address is a /32 or /128).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<String>,
    /// Destination CIDR.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst: Option<String>,
    /// Source port or range (TCP/UDP only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_port: Option<PortValue>,
    /// Destination port or range (TCP/UDP only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_port: Option<PortValue>,
    /// ICMP or ICMPv6 type (needs `proto = "icmp"` or `"icmpv6"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_type: Option<i64>,
}

/// A network's or a port's policy as written: a default action and ordered rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct PolicySpec {
    /// What happens to a packet no rule matches: `allow` or `deny`. A network's defaults to
    /// `allow`; a port's, when absent, is the network's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    /// The rules, first match wins.
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
}

/// A checked rule, ready for [`super::matcher::matches()`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// What it does.
    pub action: Action,
    /// Which way it applies.
    pub direction: Direction,
    /// Protocol.
    pub proto: Proto,
    /// Source network.
    pub src: Option<IpNet>,
    /// Destination network.
    pub dst: Option<IpNet>,
    /// Source ports.
    pub src_port: Option<PortRange>,
    /// Destination ports.
    pub dst_port: Option<PortRange>,
    /// ICMP type.
    pub icmp_type: Option<u8>,
}

fn cidr(s: &str) -> std::result::Result<IpNet, String> {
    let s = s.trim();
    if let Ok(n) = s.parse::<IpNet>() {
        return Ok(n.trunc());
    }
    s.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("{s:?} is not an address or CIDR (e.g. 10.88.0.0/24, fd00::/64)"))
}

impl RuleSpec {
    /// A rule with only an action (`allow` or `deny`).
    pub fn new(action: &str) -> Self {
        RuleSpec {
            action: action.to_string(),
            ..RuleSpec::default()
        }
    }

    /// Sets one field from `KEY=VALUE` text (`ctl policy add`); errors name the key.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let v = Some(value.to_string());
        match key {
            "action" => self.action = value.to_string(),
            "direction" => self.direction = v,
            "proto" => self.proto = v,
            "src" => self.src = v,
            "dst" => self.dst = v,
            "src_port" => self.src_port = Some(PortValue::Text(value.to_string())),
            "dst_port" => self.dst_port = Some(PortValue::Text(value.to_string())),
            "icmp_type" => {
                self.icmp_type =
                    Some(value.parse().map_err(|_| {
                        Error::new("icmp_type", format!("{value:?} is not a number"))
                    })?)
            }
            other => {
                return Err(Error::new(
                    other,
                    "unknown key (action, direction, proto, src, dst, src_port, dst_port, icmp_type)",
                ));
            }
        }
        Ok(())
    }

    /// Checks the rule; errors name `path.FIELD` (e.g. `network[0].policy.rules[1].dst_port`).
    pub fn compile(&self, path: &str) -> Result<Rule> {
        let bad = |field: &str, reason: String| Error::new(format!("{path}.{field}"), reason);
        let action = Action::parse(&self.action)
            .ok_or_else(|| bad("action", format!("{:?} is not allow or deny", self.action)))?;
        let direction = match self.direction.as_deref() {
            None | Some("any") => Direction::Any,
            Some("ingress") => Direction::Ingress,
            Some("egress") => Direction::Egress,
            Some(o) => {
                return Err(bad(
                    "direction",
                    format!("{o:?} is not any, ingress or egress"),
                ));
            }
        };
        let proto = match self.proto.as_deref() {
            None => Proto::Any,
            Some(p) => Proto::parse(p).ok_or_else(|| {
                bad(
                    "proto",
                    format!("{p:?} is not any, tcp, udp, icmp or icmpv6"),
                )
            })?,
        };
        let src = self
            .src
            .as_deref()
            .map(cidr)
            .transpose()
            .map_err(|e| bad("src", e))?;
        let dst = self
            .dst
            .as_deref()
            .map(cidr)
            .transpose()
            .map_err(|e| bad("dst", e))?;
        let family = |n: &Option<IpNet>| n.map(|n| matches!(n, IpNet::V4(_)));
        if let (Some(a), Some(b)) = (family(&src), family(&dst))
            && a != b
        {
            return Err(bad(
                "dst",
                "src and dst are of different address families".into(),
            ));
        }
        let fam = family(&src).or(family(&dst));
        match (proto, fam) {
            (Proto::Icmp, Some(false)) => {
                return Err(bad(
                    "proto",
                    "icmp is IPv4's; use icmpv6 with IPv6 addresses".into(),
                ));
            }
            (Proto::Icmpv6, Some(true)) => {
                return Err(bad(
                    "proto",
                    "icmpv6 is IPv6's; use icmp with IPv4 addresses".into(),
                ));
            }
            _ => {}
        }
        let ports_ok = matches!(proto, Proto::Tcp | Proto::Udp);
        let port = |field: &str, v: &Option<PortValue>| -> Result<Option<PortRange>> {
            let Some(v) = v else { return Ok(None) };
            if !ports_ok {
                return Err(bad(field, "ports need proto = \"tcp\" or \"udp\"".into()));
            }
            PortRange::parse(v).map(Some).map_err(|e| bad(field, e))
        };
        let src_port = port("src_port", &self.src_port)?;
        let dst_port = port("dst_port", &self.dst_port)?;
        let icmp_type = match self.icmp_type {
            None => None,
            Some(_) if !matches!(proto, Proto::Icmp | Proto::Icmpv6) => {
                return Err(bad(
                    "icmp_type",
                    "needs proto = \"icmp\" or \"icmpv6\"".into(),
                ));
            }
            Some(t) => Some(
                u8::try_from(t).map_err(|_| bad("icmp_type", format!("{t} is outside 0..=255")))?,
            ),
        };
        Ok(Rule {
            action,
            direction,
            proto,
            src,
            dst,
            src_port,
            dst_port,
            icmp_type,
        })
    }
}

impl PolicySpec {
    /// Checks the default and every rule; errors name `path.default`, `path.rules[i].FIELD`.
    pub fn compile(&self, path: &str) -> Result<(Option<Action>, Vec<Rule>)> {
        let default = match self.default.as_deref() {
            None => None,
            Some(d) => Some(Action::parse(d).ok_or_else(|| {
                Error::new(
                    format!("{path}.default"),
                    format!("{d:?} is not allow or deny"),
                )
            })?),
        };
        if self.rules.len() > MAX_RULES {
            return Err(Error::new(
                format!("{path}.rules"),
                format!("{} rules, at most {MAX_RULES}", self.rules.len()),
            ));
        }
        let rules = self
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| r.compile(&format!("{path}.rules[{i}]")))
            .collect::<Result<Vec<_>>>()?;
        Ok((default, rules))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(r: &RuleSpec) -> String {
        r.compile("network[0].policy.rules[1]")
            .expect_err("invalid")
            .to_string()
    }

    #[test]
    fn parses_a_full_rule() {
        let mut r = RuleSpec::new("deny");
        r.set("proto", "tcp").expect("ok");
        r.set("dst", "10.88.0.7/24").expect("ok");
        r.set("dst_port", "20-22").expect("ok");
        r.set("src", "10.88.0.5").expect("ok");
        r.set("direction", "egress").expect("ok");
        let c = r.compile("x").expect("valid");
        assert_eq!(c.action, Action::Deny);
        assert_eq!(c.direction, Direction::Egress);
        assert_eq!(
            c.dst,
            Some("10.88.0.0/24".parse().expect("net")),
            "truncated"
        );
        assert_eq!(c.src, Some("10.88.0.5/32".parse().expect("net")));
        assert_eq!(c.dst_port, Some(PortRange { lo: 20, hi: 22 }));
        let mut n = RuleSpec::new("allow");
        n.proto = Some("udp".into());
        n.dst_port = Some(PortValue::Num(53));
        assert_eq!(
            n.compile("x").expect("valid").dst_port,
            Some(PortRange { lo: 53, hi: 53 })
        );
    }

    #[test]
    fn errors_name_the_field() {
        let p = "invalid network[0].policy.rules[1]";
        let mut r = RuleSpec::new("drop");
        assert!(err(&r).starts_with(&format!("{p}.action: ")), "{}", err(&r));
        r.action = "deny".into();
        r.proto = Some("sctp".into());
        assert!(err(&r).starts_with(&format!("{p}.proto: ")));
        r.proto = Some("tcp".into());
        r.dst_port = Some(PortValue::Num(70000));
        assert!(err(&r).starts_with(&format!("{p}.dst_port: 70000 is outside")));
        r.dst_port = Some(PortValue::Text("30-20".into()));
        assert!(err(&r).contains("dst_port: range 30-20 is empty"));
        r.dst_port = Some(PortValue::Text("ssh".into()));
        assert!(err(&r).contains("dst_port: \"ssh\" is not a port"));
        r.dst_port = None;
        r.src = Some("10.0.0.0/33".into());
        assert!(err(&r).starts_with(&format!("{p}.src: ")));
        r.src = Some("10.0.0.0/8".into());
        r.dst = Some("fd00::/64".into());
        assert!(err(&r).contains("dst: src and dst are of different address families"));
        r.dst = None;
        r.icmp_type = Some(8);
        assert!(err(&r).starts_with(&format!("{p}.icmp_type: needs proto")));
        r.proto = Some("icmp".into());
        r.icmp_type = Some(300);
        assert!(err(&r).contains("icmp_type: 300 is outside"));
        r.icmp_type = Some(8);
        r.src_port = Some(PortValue::Num(1));
        assert!(err(&r).starts_with(&format!("{p}.src_port: ports need proto")));
        r.src_port = None;
        r.src = Some("fd00::1".into());
        assert!(err(&r).contains("proto: icmp is IPv4's"));
        r.direction = Some("in".into());
        assert!(err(&r).starts_with(&format!("{p}.direction: ")));
        assert!(RuleSpec::new("deny").set("port", "1").is_err());
    }

    #[test]
    fn policy_errors_name_the_rule() {
        let mut p = PolicySpec {
            default: Some("maybe".into()),
            rules: vec![RuleSpec::new("allow"), RuleSpec::new("nope")],
        };
        let e = p.compile("port[2].policy").expect_err("bad").to_string();
        assert!(e.contains("port[2].policy.default: "), "{e}");
        p.default = Some("deny".into());
        let e = p.compile("port[2].policy").expect_err("bad").to_string();
        assert!(e.contains("port[2].policy.rules[1].action: "), "{e}");
        p.rules.pop();
        let (d, r) = p.compile("port[2].policy").expect("valid");
        assert_eq!((d, r.len()), (Some(Action::Deny), 1));
    }
}
