//! Helpers shared by the DNS unit tests: queries, a server with local names, replies.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RData, RecordType};

use super::{DnsConfig, DnsServer, Records, Transport, Upstreams};

pub(super) const WAIT: Duration = Duration::from_secs(5);

pub(super) fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

pub(super) fn query_bytes(id: u16, qname: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.queries.push(Query::query(name(qname), qtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.edns = Some(e);
    }
    m.to_vec().unwrap()
}

/// Calls `handle` and returns the reply, if any, within `WAIT`.
pub(super) fn ask_raw(srv: &DnsServer, bytes: &[u8], transport: Transport) -> Option<Message> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    srv.handle(bytes, transport, Box::new(move |b| drop(tx.send(b))));
    rx.recv_timeout(WAIT)
        .ok()
        .map(|b| Message::from_vec(&b).expect("reply decodes"))
}

pub(super) fn ask(srv: &DnsServer, qname: &str, qtype: RecordType) -> Message {
    ask_raw(
        srv,
        &query_bytes(0x1234, qname, qtype, None),
        Transport::Udp { max_size: 512 },
    )
    .expect("a reply")
}

pub(super) fn local_server() -> DnsServer {
    let records = Arc::new(Records::new("usernet"));
    records.add("web", "10.88.0.5".parse().unwrap()).unwrap();
    records
        .add("web.usernet", "fd00::5".parse().unwrap())
        .unwrap();
    records
        .add("db.app.usernet", "10.88.0.6".parse().unwrap())
        .unwrap();
    let mut cfg = DnsConfig::new("usernet", Upstreams::Explicit(vec![]));
    cfg.timeout = Duration::from_millis(200);
    cfg.workers = 1;
    DnsServer::new(cfg, records)
}

pub(super) fn addrs(m: &Message) -> Vec<IpAddr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

pub(super) fn has_soa(m: &Message) -> bool {
    m.authorities
        .iter()
        .any(|r| r.record_type() == RecordType::SOA)
}

/// A 12-byte header: id 0xbeef, flags, counts.
pub(super) fn header(flags: u16, qd: u16, an: u16) -> Vec<u8> {
    let mut h = vec![0xbe, 0xef];
    h.extend_from_slice(&flags.to_be_bytes());
    h.extend_from_slice(&qd.to_be_bytes());
    h.extend_from_slice(&an.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 0]);
    h
}

pub(super) fn question(bytes: &mut Vec<u8>, labels: &[&[u8]]) {
    for l in labels {
        bytes.push(l.len() as u8);
        bytes.extend_from_slice(l);
    }
    bytes.extend_from_slice(&[0, 0, 1, 0, 1]);
}
