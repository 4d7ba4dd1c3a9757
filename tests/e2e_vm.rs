//! Real VMs on usernet's VM transports: a tiny QEMU guest (stock kernel, busybox initramfs; see
//! common/qemu.rs) joins a `usernet up` network through `usernet attach --stream`, gets a DHCP
//! lease from the gateway, pings it and fetches a file from a host loopback server through NAT
//! (the gateway's address reaches the host's 127.0.0.1). Needs qemu-system-x86_64 and a kernel
//! image, not root; skips (`SKIP`) without them.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::daemon::{BIN, Daemon};
use common::qemu::{self, DONE, HttpServer, Kit};

/// Longest a guest may run (boot, DHCP, ping, fetch, power off) under TCG.
const GUEST_TIMEOUT: Duration = Duration::from_secs(90);

fn network(subnet: &str) -> String {
    format!(
        "[[network]]\nname = \"net0\"\nsubnet = \"{subnet}\"\nipv6 = \"off\"\ndns_upstreams = [\"127.0.0.1:9\"]\n"
    )
}

fn attach(d: &Daemon, args: &[&str]) {
    let out = Command::new("timeout")
        .arg("20")
        .arg(BIN)
        .arg("attach")
        .args(args)
        .arg("--socket")
        .arg(d.sock())
        .output()
        .expect("usernet attach");
    assert!(
        out.status.success(),
        "usernet attach {}: {}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );
}

fn wait_port_gone(d: &Daemon, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while d.port_names().iter().any(|n| n == name) {
        assert!(
            Instant::now() < deadline,
            "port {name} not removed after the VM exited\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// QEMU arguments for a virtio-net NIC on the netdev `backend` (`stream,...`/`dgram,...`).
fn virtio_netdev(backend: String) -> [String; 4] {
    [
        "-netdev".to_string(),
        backend,
        "-device".to_string(),
        "virtio-net-pci,netdev=n0".to_string(),
    ]
}

/// A `-netdev dgram` backend between QEMU's `local` and usernet's `remote` UNIX sockets.
fn dgram_backend(local: &Path, remote: &Path) -> String {
    format!(
        "dgram,id=n0,local.type=unix,local.path={},remote.type=unix,remote.path={}",
        local.display(),
        remote.display()
    )
}

/// Boots the guest with `netdev`, asserts it did every step and fetched `token`.
fn run_guest(kit: &Kit, dir: &Path, d: &Daemon, gateway: &str, netdev: &[String]) {
    let token = format!("usernet-vm-{}", std::process::id());
    let http = HttpServer::start(&token);
    let url = format!("http://{gateway}:{}/file", http.port);
    let initrd = qemu::build_initramfs(kit, dir, &qemu::init_script(gateway, &url));
    let start = Instant::now();
    let console = qemu::boot(kit, &initrd, netdev, GUEST_TIMEOUT);
    eprintln!("guest ran {:?}", start.elapsed());
    let ok = console.contains(DONE) && console.contains(&format!("BODY<{token}>BODY"));
    assert!(
        ok,
        "guest did not finish: console:\n{console}\ndaemon log:\n{}",
        d.log()
    );
    assert!(console.contains("STEP lease 10."), "{console}");
}

#[test]
fn qemu_stream_guest_dhcp_ping_and_nat_to_host_loopback() {
    let Some(kit) = qemu::require_qemu("qemu_stream_guest_dhcp_ping_and_nat_to_host_loopback")
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("vm.sock");
    let d = Daemon::start(&network("10.91.0.0/24"));
    attach(
        &d,
        &["--stream", sock.to_str().expect("utf-8"), "--name", "vm"],
    );
    assert!(sock.exists(), "stream socket not created");
    let netdev = virtio_netdev(format!(
        "stream,id=n0,server=off,addr.type=unix,addr.path={}",
        sock.display()
    ));
    run_guest(&kit, dir.path(), &d, "10.91.0.1", &netdev);
    let leases = d.ctl(&["leases"]).to_string();
    assert!(leases.contains("10.91.0."), "no lease recorded: {leases}");
    wait_port_gone(&d, "vm");
}

#[test]
fn qemu_dgram_guest_dhcp_ping_and_nat_to_host_loopback() {
    let Some(kit) = qemu::require_qemu("qemu_dgram_guest_dhcp_ping_and_nat_to_host_loopback")
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("usernet.sock");
    let vm_sock = dir.path().join("qemu.sock");
    let d = Daemon::start(&network("10.92.0.0/24"));
    // The peer is learned from QEMU's first datagram (its local.path).
    attach(
        &d,
        &["--dgram", sock.to_str().expect("utf-8"), "--name", "vm"],
    );
    assert!(sock.exists(), "datagram socket not created");
    let netdev = virtio_netdev(dgram_backend(&vm_sock, &sock));
    run_guest(&kit, dir.path(), &d, "10.92.0.1", &netdev);
    let leases = d.ctl(&["leases"]).to_string();
    assert!(leases.contains("10.92.0."), "no lease recorded: {leases}");
    // The port is the socket: it stays after the VM is gone, and a second VM (another local
    // path) is learned once the first one's socket is gone.
    assert!(d.port_names().iter().any(|n| n == "vm"));
    let _ = std::fs::remove_file(&vm_sock);
    let netdev2 = virtio_netdev(dgram_backend(&dir.path().join("qemu2.sock"), &sock));
    run_guest(&kit, dir.path(), &d, "10.92.0.1", &netdev2);
}

#[test]
fn qemu_dgram_with_given_peer() {
    let Some(kit) = qemu::require_qemu("qemu_dgram_with_given_peer") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("usernet.sock");
    let vm_sock = dir.path().join("qemu.sock");
    // The port from the config file, with the peer given.
    let d = Daemon::start(&format!(
        "{}[[port]]\nnetwork = \"net0\"\nname = \"vm\"\ndgram = {{ path = \"{}\", peer = \"{}\" }}\n",
        network("10.93.0.0/24"),
        sock.display(),
        vm_sock.display()
    ));
    let netdev = virtio_netdev(dgram_backend(&vm_sock, &sock));
    run_guest(&kit, dir.path(), &d, "10.93.0.1", &netdev);
}

/// An ARP request for `target` from `mac`/`ip`.
fn arp_request(mac: [u8; 6], ip: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target);
    f.resize(60, 0);
    f
}

fn oversize_drops(d: &Daemon) -> u64 {
    d.ctl(&["stats"])
        .as_array()
        .and_then(|v| v.iter().find(|r| r["port"] == "vm").cloned())
        .map(|r| r["stats"]["drops"]["oversize"].as_u64().unwrap_or(0))
        .unwrap_or(0)
}

/// No QEMU: a raw unixgram peer. Hostile datagrams (oversize, runt, empty, from a stranger) are
/// dropped and counted, the port stays, and an ARP request for the gateway gets its answer.
#[test]
fn dgram_raw_peer_arp_to_gateway_and_garbage_is_not_fatal() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("usernet.sock");
    let d = Daemon::start(&network("10.94.0.0/24"));
    attach(
        &d,
        &["--dgram", sock.to_str().expect("utf-8"), "--name", "vm"],
    );
    let mode = std::fs::metadata(&sock).map(|m| {
        use std::os::unix::fs::PermissionsExt;
        m.permissions().mode() & 0o777
    });
    assert_eq!(mode.ok(), Some(0o600), "socket private");
    let vm = UnixDatagram::bind(dir.path().join("vm.sock")).expect("bind");
    vm.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    // Garbage first: over the MTU, empty, a runt; a stranger's frame.
    vm.send_to(&[0xab; 9000], &sock).expect("oversize");
    vm.send_to(&[], &sock).expect("empty");
    vm.send_to(&[1, 2, 3], &sock).expect("runt");
    let stranger = UnixDatagram::bind(dir.path().join("stranger.sock")).expect("bind");
    let mac = [0x02, 0x00, 0x00, 0x00, 0x94, 0x07];
    stranger
        .send_to(
            &arp_request([0x02, 0, 0, 0, 0x94, 0x08], [10, 94, 0, 8], [10, 94, 0, 1]),
            &sock,
        )
        .expect("stranger");
    let deadline = Instant::now() + Duration::from_secs(5);
    while oversize_drops(&d) == 0 {
        assert!(
            Instant::now() < deadline,
            "oversize not counted\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(d.port_names().iter().any(|n| n == "vm"), "port kept");
    // The ARP request gets the gateway's reply, to our socket (the learned peer).
    let req = arp_request(mac, [10, 94, 0, 7], [10, 94, 0, 1]);
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + Duration::from_secs(5);
    let reply = loop {
        assert!(Instant::now() < deadline, "no ARP reply\n{}", d.log());
        vm.send_to(&req, &sock).expect("arp");
        let mut got = None;
        while let Ok(n) = vm.recv(&mut buf) {
            let f = &buf[..n];
            if n >= 42 && f[12..14] == [0x08, 0x06] && f[20..22] == [0, 2] {
                got = Some(f.to_vec());
                break;
            }
        }
        if let Some(f) = got {
            break f;
        }
    };
    assert_eq!(&reply[0..6], &mac, "reply to our MAC");
    assert_eq!(&reply[28..32], &[10, 94, 0, 1], "sender is the gateway");
    assert_eq!(&reply[38..42], &[10, 94, 0, 7], "target is us");
    // The stranger got nothing.
    stranger.set_nonblocking(true).expect("nonblocking");
    assert!(stranger.recv(&mut buf).is_err(), "stranger answered");
    // Removing the port removes its socket file.
    d.ctl(&["port", "rm", "vm"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while sock.exists() {
        assert!(Instant::now() < deadline, "socket file left\n{}", d.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn qemu_vhost_user_guest_dhcp_ping_and_nat_to_host_loopback() {
    let Some(kit) = qemu::require_qemu("qemu_vhost_user_guest_dhcp_ping_and_nat_to_host_loopback")
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("vhost.sock");
    let d = Daemon::start(&network("10.95.0.0/24"));
    attach(
        &d,
        &[
            "--vhost-user",
            sock.to_str().expect("utf-8"),
            "--name",
            "vm",
        ],
    );
    assert!(sock.exists(), "vhost-user socket not created");
    let netdev: Vec<String> = [
        "-object",
        "memory-backend-memfd,id=mem0,size=256M,share=on",
        "-numa",
        "node,memdev=mem0",
        "-chardev",
        &format!("socket,id=c0,path={}", sock.display()),
        "-netdev",
        "vhost-user,id=n0,chardev=c0",
        "-device",
        // vectors=0: QEMU 7.2 under TCG crashes starting a vhost device with MSI-X.
        "virtio-net-pci,netdev=n0,vectors=0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    run_guest(&kit, dir.path(), &d, "10.95.0.1", &netdev);
    // The port stays; a second VM connects after the first is gone.
    assert!(d.port_names().iter().any(|n| n == "vm"));
    run_guest(&kit, dir.path(), &d, "10.95.0.1", &netdev);
    d.ctl(&["port", "rm", "vm"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while sock.exists() {
        assert!(Instant::now() < deadline, "socket file left\n{}", d.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}
