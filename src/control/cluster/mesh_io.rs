//! The service mesh's small pieces of I/O (`mesh.rs`): the connections it opens from this
//! node's VTEP, the node checks' progress, and the hidden forwards of this node's endpoints.

use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use mio::net::{TcpListener, TcpStream};

use super::services::{self, Hello, MAX_UP, Target};
use crate::control::Handle;
use crate::error::{Error, Result};
use crate::nat::balance::{HealthSpec, PoolStats};
use crate::nat::forward::{Forward, ForwardSpec, Proto};
use crate::nat::forward_rt::Listener;

/// Closes `s` with an RST (`SO_LINGER` 0) when it is dropped.
pub(super) fn reset(s: &impl std::os::fd::AsFd) {
    let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
}

/// This node's endpoint of a service: its hidden forward.
pub(super) struct Local {
    pub(super) ip: Ipv4Addr,
    pub(super) forward: u64,
    pub(super) port: u16,
    pub(super) stats: Arc<PoolStats>,
}

/// Adds the hidden forward of this node's endpoint `t` at `ip`: `127.0.0.1:EPHEMERAL ->
/// ip:port`, health-checked by `health`.
pub(super) fn hidden_forward(
    h: &Handle,
    t: &Target,
    ip: Ipv4Addr,
    health: HealthSpec,
) -> Result<Local> {
    let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| Error::Io("service forward".into(), e))?;
    l.set_nonblocking(true)
        .map_err(|e| Error::Io("service forward".into(), e))?;
    let port = l
        .local_addr()
        .map_err(|e| Error::Io("service forward".into(), e))?
        .port();
    let spec = ForwardSpec::single(
        Proto::Tcp,
        Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        port,
        t.port,
    )
    .map_err(|e| Error::invalid("service", e.to_string()))?;
    let mut f = Forward::new(&t.net, spec, &ip.to_string());
    f.health = Some(health);
    let info = h.add_forward_bound(
        &f,
        vec![Listener::Tcp {
            sock: TcpListener::from_std(l),
            guest_port: t.port,
        }],
        None,
    )?;
    let stats = h
        .node()
        .forward_stats
        .lock()
        .get(&info.id)
        .cloned()
        .unwrap_or_else(|| PoolStats::new(&[]));
    tracing::info!(endpoint = %t, forward = info.id, "service: local endpoint forwarded");
    Ok(Local {
        ip,
        forward: info.id,
        port,
        stats,
    })
}

/// A non-blocking connection to `to` from address `local` (this node's VTEP: the address
/// the other nodes accept mesh connections from).
pub(super) fn connect_from(local: IpAddr, to: SocketAddr) -> io::Result<TcpStream> {
    let s = crate::nat::splice::start_connect(to, Some(local))?;
    Ok(TcpStream::from_std(s.into()))
}

/// Where a node check stands.
pub(super) enum CheckStep {
    /// Connecting or waiting for the answer.
    Pending,
    /// Refused, closed, malformed: failed.
    Failed,
    /// Answered: its endpoints that are up.
    Answered(BTreeSet<Target>),
}

/// Moves a check along: sends the line once connected, reads the answer.
pub(super) fn check_io(sock: &mut TcpStream, sent: &mut bool, buf: &mut Vec<u8>) -> CheckStep {
    if !*sent {
        match sock.take_error() {
            Ok(None) => {}
            _ => return CheckStep::Failed,
        }
        match sock.peer_addr() {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return CheckStep::Pending,
            Err(_) => return CheckStep::Failed,
        }
        let hello = Hello::Check.line();
        if sock.write(hello.as_bytes()).ok() != Some(hello.len()) {
            return CheckStep::Failed;
        }
        *sent = true;
    }
    let mut chunk = [0u8; 4096];
    loop {
        match sock.read(&mut chunk) {
            Ok(0) => return CheckStep::Failed,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.contains(&b'\n') {
                    let end = buf.iter().position(|&b| b == b'\n').map_or(0, |p| p + 1);
                    return match services::parse_up(&buf[..end]) {
                        Ok((up, _)) => CheckStep::Answered(up),
                        Err(_) => CheckStep::Failed,
                    };
                }
                if buf.len() > MAX_UP {
                    return CheckStep::Failed;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return CheckStep::Pending,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return CheckStep::Failed,
        }
    }
}
