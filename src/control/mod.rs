//! Control: the [`Handle`] embedders use, and the JSON API the CLI speaks over a UNIX socket.
//!
//! Every operation of the daemon is a method of [`Handle`]; the socket server ([`server`])
//! only decodes a JSON [`api::Request`], calls the same method, and encodes the answer. So the
//! CLI, runtimes that speak JSON and Rust embedders get exactly the same behaviour and errors.

//!
//! Rooms: [`ports`] (a [`PortSpec`] becomes a link), `address.rs` (addresses usernet configures),
//! [`networks`] (one [`networks::NetworkSpec`], networks with their gateways), [`forwards`]
//! (`-p`), [`views`] (what `ctl` lists), [`metrics`] (the same counters for Prometheus),
//! [`capture`] (live packet capture), [`node`] (the control plane's own state and the public
//! [`Engine`](node::Engine)), [`api`] and [`server`] (the JSON socket), [`rootless`] (attach
//! by passing a TAP descriptor).

use std::sync::Arc;

use crate::bridge::{Bridge, FdbConfig};
use crate::engine::Datapath;
use crate::error::{Error, Result};
use node::Node;

pub(crate) mod address;
pub mod api;
pub mod capture;
pub mod cluster;
pub mod events;
pub mod forwards;
pub mod metrics;
pub mod networks;
pub mod node;
pub mod policy;
pub mod ports;
pub mod rootless;
pub mod server;
pub mod views;
pub mod vxlan;

pub use address::{AddrSpec, Attached};
pub use events::{Event, Stamped, Subscription};
pub use ports::{Backend, DgramAddrs, DgramSpec, PortSpec, check_ifname};
pub use views::{DnsRow, FdbRow, LeaseRow, NetworkInfo, OwnerRow, PortInfo, PortStatsRow};

/// Control handle for a running [`node::Engine`]. Cheap to clone; every method may be
/// called from any thread.
#[derive(Clone)]
pub struct Handle {
    dp: Datapath,
    node: Arc<Node>,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle").finish_non_exhaustive()
    }
}

pub use crate::engine::{LOOP_SPILL, pick_loop};

impl Handle {
    pub(crate) fn new(dp: Datapath, node: Arc<Node>) -> Self {
        Handle { dp, node }
    }

    pub(crate) fn node(&self) -> &Node {
        &self.node
    }

    /// The datapath under this handle (the bridge and the loops), for embedders that add their
    /// own links or read counters without copying.
    pub fn datapath(&self) -> &Datapath {
        &self.dp
    }

    /// The switching core, for embedders that want direct access (e.g. to add static MACs in
    /// bulk or read counters without copying).
    pub fn bridge(&self) -> &Bridge {
        self.dp.bridge()
    }

    pub(super) fn check_running(&self) -> Result<()> {
        if self.is_stopped() {
            Err(Error::Stopped)
        } else {
            Ok(())
        }
    }

    /// Adds a network with the given FDB settings.
    pub fn add_network(&self, name: &str, fdb: FdbConfig) -> Result<()> {
        self.check_running()?;
        self.dp.bridge().add_network(name, fdb)?;
        tracing::info!(network = name, "network added");
        Ok(())
    }

    /// Turns port security on or off by default for a network's ports (those whose own
    /// `port_security` is unset). A gateway sets its network's default when it starts.
    pub fn set_port_security(&self, network: &str, on: bool) -> Result<()> {
        let topo = self.dp.bridge().topology();
        let ne = topo
            .network_by_name(network)
            .ok_or_else(|| crate::bridge::BridgeError::NoSuchNetwork(network.to_string()))?;
        ne.net.guard.set_enabled(on);
        Ok(())
    }

    /// Removes a network and closes all its ports (its gateway stops with its port).
    pub fn remove_network(&self, name: &str) -> Result<()> {
        let ports = self.dp.bridge().remove_network(name)?;
        self.node.gateways.lock().remove(name);
        for p in ports {
            self.node.port_netns.lock().remove(&p.name);
            self.node.vxlan.lock().remove(&p.name);
            self.detach_link(p.owner, p.id)?;
        }
        Ok(())
    }

    /// Asks the engine to stop: loops exit and close their links.
    pub fn shutdown(&self) {
        self.dp.stop();
    }

    /// True once [`Self::shutdown`] was called.
    pub fn is_stopped(&self) -> bool {
        self.dp.is_stopped()
    }
}
