//! slirp4netns drop-in: usernet started exactly as Podman and RootlessKit start slirp4netns, and
//! RootlessKit running a command with usernet in slirp4netns's place. Needs root (RootlessKit
//! runs as a user the test creates).

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::daemon::BIN;
use common::slirp::{api, pipe, wait_ready};
use common::{Child, Netns, require_root};
use serde_json::json;

/// Starts `usernet slirp4netns ARGS` with `fds` placed at descriptors 3, 4, ...
fn start(args: &[&str], fds: &[&OwnedFd]) -> Child {
    let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let mut cmd = Command::new(BIN);
    cmd.arg("slirp4netns")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: only dup2 between fork and exec (async-signal-safe).
    unsafe {
        cmd.pre_exec(move || {
            // Out of the way first (a source may already sit on a target number), then into
            // place; dup2 clears close-on-exec on the copies.
            for (i, fd) in raw.iter().enumerate() {
                if libc::dup2(*fd, 100 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for i in 0..raw.len() as i32 {
                if libc::dup2(100 + i, 3 + i) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    Child(cmd.spawn().expect("usernet slirp4netns"))
}

#[test]
fn podman_style_configure_api_and_exit_fd() {
    if !require_root("podman_style_configure_api_and_exit_fd") {
        return;
    }
    podman_style(&[]);
}

/// The sandbox is usernet's default; `--disable-sandbox` is the opt-out (the forwards added
/// through the API work either way).
#[test]
fn podman_style_without_sandbox() {
    if !require_root("podman_style_without_sandbox") {
        return;
    }
    podman_style(&["--disable-sandbox"]);
}

/// The same with slirp4netns's own flags (the sandbox is on anyway): capabilities dropped but
/// CAP_NET_BIND_SERVICE, seccomp allowlist, no new files, a root holding only /etc and /run.
#[test]
fn podman_style_under_seccomp_sandbox() {
    if !require_root("podman_style_under_seccomp_sandbox") {
        return;
    }
    podman_style(&[
        "--enable-sandbox",
        "--enable-seccomp",
        "--macaddress=02:00:00:ab:cd:ef",
    ]);
}

fn podman_style(extra: &[&str]) {
    let ns = Netns::new("sp");
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("api.sock");
    let (exit_r, exit_w) = pipe();
    let (ready_r, ready_w) = pipe();
    let path = ns.path();
    let mut args = vec![
        "-c",
        "-e",
        "3",
        "-r",
        "4",
        "--api-socket",
        sock.to_str().expect("utf-8"),
        "--netns-type=path",
    ];
    args.extend_from_slice(extra);
    args.extend([path.to_str().expect("utf-8"), "tap0"]);
    let mut child = start(&args, &[&exit_r, &ready_w]);
    drop(exit_r);
    drop(ready_w);
    wait_ready(ready_r);
    // The API socket is private (it adds port forwards).
    let mode = std::fs::metadata(&sock)
        .expect("api socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "api socket mode");
    {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", child.0.id())).expect("status");
        let field = |k: &str| {
            status
                .lines()
                .find(|l| l.starts_with(k))
                .map(|l| l[k.len()..].trim().to_string())
                .unwrap_or_default()
        };
        if extra.contains(&"--disable-sandbox") {
            assert_eq!(field("Seccomp:"), "0", "no seccomp filter\n{status}");
        } else {
            // Sandboxed by default, as pasta is.
            assert_eq!(field("Seccomp:"), "2", "seccomp filter mode\n{status}");
            // --enable-sandbox keeps CAP_NET_BIND_SERVICE, as slirp4netns does.
            let want = if extra.contains(&"--enable-sandbox") {
                "0000000000000400"
            } else {
                "0000000000000000"
            };
            assert_eq!(field("CapEff:"), want, "capabilities dropped");
            assert_eq!(field("NoNewPrivs:"), "1");
        }
    }
    if extra.iter().any(|a| a.starts_with("--macaddress")) {
        let mac = ns.exec_ok(&["cat", "/sys/class/net/tap0/address"]);
        assert_eq!(mac.trim(), "02:00:00:ab:cd:ef");
    }
    // -c: the slirp4netns defaults.
    let addr = ns.exec_ok(&["ip", "-4", "-o", "addr", "show", "tap0"]);
    assert!(addr.contains("10.0.2.100/24"), "{addr}");
    let route = ns.exec_ok(&["ip", "route", "show", "default"]);
    assert!(route.contains("via 10.0.2.2"), "{route}");
    // `lo` is up too, as with slirp4netns (a server in the container binds 127.0.0.1, and
    // Podman's rootlessport connects to it from inside).
    let lo = ns.exec_ok(&["ip", "-o", "link", "show", "lo"]);
    assert!(lo.contains("UP"), "lo: {lo}");
    // NAT to the host's loopback through 10.0.2.2.
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        if let Ok((mut c, _)) = l.accept() {
            let _ = c.write_all(b"via slirp mode");
        }
    });
    let got = ns.exec_ok(&[
        "curl",
        "-sS",
        "--max-time",
        "5",
        &format!("telnet://10.0.2.2:{port}"),
    ]);
    assert_eq!(got, "via slirp mode");
    // The API, with slirp4netns's reply shapes.
    let fport = TcpListener::bind("127.0.0.1:0")
        .expect("b")
        .local_addr()
        .expect("a")
        .port();
    let r = api(
        &sock,
        &json!({"execute": "add_hostfwd", "arguments": {"proto": "tcp", "host_addr": "127.0.0.1", "host_port": fport, "guest_port": 8080}}),
    );
    let id = r["return"]["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("add_hostfwd: {r}"));
    let l = api(&sock, &json!({"execute": "list_hostfwd"}));
    // slirp4netns 1.2.0's shape: no `return` around `entries`.
    let e = &l["entries"][0];
    assert_eq!(
        (
            e["id"].as_u64(),
            e["proto"].as_str(),
            e["host_port"].as_u64(),
            e["guest_port"].as_u64(),
            e["guest_addr"].as_str()
        ),
        (
            Some(id),
            Some("tcp"),
            Some(u64::from(fport)),
            Some(8080),
            Some("10.0.2.100")
        ),
        "{l}"
    );
    // Reaches a server in the namespace.
    let srv = usernet::link::netns::run_in_netns(&ns.path(), || TcpListener::bind("0.0.0.0:8080"))
        .expect("listen");
    std::thread::spawn(move || {
        if let Ok((mut c, _)) = srv.accept() {
            let _ = c.write_all(b"inside");
        }
    });
    let mut c = std::net::TcpStream::connect(("127.0.0.1", fport)).expect("connect hostfwd");
    c.set_read_timeout(Some(Duration::from_secs(5))).expect("t");
    let mut s = String::new();
    let _ = c.read_to_string(&mut s);
    assert_eq!(s, "inside");
    assert_eq!(
        api(
            &sock,
            &json!({"execute": "remove_hostfwd", "arguments": {"id": id}})
        ),
        json!({"return": {}})
    );
    // Error texts and reply shapes: e2e_slirp_upstream.rs (api_socket).
    // Closing the exit fd ends the process.
    drop(exit_w);
    let t = Instant::now();
    loop {
        if let Ok(Some(st)) = child.0.try_wait() {
            assert!(st.success(), "{st}");
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "did not exit when the exit fd closed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn rootlesskit_style_start_and_help() {
    if !require_root("rootlesskit_style_start_and_help") {
        return;
    }
    let ns = Netns::new("sr");
    let (ready_r, ready_w) = pipe();
    let path = ns.path();
    let _child = start(
        &[
            "--mtu=65520",
            "-r",
            "3",
            "--disable-host-loopback",
            "--netns-type=path",
            path.to_str().expect("utf-8"),
            "tap0",
        ],
        &[&ready_w],
    );
    drop(ready_w);
    wait_ready(ready_r);
    let link = ns.exec_ok(&["ip", "-o", "link", "show", "tap0"]);
    assert!(link.contains("mtu 65520"), "{link}");
    // Runtimes probe --help for option names.
    let help = Command::new(BIN)
        .args(["slirp4netns", "--help"])
        .output()
        .expect("help");
    let text = String::from_utf8_lossy(&help.stdout);
    for opt in [
        "--configure",
        "--mtu",
        "--ready-fd",
        "--exit-fd",
        "--api-socket",
        "--cidr",
        "--disable-host-loopback",
        "--netns-type",
        "--userns-path",
        "--enable-ipv6",
        "--enable-sandbox",
        "--enable-seccomp",
        "--outbound-addr",
        "--outbound-addr6",
        "--disable-dns",
        "--macaddress",
        "--disable-sandbox",
    ] {
        assert!(text.contains(opt), "--help lacks {opt}");
    }
}

#[test]
fn rootlesskit_runs_curl_through_usernet() {
    if !require_root("rootlesskit_runs_curl_through_usernet") {
        return;
    }
    let have = |b: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {b}")])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !have("rootlesskit") || !have("newuidmap") {
        assert!(
            std::env::var("USERNET_REQUIRE_PRIV").as_deref() != Ok("1"),
            "rootlesskit/uidmap missing (scripts/test.sh installs them)"
        );
        eprintln!(
            "SKIP rootlesskit_runs_curl_through_usernet: rootlesskit or newuidmap not installed"
        );
        return;
    }
    let name = common::unique("urk");
    assert!(
        Command::new("useradd")
            .args(["--create-home", "--shell", "/bin/sh", &name])
            .status()
            .expect("useradd")
            .success()
    );
    struct Cleanup(String, u32);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = Command::new("userdel")
                .args(["-r", &self.0])
                .stderr(Stdio::null())
                .status();
            let _ =
                std::fs::set_permissions("/dev/net/tun", std::fs::Permissions::from_mode(self.1));
        }
    }
    let old = std::fs::metadata("/dev/net/tun")
        .expect("tun")
        .permissions()
        .mode()
        & 0o7777;
    let _c = Cleanup(name.clone(), old);
    std::fs::set_permissions("/dev/net/tun", std::fs::Permissions::from_mode(0o666))
        .expect("chmod tun");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let bin = dir.path().join("usernet");
    std::fs::copy(BIN, &bin).expect("copy");
    std::os::unix::fs::symlink(&bin, dir.path().join("slirp4netns")).expect("symlink");
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        if let Ok((mut c, _)) = l.accept() {
            let mut b = [0u8; 1024];
            let _ = c.read(&mut b);
            let _ = c.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 7\r\n\r\nthrough");
        }
    });
    let out = Command::new("timeout")
        .args(["40", "su", &name, "-s", "/bin/sh", "-c"])
        .arg(format!(
            "cd /tmp && rootlesskit --net=slirp4netns --slirp4netns-binary={} curl -sS --max-time 10 http://10.0.2.2:{port}/",
            dir.path().join("slirp4netns").display()
        ))
        .output()
        .expect("rootlesskit");
    assert!(
        out.status.success(),
        "rootlesskit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "through");
}

// `-v`/`--version` and `--cidr` errors: e2e_slirp_upstream.rs (version_prints_slirp4netns_fields,
// cidr), with the rest of slirp4netns's own tests.
