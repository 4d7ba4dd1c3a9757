//! A tiny QEMU guest for the VM transports (`-netdev stream`, `-netdev dgram`).
//!
//! # Theory of operation
//!
//! The guest is a stock distribution kernel (`/boot/vmlinuz-*`, or `USERNET_QEMU_KERNEL`) and an
//! initramfs built here at test time: a static busybox, the kernel's virtio-net modules (with
//! their dependencies, from `modules.dep`; none when the driver is built in) and an `/init`
//! script. QEMU runs it under TCG (`-accel tcg`; KVM is not required), its serial console on
//! stdout, which the test reads back. The script prints `STEP ...` lines as it goes and powers
//! off (`-no-reboot` makes QEMU exit), so a failure shows how far the guest got.
//!
//! [`require_qemu`] prints `SKIP` when QEMU, a kernel or busybox is missing; under
//! `USERNET_REQUIRE_PRIV=1` it fails instead where `apt-get` could have installed them
//! (`scripts/test.sh` installs qemu-system-x86, linux-image-amd64 and busybox-static).

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Marker the guest prints last when every step passed.
pub const DONE: &str = "USERNET-GUEST-DONE";

/// What is needed to boot the guest.
#[derive(Debug, Clone)]
pub struct Kit {
    /// The kernel image.
    pub kernel: PathBuf,
    /// Its modules directory (`/lib/modules/VERSION`), if it has one.
    pub modules: Option<PathBuf>,
    /// A statically linked busybox.
    pub busybox: PathBuf,
}

fn skip_or_fail(test: &str, why: &str) -> Option<Kit> {
    let apt = Path::new("/usr/bin/apt-get").exists();
    if std::env::var("USERNET_REQUIRE_PRIV").as_deref() == Ok("1") && apt {
        panic!(
            "{test}: {why} (scripts/test.sh installs it with apt-get), and USERNET_REQUIRE_PRIV=1 forbids skipping"
        );
    }
    eprintln!("SKIP {test}: {why}");
    None
}

/// The QEMU guest kit, or `None` after printing `SKIP {test}: ...` (see the module docs).
pub fn require_qemu(test: &str) -> Option<Kit> {
    let qemu_ok = Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !qemu_ok {
        return skip_or_fail(test, "needs qemu-system-x86_64 (package qemu-system-x86)");
    }
    let Some((kernel, modules)) = find_kernel() else {
        return skip_or_fail(
            test,
            "needs a readable kernel image: /boot/vmlinuz-* (package linux-image-amd64) or USERNET_QEMU_KERNEL",
        );
    };
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| is_static(p));
    let Some(busybox) = busybox else {
        return skip_or_fail(test, "needs a static busybox (package busybox-static)");
    };
    Some(Kit {
        kernel,
        modules,
        busybox,
    })
}

/// True for a statically linked ELF (no `PT_INTERP`): checked by reading the program headers.
fn is_static(p: &Path) -> bool {
    let Ok(b) = std::fs::read(p) else {
        return false;
    };
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 {
        return false;
    }
    let u64at = |o: usize| {
        b.get(o..o + 8)
            .and_then(|s| s.try_into().ok())
            .map(u64::from_le_bytes)
    };
    let u16at = |o: usize| {
        b.get(o..o + 2)
            .and_then(|s| s.try_into().ok())
            .map(u16::from_le_bytes)
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64at(0x20), u16at(0x36), u16at(0x38))
    else {
        return false;
    };
    (0..usize::from(phnum)).all(|i| {
        let o = phoff as usize + i * usize::from(phentsize);
        // PT_INTERP = 3
        b.get(o..o + 4) != Some(&3u32.to_le_bytes()[..])
    })
}

fn find_kernel() -> Option<(PathBuf, Option<PathBuf>)> {
    if let Ok(k) = std::env::var("USERNET_QEMU_KERNEL") {
        let k = PathBuf::from(k);
        let m = std::env::var("USERNET_QEMU_MODULES")
            .ok()
            .map(PathBuf::from);
        return std::fs::File::open(&k).is_ok().then_some((k, m));
    }
    let mut found: Vec<(PathBuf, PathBuf)> = std::fs::read_dir("/boot")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let ver = name.strip_prefix("vmlinuz-")?.to_string();
            let m = PathBuf::from(format!("/lib/modules/{ver}"));
            (std::fs::File::open(e.path()).is_ok() && m.join("modules.dep").exists())
                .then(|| (e.path(), m))
        })
        .collect();
    found.sort();
    found.pop().map(|(k, m)| (k, Some(m)))
}

/// The module files (bytes, name) to load for `wanted`, dependencies first; modules not in
/// `modules.dep` are taken as built in.
fn modules_for(moddir: &Path, wanted: &[&str]) -> Vec<(String, Vec<u8>)> {
    let dep = std::fs::read_to_string(moddir.join("modules.dep")).unwrap_or_default();
    let mut deps: HashMap<String, Vec<String>> = HashMap::new();
    let mut by_name: HashMap<String, String> = HashMap::new();
    for line in dep.lines() {
        let Some((m, rest)) = line.split_once(':') else {
            continue;
        };
        deps.insert(
            m.to_string(),
            rest.split_whitespace().map(String::from).collect(),
        );
        let base = m.rsplit('/').next().unwrap_or(m);
        let name = base.split(".ko").next().unwrap_or(base).replace('-', "_");
        by_name.insert(name, m.to_string());
    }
    fn visit(
        m: &str,
        deps: &HashMap<String, Vec<String>>,
        seen: &mut Vec<String>,
        order: &mut Vec<String>,
    ) {
        if seen.iter().any(|s| s == m) {
            return;
        }
        seen.push(m.to_string());
        for d in deps.get(m).into_iter().flatten() {
            visit(d, deps, seen, order);
        }
        order.push(m.to_string());
    }
    let (mut seen, mut order) = (Vec::new(), Vec::new());
    for w in wanted {
        if let Some(m) = by_name.get(*w) {
            visit(m, &deps, &mut seen, &mut order);
        }
    }
    order
        .iter()
        .map(|rel| {
            let path = moddir.join(rel);
            let bytes = if rel.ends_with(".ko") {
                std::fs::read(&path).expect("reading a kernel module")
            } else {
                // Compressed module: busybox insmod may not take it, decompress here.
                let tool = if rel.ends_with(".xz") {
                    "xz"
                } else if rel.ends_with(".zst") {
                    "zstd"
                } else {
                    "gzip"
                };
                let out = Command::new(tool)
                    .arg("-dc")
                    .arg(&path)
                    .output()
                    .expect("decompressing a kernel module");
                assert!(out.status.success(), "{tool} -dc {}", path.display());
                out.stdout
            };
            let base = rel.rsplit('/').next().unwrap_or(rel);
            let name = base.split(".ko").next().unwrap_or(base);
            (format!("{name}.ko"), bytes)
        })
        .collect()
}

/// A `newc` cpio archive (the initramfs format), uncompressed.
#[derive(Default)]
struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.ino += 1;
        let hdr = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        );
        self.out.extend_from_slice(hdr.as_bytes());
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, &[]);
    }

    fn file(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.entry(name, 0o100000 | mode, data);
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.out
    }
}

/// The udhcpc hook: configures the lease's address and default route.
const UDHCPC: &str = "#!/bin/sh
case \"$1\" in
bound|renew)
  ip addr add \"$ip/$mask\" dev \"$interface\"
  [ -n \"$router\" ] && ip route add default via \"$router\"
  echo \"STEP lease $ip/$mask router $router\"
  ;;
esac
exit 0
";

/// The guest's `/init`: brings up `eth0` with DHCP, pings `ping`, fetches `url` (printing the
/// body between `BODY<` and `>BODY`), prints [`DONE`] and powers off. Any failing step prints
/// `STEP FAIL ...` and powers off at once.
pub fn init_script(ping: &str, url: &str) -> String {
    format!(
        "#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
fail() {{ echo \"STEP FAIL $*\"; poweroff -f; }}
for m in $(cat /mods/order); do insmod /mods/$m || fail insmod $m; done
ip link set lo up
ip link set eth0 up || fail no eth0
echo \"STEP eth0 $(cat /sys/class/net/eth0/address)\"
udhcpc -i eth0 -f -q -n -t 10 -T 1 -s /udhcpc.sh || fail dhcp
ping -c 1 -W 3 {ping} || fail ping {ping}
echo STEP ping ok
# (No wget -T: Debian's static busybox 1.35 crashes with it; QEMU's timeout bounds the fetch.)
body=$(wget -q -O - {url}) || fail wget {url}
echo \"BODY<$body>BODY\"
echo {DONE}
poweroff -f
"
    )
}

/// Builds the initramfs at `dir/initrd` with `script` as `/init`; returns its path.
pub fn build_initramfs(kit: &Kit, dir: &Path, script: &str) -> PathBuf {
    let mut c = Cpio::default();
    for d in [
        "bin", "sbin", "usr", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "mods",
    ] {
        c.dir(d);
    }
    c.file(
        "bin/busybox",
        0o755,
        &std::fs::read(&kit.busybox).expect("reading busybox"),
    );
    c.file("init", 0o755, script.as_bytes());
    c.file("udhcpc.sh", 0o755, UDHCPC.as_bytes());
    let mods = kit
        .modules
        .as_deref()
        .map(|m| modules_for(m, &["virtio_pci", "virtio_net"]))
        .unwrap_or_default();
    let mut order = String::new();
    for (name, bytes) in &mods {
        c.file(&format!("mods/{name}"), 0o644, bytes);
        order.push_str(name);
        order.push('\n');
    }
    c.file("mods/order", 0o644, order.as_bytes());
    let path = dir.join("initrd");
    std::fs::write(&path, c.finish()).expect("writing the initramfs");
    path
}

/// Boots the guest with `netdev` (QEMU arguments for the network backend and device) and
/// returns its serial console output once QEMU exits, or after `timeout` (QEMU is then killed,
/// and the output so far is returned).
pub fn boot(kit: &Kit, initrd: &Path, netdev: &[String], timeout: Duration) -> String {
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg",
            "-m",
            "256",
            "-smp",
            "1",
            "-nodefaults",
            "-no-reboot",
        ])
        .args(["-display", "none", "-serial", "stdio"])
        .arg("-kernel")
        .arg(&kit.kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 quiet panic=-1 rdinit=/init"])
        .args(netdev)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning qemu-system-x86_64");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stdout.read_to_end(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stderr.read_to_end(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if Instant::now() > deadline {
            timed_out = true;
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut s = String::from_utf8_lossy(&out.join().unwrap_or_default()).into_owned();
    let e = err.join().unwrap_or_default();
    if !e.is_empty() {
        s.push_str("\n[qemu stderr] ");
        s.push_str(&String::from_utf8_lossy(&e));
    }
    if timed_out {
        s.push_str(&format!("\n[killed after {timeout:?}]"));
    }
    s
}

/// A one-shot HTTP server on host loopback: answers every `GET` with `body`, until dropped.
pub struct HttpServer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HttpServer {
    /// Starts serving `body` on an ephemeral port of 127.0.0.1.
    pub fn start(body: &str) -> HttpServer {
        use std::io::Write;
        use std::sync::atomic::Ordering;
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.set_nonblocking(true).expect("nonblocking");
        let port = l.local_addr().expect("addr").port();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s2 = stop.clone();
        let body = body.to_string();
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            while !s2.load(Ordering::Relaxed) && Instant::now() < deadline {
                match l.accept() {
                    Ok((mut c, _)) => {
                        let _ = c.set_nonblocking(false);
                        let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                        let mut req = Vec::new();
                        let mut buf = [0u8; 1024];
                        while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 16384 {
                            match c.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => req.extend_from_slice(&buf[..n]),
                            }
                        }
                        let _ = write!(
                            c,
                            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        HttpServer {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
