//! `dns_server`: arbitrary messages through [`DnsServer::handle`], over UDP (limit 512) and TCP.
//!
//! Input: `[flags][message]`; flags bit 0 picks TCP (else UDP with `max_size: 512`).
//!
//! The server (one per process, reused): domain `usernet` with local names `web` (10.88.0.5,
//! fd88::5), `db.app` (10.88.0.6) and `many` (60 IPv4 addresses, so its A answer needs
//! truncation over UDP); a name policy denying `blocked.example` and every name below
//! `denied.usernet` but `ok.denied.usernet`; no upstreams at all (`Upstreams::Explicit(vec![])`), so a forwarded
//! query is answered SERVFAIL by the worker without touching the network, and nothing is
//! cached. Deterministic and offline.
//!
//! Invariants:
//! - the reply callback is called exactly when the message is not dropped: it is dropped only
//!   when its 12-byte header does not decode or it is a response;
//! - a reply decodes with hickory-proto; it is a response with the query's id; its question,
//!   if any, is the query's; over UDP it fits `max(512, min(EDNS payload, 1232))` (EDNS read
//!   from the query when it decodes), and a truncated (TC) UDP reply has no records; over TCP
//!   it fits 65535 bytes.

use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hickory_proto::op::{Header, Message, MessageType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use usernet::gateway::dns::{
    DenyAnswer, DnsAction, DnsConfig, DnsPolicy, DnsPolicySpec, DnsServer, Records, Transport,
    Upstreams,
};

/// How long a forwarded query may take to come back (it fails at once: no upstreams).
const FORWARD_WAIT: Duration = Duration::from_secs(10);

/// The shared server.
pub fn server() -> &'static DnsServer {
    static SERVER: OnceLock<DnsServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        let records = Arc::new(Records::new("usernet"));
        let add = |n: &str, a: &str| {
            records.add(n, a.parse().expect("address")).expect("record");
        };
        add("web", "10.88.0.5");
        add("web", "fd88::5");
        add("db.app.usernet", "10.88.0.6");
        for i in 1..=60 {
            add("many", &format!("10.88.1.{i}"));
        }
        let mut cfg = DnsConfig::new("usernet", Upstreams::Explicit(vec![]));
        cfg.workers = 1;
        cfg.cache_entries = 0;
        cfg.timeout = Duration::from_millis(50);
        cfg.policy = Some(
            DnsPolicy::new(
                DnsPolicySpec::new(
                    DnsAction::Allow,
                    vec!["ok.denied.usernet".into()],
                    vec!["*.denied.usernet".into(), "blocked.example".into()],
                    DenyAnswer::Nxdomain,
                ),
                "fuzz",
            )
            .expect("a valid policy"),
        );
        DnsServer::new(cfg, records)
    })
}

fn decode_header(msg: &[u8]) -> Option<Header> {
    Header::read(&mut BinDecoder::new(msg)).ok()
}

/// One input.
pub fn dns_server(data: &[u8]) {
    let Some((&flags, msg)) = data.split_first() else {
        return;
    };
    let tcp = flags & 1 != 0;
    let transport = if tcp {
        Transport::Tcp
    } else {
        Transport::Udp { max_size: 512 }
    };
    let srv = server();
    let forwarded_before = srv.stats().forwarded;
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    srv.handle(msg, transport, Box::new(move |b| drop(tx.send(b))));
    let forwarded = srv.stats().forwarded > forwarded_before;
    let reply = if forwarded {
        Some(
            rx.recv_timeout(FORWARD_WAIT)
                .expect("a forwarded query is answered (SERVFAIL without upstreams)"),
        )
    } else {
        rx.try_recv().ok()
    };

    let header = decode_header(msg);
    let must_drop = header
        .as_ref()
        .is_none_or(|h| h.metadata.message_type != MessageType::Query);
    let Some(reply) = reply else {
        assert!(
            must_drop,
            "no reply to a query with a valid header ({header:?}); input {msg:02x?}"
        );
        return;
    };
    assert!(!must_drop, "a reply to a message that must be dropped");
    // Exactly once: the callback is FnOnce; nothing else may arrive.
    assert!(rx.try_recv().is_err());

    let header = header.expect("checked");
    let m = match Message::from_vec(&reply) {
        Ok(m) => m,
        Err(e) => panic!("reply does not decode: {e}; reply {reply:02x?}; query {msg:02x?}"),
    };
    assert_eq!(m.metadata.message_type, MessageType::Response);
    assert_eq!(m.metadata.id, header.metadata.id, "reply id");
    let query = Message::from_vec(msg).ok();
    if !m.queries.is_empty() {
        let q = query
            .as_ref()
            .expect("a reply echoing a question to a query that decodes");
        assert_eq!(
            m.queries, q.queries,
            "reply question differs from the query's"
        );
    }
    if tcp {
        assert!(reply.len() <= 65535);
    } else {
        let edns = query
            .as_ref()
            .and_then(|q| q.edns.as_ref())
            .map_or(512, |e| usize::from(e.max_payload().min(1232)));
        let limit = edns.max(512);
        assert!(
            reply.len() <= limit,
            "UDP reply of {} bytes over the limit {limit}",
            reply.len()
        );
        if m.metadata.truncation {
            assert!(
                m.answers.is_empty() && m.authorities.is_empty(),
                "truncated reply still carries records"
            );
        }
    }
}
