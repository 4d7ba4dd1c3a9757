//! Upstreams from a resolv.conf file: the `nameserver` parser and the watcher that re-reads
//! the file when it changes (see the server's invariants).

use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use tracing::{debug, info, warn};

/// Parses the `nameserver` lines of a resolv.conf text, in order, with port 53. Comments (`#`,
/// `;`) and unparseable addresses are skipped; an IPv6 zone (`fe80::1%eth0`) becomes the scope
/// id.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or("");
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(word) = words.next() else { continue };
        if let Ok(ip) = word.parse::<IpAddr>() {
            out.push(SocketAddr::new(ip, 53));
        } else if let Some((ip, zone)) = word.split_once('%')
            && let Ok(ip) = ip.parse::<Ipv6Addr>()
            && let Some(scope) = scope_id(zone)
        {
            out.push(SocketAddr::V6(SocketAddrV6::new(ip, 53, 0, scope)));
        } else {
            debug!(line, "ignoring unparseable nameserver line");
        }
    }
    out
}

/// The scope id of an IPv6 zone: a number or an interface name.
fn scope_id(zone: &str) -> Option<u32> {
    if let Ok(n) = zone.parse() {
        return Some(n);
    }
    crate::sys::ifreq::name_to_index(zone)
        .ok()
        .filter(|&idx| idx != 0)
}

/// Follows a resolv.conf file: re-reads it when its mtime, length or inode changes, checking at
/// most once per `interval`.
///
/// A file that cannot be read (it vanished while being replaced, or `open` is refused because
/// the sandbox is on, or EACCES) keeps the last upstreams read: one warning per failing spell,
/// and the next change is read again. Only a file read successfully replaces the list (an
/// empty list too, if it has no `nameserver` line).
#[derive(Debug)]
pub(super) struct ResolvConfWatcher {
    path: PathBuf,
    interval: Duration,
    last_check: Option<Instant>,
    /// (mtime, len, inode) of the version last read successfully.
    stamp: Option<(Option<SystemTime>, u64, u64)>,
    servers: Vec<SocketAddr>,
    /// True while the file cannot be read (warned once).
    failing: bool,
}

impl ResolvConfWatcher {
    pub(super) fn new(path: PathBuf, interval: Duration) -> Self {
        Self {
            path,
            interval,
            last_check: None,
            stamp: None,
            servers: Vec::new(),
            failing: false,
        }
    }

    pub(super) fn current(&mut self) -> Vec<SocketAddr> {
        let now = Instant::now();
        if self
            .last_check
            .is_some_and(|t| now.duration_since(t) < self.interval)
        {
            return self.servers.clone();
        }
        let first = self.last_check.is_none();
        self.last_check = Some(now);
        let read = std::fs::metadata(&self.path).and_then(|m| {
            let stamp = Some((m.modified().ok(), m.len(), m.ino()));
            if !first && stamp == self.stamp {
                return Ok(None);
            }
            std::fs::read_to_string(&self.path).map(|text| Some((stamp, text)))
        });
        match read {
            Ok(None) => {}
            Ok(Some((stamp, text))) => {
                let servers = parse_resolv_conf(&text);
                if first || self.failing || servers != self.servers {
                    info!(path = %self.path.display(), ?servers, "DNS upstreams");
                }
                self.failing = false;
                self.stamp = stamp;
                self.servers = servers;
            }
            Err(e) => {
                if !self.failing {
                    warn!(path = %self.path.display(), error = %e, kept = ?self.servers,
                        "cannot read resolv.conf: keeping the last upstreams");
                }
                self.failing = true;
            }
        }
        self.servers.clone()
    }
}

#[derive(Debug)]
pub(super) enum UpstreamSource {
    Explicit(Vec<SocketAddr>),
    ResolvConf(Mutex<ResolvConfWatcher>),
}

impl UpstreamSource {
    pub(super) fn current(&self) -> Vec<SocketAddr> {
        match self {
            Self::Explicit(v) => v.clone(),
            Self::ResolvConf(w) => w.lock().current(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::{DnsConfig, DnsServer, Records, Upstreams};
    use super::*;
    use hickory_proto::op::ResponseCode;
    use hickory_proto::rr::RecordType;
    use std::sync::Arc;
    use std::thread;

    #[test]
    fn resolv_conf_parse() {
        let text = "# comment\nsearch example.com\nnameserver 192.0.2.53\nnameserver  2001:db8::1 # v6\n\
                    nameserver fe80::1%7\nnameserver bogus\n;nameserver 192.0.2.99\noptions ndots:2\nnameserver 192.0.2.54";
        let v = parse_resolv_conf(text);
        assert_eq!(
            v,
            vec![
                "192.0.2.53:53".parse::<SocketAddr>().unwrap(),
                "[2001:db8::1]:53".parse().unwrap(),
                "[fe80::1%7]:53".parse().unwrap(),
                "192.0.2.54:53".parse().unwrap(),
            ]
        );
        assert!(parse_resolv_conf("").is_empty());
    }

    #[test]
    fn resolv_conf_reread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resolv.conf");
        std::fs::write(&path, "nameserver 192.0.2.1\n").unwrap();
        // Interval zero: every call checks the file.
        let mut w = ResolvConfWatcher::new(path.clone(), Duration::ZERO);
        assert_eq!(w.current(), vec!["192.0.2.1:53".parse().unwrap()]);
        std::fs::write(&path, "nameserver 192.0.2.2\nnameserver 192.0.2.3\n").unwrap();
        assert_eq!(
            w.current(),
            vec![
                "192.0.2.2:53".parse().unwrap(),
                "192.0.2.3:53".parse::<SocketAddr>().unwrap()
            ]
        );
        // An empty file empties the list (a successful read).
        std::fs::write(&path, "search example.com\n").unwrap();
        assert!(w.current().is_empty());
        // The real interval: a change is seen only after it.
        std::fs::write(&path, "nameserver 192.0.2.1\n").unwrap();
        let mut w = ResolvConfWatcher::new(path.clone(), Duration::from_millis(300));
        assert_eq!(w.current().len(), 1);
        std::fs::write(&path, "nameserver 192.0.2.7\nnameserver 192.0.2.8\n").unwrap();
        assert_eq!(w.current().len(), 1);
        thread::sleep(Duration::from_millis(350));
        assert_eq!(w.current().len(), 2);
    }

    /// A resolv.conf that vanishes or cannot be read (as under the sandbox, where `open` fails
    /// with EPERM) keeps the last upstreams; the next readable version is taken.
    #[test]
    fn resolv_conf_unreadable_keeps_upstreams() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resolv.conf");
        std::fs::write(&path, "nameserver 192.0.2.1\n").unwrap();
        let mut w = ResolvConfWatcher::new(path.clone(), Duration::ZERO);
        let one: Vec<SocketAddr> = vec!["192.0.2.1:53".parse().unwrap()];
        assert_eq!(w.current(), one);
        // Removed (e.g. between unlink and rename of a resolver manager).
        std::fs::remove_file(&path).unwrap();
        assert_eq!(w.current(), one);
        assert_eq!(w.current(), one);
        // Back, changed: read.
        std::fs::write(&path, "nameserver 192.0.2.2\n").unwrap();
        let two: Vec<SocketAddr> = vec!["192.0.2.2:53".parse().unwrap()];
        assert_eq!(w.current(), two);
        // Changed and unreadable. Root reads mode 000 files anyway: a directory in the file's
        // place stands for "open succeeds, read fails" there.
        std::fs::write(&path, "nameserver 192.0.2.3\nnameserver 192.0.2.4\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o000)).unwrap();
        if std::fs::read(&path).is_err() {
            assert_eq!(w.current(), two);
        }
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        assert_eq!(w.current(), two);
        std::fs::remove_dir(&path).unwrap();
        std::fs::write(&path, "nameserver 192.0.2.5\n").unwrap();
        assert_eq!(
            w.current(),
            vec!["192.0.2.5:53".parse::<SocketAddr>().unwrap()]
        );
    }

    #[test]
    fn resolv_conf_without_nameservers_servfail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resolv.conf");
        std::fs::write(&path, "search example.com\n").unwrap();
        let mut cfg = DnsConfig::new("usernet", Upstreams::ResolvConf(path));
        cfg.timeout = Duration::from_millis(200);
        let records = Arc::new(Records::new("usernet"));
        records.add("web", "10.88.0.5".parse().unwrap()).unwrap();
        let srv = DnsServer::new(cfg, records);
        let t0 = Instant::now();
        let m = ask(&srv, "www.test.zone.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
        assert!(t0.elapsed() < Duration::from_millis(500));
        // Local names still work.
        assert_eq!(addrs(&ask(&srv, "web.usernet.", RecordType::A)).len(), 1);
    }
}
