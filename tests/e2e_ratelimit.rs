//! End-to-end tests of per-port rate limits (`rate_limit` on `[[port]]`, `usernet ctl port
//! limit`): iperf3 between namespaces on TAP ports of a `usernet up` daemon. Need root and
//! iperf3; skipped (or failed, with USERNET_REQUIRE_PRIV=1) otherwise.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::{Child, Netns, require_root};
use serde_json::Value;

fn netns_port(net: &str, name: &str, ns: &Netns, extra: &str) -> String {
    format!(
        "[[port]]\nnetwork = \"{net}\"\nname = \"{name}\"\nnetns = \"{}\"\n{extra}",
        ns.path().display()
    )
}

fn addr(ns: &Netns, cidr: &str) {
    ns.ip(&["addr", "add", cidr, "dev", "eth0"]);
    ns.ip(&["link", "set", "lo", "up"]);
}

/// Runs iperf3 (-t 3, JSON) from `client` to a one-shot server in `server` at `ip`; `extra`
/// are more client arguments. Returns the client's JSON.
fn iperf(client: &Netns, server: &Netns, ip: &str, extra: &[&str]) -> Value {
    let _srv = Child(
        server
            .cmd(&["iperf3", "-s", "-1", "-B", ip])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("iperf3 server"),
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !server
        .exec_ok(&["ss", "-ltn"])
        .contains(&format!("{ip}:5201"))
    {
        assert!(Instant::now() < deadline, "iperf3 server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut args = vec![
        "iperf3",
        "-c",
        ip,
        "-t",
        "3",
        "-J",
        "--connect-timeout",
        "3000",
    ];
    args.extend_from_slice(extra);
    let out = client.exec(&args);
    assert!(
        out.status.success(),
        "iperf3 {extra:?}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout).expect("iperf3 JSON")
}

/// Mbit/s the TCP receiver saw.
fn tcp_mbit(v: &Value) -> f64 {
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0)
        / 1e6
}

fn drops(d: &Daemon, port: &str, reason: &str) -> u64 {
    d.ctl(&["stats"])
        .as_array()
        .and_then(|a| a.iter().find(|r| r["port"] == port).cloned())
        .map(|r| r["stats"]["drops"][reason].as_u64().unwrap_or(0))
        .unwrap_or(0)
}

#[test]
fn rate_limits_cap_one_port_and_not_the_others() {
    if !require_root("rate_limits_cap_one_port_and_not_the_others") {
        return;
    }
    let (a, b, c, e) = (
        Netns::new("rla"),
        Netns::new("rlb"),
        Netns::new("rlc"),
        Netns::new("rle"),
    );
    let d = Daemon::start(&format!(
        "[[network]]\nname = \"n1\"\ngateway = false\n[[network]]\nname = \"n2\"\ngateway = false\n{}{}{}{}",
        netns_port("n1", "a", &a, "rate_limit = { rx_mbit = 200 }\n"),
        netns_port("n1", "b", &b, ""),
        netns_port("n2", "c", &c, ""),
        netns_port("n2", "e", &e, ""),
    ));
    addr(&a, "10.78.1.1/24");
    addr(&b, "10.78.1.2/24");
    addr(&c, "10.78.2.1/24");
    addr(&e, "10.78.2.2/24");
    for (ns, dst) in [(&a, "10.78.1.2"), (&c, "10.78.2.2")] {
        let ok = ns
            .exec(&["ping", "-c", "2", "-i", "0.2", "-W", "2", dst])
            .status
            .success();
        assert!(ok, "ping {dst}\n{}", d.log());
    }
    // The limit shows where ports are listed.
    let ports = d.ctl(&["ports"]);
    let pa = ports
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "a").cloned())
        .expect("port a");
    assert_eq!(pa["rate_limit"]["rx_mbit"], 200, "{pa}");

    // The unlimited pair alone, then both pairs at once.
    let alone = tcp_mbit(&iperf(&c, &e, "10.78.2.2", &[]));
    let (limited, beside) = std::thread::scope(|s| {
        let l = s.spawn(|| tcp_mbit(&iperf(&a, &b, "10.78.1.2", &[])));
        let u = s.spawn(|| tcp_mbit(&iperf(&c, &e, "10.78.2.2", &[])));
        (
            l.join().expect("limited run"),
            u.join().expect("unlimited run"),
        )
    });
    eprintln!("limited 200: {limited:.1} Mbit/s; unlimited alone {alone:.1}, beside {beside:.1}");
    assert!(
        (180.0..=220.0).contains(&limited),
        "a limited to 200 Mbit/s moved {limited:.1}\n{}",
        d.log()
    );
    assert!(
        beside >= 0.6 * alone && beside > 300.0,
        "the unlimited pair was held back: {beside:.1} vs {alone:.1} alone"
    );

    // Changed at run time.
    d.ctl(&["port", "limit", "a", "--rx-mbit", "100"]);
    let l100 = tcp_mbit(&iperf(&a, &b, "10.78.1.2", &[]));
    eprintln!("limited 100 at run time: {l100:.1} Mbit/s");
    assert!((85.0..=115.0).contains(&l100), "{l100:.1}");
    d.ctl(&["port", "limit", "a", "--off"]);
    let off = tcp_mbit(&iperf(&a, &b, "10.78.1.2", &[]));
    eprintln!("limit off: {off:.1} Mbit/s");
    assert!(off > 300.0, "{off:.1}");

    // A packet limit on b's tx: 64-byte UDP at ~20k pps, about 5000 pps get through, the rest
    // waits in b's ring and is dropped as rate_limited.
    d.ctl(&["port", "limit", "b", "--tx-pps", "5000"]);
    let v = iperf(&a, &b, "10.78.1.2", &["-u", "-l", "64", "-b", "10M"]);
    let sum = &v["end"]["sum"];
    let sent = sum["packets"].as_f64().unwrap_or(0.0);
    let lost = sum["lost_packets"].as_f64().unwrap_or(0.0);
    let secs = sum["seconds"].as_f64().unwrap_or(3.0).max(1.0);
    let pps = (sent - lost) / secs;
    eprintln!("pps limit 5000: {pps:.0} pps received of {sent} sent");
    assert!((4250.0..=5750.0).contains(&pps), "{pps:.0} pps\n{v}");
    let rl = drops(&d, "b", "rate_limited");
    assert!(rl > 0, "no rate_limited drops on b");
    let metrics = d.ctl_raw(&["metrics"]);
    let text = String::from_utf8_lossy(&metrics.stdout);
    assert!(
        text.contains("reason=\\\"rate_limited\\\"") || text.contains("rate_limited"),
        "metrics lack rate_limited"
    );

    // Bad input names the field.
    let out = d.ctl_raw(&["port", "limit", "a", "--rx-mbit", "99999999"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("rate_limit.rx_mbit"),
        "{err}"
    );
    let out = d.ctl_raw(&["port", "limit", "nosuch", "--rx-mbit", "1"]);
    assert!(!out.status.success());
    let out = d.ctl_raw(&["port", "limit", "a", "--rx-mbit", "-5"]);
    assert!(!out.status.success());
    let out = d.ctl_raw(&["port", "limit", "a"]);
    assert!(!out.status.success(), "no limit given must be an error");
}
