//! etcd servers (Debian's `etcd-server`) for cluster tests, inside a test namespace on
//! addresses of that namespace, data in temp dirs; killed by pid and cleaned up on drop. A
//! single member ([`Etcd::start_in`]: clients on `IP:2379`, its peer port on the namespace's
//! loopback) or a 3-member cluster ([`EtcdCluster::start_in`]: member `k` on `IPk:2379`, peers
//! on `IPk:2380`). Keys are read and written by hand through etcd's JSON gateway
//! (`/v3/kv/...`) with curl inside the namespace.

use std::process::Stdio;
use std::time::{Duration, Instant};

use super::{Child, Netns};

/// A running etcd (or a member of an [`EtcdCluster`]).
pub struct Etcd {
    ns: String,
    ip: String,
    /// Member name, peer URL and `--initial-cluster`.
    name: String,
    peer: String,
    initial: String,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// How long a member (or the cluster) has to become healthy.
const START: Duration = Duration::from_secs(20);

impl Etcd {
    /// Starts etcd in `ns` listening for clients on `ip`:2379 and waits until it is healthy.
    pub fn start_in(ns: &Netns, ip: &str) -> Etcd {
        let peer = "http://127.0.0.1:2380".to_string();
        let mut e = Etcd::member(ns, ip, "n0", &peer, &format!("n0={peer}"));
        e.restart();
        e
    }

    fn member(ns: &Netns, ip: &str, name: &str, peer: &str, initial: &str) -> Etcd {
        Etcd {
            ns: ns.name.clone(),
            ip: ip.to_string(),
            name: name.to_string(),
            peer: peer.to_string(),
            initial: initial.to_string(),
            dir: tempfile::tempdir().expect("tmp"),
            child: None,
        }
    }

    /// The client endpoint, `http://IP:2379`.
    pub fn endpoint(&self) -> String {
        format!("http://{}:2379", self.ip)
    }

    /// Starts it again (after [`Self::stop`]) on the same data and waits until it is healthy.
    pub fn restart(&mut self) {
        self.spawn();
        self.wait_healthy();
    }

    /// True while its process runs (not stopped).
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts the process (on the same data after [`Self::stop`]); does not wait.
    fn spawn(&mut self) {
        assert!(self.child.is_none(), "etcd {} runs already", self.name);
        let ep = self.endpoint();
        let child = std::process::Command::new("ip")
            .args(["netns", "exec", &self.ns, "etcd", "--name", &self.name])
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &ep,
                "--advertise-client-urls",
                &ep,
                "--listen-peer-urls",
                &self.peer,
                "--initial-advertise-peer-urls",
                &self.peer,
                "--initial-cluster",
                &self.initial,
                "--initial-cluster-token",
                "usernet-test",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.dir.path().join("log"))
                    .expect("log"),
            )
            .spawn()
            .expect("etcd (Debian package etcd-server)");
        self.child = Some(Child(child));
    }

    /// True if it answers `/health` with true (it has a leader and a quorum).
    fn healthy(&self) -> bool {
        self.curl("/health", "").contains("\"true\"")
    }

    /// Waits (bounded) until it is healthy.
    fn wait_healthy(&self) {
        let deadline = Instant::now() + START;
        while !self.healthy() {
            assert!(
                Instant::now() < deadline,
                "etcd {} did not start: {}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Its log (stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// Kills it (the data stays for [`Self::restart`]).
    pub fn stop(&mut self) {
        self.child.take();
    }

    /// `(its member id, the leader's member id)` from `/v3/maintenance/status`; None if it
    /// does not answer.
    fn status(&self) -> Option<(String, String)> {
        let r = self.curl("/v3/maintenance/status", "{}");
        let v: serde_json::Value = serde_json::from_str(&r).ok()?;
        let id = v["header"]["member_id"].as_str()?.to_string();
        let leader = v["leader"].as_str()?.to_string();
        Some((id, leader))
    }

    fn curl(&self, path: &str, body: &str) -> String {
        let url = format!("{}{path}", self.endpoint());
        let mut args = vec![
            "timeout", "10", "ip", "netns", "exec", &self.ns, "curl", "-s", "-m", "5",
        ];
        if !body.is_empty() {
            args.extend(["-X", "POST", "-d", body]);
        }
        args.push(&url);
        let out = std::process::Command::new(args[0])
            .args(&args[1..])
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Writes `key` = `value` (no lease).
    pub fn put(&self, key: &str, value: &[u8]) {
        let r = self.curl(
            "/v3/kv/put",
            &format!(
                "{{\"key\":\"{}\",\"value\":\"{}\"}}",
                b64(key.as_bytes()),
                b64(value)
            ),
        );
        assert!(r.contains("header"), "put {key}: {r}");
    }

    /// Deletes `key`.
    pub fn delete(&self, key: &str) {
        let r = self.curl(
            "/v3/kv/deleterange",
            &format!("{{\"key\":\"{}\"}}", b64(key.as_bytes())),
        );
        assert!(r.contains("header"), "delete {key}: {r}");
    }

    /// The keys under `prefix` and their values (as text).
    pub fn list(&self, prefix: &str) -> Vec<(String, String)> {
        let mut end = prefix.as_bytes().to_vec();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        let r = self.curl(
            "/v3/kv/range",
            &format!(
                "{{\"key\":\"{}\",\"range_end\":\"{}\"}}",
                b64(prefix.as_bytes()),
                b64(&end)
            ),
        );
        let v: serde_json::Value = serde_json::from_str(&r).expect("range JSON");
        v["kvs"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|kv| {
                        let text = |k: &str| {
                            String::from_utf8_lossy(&unb64(kv[k].as_str().unwrap_or_default()))
                                .into_owned()
                        };
                        (text("key"), text("value"))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A 3-member (or n-member) etcd cluster in one namespace: member `k` serves clients on
/// `ips[k]:2379` and its peers on `ips[k]:2380`, each with a data dir of its own. Members are
/// stopped and restarted one by one; all are killed on drop.
pub struct EtcdCluster {
    /// The members, in the order of their addresses.
    pub members: Vec<Etcd>,
    /// Their member ids (as etcd's JSON gateway writes them), learned at start.
    ids: Vec<String>,
}

impl EtcdCluster {
    /// Starts one member on each of `ips` (addresses of `ns`) and waits until every member is
    /// healthy (bounded).
    pub fn start_in(ns: &Netns, ips: &[&str]) -> EtcdCluster {
        let peer = |ip: &str| format!("http://{ip}:2380");
        let initial = ips
            .iter()
            .enumerate()
            .map(|(k, ip)| format!("m{k}={}", peer(ip)))
            .collect::<Vec<_>>()
            .join(",");
        let mut members: Vec<Etcd> = ips
            .iter()
            .enumerate()
            .map(|(k, ip)| Etcd::member(ns, ip, &format!("m{k}"), &peer(ip), &initial))
            .collect();
        // All at once: none is healthy before a quorum runs.
        for m in &mut members {
            m.spawn();
        }
        for m in &members {
            m.wait_healthy();
        }
        let ids = members
            .iter()
            .map(|m| m.status().expect("member status").0)
            .collect();
        EtcdCluster { members, ids }
    }

    /// The client endpoints of all members.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Etcd::endpoint).collect()
    }

    /// The index of the current leader, as a running member reports it; waits (bounded) for
    /// one to be elected.
    pub fn leader(&self) -> usize {
        let deadline = Instant::now() + START;
        loop {
            for m in self.members.iter().filter(|m| m.running()) {
                if let Some((_, leader)) = m.status()
                    && let Some(k) = self.ids.iter().position(|id| *id == leader)
                    && self.members[k].running()
                {
                    return k;
                }
            }
            assert!(Instant::now() < deadline, "no etcd leader elected");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills member `k` (its data stays).
    pub fn stop(&mut self, k: usize) {
        self.members[k].stop();
    }

    /// Starts the stopped members `ks` again on their data, all at once, and waits until each
    /// is healthy (bounded).
    pub fn restart(&mut self, ks: &[usize]) {
        for k in ks {
            self.members[*k].spawn();
        }
        for k in ks {
            self.members[*k].wait_healthy();
        }
    }

    /// A running member, to read or write keys by hand.
    pub fn any(&self) -> &Etcd {
        self.members
            .iter()
            .find(|m| m.running() && m.healthy())
            .expect("a healthy etcd member")
    }

    /// Every member's log, for failure messages.
    pub fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("--- etcd {}\n{}", m.name, m.log()))
            .collect()
    }
}

const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn b64(data: &[u8]) -> String {
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn unb64(s: &str) -> Vec<u8> {
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for b in s.bytes().filter(|b| *b != b'=') {
        let Some(v) = B64.iter().position(|x| *x == b) else {
            continue;
        };
        bits = (bits << 6) | v as u32;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    out
}
