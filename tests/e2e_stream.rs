//! The stream link (QEMU `-netdev stream` framing): a test peer bridges a TAP inside a namespace
//! to usernet's stream socket, as a VM would; the namespace gets a DHCP lease and pings another
//! namespace. A record over the MTU is skipped and counted; a peer that closes mid-frame is
//! dropped and the socket accepts the next peer. Needs root.

mod common;

use std::collections::VecDeque;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::{Netns, require_root};
use usernet::frame::FramePool;
use usernet::link::Link;
use usernet::link::stream::StreamLink;
use usernet::link::tap::{TapLink, TapOptions};

/// A "VM": moves frames between a TAP in a namespace and the stream socket until dropped.
struct Peer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Peer {
    fn start(ns: &Netns, sock: &std::path::Path) -> Peer {
        let mut tap =
            TapLink::create_in_netns(&ns.path(), "eth0", &TapOptions::default()).expect("tap");
        let mut st = StreamLink::new(UnixStream::connect(sock).expect("connect"), 1514, "test vm")
            .expect("stream");
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let pool = FramePool::new(1518, 256);
            let (mut a, mut b) = (Vec::new(), Vec::new());
            let (mut qa, mut qb) = (VecDeque::new(), VecDeque::new());
            while !s2.load(Ordering::Relaxed) {
                let mut fds = [
                    libc::pollfd {
                        fd: tap.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    },
                    libc::pollfd {
                        fd: st.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    },
                ];
                // SAFETY: two valid pollfds.
                unsafe { libc::poll(fds.as_mut_ptr(), 2, 50) };
                if tap.recv_batch(&pool, &mut a, 64).is_err() {
                    return;
                }
                qa.extend(a.drain(..));
                if st.send_batch(&mut qa).is_err() {
                    return;
                }
                if st.recv_batch(&pool, &mut b, 64).is_err() {
                    return;
                }
                qb.extend(b.drain(..));
                let _ = tap.send_batch(&mut qb);
                qa.truncate(1024);
                qb.truncate(1024);
            }
        });
        Peer {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn wait_port(d: &Daemon, name: &str, present: bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while d.port_names().contains(&name.to_string()) != present {
        assert!(
            Instant::now() < deadline,
            "port {name} present={present} never happened\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn stream_peer_gets_a_lease_and_pings_a_namespace() {
    if !require_root("stream_peer_gets_a_lease_and_pings_a_namespace") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("vm.sock");
    let vm = Netns::new("sv");
    let b = Netns::new("sb");
    let d = Daemon::start(&format!(
        "[[network]]\nname = \"n\"\nsubnet = \"10.80.0.0/24\"\nipv6 = \"off\"\ndns_upstreams = [\"127.0.0.1:9\"]\n\
         [[port]]\nnetwork = \"n\"\nname = \"vm\"\nstream = \"{}\"\n\
         [[port]]\nnetwork = \"n\"\nname = \"b\"\nnetns = \"{}\"\n",
        sock.display(),
        b.path().display()
    ));
    b.ip(&["addr", "add", "10.80.0.50/24", "dev", "eth0"]);
    let peer = Peer::start(&vm, &sock);
    wait_port(&d, "vm", true);
    vm.ip(&["link", "set", "lo", "up"]);
    let script = dir.path().join("u.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\n[ \"$1\" = bound ] && ip addr add \"$ip/$mask\" dev \"$interface\"\nexit 0\n",
    )
    .expect("script");
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&script)
        .status()
        .expect("chmod");
    vm.udhcpc(script.to_str().expect("utf-8"), &[], || d.log());
    assert!(
        vm.exec(&["ping", "-c", "2", "-W", "2", "10.80.0.50"])
            .status
            .success(),
        "vm -> b over the stream link\n{}",
        d.log()
    );
    drop(peer);
    wait_port(&d, "vm", false);

    // A record over the MTU: skipped and counted as oversize, the port stays (as a TAP's
    // truncated frame); the peer then closes inside that record: dropped, and the socket takes
    // the next peer.
    let oversize = |d: &Daemon| {
        d.ctl(&["stats"])
            .as_array()
            .and_then(|v| v.iter().find(|r| r["port"] == "vm").cloned())
            .map(|r| r["stats"]["drops"]["oversize"].as_u64().unwrap_or(0))
            .unwrap_or(0)
    };
    let mut bad = UnixStream::connect(&sock).expect("connect");
    wait_port(&d, "vm", true);
    bad.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3])
        .expect("write");
    let deadline = Instant::now() + Duration::from_secs(5);
    while oversize(&d) == 0 {
        assert!(
            Instant::now() < deadline,
            "oversize not counted\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(d.port_names().contains(&"vm".to_string()), "port kept");
    drop(bad);
    wait_port(&d, "vm", false);
    // One that closes in the middle of a frame.
    let mut cut = UnixStream::connect(&sock).expect("connect");
    wait_port(&d, "vm", true);
    cut.write_all(&[0, 0, 0, 100, 1, 2, 3]).expect("write");
    drop(cut);
    wait_port(&d, "vm", false);
    // A good peer again.
    let _peer = Peer::start(&vm, &sock);
    wait_port(&d, "vm", true);
    // (A new TAP: the first one went with the first peer.)
    vm.ip(&["addr", "add", "10.80.0.99/24", "dev", "eth0"]);
    assert!(
        vm.exec(&["ping", "-c", "1", "-W", "2", "10.80.0.50"])
            .status
            .success()
    );
}
