//! Embedding usernet: an engine, a network with a gateway, and an in-memory port driven by our
//! own code (as a VMM with its own virtio queue, or a unikernel, would). The "guest" asks the
//! gateway for its MAC with ARP and pings it, and we print what came back and the counters.
//!
//! Runs without root: `cargo run --example embed`.

use std::net::Ipv4Addr;
use std::time::Duration;

use etherparse::{
    ArpEthIpv4Packet, ArpOperation, ArpPacket, Icmpv4Slice, Icmpv4Type, PacketBuilder,
};
use usernet::bridge::PortPolicy;
use usernet::gateway::GatewayConfig;
use usernet::gateway::dns::Upstreams;
use usernet::link::memory::MemoryLink;
use usernet::wire::{L2Header, Mac};
use usernet::{Engine, EngineConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let engine = Engine::start(EngineConfig::default())?;
    let h = engine.handle();
    h.add_network("net0", Default::default())?;
    let mut gw = GatewayConfig::new("net0", "10.88.0.0/24".parse()?);
    gw.upstreams = Upstreams::Explicit(vec![]); // no DNS upstreams: nothing leaves this process
    h.add_gateway(gw)?;

    // Our guest: one end of a memory link is the port, the other end is ours.
    let (port_end, guest) = MemoryLink::pair(256, 1518)?;
    h.add_port("net0", "guest", PortPolicy::default(), Box::new(port_end))?;
    let me = Mac([0x02, 0, 0, 0, 0, 0x42]);
    let my_ip = Ipv4Addr::new(10, 88, 0, 42);
    let gw_ip = Ipv4Addr::new(10, 88, 0, 1);

    // ARP: who has 10.88.0.1?
    let arp =
        PacketBuilder::ethernet2(me.0, Mac::BROADCAST.0).arp(ArpPacket::from(ArpEthIpv4Packet {
            operation: ArpOperation::REQUEST,
            sender_mac: me.0,
            sender_ipv4: my_ip.octets(),
            target_mac: [0; 6],
            target_ipv4: gw_ip.octets(),
        }));
    let mut frame = Vec::new();
    arp.write(&mut frame)?;
    guest.send_bytes(&frame);
    let gw_mac = loop {
        let f = guest
            .recv_timeout(Duration::from_secs(2))
            .ok_or("no ARP reply")?;
        let h = L2Header::parse(f.data())?;
        if h.ethertype == 0x0806 {
            let a = ArpPacket::from_slice(&f.data()[h.header_len..])?.try_eth_ipv4()?;
            if a.operation == ArpOperation::REPLY {
                break Mac(a.sender_mac);
            }
        }
    };
    println!("gateway {gw_ip} is at {gw_mac}");

    // ICMP echo to the gateway.
    let ping = PacketBuilder::ethernet2(me.0, gw_mac.0)
        .ipv4(my_ip.octets(), gw_ip.octets(), 64)
        .icmpv4_echo_request(7, 1);
    let mut frame = Vec::new();
    ping.write(&mut frame, b"hello gateway")?;
    guest.send_bytes(&frame);
    loop {
        let f = guest
            .recv_timeout(Duration::from_secs(2))
            .ok_or("no echo reply")?;
        let h = L2Header::parse(f.data())?;
        if h.ethertype != 0x0800 {
            continue;
        }
        let ip = etherparse::Ipv4Slice::from_slice(&f.data()[h.header_len..])?;
        let icmp = Icmpv4Slice::from_slice(ip.payload().payload)?;
        if let Icmpv4Type::EchoReply(e) = icmp.icmp_type() {
            println!(
                "echo reply from {} id {} seq {}: {:?}",
                ip.header().source_addr(),
                e.id,
                e.seq,
                String::from_utf8_lossy(icmp.payload())
            );
            break;
        }
    }
    for row in h.stats() {
        println!(
            "{:8} rx {:3} tx {:3}",
            row.port, row.stats.rx_frames, row.stats.tx_frames
        );
    }
    engine.shutdown();
    Ok(())
}
