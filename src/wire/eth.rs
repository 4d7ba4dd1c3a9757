//! Ethernet II and 802.1Q header view.
//!
//! [`L2Header::parse`] reads the destination and source MAC, an optional 802.1Q/802.1ad tag
//! (outer VLAN id) and the inner EtherType. It never panics: frames shorter than the headers
//! they announce are reported as [`EthError::Runt`].

use std::fmt;
use std::str::FromStr;

use etherparse::{EtherType, Ethernet2HeaderSlice, SingleVlanHeaderSlice};
use serde::{Deserialize, Serialize};

/// Minimum length of an Ethernet II header.
pub const ETH_HLEN: usize = 14;

/// A 48-bit MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// ff:ff:ff:ff:ff:ff.
    pub const BROADCAST: Mac = Mac([0xff; 6]);

    /// Group bit set: multicast or broadcast.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }

    /// All ones.
    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }

    /// All zeros.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }

    /// A valid unicast station address: not multicast, not zero (what may be learned).
    pub fn is_valid_source(&self) -> bool {
        !self.is_multicast() && !self.is_zero()
    }

    /// In the IEEE 802.1D reserved range 01:80:C2:00:00:00–0F (STP, LACP, 802.1X, LLDP ...),
    /// which a bridge must not forward.
    pub fn is_link_local_reserved(&self) -> bool {
        self.0[..5] == [0x01, 0x80, 0xc2, 0x00, 0x00] && self.0[5] & 0xf0 == 0
    }

    /// A random locally administered unicast address.
    pub fn random_local() -> Mac {
        let mut b = [0u8; 6];
        if !crate::sys::random::fill(&mut b) {
            // Fall back to time and pid; uniqueness, not secrecy, is what matters here.
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0)
                ^ u64::from(std::process::id());
            b.copy_from_slice(&t.to_le_bytes()[..6]);
        }
        b[0] = (b[0] & 0xfe) | 0x02;
        Mac(b)
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Error parsing a MAC address from text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address {0:?}: expected six hex bytes like 02:00:00:00:00:01")]
pub struct MacParseError(pub String);

impl FromStr for Mac {
    type Err = MacParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut b = [0u8; 6];
        let mut n = 0;
        for part in s.split([':', '-']) {
            if n == 6 || part.len() != 2 {
                return Err(MacParseError(s.to_string()));
            }
            b[n] = u8::from_str_radix(part, 16).map_err(|_| MacParseError(s.to_string()))?;
            n += 1;
        }
        if n != 6 {
            return Err(MacParseError(s.to_string()));
        }
        Ok(Mac(b))
    }
}

impl Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Why a frame's L2 header could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EthError {
    /// Shorter than the Ethernet header (or than the VLAN tag it announces).
    #[error("runt frame: {0} bytes")]
    Runt(usize),
}

/// The parsed L2 header of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L2Header {
    /// Destination MAC.
    pub dst: Mac,
    /// Source MAC.
    pub src: Mac,
    /// Outer VLAN id (0 when untagged or priority-tagged).
    pub vlan: u16,
    /// EtherType after any VLAN tag.
    pub ethertype: u16,
    /// Length of the L2 header(s), i.e. where the L3 payload starts.
    pub header_len: usize,
}

impl L2Header {
    /// Parses the Ethernet header and at most one VLAN tag. Never panics.
    pub fn parse(frame: &[u8]) -> Result<L2Header, EthError> {
        let eth =
            Ethernet2HeaderSlice::from_slice(frame).map_err(|_| EthError::Runt(frame.len()))?;
        let mut h = L2Header {
            dst: Mac(eth.destination()),
            src: Mac(eth.source()),
            vlan: 0,
            ethertype: eth.ether_type().0,
            header_len: ETH_HLEN,
        };
        let et = eth.ether_type();
        if et == EtherType::VLAN_TAGGED_FRAME
            || et == EtherType::PROVIDER_BRIDGING
            || et == EtherType::VLAN_DOUBLE_TAGGED_FRAME
        {
            let tag = SingleVlanHeaderSlice::from_slice(&frame[ETH_HLEN..])
                .map_err(|_| EthError::Runt(frame.len()))?;
            h.vlan = tag.vlan_identifier().value();
            h.ethertype = tag.ether_type().0;
            h.header_len = ETH_HLEN + 4;
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_untagged_and_tagged() {
        let mut f = vec![0xff; 6];
        f.extend([2, 0, 0, 0, 0, 1, 0x08, 0x00]);
        f.extend([0u8; 46]);
        let h = L2Header::parse(&f).expect("valid");
        assert!(h.dst.is_broadcast());
        assert_eq!(h.src, Mac([2, 0, 0, 0, 0, 1]));
        assert_eq!((h.vlan, h.ethertype, h.header_len), (0, 0x0800, 14));

        let mut t = f[..12].to_vec();
        t.extend([0x81, 0x00, 0x00, 0x2a, 0x86, 0xdd]);
        let h = L2Header::parse(&t).expect("valid");
        assert_eq!((h.vlan, h.ethertype, h.header_len), (42, 0x86dd, 18));
    }

    #[test]
    fn short_frames_are_errors() {
        for n in 0..14 {
            assert_eq!(L2Header::parse(&vec![0u8; n]), Err(EthError::Runt(n)));
        }
        let mut t = vec![0u8; 12];
        t.extend([0x81, 0x00, 0x00]);
        assert!(L2Header::parse(&t).is_err());
    }

    #[test]
    fn mac_text_and_classes() {
        let m: Mac = "02:aa:bb:cc:dd:ee".parse().expect("valid");
        assert_eq!(m.to_string(), "02:aa:bb:cc:dd:ee");
        assert!("02:aa:bb:cc:dd".parse::<Mac>().is_err());
        assert!("02:aa:bb:cc:dd:ee:ff".parse::<Mac>().is_err());
        assert!("zz:aa:bb:cc:dd:ee".parse::<Mac>().is_err());
        assert!(Mac([0x01, 0x80, 0xc2, 0, 0, 0x0e]).is_link_local_reserved());
        assert!(!Mac([0x01, 0x80, 0xc2, 0, 0, 0x10]).is_link_local_reserved());
        assert!(!Mac([0x01, 0, 0x5e, 0, 0, 1]).is_valid_source());
        assert!(Mac::random_local().is_valid_source());
    }
}
