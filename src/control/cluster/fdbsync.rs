//! The cluster thread's side of endpoints by MAC (`macs.rs` has the keys): it publishes every
//! port of this node's cluster networks, and installs the other nodes' endpoints:
//!
//! - a static FDB entry MAC -> the network's VXLAN port (never aged; learning from another
//!   port does not move it),
//! - the MAC pinned behind the publishing node's VTEP in the VXLAN port's table,
//! - the MAC and its addresses owned by the VXLAN port (port security): a local guest that
//!   sends with a remote endpoint's MAC or address is dropped as spoofing, and cannot take it,
//! - its addresses in the gateway's ARP/NS proxy ([`crate::gateway::proxy`]) and in the VXLAN
//!   port's suppressed set (with the gateway's own addresses): such requests are answered here
//!   and never flooded over the underlay.
//!
//! A MAC a local port owns already is not installed (logged once). Everything installed is
//! taken back when the endpoint or its node goes.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;

use etcd_client::{Client, PutOptions};

use super::agent::call;
use super::macs::{MAX_IPS, MacRecord, Remote, usable_ip};
use super::{Shared, port_name};
use crate::bridge::GATEWAY_KIND;
use crate::bridge::security::Claim;
use crate::control::Handle;
use crate::gateway::dhcp::LeaseState;
use crate::wire::Mac;

type Res<T> = std::result::Result<T, String>;

/// Most MACs published for one port (those port security gave it first, then learned ones): a
/// guest without port security that floods source MACs does not fill etcd.
const MAX_MACS_PER_PORT: usize = 16;

/// What this node published and installed.
#[derive(Debug, Default)]
pub(super) struct MacSync {
    /// (network, MAC) -> the JSON put in etcd.
    published: BTreeMap<(String, Mac), String>,
    /// (network, MAC) -> the remote endpoint installed, and the addresses it was given.
    installed: BTreeMap<(String, Mac), (Remote, BTreeSet<IpAddr>)>,
    /// Endpoints not installed because a local port owns the MAC (warned once).
    refused: BTreeSet<(String, Mac)>,
}

/// This node's endpoints on its cluster networks: each MAC of each port (not the gateway's,
/// not the VXLAN port's) with the addresses known for it (DHCP leases; the port's owned
/// addresses when it has a single MAC) and its DHCP name.
fn local(h: &Handle, sh: &Shared) -> BTreeMap<(String, Mac), MacRecord> {
    let mut out = BTreeMap::new();
    let topo = h.dp.bridge().topology();
    let now = h.dp.bridge().now();
    for n in &sh.nets {
        let Some(ne) = topo.network_by_name(&n.name) else {
            continue;
        };
        let vx = port_name(&n.name);
        let mut leases: HashMap<Mac, (Vec<IpAddr>, Option<String>)> = HashMap::new();
        if let Some(g) = h.gateway(&n.name)
            && let Some(d) = &g.dhcp
        {
            for l in d.lock().leases(g.now_ms()) {
                if l.state == LeaseState::Offered {
                    continue;
                }
                let e = leases.entry(l.mac).or_default();
                e.0.push(IpAddr::V4(l.ip));
                if l.hostname.is_some() {
                    e.1 = l.hostname;
                }
            }
        }
        let owned: HashMap<_, _> = ne
            .net
            .guard
            .dump()
            .into_iter()
            .map(|r| (r.port, r))
            .collect();
        let fdb = ne.net.fdb.dump(now);
        for p in &ne.ports {
            if p.kind == GATEWAY_KIND || p.name == vx || !p.carries(ne.net.id) {
                continue;
            }
            let mut macs: Vec<Mac> = Vec::new();
            let mut ips: BTreeSet<IpAddr> = BTreeSet::new();
            if let Some(r) = owned.get(&p.id) {
                macs.extend(r.macs.iter().map(|(m, _)| *m));
                ips.extend(r.ips.iter().map(|(a, _)| *a));
            }
            macs.extend(
                fdb.iter()
                    .filter(|e| e.port == p.id && e.vlan == 0 && !e.is_static)
                    .map(|e| e.mac),
            );
            let mut seen = BTreeSet::new();
            macs.retain(|m| m.is_valid_source() && seen.insert(*m));
            macs.truncate(MAX_MACS_PER_PORT);
            let single = macs.len() == 1;
            for mac in macs {
                let (lease_ips, name) = leases.remove(&mac).unwrap_or_default();
                let mut mine: BTreeSet<IpAddr> = lease_ips.into_iter().collect();
                if single {
                    mine.extend(ips.iter().copied());
                }
                let ips = mine
                    .into_iter()
                    .filter(|a| usable_ip(*a))
                    .take(MAX_IPS)
                    .collect();
                let rec = MacRecord {
                    node: sh.spec.node.clone(),
                    ips,
                    name,
                };
                out.insert((n.name.clone(), mac), rec);
            }
        }
    }
    out
}

impl MacSync {
    /// A new session: everything is put again under its lease.
    pub(super) fn new_session(&mut self) {
        self.published.clear();
    }

    /// Puts this node's endpoints in etcd (under the lease) and deletes those that went.
    pub(super) async fn publish(
        &mut self,
        h: &Handle,
        sh: &Shared,
        c: &mut Client,
        lease: i64,
    ) -> Res<()> {
        let want: BTreeMap<(String, Mac), String> = local(h, sh)
            .into_iter()
            .map(|(k, r)| (k, r.to_json()))
            .collect();
        if want == self.published {
            return Ok(());
        }
        let key = |net: &str, mac: Mac| sh.status.lock().macs.key(net, mac);
        for ((net, mac), v) in &want {
            if self.published.get(&(net.clone(), *mac)) != Some(v) {
                let put = PutOptions::new().with_lease(lease);
                call("publish", c.put(key(net, *mac), v.as_str(), Some(put))).await?;
                self.published.insert((net.clone(), *mac), v.clone());
            }
        }
        let gone: Vec<_> = self
            .published
            .keys()
            .filter(|k| !want.contains_key(*k))
            .cloned()
            .collect();
        for (net, mac) in gone {
            call("unpublish", c.delete(key(&net, mac), None)).await?;
            self.published.remove(&(net, mac));
        }
        Ok(())
    }

    /// Makes what is installed the remote endpoints etcd has (see the module docs).
    pub(super) fn reconcile(&mut self, h: &Handle, sh: &Shared) {
        let nets: BTreeMap<String, u32> = sh.nets.iter().map(|n| (n.name.clone(), n.vni)).collect();
        let want = {
            let st = sh.status.lock();
            let (want, conflicts) = st.macs.remote(&nets, &st.members);
            if conflicts > 0 {
                tracing::debug!(
                    conflicts,
                    "cluster: MACs published by several nodes, not installed"
                );
            }
            want
        };
        let stale: Vec<_> = self
            .installed
            .iter()
            .filter(|(k, (r, _))| want.get(*k) != Some(r))
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            if let Some((_, ips)) = self.installed.remove(&k) {
                uninstall(h, &k.0, k.1, &ips);
            }
        }
        self.refused.retain(|k| want.contains_key(k));
        for (k, r) in want {
            if self.installed.contains_key(&k) {
                continue;
            }
            match install(h, &k.0, k.1, &r) {
                Ok(ips) => {
                    self.refused.remove(&k);
                    self.installed.insert(k, (r, ips));
                }
                Err(why) => {
                    if self.refused.insert(k.clone()) {
                        tracing::warn!(network = %k.0, mac = %k.1, node = %r.node, reason = %why,
                            "cluster: remote endpoint not installed");
                    }
                }
            }
        }
        for n in &sh.nets {
            let mut proxy = HashMap::new();
            for ((net, mac), (_, ips)) in &self.installed {
                if *net == n.name {
                    proxy.extend(ips.iter().map(|ip| (*ip, *mac)));
                }
            }
            let mut suppressed: HashSet<IpAddr> = proxy.keys().copied().collect();
            if let Some(g) = h.gateway(&n.name) {
                let c = &g.cfg;
                suppressed.insert(IpAddr::V4(c.addr));
                suppressed.insert(IpAddr::V6(c.link_local()));
                suppressed.extend(c.dns_addr.map(IpAddr::V4));
                suppressed.extend(c.addr6().map(IpAddr::V6));
                suppressed.extend(c.dns6().map(IpAddr::V6));
                suppressed.extend(g.vips.ips().into_iter().map(IpAddr::V4));
                g.proxy.set(proxy);
            }
            if let Some(v) = h.node().vxlan.lock().get(&port_name(&n.name)) {
                v.set_suppressed(suppressed);
            }
        }
    }
}

/// Installs remote endpoint `r` (`mac` on `net`); returns the addresses it was given (those
/// no local port owns), or why not.
fn install(h: &Handle, net: &str, mac: Mac, r: &Remote) -> Res<BTreeSet<IpAddr>> {
    let topo = h.dp.bridge().topology();
    let ne = topo.network_by_name(net).ok_or("no such network")?;
    let vx_name = port_name(net);
    let vx = topo.port_by_name(&vx_name).ok_or("no VXLAN port")?.id;
    let shared = h
        .node()
        .vxlan
        .lock()
        .get(&vx_name)
        .cloned()
        .ok_or("no VXLAN port")?;
    let guard = &ne.net.guard;
    guard
        .pin_mac(vx, mac)
        .map_err(|e| format!("{e} (a local port uses it)"))?;
    if let Err(e) = shared.pin(mac, r.vtep) {
        guard.unpin_mac(vx, mac);
        return Err(e);
    }
    ne.net.fdb.add_static(0, mac, vx);
    let taken = r
        .ips
        .iter()
        .copied()
        .filter(|ip| guard.claim_ip(vx, *ip, Claim::Config).is_ok())
        .collect();
    tracing::debug!(network = net, %mac, vtep = %r.vtep, "cluster: remote endpoint installed");
    Ok(taken)
}

/// Takes back what [`install`] did.
fn uninstall(h: &Handle, net: &str, mac: Mac, ips: &BTreeSet<IpAddr>) {
    let topo = h.dp.bridge().topology();
    let vx_name = port_name(net);
    let (Some(ne), Some(vx)) = (topo.network_by_name(net), topo.port_by_name(&vx_name)) else {
        return;
    };
    let now = h.dp.bridge().now();
    if ne.net.fdb.lookup(0, mac, now) == Some(vx.id) {
        ne.net.fdb.remove(0, mac);
    }
    if let Some(v) = h.node().vxlan.lock().get(&vx_name) {
        v.unpin(mac);
    }
    ne.net.guard.unpin_mac(vx.id, mac);
    for ip in ips {
        ne.net.guard.release_ip(vx.id, *ip);
    }
    tracing::debug!(network = net, %mac, "cluster: remote endpoint removed");
}
