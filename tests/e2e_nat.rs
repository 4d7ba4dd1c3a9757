//! End-to-end NAT and port-forward tests: guests in namespaces reach servers on the host's
//! loopback through the gateway (TCP, UDP, ICMP), and host clients reach guest servers through
//! `-p` forwards. Servers live on loopback or in namespaces these tests create; nothing else is
//! ever addressed. Need root.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::{Child, Netns, Veth, require_root};
use usernet::link::netns::run_in_netns;

const NO_UPSTREAM: &str = "127.0.0.1:9";

fn config(subnet: &str, extra: &str, ports: &[(&str, &Netns)]) -> String {
    let mut s = format!(
        "[[network]]\nname = \"n\"\nsubnet = \"{subnet}\"\nipv6 = \"off\"\ndns_upstreams = [\"{NO_UPSTREAM}\"]\n{extra}\n"
    );
    for (name, ns) in ports {
        s += &format!(
            "[[port]]\nnetwork = \"n\"\nname = \"{name}\"\nnetns = \"{}\"\n",
            ns.path().display()
        );
    }
    s
}

/// Static address and default route via the gateway (`.1`).
fn guest(ns: &Netns, addr: &str, gw: &str) {
    ns.ip(&["link", "set", "lo", "up"]);
    ns.ip(&["addr", "add", addr, "dev", "eth0"]);
    ns.ip(&["route", "add", "default", "via", gw]);
}

/// A loopback HTTP server answering every request with `body`; serves until dropped.
struct Http {
    port: u16,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Http {
    fn start(body: &'static str) -> Http {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        l.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let st = stop.clone();
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut c, _)) => {
                        let _ = c.set_nonblocking(false);
                        let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                        let mut buf = [0u8; 4096];
                        let _ = c.read(&mut buf);
                        let _ = write!(
                            c,
                            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Http { port, stop }
    }
}

impl Drop for Http {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Deterministic test bytes.
fn pattern(len: usize) -> Vec<u8> {
    common::pattern(len, 0x9e37_79b9)
}

/// SHA-256 by `sha256sum` (coreutils).
fn sha256(data: &[u8]) -> String {
    let mut sha = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum");
    sha.stdin
        .take()
        .expect("stdin")
        .write_all(data)
        .expect("pipe");
    let out = sha.wait_with_output().expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

fn curl(ns: &Netns, url: &str) -> std::process::Output {
    ns.exec(&["curl", "-sS", "--max-time", "5", url])
}

/// `net.ipv4.ping_group_range` opened for the test, restored on drop.
struct PingRange(String);

impl PingRange {
    fn open() -> PingRange {
        let old = std::fs::read_to_string("/proc/sys/net/ipv4/ping_group_range").expect("read");
        std::fs::write("/proc/sys/net/ipv4/ping_group_range", "0 2147483647").expect("write");
        PingRange(old.trim().replace('\t', " "))
    }
}

impl Drop for PingRange {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/net/ipv4/ping_group_range", &self.0);
    }
}

#[test]
fn nat_http_bulk_concurrent_udp_and_refused() {
    if !require_root("nat_http_bulk_concurrent_udp_and_refused") {
        return;
    }
    let a = Netns::new("ta");
    // Under the sandbox (seccomp allowlist, no capabilities): NAT must not need more.
    let d = Daemon::start_with(&config("10.72.0.0/24", "", &[("a", &a)]), &["--sandbox"]);
    guest(&a, "10.72.0.5/24", "10.72.0.1");

    // HTTP from a loopback server through the gateway's address.
    let http = Http::start("hello through NAT");
    let out = curl(&a, &format!("http://10.72.0.1:{}/", http.port));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello through NAT",
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );
    // ... and by the name host.usernet.
    let dns = a.exec_ok(&["dig", "+short", "@10.72.0.1", "host.usernet"]);
    assert_eq!(dns.trim(), "10.72.0.1");

    // 100 MB from the host's loopback into the guest: SHA-256 equal on both ends.
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    let data = Arc::new(pattern(100 << 20));
    let d2 = data.clone();
    let sender = std::thread::spawn(move || {
        let (mut c, _) = l.accept().expect("accept");
        c.write_all(&d2).expect("write");
    });
    let got = run_in_netns(&a.path(), move || {
        let mut c = TcpStream::connect_timeout(
            &format!("10.72.0.1:{port}").parse().expect("addr"),
            Duration::from_secs(5),
        )?;
        c.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut v = Vec::with_capacity(100 << 20);
        c.read_to_end(&mut v)?;
        Ok(v)
    })
    .expect("receive 100 MB");
    sender.join().expect("sender");
    assert_eq!(got.len(), data.len(), "length");
    assert_eq!(
        sha256(&got),
        sha256(&data),
        "100 MB through NAT arrived changed"
    );

    // 32 MB the other way, guest -> host, also intact.
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    let receiver = std::thread::spawn(move || {
        let (mut c, _) = l.accept().expect("accept");
        let mut v = Vec::new();
        c.read_to_end(&mut v).expect("read");
        v
    });
    let up = Arc::new(pattern(32 << 20));
    let up2 = up.clone();
    run_in_netns(&a.path(), move || {
        let mut c = TcpStream::connect_timeout(
            &format!("10.72.0.1:{port}").parse().expect("addr"),
            Duration::from_secs(5),
        )?;
        c.write_all(&up2)?;
        c.shutdown(std::net::Shutdown::Write)?;
        Ok(())
    })
    .expect("send 32 MB");
    let got = receiver.join().expect("receiver");
    assert!(got == *up, "32 MB guest -> host arrived changed");

    // Both ways moved large segments: the guest's TSO frames went to NAT whole, and NAT's
    // segments went out as GSO frames (average frame sizes far above the 1500-byte MTU).
    let stats = d.ctl(&["stats"]);
    for port in ["a", "gw.n"] {
        let row = stats
            .as_array()
            .and_then(|v| v.iter().find(|r| r["port"] == port))
            .unwrap_or_else(|| panic!("no stats for {port}: {stats}"));
        let (bytes, frames) = (
            row["stats"]["rx_bytes"].as_u64().unwrap_or(0),
            row["stats"]["rx_frames"].as_u64().unwrap_or(0),
        );
        assert!(
            frames > 0 && bytes / frames > 3000,
            "port {port}: {frames} frames averaging {} bytes: no large segments",
            bytes / frames.max(1)
        );
    }

    // 200 concurrent connections, all complete.
    let echo = TcpListener::bind("127.0.0.1:0").expect("bind");
    let eport = echo.local_addr().expect("addr").port();
    let served = Arc::new(AtomicUsize::new(0));
    let s2 = served.clone();
    std::thread::spawn(move || {
        for c in echo.incoming().take(200) {
            let Ok(mut c) = c else { continue };
            let s3 = s2.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                if let Ok(n) = c.read(&mut buf) {
                    let _ = c.write_all(&buf[..n]);
                    s3.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    let ok = run_in_netns(&a.path(), move || {
        let target: SocketAddr = format!("10.72.0.1:{eport}").parse().expect("addr");
        let conns: Vec<_> = (0..200)
            .map(|_| TcpStream::connect_timeout(&target, Duration::from_secs(10)))
            .collect::<Result<_, _>>()?;
        let mut ok = 0;
        for (i, mut c) in conns.into_iter().enumerate() {
            c.set_read_timeout(Some(Duration::from_secs(10)))?;
            let msg = format!("conn {i}");
            c.write_all(msg.as_bytes())?;
            let mut buf = [0u8; 64];
            let n = c.read(&mut buf)?;
            if &buf[..n] == msg.as_bytes() {
                ok += 1;
            }
        }
        Ok(ok)
    })
    .expect("200 connections");
    assert_eq!(ok, 200, "{}", d.log());

    // UDP: dig through NAT to a dnsmasq on the host's loopback.
    let udp_port = {
        let s = UdpSocket::bind("127.0.0.1:0").expect("probe");
        s.local_addr().expect("addr").port()
    };
    let _dnsmasq = common::dnsmasq(
        None,
        &[
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            &format!("--port={udp_port}"),
            "--address=/nat.test/10.9.9.9",
            "--pid-file=",
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    let ans = a.exec_ok(&[
        "dig",
        "+short",
        "+time=2",
        "+tries=2",
        "-p",
        &udp_port.to_string(),
        "@10.72.0.1",
        "x.nat.test",
    ]);
    assert_eq!(ans.trim(), "10.9.9.9");

    // A closed host port: refused at once, not a hang.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let t = Instant::now();
    let out = curl(&a, &format!("http://10.72.0.1:{closed}/"));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refused") || out.status.code() == Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "refusal took {:?}",
        t.elapsed()
    );

    let gw = d.ctl(&["gateway"]);
    let nat = &gw[0]["nat"];
    assert!(nat["tcp_flows"].as_u64().unwrap_or(0) >= 202, "{gw}");
    assert!(nat["refused_host"].as_u64().unwrap_or(0) >= 1, "{gw}");
}

#[test]
fn nat_iperf3_and_ping_to_a_test_host() {
    if !require_root("nat_iperf3_and_ping_to_a_test_host") {
        return;
    }
    let a = Netns::new("pa");
    // A "remote host": a namespace reached from the host over a veth (10.74.0.2).
    let ext = Netns::new("px");
    let veth = Veth::new("pv");
    veth.move_b(&ext, Some("eth0"));
    common::ip(&["addr", "add", "10.74.0.1/24", "dev", &veth.a]);
    ext.ip(&["addr", "add", "10.74.0.2/24", "dev", "eth0"]);
    let _range = PingRange::open();
    let d = Daemon::start(&config("10.73.0.0/24", "", &[("a", &a)]));
    guest(&a, "10.73.0.5/24", "10.73.0.1");

    assert!(
        a.exec(&["ping", "-c", "2", "-W", "2", "10.74.0.2"])
            .status
            .success(),
        "ping through NAT\n{}",
        d.log()
    );

    let server = Child(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &ext.name,
                "iperf3",
                "-s",
                "-1",
                "-B",
                "10.74.0.2",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("iperf3 -s"),
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ext.exec_ok(&["ss", "-ltn"]).contains("10.74.0.2:5201") {
        assert!(Instant::now() < deadline, "iperf3 server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = a.exec(&["iperf3", "-c", "10.74.0.2", "-t", "5", "-J"]);
    drop(server);
    assert!(
        out.status.success(),
        "iperf3: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0);
    eprintln!("iperf3 through NAT: {:.2} Gbit/s", bps / 1e9);
    assert!(bps > 1e6, "{v}");
}

#[test]
fn port_forwards_tcp_udp_runtime_and_client_address() {
    if !require_root("port_forwards_tcp_udp_runtime_and_client_address") {
        return;
    }
    let web = Netns::new("fw");
    let ext = Netns::new("fx");
    let veth = Veth::new("fv");
    veth.move_b(&ext, Some("eth0"));
    common::ip(&["addr", "add", "10.76.0.1/24", "dev", &veth.a]);
    ext.ip(&["addr", "add", "10.76.0.2/24", "dev", "eth0"]);
    let free = |udp: bool| -> u16 {
        if udp {
            UdpSocket::bind("0.0.0.0:0")
                .expect("b")
                .local_addr()
                .expect("a")
                .port()
        } else {
            TcpListener::bind("0.0.0.0:0")
                .expect("b")
                .local_addr()
                .expect("a")
                .port()
        }
    };
    let (tport, uport) = (free(false), free(true));
    let d = Daemon::start(&format!(
        "{}[[forward]]\nnetwork = \"n\"\npublish = \"{tport}:8080/tcp\"\nto = \"web\"\n",
        config("10.75.0.0/24", "", &[("web", &web)])
    ));
    guest(&web, "10.75.0.5/24", "10.75.0.1");
    // Let the gateway learn the port name's address.
    web.exec(&["ping", "-c", "1", "-W", "1", "10.75.0.1"]);

    // A TCP server in the guest that reports each client's address.
    let listener = run_in_netns(&web.path(), || TcpListener::bind("0.0.0.0:8080")).expect("listen");
    let peers = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let p2 = peers.clone();
    std::thread::spawn(move || {
        for c in listener.incoming().take(3) {
            let Ok(mut c) = c else { continue };
            if let Ok(peer) = c.peer_addr() {
                p2.lock().push(peer);
            }
            let _ = c.write_all(b"from the guest");
        }
    });
    let fetch = |addr: &str| -> String {
        let mut c =
            TcpStream::connect_timeout(&addr.parse().expect("addr"), Duration::from_secs(5))
                .expect("connect forward");
        c.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut s = String::new();
        let _ = c.read_to_string(&mut s);
        s
    };
    // From the host's loopback.
    assert_eq!(
        fetch(&format!("127.0.0.1:{tport}")),
        "from the guest",
        "{}",
        d.log()
    );
    // From another machine (a namespace over a veth): the guest sees its own address.
    let out = ext.exec_ok(&[
        "curl",
        "-sS",
        "--max-time",
        "5",
        &format!("telnet://10.76.0.1:{tport}"),
    ]);
    assert_eq!(out, "from the guest");
    let seen = peers.lock().clone();
    assert!(
        seen.iter().any(|p| p.ip().to_string() == "10.76.0.2"),
        "guest saw {seen:?}, expected the client 10.76.0.2"
    );

    // UDP forward added at run time, then removed.
    let usock = run_in_netns(&web.path(), || UdpSocket::bind("0.0.0.0:9000")).expect("udp");
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        for _ in 0..5 {
            if let Ok((n, from)) = usock.recv_from(&mut buf) {
                let mut r = b"echo:".to_vec();
                r.extend_from_slice(&buf[..n]);
                let _ = usock.send_to(&r, from);
            }
        }
    });
    let spec = format!("127.0.0.1:{uport}:9000/udp");
    d.ctl(&["forward", "add", "--network", "n", &spec, "10.75.0.5"]);
    let ls = d.ctl(&["forward", "ls"]);
    assert!(ls.to_string().contains(&spec), "{ls}");
    let c = UdpSocket::bind("127.0.0.1:0").expect("client");
    c.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    c.send_to(b"ping", format!("127.0.0.1:{uport}"))
        .expect("send");
    let mut buf = [0u8; 64];
    let (n, _) = c
        .recv_from(&mut buf)
        .expect("UDP reply through the forward");
    assert_eq!(&buf[..n], b"echo:ping");
    d.ctl(&["forward", "rm", &spec]);
    // The host port is free again at once.
    UdpSocket::bind(format!("127.0.0.1:{uport}")).expect("port released after forward rm");

    // Busy host port: a clear error naming it.
    let busy = TcpListener::bind("127.0.0.1:0").expect("bind");
    let bport = busy.local_addr().expect("a").port();
    let out = d.ctl_raw(&[
        "forward",
        "add",
        "--network",
        "n",
        &format!("127.0.0.1:{bport}:80"),
        "web",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&bport.to_string()), "{err}");

    // Nothing listens on the guest port: the client's connection is closed at once.
    let nport = free(false);
    d.ctl(&[
        "forward",
        "add",
        "--network",
        "n",
        &format!("127.0.0.1:{nport}:81"),
        "web",
    ]);
    let t = Instant::now();
    let mut c = TcpStream::connect(format!("127.0.0.1:{nport}")).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut b = [0u8; 8];
    let r = c.read(&mut b);
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t.elapsed()
    );
}

#[test]
fn internal_network_and_flow_limit() {
    if !require_root("internal_network_and_flow_limit") {
        return;
    }
    let a = Netns::new("ia");
    let http = Http::start("x");
    let d = Daemon::start(&config("10.77.0.0/24", "internal = true", &[("a", &a)]));
    guest(&a, "10.77.0.5/24", "10.77.0.1");
    let out = a.exec(&[
        "curl",
        "-sS",
        "--max-time",
        "2",
        &format!("http://10.77.0.1:{}/", http.port),
    ]);
    assert!(!out.status.success(), "internal network reached the host");
    drop(d);

    let b = Netns::new("ib");
    let d = Daemon::start(&config("10.78.0.0/24", "max_flows = 2", &[("b", &b)]));
    guest(&b, "10.78.0.5/24", "10.78.0.1");
    let echo = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = echo.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let mut keep = Vec::new();
        for c in echo.incoming().take(3).flatten() {
            keep.push(c);
        }
        std::thread::sleep(Duration::from_secs(10));
    });
    let r = run_in_netns(&b.path(), move || {
        let t: SocketAddr = format!("10.78.0.1:{port}").parse().expect("a");
        let c1 = TcpStream::connect_timeout(&t, Duration::from_secs(3))?;
        let c2 = TcpStream::connect_timeout(&t, Duration::from_secs(3))?;
        let third = TcpStream::connect_timeout(&t, Duration::from_secs(3));
        // The first two still work.
        c1.set_nodelay(true)?;
        (&c1).write_all(b"still here")?;
        (&c2).write_all(b"still here")?;
        Ok(third.is_err())
    })
    .expect("limit test");
    assert!(r, "third flow should be refused\n{}", d.log());
    let gw = d.ctl(&["gateway"]);
    assert!(
        gw[0]["nat"]["refused_limit"].as_u64().unwrap_or(0) >= 1,
        "{gw}"
    );
}

/// A spliced forward (`splice = true` in the config, `--splice` at run time): bytes arrive
/// intact both ways through the kernel relay, the guest sees its own address, removal frees
/// the host port, and a forward that cannot be spliced is refused naming `splice`.
#[test]
fn spliced_forward_relays_through_the_guest_namespace() {
    if !require_root("spliced_forward_relays_through_the_guest_namespace") {
        return;
    }
    let web = Netns::new("sw");
    // A client on another machine: a namespace behind a veth.
    let ext = Netns::new("sx");
    let veth = Veth::new("sv");
    veth.move_b(&ext, Some("eth0"));
    common::ip(&["addr", "add", "10.73.0.1/24", "dev", &veth.a]);
    ext.ip(&["addr", "add", "10.73.0.2/24", "dev", "eth0"]);
    let free = || {
        TcpListener::bind("0.0.0.0:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port()
    };
    let (p1, p2) = (free(), free());
    let d = Daemon::start(&format!(
        "{}[[forward]]\nnetwork = \"n\"\npublish = \"{p1}:8080/tcp\"\nto = \"web\"\nsplice = true\n",
        config("10.74.0.0/24", "", &[("web", &web)])
    ));
    guest(&web, "10.74.0.5/24", "10.74.0.1");
    web.exec(&["ping", "-c", "1", "-W", "1", "10.74.0.1"]);

    // An echo-ish server in the guest: reads everything, answers with its SHA-256 and the
    // peer address it saw.
    let listener = run_in_netns(&web.path(), || TcpListener::bind("0.0.0.0:8080")).expect("listen");
    std::thread::spawn(move || {
        for c in listener.incoming().take(3) {
            let Ok(mut c) = c else { continue };
            let mut got = Vec::new();
            let _ = c.read_to_end(&mut got);
            let peer = c
                .peer_addr()
                .map(|p| p.ip().to_string())
                .unwrap_or_default();
            let _ = write!(c, "{} {} {peer}", got.len(), sha256(&got));
        }
    });
    let data = pattern(32 << 20);
    let exchange_on = |mut c: TcpStream| -> String {
        c.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        c.write_all(&data).expect("send through the forward");
        c.shutdown(std::net::Shutdown::Write).expect("half-close");
        let mut s = String::new();
        let _ = c.read_to_string(&mut s);
        s
    };
    let exchange = |port: u16| -> String {
        exchange_on(TcpStream::connect(format!("127.0.0.1:{port}")).expect("connect forward"))
    };
    let want = format!("{} {}", data.len(), sha256(&data));
    let answer = exchange(p1);
    assert!(
        answer.starts_with(&want),
        "spliced forward: got {answer:?}, want {want:?}\n{}",
        d.log()
    );
    // The connection came from inside the namespace: the guest saw a local address.
    let seen = answer.rsplit(' ').next().unwrap_or_default().to_string();
    assert!(
        seen == "10.74.0.5" || seen == "127.0.0.1",
        "guest saw {seen}"
    );
    let ls = d.ctl(&["forward", "ls"]);
    assert!(ls.to_string().contains("\"splice\":true"), "{ls}");

    // A real client on the same forward takes the regular path: the guest sees its address.
    let c = run_in_netns(&ext.path(), move || {
        TcpStream::connect_timeout(
            &format!("10.73.0.1:{p1}").parse().expect("addr"),
            Duration::from_secs(5),
        )
    })
    .expect("connect from the other machine");
    let answer = exchange_on(c);
    let seen = answer.rsplit(' ').next().unwrap_or_default().to_string();
    assert!(
        answer.starts_with(&want) && seen == "10.73.0.2",
        "non-loopback client through a spliced forward: {answer:?}\n{}",
        d.log()
    );

    // At run time, with the CLI flag; then removed: the host port is free again.
    let spec = format!("127.0.0.1:{p2}:8080");
    d.ctl(&["forward", "add", "--network", "n", "--splice", &spec, "web"]);
    assert!(exchange(p2).starts_with(&want));
    d.ctl(&["forward", "rm", &spec]);
    TcpListener::bind(format!("127.0.0.1:{p2}")).expect("port released after forward rm");

    // Not a port with a namespace, or UDP: refused, naming the key.
    for (spec, to) in [
        (format!("127.0.0.1:{}:80", free()), "10.74.0.5"),
        (format!("127.0.0.1:{}:80/udp", free()), "web"),
    ] {
        let out = d.ctl_raw(&["forward", "add", "--network", "n", "--splice", &spec, to]);
        assert!(!out.status.success(), "{spec} -> {to} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("splice"), "{err}");
    }
}
