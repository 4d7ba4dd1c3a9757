//! Broadcasts a host's own gateway answers (cluster mode: no broadcast crosses the underlay
//! in steady state). Pure: [`local_request`] classifies an outgoing broadcast or multicast
//! frame; [`super::VxlanShared::answered_locally`] decides with the port's state.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::wire::{is_dhcp_to_server, l3};

/// A broadcast or multicast request the local gateway may answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LocalRequest {
    /// A request to a server the gateway runs: DHCPv4 to port 67, DHCPv6 to port 547, or an
    /// IPv6 router solicitation.
    Server,
    /// An ARP request or a neighbour solicitation for this address.
    Resolve(IpAddr),
}

/// What a broadcast or multicast `frame` asks, if the gateway may be the one to answer it.
/// Unicast frames and anything else give `None` (they go where they go).
pub(crate) fn local_request(frame: &[u8]) -> Option<LocalRequest> {
    if frame.first().is_none_or(|b| b & 1 == 0) {
        return None;
    }
    if is_dhcp_to_server(frame) {
        return Some(LocalRequest::Server);
    }
    let (et, p) = l3(frame)?;
    match et {
        0x0806 => {
            // Ethernet/IPv4 ARP request: htype 1, ptype 0x0800, hlen 6, plen 4, op 1.
            if p.len() < 28 || p[..8] != [0, 1, 8, 0, 6, 4, 0, 1] {
                return None;
            }
            let tpa = Ipv4Addr::new(p[24], p[25], p[26], p[27]);
            Some(LocalRequest::Resolve(IpAddr::V4(tpa)))
        }
        0x86dd => {
            // Only a bare IPv6 header: NDP never carries extension headers (RFC 4861 needs
            // hop limit 255, and an option-less path).
            if p.len() < 40 || p[0] >> 4 != 6 {
                return None;
            }
            let body = &p[40..];
            match p[6] {
                58 => match body.first()? {
                    133 => Some(LocalRequest::Server),
                    135 if body.len() >= 24 => {
                        let mut t = [0u8; 16];
                        t.copy_from_slice(&body[8..24]);
                        Some(LocalRequest::Resolve(IpAddr::V6(Ipv6Addr::from(t))))
                    }
                    _ => None,
                },
                17 if body.get(2..4) == Some(&[2, 0x23][..]) => Some(LocalRequest::Server),
                _ => None,
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eth(dst: [u8; 6], et: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = dst.to_vec();
        f.extend_from_slice(&[2, 0, 0, 0, 0, 9]);
        f.extend_from_slice(&et.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn arp(op: u8, tpa: [u8; 4]) -> Vec<u8> {
        let mut a = vec![0, 1, 8, 0, 6, 4, 0, op, 2, 0, 0, 0, 0, 9, 10, 0, 0, 2];
        a.extend_from_slice(&[0; 6]);
        a.extend_from_slice(&tpa);
        a
    }

    fn ipv6(next: u8, body: &[u8]) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0];
        p.extend_from_slice(&(body.len() as u16).to_be_bytes());
        p.extend_from_slice(&[next, 255]);
        p.extend_from_slice(&[0; 32]);
        p.extend_from_slice(body);
        p
    }

    #[test]
    fn classifies_arp_ns_rs_and_dhcp_and_leaves_the_rest() {
        const BC: [u8; 6] = [0xff; 6];
        const MC6: [u8; 6] = [0x33, 0x33, 0xff, 0, 0, 1];
        let req = eth(BC, 0x0806, &arp(1, [10, 0, 0, 7]));
        assert_eq!(
            local_request(&req),
            Some(LocalRequest::Resolve("10.0.0.7".parse().expect("ip")))
        );
        // A reply, or the same request unicast, is not ours to keep.
        assert_eq!(
            local_request(&eth(BC, 0x0806, &arp(2, [10, 0, 0, 7]))),
            None
        );
        let mut uni = req.clone();
        uni[0] = 2;
        assert_eq!(local_request(&uni), None);
        let mut ns = vec![135, 0, 0, 0, 0, 0, 0, 0];
        let target: Ipv6Addr = "fd00::7".parse().expect("ip");
        ns.extend_from_slice(&target.octets());
        assert_eq!(
            local_request(&eth(MC6, 0x86dd, &ipv6(58, &ns))),
            Some(LocalRequest::Resolve(IpAddr::V6(target)))
        );
        assert_eq!(
            local_request(&eth(MC6, 0x86dd, &ipv6(58, &[133, 0, 0, 0, 0, 0, 0, 0]))),
            Some(LocalRequest::Server)
        );
        assert_eq!(
            local_request(&eth(
                MC6,
                0x86dd,
                &ipv6(17, &[2, 0x22, 2, 0x23, 0, 8, 0, 0])
            )),
            Some(LocalRequest::Server)
        );
        let dhcp = [
            0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 0, 0, 0, 0, 255, 255, 255, 255, 0, 68, 0, 67,
            0, 8, 0, 0,
        ];
        assert_eq!(
            local_request(&eth(BC, 0x0800, &dhcp)),
            Some(LocalRequest::Server)
        );
        // Application broadcasts, MLD, truncated frames: flooded as before.
        let mut app = dhcp;
        app[23] = 99;
        assert_eq!(local_request(&eth(BC, 0x0800, &app)), None);
        assert_eq!(
            local_request(&eth(MC6, 0x86dd, &ipv6(58, &[143, 0, 0, 0]))),
            None
        );
        for n in 0..req.len() {
            let _ = local_request(&req[..n]);
        }
        assert_eq!(local_request(&[]), None);
    }

    #[test]
    fn answered_locally_once_set_and_pinned_macs_stay_behind_their_vtep() {
        use super::super::{VxlanShared, VxlanSpec};
        use crate::wire::Mac;
        use std::time::{Duration, Instant};
        let (r1, r2): (IpAddr, IpAddr) = (
            "192.0.2.2".parse().expect("ip"),
            "192.0.2.3".parse().expect("ip"),
        );
        let mut spec = VxlanSpec::new(42, "192.0.2.1".parse().expect("ip"));
        spec.remotes = vec![r1, r2];
        let v = VxlanShared::new(&spec, 1450, 1000);
        let dhcp = [
            0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 0, 0, 0, 0, 255, 255, 255, 255, 0, 68, 0, 67,
            0, 8, 0, 0,
        ];
        let dhcp = eth([0xff; 6], 0x0800, &dhcp);
        let arp7 = eth([0xff; 6], 0x0806, &arp(1, [10, 0, 0, 7]));
        let arp8 = eth([0xff; 6], 0x0806, &arp(1, [10, 0, 0, 8]));
        // A plain VXLAN port floods everything, as before.
        assert!(!v.answered_locally(&dhcp, true));
        assert!(!v.answered_locally(&arp7, true));
        v.set_suppressed(std::collections::HashSet::from([IpAddr::V4(
            [10, 0, 0, 7].into(),
        )]));
        assert!(v.answered_locally(&dhcp, true));
        assert!(
            !v.answered_locally(&dhcp, false),
            "no gateway here: DHCP floods"
        );
        assert!(v.answered_locally(&arp7, true));
        assert!(!v.answered_locally(&arp8, true), "an unknown target floods");
        assert_eq!(v.stats().drops["tx_local"], 2);
        // Pinned: not moved by learning, not aged, gone with its remote.
        let m = Mac([2, 0, 0, 0, 0, 7]);
        assert!(
            v.pin(m, "192.0.2.9".parse().expect("ip")).is_err(),
            "not a remote"
        );
        v.pin(m, r1).expect("pin");
        let later = Instant::now() + Duration::from_secs(5);
        assert!(v.admit(r2, m, later));
        v.sweep(later);
        assert_eq!(v.vtep_of(m), Some(r1));
        assert!(v.is_pinned(m));
        assert!(v.unpin(m));
        assert!(v.admit(r2, m, Instant::now()));
        assert_eq!(v.vtep_of(m), Some(r2), "learned again once unpinned");
        v.pin(m, r1).expect("pin");
        v.remove_remote(r1).expect("remove");
        assert_eq!(v.vtep_of(m), None);
    }
}
