//! Shared helpers for tests that need root and network namespaces.
//!
//! # Theory of operation
//!
//! Privileged tests call [`require_root`] first: without root (or without a working
//! `ip netns`), they print a `SKIP` line and return, unless `USERNET_REQUIRE_PRIV=1` is set, in
//! which case they fail loudly (CI runs privileged and must not silently skip).
//!
//! Everything a test creates in the kernel is owned by an RAII guard ([`Netns`], [`Veth`],
//! [`Child`]) whose `Drop` removes it, so a panicking test still cleans up. Names come from
//! [`unique`], so tests running in parallel (and in several test binaries) never collide, and
//! they fit the 15-byte interface name limit. Every external command is bounded by `timeout`.
#![allow(dead_code)]

pub mod daemon;
pub mod dns;
pub mod etcd;
pub mod events;
pub mod packets;
pub mod qemu;
pub mod raw;
pub mod slirp;
pub mod storm;
pub mod underlay;

use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// Seconds any external command may run before `timeout` kills it.
const CMD_TIMEOUT: &str = "20";

/// Deterministic pseudo-random bytes (xorshift64 from `seed`) for transfers whose every byte is
/// checked: a lost, repeated or reordered segment shows.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// `dnsmasq ARGS` in the foreground, as root, logging nowhere, without /etc/hosts,
/// /etc/resolv.conf or polling (so it never reads the host's resolver), inside `ns` if given
/// (`ip netns exec` execs it: the pid is dnsmasq's); killed when the guard drops.
pub fn dnsmasq(ns: Option<&Netns>, args: &[&str]) -> Child {
    let mut c = match ns {
        Some(ns) => ns.cmd(&["dnsmasq"]),
        None => Command::new("dnsmasq"),
    };
    c.args([
        "--keep-in-foreground",
        "--no-resolv",
        "--no-hosts",
        "--no-poll",
        "--user=root",
        "--log-facility=-",
    ])
    .args(args)
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    Child(c.spawn().expect("dnsmasq"))
}

/// A field of `/proc/PID/status` (`key` with its colon, e.g. `"Seccomp:"`), trimmed; empty if
/// the process has no such line.
pub fn status_field(pid: u32, key: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find(|l| l.starts_with(key))
        .map(|l| l[key.len()..].trim().to_string())
        .unwrap_or_default()
}

/// True if the test can use root and network namespaces. Otherwise prints
/// `SKIP {test}: ...` and returns false, or panics if `USERNET_REQUIRE_PRIV=1`.
pub fn require_root(test: &str) -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    let ok = *OK.get_or_init(|| {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        root && Command::new("ip")
            .args(["netns", "list"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
            && std::path::Path::new("/dev/net/tun").exists()
    });
    if ok {
        return true;
    }
    if std::env::var("USERNET_REQUIRE_PRIV").as_deref() == Ok("1") {
        panic!(
            "{test}: needs root, /dev/net/tun and `ip netns`, and USERNET_REQUIRE_PRIV=1 forbids skipping"
        );
    }
    eprintln!("SKIP {test}: needs root and network namespaces");
    false
}

/// A short name unique to this process and call: `prefix` + 4 hex digits of the pid + a
/// counter. Keep `prefix` to 2–4 characters so the result fits an interface name (15 bytes).
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let name = format!("{prefix}{:04x}{n:x}", std::process::id() & 0xffff);
    assert!(
        name.len() <= 15,
        "unique name {name:?} too long for an interface"
    );
    name
}

/// Runs `ip args...` (bounded by a timeout) and returns its output.
pub fn ip_output(args: &[&str]) -> Output {
    Command::new("timeout")
        .arg(CMD_TIMEOUT)
        .arg("ip")
        .args(args)
        .output()
        .expect("running ip")
}

/// Runs `ip args...`, asserting success.
pub fn ip(args: &[&str]) {
    let out = ip_output(args);
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    /// The namespace name (as in `ip netns add NAME`).
    pub name: String,
}

impl Netns {
    /// Creates a namespace named `unique(prefix)`.
    pub fn new(prefix: &str) -> Netns {
        let name = unique(prefix);
        ip(&["netns", "add", &name]);
        Netns { name }
    }

    /// The bind-mounted namespace file, for `setns`.
    pub fn path(&self) -> std::path::PathBuf {
        std::path::PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// Runs `args` inside the namespace (`ip netns exec`), bounded by a timeout.
    pub fn exec(&self, args: &[&str]) -> Output {
        Command::new("timeout")
            .arg(CMD_TIMEOUT)
            .args(["ip", "netns", "exec", &self.name])
            .args(args)
            .output()
            .expect("running ip netns exec")
    }

    /// A command to run inside the namespace (for a background process: spawn it and kill
    /// it in a guard).
    #[allow(dead_code)]
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(args);
        c
    }

    /// Like [`Self::exec`], asserting success; returns stdout.
    pub fn exec_ok(&self, args: &[&str]) -> String {
        let out = self.exec(args);
        assert!(
            out.status.success(),
            "in netns {}: {}: {}",
            self.name,
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// busybox udhcpc once on `eth0` (exits once bound; 5 tries a second apart) with the lease
    /// script `script` and `extra` options; asserts a lease came, printing its output and
    /// `log()` (a daemon's log) if not.
    #[allow(dead_code)]
    pub fn udhcpc(&self, script: &str, extra: &[&str], log: impl Fn() -> String) {
        let out = self.udhcpc_output(script, extra);
        assert!(
            out.status.success(),
            "udhcpc in {}: {}{}\n{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            log()
        );
    }

    /// busybox udhcpc once on `eth0`, as [`Self::udhcpc`], without asserting: its output.
    pub fn udhcpc_output(&self, script: &str, extra: &[&str]) -> Output {
        let mut args = vec![
            "busybox", "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "5", "-T", "1", "-s", script,
        ];
        args.extend_from_slice(extra);
        self.exec(&args)
    }

    /// Runs `ip -n NAME args...`, asserting success.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// Deletes the namespace now (the guard then does nothing).
    pub fn delete(mut self) {
        self.del();
        self.name.clear();
    }

    fn del(&self) {
        if !self.name.is_empty() {
            let _ = ip_output(&["netns", "del", &self.name]);
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.del();
    }
}

/// A veth pair created in the host namespace; deleting `a` on drop removes both ends (wherever
/// `b` has been moved).
#[derive(Debug)]
pub struct Veth {
    /// The end that stays in the host namespace.
    pub a: String,
    /// The peer end.
    pub b: String,
}

impl Veth {
    /// Creates a veth pair with unique names starting with `prefix`, both ends up.
    pub fn new(prefix: &str) -> Veth {
        let a = unique(prefix);
        let b = unique(prefix);
        ip(&["link", "add", &a, "type", "veth", "peer", "name", &b]);
        let v = Veth { a, b };
        ip(&["link", "set", &v.a, "up"]);
        ip(&["link", "set", &v.b, "up"]);
        v
    }

    /// Moves end `b` into `ns` (renamed to `new_name` if given) and brings it up there; returns
    /// its name inside the namespace.
    pub fn move_b(&self, ns: &Netns, new_name: Option<&str>) -> String {
        ip(&["link", "set", &self.b, "netns", &ns.name]);
        let name = match new_name {
            Some(n) => {
                ns.ip(&["link", "set", &self.b, "name", n]);
                n.to_string()
            }
            None => self.b.clone(),
        };
        ns.ip(&["link", "set", &name, "up"]);
        name
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        let _ = ip_output(&["link", "del", &self.a]);
    }
}

/// A child process killed and reaped on drop.
#[derive(Debug)]
pub struct Child(pub std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits up to `ms` milliseconds for `fd` to become readable; true if it did.
pub fn wait_readable(fd: std::os::fd::RawFd, ms: i32) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    rc > 0
}

/// A TCP port free on 127.0.0.1 right now.
#[allow(dead_code)]
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// `curl http://127.0.0.1:PORT/PATH`, retried every 100 ms up to `tries` times until it
/// returns a body (a server just started may not listen yet); the last body, or "".
#[allow(dead_code)]
pub fn http_get(port: u16, path: &str, tries: usize) -> String {
    let mut body = String::new();
    for i in 0..tries.max(1) {
        if i > 0 {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let out = Command::new("curl")
            .args(["-s", "-m", "3", &format!("http://127.0.0.1:{port}{path}")])
            .output()
            .expect("curl");
        body = String::from_utf8_lossy(&out.stdout).into_owned();
        if !body.is_empty() {
            break;
        }
    }
    body
}

/// Stops the process whose pid is in `pidfile` (SIGTERM, then SIGKILL after 5 s) and removes
/// the file: for a daemon a plugin started detached, which the test never spawned itself.
#[allow(dead_code)]
pub fn stop_pidfile(pidfile: &std::path::Path) {
    let Some(pid) = std::fs::read_to_string(pidfile)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    else {
        return;
    };
    // SAFETY: kill(2) on the pid the plugin recorded for the daemon it started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    // SAFETY: signal 0 only checks that the process exists.
    while std::time::Instant::now() < deadline && unsafe { libc::kill(pid, 0) } == 0 {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // SAFETY: as above; SIGKILL if it did not stop in time.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let _ = std::fs::remove_file(pidfile);
}

/// A busybox httpd on port 80 inside a namespace, serving one file from a temp dir; killed on
/// drop. (A server that only listens: it sends nothing until a client comes.)
pub struct Httpd {
    child: std::process::Child,
    _root: tempfile::TempDir,
}

impl Httpd {
    /// Serves `body` as `/NAME` from inside `ns`.
    pub fn start(ns: &Netns, name: &str, body: &str) -> Httpd {
        let root = tempfile::tempdir().expect("tmp");
        std::fs::write(root.path().join(name), body).expect("write");
        let child = ns
            .cmd(&[
                "busybox",
                "httpd",
                "-f",
                "-p",
                "80",
                "-h",
                root.path().to_str().expect("utf-8"),
            ])
            .spawn()
            .expect("httpd");
        Httpd { child, _root: root }
    }

    /// Stops it now.
    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Httpd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
