//! Events: what changes in the node, as a stream of JSON objects for whoever subscribes
//! (`{"op": "subscribe"}` on the control socket, `usernet ctl events`, [`Handle::subscribe`]).
//!
//! # Theory of operation
//!
//! Changes the control plane makes itself (ports and forwards added or removed through the
//! [`Handle`]) are published as they happen. For the rest the datapath is never asked to
//! report anything: the control plane's watch thread compares
//! what it can already read (the topology's ports, each gateway's leases, forwards and NAT
//! counters) with what it saw last time, every [`TICK`] while anyone subscribes, and publishes
//! the differences, in this order within a tick: ports added, leases granted, forwards added,
//! forward endpoints gone down or back up (health checks), flows refused, policy denials,
//! DNS policy denials, forwards removed, leases released, ports removed. Nothing is tracked while
//! nobody listens; a new subscriber starts from the current state (it sees what changes after
//! it subscribed).
//!
//! Refused NAT flows are sampled: one event per network and reason per tick, with the count
//! since the previous one, so a flood of refusals costs a subscriber one line per tick. Policy
//! denials likewise: one `policy_denied` per rule (or deny default) per tick, with its count, and
//! one `dns_denied` per network per tick for names its DNS policy denied.
//!
//! Each subscriber has a bounded queue ([`QUEUE`] events). Publishing never blocks: a
//! subscriber whose queue is full is dropped (its stream ends with a `dropped` line when it
//! can still be written), and the others go on.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::json;

use super::Handle;
use super::api::Request;
use crate::wire::Mac;

/// How often the watch thread looks for changes while anyone subscribes.
pub const TICK: Duration = Duration::from_millis(100);
/// Events a subscriber may have waiting; one more and it is dropped.
pub const QUEUE: usize = 4096;

/// One change in the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// A port joined a network (a trunk port: its home network).
    PortAdded {
        /// Port name.
        port: String,
        /// Network.
        network: String,
        /// Link kind (`tap`, `packet`, `stream`, `vxlan`, `memory`, `gateway`...).
        kind: String,
    },
    /// A port left: removed through the API, or its link went away (TAP deleted, namespace
    /// gone, VM disconnected).
    PortRemoved {
        /// Port name.
        port: String,
        /// Network.
        network: String,
    },
    /// A guest's DHCP lease was granted (bound; renewals of the same address are not events).
    LeaseGranted {
        /// Network.
        network: String,
        /// Client MAC.
        mac: Mac,
        /// Leased address.
        ip: std::net::Ipv4Addr,
        /// Registered DNS name, if any.
        #[serde(skip_serializing_if = "Option::is_none")]
        hostname: Option<String>,
    },
    /// A lease ended (released by the guest, declined, or expired).
    LeaseReleased {
        /// Network.
        network: String,
        /// Client MAC.
        mac: Mac,
        /// The address.
        ip: std::net::Ipv4Addr,
    },
    /// A port forward was added.
    ForwardAdded {
        /// Network.
        network: String,
        /// Its id.
        id: u64,
        /// The `-p` spec.
        publish: String,
        /// Target endpoint (a list for several).
        to: crate::nat::forward::Targets,
    },
    /// A port forward was removed.
    ForwardRemoved {
        /// Network.
        network: String,
        /// Its id.
        id: u64,
        /// The `-p` spec.
        publish: String,
    },
    /// A port forward's endpoint went down (its health checks fail) or came back up.
    EndpointState {
        /// Network.
        network: String,
        /// The forward's id.
        id: u64,
        /// The endpoint (as in `to`).
        endpoint: String,
        /// `up` or `down`.
        state: &'static str,
    },
    /// Guest traffic the NAT refused since the previous event of this kind (sampled: one
    /// event per network and reason per tick).
    FlowRefused {
        /// Network.
        network: String,
        /// `limit` (a flow limit), `host` (a host address the guest may not reach),
        /// `unreachable` (the host's network said so), `ping_forbidden`.
        reason: &'static str,
        /// Refusals since the previous `flow_refused` of this network and reason.
        count: u64,
    },
    /// Packets a policy rule (or a deny default) denied since the previous event of this rule
    /// (sampled: one event per rule per tick; see [`crate::policy`]).
    PolicyDenied {
        /// Network.
        network: String,
        /// The port whose policy holds the rule (absent: the network's).
        #[serde(skip_serializing_if = "Option::is_none")]
        port: Option<String>,
        /// The rule's index (absent: the default).
        #[serde(skip_serializing_if = "Option::is_none")]
        rule: Option<usize>,
        /// Packets denied since the previous `policy_denied` of this rule.
        count: u64,
    },
    /// DNS queries the gateway's name policy denied since the previous event of this network
    /// (sampled: one event per network per tick; see [`crate::gateway::dns::policy`]).
    DnsDenied {
        /// Network.
        network: String,
        /// Queries denied since the previous `dns_denied` of this network.
        count: u64,
    },
}

/// An event as a subscriber receives it: its sequence number and time, then its fields.
#[derive(Debug, Clone, Serialize)]
pub struct Stamped {
    /// Increases by one with every event published (gaps: events before subscribing).
    pub seq: u64,
    /// Seconds since the Unix epoch.
    pub ts: f64,
    /// The event.
    #[serde(flatten)]
    pub event: Event,
}

struct Sub {
    tx: Sender<Arc<Stamped>>,
    dropped: Arc<AtomicBool>,
}

/// The subscribers and what the watch thread last saw (see the module docs).
#[derive(Default)]
pub(crate) struct EventBus {
    subs: Mutex<Vec<Sub>>,
    seq: AtomicU64,
    seen: Mutex<Option<Seen>>,
}

/// A subscription: events in order, until it is dropped for being slow or the node stops.
pub struct Subscription {
    rx: Receiver<Arc<Stamped>>,
    dropped: Arc<AtomicBool>,
}

impl Subscription {
    /// The next event, waiting at most `timeout`; `None` on timeout.
    pub fn next_timeout(&self, timeout: Duration) -> Option<Arc<Stamped>> {
        self.rx.recv_timeout(timeout).ok()
    }

    /// True once the subscription was dropped because its queue filled up.
    pub fn is_dropped(&self) -> bool {
        self.dropped.load(Ordering::Acquire)
    }
}

impl EventBus {
    fn subscribe(&self) -> Subscription {
        let (tx, rx) = bounded(QUEUE);
        let dropped = Arc::new(AtomicBool::new(false));
        self.subs.lock().push(Sub {
            tx,
            dropped: dropped.clone(),
        });
        Subscription { rx, dropped }
    }

    fn has_subscribers(&self) -> bool {
        !self.subs.lock().is_empty()
    }

    /// Sends `event` to every subscriber, dropping those whose queue is full or gone.
    pub(crate) fn publish(&self, event: Event) {
        let mut subs = self.subs.lock();
        if subs.is_empty() {
            return;
        }
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let ev = Arc::new(Stamped {
            seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1,
            ts,
            event,
        });
        subs.retain(|s| match s.tx.try_send(ev.clone()) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                s.dropped.store(true, Ordering::Release);
                tracing::warn!("an event subscriber fell {QUEUE} events behind: dropped");
                false
            }
            Err(TrySendError::Disconnected(_)) => false,
        });
    }
}

impl EventBus {
    /// A change the control plane made itself (a port or forward added or removed through
    /// [`Handle`]): published at once rather than at the next tick, so that a port that comes
    /// and goes within one tick is still seen; and only once (the tick's state learns it too,
    /// and whichever of the two sees the change first reports it).
    pub(crate) fn noted(&self, event: Event) {
        let mut seen = self.seen.lock();
        let Some(s) = seen.as_mut() else {
            return; // Nobody subscribes.
        };
        let new = match &event {
            Event::PortAdded {
                port,
                network,
                kind,
            } => s
                .ports
                .insert(port.clone(), (network.clone(), kind.clone()))
                .is_none(),
            Event::PortRemoved { port, .. } => s.ports.remove(port).is_some(),
            Event::ForwardAdded {
                network,
                id,
                publish,
                to,
            } => s
                .forwards
                .insert((network.clone(), *id), (publish.clone(), to.clone()))
                .is_none(),
            Event::ForwardRemoved { network, id, .. } => {
                s.forwards.remove(&(network.clone(), *id)).is_some()
            }
            _ => true,
        };
        if new {
            self.publish(event);
        }
    }
}

/// What the node looked like at the last tick.
#[derive(Default)]
struct Seen {
    ports: BTreeMap<String, (String, String)>,
    leases: BTreeMap<(String, Mac), (std::net::Ipv4Addr, Option<String>)>,
    forwards: BTreeMap<(String, u64), (String, crate::nat::forward::Targets)>,
    refused: HashMap<(String, &'static str), u64>,
    /// Deny counters by identity (a rule's counter outlives index changes).
    denied: BTreeMap<usize, (String, Option<String>, Option<usize>, u64)>,
    /// Each gateway's DNS policy denials.
    dns_denied: BTreeMap<String, u64>,
    endpoints: BTreeMap<(String, u64, String), bool>,
}

fn snapshot(h: &Handle) -> Seen {
    let mut s = Seen::default();
    for p in h.ports() {
        s.ports.insert(p.name, (p.network, p.kind));
    }
    let gateways: Vec<_> = h.node.gateways.lock().values().cloned().collect();
    for g in gateways {
        let net = g.cfg.network.clone();
        for l in g.leases() {
            if l.state == crate::gateway::dhcp::LeaseState::Bound {
                s.leases.insert((net.clone(), l.mac), (l.ip, l.hostname));
            }
        }
        for f in g.forwards.lock().iter() {
            s.forwards
                .insert((net.clone(), f.id), (f.publish.clone(), f.to.clone()));
            if let Some(st) = h.node.forward_stats.lock().get(&f.id) {
                for e in &st.endpoints {
                    s.endpoints
                        .insert((net.clone(), f.id, e.name.clone()), e.is_up());
                }
            }
        }
        s.dns_denied
            .insert(net.clone(), g.dns.stats().policy_denied);
        let c = &g.nat_counters;
        for (reason, n) in [
            ("limit", &c.refused_limit),
            ("host", &c.refused_host),
            ("unreachable", &c.unreachable),
            ("ping_forbidden", &c.ping_forbidden),
        ] {
            s.refused
                .insert((net.clone(), reason), n.load(Ordering::Relaxed));
        }
    }
    for (id, network, port, rule, n) in h.deny_counters() {
        s.denied.insert(id, (network, port, rule, n));
    }
    s
}

/// The events that turn `old` into `new`, in the module docs' order.
fn diff(old: &Seen, new: &Seen) -> Vec<Event> {
    let mut out = Vec::new();
    for (port, (network, kind)) in &new.ports {
        if !old.ports.contains_key(port) {
            out.push(Event::PortAdded {
                port: port.clone(),
                network: network.clone(),
                kind: kind.clone(),
            });
        }
    }
    for ((network, mac), (ip, hostname)) in &new.leases {
        if old.leases.get(&(network.clone(), *mac)).map(|x| x.0) != Some(*ip) {
            out.push(Event::LeaseGranted {
                network: network.clone(),
                mac: *mac,
                ip: *ip,
                hostname: hostname.clone(),
            });
        }
    }
    for ((network, id), (publish, to)) in &new.forwards {
        if !old.forwards.contains_key(&(network.clone(), *id)) {
            out.push(Event::ForwardAdded {
                network: network.clone(),
                id: *id,
                publish: publish.clone(),
                to: to.clone(),
            });
        }
    }
    for ((network, id, endpoint), up) in &new.endpoints {
        let key = (network.clone(), *id, endpoint.clone());
        if old.endpoints.get(&key).is_some_and(|was| was != up) {
            out.push(Event::EndpointState {
                network: network.clone(),
                id: *id,
                endpoint: endpoint.clone(),
                state: if *up { "up" } else { "down" },
            });
        }
    }
    let refused: BTreeSet<_> = new.refused.keys().collect();
    for key in refused {
        let now = new.refused[key];
        let before = old.refused.get(key).copied().unwrap_or(now);
        if now > before {
            out.push(Event::FlowRefused {
                network: key.0.clone(),
                reason: key.1,
                count: now - before,
            });
        }
    }
    for (id, (network, port, rule, now)) in &new.denied {
        let before = old.denied.get(id).map_or(*now, |d| d.3);
        if *now > before {
            out.push(Event::PolicyDenied {
                network: network.clone(),
                port: port.clone(),
                rule: *rule,
                count: now - before,
            });
        }
    }
    for (network, now) in &new.dns_denied {
        let before = old.dns_denied.get(network).copied().unwrap_or(*now);
        if *now > before {
            out.push(Event::DnsDenied {
                network: network.clone(),
                count: now - before,
            });
        }
    }
    for ((network, id), (publish, _)) in &old.forwards {
        if !new.forwards.contains_key(&(network.clone(), *id)) {
            out.push(Event::ForwardRemoved {
                network: network.clone(),
                id: *id,
                publish: publish.clone(),
            });
        }
    }
    for ((network, mac), (ip, _)) in &old.leases {
        if new.leases.get(&(network.clone(), *mac)).map(|x| x.0) != Some(*ip) {
            out.push(Event::LeaseReleased {
                network: network.clone(),
                mac: *mac,
                ip: *ip,
            });
        }
    }
    for (port, (network, _)) in &old.ports {
        if !new.ports.contains_key(port) {
            out.push(Event::PortRemoved {
                port: port.clone(),
                network: network.clone(),
            });
        }
    }
    out
}

/// One look for changes (the watch thread calls it every [`TICK`]): publishes them to the
/// subscribers; does nothing and forgets the state while there are none.
pub(crate) fn tick(h: &Handle) {
    let bus = &h.node.events;
    if !bus.has_subscribers() {
        *bus.seen.lock() = None;
        return;
    }
    let mut seen = bus.seen.lock();
    let now = snapshot(h);
    if let Some(old) = seen.as_ref() {
        for e in diff(old, &now) {
            bus.publish(e);
        }
    }
    *seen = Some(now);
}

impl Handle {
    /// Subscribes to the node's events (see the module docs). Events start with the first
    /// change after this call.
    pub fn subscribe(&self) -> Subscription {
        let bus = &self.node.events;
        let sub = bus.subscribe();
        // The first subscriber: take the baseline now, so that what happens from here on is
        // reported (not only what happens after the watch thread's next tick).
        let mut seen = bus.seen.lock();
        if seen.is_none() {
            *seen = Some(snapshot(self));
        }
        sub
    }
}

/// Serves a `subscribe` request on its control connection: one JSON line (the answer), then
/// one line per event until the client goes, the subscription is dropped or the node stops.
/// Returns `false` when `line` is not a subscribe request (the caller answers it as usual).
pub(crate) fn stream(h: &Handle, line: &str, conn: &UnixStream) -> bool {
    let Ok(Request::Subscribe {}) = serde_json::from_str::<Request>(line) else {
        return false;
    };
    let sub = h.subscribe();
    let mut out = conn;
    // A client that stops reading for this long is dropped (the node never waits).
    let _ = conn.set_write_timeout(Some(Duration::from_secs(10)));
    let _ = conn.set_read_timeout(Some(Duration::from_millis(1)));
    if writeln!(
        out,
        "{}",
        json!({ "ok": true, "result": { "subscribed": true } })
    )
    .is_err()
    {
        return true;
    }
    loop {
        if h.is_stopped() || client_gone(conn) {
            return true;
        }
        if sub.is_dropped() {
            let _ = writeln!(
                out,
                "{}",
                json!({ "event": "dropped", "reason": format!("more than {QUEUE} events behind") })
            );
            return true;
        }
        let Some(ev) = sub.next_timeout(Duration::from_millis(200)) else {
            continue;
        };
        let Ok(text) = serde_json::to_string(&*ev) else {
            continue;
        };
        if writeln!(out, "{text}").is_err() {
            return true;
        }
    }
}

/// True when the client closed its end (or sent anything: a subscription takes no input).
fn client_gone(conn: &UnixStream) -> bool {
    let mut b = [0u8; 64];
    match std::io::Read::read(&mut &*conn, &mut b) {
        Ok(_) => true,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock
                | std::io::ErrorKind::TimedOut
                | std::io::ErrorKind::Interrupted
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(n: u8) -> Mac {
        Mac([2, 0, 0, 0, 0, n])
    }

    #[test]
    fn diff_reports_changes_in_order() {
        let mut old = Seen::default();
        old.ports.insert("gone".into(), ("n".into(), "tap".into()));
        old.leases.insert(
            ("n".into(), mac(1)),
            ("10.0.0.5".parse().expect("ip"), None),
        );
        old.refused.insert(("n".into(), "limit"), 3);
        let mut new = Seen::default();
        new.ports.insert("web".into(), ("n".into(), "tap".into()));
        new.leases.insert(
            ("n".into(), mac(2)),
            ("10.0.0.6".parse().expect("ip"), Some("web".into())),
        );
        new.forwards
            .insert(("n".into(), 7), ("8080:80".into(), "web".into()));
        new.refused.insert(("n".into(), "limit"), 5);
        old.endpoints.insert(("n".into(), 7, "web".into()), true);
        new.endpoints.insert(("n".into(), 7, "web".into()), false);
        let kinds: Vec<String> = diff(&old, &new)
            .iter()
            .map(|e| {
                serde_json::to_value(e).expect("json")["event"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "port_added",
                "lease_granted",
                "forward_added",
                "endpoint_state",
                "flow_refused",
                "lease_released",
                "port_removed"
            ]
        );
        let refused = diff(&old, &new)
            .into_iter()
            .find(|e| matches!(e, Event::FlowRefused { .. }));
        assert_eq!(
            refused,
            Some(Event::FlowRefused {
                network: "n".into(),
                reason: "limit",
                count: 2
            })
        );
        assert!(diff(&new, &new).is_empty(), "no change, no event");
    }

    #[test]
    fn policy_denials_are_sampled_per_rule() {
        let mut old = Seen::default();
        old.denied.insert(1, ("n".into(), None, Some(0), 4));
        let mut new = Seen::default();
        new.denied.insert(1, ("n".into(), None, Some(0), 10));
        // A rule first seen now starts from its count: no event for what came before.
        new.denied
            .insert(2, ("n".into(), Some("c1".into()), None, 3));
        assert_eq!(
            diff(&old, &new),
            [Event::PolicyDenied {
                network: "n".into(),
                port: None,
                rule: Some(0),
                count: 6
            }]
        );
        let v = serde_json::to_value(&diff(&old, &new)[0]).expect("json");
        assert_eq!(v["event"], "policy_denied");
    }

    #[test]
    fn dns_denials_are_sampled_per_network() {
        let mut old = Seen::default();
        old.dns_denied.insert("n".into(), 2);
        let mut new = Seen::default();
        new.dns_denied.insert("n".into(), 7);
        new.dns_denied.insert("m".into(), 5); // first seen: no event for the past
        let d = diff(&old, &new);
        assert_eq!(
            d,
            [Event::DnsDenied {
                network: "n".into(),
                count: 5
            }]
        );
        let v = serde_json::to_value(&d[0]).expect("json");
        assert_eq!(v["event"], "dns_denied");
        assert!(diff(&new, &new).is_empty());
    }

    #[test]
    fn a_slow_subscriber_is_dropped_and_others_go_on() {
        let bus = EventBus::default();
        let slow = bus.subscribe();
        let fast = bus.subscribe();
        let ev = || Event::PortRemoved {
            port: "p".into(),
            network: "n".into(),
        };
        for _ in 0..QUEUE {
            bus.publish(ev());
            assert!(fast.next_timeout(Duration::ZERO).is_some());
        }
        assert!(!slow.is_dropped());
        bus.publish(ev());
        assert!(slow.is_dropped(), "full queue: dropped");
        assert!(
            fast.next_timeout(Duration::ZERO).is_some(),
            "the other goes on"
        );
        assert_eq!(bus.subs.lock().len(), 1);
        let first = slow.next_timeout(Duration::ZERO).expect("queued");
        assert_eq!(first.seq, 1);
    }
}
