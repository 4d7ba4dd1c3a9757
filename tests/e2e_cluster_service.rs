//! Cluster services end to end (issue 15 part 5): three "hosts" (namespaces on a veth underlay,
//! `common::underlay`), each running `usernet up` with the cluster network `web` and the
//! service `8080:80/tcp -> [web1, web2, web3]`; each host's guest takes the DHCP name `webN`
//! and serves `/who` with busybox httpd. Clients run in the underlay's namespace (an outside
//! client of the hosts). Checks: connections to one node's published port spread over the
//! endpoints of all hosts; another node's port works too; a killed host's usernet and a
//! stopped server leave the rotation within two health intervals while long-running
//! connections to other endpoints survive; guests reach the service on its virtual IP and
//! name from inside the network. Needs root and the feature `cluster`.
#![cfg(feature = "cluster")]

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::etcd::Etcd;
use common::underlay::{Lab, Udhcpc, underlay_ip, wait_for};
use common::{Httpd, Netns, require_root};

const ETCD_IP: &str = "172.31.0.254";
/// The services' health interval (ms).
const INTERVAL_MS: u64 = 500;
/// What a loaded machine may add to a measured failover (curl runs, scheduling).
const SLACK_MS: u64 = 250;
/// The service's virtual IP and DNS name.
const VIP: &str = "10.70.0.250";
const VIP_NAME: &str = "websvc";

fn etcd(lab: &Lab) -> Etcd {
    lab.ul
        .ip(&["addr", "add", &format!("{ETCD_IP}/24"), "dev", "br0"]);
    Etcd::start_in(&lab.ul, ETCD_IP)
}

/// Host `i`'s config: node `h{i}`, network `web`, its guest, and the service.
fn config(e: &Etcd, i: usize, guest: &Netns) -> String {
    format!(
        "[cluster]\netcd = [\"{}\"]\nnode = \"h{i}\"\nvtep = \"{}\"\nttl_s = 3\n\n\
         [[network]]\nname = \"web\"\nscope = \"cluster\"\nvni = 70\nsubnet = \"10.70.0.0/24\"\n\
         ipv6 = \"off\"\ndns_upstreams = [\"127.0.0.1:9\"]\n\n\
         [[port]]\nnetwork = \"web\"\nname = \"g{i}\"\nnetns = \"{}\"\n\n\
         [[service]]\nnetwork = \"web\"\npublish = \"8080:80/tcp\"\nto = [\"web1\", \"web2\", \"web3\"]\n\
         health = {{ interval_ms = {INTERVAL_MS}, timeout_ms = 200, fall = 1, rise = 1 }}\n\
         vip = \"{VIP}\"\nname = \"{VIP_NAME}\"\n",
        e.endpoint(),
        underlay_ip(i),
        guest.path().display()
    )
}

/// One `GET /who` from the underlay to host `host`'s published port: the endpoint's name, or
/// `None` when the connection failed.
fn who(lab: &Lab, host: usize) -> Option<String> {
    let url = format!("http://{}:8080/who", underlay_ip(host));
    let out = lab.ul.exec(&["curl", "-s", "-m", "2", &url]);
    let body = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && body.starts_with("web")).then_some(body)
}

fn count(lab: &Lab, host: usize, n: usize) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for _ in 0..n {
        *m.entry(who(lab, host).unwrap_or_else(|| "failed".into()))
            .or_insert(0) += 1;
    }
    m
}

fn logs(d: &[Daemon]) -> String {
    d.iter()
        .map(|d| d.log())
        .collect::<Vec<_>>()
        .join("\n---\n")
}

/// busybox nc from `ns` to host `host`'s `port`, its stdin and stdout piped.
fn nc(ns: &Netns, host: usize, port: u16) -> std::process::Child {
    ns.cmd(&["busybox", "nc", &underlay_ip(host), &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("nc")
}

/// What `c` writes to its stdout until it closes it, or within `max`.
fn read_all(c: &mut std::process::Child, max: Duration) -> String {
    let mut out = c.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        let _ = tx.send(s);
    });
    rx.recv_timeout(max).unwrap_or_default()
}

/// A connection held open: `GET /who` sent without its last line, so the server waits.
struct Held(std::process::Child);

impl Held {
    fn open(lab: &Lab, host: usize) -> Held {
        let mut c = nc(&lab.ul, host, 8080);
        c.stdin
            .as_mut()
            .expect("stdin")
            .write_all(b"GET /who HTTP/1.0\r\n")
            .expect("write");
        Held(c)
    }

    /// Ends the request; the answer's body (empty if the connection had died).
    fn finish(mut self) -> String {
        if let Some(i) = self.0.stdin.as_mut() {
            let _ = i.write_all(b"\r\n");
        }
        let s = read_all(&mut self.0, Duration::from_secs(5));
        s.lines().last().unwrap_or("").trim().to_string()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends `payload` to host `host`'s mesh port from namespace `ns`; what came back.
fn mesh_raw(ns: &Netns, host: usize, payload: &str) -> String {
    let mut c = nc(ns, host, 7950);
    let _ = c
        .stdin
        .as_mut()
        .expect("stdin")
        .write_all(payload.as_bytes());
    let s = read_all(&mut c, Duration::from_secs(4));
    let _ = c.kill();
    let _ = c.wait();
    s
}

/// Asks host `host` every 50 ms for `for_`: the time after `t0` of the last answer that was
/// a failure or from `gone`, and the endpoints that answered after it.
fn failover(
    lab: &Lab,
    host: usize,
    gone: &str,
    t0: Instant,
    for_: Duration,
) -> (Duration, BTreeMap<String, usize>) {
    let mut last_bad = Duration::ZERO;
    let mut after = BTreeMap::new();
    while t0.elapsed() < for_ {
        match who(lab, host) {
            Some(w) if w != gone => *after.entry(w).or_insert(0) += 1,
            _ => {
                last_bad = t0.elapsed();
                after.clear();
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (last_bad, after)
}

/// `GET /who` from guest `g` to `VIP:port`: the endpoint's name, or `None`.
fn who_vip(g: &Netns, port: u16) -> Option<String> {
    let url = format!("http://{VIP}:{port}/who");
    let out = g.exec(&["curl", "-s", "-m", "2", &url]);
    let body = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && body.starts_with("web")).then_some(body)
}

/// The service from inside the network: its virtual IP (balanced over every host's endpoint,
/// from guests on two hosts), its other ports refused, ping and ARP answered by the
/// gateway, its name in DNS.
fn virtual_ip(lab: &Lab, d: &[Daemon]) {
    for (i, g) in lab.guests.iter().enumerate().take(2) {
        let mut m = BTreeMap::new();
        for _ in 0..9 {
            *m.entry(who_vip(g, 80).unwrap_or_else(|| "failed".into()))
                .or_insert(0) += 1;
        }
        for w in ["web1", "web2", "web3"] {
            assert_eq!(
                m.get(w),
                Some(&3),
                "guest {i} to {VIP}:80: {m:?}\n{}",
                logs(d)
            );
        }
    }
    let g = &lab.guests[0];
    let t = Instant::now();
    assert_eq!(who_vip(g, 81), None, "{VIP}:81 is no service port");
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{VIP}:81 was not refused at once: {:?}",
        t.elapsed()
    );
    let ping = g.exec(&["ping", "-c", "1", "-W", "2", VIP]);
    assert!(ping.status.success(), "ping {VIP}: {ping:?}");
    let mac = |ip: &str| {
        let out = g.exec_ok(&["ip", "neigh", "show", ip]);
        out.split_whitespace()
            .skip_while(|w| *w != "lladdr")
            .nth(1)
            .map(str::to_string)
    };
    assert!(mac(VIP).is_some(), "no ARP entry for {VIP}");
    assert_eq!(
        mac(VIP),
        mac("10.70.0.1"),
        "the VIP is at the gateway's MAC"
    );
    let dig = g.exec_ok(&[
        "dig",
        "+short",
        "+time=2",
        "+tries=1",
        "@10.70.0.1",
        &format!("{VIP_NAME}.usernet"),
    ]);
    assert_eq!(dig.trim(), VIP, "{VIP_NAME}.usernet");
    let c = d[0].ctl(&["cluster"]);
    assert_eq!(c["services"][0]["vip"], VIP, "{c}");
    assert_eq!(c["services"][0]["name"], VIP_NAME, "{c}");
}

#[test]
fn a_service_spreads_over_hosts_and_fails_over() {
    if !require_root("a_service_spreads_over_hosts_and_fails_over") {
        return;
    }
    let lab = Lab::new(3);
    let e = etcd(&lab);
    let d: Vec<Daemon> = (0..3)
        .map(|i| Daemon::start_in(&lab.hosts[i], &config(&e, i, &lab.guests[i])))
        .collect();
    let dhcp = Udhcpc::new();
    let mut httpd: Vec<Option<Httpd>> = Vec::new();
    for (i, g) in lab.guests.iter().enumerate() {
        let name = format!("web{}", i + 1);
        dhcp.run_with(g, &format!("l{i}"), &["-x", &format!("hostname:{name}")])
            .unwrap_or_else(|err| panic!("udhcpc {name}: {err}\n{}", logs(&d)));
        httpd.push(Some(Httpd::start(g, "who", &name)));
    }
    let all3 =
        |m: &BTreeMap<String, usize>| ["web1", "web2", "web3"].iter().all(|w| m.contains_key(*w));
    let t = Instant::now();
    let mut seen = BTreeMap::new();
    wait_for("host 0 to balance over all three endpoints", 20, || {
        seen = count(&lab, 0, 3);
        all3(&seen)
    });
    eprintln!(
        "the service reached every endpoint {:?} after the guests' leases",
        t.elapsed()
    );
    // 90 connections to host 0's port: round robin over the three hosts' endpoints.
    let m = count(&lab, 0, 90);
    assert_eq!(m.get("failed"), None, "{m:?}\n{}", logs(&d));
    for w in ["web1", "web2", "web3"] {
        let n = m.get(w).copied().unwrap_or(0);
        assert!((25..=35).contains(&n), "{w} got {n} of 90: {m:?}");
    }
    // `ctl cluster` lists the service with its endpoints on every node and host 0's counts.
    let c = d[0].ctl(&["cluster"]);
    let eps = c["services"][0]["endpoints"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let labels: Vec<&str> = eps.iter().filter_map(|e| e["to"].as_str()).collect();
    assert_eq!(labels, ["web1@h0", "web2@h1", "web3@h2"], "{c}");
    assert!(
        eps.iter()
            .all(|e| e["state"] == "up" && e["connections"].as_u64() >= Some(30)),
        "{c}"
    );
    // Another node's published port serves the same service.
    let m = count(&lab, 2, 9);
    assert!(all3(&m), "via host 2: {m:?}");
    virtual_ip(&lab, &d);
    // The mesh port: a live member (host 1's namespace, from its VTEP) reaches host 0's
    // endpoint; a stranger on the underlay, a bad first line or an endpoint of no declared
    // service get nothing.
    let get = "GET /who HTTP/1.0\r\n\r\n";
    let ok = mesh_raw(
        &lab.hosts[1],
        0,
        &format!("USERNET-MESH/1 CONNECT web web1 80\n{get}"),
    );
    assert!(ok.contains("web1"), "a member's CONNECT: {ok:?}");
    for (ns, line) in [
        (&lab.ul, "USERNET-MESH/1 CONNECT web web1 80\n"),
        (&lab.hosts[1], "USERNET-MESH/1 CONNECT web web9 80\n"),
        (&lab.hosts[1], "USERNET-MESH/1 CONNECT web web1 22\n"),
        (
            &lab.hosts[1],
            "USERNET-MESH/1 CONNECT web web1 80 and more\n",
        ),
        (&lab.hosts[1], "GET /who HTTP/1.0\r\n"),
    ] {
        let got = mesh_raw(ns, 0, &format!("{line}{get}"));
        assert!(!got.contains("web"), "{line:?} from {}: {got:?}", ns.name);
    }
    let up = mesh_raw(&lab.hosts[1], 0, "USERNET-MESH/1 CHECK\n");
    assert_eq!(
        up.trim(),
        "UP web/web1:80",
        "host 0's endpoints that are up"
    );
    // Three long-running connections through host 0, one per endpoint (round robin).
    let held: Vec<Held> = (0..3).map(|_| Held::open(&lab, 0)).collect();
    std::thread::sleep(Duration::from_millis(300));
    // Host 2's usernet dies: new connections go to web1 and web2.
    // SAFETY: kill(2) on the pid of a daemon this test started.
    unsafe { libc::kill(d[2].pid() as i32, libc::SIGKILL) };
    let t0 = Instant::now();
    let (took, after) = failover(&lab, 0, "web3", t0, Duration::from_millis(3000));
    eprintln!(
        "a killed host left the rotation: last failed or misrouted connection {took:?} after the kill; then {after:?}"
    );
    assert!(
        took <= Duration::from_millis(2 * INTERVAL_MS + SLACK_MS),
        "the dead host was used {took:?} after the kill\n{}",
        logs(&d)
    );
    assert!(
        after.contains_key("web1") && after.contains_key("web2"),
        "{after:?}"
    );
    // The long-running connections to web1 and web2 are untouched.
    let answers: Vec<String> = held.into_iter().map(Held::finish).collect();
    for w in ["web1", "web2"] {
        assert!(
            answers.iter().any(|a| a == w),
            "{w}'s held connection: {answers:?}"
        );
    }
    // web2's server stops: it leaves the rotation within two intervals.
    if let Some(h) = httpd[1].take() {
        h.stop();
    }
    let t0 = Instant::now();
    let (took, after) = failover(&lab, 0, "web2", t0, Duration::from_millis(3000));
    eprintln!(
        "a stopped endpoint on another host left the rotation: last failed connection {took:?} after the stop; then {after:?}"
    );
    assert!(
        took <= Duration::from_millis(2 * INTERVAL_MS + SLACK_MS),
        "web2 was used {took:?} after its server stopped\n{}",
        logs(&d)
    );
    assert_eq!(after.keys().collect::<Vec<_>>(), ["web1"], "{after:?}");
    // It comes back when its server does.
    httpd[1] = Some(Httpd::start(&lab.guests[1], "who", "web2"));
    wait_for("web2 to come back", 5, || {
        count(&lab, 0, 2).contains_key("web2")
    });
    // Host 1 drops off the underlay (no reset, nothing answers): its endpoint leaves too.
    lab.hosts[1].ip(&["link", "set", "ul0", "down"]);
    let t0 = Instant::now();
    let (took, after) = failover(&lab, 0, "web2", t0, Duration::from_millis(3000));
    eprintln!(
        "a host cut off the underlay left the rotation: last failed or misrouted connection {took:?} after the cut; then {after:?}"
    );
    assert!(
        took <= Duration::from_millis(2 * INTERVAL_MS + SLACK_MS),
        "web2 was used {took:?} after its host was cut off\n{}",
        logs(&d)
    );
    assert_eq!(after.keys().collect::<Vec<_>>(), ["web1"], "{after:?}");
    // A guest taking the vip as its own address gets nothing through from it: its frames
    // (ARP and IP) from the vip are dropped as spoofed, the gateway's port owns it.
    let g = &lab.guests[0];
    let spoofed = || {
        let s = d[0].ctl(&["stats"]);
        let r = s
            .as_array()
            .and_then(|v| v.iter().find(|r| r["port"] == "g0").cloned())
            .unwrap_or_default();
        ["spoofed_ip", "spoofed_arp"]
            .iter()
            .map(|k| r["stats"]["drops"][k].as_u64().unwrap_or(0))
            .sum::<u64>()
    };
    let before = spoofed();
    g.ip(&["addr", "add", &format!("{VIP}/32"), "dev", "eth0"]);
    let p = g.exec(&["ping", "-c", "2", "-W", "1", "-I", VIP, "10.70.0.1"]);
    assert!(
        !p.status.success(),
        "a ping from the vip was answered: {p:?}"
    );
    assert!(
        spoofed() > before,
        "drops from the vip not counted as spoofed"
    );
}
