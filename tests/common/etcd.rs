//! A single-member etcd server (Debian's `etcd-server`) for cluster tests, inside a test
//! namespace on an address of that namespace (its peer port on the namespace's loopback), data
//! in a temp dir; killed by pid and cleaned up on drop. Keys are read and written by hand
//! through etcd's JSON gateway (`/v3/kv/...`) with curl inside the namespace.

use std::process::Stdio;
use std::time::{Duration, Instant};

use super::{Child, Netns};

/// A running etcd.
pub struct Etcd {
    ns: String,
    ip: String,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Etcd {
    /// Starts etcd in `ns` listening for clients on `ip`:2379 and waits until it is healthy.
    pub fn start_in(ns: &Netns, ip: &str) -> Etcd {
        let mut e = Etcd {
            ns: ns.name.clone(),
            ip: ip.to_string(),
            dir: tempfile::tempdir().expect("tmp"),
            child: None,
        };
        e.restart();
        e
    }

    /// The client endpoint, `http://IP:2379`.
    pub fn endpoint(&self) -> String {
        format!("http://{}:2379", self.ip)
    }

    /// Starts it again (after [`Self::stop`]) on the same data.
    pub fn restart(&mut self) {
        let ep = self.endpoint();
        let child = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns,
                "etcd",
                "--name",
                "n0",
                "--data-dir",
            ])
            .arg(self.dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &ep,
                "--advertise-client-urls",
                &ep,
                "--listen-peer-urls",
                "http://127.0.0.1:2380",
                "--initial-advertise-peer-urls",
                "http://127.0.0.1:2380",
                "--initial-cluster",
                "n0=http://127.0.0.1:2380",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.path().join("log")).expect("log"))
            .spawn()
            .expect("etcd (Debian package etcd-server)");
        self.child = Some(Child(child));
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.curl("/health", "").contains("\"true\"") {
            assert!(
                Instant::now() < deadline,
                "etcd did not start: {}",
                std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills it (the data stays for [`Self::restart`]).
    pub fn stop(&mut self) {
        self.child.take();
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
