//! What usernet configures on an interface it creates inside a namespace: MAC, MTU, addresses,
//! routes, and `lo` up, over rtnetlink (`link::rtnl`), so a container needs no DHCP client.
//!
//! One plan serves every place that configures a guest: `attach --ip` and the API's `add_port`
//! with addresses, the CNI plugin, `usernet run` and the slirp4netns mode's `-c`.

use std::io;
use std::net::IpAddr;

use ipnet::IpNet;

use super::netns::if_index;
use super::rtnl::Rtnl;
use crate::wire::Mac;

/// A route the guest gets: `dst` via `via`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Route {
    /// Destination (`0.0.0.0/0` or `::/0` for the default route).
    pub dst: IpNet,
    /// Next hop.
    pub via: IpAddr,
}

impl Route {
    /// The default route of `via`'s family.
    pub fn default_via(via: IpAddr) -> Route {
        let dst = match via {
            IpAddr::V4(_) => IpNet::V4(ipnet::Ipv4Net::default()),
            IpAddr::V6(_) => IpNet::V6(ipnet::Ipv6Net::default()),
        };
        Route { dst, via }
    }
}

/// An interface's configuration. Applied in order: `lo` up, MAC (while the link is down), link
/// up with the MTU, addresses (IPv6 ones without duplicate address detection, so they are
/// usable at once), routes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct IfConfig {
    /// MAC address to set.
    pub mac: Option<Mac>,
    /// MTU to set.
    pub mtu: Option<u32>,
    /// Addresses with their prefix length.
    pub addrs: Vec<IpNet>,
    /// Routes.
    pub routes: Vec<Route>,
    /// Bring `lo` up too (servers in the namespace bind 127.0.0.1; Podman's rootlessport
    /// connects to the container from inside).
    pub lo_up: bool,
}

impl IfConfig {
    /// Applies the configuration to `ifname` in the calling thread's namespace. The link
    /// should be down (a new TAP created with `up: false`) when a MAC is set.
    pub fn apply(&self, ifname: &str) -> io::Result<()> {
        let idx = if_index(ifname).map_err(|e| io::Error::new(e.source.kind(), e.to_string()))?;
        let mut nl = Rtnl::open()?;
        if self.lo_up {
            nl.link_up(1, None)?;
        }
        if let Some(m) = self.mac {
            nl.set_mac(idx, m.0)?;
        }
        nl.link_up(idx, self.mtu)?;
        for a in &self.addrs {
            nl.add_address(idx, a.addr(), a.prefix_len())?;
        }
        for r in &self.routes {
            nl.add_route(r.dst, r.via)?;
        }
        Ok(())
    }
}

/// A random locally administered unicast MAC (`x2:..`), for an interface usernet creates and
/// must know the MAC of up front.
pub fn random_mac() -> Mac {
    let mut b = [0u8; 6];
    if !crate::sys::random::fill(&mut b) {
        // No entropy source: time and pid are unique enough for a MAC on one host.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let x = (t as u64) ^ (u64::from(std::process::id()) << 32);
        b.copy_from_slice(&x.to_le_bytes()[..6]);
    }
    b[0] = (b[0] & 0xfe) | 0x02;
    Mac(b)
}

/// The EUI-64 interface identifier of `mac` in `prefix` (RFC 4291 appendix A): the address
/// SLAAC would give the interface.
pub fn eui64(prefix: ipnet::Ipv6Net, mac: Mac) -> std::net::Ipv6Addr {
    let m = mac.0;
    let iid = [m[0] ^ 0x02, m[1], m[2], 0xff, 0xfe, m[3], m[4], m[5]];
    let mut o = prefix.network().octets();
    o[8..].copy_from_slice(&iid);
    std::net::Ipv6Addr::from(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_macs_are_local_unicast_and_differ() {
        let a = random_mac();
        let b = random_mac();
        assert_eq!(a.0[0] & 0x03, 0x02);
        assert_ne!(a, b);
    }

    #[test]
    fn eui64_matches_rfc4291() {
        let p: ipnet::Ipv6Net = "fd00:1::/64".parse().expect("prefix");
        let a = eui64(p, Mac([0x02, 0x42, 0xac, 0x11, 0x00, 0x02]));
        assert_eq!(
            a,
            "fd00:1::42:acff:fe11:2"
                .parse::<std::net::Ipv6Addr>()
                .expect("addr")
        );
    }

    #[test]
    fn default_route_family() {
        let r = Route::default_via("10.0.0.1".parse().expect("ip"));
        assert_eq!(r.dst.to_string(), "0.0.0.0/0");
        let r = Route::default_via("fd00::1".parse().expect("ip"));
        assert_eq!(r.dst.to_string(), "::/0");
    }
}
