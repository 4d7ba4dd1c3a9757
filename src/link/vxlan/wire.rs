//! VXLAN wire format and the port's settings: the header, [`decap`], [`flow_hash`], [`VxlanSpec`].

use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};

/// The IANA VXLAN port.
pub const DEFAULT_PORT: u16 = 4789;
/// Length of the VXLAN header.
pub const HEADER_LEN: usize = 8;
/// The I flag: the VNI is valid (the only flag RFC 7348 defines).
pub const FLAG_I: u8 = 0x08;
/// Largest VNI (24 bits).
pub const MAX_VNI: u32 = 0x00ff_ffff;
/// Outer overhead over an IPv4 underlay: IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14.
pub const OVERHEAD_V4: u32 = 50;
/// Outer overhead over an IPv6 underlay: IPv6 40 + UDP 8 + VXLAN 8 + inner Ethernet 14.
pub const OVERHEAD_V6: u32 = 70;
/// Sending sockets in the pool (distinct outer source ports).
pub(super) const TX_SOCKETS: usize = 8;
/// Most MACs the VTEP table holds; past it new MACs are not learned (they are flooded).
pub(super) const MAX_MACS: usize = 16384;
pub(super) const ETH_HLEN: usize = 14;

pub(super) fn default_port() -> u16 {
    DEFAULT_PORT
}

/// The `vxlan` key of a port: `{ vni = 42, local = "192.0.2.1", remotes = ["192.0.2.2"],
/// port = 4789, mtu = 1450 }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct VxlanSpec {
    /// VXLAN network identifier (0..=16777215).
    pub vni: u32,
    /// The local underlay address: bound, and the outer source address.
    pub local: IpAddr,
    /// Remote VTEPs (same family as `local`): where floods go, and the only accepted senders.
    #[serde(default)]
    pub remotes: Vec<IpAddr>,
    /// UDP port, both bound and sent to (default 4789).
    #[serde(default = "default_port")]
    pub port: u16,
    /// Inner MTU (default: the underlay interface's MTU minus 50, or 70 over IPv6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

impl VxlanSpec {
    /// A spec for `vni` on `local`, no remotes yet, port 4789, MTU from the underlay.
    pub fn new(vni: u32, local: IpAddr) -> Self {
        VxlanSpec {
            vni,
            local,
            remotes: Vec::new(),
            port: DEFAULT_PORT,
            mtu: None,
        }
    }

    /// Checks the values; the error is `(field suffix, reason)`, e.g. `("vni", "...")`.
    pub fn check(&self) -> Result<(), (String, String)> {
        if self.vni > MAX_VNI {
            return Err(("vni".into(), format!("{} is over {MAX_VNI}", self.vni)));
        }
        if self.port == 0 {
            return Err(("port".into(), "0 is not a UDP port".into()));
        }
        if self.local.is_unspecified() || self.local.is_multicast() {
            return Err((
                "local".into(),
                format!("{} is not a unicast address of this host", self.local),
            ));
        }
        if let Some(m) = self.mtu
            && !(68..=65535).contains(&m)
        {
            return Err(("mtu".into(), format!("{m} is outside 68..=65535")));
        }
        for (i, r) in self.remotes.iter().enumerate() {
            check_remote(self.local, *r).map_err(|e| (format!("remotes[{i}]"), e))?;
            if self.remotes[..i].contains(r) {
                return Err((format!("remotes[{i}]"), format!("{r} is listed twice")));
            }
        }
        Ok(())
    }

    pub(super) fn overhead(&self) -> u32 {
        if self.local.is_ipv4() {
            OVERHEAD_V4
        } else {
            OVERHEAD_V6
        }
    }
}

/// A remote VTEP address is acceptable beside `local`: same family, unicast, not `local`.
pub fn check_remote(local: IpAddr, r: IpAddr) -> Result<(), String> {
    if r.is_ipv4() != local.is_ipv4() {
        return Err(format!(
            "{r} is not of the same family as local address {local}"
        ));
    }
    if r.is_unspecified() || r.is_multicast() || r == IpAddr::V4(Ipv4Addr::BROADCAST) {
        return Err(format!(
            "{r} is not a unicast address (multicast groups are not supported: list the remotes)"
        ));
    }
    if r == local {
        return Err(format!("{r} is the local address"));
    }
    Ok(())
}

/// Why a datagram was not a VXLAN frame of this VNI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecapError {
    /// Shorter than the VXLAN header plus an Ethernet header.
    #[error("truncated VXLAN datagram")]
    Truncated,
    /// Flags other than exactly the I bit (or reserved bits set).
    #[error("bad VXLAN flags")]
    Flags,
    /// Another VNI.
    #[error("VNI {0} is not this port's")]
    Vni(u32),
}

/// The VXLAN header for `vni` (flags = I, reserved bits zero).
pub fn encap(vni: u32) -> [u8; HEADER_LEN] {
    let v = (vni & MAX_VNI).to_be_bytes();
    [FLAG_I, 0, 0, 0, v[1], v[2], v[3], 0]
}

/// Checks a VXLAN header (the first 8 bytes of a datagram) against `vni`.
pub fn check_header(h: &[u8], vni: u32) -> Result<(), DecapError> {
    let Some(h) = h.get(..HEADER_LEN) else {
        return Err(DecapError::Truncated);
    };
    // As Linux: the flags word must be exactly the I bit (no GBP/GPE extensions here).
    if h[..4] != [FLAG_I, 0, 0, 0] {
        return Err(DecapError::Flags);
    }
    let got = u32::from_be_bytes([0, h[4], h[5], h[6]]);
    if got != vni {
        return Err(DecapError::Vni(got));
    }
    Ok(())
}

/// Decapsulates one datagram for `vni`: the inner Ethernet frame, or why not. Pure (no state):
/// what a fuzz target calls.
pub fn decap(datagram: &[u8], vni: u32) -> Result<&[u8], DecapError> {
    check_header(datagram, vni)?;
    let inner = &datagram[HEADER_LEN..];
    if inner.len() < ETH_HLEN {
        return Err(DecapError::Truncated);
    }
    Ok(inner)
}

/// Largest inner frame for an inner `mtu`: Ethernet header, plus one VLAN tag if `frame` has one.
pub(super) fn inner_limit(frame: &[u8], mtu: u32) -> usize {
    let tagged = frame.len() >= ETH_HLEN && matches!(&frame[12..14], [0x81, 0x00] | [0x88, 0xa8]);
    mtu as usize + ETH_HLEN + if tagged { 4 } else { 0 }
}

/// The L3 part of a frame after up to two VLAN tags: (ethertype, payload).
pub(super) fn l3(frame: &[u8]) -> Option<(u16, &[u8])> {
    let mut off = 12;
    loop {
        let et = u16::from_be_bytes([*frame.get(off)?, *frame.get(off + 1)?]);
        if (et == 0x8100 || et == 0x88a8) && off < 20 {
            off += 4;
            continue;
        }
        return Some((et, frame.get(off + 2..)?));
    }
}

/// A DHCPv4 client-to-server message (IPv4 UDP to port 67, first fragment).
pub(super) fn is_dhcp_to_server(frame: &[u8]) -> bool {
    let Some((0x0800, ip)) = l3(frame) else {
        return false;
    };
    if ip.len() < 20 || ip[0] >> 4 != 4 || ip[9] != 17 {
        return false;
    }
    let frag = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff;
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    frag == 0 && ip.get(ihl + 2..ihl + 4) == Some(&[0, 67][..])
}

/// FNV-1a hash of the inner flow: MACs, ethertype, and for IP its addresses, protocol and
/// TCP/UDP ports (the fields Linux's `skb_get_hash` takes). Same flow, same source port.
pub fn flow_hash(frame: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    let mut eat = |b: &[u8]| {
        for x in b {
            h ^= u32::from(*x);
            h = h.wrapping_mul(0x0100_0193);
        }
    };
    eat(frame.get(..12).unwrap_or(frame));
    if let Some((et, ip)) = l3(frame) {
        eat(&et.to_be_bytes());
        let (addrs, proto, l4) = match et {
            0x0800 if ip.len() >= 20 => {
                let ihl = usize::from(ip[0] & 0x0f) * 4;
                let frag = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff;
                (
                    &ip[12..20],
                    ip[9],
                    if frag == 0 { ip.get(ihl..) } else { None },
                )
            }
            0x86dd if ip.len() >= 40 => (&ip[8..40], ip[6], ip.get(40..)),
            _ => (&[][..], 0, None),
        };
        eat(addrs);
        eat(&[proto]);
        if matches!(proto, 6 | 17)
            && let Some(ports) = l4.and_then(|l| l.get(..4))
        {
            eat(ports);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::vxlan::tests::eth;

    #[test]
    fn encap_decap_round_trip_and_refusals() {
        let h = encap(42);
        assert_eq!(h, [0x08, 0, 0, 0, 0, 0, 42, 0]);
        assert_eq!(encap(MAX_VNI)[4..7], [0xff, 0xff, 0xff]);
        let inner = eth([0xff; 6], [2, 0, 0, 0, 0, 1], 0x0806, &[0; 28]);
        let mut d = h.to_vec();
        d.extend_from_slice(&inner);
        assert_eq!(decap(&d, 42), Ok(&inner[..]));
        assert_eq!(decap(&d, 43), Err(DecapError::Vni(42)));
        assert_eq!(decap(&d[..7], 42), Err(DecapError::Truncated));
        assert_eq!(decap(&d[..8 + 13], 42), Err(DecapError::Truncated));
        assert_eq!(decap(&[], 42), Err(DecapError::Truncated));
        let mut bad = d.clone();
        bad[0] = 0;
        assert_eq!(decap(&bad, 42), Err(DecapError::Flags));
        bad[0] = 0x88; // G bit (GBP) too
        assert_eq!(decap(&bad, 42), Err(DecapError::Flags));
        let mut bad = d.clone();
        bad[2] = 1; // reserved
        assert_eq!(decap(&bad, 42), Err(DecapError::Flags));
        // The last reserved byte is ignored on receipt (RFC 7348).
        let mut ok = d.clone();
        ok[7] = 0xaa;
        assert!(decap(&ok, 42).is_ok());
    }

    #[test]
    fn decap_never_panics_on_any_short_input() {
        let mut buf = Vec::new();
        for n in 0..64u8 {
            buf.push(n.wrapping_mul(37));
            let _ = decap(&buf, 42);
            let _ = flow_hash(&buf);
            let _ = is_dhcp_to_server(&buf);
            let _ = inner_limit(&buf, 1450);
        }
    }

    fn ipv4_udp(src_port: u16, dst_port: u16) -> Vec<u8> {
        let mut ip = vec![
            0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 2, 10, 0, 0, 3,
        ];
        ip.extend_from_slice(&src_port.to_be_bytes());
        ip.extend_from_slice(&dst_port.to_be_bytes());
        ip.extend_from_slice(&[0, 8, 0, 0]);
        ip
    }

    #[test]
    fn dhcp_requests_and_vlan_limits_are_recognised() {
        let f = eth([0xff; 6], [2, 0, 0, 0, 0, 1], 0x0800, &ipv4_udp(68, 67));
        assert!(is_dhcp_to_server(&f));
        let f = eth([0xff; 6], [2, 0, 0, 0, 0, 1], 0x0800, &ipv4_udp(67, 68));
        assert!(!is_dhcp_to_server(&f));
        let mut tagged = eth([0xff; 6], [2, 0, 0, 0, 0, 1], 0x8100, &[0, 10, 0x08, 0x00]);
        tagged.extend_from_slice(&ipv4_udp(68, 67));
        assert!(is_dhcp_to_server(&tagged));
        assert_eq!(inner_limit(&tagged, 1450), 1468);
        assert_eq!(inner_limit(&f, 1450), 1464);
    }

    #[test]
    fn flow_hash_follows_the_flow() {
        let a = eth([2; 6], [4; 6], 0x0800, &ipv4_udp(1000, 53));
        let b = eth([2; 6], [4; 6], 0x0800, &ipv4_udp(1001, 53));
        assert_eq!(flow_hash(&a), flow_hash(&a.clone()));
        assert_ne!(flow_hash(&a), flow_hash(&b));
        // The payload does not matter.
        let mut c = a.clone();
        c.extend_from_slice(&[9; 100]);
        assert_eq!(flow_hash(&a), flow_hash(&c));
    }

    #[test]
    fn spec_checks_name_the_field() {
        let local: IpAddr = "192.0.2.1".parse().expect("ip");
        let mut s = VxlanSpec::new(42, local);
        assert!(s.check().is_ok());
        s.vni = MAX_VNI + 1;
        assert_eq!(s.check().map_err(|e| e.0), Err("vni".to_string()));
        s.vni = 1;
        s.remotes = vec![
            "192.0.2.2".parse().expect("ip"),
            "2001:db8::1".parse().expect("ip"),
        ];
        assert_eq!(s.check().map_err(|e| e.0), Err("remotes[1]".to_string()));
        s.remotes = vec!["192.0.2.2".parse().expect("ip"); 2];
        assert_eq!(s.check().map_err(|e| e.0), Err("remotes[1]".to_string()));
        s.remotes = vec![local];
        assert_eq!(s.check().map_err(|e| e.0), Err("remotes[0]".to_string()));
        s.remotes = vec!["239.1.1.1".parse().expect("ip")];
        assert!(s.check().is_err());
        s.remotes.clear();
        s.mtu = Some(20);
        assert_eq!(s.check().map_err(|e| e.0), Err("mtu".to_string()));
    }
}
