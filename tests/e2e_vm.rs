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
    let netdev = [
        "-netdev".to_string(),
        format!(
            "stream,id=n0,server=off,addr.type=unix,addr.path={}",
            sock.display()
        ),
        "-device".to_string(),
        "virtio-net-pci,netdev=n0".to_string(),
    ];
    run_guest(&kit, dir.path(), &d, "10.91.0.1", &netdev);
    let leases = d.ctl(&["leases"]).to_string();
    assert!(leases.contains("10.91.0."), "no lease recorded: {leases}");
    wait_port_gone(&d, "vm");
}
