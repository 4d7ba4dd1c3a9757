//! DNS helpers for the e2e tests: `dig` inside a namespace, and dnsmasq on loopback as an
//! upstream resolver (never the host's own).

use std::process::Command;
use std::time::{Duration, Instant};

use super::{Child, Netns};

/// `dig +time=2 +tries=1 ARGS` in `ns`; its standard output.
pub fn dig(ns: &Netns, args: &[&str]) -> String {
    let mut all = vec!["dig", "+time=2", "+tries=1"];
    all.extend_from_slice(args);
    let out = ns.exec(&all);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `dig ARGS +short` in `ns`, trimmed.
pub fn short(ns: &Netns, args: &[&str]) -> String {
    let mut all = args.to_vec();
    all.push("+short");
    dig(ns, &all).trim().to_string()
}

/// The reply's status (`NOERROR`, `NXDOMAIN`, `REFUSED`...) of `dig ARGS` in `ns`; empty when
/// no reply came.
pub fn status(ns: &Netns, args: &[&str]) -> String {
    let out = dig(ns, args);
    out.split("status: ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .unwrap_or("")
        .to_string()
}

/// A dnsmasq on `addr`:53 answering every name under `domain` (and `domain` itself) with
/// `answer`, nothing else (it has no upstream); waits until it
/// listens; stopped on drop.
pub fn upstream(addr: &str, domain: &str, answer: &str) -> Child {
    let child = super::dnsmasq(
        None,
        &[
            "--bind-interfaces",
            &format!("--listen-address={addr}"),
            "--port=53",
            &format!("--address=/{domain}/{answer}"),
            "--pid-file=",
            "--local-ttl=300",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = Command::new("ss").args(["-Hlun"]).output().expect("ss");
        if String::from_utf8_lossy(&out.stdout).contains(&format!("{addr}:53")) {
            break;
        }
        assert!(Instant::now() < deadline, "dnsmasq on {addr} did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}
