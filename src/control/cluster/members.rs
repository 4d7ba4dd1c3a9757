//! The cluster's membership as read from etcd: `PREFIX/nodes/NODE` keys and their JSON values,
//! parsed and validated ([`Members`]), and the remotes each cluster network should have.
//! Pure: no I/O, unit-tested alone. A key or value that does not parse or validate is
//! refused with the reason (the caller logs it) and counted; the node it named, if it was known,
//! is forgotten: a remote is never kept at an address no valid record gives.

// Without the feature `cluster` only `ctl cluster`'s view reads the members (never filled).
#![cfg_attr(not(feature = "cluster"), allow(dead_code))]

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Longest value read (a node record is a few hundred bytes).
const MAX_VALUE: usize = 64 * 1024;

/// The value of `PREFIX/nodes/NODE`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct NodeRecord {
    /// The node's VTEP.
    pub(crate) vtep: IpAddr,
    /// Its cluster networks and their VNIs.
    pub(crate) networks: BTreeMap<String, u32>,
}

impl NodeRecord {
    /// The JSON stored in etcd.
    pub(crate) fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses and validates a stored value.
    pub(crate) fn parse(value: &[u8]) -> Result<NodeRecord, String> {
        if value.len() > MAX_VALUE {
            return Err(format!("value of {} bytes is too long", value.len()));
        }
        let r: NodeRecord =
            serde_json::from_slice(value).map_err(|e| format!("not a node record: {e}"))?;
        if !usable_vtep(r.vtep) {
            return Err(format!(
                "vtep {} is unspecified, multicast or broadcast",
                r.vtep
            ));
        }
        for (name, vni) in &r.networks {
            if crate::bridge::validate_name(name).is_err() {
                return Err(format!("network name {name:?} is invalid"));
            }
            if *vni > super::MAX_VNI {
                return Err(format!(
                    "network {name:?}: vni {vni} is outside 0..=16777215"
                ));
            }
        }
        Ok(r)
    }
}

/// True for an address that may be a VTEP: not unspecified, multicast or broadcast.
pub(crate) fn usable_vtep(ip: IpAddr) -> bool {
    !ip.is_unspecified()
        && !ip.is_multicast()
        && match ip {
            IpAddr::V4(v) => !v.is_broadcast(),
            IpAddr::V6(_) => true,
        }
}

/// The live nodes, from `PREFIX/nodes/` keys.
#[derive(Debug, Clone)]
pub(crate) struct Members {
    /// `PREFIX/nodes/`.
    nodes_prefix: String,
    me: String,
    nodes: BTreeMap<String, NodeRecord>,
    malformed: u64,
}

impl Members {
    /// No node yet; `prefix` is the cluster's key prefix, `me` this node's name.
    pub(crate) fn new(prefix: &str, me: &str) -> Self {
        Members {
            nodes_prefix: format!("{prefix}/nodes/"),
            me: me.to_string(),
            nodes: BTreeMap::new(),
            malformed: 0,
        }
    }

    /// The key prefix of node records (`PREFIX/nodes/`).
    pub(crate) fn nodes_prefix(&self) -> &str {
        &self.nodes_prefix
    }

    /// The node named by `key`, if it is a well-formed `PREFIX/nodes/NODE`.
    fn node_of(&self, key: &[u8]) -> Result<String, String> {
        let key = std::str::from_utf8(key).map_err(|_| "key is not UTF-8".to_string())?;
        let name = key
            .strip_prefix(self.nodes_prefix.as_str())
            .ok_or_else(|| format!("key {key:?} is not under {}", self.nodes_prefix))?;
        crate::bridge::validate_name(name)
            .map_err(|_| format!("key {key:?}: {name:?} is not a node name"))?;
        Ok(name.to_string())
    }

    /// Forgets every node (before a full read).
    pub(crate) fn clear(&mut self) {
        self.nodes.clear();
    }

    /// A key was created or changed. `Err` (the reason, to log) for a malformed key or value,
    /// counted; the node it named is forgotten.
    pub(crate) fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), String> {
        let name = match self.node_of(key) {
            Ok(n) => n,
            Err(e) => {
                self.malformed += 1;
                return Err(e);
            }
        };
        match NodeRecord::parse(value) {
            Ok(r) => {
                self.nodes.insert(name, r);
                Ok(())
            }
            Err(e) => {
                self.malformed += 1;
                self.nodes.remove(&name);
                Err(format!("node {name:?}: {e}"))
            }
        }
    }

    /// A key was deleted (or its lease expired).
    pub(crate) fn delete(&mut self, key: &[u8]) {
        if let Ok(name) = self.node_of(key) {
            self.nodes.remove(&name);
        }
    }

    /// The live nodes by name.
    pub(crate) fn nodes(&self) -> impl Iterator<Item = (&String, &NodeRecord)> {
        self.nodes.iter()
    }

    /// Keys and values ignored so far.
    pub(crate) fn malformed(&self) -> u64 {
        self.malformed
    }

    /// The remotes network `net` (VNI `vni`) should have on this node, whose VTEP is `local`:
    /// the VTEPs of the other nodes that have `net` with the same VNI and an address of the
    /// same family that is not `local`.
    pub(crate) fn remotes(&self, net: &str, vni: u32, local: IpAddr) -> BTreeSet<IpAddr> {
        self.nodes
            .iter()
            .filter(|(name, _)| **name != self.me)
            .filter(|(_, r)| r.networks.get(net) == Some(&vni))
            .map(|(_, r)| r.vtep)
            .filter(|ip| ip.is_ipv4() == local.is_ipv4() && *ip != local)
            .collect()
    }
}

impl super::KeyTable for Members {
    fn prefix(&self) -> &str {
        Members::nodes_prefix(self)
    }
    fn clear(&mut self) {
        Members::clear(self)
    }
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), String> {
        Members::put(self, key, value)
    }
    fn delete(&mut self, key: &[u8]) {
        Members::delete(self, key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(vtep: &str, nets: &[(&str, u32)]) -> String {
        NodeRecord {
            vtep: vtep.parse().expect("ip"),
            networks: nets.iter().map(|(n, v)| (n.to_string(), *v)).collect(),
        }
        .to_json()
    }

    fn ips(v: &[&str]) -> BTreeSet<IpAddr> {
        v.iter().map(|s| s.parse().expect("ip")).collect()
    }

    #[test]
    fn remotes_are_the_other_live_nodes_with_the_network() {
        let local: IpAddr = "192.0.2.1".parse().expect("ip");
        let mut m = Members::new("/usernet", "a");
        m.put(
            b"/usernet/nodes/a",
            rec("192.0.2.1", &[("web", 70)]).as_bytes(),
        )
        .expect("a");
        m.put(
            b"/usernet/nodes/b",
            rec("192.0.2.2", &[("web", 70), ("db", 5)]).as_bytes(),
        )
        .expect("b");
        m.put(
            b"/usernet/nodes/c",
            rec("192.0.2.3", &[("db", 5)]).as_bytes(),
        )
        .expect("c");
        // Same name, other VNI: not the same network.
        m.put(
            b"/usernet/nodes/d",
            rec("192.0.2.4", &[("web", 71)]).as_bytes(),
        )
        .expect("d");
        // Another family, or claiming our own VTEP: never a remote.
        m.put(
            b"/usernet/nodes/e",
            rec("2001:db8::5", &[("web", 70)]).as_bytes(),
        )
        .expect("e");
        m.put(
            b"/usernet/nodes/f",
            rec("192.0.2.1", &[("web", 70)]).as_bytes(),
        )
        .expect("f");
        assert_eq!(m.remotes("web", 70, local), ips(&["192.0.2.2"]));
        assert_eq!(m.remotes("db", 5, local), ips(&["192.0.2.2", "192.0.2.3"]));
        m.delete(b"/usernet/nodes/b");
        assert!(m.remotes("web", 70, local).is_empty());
        assert_eq!(m.nodes().count(), 5);
        assert_eq!(m.malformed(), 0);
    }

    #[test]
    fn malformed_keys_and_values_are_refused_counted_and_forget_the_node() {
        let local: IpAddr = "192.0.2.1".parse().expect("ip");
        let mut m = Members::new("/usernet", "a");
        m.put(
            b"/usernet/nodes/b",
            rec("192.0.2.2", &[("web", 70)]).as_bytes(),
        )
        .expect("b");
        let good = rec("192.0.2.9", &[("web", 70)]);
        let bad: &[(&[u8], &[u8])] = &[
            (b"/usernet/nodes/", b"{}"),
            (b"/usernet/nodes/x/y", good.as_bytes()),
            (b"/usernet/nodes/\xff", b"{}"),
            (b"/usernet/nodes/x", b"not json"),
            (
                b"/usernet/nodes/x",
                br#"{"vtep":"300.1.1.1","networks":{}}"#,
            ),
            (
                b"/usernet/nodes/x",
                br#"{"vtep":"0.0.0.0","networks":{"web":70}}"#,
            ),
            (
                b"/usernet/nodes/x",
                br#"{"vtep":"224.0.0.1","networks":{"web":70}}"#,
            ),
            (
                b"/usernet/nodes/x",
                br#"{"vtep":"192.0.2.9","networks":{"web":16777216}}"#,
            ),
            (
                b"/usernet/nodes/x",
                br#"{"vtep":"192.0.2.9","networks":{"bad name":1}}"#,
            ),
            (b"/usernet/nodes/x", br#"{"vtep":"192.0.2.9"}"#),
        ];
        for (k, v) in bad {
            let e = m.put(k, v).expect_err("refused");
            assert!(!e.is_empty());
        }
        assert_eq!(m.malformed(), bad.len() as u64);
        assert_eq!(m.remotes("web", 70, local), ips(&["192.0.2.2"]));
        // A known node whose value turns bad is forgotten, not kept at its old address.
        m.put(b"/usernet/nodes/b", b"garbage").expect_err("refused");
        assert!(m.remotes("web", 70, local).is_empty());
        // Unknown fields are fine (a newer node may add some).
        m.put(
            b"/usernet/nodes/c",
            br#"{"vtep":"192.0.2.3","networks":{"web":70},"extra":1}"#,
        )
        .expect("newer record");
        assert_eq!(m.remotes("web", 70, local), ips(&["192.0.2.3"]));
    }
}
