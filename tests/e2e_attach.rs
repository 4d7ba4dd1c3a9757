//! `usernet attach`: two namespaces joined to a running `usernet up` reach each other by name;
//! `usernet detach` removes one. Needs root.

mod common;

use std::process::Command;

use common::daemon::{BIN, Daemon};
use common::{Httpd, Netns, free_port, http_get, require_root};

/// `/etc/netns/NAME/resolv.conf` (bind-mounted by `ip netns exec`), removed on drop.
struct Resolv(std::path::PathBuf);

impl Resolv {
    fn new(ns: &Netns, server: &str) -> Resolv {
        let dir = std::path::PathBuf::from(format!("/etc/netns/{}", ns.name));
        std::fs::create_dir_all(&dir).expect("mkdir /etc/netns/NAME");
        std::fs::write(
            dir.join("resolv.conf"),
            format!("nameserver {server}\nsearch usernet\n"),
        )
        .expect("resolv.conf");
        Resolv(dir)
    }
}

impl Drop for Resolv {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn cli(d: &Daemon, args: &[&str]) -> std::process::Output {
    Command::new("timeout")
        .arg("20")
        .arg(BIN)
        .args(args)
        .arg("--socket")
        .arg(d.sock())
        .output()
        .expect("run usernet")
}

#[test]
fn attach_two_namespaces_reach_each_other_by_name() {
    if !require_root("attach_two_namespaces_reach_each_other_by_name") {
        return;
    }
    let a = Netns::new("aa");
    let b = Netns::new("ab");
    let d = Daemon::start(
        "[[network]]\nname = \"net0\"\nsubnet = \"10.79.0.0/24\"\nipv6 = \"off\"\ndns_upstreams = [\"127.0.0.1:9\"]\n",
    );
    for (ns, name) in [(&a, "alpha"), (&b, "beta")] {
        let path = ns.path();
        let out = cli(
            &d,
            &[
                "attach",
                "--netns",
                path.to_str().expect("utf-8"),
                "--name",
                name,
                "--network",
                "net0",
            ],
        );
        assert!(
            out.status.success(),
            "attach: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        ns.ip(&["link", "set", "lo", "up"]);
        ns.udhcpc("/bin/true", &[], String::new);
    }
    // udhcpc ran with a no-op script: configure the leased addresses from `ctl leases`.
    let leases = d.ctl(&["leases"]);
    let rows = leases.as_array().expect("array");
    assert_eq!(rows.len(), 2, "{leases}");
    for (ns, port) in [(&a, "alpha"), (&b, "beta")] {
        let mac = ns.exec_ok(&["cat", "/sys/class/net/eth0/address"]);
        let ip = rows
            .iter()
            .find(|l| l["mac"] == mac.trim())
            .and_then(|l| l["ip"].as_str())
            .unwrap_or_else(|| panic!("no lease for {port} ({mac})"))
            .to_string();
        ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
    }
    let _ra = Resolv::new(&a, "10.79.0.1");
    let _rb = Resolv::new(&b, "10.79.0.1");
    // Port names are DNS names: alpha pings beta by name and the other way.
    assert!(
        a.exec(&["ping", "-c", "1", "-W", "2", "beta.usernet"])
            .status
            .success(),
        "alpha -> beta.usernet\n{}",
        d.log()
    );
    assert!(
        b.exec(&["ping", "-c", "1", "-W", "2", "alpha"])
            .status
            .success(),
        "beta -> alpha (search domain)"
    );

    let out = cli(&d, &["detach", "--name", "beta"]);
    assert!(
        out.status.success(),
        "detach: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!d.port_names().contains(&"beta".to_string()));
    assert!(
        !b.exec(&["ip", "link", "show", "eth0"]).status.success(),
        "TAP gone after detach"
    );
}

/// Issue 13: `attach --ip` configures the container itself (no DHCP client in it): address,
/// default route and `lo` up; its name is in DNS and a forward reaches it before it has sent a
/// single frame; `--ip auto` takes an address from the pool (a reservation `ctl leases` shows,
/// given back on detach); taken and reserved addresses are refused naming the field.
#[test]
fn attach_ip_configures_the_namespace_and_is_reachable_at_once() {
    if !require_root("attach_ip_configures_the_namespace_and_is_reachable_at_once") {
        return;
    }
    let web = Netns::new("aw");
    let cl = Netns::new("ac");
    let other = Netns::new("ao");
    let d = Daemon::start(
        "[[network]]\nname = \"net0\"\nsubnet = \"10.81.0.0/24\"\nipv6 = \"fd00:81::/64\"\ndns_upstreams = [\"127.0.0.1:9\"]\n",
    );
    let attach = |ns: &Netns, name: &str, extra: &[&str]| {
        let path = ns.path();
        let mut args = vec![
            "attach",
            "--netns",
            path.to_str().expect("utf-8"),
            "--name",
            name,
        ];
        args.extend_from_slice(extra);
        cli(&d, &args)
    };
    let out = attach(&web, "web", &["--ip", "10.81.0.50/24"]);
    assert!(
        out.status.success(),
        "attach --ip: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("address 10.81.0.50/24"));
    // The namespace is configured: address, default route, lo up.
    let addrs = web.exec_ok(&["ip", "-o", "-4", "addr", "show", "dev", "eth0"]);
    assert!(addrs.contains("10.81.0.50/24"), "{addrs}");
    let routes = web.exec_ok(&["ip", "route", "show", "default"]);
    assert!(routes.contains("via 10.81.0.1 dev eth0"), "{routes}");
    let lo = web.exec_ok(&["ip", "-o", "link", "show", "lo"]);
    assert!(lo.contains("UP"), "lo is up: {lo}");
    // Named at once, before the namespace sent anything.
    let dns = d.ctl(&["dns", "ls"]);
    assert!(
        dns.as_array()
            .into_iter()
            .flatten()
            .any(|r| r["name"].as_str().is_some_and(|n| n.starts_with("web"))
                && r["addr"] == "10.81.0.50"),
        "web in DNS: {dns}"
    );
    // A server that only listens, published: the first connection works.
    let _httpd = Httpd::start(&web, "index.html", "hello from web\n");
    let hp = free_port();
    let spec = format!("127.0.0.1:{hp}:80");
    d.ctl(&["forward", "add", "--network", "net0", &spec, "web"]);
    // Only httpd's start may take a moment (it is not listening yet).
    let body = http_get(hp, "/index.html", 50);
    assert_eq!(
        body,
        "hello from web\n",
        "forward to a silent guest\n{}",
        d.log()
    );

    // `auto`: an address from the pool, reserved; IPv6 SLAAC address of the prefix.
    let out = attach(&cl, "client", &["--ip", "auto"]);
    assert!(
        out.status.success(),
        "attach --ip auto: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let leases = d.ctl(&["leases"]);
    let mac = cl.exec_ok(&["cat", "/sys/class/net/eth0/address"]);
    let lease = leases
        .as_array()
        .into_iter()
        .flatten()
        .find(|l| l["mac"] == mac.trim())
        .unwrap_or_else(|| panic!("a reservation for {mac}: {leases}"))
        .clone();
    assert_eq!(lease["state"], "reserved", "{lease}");
    let ip = lease["ip"].as_str().expect("ip").to_string();
    let addrs = cl.exec_ok(&["ip", "-o", "addr", "show", "dev", "eth0"]);
    assert!(addrs.contains(&format!("{ip}/24")), "{addrs}");
    assert!(addrs.contains("fd00:81::"), "SLAAC-style address: {addrs}");
    assert!(
        cl.exec(&["ping", "-c", "1", "-W", "2", "10.81.0.50"])
            .status
            .success(),
        "client -> web"
    );
    assert!(
        cl.exec(&["ping", "-6", "-c", "1", "-W", "2", "fd00:81::1"])
            .status
            .success(),
        "client -> gateway over IPv6 at once (no DAD wait)"
    );
    // Refusals name the field.
    let out = attach(&other, "thief", &["--ip", "10.81.0.50/24"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("ips[0]") && err.contains("in use"),
        "{err}"
    );
    let out = attach(&other, "thief", &["--ip", "10.81.0.1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("gateway's address"),
        "{err}"
    );
    assert!(
        !other.exec(&["ip", "link", "show", "eth0"]).status.success(),
        "a refused attach leaves nothing behind"
    );
    // Detach gives the reservation back.
    let out = cli(&d, &["detach", "--name", "client"]);
    assert!(out.status.success());
    let mut gone = false;
    for _ in 0..40 {
        let leases = d.ctl(&["leases"]);
        if !leases.to_string().contains(&ip) {
            gone = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(gone, "reservation of {ip} given back on detach");
}
