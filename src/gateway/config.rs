//! A gateway's settings ([`GatewayConfig`]) and what follows from them: the NAT settings, its
//! own addresses, the policy of its port.

use super::*;

/// Settings of one network's gateway.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GatewayConfig {
    /// The network it serves.
    pub network: String,
    /// Its MAC.
    pub mac: Mac,
    /// The IPv4 subnet.
    pub subnet: Ipv4Net,
    /// Its IPv4 address (default: the subnet's first host).
    pub addr: Ipv4Addr,
    /// The IPv6 prefix (a /64 for SLAAC), if IPv6 is on.
    pub ipv6: Option<Ipv6Net>,
    /// The gateway's IPv6 address in that prefix; None: `prefix::1` (slirp4netns: `fd00::2`).
    pub ipv6_gateway: Option<Ipv6Addr>,
    /// A second IPv6 address that serves DNS only (slirp4netns's `fd00::3`), announced by RDNSS;
    /// None: the gateway's own IPv6 address serves DNS.
    pub dns_addr6: Option<Ipv6Addr>,
    /// Link MTU announced by DHCP and RA.
    pub mtu: u16,
    /// DNS domain of the network's endpoints.
    pub domain: String,
    /// Serve DHCPv4.
    pub dhcp: bool,
    /// DHCP lease time in seconds.
    pub lease_secs: u32,
    /// DHCP pool `(first, last)`; default: the whole subnet but the gateway.
    pub dhcp_range: Option<(Ipv4Addr, Ipv4Addr)>,
    /// Static DHCP leases.
    pub static_leases: Vec<StaticLease>,
    /// Where non-local DNS queries go.
    pub upstreams: Upstreams,
    /// A second IPv4 address that serves DNS only (slirp4netns's 10.0.2.3); None: the gateway's
    /// own address serves DNS.
    pub dns_addr: Option<Ipv4Addr>,
    /// `dns_addr` (and `dns_addr6`) are kept (they answer ARP/NDP and ping) but serve no DNS:
    /// queries to them get no answer at all, not even a reset (slirp4netns's `--disable-dns`);
    /// DHCP and RDNSS name no server.
    pub dns_silent: bool,
    /// No NAT egress at all (Docker `--internal`).
    pub internal: bool,
    /// Map the gateway's address (ports it does not serve) to the host's loopback.
    pub host_loopback: bool,
    /// Bind egress IPv4 sockets to this host address.
    pub outbound4: Option<Ipv4Addr>,
    /// Bind egress IPv6 sockets to this host address.
    pub outbound6: Option<Ipv6Addr>,
    /// Most NAT flows on this network.
    pub max_flows: usize,
    /// Most NAT flows per guest address.
    pub max_flows_per_guest: usize,
    /// DNS forwarding threads (0: none, names outside the network's domain get SERVFAIL).
    pub dns_workers: usize,
    /// Port security by default on the network's ports (see [`crate::bridge::security`]).
    pub port_security: bool,
    /// Let guests reach the cloud metadata service through NAT (169.254.169.254).
    pub allow_metadata: bool,
    /// Which names guests may resolve through the gateway (None: every name).
    pub dns_policy: Option<dns::DnsPolicy>,
}

impl GatewayConfig {
    /// Defaults for `network` on `subnet`: gateway at the first host, IPv6 fd88::/64, MTU 1500,
    /// domain `usernet`, DHCP on, upstreams from `/etc/resolv.conf`.
    pub fn new(network: &str, subnet: Ipv4Net) -> Self {
        let addr = subnet.hosts().next().unwrap_or(subnet.network());
        GatewayConfig {
            network: network.to_string(),
            mac: Mac::random_local(),
            subnet,
            addr,
            ipv6: "fd88::/64".parse().ok(),
            ipv6_gateway: None,
            dns_addr6: None,
            mtu: 1500,
            domain: "usernet".into(),
            dhcp: true,
            lease_secs: 3600,
            dhcp_range: None,
            static_leases: Vec::new(),
            upstreams: Upstreams::ResolvConf("/etc/resolv.conf".into()),
            dns_addr: None,
            dns_silent: false,
            internal: false,
            host_loopback: true,
            outbound4: None,
            outbound6: None,
            max_flows: 2048,
            max_flows_per_guest: 1024,
            dns_workers: DnsConfig::default().workers,
            port_security: true,
            allow_metadata: false,
            dns_policy: None,
        }
    }

    /// The NAT settings, or `None` for an internal network.
    pub fn nat_config(&self) -> Option<NatConfig> {
        if self.internal {
            return None;
        }
        let mut n = NatConfig::new(self.addr, self.addr6());
        n.host_loopback = self.host_loopback;
        n.outbound4 = self.outbound4;
        n.outbound6 = self.outbound6;
        n.max_flows = self.max_flows;
        n.max_flows_per_guest = self.max_flows_per_guest;
        n.allow_metadata = self.allow_metadata;
        n.local_nets.push(ipnet::IpNet::V4(self.subnet));
        if let Some(p) = self.ipv6 {
            n.local_nets.push(ipnet::IpNet::V6(p));
        }
        Some(n)
    }

    /// The gateway's IPv6 address in the prefix (`ipv6_gateway`, default `prefix::1`).
    pub fn addr6(&self) -> Option<Ipv6Addr> {
        self.ipv6.map(|p| {
            self.ipv6_gateway
                .unwrap_or_else(|| Ipv6Addr::from(u128::from(p.network()) | 1))
        })
    }

    /// The IPv6 address serving DNS only (`dns_addr6`), when IPv6 is on.
    pub fn dns6(&self) -> Option<Ipv6Addr> {
        self.ipv6.and(self.dns_addr6)
    }

    /// Its link-local address.
    pub fn link_local(&self) -> Ipv6Addr {
        ndp::link_local(self.mac)
    }

    /// Every address the gateway answers on (owned by its port; no guest may use them).
    pub fn own_addrs(&self) -> Vec<IpAddr> {
        let mut v = vec![IpAddr::V4(self.addr)];
        v.extend(self.dns_addr.map(IpAddr::V4));
        if let Some(a6) = self.addr6() {
            v.push(IpAddr::V6(a6));
            v.push(IpAddr::V6(self.link_local()));
        }
        v.extend(self.dns6().map(IpAddr::V6));
        v
    }

    /// The bridge policy of the gateway's own port: its MAC and addresses are its own (no guest
    /// may use them), and its sources are not checked (NAT speaks for every address).
    pub fn port_policy(&self) -> PortPolicy {
        PortPolicy {
            allowed_macs: vec![self.mac],
            allowed_ips: self.own_addrs(),
            port_security: Some(false),
            ..PortPolicy::default()
        }
    }

    /// Makes `guard` the network's ownership table for this gateway: its scope, the network's
    /// port-security default, and `waker` woken when an address changes owner.
    pub(super) fn attach_guard(&self, guard: &NetGuard, waker: &Arc<Waker>) {
        guard.set_scope(self.scope());
        guard.set_enabled(self.port_security);
        guard.set_waker(waker.clone());
    }

    /// What first-seen guest addresses may be on this network, for port security.
    pub fn scope(&self) -> crate::bridge::security::Scope {
        crate::bridge::security::Scope {
            subnet4: Some(self.subnet),
            prefix6: self.ipv6,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> GatewayConfig {
        GatewayConfig::new("n", "10.5.0.0/24".parse().expect("subnet"))
    }

    #[test]
    fn defaults_put_the_gateway_at_the_first_host() {
        let c = cfg();
        assert_eq!(c.addr, Ipv4Addr::new(10, 5, 0, 1));
        assert_eq!(c.addr6(), "fd88::1".parse().ok());
        assert!(
            c.mac.is_valid_source() && c.mac.0[0] & 0x02 != 0,
            "local unicast MAC"
        );
        assert_eq!((c.mtu, c.domain.as_str(), c.dhcp), (1500, "usernet", true));
        let mut c2 = cfg();
        c2.ipv6_gateway = "fd88::2".parse().ok();
        assert_eq!(c2.addr6(), "fd88::2".parse().ok());
        c2.ipv6 = None;
        assert_eq!((c2.addr6(), c2.dns6()), (None, None));
    }

    #[test]
    fn own_addresses_are_the_gateway_port_s_alone() {
        let mut c = cfg();
        c.dns_addr = Some(Ipv4Addr::new(10, 5, 0, 3));
        c.dns_addr6 = "fd88::3".parse().ok();
        let own = c.own_addrs();
        for a in ["10.5.0.1", "10.5.0.3", "fd88::1", "fd88::3"] {
            assert!(own.contains(&a.parse().expect("ip")), "{a} in {own:?}");
        }
        assert!(own.contains(&IpAddr::V6(c.link_local())));
        let p = c.port_policy();
        assert_eq!(p.allowed_macs, vec![c.mac]);
        assert_eq!(p.allowed_ips, own);
        assert_eq!(p.port_security, Some(false), "NAT speaks for every address");
    }

    #[test]
    fn nat_settings_follow_the_network() {
        let mut c = cfg();
        c.host_loopback = false;
        c.max_flows = 7;
        let n = c.nat_config().expect("NAT");
        assert!(!n.host_loopback);
        assert_eq!(n.max_flows, 7);
        assert!(n.local_nets.iter().any(|x| x.to_string() == "10.5.0.0/24"));
        assert!(n.local_nets.iter().any(|x| x.to_string() == "fd88::/64"));
        c.internal = true;
        assert!(c.nat_config().is_none(), "an internal network has no NAT");
        let s = c.scope();
        assert_eq!(s.subnet4, Some(c.subnet));
    }
}
