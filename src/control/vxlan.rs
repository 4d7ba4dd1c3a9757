//! VXLAN ports in the control plane: opening one for a [`PortSpec`] (the network's FDB aging,
//! its gateway's MAC, the gateway's announced MTU lowered to the inner MTU), and the run-time
//! operations on its remotes (`ctl vxlan NAME remotes|add-remote|rm-remote`).

use std::net::IpAddr;
use std::sync::Arc;

use super::{Handle, PortSpec};
use crate::error::{Error, Result};
use crate::link::vxlan::{RemoteInfo, VxlanLink, VxlanShared, VxlanSpec};
use crate::wire::Mac;

impl Handle {
    /// Opens the link of a VXLAN port of `spec.network` (its sockets bound; not added yet).
    pub(super) fn open_vxlan(&self, spec: &PortSpec, v: &VxlanSpec) -> Result<VxlanLink> {
        let aging_ms = self
            .dp
            .bridge()
            .topology()
            .network_by_name(&spec.network)
            .map(|n| n.net.fdb.config().aging_ms)
            .ok_or_else(|| crate::bridge::BridgeError::NoSuchNetwork(spec.network.clone()))?;
        let gw_mac = self
            .node
            .gateways
            .lock()
            .get(&spec.network)
            .map(|g| g.cfg.mac);
        let what = format!("{} (vxlan {} on {}:{})", spec.name, v.vni, v.local, v.port);
        Ok(VxlanLink::open(v, aging_ms, gw_mac, &what)?.0)
    }

    /// Registers a VXLAN port that was added, and makes its network's gateway announce its
    /// inner MTU when that is smaller than the network's.
    pub(super) fn vxlan_added(&self, network: &str, name: &str, v: Arc<VxlanShared>) {
        if let Some(g) = self.node.gateways.lock().get(network) {
            let mtu = u16::try_from(v.mtu()).unwrap_or(u16::MAX);
            if mtu < g.announced_mtu() {
                tracing::info!(
                    network,
                    port = name,
                    mtu,
                    "the gateway announces the VXLAN inner MTU"
                );
                g.lower_announced_mtu(mtu);
            }
        }
        self.node.vxlan.lock().insert(name.to_string(), v);
    }

    fn vxlan_port(&self, port: &str) -> Result<Arc<VxlanShared>> {
        if let Some(v) = self.node.vxlan.lock().get(port) {
            return Ok(v.clone());
        }
        if self.dp.bridge().topology().port_by_name(port).is_some() {
            return Err(Error::invalid(
                "port",
                format!("{port:?} is not a VXLAN port"),
            ));
        }
        Err(crate::bridge::BridgeError::NoSuchPort(port.to_string()).into())
    }

    /// The remote VTEPs of VXLAN port `port`, with their MAC counts and counters.
    pub fn vxlan_remotes(&self, port: &str) -> Result<Vec<RemoteInfo>> {
        Ok(self.vxlan_port(port)?.remotes())
    }

    /// Adds a remote VTEP to VXLAN port `port`.
    pub fn vxlan_add_remote(&self, port: &str, remote: IpAddr) -> Result<()> {
        self.vxlan_port(port)?
            .add_remote(remote)
            .map_err(|e| Error::invalid("remote", format!("{e} (port {port:?})")))
    }

    /// Removes a remote VTEP from VXLAN port `port` and forgets the MACs learned behind it.
    pub fn vxlan_rm_remote(&self, port: &str, remote: IpAddr) -> Result<()> {
        self.vxlan_port(port)?
            .remove_remote(remote)
            .map_err(|e| Error::invalid("remote", format!("{e} of port {port:?}")))
    }

    /// The VTEP behind which `mac` was last seen on VXLAN port `port` (None for other ports).
    pub(super) fn vtep_of(&self, port: &str, mac: Mac) -> Option<IpAddr> {
        self.node
            .vxlan
            .lock()
            .get(port)
            .and_then(|v| v.vtep_of(mac))
    }

    /// The counters of VXLAN port `port` (None for other ports).
    pub(super) fn vxlan_stats(&self, port: &str) -> Option<crate::link::vxlan::VxlanStats> {
        self.node.vxlan.lock().get(port).map(|v| v.stats())
    }
}
