//! The sandbox and usernet's local sockets, seen from outside the process:
//!
//! - a sandboxed `usernet up` / `usernet run` stopped with SIGSTOP and continued with SIGCONT
//!   keeps answering on its control socket (the kernel resumes interrupted sleeps with
//!   `restart_syscall`, which the allowlist must hold);
//! - `usernet run` is sandboxed by default (`/proc/PID/status`: seccomp filter mode, no
//!   capabilities, no-new-privs), `--no-sandbox` turns it off, `--splice` asks for it;
//! - under the sandbox, ports that need a new TAP or a namespace and spliced forwards are refused
//!   with an error naming the feature and the sandbox, while ordinary forwards and stream ports
//!   still work;
//! - stream-port and control sockets are 0600 even under umask 000; at most 64 control
//!   connections are served at once; without `--socket`, `USERNET_SOCKET` or `XDG_RUNTIME_DIR`
//!   an unprivileged user gets an error, not a socket in /tmp.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::daemon::{BIN, Daemon, ctl_output};
use common::{Child, Netns, require_root, status_field};
use serde_json::Value;

const NO_UPSTREAM: &str = "127.0.0.1:9";

fn config(subnet: &str, extra: &str) -> String {
    format!(
        "[[network]]\nname = \"n\"\nsubnet = \"{subnet}\"\nipv6 = \"off\"\n\
         dns_upstreams = [\"{NO_UPSTREAM}\"]\n{extra}\n"
    )
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a child this test started.
    assert_eq!(
        unsafe { libc::kill(pid as i32, sig) },
        0,
        "kill {pid} {sig}"
    );
}

/// Stops and continues `pid` three times, each time while its threads sleep.
fn stop_and_continue(pid: u32) {
    for _ in 0..3 {
        signal(pid, libc::SIGSTOP);
        std::thread::sleep(Duration::from_millis(300));
        signal(pid, libc::SIGCONT);
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// One raw request line on the control socket; the parsed answer.
fn raw_request(sock: &Path, line: &str) -> Value {
    let mut s = UnixStream::connect(sock).expect("connect control socket");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    writeln!(s, "{line}").expect("send");
    let mut resp = String::new();
    BufReader::new(&s).read_line(&mut resp).expect("answer");
    serde_json::from_str(&resp).expect("JSON answer")
}

fn wait_for(path: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{what}: {} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .expect("stat socket")
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn sandboxed_up_survives_sigstop_sigcont() {
    let d = Daemon::start_with(&config("10.91.0.0/24", ""), &["--sandbox"]);
    let pid = d.pid();
    assert_eq!(status_field(pid, "Seccomp:"), "2", "sandbox on");
    stop_and_continue(pid);
    // Still alive and answering.
    let out = d.ctl_raw(&["networks"]);
    assert!(
        out.status.success(),
        "ctl after SIGSTOP/SIGCONT: {}\ndaemon log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );
    assert!(!d.log().contains("panicked"), "{}", d.log());
    assert!(
        std::fs::metadata(format!("/proc/{pid}")).is_ok(),
        "daemon died"
    );
}

#[test]
fn run_is_sandboxed_by_default_and_survives_sigstop_sigcont() {
    if !require_root("run_is_sandboxed_by_default_and_survives_sigstop_sigcont") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    for (extra, sandboxed) in [(None, true), (Some("--no-sandbox"), false)] {
        let sock = dir.path().join(format!("ctl-{sandboxed}.sock"));
        let mut cmd = Command::new(BIN);
        cmd.args([
            "run",
            "--dns",
            NO_UPSTREAM,
            "--subnet",
            "10.92.0.0/24",
            "--socket",
        ])
        .arg(&sock);
        if let Some(x) = extra {
            cmd.arg(x);
        }
        let mut child = Child(
            cmd.args(["--", "sleep", "20"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("usernet run"),
        );
        let pid = child.0.id();
        wait_for(&sock, "usernet run --socket");
        let want = if sandboxed { "2" } else { "0" };
        assert_eq!(
            status_field(pid, "Seccomp:"),
            want,
            "seccomp mode ({extra:?})"
        );
        if sandboxed {
            assert_eq!(status_field(pid, "NoNewPrivs:"), "1");
            assert_eq!(status_field(pid, "CapEff:"), "0000000000000000");
            stop_and_continue(pid);
        }
        let out = ctl_output(&sock, &["ports"]);
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("guest"),
            "ctl ports ({extra:?}): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // SIGTERM goes to the command; usernet exits with it and removes its files (the
        // command's resolv.conf in the temp directory) under the sandbox too.
        signal(pid, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.0.try_wait().expect("wait").is_none() {
            assert!(
                Instant::now() < deadline,
                "usernet run did not exit on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let prefix = format!("usernet-resolv-{pid}");
        let left: Vec<_> = std::fs::read_dir(std::env::temp_dir())
            .expect("temp dir")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }
    // --splice cannot work under the sandbox: refused before anything starts, naming the way out.
    let out = Command::new(BIN)
        .args(["run", "--splice", "-p", "127.0.0.1:1:80", "--", "true"])
        .stdin(Stdio::null())
        .output()
        .expect("usernet run --splice");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--splice") && err.contains("--no-sandbox"),
        "{err}"
    );
}

#[test]
fn sandbox_refuses_namespace_and_tap_ports_and_splice_by_name() {
    if !require_root("sandbox_refuses_namespace_and_tap_ports_and_splice_by_name") {
        return;
    }
    let d = Daemon::start_with(&config("10.93.0.0/24", ""), &["--sandbox"]);
    let ns = Netns::new("sbx");

    let refused = |v: &Value, feature: &str| {
        let e = v["error"].as_str().unwrap_or_default().to_string();
        assert!(
            v["ok"] == Value::Bool(false) && e.contains(feature) && e.contains("sandbox"),
            "want a refusal naming {feature:?} and the sandbox, got {v}"
        );
    };
    let netns = format!(
        r#"{{"op":"add_port","port":{{"network":"n","name":"c1","netns":"{}"}}}}"#,
        ns.path().display()
    );
    refused(&raw_request(&d.sock(), &netns), "netns");
    let tap = common::unique("sbt");
    let tap_req =
        format!(r#"{{"op":"add_port","port":{{"network":"n","name":"t1","tap":"{tap}"}}}}"#);
    refused(&raw_request(&d.sock(), &tap_req), "TAP");
    let splice = r#"{"op":"forward_add","forward":{"network":"n","publish":"127.0.0.1:1:80","to":"c1","splice":true}}"#;
    refused(&raw_request(&d.sock(), splice), "splice");
    // No TAP was created behind the refusal.
    assert!(!Path::new(&format!("/sys/class/net/{tap}")).exists());

    // What needs no new file still works: an ordinary forward (host sockets) ...
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    d.ctl(&[
        "forward",
        "add",
        "--network",
        "n",
        &format!("127.0.0.1:{port}:80"),
        "10.93.0.50",
    ]);
    // ... and a stream port, whose socket is private from its creation.
    let sdir = tempfile::tempdir().expect("tempdir");
    let spath = sdir.path().join("vm.sock");
    let stream = format!(
        r#"{{"op":"add_port","port":{{"network":"n","name":"vm","stream":"{}"}}}}"#,
        spath.display()
    );
    let v = raw_request(&d.sock(), &stream);
    assert_eq!(v["ok"], Value::Bool(true), "{v}\n{}", d.log());
    assert_eq!(mode(&spath), 0o600, "stream socket mode under the sandbox");
    let _peer = UnixStream::connect(&spath).expect("connect stream port");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !d.port_names().iter().any(|n| n == "vm") {
        assert!(Instant::now() < deadline, "stream peer never became a port");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `usernet up` under umask 000, with a stream port in its config.
struct Umask0Up {
    dir: tempfile::TempDir,
    _child: Child,
}

impl Umask0Up {
    fn start(cfg: &str) -> Umask0Up {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg_path = dir.path().join("usernet.toml");
        std::fs::write(&cfg_path, cfg).expect("config");
        let sock = dir.path().join("sock");
        let child = Child(
            Command::new("sh")
                .args(["-c", "umask 000; exec \"$0\" \"$@\"", BIN, "up", "-c"])
                .arg(&cfg_path)
                .arg("--socket")
                .arg(&sock)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("usernet up"),
        );
        wait_for(&sock, "usernet up");
        Umask0Up { dir, _child: child }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

#[test]
fn local_sockets_are_0600_under_umask_000() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stream = dir.path().join("vm.sock");
    let cfg = config(
        "10.94.0.0/24",
        &format!(
            "[[port]]\nnetwork = \"n\"\nname = \"vm\"\nstream = \"{}\"\n",
            stream.display()
        ),
    );
    let up = Umask0Up::start(&cfg);
    wait_for(&stream, "stream port");
    assert_eq!(mode(&up.path("sock")), 0o600, "control socket");
    assert_eq!(mode(&stream), 0o600, "stream port socket");
}

#[test]
fn control_connections_are_capped() {
    let d = Daemon::start(&config("10.95.0.0/24", ""));
    // 64 connections, each served once (so each is counted by the daemon) and kept open.
    let mut held = Vec::new();
    for i in 0..64 {
        let s = UnixStream::connect(d.sock()).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        writeln!(&s, r#"{{"op":"networks"}}"#).expect("send");
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).expect("answer");
        assert!(line.contains(r#""ok":true"#), "connection {i}: {line}");
        held.push(s);
    }
    // The 65th gets one line of JSON error and is closed.
    let s = UnixStream::connect(d.sock()).expect("connect 65th");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let _ = writeln!(&s, r#"{{"op":"networks"}}"#);
    let mut r = BufReader::new(&s);
    let mut line = String::new();
    r.read_line(&mut line).expect("answer");
    let v: Value = serde_json::from_str(&line).expect("JSON error line");
    assert_eq!(v["ok"], Value::Bool(false), "{line}");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("too many control connections")),
        "{line}"
    );
    // Closed after the error (a reset: our unread request was discarded).
    let mut rest = String::new();
    match r.read_line(&mut rest) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("not closed after the error: {other:?} {rest:?}"),
    }
    // One closes: a new client is served again.
    held.pop();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = raw_request(&d.sock(), r#"{"op":"networks"}"#);
        if v["ok"] == Value::Bool(true) {
            break;
        }
        assert!(Instant::now() < deadline, "never served again: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn no_control_socket_in_shared_tmp() {
    if !require_root("no_control_socket_in_shared_tmp") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let cfg = dir.path().join("usernet.toml");
    std::fs::write(&cfg, config("10.96.0.0/24", "")).expect("config");
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let uid = 65534;
    let tmp_sock = PathBuf::from(format!("/tmp/usernet-{uid}.sock"));
    let as_nobody = |args: &[&str]| {
        Command::new("timeout")
            .args([
                "20",
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
            ])
            .args(["env", "-u", "USERNET_SOCKET", "-u", "XDG_RUNTIME_DIR", BIN])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("setpriv usernet")
    };
    for args in [
        vec!["up", "-c", cfg.to_str().expect("utf-8")],
        vec!["ctl", "ports"],
    ] {
        let out = as_nobody(&args);
        let _ = std::fs::remove_file(&tmp_sock);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success()
                && err.contains("USERNET_SOCKET")
                && err.contains("XDG_RUNTIME_DIR")
                && err.contains("--socket"),
            "{args:?}: {err}"
        );
    }
}
