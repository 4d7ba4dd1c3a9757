//! Rootless attach: one unprivileged `usernet up` serves many rootless containers.
//!
//! # Theory of operation
//!
//! A rootless container (`podman run` as a user, `unshare -Urn`) has its own user namespace,
//! and its network namespace is owned by it. Creating a TAP there needs `CAP_NET_ADMIN` in that
//! user namespace, which a process of the same user gets only by *joining* it, and
//! `setns(CLONE_NEWUSER)` is refused to a multi-threaded process: the daemon (event loops,
//! control threads) can never do it, and its `setns(CLONE_NEWNET)` fails with `EPERM`.
//!
//! So the client does it, as slirp4netns and pasta do for their one container each:
//! [`attach_passing_fd`] (what `usernet attach --netns` does when the daemon answers `EPERM`, or
//! with `--pass-fd`)
//! 1. opens the namespace and finds the user namespace that owns it (`NS_GET_USERNS`, or a
//!    given path), and chooses the interface's MAC (so the daemon can plan with it);
//! 2. forks a helper that joins both and creates the TAP (down, MAC set), and takes its
//!    descriptor back ([`crate::link::userns::NsTarget`]);
//! 3. sends `add_port` with `"fd": true` and the descriptor attached (`SCM_RIGHTS`) on the
//!    control socket; the daemon adopts it ([`super::Handle::attach_fd`]), plans the addresses
//!    as for any `netns` port (DHCP reservation for `auto`, port security, DNS name, neighbour
//!    entry) and answers the configuration ([`Attached`], routes included);
//! 4. forks a helper again to apply that configuration inside (`lo` up, MTU, addresses,
//!    routes, link up). If that fails the port is removed again.
//!
//! The daemon watches the `netns` path the request names (the container's `/proc/PID/ns/net`):
//! its descriptor keeps the namespace alive after the container exits, so the kernel tells
//! nobody; when the path is gone (or is another namespace), the port is removed and the TAP
//! closed, which frees the namespace.

use std::os::fd::AsFd;
use std::path::Path;

use super::api::Request;
use super::server::{request, request_with_fd};
use super::{Attached, PortSpec};
use crate::error::{Error, Result};
use crate::link::ifconfig::{IfConfig, random_mac};
use crate::link::userns::NsTarget;

/// Attaches the rootless namespace `spec.netns` to the daemon at `socket` by creating its TAP
/// here and passing it (see the module docs). `userns`: the user namespace to join, when not
/// the one that owns the network namespace. Returns what the daemon answered, after the
/// interface is configured.
pub fn attach_passing_fd(
    socket: &Path,
    spec: &PortSpec,
    userns: Option<&Path>,
) -> Result<Attached> {
    let netns = spec
        .netns
        .clone()
        .ok_or_else(|| Error::invalid("port.netns", "a rootless attach needs the namespace"))?;
    let mut spec = spec.clone();
    spec.fd = true;
    let ifname = spec.ifname.get_or_insert_with(|| "eth0".into()).clone();
    let mac = *spec.mac.get_or_insert_with(random_mac);
    // Checks the spec (names, MTU) before anything is created.
    spec.backend("port")?;
    let target = NsTarget::open(&netns, userns)?;
    let tap = target.create_tap(&ifname, spec.mtu, Some(mac))?;
    let v = request_with_fd(
        socket,
        &Request::AddPort {
            port: Box::new(spec.clone()),
        },
        Some(tap.as_fd()),
    )?;
    // The daemon has its own descriptor now (or refused, and the TAP goes with ours).
    drop(tap);
    let att: Attached = serde_json::from_value(v)
        .map_err(|e| Error::invalid("response", format!("add_port answer: {e}")))?;
    let cfg = IfConfig {
        mac: None, // set when the TAP was created
        mtu: att.mtu.or(spec.mtu),
        addrs: att.ips.clone(),
        routes: att.routes.clone(),
        lo_up: !spec.ips.is_empty(),
    };
    if let Err(e) = target.configure(&ifname, &cfg) {
        let _ = request(
            socket,
            &Request::RemovePort {
                name: spec.name.clone(),
            },
        );
        return Err(e.into());
    }
    Ok(att)
}
