//! Offloads: what a link accepts, and software segmentation and checksumming for links that
//! lack an offload.
//!
//! # Theory of operation
//!
//! A TAP opened with `IFF_VNET_HDR` and `TUNSETOFFLOAD` hands us frames the way a NIC driver
//! would get them from the stack: TCP "super-frames" of up to 64 KiB with a virtio-net header
//! saying how to cut them into segments (GSO: `gso_type`, `gso_size`), and frames whose TCP or
//! UDP checksum is left for the "hardware" (`VIRTIO_NET_HDR_F_NEEDS_CSUM`, `csum_start`,
//! `csum_offset`). Between two such links the frame passes untouched: one read and one write
//! move 64 KiB instead of 1.5 KiB, which is where a userspace switch's time goes.
//!
//! Every other egress (a TAP without virtio-net headers, AF_PACKET without them, the stream
//! link, the gateway's memory link) gets real frames: [`adapt`] runs at flush time, on the
//! egress port's loop, and either passes the frame on or replaces it by its segments (TCP over
//! IPv4/IPv6, UDP segmentation offload), each with its IP length, IPv4 id and header checksum,
//! TCP sequence number and flags (FIN and PSH on the last segment only, CWR on the first only),
//! and full TCP/UDP checksum; a frame that only needs its checksum gets it computed in place.
//!
//! Frames whose headers do not match their virtio-net header (a guest can write anything) are
//! refused with an [`OffloadError`] and counted by the caller; nothing here panics on input.

use std::collections::VecDeque;
use std::net::IpAddr;

use etherparse::checksum::Sum16BitWords;

use crate::frame::{Frame, FramePool, VnetHdr};
use crate::wire::eth::L2Header;
use crate::wire::ip::{PROTO_TCP, PROTO_UDP, addresses, tcp_header_len};
/// Moved to [`crate::wire::ip`]; re-exported here, where callers found them before.
pub use crate::wire::ip::{Transport, transport};

/// `VIRTIO_NET_HDR_GSO_TCPV4`.
pub const GSO_TCPV4: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_UDP` (UDP fragmentation offload; never enabled by usernet).
pub const GSO_UDP: u8 = 3;
/// `VIRTIO_NET_HDR_GSO_TCPV6`.
pub const GSO_TCPV6: u8 = 4;
/// `VIRTIO_NET_HDR_GSO_UDP_L4` (UDP segmentation offload, Linux 6.2+ on TAP).
pub const GSO_UDP_L4: u8 = 5;
/// `VIRTIO_NET_HDR_GSO_ECN` flag: the segments carry ECN (CWR on the first one only).
pub const GSO_ECN: u8 = 0x80;

const ETH_IPV4: u16 = 0x0800;
const ETH_IPV6: u16 = 0x86dd;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;
/// Most segments one GSO frame may be cut into (64 KiB / 64 bytes); more means a bogus header.
const MAX_SEGMENTS: usize = 1024;

/// The offloads a link accepts on transmit: which frames it can take as they are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offloads {
    /// Frames with a pending TCP/UDP checksum (`NEEDS_CSUM`).
    pub csum: bool,
    /// TCP-over-IPv4 GSO frames.
    pub tso4: bool,
    /// TCP-over-IPv6 GSO frames.
    pub tso6: bool,
    /// TSO frames with the ECN flag.
    pub tso_ecn: bool,
    /// UDP segmentation offload frames (`GSO_UDP_L4`).
    pub uso: bool,
}

impl Offloads {
    /// No offloads: the link takes only complete, checksummed frames.
    pub const NONE: Offloads = Offloads {
        csum: false,
        tso4: false,
        tso6: false,
        tso_ecn: false,
        uso: false,
    };

    /// Everything a virtio-net header can describe that Linux accepts on a TAP write.
    pub const ALL: Offloads = Offloads {
        csum: true,
        tso4: true,
        tso6: true,
        tso_ecn: true,
        uso: true,
    };

    /// True when a frame with header `h` can be handed to the link as it is.
    pub fn accepts(&self, h: &VnetHdr) -> bool {
        let needs_csum = h.flags & VnetHdr::F_NEEDS_CSUM != 0;
        if needs_csum && !self.csum {
            return false;
        }
        let ecn_ok = h.gso_type & GSO_ECN == 0 || self.tso_ecn;
        match h.gso_type & !GSO_ECN {
            0 => true,
            GSO_TCPV4 => self.tso4 && ecn_ok,
            GSO_TCPV6 => self.tso6 && ecn_ok,
            GSO_UDP_L4 => self.uso,
            _ => false,
        }
    }
}

/// Why a frame could not be made fit for a link without offloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OffloadError {
    /// The frame's headers are too short or not what the virtio-net header says.
    #[error("headers do not match the virtio-net header")]
    Malformed,
    /// A GSO type usernet does not segment (UDP fragmentation offload, unknown types).
    #[error("unsupported GSO type {0}")]
    Unsupported(u8),
    /// The checksum position lies outside the frame.
    #[error("checksum offset outside the frame")]
    BadChecksumOffset,
    /// No buffer for a segment (pool limit reached).
    #[error("no buffer for a segment")]
    NoBuffer,
}

/// Makes `frame` fit a link that accepts `accept`, appending the result to `out`: the frame
/// itself (unchanged, or with its checksum filled in), or its segments. Returns how many
/// frames were appended. On error nothing is appended and the frame is dropped.
pub fn adapt(
    mut frame: Frame,
    accept: Offloads,
    pool: &FramePool,
    out: &mut VecDeque<Frame>,
) -> Result<usize, OffloadError> {
    let h = frame.meta.vnet;
    if accept.accepts(&h) {
        out.push_back(frame);
        return Ok(1);
    }
    if h.gso_type == 0 {
        finish_checksum(&mut frame)?;
        out.push_back(frame);
        return Ok(1);
    }
    segment(&frame, pool, out)
}

/// Computes a pending checksum (`NEEDS_CSUM`) in place and clears the flag.
pub fn finish_checksum(frame: &mut Frame) -> Result<(), OffloadError> {
    let h = frame.meta.vnet;
    if h.flags & VnetHdr::F_NEEDS_CSUM != 0 {
        let start = usize::from(h.csum_start);
        let at = start + usize::from(h.csum_offset);
        let data = frame.data_mut();
        if at + 2 > data.len() || start > data.len() {
            return Err(OffloadError::BadChecksumOffset);
        }
        // The field holds the folded pseudo-header sum: summing over it completes it. (The sum
        // is taken over native-endian words, so the result is stored native-endian.)
        let sum = Sum16BitWords::new().add_slice(&data[start..]);
        let mut c = sum.ones_complement();
        // UDP's "no checksum" is 0; a computed 0 is sent as 0xffff (RFC 768).
        if h.csum_offset == 6 && c == 0 {
            c = 0xffff;
        }
        data[at..at + 2].copy_from_slice(&c.to_ne_bytes());
    }
    frame.meta.vnet = VnetHdr::default();
    Ok(())
}

/// Where a GSO frame's headers are.
struct Layout {
    l3: usize,
    l4: usize,
    /// End of the L4 header: where the payload starts.
    payload: usize,
    v4: bool,
    tcp: bool,
}

fn layout(data: &[u8], gso: u8) -> Result<Layout, OffloadError> {
    let l2 = L2Header::parse(data).map_err(|_| OffloadError::Malformed)?;
    let l3 = l2.header_len;
    let t = match l2.ethertype {
        ETH_IPV4 | ETH_IPV6 => data.get(l3..).and_then(transport),
        _ => None,
    };
    let Some(Transport { v4, proto, l4 }) = t.filter(|t| t.v4 == (l2.ethertype == ETH_IPV4)) else {
        return Err(OffloadError::Malformed);
    };
    let l4 = l3 + l4;
    let tcp = match (gso & !GSO_ECN, v4, proto) {
        (GSO_TCPV4, true, PROTO_TCP) | (GSO_TCPV6, false, PROTO_TCP) => true,
        (GSO_UDP_L4, _, PROTO_UDP) => false,
        (GSO_UDP, ..) => return Err(OffloadError::Unsupported(gso)),
        (GSO_TCPV4 | GSO_TCPV6 | GSO_UDP_L4, ..) => return Err(OffloadError::Malformed),
        _ => return Err(OffloadError::Unsupported(gso)),
    };
    let payload = if tcp {
        let thl = tcp_header_len(data, l4).ok_or(OffloadError::Malformed)?;
        if thl < 20 {
            return Err(OffloadError::Malformed);
        }
        l4 + thl
    } else {
        l4 + 8
    };
    if payload > data.len() {
        return Err(OffloadError::Malformed);
    }
    Ok(Layout {
        l3,
        l4,
        payload,
        v4,
        tcp,
    })
}

/// Cuts a GSO frame into segments of `gso_size` payload bytes, each a complete frame.
fn segment(
    frame: &Frame,
    pool: &FramePool,
    out: &mut VecDeque<Frame>,
) -> Result<usize, OffloadError> {
    let h = frame.meta.vnet;
    let data = frame.data();
    let lay = layout(data, h.gso_type)?;
    let mss = usize::from(h.gso_size);
    let body = &data[lay.payload..];
    if mss == 0 || body.len().div_ceil(mss) > MAX_SEGMENTS {
        return Err(OffloadError::Malformed);
    }
    let hdrs = &data[..lay.payload];
    let ip_id = be16(data, lay.l3 + 4);
    let seq = be32(data, lay.l4 + 4);
    let flags = data.get(lay.l4 + 13).copied().unwrap_or(0);
    let first = out.len();
    // A frame with no payload still goes out once (e.g. a lone FIN with a GSO header).
    let chunks = body.len().div_ceil(mss).max(1);
    for i in 0..chunks {
        let chunk = &body[(i * mss).min(body.len())..((i + 1) * mss).min(body.len())];
        let Some(mut seg) = pool.frame_from_parts(hdrs, chunk) else {
            out.truncate(first);
            return Err(OffloadError::NoBuffer);
        };
        seg.meta.ingress = frame.meta.ingress;
        let s = seg.data_mut();
        let l4_len = s.len() - lay.l4;
        if lay.v4 {
            put16(s, lay.l3 + 2, (s.len() - lay.l3) as u16);
            put16(s, lay.l3 + 4, ip_id.wrapping_add(i as u16));
            put16(s, lay.l3 + 10, 0);
            let c = Sum16BitWords::new()
                .add_slice(&s[lay.l3..lay.l4])
                .ones_complement();
            s[lay.l3 + 10..lay.l3 + 12].copy_from_slice(&c.to_ne_bytes());
        } else {
            put16(s, lay.l3 + 4, l4_len as u16);
        }
        let csum_at = if lay.tcp {
            put32(s, lay.l4 + 4, seq.wrapping_add((i * mss) as u32));
            let mut f = flags;
            if i + 1 < chunks {
                f &= !(TCP_FIN | TCP_PSH);
            }
            if i > 0 {
                f &= !TCP_CWR;
            }
            s[lay.l4 + 13] = f;
            lay.l4 + 16
        } else {
            put16(s, lay.l4 + 4, l4_len as u16);
            lay.l4 + 6
        };
        put16(s, csum_at, 0);
        let proto = if lay.tcp { PROTO_TCP } else { PROTO_UDP };
        let Some(sum) = pseudo_sum(&s[lay.l3..], l4_len, proto) else {
            out.truncate(first);
            return Err(OffloadError::Malformed);
        };
        let sum = sum.add_slice(&s[lay.l4..]);
        let c = if lay.tcp {
            sum.ones_complement()
        } else {
            sum.to_ones_complement_with_no_zero()
        };
        s[csum_at..csum_at + 2].copy_from_slice(&c.to_ne_bytes());
        seg.meta.vnet = VnetHdr::default();
        out.push_back(seg);
    }
    Ok(out.len() - first)
}

/// The pseudo-header sum of the TCP or UDP segment in `ip` (an IPv4 or IPv6 packet whose
/// transport header starts at `l4`), for a segment of `l4_len` bytes.
fn pseudo_sum(ip: &[u8], l4_len: usize, proto: u8) -> Option<Sum16BitWords> {
    let mut sum = match addresses(ip)? {
        (IpAddr::V4(a), IpAddr::V4(b)) => Sum16BitWords::new()
            .add_4bytes(a.octets())
            .add_4bytes(b.octets()),
        (IpAddr::V6(a), IpAddr::V6(b)) => Sum16BitWords::new()
            .add_16bytes(a.octets())
            .add_16bytes(b.octets()),
        _ => return None,
    };
    Some(
        sum.add_4bytes((l4_len as u32).to_be_bytes())
            .add_2bytes([0, proto]),
    )
}

/// True when the TCP or UDP checksum of `segment` (the transport header and payload) inside IP
/// packet `ip` is right. A UDP checksum of 0 (none) counts as right.
pub fn l4_checksum_ok(ip: &[u8], segment: &[u8], proto: u8) -> bool {
    if proto == PROTO_UDP && segment.get(6..8) == Some(&[0, 0]) {
        return true;
    }
    pseudo_sum(ip, segment.len(), proto)
        .map(|s| s.add_slice(segment).ones_complement() == 0)
        .unwrap_or(false)
}

/// Turns the TCP packet `ip` (IPv4 or IPv6, TCP header at `l4`) into one whose checksum is left
/// to the last hop: stores the pseudo-header sum in the checksum field and returns the
/// virtio-net header for it inside an Ethernet frame with `l2` header bytes. When the packet
/// is longer than `mtu` it becomes a GSO frame cut at `gso_size` payload bytes.
pub fn tcp_partial(
    ip: &mut [u8],
    l4: usize,
    l2: usize,
    mtu: usize,
    gso_size: u16,
) -> Option<VnetHdr> {
    let v4 = ip.first()? >> 4 == 4;
    let seg_len = ip.len().checked_sub(l4)?;
    let thl = tcp_header_len(ip, l4)?;
    if thl < 20 || thl > seg_len {
        return None;
    }
    let partial = !pseudo_sum(ip, seg_len, PROTO_TCP)?.ones_complement();
    ip.get_mut(l4 + 16..l4 + 18)?
        .copy_from_slice(&partial.to_ne_bytes());
    let gso = ip.len() > mtu && seg_len > thl;
    Some(VnetHdr {
        flags: VnetHdr::F_NEEDS_CSUM,
        gso_type: match (gso, v4) {
            (false, _) => 0,
            (true, true) => GSO_TCPV4,
            (true, false) => GSO_TCPV6,
        },
        hdr_len: (l2 + l4 + thl) as u16,
        gso_size: if gso { gso_size } else { 0 },
        csum_start: (l2 + l4) as u16,
        csum_offset: 16,
    })
}

fn be16(d: &[u8], at: usize) -> u16 {
    d.get(at..at + 2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .unwrap_or(0)
}

fn be32(d: &[u8], at: usize) -> u32 {
    d.get(at..at + 4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .unwrap_or(0)
}

fn put16(d: &mut [u8], at: usize, v: u16) {
    if let Some(b) = d.get_mut(at..at + 2) {
        b.copy_from_slice(&v.to_be_bytes());
    }
}

fn put32(d: &mut [u8], at: usize, v: u32) {
    if let Some(b) = d.get_mut(at..at + 4) {
        b.copy_from_slice(&v.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};

    const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];

    /// A big TCP frame as the kernel would hand it over with TSO: correct lengths, a partial
    /// checksum (here: garbage, which segmentation must ignore), and a GSO header.
    fn tcp_gso(v4: bool, payload: &[u8], mss: u16, flags_fin_psh: bool) -> Frame {
        let b = PacketBuilder::ethernet2(MAC_A, MAC_B);
        let b = if v4 {
            b.ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        } else {
            b.ipv6([0xfd; 16], [0xfe; 16], 64)
        };
        let mut b = b.tcp(40000, 80, 1_000_000, 65535).ack(7).cwr();
        if flags_fin_psh {
            b = b.fin().psh();
        }
        let mut bytes = Vec::new();
        b.write(&mut bytes, payload).expect("builds");
        let mut f = Frame::from_slice(&bytes);
        let l4 = if v4 { 34 } else { 54 };
        f.meta.vnet = VnetHdr {
            flags: VnetHdr::F_NEEDS_CSUM,
            gso_type: if v4 { GSO_TCPV4 } else { GSO_TCPV6 },
            hdr_len: (l4 + 20) as u16,
            gso_size: mss,
            csum_start: l4 as u16,
            csum_offset: 16,
        };
        f
    }

    fn check_segments(out: &VecDeque<Frame>, payload: &[u8], mss: usize, v4: bool) {
        assert_eq!(out.len(), payload.len().div_ceil(mss));
        let mut got = Vec::new();
        for (i, f) in out.iter().enumerate() {
            assert!(f.meta.vnet.is_plain());
            let p = SlicedPacket::from_ethernet(f.data()).expect("parses");
            let Some(TransportSlice::Tcp(tcp)) = p.transport else {
                panic!("not tcp")
            };
            let seg_payload = tcp.payload();
            assert!(seg_payload.len() <= mss);
            assert_eq!(tcp.sequence_number(), 1_000_000 + (i * mss) as u32);
            assert_eq!(tcp.cwr(), i == 0, "CWR only on the first segment");
            let last = i + 1 == out.len();
            assert_eq!(tcp.fin(), last);
            assert_eq!(tcp.psh(), last);
            match p.net {
                Some(NetSlice::Ipv4(ip)) => {
                    assert!(v4);
                    let hdr = ip.header().to_header();
                    assert_eq!(hdr.calc_header_checksum(), hdr.header_checksum);
                    let want = tcp
                        .to_header()
                        .calc_checksum_ipv4(&hdr, seg_payload)
                        .expect("fits");
                    assert_eq!(tcp.checksum(), want, "segment {i} TCP checksum");
                }
                Some(NetSlice::Ipv6(ip)) => {
                    assert!(!v4);
                    let hdr = ip.header().to_header();
                    let want = tcp
                        .to_header()
                        .calc_checksum_ipv6(&hdr, seg_payload)
                        .expect("fits");
                    assert_eq!(tcp.checksum(), want, "segment {i} TCP checksum");
                }
                _ => panic!("no ip"),
            }
            got.extend_from_slice(seg_payload);
        }
        assert_eq!(got, payload);
    }

    #[test]
    fn tso_v4_and_v6_segment_into_valid_frames() {
        let pool = FramePool::new(1600, 64);
        let payload: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        for v4 in [true, false] {
            let mut out = VecDeque::new();
            let n = adapt(
                tcp_gso(v4, &payload, 1448, true),
                Offloads::NONE,
                &pool,
                &mut out,
            )
            .expect("segments");
            assert_eq!(n, 7);
            check_segments(&out, &payload, 1448, v4);
        }
    }

    #[test]
    fn capable_link_gets_the_frame_untouched() {
        let pool = FramePool::new(1600, 4);
        let mut out = VecDeque::new();
        let f = tcp_gso(true, &[1u8; 5000], 1448, false);
        let len = f.len();
        assert_eq!(adapt(f, Offloads::ALL, &pool, &mut out), Ok(1));
        assert_eq!(out[0].len(), len);
        assert_eq!(out[0].meta.vnet.gso_type, GSO_TCPV4);
    }

    #[test]
    fn needs_csum_is_completed() {
        let mut bytes = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(5000, 53)
            .write(&mut bytes, b"hello, partial checksum")
            .expect("builds");
        let want = SlicedPacket::from_ethernet(&bytes)
            .ok()
            .and_then(|p| match p.transport {
                Some(TransportSlice::Udp(u)) => Some(u.checksum()),
                _ => None,
            })
            .expect("udp");
        // What the kernel leaves for the NIC: the folded pseudo-header sum, not complemented.
        let pseudo = Sum16BitWords::new()
            .add_4bytes([10, 0, 0, 1])
            .add_4bytes([10, 0, 0, 2])
            .add_2bytes([0, PROTO_UDP])
            .add_2bytes(((bytes.len() - 34) as u16).to_be_bytes());
        let partial = !pseudo.ones_complement();
        bytes[40..42].copy_from_slice(&partial.to_ne_bytes());
        let mut f = Frame::from_slice(&bytes);
        f.meta.vnet = VnetHdr {
            flags: VnetHdr::F_NEEDS_CSUM,
            csum_start: 34,
            csum_offset: 6,
            ..VnetHdr::default()
        };
        let mut out = VecDeque::new();
        adapt(f, Offloads::NONE, &FramePool::new(1600, 4), &mut out).expect("ok");
        assert_eq!(
            u16::from_be_bytes([out[0].data()[40], out[0].data()[41]]),
            want
        );
        assert!(out[0].meta.vnet.is_plain());
    }

    #[test]
    fn uso_segments_udp() {
        let payload = vec![0xabu8; 3000];
        let mut bytes = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv6([0xfd; 16], [0xfe; 16], 64)
            .udp(5000, 6000)
            .write(&mut bytes, &payload)
            .expect("builds");
        let mut f = Frame::from_slice(&bytes);
        f.meta.vnet = VnetHdr {
            flags: VnetHdr::F_NEEDS_CSUM,
            gso_type: GSO_UDP_L4,
            gso_size: 1000,
            csum_start: 54,
            csum_offset: 6,
            hdr_len: 62,
        };
        let mut out = VecDeque::new();
        let n = adapt(f, Offloads::NONE, &FramePool::new(1600, 8), &mut out).expect("ok");
        assert_eq!(n, 3);
        for s in &out {
            let p = SlicedPacket::from_ethernet(s.data()).expect("parses");
            let (Some(NetSlice::Ipv6(ip)), Some(TransportSlice::Udp(u))) = (p.net, p.transport)
            else {
                panic!("not udp6")
            };
            assert_eq!(u.payload().len(), 1000);
            assert_eq!(usize::from(u.length()), 1008);
            let want = u
                .to_header()
                .calc_checksum_ipv6(&ip.header().to_header(), u.payload())
                .expect("fits");
            assert_eq!(u.checksum(), want);
        }
    }

    #[test]
    fn lying_headers_are_refused_not_panicking() {
        let pool = FramePool::new(1600, 8);
        let good = tcp_gso(true, &[0u8; 4000], 1000, false);
        let bytes = good.data().to_vec();
        // Every truncation, a zero MSS, a UDP GSO type on TCP, a bad checksum offset.
        for cut in 0..bytes.len() {
            let mut f = Frame::from_slice(&bytes[..cut]);
            f.meta = good.meta;
            let mut out = VecDeque::new();
            let _ = adapt(f, Offloads::NONE, &pool, &mut out);
        }
        let mut f = Frame::from_slice(&bytes);
        f.meta.vnet = VnetHdr {
            gso_size: 0,
            ..good.meta.vnet
        };
        assert_eq!(
            adapt(f, Offloads::NONE, &pool, &mut VecDeque::new()),
            Err(OffloadError::Malformed)
        );
        let mut f = Frame::from_slice(&bytes);
        f.meta.vnet.gso_type = GSO_UDP;
        assert_eq!(
            adapt(f, Offloads::NONE, &pool, &mut VecDeque::new()),
            Err(OffloadError::Unsupported(GSO_UDP))
        );
        let mut f = Frame::from_slice(&bytes);
        f.meta.vnet = VnetHdr {
            flags: VnetHdr::F_NEEDS_CSUM,
            csum_start: 60_000,
            ..VnetHdr::default()
        };
        assert_eq!(
            adapt(f, Offloads::NONE, &pool, &mut VecDeque::new()),
            Err(OffloadError::BadChecksumOffset)
        );
    }

    #[test]
    fn accepts_matches_flags() {
        let tso = VnetHdr {
            gso_type: GSO_TCPV4 | GSO_ECN,
            ..VnetHdr::default()
        };
        assert!(Offloads::ALL.accepts(&tso));
        let no_ecn = Offloads {
            tso_ecn: false,
            ..Offloads::ALL
        };
        assert!(!no_ecn.accepts(&tso));
        assert!(Offloads::NONE.accepts(&VnetHdr::default()));
    }
}

#[cfg(test)]
mod partial_tests {
    use super::*;
    use etherparse::PacketBuilder;

    #[test]
    fn tcp_partial_then_adapt_gives_valid_segments() {
        let payload: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        let mut ip = Vec::new();
        PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(80, 40000, 9, 1000)
            .ack(3)
            .write(&mut ip, &payload)
            .expect("builds");
        assert!(l4_checksum_ok(&ip, &ip[20..], PROTO_TCP));
        let mut bad = ip.clone();
        bad[100] ^= 1;
        assert!(!l4_checksum_ok(&bad, &bad[20..], PROTO_TCP));

        let vnet = tcp_partial(&mut ip, 20, 14, 1500, 1460).expect("tcp");
        assert_eq!(vnet.gso_type, GSO_TCPV4);
        assert_eq!(
            (vnet.csum_start, vnet.csum_offset, vnet.gso_size),
            (34, 16, 1460)
        );
        let mut frame = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 8, 0];
        frame.extend_from_slice(&ip);
        let mut f = Frame::from_slice(&frame);
        f.meta.vnet = vnet;
        let mut out = VecDeque::new();
        let n = adapt(f, Offloads::NONE, &FramePool::new(1600, 8), &mut out).expect("adapts");
        assert_eq!(n, 4);
        let mut joined = Vec::new();
        for s in &out {
            let d = s.data();
            assert!(l4_checksum_ok(&d[14..], &d[34..], PROTO_TCP));
            joined.extend_from_slice(&d[54..]);
        }
        assert_eq!(joined, payload);

        // Small enough: no GSO, and finishing the checksum gives the original one.
        let mut small = Vec::new();
        PacketBuilder::ipv6([0xfd; 16], [0xfe; 16], 64)
            .tcp(80, 40000, 9, 1000)
            .write(&mut small, b"hello")
            .expect("builds");
        let orig = small.clone();
        let v = tcp_partial(&mut small, 40, 14, 1500, 1440).expect("tcp");
        assert_eq!(v.gso_type, 0);
        let mut frame = vec![0u8; 12];
        frame.extend_from_slice(&[0x86, 0xdd]);
        frame.extend_from_slice(&small);
        let mut f = Frame::from_slice(&frame);
        f.meta.vnet = v;
        finish_checksum(&mut f).expect("finishes");
        assert_eq!(&f.data()[14..], &orig[..]);
    }
}
