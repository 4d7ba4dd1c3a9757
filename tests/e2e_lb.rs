//! End-to-end load-balanced port forwards: three guests in namespaces serve HTTP, a host
//! client on loopback connects through one forward with three endpoints. Round robin spreads
//! 300 connections evenly, least_conn too; a stopped server leaves the rotation within two
//! health intervals and comes back when restarted; a spliced forward balances as well; bad
//! input is refused naming the field. Servers live only in namespaces these tests create.
//! Need root.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::daemon::Daemon;
use common::{Httpd, Netns, free_port, http_get, require_root};

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
    let (rr, lc, sp) = (free_port(), free_port(), free_port());
    let forwards = format!(
        "[[forward]]\nnetwork = \"n\"\npublish = \"127.0.0.1:{rr}:80/tcp\"\n\
         to = [\"10.77.0.10\", \"10.77.0.11\", \"10.77.0.12\"]\n\
         health = {{ interval_ms = {INTERVAL_MS}, timeout_ms = 200, fall = 1, rise = 1 }}\n\
         [[forward]]\nnetwork = \"n\"\npublish = \"127.0.0.1:{lc}:80/tcp\"\n\
         to = [\"10.77.0.10\", \"10.77.0.11\", \"10.77.0.12\"]\nbalance = \"least_conn\"\n\
         [[forward]]\nnetwork = \"n\"\npublish = \"127.0.0.1:{sp}:80/tcp\"\n\
         to = [\"w0\", \"w1\", \"w2\"]\nsplice = true\n"
    );
    let d = Daemon::start(&config(&guests, &forwards));
    let mut httpd = Vec::new();
    for (i, n) in ns.iter().enumerate() {
        n.ip(&["link", "set", "lo", "up"]);
        n.ip(&["addr", "add", &format!("10.77.0.1{i}/24"), "dev", "eth0"]);
        n.ip(&["route", "add", "default", "via", "10.77.0.1"]);
        n.exec(&["ping", "-c", "1", "-W", "1", "10.77.0.1"]);
        httpd.push(Some(Httpd::start(n, "id", &format!("w{i}\n"))));
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
