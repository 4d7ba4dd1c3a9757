//! Port forwards (Docker `-p`): host sockets bound here and handed to the network's gateway,
//! and the splice relay for forwards that enter the target's namespace.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::Handle;
use crate::error::{Error, Result};
use crate::gateway::{EndpointInfo, ForwardInfo};
use crate::nat::balance::PoolStats;
use crate::nat::forward::{Forward, Proto};
use crate::nat::forward_rt::{Bound, Listener};

static NEXT_FORWARD: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Handle {
    /// Publishes a guest port on the host (Docker `-p`): binds the host sockets now (a port in
    /// use is an error naming it) and hands them to the network's gateway.
    pub fn add_forward(&self, f: &Forward) -> Result<ForwardInfo> {
        f.check("")
            .map_err(|(field, why)| Error::invalid(field, why))?;
        let g = self.gateways_of(Some(&f.network))?.remove(0);
        if g.cfg.internal {
            return Err(Error::invalid(
                "network",
                format!(
                    "network {:?} is internal: no NAT, no port forwards",
                    f.network
                ),
            ));
        }
        if f.splice && crate::sandbox::is_applied() {
            return Err(Error::invalid(
                "splice",
                crate::sandbox::refused(
                    "a spliced forward (it enters the guest's namespace for every connection)",
                ),
            ));
        }
        let splice = if f.splice {
            Some(crate::nat::forward_rt::SpliceHook {
                netns: self.splice_targets(f)?,
                splicer: self.splicer()?,
            })
        } else {
            None
        };
        let listeners = bind(f)?;
        self.add_forward_bound(f, listeners, splice)
    }

    /// [`Handle::add_forward`] with its host sockets bound already (`f` checked, `splice`
    /// made): hands them to the network's gateway and records the forward.
    pub(crate) fn add_forward_bound(
        &self,
        f: &Forward,
        listeners: Vec<Listener>,
        splice: Option<crate::nat::forward_rt::SpliceHook>,
    ) -> Result<ForwardInfo> {
        let g = self.gateways_of(Some(&f.network))?.remove(0);
        let mut info = ForwardInfo {
            id: NEXT_FORWARD.fetch_add(1, Ordering::Relaxed),
            network: f.network.clone(),
            publish: f.spec.to_string(),
            to: f.to.clone(),
            splice: splice.is_some(),
            balance: f.policy(),
            health: f.health,
            endpoints: Vec::new(),
            refused: 0,
        };
        let mut bound = Bound::new(listeners, f.to.clone());
        bound.balance = info.balance;
        bound.health = f.health;
        bound.splice = splice;
        let stats = bound.stats.clone();
        self.node
            .forward_stats
            .lock()
            .insert(info.id, stats.clone());
        if let Err(e) = g.add_forward(info.clone(), bound) {
            self.node.forward_stats.lock().remove(&info.id);
            return Err(e);
        }
        tracing::info!(network = %f.network, publish = %info.publish, to = %f.to, balance = %info.balance, splice = info.splice, "port forward added");
        self.node.events.noted(super::events::Event::ForwardAdded {
            network: info.network.clone(),
            id: info.id,
            publish: info.publish.clone(),
            to: info.to.clone(),
        });
        fill(&mut info, &stats);
        Ok(info)
    }
    /// The namespaces a spliced forward connects from, one per target: that of the port each
    /// target names, which must be one usernet can enter.
    fn splice_targets(&self, f: &Forward) -> Result<Vec<PathBuf>> {
        if f.spec.proto != Proto::Tcp {
            return Err(Error::invalid(
                "splice",
                "only TCP forwards can be spliced".to_string(),
            ));
        }
        let mut out = Vec::new();
        for to in f.to.iter() {
            let netns = self.node.port_netns.lock().get(to).cloned();
            let Some(netns) = netns else {
                return Err(Error::invalid(
                    "splice",
                    format!(
                        "{to:?} is not a port whose network namespace usernet knows (a netns \
                         port, or the command of `usernet run`); give the port name as `to`"
                    ),
                ));
            };
            crate::link::netns::run_in_netns(&netns, || Ok(())).map_err(|e| {
                Error::invalid(
                    "splice",
                    format!("cannot enter the namespace of {to:?}: {e}"),
                )
            })?;
            out.push(netns);
        }
        Ok(out)
    }
    /// The relay thread for spliced forwards, started on first use.
    pub(crate) fn splicer(&self) -> Result<Arc<crate::nat::splice::Splicer>> {
        let mut s = self.node.splicer.lock();
        if let Some(sp) = s.as_ref() {
            return Ok(sp.clone());
        }
        let sp = Arc::new(
            crate::nat::splice::Splicer::start()
                .map_err(|e| Error::Io("starting the splice relay".into(), e))?,
        );
        *s = Some(sp.clone());
        Ok(sp)
    }
    /// Records the network namespace of port `name` (for spliced forwards to it). Ports with a
    /// `netns` backend are recorded when added; an embedder that hands in a TAP created in a
    /// namespace (as `usernet run` does) says so here.
    pub fn set_port_netns(&self, name: &str, netns: PathBuf) {
        self.node.port_netns.lock().insert(name.to_string(), netns);
    }
    /// Removes a port forward by id or by its `-p` spec (as listed); its host sockets are closed
    /// when this returns.
    pub fn remove_forward(&self, which: &str) -> Result<ForwardInfo> {
        let canonical = which
            .parse::<crate::nat::forward::ForwardSpec>()
            .map(|s| s.to_string())
            .unwrap_or_else(|_| which.to_string());
        for g in self.gateways_of(None)? {
            let found = g
                .forwards
                .lock()
                .iter()
                .find(|f| f.id.to_string() == which || f.publish == canonical)
                .cloned();
            if let Some(info) = found {
                g.remove_forward(info.id)?;
                self.node.forward_stats.lock().remove(&info.id);
                self.node
                    .events
                    .noted(super::events::Event::ForwardRemoved {
                        network: info.network.clone(),
                        id: info.id,
                        publish: info.publish.clone(),
                    });
                return Ok(info);
            }
        }
        Err(Error::invalid(
            "forward",
            format!("no port forward {which:?}"),
        ))
    }
    /// Port forwards of one network, or of all, with each endpoint's state and counters.
    pub fn forwards(&self, network: Option<&str>) -> Result<Vec<ForwardInfo>> {
        let mut all: Vec<ForwardInfo> = self
            .gateways_of(network)?
            .iter()
            .flat_map(|g| g.forwards.lock().clone())
            .collect();
        let stats = self.node.forward_stats.lock();
        for f in &mut all {
            if let Some(s) = stats.get(&f.id) {
                fill(f, s);
            }
        }
        Ok(all)
    }
}

/// Binds the host sockets of `f` (a port in use is an error naming it).
fn bind(f: &Forward) -> Result<Vec<Listener>> {
    let ip = f.spec.bind_ip();
    let mut listeners = Vec::new();
    for (hp, gp) in f.spec.pairs() {
        let at = std::net::SocketAddr::new(ip, hp);
        let what = || format!("host port {at}/{}", f.spec.proto);
        match f.spec.proto {
            Proto::Tcp => {
                let l = std::net::TcpListener::bind(at).map_err(|e| Error::Io(what(), e))?;
                l.set_nonblocking(true).map_err(|e| Error::Io(what(), e))?;
                listeners.push(Listener::Tcp {
                    sock: mio::net::TcpListener::from_std(l),
                    guest_port: gp,
                });
            }
            Proto::Udp => {
                let u = std::net::UdpSocket::bind(at).map_err(|e| Error::Io(what(), e))?;
                u.set_nonblocking(true).map_err(|e| Error::Io(what(), e))?;
                listeners.push(Listener::Udp {
                    sock: mio::net::UdpSocket::from_std(u),
                    guest_port: gp,
                });
            }
        }
    }
    Ok(listeners)
}

/// Fills in `f`'s endpoints and refusals from its counters.
fn fill(f: &mut ForwardInfo, s: &PoolStats) {
    f.endpoints = endpoint_infos(s);
    f.refused = s.refused();
}

/// Each endpoint of a balanced pool, as listed.
pub(crate) fn endpoint_infos(s: &PoolStats) -> Vec<EndpointInfo> {
    s.endpoints
        .iter()
        .map(|e| EndpointInfo {
            to: e.name.clone(),
            state: if e.is_up() { "up" } else { "down" }.to_string(),
            live: e.live(),
            connections: e.connections(),
        })
        .collect()
}
