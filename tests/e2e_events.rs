//! Events (`{"op":"subscribe"}`, `usernet ctl events`): a subscriber sees a port come, its
//! guest's DHCP lease, a forward added and removed, and the port go, in that order; a
//! subscriber that never reads does not hold up the daemon or the other subscribers.

mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::daemon::{BIN, Daemon};
use common::events::{follow, next_of};
use common::{Netns, require_root};

const NET: &str = "[[network]]\nname = \"n\"\nsubnet = \"10.74.0.0/24\"\nipv6 = \"off\"\ndns_upstreams = [\"127.0.0.1:9\"]\n";

fn cli(d: &Daemon, args: &[&str]) {
    let out = Command::new("timeout")
        .arg("20")
        .arg(BIN)
        .args(args)
        .arg("--socket")
        .arg(d.sock())
        .output()
        .expect("run usernet");
    assert!(
        out.status.success(),
        "usernet {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_subscriber_sees_port_lease_forward_and_removal_in_order() {
    if !require_root("a_subscriber_sees_port_lease_forward_and_removal_in_order") {
        return;
    }
    let g = Netns::new("ev");
    let d = Daemon::start(NET);
    let (_ctl, rx) = follow(&d);
    // The subscription is live once the daemon answered; give the child a moment to connect.
    std::thread::sleep(Duration::from_millis(300));
    let path = g.path();
    cli(
        &d,
        &[
            "attach",
            "--netns",
            path.to_str().expect("utf-8"),
            "--name",
            "web",
            "--network",
            "n",
        ],
    );
    let added = next_of(&rx, &["port_added"], &d);
    assert_eq!(
        (added["port"].as_str(), added["network"].as_str()),
        (Some("web"), Some("n"))
    );
    assert!(
        added["seq"].as_u64().is_some() && added["ts"].as_f64().is_some(),
        "{added}"
    );
    g.udhcpc("/bin/true", &[], || d.log());
    let lease = next_of(&rx, &["lease_granted"], &d);
    assert!(
        lease["ip"]
            .as_str()
            .is_some_and(|ip| ip.starts_with("10.74.0.")),
        "{lease}"
    );
    assert_eq!(lease["network"], "n");
    d.ctl(&[
        "forward",
        "add",
        "--network",
        "n",
        "127.0.0.1:18099:80",
        "web",
    ]);
    let fwd = next_of(&rx, &["forward_added"], &d);
    assert_eq!(
        (fwd["publish"].as_str(), fwd["to"].as_str()),
        (Some("127.0.0.1:18099:80/tcp"), Some("web")),
        "{fwd}"
    );
    d.ctl(&["forward", "rm", "127.0.0.1:18099:80"]);
    let gone = next_of(&rx, &["forward_removed"], &d);
    assert_eq!(gone["id"], fwd["id"]);
    d.ctl(&["port", "rm", "web"]);
    let removed = next_of(&rx, &["port_removed", "port_added"], &d);
    assert_eq!(
        (removed["event"].as_str(), removed["port"].as_str()),
        (Some("port_removed"), Some("web"))
    );
    // Sequence numbers grow.
    for (a, b) in [
        (&added, &lease),
        (&lease, &fwd),
        (&fwd, &gone),
        (&gone, &removed),
    ] {
        assert!(a["seq"].as_u64() < b["seq"].as_u64(), "{a} then {b}");
    }
}

#[test]
fn a_subscriber_that_never_reads_holds_nothing_up() {
    if !require_root("a_subscriber_that_never_reads_holds_nothing_up") {
        return;
    }
    let d = Daemon::start(NET);
    // Subscribes, then never reads.
    let mut stuck = UnixStream::connect(d.sock()).expect("connect");
    stuck
        .write_all(b"{\"op\":\"subscribe\"}\n")
        .expect("subscribe");
    let (_ctl, rx) = follow(&d);
    std::thread::sleep(Duration::from_millis(300));
    // Churn: 40 TAP ports come and go, 80 events.
    let t0 = Instant::now();
    for i in 0..40 {
        d.ctl(&[
            "port",
            "add",
            "--network",
            "n",
            "--tap",
            &format!("evt{i}"),
            "--name",
            &format!("t{i}"),
        ]);
        d.ctl(&["port", "rm", &format!("t{i}")]);
    }
    assert!(
        t0.elapsed() < Duration::from_secs(60),
        "churn took {:?}",
        t0.elapsed()
    );
    // The reading subscriber saw every port come and go.
    let mut added = 0;
    let mut removed = 0;
    while added < 40 || removed < 40 {
        let v = next_of(&rx, &["port_added", "port_removed"], &d);
        if v["event"] == "port_added" {
            added += 1
        } else {
            removed += 1
        }
    }
    // The daemon still answers at once.
    let t = Instant::now();
    let ports = d.ctl(&["ports"]);
    assert!(ports.is_array(), "{ports}");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "ctl ports took {:?}",
        t.elapsed()
    );
    drop(stuck);
}
