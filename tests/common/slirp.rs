//! Helpers for the slirp4netns drop-in tests: the program under test (usernet invoked as
//! `slirp4netns` through a symlink, as runtimes find it, or a reference slirp4netns named by
//! `USERNET_SLIRP_REFERENCE`), a rootless-style target (`unshare -r -n sleep`, as slirp4netns's
//! own tests create one), descriptors placed at fixed numbers, and the JSON API.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::Child;
use super::daemon::BIN;

/// A pipe `(read, write)`, both ends close-on-exec.
pub fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills a valid two-element array.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors are fresh and ours.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// Places `fds` at the given descriptor numbers in the child (`(number, fd)`), clearing
/// close-on-exec on them.
pub fn place_fds(cmd: &mut Command, fds: &[(i32, &OwnedFd)]) {
    let raw: Vec<(i32, i32)> = fds.iter().map(|(n, f)| (*n, f.as_raw_fd())).collect();
    // SAFETY: only dup2 between fork and exec (async-signal-safe).
    unsafe {
        cmd.pre_exec(move || {
            // Out of the way first (a source may already sit on a target number), then into
            // place; dup2 clears close-on-exec on the copies.
            for (i, (_, fd)) in raw.iter().enumerate() {
                if libc::dup2(*fd, 200 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (i, (n, _)) in raw.iter().enumerate() {
                if libc::dup2(200 + i as i32, *n) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Reads the ready fd: slirp4netns writes "1" once the network is up.
pub fn wait_ready(r: OwnedFd) {
    let mut f = std::fs::File::from(r);
    let mut b = [0u8; 1];
    let n = f.read(&mut b).expect("read ready fd");
    assert_eq!((n, b[0]), (1, b'1'), "ready fd protocol: \"1\" then close");
}

/// Sends one raw request on the API socket (then half-closes) and returns the raw reply.
pub fn api_raw(sock: &Path, req: &[u8]) -> String {
    let mut s = UnixStream::connect(sock).expect("api socket");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    // A too large message is answered before it is all sent: the write may fail.
    let _ = s.write_all(req);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// One JSON request on the API socket, its JSON reply.
pub fn api(sock: &Path, req: &Value) -> Value {
    let out = api_raw(sock, req.to_string().as_bytes());
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: reply {out:?} to {req}"))
}

/// The slirp4netns under test: usernet through a symlink named `slirp4netns`, or the program
/// named by `USERNET_SLIRP_REFERENCE` (e.g. `/usr/bin/slirp4netns`, to check that a test
/// mirrors what slirp4netns does). Its stderr goes to a log file in a private directory.
pub struct Slirp {
    dir: tempfile::TempDir,
    /// The program to run.
    pub exe: PathBuf,
    /// True when this is the reference slirp4netns, not usernet.
    pub reference: bool,
}

impl Slirp {
    /// The program under test (see the type's docs).
    pub fn new() -> Slirp {
        let dir = tempfile::Builder::new()
            .prefix("usernet-slirpup-")
            .tempdir()
            .expect("tempdir");
        match std::env::var("USERNET_SLIRP_REFERENCE") {
            Ok(p) if !p.is_empty() => Slirp {
                dir,
                exe: PathBuf::from(p),
                reference: true,
            },
            _ => {
                let exe = dir.path().join("slirp4netns");
                std::os::unix::fs::symlink(BIN, &exe).expect("symlink");
                Slirp {
                    dir,
                    exe,
                    reference: false,
                }
            }
        }
    }

    /// A private directory for sockets and files of the test.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What the program wrote to stderr so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// The log file, opened for appending (stdout and stderr of what the test starts).
    pub fn log_file(&self) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("stderr.log"))
            .expect("log")
    }

    /// A command running the program with `args` (stdin null, stdout and stderr to the log).
    pub fn command(&self, args: &[&str]) -> Command {
        let log = self.log_file();
        let mut cmd = Command::new(&self.exe);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        cmd
    }

    /// Starts the program with `args` and `fds` placed at their numbers.
    pub fn spawn(&self, args: &[&str], fds: &[(i32, &OwnedFd)]) -> Child {
        let mut cmd = self.command(args);
        place_fds(&mut cmd, fds);
        Child(cmd.spawn().expect("start slirp4netns"))
    }

    /// Runs the program to completion (at most 20 s) and returns its output.
    pub fn output(&self, args: &[&str]) -> Output {
        Command::new("timeout")
            .arg("20")
            .arg(&self.exe)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run slirp4netns")
    }
}

/// A rootless-style target, as slirp4netns's tests make one: `unshare -r -n sleep` (a new user
/// namespace mapping the caller to root, and a network namespace it owns). Killed on drop.
pub struct Target {
    /// The `sleep` process (its namespaces are the target).
    pub child: Child,
    /// Its pid.
    pub pid: u32,
}

impl Target {
    /// `unshare -r -n sleep 600`, once its namespaces exist.
    pub fn new() -> Target {
        Self::with(&["-r", "-n"])
    }

    /// `unshare FLAGS sleep 600`, once its network namespace exists.
    pub fn with(flags: &[&str]) -> Target {
        let child = Command::new("unshare")
            .args(flags)
            .args(["sleep", "600"])
            .stdin(Stdio::null())
            .spawn()
            .expect("unshare");
        let pid = child.id();
        let t = Target {
            child: Child(child),
            pid,
        };
        let me = std::fs::read_link("/proc/self/ns/net").expect("own netns");
        let t0 = Instant::now();
        while std::fs::read_link(t.netns()).ok().as_ref() == Some(&me)
            || std::fs::read_link(t.netns()).is_err()
        {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "unshare did not make its namespaces"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        t
    }

    /// The pid as an argument.
    pub fn arg(&self) -> String {
        self.pid.to_string()
    }

    /// Its network namespace file.
    pub fn netns(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.pid))
    }

    /// Its user namespace file.
    pub fn userns(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/user", self.pid))
    }

    /// Runs `args` in its user and network namespaces (`nsenter --preserve-credentials -U -n`,
    /// as slirp4netns's tests do), bounded by a timeout.
    pub fn exec(&self, args: &[&str]) -> Output {
        Command::new("timeout")
            .arg("20")
            .args(["nsenter", "--preserve-credentials", "-U", "-n"])
            .arg(format!("--target={}", self.pid))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("nsenter")
    }

    /// Like [`Self::exec`], asserting success; returns stdout.
    pub fn exec_ok(&self, args: &[&str]) -> String {
        let out = self.exec(args);
        assert!(
            out.status.success(),
            "in target {}: {}: {}{}",
            self.pid,
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits (at most 20 s) until device `dev` exists in the namespace
    /// (`wait_for_network_device` of slirp4netns's tests); panics with `log` otherwise.
    pub fn wait_device(&self, dev: &str, log: impl Fn() -> String) {
        let t0 = Instant::now();
        let path = PathBuf::from(format!("/proc/{}/ns/net", self.pid));
        let dev = dev.to_string();
        loop {
            let d = dev.clone();
            let found = usernet::link::netns::run_in_netns(&path, move || {
                Ok(usernet::link::netns::if_index(&d).is_ok())
            })
            .unwrap_or(false);
            if found {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "{dev} never appeared in the target: {}",
                log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for `dev` and checks the scripts' "unconfigured" state: the device is known to
    /// `ip -a netconf` and has no IPv4 address (slirp4netns without `-c`).
    pub fn assert_bare_device(&self, dev: &str, log: impl Fn() -> String) {
        self.wait_device(dev, &log);
        assert!(self.exec_ok(&["ip", "-a", "netconf"]).contains(dev));
        assert!(
            !self.exec_ok(&["ip", "addr", "show", dev]).contains("inet "),
            "{dev} has an IPv4 address: {}",
            log()
        );
    }

    /// Waits for `dev` and for its IPv4 address (slirp4netns `-c`; the address may follow the
    /// device by a moment): at most 20 s for the device, 10 s more for the address.
    pub fn wait_configured_device(&self, dev: &str, log: impl Fn() -> String) {
        self.wait_device(dev, &log);
        assert!(self.exec_ok(&["ip", "-a", "netconf"]).contains(dev));
        let t0 = Instant::now();
        while !self.exec_ok(&["ip", "addr", "show", dev]).contains("inet ") {
            assert!(t0.elapsed() < Duration::from_secs(10), "no inet: {}", log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `f` on a thread inside the target's network namespace (sockets it opens stay
    /// there).
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    ) -> std::io::Result<T> {
        usernet::link::netns::run_in_netns(&self.netns(), f).map_err(|e| e.source)
    }
}
