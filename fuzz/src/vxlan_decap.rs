//! `vxlan_decap`: the VXLAN port's header check and decapsulation ([`decap`], [`check_header`])
//! and its flow hash ([`flow_hash`]) on arbitrary datagrams: what any host on the underlay can
//! send to a VXLAN port's UDP socket.
//!
//! Input: three bytes of the port's VNI, then the datagram.
//!
//! Invariants: nothing panics; `decap` accepts exactly the datagrams whose first 8 bytes are
//! `08 00 00 00`, the port's VNI and any last byte, followed by at least a 14-byte Ethernet
//! header, and then returns exactly the bytes after the header; an error names the first check
//! that failed (truncated, flags, the VNI it carried); [`encap`] of the VNI in front of the
//! accepted inner frame decapsulates to the same frame; the flow hash of a frame is the same
//! every time (the outer source port of a flow never changes).

use usernet::link::vxlan::{
    DecapError, HEADER_LEN, MAX_VNI, check_header, decap, encap, flow_hash,
};

use super::Reader;

/// Runs one input; panics on a broken invariant.
pub fn vxlan_decap(data: &[u8]) {
    let mut r = Reader::new(data);
    let v = r.array::<3>();
    let vni = u32::from_be_bytes([0, v[0], v[1], v[2]]) & MAX_VNI;
    let datagram = &data[data.len().min(3)..];
    let header_ok = datagram.len() >= HEADER_LEN
        && datagram[..4] == [0x08, 0, 0, 0]
        && u32::from_be_bytes([0, datagram[4], datagram[5], datagram[6]]) == vni;
    match decap(datagram, vni) {
        Ok(inner) => {
            assert!(header_ok, "accepted a bad header: {:02x?}", &datagram[..8]);
            assert!(inner.len() >= 14, "inner frame of {} bytes", inner.len());
            assert_eq!(inner, &datagram[HEADER_LEN..]);
            let mut again = encap(vni).to_vec();
            again.extend_from_slice(inner);
            assert_eq!(
                decap(&again, vni).ok(),
                Some(inner),
                "encap/decap round trip"
            );
            assert_eq!(flow_hash(inner), flow_hash(inner), "flow hash not stable");
        }
        Err(DecapError::Truncated) => assert!(
            datagram.len() < HEADER_LEN + 14,
            "{} bytes called truncated",
            datagram.len()
        ),
        Err(DecapError::Flags) => {
            assert!(datagram.len() >= HEADER_LEN && datagram[..4] != [0x08, 0, 0, 0]);
        }
        Err(DecapError::Vni(got)) => {
            assert!(datagram.len() >= HEADER_LEN && datagram[..4] == [0x08, 0, 0, 0]);
            assert_ne!(got, vni);
            assert_eq!(
                got,
                u32::from_be_bytes([0, datagram[4], datagram[5], datagram[6]])
            );
        }
    }
    // The header check alone agrees with decap on the first 8 bytes.
    assert_eq!(check_header(datagram, vni).is_ok(), header_ok);
    // Any bytes hash without panicking (the hash reads up to two VLAN tags, IPv4/IPv6, ports).
    let _ = flow_hash(datagram);
}
