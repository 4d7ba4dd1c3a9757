//! Port-forward specifications: Docker's `-p` grammar, parsed, printed and (de)serialized.
//!
//! # Theory of operation
//!
//! A port forward publishes guest ports on the host: a host listener (TCP) or socket (UDP) on
//! `host_ip:host_port`, whose connections or datagrams are carried *to* the guest's
//! `guest_port`. The spec is written exactly as `docker run -p` takes it:
//!
//! ```text
//! [hostip:]hostport[-hostport]:guestport[-guestport][/tcp|/udp]
//! ```
//!
//! - `hostip` is an IPv4 address or a bracketed IPv6 address (`[::1]`); without it the forward
//!   listens on all addresses (`0.0.0.0`, see [`ForwardSpec::bind_ip`]).
//! - A range publishes each host port on the guest port at the same offset
//!   ([`ForwardSpec::pairs`]); both ranges must have the same length.
//! - The protocol defaults to `tcp`.
//!
//! [`ForwardSpec`]'s `Display` is the canonical form (protocol always written, IPv6 in
//! brackets, single ports without a range) and parses back to the same value, so the spec is
//! stored and exchanged as that string (serde, the `[[forward]]` config table, the JSON API).
//! Every parse error names what is wrong and quotes the input.
//!
//! Limits: no random host port (`hostip::guestport`), no single guest port for a host range
//! (Docker picks one host port there; here both ranges must match), no `sctp`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use super::balance::{Balance, HealthSpec};

/// Transport protocol of a port forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Proto {
    /// TCP (the default).
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

impl Proto {
    /// The lowercase name, as written in a spec (`tcp`, `udp`).
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed `-p` spec: host address and ports, guest ports, protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct ForwardSpec {
    /// Host address to listen on; `None` means all addresses (`0.0.0.0`).
    pub host_ip: Option<IpAddr>,
    /// First and last host port (equal for a single port).
    pub host_ports: (u16, u16),
    /// First and last guest port (same length as `host_ports`).
    pub guest_ports: (u16, u16),
    /// Protocol.
    pub proto: Proto,
}

/// Why a port-forward spec did not parse: the input and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid port forward {input:?}: {reason} (expected [hostip:]hostport[-hostport]:guestport[-guestport][/tcp|/udp])"
)]
pub struct ParseForwardError {
    /// The spec as given.
    pub input: String,
    /// What is wrong with it.
    pub reason: String,
}

impl ForwardSpec {
    /// One port: `host_ip:host_port` forwards to `guest_port` over `proto` (what `-p` parses
    /// `host_ip:host_port:guest_port/proto` into). Port 0 is refused, as in a spec.
    pub fn single(
        proto: Proto,
        host_ip: Option<IpAddr>,
        host_port: u16,
        guest_port: u16,
    ) -> Result<ForwardSpec, ParseForwardError> {
        if host_port == 0 || guest_port == 0 {
            return Err(ParseForwardError {
                input: format!("{host_port}:{guest_port}/{proto}"),
                reason: "port 0 is not allowed".into(),
            });
        }
        Ok(ForwardSpec {
            host_ip,
            host_ports: (host_port, host_port),
            guest_ports: (guest_port, guest_port),
            proto,
        })
    }

    /// The address to bind host sockets to: `host_ip`, or `0.0.0.0` when none was given.
    pub fn bind_ip(&self) -> IpAddr {
        self.host_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }

    /// How many ports the spec publishes (at least 1).
    pub fn len(&self) -> usize {
        usize::from(self.host_ports.1.saturating_sub(self.host_ports.0)) + 1
    }

    /// Always `false`: a spec publishes at least one port (for clippy's `len_without_is_empty`).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Each published `(host port, guest port)` pair, in order.
    pub fn pairs(&self) -> impl Iterator<Item = (u16, u16)> + use<> {
        let (h0, h1) = self.host_ports;
        let g0 = self.guest_ports.0;
        (h0..=h1).map(move |h| (h, g0.wrapping_add(h - h0)))
    }
}

/// Parses `a` or `a-b` into a port range; `what` names it in errors.
fn parse_range(s: &str, what: &str) -> Result<(u16, u16), String> {
    let (a, b) = match s.split_once('-') {
        Some((a, b)) => (a, Some(b)),
        None => (s, None),
    };
    let first = parse_port(a, what)?;
    let last = match b {
        Some(b) => parse_port(b, what)?,
        None => first,
    };
    if last < first {
        return Err(format!(
            "{what} port range {s:?} is reversed ({first} > {last})"
        ));
    }
    Ok((first, last))
}

fn parse_port(s: &str, what: &str) -> Result<u16, String> {
    if s.is_empty() {
        return Err(format!("missing {what} port"));
    }
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{what} port {s:?} is not a number"));
    }
    match s.parse::<u32>() {
        Ok(0) => Err(format!("{what} port 0 is not allowed")),
        Ok(p) => u16::try_from(p).map_err(|_| format!("{what} port {p} is above 65535")),
        Err(_) => Err(format!("{what} port {s} is above 65535")),
    }
}

impl FromStr for ForwardSpec {
    type Err = ParseForwardError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason: String| ParseForwardError {
            input: input.to_string(),
            reason,
        };
        let s = input.trim();
        if s.is_empty() {
            return Err(err("empty spec".into()));
        }
        let (rest, proto) = match s.rsplit_once('/') {
            Some((rest, p)) => {
                let proto = if p.eq_ignore_ascii_case("tcp") {
                    Proto::Tcp
                } else if p.eq_ignore_ascii_case("udp") {
                    Proto::Udp
                } else if p.is_empty() {
                    return Err(err("missing protocol after '/'".into()));
                } else {
                    return Err(err(format!("unknown protocol {p:?} (tcp or udp)")));
                };
                (rest, proto)
            }
            None => (s, Proto::Tcp),
        };
        let (host_ip, ports) = if let Some(after) = rest.strip_prefix('[') {
            let Some((ip, ports)) = after.split_once(']') else {
                return Err(err("IPv6 host address has no closing ']'".into()));
            };
            let ip: std::net::Ipv6Addr = ip
                .parse()
                .map_err(|_| err(format!("host address [{ip}] is not an IPv6 address")))?;
            let Some(ports) = ports.strip_prefix(':') else {
                return Err(err(format!("expected ':' after host address [{ip}]")));
            };
            (Some(IpAddr::V6(ip)), ports)
        } else {
            let parts: Vec<&str> = rest.split(':').collect();
            match parts.as_slice() {
                [_, _] => (None, rest),
                [ip, _, _] => {
                    let ip: Ipv4Addr = ip
                        .parse()
                        .map_err(|_| err(format!("host address {ip:?} is not an IPv4 address")))?;
                    let ports = rest.split_once(':').map_or(rest, |(_, p)| p);
                    (Some(IpAddr::V4(ip)), ports)
                }
                [_] => {
                    return Err(err(
                        "missing host or guest port (need hostport:guestport)".into()
                    ));
                }
                _ => {
                    return Err(err(
                        "too many ':' (an IPv6 host address must be in brackets, [::1])".into(),
                    ));
                }
            }
        };
        let Some((host, guest)) = ports.split_once(':') else {
            return Err(err("missing guest port (need hostport:guestport)".into()));
        };
        if guest.contains(':') {
            return Err(err("too many ':' after the host address".into()));
        }
        let host_ports = parse_range(host, "host").map_err(err)?;
        let guest_ports = parse_range(guest, "guest").map_err(err)?;
        let hl = host_ports.1 - host_ports.0;
        let gl = guest_ports.1 - guest_ports.0;
        if hl != gl {
            return Err(err(format!(
                "host range {host} has {} ports but guest range {guest} has {}",
                u32::from(hl) + 1,
                u32::from(gl) + 1
            )));
        }
        Ok(ForwardSpec {
            host_ip,
            host_ports,
            guest_ports,
            proto,
        })
    }
}

fn write_range(f: &mut fmt::Formatter<'_>, (a, b): (u16, u16)) -> fmt::Result {
    if a == b {
        write!(f, "{a}")
    } else {
        write!(f, "{a}-{b}")
    }
}

impl fmt::Display for ForwardSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host_ip {
            Some(IpAddr::V4(ip)) => write!(f, "{ip}:")?,
            Some(IpAddr::V6(ip)) => write!(f, "[{ip}]:")?,
            None => {}
        }
        write_range(f, self.host_ports)?;
        f.write_str(":")?;
        write_range(f, self.guest_ports)?;
        write!(f, "/{}", self.proto)
    }
}

impl Serialize for ForwardSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ForwardSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A forward's endpoints: one name or IP address, or several (load-balanced). Written as a
/// string for one (`to = "web"`, as before) and as a list for several
/// (`to = ["web1", "web2"]`); either form is accepted on input.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Targets(pub Vec<String>);

impl Targets {
    /// The first endpoint ("" when there is none).
    pub fn first(&self) -> &str {
        self.0.first().map_or("", String::as_str)
    }
}

impl std::ops::Deref for Targets {
    type Target = [String];
    fn deref(&self) -> &[String] {
        &self.0
    }
}

impl From<&str> for Targets {
    fn from(s: &str) -> Self {
        Targets(vec![s.to_string()])
    }
}

impl From<String> for Targets {
    fn from(s: String) -> Self {
        Targets(vec![s])
    }
}

impl From<Vec<String>> for Targets {
    fn from(v: Vec<String>) -> Self {
        Targets(v)
    }
}

impl fmt::Display for Targets {
    /// Comma-separated, as `usernet ctl forward add` takes them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

impl Serialize for Targets {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => s.serialize_str(one),
            many => many.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Targets {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }
        match OneOrMany::deserialize(d) {
            Ok(OneOrMany::One(s)) => Ok(Targets(vec![s])),
            Ok(OneOrMany::Many(v)) => Ok(Targets(v)),
            Err(_) => Err(serde::de::Error::custom(
                "`to` must be a string (an endpoint name or IP) or a list of them",
            )),
        }
    }
}

/// A port forward: the `[[forward]]` config table and the JSON API object,
/// `{ network = "net0", publish = "127.0.0.1:8080:80/tcp", to = "web" }`, or load-balanced
/// over several endpoints: `to = ["web1", "web2"], balance = "least_conn",
/// health = { interval_ms = 1000 }` (see `balance.rs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Forward {
    /// The network the target is on.
    pub network: String,
    /// What to publish (`publish` in config and JSON).
    #[serde(rename = "publish")]
    pub spec: ForwardSpec,
    /// The target: an endpoint name (resolved on the network) or an IP address; or several,
    /// each new connection (TCP) or flow (UDP) going to one of them by [`Forward::balance`].
    pub to: Targets,
    /// TCP only: relay connections from loopback (and other-family) clients kernel-to-kernel
    /// (`splice(2)`) from a socket opened inside the target port's network namespace, instead
    /// of through usernet's TCP stack. Much faster; the guest sees those connections from its
    /// own address, while real clients still take the regular path and keep theirs. See
    /// `nat/splice.rs`. With several targets, each must be such a port.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub splice: bool,
    /// How several endpoints share the connections: `round_robin` (default), `least_conn`
    /// or `source_hash` ([`Balance`]). Kept as written; [`Forward::check`] names a wrong one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balance: Option<String>,
    /// Health checks of the endpoints (TCP forwards only); without, every endpoint is up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthSpec>,
}

impl Forward {
    /// A forward of `spec` to `to` (an endpoint name or IP address) on `network`, not spliced.
    pub fn new(network: &str, spec: ForwardSpec, to: &str) -> Forward {
        Forward::to_many(network, spec, vec![to.to_owned()])
    }

    /// A forward of `spec` balanced over `to` (names or IP addresses) on `network`, round
    /// robin, no health checks, not spliced.
    pub fn to_many(network: &str, spec: ForwardSpec, to: Vec<String>) -> Forward {
        Forward {
            network: network.to_owned(),
            spec,
            to: Targets(to),
            splice: false,
            balance: None,
            health: None,
        }
    }

    /// The balancing policy (round robin when none is given; an unknown name as well, which
    /// [`Forward::check`] refuses).
    pub fn policy(&self) -> Balance {
        self.balance
            .as_deref()
            .and_then(Balance::from_name)
            .unwrap_or_default()
    }

    /// Checks what serde cannot: at least one target, none empty or twice, a known `balance`,
    /// sane `health` values (and none on a UDP forward). The error is `(field, reason)`, the
    /// field under `prefix` (`forward[0].to[1]`, `forward[0].health.interval_ms`).
    pub fn check(&self, prefix: &str) -> Result<(), (String, String)> {
        let key = |k: &str| {
            if prefix.is_empty() {
                k.to_string()
            } else {
                format!("{prefix}.{k}")
            }
        };
        if self.to.is_empty() {
            return Err((key("to"), "empty list: name at least one endpoint".into()));
        }
        for (i, t) in self.to.iter().enumerate() {
            let field = if self.to.len() == 1 {
                key("to")
            } else {
                key(&format!("to[{i}]"))
            };
            if t.trim().is_empty() {
                return Err((field, "empty target".into()));
            }
            if t.contains(',') || t.chars().any(char::is_whitespace) {
                return Err((field, format!("{t:?} is not one endpoint name or IP")));
            }
            if let Some(j) = self.to[..i].iter().position(|o| o == t) {
                return Err((field, format!("{t:?} is listed twice (also to[{j}])")));
            }
        }
        if let Some(b) = &self.balance
            && Balance::from_name(b).is_none()
        {
            return Err((
                key("balance"),
                format!(
                    "unknown policy {b:?} (one of {})",
                    Balance::NAMES.join(", ")
                ),
            ));
        }
        if let Some(h) = &self.health {
            if self.spec.proto == Proto::Udp {
                return Err((
                    key("health"),
                    "health checks are TCP connects: not for a UDP forward".into(),
                ));
            }
            h.check()
                .map_err(|(k, why)| (key(&format!("health.{k}")), why))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> ForwardSpec {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn bad(s: &str) -> String {
        match s.parse::<ForwardSpec>() {
            Ok(v) => panic!("{s:?} parsed as {v:?}"),
            Err(e) => {
                let m = e.to_string();
                assert!(
                    m.contains(&format!("{s:?}")),
                    "error does not quote input: {m}"
                );
                m
            }
        }
    }

    #[test]
    fn valid_specs() {
        let s = p("8080:80");
        assert_eq!(
            s,
            ForwardSpec {
                host_ip: None,
                host_ports: (8080, 8080),
                guest_ports: (80, 80),
                proto: Proto::Tcp
            }
        );
        assert_eq!(s.bind_ip(), IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let s = p("127.0.0.1:8080:80/udp");
        assert_eq!(s.host_ip, Some("127.0.0.1".parse().expect("ip")));
        assert_eq!(s.proto, Proto::Udp);
        let s = p("[::1]:8080:80/tcp");
        assert_eq!(s.host_ip, Some("::1".parse().expect("ip")));
        let s = p("[fd00::1:2]:1000-1002:2000-2002/UDP");
        assert_eq!(s.host_ip, Some("fd00::1:2".parse().expect("ip")));
        assert_eq!(s.proto, Proto::Udp);
        assert_eq!(s.len(), 3);
        assert_eq!(
            s.pairs().collect::<Vec<_>>(),
            vec![(1000, 2000), (1001, 2001), (1002, 2002)]
        );
        let s = p("65535:1");
        assert_eq!(s.pairs().collect::<Vec<_>>(), vec![(65535, 1)]);
        let s = p("65530-65535:1-6");
        assert_eq!(s.pairs().last(), Some((65535, 6)));
        assert_eq!(
            p("0.0.0.0:80:80").host_ip,
            Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
        );
    }

    #[test]
    fn roundtrip_and_canonical() {
        for (input, canon) in [
            ("8080:80", "8080:80/tcp"),
            ("8080:80/tcp", "8080:80/tcp"),
            ("127.0.0.1:8080:80/udp", "127.0.0.1:8080:80/udp"),
            ("[::1]:53:53/udp", "[::1]:53:53/udp"),
            ("[0:0::1]:53:53/UDP", "[::1]:53:53/udp"),
            ("1000-1001:2000-2001", "1000-1001:2000-2001/tcp"),
            ("5-5:6-6", "5:6/tcp"),
            (" 80:80 ", "80:80/tcp"),
        ] {
            let s = p(input);
            assert_eq!(s.to_string(), canon, "{input}");
            assert_eq!(p(canon), s, "{canon}");
        }
    }

    #[test]
    fn invalid_specs() {
        assert!(bad("0:80").contains("port 0"));
        assert!(bad("80:0").contains("guest port 0"));
        assert!(bad("90-80:1-11").contains("reversed"));
        assert!(bad("80-90:1-5").contains("11 ports"));
        assert!(bad("80-81:80").contains("2 ports"));
        assert!(bad("300.0.0.1:80:80").contains("not an IPv4"));
        assert!(bad("[::g]:80:80").contains("not an IPv6"));
        assert!(bad("[::1:80:80").contains("closing"));
        assert!(bad("[::1]80:80").contains("':'"));
        assert!(bad("::1:80:80").contains("brackets"));
        assert!(bad("80:80/sctp").contains("unknown protocol"));
        assert!(bad("80:80/").contains("missing protocol"));
        assert!(bad("80").contains("missing"));
        assert!(bad("").contains("empty"));
        assert!(bad(":80").contains("missing host port"));
        assert!(bad("80:").contains("missing guest port"));
        assert!(bad("127.0.0.1::80").contains("missing host port"));
        assert!(bad("65536:80").contains("above 65535"));
        assert!(bad("80:99999999999999999999").contains("above 65535"));
        assert!(bad("8o:80").contains("not a number"));
        assert!(bad("+80:80").contains("not a number"));
        assert!(bad("80-:80").contains("missing host port"));
        assert!(bad("[::1]:1:2:3").contains("too many"));
    }

    #[test]
    #[cfg(feature = "toml")]
    fn serde_forms() {
        let f: Forward = toml::from_str(
            "network = \"net0\"\npublish = \"127.0.0.1:8080:80/tcp\"\nto = \"web\"\n",
        )
        .expect("toml");
        assert_eq!(f.network, "net0");
        assert_eq!(f.to, Targets::from("web"));
        assert_eq!(f.spec, p("127.0.0.1:8080:80"));
        let j = serde_json::to_string(&f).expect("json");
        assert_eq!(
            j,
            r#"{"network":"net0","publish":"127.0.0.1:8080:80/tcp","to":"web"}"#
        );
        let back: Forward = serde_json::from_str(&j).expect("back");
        assert_eq!(back, f);
        let e = serde_json::from_str::<Forward>(
            r#"{"network":"n","publish":"80:80","to":"w","extra":1}"#,
        )
        .expect_err("unknown field");
        assert!(e.to_string().contains("extra"), "{e}");
        let e = serde_json::from_str::<Forward>(r#"{"network":"n","publish":"0:80","to":"w"}"#)
            .expect_err("bad spec");
        assert!(e.to_string().contains("port 0"), "{e}");
    }

    #[test]
    fn targets_one_or_many_and_checks_name_the_field() {
        let f: Forward = serde_json::from_str(
            r#"{"network":"n","publish":"80:80","to":["a","b"],"balance":"least_conn",
                "health":{"interval_ms":200}}"#,
        )
        .expect("list");
        assert_eq!(f.to.len(), 2);
        assert_eq!(f.policy(), Balance::LeastConn);
        let h = f.health.expect("health");
        assert_eq!(
            (h.interval_ms, h.timeout_ms, h.fall, h.rise),
            (200, 500, 2, 2)
        );
        let j = serde_json::to_value(&f).expect("json");
        assert_eq!(j["to"], serde_json::json!(["a", "b"]));
        assert!(f.check("forward[0]").is_err(), "timeout above interval");
        let e = serde_json::from_str::<Forward>(r#"{"network":"n","publish":"80:80","to":5}"#)
            .expect_err("not a string");
        assert!(e.to_string().contains("list"), "{e}");
        let field = |json: &str| {
            let f: Forward = serde_json::from_str(json).expect("parses");
            f.check("forward[0]").expect_err("refused").0
        };
        assert_eq!(
            field(r#"{"network":"n","publish":"80:80","to":[]}"#),
            "forward[0].to"
        );
        assert_eq!(
            field(r#"{"network":"n","publish":"80:80","to":["a",""]}"#),
            "forward[0].to[1]"
        );
        assert_eq!(
            field(r#"{"network":"n","publish":"80:80","to":["a","b","a"]}"#),
            "forward[0].to[2]"
        );
        assert_eq!(
            field(r#"{"network":"n","publish":"80:80","to":"a","balance":"random"}"#),
            "forward[0].balance"
        );
        assert_eq!(
            field(r#"{"network":"n","publish":"80:80","to":"a","health":{"interval_ms":0}}"#),
            "forward[0].health.interval_ms"
        );
        assert_eq!(
            field(r#"{"network":"n","publish":"80:80/udp","to":"a","health":{}}"#),
            "forward[0].health"
        );
        let ok: Forward =
            serde_json::from_str(r#"{"network":"n","publish":"80:80","to":["a","b"]}"#)
                .expect("ok");
        assert_eq!(ok.check(""), Ok(()));
        assert_eq!(ok.to.to_string(), "a,b");
    }
}
