//! End-to-end test of the Prometheus metrics (issue 16): a daemon with two guests in
//! namespaces; pings between them and to the gateway, a DNS lookup and a UDP flow through NAT
//! to the host's loopback move the counters `usernet ctl metrics` prints; `up --metrics` serves
//! the same text over HTTP on 127.0.0.1, which `promtool check metrics` accepts, and a client
//! that sends nothing, or too much, does not stop the next scrape. Needs root (skips with
//! `SKIP` otherwise) and promtool (Debian package `prometheus`; missing: a failure under
//! USERNET_REQUIRE_PRIV=1, a `SKIP` line otherwise). A second test needs no root: an in-process
//! engine with memory links renders and serves the same families. Only loopback and the test's
//! own namespaces are addressed.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::{Netns, free_port, require_root};
use usernet::link::netns::run_in_netns;

/// An upstream nothing listens on: the host's resolver is never used.
const NO_UPSTREAM: &str = "127.0.0.1:9";

/// The samples of an exposition, `name{labels}` -> value (labels as written).
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

fn value(m: &BTreeMap<String, f64>, key: &str) -> f64 {
    *m.get(key)
        .unwrap_or_else(|| panic!("no sample {key} in:\n{m:#?}"))
}

/// `usernet ctl metrics` (plain output: the text itself).
fn ctl_metrics(d: &Daemon) -> String {
    let out = Command::new("timeout")
        .arg("20")
        .arg(common::daemon::BIN)
        .args(["ctl", "--socket"])
        .arg(d.sock())
        .arg("metrics")
        .output()
        .expect("run usernet ctl metrics");
    assert!(
        out.status.success(),
        "ctl metrics: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// One raw HTTP exchange with 127.0.0.1:`port`: sends `req`, returns the whole answer.
fn http(port: u16, req: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics port");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(req).expect("send request");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// The body of a `200` answer to `GET /metrics`, with the status line and content type checked.
fn scrape(port: u16) -> String {
    let r = http(port, b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    let (head, body) = r.split_once("\r\n\r\n").expect("a head and a body");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    body.to_string()
}

/// `promtool check metrics` on `text`: Some(true/false) with its output, None if missing.
fn promtool(text: &str) -> Option<(bool, String)> {
    let mut child = Command::new("timeout")
        .args(["20", "promtool", "check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let out = child.wait_with_output().expect("promtool");
    // `timeout` exits 127 when it cannot run promtool.
    if out.status.code() == Some(127) {
        return None;
    }
    let msg =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    Some((out.status.success(), msg))
}

/// Fails unless promtool accepts `body`; without promtool, fails under USERNET_REQUIRE_PRIV=1
/// and prints a `SKIP` line otherwise.
fn promtool_accepts(body: &str) {
    match promtool(body) {
        Some((ok, msg)) => assert!(ok, "promtool check metrics:\n{msg}\n{body}"),
        None => {
            assert!(
                std::env::var("USERNET_REQUIRE_PRIV").as_deref() != Ok("1"),
                "promtool (Debian package prometheus) is missing and USERNET_REQUIRE_PRIV=1"
            );
            eprintln!("SKIP promtool check: promtool (Debian package prometheus) not installed");
        }
    }
}

fn guest(ns: &Netns, addr: &str) {
    ns.ip(&["link", "set", "lo", "up"]);
    ns.ip(&["addr", "add", addr, "dev", "eth0"]);
    ns.ip(&["route", "add", "default", "via", "10.86.0.1"]);
}

fn ping(ns: &Netns, to: &str) {
    let out = ns.exec(&["ping", "-c", "3", "-i", "0.2", "-W", "2", to]);
    assert!(
        out.status.success(),
        "ping {to} from {}: {}",
        ns.name,
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn counters_move_and_promtool_accepts_them() {
    if !require_root("counters_move_and_promtool_accepts_them") {
        return;
    }
    let a = Netns::new("mta");
    let b = Netns::new("mtb");
    let (cfg_port, flag_port) = (free_port(), free_port());
    let mut cfg = format!(
        "[engine]\nmetrics = \"127.0.0.1:{cfg_port}\"\n\
         [[network]]\nname = \"mnet\"\nsubnet = \"10.86.0.0/24\"\nipv6 = \"off\"\n\
         domain = \"mt\"\ndns_upstreams = [\"{NO_UPSTREAM}\"]\n"
    );
    for (name, ns) in [("ga", &a), ("gb", &b)] {
        cfg += &format!(
            "[[port]]\nnetwork = \"mnet\"\nname = \"{name}\"\nnetns = \"{}\"\n",
            ns.path().display()
        );
    }
    // The flag wins over the config key.
    let flag = format!("127.0.0.1:{flag_port}");
    let d = Daemon::start_with(&cfg, &["--metrics", &flag]);
    guest(&a, "10.86.0.10/24");
    guest(&b, "10.86.0.20/24");

    let before = samples(&ctl_metrics(&d));
    let rx = r#"usernet_port_rx_frames_total{network="mnet",port="ga"}"#;
    let dns = r#"usernet_dns_queries_total{network="mnet"}"#;
    let echo = r#"usernet_gateway_echo_replies_total{network="mnet"}"#;
    let udp_open = r#"usernet_nat_flows{network="mnet",proto="udp"}"#;
    let udp_opened = r#"usernet_nat_flows_opened_total{network="mnet",proto="udp"}"#;

    ping(&a, "10.86.0.20");
    ping(&a, "10.86.0.1");
    ping(&b, "10.86.0.1");
    // A name of the network's own zone: answered by the gateway, nothing goes upstream.
    let out = a.exec(&[
        "dig",
        "+time=2",
        "+tries=2",
        "+short",
        "@10.86.0.1",
        "gb.mt",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "10.86.0.20",
        "dig gb.mt: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A UDP flow through NAT to a socket on the host's loopback (the gateway's address).
    let host = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
    host.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let hport = host.local_addr().expect("addr").port();
    run_in_netns(&a.path(), move || {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.send_to(b"hello", ("10.86.0.1", hport))?;
        Ok(())
    })
    .expect("send from the guest");
    let mut buf = [0u8; 16];
    let (n, _) = host.recv_from(&mut buf).expect("datagram through NAT");
    assert_eq!(&buf[..n], b"hello");

    let text = ctl_metrics(&d);
    let after = samples(&text);
    assert!(
        value(&after, rx) >= value(&before, rx) + 6.0,
        "rx frames of ga: {} -> {}",
        value(&before, rx),
        value(&after, rx)
    );
    assert!(value(&after, dns) > value(&before, dns), "DNS queries");
    assert!(
        value(&after, echo) >= value(&before, echo) + 6.0,
        "gateway echo replies"
    );
    assert_eq!(value(&after, udp_open), 1.0, "one UDP flow open");
    assert_eq!(value(&after, udp_opened), value(&before, udp_opened) + 1.0);
    for key in [
        r#"usernet_port_tx_bytes_total{network="mnet",port="gb"}"#,
        r#"usernet_fdb_entries{network="mnet"}"#,
        r#"usernet_loop_busy_seconds_total{loop="0"}"#,
    ] {
        assert!(value(&after, key) > 0.0, "{key}");
    }
    for key in [
        r#"usernet_port_drops_total{network="mnet",port="ga",reason="ring_full"}"#,
        r#"usernet_dhcp_leases{network="mnet"}"#,
        r#"usernet_nat_refused_total{network="mnet",reason="limit"}"#,
    ] {
        value(&after, key);
    }

    // Over HTTP: the flag's port serves it, the config key's does not (the flag won).
    let body = scrape(flag_port);
    let over_http = samples(&body);
    assert!(
        value(&over_http, rx) >= value(&after, rx),
        "HTTP is current"
    );
    assert!(
        TcpStream::connect(("127.0.0.1", cfg_port)).is_err(),
        "the config key's address is not served when --metrics is given"
    );
    let r = http(flag_port, b"GET / HTTP/1.1\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 404 "), "{r}");
    let r = http(
        flag_port,
        b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    );
    assert!(r.starts_with("HTTP/1.1 405 "), "{r}");

    // Hostile clients: one that sends nothing holds the thread for at most its time limit;
    // one that sends an endless head is cut off at the size limit. The next scrape works.
    let idle = TcpStream::connect(("127.0.0.1", flag_port)).expect("idle client");
    let t = Instant::now();
    let mut big = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 64 * 1024));
    let mut s = TcpStream::connect(("127.0.0.1", flag_port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    // The server stops reading at its limit: the rest of the write may fail, that is fine.
    let _ = s.write_all(&big);
    let mut r = String::new();
    let _ = s.read_to_string(&mut r);
    assert!(r.starts_with("HTTP/1.1 431 "), "{r:?}");
    assert!(!scrape(flag_port).is_empty());
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "an idle client held the endpoint for {:?}",
        t.elapsed()
    );
    drop(idle);

    promtool_accepts(&body);
}

/// The same without root: an in-process engine (memory links, a gateway) renders its counters,
/// `control::metrics::serve` on 127.0.0.1 serves them, and promtool accepts them.
#[test]
fn an_in_process_engine_serves_its_counters() {
    use usernet::bridge::PortPolicy;
    use usernet::control::networks::NetworkSpec;
    use usernet::link::memory::MemoryLink;
    use usernet::{Engine, EngineConfig};

    let engine = Engine::start(EngineConfig::default()).expect("engine");
    let h = engine.handle();
    let mut spec = NetworkSpec::new("inproc");
    spec.gateway = true;
    spec.subnet = Some("10.87.0.0/24".parse().expect("subnet"));
    spec.ipv6 = Some("off".into());
    spec.dns_upstreams = Some(vec![NO_UPSTREAM.into()]);
    h.create_network(&spec, "network").expect("network");
    let (a, a_peer) = MemoryLink::pair(64, 1522).expect("pair");
    let (b, _b_peer) = MemoryLink::pair(64, 1522).expect("pair");
    h.add_port("inproc", "ma", PortPolicy::default(), Box::new(a))
        .expect("port ma");
    h.add_port("inproc", "mb", PortPolicy::default(), Box::new(b))
        .expect("port mb");
    // A runt (dropped, counted by reason) and a broadcast from a local MAC.
    assert!(a_peer.send_bytes(&[0u8; 8]));
    let mut frame = vec![0xff; 6];
    frame.extend([0x02, 0, 0, 0, 0x87, 1, 0x88, 0xb5]);
    frame.extend([0u8; 50]);
    assert!(a_peer.send_bytes(&frame));
    let rx = r#"usernet_port_rx_frames_total{network="inproc",port="ma"}"#;
    let runt = r#"usernet_port_drops_total{network="inproc",port="ma",reason="runt"}"#;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut m = samples(&h.metrics());
    while (m.get(rx) < Some(&2.0) || m.get(runt) < Some(&1.0)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        m = samples(&h.metrics());
    }
    assert_eq!(value(&m, rx), 2.0);
    assert_eq!(value(&m, runt), 1.0);
    let tx_mb = r#"usernet_port_tx_frames_total{network="inproc",port="mb"}"#;
    assert!(value(&m, tx_mb) >= 1.0, "the broadcast reached mb");
    value(&m, r#"usernet_nat_flows{network="inproc",proto="tcp"}"#);
    value(&m, r#"usernet_dns_queries_total{network="inproc"}"#);

    let srv = usernet::control::metrics::serve(h.clone(), "127.0.0.1:0".parse().expect("addr"))
        .expect("serve metrics");
    let body = scrape(srv.local_addr().port());
    assert_eq!(value(&samples(&body), rx), 2.0);
    promtool_accepts(&body);
    drop(srv);
    h.shutdown();
}
