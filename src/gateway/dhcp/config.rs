//! The configuration of a [`DhcpServer`] ([`DhcpConfig`], [`StaticLease`], the default pool)
//! and its validation in [`DhcpServer::new`].

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use dhcproto::Name;
use ipnet::Ipv4Net;

use super::{
    DEFAULT_LEASE_SECS, DhcpError, DhcpServer, DhcpStats, MAX_DNS_SERVERS, MIN_LEASE_SECS,
    config_err, sanitize_hostname,
};
use crate::wire::Mac;

/// A fixed address for one MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StaticLease {
    /// The client's hardware address.
    pub mac: Mac,
    /// The address it always gets; inside the subnet, may be inside or outside the pool.
    pub ip: Ipv4Addr,
    /// DNS name registered for it; takes precedence over the hostname the client sends.
    pub hostname: Option<String>,
}

impl StaticLease {
    /// `mac` always gets `ip`; `hostname`, if given, is registered in DNS for it.
    pub fn new(mac: Mac, ip: Ipv4Addr, hostname: Option<String>) -> StaticLease {
        StaticLease { mac, ip, hostname }
    }
}

/// Configuration of one [`DhcpServer`]; validated by [`DhcpServer::new`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DhcpConfig {
    /// Gateway address, also the server identifier (option 54).
    pub server: Ipv4Addr,
    /// The served subnet; gives the subnet mask (option 1) and broadcast address (option 28).
    pub subnet: Ipv4Net,
    /// First address of the dynamic pool.
    pub range_start: Ipv4Addr,
    /// Last address of the dynamic pool (inclusive).
    pub range_end: Ipv4Addr,
    /// Lease time in seconds (option 51); T1 is half of it, T2 seven eighths.
    pub lease_secs: u32,
    /// Default router (option 3).
    pub router: Option<Ipv4Addr>,
    /// DNS servers (option 6).
    pub dns: Vec<Ipv4Addr>,
    /// Interface MTU (option 26).
    pub mtu: Option<u16>,
    /// Domain name (option 15).
    pub domain: Option<String>,
    /// Domain search list (option 119, RFC 3397).
    pub search: Vec<String>,
    /// Fixed addresses by MAC.
    pub static_leases: Vec<StaticLease>,
}

impl DhcpConfig {
    /// Defaults for `subnet` served from `server`: the pool is `.2 ..= broadcast-1` without the
    /// server (when the server splits that span, the larger side), leases of
    /// [`DEFAULT_LEASE_SECS`], the server as router and DNS server, no MTU, domain or search list.
    pub fn for_subnet(subnet: Ipv4Net, server: Ipv4Addr) -> Self {
        let (range_start, range_end) = default_pool(subnet.trunc(), server);
        DhcpConfig {
            server,
            subnet,
            range_start,
            range_end,
            lease_secs: DEFAULT_LEASE_SECS,
            router: Some(server),
            dns: vec![server],
            mtu: None,
            domain: None,
            search: Vec::new(),
            static_leases: Vec::new(),
        }
    }
}

/// The largest run of `.2 ..= broadcast-1` not containing `server` (falling back to `.1` for
/// subnets too small to have one). An empty result (`start > end`) is rejected by `new`.
fn default_pool(net: Ipv4Net, server: Ipv4Addr) -> (Ipv4Addr, Ipv4Addr) {
    let first = u32::from(net.network()).saturating_add(1);
    let last = u32::from(net.broadcast()).saturating_sub(1);
    let s = u32::from(server);
    let mut runs: Vec<(u32, u32)> = Vec::new();
    for lo in [first.saturating_add(1), first] {
        if net.contains(&server) && (lo..=last).contains(&s) {
            runs.push((lo, s.saturating_sub(1)));
            runs.push((s.saturating_add(1), last));
        } else {
            runs.push((lo, last));
        }
        if runs.iter().any(|&(a, b)| a <= b) {
            break;
        }
    }
    let best = runs
        .into_iter()
        .filter(|&(a, b)| a <= b)
        .max_by_key(|&(a, b)| (b - a, a))
        .unwrap_or((last, first));
    (Ipv4Addr::from(best.0), Ipv4Addr::from(best.1))
}

/// A syntactically valid domain name: labels of 1..=63 `[A-Za-z0-9-]` not starting or ending
/// with `-`, at most 253 characters, an optional trailing dot.
fn valid_domain(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

impl DhcpServer {
    /// Validates `cfg` and makes a server with no bindings.
    ///
    /// Checks: the subnet has room for hosts (prefix ≤ 30); the server is a host address of
    /// the subnet; the pool is non-empty, inside the subnet, and excludes the network,
    /// broadcast and server addresses; the router is a host address of the subnet; DNS servers
    /// are unicast and at most [`MAX_DNS_SERVERS`]; the MTU is at least 68; the lease is at
    /// least [`MIN_LEASE_SECS`] and finite; domain and search names are valid; static leases
    /// have unicast MACs, host addresses of the subnet other than the server, unique MACs and
    /// addresses, and hostnames that are DNS labels (normalised by [`sanitize_hostname`]).
    /// The error names the offending field.
    pub fn new(mut cfg: DhcpConfig) -> Result<Self, DhcpError> {
        let net = cfg.subnet.trunc();
        cfg.subnet = net;
        if net.prefix_len() > 30 {
            return Err(config_err(
                "subnet",
                format!("{net} has no room for a server and clients (prefix must be ≤ 30)"),
            ));
        }
        let is_host =
            |ip: Ipv4Addr| net.contains(&ip) && ip != net.network() && ip != net.broadcast();
        if !is_host(cfg.server) {
            return Err(config_err(
                "server",
                format!("{} is not a host address of {net}", cfg.server),
            ));
        }
        for (field, ip) in [
            ("range_start", cfg.range_start),
            ("range_end", cfg.range_end),
        ] {
            if !is_host(ip) {
                return Err(config_err(
                    field,
                    format!("{ip} is not a host address of {net} (network and broadcast excluded)"),
                ));
            }
        }
        if cfg.range_start > cfg.range_end {
            return Err(config_err(
                "range_end",
                format!("{} is below range_start {}", cfg.range_end, cfg.range_start),
            ));
        }
        if (cfg.range_start..=cfg.range_end).contains(&cfg.server) {
            return Err(config_err(
                "server",
                format!(
                    "{} lies inside the pool {}-{}",
                    cfg.server, cfg.range_start, cfg.range_end
                ),
            ));
        }
        if cfg.lease_secs < MIN_LEASE_SECS || cfg.lease_secs == u32::MAX {
            return Err(config_err(
                "lease_secs",
                format!(
                    "{} is out of range ({MIN_LEASE_SECS}..{})",
                    cfg.lease_secs,
                    u32::MAX
                ),
            ));
        }
        if let Some(r) = cfg.router
            && !is_host(r)
        {
            return Err(config_err(
                "router",
                format!("{r} is not a host address of {net}"),
            ));
        }
        if cfg.dns.len() > MAX_DNS_SERVERS {
            return Err(config_err(
                "dns",
                format!(
                    "{} servers listed, at most {MAX_DNS_SERVERS}",
                    cfg.dns.len()
                ),
            ));
        }
        for (i, ip) in cfg.dns.iter().enumerate() {
            if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() {
                return Err(config_err(
                    format!("dns[{i}]"),
                    format!("{ip} is not a unicast address"),
                ));
            }
        }
        if let Some(mtu) = cfg.mtu
            && mtu < 68
        {
            return Err(config_err(
                "mtu",
                format!("{mtu} is below the IPv4 minimum of 68"),
            ));
        }
        if let Some(d) = &cfg.domain
            && !valid_domain(d)
        {
            return Err(config_err(
                "domain",
                format!("{d:?} is not a valid domain name"),
            ));
        }
        let mut search = Vec::with_capacity(cfg.search.len());
        for (i, s) in cfg.search.iter().enumerate() {
            let name = if valid_domain(s) {
                Name::from_ascii(s).ok()
            } else {
                None
            };
            match name {
                Some(n) => search.push(n),
                None => {
                    return Err(config_err(
                        format!("search[{i}]"),
                        format!("{s:?} is not a valid domain name"),
                    ));
                }
            }
        }
        let mut statics = HashMap::new();
        let mut static_ips = HashMap::new();
        for (i, s) in cfg.static_leases.iter_mut().enumerate() {
            if !s.mac.is_valid_source() {
                return Err(config_err(
                    format!("static_leases[{i}].mac"),
                    format!("{} is not a unicast MAC address", s.mac),
                ));
            }
            if !is_host(s.ip) || s.ip == cfg.server {
                return Err(config_err(
                    format!("static_leases[{i}].ip"),
                    format!(
                        "{} is not a host address of {net} other than the server {}",
                        s.ip, cfg.server
                    ),
                ));
            }
            if let Some(h) = &s.hostname {
                match sanitize_hostname(h) {
                    Some(clean) => s.hostname = Some(clean),
                    None => {
                        return Err(config_err(
                            format!("static_leases[{i}].hostname"),
                            format!("{h:?} is not a DNS label ([a-z0-9-], 1-63 characters)"),
                        ));
                    }
                }
            }
            if statics.insert(s.mac, s.clone()).is_some() {
                return Err(config_err(
                    format!("static_leases[{i}].mac"),
                    format!("{} has more than one static lease", s.mac),
                ));
            }
            if static_ips.insert(s.ip, s.mac).is_some() {
                return Err(config_err(
                    format!("static_leases[{i}].ip"),
                    format!("{} is given to more than one MAC", s.ip),
                ));
            }
        }
        Ok(DhcpServer {
            cfg,
            search,
            statics,
            static_ips,
            bindings: BTreeMap::new(),
            by_mac: HashMap::new(),
            declined: BTreeMap::new(),
            prev_by_mac: HashMap::new(),
            prev_by_ip: HashMap::new(),
            pending: Vec::new(),
            next_deadline: u64::MAX,
            stats: DhcpStats::default(),
            foreign: std::collections::HashSet::new(),
            claimed: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    #[test]
    fn for_subnet_defaults() {
        let c = DhcpConfig::for_subnet(NET.parse().unwrap(), SERVER);
        assert_eq!(
            (c.range_start, c.range_end, c.lease_secs),
            (ip(2), ip(254), 3600)
        );
        assert_eq!((c.router, c.dns.clone()), (Some(SERVER), vec![SERVER]));
        DhcpServer::new(c).unwrap();
        let c = DhcpConfig::for_subnet(NET.parse().unwrap(), ip(100));
        assert_eq!((c.range_start, c.range_end), (ip(101), ip(254)));
        DhcpServer::new(c).unwrap();
        let c = DhcpConfig::for_subnet(NET.parse().unwrap(), ip(254));
        assert_eq!((c.range_start, c.range_end), (ip(2), ip(253)));
        DhcpServer::new(c).unwrap();
        let c = DhcpConfig::for_subnet("10.0.0.0/30".parse().unwrap(), Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(
            (c.range_start, c.range_end),
            (Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 2))
        );
        DhcpServer::new(c).unwrap();
        let c = DhcpConfig::for_subnet("10.0.0.0/30".parse().unwrap(), Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(
            (c.range_start, c.range_end),
            (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 1))
        );
        DhcpServer::new(c).unwrap();
        // Host bits in the subnet are ignored.
        let c = DhcpConfig::for_subnet("10.88.0.1/24".parse().unwrap(), SERVER);
        assert_eq!(
            DhcpServer::new(c).unwrap().config().subnet,
            NET.parse::<Ipv4Net>().unwrap()
        );
    }

    #[test]
    fn config_validation_names_the_field() {
        let check = |f: &dyn Fn(&mut DhcpConfig), field: &str| {
            let mut c = base_cfg();
            f(&mut c);
            match DhcpServer::new(c) {
                Err(DhcpError::Config { field: got, reason }) => {
                    assert_eq!(got, field, "{reason}");
                    assert!(!reason.is_empty());
                }
                other => panic!("{field}: expected a config error, got {other:?}"),
            }
        };
        check(
            &|c| c.range_start = Ipv4Addr::new(10, 99, 0, 2),
            "range_start",
        );
        check(&|c| c.range_end = Ipv4Addr::new(10, 99, 0, 2), "range_end");
        check(&|c| c.range_start = ip(0), "range_start");
        check(&|c| c.range_end = ip(255), "range_end");
        check(
            &|c| (c.range_start, c.range_end) = (ip(50), ip(40)),
            "range_end",
        );
        check(&|c| c.range_start = SERVER, "server");
        check(&|c| c.server = Ipv4Addr::new(192, 168, 0, 1), "server");
        check(&|c| c.subnet = "10.88.0.0/31".parse().unwrap(), "subnet");
        check(&|c| c.lease_secs = 0, "lease_secs");
        check(
            &|c| c.router = Some(Ipv4Addr::new(192, 168, 0, 1)),
            "router",
        );
        check(&|c| c.dns = vec![SERVER, Ipv4Addr::UNSPECIFIED], "dns[1]");
        check(&|c| c.mtu = Some(20), "mtu");
        check(&|c| c.domain = Some("bad domain".into()), "domain");
        check(
            &|c| c.search = vec!["ok.example".into(), "-bad".into()],
            "search[1]",
        );
        let sl = |n: u8, last: u8, h: Option<&str>| StaticLease {
            mac: mac(n),
            ip: ip(last),
            hostname: h.map(String::from),
        };
        check(
            &|c| c.static_leases = vec![sl(1, 10, None), sl(2, 10, None)],
            "static_leases[1].ip",
        );
        check(
            &|c| c.static_leases = vec![sl(1, 10, None), sl(1, 11, None)],
            "static_leases[1].mac",
        );
        check(
            &|c| {
                c.static_leases = vec![StaticLease {
                    mac: Mac::BROADCAST,
                    ip: ip(10),
                    hostname: None,
                }]
            },
            "static_leases[0].mac",
        );
        check(
            &|c| {
                c.static_leases = vec![StaticLease {
                    mac: mac(1),
                    ip: Ipv4Addr::new(10, 99, 0, 1),
                    hostname: None,
                }]
            },
            "static_leases[0].ip",
        );
        check(
            &|c| c.static_leases = vec![sl(1, 1, None)],
            "static_leases[0].ip",
        );
        check(
            &|c| c.static_leases = vec![sl(1, 10, Some("no way"))],
            "static_leases[0].hostname",
        );
        let e = DhcpServer::new({
            let mut c = base_cfg();
            c.range_end = Ipv4Addr::new(10, 99, 0, 2);
            c
        })
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid DHCP configuration: range_end: 10.99.0.2 is not a host address of \
             10.88.0.0/24 (network and broadcast excluded)"
        );
    }
}
