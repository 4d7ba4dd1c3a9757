//! Prometheus metrics: the counters `ctl stats` and `ctl gateway` show, in the text exposition
//! format (version 0.0.4), for `usernet ctl metrics`, the API's `metrics` op and the HTTP
//! endpoint of `usernet up --metrics ADDR:PORT`.
//!
//! # Theory of operation
//!
//! [`Handle::metrics`] reads what the datapath already counts (relaxed atomics, no lock on the
//! forwarding path) and writes it with [`Exposition`], a small writer that groups samples by
//! family (one `# HELP` and `# TYPE` line each, then its samples, as the format wants) and
//! escapes label values and help text. Nothing is registered ahead of time: each scrape is a
//! fresh snapshot, so ports and networks that come and go need no bookkeeping.
//!
//! The families are generic over what the stats structs give, so a new counter shows up
//! without editing this file: every drop reason of [`PortStats::drops`] becomes a `reason`
//! label of `usernet_port_drops_total`; a gateway, DHCP, DNS or NAT counter that the tables
//! below do not know becomes `usernet_<section>_<name>_total`. The tables only give known
//! counters a better home (a shared family with a label) and their help text; a new per-port
//! counter is one line of [`PORT_COUNTERS`].
//!
//! Names follow Prometheus conventions: the `usernet_` prefix, `_total` on counters, base units
//! (`_bytes`, `_seconds`), labels `network`, `port`, `reason`, `proto`, `loop`, `type`.
//!
//! [`serve`] answers `GET /metrics` over HTTP on one thread: one connection at a time, a request
//! head of at most [`MAX_REQUEST`] bytes read within [`REQUEST_TIMEOUT`], the answer written
//! within the same time, then the connection is closed (after reading, for at most 200 ms,
//! what the client still sends, so that it is not reset before it reads the answer). Any other path is 404, any other method
//! 405. It is a minimal HTTP/1.x responder on purpose: the request line is all it needs, and the
//! HTTP crates at hand start thread pools of their own.

use std::collections::HashMap;
use std::fmt::Write as _;

use super::Handle;
use crate::bridge::PortStats;

mod forwards;
mod http;
mod limits;
pub use http::{MAX_REQUEST, MetricsServer, REQUEST_TIMEOUT, serve};

/// The `Content-Type` of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The kind of a metric family (`# TYPE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (restarts at zero with the process).
    Counter,
    /// Goes up and down.
    Gauge,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// A sample's value: integers stay exact (a `u64` counter above 2^53 would not in an `f64`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    /// An integer.
    Int(u64),
    /// A float (seconds).
    Float(f64),
}

impl From<u64> for Value {
    fn from(v: u64) -> Self {
        Value::Int(v)
    }
}

impl From<usize> for Value {
    fn from(v: usize) -> Self {
        Value::Int(v as u64)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Value::Int(v) => write!(f, "{v}"),
            Value::Float(v) if v.is_nan() => f.write_str("NaN"),
            Value::Float(v) if v.is_infinite() => {
                f.write_str(if v > 0.0 { "+Inf" } else { "-Inf" })
            }
            // Rust's `Display` for f64 never uses an exponent and round-trips exactly.
            Value::Float(v) => write!(f, "{v}"),
        }
    }
}

#[derive(Debug)]
struct Family {
    name: String,
    help: String,
    kind: Kind,
    /// Rendered sample lines, each ending in `\n`.
    samples: String,
}

/// A Prometheus text-format writer: families in the order first seen, each with its `HELP`
/// and `TYPE` lines and all its samples together.
#[derive(Debug, Default)]
pub struct Exposition {
    families: Vec<Family>,
    index: HashMap<String, usize>,
}

impl Exposition {
    /// An empty exposition.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a counter sample to family `name` (declared with `help` the first time).
    pub fn counter(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        v: impl Into<Value>,
    ) {
        self.sample(name, help, Kind::Counter, labels, v.into());
    }

    /// Adds a gauge sample to family `name` (declared with `help` the first time).
    pub fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], v: impl Into<Value>) {
        self.sample(name, help, Kind::Gauge, labels, v.into());
    }

    /// Adds a sample. `name` and the label names must be valid Prometheus names (they come
    /// from this crate; [`sanitize`] makes one from anything else); label values are escaped.
    /// A family keeps the help and kind it was first declared with.
    pub fn sample(
        &mut self,
        name: &str,
        help: &str,
        kind: Kind,
        labels: &[(&str, &str)],
        v: Value,
    ) {
        debug_assert!(valid_name(name), "metric name {name:?}");
        let i = match self.index.get(name) {
            Some(&i) => i,
            None => {
                self.families.push(Family {
                    name: name.to_string(),
                    help: help.to_string(),
                    kind,
                    samples: String::new(),
                });
                self.index.insert(name.to_string(), self.families.len() - 1);
                self.families.len() - 1
            }
        };
        let fam = &mut self.families[i];
        debug_assert_eq!(fam.kind, kind, "family {name} declared with another type");
        let out = &mut fam.samples;
        out.push_str(name);
        if !labels.is_empty() {
            out.push('{');
            for (j, (k, val)) in labels.iter().enumerate() {
                debug_assert!(valid_name(k) && !k.contains(':'), "label name {k:?}");
                if j > 0 {
                    out.push(',');
                }
                out.push_str(k);
                out.push_str("=\"");
                escape_into(out, val, true);
                out.push('"');
            }
            out.push('}');
        }
        let _ = writeln!(out, " {v}");
    }

    /// The text: per family `# HELP`, `# TYPE`, then its samples.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for f in &self.families {
            let _ = write!(out, "# HELP {} ", f.name);
            escape_into(&mut out, &f.help, false);
            let _ = writeln!(out, "\n# TYPE {} {}", f.name, f.kind.name());
            out.push_str(&f.samples);
        }
        out
    }
}

/// Escapes `s` for the text format: `\` and newline always, `"` in label values.
fn escape_into(out: &mut String, s: &str, label_value: bool) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if label_value => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

/// True for a valid metric name: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
fn valid_name(s: &str) -> bool {
    let mut cs = s.chars();
    cs.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && cs.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// A valid metric-name fragment from any string: every other character becomes `_`, and a
/// leading digit gets a `_` before it.
pub fn sanitize(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

/// One per-port counter: its family, its help, and how to read it from [`PortStats`].
pub type PortCounter = (&'static str, &'static str, fn(&PortStats) -> u64);

/// The per-port counters: family, help, and how to read it from [`PortStats`]. A new per-port
/// counter is one line here. Drops are not here: every reason of [`PortStats::drops`] is a
/// `reason` of `usernet_port_drops_total`.
pub const PORT_COUNTERS: &[PortCounter] = &[
    (
        "usernet_port_rx_frames_total",
        "Frames received from the port's link.",
        |s| s.rx_frames,
    ),
    (
        "usernet_port_rx_bytes_total",
        "Bytes received from the port's link.",
        |s| s.rx_bytes,
    ),
    (
        "usernet_port_tx_frames_total",
        "Frames written to the port's link.",
        |s| s.tx_frames,
    ),
    (
        "usernet_port_tx_bytes_total",
        "Bytes written to the port's link.",
        |s| s.tx_bytes,
    ),
    (
        "usernet_port_forwarded_frames_total",
        "Received frames handed to at least one other port.",
        |s| s.forwarded,
    ),
];

/// Where a named counter of a stats section goes: its family, the label it sets there (if
/// the family is shared by several counters), and the family's help.
struct Route {
    key: &'static str,
    family: &'static str,
    label: Option<(&'static str, &'static str)>,
    help: &'static str,
}

const fn route(key: &'static str, family: &'static str, help: &'static str) -> Route {
    Route {
        key,
        family,
        label: None,
        help,
    }
}

const fn routed(
    key: &'static str,
    family: &'static str,
    label: (&'static str, &'static str),
    help: &'static str,
) -> Route {
    Route {
        key,
        family,
        label: Some(label),
        help,
    }
}

const GW: &str = "usernet_gateway_";
const GATEWAY_ROUTES: &[Route] = &[
    route(
        "frames",
        "usernet_gateway_rx_frames_total",
        "Frames the gateway received from its network.",
    ),
    route(
        "arp_replies",
        "usernet_gateway_arp_replies_total",
        "ARP requests for the gateway answered.",
    ),
    route(
        "echo_replies",
        "usernet_gateway_echo_replies_total",
        "ICMP and ICMPv6 echo requests to the gateway answered.",
    ),
    routed(
        "dns_udp",
        "usernet_gateway_dns_queries_total",
        ("transport", "udp"),
        "DNS queries the gateway received, by transport.",
    ),
    routed(
        "dns_tcp",
        "usernet_gateway_dns_queries_total",
        ("transport", "tcp"),
        "DNS queries the gateway received, by transport.",
    ),
    route(
        "malformed",
        "usernet_gateway_malformed_total",
        "Frames to the gateway that failed to parse (dropped).",
    ),
    route(
        "ignored",
        "usernet_gateway_ignored_total",
        "Frames flooded to the gateway that were not for it (ignored).",
    ),
    route(
        "neigh_unresolved",
        "usernet_gateway_neigh_unresolved_total",
        "Packets to guests dropped because their address did not resolve.",
    ),
];

const DHCP: &str = "usernet_dhcp_";
const DHCP_RX: &str = "DHCP messages received from guests, by type.";
const DHCP_TX: &str = "DHCP replies sent, by type.";
const DHCP_ROUTES: &[Route] = &[
    routed(
        "discover",
        "usernet_dhcp_received_total",
        ("type", "discover"),
        DHCP_RX,
    ),
    routed(
        "request",
        "usernet_dhcp_received_total",
        ("type", "request"),
        DHCP_RX,
    ),
    routed(
        "release",
        "usernet_dhcp_received_total",
        ("type", "release"),
        DHCP_RX,
    ),
    routed(
        "decline",
        "usernet_dhcp_received_total",
        ("type", "decline"),
        DHCP_RX,
    ),
    routed(
        "inform",
        "usernet_dhcp_received_total",
        ("type", "inform"),
        DHCP_RX,
    ),
    routed(
        "offer",
        "usernet_dhcp_sent_total",
        ("type", "offer"),
        DHCP_TX,
    ),
    routed("ack", "usernet_dhcp_sent_total", ("type", "ack"), DHCP_TX),
    routed("nak", "usernet_dhcp_sent_total", ("type", "nak"), DHCP_TX),
    route(
        "malformed",
        "usernet_dhcp_malformed_total",
        "DHCP messages rejected as malformed.",
    ),
    route(
        "pool_exhausted",
        "usernet_dhcp_pool_exhausted_total",
        "DHCP DISCOVERs left unanswered because no address was free.",
    ),
];

const DNS: &str = "usernet_dns_";
const DNS_ROUTES: &[Route] = &[
    route(
        "queries",
        "usernet_dns_queries_total",
        "DNS messages the gateway's DNS server handled.",
    ),
    route(
        "local_answers",
        "usernet_dns_local_answers_total",
        "DNS queries answered from the network's own names (NXDOMAIN and NODATA included).",
    ),
    route(
        "nxdomain",
        "usernet_dns_nxdomain_total",
        "DNS replies with NXDOMAIN (local, cached or forwarded).",
    ),
    route(
        "forwarded",
        "usernet_dns_forwarded_total",
        "DNS queries queued for forwarding upstream.",
    ),
    route(
        "cache_hits",
        "usernet_dns_cache_hits_total",
        "DNS queries answered from the cache.",
    ),
    route(
        "upstream_failures",
        "usernet_dns_upstream_failures_total",
        "Forwarded DNS queries no upstream answered (the client got SERVFAIL).",
    ),
    route(
        "truncated",
        "usernet_dns_truncated_total",
        "DNS UDP replies truncated to fit the client's limit.",
    ),
    route(
        "malformed",
        "usernet_dns_malformed_total",
        "Malformed DNS input: dropped messages, FORMERR, NOTIMP and BADVERS replies.",
    ),
    route(
        "dropped_overload",
        "usernet_dns_dropped_overload_total",
        "DNS queries answered SERVFAIL because the forwarding queue was full.",
    ),
    route(
        "policy_denied",
        "usernet_dns_policy_denied_total",
        "DNS queries the network's DNS policy denied (answered NXDOMAIN or REFUSED).",
    ),
];

const NAT: &str = "usernet_nat_";
const NAT_OPENED: &str = "NAT flows opened, by protocol.";
const NAT_REFUSED: &str = "Guest traffic NAT refused, by reason: limit (a flow limit), \
    host_refused (the host refused the connect), unreachable, ping_forbidden, destination \
    (an address that must not leave).";
const NAT_ROUTES: &[Route] = &[
    routed(
        "tcp_flows",
        "usernet_nat_flows_opened_total",
        ("proto", "tcp"),
        NAT_OPENED,
    ),
    routed(
        "udp_flows",
        "usernet_nat_flows_opened_total",
        ("proto", "udp"),
        NAT_OPENED,
    ),
    routed(
        "icmp_flows",
        "usernet_nat_flows_opened_total",
        ("proto", "icmp"),
        NAT_OPENED,
    ),
    routed(
        "refused_limit",
        "usernet_nat_refused_total",
        ("reason", "limit"),
        NAT_REFUSED,
    ),
    routed(
        "refused_host",
        "usernet_nat_refused_total",
        ("reason", "host_refused"),
        NAT_REFUSED,
    ),
    routed(
        "unreachable",
        "usernet_nat_refused_total",
        ("reason", "unreachable"),
        NAT_REFUSED,
    ),
    routed(
        "ping_forbidden",
        "usernet_nat_refused_total",
        ("reason", "ping_forbidden"),
        NAT_REFUSED,
    ),
    routed(
        "dropped_dest",
        "usernet_nat_refused_total",
        ("reason", "destination"),
        NAT_REFUSED,
    ),
    route(
        "forward_conns",
        "usernet_nat_forward_connections_total",
        "Connections accepted on port forwards.",
    ),
];

/// Writes the counters of one stats section: a known key goes where [`Route`] says, any other
/// to `{prefix}{key}_total`.
fn section<'a>(
    x: &mut Exposition,
    prefix: &str,
    routes: &[Route],
    labels: &[(&str, &str)],
    counters: impl IntoIterator<Item = (&'a str, u64)>,
) {
    for (key, v) in counters {
        match routes.iter().find(|r| r.key == key) {
            Some(r) => {
                let mut l = labels.to_vec();
                l.extend(r.label);
                x.counter(r.family, r.help, &l, v);
            }
            None => {
                let name = format!("{prefix}{}_total", sanitize(key));
                let help = format!("The {key} counter of `usernet ctl gateway`.");
                x.counter(&name, &help, labels, v);
            }
        }
    }
}

/// A VXLAN port's own counters (`ctl vxlan`): datagrams sent (a flood counts once per remote)
/// and decapsulation/encapsulation drops by reason, `tx_local` among them (broadcasts the local
/// gateway answers, kept off the underlay).
fn vxlan_port(x: &mut Exposition, base: &[(&str, &str); 2], v: &crate::link::vxlan::VxlanStats) {
    x.counter(
        "usernet_vxlan_tx_datagrams_total",
        "VXLAN datagrams sent to remote VTEPs (a flooded frame counts once per remote).",
        base,
        v.tx_datagrams,
    );
    for (reason, n) in &v.drops {
        x.counter(
            "usernet_vxlan_drops_total",
            "Frames a VXLAN port dropped or kept off the underlay, by reason (as `usernet ctl vxlan` lists them).",
            &[base[0], base[1], ("reason", reason)],
            *n,
        );
    }
}

/// The numeric fields of a serializable stats struct, by name (so a new field shows up).
fn fields<T: serde::Serialize>(stats: &T) -> Vec<(String, u64)> {
    match serde_json::to_value(stats) {
        Ok(serde_json::Value::Object(m)) => m
            .into_iter()
            .filter_map(|(k, v)| v.as_u64().map(|n| (k, n)))
            .collect(),
        _ => Vec::new(),
    }
}

impl Handle {
    /// Every metric, in the Prometheus text exposition format (version 0.0.4).
    pub fn metrics(&self) -> String {
        self.exposition().render()
    }

    /// Every metric, as an [`Exposition`] an embedder may add its own to before rendering.
    pub fn exposition(&self) -> Exposition {
        let mut x = Exposition::new();
        let topo = self.dp.bridge().topology();
        for p in topo.ports() {
            let net = topo
                .network(p.network)
                .map(|n| n.net.name.clone())
                .unwrap_or_default();
            let base = [("network", net.as_str()), ("port", p.name.as_str())];
            let st = p.counters.snapshot();
            for (name, help, get) in PORT_COUNTERS {
                x.counter(name, help, &base, get(&st));
            }
            for (reason, n) in &st.drops {
                x.counter(
                    "usernet_port_drops_total",
                    "Frames dropped, by port and reason (as `usernet ctl stats` lists them).",
                    &[base[0], base[1], ("reason", reason)],
                    *n,
                );
            }
            x.counter(
                "usernet_port_capture_dropped_total",
                "Frames a live capture of the port could not keep (its queue was full); forwarding is not affected.",
                &base,
                p.capture.dropped(),
            );
            if let Some(v) = self.vxlan_stats(&p.name) {
                vxlan_port(&mut x, &base, &v);
            }
            limits::port_limits(&mut x, &base, p.rate_limit());
            let (kind, owner) = (p.kind.to_string(), p.owner.to_string());
            x.gauge(
                "usernet_port_info",
                "A port: its link kind and the event loop that drives it (always 1).",
                &[base[0], base[1], ("kind", &kind), ("loop", &owner)],
                1u64,
            );
        }
        for n in topo.networks() {
            let l = [("network", n.net.name.as_str())];
            x.gauge(
                "usernet_fdb_entries",
                "MAC addresses in the network's forwarding database.",
                &l,
                n.net.fdb.len(),
            );
            x.gauge(
                "usernet_fdb_max_entries",
                "The cap of the network's forwarding database.",
                &l,
                n.net.fdb.config().max_entries,
            );
        }
        for (i, (busy, ports)) in self
            .dp
            .loop_busy()
            .into_iter()
            .zip(self.dp.loop_load())
            .enumerate()
        {
            let idx = i.to_string();
            let l = [("loop", idx.as_str())];
            x.counter(
                "usernet_loop_busy_seconds_total",
                "Time the event loop spent handling events (not waiting).",
                &l,
                busy.as_secs_f64(),
            );
            x.gauge(
                "usernet_loop_ports",
                "Ports the event loop drives.",
                &l,
                ports,
            );
        }
        self.policy_metrics(&mut x);
        // A network removed since `topo` was loaded may still be listed here: harmless.
        let gateways = self.gateways_of(None).unwrap_or_default();
        for g in gateways {
            let info = g.info();
            let l = [("network", info.network.as_str())];
            section(
                &mut x,
                GW,
                GATEWAY_ROUTES,
                &l,
                info.counters.iter().map(|(k, v)| (*k, *v)),
            );
            if let Some(d) = &info.dhcp {
                x.gauge(
                    "usernet_dhcp_leases",
                    "DHCP leases held now.",
                    &l,
                    g.leases().len(),
                );
                let f = fields(d);
                section(
                    &mut x,
                    DHCP,
                    DHCP_ROUTES,
                    &l,
                    f.iter().map(|(k, v)| (k.as_str(), *v)),
                );
            }
            let f = fields(&info.dns);
            section(
                &mut x,
                DNS,
                DNS_ROUTES,
                &l,
                f.iter().map(|(k, v)| (k.as_str(), *v)),
            );
            if let Some(nat) = &info.nat {
                let open = g.nat_counters.open_flows();
                for (proto, n) in [("tcp", open.tcp), ("udp", open.udp), ("icmp", open.icmp)] {
                    x.gauge(
                        "usernet_nat_flows",
                        "NAT flows open now, by protocol.",
                        &[l[0], ("proto", proto)],
                        n,
                    );
                }
                section(
                    &mut x,
                    NAT,
                    NAT_ROUTES,
                    &l,
                    nat.iter().map(|(k, v)| (*k, *v)),
                );
            }
        }
        forwards::write(self, &mut x);
        x
    }
}
#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use super::*;

    #[test]
    fn groups_families_and_writes_help_and_type_once() {
        let mut x = Exposition::new();
        x.counter("usernet_a_total", "A.", &[("network", "n1")], 1u64);
        x.gauge("usernet_b", "B.", &[], 2u64);
        x.counter(
            "usernet_a_total",
            "ignored help",
            &[("network", "n2")],
            3u64,
        );
        assert_eq!(
            x.render(),
            "# HELP usernet_a_total A.\n# TYPE usernet_a_total counter\n\
             usernet_a_total{network=\"n1\"} 1\nusernet_a_total{network=\"n2\"} 3\n\
             # HELP usernet_b B.\n# TYPE usernet_b gauge\nusernet_b 2\n"
        );
        assert_eq!(Exposition::new().render(), "");
    }

    #[test]
    fn escapes_label_values_and_help() {
        let mut x = Exposition::new();
        x.counter(
            "usernet_c_total",
            "back\\slash\nnew \"quoted\"",
            &[("port", "a\"b\\c\nd"), ("reason", "é")],
            u64::MAX,
        );
        assert_eq!(
            x.render(),
            "# HELP usernet_c_total back\\\\slash\\nnew \"quoted\"\n\
             # TYPE usernet_c_total counter\n\
             usernet_c_total{port=\"a\\\"b\\\\c\\nd\",reason=\"é\"} 18446744073709551615\n"
        );
    }

    #[test]
    fn formats_values() {
        let f = |v: Value| v.to_string();
        assert_eq!(f(Value::Int(0)), "0");
        assert_eq!(f(Value::Float(1.5)), "1.5");
        assert_eq!(f(Value::Float(1.0)), "1");
        assert_eq!(f(Value::Float(1e-7)), "0.0000001");
        assert_eq!(f(Value::Float(f64::NAN)), "NaN");
        assert_eq!(f(Value::Float(f64::INFINITY)), "+Inf");
        assert_eq!(f(Value::Float(f64::NEG_INFINITY)), "-Inf");
        assert_eq!(
            f(Value::Float(
                Duration::from_nanos(1_234_567_891).as_secs_f64()
            )),
            "1.234567891"
        );
    }

    #[test]
    fn sanitizes_names() {
        assert_eq!(sanitize("ring_full"), "ring_full");
        assert_eq!(sanitize("vxlan-rx.bad"), "vxlan_rx_bad");
        assert_eq!(sanitize("9lives"), "_9lives");
        assert_eq!(sanitize(""), "_");
        assert!(valid_name(&format!("usernet_{}_total", sanitize("a b{c}"))));
        assert!(!valid_name("1a") && !valid_name("") && !valid_name("a-b"));
        assert!(valid_name("usernet:x_1"));
    }

    #[test]
    fn unknown_counters_get_a_family_of_their_own() {
        let mut x = Exposition::new();
        section(
            &mut x,
            NAT,
            NAT_ROUTES,
            &[("network", "n")],
            [("tcp_flows", 4), ("refused_limit", 1), ("new-thing", 2)],
        );
        let t = x.render();
        assert!(
            t.contains("usernet_nat_flows_opened_total{network=\"n\",proto=\"tcp\"} 4\n"),
            "{t}"
        );
        assert!(
            t.contains("usernet_nat_refused_total{network=\"n\",reason=\"limit\"} 1\n"),
            "{t}"
        );
        assert!(
            t.contains("# TYPE usernet_nat_new_thing_total counter\nusernet_nat_new_thing_total{network=\"n\"} 2\n"),
            "{t}"
        );
    }

    #[test]
    fn port_counters_and_every_drop_reason_show() {
        let c = crate::bridge::PortCounters::default();
        c.rx_frames.store(7, Ordering::Relaxed);
        c.drop_n(crate::bridge::DropReason::RingFull, 3);
        let st = c.snapshot();
        let mut x = Exposition::new();
        for (name, help, get) in PORT_COUNTERS {
            x.counter(name, help, &[("port", "p")], get(&st));
        }
        for (reason, n) in &st.drops {
            x.counter("usernet_port_drops_total", "D.", &[("reason", reason)], *n);
        }
        let t = x.render();
        assert!(
            t.contains("usernet_port_rx_frames_total{port=\"p\"} 7\n"),
            "{t}"
        );
        assert!(
            t.contains("usernet_port_drops_total{reason=\"ring_full\"} 3\n"),
            "{t}"
        );
        for r in crate::bridge::DropReason::ALL {
            assert!(t.contains(&format!("reason=\"{}\"", r.name())), "{r:?}");
        }
    }
}
