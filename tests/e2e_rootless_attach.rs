//! Rootless attach (issue 13, item 3): one `usernet up` run by an unprivileged user serves that
//! user's rootless containers, as pasta or slirp4netns do for one container each.
//!
//! The story, as it went before: a user runs `usernet up` and two "rootless containers"
//! (`unshare -Urn sleep 60`: each its own user and network namespace), then
//! `usernet attach --netns /proc/PID/ns/net`. The daemon answered
//! `request refused: entering netns /proc/PID/ns/net: Operation not permitted (os error 1)`:
//! the container's network namespace is owned by the container's user namespace, so only a
//! process inside that user namespace may create a TAP there, and the daemon cannot join it
//! (`setns(CLONE_NEWUSER)` needs a single-threaded process; `setns(CLONE_NEWNET)` from outside
//! needs `CAP_SYS_ADMIN` the user does not have). Now `attach` forks a helper that joins the
//! container's user and network namespaces, creates the TAP, passes it to the daemon with
//! `SCM_RIGHTS` (`add_port` with `"fd": true`), and configures the addresses the daemon
//! planned.
//!
//! Root sets the scene (a throwaway user, `/dev/net/tun` usable by it, a private directory);
//! the scenario itself runs as that user. Everything is removed on failure too (RAII guards).
//!
//! The second test speaks to the control socket from the outside: a descriptor is taken only
//! by `add_port` with `"fd": true`, one per request, and closed whenever it is refused.

mod common;

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::daemon::{BIN, Daemon};
use common::{Child, require_root, unique};

/// A throwaway user (no home), removed on drop.
struct TestUser {
    name: String,
    uid: u32,
    gid: u32,
}

impl TestUser {
    fn new() -> TestUser {
        let name = unique("unr");
        let out = Command::new("useradd")
            .args(["-M", "-U", "-s", "/usr/sbin/nologin", &name])
            .output()
            .expect("useradd");
        assert!(
            out.status.success(),
            "useradd: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut u = TestUser {
            name,
            uid: 0,
            gid: 0,
        };
        let id = |flag: &str| -> u32 {
            let out = Command::new("id")
                .args([flag, &u.name])
                .output()
                .expect("id");
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .expect("numeric id")
        };
        let (uid, gid) = (id("-u"), id("-g"));
        u.uid = uid;
        u.gid = gid;
        assert_ne!(u.uid, 0);
        u
    }

    /// `args` run as this user (no supplementary groups, no capabilities); `setpriv` execs
    /// them, so the child's pid is theirs.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .arg("--clear-groups")
            .args(args);
        c
    }

    /// Runs `args` as this user to completion, bounded by `timeout`.
    fn run(&self, args: &[&str]) -> Output {
        let mut a = vec!["timeout", "30"];
        a.extend_from_slice(args);
        self.cmd(&a).output().expect("run as the test user")
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).output();
    }
}

/// `/dev/net/tun` usable by every user (0666, as distributions ship it) while a test runs; the
/// old mode back when the last guard of this process drops (tests run in parallel).
struct TunMode;

/// Live guards, and the mode to restore.
static TUN: std::sync::Mutex<(usize, Option<u32>)> = std::sync::Mutex::new((0, None));

impl TunMode {
    fn open_up() -> TunMode {
        let mut g = TUN.lock().unwrap_or_else(|e| e.into_inner());
        if g.0 == 0 {
            let p = Path::new("/dev/net/tun");
            let mode = std::fs::metadata(p)
                .expect("/dev/net/tun")
                .permissions()
                .mode()
                & 0o7777;
            if mode & 0o006 != 0o006 {
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o666))
                    .expect("chmod tun");
                g.1 = Some(mode);
            }
        }
        g.0 += 1;
        TunMode
    }
}

impl Drop for TunMode {
    fn drop(&mut self) {
        let mut g = TUN.lock().unwrap_or_else(|e| e.into_inner());
        g.0 -= 1;
        if g.0 == 0
            && let Some(m) = g.1.take()
        {
            let _ = std::fs::set_permissions("/dev/net/tun", std::fs::Permissions::from_mode(m));
        }
    }
}

/// A process of the user's; killed and reaped on drop (by pid).
fn spawn(user: &TestUser, args: &[&str], log: Option<&Path>) -> Child {
    let mut c = user.cmd(args);
    c.stdin(Stdio::null()).stdout(Stdio::null());
    match log {
        Some(l) => c.stderr(std::fs::File::create(l).expect("log")),
        None => c.stderr(Stdio::null()),
    };
    Child(c.spawn().expect("spawn as the test user"))
}

/// A rootless "container": `unshare -Urn sleep 60` as the user (setpriv and unshare exec, so
/// the pid is the container's); ready once it runs `sleep` (it has unshared and mapped its ids
/// by then).
fn container(user: &TestUser) -> (Child, u32) {
    let c = spawn(user, &["unshare", "-Urn", "sleep", "60"], None);
    let pid = c.0.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep") {
        assert!(Instant::now() < deadline, "container did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (c, pid)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn unprivileged_daemon_attaches_rootless_containers() {
    if !require_root("unprivileged_daemon_attaches_rootless_containers") {
        return;
    }
    scenario(false);
}

/// The same under `up --sandbox`: the daemon refuses to enter namespaces itself (EPERM, so
/// `attach` passes the TAP), and adopting a TAP needs nothing the sandbox forbids.
#[test]
fn sandboxed_unprivileged_daemon_attaches_rootless_containers() {
    if !require_root("sandboxed_unprivileged_daemon_attaches_rootless_containers") {
        return;
    }
    scenario(true);
}

fn scenario(sandbox: bool) {
    let user = TestUser::new();
    let _tun = TunMode::open_up();
    // A private directory the user owns: binary, config, socket, log, web root.
    let dir = tempfile::Builder::new()
        .prefix("usernet-rootless-")
        .tempdir()
        .expect("tempdir");
    let d = dir.path();
    std::os::unix::fs::chown(d, Some(user.uid), Some(user.gid)).expect("chown dir");
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).expect("chmod dir");
    // The test binary's directory may not be reachable for the user: copy it.
    let bin = d.join("usernet");
    std::fs::copy(BIN, &bin).expect("copy usernet");
    let bin_s = bin.to_str().expect("utf-8").to_string();
    let cfg = d.join("usernet.toml");
    std::fs::write(
        &cfg,
        "[[network]]\nname = \"net0\"\nsubnet = \"10.86.0.0/24\"\nipv6 = \"off\"\n\
         dns_upstreams = [\"127.0.0.1:9\"]\n",
    )
    .expect("config");
    let www = d.join("www");
    std::fs::create_dir(&www).expect("www");
    std::fs::write(www.join("index.html"), "hello from a rootless container\n").expect("index");
    for p in [&bin, &cfg, &www, &www.join("index.html")] {
        std::os::unix::fs::chown(p, Some(user.uid), Some(user.gid)).expect("chown");
    }
    let sock = d.join("sock");
    let sock_s = sock.to_str().expect("utf-8").to_string();
    let log = d.join("log");
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();

    let mut up = vec![
        bin_s.as_str(),
        "up",
        "-c",
        cfg.to_str().expect("utf-8"),
        "--socket",
        &sock_s,
    ];
    if sandbox {
        up.push("--sandbox");
    }
    let _daemon = spawn(&user, &up, Some(&log));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(
            Instant::now() < deadline,
            "daemon did not start: {}",
            read_log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (_web, web_pid) = container(&user);
    let (mut client, client_pid) = container(&user);
    let ns = |pid: u32| format!("/proc/{pid}/ns/net");
    let usernet = |args: &[&str]| {
        let mut a = vec!["timeout", "30", bin_s.as_str()];
        a.extend_from_slice(args);
        user.cmd(&a)
            .env("USERNET_SOCKET", &sock)
            .output()
            .expect("run usernet as the test user")
    };

    // `web`: no flag; the daemon answers EPERM and attach passes the TAP itself.
    let out = usernet(&[
        "attach",
        "--netns",
        &ns(web_pid),
        "--name",
        "web",
        "--ip",
        "auto",
    ]);
    assert!(
        out.status.success(),
        "attach web: {}\ndaemon log:\n{}",
        text(&out),
        read_log()
    );
    let web_ip = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.trim().strip_prefix("address "))
        .and_then(|a| a.split('/').next())
        .map(str::to_string)
        .unwrap_or_else(|| panic!("an address in {}", text(&out)));
    // `client`: the explicit flag, a fixed address.
    let out = usernet(&[
        "attach",
        "--netns",
        &ns(client_pid),
        "--name",
        "client",
        "--ip",
        "10.86.0.50/24",
        "--pass-fd",
    ]);
    assert!(out.status.success(), "attach client: {}", text(&out));

    // Inside, as the user (root in the container's user namespace).
    let inside = |pid: u32, args: &[&str]| {
        let t = pid.to_string();
        let mut a = vec![
            "nsenter",
            "-t",
            t.as_str(),
            "-U",
            "-n",
            "--preserve-credentials",
        ];
        a.extend_from_slice(args);
        user.run(&a)
    };
    let addrs = inside(
        client_pid,
        &["ip", "-o", "-4", "addr", "show", "dev", "eth0"],
    );
    assert!(text(&addrs).contains("10.86.0.50/24"), "{}", text(&addrs));
    let routes = inside(client_pid, &["ip", "route", "show", "default"]);
    assert!(text(&routes).contains("via 10.86.0.1"), "{}", text(&routes));
    let lo = inside(web_pid, &["ip", "-o", "link", "show", "lo"]);
    assert!(text(&lo).contains("UP"), "lo up: {}", text(&lo));

    // By name, through the gateway's DNS (asked directly: never the host's resolv.conf).
    let q = inside(
        client_pid,
        &[
            "dig",
            "+short",
            "+time=2",
            "+tries=2",
            "@10.86.0.1",
            "web.usernet",
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&q.stdout).trim(),
        web_ip,
        "web.usernet from client: {}",
        text(&q)
    );
    let q = inside(
        web_pid,
        &[
            "dig",
            "+short",
            "+time=2",
            "+tries=2",
            "@10.86.0.1",
            "client.usernet",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&q.stdout).trim(), "10.86.0.50");
    let ping = inside(client_pid, &["ping", "-c", "1", "-W", "2", &web_ip]);
    assert!(
        ping.status.success(),
        "client -> web: {}\n{}",
        text(&ping),
        read_log()
    );
    let ping = inside(web_pid, &["ping", "-c", "1", "-W", "2", "10.86.0.50"]);
    assert!(ping.status.success(), "web -> client: {}", text(&ping));

    // A forward on the host's loopback reaches a server in `web`.
    let t = web_pid.to_string();
    let _httpd = spawn(
        &user,
        &[
            "nsenter",
            "-t",
            &t,
            "-U",
            "-n",
            "--preserve-credentials",
            "busybox",
            "httpd",
            "-f",
            "-p",
            "80",
            "-h",
            www.to_str().expect("utf-8"),
        ],
        None,
    );
    let hp = free_port();
    let spec = format!("127.0.0.1:{hp}:80");
    let out = usernet(&["ctl", "forward", "add", "--network", "net0", &spec, "web"]);
    assert!(out.status.success(), "forward add: {}", text(&out));
    let mut body = String::new();
    for _ in 0..50 {
        let out = Command::new("curl")
            .args([
                "-s",
                "-m",
                "3",
                &format!("http://127.0.0.1:{hp}/index.html"),
            ])
            .output()
            .expect("curl");
        body = String::from_utf8_lossy(&out.stdout).into_owned();
        if body.contains("hello") {
            break;
        }
        // Only httpd's start may take a moment.
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        body,
        "hello from a rootless container\n",
        "forward\n{}",
        read_log()
    );

    // The container exits: the daemon's TAP would keep its namespace alive, but the watch on
    // /proc/PID/ns/net removes the port (and so frees the namespace).
    let _ = client.0.kill();
    let _ = client.0.wait();
    let mut gone = false;
    for _ in 0..50 {
        let out = usernet(&["ctl", "--json", "ports"]);
        if out.status.success() && !String::from_utf8_lossy(&out.stdout).contains("\"client\"") {
            gone = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        gone,
        "port removed when its container exited\n{}",
        read_log()
    );
    assert!(
        read_log().contains("is gone; port removed"),
        "{}",
        read_log()
    );
}

/// Sends `line` on `sock` with `fds` attached (one SCM_RIGHTS message).
fn send_fds(sock: RawFd, line: &[u8], fds: &[RawFd]) {
    let mut iov = libc::iovec {
        iov_base: line.as_ptr() as *mut libc::c_void,
        iov_len: line.len(),
    };
    let bytes = std::mem::size_of_val(fds) as u32;
    // SAFETY: pure size computation.
    let space = unsafe { libc::CMSG_SPACE(bytes) } as usize;
    let mut cbuf = vec![0u64; space.div_ceil(8)];
    // SAFETY: an all-zero msghdr is valid; every pointer outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: the buffer has room for one cmsg with `fds.len()` descriptors.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(bytes) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr(),
                libc::CMSG_DATA(c).cast::<RawFd>(),
                fds.len(),
            );
        }
    }
    // SAFETY: msg describes valid buffers.
    let n = unsafe { libc::sendmsg(sock, &msg, 0) };
    assert_eq!(n, line.len() as isize, "sendmsg");
}

/// A pipe; the write end goes to the daemon. Once every copy of it is closed, the read end
/// reads EOF: that is how the test sees the daemon closed what it refused.
fn pipe() -> (std::fs::File, OwnedFd) {
    let mut p = [0 as RawFd; 2];
    // SAFETY: pipe2 fills two descriptors.
    assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both are fresh and owned here.
    unsafe {
        (
            std::os::fd::FromRawFd::from_raw_fd(p[0]),
            std::os::fd::FromRawFd::from_raw_fd(p[1]),
        )
    }
}

/// True once `r` reads EOF within 2 s (every write end closed).
fn closed(r: &std::fs::File) -> bool {
    if !common::wait_readable(r.as_raw_fd(), 2000) {
        return false;
    }
    let mut b = [0u8; 1];
    std::io::Read::read(&mut &*r, &mut b).is_ok_and(|n| n == 0)
}

#[test]
fn control_socket_takes_one_descriptor_only_with_add_port_fd() {
    let d = Daemon::start(
        "[[network]]\nname = \"net0\"\nsubnet = \"10.87.0.0/24\"\nipv6 = \"off\"\ndns_upstreams = [\"127.0.0.1:9\"]\n",
    );
    let ask = |line: &str, fds: &[RawFd]| -> serde_json::Value {
        let s = std::os::unix::net::UnixStream::connect(d.sock()).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        send_fds(s.as_raw_fd(), format!("{line}\n").as_bytes(), fds);
        let mut resp = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(&s), &mut resp).expect("answer");
        serde_json::from_str(&resp).expect("JSON answer")
    };
    let netns = PathBuf::from(format!("/proc/{}/ns/net", std::process::id()));
    let add = format!(
        r#"{{"op":"add_port","port":{{"network":"net0","name":"x","netns":"{}","fd":true}}}}"#,
        netns.display()
    );

    // With another request: refused, and closed.
    let (r, w) = pipe();
    let v = ask(r#"{"op":"ports"}"#, &[w.as_raw_fd()]);
    drop(w);
    assert_eq!(v["ok"], false, "{v}");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("only accepted with add_port")),
        "{v}"
    );
    assert!(closed(&r), "the daemon closed the descriptor it refused");

    // Two with add_port: refused, both closed.
    let (r1, w1) = pipe();
    let (r2, w2) = pipe();
    let v = ask(&add, &[w1.as_raw_fd(), w2.as_raw_fd()]);
    drop((w1, w2));
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("at most one descriptor")),
        "{v}"
    );
    assert!(closed(&r1) && closed(&r2), "both closed");

    // One that is not a TAP: refused naming why, closed.
    let (r, w) = pipe();
    let v = ask(&add, &[w.as_raw_fd()]);
    drop(w);
    assert_eq!(v["ok"], false, "{v}");
    assert!(
        v["error"].as_str().is_some_and(|e| e.contains("TAP")),
        "{v}"
    );
    assert!(closed(&r), "closed after a failed add_port");

    // `fd: true` with no descriptor, and a descriptor without `fd: true`.
    let v = ask(&add, &[]);
    assert!(
        v["error"].as_str().is_some_and(|e| e.contains("port.fd")),
        "{v}"
    );
    let (r, w) = pipe();
    let v = ask(&add.replace(r#","fd":true"#, ""), &[w.as_raw_fd()]);
    drop(w);
    assert!(
        v["error"].as_str().is_some_and(|e| e.contains("port.fd")),
        "{v}"
    );
    assert!(closed(&r));
    assert!(!d.port_names().contains(&"x".to_string()));
    // The connection-level protocol is unchanged for plain requests, also for a last line
    // without its newline.
    assert_eq!(ask(r#"{"op":"networks"}"#, &[])["ok"], true);
    let mut s = std::os::unix::net::UnixStream::connect(d.sock()).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    std::io::Write::write_all(&mut s, br#"{"op":"networks"}"#).expect("write");
    s.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let mut resp = String::new();
    std::io::Read::read_to_string(&mut s, &mut resp).expect("answer");
    assert!(resp.contains(r#""ok":true"#), "{resp}");
}
