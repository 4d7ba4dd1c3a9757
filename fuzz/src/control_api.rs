//! `control_api`: request lines (the control socket reads one JSON request per line) parsed and
//! executed against a running engine.
//!
//! # Input
//!
//! Text, split into lines; at most [`MAX_LINES`] lines are used. Each line that parses as a
//! [`Request`] must serialize (as text and as a `serde_json::Value`) to JSON that parses back
//! to an equal request. Then it runs through `control::api::handle_line`, exactly as the
//! control socket would run it, on one [`Engine`] per process (started on first use, reused).
//!
//! # The engine
//!
//! Before every input the engine is reset to the same state: every network is removed, then
//! `net0` (a gateway: 10.88.0.0/24, fd88::/64, DNS upstream 127.0.0.1:9, so nothing ever
//! leaves the machine) with memory ports `p0` and `p1`, and `net1` (no gateway) with memory
//! port `q0`, are created. So an input's outcome does not depend on the inputs before it.
//!
//! Nothing touches the kernel beyond the engine's own threads, pollers and (unused) gateway
//! sockets; requests that would are rewritten or skipped before they run:
//! - `add_port` whose spec is valid (a `tap`, `netns`, `packet` or `stream` backend) gets a
//!   memory link instead (same network, name and policy, through `Handle::add_port`); an
//!   invalid spec runs as it is (and fails before any link is opened);
//! - `add_network` that starts a gateway gets `dns_upstreams = ["127.0.0.1:9"]` when it names
//!   none, and every non-loopback upstream it names becomes `127.0.0.1:9`; past
//!   [`MAX_NETWORKS`] networks or [`MAX_GATEWAYS`] gateways it is skipped;
//! - `forward_add` (binds host ports) and `shutdown` (stops the shared engine) are skipped.
//!
//! # Invariants, after every request
//! - the response is an object with a boolean `ok`, and `result` or a string `error`;
//! - a refused request changes neither the set of networks nor the set of ports;
//! - ports have unique names; every port is listed by exactly its network (a trunk port by
//!   each network it carries); every network's
//!   FDB holds at most its cap;
//! - `add_network` that succeeded: the network exists, with a gateway exactly when one was
//!   asked for; `remove_network` / `remove_port` that succeeded: it is gone (with its ports);
//!   `dns_add` that succeeded: `dns_ls` lists the address under the name; `dns_rm` that
//!   succeeded: the address (or the whole name) is gone;
//! - every gateway's `leases` and `gateways` (info) answer.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::{Mutex, OnceLock};

use serde_json::Value;
use usernet::bridge::PortPolicy;
use usernet::control::api::{self, Request};
use usernet::link::memory::MemoryLink;
use usernet::{Engine, EngineConfig, Handle};

/// Most request lines per input.
pub const MAX_LINES: usize = 16;
/// Most networks the engine may hold (further `add_network`s are skipped).
pub const MAX_NETWORKS: usize = 6;
/// Most gateways (each is a thread).
pub const MAX_GATEWAYS: usize = 3;

/// The shared engine and the peer ends of its memory ports (dropped at the next reset).
struct Rig {
    h: Handle,
    peers: Vec<MemoryLink>,
    _engine: Engine,
}

fn rig() -> &'static Mutex<Rig> {
    static RIG: OnceLock<Mutex<Rig>> = OnceLock::new();
    RIG.get_or_init(|| {
        let mut cfg = EngineConfig::default();
        cfg.loops = 1;
        let engine = Engine::start(cfg).expect("engine starts");
        Mutex::new(Rig {
            h: engine.handle(),
            peers: Vec::new(),
            _engine: engine,
        })
    })
}

/// One input (not UTF-8: ignored, as the server's line reader would refuse it).
pub fn control_api(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let reqs: Vec<Request> = text
        .lines()
        .take(MAX_LINES)
        .filter_map(round_trip)
        .collect();
    if reqs.is_empty() {
        return;
    }
    let mut rig = rig().lock().unwrap_or_else(|e| e.into_inner());
    reset(&mut rig);
    for req in reqs {
        run(&mut rig, req);
    }
}

/// Parses one line; whatever parses must round-trip through JSON text and `Value`.
fn round_trip(line: &str) -> Option<Request> {
    let req = serde_json::from_str::<Request>(line).ok()?;
    let json = serde_json::to_string(&req).expect("a parsed request serializes");
    let back: Request = match serde_json::from_str(&json) {
        Ok(r) => r,
        Err(e) => panic!("{req:?} serialized as {json} which does not parse: {e}"),
    };
    assert_eq!(back, req, "round trip through {json}");
    let value = serde_json::to_value(&req).expect("a parsed request serializes to a Value");
    let back: Request = match serde_json::from_value(value.clone()) {
        Ok(r) => r,
        Err(e) => panic!("{req:?} as Value {value} does not parse: {e}"),
    };
    assert_eq!(back, req, "round trip through {value}");
    Some(req)
}

fn ok(v: Value) -> Value {
    assert_eq!(v["ok"], Value::Bool(true), "baseline request failed: {v}");
    v
}

/// Back to the baseline (see the module docs).
fn reset(rig: &mut Rig) {
    let h = &rig.h;
    for n in h.networks() {
        h.remove_network(&n.name).expect("remove network");
    }
    rig.peers.clear();
    ok(api::handle_line(
        h,
        r#"{"op":"add_network","name":"net0","subnet":"10.88.0.0/24","ipv6":"fd88::/64","dns_upstreams":["127.0.0.1:9"]}"#,
    ));
    ok(api::handle_line(h, r#"{"op":"add_network","name":"net1"}"#));
    for (net, name) in [("net0", "p0"), ("net0", "p1"), ("net1", "q0")] {
        let peer = memory_port(h, net, name, PortPolicy::default()).expect("memory port");
        rig.peers.push(peer);
    }
}

/// Adds a memory port; returns the peer end.
fn memory_port(
    h: &Handle,
    net: &str,
    name: &str,
    policy: PortPolicy,
) -> usernet::Result<MemoryLink> {
    let (ours, peer) =
        MemoryLink::pair(64, 1522).map_err(|e| usernet::Error::Io("memory link".into(), e))?;
    h.add_port(net, name, policy, Box::new(ours))?;
    Ok(peer)
}

/// What the engine looks like from the API: network names and port names.
fn shape(h: &Handle) -> (BTreeSet<String>, BTreeSet<String>) {
    (
        h.networks().into_iter().map(|n| n.name).collect(),
        h.ports().into_iter().map(|p| p.name).collect(),
    )
}

/// A loopback DNS upstream (`IP` or `IP:PORT`), or unparseable (left for the engine to refuse).
fn upstream_ok(s: &str) -> bool {
    let ip = s
        .parse::<std::net::SocketAddr>()
        .map(|a| a.ip())
        .or_else(|_| s.parse::<IpAddr>());
    ip.map_or(true, |ip| ip.is_loopback())
}

/// Runs one request (rewritten or skipped as the module docs say) and checks the engine.
fn run(rig: &mut Rig, mut req: Request) {
    let h = rig.h.clone();
    let before = shape(&h);
    let gw = req.wants_gateway();
    match &mut req {
        Request::Shutdown {} | Request::ForwardAdd { .. } => return,
        Request::AddNetwork { dns_upstreams, .. } => {
            let gateways = h.gateways().len();
            if before.0.len() >= MAX_NETWORKS || (gw && gateways >= MAX_GATEWAYS) {
                return;
            }
            if gw {
                let ups = dns_upstreams.get_or_insert_with(Vec::new);
                if ups.is_empty() {
                    ups.push("127.0.0.1:9".into());
                }
                for u in ups.iter_mut() {
                    if !upstream_ok(u) {
                        *u = "127.0.0.1:9".into();
                    }
                }
            }
        }
        Request::AddPort { port } if port.backend("port").is_ok() => {
            // A kernel backend: the same port on a memory link.
            let res = memory_port(&h, port.home_network(), &port.name, port.policy());
            match res {
                Ok(peer) => {
                    rig.peers.push(peer);
                    assert!(
                        shape(&h).1.contains(&port.name),
                        "added port {} not listed",
                        port.name
                    );
                }
                Err(e) => assert_eq!(shape(&h), before, "failed add_port changed things: {e}"),
            }
            check(&h);
            return;
        }
        _ => {}
    }
    let line = serde_json::to_string(&req).expect("serializes");
    let resp = api::handle_line(&h, &line);
    let obj = resp.as_object().expect("response is an object");
    let Some(Value::Bool(success)) = obj.get("ok") else {
        panic!("response without a boolean ok: {resp}");
    };
    if !success {
        assert!(
            obj.get("error").is_some_and(Value::is_string),
            "refusal without an error message: {resp}"
        );
        assert_eq!(
            shape(&h),
            before,
            "refused request {line} changed the networks or ports: {resp}"
        );
        check(&h);
        return;
    }
    let after = shape(&h);
    match &req {
        Request::AddNetwork { name, .. } => {
            assert!(after.0.contains(name), "added network {name} not listed");
            assert_eq!(
                h.gateway(name).is_some(),
                gw,
                "network {name}: gateway presence differs from the request"
            );
        }
        Request::RemoveNetwork { name } => {
            assert!(
                !after.0.contains(name),
                "removed network {name} still listed"
            );
        }
        Request::RemovePort { name } => {
            assert!(!after.1.contains(name), "removed port {name} still listed");
        }
        Request::DnsAdd {
            network,
            name,
            addr,
        } => {
            let g = h.gateway(network).expect("dns_add succeeded on a gateway");
            let got = g.records.lookup(name);
            assert!(
                got.contains(addr),
                "dns_add {name} -> {addr}: lookup gives {got:?}"
            );
        }
        Request::DnsRm {
            network,
            name,
            addr,
        } => {
            let g = h.gateway(network).expect("dns_rm succeeded on a gateway");
            let got = g.records.lookup(name);
            assert!(
                match addr {
                    Some(a) => !got.contains(a),
                    None => got.is_empty(),
                },
                "dns_rm {name} {addr:?}: lookup still gives {got:?}"
            );
        }
        _ => {}
    }
    check(&h);
}

/// Engine-wide invariants (see the module docs).
fn check(h: &Handle) {
    let ports = h.ports();
    let networks = h.networks();
    let mut names = BTreeSet::new();
    for p in &ports {
        assert!(names.insert(p.name.clone()), "two ports named {}", p.name);
        let n = networks
            .iter()
            .find(|n| n.name == p.network)
            .unwrap_or_else(|| panic!("port {} on unknown network {}", p.name, p.network));
        assert!(
            n.ports.contains(&p.name),
            "network {} does not list its port {}",
            n.name,
            p.name
        );
    }
    for n in &networks {
        assert!(
            n.fdb_entries <= n.fdb_max_entries,
            "network {}: FDB over its cap",
            n.name
        );
        for p in &n.ports {
            // A trunk port is listed by every network it carries.
            let carries = |q: &usernet::control::PortInfo| {
                q.network == n.name
                    || q.trunk.as_ref().is_some_and(|t| {
                        t.vlans.contains_key(&n.name) || t.native.as_deref() == Some(&n.name)
                    })
            };
            assert!(
                ports.iter().any(|q| &q.name == p && carries(q)),
                "network {} lists port {p}, which is not its",
                n.name
            );
        }
    }
    let _ = h.gateways();
    let _ = h.leases(None).expect("leases of all gateways");
}
