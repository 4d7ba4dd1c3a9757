//! The cluster thread (`usernet-cluster`): the etcd client on a tokio current-thread runtime of
//! its own. One session at a time: connect, take (or keep) the node's lease, register the node,
//! re-claim the addresses in use if the lease is new, read the members, then watch them and
//! keep the lease alive, refilling the DHCP servers' spare claims on a short tick. Any error
//! ends the session: the node is marked disconnected, the spare claims are given up, and a new
//! session starts after a backoff. Every etcd call is bounded by a timeout.
//!
//! A session talks to one endpoint: the first, starting after the one the last session failed
//! on, that answers and has a leader (so a dead member, or one cut off from the quorum, is
//! passed over at once; `require_leader` makes a member that loses its leader fail the calls
//! and watches of the session rather than leave them hanging). etcd's client would balance
//! over all endpoints, and keep sending some calls to a dead one.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    WatchOptions, WatchResponse, WatchStream,
};

use super::KeyTable;
use super::endpoints::Name;
use super::members::NodeRecord;
use super::{ClusterState, Shared, ipam, port_name};
use crate::control::Handle;
use crate::error::{Error, Result};

/// Bound of one etcd request.
const CALL: Duration = Duration::from_secs(3);
/// How often the thread checks for shutdown and refills the claims.
const TICK: Duration = Duration::from_millis(200);
/// Longest wait between two sessions.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

type Res<T> = std::result::Result<T, String>;

thread_local! {
    /// etcd requests made on this thread (every [`call`]): the node's count, as only its
    /// cluster thread talks to etcd. Published in `Status::requests`.
    static REQUESTS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Bounds an etcd call; errors become text. Counts it in [`REQUESTS`].
pub(super) async fn call<T, F>(what: &str, f: F) -> Res<T>
where
    F: std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
{
    REQUESTS.with(|n| n.set(n.get() + 1));
    match tokio::time::timeout(CALL, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer in {} s", CALL.as_secs())),
    }
}

/// Starts the thread.
/// A claim a control thread asks for (a port's fixed address), answered on `reply`.
struct ClaimReq {
    net: String,
    ip: Ipv4Addr,
    reply: std::sync::mpsc::Sender<std::result::Result<(), String>>,
    /// When the caller stops waiting: a request still queued then (etcd was unreachable) is
    /// dropped, never claimed behind a caller that was told it failed.
    until: std::time::Instant,
}

/// How long a control thread waits for the cluster thread to claim a fixed address.
const CLAIM_WAIT: Duration = Duration::from_secs(5);

pub(super) fn spawn(h: Handle, shared: Arc<Shared>) -> Result<()> {
    let options = connect_options(&shared)?;
    let (claim_tx, mut claim_rx) = tokio::sync::mpsc::unbounded_channel::<ClaimReq>();
    *shared.claim.lock() = Some(super::ClaimFn(Box::new(move |net: &str, ip: Ipv4Addr| {
        let (reply, answer) = std::sync::mpsc::channel();
        claim_tx
            .send(ClaimReq {
                net: net.to_string(),
                ip,
                reply,
                until: std::time::Instant::now() + CLAIM_WAIT,
            })
            .map_err(|_| "the cluster thread has stopped".to_string())?;
        answer.recv_timeout(CLAIM_WAIT).unwrap_or_else(|_| {
            Err(format!(
                "not claimed in etcd within {} s (is etcd reachable?)",
                CLAIM_WAIT.as_secs()
            ))
        })
    })));
    std::thread::Builder::new()
        .name("usernet-cluster".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "cluster: no runtime; the node stays out of the cluster");
                    return;
                }
            };
            let mut agent = Agent {
                h,
                shared,
                options,
                lease: 0,
                endpoint: 0,
                published: BTreeMap::new(),
                served: BTreeSet::new(),
                macs: Default::default(),
            };
            rt.block_on(agent.run(&mut claim_rx));
        })
        .map_err(|e| Error::Io("starting the cluster thread".into(), e))?;
    Ok(())
}

/// Connection options from the spec (TLS files read now, so a missing one is an error at start).
fn connect_options(sh: &Shared) -> Result<ConnectOptions> {
    let mut o = ConnectOptions::new()
        .with_connect_timeout(CALL)
        .with_timeout(CALL)
        .with_require_leader(true);
    let s = &sh.spec;
    if s.ca.is_some() || s.cert.is_some() {
        let read = |key: &str, p: &std::path::Path| {
            std::fs::read(p).map_err(|e| Error::Io(format!("cluster.{key}: {}", p.display()), e))
        };
        let mut tls = etcd_client::TlsOptions::new();
        if let Some(ca) = &s.ca {
            tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read("ca", ca)?));
        }
        if let (Some(c), Some(k)) = (&s.cert, &s.key) {
            tls = tls.identity(etcd_client::Identity::from_pem(
                read("cert", c)?,
                read("key", k)?,
            ));
        }
        o = o.with_tls(tls);
    }
    Ok(o)
}

/// The key tables the thread watches.
#[derive(Debug, Clone, Copy)]
enum Which {
    /// `PREFIX/nodes/`: the members.
    Nodes,
    /// `PREFIX/endpoints/`: the published names.
    Endpoints,
    /// `PREFIX/macs/`: the endpoints by MAC.
    Macs,
}

impl Which {
    fn table(self, st: &mut super::Status) -> &mut dyn KeyTable {
        match self {
            Which::Nodes => &mut st.members,
            Which::Endpoints => &mut st.endpoints,
            Which::Macs => &mut st.macs,
        }
    }
}

struct Agent {
    h: Handle,
    shared: Arc<Shared>,
    options: ConnectOptions,
    /// The lease of this node's keys (0: none yet).
    lease: i64,
    /// The index in `spec.etcd` of the endpoint the next session tries first.
    endpoint: usize,
    /// This node's DHCP names put in etcd: (network, name) -> address.
    published: BTreeMap<(String, String), Ipv4Addr>,
    /// Other nodes' names added to the gateways' DNS records.
    served: BTreeSet<Name>,
    /// Endpoints by MAC published and installed.
    macs: super::fdbsync::MacSync,
}

impl Agent {
    fn stopped(&self) -> bool {
        self.h.is_stopped()
    }

    fn set_state(&self, state: ClusterState, error: Option<String>) {
        let mut st = self.shared.status.lock();
        st.state = state;
        st.lease = self.lease;
        st.requests = REQUESTS.with(std::cell::Cell::get);
        if error.is_some() {
            st.last_error = error;
        }
    }

    async fn run(&mut self, claims: &mut tokio::sync::mpsc::UnboundedReceiver<ClaimReq>) {
        let mut backoff = Duration::from_millis(250);
        while !self.stopped() {
            match self.session(claims).await {
                Ok(()) => break,
                Err(e) => {
                    // A session that got connected starts the backoff over; the next one
                    // tries the other endpoints first.
                    if self.shared.status.lock().state == ClusterState::Connected {
                        backoff = Duration::from_millis(250);
                    }
                    self.endpoint = (self.endpoint + 1) % self.shared.spec.etcd.len().max(1);
                    tracing::warn!(error = %e, "cluster: etcd session ended; keeping the last state");
                    self.set_state(ClusterState::Disconnected, Some(e));
                    ipam::offline(&self.h, &self.shared);
                }
            }
            let until = tokio::time::Instant::now() + backoff;
            while tokio::time::Instant::now() < until && !self.stopped() {
                tokio::time::sleep(TICK.min(backoff)).await;
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        self.set_state(ClusterState::Stopped, None);
    }

    /// The node's record.
    fn record(&self) -> NodeRecord {
        NodeRecord {
            vtep: self.shared.vtep,
            networks: self
                .shared
                .nets
                .iter()
                .map(|n| (n.name.clone(), n.vni))
                .collect(),
        }
    }

    /// Keeps the current lease if etcd still has it, else takes a new one. True if new.
    async fn lease(&mut self, c: &mut Client) -> Res<bool> {
        if self.lease != 0 {
            let ttl = call("lease ttl", c.lease_time_to_live(self.lease, None)).await?;
            if ttl.ttl() > 0 {
                return Ok(false);
            }
        }
        let ttl = i64::from(self.shared.spec.ttl_s);
        let g = call("lease grant", c.lease_grant(ttl, None)).await?;
        self.lease = g.id();
        Ok(true)
    }

    /// A client of the first endpoint, from `self.endpoint` on, that answers and has a
    /// leader; the error lists why each was passed over.
    async fn connect(&mut self) -> Res<Client> {
        let eps = &self.shared.spec.etcd;
        let mut why = Vec::new();
        for k in 0..eps.len() {
            let i = (self.endpoint + k) % eps.len();
            let ep = &eps[i];
            let r = async {
                let mut c = call(
                    "connect",
                    Client::connect([ep.as_str()], Some(self.options.clone())),
                )
                .await?;
                let s = call("status", c.status()).await?;
                if s.leader() == 0 {
                    return Err("no leader".to_string());
                }
                Ok(c)
            }
            .await;
            match r {
                Ok(c) => {
                    self.endpoint = i;
                    return Ok(c);
                }
                Err(e) => why.push(format!("{ep}: {e}")),
            }
        }
        Err(format!("no etcd endpoint usable: {}", why.join("; ")))
    }

    /// One connected session; Ok only when the node stops.
    async fn session(
        &mut self,
        claims: &mut tokio::sync::mpsc::UnboundedReceiver<ClaimReq>,
    ) -> Res<()> {
        let shared = self.shared.clone();
        let spec = &shared.spec;
        self.set_state(ClusterState::Connecting, None);
        let mut c = self.connect().await?;
        let before = self.lease;
        let fresh = self.lease(&mut c).await?;
        let node_key = format!("{}/nodes/{}", spec.prefix, spec.node);
        // Register: create the key, or replace it if it is bound to our own lease; a key bound
        // to another lease is another live node with this name (or a restarted one's, which
        // goes with its TTL): never share a name, its address claims would be shared too.
        let record = self.record().to_json();
        // With a new lease, a key still bound to this node's previous one (expired, not yet
        // revoked) is ours to take over too.
        let mut registered = false;
        let mut cmps = vec![
            Compare::create_revision(node_key.as_str(), CompareOp::Equal, 0),
            Compare::lease(node_key.as_str(), CompareOp::Equal, self.lease),
        ];
        if fresh && before != 0 {
            cmps.push(Compare::lease(node_key.as_str(), CompareOp::Equal, before));
        }
        for cmp in cmps {
            let put = PutOptions::new().with_lease(self.lease);
            let t = Txn::new().when([cmp]).and_then([TxnOp::put(
                node_key.as_str(),
                record.as_str(),
                Some(put),
            )]);
            if call("register", c.txn(t)).await?.succeeded() {
                registered = true;
                break;
            }
        }
        if !registered {
            return Err(format!(
                "node name {:?} is in use: {node_key} belongs to another lease (another live node, \
                 or this node before a restart until its TTL runs out)",
                spec.node
            ));
        }
        if fresh {
            ipam::reclaim(&self.h, &self.shared, &mut c, self.lease).await?;
        }
        let mut watch = self.read_and_watch(&mut c, Which::Nodes).await?;
        self.reconcile();
        let mut ep_watch = self.read_and_watch(&mut c, Which::Endpoints).await?;
        self.reconcile_dns();
        let mut mac_watch = self.read_and_watch(&mut c, Which::Macs).await?;
        self.macs.reconcile(&self.h, &self.shared);
        // Our names go in again under this session's lease.
        self.published.clear();
        self.macs.new_session();
        let (mut keeper, mut alive) = call("keep-alive", c.lease_keep_alive(self.lease)).await?;
        self.set_state(ClusterState::Connected, None);
        tracing::info!(node = %spec.node, lease = self.lease, "cluster: connected");
        let ka_every = Duration::from_millis(u64::from(spec.ttl_s) * 1000 / 3);
        let mut ka = tokio::time::interval(ka_every);
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                _ = ka.tick() => {
                    call("keep-alive", keeper.keep_alive()).await?;
                    let r = call("keep-alive answer", alive.message()).await?;
                    match r {
                        Some(r) if r.ttl() > 0 => {}
                        _ => return Err("the lease expired".into()),
                    }
                }
                m = watch.message() => {
                    self.on_watch(m, Which::Nodes)?;
                    self.reconcile();
                    self.macs.reconcile(&self.h, &self.shared);
                }
                m = mac_watch.message() => {
                    self.on_watch(m, Which::Macs)?;
                    self.macs.reconcile(&self.h, &self.shared);
                }
                m = ep_watch.message() => {
                    self.on_watch(m, Which::Endpoints)?;
                    self.reconcile_dns();
                }
                Some(req) = claims.recv() => {
                    if std::time::Instant::now() >= req.until {
                        tracing::info!(network = %req.net, ip = %req.ip, "cluster: a fixed address's claim came after its caller gave up; not claimed");
                        continue;
                    }
                    let r = ipam::claim_fixed(&self.h, &self.shared, &mut c, self.lease, &req.net, req.ip).await;
                    let claimed = r.is_ok();
                    if req.reply.send(r).is_err() && claimed {
                        // The caller gave up meanwhile: its port was not made.
                        ipam::unclaim(&self.h, &self.shared, &mut c, &req.net, req.ip).await?;
                    }
                }
                _ = tick.tick() => {
                    if self.stopped() {
                        let _ = call("revoke", c.lease_revoke(self.lease)).await;
                        return Ok(());
                    }
                    ipam::refill(&self.h, &self.shared, &mut c, self.lease).await?;
                    self.publish(&mut c).await?;
                    self.macs.publish(&self.h, &self.shared, &mut c, self.lease).await?;
                    self.macs.reconcile(&self.h, &self.shared);
                    self.shared.status.lock().requests = REQUESTS.with(std::cell::Cell::get);
                }
            }
        }
    }

    /// Reads `w`'s keys whole into its table, then watches them from the next revision.
    async fn read_and_watch(&self, c: &mut Client, w: Which) -> Res<WatchStream> {
        let prefix = {
            let mut st = self.shared.status.lock();
            w.table(&mut st).prefix().to_string()
        };
        let all = call(
            "read",
            c.get(prefix.clone(), Some(GetOptions::new().with_prefix())),
        )
        .await?;
        let rev = all.header().map_or(0, |h| h.revision());
        {
            let mut st = self.shared.status.lock();
            let t = w.table(&mut st);
            t.clear();
            for kv in all.kvs() {
                if let Err(e) = t.put(kv.key(), kv.value()) {
                    tracing::warn!(reason = %e, "cluster: ignored a malformed key");
                }
            }
            st.revision = st.revision.max(rev);
        }
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(rev + 1);
        call("watch", c.watch(prefix, Some(opts))).await
    }

    /// Applies one message of `w`'s watch to its table.
    fn on_watch(
        &self,
        m: std::result::Result<Option<WatchResponse>, etcd_client::Error>,
        w: Which,
    ) -> Res<()> {
        let r = match m {
            Ok(Some(r)) => r,
            Ok(None) => return Err("a watch ended".into()),
            Err(e) => return Err(format!("watch: {e}")),
        };
        if r.canceled() {
            return Err(format!("a watch was cancelled: {}", r.cancel_reason()));
        }
        let mut st = self.shared.status.lock();
        let t = w.table(&mut st);
        for ev in r.events() {
            let Some(kv) = ev.kv() else { continue };
            match ev.event_type() {
                EventType::Put => {
                    if let Err(e) = t.put(kv.key(), kv.value()) {
                        tracing::warn!(reason = %e, "cluster: ignored a malformed key");
                    }
                }
                EventType::Delete => t.delete(kv.key()),
            }
        }
        if let Some(h) = r.header() {
            st.revision = st.revision.max(h.revision());
        }
        Ok(())
    }

    /// Puts this node's DHCP names in etcd (under the lease) and deletes those that went.
    async fn publish(&mut self, c: &mut Client) -> Res<()> {
        let mut want = BTreeMap::new();
        for n in &self.shared.nets {
            let Some(g) = self.h.gateway(&n.name) else {
                continue;
            };
            let Some(d) = &g.dhcp else { continue };
            for l in d.lock().leases(g.now_ms()) {
                if let Some(name) = l.hostname {
                    want.insert((n.name.clone(), name), l.ip);
                }
            }
        }
        if want == self.published {
            return Ok(());
        }
        let key = |net: &str, name: &str| self.shared.status.lock().endpoints.key(net, name);
        for ((net, name), ip) in &want {
            if self.published.get(&(net.clone(), name.clone())) != Some(ip) {
                let put = PutOptions::new().with_lease(self.lease);
                call("publish", c.put(key(net, name), ip.to_string(), Some(put))).await?;
            }
        }
        for (net, name) in self.published.keys() {
            if !want.contains_key(&(net.clone(), name.clone())) {
                call("unpublish", c.delete(key(net, name), None)).await?;
            }
        }
        self.published = want;
        Ok(())
    }

    /// Makes the gateways' DNS records of other nodes' names those etcd has.
    fn reconcile_dns(&mut self) {
        let nets: BTreeSet<String> = self.shared.nets.iter().map(|n| n.name.clone()).collect();
        let want = self.shared.status.lock().endpoints.remote(&nets);
        for (net, name, ip) in self.served.difference(&want) {
            self.h.dns_remove(net, name, Some(IpAddr::V4(*ip))).ok();
        }
        for (net, name, ip) in want.difference(&self.served) {
            if let Err(e) = self.h.dns_add(net, name, IpAddr::V4(*ip)) {
                tracing::warn!(network = %net, name = %name, error = %e, "cluster: remote name not added");
            }
        }
        self.served = want;
    }

    /// Makes every cluster network's remotes those of the live nodes that have it.
    fn reconcile(&self) {
        let want: Vec<_> = {
            let st = self.shared.status.lock();
            self.shared
                .nets
                .iter()
                .map(|n| {
                    (
                        n.name.clone(),
                        st.members.remotes(&n.name, n.vni, self.shared.vtep),
                    )
                })
                .collect()
        };
        for (net, remotes) in want {
            self.h.set_cluster_remotes(&net, &remotes);
        }
    }
}

impl Handle {
    /// Sets the remotes of cluster network `net`'s VXLAN port to `want`: adds the missing ones,
    /// removes the others (their learned MACs with them). Returns (added, removed).
    pub(crate) fn set_cluster_remotes(
        &self,
        net: &str,
        want: &std::collections::BTreeSet<IpAddr>,
    ) -> (usize, usize) {
        let port = port_name(net);
        let Ok(have) = self.vxlan_remotes(&port) else {
            return (0, 0);
        };
        let have: std::collections::BTreeSet<IpAddr> = have.into_iter().map(|r| r.remote).collect();
        let (mut added, mut removed) = (0, 0);
        for ip in want.difference(&have) {
            match self.vxlan_add_remote(&port, *ip) {
                Ok(()) => {
                    added += 1;
                    tracing::info!(network = net, remote = %ip, "cluster: remote added");
                }
                Err(e) => {
                    tracing::warn!(network = net, remote = %ip, error = %e, "cluster: remote not added")
                }
            }
        }
        for ip in have.difference(want) {
            if self.vxlan_rm_remote(&port, *ip).is_ok() {
                removed += 1;
                tracing::info!(network = net, remote = %ip, "cluster: remote removed");
            }
        }
        (added, removed)
    }
}
