use std::time::Duration;

use super::*;
use crate::wire::Mac;

struct Rig {
    clock: Arc<ManualClock>,
    br: Bridge,
}

fn rig() -> Rig {
    let clock = Arc::new(ManualClock::new());
    let br = Bridge::new(clock.clone(), FramePool::new(1518, 64));
    Rig { clock, br }
}

fn port(r: &Rig, net: &str, name: &str, policy: PortPolicy) -> Arc<Port> {
    r.br.add_port(
        net,
        NewPort {
            name: name.into(),
            kind: "memory",
            policy,
            ring: 8,
            owner: 0,
        },
    )
    .expect("add port")
}

fn mac(n: u8) -> Mac {
    Mac([2, 0, 0, 0, 0, n])
}

fn eth(dst: Mac, src: Mac) -> Frame {
    let mut f = Vec::with_capacity(60);
    f.extend(dst.0);
    f.extend(src.0);
    f.extend([0x08, 0x00]);
    f.extend([0xab; 46]);
    Frame::from_slice(&f)
}

fn send(r: &Rig, p: &Port, f: Frame) -> Vec<PortId> {
    let topo = r.br.topology();
    let mut got = Vec::new();
    r.br.forward(&topo, p, f, r.br.now(), &mut |q| got.push(q.id));
    got
}

fn drain(p: &Port) -> Vec<Vec<u8>> {
    std::iter::from_fn(|| p.tx.pop())
        .map(|f| f.data().to_vec())
        .collect()
}

fn three(r: &Rig) -> (Arc<Port>, Arc<Port>, Arc<Port>) {
    r.br.add_network("n", FdbConfig::default()).expect("net");
    (
        port(r, "n", "a", PortPolicy::default()),
        port(r, "n", "b", PortPolicy::default()),
        port(r, "n", "c", PortPolicy::default()),
    )
}

#[test]
fn unknown_unicast_floods_then_learned_goes_unicast() {
    let r = rig();
    let (a, b, c) = three(&r);
    let f = eth(mac(2), mac(1));
    let bytes = f.data().to_vec();
    assert_eq!(send(&r, &a, f), vec![b.id, c.id]);
    assert_eq!(drain(&b), vec![bytes.clone()]);
    assert_eq!(drain(&c), vec![bytes]);
    assert!(drain(&a).is_empty(), "never back out of the ingress port");
    // b answers: learned unicast to a only.
    assert_eq!(send(&r, &b, eth(mac(1), mac(2))), vec![a.id]);
    assert_eq!(send(&r, &a, eth(mac(2), mac(1))), vec![b.id]);
    assert!(drain(&c).is_empty());
}

#[test]
fn broadcast_and_multicast_flood_but_not_reserved() {
    let r = rig();
    let (a, b, c) = three(&r);
    assert_eq!(send(&r, &a, eth(Mac::BROADCAST, mac(1))), vec![b.id, c.id]);
    let mcast = Mac([0x01, 0x00, 0x5e, 0, 0, 0xfb]);
    assert_eq!(send(&r, &a, eth(mcast, mac(1))), vec![b.id, c.id]);
    let stp = Mac([0x01, 0x80, 0xc2, 0, 0, 0]);
    assert!(send(&r, &a, eth(stp, mac(1))).is_empty());
    assert_eq!(a.counters.drops(DropReason::Reserved), 1);
}

#[test]
fn multicast_source_is_dropped_and_not_learned() {
    let r = rig();
    let (a, _b, _c) = three(&r);
    let bad = Mac([0x01, 0, 0x5e, 0, 0, 1]);
    assert!(send(&r, &a, eth(Mac::BROADCAST, bad)).is_empty());
    assert!(send(&r, &a, eth(Mac::BROADCAST, Mac([0; 6]))).is_empty());
    assert_eq!(a.counters.drops(DropReason::InvalidSource), 2);
    let topo = r.br.topology();
    assert!(topo.network(a.network).expect("net").net.fdb.is_empty());
}

#[test]
fn runts_and_garbage_are_counted_never_panic() {
    let r = rig();
    let (a, _b, _c) = three(&r);
    for n in 0..14 {
        assert!(send(&r, &a, Frame::from_slice(&vec![0xffu8; n])).is_empty());
    }
    let mut tagged = vec![0xff; 12];
    tagged.extend([0x81, 0x00, 0x00]);
    assert!(send(&r, &a, Frame::from_slice(&tagged)).is_empty());
    assert_eq!(a.counters.drops(DropReason::Runt), 15);
    let s = a.counters.snapshot();
    assert_eq!(s.rx_frames, s.forwarded + s.rx_dropped());
}

#[test]
fn hairpin_is_dropped() {
    let r = rig();
    let (a, _b, _c) = three(&r);
    send(&r, &a, eth(Mac::BROADCAST, mac(1)));
    send(&r, &a, eth(Mac::BROADCAST, mac(9)));
    assert!(send(&r, &a, eth(mac(9), mac(1))).is_empty());
    assert_eq!(a.counters.drops(DropReason::Hairpin), 1);
}

#[test]
fn networks_never_mix() {
    let r = rig();
    r.br.add_network("n1", FdbConfig::default()).expect("n1");
    r.br.add_network("n2", FdbConfig::default()).expect("n2");
    let a1 = port(&r, "n1", "a1", PortPolicy::default());
    let b1 = port(&r, "n1", "b1", PortPolicy::default());
    let a2 = port(&r, "n2", "a2", PortPolicy::default());
    let b2 = port(&r, "n2", "b2", PortPolicy::default());
    // Same MAC learned in both networks on different ports.
    assert_eq!(send(&r, &a1, eth(Mac::BROADCAST, mac(1))), vec![b1.id]);
    assert_eq!(send(&r, &a2, eth(Mac::BROADCAST, mac(1))), vec![b2.id]);
    assert_eq!(send(&r, &b1, eth(mac(1), mac(2))), vec![a1.id]);
    assert_eq!(send(&r, &b2, eth(mac(1), mac(3))), vec![a2.id]);
    // Unknown in n2 floods only within n2.
    assert_eq!(send(&r, &b2, eth(mac(2), mac(3))), vec![a2.id]);
}

#[test]
fn isolated_ports_reach_only_non_isolated() {
    let r = rig();
    r.br.add_network("n", FdbConfig::default()).expect("net");
    let iso = PortPolicy {
        isolated: true,
        ..PortPolicy::default()
    };
    let gw = port(&r, "n", "gw", PortPolicy::default());
    let a = port(&r, "n", "a", iso.clone());
    let b = port(&r, "n", "b", iso);
    assert_eq!(send(&r, &a, eth(Mac::BROADCAST, mac(1))), vec![gw.id]);
    assert_eq!(send(&r, &gw, eth(Mac::BROADCAST, mac(9))), vec![a.id, b.id]);
    send(&r, &b, eth(mac(9), mac(2)));
    assert!(send(&r, &a, eth(mac(2), mac(1))).is_empty());
    assert_eq!(a.counters.drops(DropReason::Policy), 1);
}

#[test]
fn anti_spoofing_and_no_flood_policy() {
    let r = rig();
    r.br.add_network("n", FdbConfig::default()).expect("net");
    let a = port(
        &r,
        "n",
        "a",
        PortPolicy {
            allowed_macs: vec![mac(1)],
            ..PortPolicy::default()
        },
    );
    let quiet = port(
        &r,
        "n",
        "q",
        PortPolicy {
            flood: false,
            ..PortPolicy::default()
        },
    );
    let b = port(&r, "n", "b", PortPolicy::default());
    assert!(send(&r, &a, eth(Mac::BROADCAST, mac(7))).is_empty());
    assert_eq!(a.counters.drops(DropReason::Policy), 1);
    assert_eq!(
        send(&r, &a, eth(mac(5), mac(1))),
        vec![b.id],
        "no unknown unicast to q"
    );
    assert_eq!(
        send(&r, &a, eth(Mac::BROADCAST, mac(1))),
        vec![quiet.id, b.id]
    );
}

#[test]
fn full_ring_counts_on_egress_and_flood_copies() {
    let r = rig();
    let (a, b, c) = three(&r);
    for i in 0..10u8 {
        send(&r, &a, eth(Mac::BROADCAST, mac(1 + i % 2)));
    }
    assert_eq!(b.tx.len(), 8);
    assert_eq!(b.counters.drops(DropReason::RingFull), 2);
    assert_eq!(c.counters.drops(DropReason::RingFull), 2);
    assert_eq!(a.counters.forwarded.load(Ordering::Relaxed), 10);
}

#[test]
fn aging_refloods_and_moves_relearn() {
    let r = rig();
    let (a, b, c) = three(&r);
    send(&r, &b, eth(Mac::BROADCAST, mac(2)));
    assert_eq!(send(&r, &a, eth(mac(2), mac(1))), vec![b.id]);
    r.clock.advance(Duration::from_secs(301));
    assert_eq!(
        send(&r, &a, eth(mac(2), mac(1))),
        vec![b.id, c.id],
        "aged: flood"
    );
    // mac(2) moves to c.
    send(&r, &c, eth(Mac::BROADCAST, mac(2)));
    assert_eq!(send(&r, &a, eth(mac(2), mac(1))), vec![c.id]);
}

#[test]
fn removed_port_is_forgotten() {
    let r = rig();
    let (a, b, c) = three(&r);
    send(&r, &b, eth(Mac::BROADCAST, mac(2)));
    r.br.remove_port(b.id).expect("removed");
    assert_eq!(send(&r, &a, eth(mac(2), mac(1))), vec![c.id]);
    assert!(r.br.topology().port_by_name("b").is_none());
    assert!(r.br.remove_port(b.id).is_none());
}

#[test]
fn names_and_duplicates_are_checked() {
    let r = rig();
    assert!(r.br.add_network("bad name", FdbConfig::default()).is_err());
    r.br.add_network("n", FdbConfig::default()).expect("net");
    assert_eq!(
        r.br.add_network("n", FdbConfig::default()).err(),
        Some(BridgeError::NetworkExists("n".into()))
    );
    port(&r, "n", "p", PortPolicy::default());
    let dup = r.br.add_port(
        "n",
        NewPort {
            name: "p".into(),
            kind: "memory",
            policy: PortPolicy::default(),
            ring: 8,
            owner: 0,
        },
    );
    assert_eq!(dup.err(), Some(BridgeError::PortExists("p".into())));
    let gone = r.br.add_port(
        "zz",
        NewPort {
            name: "q".into(),
            kind: "memory",
            policy: PortPolicy::default(),
            ring: 8,
            owner: 0,
        },
    );
    assert_eq!(gone.err(), Some(BridgeError::NoSuchNetwork("zz".into())));
    let removed = r.br.remove_network("n").expect("removed");
    assert_eq!(removed.len(), 1);
    assert!(r.br.topology().ports().is_empty());
}

#[test]
fn lone_port_counts_no_destination() {
    let r = rig();
    r.br.add_network("n", FdbConfig::default()).expect("net");
    let a = port(&r, "n", "a", PortPolicy::default());
    assert!(send(&r, &a, eth(Mac::BROADCAST, mac(1))).is_empty());
    assert_eq!(a.counters.drops(DropReason::NoDestination), 1);
}

fn tagged(dst: Mac, src: Mac, tpid: u16, vid: u16) -> Frame {
    let mut f = eth(dst, src);
    assert!(f.push_vlan(tpid, vid));
    f
}

/// Networks n10, n20, n30 (native); access ports a10, a20, a30; trunk t: n10 = 10, n20 = 20,
/// native n30.
fn trunk_rig(native: bool) -> (Rig, [Arc<Port>; 4]) {
    let r = rig();
    for n in ["n10", "n20", "n30"] {
        r.br.add_network(n, FdbConfig::default()).expect("net");
    }
    let a10 = port(&r, "n10", "a10", PortPolicy::default());
    let a20 = port(&r, "n20", "a20", PortPolicy::default());
    let a30 = port(&r, "n30", "a30", PortPolicy::default());
    let pol = PortPolicy {
        trunk: Some(TrunkSpec::new(
            [("n10", 10), ("n20", 20)],
            native.then_some("n30"),
        )),
        ..PortPolicy::default()
    };
    let t = port(&r, "ignored", "t", pol);
    (r, [a10, a20, a30, t])
}

#[test]
fn trunk_classifies_by_tag_pops_and_pushes() {
    let (r, [a10, a20, a30, t]) = trunk_rig(true);
    // Tagged 10 from the trunk: only n10's port, untagged.
    let plain = eth(Mac::BROADCAST, mac(9)).data().to_vec();
    assert_eq!(
        send(&r, &t, tagged(Mac::BROADCAST, mac(9), 0x8100, 10)),
        vec![a10.id]
    );
    assert_eq!(drain(&a10), vec![plain.clone()]);
    // Untagged from the trunk: the native network, untouched.
    assert_eq!(send(&r, &t, eth(Mac::BROADCAST, mac(9))), vec![a30.id]);
    assert_eq!(drain(&a30), vec![plain.clone()]);
    // From n20's access port: to the trunk with tag 20 (and the priority bits clear).
    assert_eq!(send(&r, &a20, eth(Mac::BROADCAST, mac(2))), vec![t.id]);
    let out = drain(&t);
    assert_eq!(out.len(), 1);
    assert_eq!(&out[0][12..16], &[0x81, 0x00, 0x00, 20]);
    // From the native network: untagged.
    assert_eq!(send(&r, &a30, eth(Mac::BROADCAST, mac(3))), vec![t.id]);
    assert_eq!(&drain(&t)[0][12..14], &[0x08, 0x00]);
    // ... unless it carries an 802.1Q tag, which would read as that VLAN on the trunk.
    send(&r, &a30, tagged(Mac::BROADCAST, mac(3), 0x8100, 10));
    assert!(drain(&t).is_empty());
    assert_eq!(t.counters.drops(DropReason::NativeTagged), 1);
    // Learned per network: unicast back to mac(9) in n10 goes to the trunk, tagged 10.
    assert_eq!(send(&r, &a10, eth(mac(9), mac(1))), vec![t.id]);
    assert_eq!(&drain(&t)[0][12..16], &[0x81, 0x00, 0x00, 10]);
    // ... and in n20 mac(9) is unknown: flood (to the trunk only, tagged 20).
    assert_eq!(send(&r, &a20, eth(mac(9), mac(2))), vec![t.id]);
    assert_eq!(&drain(&t)[0][12..16], &[0x81, 0x00, 0x00, 20]);
    assert!(drain(&a10).is_empty() && drain(&a30).is_empty());
    assert_eq!(t.counters.drops(DropReason::UnmappedVlan), 0);
}

#[test]
fn trunk_drops_unmapped_and_untagged_without_native() {
    let (r, [a10, a20, a30, t]) = trunk_rig(false);
    assert!(send(&r, &t, tagged(Mac::BROADCAST, mac(9), 0x8100, 30)).is_empty());
    assert!(send(&r, &t, eth(Mac::BROADCAST, mac(9))).is_empty());
    // 802.1ad is not a trunk tag: untagged, and no native network.
    assert!(send(&r, &t, tagged(Mac::BROADCAST, mac(9), 0x88a8, 10)).is_empty());
    assert_eq!(t.counters.drops(DropReason::UnmappedVlan), 3);
    let s = t.counters.snapshot();
    assert_eq!(s.rx_frames, s.forwarded + s.rx_dropped());
    assert!(drain(&a10).is_empty() && drain(&a20).is_empty() && drain(&a30).is_empty());
    // n30 is not on this trunk: nothing from it reaches it.
    assert!(send(&r, &a30, eth(Mac::BROADCAST, mac(3))).is_empty());
}

#[test]
fn access_port_forwards_tags_untouched_within_its_network() {
    let (r, [a10, a20, a30, t]) = trunk_rig(true);
    // A frame tagged 20 (and a Q-in-Q one) on n10's access port stays in n10: on the trunk
    // it leaves as n10's, with tag 10 outside its own.
    for tpid in [0x8100, 0x88a8] {
        let f = tagged(Mac::BROADCAST, mac(1), tpid, 20);
        let inner = f.data().to_vec();
        assert_eq!(send(&r, &a10, f), vec![t.id]);
        let out = drain(&t);
        assert_eq!(&out[0][12..16], &[0x81, 0x00, 0x00, 10]);
        assert_eq!(&out[0][16..], &inner[12..]);
    }
    assert!(drain(&a20).is_empty() && drain(&a30).is_empty());
}

#[test]
fn trunk_leaves_every_network_it_was_in() {
    let (r, [a10, _a20, _a30, t]) = trunk_rig(true);
    send(&r, &t, tagged(mac(1), mac(9), 0x8100, 20));
    assert!(r.br.topology().port(t.id).is_some());
    // Removing n10 removes the trunk, from n20's and n30's port lists too.
    let gone = r.br.remove_network("n10").expect("remove");
    assert!(gone.iter().any(|p| p.id == t.id) && gone.iter().any(|p| p.id == a10.id));
    let topo = r.br.topology();
    assert!(topo.port(t.id).is_none());
    for n in ["n20", "n30"] {
        let ne = topo.network_by_name(n).expect("net");
        assert!(
            ne.ports.iter().all(|p| p.id != t.id),
            "{n} still lists the trunk"
        );
        assert!(ne.net.fdb.dump(r.br.now()).iter().all(|e| e.port != t.id));
    }
}

#[test]
fn trunk_spec_errors_name_the_key() {
    let r = rig();
    r.br.add_network("n10", FdbConfig::default()).expect("net");
    let add = |vlans: &[(&str, u16)], native: Option<&str>| {
        let policy = PortPolicy {
            trunk: Some(TrunkSpec::new(vlans.iter().copied(), native)),
            ..PortPolicy::default()
        };
        r.br.add_port(
            "x",
            NewPort {
                name: "t".into(),
                kind: "memory",
                policy,
                ring: 8,
                owner: 0,
            },
        )
        .expect_err("refused")
        .to_string()
    };
    assert!(add(&[("n10", 0)], None).contains("trunk.n10: VLAN id 0"));
    assert!(add(&[("n10", 4095)], None).contains("outside 1..=4094"));
    assert!(add(&[("nope", 5)], None).contains("trunk.nope: no network"));
    assert!(add(&[("n10", 5)], Some("n10")).contains("native"));
    assert!(add(&[("n10", 5), ("n11", 5)], None).contains("VLAN id 5 is also"));
    assert!(r.br.topology().port_by_name("t").is_none());
}

/// An IPv4 TCP frame from `src` to `dst` (MACs and last address bytes `s`, `d`).
fn tcp_frame(dst: Mac, src: Mac, s: u8, d: u8, dport: u16) -> Frame {
    let mut f = Vec::with_capacity(60);
    f.extend(dst.0);
    f.extend(src.0);
    f.extend([0x08, 0x00]);
    f.extend([0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0]);
    f.extend([10, 88, 0, s, 10, 88, 0, d]);
    f.extend(40000u16.to_be_bytes());
    f.extend(dport.to_be_bytes());
    f.extend([0u8; 16]);
    Frame::from_slice(&f)
}

#[test]
fn policy_denies_between_guests_unicast_and_flood() {
    use crate::policy::{PolicySpec, RuleSpec, Scope};
    let r = rig();
    let (a, b, c) = three(&r);
    let mut deny = RuleSpec::new("deny");
    deny.set("proto", "tcp").expect("ok");
    deny.set("dst_port", "22").expect("ok");
    let net = r.br.topology().network_by_name("n").map(|n| n.net.id.0);
    let spec = PolicySpec {
        default: None,
        rules: vec![deny],
    };
    r.br.policy()
        .set(Scope::Network(net.expect("net")), &spec, "p")
        .expect("valid");
    // Unknown unicast floods: the denied port 22 goes nowhere, counted once on the rule.
    assert!(send(&r, &a, tcp_frame(mac(2), mac(1), 1, 2, 22)).is_empty());
    assert_eq!(a.counters.drops(DropReason::PolicyDenied), 1);
    assert_eq!(
        send(&r, &a, tcp_frame(mac(2), mac(1), 1, 2, 80)),
        vec![b.id, c.id]
    );
    let _ = (drain(&b), drain(&c));
    // Learned unicast: b -> a on 22 denied, 80 passes; ARP-like non-IP frames always pass.
    assert!(send(&r, &b, tcp_frame(mac(1), mac(2), 2, 1, 22)).is_empty());
    assert_eq!(
        send(&r, &b, tcp_frame(mac(1), mac(2), 2, 1, 80)),
        vec![a.id]
    );
    assert_eq!(send(&r, &b, eth(mac(1), mac(2))), vec![a.id]);
    assert!(drain(&a).iter().all(|f| f[36..38] != 22u16.to_be_bytes()));
    let rows = r.br.policy().rows(Scope::Network(net.expect("net")));
    // A flooded frame is checked (and counted) once per port it would go to.
    assert_eq!((rows[0].packets, rows[1].packets), (3, 3));
    // A port's ingress rule: c refuses port 80, b still gets it.
    let mut c80 = RuleSpec::new("deny");
    c80.set("direction", "ingress").expect("ok");
    c80.set("proto", "tcp").expect("ok");
    c80.set("dst_port", "80").expect("ok");
    r.br.policy()
        .add_rule(Scope::Port(c.id.0), None, &c80)
        .expect("valid");
    assert_eq!(
        send(&r, &a, tcp_frame(mac(9), mac(1), 1, 9, 80)),
        vec![b.id]
    );
    // Removing the port forgets its policy.
    r.br.remove_port(c.id);
    assert!(r.br.policy().load().get(Scope::Port(c.id.0)).is_none());
}
