//! `usernet attach`: two namespaces joined to a running `usernet up` reach each other by name;
//! `usernet detach` removes one. Needs root.

mod common;

use std::process::Command;

use common::daemon::{BIN, Daemon};
use common::{Netns, require_root};

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
        let dhcp = ns.exec(&[
            "busybox",
            "udhcpc",
            "-i",
            "eth0",
            "-f",
            "-q",
            "-n",
            "-t",
            "5",
            "-T",
            "1",
            "-s",
            "/bin/true",
        ]);
        assert!(
            dhcp.status.success(),
            "udhcpc: {}",
            String::from_utf8_lossy(&dhcp.stderr)
        );
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
