//! End-to-end tests of the switch with the real kernel: namespaces on TAP and AF_PACKET ports of
//! a `usernet up` daemon, driven through `usernet ctl`. Need root; skipped (or failed, with
//! USERNET_REQUIRE_PRIV=1) otherwise.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Child, Netns, Veth, require_root};
use serde_json::Value;

use common::daemon::{BIN, Daemon};

fn netns_port(net: &str, name: &str, ns: &Netns) -> String {
    format!(
        "[[port]]\nnetwork = \"{net}\"\nname = \"{name}\"\nnetns = \"{}\"\n",
        ns.path().display()
    )
}

/// Gives `eth0` in `ns` an address (and brings lo up).
fn addr(ns: &Netns, cidr: &str) {
    ns.ip(&["addr", "add", cidr, "dev", "eth0"]);
    ns.ip(&["link", "set", "lo", "up"]);
}

fn ping_ok(ns: &Netns, dst: &str) -> bool {
    ns.exec(&["ping", "-c", "2", "-i", "0.2", "-W", "2", dst])
        .status
        .success()
}

fn mac_of(ns: &Netns, ifname: &str) -> String {
    let s = std::fs::read_to_string(Path::new("/proc/self/fd/0")).ok();
    drop(s);
    let out = ns.exec_ok(&["cat", &format!("/sys/class/net/{ifname}/address")]);
    out.trim().to_string()
}

fn fdb_macs(d: &Daemon, net: &str) -> Vec<(String, String)> {
    d.ctl(&["fdb", "--network", net])
        .as_array()
        .expect("array")
        .iter()
        .map(|e| {
            (
                e["mac"].as_str().unwrap_or_default().to_string(),
                e["port"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[test]
fn tap_namespaces_ping_and_iperf3() {
    if !require_root("tap_namespaces_ping_and_iperf3") {
        return;
    }
    let a = Netns::new("ea");
    let b = Netns::new("eb");
    let d = Daemon::start(&format!(
        "[[network]]\nname = \"n\"\ngateway = false\n{}{}",
        netns_port("n", "a", &a),
        netns_port("n", "b", &b)
    ));
    addr(&a, "10.77.1.1/24");
    addr(&b, "10.77.1.2/24");
    assert!(ping_ok(&a, "10.77.1.2"), "a -> b\n{}", d.log());
    assert!(ping_ok(&b, "10.77.1.1"), "b -> a");

    let server = Child(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &b.name,
                "iperf3",
                "-s",
                "-1",
                "-B",
                "10.77.1.2",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("iperf3 server"),
    );
    // Wait for the server to listen.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !b.exec_ok(&["ss", "-ltn"]).contains("10.77.1.2:5201") {
        assert!(Instant::now() < deadline, "iperf3 server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = a.exec(&["iperf3", "-c", "10.77.1.2", "-t", "5", "-J"]);
    drop(server);
    assert!(
        out.status.success(),
        "iperf3: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("iperf3 JSON");
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .expect("bits_per_second");
    let bytes = v["end"]["sum_received"]["bytes"].as_f64().unwrap_or(0.0);
    eprintln!("iperf3 through usernet: {:.2} Gbit/s", bps / 1e9);
    assert!(bytes > 1e6, "iperf3 moved only {bytes} bytes");

    // The counters saw it, and every received frame is accounted for.
    let stats = d.ctl(&["stats"]);
    for row in stats.as_array().expect("array") {
        let st = &row["stats"];
        let rx = st["rx_frames"].as_u64().unwrap_or(0);
        let fwd = st["forwarded"].as_u64().unwrap_or(0);
        let drops: u64 = [
            "runt",
            "oversize",
            "invalid_source",
            "reserved",
            "policy",
            "hairpin",
            "no_destination",
        ]
        .iter()
        .map(|k| st["drops"][k].as_u64().unwrap_or(0))
        .sum();
        assert_eq!(rx, fwd + drops, "accounting for {row}");
    }
    let a_rx = stats
        .as_array()
        .and_then(|v| v.iter().find(|r| r["port"] == "a"))
        .map(|r| r["stats"]["rx_bytes"].as_u64().unwrap_or(0))
        .unwrap_or(0);
    assert!(
        a_rx as f64 >= bytes,
        "port a rx_bytes {a_rx} < iperf3 bytes {bytes}"
    );
}

#[test]
fn packet_port_talks_to_tap_port() {
    if !require_root("packet_port_talks_to_tap_port") {
        return;
    }
    let a = Netns::new("pa");
    let c = Netns::new("pc");
    let veth = Veth::new("pv");
    veth.move_b(&c, Some("eth0"));
    let d = Daemon::start(&format!(
        "[[network]]\nname = \"n\"\ngateway = false\n{}[[port]]\nnetwork = \"n\"\nname = \"uplink\"\npacket = \"{}\"\n",
        netns_port("n", "a", &a),
        veth.a
    ));
    addr(&a, "10.77.2.1/24");
    addr(&c, "10.77.2.3/24");
    assert!(ping_ok(&a, "10.77.2.3"), "tap -> packet\n{}", d.log());
    assert!(ping_ok(&c, "10.77.2.1"), "packet -> tap");
    let macs = fdb_macs(&d, "n");
    let cmac = mac_of(&c, "eth0");
    assert!(
        macs.contains(&(cmac.clone(), "uplink".to_string())),
        "{cmac} on uplink in {macs:?}"
    );
}

#[test]
fn runtime_port_fdb_and_port_removal() {
    if !require_root("runtime_port_fdb_and_port_removal") {
        return;
    }
    let a = Netns::new("ra");
    let b = Netns::new("rb");
    let c = Netns::new("rc");
    let d = Daemon::start(&format!(
        "[[network]]\nname = \"n\"\ngateway = false\n{}{}",
        netns_port("n", "a", &a),
        netns_port("n", "b", &b)
    ));
    addr(&a, "10.77.3.1/24");
    addr(&b, "10.77.3.2/24");
    // A third namespace joins at run time through the control socket.
    let c_path = c.path();
    d.ctl(&[
        "port",
        "add",
        "--network",
        "n",
        "--name",
        "c",
        "--netns",
        c_path.to_str().expect("utf-8 path"),
    ]);
    addr(&c, "10.77.3.3/24");
    assert!(
        ping_ok(&a, "10.77.3.3"),
        "a -> c (added at run time)\n{}",
        d.log()
    );
    assert!(ping_ok(&b, "10.77.3.3"), "b -> c");

    // `ctl fdb` shows each namespace's MAC on its port.
    let macs = fdb_macs(&d, "n");
    for (ns, port) in [(&a, "a"), (&b, "b"), (&c, "c")] {
        let m = mac_of(ns, "eth0");
        assert!(
            macs.contains(&(m.clone(), port.to_string())),
            "{m} on {port} in {macs:?}"
        );
    }

    // A bad request names the problem and changes nothing.
    let out = d.ctl_raw(&["port", "rm", "nosuch"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nosuch"));

    // Its TAP is deleted: the port is removed, the others keep forwarding.
    b.ip(&["link", "del", "eth0"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while d.port_names().contains(&"b".to_string()) {
        assert!(Instant::now() < deadline, "port b not removed\n{}", d.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(d.port_names(), vec!["a".to_string(), "c".to_string()]);
    assert!(ping_ok(&a, "10.77.3.3"), "a -> c after b died");
    assert!(fdb_macs(&d, "n").iter().all(|(_, p)| p != "b"));

    // Its container goes away (namespace deleted; our TAP fd would keep it alive): removed too.
    let e = Netns::new("re");
    let e_path = e.path();
    d.ctl(&[
        "port",
        "add",
        "--network",
        "n",
        "--name",
        "e",
        "--netns",
        e_path.to_str().expect("utf-8"),
    ]);
    assert!(d.port_names().contains(&"e".to_string()));
    e.delete();
    let deadline = Instant::now() + Duration::from_secs(5);
    while d.port_names().contains(&"e".to_string()) {
        assert!(Instant::now() < deadline, "port e not removed\n{}", d.log());
        std::thread::sleep(Duration::from_millis(50));
    }

    // Removing a port through ctl deletes its TAP.
    d.ctl(&["port", "rm", "c"]);
    let gone = !c.exec(&["ip", "link", "show", "eth0"]).status.success();
    assert!(gone, "TAP eth0 still in {}", c.name);
}

#[test]
fn two_networks_cannot_reach_each_other() {
    if !require_root("two_networks_cannot_reach_each_other") {
        return;
    }
    let a1 = Netns::new("ia");
    let b1 = Netns::new("ib");
    let a2 = Netns::new("ic");
    let b2 = Netns::new("id");
    let d = Daemon::start(&format!(
        "[[network]]\nname = \"one\"\ngateway = false\n[[network]]\nname = \"two\"\ngateway = false\n{}{}{}{}",
        netns_port("one", "a1", &a1),
        netns_port("one", "b1", &b1),
        netns_port("two", "a2", &a2),
        netns_port("two", "b2", &b2)
    ));
    // Same subnet everywhere: only the switch keeps them apart.
    addr(&a1, "10.77.4.1/24");
    addr(&b1, "10.77.4.2/24");
    addr(&a2, "10.77.4.3/24");
    addr(&b2, "10.77.4.4/24");
    assert!(ping_ok(&a1, "10.77.4.2"), "within one\n{}", d.log());
    assert!(ping_ok(&a2, "10.77.4.4"), "within two");
    assert!(!ping_ok(&a1, "10.77.4.3"), "one reached two");
    assert!(!ping_ok(&b2, "10.77.4.2"), "two reached one");
    let one_macs = [mac_of(&a1, "eth0"), mac_of(&b1, "eth0")];
    for (m, _) in fdb_macs(&d, "two") {
        assert!(!one_macs.contains(&m), "{m} of network one learned in two");
    }
}

#[test]
fn bad_config_names_the_key() {
    // No root needed: the config is rejected before anything is created.
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("bad.toml");
    let mut f = std::fs::File::create(&cfg).expect("create");
    writeln!(
        f,
        "[[network]]\nname = \"n\"\n[[port]]\nnetwork = \"n\"\nname = \"p\"\ntapp = \"t0\""
    )
    .expect("write");
    let out = Command::new(BIN)
        .args(["up", "-c"])
        .arg(&cfg)
        .arg("--socket")
        .arg(dir.path().join("sock"))
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tapp"), "{err}");
}

#[test]
fn bridge_command_switches_taps_moved_into_namespaces() {
    if !require_root("bridge_command_switches_taps_moved_into_namespaces") {
        return;
    }
    let a = Netns::new("ba");
    let b = Netns::new("bb");
    let (ta, tb) = (common::unique("bt"), common::unique("bt"));
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("sock");
    let mut child = start_bridge(&["--tap", &ta, "--tap", &tb], &sock);
    // The runtime moves each TAP into its container; the fd stays attached.
    for (t, ns, ip) in [(&ta, &a, "10.77.5.1/24"), (&tb, &b, "10.77.5.2/24")] {
        common::ip(&["link", "set", t, "netns", &ns.name]);
        ns.ip(&["link", "set", t, "name", "eth0"]);
        ns.ip(&["link", "set", "eth0", "up"]);
        addr(ns, ip);
    }
    assert!(ping_ok(&a, "10.77.5.2"), "a -> b through usernet bridge");
    // SIGTERM: clean exit, socket removed, TAPs gone.
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Ok(Some(s)) = child.0.try_wait() {
            break s;
        }
        assert!(Instant::now() < deadline, "usernet bridge ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status}");
    assert!(!sock.exists(), "control socket left behind");
    assert!(
        !a.exec(&["ip", "link", "show", "eth0"]).status.success(),
        "TAP left in {}",
        a.name
    );
}

/// Starts `usernet bridge ARGS --socket SOCK` and waits for its control socket.
fn start_bridge(args: &[&str], sock: &Path) -> Child {
    let child = Child(
        Command::new(BIN)
            .arg("bridge")
            .args(args)
            .arg("--socket")
            .arg(sock)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn usernet bridge"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "usernet bridge did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// Issue 17: `usernet bridge --mtu 9000` switches jumbo frames (before, it had no MTU option and
/// dropped every frame over 1500 as oversize).
#[test]
fn bridge_command_switches_jumbo_frames() {
    if !require_root("bridge_command_switches_jumbo_frames") {
        return;
    }
    let a = Netns::new("ja");
    let b = Netns::new("jb");
    let (ta, tb) = (common::unique("jt"), common::unique("jt"));
    let dir = tempfile::tempdir().expect("tempdir");
    let _child = start_bridge(
        &["--mtu", "9000", "--tap", &ta, "--tap", &tb],
        &dir.path().join("sock"),
    );
    for (t, ns, ip) in [(&ta, &a, "10.77.6.1/24"), (&tb, &b, "10.77.6.2/24")] {
        common::ip(&["link", "set", t, "netns", &ns.name]);
        ns.ip(&["link", "set", t, "name", "eth0"]);
        ns.ip(&["link", "set", "eth0", "mtu", "9000", "up"]);
        addr(ns, ip);
    }
    let out = a.exec(&[
        "ping",
        "-c",
        "2",
        "-W",
        "2",
        "-M",
        "do",
        "-s",
        "8900",
        "10.77.6.2",
    ]);
    assert!(
        out.status.success(),
        "8900-byte pings, no fragmentation: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Starts `busybox httpd` in `ns` serving `dir` on port 8000 and waits for it to listen.
fn httpd(ns: &Netns, dir: &Path, ip: &str) -> Child {
    let child = Child(
        Command::new("ip")
            .args(["netns", "exec", &ns.name, "busybox", "httpd", "-f", "-p"])
            .arg(format!("{ip}:8000"))
            .arg("-h")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("busybox httpd"),
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ns.exec_ok(&["ss", "-ltn"]).contains(&format!("{ip}:8000")) {
        assert!(
            Instant::now() < deadline,
            "httpd in {} did not start",
            ns.name
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// SHA-256 of what `curl` in `ns` downloads from `url` (via `sha256sum` in the namespace).
fn fetch_sha(ns: &Netns, url: &str) -> String {
    let out = ns.exec_ok(&[
        "sh",
        "-c",
        &format!("curl -sf --max-time 60 {url} | sha256sum"),
    ]);
    out.split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

fn port_stat(stats: &Value, port: &str, key: &str) -> u64 {
    stats
        .as_array()
        .and_then(|v| v.iter().find(|r| r["port"] == port))
        .and_then(|r| r["stats"][key].as_u64())
        .unwrap_or(0)
}

/// TSO pass-through and software segmentation: a TAP with offloads (`a`) exchanges bulk TCP
/// with a TAP whose offloads are off (`b`) and with a veth on an AF_PACKET port (`c`), both
/// ways; every download arrives intact, and `a` really handed over frames larger than the MTU.
#[test]
fn offload_tap_talks_to_plain_tap_and_packet_port() {
    if !require_root("offload_tap_talks_to_plain_tap_and_packet_port") {
        return;
    }
    let a = Netns::new("oa");
    let b = Netns::new("ob");
    let c = Netns::new("oc");
    let veth = Veth::new("ov");
    veth.move_b(&c, Some("eth0"));
    let d = Daemon::start(&format!(
        "[[network]]\nname = \"n\"\ngateway = false\n{}{}offload = false\n\
         [[port]]\nnetwork = \"n\"\nname = \"c\"\npacket = \"{}\"\n",
        netns_port("n", "a", &a),
        netns_port("n", "b", &b),
        veth.a
    ));
    addr(&a, "10.77.6.1/24");
    addr(&b, "10.77.6.2/24");
    addr(&c, "10.77.6.3/24");
    assert!(ping_ok(&a, "10.77.6.2"), "a -> b\n{}", d.log());
    assert!(ping_ok(&a, "10.77.6.3"), "a -> c\n{}", d.log());

    let dir = tempfile::tempdir().expect("tempdir");
    let blob: Vec<u8> = (0..16u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(dir.path().join("blob"), &blob).expect("write blob");
    let want = {
        let out = Command::new("sha256sum")
            .arg(dir.path().join("blob"))
            .output()
            .expect("sha256sum");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string()
    };
    let servers = [
        httpd(&a, dir.path(), "10.77.6.1"),
        httpd(&b, dir.path(), "10.77.6.2"),
        httpd(&c, dir.path(), "10.77.6.3"),
    ];
    for (ns, url, what) in [
        (&b, "http://10.77.6.1:8000/blob", "offload TAP -> plain TAP"),
        (&c, "http://10.77.6.1:8000/blob", "offload TAP -> AF_PACKET"),
        (&a, "http://10.77.6.2:8000/blob", "plain TAP -> offload TAP"),
        (&a, "http://10.77.6.3:8000/blob", "AF_PACKET -> offload TAP"),
    ] {
        assert_eq!(fetch_sha(ns, url), want, "{what}\n{}", d.log());
    }
    drop(servers);
    let stats = d.ctl(&["stats"]);
    let (rx, frames) = (
        port_stat(&stats, "a", "rx_bytes"),
        port_stat(&stats, "a", "rx_frames"),
    );
    assert!(
        frames > 0 && rx / frames > 1514,
        "port a's frames average {} bytes: no GSO frames from the offload TAP",
        rx / frames.max(1)
    );
    // b and c got more frames than a sent: the GSO frames were cut into segments.
    assert!(port_stat(&stats, "b", "tx_frames") > frames / 2, "{stats}");
    for p in ["a", "b", "c"] {
        assert_eq!(
            stats
                .as_array()
                .and_then(|v| v.iter().find(|r| r["port"] == p))
                .and_then(|r| r["stats"]["drops"]["bad_offload"].as_u64()),
            Some(0),
            "no frame refused by segmentation on {p}: {stats}"
        );
    }
}
