//! `arp`: [`usernet::gateway::arp::handle`] on arbitrary ARP payloads, and
//! [`usernet::gateway::arp::gratuitous`] on MAC/IP taken from the input.
//!
//! Input: the ARP payload (what follows the Ethernet header), as the gateway passes it.
//!
//! Invariants: `handle` accepts exactly what etherparse reads as Ethernet/IPv4 ARP; the learned
//! sender is the packet's (none for sender 0.0.0.0); a reply is produced exactly for a REQUEST
//! for the gateway's address from a non-zero sender, and it is a 42-byte Ethernet/ARP REPLY
//! from the gateway's MAC to the requester's MAC, giving the gateway's binding and targeting
//! the requester's. A gratuitous ARP is a broadcast REQUEST with sender = target address.

use std::net::Ipv4Addr;

use etherparse::{ArpEthIpv4Packet, ArpOperation, ArpPacket};
use usernet::gateway::arp;
use usernet::wire::{L2Header, Mac};

/// The gateway's MAC in this target.
pub const GW_MAC: Mac = Mac([0x02, 0x00, 0x00, 0x00, 0x00, 0x01]);
/// The gateway's address in this target.
pub const GW_IP: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 1);

/// An address the proxy answers for in this target, and its remote MAC.
pub const PROXIED: (Ipv4Addr, Mac) = (
    Ipv4Addr::new(10, 88, 0, 7),
    Mac([0x02, 0x00, 0x00, 0x00, 0x00, 0x77]),
);

/// Parses an Ethernet frame built by the gateway as ARP; checks its L2 header.
fn parse_frame(frame: &[u8], src: Mac, dst: Mac) -> ArpEthIpv4Packet {
    assert_eq!(frame.len(), 42, "ARP frame length: {frame:02x?}");
    let h = L2Header::parse(frame).expect("reply has an Ethernet header");
    assert_eq!((h.src, h.dst, h.ethertype, h.vlan), (src, dst, 0x0806, 0));
    ArpPacket::from_slice(&frame[14..])
        .expect("reply parses as ARP")
        .try_eth_ipv4()
        .expect("reply is Ethernet/IPv4 ARP")
}

/// One input.
pub fn arp(data: &[u8]) {
    let expected = ArpPacket::from_slice(data)
        .ok()
        .and_then(|p| p.try_eth_ipv4().ok());
    match arp::handle(GW_MAC, GW_IP, data) {
        Err(e) => assert!(
            expected.is_none(),
            "handle refused ({e}) a packet etherparse reads as Ethernet/IPv4 ARP"
        ),
        Ok(out) => {
            let req = expected
                .clone()
                .expect("handle accepted a packet that is not Ethernet/IPv4 ARP");
            let sip = Ipv4Addr::from(req.sender_ipv4);
            assert_eq!(
                out.sender,
                (!sip.is_unspecified()).then_some((sip, Mac(req.sender_mac)))
            );
            let asks_us = req.operation == ArpOperation::REQUEST
                && Ipv4Addr::from(req.target_ipv4) == GW_IP
                && !sip.is_unspecified();
            assert_eq!(out.reply.is_some(), asks_us, "reply iff a request for us");
            if let Some(r) = out.reply {
                let a = parse_frame(&r, GW_MAC, Mac(req.sender_mac));
                assert_eq!(a.operation, ArpOperation::REPLY);
                assert_eq!(a.sender_mac, GW_MAC.0);
                assert_eq!(Ipv4Addr::from(a.sender_ipv4), GW_IP);
                assert_eq!(
                    a.target_mac, req.sender_mac,
                    "reply addressed to the sender"
                );
                assert_eq!(
                    a.target_ipv4, req.sender_ipv4,
                    "reply addressed to the sender"
                );
            }
        }
    }

    // The proxy: a reply exactly for a request for the proxied address.
    let proxy = usernet::gateway::proxy::NeighProxy::default();
    proxy.set(std::collections::HashMap::from([(
        std::net::IpAddr::V4(PROXIED.0),
        PROXIED.1,
    )]));
    let want = expected.as_ref().is_some_and(|r| {
        r.operation == ArpOperation::REQUEST
            && Ipv4Addr::from(r.target_ipv4) == PROXIED.0
            && !Ipv4Addr::from(r.sender_ipv4).is_unspecified()
    });
    let got = proxy.arp_reply(GW_MAC, data);
    assert_eq!(
        got.is_some(),
        want,
        "a proxy reply iff a request for the proxied address"
    );
    if let (Some(r), Some(req)) = (got, expected) {
        let a = parse_frame(&r, GW_MAC, Mac(req.sender_mac));
        assert_eq!(a.operation, ArpOperation::REPLY);
        assert_eq!(
            (a.sender_mac, Ipv4Addr::from(a.sender_ipv4)),
            (PROXIED.1.0, PROXIED.0)
        );
        assert_eq!(
            (a.target_mac, a.target_ipv4),
            (req.sender_mac, req.sender_ipv4)
        );
    }

    // The announcement, for a MAC and address taken from the input.
    if data.len() >= 10 {
        let mac = Mac(data[..6].try_into().expect("6 bytes"));
        let ip = Ipv4Addr::new(data[6], data[7], data[8], data[9]);
        let g = parse_frame(&arp::gratuitous(mac, ip), mac, Mac::BROADCAST);
        assert_eq!(g.operation, ArpOperation::REQUEST);
        assert_eq!(g.sender_mac, mac.0);
        assert_eq!((g.sender_ipv4, g.target_ipv4), (ip.octets(), ip.octets()));
        assert_eq!(g.target_mac, [0; 6]);
    }
}
