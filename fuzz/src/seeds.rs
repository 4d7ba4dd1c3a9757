//! The seed inputs under `fuzz/seeds/TARGET/`, built with etherparse, dhcproto and
//! hickory-proto (and written by hand for the text targets).
//!
//! `USERNET_WRITE_SEEDS=1 cargo test --test fuzz_regressions write_seeds` rewrites the files
//! from this list; the `seeds_are_current` test checks the files match it.

use std::net::{Ipv4Addr, Ipv6Addr};

use dhcproto::v4::{DhcpOption, Flags, Message as DhcpMessage, MessageType as DhcpType};
use dhcproto::{Encodable, Encoder};
use etherparse::icmpv6::RouterAdvertisementHeader;
use etherparse::{ArpEthIpv4Packet, ArpOperation, ArpPacket, Icmpv6Type, PacketBuilder};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{DNSClass, Name, RecordType};
use usernet::gateway::ndp;
use usernet::wire::Mac;

use super::{arp as arp_t, dhcp_server as dhcp_t};

/// One seed file: `fuzz/seeds/{target}/{name}`.
pub struct Seed {
    /// Fuzz target.
    pub target: &'static str,
    /// File name.
    pub name: &'static str,
    /// Contents.
    pub bytes: Vec<u8>,
}

fn seed(target: &'static str, name: &'static str, bytes: Vec<u8>) -> Seed {
    Seed {
        target,
        name,
        bytes,
    }
}

/// Every seed.
pub fn all() -> Vec<Seed> {
    let mut v = Vec::new();
    v.extend(arp());
    v.extend(dhcp());
    v.extend(dns());
    v.extend(ndp_ra());
    v.extend(control_api());
    v.extend(config());
    v.extend(forward_spec());
    v.extend(datapath());
    v.extend(stream_framing());
    v.extend(vxlan_decap());
    v
}

// ---- arp ----

const GUEST: Mac = Mac([0x02, 0, 0, 0, 0, 0x09]);
const GUEST_IP: [u8; 4] = [10, 88, 0, 9];

fn arp_payload(op: ArpOperation, smac: Mac, sip: [u8; 4], tmac: [u8; 6], tip: [u8; 4]) -> Vec<u8> {
    let p = ArpPacket::from(ArpEthIpv4Packet {
        operation: op,
        sender_mac: smac.0,
        sender_ipv4: sip,
        target_mac: tmac,
        target_ipv4: tip,
    });
    p.to_bytes().to_vec()
}

fn arp() -> Vec<Seed> {
    let gw = arp_t::GW_IP.octets();
    vec![
        seed(
            "arp",
            "request-for-gateway",
            arp_payload(ArpOperation::REQUEST, GUEST, GUEST_IP, [0; 6], gw),
        ),
        seed(
            "arp",
            "request-for-other",
            arp_payload(
                ArpOperation::REQUEST,
                GUEST,
                GUEST_IP,
                [0; 6],
                [10, 88, 0, 7],
            ),
        ),
        seed(
            "arp",
            "probe-from-zero",
            arp_payload(ArpOperation::REQUEST, GUEST, [0; 4], [0; 6], gw),
        ),
        seed(
            "arp",
            "reply",
            arp_payload(ArpOperation::REPLY, GUEST, GUEST_IP, arp_t::GW_MAC.0, gw),
        ),
        seed(
            "arp",
            "gratuitous",
            arp_payload(ArpOperation::REQUEST, GUEST, GUEST_IP, [0; 6], GUEST_IP),
        ),
        seed("arp", "padded-request", {
            let mut p = arp_payload(ArpOperation::REQUEST, GUEST, GUEST_IP, [0; 6], gw);
            p.resize(46, 0); // Ethernet minimum-size padding
            p
        }),
    ]
}

// ---- dhcp_server ----

fn dhcp_msg(mac: Mac, kind: DhcpType, xid: u32) -> DhcpMessage {
    let mut m = DhcpMessage::new_with_id(
        xid,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &mac.0,
    );
    m.opts_mut().insert(DhcpOption::MessageType(kind));
    m
}

fn enc(m: &DhcpMessage) -> Vec<u8> {
    let mut buf = Vec::new();
    m.encode(&mut Encoder::new(&mut buf)).expect("encodes");
    buf
}

fn discover(mac: Mac, host: Option<&str>) -> DhcpMessage {
    let mut m = dhcp_msg(mac, DhcpType::Discover, 0x1000 + u32::from(mac.0[5]));
    m.opts_mut().insert(DhcpOption::ParameterRequestList(vec![
        dhcproto::v4::OptionCode::SubnetMask,
        dhcproto::v4::OptionCode::Router,
        dhcproto::v4::OptionCode::DomainNameServer,
        dhcproto::v4::OptionCode::DomainName,
        dhcproto::v4::OptionCode::DomainSearch,
        dhcproto::v4::OptionCode::InterfaceMtu,
    ]));
    m.opts_mut().insert(DhcpOption::MaxMessageSize(1500));
    if let Some(h) = host {
        m.opts_mut().insert(DhcpOption::Hostname(h.into()));
    }
    m
}

fn request(mac: Mac, addr: Ipv4Addr, host: Option<&str>) -> DhcpMessage {
    let mut m = dhcp_msg(mac, DhcpType::Request, 0x1000 + u32::from(mac.0[5]));
    m.opts_mut()
        .insert(DhcpOption::ServerIdentifier(dhcp_t::SERVER));
    m.opts_mut().insert(DhcpOption::RequestedIpAddress(addr));
    if let Some(h) = host {
        m.opts_mut().insert(DhcpOption::Hostname(h.into()));
    }
    m
}

fn with_ciaddr(kind: DhcpType, mac: Mac, ci: Ipv4Addr) -> DhcpMessage {
    let mut m = DhcpMessage::new_with_id(
        0x2000,
        ci,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &mac.0,
    );
    m.opts_mut().insert(DhcpOption::MessageType(kind));
    m
}

fn dhcp() -> Vec<Seed> {
    let a = Mac([0x02, 0, 0, 0, 0, 0x01]);
    let b = Mac([0x02, 0, 0, 0, 0, 0x02]);
    let ip2 = dhcp_t::POOL_START;
    let ip3 = Ipv4Addr::new(10, 88, 0, 3);
    let one = |m: &DhcpMessage| dhcp_t::encode_records(&[(0, enc(m))]);
    let mut bcast = discover(a, None);
    bcast.set_flags(Flags::default().set_broadcast());
    vec![
        seed("dhcp_server", "discover", one(&discover(a, Some("web")))),
        seed("dhcp_server", "discover-broadcast", one(&bcast)),
        // Cluster mode: nothing claimed (no offer), one claim (.3: a 1-byte record), DORA,
        // the spares given up (a 2-byte record), another client gets nothing.
        seed(
            "dhcp_server",
            "cluster-claims",
            dhcp_t::encode_records(&[
                (0x40, enc(&discover(a, None))),
                (0x40, vec![0]),
                (0, enc(&discover(a, Some("web")))),
                (0, enc(&request(a, ip3, Some("web")))),
                (0xc0, vec![0, 0]),
                (0, enc(&discover(b, None))),
            ]),
        ),
        seed("dhcp_server", "request", one(&request(a, ip2, Some("web")))),
        seed(
            "dhcp_server",
            "inform",
            one(&with_ciaddr(
                DhcpType::Inform,
                a,
                Ipv4Addr::new(10, 88, 0, 12),
            )),
        ),
        seed(
            "dhcp_server",
            "dora-release",
            dhcp_t::encode_records(&[
                (0, enc(&discover(a, Some("web")))),
                (1, enc(&request(a, ip2, Some("web")))),
                (3, enc(&with_ciaddr(DhcpType::Release, a, ip2))),
                (0x10, enc(&discover(b, None))),
            ]),
        ),
        seed(
            "dhcp_server",
            "dora-decline-expire",
            dhcp_t::encode_records(&[
                (0, enc(&discover(a, Some("db")))),
                (0, enc(&request(a, ip2, Some("db")))),
                (0, enc(&discover(b, Some("db")))),
                (0, enc(&request(b, ip3, Some("db")))),
                (
                    0,
                    enc(&{
                        let mut m = dhcp_msg(b, DhcpType::Decline, 7);
                        m.opts_mut().insert(DhcpOption::RequestedIpAddress(ip3));
                        m.opts_mut()
                            .insert(DhcpOption::ServerIdentifier(dhcp_t::SERVER));
                        m
                    }),
                ),
                (6 | 0x08, enc(&request(a, ip2, Some("db2")))),
                (7 | 0x08, enc(&discover(b, None))),
            ]),
        ),
        seed(
            "dhcp_server",
            "static-client",
            dhcp_t::encode_records(&[
                (0, enc(&discover(dhcp_t::STATIC_MAC, Some("other")))),
                (
                    0,
                    enc(&request(dhcp_t::STATIC_MAC, dhcp_t::STATIC_IP, None)),
                ),
                (0, enc(&request(a, dhcp_t::STATIC_IP, None))),
            ]),
        ),
        seed(
            "dhcp_server",
            "exhaust-pool",
            dhcp_t::encode_records(
                &(1..=7u8)
                    .map(|i| (0, enc(&discover(Mac([0x02, 0, 0, 0, 1, i]), None))))
                    .collect::<Vec<_>>(),
            ),
        ),
        seed(
            "dhcp_server",
            "renew-nak",
            dhcp_t::encode_records(&[
                (0, enc(&with_ciaddr(DhcpType::Request, a, ip3))),
                (0, enc(&request(a, Ipv4Addr::new(10, 99, 0, 5), None))),
            ]),
        ),
    ]
}

// ---- dns_server ----

fn dns_query(id: u16, name: &str, qtype: RecordType, edns: Option<u16>) -> Message {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.queries
        .push(Query::query(Name::from_ascii(name).expect("name"), qtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.edns = Some(e);
    }
    m
}

fn dns_seed(tcp: bool, m: &Message) -> Vec<u8> {
    let mut v = vec![u8::from(tcp)];
    v.extend(m.to_vec().expect("encodes"));
    v
}

fn dns() -> Vec<Seed> {
    let q = |name: &str, t: RecordType| dns_seed(false, &dns_query(0x1234, name, t, None));
    let mut any = dns_query(0x2222, "web.usernet.", RecordType::ANY, None);
    any.queries[0].set_query_class(DNSClass::ANY);
    let mut two = dns_query(3, "web.usernet.", RecordType::A, None);
    two.queries.push(Query::query(
        Name::from_ascii("db.app.usernet.").expect("name"),
        RecordType::A,
    ));
    let mut notify = dns_query(4, "usernet.", RecordType::SOA, None);
    notify.metadata.op_code = OpCode::Notify;
    let mut badvers = dns_query(5, "web.usernet.", RecordType::A, Some(1232));
    if let Some(e) = badvers.edns.as_mut() {
        e.set_version(1);
    }
    let compressed = {
        // A question whose name is a compression pointer back into the header area: invalid.
        let mut b = dns_query(6, "web.usernet.", RecordType::A, None)
            .to_vec()
            .expect("enc");
        b.truncate(12);
        b.extend([0xc0, 0x0c, 0, 1, 0, 1]);
        let mut v = vec![0];
        v.extend(b);
        v
    };
    vec![
        seed("dns_server", "a-local", q("web.usernet.", RecordType::A)),
        seed(
            "dns_server",
            "aaaa-local",
            q("WEB.Usernet.", RecordType::AAAA),
        ),
        seed("dns_server", "any-local", dns_seed(false, &any)),
        seed(
            "dns_server",
            "ptr-local",
            q("5.0.88.10.in-addr.arpa.", RecordType::PTR),
        ),
        seed(
            "dns_server",
            "nodata-mx",
            q("db.app.usernet.", RecordType::MX),
        ),
        seed(
            "dns_server",
            "empty-non-terminal",
            q("app.usernet.", RecordType::A),
        ),
        seed("dns_server", "nxdomain", q("nope.usernet.", RecordType::A)),
        seed(
            "dns_server",
            "policy-denied",
            q("X.Denied.usernet.", RecordType::A),
        ),
        seed(
            "dns_server",
            "policy-allowed",
            q("ok.denied.usernet.", RecordType::A),
        ),
        seed("dns_server", "apex-soa", q("usernet.", RecordType::SOA)),
        seed("dns_server", "axfr", q("usernet.", RecordType::AXFR)),
        seed(
            "dns_server",
            "truncated-udp",
            q("many.usernet.", RecordType::A),
        ),
        seed(
            "dns_server",
            "edns-udp",
            dns_seed(
                false,
                &dns_query(7, "many.usernet.", RecordType::A, Some(4096)),
            ),
        ),
        seed(
            "dns_server",
            "tcp-many",
            dns_seed(true, &dns_query(8, "many.usernet.", RecordType::A, None)),
        ),
        seed("dns_server", "forwarded", q("example.com.", RecordType::A)),
        seed(
            "dns_server",
            "forwarded-tcp-edns",
            dns_seed(
                true,
                &dns_query(9, "example.org.", RecordType::AAAA, Some(1232)),
            ),
        ),
        seed("dns_server", "two-questions", dns_seed(false, &two)),
        seed("dns_server", "notify", dns_seed(false, &notify)),
        seed("dns_server", "badvers", dns_seed(false, &badvers)),
        seed("dns_server", "pointer-loop", compressed),
    ]
}

// ---- ndp_ra ----

/// The parameter block of an `ndp_ra` input: gateway 02:11:22:33:44:55, fd88::/64, MTU 1500,
/// lifetime 1800, DNS fd88::1.
fn ndp_params(dns: &[Ipv6Addr]) -> Vec<u8> {
    let mut v = vec![0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
    v.extend("fd88::".parse::<Ipv6Addr>().expect("addr").octets());
    v.push(64);
    v.extend(1500u32.to_be_bytes());
    v.extend(1800u16.to_be_bytes());
    v.push(dns.len() as u8);
    for a in dns {
        v.extend(a.octets());
    }
    v
}

const NDP_GUEST: Mac = Mac([0x02, 0, 0, 0, 0, 0x09]);

fn ns(src: Ipv6Addr, dst: Ipv6Addr, dst_mac: Mac, target: Ipv6Addr, slla: bool) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(NDP_GUEST.0, dst_mac.0)
        .ipv6(src.octets(), dst.octets(), 255)
        .icmpv6(Icmpv6Type::NeighborSolicitation);
    let mut payload = vec![0u8; 4];
    payload.extend(target.octets());
    if slla {
        payload.extend([1, 1]);
        payload.extend(NDP_GUEST.0);
    }
    let mut out = Vec::new();
    b.write(&mut out, &payload).expect("writes");
    out
}

fn rs(src: Ipv6Addr) -> Vec<u8> {
    let dst = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
    let b = PacketBuilder::ethernet2(NDP_GUEST.0, ndp::multicast_mac(dst).0)
        .ipv6(src.octets(), dst.octets(), 255)
        .icmpv6(Icmpv6Type::RouterSolicitation);
    let mut payload = vec![0u8; 4];
    if !src.is_unspecified() {
        payload.extend([1, 1]);
        payload.extend(NDP_GUEST.0);
    }
    let mut out = Vec::new();
    b.write(&mut out, &payload).expect("writes");
    out
}

fn ndp_ra() -> Vec<Seed> {
    let gw_dns: Ipv6Addr = "fd88::1".parse().expect("addr");
    let params = ndp_params(&[gw_dns]);
    let guest_ll = ndp::link_local(NDP_GUEST);
    let guest: Ipv6Addr = "fd88::9".parse().expect("addr");
    let gw_ll = ndp::link_local(Mac([0x02, 0x11, 0x22, 0x33, 0x44, 0x55]));
    let with = |frame: Vec<u8>| {
        let mut v = params.clone();
        v.extend(frame);
        v
    };
    let sn = |a: Ipv6Addr| {
        (
            ndp::solicited_node(a),
            ndp::multicast_mac(ndp::solicited_node(a)),
        )
    };
    let (sn_ula, sn_ula_mac) = sn(gw_dns);
    let (sn_ll, sn_ll_mac) = sn(gw_ll);
    let ra_frame = {
        // Another router's advertisement: the gateway ignores it.
        let b = PacketBuilder::ethernet2(NDP_GUEST.0, ndp::multicast_mac(ndp::ALL_NODES).0)
            .ipv6(guest_ll.octets(), ndp::ALL_NODES.octets(), 255)
            .icmpv6(Icmpv6Type::RouterAdvertisement(RouterAdvertisementHeader {
                cur_hop_limit: 64,
                managed_address_config: false,
                other_config: false,
                router_lifetime: 0,
            }));
        let mut out = Vec::new();
        b.write(&mut out, &[0u8; 8]).expect("writes");
        out
    };
    vec![
        seed("ndp_ra", "params-only", params.clone()),
        seed("ndp_ra", "params-no-dns", ndp_params(&[])),
        seed(
            "ndp_ra",
            "params-three-dns",
            ndp_params(&[
                gw_dns,
                "2001:db8::53".parse().expect("a"),
                "fd00::1".parse().expect("a"),
            ]),
        ),
        seed(
            "ndp_ra",
            "ns-ula",
            with(ns(guest, sn_ula, sn_ula_mac, gw_dns, true)),
        ),
        seed(
            "ndp_ra",
            "ns-link-local",
            with(ns(guest_ll, sn_ll, sn_ll_mac, gw_ll, true)),
        ),
        seed(
            "ndp_ra",
            "ns-dad",
            with(ns(Ipv6Addr::UNSPECIFIED, sn_ula, sn_ula_mac, gw_dns, false)),
        ),
        seed(
            "ndp_ra",
            "ns-unicast",
            with(ns(
                guest,
                gw_dns,
                Mac([0x02, 0x11, 0x22, 0x33, 0x44, 0x55]),
                gw_dns,
                true,
            )),
        ),
        seed("ndp_ra", "rs", with(rs(guest_ll))),
        seed("ndp_ra", "rs-unspecified", with(rs(Ipv6Addr::UNSPECIFIED))),
        seed("ndp_ra", "foreign-ra", with(ra_frame)),
    ]
}

// ---- control_api ----

fn control_api() -> Vec<Seed> {
    let lines: [(&str, &str); 17] = [
        ("ports", r#"{"op":"ports"}"#),
        ("networks", r#"{"op":"networks"}"#),
        ("fdb", r#"{"op":"fdb","network":"net0"}"#),
        ("stats", r#"{"op":"stats"}"#),
        (
            "add-network",
            r#"{"op":"add_network","name":"net1","fdb_max_entries":16,"fdb_aging_secs":0}"#,
        ),
        ("remove-network", r#"{"op":"remove_network","name":"net1"}"#),
        (
            "add-port-netns",
            r#"{"op":"add_port","port":{"network":"net0","name":"c3","netns":"/run/netns/c3","ifname":"eth1","mtu":9000,"isolated":true}}"#,
        ),
        (
            "add-port-tap",
            r#"{"op":"add_port","port":{"network":"net0","name":"t","tap":"tap0","learning":false,"flood":false,"allowed_macs":["02:00:00:00:00:01"]}}"#,
        ),
        ("remove-port", r#"{"op":"remove_port","name":"c3"}"#),
        (
            "static-mac",
            r#"{"op":"add_static_mac","port":"c3","mac":"02:00:00:00:00:03","vlan":7}"#,
        ),
        ("gateways", r#"{"op":"gateways"}"#),
        ("leases", r#"{"op":"leases","network":"net0"}"#),
        (
            "dns-add",
            r#"{"op":"dns_add","network":"net0","name":"web","addr":"10.88.0.5"}"#,
        ),
        (
            "dns-rm",
            r#"{"op":"dns_rm","network":"net0","name":"web","addr":"fd88::5"}"#,
        ),
        ("dns-ls", r#"{"op":"dns_ls"}"#),
        (
            "dns-policy",
            r#"{"op":"dns_policy","network":"net0","policy":{"default":"deny","allow":["*.example.test"],"deny":["ads.example.test"],"answer":"refused"}}"#,
        ),
        ("shutdown", r#"{"op":"shutdown"}"#),
    ];
    lines
        .into_iter()
        .map(|(n, l)| seed("control_api", n, l.as_bytes().to_vec()))
        .collect()
}

// ---- config ----

fn config() -> Vec<Seed> {
    let minimal = "[[network]]\nname = \"net0\"\n";
    let full = r#"[engine]
loops = 2
mtu = 1500
ring = 1024

[[network]]
name = "net0"
subnet = "10.88.0.0/24"
ipv6 = "fd88::/64"
domain = "usernet"
mtu = 1400
internal = false
dns_upstreams = ["1.1.1.1", "[2606:4700:4700::1111]:53", "9.9.9.9:5353"]
dhcp = true
dhcp_range = "10.88.0.10-10.88.0.200"
lease_secs = 600
fdb_max_entries = 8192
fdb_aging_secs = 300
static_leases = [{ mac = "02:00:00:00:00:aa", ip = "10.88.0.5", hostname = "db" }]

[[network]]
name = "iso"
gateway = false
ipv6 = "off"

[[port]]
network = "net0"
name = "web"
tap = "t1"

[[port]]
network = "net0"
name = "db"
netns = "/run/netns/c1"
ifname = "eth0"
isolated = true
allowed_macs = ["02:00:00:00:00:aa"]

[[port]]
network = "iso"
name = "up"
packet = "veth0"
learning = false
flood = false
"#;
    let forward = "[[network]]\nname = \"a\"\n[[forward]]\npublish = \"8080:80\"\n";
    vec![
        seed("config", "minimal", minimal.as_bytes().to_vec()),
        seed("config", "full", full.as_bytes().to_vec()),
        seed("config", "forward-refused", forward.as_bytes().to_vec()),
    ]
}

// ---- forward_spec ----

fn forward_spec() -> Vec<Seed> {
    [
        ("single", "8080:80"),
        ("v4-udp", "127.0.0.1:8080:80/udp"),
        ("v6-range", "[fd00::1:2]:1000-1002:2000-2002/UDP"),
        ("edge-ports", "65530-65535:1-6/tcp"),
        ("padded", " 80:80 "),
        ("bad-reversed", "90-80:1-11"),
    ]
    .into_iter()
    .map(|(n, s)| seed("forward_spec", n, s.as_bytes().to_vec()))
    .collect()
}

// ---- datapath ----

/// Event sequences for `datapath` (see `fuzz/src/datapath.rs` for the event encoding): the
/// station byte `0x00` is the first station of network n0's first guest port, `0x01` of n1,
/// `0x02` of n2 (internal), `0x04` n0's second port, `0x08` the second station on a port.
fn datapath() -> Vec<Seed> {
    const READY: u8 = 12;
    const CLOCK: u8 = 10;
    // Structured events: 2 ARP, 3 DHCP, 4 DNS, 5 echo, 6 UDP, 7 TCP, 8 NDP; 9 flipped.
    let tcp = |st: u8, dst: u8, port: u8, flags: u8| vec![7, st, dst, port, 0, flags, 4];
    let mut handshake = vec![2, 0x00, 0x00];
    // SYN to the gateway's host-loopback port 80, the host connect completes, then data,
    // a DNS query over TCP to the gateway, a FIN, and an hour passes.
    handshake.extend(tcp(0x00, 0x00, 4, 0));
    handshake.push(READY);
    handshake.extend(tcp(0x00, 0x00, 4, 1));
    handshake.extend(tcp(0x00, 0x00, 4, 2));
    handshake.extend(tcp(0x00, 0x00, 4, 3));
    handshake.extend([CLOCK, 2, READY, CLOCK, 7]);
    let mut dns_tcp = tcp(0x00, 0x00, 2, 0);
    dns_tcp.extend(tcp(0x00, 0x00, 2, 1));
    dns_tcp.extend([CLOCK, 0]);
    dns_tcp.extend(tcp(0x00, 0x00, 2, 3));
    let mut refused = tcp(0x04, 0x01, 3, 0); // port 10: refused at once
    refused.extend(tcp(0x04, 0x01, 5, 0)); // port 150: refused late
    refused.push(READY);
    refused.extend(tcp(0x04, 0x01, 6, 0)); // port 250: never connects; times out
    refused.extend([CLOCK, 4, CLOCK, 4]);
    refused.extend(tcp(0x04, 0x02, 4, 0)); // unreachable host
    let mut flows = Vec::new();
    for i in 0..8u8 {
        // More UDP flows than the limit, from two guests, then they expire.
        flows.extend([6, (i & 1) << 2, 1, 0, i >> 1, 8]);
    }
    flows.extend([READY, CLOCK, 5, READY]);
    vec![
        seed(
            "datapath",
            "arp-each-network",
            vec![2, 0, 0, 2, 1, 0, 2, 2, 0, 2, 0x0c, 1],
        ),
        seed(
            "datapath",
            "dhcp-dora",
            vec![
                3, 0x00, 0, 2, 7, 3, 0x00, 1, 2, 7, 3, 0x00, 2, 2, 7, CLOCK, 7,
            ],
        ),
        seed(
            "datapath",
            "dhcp-exhaust",
            vec![
                3, 0x00, 0, 0, 1, 3, 0x08, 0, 0, 2, 3, 0x04, 0, 0, 3, 3, 0x0c, 0, 0, 4, 3, 0x00, 1,
                2, 1, 3, 0x08, 1, 3, 2, 3, 0x04, 1, 4, 3, 3, 0x0c, 1, 5, 4, 3, 0x00, 4, 0, 5,
            ],
        ),
        seed(
            "datapath",
            "dns-udp",
            vec![
                4, 0x00, 0, 1, 0, 4, 0x00, 0, 2, 1, 4, 0x04, 0, 3, 5, 4, 0x00, 0x80, 4, 9, 4, 0x02,
                0, 5, 2,
            ],
        ),
        seed(
            "datapath",
            "ping",
            vec![
                5, 0x00, 0, 1, 1, 8, 5, 0x00, 1, 1, 2, 8, 5, 0x00, 0x81, 2, 1, 8, READY, 5, 0x02,
                1, 1, 1, 8, READY,
            ],
        ),
        seed("datapath", "udp-echo-refused", {
            let mut v = vec![
                6, 0x00, 1, 0, 0, 16, 6, 0x00, 0, 3, 1, 4, READY, 6, 0x00, 0x81, 0, 2, 8, READY,
            ];
            v.extend([CLOCK, 5, READY]);
            v
        }),
        seed("datapath", "tcp-handshake", handshake),
        // Op 19, the trunk (n0, n1, n2 as VLANs 10, 11, 12, n3 native): ARP from a station of
        // each network on its own VLAN, a ping, then an unmapped VLAN, a Q-in-Q frame, a frame
        // of n1's station claiming n0's VLAN, a priority-tagged one and a raw one.
        seed("datapath", "trunk-vlans", {
            let mut v = Vec::new();
            for st in 0..4u8 {
                v.extend([19, 0, 0, 0, st, 0]);
            }
            v.extend([19, 0, 3, 0, 0x00, 0, 1, 1, 8, READY]);
            v.extend([
                19, 2, 0, 13, 0x00, 0, 19, 5, 0, 11, 0x01, 0, 19, 6, 0, 0, 0x01, 0,
            ]);
            v.extend([19, 3, 0, 0, 0x03, 0, 19, 4, 0, 10, 0x03, 0]);
            v.extend([
                19, 0x80, 18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 9,
            ]);
            v.extend([0x81, 0x00, 0x00, 0x0b, 0x88, 0xb5]);
            v
        }),
        seed("datapath", "tcp-dns", dns_tcp),
        seed("datapath", "tcp-refused", refused),
        seed("datapath", "flow-limit", flows),
        seed(
            "datapath",
            "ipv6-ndp",
            vec![
                8, 0x00, 0, 8, 0x00, 1, 8, 0x00, 2, 8, 0x02, 0, 5, 0x00, 0x80, 1, 1, 8, 7, 0x00,
                0x80, 4, 0, 0, 4,
            ],
        ),
        seed(
            "datapath",
            "flipped",
            vec![
                9, 1, 20, 0x40, 0x00, 0, 1, 2, 9, 5, 40, 0x08, 0x00, 0, 4, 0, 0, 4, 9, 2, 14, 0xff,
                0x00, 0, 1, 3,
            ],
        ),
        // Attacks (op bit 0x20: the station's addresses spoofed by 4 bytes [macs, ips, other,
        // x]; op 16: hostile frames). Station 0x00 is the victim on n0's port 0, 0x04 the
        // attacker on port 1.
        seed(
            "datapath",
            "attack-arp-claim",
            vec![
                2, 0x00, 0, // the victim's ARP for the gateway
                0x22, 0x10, 0x01, 0x00, 0, 0x04, 0, // ARP: sender MAC/IP the victim's
                0x22, 0x00, 0x01, 0x00, 0, 0x04, 0, // ARP: sender IP the victim's
                0x25, 0x00, 0x01, 0x00, 0, 0x04, 1, 1, 1, 8, // ping from the victim's IP
                5, 0x00, 1, 1, 2, 8, READY, // the victim's ping goes out and comes back
            ],
        ),
        seed(
            "datapath",
            "attack-gateway-mac",
            vec![
                0x22, 0x02, 0x00, 0, 0, 0x04, 0, // ARP from the gateway's MAC
                0x25, 0x02, 0x03, 0, 0, 0x04, 1, 1, 1,
                8, // ping from the gateway's MAC and IP
                5, 0x00, 0, 1, 1, 8, // the victim still reaches the gateway
            ],
        ),
        seed(
            "datapath",
            "attack-dhcp-chaddr",
            vec![
                3, 0x00, 0, 2, 7, 3, 0x00, 1, 2, 7, // the victim's DISCOVER, REQUEST
                0x23, 0x10, 0x00, 0x00, 0, 0x04, 2, 2, 7, // RELEASE with the victim's chaddr
                0x23, 0x10, 0x00, 0x00, 0, 0x04, 1, 2, 7, // REQUEST for it, ditto
                CLOCK, 2,
            ],
        ),
        seed(
            "datapath",
            "attack-rogue-servers",
            vec![
                // RA, DHCP OFFER and ACK, DHCPv6 ADVERTISE, NA for the victim's and the
                // gateway's address, ARP claims of the victim's and the gateway's, a redirect;
                // after the victim used its addresses (ARP, NS).
                2, 0x00, 0, 8, 0x00, 1, 16, 0x04, 0, 0, 16, 0x04, 1, 0, 16, 0x04, 0x43, 0, 16, 0x04,
                2, 0, 16, 0x04, 3, 0, 16, 0x04, 0x81, 0, 16, 0x04, 4, 0, 16, 0x04, 0x46, 0, 16,
                0x04, 5, 0, CLOCK, 3,
            ],
        ),
        seed("datapath", "attack-ipv6-churn", {
            // 24 fresh IPv6 sources from one port (past its cap of 16), then IPv4 ones.
            let mut v = Vec::new();
            for x in 0..24u8 {
                v.extend([0x26, 0x00, 0x20, 0, x, 0x04, 0x81, 0, 0, 8]);
            }
            for x in 0..8u8 {
                v.extend([0x26, 0x00, 0x02, 0, 20 + x, 0x04, 1, 0, 0, 8]);
            }
            v.extend([READY, CLOCK, 5]);
            v
        }),
        seed("datapath", "nat-loopback-spellings", {
            // Every destination, UDP (to port 7), TCP and ping, from n0 (host loopback on), n1
            // and n3 (off), over IPv4 and IPv6.
            let mut v = Vec::new();
            for st in [0x00u8, 0x01, 0x03] {
                for d in 0..16u8 {
                    v.extend([6, st, d, 0, 0, 4]);
                    v.extend(tcp(st, d, 4, 0));
                    v.extend([5, st, d, 1, 1, 4]);
                    if st != 0x01 {
                        v.extend([6, st, 0x80 | d, 0, 0, 4]);
                        v.extend(tcp(st, 0x80 | d, 4, 0));
                        v.extend([5, st, 0x80 | d, 1, 1, 4]);
                    }
                }
            }
            v.push(READY);
            v
        }),
        seed(
            "datapath",
            "forwards",
            vec![
                2, 0x00, 0, 2, 0x08, 0, 2, 0x04,
                0, // stations 10, 11, 12 known to the gateway
                17, 0, 0, 0, 8, 17, 0, 1, 1, 8, 17, 0, 2, 2, 8, // TCP forwards from 3 clients
                18, 0, 3, 16, 18, 0, 0, 16, // UDP forward datagrams
                17, 0, 1, 0, 0, 17, 0, 1, 2, 0, // v4 and v6 loopback clients, same port
                READY, CLOCK, 2, READY,
            ],
        ),
        seed("datapath", "raw", {
            let mut v = vec![0, 0x00, 14];
            v.extend([0xff; 6]);
            v.extend([2, 0, 0, 0, 0, 9]);
            v.extend([0x88, 0xb5]);
            v.extend([0, 0x01, 3, 1, 2, 3, 14, CLOCK, 6]);
            v
        }),
    ]
}

// ---- stream_framing ----

fn stream_framing() -> Vec<Seed> {
    let rec = |n: usize| {
        let mut v = (n as u32).to_be_bytes().to_vec();
        v.extend(std::iter::repeat_n(0xa5, n));
        v
    };
    // Two 60-byte records split at odd points.
    let mut two = rec(60);
    two.extend(rec(60));
    let mut split = vec![1];
    for c in two.chunks(7) {
        split.push(c.len() as u8);
        split.extend(c);
    }
    let mut oversize = vec![0, 4];
    oversize.extend(65u32.to_be_bytes());
    oversize.extend([3, 1, 2, 3]);
    vec![
        seed("stream_framing", "split-records", split),
        seed(
            "stream_framing",
            "encoded",
            vec![1, 3, 1, 2, 3, 3, 4, 5, 6, 3, 7, 8, 9],
        ),
        seed("stream_framing", "oversize", oversize),
        seed(
            "stream_framing",
            "empty-record",
            vec![2, 4, 0, 0, 0, 0, 2, 0, 0],
        ),
        seed("stream_framing", "big-repeat", {
            let mut v = vec![3, 255, 40];
            v.extend(std::iter::repeat_n(0, 254));
            v
        }),
    ]
}

// ---- vxlan_decap ----

fn vxlan_decap() -> Vec<Seed> {
    const VNI: [u8; 3] = [0, 0, 42];
    // VNI 42, then a datagram: the VXLAN header and an inner frame.
    let dgram = |flags: [u8; 4], vni: [u8; 3], inner: &[u8]| {
        let mut v = VNI.to_vec();
        v.extend(flags);
        v.extend(vni);
        v.push(0);
        v.extend(inner);
        v
    };
    let mut udp = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        .udp(40000, 53)
        .write(&mut udp, b"payload")
        .expect("udp frame");
    let mut tagged = udp[..12].to_vec();
    tagged.extend([0x81, 0x00, 0x00, 0x0a]);
    tagged.extend(&udp[12..]);
    vec![
        seed(
            "vxlan_decap",
            "udp-in-vni42",
            dgram([8, 0, 0, 0], VNI, &udp),
        ),
        seed(
            "vxlan_decap",
            "tagged-inner",
            dgram([8, 0, 0, 0], VNI, &tagged),
        ),
        seed(
            "vxlan_decap",
            "wrong-vni",
            dgram([8, 0, 0, 0], [0, 0, 43], &udp),
        ),
        seed(
            "vxlan_decap",
            "gbp-flags",
            dgram([0x88, 0, 0, 0], VNI, &udp),
        ),
        seed(
            "vxlan_decap",
            "runt-inner",
            dgram([8, 0, 0, 0], VNI, &udp[..10]),
        ),
        seed(
            "vxlan_decap",
            "header-only",
            VNI.iter().copied().chain([8, 0, 0]).collect(),
        ),
    ]
}
