//! Policy rules: ordered allow/deny rules per network and per port, applied between guests on
//! the bridge, to NAT egress and to port forwards.
//!
//! # Theory of operation
//!
//! A policy ([`rule::PolicySpec`]) is a default action and an ordered list of rules; the first
//! rule that matches a packet decides. Rules are stateless and match each packet's headers
//! ([`matcher::Packet`]): direction, protocol, source and destination CIDR, ports, ICMP type.
//!
//! Where a packet is checked, and from whose view:
//!
//! - **Between two guests** (a frame on the bridge from port A to port B; IPv4/IPv6 only,
//!   never ARP, NDP or other non-IP frames): A's view (direction `egress`) and B's view
//!   (direction `ingress`) must both allow it.
//! - **NAT egress** (a guest's packet to NAT): the sending port's view, `egress`.
//! - **Port forwards** (a connection or datagram from a host client to a guest): the
//!   receiving port's view, `ingress`; checked when the forward opens the connection (TCP) or
//!   for each datagram (UDP). Replies inside a forward's connection are not checked again.
//!
//! A view walks the port's rules, then the network's; the first match decides. With no match,
//! the port's default decides if it has one, else the network's (`allow` when unset). A
//! network rule's direction means `egress` = leaving through NAT, `ingress` = coming in through
//! a forward; between guests only network rules without a direction (`any`) apply (the
//! network's own rules are walked once per packet, and counted once).
//!
//! Frames from or to the gateway port (DHCP, DNS, ARP, NDP, and NAT's own frames) are not
//! checked on the bridge: NAT and forwards are checked in the gateway instead, with the
//! guest's addresses and the destination as the guest addressed it.
//!
//! The rule sets are an immutable [`Snapshot`] behind an `ArcSwap` in a [`Table`] (the same
//! read-copy-update as the bridge's topology): a change builds a new snapshot and swaps it in,
//! the datapath loads it per packet without a lock, and a flag ([`Table::active`]) makes a
//! node without any policy pay one relaxed load. Counters (packets, bytes) live in `Arc`s that
//! survive a rule's neighbours being added or removed.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arc_swap::{ArcSwap, Guard};
use parking_lot::Mutex;
use serde::Serialize;

/// A policy, rule or change that does not validate: the field and the reason. It converts
/// into [`crate::Error::Invalid`]; the policy room sits below the crate's error type (the
/// bridge checks rules), so it has an error of its own.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct Invalid {
    /// The field or key, e.g. `network[0].policy.rules[2].cidr`.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl Invalid {
    /// An [`Invalid`] for `field`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Result with the policy room's [`Invalid`].
pub type Result<T, E = Invalid> = std::result::Result<T, E>;
use Invalid as Error;

pub mod matcher;
pub mod rule;

pub use matcher::{Frag, Packet};
pub use rule::{Action, Direction, PolicySpec, Proto, Rule, RuleSpec};

/// Packets and bytes a rule (or a default) decided.
#[derive(Debug, Default)]
pub struct Hits {
    /// Packets.
    pub packets: AtomicU64,
    /// Bytes (of the frame on the bridge, of the IP packet in NAT).
    pub bytes: AtomicU64,
}

impl Hits {
    fn hit(&self, bytes: u64) {
        self.packets.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// `(packets, bytes)`.
    pub fn get(&self) -> (u64, u64) {
        (
            self.packets.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }
}

/// Whose policy: a network's or a port's (by the bridge's id numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// A network (`NetworkId.0`).
    Network(u32),
    /// A port (`PortId.0`).
    Port(u32),
}

/// One network's or port's checked policy with its counters.
#[derive(Debug)]
pub struct Compiled {
    /// The default as written (`None`: a port's falls through to its network's).
    pub default: Option<Action>,
    /// The rules as written.
    pub specs: Vec<RuleSpec>,
    /// The rules, checked.
    pub rules: Vec<Rule>,
    /// Each rule's counters.
    pub hits: Vec<Arc<Hits>>,
    /// The default's counters.
    pub default_hits: Arc<Hits>,
}

impl Compiled {
    /// Checks `spec`; errors name `path.…`.
    pub fn new(spec: &PolicySpec, path: &str) -> Result<Compiled> {
        let (default, rules) = spec.compile(path)?;
        Ok(Compiled {
            default,
            hits: rules.iter().map(|_| Arc::default()).collect(),
            specs: spec.rules.clone(),
            rules,
            default_hits: Arc::default(),
        })
    }

    /// The policy as written.
    pub fn spec(&self) -> PolicySpec {
        PolicySpec {
            default: self.default.map(|d| d.name().to_string()),
            rules: self.specs.clone(),
        }
    }

    fn rule_match(&self, dir: Direction, p: &Packet) -> Option<usize> {
        matcher::first_match(&self.rules, dir, p)
    }
}

/// How a packet travels, for [`Snapshot::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    /// On the bridge from one guest port to another.
    Between {
        /// Sending port.
        from: u32,
        /// Receiving port.
        to: u32,
    },
    /// From a guest port out through NAT.
    Out {
        /// Sending port.
        port: u32,
    },
    /// From a port forward to a guest (`None`: no port owns the address).
    In {
        /// Receiving port.
        port: Option<u32>,
    },
}

/// What denied a packet: the scope and the rule index (`None`: its default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denied {
    /// Whose policy.
    pub scope: Scope,
    /// The rule's index, or `None` for the default.
    pub rule: Option<usize>,
}

/// An immutable set of policies, by scope.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    map: HashMap<Scope, Arc<Compiled>, ahash::RandomState>,
}

impl Snapshot {
    /// The policy of `scope`.
    pub fn get(&self, scope: Scope) -> Option<&Arc<Compiled>> {
        self.map.get(&scope)
    }

    /// Every policy.
    pub fn all(&self) -> impl Iterator<Item = (&Scope, &Arc<Compiled>)> {
        self.map.iter()
    }

    /// Decides packet `p` (of `bytes` bytes) travelling `way` in network `net`, counting the
    /// rules (or defaults) that decided. `Ok` lets it through. No allocation.
    pub fn check(
        &self,
        net: u32,
        way: Way,
        p: &Packet,
        bytes: u64,
    ) -> std::result::Result<(), Denied> {
        let netp = self.map.get(&Scope::Network(net));
        let (net_dir, first, second) = match way {
            Way::Between { from, to } => (
                Direction::Any,
                (Some(from), Direction::Egress),
                Some((Some(to), Direction::Ingress)),
            ),
            Way::Out { port } => (Direction::Egress, (Some(port), Direction::Egress), None),
            Way::In { port } => (Direction::Ingress, (port, Direction::Ingress), None),
        };
        // The network's rules are walked once and each decision counted once per packet.
        let mut net = NetState {
            id: net,
            policy: netp.map(|a| &**a),
            dir: net_dir,
            matched: None,
            counted: false,
        };
        for (port, dir) in std::iter::once(first).chain(second) {
            let pp = port.and_then(|id| self.map.get(&Scope::Port(id)).map(|c| (id, &**c)));
            let (action, denied) = view(pp, dir, &mut net, p, bytes);
            if action == Action::Deny {
                return Err(denied);
            }
        }
        Ok(())
    }
}

struct NetState<'a> {
    id: u32,
    policy: Option<&'a Compiled>,
    dir: Direction,
    /// `None`: not walked yet; `Some(None)`: no rule matched.
    matched: Option<Option<usize>>,
    counted: bool,
}

/// One port's view: its rules, the network's rules, its default, the network's default.
fn view(
    port: Option<(u32, &Compiled)>,
    dir: Direction,
    net: &mut NetState<'_>,
    p: &Packet,
    bytes: u64,
) -> (Action, Denied) {
    if let Some((id, c)) = port
        && let Some(i) = c.rule_match(dir, p)
    {
        c.hits[i].hit(bytes);
        let d = Denied {
            scope: Scope::Port(id),
            rule: Some(i),
        };
        return (c.rules[i].action, d);
    }
    let Some(np) = net.policy else {
        return match port.and_then(|(id, c)| c.default.map(|a| (id, a, c))) {
            Some((id, a, c)) => {
                c.default_hits.hit(bytes);
                let d = Denied {
                    scope: Scope::Port(id),
                    rule: None,
                };
                (a, d)
            }
            None => (
                Action::Allow,
                Denied {
                    scope: Scope::Network(net.id),
                    rule: None,
                },
            ),
        };
    };
    let (dir_n, p_ref) = (net.dir, p);
    let m = *net
        .matched
        .get_or_insert_with(|| np.rule_match(dir_n, p_ref));
    if let Some(i) = m {
        if !net.counted {
            net.counted = true;
            np.hits[i].hit(bytes);
        }
        let d = Denied {
            scope: Scope::Network(net.id),
            rule: Some(i),
        };
        return (np.rules[i].action, d);
    }
    if let Some((id, c)) = port
        && let Some(a) = c.default
    {
        c.default_hits.hit(bytes);
        let d = Denied {
            scope: Scope::Port(id),
            rule: None,
        };
        return (a, d);
    }
    if !net.counted {
        net.counted = true;
        np.default_hits.hit(bytes);
    }
    let d = Denied {
        scope: Scope::Network(net.id),
        rule: None,
    };
    (np.default.unwrap_or(Action::Allow), d)
}

/// The node's policies: a [`Snapshot`] swapped atomically (see the module docs).
#[derive(Debug, Default)]
pub struct Table {
    active: AtomicBool,
    snap: ArcSwap<Snapshot>,
    writer: Mutex<()>,
}

/// One rule in a listing.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct RuleRow {
    /// Position (first match wins); `None` for the default.
    pub index: Option<usize>,
    /// `allow` or `deny`.
    pub action: &'static str,
    /// The rule as written (`None` for the default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<RuleSpec>,
    /// Packets it decided.
    pub packets: u64,
    /// Bytes of those packets.
    pub bytes: u64,
}

impl Table {
    /// True when any network or port has a policy: the datapath's one check.
    #[inline]
    pub fn active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// The current snapshot (lock-free).
    pub fn load(&self) -> Guard<Arc<Snapshot>> {
        self.snap.load()
    }

    fn update<T>(&self, f: impl FnOnce(&mut Snapshot) -> Result<T>) -> Result<T> {
        let _w = self.writer.lock();
        let mut s = Snapshot::clone(&self.snap.load());
        let r = f(&mut s)?;
        let any = !s.map.is_empty();
        self.snap.store(Arc::new(s));
        self.active.store(any, Ordering::Relaxed);
        Ok(r)
    }

    /// Sets (replaces) the policy of `scope`; errors name `path.…`. An empty spec (no
    /// default, no rules) removes it.
    pub fn set(&self, scope: Scope, spec: &PolicySpec, path: &str) -> Result<()> {
        let c = Compiled::new(spec, path)?;
        self.update(|s| {
            if c.default.is_none() && c.rules.is_empty() {
                s.map.remove(&scope);
            } else {
                s.map.insert(scope, Arc::new(c));
            }
            Ok(())
        })
    }

    /// Forgets the policy of `scope` (its network or port was removed).
    pub fn remove(&self, scope: Scope) {
        let _ = self.update(|s| {
            s.map.remove(&scope);
            Ok(())
        });
    }

    /// Inserts `rule` at `index` (default: the end) of `scope`'s rules; the other rules keep
    /// their counters. Returns the index it got. Errors name `rule.FIELD` or `index`.
    pub fn add_rule(&self, scope: Scope, index: Option<usize>, rule: &RuleSpec) -> Result<usize> {
        let r = rule.compile("rule")?;
        self.update(|s| {
            let old = s.map.get(&scope);
            let n = old.map_or(0, |c| c.rules.len());
            let at = index.unwrap_or(n);
            if at > n {
                return Err(Error::new(
                    "index",
                    format!("{at} is past the end ({n} rules)"),
                ));
            }
            if n >= rule::MAX_RULES {
                return Err(Error::new(
                    "rule",
                    format!("the policy has {n} rules, the most"),
                ));
            }
            let mut c = match old {
                Some(o) => Compiled {
                    default: o.default,
                    specs: o.specs.clone(),
                    rules: o.rules.clone(),
                    hits: o.hits.clone(),
                    default_hits: o.default_hits.clone(),
                },
                None => Compiled::new(&PolicySpec::default(), "policy")?,
            };
            c.specs.insert(at, rule.clone());
            c.rules.insert(at, r);
            c.hits.insert(at, Arc::default());
            s.map.insert(scope, Arc::new(c));
            Ok(at)
        })
    }

    /// Sets the default of `scope` (`None`: a port's falls through to its network's, a
    /// network's is `allow`); the rules keep their counters.
    pub fn set_default(&self, scope: Scope, default: Option<Action>) -> Result<()> {
        self.update(|s| {
            let c = match s.map.get(&scope) {
                Some(o) => Compiled {
                    default,
                    specs: o.specs.clone(),
                    rules: o.rules.clone(),
                    hits: o.hits.clone(),
                    default_hits: o.default_hits.clone(),
                },
                None => Compiled {
                    default,
                    ..Compiled::new(&PolicySpec::default(), "policy")?
                },
            };
            if c.rules.is_empty() && c.default.is_none() {
                s.map.remove(&scope);
            } else {
                s.map.insert(scope, Arc::new(c));
            }
            Ok(())
        })
    }

    /// Removes rule `index` of `scope`; returns it. The policy goes when it has neither rules
    /// nor a default left.
    pub fn remove_rule(&self, scope: Scope, index: usize) -> Result<RuleSpec> {
        self.update(|s| {
            let Some(old) = s.map.get(&scope) else {
                return Err(Error::new("index", format!("{index}: there are no rules")));
            };
            if index >= old.rules.len() {
                return Err(Error::new(
                    "index",
                    format!("{index} is past the end ({} rules)", old.rules.len()),
                ));
            }
            let mut c = Compiled {
                default: old.default,
                specs: old.specs.clone(),
                rules: old.rules.clone(),
                hits: old.hits.clone(),
                default_hits: old.default_hits.clone(),
            };
            let spec = c.specs.remove(index);
            c.rules.remove(index);
            c.hits.remove(index);
            if c.rules.is_empty() && c.default.is_none() {
                s.map.remove(&scope);
            } else {
                s.map.insert(scope, Arc::new(c));
            }
            Ok(spec)
        })
    }

    /// The rules of `scope` with their counters, then its default (when it has one; a
    /// network's is listed always, `allow` when unset).
    pub fn rows(&self, scope: Scope) -> Vec<RuleRow> {
        let snap = self.load();
        let c = snap.get(scope);
        let mut v: Vec<RuleRow> = c
            .map(|c| {
                c.specs
                    .iter()
                    .zip(&c.rules)
                    .zip(&c.hits)
                    .enumerate()
                    .map(|(i, ((s, r), h))| {
                        let (packets, bytes) = h.get();
                        RuleRow {
                            index: Some(i),
                            action: r.action.name(),
                            rule: Some(s.clone()),
                            packets,
                            bytes,
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        let default = c.and_then(|c| c.default);
        if default.is_some() || matches!(scope, Scope::Network(_)) {
            let (packets, bytes) = c.map(|c| c.default_hits.get()).unwrap_or_default();
            v.push(RuleRow {
                index: None,
                action: default.unwrap_or(Action::Allow).name(),
                rule: None,
                packets,
                bytes,
            });
        }
        v
    }
}

#[cfg(test)]
mod tests;
