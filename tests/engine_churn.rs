//! Churn leaves nothing behind: a removed port keeps no FDB entry, neighbour entry, DNS name
//! or NAT flow, even when its last frames race with its removal. In-process (memory links, a
//! standalone gateway), deterministic, no root.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, TcpListener, UdpSocket};

use std::os::fd::RawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dhcproto::v4::{DhcpOption, Message as DhcpMessage, MessageType as DhcpType};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};
use usernet::bridge::security::{NetGuard, PortOwned};
use usernet::bridge::{FdbConfig, PortId, PortPolicy};
use usernet::frame::{Frame, FrameMeta, FramePool};
use usernet::gateway::dns::Upstreams;
use usernet::gateway::{self, Driver, GatewayConfig};

use usernet::link::memory::MemoryLink;
use usernet::link::{Link, LinkCaps, LinkError, RecvStats, SendStats};
use usernet::nat::host::OsSockets;

use usernet::wire::Mac;
use usernet::{Engine, EngineConfig, Handle};

const MAX_FRAME: usize = 1522;
const LIMIT: Duration = Duration::from_secs(5);

fn mac(n: u8) -> Mac {
    Mac([0x02, 0, 0, 0, 0x77, n])
}

fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    cond()
}

/// A memory link that, once it has read a frame, holds it until its port is gone from the
/// bridge, then hands it over: exactly the frame "read between the FDB flush and the detach".
struct RacyLink {
    inner: MemoryLink,
    h: Handle,
    name: String,
    /// Set while it holds a frame and waits for the removal.
    holding: Arc<AtomicBool>,
}

impl Link for RacyLink {
    fn kind(&self) -> &'static str {
        "memory"
    }
    fn as_raw_fd(&self) -> RawFd {
        self.inner.as_raw_fd()
    }
    fn caps(&self) -> LinkCaps {
        self.inner.caps()
    }
    fn recv_batch(
        &mut self,
        pool: &FramePool,
        out: &mut Vec<Frame>,
        max: usize,
    ) -> Result<RecvStats, LinkError> {
        let st = self.inner.recv_batch(pool, out, max)?;
        if st.frames > 0 {
            self.holding.store(true, Ordering::Release);
            let gone = wait_until(LIMIT, || {
                self.h
                    .bridge()
                    .topology()
                    .port_by_name(&self.name)
                    .is_none()
            });
            assert!(gone, "{}: the port was never removed", self.name);
        }
        Ok(st)
    }
    fn send_batch(&mut self, queue: &mut VecDeque<Frame>) -> Result<SendStats, LinkError> {
        self.inner.send_batch(queue)
    }
}

/// A frame from `src` to the broadcast address (an experimental EtherType).
fn frame_from(src: Mac) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend(src.0);
    f.extend([0x88, 0xb5]);
    f.resize(60, 0);
    f
}

#[test]
fn a_frame_read_while_its_port_is_removed_leaves_no_fdb_entry() {
    let engine = Engine::start(EngineConfig::default()).expect("engine");
    let h = engine.handle();
    h.add_network("n", FdbConfig::default()).expect("network");
    // A second port so the network is not empty (the frame has somewhere to go).
    let (other, _other_peer) = MemoryLink::pair(64, MAX_FRAME).expect("pair");
    h.add_port("n", "stay", PortPolicy::default(), Box::new(other))
        .expect("port");
    for round in 0..5u8 {
        let name = format!("c{round}");
        let (end, peer) = MemoryLink::pair(64, MAX_FRAME).expect("pair");
        let holding = Arc::new(AtomicBool::new(false));
        let link = RacyLink {
            inner: end,
            h: h.clone(),
            name: name.clone(),
            holding: holding.clone(),
        };
        let id = h
            .add_port("n", &name, PortPolicy::default(), Box::new(link))
            .expect("port");
        assert!(peer.send_bytes(&frame_from(mac(round))));
        assert!(
            wait_until(LIMIT, || holding.load(Ordering::Acquire)),
            "the loop never read the frame"
        );
        h.remove_port(&name).expect("remove");
        let rows = h.fdb(Some("n")).expect("fdb");
        let stale: Vec<_> = rows
            .iter()
            .filter(|r| r.mac == mac(round) || r.port == format!("#{}", id.0))
            .collect();
        assert!(
            stale.is_empty(),
            "round {round}: FDB keeps entries of removed port {name} ({id:?}): {stale:?}"
        );
        drop(peer);
    }
}

const GW_IP: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 1);

/// An ARP request for the gateway from `mac` at `ip`.
fn arp_request(mac: Mac, ip: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend([0xff; 6]);
    f.extend(mac.0);
    f.extend([0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f.extend(mac.0);
    f.extend(ip.octets());
    f.extend([0; 6]);
    f.extend(GW_IP.octets());
    f
}

fn udp_to_gw(gw: Mac, mac: Mac, ip: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(mac.0, gw.0)
        .ipv4(ip.octets(), GW_IP.octets(), 64)
        .udp(sport, dport);
    let mut f = Vec::new();
    b.write(&mut f, b"hello").expect("udp frame");
    f
}

fn syn_to_gw(gw: Mac, mac: Mac, ip: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(mac.0, gw.0)
        .ipv4(ip.octets(), GW_IP.octets(), 64)
        .tcp(sport, dport, 1000, 64240)
        .syn();
    let mut f = Vec::new();
    b.write(&mut f, &[]).expect("syn frame");
    f
}

fn feed(d: &mut Driver, port: u32, frame: &[u8], now: Instant) {
    d.frame_with(
        frame,
        FrameMeta {
            ingress: port,
            ..FrameMeta::default()
        },
        now,
    );
}

/// The gateway forgets a removed port: its neighbour entry, its DNS name and its NAT flows
/// (TCP, UDP) go when it learns of the removal, and frames the port sent just before (still
/// in flight) do not bring any of them back. The other port keeps its own.
#[test]
fn the_gateway_forgets_a_removed_port_and_its_late_frames() {
    let sink = UdpSocket::bind("127.0.0.1:0").expect("udp sink");
    let uport = sink.local_addr().expect("addr").port();
    let listener = TcpListener::bind("127.0.0.1:0").expect("tcp listener");
    let tport = listener.local_addr().expect("addr").port();

    let mut cfg = GatewayConfig::new("churn", "10.88.0.0/24".parse().expect("subnet"));
    cfg.dhcp = false;
    cfg.upstreams = Upstreams::Explicit(Vec::new());
    cfg.dns_workers = 0;
    let gwmac = cfg.mac;
    let guard = Arc::new(NetGuard::new(true));
    let (gone, stay) = (PortId(7), PortId(8));
    for p in [gone, stay] {
        guard
            .register(p, Arc::new(PortOwned::default()), None, &[], &[])
            .expect("register");
    }
    let alive = Arc::new(AtomicBool::new(true));
    let a = alive.clone();
    let names: gateway::PortNames = Box::new(move |id| match id.0 {
        7 if a.load(Ordering::Relaxed) => Some("c7".to_string()),
        8 => Some("stay".to_string()),
        _ => None,
    });
    let poll = mio::Poll::new().expect("poll");
    let epoch = Instant::now();
    let (gw, mut d) =
        gateway::standalone(cfg, &poll, names, guard.clone(), OsSockets::shared(), epoch)
            .expect("gateway");
    let now = epoch + Duration::from_millis(10);
    let (m7, ip7) = (mac(7), Ipv4Addr::new(10, 88, 0, 7));
    let (m8, ip8) = (mac(8), Ipv4Addr::new(10, 88, 0, 8));
    for (p, m, ip) in [(7, m7, ip7), (8, m8, ip8)] {
        feed(&mut d, p, &arp_request(m, ip), now);
        feed(&mut d, p, &udp_to_gw(gwmac, m, ip, 40000, uport), now);
    }
    feed(&mut d, 7, &syn_to_gw(gwmac, m7, ip7, 40001, tport), now);
    let names_now = |gw: &gateway::Gateway| -> Vec<String> {
        let mut v: Vec<String> = gw
            .records
            .list()
            .into_iter()
            .map(|r| r.name)
            .filter(|n| n != "host.usernet")
            .collect();
        v.sort();
        v
    };
    assert_eq!(d.neighbours(), 2);
    assert_eq!(names_now(&gw), vec!["c7.usernet", "stay.usernet"]);
    let f = d.nat_flows().expect("nat");
    assert_eq!((f.tcp, f.udp), (1, 2), "flows before the removal: {f:?}");

    // The port goes (as the bridge does it), then the gateway's next tick.
    alive.store(false, Ordering::Relaxed);
    guard.unregister(gone);
    let later = now + Duration::from_millis(10);
    d.tick(later);
    assert_eq!(d.neighbours(), 1, "neighbour entry of the removed port");
    assert_eq!(names_now(&gw), vec!["stay.usernet"]);
    let f = d.nat_flows().expect("nat");
    assert_eq!((f.tcp, f.udp), (0, 1), "flows of the removed port: {f:?}");

    // Its last frames, still in flight, bring nothing back.
    feed(&mut d, 7, &arp_request(m7, ip7), later);
    feed(&mut d, 7, &udp_to_gw(gwmac, m7, ip7, 40002, uport), later);
    feed(&mut d, 7, &syn_to_gw(gwmac, m7, ip7, 40003, tport), later);
    d.tick(later);
    assert_eq!(
        d.neighbours(),
        1,
        "a late frame re-created a neighbour entry"
    );
    let f = d.nat_flows().expect("nat");
    assert_eq!(
        (f.tcp, f.udp),
        (0, 1),
        "a late frame re-opened a flow: {f:?}"
    );
    // The other port still works.
    feed(&mut d, 8, &udp_to_gw(gwmac, m8, ip8, 40004, uport), later);
    assert_eq!(d.nat_flows().expect("nat").udp, 2);
    drop(poll);
}

/// A DHCP DISCOVER or REQUEST (for `want`, naming itself `host`) from `mac`.
fn dhcp_frame(mac: Mac, t: DhcpType, want: Option<Ipv4Addr>, host: &str) -> Vec<u8> {
    let z = Ipv4Addr::UNSPECIFIED;
    let mut m = DhcpMessage::new_with_id(7, z, z, z, z, &mac.0);
    m.opts_mut().insert(DhcpOption::MessageType(t));
    if let Some(w) = want {
        m.opts_mut().insert(DhcpOption::RequestedIpAddress(w));
        m.opts_mut().insert(DhcpOption::ServerIdentifier(GW_IP));
    }
    m.opts_mut().insert(DhcpOption::Hostname(host.to_string()));
    let mut payload = Vec::new();
    m.encode(&mut Encoder::new(&mut payload)).expect("encode");
    let mut f = Vec::new();
    PacketBuilder::ethernet2(mac.0, [0xff; 6])
        .ipv4([0; 4], [255; 4], 64)
        .udp(68, 67)
        .write(&mut f, &payload)
        .expect("dhcp frame");
    f
}

/// The `yiaddr` of the first DHCP reply of type `t` among `frames`.
fn dhcp_reply(frames: &[Vec<u8>], t: DhcpType) -> Option<Ipv4Addr> {
    frames.iter().find_map(|f| {
        let p = SlicedPacket::from_ethernet(f).ok()?;
        let Some(TransportSlice::Udp(u)) = p.transport else {
            return None;
        };
        if u.source_port() != 67 {
            return None;
        }
        let m = DhcpMessage::decode(&mut Decoder::new(u.payload())).ok()?;
        (m.opts().msg_type() == Some(t)).then(|| m.yiaddr())
    })
}

/// A lease's DNS name (from the DHCP hostname) leaves with its port; the lease stays, and
/// when its MAC comes back on a new port and renews it, the name is back.
#[test]
fn a_removed_ports_lease_name_leaves_dns_and_returns_with_its_mac() {
    let mut cfg = GatewayConfig::new("churn", "10.88.0.0/24".parse().expect("subnet"));
    cfg.upstreams = Upstreams::Explicit(Vec::new());
    cfg.dns_workers = 0;
    let guard = Arc::new(NetGuard::new(true));
    for p in [9, 10] {
        guard
            .register(PortId(p), Arc::new(PortOwned::default()), None, &[], &[])
            .expect("register");
    }
    let poll = mio::Poll::new().expect("poll");
    let epoch = Instant::now();
    let names: gateway::PortNames = Box::new(|_| None);
    let (gw, mut d) =
        gateway::standalone(cfg, &poll, names, guard.clone(), OsSockets::shared(), epoch)
            .expect("gateway");
    let now = epoch + Duration::from_millis(10);
    let m = mac(9);
    let has_name = |gw: &gateway::Gateway| !gw.records.lookup("h9.usernet").is_empty();
    let _ = d.take_frames();
    feed(
        &mut d,
        9,
        &dhcp_frame(m, DhcpType::Discover, None, "h9"),
        now,
    );
    let offered = dhcp_reply(&d.take_frames(), DhcpType::Offer).expect("an offer");
    feed(
        &mut d,
        9,
        &dhcp_frame(m, DhcpType::Request, Some(offered), "h9"),
        now,
    );
    assert_eq!(dhcp_reply(&d.take_frames(), DhcpType::Ack), Some(offered));
    assert!(has_name(&gw), "the lease's name is in DNS");

    guard.unregister(PortId(9));
    let later = now + Duration::from_millis(10);
    d.tick(later);
    assert!(
        !has_name(&gw),
        "the removed port's lease name stayed in DNS"
    );
    let leases = gw.dhcp.as_ref().expect("dhcp").lock().leases(0);
    assert!(
        leases.iter().any(|l| l.ip == offered),
        "the lease itself is kept"
    );

    // The MAC comes back behind a new port and renews: same address, name back.
    feed(
        &mut d,
        10,
        &dhcp_frame(m, DhcpType::Request, Some(offered), "h9"),
        later,
    );
    assert_eq!(dhcp_reply(&d.take_frames(), DhcpType::Ack), Some(offered));
    assert!(has_name(&gw), "the returning MAC's name is back");
    drop(poll);
}
