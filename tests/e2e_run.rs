//! `usernet run` as an unprivileged user created by the test: the command gets a network in its
//! own user + network namespace, reaches a loopback server through NAT by the name
//! `host.usernet`, and serves a port published on the host with `-p`. Needs root (to create the
//! user and open /dev/net/tun to it). Also `usernet run --busy-poll-us` (as root).

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::daemon::BIN;
use common::{Child, require_root};

/// A user made with `useradd`, removed on drop.
struct User(String);

impl User {
    fn new() -> User {
        let name = common::unique("unr");
        let st = Command::new("useradd")
            .args(["--no-create-home", "--shell", "/bin/sh", &name])
            .status()
            .expect("useradd");
        assert!(st.success(), "useradd {name}");
        User(name)
    }
}

impl Drop for User {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.0).status();
    }
}

/// /dev/net/tun opened to everyone (as distributions ship it), restored on drop.
struct TunMode(u32);

impl TunMode {
    fn open() -> TunMode {
        let old = std::fs::metadata("/dev/net/tun")
            .expect("tun")
            .permissions()
            .mode()
            & 0o7777;
        std::fs::set_permissions("/dev/net/tun", std::fs::Permissions::from_mode(0o666))
            .expect("chmod tun");
        TunMode(old)
    }
}

impl Drop for TunMode {
    fn drop(&mut self) {
        let _ = std::fs::set_permissions("/dev/net/tun", std::fs::Permissions::from_mode(self.0));
    }
}

fn userns_allowed() -> bool {
    Command::new("su")
        .args(["nobody", "-s", "/bin/sh", "-c", "unshare -Urn true"])
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn rootless_run_nat_dns_and_publish() {
    if !require_root("rootless_run_nat_dns_and_publish") {
        return;
    }
    if !userns_allowed() {
        eprintln!(
            "SKIP rootless_run_nat_dns_and_publish: the kernel forbids unprivileged user namespaces"
        );
        return;
    }
    let _tun = TunMode::open();
    let user = User::new();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let bin = dir.path().join("usernet");
    std::fs::copy(BIN, &bin).expect("copy binary");
    std::fs::create_dir(dir.path().join("www")).expect("www");
    std::fs::write(dir.path().join("www/index.html"), "served from inside").expect("page");

    // A loopback server on the host.
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for c in l.incoming().take(2).flatten() {
            let mut c = c;
            let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = [0u8; 2048];
            let _ = c.read(&mut buf);
            let _ = c.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 12\r\n\r\nhello rootle");
        }
    });
    let publish = TcpListener::bind("127.0.0.1:0")
        .expect("free port")
        .local_addr()
        .expect("a")
        .port();
    let out = dir.path().join("fetched");
    let script = format!(
        "curl -sS --max-time 5 http://host.usernet:{port}/ > {out} 2>&1; \
         busybox httpd -f -p 8000 -h {www} & sleep 4; kill $!",
        out = out.display(),
        www = dir.path().join("www").display()
    );
    let mut child = Child(
        Command::new("su")
            .args([&user.0, "-s", "/bin/sh", "-c"])
            .arg(format!(
                "{} run --dns 127.0.0.1:9 -p 127.0.0.1:{publish}:8000 -- sh -c '{script}'",
                bin.display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("su usernet run"),
    );
    // From the host, through the published port, to the server the command started.
    let deadline = Instant::now() + Duration::from_secs(10);
    let page = loop {
        if let Ok(mut c) = TcpStream::connect(("127.0.0.1", publish)) {
            let _ = c.set_read_timeout(Some(Duration::from_secs(3)));
            let _ = c.write_all(b"GET /index.html HTTP/1.0\r\n\r\n");
            let mut s = String::new();
            let _ = c.read_to_string(&mut s);
            if s.contains("served from inside") {
                break s;
            }
        }
        assert!(
            Instant::now() < deadline,
            "published port never served the page"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(page.contains("200"), "{page}");
    let mut err = String::new();
    if let Some(mut e) = child.0.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let status = child.0.wait().expect("usernet run");
    assert!(status.success(), "usernet run failed: {err}");
    let fetched = std::fs::read_to_string(&out).unwrap_or_default();
    assert_eq!(fetched, "hello rootle", "NAT fetch by name from inside");
}

#[test]
fn run_with_busy_polling_answers_and_refuses_a_bad_window() {
    if !require_root("run_with_busy_polling_answers_and_refuses_a_bad_window") {
        return;
    }
    // The command pings the gateway through a busy-polling engine.
    let out = Command::new(BIN)
        .args(["run", "--busy-poll-us", "500", "--dns", "127.0.0.1:9", "--"])
        .args(["ping", "-c", "3", "-i", "0.2", "-W", "2", "10.88.0.1"])
        .stdin(Stdio::null())
        .output()
        .expect("usernet run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("3 received"),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A window above 1 s is refused before anything starts, naming the flag.
    let out = Command::new(BIN)
        .args(["run", "--busy-poll-us", "2000000", "--", "true"])
        .output()
        .expect("usernet run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--busy-poll-us"),
        "{err}"
    );
}

/// Issue 13: the command's address is known up front: its name resolves on the network before
/// the command has sent a single frame (`sleep` sends nothing over IPv4).
#[test]
fn run_name_is_known_before_the_command_talks() {
    if !require_root("run_name_is_known_before_the_command_talks") {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let sock = dir.path().join("run.sock");
    let child = Command::new(BIN)
        .args(["run", "--name", "quiet", "--dns", "127.0.0.1:9", "--socket"])
        .arg(&sock)
        .args(["--", "sleep", "10"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("usernet run");
    let _child = Child(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut dns = String::new();
    while Instant::now() < deadline {
        let out = Command::new(BIN)
            .args(["ctl", "--json", "--socket"])
            .arg(&sock)
            .args(["dns", "ls"])
            .output()
            .expect("ctl");
        if out.status.success() {
            dns = String::from_utf8_lossy(&out.stdout).into_owned();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        dns.contains("quiet.usernet") && dns.contains("10.88.0.100"),
        "the command's name at once: {dns}"
    );
}
