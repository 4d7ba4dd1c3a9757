//! Cluster mode on etcd (issue 15): one network across many hosts. Each node registers itself
//! (VTEP, cluster networks) under an etcd lease; every node keeps the VXLAN remotes of each
//! cluster network equal to the live nodes that have it; DHCP addresses of cluster networks are
//! claimed in etcd, so no two nodes hand out the same one.
//!
//! # Theory of operation
//!
//! - **Config** ([`ClusterSpec`], `[cluster]`; `[[network]] scope = "cluster"` with a `vni`).
//!   A cluster network is an ordinary network with its gateway, plus a VXLAN port `vx.NAME`
//!   (local = this node's `vtep`, the network's `vni`) that usernet creates itself and whose
//!   remotes the cluster thread manages.
//! - **The cluster thread** (`usernet-cluster`, feature `cluster`, `agent.rs`) runs the etcd
//!   client on a tokio current-thread runtime of its own. The datapath loops never wait on it:
//!   it changes remotes through [`crate::link::vxlan::VxlanShared`] (a mutex the link takes
//!   per batch) and hands claimed addresses to the DHCP server under the server's mutex.
//! - **Keys** (`members.rs`): `PREFIX/nodes/NODE` = `{"vtep": IP, "networks": {NAME: VNI}}`
//!   bound to the node's lease (TTL `ttl_s`, kept alive every third of it); a node that dies
//!   leaves when its lease expires. `PREFIX/ipam/NET/IP` = the claiming node's name, bound to
//!   its lease too (`ipam.rs`). Anything else under the prefix, and any key or value that does
//!   not parse or validate, is ignored, logged and counted (`malformed`), never a remote.
//! - **Failure**: etcd unreachable, the datapath keeps forwarding with the last remotes known,
//!   the DHCP servers give up their spare claims (existing leases keep renewing; no new address
//!   is handed out), and the thread reconnects, re-registers and re-claims the addresses in use.

mod endpoints;
mod macs;
mod members;
pub(crate) mod services;
use endpoints::Endpoints;
use macs::Macs;
use members::Members;
pub use services::{DEFAULT_MESH_PORT, ServiceInfo};

#[cfg(feature = "cluster")]
mod agent;
#[cfg(feature = "cluster")]
mod fdbsync;
#[cfg(feature = "cluster")]
mod ipam;
#[cfg(feature = "cluster")]
mod mesh;
#[cfg(feature = "cluster")]
mod mesh_io;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::Handle;
use crate::error::{Error, Result};

fn default_prefix() -> String {
    "/usernet".into()
}

fn default_ttl() -> u32 {
    10
}

fn default_mesh_port() -> u16 {
    DEFAULT_MESH_PORT
}

/// Largest VNI (24 bits).
const MAX_VNI: u32 = 0xff_ffff;

/// `[cluster]`: this node's place in a cluster kept in etcd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ClusterSpec {
    /// etcd endpoints, `http://HOST:PORT` or `https://HOST:PORT`.
    pub etcd: Vec<String>,
    /// This node's unique name (`[A-Za-z0-9_.-]`, 1-64 characters).
    pub node: String,
    /// This node's underlay address: the VXLAN ports of cluster networks bind it, and the other
    /// nodes send to it.
    pub vtep: String,
    /// Key prefix in etcd (default `/usernet`).
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Lease TTL in seconds (default 10): a node that dies leaves after it.
    #[serde(default = "default_ttl")]
    pub ttl_s: u32,
    /// CA certificate (PEM) to verify etcd's TLS certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<std::path::PathBuf>,
    /// Client certificate (PEM), with `key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<std::path::PathBuf>,
    /// Client key (PEM), with `cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<std::path::PathBuf>,
    /// TCP port of the service mesh on `vtep` (default 7950): other nodes reach this node's
    /// endpoints of `[[service]]`s through it.
    #[serde(default = "default_mesh_port")]
    pub mesh_port: u16,
}

impl ClusterSpec {
    /// A spec with the defaults.
    pub fn new(etcd: Vec<String>, node: &str, vtep: &str) -> Self {
        ClusterSpec {
            etcd,
            node: node.into(),
            vtep: vtep.into(),
            prefix: default_prefix(),
            ttl_s: default_ttl(),
            ca: None,
            cert: None,
            key: None,
            mesh_port: DEFAULT_MESH_PORT,
        }
    }

    /// Checks every key; errors name it under `prefix` (`cluster.vtep`). Returns the VTEP.
    pub fn check(&self, prefix: &str) -> Result<IpAddr> {
        let key = |k: &str| format!("{prefix}.{k}");
        if self.etcd.is_empty() {
            return Err(Error::invalid(key("etcd"), "at least one endpoint"));
        }
        for (i, e) in self.etcd.iter().enumerate() {
            check_endpoint(e).map_err(|why| {
                Error::invalid(format!("{prefix}.etcd[{i}]"), format!("{e:?}: {why}"))
            })?;
        }
        crate::bridge::validate_name(&self.node).map_err(|_| {
            Error::invalid(
                key("node"),
                format!("{:?}: use [A-Za-z0-9_.-], 1-64 characters", self.node),
            )
        })?;
        let vtep: IpAddr = self.vtep.parse().map_err(|_| {
            Error::invalid(key("vtep"), format!("{:?} is not an IP address", self.vtep))
        })?;
        if !members::usable_vtep(vtep) {
            return Err(Error::invalid(
                key("vtep"),
                format!("{vtep} cannot be a VTEP (unspecified, multicast or broadcast)"),
            ));
        }
        let p = &self.prefix;
        let ok = p.starts_with('/')
            && p.len() > 1
            && !p.ends_with('/')
            && !p.contains("//")
            && p.bytes().all(|b| b.is_ascii_graphic());
        if !ok {
            return Err(Error::invalid(
                key("prefix"),
                format!("{p:?}: an absolute key path like \"/usernet\" (no trailing slash)"),
            ));
        }
        if !(2..=3600).contains(&self.ttl_s) {
            return Err(Error::invalid(
                key("ttl_s"),
                format!("{} is outside 2..=3600", self.ttl_s),
            ));
        }
        if self.mesh_port == 0 {
            return Err(Error::invalid(key("mesh_port"), "port 0 is not allowed"));
        }
        if self.cert.is_some() != self.key.is_some() {
            return Err(Error::invalid(
                key(if self.cert.is_some() { "key" } else { "cert" }),
                "`cert` and `key` go together",
            ));
        }
        let tls = self.ca.is_some() || self.cert.is_some();
        if tls && let Some(i) = self.etcd.iter().position(|e| e.starts_with("http://")) {
            return Err(Error::invalid(
                format!("{prefix}.etcd[{i}]"),
                "TLS options (ca, cert, key) need https:// endpoints",
            ));
        }
        Ok(vtep)
    }
}

fn check_endpoint(e: &str) -> std::result::Result<(), &'static str> {
    let rest = e
        .strip_prefix("http://")
        .or_else(|| e.strip_prefix("https://"))
        .ok_or("not http://HOST:PORT or https://HOST:PORT")?;
    let (host, port) = rest.rsplit_once(':').ok_or("no :PORT")?;
    if host.is_empty() || host.contains('/') {
        return Err("no host");
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err("the port is not 1-65535"),
    }
}

/// Where a network lives: this node only (`local`, the default) or every node of the cluster
/// that declares it (`cluster`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Scope {
    /// This node only.
    #[default]
    Local,
    /// Shared by the nodes of the cluster that declare it (`[cluster]`, `vni`).
    Cluster,
}

/// Checks a cluster network's VNI; errors name `field`.
pub fn check_vni(vni: Option<u32>, field: &str) -> Result<u32> {
    match vni {
        None => Err(Error::invalid(field, "a cluster network needs a `vni`")),
        Some(v) if v > MAX_VNI => Err(Error::invalid(
            field,
            format!("{v} is outside 0..=16777215"),
        )),
        Some(v) => Ok(v),
    }
}

/// The VXLAN port usernet creates for cluster network `network`.
pub fn port_name(network: &str) -> String {
    format!("vx.{network}")
}

/// A cluster network of this node, as the cluster thread needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNet {
    /// Network name.
    pub name: String,
    /// Its VNI.
    pub vni: u32,
}

/// Connection state of the cluster thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ClusterState {
    /// Connecting (or reconnecting) to etcd.
    Connecting,
    /// Registered, watching, keeping the lease alive.
    Connected,
    /// etcd unreachable: the last state known is kept, no new address is handed out.
    Disconnected,
    /// The thread has stopped (the node shuts down).
    Stopped,
}

/// A node of the cluster, as `ctl cluster` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ClusterNode {
    /// Its name.
    pub name: String,
    /// Its VTEP.
    pub vtep: IpAddr,
    /// Its cluster networks and their VNIs.
    pub networks: BTreeMap<String, u32>,
    /// True for this node.
    pub local: bool,
}

/// A cluster network of this node, as `ctl cluster` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ClusterNetInfo {
    /// Network name.
    pub name: String,
    /// VNI.
    pub vni: u32,
    /// Its VXLAN port.
    pub port: String,
    /// The remote VTEPs set on it.
    pub remotes: Vec<IpAddr>,
    /// DHCP addresses this node holds claims on (in use and spare).
    pub claimed: usize,
    /// Of those, not in use.
    pub spare: usize,
}

/// What `ctl cluster` shows (API op `cluster`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ClusterInfo {
    /// This node's name.
    pub node: String,
    /// Its VTEP.
    pub vtep: IpAddr,
    /// The key prefix.
    pub prefix: String,
    /// Connection state.
    pub state: ClusterState,
    /// The last etcd revision seen (0: none yet).
    pub revision: i64,
    /// The lease this node's keys are bound to (0: none).
    pub lease: i64,
    /// The live nodes (this one included once registered).
    pub nodes: Vec<ClusterNode>,
    /// This node's cluster networks.
    pub networks: Vec<ClusterNetInfo>,
    /// Keys or values under the prefix that were ignored (malformed or invalid).
    pub malformed: u64,
    /// Addresses this node used that etcd said were another node's (after a partition).
    pub conflicts: u64,
    /// The last error talking to etcd, if any.
    pub last_error: Option<String>,
    /// etcd requests this node has made since it started (calls and keep-alives; watch
    /// events are not requests). Updated every 200 ms.
    #[serde(default)]
    pub requests: u64,
    /// This node's `[[service]]`s and their endpoints across the nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceInfo>,
}

/// Waits up to `max` for the cluster thread to leave after a shutdown: it revokes the node's
/// lease, so the other nodes drop this one at once rather than after the TTL.
pub(crate) fn wait_left(h: &Handle, max: std::time::Duration) {
    let Some(sh) = h.node().cluster.lock().clone() else {
        return;
    };
    let until = std::time::Instant::now() + max;
    while sh.status.lock().state != ClusterState::Stopped && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A table filled from the keys under one prefix (the members, the endpoints): what a
/// watch applies its events to.
#[cfg_attr(not(feature = "cluster"), allow(dead_code))]
pub(crate) trait KeyTable {
    /// The key prefix it reads.
    fn prefix(&self) -> &str;
    /// Forgets everything (before a full read).
    fn clear(&mut self);
    /// A key was created or changed; `Err` (the reason, to log) if it was ignored.
    fn put(&mut self, key: &[u8], value: &[u8]) -> std::result::Result<(), String>;
    /// A key was deleted.
    fn delete(&mut self, key: &[u8]);
}

/// The cluster thread's state shared with the control plane.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) spec: ClusterSpec,
    pub(crate) vtep: IpAddr,
    pub(crate) nets: Vec<ClusterNet>,
    pub(crate) status: Mutex<Status>,
    /// Asks the cluster thread to claim an address and waits (bounded) for the answer; set
    /// when the thread starts.
    pub(crate) claim: Mutex<Option<ClaimFn>>,
    /// The services' counters, set by the mesh thread.
    pub(crate) services: Mutex<Vec<services::ServiceView>>,
}

/// The claim call: network, address -> claimed, or why not.
type ClaimCall = dyn Fn(&str, std::net::Ipv4Addr) -> std::result::Result<(), String> + Send + Sync;

/// See [`Shared::claim`].
#[cfg_attr(not(feature = "cluster"), allow(dead_code))]
pub(crate) struct ClaimFn(pub(crate) Box<ClaimCall>);

impl std::fmt::Debug for ClaimFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClaimFn")
    }
}

/// The mutable part of [`Shared`].
#[derive(Debug)]
pub(crate) struct Status {
    pub(crate) state: ClusterState,
    pub(crate) revision: i64,
    pub(crate) lease: i64,
    pub(crate) members: Members,
    pub(crate) endpoints: Endpoints,
    /// `PREFIX/macs/`: the endpoints by MAC (FDB entries, ARP/NS proxy).
    pub(crate) macs: Macs,
    pub(crate) conflicts: u64,
    pub(crate) last_error: Option<String>,
    /// etcd requests made so far (the cluster thread's count).
    pub(crate) requests: u64,
}

impl Handle {
    /// The cluster view of this node (`ctl cluster`): its nodes, their VTEPs and networks, the
    /// connection state and the last etcd revision seen. An error when the node is not in a
    /// cluster.
    pub fn cluster(&self) -> Result<ClusterInfo> {
        let Some(sh) = self.node().cluster.lock().clone() else {
            return Err(Error::invalid(
                "cluster",
                "this node is not in a cluster (no [cluster] in its config)",
            ));
        };
        let st = sh.status.lock();
        let nodes = st
            .members
            .nodes()
            .map(|(name, r)| ClusterNode {
                name: name.clone(),
                vtep: r.vtep,
                networks: r.networks.clone(),
                local: *name == sh.spec.node,
            })
            .collect();
        let malformed = st.members.malformed() + st.endpoints.malformed() + st.macs.malformed();
        let info = ClusterInfo {
            node: sh.spec.node.clone(),
            vtep: sh.vtep,
            prefix: sh.spec.prefix.clone(),
            state: st.state,
            revision: st.revision,
            lease: st.lease,
            nodes,
            networks: Vec::new(),
            malformed,
            conflicts: st.conflicts,
            last_error: st.last_error.clone(),
            requests: st.requests,
            services: Vec::new(),
        };
        drop(st);
        let services = sh.services.lock().iter().map(|v| v.info()).collect();
        let mut info = info;
        info.services = services;
        for n in &sh.nets {
            let port = port_name(&n.name);
            let remotes = self
                .vxlan_remotes(&port)
                .map(|r| r.into_iter().map(|x| x.remote).collect())
                .unwrap_or_default();
            let (claimed, spare) = self
                .gateway(&n.name)
                .and_then(|g| {
                    let now = g.now_ms();
                    g.dhcp.as_ref().map(|d| {
                        let mut s = d.lock();
                        let c = s.claims().map_or(0, |c| c.len());
                        (c, s.spare_claims(now))
                    })
                })
                .unwrap_or((0, 0));
            info.networks.push(ClusterNetInfo {
                name: n.name.clone(),
                vni: n.vni,
                port,
                remotes,
                claimed,
                spare,
            });
        }
        Ok(info)
    }

    /// Claims `ip` in etcd for a port's fixed address on `network` when that is a cluster
    /// network (waiting, bounded, for the cluster thread); Ok at once for other networks. The
    /// error says why not (another node holds it, etcd unreachable).
    pub(crate) fn claim_fixed(
        &self,
        network: &str,
        ip: std::net::Ipv4Addr,
    ) -> std::result::Result<(), String> {
        let Some(sh) = self.node().cluster.lock().clone() else {
            return Ok(());
        };
        if !sh.nets.iter().any(|n| n.name == network) {
            return Ok(());
        }
        match sh.claim.lock().as_ref() {
            Some(f) => (f.0)(network, ip),
            None => Err("the cluster thread is not running".into()),
        }
    }

    /// Waits up to `max` for cluster network `network`'s DHCP server to hold a spare claimed
    /// address; true if it does (or the network has no DHCP server).
    pub fn wait_cluster_claims(&self, network: &str, max: std::time::Duration) -> bool {
        let Some(g) = self.gateway(network) else {
            return true;
        };
        let Some(d) = &g.dhcp else {
            return true;
        };
        let until = std::time::Instant::now() + max;
        loop {
            if d.lock().spare_claims(g.now_ms()) > 0 {
                return true;
            }
            if std::time::Instant::now() >= until || self.is_stopped() {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Makes network `network` a cluster network: its DHCP server hands out only addresses
    /// claimed in etcd (none until the cluster thread claims some). Call before its guests.
    pub fn restrict_dhcp_to_claims(&self, network: &str) {
        if let Some(d) = self.gateway(network).as_ref().and_then(|g| g.dhcp.as_ref()) {
            d.lock().restrict_to_claims();
        }
    }

    /// Gives the services' virtual IPs (`[[service]] vip`, `name`) to their networks'
    /// gateways: answered by the gateway (ARP, ping), owned by its port (no guest may use
    /// one as a source, no DHCP lease binds one, the cluster never claims one for DHCP),
    /// named in DNS (a name no endpoint can take). Their ports open when the services start.
    /// Call before [`Handle::start_cluster`] ([`Handle::start_services`] calls it too, but the
    /// cluster thread may have claimed a vip for DHCP by then); errors name `service[i].vip`
    /// or `.name`.
    pub fn reserve_service_ips(&self, services: &[services::Service]) -> Result<()> {
        for (i, s) in services.iter().enumerate() {
            let Some(vip) = s.vip else { continue };
            let key = |k: &str| format!("service[{i}].{k}");
            let g = self
                .gateway(&s.network)
                .ok_or_else(|| Error::invalid(key("vip"), "the network has no gateway"))?;
            let c = &g.cfg;
            let mut gw_ips = vec![c.addr];
            gw_ips.extend(c.dns_addr);
            services::check_vip(vip, i, &s.network, c.subnet, &gw_ips)?;
            let topo = self.dp.bridge().topology();
            let port = *g.port.lock();
            if let (Some(ne), Some(p)) = (topo.network_by_name(&s.network), port) {
                ne.net
                    .guard
                    .claim_ip(
                        p,
                        std::net::IpAddr::V4(vip),
                        crate::bridge::security::Claim::Config,
                    )
                    .map_err(|e| Error::invalid(key("vip"), e.to_string()))?;
            }
            g.vips.add_ip(vip);
            if let Some(n) = &s.name {
                g.records
                    .reserve(n, std::net::IpAddr::V4(vip))
                    .map_err(|e| Error::invalid(key("name"), e.to_string()))?;
            }
        }
        Ok(())
    }

    /// Joins the cluster `spec` describes with the cluster networks `nets` (their networks and
    /// VXLAN ports made already): starts the cluster thread. Needs the feature `cluster`.
    pub fn start_cluster(&self, spec: &ClusterSpec, nets: Vec<ClusterNet>) -> Result<()> {
        let vtep = spec.check("cluster")?;
        if self.node().cluster.lock().is_some() {
            return Err(Error::invalid(
                "cluster",
                "this node is in a cluster already",
            ));
        }
        let shared = Arc::new(Shared {
            spec: spec.clone(),
            vtep,
            nets,
            status: Mutex::new(Status {
                state: ClusterState::Connecting,
                revision: 0,
                lease: 0,
                members: Members::new(&spec.prefix, &spec.node),
                endpoints: Endpoints::new(&spec.prefix, &spec.node),
                macs: Macs::new(&spec.prefix, &spec.node),
                conflicts: 0,
                last_error: None,
                requests: 0,
            }),
            claim: Mutex::new(None),
            services: Mutex::new(Vec::new()),
        });
        self.spawn_cluster(shared.clone())?;
        *self.node().cluster.lock() = Some(shared);
        Ok(())
    }

    /// Starts the cluster's services (`[[service]]`, see `services.rs`): binds their published
    /// ports and the mesh listener (errors name `service[i].publish`, `cluster.mesh_port`) and
    /// starts the mesh thread. Call after [`Handle::start_cluster`]; nothing to do without
    /// services.
    pub fn start_services(&self, services: &[services::Service]) -> Result<()> {
        if services.is_empty() {
            return Ok(());
        }
        let Some(sh) = self.node().cluster.lock().clone() else {
            return Err(Error::invalid(
                "service",
                "services need a [cluster] section",
            ));
        };
        let nets: Vec<&str> = sh.nets.iter().map(|n| n.name.as_str()).collect();
        services::check_services(services, &nets)?;
        // Done already when the config was applied (before the cluster thread could claim a
        // vip for DHCP); again here for callers that did not: it is idempotent.
        self.reserve_service_ips(services)?;
        self.spawn_mesh(sh.clone(), services.to_vec())
    }

    #[cfg(not(feature = "cluster"))]
    fn spawn_mesh(&self, _shared: Arc<Shared>, _services: Vec<services::Service>) -> Result<()> {
        Err(Error::invalid(
            "service",
            "this usernet was built without the `cluster` feature (cargo build --features cluster)",
        ))
    }

    #[cfg(feature = "cluster")]
    fn spawn_mesh(&self, shared: Arc<Shared>, services: Vec<services::Service>) -> Result<()> {
        mesh::spawn(self.clone(), shared, services)
    }

    #[cfg(not(feature = "cluster"))]
    fn spawn_cluster(&self, _shared: Arc<Shared>) -> Result<()> {
        Err(Error::invalid(
            "cluster",
            "this usernet was built without the `cluster` feature (cargo build --features cluster)",
        ))
    }

    #[cfg(feature = "cluster")]
    fn spawn_cluster(&self, shared: Arc<Shared>) -> Result<()> {
        agent::spawn(self.clone(), shared)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::api::handle_line;
    use crate::engine::EngineConfig;

    #[test]
    fn outside_a_cluster_the_op_says_so_and_a_bad_spec_names_the_key() {
        let engine = crate::Engine::start(EngineConfig::default()).expect("engine");
        let h = engine.handle();
        let r = handle_line(&h, r#"{"op":"cluster"}"#);
        assert_eq!(r["ok"], false, "{r}");
        assert!(
            r["error"]
                .as_str()
                .is_some_and(|e| e.contains("not in a cluster")),
            "{r}"
        );
        let mut spec = ClusterSpec::new(vec!["http://127.0.0.1:9".into()], "n", "192.0.2.1");
        spec.ttl_s = 0;
        let e = h.start_cluster(&spec, Vec::new()).expect_err("bad ttl");
        assert!(e.to_string().contains("cluster.ttl_s"), "{e}");
        assert!(h.cluster().is_err(), "nothing started");
        engine.shutdown();
    }

    #[test]
    fn vni_and_endpoints_are_checked() {
        assert_eq!(check_vni(Some(70), "v").ok(), Some(70));
        assert!(check_vni(None, "v").is_err());
        assert!(check_vni(Some(MAX_VNI + 1), "v").is_err());
        for bad in [
            "127.0.0.1:2379",
            "http://",
            "http://h",
            "http://h:0",
            "http://h:x",
            "ftp://h:1",
        ] {
            assert!(check_endpoint(bad).is_err(), "{bad}");
        }
        for good in [
            "http://127.0.0.1:2379",
            "https://etcd.example:2379",
            "http://[::1]:2379",
        ] {
            assert!(check_endpoint(good).is_ok(), "{good}");
        }
        assert_eq!(port_name("web"), "vx.web");
    }
}
