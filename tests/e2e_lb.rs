//! End-to-end load-balanced port forwards: three guests in namespaces serve HTTP, a host
//! client on loopback connects through one forward with three endpoints. Round robin spreads
//! 300 connections evenly, least_conn too; a stopped server leaves the rotation within two
//! health intervals and comes back when restarted; a spliced forward balances as well; a UDP
//! forward spreads its clients evenly and keeps each on its endpoint; bad input is refused
//! naming the field. Servers live only in namespaces these tests create. Need root.

mod common;

use std::collections::HashMap;
use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::{Httpd, Netns, free_port, http_get, require_root};
use usernet::link::netns::run_in_netns;

const INTERVAL_MS: u64 = 300;

fn config(guests: &[(String, &Netns)], forwards: &str) -> String {
    let mut s = "[[network]]\nname = \"n\"\nsubnet = \"10.77.0.0/24\"\nipv6 = \"off\"\ndns_upstreams = [\"127.0.0.1:9\"]\n".to_string();
    for (name, ns) in guests {
        s += &format!(
            "[[port]]\nnetwork = \"n\"\nname = \"{name}\"\nnetns = \"{}\"\n",
            ns.path().display()
        );
    }
    s + forwards
}

/// `n` fetches of `/id` through `port`: how many each body (endpoint) answered.
fn spread(port: u16, n: usize) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for _ in 0..n {
        *m.entry(http_get(port, "/id", 1).trim().to_string())
            .or_insert(0) += 1;
    }
    m
}

fn even(m: &HashMap<String, usize>, n: usize, names: &[&str]) {
    let want = n / names.len();
    for w in names {
        let got = m.get(*w).copied().unwrap_or(0);
        assert!(
            got.abs_diff(want) * 100 <= want * 15,
            "{w}: {got} of {n}, want {want} ±15 %: {m:?}"
        );
    }
}

/// Waits (at most 5 s) until the first forward's endpoints are in `want` states.
fn wait_states(d: &Daemon, want: &[&str]) {
    for _ in 0..50 {
        let ls = d.ctl(&["forward", "ls"]);
        let got: Vec<String> = ls[0]["endpoints"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| e["state"].as_str().unwrap_or("").to_string())
                    .collect()
            })
            .unwrap_or_default();
        if got == want {
            return;
        }
        wait_ms(100);
    }
    panic!(
        "endpoints never reached {want:?}: {}",
        d.ctl(&["forward", "ls"])
    );
}

/// A UDP server on port 7 inside `ns` answering every datagram with `id`, until dropped.
struct UdpId(Arc<AtomicBool>);

impl UdpId {
    fn start(ns: &Netns, id: &str) -> UdpId {
        let sock = run_in_netns(&ns.path(), || {
            let s = UdpSocket::bind("0.0.0.0:7")?;
            s.set_read_timeout(Some(Duration::from_millis(100)))?;
            Ok(s)
        })
        .expect("udp server in the namespace");
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, id) = (stop.clone(), id.to_string());
        std::thread::spawn(move || {
            let end = Instant::now() + Duration::from_secs(120);
            let mut b = [0u8; 64];
            while !flag.load(Ordering::Relaxed) && Instant::now() < end {
                if let Ok((_, from)) = sock.recv_from(&mut b) {
                    let _ = sock.send_to(id.as_bytes(), from);
                }
            }
        });
        UdpId(stop)
    }
}

impl Drop for UdpId {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// One datagram from `client` to the forward on `port`: the endpoint's answer (2 tries).
fn udp_ask(client: &UdpSocket, port: u16) -> String {
    let mut b = [0u8; 64];
    for _ in 0..2 {
        client.send_to(b"id?", ("127.0.0.1", port)).expect("send");
        if let Ok(n) = client.recv(&mut b) {
            return String::from_utf8_lossy(&b[..n]).into_owned();
        }
    }
    String::new()
}

fn wait_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

#[test]
fn forwards_balance_fail_over_and_refuse_bad_input() {
    if !require_root("forwards_balance_fail_over_and_refuse_bad_input") {
        return;
    }
    let ns: Vec<Netns> = (0..3).map(|_| Netns::new("lb")).collect();
    let names: Vec<String> = (0..3).map(|i| format!("w{i}")).collect();
    let guests: Vec<(String, &Netns)> = names.iter().cloned().zip(ns.iter()).collect();
    let (rr, lc, sp, ud) = (free_port(), free_port(), free_port(), free_port());
    let forwards = format!(
        "[[forward]]\nnetwork = \"n\"\npublish = \"127.0.0.1:{rr}:80/tcp\"\n\
         to = [\"10.77.0.10\", \"10.77.0.11\", \"10.77.0.12\"]\n\
         health = {{ interval_ms = {INTERVAL_MS}, timeout_ms = 200, fall = 1, rise = 1 }}\n\
         [[forward]]\nnetwork = \"n\"\npublish = \"127.0.0.1:{lc}:80/tcp\"\n\
         to = [\"10.77.0.10\", \"10.77.0.11\", \"10.77.0.12\"]\nbalance = \"least_conn\"\n\
         [[forward]]\nnetwork = \"n\"\npublish = \"127.0.0.1:{sp}:80/tcp\"\n\
         to = [\"w0\", \"w1\", \"w2\"]\nsplice = true\n\
         [[forward]]\nnetwork = \"n\"\npublish = \"127.0.0.1:{ud}:7/udp\"\n\
         to = [\"10.77.0.10\", \"10.77.0.11\", \"10.77.0.12\"]\n"
    );
    let d = Daemon::start(&config(&guests, &forwards));
    let mut httpd = Vec::new();
    let mut udp = Vec::new();
    for (i, n) in ns.iter().enumerate() {
        n.ip(&["link", "set", "lo", "up"]);
        n.ip(&["addr", "add", &format!("10.77.0.1{i}/24"), "dev", "eth0"]);
        n.ip(&["route", "add", "default", "via", "10.77.0.1"]);
        n.exec(&["ping", "-c", "1", "-W", "1", "10.77.0.1"]);
        httpd.push(Some(Httpd::start(n, "id", &format!("w{i}\n"))));
        udp.push(UdpId::start(n, &format!("w{i}")));
    }
    assert!(!http_get(rr, "/id", 30).is_empty(), "{}", d.log());
    let all = ["w0", "w1", "w2"];

    // Round robin: 300 connections, each endpoint within ±15 % of 100.
    // The first checks may have run before the servers listened: wait until all are up.
    wait_states(&d, &["up", "up", "up"]);
    even(&spread(rr, 300), 300, &all);
    // least_conn: one connection at a time, so ties, so an even spread too.
    even(&spread(lc, 150), 150, &all);
    // Spliced: the relay connects inside each endpoint's namespace in turn.
    even(&spread(sp, 90), 90, &all);

    // UDP, round robin per client: 30 clients (source ports) spread 10 each, and a client's
    // later datagrams stay with its endpoint.
    let clients: Vec<UdpSocket> = (0..30)
        .map(|_| {
            let c = UdpSocket::bind("127.0.0.1:0").expect("client");
            c.set_read_timeout(Some(Duration::from_secs(1)))
                .expect("timeout");
            c
        })
        .collect();
    let first_answers: Vec<String> = clients.iter().map(|c| udp_ask(c, ud)).collect();
    let mut m = HashMap::new();
    for a in &first_answers {
        *m.entry(a.clone()).or_insert(0) += 1;
    }
    even(&m, 30, &all);
    for (c, first) in clients.iter().zip(&first_answers) {
        assert_eq!(&udp_ask(c, ud), first, "a UDP client moved: {m:?}");
    }
    drop(udp);

    let ls = d.ctl(&["forward", "ls"]);
    let first = &ls[0];
    assert_eq!(first["balance"], "round_robin", "{ls}");
    let eps = first["endpoints"].as_array().expect("endpoints");
    assert_eq!(eps.len(), 3, "{ls}");
    assert!(
        eps.iter()
            .all(|e| e["state"] == "up" && e["connections"].as_u64() >= Some(80)),
        "{ls}"
    );

    // w1's server stops: within two intervals it is down and nothing goes there.
    if let Some(h) = httpd[1].take() {
        h.stop();
    }
    wait_ms(2 * INTERVAL_MS);
    let m = spread(rr, 30);
    assert_eq!(m.get("w1"), None, "{m:?}");
    assert_eq!(
        m.values().sum::<usize>(),
        m.get("w0").unwrap_or(&0) + m.get("w2").unwrap_or(&0),
        "{m:?}"
    );
    let ls = d.ctl(&["forward", "ls"]);
    assert_eq!(ls[0]["endpoints"][1]["state"], "down", "{ls}");
    // Back when restarted.
    httpd[1] = Some(Httpd::start(&ns[1], "id", "w1\n"));
    wait_ms(3 * INTERVAL_MS);
    let m = spread(rr, 30);
    assert!(m.get("w1").copied().unwrap_or(0) >= 5, "{m:?}\n{}", d.log());
    let ls = d.ctl(&["forward", "ls"]);
    assert_eq!(ls[0]["endpoints"][1]["state"], "up", "{ls}");
    // The metrics show the endpoints.
    let metrics = d.ctl(&["metrics"]);
    let text = metrics.as_str().unwrap_or_default();
    assert!(
        text.contains("usernet_forward_endpoint_up{") && text.contains("endpoint=\"10.77.0.11\""),
        "{text}"
    );

    // Bad input names the field.
    let bad = |args: &[&str], field: &str| {
        let mut a = vec!["forward", "add", "--network", "n"];
        a.extend_from_slice(args);
        let out = d.ctl_raw(&a);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(field),
            "{args:?}: {err}"
        );
    };
    let p = format!("127.0.0.1:{}:80", free_port());
    bad(&[&p, "w0,w0"], "to[1]");
    bad(&[&p, "w0,"], "to[1]");
    bad(&[&p, "w0,w1", "--balance", "random"], "balance");
    bad(
        &[&p, "w0", "--health-interval-ms", "0"],
        "health.interval_ms",
    );
    // A good one at run time, then listed.
    d.ctl(&[
        "forward",
        "add",
        "--network",
        "n",
        &p,
        "w0,w2",
        "--balance",
        "source_hash",
    ]);
    let ls = d.ctl(&["forward", "ls"]);
    assert!(ls.to_string().contains("source_hash"), "{ls}");
}
