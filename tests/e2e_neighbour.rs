//! The gateway resolves a silent guest's MAC itself (ARP, neighbour solicitation) and holds the
//! packets meanwhile: a port forward to a guest that has sent nothing yet works on the first
//! connection (as Podman's rootlessport and `usernet up` with static addresses need). Traffic
//! stays on loopback and inside a namespace this test creates. Needs root.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::{Netns, free_port, require_root};
use usernet::link::netns::run_in_netns;

/// Connects to 127.0.0.1:`port` and expects `want` back for `send`.
fn echo_through(port: u16, send: &[u8]) -> Result<Vec<u8>, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    s.write_all(send).map_err(|e| format!("write: {e}"))?;
    let mut b = vec![0u8; send.len()];
    s.read_exact(&mut b).map_err(|e| format!("read: {e}"))?;
    Ok(b)
}

#[test]
fn forward_to_a_silent_guest_works_at_once() {
    if !require_root("forward_to_a_silent_guest_works_at_once") {
        return;
    }
    let ns = Netns::new("nb");
    let (p4, p6) = (free_port(), free_port());
    let d = Daemon::start(&format!(
        "[[network]]\nname = \"nb\"\nsubnet = \"10.78.0.0/24\"\nipv6 = \"fd78::/64\"\n\
         dns_upstreams = [\"127.0.0.1:9\"]\n\
         [[port]]\nnetwork = \"nb\"\nname = \"quiet\"\nnetns = \"{}\"\n\
         [[forward]]\nnetwork = \"nb\"\npublish = \"127.0.0.1:{p4}:7000/tcp\"\nto = \"10.78.0.10\"\n\
         [[forward]]\nnetwork = \"nb\"\npublish = \"127.0.0.1:{p6}:7000/tcp\"\nto = \"fd78::10\"\n",
        ns.path().display()
    ));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ns.exec(&["ip", "link", "show", "eth0"]).status.success() {
        assert!(Instant::now() < deadline, "no eth0");
        std::thread::sleep(Duration::from_millis(20));
    }
    // No router solicitation, no DAD, no traffic at all before the first connection.
    ns.exec_ok(&["sysctl", "-qw", "net.ipv6.conf.eth0.router_solicitations=0"]);
    ns.ip(&["link", "set", "lo", "up"]);
    ns.ip(&["addr", "add", "10.78.0.10/24", "dev", "eth0"]);
    ns.ip(&["-6", "addr", "add", "fd78::10/64", "dev", "eth0", "nodad"]);
    ns.ip(&["link", "set", "eth0", "up"]);
    // An echo server in the guest, for two connections, bounded in time.
    let server = run_in_netns(&ns.path(), || {
        let l = TcpListener::bind("[::]:7000")?;
        l.set_nonblocking(true)?;
        Ok(l)
    })
    .expect("listener in the guest");
    let served = std::thread::spawn(move || {
        let end = Instant::now() + Duration::from_secs(30);
        let mut n = 0;
        while n < 2 && Instant::now() < end {
            match server.accept() {
                Ok((mut s, _)) => {
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                    let mut b = [0u8; 64];
                    if let Ok(k) = s.read(&mut b) {
                        let _ = s.write_all(&b[..k]);
                    }
                    n += 1;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        n
    });
    // The first connection through each forward, with nothing learned about the guest.
    let got = echo_through(p4, b"hello v4")
        .unwrap_or_else(|e| panic!("first connection over IPv4: {e}\n{}", d.log()));
    assert_eq!(got, b"hello v4");
    let got = echo_through(p6, b"hello v6")
        .unwrap_or_else(|e| panic!("first connection over IPv6: {e}\n{}", d.log()));
    assert_eq!(got, b"hello v6");
    assert_eq!(served.join().expect("server"), 2);
    let c = &d.ctl(&["gateway"])[0]["counters"];
    assert!(c["neigh_solicits"].as_u64().unwrap_or(0) >= 2, "{c}");
}
