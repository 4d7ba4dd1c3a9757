//! End-to-end tests of the gateway with real clients in namespaces: busybox udhcpc and ISC
//! dhclient for DHCP, dig for DNS (UDP and TCP, forward and reverse), dnsmasq on loopback as the
//! upstream resolver, the kernel's own SLAAC for IPv6. Need root; nothing leaves the machine
//! (upstreams are dnsmasq instances on 127.0.0.x that the tests start).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::dns::{dig, short, status};
use common::{Child, Netns, require_root};

/// An upstream that is never used (nothing listens on port 9): keeps the host's resolver out.
const NO_UPSTREAM: &str = "127.0.0.1:9";

fn netns_port(net: &str, name: &str, ns: &Netns) -> String {
    format!(
        "[[port]]\nnetwork = \"{net}\"\nname = \"{name}\"\nnetns = \"{}\"\n",
        ns.path().display()
    )
}

fn network(name: &str, subnet: &str, ipv6: &str, extra: &str) -> String {
    format!(
        "[[network]]\nname = \"{name}\"\nsubnet = \"{subnet}\"\nipv6 = \"{ipv6}\"\ndns_upstreams = [\"{NO_UPSTREAM}\"]\n{extra}\n"
    )
}

/// Writes the udhcpc and dhclient hook scripts (address + default route only; they never touch
/// the host's /etc/resolv.conf).
fn scripts(dir: &Path) -> (String, String) {
    let udhcpc = dir.join("udhcpc.sh");
    std::fs::write(
        &udhcpc,
        "#!/bin/sh\ncase \"$1\" in\n  bound|renew)\n    ip addr flush dev \"$interface\"\n    ip addr add \"$ip/$mask\" dev \"$interface\"\n    [ -n \"$router\" ] && ip route replace default via \"$router\" dev \"$interface\"\n    echo \"$ip\" > \"$(dirname \"$0\")/lease-$interface-$$\"\n    ;;\n  deconfig)\n    ip addr flush dev \"$interface\"\n    ;;\nesac\nexit 0\n",
    )
    .expect("write udhcpc script");
    let dhclient = dir.join("dhclient.sh");
    std::fs::write(
        &dhclient,
        "#!/bin/sh\ncase \"$reason\" in\n  BOUND|RENEW|REBIND|REBOOT)\n    ip addr flush dev \"$interface\"\n    ip addr add \"$new_ip_address/$new_subnet_mask\" dev \"$interface\"\n    for r in $new_routers; do ip route replace default via \"$r\" dev \"$interface\"; break; done\n    ;;\nesac\nexit 0\n",
    )
    .expect("write dhclient script");
    for p in [&udhcpc, &dhclient] {
        Command::new("chmod")
            .arg("+x")
            .arg(p)
            .status()
            .expect("chmod");
    }
    (
        udhcpc.to_string_lossy().into_owned(),
        dhclient.to_string_lossy().into_owned(),
    )
}

/// Runs busybox udhcpc once in `ns` (exits once bound), sending `hostname` if given.
fn udhcpc(ns: &Netns, script: &str, hostname: Option<&str>) {
    let h = hostname.map(|n| format!("hostname:{n}"));
    let extra: Vec<&str> = h.iter().flat_map(|h| ["-x", h.as_str()]).collect();
    ns.udhcpc(script, &extra, String::new);
}

/// Runs ISC dhclient once in `ns`; it stays as a daemon, stopped when the guard drops.
struct Dhclient {
    pidfile: std::path::PathBuf,
    lease: std::path::PathBuf,
    script: String,
}

impl Dhclient {
    fn run(ns: &Netns, dir: &Path, script: &str) -> Dhclient {
        let pidfile = dir.join(format!("dhclient-{}.pid", ns.name));
        let lease = dir.join(format!("dhclient-{}.leases", ns.name));
        let out = ns.exec(&[
            "dhclient",
            "-1",
            "-4",
            "-sf",
            script,
            "-pf",
            &pidfile.to_string_lossy(),
            "-lf",
            &lease.to_string_lossy(),
            "eth0",
        ]);
        let d = Dhclient {
            pidfile,
            lease,
            script: script.to_string(),
        };
        assert!(
            out.status.success(),
            "dhclient: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        d
    }
}

impl Dhclient {
    /// `dhclient -r`: sends DHCPRELEASE and stops the running dhclient.
    fn release(&self, ns: &Netns) {
        let out = ns.exec(&[
            "dhclient",
            "-r",
            "-sf",
            &self.script,
            "-pf",
            &self.pidfile.to_string_lossy(),
            "-lf",
            &self.lease.to_string_lossy(),
            "eth0",
        ]);
        assert!(
            out.status.success(),
            "dhclient -r: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Dhclient {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.pidfile)
            && let Ok(pid) = pid.trim().parse::<i32>()
        {
            // SAFETY: kill(2) on the dhclient this test started (pid from its pidfile).
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }
}

fn addr4(ns: &Netns) -> Option<String> {
    let out = ns.exec_ok(&["ip", "-4", "-o", "addr", "show", "dev", "eth0"]);
    out.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .map(|a| a.split('/').next().unwrap_or("").to_string())
}

#[test]
fn dhcp_real_clients_get_leases() {
    if !require_root("dhcp_real_clients_get_leases") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (udhcpc_sh, dhclient_sh) = scripts(dir.path());
    let a = Netns::new("da");
    let b = Netns::new("db");
    let c = Netns::new("dc");
    let d = Netns::new("dd");
    let daemon = Daemon::start(&format!(
        "{}{}{}{}{}",
        network(
            "n",
            "10.66.0.0/24",
            "off",
            "static_leases = [{ mac = \"02:aa:00:00:00:0c\", ip = \"10.66.0.77\", hostname = \"fixed\" }]"
        ),
        netns_port("n", "a", &a),
        netns_port("n", "b", &b),
        netns_port("n", "c", &c),
        netns_port("n", "d", &d),
    ));
    for ns in [&a, &b, &c, &d] {
        ns.ip(&["link", "set", "lo", "up"]);
    }

    // busybox udhcpc, with a hostname.
    udhcpc(&a, &udhcpc_sh, Some("alpha"));
    let a_ip = addr4(&a).expect("a has an address");
    assert!(a_ip.starts_with("10.66.0."), "{a_ip}");
    let route = a.exec_ok(&["ip", "route", "show", "default"]);
    assert!(route.contains("via 10.66.0.1"), "default route: {route}");
    assert!(
        a.exec(&["ping", "-c", "1", "-W", "2", "10.66.0.1"])
            .status
            .success(),
        "gateway answers ping\n{}",
        daemon.log()
    );

    // ISC dhclient gets a different address.
    let dh = Dhclient::run(&b, dir.path(), &dhclient_sh);
    let b_ip = addr4(&b).expect("b has an address");
    assert!(
        b_ip.starts_with("10.66.0.") && b_ip != a_ip,
        "a {a_ip}, b {b_ip}"
    );

    // A static lease by MAC.
    c.ip(&["link", "set", "eth0", "address", "02:aa:00:00:00:0c"]);
    udhcpc(&c, &udhcpc_sh, None);
    assert_eq!(addr4(&c).as_deref(), Some("10.66.0.77"));

    // `ctl leases` lists them, with the hostname.
    let leases = daemon.ctl(&["leases"]);
    let rows = leases.as_array().expect("array");
    let find = |ip: &str| rows.iter().find(|l| l["ip"] == ip).cloned();
    assert_eq!(find(&a_ip).expect("a's lease")["hostname"], "alpha");
    assert!(find(&b_ip).is_some(), "b's lease in {leases}");
    assert_eq!(find("10.66.0.77").expect("static")["is_static"], true);

    // The same MAC after a client restart gets the same address.
    a.ip(&["addr", "flush", "dev", "eth0"]);
    udhcpc(&a, &udhcpc_sh, Some("alpha"));
    assert_eq!(
        addr4(&a).as_deref(),
        Some(a_ip.as_str()),
        "same MAC, same address"
    );
    // A client that releases its lease (dhclient -r: DHCPRELEASE) frees the address for the
    // next new client.
    dh.release(&b);
    udhcpc(&d, &udhcpc_sh, None);
    assert_eq!(
        addr4(&d).as_deref(),
        Some(b_ip.as_str()),
        "released address reused\n{}\n{}",
        daemon.ctl(&["leases"]),
        daemon.ctl(&["gateway"])
    );

    let gw = daemon.ctl(&["gateway"]);
    let dhcp = &gw[0]["dhcp"];
    assert!(dhcp["ack"].as_u64().unwrap_or(0) >= 5, "{gw}");
    assert_eq!(dhcp["release"], 1, "{gw}");
}

#[test]
fn dns_names_reverse_tcp_and_isolation() {
    if !require_root("dns_names_reverse_tcp_and_isolation") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (udhcpc_sh, _) = scripts(dir.path());
    let a = Netns::new("na");
    let b = Netns::new("nb");
    let x = Netns::new("nx");
    let daemon = Daemon::start(&format!(
        "{}{}{}{}{}",
        network("n", "10.67.0.0/24", "off", ""),
        network("other", "10.68.0.0/24", "off", ""),
        netns_port("n", "web", &a),
        netns_port("n", "b", &b),
        netns_port("other", "secret", &x),
    ));
    udhcpc(&a, &udhcpc_sh, Some("alpha"));
    udhcpc(&b, &udhcpc_sh, None);
    udhcpc(&x, &udhcpc_sh, Some("hidden"));
    let a_ip = addr4(&a).expect("a address");

    // The DHCP hostname and the port name both resolve, from another endpoint.
    let gw = "@10.67.0.1";
    assert_eq!(short(&b, &[gw, "alpha.usernet"]), a_ip, "{}", daemon.log());
    assert_eq!(short(&b, &[gw, "web.usernet"]), a_ip);
    assert_eq!(short(&b, &[gw, "WEB.usernet"]), a_ip, "case-insensitive");
    // Reverse.
    let ptr = short(&b, &[gw, "-x", &a_ip]);
    assert!(
        ptr.contains("alpha.usernet.") || ptr.contains("web.usernet."),
        "PTR {ptr}"
    );
    // Unknown name in the domain.
    assert_eq!(status(&b, &[gw, "nosuch.usernet"]), "NXDOMAIN");
    // Over TCP too.
    assert_eq!(short(&b, &[gw, "+tcp", "alpha.usernet"]), a_ip);
    assert_eq!(status(&b, &[gw, "+tcp", "nosuch.usernet"]), "NXDOMAIN");
    // A name of another network is not visible.
    assert_eq!(status(&b, &[gw, "hidden.usernet"]), "NXDOMAIN");
    assert_eq!(status(&b, &[gw, "secret.usernet"]), "NXDOMAIN");
    assert!(short(&x, &["@10.68.0.1", "secret.usernet"]).starts_with("10.68.0."));

    // Records at run time through ctl.
    daemon.ctl(&["dns", "add", "--network", "n", "db", "10.67.0.200"]);
    assert_eq!(short(&b, &[gw, "db.usernet"]), "10.67.0.200");
    let ls = daemon.ctl(&["dns", "ls", "--network", "n"]);
    assert!(ls.to_string().contains("db.usernet"), "{ls}");
    daemon.ctl(&["dns", "rm", "--network", "n", "db"]);
    assert_eq!(status(&b, &[gw, "db.usernet"]), "NXDOMAIN");
}

/// A dnsmasq answering `*.example.test` with `answer`, on `addr`:53; stopped on drop.
fn dnsmasq(addr: &str, answer: &str) -> Child {
    common::dns::upstream(addr, "example.test", answer)
}

#[test]
fn dns_forwarding_with_failover() {
    if !require_root("dns_forwarding_with_failover") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (udhcpc_sh, _) = scripts(dir.path());
    let first = dnsmasq("127.0.0.61", "10.1.1.1");
    let second = dnsmasq("127.0.0.62", "10.2.2.2");
    let a = Netns::new("fa");
    let daemon = Daemon::start(&format!(
        "[[network]]\nname = \"n\"\nsubnet = \"10.69.0.0/24\"\nipv6 = \"off\"\ndns_upstreams = [\"127.0.0.61\", \"127.0.0.62\"]\n{}",
        netns_port("n", "a", &a),
    ));
    udhcpc(&a, &udhcpc_sh, None);
    let gw = "@10.69.0.1";
    assert_eq!(
        short(&a, &[gw, "one.example.test"]),
        "10.1.1.1",
        "{}\n{}",
        dig(&a, &[gw, "one.example.test"]),
        daemon.log()
    );
    // The first upstream goes away: the second answers.
    drop(first);
    let t = Instant::now();
    assert_eq!(short(&a, &[gw, "two.example.test"]), "10.2.2.2");
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "failover took {:?}",
        t.elapsed()
    );
    // Cached answers survive the upstreams.
    drop(second);
    assert_eq!(short(&a, &[gw, "one.example.test"]), "10.1.1.1");
    assert_eq!(status(&a, &[gw, "three.example.test"]), "SERVFAIL");
}

#[test]
fn ipv6_slaac_and_ping_gateway() {
    if !require_root("ipv6_slaac_and_ping_gateway") {
        return;
    }
    let a = Netns::new("sa");
    let daemon = Daemon::start(&format!(
        "{}{}",
        network("n", "10.70.0.0/24", "fd70::/64", ""),
        netns_port("n", "a", &a),
    ));
    a.exec_ok(&["sysctl", "-qw", "net.ipv6.conf.eth0.accept_ra=1"]);
    // Nudge: the TAP came up before the namespace was ready for RAs; re-solicit.
    a.ip(&["link", "set", "eth0", "down"]);
    a.ip(&["link", "set", "eth0", "up"]);
    let deadline = Instant::now() + Duration::from_secs(15);
    // Both come from the RA: a global address (DAD done) and a default route via the gateway's
    // link-local address. Wait for the two (the kernel installs them in steps).
    let (addr, route) = loop {
        let out = a.exec_ok(&[
            "ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "global",
        ]);
        let route = a.exec_ok(&["ip", "-6", "route", "show", "default"]);
        if let Some(w) = out.split_whitespace().skip_while(|w| *w != "inet6").nth(1)
            && !out.contains("tentative")
            && route.contains("via fe80::")
        {
            break (w.to_string(), route);
        }
        assert!(
            Instant::now() < deadline,
            "no SLAAC address and default route from RA: {out:?} {route:?}\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(addr.starts_with("fd70::"), "{addr}");
    assert!(route.contains("dev eth0"), "default route from RA: {route}");
    assert!(
        a.exec(&["ping", "-6", "-c", "1", "-W", "2", "fd70::1"])
            .status
            .success(),
        "ping ULA gateway"
    );
    let gw = daemon.ctl(&["gateway"]);
    let ll = gw[0]["link_local"]
        .as_str()
        .expect("link-local")
        .to_string();
    assert!(
        a.exec(&["ping", "-6", "-c", "1", "-W", "2", &format!("{ll}%eth0")])
            .status
            .success(),
        "ping link-local gateway {ll}"
    );
}

#[test]
fn network_with_gateway_added_at_run_time() {
    if !require_root("network_with_gateway_added_at_run_time") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (udhcpc_sh, _) = scripts(dir.path());
    let a = Netns::new("ra");
    let daemon = Daemon::start("");
    daemon.ctl(&[
        "network",
        "add",
        "late",
        "--subnet",
        "10.71.0.0/24",
        "--ipv6",
        "off",
        "--dns",
        NO_UPSTREAM,
        "--domain",
        "late.test",
    ]);
    let path = a.path();
    daemon.ctl(&[
        "port",
        "add",
        "--network",
        "late",
        "--name",
        "a",
        "--netns",
        path.to_str().expect("utf-8"),
    ]);
    udhcpc(&a, &udhcpc_sh, Some("alpha"));
    let ip = addr4(&a).expect("lease from the run-time gateway");
    assert!(ip.starts_with("10.71.0."), "{ip}");
    assert_eq!(short(&a, &["@10.71.0.1", "alpha.late.test"]), ip);
    // A bad gateway setting is refused, naming the key, and creates nothing.
    let out = daemon.ctl_raw(&["network", "add", "bad", "--subnet", "10.72.0.0/31"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("subnet"));
    let nets = daemon.ctl(&["networks"]);
    assert!(!nets.to_string().contains("\"bad\""), "{nets}");
}
