//! Fewer syscalls per datagram on the VXLAN sockets, with the kernel's UDP offloads through
//! [`quinn_udp`] (the UDP layer of the quinn QUIC stack, kept by its maintainers for exactly
//! this: `recvmmsg`, UDP GRO and UDP GSO with their control messages and fallbacks).
//!
//! - **Receive** ([`RxBatch`]): one `recvmmsg` fills up to [`RX_BUFS`] 64 KiB buffers; with
//!   `UDP_GRO` on, one buffer may hold many datagrams of one sender back to back, each
//!   `stride` bytes (the last may be shorter). The link walks them one datagram at a time and
//!   copies each inner frame into a pool frame; what the engine's budget leaves over stays here
//!   for the next call, so a batch never returns more frames than asked.
//! - **Send** ([`GsoRun`]): consecutive frames for the same single VTEP, the same flow (so the
//!   same source socket) and the same length (the last may be shorter) are laid out as
//!   `header + frame` segments in one buffer and sent with one `sendmsg` carrying `UDP_SEGMENT`;
//!   the kernel (or the underlay NIC) cuts it into datagrams. Where the underlay cannot take it
//!   (no checksum offload: `EIO`), `quinn_udp` turns GSO off for that socket and the link sends
//!   those frames one by one.

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr, UdpSocket};

use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};

use super::HEADER_LEN;

/// Receive buffers per `recvmmsg` call.
pub(super) const RX_BUFS: usize = 8;
/// Size of one receive buffer: the largest UDP payload (and GRO list) there is.
const RX_BUF_LEN: usize = 65536;
/// Largest GSO send: the kernel takes at most 64 KiB of UDP payload in one call.
pub(super) const GSO_MAX_BYTES: usize = 65000;

/// One socket with its offload state (see the module docs).
pub(super) struct Sock {
    pub(super) sock: UdpSocket,
    pub(super) state: UdpSocketState,
}

impl Sock {
    /// Wraps `sock`, enabling GRO and GSO where the kernel has them. `quinn_udp` sets
    /// `IP_PMTUDISC_PROBE` (no fragments, interface MTU); the path-MTU discipline the link
    /// wants (`DO`, set by the caller before) is put back.
    pub(super) fn new(sock: UdpSocket) -> io::Result<Sock> {
        let state = UdpSocketState::new(UdpSockRef::from(&sock))?;
        let v4 = sock.local_addr()?.is_ipv4();
        if v4 {
            rustix::net::sockopt::set_ip_mtu_discover(
                &sock,
                rustix::net::sockopt::Ipv4PathMtuDiscovery::DO,
            )?;
        } else {
            rustix::net::sockopt::set_ipv6_mtu_discover(
                &sock,
                rustix::net::sockopt::Ipv6PathMtuDiscovery::DO,
            )?;
        }
        Ok(Sock { sock, state })
    }

    /// How many datagrams one send may carry (1: no GSO here, or turned off after an error).
    pub(super) fn gso_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    /// Sends `contents` to `dest`: one datagram, or `segment` sized ones when `segment` is
    /// smaller than `contents`.
    pub(super) fn send(&self, dest: SocketAddr, contents: &[u8], segment: usize) -> io::Result<()> {
        let t = Transmit {
            destination: dest,
            ecn: None,
            contents,
            segment_size: (segment < contents.len()).then_some(segment),
            src_ip: None,
        };
        self.state.try_send(UdpSockRef::from(&self.sock), &t)
    }
}

/// Received datagrams not yet handed to the engine (see the module docs).
pub(super) struct RxBatch {
    bufs: Vec<Vec<u8>>,
    meta: [RecvMeta; RX_BUFS],
    /// Buffers filled by the last `recvmmsg`.
    filled: usize,
    /// The buffer and offset of the next datagram.
    next: (usize, usize),
}

impl RxBatch {
    pub(super) fn new() -> RxBatch {
        RxBatch {
            bufs: Vec::new(),
            meta: [RecvMeta::default(); RX_BUFS],
            filled: 0,
            next: (0, 0),
        }
    }

    /// Reads a new batch when the last one is used up. `Ok(false)`: nothing to read now.
    pub(super) fn fill(&mut self, sock: &Sock) -> io::Result<bool> {
        if self.next.0 < self.filled {
            return Ok(true);
        }
        if self.bufs.is_empty() {
            self.bufs = (0..RX_BUFS).map(|_| vec![0u8; RX_BUF_LEN]).collect();
        }
        let mut iov: Vec<IoSliceMut<'_>> =
            self.bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
        let n = match sock
            .state
            .recv(UdpSockRef::from(&sock.sock), &mut iov, &mut self.meta)
        {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        };
        self.filled = n;
        self.next = (0, 0);
        Ok(n > 0)
    }

    /// The next datagram of the batch (its sender and bytes), if any is left.
    pub(super) fn next_datagram(&mut self) -> Option<(IpAddr, &[u8])> {
        while self.next.0 < self.filled {
            let (i, off) = self.next;
            let m = &self.meta[i];
            let len = m.len.min(RX_BUF_LEN);
            if off >= len {
                self.next = (i + 1, 0);
                continue;
            }
            let stride = if m.stride == 0 { len } else { m.stride };
            let end = (off + stride).min(len);
            self.next = (i, end);
            return Some((m.addr.ip(), &self.bufs[i][off..end]));
        }
        None
    }
}

/// A run of frames laid out for one GSO send (see the module docs).
pub(super) struct GsoRun {
    pub(super) buf: Vec<u8>,
    /// Frames in the run.
    pub(super) frames: usize,
    /// Bytes of inner frames in the run.
    pub(super) bytes: usize,
    /// The segment size: header + the first frame's length.
    pub(super) segment: usize,
}

impl GsoRun {
    pub(super) fn new() -> GsoRun {
        GsoRun {
            buf: Vec::with_capacity(GSO_MAX_BYTES + 2048),
            frames: 0,
            bytes: 0,
            segment: 0,
        }
    }

    /// Starts a run with its first frame.
    pub(super) fn start(&mut self, hdr: &[u8; HEADER_LEN], frame: &[u8]) {
        self.buf.clear();
        self.buf.extend_from_slice(hdr);
        self.buf.extend_from_slice(frame);
        self.frames = 1;
        self.bytes = frame.len();
        self.segment = HEADER_LEN + frame.len();
    }

    /// Whether `frame` may join the run of at most `max` segments: no longer than the first,
    /// and the run not closed by a shorter one already.
    pub(super) fn fits(&self, frame: &[u8], max: usize) -> bool {
        self.frames < max
            && HEADER_LEN + frame.len() <= self.segment
            && self.buf.len() == self.frames * self.segment
            && self.buf.len() + HEADER_LEN + frame.len() <= GSO_MAX_BYTES
    }

    /// Adds `frame` (checked with [`GsoRun::fits`]).
    pub(super) fn push(&mut self, hdr: &[u8; HEADER_LEN], frame: &[u8]) {
        self.buf.extend_from_slice(hdr);
        self.buf.extend_from_slice(frame);
        self.frames += 1;
        self.bytes += frame.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_takes_equal_frames_and_one_shorter_last() {
        let hdr = [8u8, 0, 0, 0, 0, 0, 7, 0];
        let mut r = GsoRun::new();
        r.start(&hdr, &[1u8; 100]);
        assert!(r.fits(&[2u8; 100], 64));
        r.push(&hdr, &[2u8; 100]);
        assert!(!r.fits(&[3u8; 101], 64), "longer than the first");
        assert!(r.fits(&[3u8; 60], 64));
        r.push(&hdr, &[3u8; 60]);
        assert!(!r.fits(&[4u8; 60], 64), "a shorter one ends the run");
        assert_eq!((r.frames, r.bytes, r.segment), (3, 260, 108));
        assert_eq!(r.buf.len(), 3 * 8 + 260);
        assert_eq!(&r.buf[108..116], &hdr);
        let mut r2 = GsoRun::new();
        r2.start(&hdr, &[1u8; 100]);
        assert!(!r2.fits(&[1u8; 100], 1), "max segments");
        let big = vec![0u8; 9000];
        r2.start(&hdr, &big);
        for _ in 0..6 {
            r2.push(&hdr, &big);
        }
        assert!(!r2.fits(&big, 64), "64 KiB");
    }

    #[test]
    fn gro_buffers_split_at_the_stride() {
        let mut b = RxBatch::new();
        b.bufs = vec![vec![0u8; RX_BUF_LEN]; RX_BUFS];
        b.bufs[0][..10].copy_from_slice(&[1, 1, 1, 1, 2, 2, 2, 2, 3, 3]);
        b.bufs[1][..3].copy_from_slice(&[9, 9, 9]);
        let src: SocketAddr = "127.0.0.9:5".parse().expect("addr");
        let mut m = RecvMeta::default();
        m.addr = src;
        m.len = 10;
        m.stride = 4;
        b.meta[0] = m;
        m.len = 3;
        m.stride = 3;
        b.meta[1] = m;
        b.filled = 2;
        let mut got = Vec::new();
        while let Some((ip, d)) = b.next_datagram() {
            assert_eq!(ip, src.ip());
            got.push(d.to_vec());
        }
        assert_eq!(
            got,
            [
                vec![1, 1, 1, 1],
                vec![2, 2, 2, 2],
                vec![3, 3],
                vec![9, 9, 9]
            ]
        );
    }
}
