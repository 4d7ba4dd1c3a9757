//! Helpers shared by the DHCP unit tests: a server, client messages, a full DORA exchange.

use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, Message, MessageType, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};

use super::{DhcpConfig, DhcpOutput, DhcpServer};
use crate::wire::Mac;

pub(super) const NET: &str = "10.88.0.0/24";
pub(super) const SERVER: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 1);
pub(super) const T0: u64 = 1_000_000;

pub(super) fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 88, 0, last)
}

pub(super) fn mac(n: u8) -> Mac {
    Mac([0x02, 0, 0, 0, 0, n])
}

pub(super) fn base_cfg() -> DhcpConfig {
    let mut c = DhcpConfig::for_subnet(NET.parse().unwrap(), SERVER);
    c.domain = Some("usernet".into());
    c.search = vec!["usernet".into(), "example.com".into()];
    c.mtu = Some(1400);
    c
}

pub(super) fn server() -> DhcpServer {
    DhcpServer::new(base_cfg()).unwrap()
}

/// A client message of `kind` from `mac`.
pub(super) fn msg(mac: Mac, kind: MessageType) -> Message {
    let mut m = Message::new_with_id(
        0xdead_beef,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &mac.0,
    );
    m.opts_mut().insert(DhcpOption::MessageType(kind));
    m
}

pub(super) fn enc(m: &Message) -> Vec<u8> {
    let mut buf = Vec::new();
    m.encode(&mut Encoder::new(&mut buf)).unwrap();
    buf
}

pub(super) fn dec(b: &[u8]) -> Message {
    Message::decode(&mut Decoder::new(b)).unwrap()
}

/// Sends `m`; returns the decoded reply and the output.
pub(super) fn send(s: &mut DhcpServer, m: &Message, now: u64) -> Option<(Message, DhcpOutput)> {
    s.handle(&enc(m), now)
        .unwrap()
        .map(|o| (dec(&o.payload), o))
}

pub(super) fn kind(m: &Message) -> MessageType {
    m.opts().msg_type().unwrap()
}

pub(super) fn discover(s: &mut DhcpServer, mac: Mac, now: u64) -> Option<(Message, DhcpOutput)> {
    send(s, &msg(mac, MessageType::Discover), now)
}

pub(super) fn select(mac: Mac, addr: Ipv4Addr, host: Option<&str>) -> Message {
    let mut m = msg(mac, MessageType::Request);
    m.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
    m.opts_mut().insert(DhcpOption::RequestedIpAddress(addr));
    if let Some(h) = host {
        m.opts_mut().insert(DhcpOption::Hostname(h.into()));
    }
    m
}

/// DISCOVER, OFFER, REQUEST, ACK; returns the bound address and the ACK's output.
pub(super) fn dora(
    s: &mut DhcpServer,
    mac: Mac,
    host: Option<&str>,
    now: u64,
) -> (Ipv4Addr, DhcpOutput) {
    let (offer, _) = discover(s, mac, now).expect("offer");
    assert_eq!(kind(&offer), MessageType::Offer);
    let (ack, out) = send(s, &select(mac, offer.yiaddr(), host), now).expect("ack");
    assert_eq!(kind(&ack), MessageType::Ack);
    assert_eq!(ack.yiaddr(), offer.yiaddr());
    (ack.yiaddr(), out)
}

pub(super) fn opt(m: &Message, c: OptionCode) -> Option<&DhcpOption> {
    m.opts().get(c)
}
