//! The local zones: [`Records`], the names of one network's endpoints (shared with the control
//! API), and the authoritative answers the server gives from them (step 2 of the server's
//! theory of operation).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};

use hickory_proto::op::{Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, PTR, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use parking_lot::RwLock;
use serde::Serialize;
use tracing::warn;

use super::LOCAL_TTL;

/// Errors of the DNS records API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DnsError {
    /// A name that is not a valid DNS name for a record.
    #[error("invalid DNS name {name:?}: {reason}")]
    BadName {
        /// The name as given.
        name: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A fully qualified name outside the network's domain.
    #[error("DNS name {name:?} is outside the domain {domain:?}")]
    OutsideDomain {
        /// The name as given.
        name: String,
        /// The network's domain.
        domain: String,
    },
    /// A name the gateway keeps for itself (`host`, a service's name): no other address.
    #[error("DNS name {name:?} is reserved (the gateway's or a service's)")]
    Reserved {
        /// The name as given.
        name: String,
    },
}
/// One name → address mapping, as listed by [`Records::list`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[non_exhaustive]
pub struct RecordEntry {
    /// Fully qualified name, lowercase, without trailing dot (e.g. `web.usernet`).
    pub name: String,
    /// One address of the name.
    pub addr: IpAddr,
}

#[derive(Debug, Default)]
struct RecordsInner {
    /// Full lowercase name without trailing dot → its addresses, in insertion order.
    by_name: BTreeMap<String, Vec<IpAddr>>,
    /// Lowercase reverse name without trailing dot (`1.0.88.10.in-addr.arpa`) → the names that
    /// have this address, sorted.
    by_reverse: HashMap<String, Vec<String>>,
    /// Names only [`Records::reserve`] gives addresses to.
    reserved: std::collections::HashSet<String>,
}

/// The local names of one network: thread-safe, shared through an `Arc` between the gateway's
/// DNS server and the control API.
#[derive(Debug)]
pub struct Records {
    /// The domain, lowercase, without leading or trailing dots.
    domain: String,
    /// The domain as an FQDN, when it is a valid name.
    apex: Option<Name>,
    /// SOA serial, bumped on every change.
    serial: AtomicU32,
    inner: RwLock<RecordsInner>,
}

/// Checks one label of a record name: 1 to 63 bytes of letters, digits, `-` and `_`, not
/// starting or ending with `-`.
fn check_label(label: &str) -> Result<(), String> {
    if label.is_empty() {
        return Err("empty label".into());
    }
    if label.len() > 63 {
        return Err(format!("label {label:?} is longer than 63 bytes"));
    }
    if let Some(c) = label
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(format!(
            "label {label:?} contains {c:?} (allowed: letters, digits, '-', '_')"
        ));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(format!("label {label:?} starts or ends with '-'"));
    }
    Ok(())
}

/// The reverse-lookup name of `addr`, lowercase, without trailing dot.
fn reverse_key(addr: IpAddr) -> String {
    let name = Name::from(addr).to_lowercase().to_ascii();
    name.trim_end_matches('.').to_string()
}

impl Records {
    /// An empty record set for `domain` (e.g. `usernet`; case and surrounding dots ignored).
    /// An invalid domain leaves the set unusable: [`Records::add`] fails and the server is
    /// authoritative for no name (everything is forwarded).
    pub fn new(domain: &str) -> Self {
        let domain = domain.trim_matches('.').to_ascii_lowercase();
        let valid = !domain.is_empty()
            && domain.len() <= 253
            && domain.split('.').all(|l| check_label(l).is_ok());
        let apex = if valid {
            Name::from_ascii(format!("{domain}.")).ok()
        } else {
            None
        };
        if apex.is_none() {
            warn!(domain = %domain, "invalid DNS domain: no local names will be served");
        }
        Self {
            domain,
            apex,
            serial: AtomicU32::new(1),
            inner: RwLock::new(RecordsInner::default()),
        }
    }

    /// The domain, lowercase, without trailing dot.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Turns a label (`web`) or an FQDN inside the domain (`web.usernet`, `Web.Usernet.`) into
    /// the stored key (`web.usernet`).
    fn normalize(&self, name: &str) -> Result<String, DnsError> {
        let bad = |reason: String| DnsError::BadName {
            name: name.to_string(),
            reason,
        };
        if self.apex.is_none() {
            return Err(bad(format!(
                "the network's DNS domain {:?} is invalid",
                self.domain
            )));
        }
        let lower = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        if lower.is_empty() {
            return Err(bad("empty name".into()));
        }
        if lower == self.domain {
            return Err(bad("is the domain apex itself".into()));
        }
        let relative = match lower
            .strip_suffix(self.domain.as_str())
            .and_then(|r| r.strip_suffix('.'))
        {
            Some(r) => r,
            None if lower.contains('.') => {
                return Err(DnsError::OutsideDomain {
                    name: name.to_string(),
                    domain: self.domain.clone(),
                });
            }
            None => lower.as_str(),
        };
        for label in relative.split('.') {
            check_label(label).map_err(bad)?;
        }
        let full = format!("{relative}.{}", self.domain);
        if full.len() > 253 {
            return Err(bad(format!("{full:?} is longer than 253 bytes")));
        }
        Ok(full)
    }

    /// Adds `addr` to `name` — a label (`web`) or an FQDN inside the domain (`web.usernet`).
    /// A name may have several addresses, IPv4 (A) and IPv6 (AAAA); adding an existing pair is
    /// a no-op.
    pub fn add(&self, name: &str, addr: IpAddr) -> Result<(), DnsError> {
        self.insert(name, addr, false)
    }

    /// Adds `addr` to `name` and keeps the name for such calls: [`Records::add`] (an
    /// endpoint's DHCP name, the API) can no longer give it an address, so no guest can take
    /// the gateway's `host` or a service's name.
    pub fn reserve(&self, name: &str, addr: IpAddr) -> Result<(), DnsError> {
        self.insert(name, addr, true)
    }

    fn insert(&self, name: &str, addr: IpAddr, reserve: bool) -> Result<(), DnsError> {
        let key = self.normalize(name)?;
        let mut inner = self.inner.write();
        if reserve {
            inner.reserved.insert(key.clone());
        } else if inner.reserved.contains(&key) {
            return Err(DnsError::Reserved {
                name: name.to_string(),
            });
        }
        let addrs = inner.by_name.entry(key.clone()).or_default();
        if addrs.contains(&addr) {
            return Ok(());
        }
        addrs.push(addr);
        let names = inner.by_reverse.entry(reverse_key(addr)).or_default();
        if let Err(pos) = names.binary_search(&key) {
            names.insert(pos, key);
        }
        self.serial.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Removes `addr` from `name`, or every address of `name` when `addr` is `None`. Returns
    /// whether anything was removed (an invalid name removes nothing).
    pub fn remove(&self, name: &str, addr: Option<IpAddr>) -> bool {
        let Ok(key) = self.normalize(name) else {
            return false;
        };
        let mut inner = self.inner.write();
        let Some(addrs) = inner.by_name.get_mut(&key) else {
            return false;
        };
        let removed: Vec<IpAddr> = match addr {
            Some(a) => {
                let before = addrs.len();
                addrs.retain(|x| *x != a);
                if addrs.len() == before {
                    return false;
                }
                vec![a]
            }
            None => std::mem::take(addrs),
        };
        if addrs.is_empty() {
            inner.by_name.remove(&key);
        }
        for a in removed {
            let rkey = reverse_key(a);
            if let Some(names) = inner.by_reverse.get_mut(&rkey) {
                names.retain(|n| *n != key);
                if names.is_empty() {
                    inner.by_reverse.remove(&rkey);
                }
            }
        }
        self.serial.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Every (name, address) pair, sorted by name then address.
    pub fn list(&self) -> Vec<RecordEntry> {
        let inner = self.inner.read();
        let mut out: Vec<RecordEntry> = inner
            .by_name
            .iter()
            .flat_map(|(name, addrs)| {
                addrs.iter().map(|a| RecordEntry {
                    name: name.clone(),
                    addr: *a,
                })
            })
            .collect();
        out.sort();
        out
    }

    /// The addresses of a name (an FQDN like `web.usernet`, with or without trailing dot, or a
    /// label), in insertion order; empty for unknown or invalid names.
    pub fn lookup(&self, fqdn: &str) -> Vec<IpAddr> {
        let Ok(key) = self.normalize(fqdn) else {
            return Vec::new();
        };
        self.inner
            .read()
            .by_name
            .get(&key)
            .cloned()
            .unwrap_or_default()
    }

    /// The SOA record of a local zone whose apex is `owner`.
    pub(super) fn soa(&self, owner: &Name) -> Option<Record> {
        let apex = self.apex.as_ref()?;
        let rname = Name::from_ascii("hostmaster")
            .ok()?
            .append_domain(apex)
            .ok()?;
        let soa = SOA::new(
            apex.clone(),
            rname,
            self.serial.load(Ordering::Relaxed),
            3600,
            600,
            86400,
            LOCAL_TTL,
        );
        Some(Record::from_rdata(
            owner.clone(),
            LOCAL_TTL,
            RData::SOA(soa),
        ))
    }

    /// Answers `q` if it falls in a local zone.
    pub(super) fn resolve(&self, q: &Query) -> Option<LocalAnswer> {
        let apex = self.apex.as_ref()?;
        let qname = &q.name;
        if apex.zone_of(qname) {
            return Some(self.resolve_forward(apex, q));
        }
        let rkey = qname.to_lowercase().to_ascii();
        let rkey = rkey.trim_end_matches('.');
        if !(rkey.ends_with(".in-addr.arpa") || rkey.ends_with(".ip6.arpa")) {
            return None;
        }
        let names = self.inner.read().by_reverse.get(rkey).cloned()?;
        let mut ans = LocalAnswer::new(ResponseCode::NoError, qname.clone());
        if !class_ok(q.query_class) {
            ans.rcode = ResponseCode::Refused;
            return Some(ans);
        }
        if matches!(q.query_type, RecordType::PTR | RecordType::ANY) {
            for n in names {
                if let Ok(target) = Name::from_ascii(format!("{n}.")) {
                    ans.answers.push(Record::from_rdata(
                        qname.clone(),
                        LOCAL_TTL,
                        RData::PTR(PTR(target)),
                    ));
                }
            }
        }
        Some(ans)
    }

    /// Answers `q`, a question inside the domain.
    fn resolve_forward(&self, apex: &Name, q: &Query) -> LocalAnswer {
        let qname = &q.name;
        let mut ans = LocalAnswer::new(ResponseCode::NoError, apex.clone());
        if !class_ok(q.query_class) || matches!(q.query_type, RecordType::AXFR | RecordType::IXFR) {
            ans.rcode = ResponseCode::Refused;
            ans.soa_owner = None;
            return ans;
        }
        let extra = usize::from(qname.num_labels().saturating_sub(apex.num_labels()));
        if extra == 0 {
            if matches!(q.query_type, RecordType::SOA | RecordType::ANY) {
                if let Some(mut soa) = self.soa(apex) {
                    soa.name = qname.clone();
                    ans.answers.push(soa);
                }
                ans.soa_owner = None;
            }
            return ans;
        }
        // The labels in front of the apex, which must all be valid record labels.
        let mut labels = Vec::with_capacity(extra);
        for raw in qname.iter().take(extra) {
            match std::str::from_utf8(raw) {
                Ok(l) if check_label(l).is_ok() => labels.push(l.to_ascii_lowercase()),
                _ => {
                    ans.rcode = ResponseCode::NXDomain;
                    return ans;
                }
            }
        }
        let key = format!("{}.{}", labels.join("."), self.domain);
        let inner = self.inner.read();
        match inner.by_name.get(&key) {
            Some(addrs) => {
                for addr in addrs {
                    let data = match (q.query_type, addr) {
                        (RecordType::A | RecordType::ANY, IpAddr::V4(v4)) => RData::A(A(*v4)),
                        (RecordType::AAAA | RecordType::ANY, IpAddr::V6(v6)) => {
                            RData::AAAA(AAAA(*v6))
                        }
                        _ => continue,
                    };
                    ans.answers
                        .push(Record::from_rdata(qname.clone(), LOCAL_TTL, data));
                }
                if !ans.answers.is_empty() {
                    ans.soa_owner = None;
                }
            }
            None => {
                // An empty non-terminal (`app.usernet` when `db.app.usernet` exists) exists.
                let suffix = format!(".{key}");
                if !inner.by_name.keys().any(|k| k.ends_with(&suffix)) {
                    ans.rcode = ResponseCode::NXDomain;
                }
            }
        }
        ans
    }
}

/// Classes the local zones answer.
fn class_ok(class: DNSClass) -> bool {
    matches!(class, DNSClass::IN | DNSClass::ANY)
}

/// An authoritative answer from the local zones.
pub(super) struct LocalAnswer {
    pub(super) rcode: ResponseCode,
    pub(super) answers: Vec<Record>,
    /// Owner of the SOA put in the authority section (None: no SOA).
    pub(super) soa_owner: Option<Name>,
}

impl LocalAnswer {
    fn new(rcode: ResponseCode, soa_owner: Name) -> Self {
        Self {
            rcode,
            answers: Vec::new(),
            soa_owner: Some(soa_owner),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::{DnsConfig, DnsServer, Transport, Upstreams};
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_reserved_name_takes_no_other_address() {
        let r = Records::new("usernet");
        let gw: IpAddr = "10.88.0.1".parse().expect("ip");
        let guest: IpAddr = "10.88.0.5".parse().expect("ip");
        r.reserve("host", gw).expect("reserve");
        let e = r.add("Host.usernet.", guest).expect_err("taken");
        assert!(matches!(e, DnsError::Reserved { .. }), "{e}");
        assert_eq!(r.lookup("host.usernet"), vec![gw]);
        // Reserving adds addresses; other names are unaffected.
        r.reserve("host", "fd00::1".parse().expect("ip"))
            .expect("v6");
        assert_eq!(r.lookup("host").len(), 2);
        r.add("web", guest).expect("web");
        assert_eq!(r.lookup("web"), vec![guest]);
    }

    #[test]
    fn local_a_aaaa() {
        let srv = local_server();
        let m = ask(&srv, "web.usernet.", RecordType::A);
        assert_eq!(m.metadata.id, 0x1234);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.metadata.authoritative);
        assert_eq!(addrs(&m), vec!["10.88.0.5".parse::<IpAddr>().unwrap()]);
        assert_eq!(m.answers[0].ttl, LOCAL_TTL);
        let m = ask(&srv, "web.usernet.", RecordType::AAAA);
        assert_eq!(addrs(&m), vec!["fd00::5".parse::<IpAddr>().unwrap()]);
        let s = srv.stats();
        assert_eq!((s.queries, s.local_answers, s.forwarded), (2, 2, 0));
    }

    #[test]
    fn local_ptr() {
        let srv = local_server();
        let m = ask(&srv, "5.0.88.10.in-addr.arpa.", RecordType::PTR);
        assert!(m.metadata.authoritative);
        let targets: Vec<String> = m
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::PTR(p) => Some(p.0.to_ascii()),
                _ => None,
            })
            .collect();
        assert_eq!(targets, vec!["web.usernet.".to_string()]);
        let v6 = Name::from("fd00::5".parse::<IpAddr>().unwrap()).to_ascii();
        let m = ask(&srv, &v6.to_uppercase(), RecordType::PTR);
        assert_eq!(m.answers.len(), 1);
        // The name exists without that type.
        let m = ask(&srv, "5.0.88.10.in-addr.arpa.", RecordType::TXT);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty() && has_soa(&m));
    }

    #[test]
    fn local_nxdomain_nodata_apex() {
        let srv = local_server();
        let m = ask(&srv, "nope.usernet.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert!(m.metadata.authoritative && has_soa(&m) && m.answers.is_empty());
        // Below an existing name: NXDOMAIN too.
        let m = ask(&srv, "x.web.usernet.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        // Invalid label inside the domain.
        let mut b = header(0x0100, 1, 0);
        question(&mut b, &[b"a*b", b"usernet"]);
        let m = ask_raw(&srv, &b, Transport::Udp { max_size: 512 }).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        // NODATA: the name has A and AAAA but not MX.
        let m = ask(&srv, "web.usernet.", RecordType::MX);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty() && has_soa(&m));
        // db.app exists with an A record only.
        let m = ask(&srv, "db.app.usernet.", RecordType::AAAA);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty() && has_soa(&m));
        // Empty non-terminal.
        let m = ask(&srv, "app.usernet.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());
        // Apex: SOA answered, other types NODATA.
        let m = ask(&srv, "usernet.", RecordType::SOA);
        assert_eq!(m.answers.len(), 1);
        assert_eq!(m.answers[0].record_type(), RecordType::SOA);
        let m = ask(&srv, "usernet.", RecordType::NS);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty() && has_soa(&m));
        let m = ask(&srv, "usernet.", RecordType::AXFR);
        assert_eq!(m.metadata.response_code, ResponseCode::Refused);
        let s = srv.stats();
        assert_eq!(s.nxdomain, 3);
        assert_eq!(s.forwarded, 0);
    }

    #[test]
    fn case_insensitive() {
        let srv = local_server();
        let m = ask(&srv, "WeB.UserNET.", RecordType::A);
        assert_eq!(addrs(&m).len(), 1);
        // The question is echoed as sent.
        assert_eq!(m.queries[0].name.to_ascii(), "WeB.UserNET.");
        let r = Records::new("UserNet.");
        r.add("Web.USERNET.", "10.0.0.1".parse().unwrap()).unwrap();
        assert_eq!(r.lookup("web.usernet").len(), 1);
        assert_eq!(r.lookup("WEB").len(), 1);
        assert_eq!(r.list()[0].name, "web.usernet");
    }

    #[test]
    fn records_add_remove_list() {
        let r = Records::new("usernet");
        let a: IpAddr = "10.88.0.5".parse().unwrap();
        let b: IpAddr = "fd00::5".parse().unwrap();
        r.add("web", a).unwrap();
        r.add("web", a).unwrap(); // idempotent
        r.add("web", b).unwrap();
        r.add("api", a).unwrap();
        assert_eq!(r.lookup("web.usernet."), vec![a, b]);
        let list = r.list();
        assert_eq!(
            list.iter()
                .map(|e| (e.name.as_str(), e.addr))
                .collect::<Vec<_>>(),
            vec![("api.usernet", a), ("web.usernet", a), ("web.usernet", b)]
        );
        assert!(r.remove("web", Some(a)));
        assert!(!r.remove("web", Some(a)));
        assert_eq!(r.lookup("web"), vec![b]);
        assert!(r.remove("web.usernet", None));
        assert!(r.lookup("web").is_empty());
        assert!(!r.remove("web", None));
        // The PTR of `a` now only names `api`.
        let inner = r.inner.read();
        assert_eq!(
            inner.by_reverse.get("5.0.88.10.in-addr.arpa"),
            Some(&vec!["api.usernet".to_string()])
        );
        assert_eq!(inner.by_reverse.len(), 1);
        drop(inner);
        // Bad names are rejected with the input in the message.
        for bad in [
            "",
            "-x",
            "a b",
            "x.example.com",
            "usernet",
            &"a".repeat(64),
            "a..b",
        ] {
            let e = r.add(bad, a).unwrap_err();
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
        assert!(matches!(
            r.add("web.example", a),
            Err(DnsError::OutsideDomain { .. })
        ));
        assert!(matches!(
            Records::new("bad domain!").add("x", a),
            Err(DnsError::BadName { .. })
        ));
        // Names served are updated live.
        let records = Arc::new(Records::new("usernet"));
        let cfg = DnsConfig::new("usernet", Upstreams::Explicit(vec![]));
        let srv = DnsServer::new(cfg, records.clone());
        assert_eq!(
            ask(&srv, "late.usernet.", RecordType::A)
                .metadata
                .response_code,
            ResponseCode::NXDomain
        );
        records.add("late", a).unwrap();
        assert_eq!(addrs(&ask(&srv, "late.usernet.", RecordType::A)), vec![a]);
        records.remove("late", None);
        assert_eq!(
            ask(&srv, "late.usernet.", RecordType::A)
                .metadata
                .response_code,
            ResponseCode::NXDomain
        );
    }
}
