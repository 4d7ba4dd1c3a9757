//! ARP for the gateway's IPv4 address.
//!
//! The gateway answers ARP requests for its own address, learns the sender's (IP, MAC) from
//! every ARP packet it sees (requests are broadcast, so it sees every guest's), and announces
//! itself with a gratuitous ARP when it starts. Parsing and building go through etherparse; a
//! packet that is not Ethernet/IPv4 ARP is reported as malformed and dropped by the caller.

use std::net::Ipv4Addr;

use etherparse::{ArpEthIpv4Packet, ArpOperation, ArpPacket, PacketBuilder};

use crate::wire::Mac;

/// What an incoming ARP packet means for the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArpOutcome {
    /// The sender's binding, when it is a usable one (non-zero IP).
    pub sender: Option<(Ipv4Addr, Mac)>,
    /// A reply frame to send, when the packet asked for the gateway's address.
    pub reply: Option<Vec<u8>>,
}

/// Why an ARP packet was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed ARP: {0}")]
pub struct ArpError(pub String);

/// Handles the ARP payload of a frame (after the Ethernet header).
pub fn handle(gw_mac: Mac, gw_ip: Ipv4Addr, payload: &[u8]) -> Result<ArpOutcome, ArpError> {
    let pkt = ArpPacket::from_slice(payload).map_err(|e| ArpError(e.to_string()))?;
    let arp = pkt.try_eth_ipv4().map_err(|e| ArpError(e.to_string()))?;
    let sender_ip = arp.sender_ipv4_addr();
    let sender = (!sender_ip.is_unspecified()).then_some((sender_ip, Mac(arp.sender_mac)));
    let asks_us = arp.operation == ArpOperation::REQUEST && arp.target_ipv4_addr() == gw_ip;
    let reply = if asks_us && sender.is_some() {
        Some(build(
            gw_mac,
            Mac(arp.sender_mac),
            ArpEthIpv4Packet {
                operation: ArpOperation::REPLY,
                sender_mac: gw_mac.0,
                sender_ipv4: gw_ip.octets(),
                target_mac: arp.sender_mac,
                target_ipv4: arp.sender_ipv4,
            },
        ))
    } else {
        None
    };
    Ok(ArpOutcome { sender, reply })
}

/// A gratuitous ARP request announcing `gw_ip` at `gw_mac` (RFC 5227 announcement): a request
/// for its own address.
pub fn gratuitous(gw_mac: Mac, gw_ip: Ipv4Addr) -> Vec<u8> {
    request(gw_mac, gw_ip, gw_ip)
}

/// An ARP request from the gateway for `target`, broadcast.
pub fn request(gw_mac: Mac, gw_ip: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    build(
        gw_mac,
        Mac::BROADCAST,
        ArpEthIpv4Packet {
            operation: ArpOperation::REQUEST,
            sender_mac: gw_mac.0,
            sender_ipv4: gw_ip.octets(),
            target_mac: [0; 6],
            target_ipv4: target.octets(),
        },
    )
}

fn build(src: Mac, dst: Mac, arp: ArpEthIpv4Packet) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(src.0, dst.0).arp(ArpPacket::from(arp));
    let mut out = Vec::with_capacity(builder.size());
    // Writing into a Vec cannot fail.
    let _ = builder.write(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GW: Mac = Mac([2, 0, 0, 0, 0, 1]);
    const GUEST: Mac = Mac([2, 0, 0, 0, 0, 9]);

    fn request(target: Ipv4Addr) -> Vec<u8> {
        let frame = build(
            GUEST,
            Mac::BROADCAST,
            ArpEthIpv4Packet {
                operation: ArpOperation::REQUEST,
                sender_mac: GUEST.0,
                sender_ipv4: [10, 88, 0, 9],
                target_mac: [0; 6],
                target_ipv4: target.octets(),
            },
        );
        frame[14..].to_vec()
    }

    #[test]
    fn answers_for_own_address_only() {
        let gw_ip = Ipv4Addr::new(10, 88, 0, 1);
        let out = handle(GW, gw_ip, &request(gw_ip)).expect("valid");
        assert_eq!(out.sender, Some((Ipv4Addr::new(10, 88, 0, 9), GUEST)));
        let reply = out.reply.expect("reply");
        assert_eq!(&reply[..6], &GUEST.0);
        let arp = ArpPacket::from_slice(&reply[14..])
            .expect("arp")
            .try_eth_ipv4()
            .expect("eth/ipv4");
        assert_eq!(arp.operation, ArpOperation::REPLY);
        assert_eq!(arp.sender_mac, GW.0);
        assert_eq!(arp.sender_ipv4_addr(), gw_ip);
        assert_eq!(arp.target_ipv4, [10, 88, 0, 9]);

        let other = handle(GW, gw_ip, &request(Ipv4Addr::new(10, 88, 0, 7))).expect("valid");
        assert!(other.reply.is_none());
        assert!(other.sender.is_some(), "still learned");
    }

    #[test]
    fn malformed_is_an_error() {
        assert!(handle(GW, Ipv4Addr::LOCALHOST, &[]).is_err());
        assert!(handle(GW, Ipv4Addr::LOCALHOST, &[0, 1, 8, 0, 6, 4, 0]).is_err());
        let mut weird = request(Ipv4Addr::LOCALHOST);
        weird[4] = 8; // hardware address length 8
        assert!(handle(GW, Ipv4Addr::LOCALHOST, &weird).is_err());
    }

    #[test]
    fn gratuitous_announces() {
        let g = gratuitous(GW, Ipv4Addr::new(10, 88, 0, 1));
        assert_eq!(&g[..6], &[0xff; 6]);
        let arp = ArpPacket::from_slice(&g[14..])
            .expect("arp")
            .try_eth_ipv4()
            .expect("eth/ipv4");
        assert_eq!(arp.sender_ipv4, arp.target_ipv4);
    }
}
