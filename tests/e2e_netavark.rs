//! The netavark plugin (netavark's plugin-API.md): `usernet info|create|setup NETNS|teardown
//! NETNS` with the JSON netavark sends, on the same code as the CNI plugin. Driven directly as
//! netavark drives it, and through a real netavark binary when one with plugin support is found
//! (`USERNET_NETAVARK=/path`, or `netavark` on PATH; Debian 12's 1.4 has none). Needs root.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use common::daemon::BIN;
use common::{Httpd, Netns, free_port, http_get, require_root, stop_pidfile};
use serde_json::{Value, json};

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        Env {
            dir: tempfile::Builder::new()
                .prefix("un-nv")
                .tempdir()
                .expect("tmp"),
        }
    }

    fn network(&self) -> Value {
        json!({
            "name": "nvnet",
            "id": "2f259bab93aaaaa2542ba43ef33eb990d0999ee1b9924b557b7be53c0b7a1bb9",
            "driver": "usernet",
            "network_interface": "",
            "subnets": [{"subnet": "10.92.0.0/24", "gateway": "10.92.0.1", "lease_range": null}],
            "ipv6_enabled": false,
            "internal": false,
            "dns_enabled": false,
            "ipam_options": {"driver": "host-local"},
            "options": {
                "socket": self.dir.path().join("s.sock"),
                "state_dir": self.dir.path().join("state"),
                "dns_upstreams": "127.0.0.1:9",
            },
            "network_dns_servers": null,
        })
    }

    fn plugin(&self, args: &[&str], stdin: &Value) -> (bool, Value) {
        let mut child = Command::new("timeout")
            .arg("30")
            .arg(BIN)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("plugin");
        if let Some(mut i) = child.stdin.take() {
            let _ = i.write_all(stdin.to_string().as_bytes());
        }
        let out = child.wait_with_output().expect("output");
        (
            out.status.success(),
            serde_json::from_slice(&out.stdout).unwrap_or(Value::Null),
        )
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        stop_pidfile(&self.dir.path().join("state/daemon.pid"));
    }
}

#[test]
fn netavark_plugin_protocol() {
    if !require_root("netavark_plugin_protocol") {
        return;
    }
    let e = Env::new();
    let (ok, info) = e.plugin(&["info"], &Value::Null);
    assert!(ok && info["api_version"] == "1.0.0", "{info}");
    // create fills the gateway in and keeps name, id and driver.
    let mut net = e.network();
    net["subnets"][0]["gateway"] = Value::Null;
    let (ok, created) = e.plugin(&["create"], &net);
    assert!(ok, "{created}");
    assert_eq!(created["subnets"][0]["gateway"], "10.92.0.1");
    assert_eq!(created["id"], net["id"]);
    let mut bad = e.network();
    bad["options"]["mtu"] = json!("huge");
    let (ok, err) = e.plugin(&["create"], &bad);
    assert!(
        !ok && err["error"].as_str().is_some_and(|m| m.contains("mtu")),
        "{err}"
    );

    let ns = Netns::new("nv");
    let hp = free_port();
    let exec = json!({
        "container_id": "752947ff91f961eb3cb47ffe9315016979f3ffbec09e4d96a4fae3fb03391697",
        "container_name": "testctr",
        "port_mappings": [{"container_port": 80, "host_ip": "127.0.0.1", "host_port": hp, "protocol": "tcp", "range": 1}],
        "network": e.network(),
        "network_options": {
            "aliases": ["752947ff91f9"],
            "interface_name": "eth0",
            "static_ips": ["10.92.0.50"],
            "static_mac": "02:bb:cc:dd:aa:00",
        },
    });
    let path = ns.path();
    let p = path.to_str().expect("utf-8");
    let (ok, status) = e.plugin(&["setup", p], &exec);
    assert!(ok, "setup: {status}");
    let eth0 = &status["interfaces"]["eth0"];
    assert_eq!(eth0["mac_address"], "02:bb:cc:dd:aa:00", "{status}");
    assert_eq!(eth0["subnets"][0]["ipnet"], "10.92.0.50/24");
    assert_eq!(eth0["subnets"][0]["gateway"], "10.92.0.1");
    assert_eq!(status["dns_server_ips"][0], "10.92.0.1");
    assert!(ns.exec_ok(&["ip", "-o", "addr"]).contains("10.92.0.50/24"));
    // The published port reaches a server that only listens.
    let httpd = Httpd::start(&ns, "i", "netavark ok\n");
    let body = http_get(hp, "/i", 50);
    httpd.stop();
    assert_eq!(body, "netavark ok\n");
    // teardown removes the interface; a second one is fine.
    let (ok, v) = e.plugin(&["teardown", p], &exec);
    assert!(ok, "teardown: {v}");
    assert!(!ns.exec(&["ip", "link", "show", "eth0"]).status.success());
    let (ok, v) = e.plugin(&["teardown", p], &exec);
    assert!(ok, "second teardown: {v}");
}

/// A netavark with plugin support (1.6+), if this machine has one.
fn netavark() -> Option<PathBuf> {
    let cands = std::env::var_os("USERNET_NETAVARK")
        .map(PathBuf::from)
        .into_iter()
        .chain(["/usr/local/bin/netavark", "/usr/libexec/podman/netavark"].map(PathBuf::from));
    cands.into_iter().find(|p| {
        Command::new(p)
            .arg("--help")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("plugin-directory"))
    })
}

#[test]
fn through_real_netavark() {
    if !require_root("through_real_netavark") {
        return;
    }
    let Some(nv) = netavark() else {
        println!(
            "note: through_real_netavark: no netavark with plugin support here (Debian 12 ships 1.4); set USERNET_NETAVARK"
        );
        return;
    };
    let e = Env::new();
    let plugins = e.dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).expect("mkdir");
    std::os::unix::fs::symlink(BIN, plugins.join("usernet")).expect("symlink");
    let ns = Netns::new("nvr");
    let opts = json!({
        "container_id": "aaaabbbbccccddddeeeeffff0000111122223333444455556666777788889999",
        "container_name": "viareal",
        "networks": {"nvnet": {"interface_name": "eth0", "static_ips": ["10.92.0.60"], "aliases": []}},
        "network_info": {"nvnet": e.network()},
        "port_mappings": null,
    });
    let run = |cmd: &str| {
        let mut child = Command::new("timeout")
            .arg("60")
            .arg(&nv)
            .arg("--config")
            .arg(e.dir.path())
            .arg("--plugin-directory")
            .arg(&plugins)
            .arg(cmd)
            .arg(ns.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("netavark");
        if let Some(mut i) = child.stdin.take() {
            let _ = i.write_all(opts.to_string().as_bytes());
        }
        child.wait_with_output().expect("netavark output")
    };
    let out = run("setup");
    assert!(
        out.status.success(),
        "netavark setup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert!(v.to_string().contains("10.92.0.60/24"), "{v}");
    assert!(ns.exec_ok(&["ip", "-o", "addr"]).contains("10.92.0.60/24"));
    assert!(
        ns.exec(&["ping", "-c", "1", "-W", "3", "10.92.0.1"])
            .status
            .success()
    );
    let out = run("teardown");
    assert!(
        out.status.success(),
        "netavark teardown: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!ns.exec(&["ip", "link", "show", "eth0"]).status.success());
}
