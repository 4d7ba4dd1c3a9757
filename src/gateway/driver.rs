//! The [`Driver`]'s life and its I/O: built by [`super::start`] or [`super::standalone`], fed
//! frames ([`Driver::frame_with`] dispatches by EtherType to [`super::ipv4`] and
//! [`super::ipv6`]), host readiness and ticks, and the frames it sends, with their offload
//! state.

use super::*;

impl Driver {
    /// Checks NAT egress and port forwards against `table`'s policies of network `net` (and
    /// of the guests' ports: a forward's target port is the one owning its address in the
    /// network's guard). See [`crate::policy`].
    pub fn set_policy(&mut self, table: Arc<crate::policy::Table>, net: crate::bridge::NetworkId) {
        let guard = self.guard.clone();
        let hook: crate::nat::PolicyHook = Arc::new(move |way, pkt, bytes| {
            if !table.active() {
                return true;
            }
            let way = match way {
                crate::policy::Way::In { port: None } => crate::policy::Way::In {
                    port: guard.ip_owner(pkt.dst).map(|p| p.0),
                },
                w => w,
            };
            table.load().check(net.0, way, pkt, bytes).is_ok()
        });
        if let Some(nat) = self.nat.as_mut() {
            nat.set_policy(hook);
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        gw: Arc<Gateway>,
        names_of: PortNames,
        guard: Arc<NetGuard>,
        waker: Arc<Waker>,
        registry: mio::Registry,
        cmds: Receiver<Cmd>,
        host: Arc<dyn HostSockets>,
        epoch: Instant,
    ) -> Self {
        let mut addrs = vec![smoltcp::wire::IpCidr::new(
            smoltcp::wire::IpAddress::Ipv4(gw.cfg.addr),
            gw.cfg.subnet.prefix_len(),
        )];
        if let Some(d) = gw.cfg.dns_addr {
            addrs.push(smoltcp::wire::IpCidr::new(
                smoltcp::wire::IpAddress::Ipv4(d),
                gw.cfg.subnet.prefix_len(),
            ));
        }
        if let (Some(a), Some(p)) = (gw.cfg.addr6(), gw.cfg.ipv6) {
            addrs.push(smoltcp::wire::IpCidr::new(
                smoltcp::wire::IpAddress::Ipv6(a),
                p.prefix_len(),
            ));
            addrs.push(smoltcp::wire::IpCidr::new(
                smoltcp::wire::IpAddress::Ipv6(gw.cfg.link_local()),
                64,
            ));
            if let Some(d) = gw.cfg.dns6() {
                addrs.push(smoltcp::wire::IpCidr::new(
                    smoltcp::wire::IpAddress::Ipv6(d),
                    p.prefix_len(),
                ));
            }
        }
        let tcp = dns_tcp::TcpDns::new(&addrs, usize::from(gw.cfg.mtu), epoch);
        let nat = gw.cfg.nat_config().map(|n| {
            Nat::new(
                n,
                gw.nat_counters.clone(),
                &addrs,
                usize::from(gw.cfg.mtu),
                host,
                epoch,
            )
        });
        let (out_tx, out_rx) = crossbeam_channel::unbounded();
        let max_frame = usize::from(gw.cfg.mtu) + 22;
        let pool = crate::frame::FramePool::with_gso(max_frame, OUT_FREE, OUT_GSO_BUFFERS);
        let mut nat = nat;
        if let Some(n) = nat.as_mut() {
            // NAT's segments are built in the frames the gateway sends (see `send_nat_frame`).
            n.set_pool(pool.clone());
            n.set_service_ips(gw.vips.clone());
        }
        Driver {
            max_frame,
            pool,
            rx_vnet: VnetHdr::default(),
            gw,
            names_of,
            guard,
            ingress: 0,
            waker,
            out_tx,
            out_rx,
            neigh: HashMap::new(),
            neigh_of: HashMap::new(),
            unresolved: HashMap::new(),
            guard_gen: 0,
            now: epoch,
            names: HashMap::new(),
            port_names: HashMap::new(),
            reserved: HashMap::new(),
            leased: HashMap::new(),
            unnamed: std::collections::HashSet::new(),
            gone: std::collections::VecDeque::new(),
            tcp,
            tx: Vec::new(),
            next_ra: epoch,
            ra_burst: 3,
            next_expire: epoch + Duration::from_secs(1),
            registry,
            nat,
            cmds,
        }
    }

    /// The gateway it drives.
    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gw
    }

    /// Announces the gateway (a gratuitous ARP); done once, when it joins the network.
    pub fn announce(&mut self) {
        self.send(arp::gratuitous(self.gw.cfg.mac, self.gw.cfg.addr));
    }

    /// How long after `now` the next [`Driver::tick`] is due (timers, TCP retransmissions).
    pub fn timeout(&mut self, now: Instant) -> Duration {
        let mut t = self
            .next_expire
            .min(self.next_ra)
            .saturating_duration_since(now);
        if let Some(d) = self.tcp.poll_delay(now) {
            t = t.min(d);
        }
        if let Some(d) = self.nat.as_mut().and_then(|n| n.poll_delay(now)) {
            t = t.min(d);
        }
        if let Some(next) = self.next_solicit() {
            t = t.min(next.saturating_duration_since(now));
        }
        t
    }

    /// A NAT host socket registered under `token` is ready.
    pub fn host_ready(&mut self, token: Token, now: Instant) {
        self.now = now;
        self.recheck_owners();
        let Some(nat) = self.nat.as_mut() else {
            return;
        };
        let (records, domain) = (&self.gw.records, &self.gw.cfg.domain);
        let resolve = |name: &str| lookup(records, domain, name);
        let mut out = Vec::new();
        nat.ready(&self.registry, token, &resolve, &mut out, now);
        for p in out {
            self.send_nat_ip(&p);
        }
    }

    /// Runs the control API's pending commands (port forwards).
    pub(super) fn commands(&mut self) {
        while let Ok(c) = self.cmds.try_recv() {
            match (c, self.nat.as_mut()) {
                (Cmd::AddForward { id, bound, reply }, Some(nat)) => {
                    let _ = reply.send(nat.add_forward(&self.registry, id, bound));
                }
                (Cmd::AddForward { reply, .. }, None) => {
                    let _ = reply.send(Err(std::io::Error::other("internal network: no NAT")));
                }
                (Cmd::RemoveForward { id, reply }, Some(nat)) => {
                    let _ = reply.send(nat.remove_forward(&self.registry, id));
                }
                (Cmd::RemoveForward { reply, .. }, None) => {
                    let _ = reply.send(false);
                }
                (Cmd::Endpoint { ep, reply }, _) => {
                    self.endpoint(ep);
                    let _ = reply.send(());
                }
            }
        }
    }

    /// Everything not triggered by a frame: DNS answers that came back, the TCP state machines
    /// (DNS over TCP, NAT), and, when due, NAT and DHCP expiry and router advertisements.
    pub fn tick(&mut self, now: Instant) {
        while self
            .gone
            .front()
            .is_some_and(|g| now.saturating_duration_since(g.1) > GONE_FOR)
        {
            self.gone.pop_front();
        }
        self.now = now;
        self.recheck_owners();
        self.resolve_timers(now);
        for id in self.guard.take_removed() {
            self.forget_port(id.0, now);
        }
        while let Ok(o) = self.out_rx.try_recv() {
            match o {
                Out::Udp {
                    mac,
                    src,
                    dst,
                    payload,
                } => self.send_udp(mac, src, dst, &payload),
                Out::Tcp { conn, payload } => self.tcp.answer(conn, &payload, now),
            }
        }
        self.poll_tcp(now);
        let mut out = Vec::new();
        let mut segments = Vec::new();
        if let Some(nat) = self.nat.as_mut() {
            let (records, domain) = (&self.gw.records, &self.gw.cfg.domain);
            nat.health(&self.registry, now, &|name| lookup(records, domain, name));
            nat.poll(&self.registry, &mut segments, now);
        }
        for f in segments {
            self.send_nat_frame(f);
        }
        if now >= self.next_expire {
            self.next_expire = now + Duration::from_secs(1);
            if let Some(nat) = self.nat.as_mut() {
                nat.expire(&self.registry, &mut out, now);
            }
            if let Some(d) = &self.gw.dhcp {
                let events = d.lock().expire(self.gw.ms_at(now));
                self.names_from(events);
                self.sync_lease_claims(now);
            }
        }
        for p in &out {
            self.send_nat_ip(p);
        }
        if now >= self.next_ra {
            self.router_advert(ndp::ALL_NODES, ndp::multicast_mac(ndp::ALL_NODES));
            // A few quick ones at start (RFC 4861 §6.2.4), then periodic.
            self.next_ra = now
                + if self.ra_burst > 0 {
                    self.ra_burst -= 1;
                    Duration::from_secs(4)
                } else {
                    RA_EVERY
                };
        }
    }

    /// The frames the gateway sent since the last call, oldest first.
    pub fn take_frames(&mut self) -> Vec<Vec<u8>> {
        self.tx.drain(..).map(|f| f.data().to_vec()).collect()
    }

    /// Like [`Self::take_frames`], with each frame's offload state: NAT's TCP segments leave
    /// their checksum to the last hop and may be 64 KiB GSO frames
    /// ([`crate::offload::adapt`] finishes them for links that need it).
    pub fn take_output(&mut self) -> Vec<Frame> {
        std::mem::take(&mut self.tx)
    }

    /// NAT's open flows (`None` on an internal network).
    pub fn nat_flows(&self) -> Option<crate::nat::FlowCounts> {
        self.nat.as_ref().map(Nat::counts)
    }

    /// Addresses in the gateway's neighbour table (bounded by an internal cap).
    pub fn neighbours(&self) -> usize {
        self.neigh.len()
    }

    /// The neighbour table: each address, its MAC and the port it was learned from.
    pub fn neighbour_entries(&self) -> Vec<(IpAddr, Mac, PortId)> {
        self.neigh
            .iter()
            .map(|(ip, (mac, port))| (*ip, *mac, PortId(*port)))
            .collect()
    }

    /// Adds a port forward on this driver's thread directly (a standalone driver has no
    /// thread for [`Gateway::add_forward`]'s command to reach).
    pub fn add_forward(
        &mut self,
        id: u64,
        bound: crate::nat::forward_rt::Bound,
    ) -> std::io::Result<()> {
        match self.nat.as_mut() {
            Some(nat) => nat.add_forward(&self.registry, id, bound),
            None => Err(std::io::Error::other("internal network: no NAT")),
        }
    }

    /// Open DNS-over-TCP connections.
    pub fn dns_tcp_connections(&self) -> usize {
        self.tcp.connections()
    }

    pub(super) fn send(&mut self, frame: Vec<u8>) {
        self.queue(Frame::from_slice(&frame));
    }

    /// Queues a frame with its offload state in `meta.vnet` (a GSO frame may exceed the MTU).
    pub(super) fn queue(&mut self, frame: Frame) {
        let fits = frame.len() <= self.max_frame
            || (frame.meta.vnet.gso_type != 0 && frame.len() <= crate::frame::GSO_MAX_FRAME);
        if fits && self.tx.len() < MAX_PENDING_FRAMES {
            self.tx.push(frame);
        }
    }

    /// One frame from the network (whatever the bridge delivered to the gateway's port), from
    /// no known port.
    pub fn frame(&mut self, data: &[u8], now: Instant) {
        self.frame_with(data, FrameMeta::default(), now);
    }

    /// One frame with the offload state its link gave it: a frame whose checksum is pending
    /// (`NEEDS_CSUM`) or was checked by the kernel (`DATA_VALID`) is trusted as it is, and TCP
    /// frames may be 64 KiB GSO frames (NAT's TCP takes them whole). Any other TCP segment's
    /// checksum is verified here. `meta.ingress` is the port it came in on: what the gateway
    /// learns from the frame (neighbour entry, DNS name, DHCP lease) belongs to that port.
    pub fn frame_with(&mut self, data: &[u8], meta: FrameMeta, now: Instant) {
        self.rx_vnet = meta.vnet;
        self.ingress = meta.ingress;
        self.now = now;
        self.recheck_owners();
        inc(&self.gw.counters.frames);
        if !self.gone.is_empty() && self.gone.iter().any(|g| g.0 == meta.ingress) {
            // Sent by a port that is gone since.
            inc(&self.gw.counters.ignored);
            return;
        }
        let Ok(h) = L2Header::parse(data) else {
            inc(&self.gw.counters.malformed);
            return;
        };
        if h.dst != self.gw.cfg.mac && !h.dst.is_multicast()
            || h.vlan != 0
            || h.src == self.gw.cfg.mac
        {
            inc(&self.gw.counters.ignored);
            return;
        }
        let payload = &data[h.header_len..];
        let ok = match h.ethertype {
            0x0806 => self.arp(payload),
            0x0800 => self.ipv4(&h, payload, now),
            0x86dd => self.ipv6(&h, payload, now),
            _ => {
                inc(&self.gw.counters.ignored);
                true
            }
        };
        if !ok {
            inc(&self.gw.counters.malformed);
        }
    }

    pub(super) fn poll_tcp(&mut self, now: Instant) {
        let tx = self.out_tx.clone();
        let waker = self.waker.clone();
        let dns = &self.gw.dns;
        let counters = &self.gw.counters;
        let packets = self.tcp.poll(now, |conn, msg| {
            inc(&counters.dns_tcp);
            let reply = TcpReply(Some((tx.clone(), waker.clone(), conn)));
            dns.handle(
                &msg,
                Transport::Tcp,
                Box::new(move |payload| reply.send(payload)),
            );
        });
        for p in packets {
            self.send_ip(&p);
        }
    }

    /// True when the TCP segment `body` of IP packet `packet` may go on: its checksum is right,
    /// or its link vouched for it (pending or kernel-checked checksum).
    pub(super) fn tcp_checksum_ok(&self, packet: &[u8], body: &[u8]) -> bool {
        const DATA_VALID: u8 = 2;
        self.rx_vnet.flags & (VnetHdr::F_NEEDS_CSUM | DATA_VALID) != 0
            || crate::offload::l4_checksum_ok(packet, body, 6)
    }

    /// Sends an IP packet from NAT. TCP segments leave their checksum to the last hop, and
    /// smoltcp's large segments (NAT's device MTU is 64 KiB) go out as GSO frames cut at the
    /// flow's MSS, by the guest's kernel or by [`crate::offload::adapt`].
    pub(super) fn send_nat_ip(&mut self, packet: &[u8]) {
        if let Some(f) = self.eth_frame(packet, Via::Nat) {
            self.finish_nat(f);
        }
    }

    /// Sends a packet of NAT's TCP ([`Nat::poll`]): it sits [`crate::nat::ETH_FRONT`] bytes
    /// into `f`, which becomes the Ethernet frame in place (no copy of the segment).
    pub(super) fn send_nat_frame(&mut self, mut f: Frame) {
        const FRONT: usize = crate::nat::ETH_FRONT;
        let Some((dst, ethertype)) = f.data().get(FRONT..).and_then(ip_destination) else {
            return;
        };
        let Some(&(mac, _)) = self.neigh.get(&dst) else {
            self.hold(dst, &f.data()[FRONT..], Via::Nat);
            return;
        };
        f.data_mut()[..FRONT].copy_from_slice(&self.eth_header(mac, ethertype));
        self.finish_nat(f);
    }

    /// Queues `f`, an Ethernet frame of NAT's, with its TCP segment's offload state (a partial
    /// checksum; a GSO frame cut at the flow's MSS when it exceeds the MTU).
    fn finish_nat(&mut self, mut f: Frame) {
        let Some(l4) = crate::offload::transport(&f.data()[14..])
            .filter(|t| t.proto == 6)
            .map(|t| t.l4)
        else {
            return self.queue(f);
        };
        let mtu = usize::from(self.gw.cfg.mtu);
        let gso_size = self
            .nat
            .as_ref()
            .and_then(|n| n.tcp_gso_size(&f.data()[14..]))
            .unwrap_or_else(|| mtu.saturating_sub(l4 + 20).max(1) as u16);
        let vnet = crate::offload::tcp_partial(&mut f.data_mut()[14..], l4, 14, mtu, gso_size);
        f.meta.vnet = vnet.unwrap_or_default();
        self.queue(f);
    }

    /// Wraps an IP packet from smoltcp in Ethernet towards its destination's MAC.
    pub(super) fn send_ip(&mut self, packet: &[u8]) {
        if let Some(f) = self.eth_frame(packet, Via::Plain) {
            self.queue(f);
        }
    }

    /// The Ethernet header from the gateway to `mac`.
    fn eth_header(&self, mac: Mac, ethertype: u16) -> [u8; 14] {
        let mut eth = [0u8; 14];
        eth[..6].copy_from_slice(&mac.0);
        eth[6..12].copy_from_slice(&self.gw.cfg.mac.0);
        eth[12..14].copy_from_slice(&ethertype.to_be_bytes());
        eth
    }

    /// `packet` in an Ethernet frame to its destination's MAC (`None` if malformed, or while the
    /// MAC is resolved: then the packet is held, see [`Self::hold`]):
    /// one copy of the packet, into a buffer from the driver's pool (reused: a 64 KiB segment
    /// costs no allocation and no fresh pages), or from the heap when the pool's GSO buffers
    /// are all in flight.
    pub(super) fn eth_frame(&mut self, packet: &[u8], via: Via) -> Option<Frame> {
        let (dst, ethertype) = ip_destination(packet)?;
        let Some(&(mac, _)) = self.neigh.get(&dst) else {
            self.hold(dst, packet, via);
            return None;
        };
        let eth = self.eth_header(mac, ethertype);
        Some(
            self.pool
                .frame_from_parts(&eth, packet)
                .unwrap_or_else(|| Frame::from_parts(&eth, packet)),
        )
    }
}

/// An IP packet's destination and its EtherType (`None` if it is neither IPv4 nor IPv6, or
/// malformed).
fn ip_destination(packet: &[u8]) -> Option<(IpAddr, u16)> {
    match packet.first().map(|b| b >> 4) {
        Some(4) => Some((
            IpAddr::V4(
                Ipv4Slice::from_slice(packet)
                    .ok()?
                    .header()
                    .destination_addr(),
            ),
            0x0800,
        )),
        Some(6) => Some((
            IpAddr::V6(
                Ipv6Slice::from_slice(packet)
                    .ok()?
                    .header()
                    .destination_addr(),
            ),
            0x86dd,
        )),
        _ => None,
    }
}

/// A port forward target's addresses: `name` (relative to `domain`, or already under it) in
/// the network's records.
fn lookup(records: &Records, domain: &str, name: &str) -> Vec<IpAddr> {
    let fqdn = if name.ends_with(&format!(".{domain}")) {
        name.to_string()
    } else {
        format!("{name}.{domain}")
    };
    records.lookup(&fqdn)
}
