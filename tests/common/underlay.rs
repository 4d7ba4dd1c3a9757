//! "Hosts" on one underlay, for multi-host tests (VXLAN, cluster): network namespaces joined by
//! veths to a Linux bridge in a namespace of its own (172.31.0.0/24, host `i` at
//! `172.31.0.{i+1}`), each host with a guest namespace; and what those tests share: pings
//! with retries, waiting for a condition, a DHCP client run in a guest.

use std::time::{Duration, Instant};

use super::daemon::Daemon;
use super::{Netns, Veth, ip};

/// Hosts on one underlay, each with a guest namespace.
pub struct Lab {
    pub hosts: Vec<Netns>,
    pub guests: Vec<Netns>,
    // Both ends of each veth live in namespaces: deleting those removes the pairs.
    _veths: Vec<Veth>,
    /// The underlay's namespace (bridge `br0`).
    pub ul: Netns,
}

/// Host `i`'s underlay address.
pub fn underlay_ip(i: usize) -> String {
    format!("172.31.0.{}", i + 1)
}

impl Lab {
    /// An underlay with `n` hosts.
    pub fn new(n: usize) -> Lab {
        let ul = Netns::new("vxu");
        ul.ip(&["link", "add", "br0", "type", "bridge"]);
        ul.ip(&["link", "set", "br0", "up"]);
        ul.ip(&["link", "set", "lo", "up"]);
        let mut lab = Lab {
            hosts: Vec::new(),
            guests: Vec::new(),
            _veths: Vec::new(),
            ul,
        };
        for _ in 0..n {
            lab.add_host();
        }
        lab
    }

    /// Adds a host (at `underlay_ip(index)`) with its guest; returns its index.
    pub fn add_host(&mut self) -> usize {
        let i = self.hosts.len();
        let h = Netns::new("vxh");
        let v = Veth::new("vxv");
        ip(&["link", "set", &v.a, "netns", &self.ul.name]);
        self.ul.ip(&["link", "set", &v.a, "master", "br0"]);
        self.ul.ip(&["link", "set", &v.a, "up"]);
        v.move_b(&h, Some("ul0"));
        h.ip(&[
            "addr",
            "add",
            &format!("{}/24", underlay_ip(i)),
            "dev",
            "ul0",
        ]);
        h.ip(&["link", "set", "lo", "up"]);
        let g = Netns::new("vxg");
        quiet(&g);
        self.hosts.push(h);
        self.guests.push(g);
        self._veths.push(v);
        i
    }
}

/// No IPv6 in a guest: its kernel then sends nothing unprompted (the frame counts stay exact).
pub fn quiet(g: &Netns) {
    for k in ["all", "default"] {
        g.exec_ok(&[
            "sysctl",
            "-qw",
            &format!("net.ipv6.conf.{k}.disable_ipv6=1"),
        ]);
    }
}

/// Two pings from `from` to `to`; true if answered.
pub fn ping(from: &Netns, to: &str) -> bool {
    from.exec(&["ping", "-c", "2", "-i", "0.2", "-W", "2", to])
        .status
        .success()
}

/// Pings until one succeeds (the first ARP may race the ports coming up), up to 5 s.
pub fn ping_ok(from: &Netns, to: &str, d: &[&Daemon]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ping(from, to) {
        assert!(
            Instant::now() < deadline,
            "ping {to} from {} failed\n{}",
            from.name,
            d.iter()
                .map(|d| d.log())
                .collect::<Vec<_>>()
                .join("\n---\n")
        );
    }
}

/// Polls `f` every 100 ms until true; panics naming `what` after `secs` seconds.
pub fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// busybox `udhcpc` runs in guests ([`Netns::udhcpc_output`]), each with a hook that
/// configures the lease's address and records `IP SERVERID MTU` in a file of its own.
pub struct Udhcpc {
    dir: tempfile::TempDir,
}

impl Udhcpc {
    pub fn new() -> Udhcpc {
        Udhcpc {
            dir: tempfile::tempdir().expect("tmp"),
        }
    }

    /// Runs udhcpc once on `eth0` of `g`; the lease line (`IP SERVERID MTU`) recorded under
    /// the name `tag`, or the client's error output.
    pub fn run(&self, g: &Netns, tag: &str) -> Result<String, String> {
        self.run_with(g, tag, &[])
    }

    /// Like [`Self::run`], with more udhcpc arguments (`-x hostname:NAME`).
    pub fn run_with(&self, g: &Netns, tag: &str, extra: &[&str]) -> Result<String, String> {
        use std::os::unix::fs::PermissionsExt;
        let lease = self.dir.path().join(tag);
        let script = self.dir.path().join(format!("{tag}.sh"));
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\ncase \"$1\" in\n  bound|renew)\n    ip addr flush dev \"$interface\"\n    \
                 ip addr add \"$ip/$mask\" dev \"$interface\"\n    \
                 echo \"$ip $serverid $mtu\" > {}\n    ;;\nesac\nexit 0\n",
                lease.display()
            ),
        )
        .expect("script");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let mut args = vec!["-O", "mtu"];
        args.extend_from_slice(extra);
        let out = g.udhcpc_output(&script.display().to_string(), &args);
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        std::fs::read_to_string(&lease).map_err(|e| e.to_string())
    }
}
