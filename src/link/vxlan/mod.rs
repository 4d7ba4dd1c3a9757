//! VXLAN link (RFC 7348): the port's frames travel inside UDP datagrams between this host and
//! its remote VTEPs (other usernet instances, or Linux's `vxlan` driver), one VNI per port.
//!
//! # Theory of operation
//!
//! - **Sockets.** One UDP socket bound to `local:port` (default 4789) receives every datagram
//!   (a batch per `recvmmsg`, with UDP GRO; see `batch.rs`) and is the descriptor the engine
//!   polls. A small pool of sockets bound to `local:0` sends:
//!   each has its own kernel-chosen source port (in the ephemeral range, 32768..61000 by
//!   default, as Linux's vxlan picks its source ports), and a hash of the inner flow (MACs,
//!   addresses, ports) picks one, so the underlay can spread flows (ECMP, RSS) while one flow
//!   keeps its order. A pool socket that would block gives way to the receive socket; if that
//!   blocks too the batch stops with the frame still queued, and the receive socket's
//!   writable edge resumes the engine. Consecutive frames of one flow to one VTEP leave in one
//!   UDP GSO send where the kernel takes it (`batch.rs`), else one datagram per `sendmsg`. Every socket sets `IP_MTU_DISCOVER=IP_PMTUDISC_DO`
//!   (`IPV6_MTU_DISCOVER` over IPv6): no outer fragment ever leaves (RFC 7348 4.3).
//! - **Decapsulation** ([`decap`]): 8-byte header, flags exactly the I bit (0x08), the port's
//!   VNI; the outer source IP must be one of the remotes (any source port, as the kernel varies
//!   it). Everything else is dropped and counted by reason ([`VxlanStats::drops`]); nothing a
//!   sender does is fatal to the port. Inner frames over the inner MTU + 14 (+4 for one VLAN
//!   tag) are dropped too.
//! - **The VTEP table.** Like the kernel's vxlan FDB, the link keeps MAC -> VTEP, learned from
//!   the inner source MAC of each accepted frame and aged with the network's FDB aging time.
//!   On transmit, known unicast goes to its VTEP only; broadcast, multicast and unknown unicast
//!   go to every remote (head-end replication). Split horizon is the bridge's: it never sends a
//!   frame back out the port it came in on, so a frame from one VTEP never reaches another.
//! - **MTU.** Inner MTU = underlay MTU - 50 (IPv4) / 70 (IPv6), the underlay's being the MTU of
//!   the interface holding `local` (1500 if unknown), or `mtu` as given. Larger inner frames are
//!   dropped and counted before sending. [`LinkCaps`] says no transmit offloads, so GSO frames
//!   are segmented by the engine ([`crate::offload::adapt`]) before they get here.
//! - **Gateway stays local** (a multi-host network without a control plane): frames whose
//!   source is this host's gateway MAC never leave (its ARP replies, DHCP offers, RAs); frames
//!   arriving with that MAC as source, and DHCP requests (UDP to port 67) from remote guests,
//!   are dropped: each host's gateway serves its own guests.
//! - **Runtime.** [`VxlanShared`] is what the control plane keeps: remotes can be added and
//!   removed while the link runs (removing one forgets its MACs), and it answers the counters
//!   and the VTEP of a MAC for `ctl fdb`.

mod batch;
mod table;
mod wire;

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use batch::{GsoRun, RxBatch, Sock};
use rustix::net::{SendAncillaryBuffer, SendFlags};

use super::{Link, LinkCaps, LinkError, OpenError, RecvStats, SendStats};
use crate::frame::{Frame, FramePool};
use crate::wire::Mac;

use table::*;
pub use table::{RemoteInfo, VxlanShared, VxlanStats};
pub use wire::*;

/// A VXLAN port's link. See the module docs.
pub struct VxlanLink {
    shared: Arc<VxlanShared>,
    rx: Sock,
    tx: Vec<Sock>,
    /// Received datagrams not yet handed out.
    rxb: RxBatch,
    /// The frames of the GSO send being built.
    run: GsoRun,
    hdr: [u8; HEADER_LEN],
    gw_mac: Option<Mac>,
    max_frame: usize,
    /// Destinations of the front frame of the queue, and how many it was sent to already.
    dests: Vec<SocketAddr>,
    sent: usize,
    started: bool,
    last_sweep: Instant,
    what: String,
}

impl std::fmt::Debug for VxlanLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VxlanLink")
            .field("vni", &self.shared.vni)
            .field("local", &self.shared.local)
            .field("port", &self.shared.port)
            .finish()
    }
}

/// The MTU of the underlay interface holding `local`, if it can be found.
fn underlay_mtu(local: IpAddr) -> Option<u32> {
    super::rtnl::Rtnl::open()
        .and_then(|mut r| r.mtu_of_address(local))
        .ok()
        .flatten()
}

fn udp_socket(addr: SocketAddr, what: &str) -> Result<UdpSocket, OpenError> {
    let s =
        UdpSocket::bind(addr).map_err(|e| OpenError::new(format!("{what}: binding {addr}"), e))?;
    s.set_nonblocking(true)
        .map_err(|e| OpenError::new(format!("{what}: non-blocking"), e))?;
    // RFC 7348 4.3: a VTEP must not fragment; an oversize datagram fails with EMSGSIZE.
    let df = if addr.is_ipv4() {
        rustix::net::sockopt::set_ip_mtu_discover(
            &s,
            rustix::net::sockopt::Ipv4PathMtuDiscovery::DO,
        )
    } else {
        rustix::net::sockopt::set_ipv6_mtu_discover(
            &s,
            rustix::net::sockopt::Ipv6PathMtuDiscovery::DO,
        )
    };
    df.map_err(|e| OpenError::new(format!("{what}: setting don't-fragment"), e.into()))?;
    // Room for bursts; best effort.
    let _ = rustix::net::sockopt::set_socket_send_buffer_size(&s, 1 << 20);
    Ok(s)
}

impl VxlanLink {
    /// Binds the sockets for `spec`. `aging_ms` is the network's FDB aging (0 = never);
    /// `gw_mac` the local gateway's MAC (its frames never leave); `what` names the port in logs.
    pub fn open(
        spec: &VxlanSpec,
        aging_ms: u64,
        gw_mac: Option<Mac>,
        what: &str,
    ) -> Result<(VxlanLink, Arc<VxlanShared>), OpenError> {
        let mtu = match spec.mtu {
            Some(m) => m,
            None => underlay_mtu(spec.local)
                .unwrap_or(1500)
                .saturating_sub(spec.overhead())
                .max(68),
        };
        let rx = udp_socket(SocketAddr::new(spec.local, spec.port), what)?;
        let _ = rustix::net::sockopt::set_socket_recv_buffer_size(&rx, 4 << 20);
        let offload = |s: UdpSocket| {
            Sock::new(s).map_err(|e| OpenError::new(format!("{what}: UDP offloads"), e))
        };
        let rx = offload(rx)?;
        let mut tx = Vec::with_capacity(TX_SOCKETS);
        for _ in 0..TX_SOCKETS {
            let s = udp_socket(SocketAddr::new(spec.local, 0), what)?;
            // Nothing is ever read from the sending sockets: keep their receive queues tiny.
            let _ = rustix::net::sockopt::set_socket_recv_buffer_size(&s, 1);
            tx.push(offload(s)?);
        }
        let shared = Arc::new(VxlanShared::new(spec, mtu, aging_ms));
        let link = VxlanLink {
            shared: shared.clone(),
            rx,
            tx,
            rxb: RxBatch::new(),
            run: GsoRun::new(),
            hdr: encap(spec.vni),
            gw_mac,
            max_frame: mtu as usize + ETH_HLEN + 4,
            dests: Vec::new(),
            sent: 0,
            started: false,
            last_sweep: Instant::now(),
            what: what.to_string(),
        };
        tracing::info!(port = %what, vni = spec.vni, local = %spec.local, mtu, "VXLAN port open");
        Ok((link, shared))
    }

    /// The state shared with the control plane.
    pub fn shared(&self) -> &Arc<VxlanShared> {
        &self.shared
    }

    /// The address the receive socket is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.rx.sock.local_addr()
    }

    fn maybe_sweep(&mut self, now: Instant) {
        if now.saturating_duration_since(self.last_sweep) >= Duration::from_secs(1) {
            self.last_sweep = now;
            self.shared.sweep(now);
        }
    }

    /// Checks one received inner frame; true: hand it to the bridge.
    fn accept(&self, src: IpAddr, inner: &[u8], now: Instant) -> bool {
        let c = &self.shared.counters;
        if inner.len() > inner_limit(inner, self.shared.mtu) {
            inc(&c.rx_oversize);
            return false;
        }
        let mut m = [0u8; 6];
        m.copy_from_slice(&inner[6..12]);
        let smac = Mac(m);
        if !self.shared.admit(src, smac, now) {
            return false;
        }
        if self.gw_mac == Some(smac) {
            inc(&c.rx_gateway_mac);
            return false;
        }
        if self.gw_mac.is_some() && is_dhcp_to_server(inner) {
            inc(&c.rx_dhcp);
            return false;
        }
        true
    }

    /// Whether `frame` goes to `dest` alone and passes the checks the front frame had: it may
    /// then join the front frame's GSO run.
    fn joins(&self, frame: &[u8], dest: SocketAddr, now: Instant) -> bool {
        if frame.len() < ETH_HLEN || frame.len() > inner_limit(frame, self.shared.mtu) {
            return false;
        }
        let mut m = [0u8; 6];
        m.copy_from_slice(&frame[6..12]);
        if self.gw_mac == Some(Mac(m)) {
            return false;
        }
        m.copy_from_slice(&frame[..6]);
        self.shared.known_vtep(Mac(m), now) == Some(dest)
    }

    /// Sends the front frame (bound for `self.dests[0]` alone) and the frames behind it of the
    /// same flow and VTEP as one GSO run (see [`batch`]). `Ok(n)`: `n` frames sent (0: no run
    /// here, send the front frame alone); errors as [`VxlanLink::send_one`]'s.
    fn send_run(&mut self, queue: &VecDeque<Frame>, hash: u32, now: Instant) -> io::Result<usize> {
        let dest = self.dests[0];
        let si = hash as usize % self.tx.len();
        let max = self.tx[si].gso_segments();
        let Some(front) = queue.front() else {
            return Ok(0);
        };
        if max < 2 {
            return Ok(0);
        }
        self.run.start(&self.hdr, front.data());
        for f in queue.iter().skip(1) {
            let d = f.data();
            if !self.run.fits(d, max) || flow_hash(d) != hash || !self.joins(d, dest, now) {
                break;
            }
            self.run.push(&self.hdr, d);
        }
        let n = self.run.frames;
        if n < 2 {
            return Ok(0);
        }
        for s in [&self.tx[si], &self.rx] {
            match s.send(dest, &self.run.buf, self.run.segment) {
                Ok(()) => {
                    let c = &self.shared.counters;
                    c.tx_datagrams.fetch_add(n as u64, Ordering::Relaxed);
                    c.tx_frames.fetch_add(n as u64, Ordering::Relaxed);
                    c.tx_bytes
                        .fetch_add(self.run.bytes as u64, Ordering::Relaxed);
                    self.shared.sent_to(dest.ip(), n as u64);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                // The underlay cannot take GSO: quinn_udp turned it off for this socket.
                Err(_) if s.gso_segments() < 2 => return Ok(0),
                Err(e) => return Err(e),
            }
        }
        Err(io::ErrorKind::WouldBlock.into())
    }

    /// Sends the front frame to `dest` from the socket the flow hash picks; `WouldBlock` when
    /// both it and the receive socket would block.
    fn send_one(&self, dest: SocketAddr, data: &[u8], hash: u32) -> io::Result<()> {
        let iov = [IoSlice::new(&self.hdr), IoSlice::new(data)];
        let flags = SendFlags::DONTWAIT | SendFlags::NOSIGNAL;
        let pick = &self.tx[hash as usize % self.tx.len()];
        for s in [pick, &self.rx] {
            loop {
                match rustix::net::sendmsg_addr(
                    &s.sock,
                    &dest,
                    &iov,
                    &mut SendAncillaryBuffer::default(),
                    flags,
                ) {
                    Ok(_) => return Ok(()),
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(rustix::io::Errno::AGAIN) => break,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Err(io::ErrorKind::WouldBlock.into())
    }
}

impl Link for VxlanLink {
    fn kind(&self) -> &'static str {
        "vxlan"
    }

    fn as_raw_fd(&self) -> RawFd {
        self.rx.sock.as_raw_fd()
    }

    fn caps(&self) -> LinkCaps {
        LinkCaps::plain(self.max_frame)
    }

    fn recv_batch(
        &mut self,
        pool: &FramePool,
        out: &mut Vec<Frame>,
        max: usize,
    ) -> Result<RecvStats, LinkError> {
        let mut st = RecvStats::default();
        let now = Instant::now();
        self.maybe_sweep(now);
        let vni = self.shared.vni;
        // Bound the datagrams looked at so a stream of dropped ones cannot hold the loop.
        let mut reads_left = max.saturating_mul(4).saturating_add(16);
        while st.frames < max && reads_left > 0 {
            let Some((src, dgram)) = self.rxb.next_datagram() else {
                match self.rxb.fill(&self.rx) {
                    Ok(true) => continue,
                    Ok(false) => {
                        st.drained = true;
                        break;
                    }
                    Err(e) => match rustix::io::Errno::from_io_error(&e) {
                        Some(rustix::io::Errno::INTR) => continue,
                        // A pending ICMP error from an earlier send (port unreachable): not
                        // fatal.
                        Some(
                            rustix::io::Errno::CONNREFUSED
                            | rustix::io::Errno::HOSTUNREACH
                            | rustix::io::Errno::NETUNREACH
                            | rustix::io::Errno::MSGSIZE,
                        ) => {
                            reads_left -= 1;
                            continue;
                        }
                        _ => {
                            let e = super::classify(e);
                            if e.is_fatal() || st.frames == 0 {
                                return Err(e);
                            }
                            break;
                        }
                    },
                }
            };
            reads_left -= 1;
            let c = &self.shared.counters;
            let src = canonical(src);
            let n = dgram.len();
            let (hdr, inner) = dgram.split_at(n.min(HEADER_LEN));
            if n < HEADER_LEN + ETH_HLEN {
                // Not even the header (or no Ethernet header inside): whatever its flags.
                if n < HEADER_LEN || check_header(hdr, vni).is_ok() {
                    inc(&c.truncated);
                    continue;
                }
            }
            match check_header(hdr, vni) {
                Ok(()) => {}
                Err(DecapError::Truncated) => {
                    inc(&c.truncated);
                    continue;
                }
                Err(DecapError::Flags) => {
                    inc(&c.bad_flags);
                    continue;
                }
                Err(DecapError::Vni(_)) => {
                    inc(&c.wrong_vni);
                    continue;
                }
            }
            let mut frame = pool.alloc();
            let area = frame.recv_area(0);
            let Some(dst) = area.get_mut(..inner.len()) else {
                inc(&c.rx_oversize);
                st.oversize += 1;
                continue;
            };
            dst.copy_from_slice(inner);
            frame.set_received(inner.len());
            if !self.accept(src, frame.data(), now) {
                continue;
            }
            let c = &self.shared.counters;
            c.rx_frames.fetch_add(1, Ordering::Relaxed);
            c.rx_bytes.fetch_add(frame.len() as u64, Ordering::Relaxed);
            out.push(frame);
            st.frames += 1;
        }
        Ok(st)
    }

    fn send_batch(&mut self, queue: &mut VecDeque<Frame>) -> Result<SendStats, LinkError> {
        let mut st = SendStats::default();
        let now = Instant::now();
        self.maybe_sweep(now);
        while let Some(f) = queue.front() {
            let data = f.data();
            let c = &self.shared.counters;
            if !self.started {
                if data.len() < ETH_HLEN {
                    queue.pop_front();
                    st.errors += 1;
                    continue;
                }
                if data.len() > inner_limit(data, self.shared.mtu) {
                    inc(&c.tx_oversize);
                    queue.pop_front();
                    st.errors += 1;
                    continue;
                }
                let mut m = [0u8; 6];
                m.copy_from_slice(&data[6..12]);
                if self.gw_mac == Some(Mac(m)) {
                    // This host's gateway serves this host's guests only.
                    inc(&c.tx_gateway_mac);
                    queue.pop_front();
                    continue;
                }
                m.copy_from_slice(&data[..6]);
                let mut dests = std::mem::take(&mut self.dests);
                self.shared.destinations(Mac(m), now, &mut dests);
                self.dests = dests;
                if self.dests.is_empty() {
                    inc(&c.no_remote);
                    queue.pop_front();
                    st.errors += 1;
                    continue;
                }
                self.started = true;
                self.sent = 0;
            }
            let hash = flow_hash(data);
            if self.sent == 0 && self.dests.len() == 1 && queue.len() > 1 {
                match self.send_run(queue, hash, now) {
                    Ok(0) => {}
                    Ok(n) => {
                        st.frames += n;
                        st.bytes += self.run.bytes;
                        self.started = false;
                        queue.drain(..n);
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(st),
                    Err(e) => {
                        // Not the offload (that falls back to single sends): the datagrams
                        // are lost, as a single send's would be.
                        let n = self.run.frames;
                        let c = &self.shared.counters;
                        c.tx_errors.fetch_add(n as u64, Ordering::Relaxed);
                        tracing::trace!(port = %self.what, error = %e, "VXLAN send failed");
                        st.frames += n;
                        self.started = false;
                        queue.drain(..n);
                        continue;
                    }
                }
            }
            let c = &self.shared.counters;
            while self.sent < self.dests.len() {
                let dest = self.dests[self.sent];
                match self.send_one(dest, data, hash) {
                    Ok(()) => {
                        inc(&c.tx_datagrams);
                        c.tx_bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                        self.shared.sent_to(dest.ip(), 1);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(st),
                    Err(e) => {
                        inc(&c.tx_errors);
                        tracing::trace!(port = %self.what, %dest, error = %e, "VXLAN send failed");
                    }
                }
                self.sent += 1;
            }
            inc(&c.tx_frames);
            st.frames += 1;
            st.bytes += data.len();
            self.started = false;
            queue.pop_front();
        }
        Ok(st)
    }
}

/// An IPv4-mapped IPv6 source as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn eth(dst: [u8; 6], src: [u8; 6], et: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        f.extend_from_slice(&et.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn default_mtu_is_the_underlay_interfaces_minus_the_overhead() {
        let lo: u32 = std::fs::read_to_string("/sys/class/net/lo/mtu")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(65536);
        for (addr, overhead) in [("127.0.0.1", OVERHEAD_V4), ("::1", OVERHEAD_V6)] {
            let mut s = VxlanSpec::new(1, addr.parse().expect("ip"));
            s.port = 0;
            let Ok((l, sh)) = VxlanLink::open(&s, 0, None, "t") else {
                continue; // no IPv6 here
            };
            assert_eq!(sh.mtu(), lo - overhead, "{addr}");
            assert_eq!(l.caps().max_frame, (lo - overhead) as usize + 18);
        }
    }

    fn pair() -> (VxlanLink, VxlanLink, FramePool) {
        let lo: IpAddr = "127.0.0.1".parse().expect("ip");
        let lo2: IpAddr = "127.0.0.2".parse().expect("ip");
        let mut a = VxlanSpec::new(7, lo);
        a.port = 0;
        a.mtu = Some(1450);
        let mut b = VxlanSpec::new(7, lo2);
        b.port = 0;
        b.mtu = Some(1450);
        let (la, _) = VxlanLink::open(&a, 300_000, None, "a").expect("a");
        let (lb, _) = VxlanLink::open(&b, 300_000, None, "b").expect("b");
        (la, lb, FramePool::new(1522, 64))
    }

    #[test]
    fn frames_cross_between_two_links_and_strangers_are_counted() {
        // Bound to port 0: a test-only setup where each side's port differs; send by hand.
        let (a, mut b, pool) = pair();
        let pb = b.local_addr().expect("addr").port();
        a.shared
            .add_remote("127.0.0.2".parse().expect("ip"))
            .expect("add");
        b.shared
            .add_remote("127.0.0.1".parse().expect("ip"))
            .expect("add");
        // The links send to their own port number: point each at the other's by hand.
        let send = |from: &UdpSocket, to: u16, d: &[u8]| {
            from.send_to(d, ("127.0.0.2", to)).expect("send");
        };
        let inner = eth([0xff; 6], [2, 0, 0, 0, 0, 0xa], 0x0806, &[0; 28]);
        let mut d = encap(7).to_vec();
        d.extend_from_slice(&inner);
        send(&a.tx[0].sock, pb, &d);
        // Wrong VNI, bad flags, truncated, oversize.
        let mut w = encap(8).to_vec();
        w.extend_from_slice(&inner);
        send(&a.tx[0].sock, pb, &w);
        let mut f = d.clone();
        f[0] = 0x0c;
        send(&a.tx[0].sock, pb, &f);
        send(&a.tx[0].sock, pb, &d[..5]);
        let mut big = encap(7).to_vec();
        big.extend_from_slice(&eth([2; 6], [2, 0, 0, 0, 0, 0xa], 0x0800, &[0; 1500]));
        send(&a.tx[0].sock, pb, &big);
        // A stranger (127.0.0.3 is not a remote).
        let s = UdpSocket::bind("127.0.0.3:0").expect("stranger");
        send(&s, pb, &d);
        std::thread::sleep(Duration::from_millis(50));
        let mut out = Vec::new();
        let st = b.recv_batch(&pool, &mut out, 64).expect("recv");
        assert_eq!(st.frames, 1);
        assert_eq!(out[0].data(), &inner[..]);
        let stats = b.shared.stats();
        for k in [
            "wrong_vni",
            "bad_flags",
            "truncated",
            "rx_oversize",
            "unknown_vtep",
        ] {
            assert_eq!(stats.drops[k], 1, "{k}: {stats:?}");
        }
        assert_eq!(
            b.shared.vtep_of(Mac([2, 0, 0, 0, 0, 0xa])),
            Some("127.0.0.1".parse().expect("ip"))
        );
        // Removing the remote forgets its MACs.
        b.shared
            .remove_remote("127.0.0.1".parse().expect("ip"))
            .expect("rm");
        assert_eq!(b.shared.vtep_of(Mac([2, 0, 0, 0, 0, 0xa])), None);
        assert!(
            b.shared
                .remove_remote("127.0.0.1".parse().expect("ip"))
                .is_err()
        );
        drop(a);
    }

    #[test]
    fn a_flow_goes_out_as_one_gso_run_and_arrives_frame_by_frame_in_order() {
        let (ip_a, ip_b): (IpAddr, IpAddr) = (
            "127.0.0.1".parse().expect("ip"),
            "127.0.0.2".parse().expect("ip"),
        );
        let mut sb = VxlanSpec::new(7, ip_b);
        sb.port = 0;
        sb.mtu = Some(1450);
        sb.remotes = vec![ip_a];
        let (mut b, _) = VxlanLink::open(&sb, 300_000, None, "b").expect("b");
        // a sends to b's port, bound on another loopback address.
        let mut sa = VxlanSpec::new(7, ip_a);
        sa.port = b.local_addr().expect("addr").port();
        sa.mtu = Some(1450);
        sa.remotes = vec![ip_b];
        let (mut a, _) = VxlanLink::open(&sa, 300_000, None, "a").expect("a");
        let pool = FramePool::new(1522, 64);
        let peer = Mac([2, 0, 0, 0, 0, 0xb]);
        a.shared.admit(ip_b, peer, Instant::now());
        // 40 frames of one flow (a TCP stream's segments), the last one shorter, then a
        // broadcast that must go alone.
        let frame = |i: u8, len: usize| {
            let mut ip = vec![
                0x45, 0, 0, 0, 0, 0, 0, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
            ];
            ip.extend_from_slice(&[0x30, 0x39, 0, 80]);
            ip.resize(len, i);
            eth(peer.0, [2, 0, 0, 0, 0, 0xa], 0x0800, &ip)
        };
        let mut sent: Vec<Vec<u8>> = (0..39).map(|i| frame(i, 1400)).collect();
        sent.push(frame(39, 300));
        sent.push(eth([0xff; 6], [2, 0, 0, 0, 0, 0xa], 0x0806, &[0; 28]));
        let mut q: VecDeque<Frame> = sent.iter().map(|f| Frame::from_slice(f)).collect();
        let st = a.send_batch(&mut q).expect("send");
        assert!(q.is_empty());
        assert_eq!(st.frames, 41);
        let sa = a.shared.stats();
        assert_eq!(sa.tx_datagrams, 41, "{sa:?}");
        std::thread::sleep(Duration::from_millis(50));
        let mut got = Vec::new();
        for _ in 0..10 {
            let mut out = Vec::new();
            b.recv_batch(&pool, &mut out, 16).expect("recv");
            got.extend(out.iter().map(|f| f.data().to_vec()));
            if got.len() >= sent.len() {
                break;
            }
        }
        assert_eq!(got.len(), sent.len());
        assert!(got == sent, "frames changed or reordered");
    }

    #[test]
    fn transmit_floods_unknown_and_unicasts_known_and_drops_oversize_and_gateway() {
        let lo: IpAddr = "127.0.0.1".parse().expect("ip");
        let gw = Mac([2, 0, 0, 0, 0, 0x99]);
        // Two "remotes", both listening on one port number on different loopback addresses.
        let r2 = UdpSocket::bind("127.0.0.2:0").expect("r2");
        let port = r2.local_addr().expect("addr").port();
        let r3 = UdpSocket::bind(("127.0.0.3", port)).expect("r3");
        r2.set_nonblocking(true).expect("nb");
        r3.set_nonblocking(true).expect("nb");
        let mut spec = VxlanSpec::new(9, lo);
        spec.port = port;
        spec.mtu = Some(1450);
        spec.remotes = vec![
            "127.0.0.2".parse().expect("ip"),
            "127.0.0.3".parse().expect("ip"),
        ];
        let (mut l, sh) = VxlanLink::open(&spec, 300_000, Some(gw), "t").expect("open");
        let count = |s: &UdpSocket| {
            let mut b = [0u8; 2048];
            let mut n = 0;
            while let Ok(len) = s.recv(&mut b) {
                assert_eq!(&b[..8], &encap(9));
                assert!(len >= 8 + 14);
                n += 1;
            }
            n
        };
        let known = Mac([2, 0, 0, 0, 0, 3]);
        sh.admit("127.0.0.3".parse().expect("ip"), known, Instant::now());
        let mut q: VecDeque<Frame> = [
            Frame::from_slice(&eth([0xff; 6], [2, 0, 0, 0, 0, 1], 0x0806, &[0; 28])),
            Frame::from_slice(&eth(known.0, [2, 0, 0, 0, 0, 1], 0x0800, &[0; 100])),
            Frame::from_slice(&eth(
                [2, 0, 0, 0, 0, 4],
                [2, 0, 0, 0, 0, 1],
                0x0800,
                &[0; 100],
            )),
            Frame::from_slice(&eth(known.0, [2, 0, 0, 0, 0, 1], 0x0800, &[0; 1451])),
            Frame::from_slice(&eth([0xff; 6], gw.0, 0x0806, &[0; 28])),
        ]
        .into_iter()
        .collect();
        let st = l.send_batch(&mut q).expect("send");
        assert!(q.is_empty());
        assert_eq!(st.frames, 3);
        std::thread::sleep(Duration::from_millis(50));
        // Broadcast + unknown unicast to both; known unicast to .3 only.
        assert_eq!((count(&r2), count(&r3)), (2, 3));
        let s = sh.stats();
        assert_eq!((s.tx_frames, s.tx_datagrams), (3, 5));
        assert_eq!((s.drops["tx_oversize"], s.drops["tx_gateway_mac"]), (1, 1));
        let rem = sh.remotes();
        assert_eq!(rem[0].tx_frames, 2);
        assert_eq!((rem[1].tx_frames, rem[1].macs), (3, 1));
        // No remotes: dropped and counted.
        sh.remove_remote("127.0.0.2".parse().expect("ip"))
            .expect("rm");
        sh.remove_remote("127.0.0.3".parse().expect("ip"))
            .expect("rm");
        let mut q: VecDeque<Frame> = [Frame::from_slice(&eth(
            [0xff; 6],
            [2, 0, 0, 0, 0, 1],
            0x0806,
            &[0; 28],
        ))]
        .into_iter()
        .collect();
        l.send_batch(&mut q).expect("send");
        assert_eq!(sh.stats().drops["no_remote"], 1);
    }
}
