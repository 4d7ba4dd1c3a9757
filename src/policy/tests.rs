use super::*;

fn rule(action: &str, kv: &[(&str, &str)]) -> RuleSpec {
    let mut r = RuleSpec::new(action);
    for (k, v) in kv {
        r.set(k, v).expect("key");
    }
    r
}

fn policy(default: Option<&str>, rules: Vec<RuleSpec>) -> PolicySpec {
    PolicySpec {
        default: default.map(str::to_string),
        rules,
    }
}

fn tcp(src: [u8; 4], dst: [u8; 4], dport: u16) -> Packet {
    Packet {
        src: src.into(),
        dst: dst.into(),
        proto: 6,
        sport: Some(40000),
        dport: Some(dport),
        icmp_type: None,
        frag: Frag::Whole,
    }
}

const A: [u8; 4] = [10, 88, 0, 5];
const B: [u8; 4] = [10, 88, 0, 6];
const NET: u32 = 1;

#[test]
fn no_policy_allows_and_table_is_inactive() {
    let t = Table::default();
    assert!(!t.active());
    let way = Way::Between { from: 2, to: 3 };
    assert_eq!(t.load().check(NET, way, &tcp(A, B, 22), 60), Ok(()));
    t.set(Scope::Network(NET), &policy(Some("allow"), vec![]), "p")
        .expect("valid");
    assert!(t.active());
    t.set(Scope::Network(NET), &policy(None, vec![]), "p")
        .expect("valid");
    assert!(!t.active(), "an empty policy is none");
}

#[test]
fn network_rules_first_match_and_counters() {
    let t = Table::default();
    let p = policy(
        None,
        vec![
            rule(
                "allow",
                &[("src", "10.88.0.5"), ("proto", "tcp"), ("dst_port", "22")],
            ),
            rule("deny", &[("proto", "tcp"), ("dst_port", "22")]),
        ],
    );
    t.set(Scope::Network(NET), &p, "network[0].policy")
        .expect("valid");
    let s = t.load();
    let between = Way::Between { from: 2, to: 3 };
    assert_eq!(s.check(NET, between, &tcp(A, B, 22), 60), Ok(()));
    let d = s.check(NET, between, &tcp(B, A, 22), 70);
    assert_eq!(
        d,
        Err(Denied {
            scope: Scope::Network(NET),
            rule: Some(1)
        })
    );
    assert_eq!(s.check(NET, between, &tcp(B, A, 80), 80), Ok(()));
    let rows = t.rows(Scope::Network(NET));
    let got: Vec<_> = rows.iter().map(|r| (r.index, r.packets, r.bytes)).collect();
    // Each counted once although both ports' views walked the network's rules.
    assert_eq!(got, [(Some(0), 1, 60), (Some(1), 1, 70), (None, 1, 80)]);
}

#[test]
fn directions_of_network_rules() {
    let t = Table::default();
    let p = policy(None, vec![rule("deny", &[("direction", "egress")])]);
    t.set(Scope::Network(NET), &p, "p").expect("valid");
    let s = t.load();
    let pk = tcp(A, B, 80);
    assert!(
        s.check(NET, Way::Out { port: 2 }, &pk, 1).is_err(),
        "NAT egress"
    );
    assert!(s.check(NET, Way::In { port: Some(2) }, &pk, 1).is_ok());
    let between = Way::Between { from: 2, to: 3 };
    assert!(s.check(NET, between, &pk, 1).is_ok(), "not between guests");
}

#[test]
fn port_rules_precede_network_rules_and_both_ends_must_allow() {
    let t = Table::default();
    t.set(
        Scope::Network(NET),
        &policy(Some("deny"), vec![rule("allow", &[("proto", "udp")])]),
        "p",
    )
    .expect("valid");
    // Port 2 may send TCP 80 (overrides the network's default deny) but not UDP 53.
    t.set(
        Scope::Port(2),
        &policy(
            None,
            vec![
                rule(
                    "allow",
                    &[
                        ("direction", "egress"),
                        ("proto", "tcp"),
                        ("dst_port", "80"),
                    ],
                ),
                rule("deny", &[("proto", "udp"), ("dst_port", "53")]),
            ],
        ),
        "p",
    )
    .expect("valid");
    // Port 3 accepts nothing on TCP 80 (its own ingress deny wins over 2's allow).
    let s = t.load();
    assert!(
        s.check(NET, Way::Out { port: 2 }, &tcp(A, B, 80), 1)
            .is_ok()
    );
    assert!(
        s.check(NET, Way::Out { port: 4 }, &tcp(A, B, 80), 1)
            .is_err()
    );
    let mut udp = tcp(A, B, 53);
    udp.proto = 17;
    assert!(s.check(NET, Way::Out { port: 2 }, &udp, 1).is_err());
    assert!(s.check(NET, Way::Out { port: 4 }, &udp, 1).is_ok());
    t.add_rule(
        Scope::Port(3),
        None,
        &rule("deny", &[("direction", "ingress"), ("proto", "tcp")]),
    )
    .expect("valid");
    let s = t.load();
    let d = s.check(NET, Way::Between { from: 2, to: 3 }, &tcp(A, B, 80), 1);
    assert_eq!(
        d,
        Err(Denied {
            scope: Scope::Port(3),
            rule: Some(0)
        })
    );
    // A port default decides before the network's default, after the network's rules.
    t.set(Scope::Port(5), &policy(Some("allow"), vec![]), "p")
        .expect("valid");
    let s = t.load();
    assert!(
        s.check(NET, Way::In { port: Some(5) }, &tcp(B, A, 9), 1)
            .is_ok()
    );
    assert!(
        s.check(NET, Way::In { port: None }, &tcp(B, A, 9), 1)
            .is_err()
    );
    assert_eq!(t.rows(Scope::Port(5))[0].packets, 1);
}

#[test]
fn add_and_remove_keep_the_other_counters() {
    let t = Table::default();
    let s0 = Scope::Port(7);
    t.add_rule(
        s0,
        None,
        &rule("deny", &[("proto", "tcp"), ("dst_port", "22")]),
    )
    .expect("valid");
    let _ = t
        .load()
        .check(NET, Way::Out { port: 7 }, &tcp(A, B, 22), 10);
    let at = t
        .add_rule(s0, Some(0), &rule("allow", &[("proto", "udp")]))
        .expect("valid");
    assert_eq!(at, 0);
    let rows = t.rows(s0);
    assert_eq!((rows.len(), rows[1].packets, rows[1].bytes), (2, 1, 10));
    let e = t
        .add_rule(s0, Some(5), &rule("allow", &[]))
        .expect_err("past");
    assert!(
        e.to_string().contains("invalid index: 5 is past the end"),
        "{e}"
    );
    let e = t
        .add_rule(s0, None, &rule("allow", &[("dst_port", "1")]))
        .expect_err("no proto");
    assert!(e.to_string().starts_with("invalid rule.dst_port: "), "{e}");
    assert_eq!(t.remove_rule(s0, 0).expect("there").action, "allow");
    assert_eq!(t.rows(s0)[0].packets, 1);
    assert!(t.remove_rule(s0, 3).is_err());
    t.remove_rule(s0, 0).expect("there");
    assert!(!t.active(), "no rules and no default: gone");
    assert!(t.remove_rule(s0, 0).is_err());
}

#[test]
fn snapshot_is_stable_while_rules_change() {
    let t = Table::default();
    t.add_rule(Scope::Network(NET), None, &rule("deny", &[]))
        .expect("valid");
    let old = t.load();
    t.remove_rule(Scope::Network(NET), 0).expect("there");
    // A reader holding the old snapshot still sees the rule; new readers do not.
    assert!(
        old.check(NET, Way::Out { port: 1 }, &tcp(A, B, 1), 1)
            .is_err()
    );
    assert!(
        t.load()
            .check(NET, Way::Out { port: 1 }, &tcp(A, B, 1), 1)
            .is_ok()
    );
}
