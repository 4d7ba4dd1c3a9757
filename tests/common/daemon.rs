//! A `usernet up` daemon for end-to-end tests.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::Child;

/// The usernet binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_usernet");

/// A `usernet up` daemon with its own config, socket and log in a temp dir; stopped on drop.
pub struct Daemon {
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Daemon {
    pub fn start(config: &str) -> Daemon {
        Self::start_with(config, &[])
    }

    /// Like [`Daemon::start`], with extra `usernet up` arguments.
    pub fn start_with(config: &str, extra: &[&str]) -> Daemon {
        Self::start_cmd(Command::new(BIN), config, extra)
    }

    /// Like [`Daemon::start`], the daemon running inside network namespace `ns` (`ip netns
    /// exec`, which execs the binary: the pid is the daemon's). Its control socket is a path,
    /// reachable from any namespace.
    pub fn start_in(ns: &super::Netns, config: &str) -> Daemon {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &ns.name, BIN]);
        Self::start_cmd(c, config, &[])
    }

    fn start_cmd(mut cmd: Command, config: &str, extra: &[&str]) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dir.path().join("usernet.toml");
        std::fs::write(&cfg, config).expect("write config");
        let log = std::fs::File::create(dir.path().join("log")).expect("log");
        let child = cmd
            .args(["up", "-c"])
            .arg(&cfg)
            .arg("--socket")
            .arg(dir.path().join("sock"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn usernet up");
        let mut d = Daemon {
            dir,
            child: Some(Child(child)),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !d.sock().exists() {
            assert!(d.alive(), "daemon exited at start: {}", d.log());
            assert!(
                Instant::now() < deadline,
                "daemon did not start: {}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.0.id())
    }

    pub fn sock(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    /// The tail of the daemon's log (what matters; keeps panic messages readable).
    pub fn log(&self) -> String {
        let s = std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default();
        let skip = s.len().saturating_sub(8000);
        s.get(skip..).unwrap_or(&s).to_string()
    }

    /// True while the process has not exited.
    pub fn alive(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.0.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Resident memory in KiB (`VmRSS`).
    pub fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        s.lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// `usernet ctl --json ARGS`, parsed; panics with the daemon log on failure.
    pub fn ctl(&self, args: &[&str]) -> Value {
        let out = self.ctl_raw(args);
        assert!(
            out.status.success(),
            "usernet ctl {}: {}\ndaemon log:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        serde_json::from_slice(&out.stdout).expect("ctl JSON")
    }

    pub fn ctl_raw(&self, args: &[&str]) -> std::process::Output {
        ctl_output(&self.sock(), args)
    }

    pub fn port_names(&self) -> Vec<String> {
        self.ctl(&["ports"])
            .as_array()
            .expect("array")
            .iter()
            .filter_map(|p| p["name"].as_str().map(String::from))
            .collect()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(c.0.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.0.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            // Child's Drop kills it.
        }
    }
}

/// `usernet ctl --socket SOCK --json ARGS` (bounded to 20 s), for a daemon a test did not start
/// itself (one a plugin started, say).
pub fn ctl_output(sock: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new("timeout")
        .arg("20")
        .arg(BIN)
        .arg("ctl")
        .arg("--socket")
        .arg(sock)
        .arg("--json")
        .args(args)
        .output()
        .expect("run usernet ctl")
}
