//! Rootless Podman (Debian's 4.3) with usernet as its slirp4netns: `network_cmd_path` in the
//! user's containers.conf points at a symlink named `slirp4netns` to the usernet binary, which
//! then acts as slirp4netns. A throwaway user runs real containers from an image imported
//! offline (a static busybox rootfs): NAT to the host's loopback through 10.0.2.2 with
//! `allow_host_loopback=true`, ports published with `port_handler=slirp4netns` and with the
//! default handler (rootlessport) to a container that only listens, and a server bound to
//! 127.0.0.1 inside (`lo` is up).
//!
//! Needs root (to create the user, its subordinate ids and open /dev/net/tun to it), `podman`,
//! `runc`, `newuidmap` (uidmap) and a static `/bin/busybox` (busybox-static); without them it
//! prints `SKIP ...`, or fails under `USERNET_REQUIRE_PRIV=1` (scripts/test.sh installs them).
//!
//! Traffic stays on the box: the host side is 127.0.0.1 only, containers use addresses, never
//! names (their resolv.conf lists 10.0.2.3, which forwards to the host's resolver).

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::daemon::BIN;
use common::require_root;

/// Seconds one podman command may take.
const PODMAN_TIMEOUT: &str = "60";
/// The image the test imports.
const IMAGE: &str = "localhost/usernet-busybox:latest";
/// What busybox httpd serves from /www/index.html.
const PAGE: &str = "served by busybox httpd in a rootless podman container\n";

/// Deterministic bytes (xorshift), so corruption anywhere shows.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    common::pattern(len, seed)
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// True for a 64-bit little-endian ELF executable without a program interpreter (PT_INTERP):
/// statically linked.
fn is_static_elf(b: &[u8]) -> bool {
    let u16_at = |o: usize| b.get(o..o + 2).map(|s| u16::from_le_bytes([s[0], s[1]]));
    let u32_at = |o: usize| {
        b.get(o..o + 4)
            .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    };
    let u64_at = |o: usize| {
        b.get(o..o + 8)
            .and_then(|s| s.try_into().ok())
            .map(u64::from_le_bytes)
    };
    if b.get(..6) != Some(b"\x7fELF\x02\x01") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    (0..usize::from(phnum)).all(|i| {
        let at = phoff as usize + i * usize::from(phentsize);
        u32_at(at).is_some_and(|t| t != 3)
    })
}

/// Skips (or fails under USERNET_REQUIRE_PRIV=1) when something the test needs is missing.
fn prerequisites(test: &str) -> bool {
    if !require_root(test) {
        return false;
    }
    let busybox_static = std::fs::read("/bin/busybox").is_ok_and(|b| is_static_elf(&b));
    let missing: Vec<&str> = [
        ("podman", have("podman")),
        ("runc", have("runc")),
        ("newuidmap", have("newuidmap")),
        ("static /bin/busybox (busybox-static)", busybox_static),
    ]
    .into_iter()
    .filter(|(_, ok)| !ok)
    .map(|(n, _)| n)
    .collect();
    if !missing.is_empty() {
        assert!(
            std::env::var("USERNET_REQUIRE_PRIV").as_deref() != Ok("1"),
            "{test}: missing {missing:?} (scripts/test.sh installs them)"
        );
        eprintln!("SKIP {test}: missing {missing:?}");
        return false;
    }
    let userns = Command::new("su")
        .args(["nobody", "-s", "/bin/sh", "-c", "unshare -Urn true"])
        .status()
        .is_ok_and(|s| s.success());
    if !userns {
        assert!(
            std::env::var("USERNET_REQUIRE_PRIV").as_deref() != Ok("1"),
            "{test}: the kernel forbids unprivileged user namespaces"
        );
        eprintln!("SKIP {test}: the kernel forbids unprivileged user namespaces");
        return false;
    }
    true
}

/// A throwaway user with subordinate ids, a home and a runtime dir under a temp dir, Podman
/// configured to use usernet as slirp4netns, and /dev/net/tun opened to it. Drop removes its
/// containers, ends its processes (by pid), deletes it and its files, restores /dev/net/tun.
struct PodmanUser {
    name: String,
    uid: u32,
    dir: Option<tempfile::TempDir>,
    home: PathBuf,
    run: PathBuf,
    /// The `slirp4netns` symlink Podman starts.
    slirp: PathBuf,
    tun_mode: Option<u32>,
}

impl PodmanUser {
    fn new() -> PodmanUser {
        // /tmp/.tmpXXXXXX: short, so the runtime dir's sockets stay far below 108 bytes.
        let dir = tempfile::Builder::new()
            .tempdir_in("/tmp")
            .expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod tempdir");
        let name = common::unique("unpm");
        let home = dir.path().join("home");
        let run = dir.path().join("run");
        let st = Command::new("useradd")
            .args(["--no-create-home", "--shell", "/bin/sh", "--home-dir"])
            .arg(&home)
            .arg(&name)
            .status()
            .expect("useradd");
        assert!(st.success(), "useradd {name}");
        let mut u = PodmanUser {
            uid: 0,
            name,
            dir: Some(dir),
            home,
            run,
            slirp: PathBuf::new(),
            tun_mode: None,
        };
        u.uid = id_of(&u.name, "-u");
        let gid = id_of(&u.name, "-g");
        u.subids();
        // Distributions ship /dev/net/tun 0666; this machine has 0600.
        let mode = std::fs::metadata("/dev/net/tun")
            .expect("tun")
            .permissions()
            .mode()
            & 0o7777;
        u.tun_mode = Some(mode);
        std::fs::set_permissions("/dev/net/tun", std::fs::Permissions::from_mode(0o666))
            .expect("chmod /dev/net/tun");
        let conf = u.home.join(".config/containers");
        std::fs::create_dir_all(&conf).expect("config dir");
        std::fs::create_dir_all(&u.run).expect("runtime dir");
        // The binary under test, by the name that makes it act as slirp4netns.
        let bin_dir = u.home.join("bin");
        std::fs::create_dir_all(&bin_dir).expect("bin dir");
        u.slirp = bin_dir.join("slirp4netns");
        let target = if u.can_exec(Path::new(BIN)) {
            PathBuf::from(BIN)
        } else {
            let copy = bin_dir.join("usernet");
            std::fs::copy(BIN, &copy).expect("copy usernet");
            copy
        };
        std::os::unix::fs::symlink(&target, &u.slirp).expect("symlink slirp4netns");
        std::fs::write(
            conf.join("containers.conf"),
            format!(
                "[engine]\n\
                 runtime = \"runc\"\n\
                 cgroup_manager = \"cgroupfs\"\n\
                 events_logger = \"file\"\n\
                 network_cmd_path = \"{}\"\n",
                u.slirp.display()
            ),
        )
        .expect("containers.conf");
        std::fs::write(
            conf.join("storage.conf"),
            format!(
                "[storage]\n\
                 driver = \"vfs\"\n\
                 runroot = \"{}\"\n\
                 graphroot = \"{}\"\n",
                u.run.join("storage").display(),
                u.home.join("storage").display()
            ),
        )
        .expect("storage.conf");
        chown_tree(&u.home, u.uid, gid);
        chown_tree(&u.run, u.uid, gid);
        std::fs::set_permissions(&u.run, std::fs::Permissions::from_mode(0o700))
            .expect("chmod runtime dir");
        u
    }

    fn tmp(&self) -> &Path {
        self.dir.as_ref().map(|d| d.path()).expect("temp dir")
    }

    /// Subordinate uid/gid ranges: useradd adds them where login.defs says so; otherwise a
    /// range past every existing one.
    fn subids(&self) {
        for (file, flag) in [
            ("/etc/subuid", "--add-subuids"),
            ("/etc/subgid", "--add-subgids"),
        ] {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            if text
                .lines()
                .any(|l| l.starts_with(&format!("{}:", self.name)))
            {
                continue;
            }
            let end = text
                .lines()
                .filter_map(|l| {
                    let mut f = l.split(':').skip(1);
                    let start: u64 = f.next()?.parse().ok()?;
                    let count: u64 = f.next()?.parse().ok()?;
                    Some(start + count)
                })
                .max()
                .unwrap_or(100_000)
                .max(100_000);
            let range = format!("{end}-{}", end + 65535);
            let st = Command::new("usermod")
                .args([flag, &range, &self.name])
                .status()
                .expect("usermod");
            assert!(st.success(), "usermod {flag} {range} {}", self.name);
        }
    }

    fn can_exec(&self, p: &Path) -> bool {
        Command::new("runuser")
            .args(["-u", &self.name, "--", "test", "-x"])
            .arg(p)
            .status()
            .is_ok_and(|s| s.success())
    }

    /// `podman ARGS` as the user, bounded in time.
    fn podman(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("timeout");
        cmd.args(["-k", "5", PODMAN_TIMEOUT, "runuser", "-u", &self.name, "--"])
            .args(["env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"])
            .arg(format!("HOME={}", self.home.display()))
            .arg(format!("XDG_RUNTIME_DIR={}", self.run.display()))
            .arg(format!(
                "XDG_CONFIG_HOME={}",
                self.home.join(".config").display()
            ));
        if let Ok(l) = std::env::var("RUST_LOG") {
            // usernet's log goes to Podman's slirp4netns log file.
            cmd.arg(format!("RUST_LOG={l}"));
        }
        cmd.arg("podman")
            .args(args)
            .current_dir(self.tmp())
            .stdin(Stdio::null())
            .output()
            .expect("run podman")
    }

    /// Like [`Self::podman`], asserting success; returns stdout.
    fn podman_ok(&self, args: &[&str]) -> String {
        let out = self.podman(args);
        assert!(
            out.status.success(),
            "podman {}: {}\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Pids of the user's live processes.
    fn processes(&self) -> Vec<i32> {
        let Ok(rd) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        rd.flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                let Ok(st) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
                    return false;
                };
                let field = |k: &str| {
                    st.lines()
                        .find_map(|l| l.strip_prefix(k))
                        .map(|v| v.trim().to_string())
                        .unwrap_or_default()
                };
                let uid = field("Uid:");
                uid.split_whitespace().next() == Some(&self.uid.to_string())
                    && !field("State:").starts_with('Z')
            })
            .collect()
    }
}

impl Drop for PodmanUser {
    fn drop(&mut self) {
        if self.uid != 0 && self.dir.is_some() {
            let _ = self.podman(&["rm", "--force", "--all", "--time", "0"]);
            // Whatever is left (the rootless pause process, conmon, usernet): the user is ours
            // alone, so every process it has is one this test started.
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let left = self.processes();
                if left.is_empty() || Instant::now() > deadline {
                    break;
                }
                for pid in left {
                    // SAFETY: kill(2) on a pid of the test's own throwaway user.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        if !self.name.is_empty() {
            let _ = Command::new("userdel")
                .arg(&self.name)
                .stderr(Stdio::null())
                .status();
        }
        if let Some(mode) = self.tun_mode.take() {
            let _ = std::fs::set_permissions("/dev/net/tun", std::fs::Permissions::from_mode(mode));
        }
        // The temp dir (home, storage with the subordinate ids' files, runtime dir) goes with it.
        self.dir.take();
    }
}

fn id_of(name: &str, flag: &str) -> u32 {
    let out = Command::new("id").args([flag, name]).output().expect("id");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("id {flag} {name}"))
}

fn chown_tree(p: &Path, uid: u32, gid: u32) {
    let st = Command::new("chown")
        .arg("-R")
        .arg(format!("{uid}:{gid}"))
        .arg(p)
        .status()
        .expect("chown");
    assert!(st.success(), "chown {}", p.display());
}

/// A tar of a tiny rootfs: static busybox with its applet links, /www for httpd.
fn rootfs_tar(dir: &Path, big: &[u8]) -> PathBuf {
    let root = dir.join("rootfs");
    for d in ["bin", "etc", "tmp", "www", "out", "proc", "sys", "dev"] {
        std::fs::create_dir_all(root.join(d)).expect("rootfs dir");
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("copy busybox");
    let list = Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .expect("busybox --list");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet == "busybox" || applet.contains('/') {
            continue;
        }
        let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
    }
    std::fs::write(root.join("www/index.html"), PAGE).expect("page");
    std::fs::write(root.join("www/big.bin"), big).expect("big");
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777))
        .expect("chmod tmp");
    let tar = dir.join("rootfs.tar");
    let st = Command::new("tar")
        .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .expect("tar");
    assert!(st.success(), "tar rootfs");
    std::fs::set_permissions(&tar, std::fs::Permissions::from_mode(0o644)).expect("chmod tar");
    tar
}

/// A free port on 127.0.0.1 (bound and released; Podman binds it next).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// One HTTP/1.0 request to 127.0.0.1:`port`; the whole response, or what came before an error.
fn http_get(port: u16, path: &str, timeout: Duration) -> std::io::Result<Vec<u8>> {
    let mut c = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), timeout)?;
    c.set_read_timeout(Some(timeout))?;
    c.set_write_timeout(Some(timeout))?;
    c.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())?;
    let mut out = Vec::new();
    c.read_to_end(&mut out)?;
    Ok(out)
}

/// The body of an HTTP response that says 200.
fn body_200(resp: &[u8]) -> Option<&[u8]> {
    let end = resp.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&resp[..end]);
    head.lines()
        .next()
        .is_some_and(|l| l.contains(" 200"))
        .then_some(&resp[end + 4..])
}

/// Fetches `path` from the host's 127.0.0.1:`port` until it answers 200 (Podman publishes the
/// port while the container starts), for at most `within`.
fn fetch_published(port: u16, path: &str, within: Duration) -> Vec<u8> {
    let deadline = Instant::now() + within;
    let mut last;
    loop {
        match http_get(port, path, Duration::from_secs(5)) {
            Ok(resp) => match body_200(&resp) {
                Some(b) => return b.to_vec(),
                None => last = format!("answer: {:?}", String::from_utf8_lossy(&resp)),
            },
            Err(e) => last = e.to_string(),
        }
        assert!(
            Instant::now() < deadline,
            "127.0.0.1:{port}{path} never served it within {within:?}; last: {last}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A small HTTP server on the host's 127.0.0.1: GET answers `blob`, POST stores the body in
/// `posted`. Serves until `stop` or 60 s.
struct HostServer {
    port: u16,
    posted: Arc<Mutex<Vec<u8>>>,
    stop: Arc<AtomicBool>,
}

impl HostServer {
    fn start(blob: Vec<u8>) -> HostServer {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind host server");
        l.set_nonblocking(true).expect("nonblocking");
        let port = l.local_addr().expect("addr").port();
        let posted = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (p2, s2) = (posted.clone(), stop.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !s2.load(Ordering::Relaxed) && Instant::now() < deadline {
                match l.accept() {
                    Ok((c, _)) => {
                        let _ = serve(c, &blob, &p2);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        HostServer { port, posted, stop }
    }
}

impl Drop for HostServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(mut c: TcpStream, blob: &[u8], posted: &Mutex<Vec<u8>>) -> std::io::Result<()> {
    c.set_nonblocking(false)?;
    c.set_read_timeout(Some(Duration::from_secs(10)))?;
    c.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let n = c.read(&mut chunk)?;
        if n == 0 || buf.len() > 65536 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    if head.starts_with("POST") {
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        let mut body = buf[head_end..].to_vec();
        while body.len() < len {
            let n = c.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
        *posted.lock().expect("lock") = body;
        c.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")?;
    } else {
        c.write_all(
            format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n", blob.len()).as_bytes(),
        )?;
        c.write_all(blob)?;
    }
    let _ = c.shutdown(Shutdown::Write);
    Ok(())
}

/// Pids of the user's processes that run the usernet binary (Podman's "slirp4netns").
fn usernet_processes(u: &PodmanUser) -> Vec<i32> {
    let bin = std::fs::canonicalize(BIN).expect("binary");
    let copy = u.home.join("bin/usernet");
    u.processes()
        .into_iter()
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/exe"))
                .is_ok_and(|exe| exe == bin || exe == copy)
        })
        .collect()
}

#[test]
fn rootless_podman_uses_usernet_as_slirp4netns() {
    let test = "rootless_podman_uses_usernet_as_slirp4netns";
    if !prerequisites(test) {
        return;
    }
    let started = Instant::now();
    let u = PodmanUser::new();
    let big = pattern(256 * 1024, 7);
    let tar = rootfs_tar(u.tmp(), &big);
    u.podman_ok(&["import", tar.to_str().expect("utf-8"), IMAGE]);
    eprintln!("{test}: user, config and image in {:?}", started.elapsed());

    // 1. NAT to the host's loopback through 10.0.2.2 (allow_host_loopback=true): 2 MiB down and
    //    512 KiB up, byte for byte; the container's view of its network is slirp4netns's.
    let down = pattern(2 << 20, 11);
    // busybox wget posts a C string: text, no NUL.
    let up: Vec<u8> = pattern(512 << 10, 13)
        .iter()
        .map(|b| {
            b"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ+/"[usize::from(b & 63)]
        })
        .collect();
    let server = HostServer::start(down.clone());
    let out_dir = u.tmp().join("out");
    std::fs::create_dir(&out_dir).expect("out dir");
    std::fs::write(out_dir.join("up.bin"), &up).expect("upload file");
    let gid = std::fs::metadata(&u.home).expect("home").gid();
    chown_tree(&out_dir, u.uid, gid);
    let volume = format!("{}:/out", out_dir.display());
    let script = format!(
        "ip -o -4 addr show tap0; ip -o link show lo; ip route show default; \
         timeout 20 wget -q -O /out/down.bin http://10.0.2.2:{p}/blob && \
         timeout 20 wget -q -O /out/up.reply --post-file /out/up.bin http://10.0.2.2:{p}/up && \
         echo fetched",
        p = server.port
    );
    let t = Instant::now();
    let text = u.podman_ok(&[
        "run",
        "--rm",
        "--network",
        "slirp4netns:allow_host_loopback=true",
        "-v",
        &volume,
        IMAGE,
        "sh",
        "-c",
        &script,
    ]);
    eprintln!("{test}: NAT run in {:?}", t.elapsed());
    assert!(text.contains("10.0.2.100/24"), "container address: {text}");
    assert!(text.contains("via 10.0.2.2"), "default route: {text}");
    assert!(
        text.lines()
            .find(|l| l.contains(": lo:"))
            .is_some_and(|l| l.contains(",UP")),
        "lo is not up in the container: {text}"
    );
    assert!(text.contains("fetched"), "wget through 10.0.2.2: {text}");
    let got = std::fs::read(out_dir.join("down.bin")).expect("downloaded file");
    assert!(
        got == down,
        "download through NAT: {} bytes, {} expected, first difference at {:?}",
        got.len(),
        down.len(),
        got.iter().zip(&down).position(|(a, b)| a != b)
    );
    assert!(
        *server.posted.lock().expect("lock") == up,
        "upload through NAT arrived altered ({} bytes, {} sent)",
        server.posted.lock().expect("lock").len(),
        up.len()
    );
    assert_eq!(
        std::fs::read_to_string(out_dir.join("up.reply")).unwrap_or_default(),
        "ok"
    );
    drop(server);

    // 2. A published port, with each port handler, to a container that only listens (it has
    //    sent nothing when the first connection comes).
    for (handler, network) in [
        ("slirp4netns", "slirp4netns:port_handler=slirp4netns"),
        ("rootlessport", "slirp4netns"),
    ] {
        let port = free_port();
        let name = format!("{}-{handler}", u.name);
        let t = Instant::now();
        u.podman_ok(&[
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            network,
            "-p",
            &format!("127.0.0.1:{port}:80"),
            IMAGE,
            "httpd",
            "-f",
            "-p",
            "80",
            "-h",
            "/www",
        ]);
        // Podman runs usernet, not slirp4netns.
        assert!(
            !usernet_processes(&u).is_empty(),
            "no usernet process of the user runs: Podman did not use network_cmd_path"
        );
        let page = fetch_published(port, "/index.html", Duration::from_secs(15));
        assert_eq!(String::from_utf8_lossy(&page), PAGE, "{handler}");
        let got = fetch_published(port, "/big.bin", Duration::from_secs(15));
        assert!(
            got == big,
            "{handler}: big.bin altered ({} bytes)",
            got.len()
        );
        eprintln!("{test}: published with {handler} in {:?}", t.elapsed());
        u.podman_ok(&["rm", "--force", "--time", "0", &name]);
    }

    // 3. A server bound to 127.0.0.1 inside: it can bind (`lo` is up) and answers there. The
    //    published port cannot reach it (both handlers connect to 10.0.2.100), and says so at
    //    once, as with slirp4netns: no hang.
    let port = free_port();
    let name = format!("{}-lo", u.name);
    let t = Instant::now();
    u.podman_ok(&[
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        "slirp4netns:port_handler=slirp4netns",
        "-p",
        &format!("127.0.0.1:{port}:80"),
        IMAGE,
        "httpd",
        "-f",
        "-p",
        "127.0.0.1:80",
        "-h",
        "/www",
    ]);
    let deadline = Instant::now() + Duration::from_secs(15);
    let inside = loop {
        let out = u.podman(&[
            "exec",
            &name,
            "sh",
            "-c",
            // busybox 1.35's `wget -T` crashes; its `timeout` bounds the fetch.
            "timeout 5 wget -q -O - http://127.0.0.1:80/index.html",
        ]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(inside, PAGE, "server on 127.0.0.1 inside the container");
    // Once the forward listens (Podman adds it as the container starts), the connection is
    // taken and then closed or reset.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut c = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(c) => break c,
            Err(e) => assert!(Instant::now() < deadline, "forward never listened: {e}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let t2 = Instant::now();
    c.set_read_timeout(Some(Duration::from_secs(8)))
        .expect("timeout");
    let _ = c.write_all(b"GET /index.html HTTP/1.0\r\n\r\n");
    let mut resp = Vec::new();
    let r = c.read_to_end(&mut resp);
    let waited = t2.elapsed();
    assert!(
        body_200(&resp).is_none(),
        "a server bound to 127.0.0.1 answered on 10.0.2.100: {:?}",
        String::from_utf8_lossy(&resp)
    );
    assert!(
        waited < Duration::from_secs(4),
        "the published port to a port nobody listens on took {waited:?} to fail ({r:?}); \
         slirp4netns fails at once"
    );
    eprintln!("{test}: 127.0.0.1 server in {:?}", t.elapsed());
    u.podman_ok(&["rm", "--force", "--time", "0", &name]);
    eprintln!("{test}: all in {:?}", started.elapsed());
}

/// The static-busybox check tells a dynamic executable (this test binary) from a static one.
#[test]
fn static_elf_check() {
    let me = std::fs::read("/proc/self/exe").expect("own executable");
    assert!(!is_static_elf(&me), "a dynamic executable taken for static");
    assert!(!is_static_elf(b"#!/bin/sh\n"), "a script taken for static");
}
