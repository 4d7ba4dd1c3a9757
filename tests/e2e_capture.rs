//! Live packet capture (`usernet ctl capture`, the `pcap` key of a port), read back by tshark:
//! a guest's ping and HTTP fetch in order with their directions and timestamps, a capture
//! piped into `tshark -r -`, a stream port's capture (a raw stream peer), a capture that
//! outlives its port's removal, an unknown port, two captures at once. Need root (namespaces)
//! and tshark.

mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::daemon::{BIN, Daemon};
use common::{Child, Httpd, Netns, require_root};

/// True if tshark is here; otherwise `SKIP` (or a failure under `USERNET_REQUIRE_PRIV=1`).
fn require_tshark(test: &str) -> bool {
    let ok = Command::new("tshark")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return true;
    }
    if std::env::var("USERNET_REQUIRE_PRIV").as_deref() == Ok("1") {
        panic!(
            "{test}: needs tshark (Debian package tshark), and USERNET_REQUIRE_PRIV=1 forbids skipping"
        );
    }
    eprintln!("SKIP {test}: needs tshark");
    false
}

fn ready(test: &str) -> bool {
    require_root(test) && require_tshark(test)
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

/// A network with a gateway and two guests with static addresses; `extra_b` goes into b's
/// `[[port]]` table.
fn two_guests(subnet: &str, a: &Netns, b: &Netns, extra_b: &str) -> Daemon {
    let ip = |n: u8| subnet.replace(".0/24", &format!(".{n}/24"));
    // No IPv6 chatter from the guests' kernels (MLD, DAD): the captures hold what the test sends.
    for ns in [a, b] {
        ns.exec_ok(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
        ns.exec_ok(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
    }
    Daemon::start(&format!(
        "[[network]]\nname = \"n\"\nsubnet = \"{subnet}\"\nipv6 = \"off\"\ndns_upstreams = [\"127.0.0.1:9\"]\n\
         [[port]]\nnetwork = \"n\"\nname = \"a\"\nnetns = \"{}\"\nips = [\"{}\"]\n\
         [[port]]\nnetwork = \"n\"\nname = \"b\"\nnetns = \"{}\"\nips = [\"{}\"]\n{extra_b}\n",
        a.path().display(),
        ip(10),
        b.path().display(),
        ip(11),
    ))
}

/// `usernet ctl capture ARGS` in the background (bounded), stdout to `stdout` or null.
fn capture(d: &Daemon, args: &[&str]) -> Child {
    Child(
        Command::new("timeout")
            .arg("30")
            .arg(BIN)
            .arg("ctl")
            .arg("--socket")
            .arg(d.sock())
            .arg("capture")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ctl capture"),
    )
}

/// SIGINT to a `capture` child: `timeout` passes it on to `usernet ctl capture`, as a
/// terminal's Ctrl-C.
fn interrupt(c: &Child) {
    // SAFETY: kill(2) on the pid of a child this test spawned.
    unsafe { libc::kill(c.0.id() as i32, libc::SIGINT) };
}

/// Waits until `file` holds at least the capture's header (the capture is attached).
fn wait_started(file: &Path, d: &Daemon) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::metadata(file).map_or(0, |m| m.len()) < 28 {
        assert!(
            Instant::now() < deadline,
            "capture never started\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for a capture process to end on its own; its stderr.
fn wait_done(mut c: Child, d: &Daemon, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(st) = c.0.try_wait().expect("wait") {
            let mut err = String::new();
            if let Some(mut e) = c.0.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            assert!(st.success(), "{what}: {st}: {err}\n{}", d.log());
            return err;
        }
        assert!(Instant::now() < deadline, "{what} did not end\n{}", d.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One frame as tshark shows it.
#[derive(Debug)]
struct Pkt {
    time: f64,
    /// pcapng direction: 1 inbound (rx, from the guest), 2 outbound (tx, to the guest).
    dir: u32,
    info: String,
}

/// `tshark -r FILE` (it must read the whole file without error): time, direction, protocol and
/// info of each frame.
fn tshark(file: &Path) -> Vec<Pkt> {
    let out = Command::new("timeout")
        .args(["20", "tshark", "-n", "-r"])
        .arg(file)
        .args([
            "-T",
            "fields",
            "-E",
            "separator=|",
            "-e",
            "frame.time_epoch",
            "-e",
            "frame.packet_flags_direction",
            "-e",
            "_ws.col.Protocol",
            "-e",
            "_ws.col.Info",
        ])
        .output()
        .expect("tshark");
    assert!(
        out.status.success(),
        "tshark -r {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.splitn(4, '|').collect();
            Pkt {
                time: f.first().and_then(|t| t.parse().ok()).unwrap_or(0.0),
                dir: f
                    .get(1)
                    .and_then(|d| {
                        let d = d.trim();
                        d.strip_prefix("0x")
                            .map_or_else(|| d.parse().ok(), |h| u32::from_str_radix(h, 16).ok())
                    })
                    .unwrap_or(0),
                info: format!(
                    "{} {}",
                    f.get(2).copied().unwrap_or(""),
                    f.get(3).copied().unwrap_or("")
                ),
            }
        })
        .collect()
}

/// The capture's closing interface statistics block (written when a capture ends: the file is
/// whole): its drop count. Panics if the file does not end with one.
fn closing_drops(file: &Path) -> u64 {
    use pcap_file::pcapng::blocks::interface_statistics::InterfaceStatisticsOption;
    use pcap_file::pcapng::{Block, PcapNgReader};
    let bytes = std::fs::read(file).expect("read capture");
    let mut r = PcapNgReader::new(&bytes[..]).expect("pcapng header");
    let mut last = None;
    while let Some(b) = r.next_block() {
        last = Some(b.expect("whole blocks").into_owned());
    }
    match last {
        Some(Block::InterfaceStatistics(s)) => s
            .options
            .iter()
            .find_map(|o| match o {
                InterfaceStatisticsOption::IsbIfDrop(d) => Some(*d),
                _ => None,
            })
            .expect("isb_ifdrop"),
        other => panic!(
            "{} does not end with the statistics block: {other:?}",
            file.display()
        ),
    }
}

fn find(pkts: &[Pkt], what: &str) -> usize {
    pkts.iter()
        .position(|p| p.info.contains(what))
        .unwrap_or_else(|| panic!("no frame with {what:?} in {pkts:#?}"))
}

fn ping(ns: &Netns, to: &str, n: &str) {
    let out = ns.exec(&["ping", "-c", n, "-i", "0.2", "-W", "2", to]);
    assert!(
        out.status.success(),
        "ping {to}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Pings (bounded) until `c` has ended: traffic enough for any `--count`.
fn ping_until_done(ns: &Netns, to: &str, c: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while matches!(c.0.try_wait(), Ok(None)) && Instant::now() < deadline {
        let _ = ns.exec(&["ping", "-c", "1", "-W", "1", to]);
    }
}

#[test]
fn capture_shows_ping_and_http_in_order_both_directions() {
    if !ready("capture_shows_ping_and_http_in_order_both_directions") {
        return;
    }
    let (a, b) = (Netns::new("cpa"), Netns::new("cpb"));
    let d = two_guests("10.81.0.0/24", &a, &b, "");
    let _httpd = Httpd::start(&b, "hello.txt", "hello from b\n");
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("a.pcapng");
    let t0 = now();
    let mut c = capture(
        &d,
        &["a", "-w", file.to_str().expect("utf-8"), "--count", "24"],
    );
    wait_started(&file, &d);
    ping(&a, "10.81.0.11", "2");
    let mut got = String::new();
    for _ in 0..20 {
        let out = a.exec(&[
            "busybox",
            "wget",
            "-q",
            "-O",
            "-",
            "http://10.81.0.11/hello.txt",
        ]);
        got = String::from_utf8_lossy(&out.stdout).into_owned();
        if got.contains("hello from b") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(got.contains("hello from b"), "HTTP fetch failed: {got:?}");
    ping_until_done(&a, "10.81.0.11", &mut c);
    let summary = wait_done(c, &d, "capture --count 24");
    let t1 = now();
    assert!(
        summary.contains("24 frames captured") && summary.contains("0 dropped"),
        "{summary}"
    );
    let pkts = tshark(&file);
    assert_eq!(pkts.len(), 24, "{pkts:#?}");
    let req = find(&pkts, "Echo (ping) request");
    let rep = find(&pkts, "Echo (ping) reply");
    let get = find(&pkts, "GET /hello.txt");
    let ok = find(&pkts, "200 OK");
    assert!(req < rep && rep < get && get < ok, "order: {pkts:#?}");
    // From the guest into the switch: inbound; from the switch to the guest: outbound.
    assert_eq!((pkts[req].dir, pkts[rep].dir), (1, 2), "{pkts:#?}");
    assert_eq!((pkts[get].dir, pkts[ok].dir), (1, 2), "{pkts:#?}");
    for w in pkts.windows(2) {
        assert!(w[0].time <= w[1].time, "timestamps go back: {pkts:#?}");
    }
    for p in &pkts {
        assert!(
            p.time >= t0 && p.time <= t1,
            "timestamp {} outside the test's [{t0}, {t1}]",
            p.time
        );
    }
    // The counters say no capture dropped anything.
    let stats = d.ctl(&["stats"]);
    let row = stats
        .as_array()
        .and_then(|r| r.iter().find(|r| r["port"] == "a"))
        .expect("a's stats");
    assert_eq!(row["capture_dropped"], 0, "{row}");
}

#[test]
fn capture_to_stdout_pipes_into_tshark() {
    if !ready("capture_to_stdout_pipes_into_tshark") {
        return;
    }
    let (a, b) = (Netns::new("cqa"), Netns::new("cqb"));
    let d = two_guests("10.82.0.0/24", &a, &b, "");
    // Ping first (ARP resolved), then capture exactly the next echo request and reply.
    ping(&a, "10.82.0.11", "1");
    let mut c = Child(
        Command::new("timeout")
            .args(["30", "sh", "-c"])
            .arg(format!(
                "{BIN} ctl --socket {} capture a -w - --count 6 | tshark -n -r -",
                d.sock().display()
            ))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("sh"),
    );
    // The capture is attached once the daemon answered: give it a moment, then ping.
    std::thread::sleep(Duration::from_millis(500));
    ping_until_done(&a, "10.82.0.11", &mut c);
    let _ = c.0.wait();
    let mut out = String::new();
    if let Some(mut o) = c.0.stdout.take() {
        let _ = std::io::Read::read_to_string(&mut o, &mut out);
    }
    assert!(
        out.contains("Echo (ping) request") && out.contains("Echo (ping) reply"),
        "tshark -r - saw: {out}\n{}",
        d.log()
    );
}

/// The QEMU `-netdev stream` framing: a 4-byte big-endian length, then the frame.
fn stream_send(s: &mut UnixStream, frame: &[u8]) {
    let mut rec = (frame.len() as u32).to_be_bytes().to_vec();
    rec.extend_from_slice(frame);
    s.write_all(&rec).expect("stream write");
}

/// An ARP request from `mac`/`ip` for `target`.
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

#[test]
fn capture_of_a_stream_port_and_the_gateway() {
    if !ready("capture_of_a_stream_port_and_the_gateway") {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let sock = dir.path().join("vm.sock");
    let d = Daemon::start(&format!(
        "[[network]]\nname = \"n\"\nsubnet = \"10.83.0.0/24\"\nipv6 = \"off\"\ndns_upstreams = [\"127.0.0.1:9\"]\n\
         [[port]]\nnetwork = \"n\"\nname = \"vm\"\nstream = \"{}\"\n",
        sock.display()
    ));
    let mut peer = UnixStream::connect(&sock).expect("connect the stream port");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !d.port_names().contains(&"vm".to_string()) {
        assert!(Instant::now() < deadline, "stream port never came up");
        std::thread::sleep(Duration::from_millis(20));
    }
    let file = dir.path().join("vm.pcapng");
    let mut c = capture(
        &d,
        &["vm", "-w", file.to_str().expect("utf-8"), "--count", "2"],
    );
    wait_started(&file, &d);
    // The gateway's port at once: the same two frames, seen from the other side.
    let gw_file = dir.path().join("gw.pcapng");
    let gw = capture(
        &d,
        &[
            "gw.n",
            "-w",
            gw_file.to_str().expect("utf-8"),
            "--count",
            "2",
        ],
    );
    wait_started(&gw_file, &d);
    // The "VM" asks for the gateway's MAC; the gateway answers it through the port.
    let mac = [0x02, 0, 0, 0, 0x83, 0x05];
    let deadline = Instant::now() + Duration::from_secs(10);
    while matches!(c.0.try_wait(), Ok(None)) && Instant::now() < deadline {
        stream_send(&mut peer, &arp_request(mac, [10, 83, 0, 5], [10, 83, 0, 1]));
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_done(c, &d, "stream port capture");
    wait_done(gw, &d, "gateway port capture");
    let pkts = tshark(&gw_file);
    assert_eq!(pkts.len(), 2, "{pkts:#?}");
    assert!(
        pkts[0].info.contains("Who has 10.83.0.1") && pkts[0].dir == 2,
        "gateway: {pkts:#?}"
    );
    assert!(
        pkts[1].info.contains("10.83.0.1 is at") && pkts[1].dir == 1,
        "gateway: {pkts:#?}"
    );
    let pkts = tshark(&file);
    assert_eq!(pkts.len(), 2, "{pkts:#?}");
    assert!(
        pkts[0].info.contains("Who has 10.83.0.1") && pkts[0].dir == 1,
        "{pkts:#?}"
    );
    assert!(
        pkts[1].info.contains("10.83.0.1 is at") && pkts[1].dir == 2,
        "{pkts:#?}"
    );
}

/// The threads of process `pid`: name and scheduling policy (`/proc/PID/task/*/stat`).
fn writer_threads(pid: u32) -> Vec<(String, i32)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in dir.flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[open + 1..close].to_string();
        // Field 41 (policy); the fields after the name start at field 3.
        let policy = stat[close + 1..]
            .split_whitespace()
            .nth(41 - 3)
            .and_then(|p| p.parse().ok())
            .unwrap_or(-1);
        out.push((name, policy));
    }
    out
}

#[test]
fn capture_ends_with_a_readable_file_when_its_port_is_removed() {
    if !ready("capture_ends_with_a_readable_file_when_its_port_is_removed") {
        return;
    }
    let (a, b) = (Netns::new("cra"), Netns::new("crb"));
    let dir = tempfile::tempdir().expect("tmp");
    // b captures from its start into a file of its own (`pcap`), and ctl captures it too.
    let from_start: PathBuf = dir.path().join("b-start.pcapng");
    let d = two_guests(
        "10.84.0.0/24",
        &a,
        &b,
        &format!("pcap = \"{}\"", from_start.display()),
    );
    let file = dir.path().join("b.pcapng");
    let c = capture(&d, &["b", "-w", file.to_str().expect("utf-8")]);
    wait_started(&file, &d);
    // Both writers run at SCHED_IDLE (a capture never takes CPU time forwarding wants).
    let idle: Vec<String> = writer_threads(d.pid())
        .into_iter()
        .filter(|(_, policy)| *policy == libc::SCHED_IDLE)
        .map(|(name, _)| name)
        .collect();
    assert!(
        idle.iter().any(|n| n == "usernet-pcap-b") && idle.iter().any(|n| n == "usernet-ctl-con"),
        "SCHED_IDLE threads: {idle:?}"
    );
    ping(&a, "10.84.0.11", "3");
    // Let the writers drain, then remove the port while both captures run.
    std::thread::sleep(Duration::from_millis(200));
    d.ctl(&["port", "rm", "b"]);
    let summary = wait_done(c, &d, "capture of a removed port");
    assert!(summary.contains("frames captured on b"), "{summary}");
    for f in [&file, &from_start] {
        let pkts = tshark(f);
        let req = find(&pkts, "Echo (ping) request");
        let rep = find(&pkts, "Echo (ping) reply");
        // On b the request goes out to the guest, the reply comes in from it.
        assert_eq!(
            (pkts[req].dir, pkts[rep].dir),
            (2, 1),
            "{}: {pkts:#?}",
            f.display()
        );
        let info = Command::new("capinfos").arg(f).output().expect("capinfos");
        assert!(
            info.status.success(),
            "capinfos {}: {}",
            f.display(),
            String::from_utf8_lossy(&info.stderr)
        );
        assert_eq!(closing_drops(f), 0, "{}", f.display());
    }
}

#[test]
fn capture_of_an_unknown_port_is_an_error_naming_it() {
    if !ready("capture_of_an_unknown_port_is_an_error_naming_it") {
        return;
    }
    let (a, b) = (Netns::new("cua"), Netns::new("cub"));
    let d = two_guests("10.85.0.0/24", &a, &b, "");
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("x.pcapng");
    let out = Command::new("timeout")
        .arg("20")
        .arg(BIN)
        .args(["ctl", "--socket"])
        .arg(d.sock())
        .args(["capture", "nosuchport", "-w"])
        .arg(&file)
        .output()
        .expect("ctl capture");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "capture of an unknown port succeeded"
    );
    assert!(
        err.contains("nosuchport"),
        "error does not name the port: {err}"
    );
    assert!(!file.exists(), "a file was written for a refused capture");
    let out = d.ctl_raw(&["capture", "a", "--snaplen", "999999", "-w", "/dev/null"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("snaplen"), "{err}");
}

#[test]
fn two_captures_at_once_both_complete() {
    if !ready("two_captures_at_once_both_complete") {
        return;
    }
    let (a, b) = (Netns::new("cta"), Netns::new("ctb"));
    let d = two_guests("10.86.0.0/24", &a, &b, "");
    ping(&a, "10.86.0.11", "1");
    let dir = tempfile::tempdir().expect("tmp");
    let fa = dir.path().join("a.pcapng");
    let fa2 = dir.path().join("a2.pcap");
    let fb = dir.path().join("b.pcapng");
    let mut c1 = capture(
        &d,
        &["a", "-w", fa.to_str().expect("utf-8"), "--count", "6"],
    );
    let c2 = capture(
        &d,
        &[
            "a",
            "-w",
            fa2.to_str().expect("utf-8"),
            "--count",
            "6",
            "--format",
            "pcap",
            "--snaplen",
            "64",
        ],
    );
    let c3 = capture(
        &d,
        &["b", "-w", fb.to_str().expect("utf-8"), "--count", "6"],
    );
    for f in [&fa, &fa2, &fb] {
        wait_started(f, &d);
    }
    ping_until_done(&a, "10.86.0.11", &mut c1);
    for (c, what) in [(c1, "first"), (c2, "second"), (c3, "third")] {
        wait_done(c, &d, what);
    }
    for f in [&fa, &fa2, &fb] {
        let pkts = tshark(f);
        assert_eq!(pkts.len(), 6, "{}: {pkts:#?}", f.display());
        find(&pkts, "Echo (ping) request");
    }
    let info = Command::new("capinfos")
        .args(["-l"])
        .arg(&fa2)
        .output()
        .expect("capinfos");
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(info.contains("64 bytes"), "snaplen 64 not in: {info}");
}

#[test]
fn ctrl_c_ends_a_capture_with_a_complete_file() {
    if !ready("ctrl_c_ends_a_capture_with_a_complete_file") {
        return;
    }
    let (a, b) = (Netns::new("cia"), Netns::new("cib"));
    let d = two_guests("10.87.0.0/24", &a, &b, "");
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("a.pcapng");
    let c = capture(&d, &["a", "-w", file.to_str().expect("utf-8")]);
    wait_started(&file, &d);
    ping(&a, "10.87.0.11", "2");
    std::thread::sleep(Duration::from_millis(200));
    interrupt(&c);
    let summary = wait_done(c, &d, "capture ended by SIGINT");
    // The summary's drop count comes from the closing statistics block: the file is whole.
    assert!(summary.contains(", 0 dropped"), "{summary}");
    let pkts = tshark(&file);
    let req = find(&pkts, "Echo (ping) request");
    let rep = find(&pkts, "Echo (ping) reply");
    assert!(req < rep, "{pkts:#?}");
    assert_eq!(closing_drops(&file), 0);
}

#[test]
fn pcap_file_is_complete_after_the_daemon_stops() {
    if !ready("pcap_file_is_complete_after_the_daemon_stops") {
        return;
    }
    let (a, b) = (Netns::new("csa"), Netns::new("csb"));
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("b.pcapng");
    let d = two_guests(
        "10.88.0.0/24",
        &a,
        &b,
        &format!("pcap = \"{}\"", file.display()),
    );
    ping(&a, "10.88.0.11", "2");
    // SIGTERM; the daemon lets the capture finish its file before it exits.
    drop(d);
    let pkts = tshark(&file);
    let req = find(&pkts, "Echo (ping) request");
    let rep = find(&pkts, "Echo (ping) reply");
    assert!(req < rep, "{pkts:#?}");
    let info = Command::new("capinfos")
        .arg(&file)
        .output()
        .expect("capinfos");
    assert!(
        info.status.success(),
        "{}",
        String::from_utf8_lossy(&info.stderr)
    );
    assert_eq!(closing_drops(&file), 0);
}

#[test]
fn a_capture_nobody_reads_drops_captures_never_frames() {
    if !ready("a_capture_nobody_reads_drops_captures_never_frames") {
        return;
    }
    let (a, b) = (Netns::new("cna"), Netns::new("cnb"));
    let d = two_guests("10.89.0.0/24", &a, &b, "");
    ping(&a, "10.89.0.11", "1");
    // A client that asks for a capture and then never reads a byte of it.
    let mut stuck = UnixStream::connect(d.sock()).expect("control socket");
    stuck
        .write_all(b"{\"op\":\"capture\",\"port\":\"a\"}\n")
        .expect("request");
    stuck
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut answer = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(stuck.try_clone().expect("clone")),
        &mut answer,
    )
    .expect("answer");
    assert!(answer.contains("\"ok\":true"), "{answer}");
    // 20000 frames through a: far more than the socket's buffer and the capture's queue.
    let out = a.exec(&[
        "ping",
        "-f",
        "-c",
        "10000",
        "-s",
        "1000",
        "-W",
        "1",
        "10.89.0.11",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(" 0% packet loss"),
        "forwarding suffered from a stuck capture: {text}\n{}",
        d.log()
    );
    let stats = d.ctl(&["stats"]);
    let row = stats
        .as_array()
        .and_then(|r| r.iter().find(|r| r["port"] == "a"))
        .expect("a's stats");
    assert!(
        row["capture_dropped"].as_u64().unwrap_or(0) > 0,
        "the full queue's frames were not counted: {row}"
    );
    let ring_full = row["stats"]["drops"]["ring_full"].as_u64().unwrap_or(0);
    assert_eq!(ring_full, 0, "{row}");
    drop(stuck);
}

/// Sends `req` with `fd` attached (`SCM_RIGHTS`) on a new control connection; its answer line
/// and the connection.
fn request_passing(d: &Daemon, req: &str, fd: &std::fs::File) -> (String, UnixStream) {
    use std::os::fd::AsFd;
    let req: usernet::control::api::Request = serde_json::from_str(req).expect("request");
    let conn = usernet::control::server::connect_with_fd(&d.sock(), &req, Some(fd.as_fd()))
        .expect("control socket");
    let mut answer = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(conn.try_clone().expect("clone")),
        &mut answer,
    )
    .expect("answer");
    (answer, conn)
}

#[test]
fn a_passed_file_is_written_by_the_daemon_and_survives_the_port() {
    if !ready("a_passed_file_is_written_by_the_daemon_and_survives_the_port") {
        return;
    }
    let (a, b) = (Netns::new("cfa"), Netns::new("cfb"));
    let d = two_guests("10.90.0.0/24", &a, &b, "");
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("b.pcapng");
    // The API user opens the file; the daemon writes it through the descriptor.
    let f = std::fs::File::create(&file).expect("create");
    let (answer, conn) = request_passing(&d, r#"{"op":"capture","port":"b","fd":true}"#, &f);
    assert!(answer.contains("\"fd\":true"), "{answer}");
    drop(f);
    wait_started(&file, &d);
    ping(&a, "10.90.0.11", "3");
    std::thread::sleep(Duration::from_millis(200));
    d.ctl(&["port", "rm", "b"]);
    // The connection carries one more line, the summary, then closes.
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut &conn, &mut rest).expect("summary");
    let v: serde_json::Value = serde_json::from_str(rest.trim()).expect("one JSON line");
    assert_eq!(v["summary"]["end"], "port_removed", "{rest}");
    let pkts = tshark(&file);
    let req = find(&pkts, "Echo (ping) request");
    let rep = find(&pkts, "Echo (ping) reply");
    assert!(req < rep, "{pkts:#?}");
    assert!(
        pkts.windows(2).all(|w| w[0].time <= w[1].time),
        "frames out of order: {pkts:#?}"
    );
    assert_eq!(v["summary"]["captured"].as_u64(), Some(pkts.len() as u64));
    assert_eq!(closing_drops(&file), 0);

    // The descriptor goes only with the request that announces it, and must be writable.
    let f = std::fs::File::create(dir.path().join("x")).expect("create");
    let (answer, _c) = request_passing(&d, r#"{"op":"capture","port":"a"}"#, &f);
    assert!(answer.contains("descriptors"), "{answer}");
    let (answer, _c) = request_passing(&d, r#"{"op":"ports"}"#, &f);
    assert!(answer.contains("descriptors"), "{answer}");
    let ro = std::fs::File::open(dir.path().join("x")).expect("open");
    let (answer, _c) = request_passing(&d, r#"{"op":"capture","port":"a","fd":true}"#, &ro);
    assert!(answer.contains("not open for writing"), "{answer}");
    // The daemon still answers, and the capture of a's file form still works from ctl.
    assert!(d.ctl(&["stats"]).is_array());
}

/// The server's side of the TCP stream to port `from` in a capture, reassembled by sequence
/// number (retransmissions and overlaps counted once), and the largest frame captured.
fn server_stream(file: &Path, from: u16) -> (Vec<u8>, usize) {
    use etherparse::{SlicedPacket, TransportSlice};
    use pcap_file::pcapng::{Block, PcapNgReader};
    let bytes = std::fs::read(file).expect("read capture");
    let mut r = PcapNgReader::new(&bytes[..]).expect("pcapng header");
    let (mut isn, mut segs, mut largest) = (None, Vec::new(), 0);
    while let Some(b) = r.next_block() {
        let Block::EnhancedPacket(p) = b.expect("whole blocks") else {
            continue;
        };
        assert_eq!(p.original_len as usize, p.data.len(), "whole frames");
        largest = largest.max(p.data.len());
        let Ok(s) = SlicedPacket::from_ethernet(&p.data) else {
            continue;
        };
        let Some(TransportSlice::Tcp(t)) = s.transport else {
            continue;
        };
        if t.source_port() != from {
            continue;
        }
        if t.syn() {
            isn = Some(t.sequence_number());
        }
        segs.push((t.sequence_number(), t.payload().to_vec()));
    }
    let isn = isn.expect("the server's SYN-ACK was captured");
    let mut segs: Vec<(u32, Vec<u8>)> = segs
        .into_iter()
        .map(|(seq, p)| (seq.wrapping_sub(isn).wrapping_sub(1), p))
        .collect();
    segs.sort_by_key(|s| s.0);
    let mut out = Vec::new();
    for (seq, p) in segs {
        let (at, end) = (seq as usize, seq as usize + p.len());
        if at <= out.len() && end > out.len() {
            out.extend_from_slice(&p[out.len() - at..]);
        }
    }
    (out, largest)
}

#[test]
fn a_bulk_transfer_captured_whole_is_intact_in_both_captures() {
    if !ready("a_bulk_transfer_captured_whole_is_intact_in_both_captures") {
        return;
    }
    let (a, b) = (Netns::new("cba"), Netns::new("cbb"));
    let d = two_guests("10.83.0.0/24", &a, &b, "");
    // 3 MB the receiver and both captures must hold byte for byte.
    let body: String = (0..60_000)
        .map(|i: u64| format!("{i:08} {:016x}\n", i.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
        .collect::<String>()
        + &"z".repeat(1_500_000);
    let _httpd = Httpd::start(&b, "big.txt", &body);
    ping(&a, "10.83.0.11", "1");
    let dir = tempfile::tempdir().expect("tmp");
    // b's capture takes the server's frames on receive, a's on transmit: large frames (TAP
    // GSO, up to 64 KiB) are shared with the capture, not copied, both ways.
    let (fa, fb) = (dir.path().join("a.pcapng"), dir.path().join("b.pcapng"));
    let ca = capture(&d, &["a", "-w", fa.to_str().expect("utf-8")]);
    let cb = capture(&d, &["b", "-w", fb.to_str().expect("utf-8")]);
    wait_started(&fa, &d);
    wait_started(&fb, &d);
    let got = a.exec(&[
        "curl",
        "-s",
        "--max-time",
        "20",
        "http://10.83.0.11/big.txt",
    ]);
    assert!(
        got.stdout == body.as_bytes(),
        "the transfer itself: {} bytes of {}, {}\n{}",
        got.stdout.len(),
        body.len(),
        String::from_utf8_lossy(&got.stderr),
        d.log()
    );
    std::thread::sleep(Duration::from_millis(300));
    interrupt(&ca);
    interrupt(&cb);
    for (c, f, port) in [(ca, &fa, "a"), (cb, &fb, "b")] {
        let summary = wait_done(c, &d, &format!("capture of {port}"));
        assert!(summary.contains(", 0 dropped"), "{port}: {summary}");
        let (stream, largest) = server_stream(f, 80);
        let at = stream
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("HTTP header");
        assert!(
            stream[at + 4..] == *body.as_bytes(),
            "{port}'s capture: {} body bytes of {}, differing at {:?}",
            stream.len() - at - 4,
            body.len(),
            stream[at + 4..]
                .iter()
                .zip(body.as_bytes())
                .position(|(x, y)| x != y)
        );
        assert!(
            largest > 1514,
            "{port}: no offloaded frame captured (largest {largest})"
        );
    }
}
