//! End-to-end policy rules: guests in namespaces, deny rules between them (a TCP port, a
//! CIDR, ICMP echo), through NAT to loopback servers and on a port forward; rule counters
//! match the attempts; rules added and removed under a bulk transfer drop nothing else; bad
//! input names the field. Servers live on loopback or in namespaces these tests create. Need
//! root.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use common::daemon::{Daemon, ctl_output};
use common::{Netns, require_root};
use serde_json::Value;
use usernet::link::netns::run_in_netns;

/// Connect timeout of a denied attempt: below the 1 s initial RTO, so each attempt is
/// exactly one SYN.
const DENIED_WAIT: Duration = Duration::from_millis(400);

fn config(subnet: &str, policy: &str, ports: &[(&str, &Netns, &str)]) -> String {
    let mut s = format!(
        "[[network]]\nname = \"n\"\nsubnet = \"{subnet}\"\nipv6 = \"off\"\ndns_upstreams = [\"127.0.0.1:9\"]\n{policy}\n"
    );
    for (name, ns, port_policy) in ports {
        s += &format!(
            "[[port]]\nnetwork = \"n\"\nname = \"{name}\"\nnetns = \"{}\"\n{port_policy}\n",
            ns.path().display()
        );
    }
    s
}

/// Static address and default route via the gateway.
fn guest(ns: &Netns, addr: &str, gw: &str) {
    ns.ip(&["link", "set", "lo", "up"]);
    ns.ip(&["addr", "add", addr, "dev", "eth0"]);
    ns.ip(&["route", "add", "default", "via", gw]);
}

/// TCP servers in `ns` on each of `ports`, answering every connection with `hello`.
fn serve(ns: &Netns, ports: &[u16]) {
    for &p in ports {
        let l =
            run_in_netns(&ns.path(), move || TcpListener::bind(("0.0.0.0", p))).expect("listen");
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(mut c) = c else { continue };
                let _ = c.write_all(b"hello");
            }
        });
    }
}

/// One TCP attempt from `ns` to `to`: what the server said, or `None` if the connect failed.
fn attempt(ns: &Netns, to: &str, wait: Duration) -> Option<String> {
    let to: SocketAddr = to.parse().expect("addr");
    run_in_netns(&ns.path(), move || {
        let mut c = TcpStream::connect_timeout(&to, wait)?;
        c.set_read_timeout(Some(Duration::from_secs(3)))?;
        let mut s = String::new();
        c.read_to_string(&mut s)?;
        Ok(s)
    })
    .ok()
}

/// The packets counter of rule `rule` (`"default"` or an index) of `port`'s policy (`""`: the
/// network's) in `policy ls --json`.
fn hits(d: &Daemon, port: &str, rule: &str) -> u64 {
    let v = d.ctl(&["policy", "ls"]);
    for p in v.as_array().into_iter().flatten() {
        if p["port"].as_str().unwrap_or_default() != port {
            continue;
        }
        for r in p["rules"].as_array().into_iter().flatten() {
            let idx = match &r["index"] {
                Value::Null => "default".to_string(),
                i => i.to_string(),
            };
            if idx == rule {
                return r["packets"].as_u64().unwrap_or(0);
            }
        }
    }
    panic!("no rule {rule} of {port:?} in {v}");
}

fn free_tcp() -> (TcpListener, u16) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let p = l.local_addr().expect("addr").port();
    (l, p)
}

/// Rules between guests (a TCP port, ICMP echo by source, a CIDR on a port), through NAT (a
/// loopback port) and on a forward deny exactly the matching traffic, and count each attempt.
#[test]
fn deny_rules_between_guests_nat_and_forward() {
    if !require_root("deny_rules_between_guests_nat_and_forward") {
        return;
    }
    let (a, b, c) = (Netns::new("pa"), Netns::new("pb"), Netns::new("pc"));
    // Loopback servers: one NAT port denied, one allowed.
    let (deny_l, deny_p) = free_tcp();
    let (ok_l, ok_p) = free_tcp();
    for l in [deny_l, ok_l] {
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(mut c) = c else { continue };
                let _ = c.write_all(b"host");
            }
        });
    }
    // Forwards: host port f_deny -> a:8081 (denied on ingress), f_ok -> a:8080.
    let (f_deny, f_ok) = {
        let (l1, p1) = free_tcp();
        let (l2, p2) = free_tcp();
        drop((l1, l2));
        (p1, p2)
    };
    let policy = format!(
        "policy = {{ default = \"allow\", rules = [\n\
         {{ action = \"deny\", proto = \"tcp\", dst = \"10.81.0.6/32\", dst_port = \"22\" }},\n\
         {{ action = \"deny\", proto = \"icmp\", icmp_type = 8, src = \"10.81.0.7/32\" }},\n\
         {{ action = \"deny\", direction = \"egress\", proto = \"tcp\", dst_port = {deny_p} }},\n\
         {{ action = \"deny\", direction = \"ingress\", proto = \"tcp\", dst_port = \"8081\" }},\n\
         ] }}\n\
         [[forward]]\nnetwork = \"n\"\npublish = \"{f_deny}:8081/tcp\"\nto = \"10.81.0.5\"\n\
         [[forward]]\nnetwork = \"n\"\npublish = \"{f_ok}:8080/tcp\"\nto = \"10.81.0.5\"\n"
    );
    // c refuses everything from 10.81.0.4/31 (that is a, not b).
    let c_policy = "policy = { rules = [ { action = \"deny\", direction = \"ingress\", src = \"10.81.0.4/31\" } ] }";
    let d = Daemon::start(&config(
        "10.81.0.0/24",
        &policy,
        &[("a", &a, ""), ("b", &b, ""), ("c", &c, c_policy)],
    ));
    guest(&a, "10.81.0.5/24", "10.81.0.1");
    guest(&b, "10.81.0.6/24", "10.81.0.1");
    guest(&c, "10.81.0.7/24", "10.81.0.1");
    serve(&a, &[8080, 8081]);
    serve(&b, &[22, 23]);
    serve(&c, &[23]);
    // Neighbours resolved (ARP is never policy-checked) and the gateway knows every guest.
    for ns in [&a, &b, &c] {
        ns.exec(&["ping", "-c", "1", "-W", "1", "10.81.0.1"]);
    }
    let long = Duration::from_secs(3);

    // A TCP port between guests: b:22 denied three times, b:23 works.
    for _ in 0..3 {
        assert_eq!(
            attempt(&a, "10.81.0.6:22", DENIED_WAIT),
            None,
            "{}",
            d.log()
        );
    }
    assert_eq!(attempt(&a, "10.81.0.6:23", long).as_deref(), Some("hello"));
    assert_eq!(hits(&d, "", "0"), 3, "one SYN per denied attempt");

    // ICMP echo from c denied (two echoes), c's TCP works, a's ping works.
    let out = c.exec(&["ping", "-c", "2", "-i", "0.2", "-W", "1", "10.81.0.6"]);
    assert!(!out.status.success(), "c's echo requests must be denied");
    assert_eq!(attempt(&c, "10.81.0.6:23", long).as_deref(), Some("hello"));
    let out = a.exec(&["ping", "-c", "1", "-W", "2", "10.81.0.6"]);
    assert!(out.status.success(), "a may ping b");
    assert_eq!(hits(&d, "", "1"), 2);

    // A CIDR on c's ingress: a (in 10.81.0.4/31) is refused, b is not.
    assert_eq!(attempt(&a, "10.81.0.7:23", DENIED_WAIT), None);
    assert_eq!(attempt(&b, "10.81.0.7:23", long).as_deref(), Some("hello"));
    assert_eq!(hits(&d, "c", "0"), 1);

    // NAT egress to the host's loopback: one port denied, the other reached.
    let gw = |p: u16| format!("10.81.0.1:{p}");
    assert_eq!(attempt(&a, &gw(deny_p), DENIED_WAIT), None);
    assert_eq!(attempt(&a, &gw(ok_p), long).as_deref(), Some("host"));
    assert_eq!(hits(&d, "", "2"), 1);

    // A forward: the denied one is closed without a byte, the other answers.
    let fetch = |p: u16| -> String {
        let mut s = String::new();
        if let Ok(mut c) = TcpStream::connect_timeout(
            &format!("127.0.0.1:{p}").parse().expect("addr"),
            Duration::from_secs(3),
        ) {
            let _ = c.set_read_timeout(Some(Duration::from_secs(3)));
            let _ = c.read_to_string(&mut s);
        }
        s
    };
    assert_eq!(fetch(f_ok), "hello", "{}", d.log());
    assert_eq!(fetch(f_deny), "", "a denied forward carries nothing");
    assert_eq!(hits(&d, "", "3"), 1);

    // Counters in the metrics and on the ports.
    let m = d.ctl(&["metrics"]).as_str().unwrap_or_default().to_string();
    assert!(
        m.contains(
            "usernet_policy_packets_total{network=\"n\",port=\"\",rule=\"0\",action=\"deny\"} 3"
        ),
        "{m}"
    );
    assert!(m.contains(
        "usernet_policy_packets_total{network=\"n\",port=\"c\",rule=\"0\",action=\"deny\"} 1"
    ));
    let stats = d.ctl(&["stats"]);
    let drops = |port: &str| -> u64 {
        stats
            .as_array()
            .and_then(|v| v.iter().find(|r| r["port"] == port))
            .and_then(|r| r["stats"]["drops"]["policy_denied"].as_u64())
            .unwrap_or(0)
    };
    assert_eq!(drops("a") + drops("c"), 3 + 2 + 1, "{stats}");
    // The table `ctl policy ls` prints: each rule as KEY=VALUE words, then the default.
    let out = std::process::Command::new(common::daemon::BIN)
        .args(["ctl", "--socket"])
        .arg(d.sock())
        .args(["policy", "ls", "n"])
        .output()
        .expect("ctl policy ls");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.contains("dst=10.81.0.6/32") && text.contains("default"),
        "{text}"
    );
}

/// Rules added and removed while a bulk transfer runs between two guests: every byte arrives,
/// and nothing outside the rules is dropped. Bad input names the field.
#[test]
fn rule_changes_under_load_drop_nothing_else() {
    if !require_root("rule_changes_under_load_drop_nothing_else") {
        return;
    }
    let (a, b) = (Netns::new("pa"), Netns::new("pb"));
    let d = Daemon::start(&config("10.82.0.0/24", "", &[("a", &a, ""), ("b", &b, "")]));
    guest(&a, "10.82.0.5/24", "10.82.0.1");
    guest(&b, "10.82.0.6/24", "10.82.0.1");
    for ns in [&a, &b] {
        ns.exec(&["ping", "-c", "1", "-W", "1", "10.82.0.1"]);
    }
    const LEN: usize = 96 << 20;
    let data = Arc::new(common::pattern(LEN, 0x5eed));
    let l = run_in_netns(&b.path(), || TcpListener::bind("0.0.0.0:5001")).expect("listen");
    let receiver = std::thread::spawn(move || {
        let (mut c, _) = l.accept().expect("accept");
        c.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let mut v = Vec::with_capacity(LEN);
        c.read_to_end(&mut v).expect("read");
        v
    });
    let d2 = data.clone();
    let a_path = a.path();
    let sender = std::thread::spawn(move || {
        run_in_netns(&a_path, move || {
            let mut c = TcpStream::connect_timeout(
                &"10.82.0.6:5001".parse().expect("addr"),
                Duration::from_secs(5),
            )?;
            for chunk in d2.chunks(1 << 20) {
                c.write_all(chunk)?;
                std::thread::sleep(Duration::from_millis(10));
            }
            c.shutdown(std::net::Shutdown::Write)?;
            Ok(())
        })
    });
    // Rules that match nothing of the transfer, added at the front and removed, over and over.
    for i in 0..20 {
        d.ctl(&[
            "policy",
            "add",
            "n",
            "--index",
            "0",
            "deny",
            "proto=tcp",
            "dst_port=9",
        ]);
        d.ctl(&[
            "policy",
            "add",
            "n",
            "--port",
            "b",
            "deny",
            "proto=udp",
            "direction=ingress",
        ]);
        if i % 2 == 0 {
            d.ctl(&["policy", "default", "n", "allow"]);
        }
        std::thread::sleep(Duration::from_millis(30));
        d.ctl(&["policy", "rm", "n", "0"]);
        d.ctl(&["policy", "rm", "n", "--port", "b", "0"]);
    }
    sender.join().expect("sender").expect("send");
    let got = receiver.join().expect("receiver");
    assert_eq!(got.len(), data.len(), "length");
    assert!(got == *data, "the transfer arrived changed");
    let stats = d.ctl(&["stats"]);
    for r in stats.as_array().into_iter().flatten() {
        assert_eq!(r["stats"]["drops"]["policy_denied"], 0, "{r}");
    }
    // The default counted the transfer's packets (the network had a policy part of the time).
    assert!(hits(&d, "", "default") > 0);

    // Bad input: errors name the field.
    let err = |args: &[&str]| -> String {
        let out = ctl_output(&d.sock(), args);
        assert!(!out.status.success(), "{args:?} must fail");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    assert!(
        err(&["policy", "add", "n", "deny", "proto=tcp", "dst_port=99999"])
            .contains("rule.dst_port")
    );
    assert!(err(&["policy", "add", "n", "deny", "icmp_type=8"]).contains("rule.icmp_type"));
    assert!(err(&["policy", "add", "n", "drop"]).contains("rule.action"));
    assert!(err(&["policy", "add", "n", "deny", "dst=10.0.0.0/40"]).contains("rule.dst"));
    assert!(err(&["policy", "rm", "n", "7"]).contains("index"));
    assert!(err(&["policy", "add", "nope", "deny"]).contains("nope"));
    assert!(err(&["policy", "add", "n", "--port", "x", "deny"]).contains("x"));
}
