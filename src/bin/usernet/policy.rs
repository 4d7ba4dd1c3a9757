//! `usernet ctl policy`: list, add and remove policy rules, set a default.

use clap::Subcommand;
use serde_json::Value;
use usernet::control::api::Request;
use usernet::policy::{Action, RuleSpec};

/// `ctl policy ...`.
#[derive(Subcommand, Debug)]
pub enum PolicyCmd {
    /// List rules with their counters (packets, bytes), then each default: every network
    /// (and ports that have rules), one network and its ports, or one port.
    Ls {
        /// Only this network.
        network: Option<String>,
        /// Only this port.
        #[arg(long)]
        port: Option<String>,
    },
    /// Add a rule, written as KEY=VALUE words: `action=deny proto=tcp dst=10.88.0.0/24
    /// dst_port=22` (keys: action, direction, proto, src, dst, src_port, dst_port, icmp_type).
    /// The first word may be the action alone: `deny proto=icmp icmp_type=8`.
    Add {
        /// The network.
        network: String,
        /// Add to this port's rules instead of the network's.
        #[arg(long)]
        port: Option<String>,
        /// Insert at this position (default: the end; first match wins).
        #[arg(long)]
        index: Option<usize>,
        /// The rule.
        #[arg(required = true, num_args = 1..)]
        rule: Vec<String>,
    },
    /// Remove a rule by its index (as `ls` shows it).
    Rm {
        /// The network.
        network: String,
        /// A rule of this port's instead of the network's.
        #[arg(long)]
        port: Option<String>,
        /// The rule's index.
        index: usize,
    },
    /// Set the default action: allow, deny, or none (a network: allow; a port: its network's).
    Default {
        /// The network.
        network: String,
        /// This port's default instead of the network's.
        #[arg(long)]
        port: Option<String>,
        /// allow, deny or none.
        #[arg(value_parser = ["allow", "deny", "none"])]
        action: String,
    },
}

/// The rule `words` spell (`KEY=VALUE`, or a bare `allow`/`deny` first).
fn parse_rule(words: &[String]) -> anyhow::Result<RuleSpec> {
    let mut r = RuleSpec::new("");
    for (i, w) in words.iter().enumerate() {
        match w.split_once('=') {
            Some((k, v)) => r.set(k.trim(), v.trim())?,
            None if i == 0 => r.action = w.clone(),
            None => anyhow::bail!("{w:?}: expected KEY=VALUE"),
        }
    }
    Ok(r)
}

impl PolicyCmd {
    /// The API request.
    pub fn request(self) -> anyhow::Result<Request> {
        Ok(match self {
            PolicyCmd::Ls { network, port } => Request::PolicyLs { network, port },
            PolicyCmd::Add {
                network,
                port,
                index,
                rule,
            } => Request::PolicyAdd {
                network,
                port,
                index,
                rule: parse_rule(&rule)?,
            },
            PolicyCmd::Rm {
                network,
                port,
                index,
            } => Request::PolicyRm {
                network,
                port,
                index,
            },
            PolicyCmd::Default {
                network,
                port,
                action,
            } => Request::PolicyDefault {
                network,
                port,
                default: match action.as_str() {
                    "allow" => Some(Action::Allow),
                    "deny" => Some(Action::Deny),
                    _ => None,
                },
            },
        })
    }
}

/// The rule as `key=value` words (what `add` takes).
fn words(rule: &Value) -> String {
    let Some(m) = rule.as_object() else {
        return "-".into();
    };
    let w: Vec<String> = m
        .iter()
        .filter(|(k, _)| *k != "action")
        .map(|(k, v)| match v {
            Value::String(s) => format!("{k}={s}"),
            o => format!("{k}={o}"),
        })
        .collect();
    if w.is_empty() {
        "-".into()
    } else {
        w.join(" ")
    }
}

/// `ctl policy ls` as a table.
pub fn render(v: &Value) -> String {
    let mut rows = Vec::new();
    for p in v.as_array().into_iter().flatten() {
        let net = p["network"].as_str().unwrap_or_default();
        let port = p["port"].as_str().unwrap_or("-");
        for r in p["rules"].as_array().into_iter().flatten() {
            let index = match &r["index"] {
                Value::Null => "default".to_string(),
                i => i.to_string(),
            };
            rows.push(vec![
                net.to_string(),
                port.to_string(),
                index,
                r["action"].as_str().unwrap_or_default().to_string(),
                r["packets"].to_string(),
                r["bytes"].to_string(),
                words(&r["rule"]),
            ]);
        }
    }
    crate::render::table(
        &[
            "NETWORK", "PORT", "INDEX", "ACTION", "PACKETS", "BYTES", "RULE",
        ],
        rows,
    )
}
