//! The service mesh thread (`usernet-mesh`, feature `cluster`): each `[[service]]`'s
//! published port on this node, balanced over the service's endpoints on every node, and the
//! mesh listener (`vtep:mesh_port`) through which other nodes reach this node's endpoints.
//!
//! # Theory of operation
//!
//! All nodes' gateways on a cluster network share one address, so a node cannot open a
//! connection to another node's guest across the overlay (the answer would go to that node's
//! own gateway). Every guest-side connection is therefore made by the guest's own node, from
//! its gateway, through a hidden load-balancing forward: for each of its endpoints of a
//! declared service, the node adds a port forward `127.0.0.1:EPHEMERAL -> ADDRESS:PORT` with
//! the service's health checks (`ctl forward ls` lists it), whose health is the endpoint's.
//!
//! - A client accepted on a service's published port gets an endpoint from
//!   [`crate::nat::balance::Picker`] over the service's endpoints on every live node
//!   (`services::endpoints`, names published in etcd). A local one: the client is relayed
//!   (the splice relay, [`crate::nat::splice::Splicer::relay`]) to the hidden forward. A
//!   remote one: a connection to its node's mesh listener, the `CONNECT` line
//!   (`services.rs`), then the relay; the owner relays it to its hidden forward. A failed
//!   mesh connect takes that node out at once and the client is given another endpoint.
//! - Health: each node's hidden forwards check its own endpoints (on its gateway's loop).
//!   Every half health interval a node asks each other node holding endpoints of its
//!   services (`CHECK`) which of them are up; a node that does not answer `fall` times in a
//!   row is down (and back after `rise` answers). An endpoint is in the rotation while its
//!   node is up and says it is. No etcd write.
//! - The mesh listener takes connections only from the live members' VTEPs, and relays only
//!   to this node's endpoints of services it declares; a first line that is not one, or does
//!   not come within [`HELLO_WAIT`], closes the connection.
//! - Every few hundred ms the thread re-reads the members and the published names: endpoint
//!   sets that changed get new counters (connections in progress keep theirs and their
//!   endpoint), hidden forwards follow this node's endpoints.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

use super::Shared;
use super::mesh_io::{CheckStep, Local, check_io, connect_from, hidden_forward, reset};
use super::services::{self, Endpoint, Hello, MAX_HELLO, Service, Target};
use crate::control::Handle;
use crate::error::{Error, Result};
use crate::nat::balance::{Balance, ConnGuard, Health, HealthSpec, Picker, PoolStats};
use crate::nat::forward::Forward;
use crate::nat::splice::Splicer;

/// How long a mesh connection may take to send its first line.
pub(crate) const HELLO_WAIT: Duration = Duration::from_secs(2);
/// How often the members, endpoints and hidden forwards are re-read.
const RESYNC: Duration = Duration::from_millis(200);
/// Most connections being set up at once (more are reset).
const MAX_PENDING: usize = 1024;
/// The splice relay's cap key of relayed mesh connections (a service's is `SPLICE_BASE - i`).
const SPLICE_MESH: u64 = u64::MAX - 1;
const SPLICE_BASE: u64 = u64::MAX - 2;

const MESH: Token = Token(0);
const FIRST_PENDING: usize = 1 << 20;

/// Binds the services' published ports and the mesh listener, then starts the thread.
pub(super) fn spawn(h: Handle, shared: Arc<Shared>, services: Vec<Service>) -> Result<()> {
    let mut svcs = Vec::new();
    for (i, svc) in services.into_iter().enumerate() {
        let s = svc.forward();
        let at = SocketAddr::new(s.spec.bind_ip(), s.spec.host_ports.0);
        let l = TcpListener::bind(at)
            .map_err(|e| Error::invalid(format!("service[{i}].publish"), format!("{at}: {e}")))?;
        // The virtual IP's listener: on the host's loopback, reached only through the NAT
        // mapping `vip:GUESTPORT` (see `nat/vip.rs`).
        let vip_listener = match svc.vip {
            Some(vip) => {
                let g = h.gateway(&s.network).ok_or_else(|| {
                    Error::invalid(format!("service[{i}].vip"), "the network has no gateway")
                })?;
                let l = TcpListener::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0))
                    .map_err(|e| Error::Io("service vip listener".into(), e))?;
                let at = l
                    .local_addr()
                    .map_err(|e| Error::Io("service vip listener".into(), e))?;
                g.vips.set_port(vip, s.spec.guest_ports.0, at);
                Some(l)
            }
            None => None,
        };
        svcs.push(Svc {
            guest_port: s.spec.guest_ports.0,
            balance: s.policy(),
            health: s.health.unwrap_or_default(),
            spec: s,
            vip: svc.vip,
            name: svc.name,
            listener: l,
            vip_listener,
            eps: Vec::new(),
            stats: PoolStats::new(&[]),
            picker: Picker::default(),
        });
    }
    let at = SocketAddr::new(shared.vtep, shared.spec.mesh_port);
    let mesh = TcpListener::bind(at)
        .map_err(|e| Error::invalid("cluster.mesh_port", format!("{at}: {e}")))?;
    let splicer = h.splicer()?;
    let poll = Poll::new().map_err(|e| Error::Io("mesh poll".into(), e))?;
    let check = svcs
        .iter()
        .map(|s| s.health)
        .min_by_key(|s| s.interval_ms)
        .unwrap_or_default();
    let mut m = Mesh {
        h,
        shared,
        poll,
        svcs,
        mesh,
        splicer,
        check,
        peers: BTreeMap::new(),
        live: BTreeMap::new(),
        local: BTreeMap::new(),
        pending: HashMap::new(),
        next_token: FIRST_PENDING,
    };
    let reg = m.poll.registry();
    reg.register(&mut m.mesh, MESH, Interest::READABLE)
        .map_err(|e| Error::Io("mesh listener".into(), e))?;
    let n = m.svcs.len();
    for (i, s) in m.svcs.iter_mut().enumerate() {
        reg.register(&mut s.listener, Token(1 + i), Interest::READABLE)
            .map_err(|e| Error::Io("service listener".into(), e))?;
        if let Some(l) = s.vip_listener.as_mut() {
            reg.register(l, Token(1 + n + i), Interest::READABLE)
                .map_err(|e| Error::Io("service listener".into(), e))?;
        }
    }
    std::thread::Builder::new()
        .name("usernet-mesh".into())
        .spawn(move || m.run())
        .map_err(|e| Error::Io("starting the mesh thread".into(), e))?;
    Ok(())
}

/// One service on this node.
struct Svc {
    spec: Forward,
    guest_port: u16,
    balance: Balance,
    health: HealthSpec,
    vip: Option<Ipv4Addr>,
    name: Option<String>,
    listener: TcpListener,
    /// The listener NAT sends guests' connections to the virtual IP to.
    vip_listener: Option<TcpListener>,
    /// Its endpoints on every live node, and their counters (same order).
    eps: Vec<Endpoint>,
    stats: Arc<PoolStats>,
    picker: Picker,
}

/// Another node holding endpoints of our services.
struct Peer {
    vtep: IpAddr,
    health: Health,
    next: Instant,
    /// Its endpoints that are up, from its last answer.
    up: BTreeSet<Target>,
    /// Its check in flight.
    checking: bool,
}

/// A connection being set up.
enum Pending {
    /// From another node, before its first line.
    Inbound { sock: TcpStream },
    /// A client of service `svc` going to endpoint `ep` on node `node`: connecting to its mesh.
    Connect {
        sock: TcpStream,
        client: std::net::TcpStream,
        svc: usize,
        ep: usize,
        node: String,
        hold: Option<ConnGuard>,
        tries: usize,
    },
    /// A check of node `node`: connecting, then reading its answer.
    Check {
        sock: TcpStream,
        node: String,
        sent: bool,
        buf: Vec<u8>,
    },
}

struct Mesh {
    h: Handle,
    shared: Arc<Shared>,
    poll: Poll,
    svcs: Vec<Svc>,
    mesh: TcpListener,
    splicer: Arc<Splicer>,
    /// How nodes are checked (the shortest interval of the services').
    check: HealthSpec,
    peers: BTreeMap<String, Peer>,
    /// Live members' VTEPs by name.
    live: BTreeMap<String, IpAddr>,
    local: BTreeMap<Target, Local>,
    pending: HashMap<usize, (Pending, Instant)>,
    next_token: usize,
}

impl Mesh {
    fn me(&self) -> &str {
        &self.shared.spec.node
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(256);
        let mut resync = Instant::now();
        while !self.h.is_stopped() {
            let now = Instant::now();
            if now >= resync {
                self.resync();
                resync = now + RESYNC;
            }
            self.checks(now);
            self.expire(now);
            self.update_up();
            let due = self
                .peers
                .values()
                .filter(|p| !p.checking)
                .map(|p| p.next)
                .chain(std::iter::once(resync))
                .min()
                .unwrap_or(resync);
            let wait = due
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(100));
            if let Err(e) = self.poll.poll(&mut events, Some(wait))
                && e.kind() != io::ErrorKind::Interrupted
            {
                tracing::error!("mesh poll failed: {e}");
                return;
            }
            let toks: Vec<Token> = events.iter().map(|e| e.token()).collect();
            for t in toks {
                match t {
                    MESH => self.accept_mesh(),
                    Token(i) if i >= FIRST_PENDING => self.service_pending(i),
                    Token(i) if i > self.svcs.len() => {
                        self.accept_client(i - 1 - self.svcs.len(), true)
                    }
                    Token(i) => self.accept_client(i - 1, false),
                }
            }
        }
    }

    fn token(&mut self) -> usize {
        let t = self.next_token;
        self.next_token = if t == usize::MAX >> 1 {
            FIRST_PENDING
        } else {
            t + 1
        };
        t
    }

    /// Registers a connection being set up; false (and dropped) when too many are.
    fn add_pending(&mut self, mut p: Pending, interest: Interest, deadline: Instant) -> bool {
        if self.pending.len() >= MAX_PENDING {
            return false;
        }
        let t = self.token();
        let sock = match &mut p {
            Pending::Inbound { sock }
            | Pending::Connect { sock, .. }
            | Pending::Check { sock, .. } => sock,
        };
        if self
            .poll
            .registry()
            .register(sock, Token(t), interest)
            .is_err()
        {
            return false;
        }
        self.pending.insert(t, (p, deadline));
        true
    }

    fn take_pending(&mut self, t: usize) -> Option<Pending> {
        let (mut p, _) = self.pending.remove(&t)?;
        let sock = match &mut p {
            Pending::Inbound { sock }
            | Pending::Connect { sock, .. }
            | Pending::Check { sock, .. } => sock,
        };
        let _ = self.poll.registry().deregister(sock);
        Some(p)
    }

    /// Re-reads members and published names: endpoints, peers, hidden forwards.
    fn resync(&mut self) {
        let (live, eps) = {
            let st = self.shared.status.lock();
            let live: BTreeMap<String, IpAddr> = st
                .members
                .nodes()
                .map(|(n, r)| (n.clone(), r.vtep))
                .collect();
            let names: BTreeSet<String> = live.keys().cloned().collect();
            let eps: Vec<Vec<Endpoint>> = self
                .svcs
                .iter()
                .map(|s| {
                    services::endpoints(
                        &s.spec.network,
                        &s.spec.to,
                        |net, name| st.endpoints.owners(net, name),
                        &names,
                    )
                })
                .collect();
            (live, eps)
        };
        self.live = live;
        let mut changed = false;
        for (s, eps) in self.svcs.iter_mut().zip(eps) {
            if s.eps != eps {
                changed = true;
                let labels: Vec<String> = eps.iter().map(Endpoint::label).collect();
                tracing::info!(service = %s.spec.spec, endpoints = ?labels, "service endpoints changed");
                s.stats = PoolStats::new(&labels);
                s.picker = Picker::default();
                s.eps = eps;
            }
        }
        if changed || self.shared.services.lock().is_empty() {
            *self.shared.services.lock() = self
                .svcs
                .iter()
                .map(|s| services::ServiceView {
                    network: s.spec.network.clone(),
                    publish: s.spec.spec.to_string(),
                    vip: s.vip,
                    name: s.name.clone(),
                    balance: s.balance,
                    stats: s.stats.clone(),
                })
                .collect();
        }
        // Peers: the other nodes holding endpoints.
        let me = self.me().to_string();
        let want: BTreeSet<String> = self
            .svcs
            .iter()
            .flat_map(|s| s.eps.iter().map(|e| e.node.clone()))
            .filter(|n| *n != me)
            .collect();
        self.peers.retain(|n, _| want.contains(n));
        let now = Instant::now();
        for n in want {
            let Some(vtep) = self.live.get(&n).copied() else {
                continue;
            };
            let p = self.peers.entry(n).or_insert(Peer {
                vtep,
                health: Health::default(),
                next: now,
                up: BTreeSet::new(),
                checking: false,
            });
            p.vtep = vtep;
        }
        self.sync_local();
    }

    /// Makes the hidden forwards those of this node's endpoints.
    fn sync_local(&mut self) {
        let me = self.me().to_string();
        let mut want: BTreeMap<Target, (Ipv4Addr, HealthSpec)> = BTreeMap::new();
        for s in &self.svcs {
            for e in s.eps.iter().filter(|e| e.node == me) {
                let t = Target {
                    net: s.spec.network.clone(),
                    name: e.name.clone(),
                    port: s.guest_port,
                };
                want.entry(t).or_insert((e.ip, s.health));
            }
        }
        let stale: Vec<Target> = self
            .local
            .iter()
            .filter(|(t, l)| want.get(*t).is_none_or(|(ip, _)| *ip != l.ip))
            .map(|(t, _)| t.clone())
            .collect();
        for t in stale {
            if let Some(l) = self.local.remove(&t) {
                let _ = self.h.remove_forward(&l.forward.to_string());
            }
        }
        for (t, (ip, health)) in want {
            if self.local.contains_key(&t) {
                continue;
            }
            match hidden_forward(&self.h, &t, ip, health) {
                Ok(l) => {
                    self.local.insert(t, l);
                }
                Err(e) => tracing::warn!(endpoint = %t, error = %e, "service: no local forward"),
            }
        }
    }

    /// Sets each endpoint's state: a local one by its forward's health, a remote one by its
    /// node's.
    fn update_up(&self) {
        let me = self.me();
        for s in &self.svcs {
            for (i, e) in s.eps.iter().enumerate() {
                let t = Target {
                    net: s.spec.network.clone(),
                    name: e.name.clone(),
                    port: s.guest_port,
                };
                let up = if e.node == me {
                    self.local
                        .get(&t)
                        .and_then(|l| l.stats.endpoints.first())
                        .is_some_and(|x| x.is_up())
                } else {
                    self.peers
                        .get(&e.node)
                        .is_some_and(|p| p.health.is_up() && p.up.contains(&t))
                };
                if let Some(st) = s.stats.endpoints.get(i)
                    && st.is_up() != up
                {
                    st.set_up(up);
                    let state = if up { "up" } else { "down" };
                    tracing::info!(service = %s.spec.spec, endpoint = %st.name, "service endpoint is {state}");
                }
            }
        }
    }

    /// Records a check result of node `node`.
    fn peer_result(&mut self, node: &str, ok: bool, up: Option<BTreeSet<Target>>) {
        let spec = self.check;
        if let Some(p) = self.peers.get_mut(node) {
            p.checking = false;
            if let Some(up) = up {
                p.up = up;
            }
            if let Some(now_up) = p.health.record(ok, &spec) {
                let state = if now_up { "up" } else { "down" };
                tracing::info!(node, "service mesh: node is {state}");
            }
        }
    }

    /// A node refused a mesh connection: down at once.
    fn peer_failed(&mut self, node: &str) {
        let spec = self.check;
        if let Some(p) = self.peers.get_mut(node) {
            while p.health.is_up() {
                p.health.record(false, &spec);
            }
        }
    }

    /// Starts the checks that are due.
    fn checks(&mut self, now: Instant) {
        let every = Duration::from_millis((self.check.interval_ms / 2).max(10));
        let timeout = Duration::from_millis(self.check.timeout_ms);
        let port = self.shared.spec.mesh_port;
        let due: Vec<(String, IpAddr)> = self
            .peers
            .iter()
            .filter(|(_, p)| !p.checking && now >= p.next)
            .map(|(n, p)| (n.clone(), p.vtep))
            .collect();
        for (node, vtep) in due {
            if let Some(p) = self.peers.get_mut(&node) {
                p.next = now + every;
                p.checking = true;
            }
            let from = self.shared.vtep;
            let started = connect_from(from, SocketAddr::new(vtep, port))
                .ok()
                .is_some_and(|sock| {
                    self.add_pending(
                        Pending::Check {
                            sock,
                            node: node.clone(),
                            sent: false,
                            buf: Vec::new(),
                        },
                        Interest::READABLE | Interest::WRITABLE,
                        now + timeout,
                    )
                });
            if !started {
                self.peer_result(&node, false, None);
            }
        }
    }

    /// Ends the setups past their deadline.
    fn expire(&mut self, now: Instant) {
        let late: Vec<usize> = self
            .pending
            .iter()
            .filter(|(_, (_, d))| now >= *d)
            .map(|(t, _)| *t)
            .collect();
        for t in late {
            match self.take_pending(t) {
                Some(Pending::Check { node, .. }) => self.peer_result(&node, false, None),
                Some(Pending::Connect {
                    client,
                    svc,
                    node,
                    tries,
                    ..
                }) => {
                    self.peer_failed(&node);
                    self.update_up();
                    self.dispatch(svc, client, tries);
                }
                Some(Pending::Inbound { sock }) => reset(&sock),
                None => {}
            }
        }
    }

    /// Accepts the clients of service `svc` on its published port, or (`vip`) those NAT
    /// brings from its virtual IP.
    fn accept_client(&mut self, svc: usize, vip: bool) {
        loop {
            let Some(s) = self.svcs.get(svc) else { return };
            let l = if vip {
                let Some(l) = &s.vip_listener else { return };
                l
            } else {
                &s.listener
            };
            match l.accept() {
                Ok((sock, _)) => {
                    let _ = sock.set_nodelay(true);
                    self.dispatch(svc, sock.into(), 0);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            }
        }
    }

    /// Sends a client of service `svc` to an endpoint (`tries` made already).
    fn dispatch(&mut self, svc: usize, client: std::net::TcpStream, tries: usize) {
        let me = self.me().to_string();
        let port = self.shared.spec.mesh_port;
        let Some(s) = self.svcs.get_mut(svc) else {
            return;
        };
        let peer = client
            .peer_addr()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip());
        let pick = (tries <= s.eps.len())
            .then(|| s.picker.pick(s.balance, &s.stats, peer))
            .flatten();
        let Some(i) = pick else {
            s.stats.refuse();
            tracing::debug!(service = %s.spec.spec, "service: no endpoint is up; refusing");
            reset(&client);
            return;
        };
        let e = s.eps[i].clone();
        let hold = s.stats.hold(i);
        let t = Target {
            net: s.spec.network.clone(),
            name: e.name.clone(),
            port: s.guest_port,
        };
        if e.node == me {
            let Some(l) = self.local.get(&t) else {
                reset(&client);
                return;
            };
            match TcpStream::connect(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), l.port)) {
                Ok(sock) => self
                    .splicer
                    .relay(SPLICE_BASE - svc as u64, client, sock, hold),
                Err(_) => reset(&client),
            }
            return;
        }
        let Some(vtep) = self.peers.get(&e.node).map(|p| p.vtep) else {
            reset(&client);
            return;
        };
        let timeout = Duration::from_millis(self.check.timeout_ms);
        let Ok(sock) = connect_from(self.shared.vtep, SocketAddr::new(vtep, port)) else {
            self.peer_failed(&e.node);
            self.update_up();
            return self.dispatch(svc, client, tries + 1);
        };
        let p = Pending::Connect {
            sock,
            client,
            svc,
            ep: i,
            node: e.node,
            hold,
            tries: tries + 1,
        };
        if !self.add_pending(p, Interest::WRITABLE, Instant::now() + timeout) {
            tracing::debug!("service: too many connections being set up");
        }
    }

    fn accept_mesh(&mut self) {
        loop {
            match self.mesh.accept() {
                Ok((sock, from)) => {
                    let ok = self.live.values().any(|v| *v == from.ip());
                    if !ok {
                        tracing::debug!(peer = %from, "service mesh: not a live member; closing");
                        reset(&sock);
                        continue;
                    }
                    let deadline = Instant::now() + HELLO_WAIT;
                    self.add_pending(Pending::Inbound { sock }, Interest::READABLE, deadline);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            }
        }
    }

    fn service_pending(&mut self, t: usize) {
        let Some((p, _)) = self.pending.get_mut(&t) else {
            return;
        };
        match p {
            Pending::Inbound { sock } => {
                let mut peek = [0u8; MAX_HELLO];
                let n = match sock.peek(&mut peek) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                    Err(_) => 0,
                };
                let len = match services::line_len(&peek[..n], MAX_HELLO) {
                    Ok(Some(len)) => len,
                    Ok(None) if n > 0 => return,
                    _ => {
                        self.take_pending(t);
                        return;
                    }
                };
                let Some(Pending::Inbound { sock }) = self.take_pending(t) else {
                    return;
                };
                self.inbound(sock, len);
            }
            Pending::Check {
                sock, sent, buf, ..
            } => {
                let step = check_io(sock, sent, buf);
                if matches!(step, CheckStep::Pending) {
                    return;
                }
                let Some(Pending::Check { node, .. }) = self.take_pending(t) else {
                    return;
                };
                match step {
                    CheckStep::Answered(up) => self.peer_result(&node, true, Some(up)),
                    _ => self.peer_result(&node, false, None),
                }
            }
            Pending::Connect { sock, .. } => {
                match sock.take_error() {
                    Ok(None) => {}
                    _ => return self.connect_failed(t),
                }
                match sock.peer_addr() {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                    Err(_) => return self.connect_failed(t),
                }
                let Some(Pending::Connect {
                    mut sock,
                    client,
                    svc,
                    ep,
                    node,
                    hold,
                    ..
                }) = self.take_pending(t)
                else {
                    return;
                };
                let Some(e) = self
                    .svcs
                    .get(svc)
                    .and_then(|s| s.eps.get(ep).map(|e| (s, e)))
                else {
                    reset(&client);
                    return;
                };
                let hello = Hello::Connect(Target {
                    net: e.0.spec.network.clone(),
                    name: e.1.name.clone(),
                    port: e.0.guest_port,
                })
                .line();
                if sock.write(hello.as_bytes()).ok() != Some(hello.len()) {
                    tracing::debug!(node, "service mesh: hello not sent");
                    reset(&client);
                    reset(&sock);
                    return;
                }
                self.splicer
                    .relay(SPLICE_BASE - svc as u64, client, sock, hold);
            }
        }
    }

    fn connect_failed(&mut self, t: usize) {
        if let Some(Pending::Connect {
            client,
            svc,
            node,
            tries,
            ..
        }) = self.take_pending(t)
        {
            tracing::debug!(
                node,
                "service mesh: connect failed; node out, trying another endpoint"
            );
            self.peer_failed(&node);
            self.update_up();
            self.dispatch(svc, client, tries);
        }
    }

    /// A mesh connection whose first line is `len` bytes long.
    fn inbound(&mut self, mut sock: TcpStream, len: usize) {
        let mut line = vec![0u8; len];
        if sock.read_exact(&mut line).is_err() {
            return;
        }
        match Hello::parse(&line) {
            Ok(Hello::Check) => {
                let up: BTreeSet<Target> = self
                    .local
                    .iter()
                    .filter(|(_, l)| l.stats.endpoints.first().is_some_and(|e| e.is_up()))
                    .map(|(t, _)| t.clone())
                    .collect();
                let _ = sock.write(services::up_line(&up).as_bytes());
            }
            Ok(Hello::Connect(t)) => {
                let Some(l) = self.local.get(&t) else {
                    tracing::debug!(endpoint = %t, "service mesh: not an endpoint here; closing");
                    reset(&sock);
                    return;
                };
                let to = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), l.port);
                match TcpStream::connect(to) {
                    Ok(peer) => self.splicer.relay(SPLICE_MESH, sock.into(), peer, None),
                    Err(_) => reset(&sock),
                }
            }
            Err(why) => {
                tracing::debug!(why, "service mesh: bad first line; closing");
                reset(&sock);
            }
        }
    }
}
