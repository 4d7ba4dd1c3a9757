//! The answer cache (step 3 of the server's theory of operation): upstream answers kept for
//! their TTL (negative answers for their SOA minimum), bounded, oldest insertion evicted first.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{Name, RData};

use super::{MAX_NEGATIVE_TTL, MAX_POSITIVE_TTL};

/// Cache key: lowercased name, type, class.
pub(super) type CacheKey = (Name, u16, u16);

struct CacheEntry {
    seq: u64,
    msg: Message,
    stored: Instant,
    ttl: u32,
}

/// Bounded answer cache, evicting the oldest insertion first.
pub(super) struct Cache {
    cap: usize,
    map: HashMap<CacheKey, CacheEntry>,
    order: BTreeMap<u64, CacheKey>,
    next_seq: u64,
}

impl Cache {
    pub(super) fn new(cap: usize) -> Self {
        Self {
            cap,
            map: HashMap::new(),
            order: BTreeMap::new(),
            next_seq: 0,
        }
    }

    /// The cached answer for `key` with TTLs decremented by its age.
    pub(super) fn get(&mut self, key: &CacheKey, now: Instant) -> Option<Message> {
        let entry = self.map.get(key)?;
        let age = now.saturating_duration_since(entry.stored).as_secs();
        if age >= u64::from(entry.ttl) {
            let seq = entry.seq;
            self.map.remove(key);
            self.order.remove(&seq);
            return None;
        }
        let age = u32::try_from(age).unwrap_or(u32::MAX);
        let mut msg = entry.msg.clone();
        for r in msg
            .answers
            .iter_mut()
            .chain(msg.authorities.iter_mut())
            .chain(msg.additionals.iter_mut())
        {
            r.decrement_ttl(age);
        }
        Some(msg)
    }

    pub(super) fn insert(&mut self, key: CacheKey, msg: Message, ttl: u32, now: Instant) {
        if self.cap == 0 || ttl == 0 {
            return;
        }
        if let Some(old) = self.map.remove(&key) {
            self.order.remove(&old.seq);
        }
        while self.map.len() >= self.cap {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.map.remove(&oldest);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.order.insert(seq, key.clone());
        self.map.insert(
            key,
            CacheEntry {
                seq,
                msg,
                stored: now,
                ttl,
            },
        );
    }
}

/// How long an upstream answer may be cached, if at all.
pub(super) fn cache_ttl(resp: &Message) -> Option<u32> {
    if resp.metadata.truncation {
        return None;
    }
    let rcode = resp.metadata.response_code;
    if rcode != ResponseCode::NoError && rcode != ResponseCode::NXDomain {
        return None;
    }
    let ttl = if rcode == ResponseCode::NXDomain || resp.answers.is_empty() {
        resp.authorities
            .iter()
            .filter_map(|r| match &r.data {
                RData::SOA(soa) => Some(soa.minimum.min(r.ttl)),
                _ => None,
            })
            .min()?
            .min(MAX_NEGATIVE_TTL)
    } else {
        resp.answers
            .iter()
            .map(|r| r.ttl)
            .min()?
            .min(MAX_POSITIVE_TTL)
    };
    (ttl > 0).then_some(ttl)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use hickory_proto::op::OpCode;
    use hickory_proto::rr::Record;
    use hickory_proto::rr::rdata::A;
    use std::net::Ipv4Addr;
    use std::time::Duration;

    #[test]
    fn cache_unit() {
        let mut c = Cache::new(2);
        let now = Instant::now();
        let key = |s: &str| (name(s), 1u16, 1u16);
        let mut msg = Message::response(0, OpCode::Query);
        msg.answers.push(Record::from_rdata(
            name("a."),
            100,
            RData::A(A(Ipv4Addr::LOCALHOST)),
        ));
        c.insert(key("a."), msg.clone(), 100, now);
        c.insert(key("b."), msg.clone(), 100, now);
        c.insert(key("c."), msg.clone(), 100, now); // evicts a.
        assert!(c.get(&key("a."), now).is_none());
        let m = c.get(&key("b."), now + Duration::from_secs(30)).unwrap();
        assert_eq!(m.answers[0].ttl, 70);
        assert!(c.get(&key("c."), now + Duration::from_secs(100)).is_none());
        assert_eq!(c.map.len(), 1);
        assert_eq!(c.order.len(), 1);
        // TTL rules (answers of the test zone: forward.rs's cache_ttl_of_zone_answers).
        assert_eq!(cache_ttl(&msg), Some(100));
        msg.answers[0].ttl = 99_999;
        assert_eq!(cache_ttl(&msg), Some(MAX_POSITIVE_TTL));
        msg.answers[0].ttl = 0;
        assert_eq!(cache_ttl(&msg), None);
        msg.answers.clear();
        assert_eq!(cache_ttl(&msg), None); // NODATA without SOA
        let mut c0 = Cache::new(0);
        c0.insert(key("a."), msg, 100, now);
        assert!(c0.map.is_empty());
    }
}
