//! End-to-end tests of the gateway's DNS name policy (`dns_policy` on `[[network]]`, the API's
//! `dns_policy` op, `usernet ctl dns policy`): a guest in a namespace asks the gateway with dig;
//! the upstream is a dnsmasq on loopback that answers every `*.example.test`. Need root; nothing
//! leaves the machine.

mod common;

use common::daemon::Daemon;
use common::dns::{short, status, upstream};
use common::events::{next_of, subscribe};
use common::{Netns, require_root};

const UPSTREAM: &str = "127.0.0.64";

fn netns_port(name: &str, ns: &Netns, ip: &str) -> String {
    format!(
        "[[port]]\nnetwork = \"n\"\nname = \"{name}\"\nnetns = \"{}\"\nips = [\"{ip}/24\"]\n",
        ns.path().display()
    )
}

fn metric(daemon: &Daemon, name: &str) -> u64 {
    let text = daemon.ctl(&["metrics"]);
    text.as_str()
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(name) && l.contains("network=\"n\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[test]
fn dns_policy_denies_names_and_changes_at_run_time() {
    if !require_root("dns_policy_denies_names_and_changes_at_run_time") {
        return;
    }
    let _up = upstream(UPSTREAM, "example.test", "10.1.1.1");
    let a = Netns::new("dpa");
    let b = Netns::new("dpb");
    let daemon = Daemon::start(&format!(
        "[[network]]\nname = \"n\"\nsubnet = \"10.71.0.0/24\"\nipv6 = \"off\"\n\
         dns_upstreams = [\"{UPSTREAM}\"]\n\
         dns_policy = {{ deny = [\"ads.example.test\", \"*.tracker.example.test\", \"web.usernet\"], \
         allow = [\"ok.tracker.example.test\"] }}\n{}{}",
        netns_port("client", &a, "10.71.0.10"),
        netns_port("web", &b, "10.71.0.20"),
    ));
    let gw = "@10.71.0.1";
    let log = || daemon.log();

    // Allowed: forwarded names, the apex of a denied suffix, an exception below it, own names.
    assert_eq!(
        short(&a, &[gw, "www.example.test"]),
        "10.1.1.1",
        "{}",
        log()
    );
    assert_eq!(short(&a, &[gw, "tracker.example.test"]), "10.1.1.1");
    assert_eq!(short(&a, &[gw, "ok.tracker.example.test"]), "10.1.1.1");
    assert_eq!(short(&a, &[gw, "client.usernet"]), "10.71.0.10");
    // Denied: an exact name (any case), every name below a suffix, a local endpoint name, over
    // UDP and TCP; a subscriber sees them as sampled `dns_denied` events.
    let rx = subscribe(&daemon);
    let mut denied = 0;
    for (name, tcp) in [
        ("ads.example.test", false),
        ("ADS.Example.TEST", false),
        ("x.tracker.example.test", false),
        ("a.b.tracker.example.test", true),
        ("web.usernet", false),
        ("ads.example.test", true),
    ] {
        let mut args = vec![gw, name];
        if tcp {
            args.push("+tcp");
        }
        assert_eq!(status(&a, &args), "NXDOMAIN", "{name} tcp={tcp}");
        denied += 1;
    }
    // The upstream never saw a denied name: a subdomain that is not listed still resolves.
    assert_eq!(short(&a, &[gw, "x.ads.example.test"]), "10.1.1.1");

    let mut seen = 0;
    while seen < denied {
        let ev = next_of(&rx, &["dns_denied"], &daemon);
        assert_eq!(ev["network"], "n", "{ev}");
        seen += ev["count"].as_u64().unwrap_or(0);
    }
    assert_eq!(seen, denied);
    let shown = daemon.ctl(&["dns", "policy", "--network", "n"]);
    assert_eq!(shown["denied"], denied, "{shown}");
    assert_eq!(shown["policy"]["default"], "allow", "{shown}");
    assert_eq!(metric(&daemon, "usernet_dns_policy_denied_total"), denied);

    // Replaced at run time: default deny, one suffix allowed, REFUSED.
    daemon.ctl(&[
        "dns",
        "policy",
        "--network",
        "n",
        "--default",
        "deny",
        "--allow",
        "*.example.test",
        "--answer",
        "refused",
    ]);
    assert_eq!(short(&a, &[gw, "ads.example.test"]), "10.1.1.1");
    assert_eq!(status(&a, &[gw, "web.usernet"]), "REFUSED");
    assert_eq!(status(&a, &[gw, "example.test"]), "REFUSED");
    assert_eq!(status(&a, &[gw, "-x", "10.71.0.20"]), "REFUSED");
    // Human output.
    let out = std::process::Command::new(common::daemon::BIN)
        .arg("ctl")
        .arg("--socket")
        .arg(daemon.sock())
        .args(["dns", "policy", "--network", "n"])
        .output()
        .expect("usernet ctl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("deny") && text.contains("refused") && text.contains("*.example.test"),
        "{text}"
    );

    // A bad policy is refused, names the entry and changes nothing.
    let out = daemon.ctl_raw(&["dns", "policy", "--network", "n", "--deny", "bad name"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("dns_policy.deny[0]"),
        "{err}"
    );
    assert_eq!(status(&a, &[gw, "web.usernet"]), "REFUSED");
    let out = daemon.ctl_raw(&["dns", "policy", "--network", "nope", "--deny", "x.test"]);
    assert!(!out.status.success());

    // Cleared: everything resolves again.
    daemon.ctl(&["dns", "policy", "--network", "n", "--clear"]);
    assert_eq!(short(&a, &[gw, "web.usernet"]), "10.71.0.20");
    assert_eq!(short(&a, &[gw, "x.tracker.example.test"]), "10.1.1.1");
    let shown = daemon.ctl(&["dns", "policy", "--network", "n"]);
    assert!(shown["policy"].is_null(), "{shown}");
}
