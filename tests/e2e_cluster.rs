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
use common::etcd::{Etcd, EtcdCluster};
use common::underlay::{Lab, Udhcpc, ping, ping_ok, quiet, underlay_ip, wait_for};
use common::{Netns, dns, require_root};
use serde_json::Value;

const ETCD_IP: &str = "172.31.0.254";
/// The members of a 3-member etcd on the underlay.
const ETCD3: [&str; 3] = ["172.31.0.251", "172.31.0.252", "172.31.0.253"];

/// Puts etcd on the underlay: the bridge gets 172.31.0.254.
fn etcd(lab: &Lab) -> Etcd {
    lab.ul
        .ip(&["addr", "add", &format!("{ETCD_IP}/24"), "dev", "br0"]);
    Etcd::start_in(&lab.ul, ETCD_IP)
}

/// Puts a 3-member etcd on the underlay: the bridge gets [`ETCD3`].
fn etcd3(lab: &Lab) -> EtcdCluster {
    for ip in ETCD3 {
        lab.ul
            .ip(&["addr", "add", &format!("{ip}/24"), "dev", "br0"]);
    }
    EtcdCluster::start_in(&lab.ul, &ETCD3)
}

/// Host `i`'s config: node `h{i}`, network `web` (VNI 70, 10.70.0.0/24, no IPv6, no DNS
/// upstream) shared by the cluster, and a netns port without address for each guest.
fn config(e: &Etcd, i: usize, guests: &[&Netns], ttl: u32) -> String {
    config_eps(&[e.endpoint()], i, guests, ttl)
}

/// [`config`] with the etcd endpoints `eps`.
fn config_eps(eps: &[String], i: usize, guests: &[&Netns], ttl: u32) -> String {
    let eps = eps
        .iter()
        .map(|e| format!("\"{e}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let mut c = format!(
        "[cluster]\netcd = [{eps}]\nnode = \"h{i}\"\nvtep = \"{}\"\nttl_s = {ttl}\n\n\
         [[network]]\nname = \"web\"\nscope = \"cluster\"\nvni = 70\nsubnet = \"10.70.0.0/24\"\n\
         ipv6 = \"off\"\ndns_upstreams = [\"127.0.0.1:9\"]\n",
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

/// `usernet attach` of `g` to `web` on `d` as port `name` with the fixed address `ip`.
fn attach_fixed(d: &Daemon, g: &Netns, name: &str, ip: &str) -> std::process::Output {
    std::process::Command::new("timeout")
        .args(["20", common::daemon::BIN, "attach", "--netns"])
        .arg(g.path())
        .args(["--name", name, "--network", "web", "--ip", ip, "--socket"])
        .arg(d.sock())
        .output()
        .expect("attach")
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
    assert!(
        c["requests"].as_u64().unwrap_or(0) > 0,
        "etcd requests counted: {c}"
    );
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
        text.contains("state connected")
            && text.contains(" requests ")
            && text.contains("h1 (this node)  172.31.0.2  web=70"),
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
    let attach = |ip: &str| attach_fixed(&d1, &lab.guests[1], "fixed1", ip);
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

/// A name asked of the gateway from guest `g`: its A record, or empty.
fn resolve(g: &Netns, name: &str) -> String {
    dns::short(g, &["@10.70.0.1", &format!("{name}.usernet"), "A"])
}

/// Every node of `d` sees the others as remotes and lists all of them as nodes.
fn all_members(d: &[Daemon]) -> bool {
    let n: Vec<usize> = (0..d.len()).collect();
    d.iter().enumerate().all(|(i, x)| {
        remotes(x) == others(i, &n) && cluster(x)["nodes"].as_array().map(Vec::len) == Some(d.len())
    })
}

#[test]
fn a_three_member_etcd_loses_a_member_then_its_quorum_and_nothing_is_lost() {
    if !require_root("a_three_member_etcd_loses_a_member_then_its_quorum_and_nothing_is_lost") {
        return;
    }
    let lab = Lab::new(3);
    let mut e = etcd3(&lab);
    // Per host: the lab's guest, leased at the start, and two more: one leased with a member
    // down, one while the quorum is lost (nothing) and again after it came back.
    let late: Vec<Vec<Netns>> = (0..3)
        .map(|_| {
            (0..2)
                .map(|_| {
                    let g = Netns::new("clg");
                    quiet(&g);
                    g
                })
                .collect()
        })
        .collect();
    let d: Vec<Daemon> = (0..3)
        .map(|i| {
            let gs = [&lab.guests[i], &late[i][0], &late[i][1]];
            Daemon::start_in(&lab.hosts[i], &config_eps(&e.endpoints(), i, &gs, 3))
        })
        .collect();
    let all: Vec<&Daemon> = d.iter().collect();
    let fail = |what: &str, e: &EtcdCluster| format!("{what}\n{}\n{}", logs(&all), e.logs());
    wait_for("the three nodes see each other", 10, || all_members(&d));
    let dhcp = Udhcpc::new();
    let lease = |g: &Netns, name: &str| {
        dhcp.run_with(g, name, &["-x", &format!("hostname:{name}")])
            .map(|l| addr(&l))
    };
    let a: Vec<String> = (0..3)
        .map(|i| lease(&lab.guests[i], &format!("a{i}")).expect("first lease"))
        .collect();
    wait_for("a1 resolves on h0", 10, || {
        resolve(&lab.guests[0], "a1") == a[1]
    });
    ping_ok(&lab.guests[0], &a[1], &all);

    // The leader dies: the nodes go on through the two others.
    let leader = e.leader();
    e.stop(leader);
    let t = Instant::now();
    let b: Vec<String> = (0..3)
        .map(|i| {
            lease(&late[i][0], &format!("b{i}"))
                .unwrap_or_else(|err| panic!("{}", fail(&format!("lease b{i}: {err}"), &e)))
        })
        .collect();
    // New claims go through the quorum left: a fixed address is claimed in etcd (the call
    // waits for etcd's answer), new names are published and resolve on the other hosts.
    let fixed = Netns::new("clf");
    quiet(&fixed);
    let out = attach_fixed(&d[1], &fixed, "fixed1", "10.70.0.201/24");
    assert!(
        out.status.success(),
        "{}",
        fail(&String::from_utf8_lossy(&out.stderr), &e)
    );
    wait_for("b2 resolves on h0 and b0 on h1", 15, || {
        resolve(&lab.guests[0], "b2") == b[2] && resolve(&lab.guests[1], "b0") == b[0]
    });
    assert!(all_members(&d), "{}", fail("membership kept", &e));
    for x in &d {
        assert_eq!(
            cluster(x)["state"],
            "connected",
            "{}",
            fail("connected", &e)
        );
    }
    ping_ok(&late[0][0], &b[2], &all);
    ping_ok(&fixed, &b[1], &all);
    eprintln!(
        "etcd leader m{leader} killed: 3 leases, a fixed claim and names across hosts in {:?}",
        t.elapsed()
    );

    // A second member dies: no quorum. The nodes notice, keep forwarding with what they know,
    // renew the leases they gave, and hand out nothing new.
    let second = (0..3).find(|k| *k != leader).expect("a member");
    e.stop(second);
    let t = Instant::now();
    for (i, x) in d.iter().enumerate() {
        wait_for(&format!("h{i} disconnected"), 20, || {
            cluster(x)["state"] == "disconnected"
        });
    }
    eprintln!(
        "quorum lost: every node disconnected after {:?}",
        t.elapsed()
    );
    for x in &d {
        let c = cluster(x);
        assert_eq!(c["networks"][0]["spare"], 0, "spare claims given up: {c}");
        assert!(c["last_error"].is_string(), "{c}");
    }
    for (i, x) in d.iter().enumerate() {
        assert_eq!(remotes(x), others(i, &[0, 1, 2]), "remotes kept");
    }
    ping_ok(&lab.guests[0], &a[2], &all);
    ping_ok(&late[2][0], &b[0], &all);
    assert_eq!(
        resolve(&lab.guests[2], "a0"),
        a[0],
        "names known stay served"
    );
    assert_eq!(lease(&lab.guests[1], "a1").expect("renewal"), a[1]);
    assert!(
        lease(&late[0][1], "c0").is_err(),
        "{}",
        fail("an address without a quorum", &e)
    );
    let fixed2 = Netns::new("clf");
    let out = attach_fixed(&d[2], &fixed2, "fixed2", "10.70.0.202/24");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("etcd"),
        "a fixed address without a quorum: {err}"
    );
    eprintln!("without a quorum, attach --ip: {}", err.trim());

    // The members come back: the nodes reconnect on the same leases; nothing was lost.
    e.restart(&[leader, second]);
    let t = Instant::now();
    for (i, x) in d.iter().enumerate() {
        wait_for(&format!("h{i} connected again"), 20, || {
            cluster(x)["state"] == "connected"
        });
    }
    eprintln!("quorum back: every node connected after {:?}", t.elapsed());
    wait_for("membership after the restart", 10, || all_members(&d));
    // Membership was kept all along: no node ever lost its lease, no remote ever went.
    for x in &d {
        assert!(
            !x.log().contains("remote removed"),
            "{}",
            fail("a remote went meanwhile", &e)
        );
    }
    let claims = e.any().list("/usernet/ipam/web/");
    let owner = |ip: &str| {
        claims
            .iter()
            .filter(|(k, _)| *k == format!("/usernet/ipam/web/{ip}"))
            .map(|(_, v)| v.clone())
            .collect::<Vec<_>>()
    };
    for i in 0..3 {
        for ip in [&a[i], &b[i]] {
            assert_eq!(owner(ip), [format!("h{i}")], "{ip}: {claims:?}");
        }
    }
    assert_eq!(owner("10.70.0.201"), ["h1"], "{claims:?}");
    // The refused fixed address was not claimed behind its caller's back (h2's spare claims
    // start near .248 and never reach .202 here; h1's may).
    assert!(
        owner("10.70.0.202") != ["h2"],
        "{}",
        fail(&format!("{claims:?}"), &e)
    );
    let names = e.any().list("/usernet/endpoints/web/");
    for i in 0..3 {
        for (n, ip) in [(format!("a{i}"), &a[i]), (format!("b{i}"), &b[i])] {
            assert!(
                names.contains(&(format!("/usernet/endpoints/web/{n}/h{i}"), ip.clone())),
                "{n}: {names:?}"
            );
        }
    }
    // And allocation works again.
    let c: Vec<String> = (0..3)
        .map(|i| {
            lease(&late[i][1], &format!("c{i}"))
                .unwrap_or_else(|err| panic!("{}", fail(&format!("lease c{i}: {err}"), &e)))
        })
        .collect();
    let every: BTreeSet<&String> = a.iter().chain(&b).chain(&c).collect();
    assert_eq!(every.len(), 9, "distinct: {a:?} {b:?} {c:?}");
    ping_ok(&late[1][1], &c[0], &all);
    wait_for("c0 resolves on h2", 15, || {
        resolve(&lab.guests[2], "c0") == c[0]
    });
}

/// Where one raw DHCP client stands.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Dhcp {
    /// Sent a DISCOVER at (or has not yet).
    Discovering(Option<Instant>),
    /// Sent a REQUEST for this address at.
    Requesting(std::net::Ipv4Addr, Instant),
    /// Acknowledged.
    Bound(std::net::Ipv4Addr),
}

/// A DHCP message of type `t` from `mac` (BROADCAST flag set: the answers come to every
/// MAC), asking for `want` from `server`.
fn dhcp_msg(
    mac: [u8; 6],
    t: dhcproto::v4::MessageType,
    want: Option<(std::net::Ipv4Addr, std::net::Ipv4Addr)>,
) -> Vec<u8> {
    use dhcproto::{Encodable, Encoder, v4};
    use std::net::Ipv4Addr;
    let mut m = v4::Message::default();
    m.set_opcode(v4::Opcode::BootRequest)
        .set_xid(u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]]))
        .set_flags(v4::Flags::default().set_broadcast())
        .set_chaddr(&mac);
    m.opts_mut().insert(v4::DhcpOption::MessageType(t));
    if let Some((ip, server)) = want {
        m.opts_mut().insert(v4::DhcpOption::RequestedIpAddress(ip));
        m.opts_mut()
            .insert(v4::DhcpOption::ServerIdentifier(server));
    }
    let mut payload = Vec::new();
    m.encode(&mut Encoder::new(&mut payload)).expect("encode");
    let mut f = Vec::new();
    etherparse::PacketBuilder::ethernet2(mac, [0xff; 6])
        .ipv4([0; 4], Ipv4Addr::BROADCAST.octets(), 64)
        .udp(68, 67)
        .write(&mut f, &payload)
        .expect("dhcp frame");
    f
}

/// A DHCP reply in `frame`: (type, chaddr, yiaddr, server identifier).
fn dhcp_reply(
    frame: &[u8],
) -> Option<(
    dhcproto::v4::MessageType,
    [u8; 6],
    std::net::Ipv4Addr,
    std::net::Ipv4Addr,
)> {
    use dhcproto::{Decodable, Decoder, v4};
    let p = etherparse::SlicedPacket::from_ethernet(frame).ok()?;
    let Some(etherparse::TransportSlice::Udp(u)) = p.transport else {
        return None;
    };
    if u.source_port() != 67 {
        return None;
    }
    let m = v4::Message::decode(&mut Decoder::new(u.payload())).ok()?;
    let server = match m.opts().get(v4::OptionCode::ServerIdentifier) {
        Some(v4::DhcpOption::ServerIdentifier(s)) => *s,
        _ => return None,
    };
    let mac = <[u8; 6]>::try_from(m.chaddr()).ok()?;
    Some((m.opts().msg_type()?, mac, m.yiaddr(), server))
}

/// DHCP for every MAC of `macs` at once over one AF_PACKET socket on `g`'s eth0: DISCOVER,
/// REQUEST what is offered, again a second later while no answer came; until all are bound or
/// `limit` has passed. The addresses bound, by MAC.
fn dhcp_many(
    g: &Netns,
    macs: &[[u8; 6]],
    limit: Duration,
) -> std::collections::BTreeMap<[u8; 6], std::net::Ipv4Addr> {
    use dhcproto::v4::MessageType as T;
    let raw = common::raw::RawEth::open_rx(g, "eth0");
    let mut st: std::collections::BTreeMap<[u8; 6], Dhcp> =
        macs.iter().map(|m| (*m, Dhcp::Discovering(None))).collect();
    let retry = Duration::from_secs(1);
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline && st.values().any(|s| !matches!(s, Dhcp::Bound(_))) {
        let now = Instant::now();
        for (mac, s) in st.iter_mut() {
            let due = match *s {
                Dhcp::Discovering(at) => at.is_none_or(|t| now - t >= retry),
                Dhcp::Requesting(_, t) => now - t >= retry,
                Dhcp::Bound(_) => false,
            };
            if due {
                raw.send_retry(&dhcp_msg(*mac, T::Discover, None))
                    .expect("send");
                *s = Dhcp::Discovering(Some(now));
            }
        }
        let until = Instant::now() + Duration::from_millis(100);
        while Instant::now() < until {
            let Some(f) = raw.recv(20) else { continue };
            let Some((t, mac, ip, server)) = dhcp_reply(&f) else {
                continue;
            };
            let Some(s) = st.get_mut(&mac) else { continue };
            match (t, *s) {
                (T::Offer, Dhcp::Discovering(_)) => {
                    raw.send_retry(&dhcp_msg(mac, T::Request, Some((ip, server))))
                        .expect("send");
                    *s = Dhcp::Requesting(ip, Instant::now());
                }
                (T::Ack, Dhcp::Requesting(want, _)) if want == ip => *s = Dhcp::Bound(ip),
                (T::Nak, Dhcp::Requesting(..)) => *s = Dhcp::Discovering(None),
                _ => {}
            }
        }
    }
    st.into_iter()
        .filter_map(|(m, s)| match s {
            Dhcp::Bound(ip) => Some((m, ip)),
            _ => None,
        })
        .collect()
}

#[test]
fn two_hundred_guests_on_three_nodes_allocate_at_once_and_never_share_an_address() {
    if !require_root(
        "two_hundred_guests_on_three_nodes_allocate_at_once_and_never_share_an_address",
    ) {
        return;
    }
    const TOTAL: usize = 200;
    let lab = Lab::new(3);
    let e = etcd(&lab);
    // Many MACs behind each guest port (no port security), in a /23: room for the 200 and
    // every node's spare claims.
    let d: Vec<Daemon> = (0..3)
        .map(|i| {
            let c = config(&e, i, &[&lab.guests[i]], 5)
                .replace("10.70.0.0/24", "10.70.0.0/23")
                .replace(
                    "ipv6 = \"off\"\n",
                    "ipv6 = \"off\"\nport_security = false\n",
                );
            Daemon::start_in(&lab.hosts[i], &c)
        })
        .collect();
    let all: Vec<&Daemon> = d.iter().collect();
    wait_for("the three nodes see each other", 10, || all_members(&d));
    let macs: Vec<Vec<[u8; 6]>> = (0..3)
        .map(|i| {
            (0..TOTAL)
                .filter(|k| k % 3 == i)
                .map(|k| [0x02, 0xc1, i as u8, 0, (k >> 8) as u8, k as u8])
                .collect()
        })
        .collect();
    let t = Instant::now();
    let bound: Vec<_> = std::thread::scope(|s| {
        let runs: Vec<_> = (0..3)
            .map(|i| {
                let (g, m) = (&lab.guests[i], &macs[i]);
                s.spawn(move || dhcp_many(g, m, Duration::from_secs(60)))
            })
            .collect();
        runs.into_iter()
            .map(|r| r.join().expect("thread"))
            .collect()
    });
    let took = t.elapsed();
    eprintln!("{TOTAL} addresses from three nodes at once in {took:?}");
    let claims: std::collections::BTreeMap<String, String> =
        e.list("/usernet/ipam/web/").into_iter().collect();
    let mut seen = BTreeSet::new();
    for (i, b) in bound.iter().enumerate() {
        assert_eq!(
            b.len(),
            macs[i].len(),
            "h{i} bound {} of {}\n{}",
            b.len(),
            macs[i].len(),
            logs(&all)
        );
        let leases = d[i].ctl(&["leases"]).to_string();
        for ip in b.values() {
            assert!(seen.insert(*ip), "{ip} handed out twice");
            assert!(leases.contains(&format!("\"{ip}\"")), "h{i} leased {ip}");
            assert_eq!(
                claims.get(&format!("/usernet/ipam/web/{ip}")),
                Some(&format!("h{i}")),
                "{ip} is claimed in etcd by h{i}, which handed it out"
            );
        }
    }
    assert_eq!(seen.len(), TOTAL);
    assert!(took < Duration::from_secs(60));
}
