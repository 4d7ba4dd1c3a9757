//! The CNI plugin, driven as a runtime drives it: the `usernet` binary run with the spec's
//! environment (`CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`, `CNI_ARGS`,
//! `CNI_PATH`) and the network config on stdin. ADD starts the daemon, configures the
//! namespace and answers a spec-valid result; names, forwards, CHECK, DEL (repeated, namespace
//! gone), a daemon restart between ADD and DEL, errors with their codes, and IPAM delegated to
//! the reference host-local plugin. Needs root.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::daemon::{BIN, ctl_output};
use common::{Httpd, Netns, free_port, http_get, require_root, stop_pidfile};
use serde_json::{Value, json};

/// A plugin environment: its socket and state in a private directory; kills the daemon the
/// plugin started (by the pid it recorded) on drop.
struct Plugin {
    dir: tempfile::TempDir,
}

impl Plugin {
    fn new() -> Plugin {
        Plugin {
            dir: tempfile::Builder::new()
                .prefix("un-cni")
                .tempdir()
                .expect("tmp"),
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("cni.sock")
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn conf(&self, extra: Value) -> Value {
        let mut c = json!({
            "cniVersion": "1.0.0",
            "name": "cninet",
            "type": "usernet",
            "subnet": "10.83.0.0/24",
            "dns_upstreams": ["127.0.0.1:9"],
            "socket": self.socket(),
            "state_dir": self.state(),
        });
        if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                c.insert(k.clone(), v.clone());
            }
        }
        c
    }

    /// Runs the plugin; returns (exit success, stdout as JSON or Null).
    fn run(&self, cmd: &str, env: &[(&str, &str)], stdin: &[u8]) -> (bool, Value) {
        let mut c = Command::new("timeout");
        c.arg("30")
            .arg(BIN)
            .env("CNI_COMMAND", cmd)
            .env("CNI_PATH", "/usr/lib/cni:/opt/cni/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            c.env(k, v);
        }
        let mut child = c.spawn().expect("run plugin");
        if let Some(mut i) = child.stdin.take() {
            let _ = i.write_all(stdin);
        }
        let out = child.wait_with_output().expect("plugin output");
        let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        (out.status.success(), v)
    }

    fn add(&self, ns: &Netns, cid: &str, name: &str, conf: &Value) -> (bool, Value) {
        let path = ns.path();
        let args = format!("IgnoreUnknown=1;K8S_POD_NAME={name}");
        self.run(
            "ADD",
            &[
                ("CNI_CONTAINERID", cid),
                ("CNI_NETNS", path.to_str().expect("utf-8")),
                ("CNI_IFNAME", "eth0"),
                ("CNI_ARGS", &args),
            ],
            conf.to_string().as_bytes(),
        )
    }

    fn del(&self, netns: &Path, cid: &str, conf: &Value) -> (bool, Value) {
        self.run(
            "DEL",
            &[
                ("CNI_CONTAINERID", cid),
                ("CNI_NETNS", netns.to_str().expect("utf-8")),
                ("CNI_IFNAME", "eth0"),
            ],
            conf.to_string().as_bytes(),
        )
    }

    fn ctl(&self, args: &[&str]) -> Value {
        serde_json::from_slice(&ctl_output(&self.socket(), args).stdout).unwrap_or(Value::Null)
    }

    fn daemon_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.state().join("daemon.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    fn kill_daemon(&self) {
        stop_pidfile(&self.state().join("daemon.pid"));
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        self.kill_daemon();
    }
}

#[test]
fn version_and_errors_without_a_daemon() {
    let p = Plugin::new();
    // What Podman sends first: dummy environment, only cniVersion on stdin.
    let (ok, v) = p.run(
        "VERSION",
        &[
            ("CNI_CONTAINERID", "dummy"),
            ("CNI_NETNS", "dummy"),
            ("CNI_IFNAME", "dummy"),
        ],
        br#"{"cniVersion":"1.0.0"}"#,
    );
    assert!(ok, "{v}");
    assert_eq!(v["cniVersion"], "1.0.0");
    assert!(
        v["supportedVersions"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == "1.0.0") && a.iter().any(|x| x == "0.4.0")),
        "{v}"
    );
    // Malformed config: code 6; unsupported version: 1; missing environment: 4.
    let (ok, v) = p.run("ADD", &[], b"{not json");
    assert!(!ok && v["code"] == 6, "{v}");
    let mut c = p.conf(json!({}));
    c["cniVersion"] = json!("9.9.9");
    let (ok, v) = p.run("ADD", &[], c.to_string().as_bytes());
    assert!(!ok && v["code"] == 1, "{v}");
    let (ok, v) = p.run("ADD", &[], p.conf(json!({})).to_string().as_bytes());
    assert!(!ok && v["code"] == 4, "{v}");
    assert!(v["msg"].as_str().is_some_and(|m| m.contains("CNI_")), "{v}");
    // A namespace that does not exist: 3, and no daemon was started for it.
    let (ok, v) = p.run(
        "ADD",
        &[
            ("CNI_CONTAINERID", "c0"),
            ("CNI_NETNS", "/run/netns/usernet-no-such-ns"),
            ("CNI_IFNAME", "eth0"),
        ],
        p.conf(json!({})).to_string().as_bytes(),
    );
    assert!(!ok && v["code"] == 3, "{v}");
    assert!(p.daemon_pid().is_none());
    let (ok, v) = p.run("FROB", &[], p.conf(json!({})).to_string().as_bytes());
    assert!(!ok && v["code"] == 4, "{v}");
}

#[test]
fn add_check_del_restart_and_names() {
    if !require_root("add_check_del_restart_and_names") {
        return;
    }
    let p = Plugin::new();
    let a = Netns::new("ca");
    let b = Netns::new("cb");
    let hp = free_port();
    let conf = p.conf(json!({
        "runtimeConfig": {
            "portMappings": [{"hostPort": hp, "containerPort": 80, "protocol": "tcp", "hostIP": "127.0.0.1"}],
            "aliases": {"cninet": ["www"]},
        },
    }));
    let (ok, r) = p.add(&a, "aaaaaaaaaaaaaaaa1", "web", &conf);
    assert!(ok, "ADD: {r}");
    // The result as the spec (and Podman) wants it.
    assert_eq!(r["cniVersion"], "1.0.0");
    let iface = &r["interfaces"][0];
    assert_eq!(iface["name"], "eth0");
    assert!(iface["mac"].as_str().is_some_and(|m| m.len() == 17), "{r}");
    assert_eq!(iface["sandbox"], a.path().to_str().expect("utf-8"));
    let ip0 = &r["ips"][0];
    assert_eq!(ip0["interface"], 0);
    assert_eq!(ip0["gateway"], "10.83.0.1");
    let addr = ip0["address"].as_str().expect("address").to_string();
    assert!(addr.starts_with("10.83.0.") && addr.ends_with("/24"), "{r}");
    assert_eq!(r["routes"][0]["dst"], "0.0.0.0/0");
    assert_eq!(r["dns"]["nameservers"][0], "10.83.0.1");
    // The namespace is configured, lo up.
    let shown = a.exec_ok(&["ip", "-o", "-4", "addr", "show", "dev", "eth0"]);
    assert!(shown.contains(&addr), "{shown}");
    assert!(
        a.exec_ok(&["ip", "-o", "link", "show", "lo"])
            .contains("UP")
    );
    let ip_a = addr.split('/').next().expect("ip").to_string();
    // Named (port name and alias), at once.
    let dns = p.ctl(&["dns", "ls"]).to_string();
    assert!(
        dns.contains("web") && dns.contains("www") && dns.contains(&ip_a),
        "{dns}"
    );
    // The port mapping: a server that only listens is reachable from the host.
    let httpd = Httpd::start(&a, "i", "cni says hi\n");
    let fetch = |tries| http_get(hp, "/i", tries);
    assert_eq!(fetch(50), "cni says hi\n");
    // CHECK with the ADD result.
    let mut chk = conf.clone();
    chk["prevResult"] = r.clone();
    let pa = a.path();
    let env_a = [
        ("CNI_CONTAINERID", "aaaaaaaaaaaaaaaa1"),
        ("CNI_NETNS", pa.to_str().expect("utf-8")),
        ("CNI_IFNAME", "eth0"),
    ];
    let (ok, v) = p.run("CHECK", &env_a, chk.to_string().as_bytes());
    assert!(ok, "CHECK: {v}");
    // ADD again for the same attachment: the same answer.
    let (ok, again) = p.add(&a, "aaaaaaaaaaaaaaaa1", "web", &conf);
    assert!(ok && again == r, "{again}");

    // The daemon dies; the next ADD starts a new one that brings the first container back
    // (same MAC and address, forward, name).
    p.kill_daemon();
    assert!(
        !a.exec(&["ip", "link", "show", "eth0"]).status.success(),
        "the TAP went with the daemon"
    );
    let conf_b = p.conf(json!({}));
    let (ok, rb) = p.add(&b, "bbbbbbbbbbbbbbbb2", "db", &conf_b);
    assert!(ok, "ADD after restart: {rb}");
    let shown = a.exec_ok(&["ip", "-o", "link", "show", "eth0"]);
    assert!(
        shown.contains(iface["mac"].as_str().expect("mac")),
        "same MAC after restart: {shown}"
    );
    assert!(a.exec_ok(&["ip", "-o", "-4", "addr"]).contains(&addr));
    assert!(
        b.exec(&["ping", "-c", "1", "-W", "3", &ip_a])
            .status
            .success(),
        "db -> web after a daemon restart"
    );
    let body = fetch(30);
    assert_eq!(body, "cni says hi\n", "forward replayed");
    httpd.stop();

    // DEL: the port, name, forward and reservation go; DEL again is fine.
    let (ok, v) = p.del(&a.path(), "aaaaaaaaaaaaaaaa1", &conf);
    assert!(ok, "DEL: {v}");
    let ports = p.ctl(&["ports"]).to_string();
    assert!(!ports.contains("\"web\""), "{ports}");
    assert!(!p.ctl(&["leases"]).to_string().contains(&ip_a));
    assert!(fetch(1).is_empty(), "forward gone");
    let (ok, v) = p.del(&a.path(), "aaaaaaaaaaaaaaaa1", &conf);
    assert!(ok, "repeated DEL: {v}");
    let (ok, v) = p.run("CHECK", &env_a, chk.to_string().as_bytes());
    assert!(!ok && v["code"] == 3, "CHECK after DEL: {v}");
    // DEL when the namespace is already gone.
    let bpath = b.path();
    b.delete();
    let (ok, v) = p.del(&bpath, "bbbbbbbbbbbbbbbb2", &conf_b);
    assert!(ok, "DEL without namespace: {v}");
    assert!(!p.ctl(&["ports"]).to_string().contains("\"db\""));
}

#[test]
fn ipam_delegated_to_host_local() {
    if !require_root("ipam_delegated_to_host_local") {
        return;
    }
    if !Path::new("/usr/lib/cni/host-local").exists() {
        assert!(
            std::env::var_os("USERNET_REQUIRE_PRIV").is_none(),
            "host-local missing (Debian package containernetworking-plugins)"
        );
        println!("SKIP ipam_delegated_to_host_local: /usr/lib/cni/host-local missing");
        return;
    }
    let p = Plugin::new();
    let ns = Netns::new("ch");
    let data = p.dir.path().join("ipam");
    let conf = p.conf(json!({
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": "10.83.0.0/24", "rangeStart": "10.83.0.200", "rangeEnd": "10.83.0.210", "gateway": "10.83.0.1"}]],
            "dataDir": data,
        },
    }));
    let (ok, r) = p.add(&ns, "cccccccccccccccc3", "hl", &conf);
    assert!(ok, "ADD: {r}");
    assert_eq!(r["ips"][0]["address"], "10.83.0.200/24", "{r}");
    assert!(
        ns.exec_ok(&["ip", "-o", "-4", "addr"])
            .contains("10.83.0.200/24")
    );
    assert!(
        ns.exec(&["ping", "-c", "1", "-W", "3", "10.83.0.1"])
            .status
            .success(),
        "gateway reachable"
    );
    assert!(
        data.join("cninet").join("10.83.0.200").exists(),
        "host-local recorded it"
    );
    let (ok, v) = p.del(&ns.path(), "cccccccccccccccc3", &conf);
    assert!(ok, "DEL: {v}");
    assert!(
        !data.join("cninet").join("10.83.0.200").exists(),
        "host-local released it"
    );
}
