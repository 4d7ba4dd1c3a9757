//! The virtual gateway of a network: ARP, ICMP, DHCPv4, DNS, IPv6 NDP/RA.
//!
//! (Module being assembled; see the protocol files.)

pub mod dhcp;
pub mod dns;
