//! Ports: how the [`PortSpec`] a config file, the API or the CLI describes a port with
//! (`spec.rs`) becomes a link on the datapath (a TAP created here or in a namespace, a TAP handed in, an
//! AF_PACKET socket, a stream listener), with the addresses usernet configures
//! (`control/address.rs`) and the liveness watch for ports whose death no read reports.

use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::node::Watch as EngineWatch;
use super::{Attached, Handle, address, server};
use crate::bridge::{PortId, PortPolicy};
use crate::error::{Error, Result};
use crate::link::packet::{PacketLink, PacketOptions};
use crate::link::tap::{TapLink, TapOptions};
use crate::link::{Link, OpenError};
use crate::wire::Mac;

mod spec;
pub use spec::{
    Backend, DgramAddrs, DgramSpec, PortSpec, check_ifname, check_rate_limit, parse_trunk,
};

type Watch = (String, Box<dyn Fn() -> bool + Send>);

/// A TAP handed over for a rootless attach: it must be the interface the spec names; reads are
/// sized for the MTU the sender will set (the daemon may not be able to read it: the device
/// lives in a namespace it has no rights in).
fn adopt_tap(
    fd: std::os::fd::OwnedFd,
    spec: &PortSpec,
    ifname: &str,
    plan: Option<&address::Plan>,
) -> Result<TapLink> {
    let mut link = TapLink::from_fd(fd)?;
    if link.name() != ifname {
        return Err(Error::invalid(
            "port.ifname",
            format!(
                "{ifname:?}, but the descriptor passed is TAP {:?}",
                link.name()
            ),
        ));
    }
    if let Some(m) = plan.and_then(|p| p.cfg.mtu).or(spec.mtu) {
        link.expect_mtu(m);
    }
    Ok(link)
}
fn unreachable_stream() -> Result<Box<dyn Link>> {
    Err(Error::invalid(
        "stream",
        "stream ports are opened by listen_stream",
    ))
}
impl Handle {
    /// Adds a port on `network` driven by `link`. The link is handed to the event loop chosen
    /// by [`crate::engine::pick_loop`]: the one that serves most of the network's ports, unless it has
    /// [`crate::engine::LOOP_SPILL`] more ports than the least loaded loop.
    pub fn add_port(
        &self,
        network: &str,
        name: &str,
        policy: PortPolicy,
        link: Box<dyn Link>,
    ) -> Result<PortId> {
        let kind = link.kind();
        let id = self.dp.add_link(network, name, policy, link)?;
        self.node.events.noted(super::events::Event::PortAdded {
            port: name.to_string(),
            network: network.to_string(),
            kind: kind.to_string(),
        });
        Ok(id)
    }
    /// Opens the link a [`PortSpec`] describes (creating TAPs as needed) and adds the port.
    /// For a `stream` port, binds the socket and returns `None`: the port appears when a peer
    /// connects, and is removed when it goes (then the next peer may connect).
    pub fn open_port(&self, spec: &PortSpec) -> Result<Option<PortId>> {
        self.attach(spec).map(|a| a.id)
    }
    /// Like [`Handle::open_port`], and says how the port's interface was configured: a
    /// `netns` port with address fields (`mac`, `ips`, `gateway`, `routes`) gets them over
    /// rtnetlink inside the namespace, with `lo` up; the port owns its addresses from the
    /// start and the network's gateway knows its MAC and name at once (see `control/address.rs`).
    pub fn attach(&self, spec: &PortSpec) -> Result<Attached> {
        self.attach_with(spec, None)
    }
    /// Like [`Handle::attach`] for a `netns` port whose TAP was created by the caller (inside
    /// a rootless container's namespaces, which this process cannot enter; see [`super::rootless`]):
    /// adopts `tap` instead of creating one, plans the addresses as for any `netns` port and
    /// answers them; the caller applies them inside the namespace. `spec.fd` must be true. The
    /// port is removed when `spec.netns` disappears (the container's `/proc/PID/ns/net`); the
    /// descriptor is closed on any error.
    pub fn attach_fd(&self, spec: &PortSpec, tap: std::os::fd::OwnedFd) -> Result<Attached> {
        self.attach_with(spec, Some(tap))
    }
    fn attach_with(&self, spec: &PortSpec, tap: Option<std::os::fd::OwnedFd>) -> Result<Attached> {
        let backend = spec.backend("port")?;
        match (spec.fd, &tap) {
            (true, None) => {
                return Err(Error::invalid(
                    "port.fd",
                    "true, but no descriptor came with the request (send the TAP's descriptor \
                     with SCM_RIGHTS in the same message as the request line)",
                ));
            }
            (false, Some(_)) => {
                return Err(Error::invalid(
                    "port.fd",
                    "a descriptor came with the request, but `fd` is not true",
                ));
            }
            _ => {}
        }
        self.check_networks_exist(spec)?;
        if let Backend::Stream { path } = &backend {
            self.listen_stream(spec.clone(), path)?;
            return Ok(Attached::default());
        }
        if self
            .dp
            .bridge()
            .topology()
            .port_by_name(&spec.name)
            .is_some()
        {
            return Err(crate::bridge::BridgeError::PortExists(spec.name.clone()).into());
        }
        // Adopting a TAP handed over needs nothing the sandbox takes away.
        if crate::sandbox::is_applied() && tap.is_none() {
            let what = match &backend {
                Backend::Tap { .. } => "a new TAP (`tap`)",
                Backend::NetnsTap { .. } => "a port in a network namespace (`netns`)",
                Backend::Packet { .. } => "an AF_PACKET port (`packet`)",
                Backend::Stream { .. } => "a stream port",
                Backend::Dgram { .. } => "a datagram socket port (`dgram`)",
                Backend::VhostUser { .. } => "a vhost-user port (`vhost_user`)",
                Backend::Vxlan { .. } => "a VXLAN port (`vxlan`)",
            };
            if let Backend::NetnsTap { .. } = backend {
                // A permission error (`errno` 1 in the API): `usernet attach` then creates the
                // TAP itself and passes it (`"fd": true`), which works under the sandbox.
                return Err(Error::Io(
                    format!("port {:?}", spec.name),
                    std::io::Error::new(
                        std::io::ErrorKind::PermissionDenied,
                        format!(
                            "{} (a TAP passed with the request, \"fd\": true, is taken)",
                            crate::sandbox::refused(what)
                        ),
                    ),
                ));
            }
            return Err(Error::invalid(
                format!("port {:?}", spec.name),
                crate::sandbox::refused(what),
            ));
        }
        let tap_opts = TapOptions {
            mtu: spec.mtu,
            offload: spec.offload.unwrap_or(true),
            ..TapOptions::default()
        };
        let plan = match &backend {
            Backend::NetnsTap { .. } => self.address_plan(spec)?,
            _ => None,
        };
        let pcap = match &spec.pcap {
            Some(p) => Some((p, super::capture::open_pcap(p, false)?)),
            None => None,
        };
        let res = self.open_planned(spec, &backend, &tap_opts, plan.as_ref(), tap);
        if let (Ok(_), Some((path, file))) = (&res, pcap) {
            self.start_pcap(&spec.name, path, file);
        }
        match (res, plan) {
            (Ok(id), Some(plan)) => {
                if let Err(e) = self.announce_endpoint(&spec.network, id, &plan) {
                    tracing::warn!(port = %spec.name, "gateway not told of the port's addresses: {e}");
                }
                Ok(plan.attached(Some(id)))
            }
            (Ok(id), None) => Ok(Attached {
                id: Some(id),
                ..Attached::default()
            }),
            (Err(e), plan) => {
                if let Some(p) = plan {
                    self.drop_plan(&spec.network, &p);
                }
                Err(e)
            }
        }
    }
    /// Every network `spec` joins exists (an access port's: `NoSuchNetwork`, as before; a
    /// trunk's: an error naming the key).
    fn check_networks_exist(&self, spec: &PortSpec) -> Result<()> {
        let topo = self.dp.bridge().topology();
        for (key, net) in spec.networks() {
            if topo.network_by_name(net).is_none() {
                if spec.trunk.is_empty() {
                    return Err(crate::bridge::BridgeError::NoSuchNetwork(net.to_string()).into());
                }
                return Err(Error::invalid(
                    format!("port.{key}"),
                    format!("no network named {net:?}"),
                ));
            }
        }
        Ok(())
    }
    fn open_planned(
        &self,
        spec: &PortSpec,
        backend: &Backend,
        tap_opts: &TapOptions,
        plan: Option<&address::Plan>,
        tap: Option<std::os::fd::OwnedFd>,
    ) -> Result<PortId> {
        let mut vxlan = None;
        let (link, watch): (Box<dyn Link>, Option<Watch>) = match backend {
            Backend::Tap { name } => (Box::new(TapLink::create(name, tap_opts)?), None),
            Backend::NetnsTap { netns, ifname } => {
                // Our TAP descriptor keeps the namespace alive after `ip netns del` or after the
                // container's last process exits, so the kernel never tells us; watch the path.
                let id = std::fs::metadata(netns)
                    .map(|m| (m.dev(), m.ino()))
                    .map_err(|e| OpenError::new(format!("netns {}", netns.display()), e))?;
                let link = match (tap, plan) {
                    (Some(fd), p) => adopt_tap(fd, spec, ifname, p)?,
                    (None, Some(p)) => {
                        TapLink::create_configured_in_netns(netns, ifname, tap_opts, &p.cfg)?
                    }
                    (None, None) => TapLink::create_in_netns(netns, ifname, tap_opts)?,
                };
                let path = netns.clone();
                let alive =
                    move || std::fs::metadata(&path).is_ok_and(|m| (m.dev(), m.ino()) == id);
                let what = format!("namespace {}", netns.display());
                (
                    Box::new(link),
                    Some((what, Box::new(alive) as Box<dyn Fn() -> bool + Send>)),
                )
            }
            Backend::Stream { .. } => (unreachable_stream()?, None),
            Backend::Dgram { path, peer } => (
                Box::new(self.bind_dgram(&spec.name, path, peer.as_deref())?),
                None,
            ),
            Backend::VhostUser { path } => {
                (Box::new(self.listen_vhost_user(&spec.name, path)?), None)
            }
            Backend::Vxlan { spec: v } => {
                let link = self.open_vxlan(spec, v)?;
                vxlan = Some(link.shared().clone());
                (Box::new(link), None)
            }
            Backend::Packet { ifname } => {
                let link = PacketLink::open(
                    ifname,
                    &PacketOptions {
                        up: true,
                        promisc: true,
                        offload: spec.offload.unwrap_or(true),
                    },
                )?;
                let idx = link.ifindex();
                let alive = move || crate::link::netns::link_exists(idx);
                let what = format!("interface {ifname}");
                (
                    Box::new(link),
                    Some((what, Box::new(alive) as Box<dyn Fn() -> bool + Send>)),
                )
            }
        };
        let mut policy = spec.policy();
        if let Some(p) = plan {
            policy.allowed_ips.extend(p.ips());
        }
        let id = self.add_port(spec.home_network(), &spec.name, policy, link)?;
        if let Some(v) = vxlan {
            self.vxlan_added(spec.home_network(), &spec.name, v);
        }
        if let Backend::NetnsTap { netns, .. } = backend {
            self.set_port_netns(&spec.name, netns.clone());
        }
        if let Some((what, alive)) = watch {
            self.node.watches.lock().push(EngineWatch {
                port: id,
                what,
                alive,
            });
        }
        Ok(id)
    }
    fn bind_dgram(
        &self,
        name: &str,
        path: &std::path::Path,
        peer: Option<&std::path::Path>,
    ) -> Result<crate::link::dgram::DgramLink> {
        if let Ok(m) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            if !m.file_type().is_socket() {
                return Err(Error::invalid(
                    "dgram",
                    format!("{} exists and is not a socket", path.display()),
                ));
            }
            let probe = std::os::unix::net::UnixDatagram::unbound()
                .map_err(|e| Error::Io("datagram socket".into(), e))?;
            // Refused: a stale socket file, replaced. Connected, or EPERM (a live datagram socket
            // connected elsewhere), or a stream socket's EPROTOTYPE: in use.
            match probe.connect(path) {
                Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                    let _ = std::fs::remove_file(path);
                }
                _ => {
                    return Err(Error::invalid(
                        "dgram",
                        format!("{} is in use by a live socket", path.display()),
                    ));
                }
            }
        }
        let what = format!("{name} on {}", path.display());
        Ok(crate::link::dgram::DgramLink::bind(
            path,
            peer,
            self.dp.config().max_frame,
            &what,
        )?)
    }

    fn listen_vhost_user(
        &self,
        name: &str,
        path: &std::path::Path,
    ) -> Result<crate::link::vhost_user::VhostUserLink> {
        if path.exists() {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(Error::invalid(
                    "vhost_user",
                    format!("{} is in use by a live socket", path.display()),
                ));
            }
            let _ = std::fs::remove_file(path);
        }
        let what = format!("{name} on {}", path.display());
        let (backend, link) =
            crate::link::vhost_user::VhostUserNet::listen(path, self.dp.config().max_frame, &what)?;
        // Removing the port stops the backend (as a stream port's listener).
        self.node
            .streams
            .lock()
            .insert(name.to_string(), backend.stop_flag());
        backend.detach();
        Ok(link)
    }

    fn listen_stream(&self, spec: PortSpec, path: &std::path::Path) -> Result<()> {
        if path.exists() {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(Error::invalid(
                    "stream",
                    format!("{} is in use by a live socket", path.display()),
                ));
            }
            let _ = std::fs::remove_file(path);
        }
        // 0600 from creation: only this user's VMs may connect.
        let l = server::bind_private(path)
            .map_err(|e| Error::Io(format!("binding stream socket {}", path.display()), e))?;
        l.set_nonblocking(true)
            .map_err(|e| Error::Io(format!("stream socket {}", path.display()), e))?;
        // The first peer's capture empties the file; later peers' add sections to it.
        let mut pcap = match &spec.pcap {
            Some(p) => Some(super::capture::open_pcap(p, false)?),
            None => None,
        };
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        self.node
            .streams
            .lock()
            .insert(spec.name.clone(), stop.clone());
        let h = self.clone();
        let path = path.to_path_buf();
        let max = self.dp.config().max_frame;
        std::thread::Builder::new()
            .name(format!("usernet-stream-{}", spec.name))
            .spawn(move || {
                while !h.is_stopped() && !stop.load(Ordering::Acquire) {
                    match l.accept() {
                        Ok((conn, _)) => {
                            if h.bridge().topology().port_by_name(&spec.name).is_some() {
                                tracing::warn!(port = %spec.name, "second stream peer refused: port busy");
                                continue;
                            }
                            let what = format!("{} on {}", spec.name, path.display());
                            match crate::link::stream::StreamLink::new(conn, max, &what) {
                                Ok(link) => {
                                    if let Err(e) =
                                        h.add_port(spec.home_network(), &spec.name, spec.policy(), Box::new(link))
                                    {
                                        tracing::warn!(port = %spec.name, "stream peer: {e}");
                                    } else {
                                        tracing::info!(port = %spec.name, "stream peer connected");
                                        if let Some(p) = &spec.pcap {
                                            let file = match pcap.take() {
                                                Some(f) => Ok(f),
                                                None => super::capture::open_pcap(p, true),
                                            };
                                            match file {
                                                Ok(f) => h.start_pcap(&spec.name, p, f),
                                                Err(e) => tracing::warn!(port = %spec.name, "{e}"),
                                            }
                                        }
                                    }
                                }
                                Err(e) => tracing::warn!(port = %spec.name, "stream peer: {e}"),
                            }
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(50)),
                    }
                }
                let _ = std::fs::remove_file(&path);
            })
            .map_err(|e| Error::Io("spawning stream listener".into(), e))?;
        Ok(())
    }
    /// Removes a port by name and closes its link (a TAP usernet created disappears; a stream
    /// port stops listening too).
    pub fn remove_port(&self, name: &str) -> Result<()> {
        if let Some(stop) = self.node.streams.lock().remove(name) {
            stop.store(true, Ordering::Release);
            if self.dp.bridge().topology().port_by_name(name).is_none() {
                return Ok(());
            }
        }
        let port = self
            .dp
            .bridge()
            .topology()
            .port_by_name(name)
            .cloned()
            .ok_or_else(|| crate::bridge::BridgeError::NoSuchPort(name.to_string()))?;
        let network = self
            .dp
            .bridge()
            .topology()
            .network(port.network)
            .map(|n| n.net.name.clone())
            .unwrap_or_default();
        self.dp.bridge().remove_port(port.id);
        self.node.port_netns.lock().remove(name);
        self.node.vxlan.lock().remove(name);
        let res = self.detach_link(port.owner, port.id);
        self.node.events.noted(super::events::Event::PortRemoved {
            port: name.to_string(),
            network,
        });
        res
    }
    /// Sets a port's rate limits at run time (`None` or all zero: unlimited); token levels
    /// carry over. Errors name the field as `rate_limit.KEY`. A stream port's next peer
    /// starts with its configured limits again.
    pub fn set_port_limit(
        &self,
        name: &str,
        limit: Option<crate::bridge::RateLimit>,
    ) -> Result<()> {
        check_rate_limit(limit.as_ref(), "rate_limit")?;
        let id = self
            .dp
            .bridge()
            .topology()
            .port_by_name(name)
            .map(|p| p.id)
            .ok_or_else(|| crate::bridge::BridgeError::NoSuchPort(name.to_string()))?;
        self.dp.set_rate_limit(id, limit)
    }
    pub(super) fn detach_link(&self, owner: usize, id: PortId) -> Result<()> {
        self.dp.detach(owner, id)
    }
    /// Adds a static FDB entry: `mac` on `vlan` is always behind port `port`.
    pub fn add_static_mac(&self, port: &str, mac: Mac, vlan: u16) -> Result<()> {
        let topo = self.dp.bridge().topology();
        let p = topo
            .port_by_name(port)
            .ok_or_else(|| crate::bridge::BridgeError::NoSuchPort(port.to_string()))?;
        let ne = topo
            .network(p.network)
            .ok_or_else(|| crate::bridge::BridgeError::NoSuchPort(port.to_string()))?;
        ne.net.fdb.add_static(vlan, mac, p.id);
        Ok(())
    }
}
