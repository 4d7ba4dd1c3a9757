//! `usernet bridge`: an ad-hoc L2 switch, no gateway.

use anyhow::Context;
use usernet::control::api::fdb_config;
use usernet::{Engine, EngineConfig, PortSpec, control};

use crate::SocketArg;

/// Arguments of `usernet bridge`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// TAP device to switch (created if missing, brought up). Repeatable.
    #[arg(long = "tap", value_name = "NAME")]
    taps: Vec<String>,
    /// Existing interface to attach with AF_PACKET (veth, NIC). Repeatable.
    #[arg(long = "packet", value_name = "IFNAME")]
    packets: Vec<String>,
    /// Name of the network the ports join.
    #[arg(long, default_value = "bridge")]
    network: String,
    /// Event-loop threads.
    #[arg(long, default_value_t = 1)]
    loops: usize,
    /// FDB aging in seconds (0 = never).
    #[arg(long, default_value_t = 300)]
    fdb_aging: u64,
    /// Largest MTU switched (jumbo frames: up to 65535); TAPs usernet creates get it too.
    #[arg(long, default_value_t = 1500, value_parser = clap::value_parser!(u32).range(68..=65535))]
    mtu: u32,
    #[command(flatten)]
    socket: SocketArg,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    if a.taps.is_empty() && a.packets.is_empty() {
        anyhow::bail!("nothing to switch: give at least one --tap NAME or --packet IFNAME");
    }
    let sock = a.socket.path()?;
    let mut cfg = EngineConfig::default();
    cfg.loops = a.loops.clamp(1, 64);
    // Ethernet header and two VLAN tags on top of the MTU, as `[engine] mtu` does.
    cfg.max_frame = a.mtu as usize + 14 + 8;
    let engine = Engine::start(cfg).context("starting event loops")?;
    let h = engine.handle();
    h.add_network(&a.network, fdb_config(None, Some(a.fdb_aging)))?;
    for t in &a.taps {
        let mut s = PortSpec::new(&a.network, t);
        s.tap = Some(t.clone());
        s.mtu = (a.mtu != 1500).then_some(a.mtu);
        h.open_port(&s)?;
    }
    for p in &a.packets {
        let mut s = PortSpec::new(&a.network, p);
        s.packet = Some(p.clone());
        h.open_port(&s)?;
    }
    let _srv = control::server::serve(h.clone(), &sock)?;
    crate::stop_on_signals(h)?;
    tracing::info!(
        "switching {} port(s) on network {}; control socket {}",
        a.taps.len() + a.packets.len(),
        a.network,
        sock.display()
    );
    engine.wait();
    Ok(())
}
