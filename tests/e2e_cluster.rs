//! Cluster mode on etcd end to end (issue 15): "hosts" are namespaces on a bridged veth underlay
//! (`common::underlay`), each running its own `usernet up` with a `[cluster]` section and the
//! cluster network `web`; etcd (Debian's `etcd-server`) runs in the underlay's namespace on
//! 172.31.0.254:2379, started and killed by the test. Guests take DHCP addresses with busybox
//! udhcpc. Needs root and the feature `cluster` (prints `SKIP` without root).
#![cfg(feature = "cluster")]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::etcd::Etcd;
use common::underlay::{Lab, Udhcpc, ping, ping_ok, quiet, underlay_ip, wait_for};
use common::{Netns, dns, require_root};
use serde_json::Value;

const ETCD_IP: &str = "172.31.0.254";

/// Puts etcd on the underlay: the bridge gets 172.31.0.254.
fn etcd(lab: &Lab) -> Etcd {
    lab.ul
        .ip(&["addr", "add", &format!("{ETCD_IP}/24"), "dev", "br0"]);
    Etcd::start_in(&lab.ul, ETCD_IP)
}

/// Host `i`'s config: node `h{i}`, network `web` (VNI 70, 10.70.0.0/24, no IPv6, no DNS
/// upstream) shared by the cluster, and a netns port without address for each guest.
fn config(e: &Etcd, i: usize, guests: &[&Netns], ttl: u32) -> String {
    let mut c = format!(
        "[cluster]\netcd = [\"{}\"]\nnode = \"h{i}\"\nvtep = \"{}\"\nttl_s = {ttl}\n\n\
         [[network]]\nname = \"web\"\nscope = \"cluster\"\nvni = 70\nsubnet = \"10.70.0.0/24\"\n\
         ipv6 = \"off\"\ndns_upstreams = [\"127.0.0.1:9\"]\n",
        e.endpoint(),
        underlay_ip(i),
    );
    for (k, g) in guests.iter().enumerate() {
        c.push_str(&format!(
            "\n[[port]]\nnetwork = \"web\"\nname = \"g{i}x{k}\"\nnetns = \"{}\"\n",
            g.path().display()
        ));
    }
    c
}

/// `ctl cluster` of `d`.
fn cluster(d: &Daemon) -> Value {
    d.ctl(&["cluster"])
}

/// The remotes of `web`'s VXLAN port on `d`, from `ctl cluster`.
fn remotes(d: &Daemon) -> BTreeSet<String> {
    cluster(d)["networks"][0]["remotes"]
        .as_array()
        .expect("remotes")
        .iter()
        .filter_map(|r| r.as_str().map(String::from))
        .collect()
}

fn set(v: &[String]) -> BTreeSet<String> {
    v.iter().cloned().collect()
}

/// The other hosts' VTEPs, for host `i` of `n`.
fn others(i: usize, n: &[usize]) -> BTreeSet<String> {
    n.iter()
        .filter(|j| **j != i)
        .map(|j| underlay_ip(*j))
        .collect()
}

fn logs(d: &[&Daemon]) -> String {
    d.iter()
        .map(|d| d.log())
        .collect::<Vec<_>>()
        .join("\n---\n")
}

/// The address of a lease line (`IP SERVERID MTU`).
fn addr(lease: &str) -> String {
    lease.split_whitespace().next().expect("ip").to_string()
}

fn kill9(d: &Daemon) {
    // SAFETY: kill(2) on the pid of a daemon this test started.
    unsafe { libc::kill(d.pid() as i32, libc::SIGKILL) };
}

#[test]
fn three_nodes_share_a_network_with_unique_addresses_and_ping_across() {
    if !require_root("three_nodes_share_a_network_with_unique_addresses_and_ping_across") {
        return;
    }
    const PER_HOST: usize = 4;
    let lab = Lab::new(3);
    let e = etcd(&lab);
    // PER_HOST guests per host: the lab's own and PER_HOST - 1 more.
    let extra: Vec<Vec<Netns>> = (0..3)
        .map(|_| {
            (1..PER_HOST)
                .map(|_| {
                    let g = Netns::new("clg");
                    quiet(&g);
                    g
                })
                .collect()
        })
        .collect();
    let guests: Vec<Vec<&Netns>> = (0..3)
        .map(|i| {
            std::iter::once(&lab.guests[i])
                .chain(extra[i].iter())
                .collect()
        })
        .collect();
    // And on host 0 a guest whose address usernet configures from the shared pool.
    let auto = Netns::new("cla");
    quiet(&auto);
    let d: Vec<Daemon> = (0..3)
        .map(|i| {
            let mut c = config(&e, i, &guests[i], 3);
            if i == 0 {
                c.push_str(&format!(
                    "\n[[port]]\nnetwork = \"web\"\nname = \"auto0\"\nnetns = \"{}\"\nips = [\"auto\"]\n",
                    auto.path().display()
                ));
            }
            Daemon::start_in(&lab.hosts[i], &c)
        })
        .collect();
    let all: Vec<&Daemon> = d.iter().collect();
    for (i, x) in d.iter().enumerate() {
        wait_for(&format!("host {i} sees the two others"), 10, || {
            remotes(x) == others(i, &[0, 1, 2])
        });
    }
    // Every guest of every host asks for an address at once.
    let dhcp = Udhcpc::new();
    let leases: Vec<Vec<Result<String, String>>> = std::thread::scope(|s| {
        let runs: Vec<Vec<_>> = guests
            .iter()
            .enumerate()
            .map(|(i, gs)| {
                gs.iter()
                    .enumerate()
                    .map(|(k, g)| {
                        let dhcp = &dhcp;
                        s.spawn(move || dhcp.run(g, &format!("l{i}x{k}")))
                    })
                    .collect()
            })
            .collect();
        runs.into_iter()
            .map(|v| v.into_iter().map(|t| t.join().expect("thread")).collect())
            .collect()
    });
    let mut seen = BTreeSet::new();
    for (i, ls) in leases.iter().enumerate() {
        let on_host = d[i].ctl(&["leases"]).to_string();
        for (k, l) in ls.iter().enumerate() {
            let l = l
                .as_ref()
                .unwrap_or_else(|err| panic!("udhcpc g{i}x{k}: {err}\n{}", logs(&all)));
            let a = addr(l);
            assert!(seen.insert(a.clone()), "{a} handed out twice");
            assert!(on_host.contains(&a), "host {i} leased {a} itself");
            assert!(l.contains("1450"), "the VXLAN inner MTU is announced: {l}");
        }
    }
    assert_eq!(seen.len(), 3 * PER_HOST);
    let auto_ip = auto.exec_ok(&["ip", "-4", "-br", "addr", "show", "eth0"]);
    let auto_ip = auto_ip
        .split_whitespace()
        .nth(2)
        .and_then(|a| a.split('/').next())
        .expect("an address on the auto port")
        .to_string();
    assert!(seen.insert(auto_ip.clone()), "{auto_ip} handed out twice");
    // etcd holds exactly one claim per address in use (and spares), each naming its node.
    let claims = e.list("/usernet/ipam/web/");
    for a in &seen {
        let owner: Vec<_> = claims
            .iter()
            .filter(|(k, _)| k.ends_with(&format!("/{a}")))
            .collect();
        assert_eq!(owner.len(), 1, "{a}: {claims:?}");
    }
    assert!(
        claims
            .iter()
            .any(|(k, v)| k.ends_with(&format!("/{auto_ip}")) && v == "h0"),
        "the auto port's address is h0's claim: {claims:?}"
    );
    // Guests reach each other across the hosts.
    let a0 = addr(leases[1][0].as_ref().expect("lease"));
    let a2 = addr(leases[2][PER_HOST - 1].as_ref().expect("lease"));
    ping_ok(guests[0][0], &a0, &all);
    ping_ok(guests[0][1], &a2, &all);
    ping_ok(
        guests[2][0],
        &addr(leases[0][2].as_ref().expect("lease")),
        &all,
    );
    // ctl cluster: connected, a revision, the three nodes with their VTEPs and networks.
    let c = cluster(&d[1]);
    assert_eq!(c["state"], "connected", "{c}");
    assert!(c["revision"].as_i64().unwrap_or(0) > 0, "{c}");
    let nodes = c["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 3, "{c}");
    for (i, n) in nodes.iter().enumerate() {
        assert_eq!(n["name"], format!("h{i}"));
        assert_eq!(n["vtep"], underlay_ip(i));
        assert_eq!(n["networks"]["web"], 70);
        assert_eq!(n["local"], i == 1);
    }
    // The table a person reads.
    let out = std::process::Command::new(common::daemon::BIN)
        .args(["ctl", "--socket"])
        .arg(d[1].sock())
        .arg("cluster")
        .output()
        .expect("ctl cluster");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("state connected") && text.contains("h1 (this node)  172.31.0.2  web=70"),
        "{text}"
    );
}

#[test]
fn a_dead_node_leaves_after_its_ttl_and_a_new_node_joins() {
    if !require_root("a_dead_node_leaves_after_its_ttl_and_a_new_node_joins") {
        return;
    }
    let mut lab = Lab::new(2);
    let e = etcd(&lab);
    let ttl = 2;
    let d0 = Daemon::start_in(&lab.hosts[0], &config(&e, 0, &[&lab.guests[0]], ttl));
    let d1 = Daemon::start_in(&lab.hosts[1], &config(&e, 1, &[&lab.guests[1]], ttl));
    wait_for("h0 and h1 see each other", 10, || {
        remotes(&d0) == others(0, &[0, 1]) && remotes(&d1) == others(1, &[0, 1])
    });
    let dhcp = Udhcpc::new();
    let l0 = addr(&dhcp.run(&lab.guests[0], "l0").expect("lease h0"));
    let l1 = addr(&dhcp.run(&lab.guests[1], "l1").expect("lease h1"));
    assert_ne!(l0, l1);
    ping_ok(&lab.guests[0], &l1, &[&d0, &d1]);
    // h1 dies without a word: h0 keeps it until its lease's TTL has run out, then drops it.
    kill9(&d1);
    let t = Instant::now();
    wait_for("h1's remote to go from h0", 10, || remotes(&d0).is_empty());
    assert!(
        t.elapsed() >= Duration::from_millis(1000),
        "removed after {:?}: before the TTL could run out",
        t.elapsed()
    );
    let c = cluster(&d0);
    assert_eq!(c["nodes"].as_array().map(Vec::len), Some(1), "{c}");
    assert!(!ping(&lab.guests[0], &l1), "nothing reaches the dead host");
    // A new node joins: both sides get the remote, its guest an address of its own, and
    // the guests reach each other.
    eprintln!(
        "a killed node left h0's remotes {:?} after the kill (ttl {ttl} s)",
        t.elapsed()
    );
    let i2 = lab.add_host();
    let t = Instant::now();
    let d2 = Daemon::start_in(&lab.hosts[i2], &config(&e, i2, &[&lab.guests[i2]], ttl));
    wait_for("h0 and h2 see each other", 10, || {
        remotes(&d0) == set(&[underlay_ip(i2)]) && remotes(&d2) == set(&[underlay_ip(0)])
    });
    eprintln!(
        "a new node was a remote on both sides {:?} after its start",
        t.elapsed()
    );
    let l2 = addr(&dhcp.run(&lab.guests[i2], "l2").expect("lease h2"));
    assert_ne!(l2, l0);
    ping_ok(&lab.guests[i2], &l0, &[&d0, &d2]);
    ping_ok(&lab.guests[0], &l2, &[&d0, &d2]);
    // A node that stops cleanly revokes its lease on the way out: its keys are gone at once.
    let before = e.list("/usernet/");
    assert!(before.iter().any(|(k, _)| k == "/usernet/nodes/h2"));
    assert!(before.iter().any(|(_, v)| v == "h2"), "h2 holds claims");
    drop(d2);
    let after = e.list("/usernet/");
    assert!(
        after
            .iter()
            .all(|(k, v)| k != "/usernet/nodes/h2" && v != "h2"),
        "left behind: {after:?}"
    );
    wait_for("h2's remote to go from h0", 5, || remotes(&d0).is_empty());
}

#[test]
fn malformed_keys_in_etcd_are_ignored_and_hand_written_nodes_follow_the_store() {
    if !require_root("malformed_keys_in_etcd_are_ignored_and_hand_written_nodes_follow_the_store") {
        return;
    }
    let mut lab = Lab::new(2);
    let e = etcd(&lab);
    // Garbage already there when the nodes start, and more written while they run.
    e.put("/usernet/nodes/early", b"{not json");
    let d0 = Daemon::start_in(&lab.hosts[0], &config(&e, 0, &[&lab.guests[0]], 3));
    let d1 = Daemon::start_in(&lab.hosts[1], &config(&e, 1, &[&lab.guests[1]], 3));
    wait_for("h0 and h1 see each other", 10, || {
        remotes(&d0) == others(0, &[0, 1]) && remotes(&d1) == others(1, &[0, 1])
    });
    let bad: &[(&str, &[u8])] = &[
        ("/usernet/nodes/evil", b"\xff\xfe"),
        (
            "/usernet/nodes/deep/er",
            br#"{"vtep":"172.31.0.99","networks":{"web":70}}"#,
        ),
        (
            "/usernet/nodes/mcast",
            br#"{"vtep":"224.0.0.1","networks":{"web":70}}"#,
        ),
        (
            "/usernet/nodes/zero",
            br#"{"vtep":"0.0.0.0","networks":{"web":70}}"#,
        ),
        (
            "/usernet/nodes/bigvni",
            br#"{"vtep":"172.31.0.98","networks":{"web":99999999}}"#,
        ),
        ("/usernet/nodes/novtep", br#"{"networks":{"web":70}}"#),
        (
            "/usernet/nodes/has space",
            br#"{"vtep":"172.31.0.97","networks":{"web":70}}"#,
        ),
    ];
    for (k, v) in bad {
        e.put(k, v);
    }
    // A well-formed node of another VNI is a node, never a remote of `web`.
    e.put(
        "/usernet/nodes/other",
        br#"{"vtep":"172.31.0.77","networks":{"web":71}}"#,
    );
    // Garbage among the address claims.
    e.put("/usernet/ipam/web/not-an-ip", b"x");
    for x in [&d0, &d1] {
        wait_for("the garbage counted", 10, || {
            // `bad` and the early one.
            cluster(x)["malformed"].as_u64().unwrap_or(0) > bad.len() as u64
        });
    }
    for (i, x) in [&d0, &d1].iter().enumerate() {
        assert_eq!(remotes(x), others(i, &[0, 1]), "{}", x.log());
        let c = cluster(x);
        assert_eq!(c["state"], "connected", "{c}");
        let names: BTreeSet<&str> = c["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .filter_map(|n| n["name"].as_str())
            .collect();
        assert_eq!(names, BTreeSet::from(["h0", "h1", "other"]), "{c}");
        assert!(x.log().contains("malformed"), "logged");
    }
    // A valid record written by hand becomes a remote, and goes when deleted; one that turns
    // bad goes too.
    e.put(
        "/usernet/nodes/manual",
        br#"{"vtep":"172.31.0.50","networks":{"web":70}}"#,
    );
    wait_for("the hand-written node as a remote", 10, || {
        remotes(&d0).contains("172.31.0.50")
    });
    e.put("/usernet/nodes/manual", b"[1,2,3]");
    wait_for("the node gone when its record turned bad", 10, || {
        !remotes(&d0).contains("172.31.0.50")
    });
    e.put(
        "/usernet/nodes/manual",
        br#"{"vtep":"172.31.0.50","networks":{"web":70}}"#,
    );
    wait_for("back", 10, || remotes(&d0).contains("172.31.0.50"));
    e.delete("/usernet/nodes/manual");
    wait_for("gone when deleted", 10, || {
        remotes(&d0) == others(0, &[0, 1])
    });
    // A second node with a live node's name is refused (it would share h1's address claims):
    // it stays out, h1 stays in.
    let i2 = lab.add_host();
    let twin = config(&e, i2, &[&lab.guests[i2]], 3).replace("node = \"h2\"", "node = \"h1\"");
    let dup = Daemon::start_in(&lab.hosts[i2], &twin);
    wait_for("the twin refused", 10, || {
        cluster(&dup)["last_error"]
            .as_str()
            .is_some_and(|m| m.contains("is in use"))
    });
    assert_ne!(cluster(&dup)["state"], "connected");
    assert_eq!(remotes(&d0), others(0, &[0, 1]));
    drop(dup);
    // Everything still works.
    let dhcp = Udhcpc::new();
    let l0 = addr(&dhcp.run(&lab.guests[0], "l0").expect("lease h0"));
    let l1 = addr(&dhcp.run(&lab.guests[1], "l1").expect("lease h1"));
    assert_ne!(l0, l1);
    ping_ok(&lab.guests[0], &l1, &[&d0, &d1]);
}

#[test]
fn etcd_down_keeps_forwarding_and_leases_but_hands_out_no_new_address() {
    if !require_root("etcd_down_keeps_forwarding_and_leases_but_hands_out_no_new_address") {
        return;
    }
    let lab = Lab::new(2);
    let mut e = etcd(&lab);
    let late = Netns::new("clg");
    quiet(&late);
    let d0 = Daemon::start_in(&lab.hosts[0], &config(&e, 0, &[&lab.guests[0], &late], 3));
    let d1 = Daemon::start_in(&lab.hosts[1], &config(&e, 1, &[&lab.guests[1]], 3));
    wait_for("h0 and h1 see each other", 10, || {
        remotes(&d0) == others(0, &[0, 1]) && remotes(&d1) == others(1, &[0, 1])
    });
    let dhcp = Udhcpc::new();
    let l0 = addr(&dhcp.run(&lab.guests[0], "l0").expect("lease h0"));
    let l1 = addr(&dhcp.run(&lab.guests[1], "l1").expect("lease h1"));
    e.stop();
    wait_for("h0 disconnected", 15, || {
        cluster(&d0)["state"] == "disconnected"
    });
    let c = cluster(&d0);
    assert_eq!(c["networks"][0]["spare"], 0, "spare claims given up: {c}");
    assert!(c["last_error"].is_string(), "{c}");
    // The last known remotes stay: the guests still reach each other; the lease renews.
    assert_eq!(remotes(&d0), others(0, &[0, 1]));
    ping_ok(&lab.guests[0], &l1, &[&d0, &d1]);
    assert_eq!(addr(&dhcp.run(&lab.guests[0], "l0b").expect("renewal")), l0);
    // A new guest gets nothing: never a guessed address.
    assert!(dhcp.run(&late, "late").is_err(), "an address without etcd");
    // etcd comes back: the node reconnects and hands out addresses again.
    e.restart();
    wait_for("h0 connected again", 15, || {
        cluster(&d0)["state"] == "connected"
    });
    let l2 = addr(&dhcp.run(&late, "late2").expect("lease after etcd returned"));
    assert!(l2 != l0 && l2 != l1, "{l2}");
    ping_ok(&late, &l1, &[&d0, &d1]);
}

#[test]
fn dhcp_names_resolve_on_every_node_until_their_node_goes() {
    if !require_root("dhcp_names_resolve_on_every_node_until_their_node_goes") {
        return;
    }
    let lab = Lab::new(2);
    let e = etcd(&lab);
    let d0 = Daemon::start_in(&lab.hosts[0], &config(&e, 0, &[&lab.guests[0]], 2));
    let d1 = Daemon::start_in(&lab.hosts[1], &config(&e, 1, &[&lab.guests[1]], 2));
    wait_for("h0 and h1 see each other", 10, || {
        remotes(&d0) == others(0, &[0, 1]) && remotes(&d1) == others(1, &[0, 1])
    });
    let dhcp = Udhcpc::new();
    let (g0, g1) = (&lab.guests[0], &lab.guests[1]);
    let l0 = addr(
        &dhcp
            .run_with(g0, "l0", &["-x", "hostname:alpha"])
            .expect("lease h0"),
    );
    let l1 = addr(
        &dhcp
            .run_with(g1, "l1", &["-x", "hostname:beta"])
            .expect("lease h1"),
    );
    // Each gateway answers the other node's guest by the name it gave DHCP.
    let q = |g: &Netns, name: &str| dns::short(g, &["@10.70.0.1", &format!("{name}.usernet"), "A"]);
    wait_for("alpha resolves on h1", 10, || q(g1, "alpha") == l0);
    wait_for("beta resolves on h0", 10, || q(g0, "beta") == l1);
    assert_eq!(q(g0, "alpha"), l0, "the local name still resolves");
    let names = e.list("/usernet/endpoints/");
    assert!(
        names.contains(&("/usernet/endpoints/web/alpha/h0".into(), l0.clone())),
        "{names:?}"
    );
    // A hand-written bad endpoint is ignored; h1 dies: beta goes from h0 after the TTL.
    e.put("/usernet/endpoints/web/gamma/h1", b"not an address");
    kill9(&d1);
    wait_for("beta gone from h0", 10, || q(g0, "beta").is_empty());
    assert!(q(g0, "gamma").is_empty());
    assert!(cluster(&d0)["malformed"].as_u64().unwrap_or(0) >= 1);
}

#[test]
fn fixed_addresses_are_claimed_once_across_nodes() {
    if !require_root("fixed_addresses_are_claimed_once_across_nodes") {
        return;
    }
    let lab = Lab::new(2);
    let e = etcd(&lab);
    let mut c0 = config(&e, 0, &[], 3);
    c0.push_str(&format!(
        "\n[[port]]\nnetwork = \"web\"\nname = \"fixed0\"\nnetns = \"{}\"\nips = [\"10.70.0.200/24\"]\n",
        lab.guests[0].path().display()
    ));
    let d0 = Daemon::start_in(&lab.hosts[0], &c0);
    let d1 = Daemon::start_in(&lab.hosts[1], &config(&e, 1, &[], 3));
    wait_for("h0 and h1 see each other", 10, || {
        remotes(&d0) == others(0, &[0, 1]) && remotes(&d1) == others(1, &[0, 1])
    });
    let attach = |ip: &str| {
        std::process::Command::new("timeout")
            .args(["20", common::daemon::BIN, "attach", "--netns"])
            .arg(lab.guests[1].path())
            .args([
                "--name",
                "fixed1",
                "--network",
                "web",
                "--ip",
                ip,
                "--socket",
            ])
            .arg(d1.sock())
            .output()
            .expect("attach")
    };
    // h0 holds .200: h1 may not take it.
    let out = attach("10.70.0.200/24");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("claimed by another node"),
        "{err}"
    );
    let out = attach("10.70.0.201/24");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        d1.log()
    );
    let claims = e.list("/usernet/ipam/web/");
    for (ip, node) in [("10.70.0.200", "h0"), ("10.70.0.201", "h1")] {
        assert!(
            claims.contains(&(format!("/usernet/ipam/web/{ip}"), node.to_string())),
            "{claims:?}"
        );
    }
    ping_ok(&lab.guests[0], "10.70.0.201", &[&d0, &d1]);
}
