//! Services' virtual IPs (cluster mode, `[[service]] vip`): addresses inside a network that
//! belong to no guest, which the gateway answers for (ARP, ping) and whose service ports NAT
//! sends to a listener of the service on the host's loopback.
//!
//! A guest connecting to `VIP:PORT` reaches the gateway (its ARP for the VIP is answered with
//! the gateway's MAC); NAT sees a destination inside the network's own subnet, which it never
//! routes, except where this table maps `VIP:PORT` to a host address: that one mapping is
//! connected, nothing else of the host (a VIP's other ports are refused with an RST, other
//! protocols are not answered but ping). The table is swapped whole (`ArcSwap`): NAT reads it
//! without a lock, and only for a new connection to an address of the network's own subnet.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;

/// A network's virtual IPs and where each of their ports goes.
#[derive(Debug, Default)]
pub struct ServiceIps {
    table: ArcSwap<HashMap<Ipv4Addr, HashMap<u16, SocketAddr>>>,
    /// Serialises writers (readers never wait).
    write: Mutex<()>,
}

impl ServiceIps {
    /// Adds virtual IP `ip` with no port yet (answered, every port refused).
    pub fn add_ip(&self, ip: Ipv4Addr) {
        let _w = self.write.lock();
        let mut t = HashMap::clone(&self.table.load());
        t.entry(ip).or_default();
        self.table.store(Arc::new(t));
    }

    /// Sends TCP connections to `ip:port` to `target` (adding `ip` if it is not yet).
    pub fn set_port(&self, ip: Ipv4Addr, port: u16, target: SocketAddr) {
        let _w = self.write.lock();
        let mut t = HashMap::clone(&self.table.load());
        t.entry(ip).or_default().insert(port, target);
        self.table.store(Arc::new(t));
    }

    /// True when `ip` is a virtual IP here.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => self.table.load().contains_key(&a),
            IpAddr::V6(_) => false,
        }
    }

    /// Where a TCP connection to `dst` goes: `None` when `dst`'s address is no virtual IP
    /// here, `Some(None)` when it is one but `dst`'s port is not a service's.
    pub fn target(&self, dst: SocketAddr) -> Option<Option<SocketAddr>> {
        let IpAddr::V4(a) = dst.ip() else {
            return None;
        };
        self.table
            .load()
            .get(&a)
            .map(|ports| ports.get(&dst.port()).copied())
    }

    /// The virtual IPs, in no order.
    pub fn ips(&self) -> Vec<Ipv4Addr> {
        self.table.load().keys().copied().collect()
    }

    /// True when there is no virtual IP.
    pub fn is_empty(&self) -> bool {
        self.table.load().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_mapped_port_of_a_virtual_ip_has_a_target() {
        let v = ServiceIps::default();
        let vip = Ipv4Addr::new(10, 70, 255, 1);
        assert!(v.is_empty());
        v.add_ip(vip);
        assert!(v.contains(IpAddr::V4(vip)));
        assert_eq!(v.target(SocketAddr::new(IpAddr::V4(vip), 80)), Some(None));
        let to: SocketAddr = "127.0.0.1:40000".parse().expect("addr");
        v.set_port(vip, 80, to);
        assert_eq!(
            v.target(SocketAddr::new(IpAddr::V4(vip), 80)),
            Some(Some(to))
        );
        assert_eq!(v.target(SocketAddr::new(IpAddr::V4(vip), 81)), Some(None));
        let other = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 70, 0, 9)), 80);
        assert_eq!(v.target(other), None);
        assert!(!v.contains(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)));
        assert_eq!(v.ips(), vec![vip]);
    }
}
