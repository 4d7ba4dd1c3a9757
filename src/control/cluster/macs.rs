//! Endpoints by MAC across nodes (the ARP/NS proxy and the pre-installed FDB entries): each
//! node publishes every port of its cluster networks, one key per MAC,
//! `PREFIX/macs/NET/MAC/NODE` = `{"node": NODE, "ips": [IP, ..], "name": NAME}` (name optional)
//! bound to its lease. Every other node installs that MAC behind the VTEP of the node the key
//! names (a static FDB entry on the network's VXLAN port, a pinned VTEP entry) and answers ARP
//! and NS for its addresses with it.
//!
//! Pure: parsing and validation ([`Macs`]), and what a node installs ([`Macs::remote`]). The
//! VTEP is never taken from the endpoint's value: it comes from the named node's record, which
//! must be live and have the network. A key or value that does not parse is refused with the
//! reason and counted, and the endpoint it named (if known) forgotten. A MAC published by two
//! nodes is installed by nobody (a conflict, counted when computed): which one is right is not
//! known, and a wrong VTEP would take the other's traffic.

#![cfg_attr(not(feature = "cluster"), allow(dead_code))]

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::members::Members;
use crate::wire::Mac;

/// Longest value read.
const MAX_VALUE: usize = 4096;
/// Most addresses one endpoint publishes.
pub(crate) const MAX_IPS: usize = 32;
/// Most endpoints kept (all nodes, all networks): keys past it are refused and counted.
pub(crate) const MAX_ENDPOINTS: usize = 65_536;

/// The value of `PREFIX/macs/NET/MAC/NODE`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MacRecord {
    /// The node that published it (the key's last part).
    pub(crate) node: String,
    /// Its addresses (IPv4 and IPv6).
    pub(crate) ips: BTreeSet<IpAddr>,
    /// Its name, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) name: Option<String>,
}

impl MacRecord {
    /// The JSON stored in etcd.
    pub(crate) fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses and validates a stored value.
    pub(crate) fn parse(value: &[u8]) -> Result<MacRecord, String> {
        if value.len() > MAX_VALUE {
            return Err(format!("value of {} bytes is too long", value.len()));
        }
        let r: MacRecord =
            serde_json::from_slice(value).map_err(|e| format!("not an endpoint record: {e}"))?;
        if r.ips.len() > MAX_IPS {
            return Err(format!("{} addresses (at most {MAX_IPS})", r.ips.len()));
        }
        if let Some(ip) = r.ips.iter().find(|ip| !usable_ip(**ip)) {
            return Err(format!("{ip} is not a unicast address"));
        }
        if let Some(n) = &r.name
            && (n.is_empty() || n.len() > 63 || n.bytes().any(|b| !b.is_ascii_graphic()))
        {
            return Err(format!("name {n:?} is invalid"));
        }
        Ok(r)
    }
}

/// True for an address an endpoint may have: unicast, not unspecified or loopback.
pub(crate) fn usable_ip(ip: IpAddr) -> bool {
    !ip.is_unspecified()
        && !ip.is_multicast()
        && !ip.is_loopback()
        && match ip {
            IpAddr::V4(v) => !v.is_broadcast(),
            IpAddr::V6(_) => true,
        }
}

/// A remote endpoint a node installs: its MAC behind `vtep`, its addresses proxied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Remote {
    /// The node that published it.
    pub(crate) node: String,
    /// That node's VTEP (from its node record).
    pub(crate) vtep: IpAddr,
    /// Its addresses.
    pub(crate) ips: BTreeSet<IpAddr>,
}

/// The endpoints the cluster published, from `PREFIX/macs/` keys.
#[derive(Debug, Clone)]
pub(crate) struct Macs {
    /// `PREFIX/macs/`.
    prefix: String,
    me: String,
    /// (network, MAC, node) -> record.
    map: BTreeMap<(String, Mac, String), MacRecord>,
    malformed: u64,
}

impl Macs {
    /// None yet; `prefix` is the cluster's key prefix, `me` this node's name.
    pub(crate) fn new(prefix: &str, me: &str) -> Self {
        Macs {
            prefix: format!("{prefix}/macs/"),
            me: me.to_string(),
            map: BTreeMap::new(),
            malformed: 0,
        }
    }

    /// `PREFIX/macs/`.
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The key of `mac` on `net` published by this node.
    pub(crate) fn key(&self, net: &str, mac: Mac) -> String {
        format!("{}{net}/{mac}/{}", self.prefix, self.me)
    }

    fn parse_key(&self, key: &[u8]) -> Result<(String, Mac, String), String> {
        let key = std::str::from_utf8(key).map_err(|_| "key is not UTF-8".to_string())?;
        let rest = key
            .strip_prefix(self.prefix.as_str())
            .ok_or_else(|| format!("key {key:?} is not under {}", self.prefix))?;
        let parts: Vec<&str> = rest.split('/').collect();
        let [net, mac, node] = parts.as_slice() else {
            return Err(format!("key {key:?} is not {}NET/MAC/NODE", self.prefix));
        };
        let mac: Mac = mac
            .parse()
            .map_err(|_| format!("key {key:?}: {mac:?} is not a MAC"))?;
        if !mac.is_valid_source() {
            return Err(format!("key {key:?}: {mac} is not a unicast MAC"));
        }
        if crate::bridge::validate_name(net).is_err() || crate::bridge::validate_name(node).is_err()
        {
            return Err(format!("key {key:?}: bad network or node"));
        }
        Ok((net.to_string(), mac, node.to_string()))
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
        let r = MacRecord::parse(value).and_then(|r| {
            if r.node == k.2 {
                Ok(r)
            } else {
                Err(format!("node {:?} in the value is not the key's", r.node))
            }
        });
        match r {
            Ok(_) if self.map.len() >= MAX_ENDPOINTS && !self.map.contains_key(&k) => {
                self.malformed += 1;
                Err(format!("more than {MAX_ENDPOINTS} endpoints"))
            }
            Ok(r) => {
                self.map.insert(k, r);
                Ok(())
            }
            Err(e) => {
                self.malformed += 1;
                let why = format!("endpoint {}/{}/{}: {e}", k.0, k.1, k.2);
                self.map.remove(&k);
                Err(why)
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

    /// What this node installs for the networks `nets` (name -> VNI): the endpoints other
    /// nodes published, each behind the VTEP of the node its key names, when that node is live
    /// and has the network with the same VNI. A MAC this node publishes itself, or that more
    /// than one node publishes, is left out (the second part of the answer counts the
    /// conflicts).
    pub(crate) fn remote(
        &self,
        nets: &BTreeMap<String, u32>,
        members: &Members,
    ) -> (BTreeMap<(String, Mac), Remote>, usize) {
        let nodes: BTreeMap<&String, _> = members.nodes().collect();
        let mut out: BTreeMap<(String, Mac), Remote> = BTreeMap::new();
        let mut own: BTreeSet<(String, Mac)> = BTreeSet::new();
        let mut twice: BTreeSet<(String, Mac)> = BTreeSet::new();
        for ((net, mac, node), r) in &self.map {
            let Some(vni) = nets.get(net) else { continue };
            let key = (net.clone(), *mac);
            if *node == self.me {
                own.insert(key);
                continue;
            }
            let Some(rec) = nodes.get(node).filter(|n| n.networks.get(net) == Some(vni)) else {
                continue;
            };
            let remote = Remote {
                node: node.clone(),
                vtep: rec.vtep,
                ips: r.ips.clone(),
            };
            if out.insert(key.clone(), remote).is_some() {
                twice.insert(key);
            }
        }
        out.retain(|k, _| !own.contains(k) && !twice.contains(k));
        let conflicts = twice.len();
        (out, conflicts)
    }
}

impl super::KeyTable for Macs {
    fn prefix(&self) -> &str {
        Macs::prefix(self)
    }
    fn clear(&mut self) {
        Macs::clear(self)
    }
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), String> {
        Macs::put(self, key, value)
    }
    fn delete(&mut self, key: &[u8]) {
        Macs::delete(self, key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::cluster::members::NodeRecord;

    type Node<'a> = (&'a str, &'a str, &'a [(&'a str, u32)]);

    fn members(nodes: &[Node]) -> Members {
        let mut m = Members::new("/u", "a");
        for (name, vtep, nets) in nodes {
            let r = NodeRecord {
                vtep: vtep.parse().expect("ip"),
                networks: nets.iter().map(|(n, v)| (n.to_string(), *v)).collect(),
            };
            m.put(
                format!("/u/nodes/{name}").as_bytes(),
                r.to_json().as_bytes(),
            )
            .expect("node");
        }
        m
    }

    fn rec(node: &str, ips: &[&str]) -> Vec<u8> {
        MacRecord {
            node: node.into(),
            ips: ips.iter().map(|s| s.parse().expect("ip")).collect(),
            name: Some("x".into()),
        }
        .to_json()
        .into_bytes()
    }

    const M1: &str = "02:00:00:00:00:01";
    const M2: &str = "02:00:00:00:00:02";
    const M3: &str = "02:00:00:00:00:03";

    #[test]
    fn remote_endpoints_take_the_vtep_of_their_live_node_and_bad_input_is_counted() {
        let mut t = Macs::new("/u", "a");
        let m1: Mac = M1.parse().expect("mac");
        assert_eq!(t.key("web", m1), format!("/u/macs/web/{M1}/a"));
        t.put(
            format!("/u/macs/web/{M1}/b").as_bytes(),
            &rec("b", &["10.0.0.3", "fd00::3"]),
        )
        .expect("b");
        // c is not live; d does not have web; e has it with another VNI.
        for n in ["c", "d", "e"] {
            t.put(
                format!("/u/macs/web/{M2}/{n}").as_bytes(),
                &rec(n, &["10.0.0.4"]),
            )
            .expect("put");
        }
        for (k, v) in [
            (format!("/u/macs/web/{M3}"), rec("b", &[])),
            ("/u/macs/web/not-a-mac/b".to_string(), rec("b", &[])),
            ("/u/macs/web/ff:ff:ff:ff:ff:ff/b".to_string(), rec("b", &[])),
            (format!("/u/macs/web/{M3}/b"), rec("c", &[])),
            (
                format!("/u/macs/web/{M3}/b"),
                b"{\"node\":\"b\",\"ips\":[\"224.0.0.1\"]}".to_vec(),
            ),
            (format!("/u/macs/web/{M3}/b"), b"not json".to_vec()),
            (format!("/u/macs/web/{M3}/b/x"), rec("b", &[])),
        ] {
            assert!(t.put(k.as_bytes(), &v).is_err(), "{k}");
        }
        assert!(t.put(b"/u/macs/\xff/x/b", b"{}").is_err());
        assert_eq!(t.malformed(), 8);
        let m = members(&[
            ("a", "192.0.2.1", &[("web", 70)]),
            ("b", "192.0.2.2", &[("web", 70)]),
            ("d", "192.0.2.4", &[("other", 70)]),
            ("e", "192.0.2.5", &[("web", 71)]),
        ]);
        let nets = BTreeMap::from([("web".to_string(), 70)]);
        let (r, conflicts) = t.remote(&nets, &m);
        assert_eq!(conflicts, 0);
        assert_eq!(r.len(), 1, "{r:?}");
        let e = &r[&("web".to_string(), m1)];
        assert_eq!(
            (e.node.as_str(), e.vtep),
            ("b", "192.0.2.2".parse().expect("ip"))
        );
        assert_eq!(e.ips.len(), 2);
        // The node leaving takes its endpoints with it.
        let mut m2 = m.clone();
        m2.delete(b"/u/nodes/b");
        assert!(t.remote(&nets, &m2).0.is_empty());
        // The same MAC from two nodes: neither. From this node too: not installed.
        let m = members(&[
            ("b", "192.0.2.2", &[("web", 70)]),
            ("c", "192.0.2.3", &[("web", 70)]),
        ]);
        t.put(
            format!("/u/macs/web/{M1}/c").as_bytes(),
            &rec("c", &["10.0.0.5"]),
        )
        .expect("c");
        let (r, conflicts) = t.remote(&nets, &m);
        assert!(!r.contains_key(&("web".to_string(), m1)), "{r:?}");
        assert_eq!(conflicts, 1);
        t.delete(format!("/u/macs/web/{M1}/c").as_bytes());
        t.put(
            format!("/u/macs/web/{M1}/a").as_bytes(),
            &rec("a", &["10.0.0.5"]),
        )
        .expect("own");
        let (r, _) = t.remote(&nets, &m);
        assert!(!r.contains_key(&("web".to_string(), m1)), "{r:?}");
        assert_eq!(r.len(), 1, "c's M2 stays");
        // A value turning bad forgets it.
        t.delete(format!("/u/macs/web/{M1}/a").as_bytes());
        assert_eq!(t.remote(&nets, &m).0.len(), 2);
        t.put(format!("/u/macs/web/{M1}/b").as_bytes(), b"{")
            .expect_err("bad");
        assert_eq!(t.remote(&nets, &m).0.len(), 1);
    }
}
