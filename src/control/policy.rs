//! Policy rules at run time: listing them with their counters, adding and removing rules,
//! setting a default ([`Handle::policy_ls`], [`Handle::policy_add`], [`Handle::policy_rm`],
//! [`Handle::policy_default`]); the API's `policy_*` ops and `usernet ctl policy`. Each change
//! swaps the bridge's policy snapshot (see [`crate::policy`]): traffic the change does not
//! concern is never dropped.

use std::sync::Arc;

use serde::Serialize;

use super::Handle;
use crate::bridge::Topology;
use crate::error::{Error, Result};
use crate::policy::{Action, Compiled, RuleRow, RuleSpec, Scope};

/// One network's or port's policy, as `ctl policy ls` shows it.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct PolicyView {
    /// The network.
    pub network: String,
    /// The port, for a port's policy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    /// Its rules in order, then its default (a network's is always listed).
    pub rules: Vec<RuleRow>,
}

/// A deny counter the event watcher samples: `(identity, network, port, rule, packets)`.
pub(super) type DenyCounter = (usize, String, Option<String>, Option<usize>, u64);

/// The scope `network` (or its port `port`) names, checked against the topology.
fn scope_of(topo: &Topology, network: &str, port: Option<&str>) -> Result<Scope> {
    let ne = topo
        .network_by_name(network)
        .ok_or_else(|| crate::bridge::BridgeError::NoSuchNetwork(network.to_string()))?;
    let Some(port) = port else {
        return Ok(Scope::Network(ne.net.id.0));
    };
    let p = topo
        .port_by_name(port)
        .ok_or_else(|| crate::bridge::BridgeError::NoSuchPort(port.to_string()))?;
    if !p.carries(ne.net.id) {
        return Err(Error::invalid(
            "port",
            format!("port {port:?} is not in network {network:?}"),
        ));
    }
    Ok(Scope::Port(p.id.0))
}

impl Handle {
    /// The policies of every network (and of ports that have one); of one network and its
    /// ports; or of one port.
    pub fn policy_ls(&self, network: Option<&str>, port: Option<&str>) -> Result<Vec<PolicyView>> {
        let bridge = self.dp.bridge();
        let topo = bridge.topology();
        let table = bridge.policy();
        let mut v = Vec::new();
        if let Some(name) = port {
            let p = topo
                .port_by_name(name)
                .ok_or_else(|| crate::bridge::BridgeError::NoSuchPort(name.to_string()))?;
            let net = topo.network(p.network).map(|n| n.net.name.clone());
            if let Some(n) = network
                && net.as_deref() != Some(n)
                && scope_of(&topo, n, Some(name)).is_err()
            {
                return Err(Error::invalid(
                    "port",
                    format!("port {name:?} is not in network {n:?}"),
                ));
            }
            v.push(PolicyView {
                network: network.map(str::to_string).or(net).unwrap_or_default(),
                port: Some(name.to_string()),
                rules: table.rows(Scope::Port(p.id.0)),
            });
            return Ok(v);
        }
        if let Some(n) = network
            && topo.network_by_name(n).is_none()
        {
            return Err(crate::bridge::BridgeError::NoSuchNetwork(n.to_string()).into());
        }
        let snap = table.load();
        for ne in topo.networks() {
            if network.is_some_and(|n| n != ne.net.name) {
                continue;
            }
            v.push(PolicyView {
                network: ne.net.name.clone(),
                port: None,
                rules: table.rows(Scope::Network(ne.net.id.0)),
            });
            for p in &ne.ports {
                if p.network == ne.net.id && snap.get(Scope::Port(p.id.0)).is_some() {
                    v.push(PolicyView {
                        network: ne.net.name.clone(),
                        port: Some(p.name.clone()),
                        rules: table.rows(Scope::Port(p.id.0)),
                    });
                }
            }
        }
        Ok(v)
    }

    /// Inserts `rule` into the policy of `network` (or of its port `port`) at `index` (default:
    /// the end); returns the index it got. Errors name the rule's field (`rule.dst_port`).
    pub fn policy_add(
        &self,
        network: &str,
        port: Option<&str>,
        index: Option<usize>,
        rule: &RuleSpec,
    ) -> Result<usize> {
        let bridge = self.dp.bridge();
        let scope = scope_of(&bridge.topology(), network, port)?;
        let at = bridge.policy().add_rule(scope, index, rule)?;
        tracing::info!(network, port, index = at, rule = ?rule, "policy rule added");
        Ok(at)
    }

    /// Removes rule `index` from the policy of `network` (or of its port `port`); returns it.
    pub fn policy_rm(&self, network: &str, port: Option<&str>, index: usize) -> Result<RuleSpec> {
        let bridge = self.dp.bridge();
        let scope = scope_of(&bridge.topology(), network, port)?;
        let r = bridge.policy().remove_rule(scope, index)?;
        tracing::info!(network, port, index, "policy rule removed");
        Ok(r)
    }

    /// Sets the default action of `network`'s policy (or of its port `port`'s): `allow`,
    /// `deny`, or `None` (a network: allow; a port: its network's).
    pub fn policy_default(
        &self,
        network: &str,
        port: Option<&str>,
        default: Option<Action>,
    ) -> Result<()> {
        let bridge = self.dp.bridge();
        let scope = scope_of(&bridge.topology(), network, port)?;
        Ok(bridge.policy().set_default(scope, default)?)
    }

    /// The rule counters as metrics: `usernet_policy_packets_total` and
    /// `usernet_policy_bytes_total` by network, port (empty for a network's rule), rule
    /// (its index, or `default`) and action.
    pub(super) fn policy_metrics(&self, x: &mut super::metrics::Exposition) {
        for v in self.policy_ls(None, None).unwrap_or_default() {
            let port = v.port.as_deref().unwrap_or_default();
            for r in &v.rules {
                let rule = r
                    .index
                    .map_or_else(|| "default".to_string(), |i| i.to_string());
                let l = [
                    ("network", v.network.as_str()),
                    ("port", port),
                    ("rule", rule.as_str()),
                    ("action", r.action),
                ];
                x.counter(
                    "usernet_policy_packets_total",
                    "Packets a policy rule (or default) decided, by network, port (empty: the network's rule), rule index and action.",
                    &l,
                    r.packets,
                );
                x.counter(
                    "usernet_policy_bytes_total",
                    "Bytes of the packets a policy rule (or default) decided.",
                    &l,
                    r.bytes,
                );
            }
        }
    }

    /// Every deny rule's and deny default's packet counter, for the event watcher.
    pub(super) fn deny_counters(&self) -> Vec<DenyCounter> {
        let bridge = self.dp.bridge();
        let topo = bridge.topology();
        let snap = bridge.policy().load();
        let mut v = Vec::new();
        for (scope, c) in snap.all() {
            let (network, port) = match *scope {
                Scope::Network(id) => {
                    let n = topo.network(crate::bridge::NetworkId(id));
                    (n.map(|n| n.net.name.clone()), None)
                }
                Scope::Port(id) => {
                    let p = topo.port(crate::bridge::PortId(id));
                    let n = p.and_then(|p| topo.network(p.network));
                    (n.map(|n| n.net.name.clone()), p.map(|p| p.name.clone()))
                }
            };
            let Some(network) = network else { continue };
            push_denies(&mut v, c, &network, port.as_deref());
        }
        v
    }
}

fn push_denies(v: &mut Vec<DenyCounter>, c: &Compiled, network: &str, port: Option<&str>) {
    let rules = c.rules.iter().zip(&c.hits).enumerate();
    for (i, (r, h)) in rules.filter(|(_, (r, _))| r.action == Action::Deny) {
        let _ = r;
        let id = Arc::as_ptr(h) as usize;
        v.push((id, network.into(), port.map(Into::into), Some(i), h.get().0));
    }
    if c.default == Some(Action::Deny) {
        let id = Arc::as_ptr(&c.default_hits) as usize;
        let n = c.default_hits.get().0;
        v.push((id, network.into(), port.map(Into::into), None, n));
    }
}
