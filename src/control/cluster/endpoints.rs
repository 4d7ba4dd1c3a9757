//! DNS names across nodes: each node publishes the names its DHCP clients registered
//! (`PREFIX/endpoints/NET/NAME/NODE` = the IPv4 address, bound to its lease), and every node's
//! gateway answers them for its guests. Pure: parsing and validation of those keys
//! ([`Endpoints`]), the set of remote names a node should serve, the diffs to apply. A key
//! or value that does not parse is refused with the reason and counted, and the endpoint it
//! named (if known) forgotten.

// Without the feature `cluster` nothing fills them.
#![cfg_attr(not(feature = "cluster"), allow(dead_code))]

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

/// A name on a network at an address: `(network, name, address)`.
pub(crate) type Name = (String, String, Ipv4Addr);

/// True for a DNS label usernet registers (lower-case letters, digits, `-`; 1-63).
pub(super) fn label_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// The endpoints the cluster published, from `PREFIX/endpoints/` keys.
#[derive(Debug, Clone)]
pub(crate) struct Endpoints {
    /// `PREFIX/endpoints/`.
    prefix: String,
    me: String,
    /// (network, name, node) -> address.
    map: BTreeMap<(String, String, String), Ipv4Addr>,
    malformed: u64,
}

impl Endpoints {
    /// None yet; `prefix` is the cluster's key prefix, `me` this node's name.
    pub(crate) fn new(prefix: &str, me: &str) -> Self {
        Endpoints {
            prefix: format!("{prefix}/endpoints/"),
            me: me.to_string(),
            map: BTreeMap::new(),
            malformed: 0,
        }
    }

    /// `PREFIX/endpoints/`.
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The key of `name` on `net` published by this node.
    pub(crate) fn key(&self, net: &str, name: &str) -> String {
        format!("{}{net}/{name}/{}", self.prefix, self.me)
    }

    fn parse_key(&self, key: &[u8]) -> Result<(String, String, String), String> {
        let key = std::str::from_utf8(key).map_err(|_| "key is not UTF-8".to_string())?;
        let rest = key
            .strip_prefix(self.prefix.as_str())
            .ok_or_else(|| format!("key {key:?} is not under {}", self.prefix))?;
        let parts: Vec<&str> = rest.split('/').collect();
        let [net, name, node] = parts.as_slice() else {
            return Err(format!("key {key:?} is not {}NET/NAME/NODE", self.prefix));
        };
        if crate::bridge::validate_name(net).is_err()
            || crate::bridge::validate_name(node).is_err()
            || !label_ok(name)
        {
            return Err(format!("key {key:?}: bad network, name or node"));
        }
        Ok((net.to_string(), name.to_string(), node.to_string()))
    }

    /// Forgets everything (before a full read).
    pub(crate) fn clear(&mut self) {
        self.map.clear();
    }

    /// A key was created or changed; `Err` (the reason, to log) for a malformed one, counted.
    pub(crate) fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), String> {
        let k = match self.parse_key(key) {
            Ok(k) => k,
            Err(e) => {
                self.malformed += 1;
                return Err(e);
            }
        };
        let ip = std::str::from_utf8(value)
            .ok()
            .and_then(|v| v.trim().parse::<Ipv4Addr>().ok())
            .filter(|ip| !ip.is_unspecified() && !ip.is_broadcast() && !ip.is_multicast());
        match ip {
            Some(ip) => {
                self.map.insert(k, ip);
                Ok(())
            }
            None => {
                self.malformed += 1;
                self.map.remove(&k);
                Err(format!(
                    "endpoint {}/{}/{}: not an IPv4 address",
                    k.0, k.1, k.2
                ))
            }
        }
    }

    /// A key was deleted (or its lease expired).
    pub(crate) fn delete(&mut self, key: &[u8]) {
        if let Ok(k) = self.parse_key(key) {
            self.map.remove(&k);
        }
    }

    /// Keys and values ignored so far.
    pub(crate) fn malformed(&self) -> u64 {
        self.malformed
    }

    /// The names other nodes published on the networks in `nets`.
    pub(crate) fn remote(&self, nets: &BTreeSet<String>) -> BTreeSet<Name> {
        self.map
            .iter()
            .filter(|((net, _, node), _)| *node != self.me && nets.contains(net))
            .map(|((net, name, _), ip)| (net.clone(), name.clone(), *ip))
            .collect()
    }

    /// Every node's published `name` on `net`: `(node, address)`, by node name.
    pub(crate) fn owners(&self, net: &str, name: &str) -> Vec<(String, Ipv4Addr)> {
        self.map
            .iter()
            .filter(|((n, m, _), _)| n == net && m == name)
            .map(|((_, _, node), ip)| (node.clone(), *ip))
            .collect()
    }
}

impl super::KeyTable for Endpoints {
    fn prefix(&self) -> &str {
        Endpoints::prefix(self)
    }
    fn clear(&mut self) {
        Endpoints::clear(self)
    }
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), String> {
        Endpoints::put(self, key, value)
    }
    fn delete(&mut self, key: &[u8]) {
        Endpoints::delete(self, key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_names_and_malformed_keys() {
        let mut e = Endpoints::new("/u", "a");
        assert_eq!(e.key("web", "db"), "/u/endpoints/web/db/a");
        e.put(b"/u/endpoints/web/db/a", b"10.0.0.2").expect("own");
        e.put(b"/u/endpoints/web/api/b", b"10.0.0.3").expect("b");
        e.put(b"/u/endpoints/other/x/b", b"10.0.0.4")
            .expect("other net");
        for (k, v) in [
            (&b"/u/endpoints/web/api"[..], &b"10.0.0.9"[..]),
            (b"/u/endpoints/web/Bad_Name/b", b"10.0.0.9"),
            (b"/u/endpoints/web/x/b/c", b"10.0.0.9"),
            (b"/u/endpoints/web/y/b", b"not an ip"),
            (b"/u/endpoints/web/y/b", b"224.0.0.1"),
            (b"/u/endpoints/\xff/y/b", b"10.0.0.9"),
        ] {
            assert!(e.put(k, v).is_err());
        }
        assert_eq!(e.malformed(), 6);
        let nets = BTreeSet::from(["web".to_string()]);
        let want = BTreeSet::from([(
            "web".to_string(),
            "api".to_string(),
            Ipv4Addr::new(10, 0, 0, 3),
        )]);
        assert_eq!(e.remote(&nets), want);
        // Turning bad forgets it; deleting too.
        e.put(b"/u/endpoints/web/api/b", b"x").expect_err("bad");
        assert!(e.remote(&nets).is_empty());
        e.put(b"/u/endpoints/web/api/b", b"10.0.0.3")
            .expect("again");
        e.delete(b"/u/endpoints/web/api/b");
        assert!(e.remote(&nets).is_empty());
    }
}
