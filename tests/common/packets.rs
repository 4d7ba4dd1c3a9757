//! Hand-built frames for hostile-traffic tests: Ethernet, IPv4/IPv6, UDP, TCP, ICMPv6 with
//! (deliberately) any header values, checksums, a raw IP sender and a seeded RNG.
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::Netns;
use usernet::link::netns::run_in_netns;

pub struct RawIp {
    pub fd: OwnedFd,
}

impl RawIp {
    pub fn open(ns: &Netns) -> RawIp {
        run_in_netns(&ns.path(), || {
            // SAFETY: plain socket(2); the fd is owned right away.
            let fd = unsafe {
                libc::socket(
                    libc::AF_INET,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    libc::IPPROTO_RAW,
                )
            };
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: a fresh descriptor nobody else owns.
            Ok(RawIp {
                fd: unsafe { OwnedFd::from_raw_fd(fd) },
            })
        })
        .expect("raw IP socket in namespace")
    }

    pub fn send(&self, packet: &[u8], dst: Ipv4Addr) -> bool {
        // SAFETY: sockaddr_in is plain data; zero is valid.
        let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        sa.sin_family = libc::AF_INET as u16;
        sa.sin_addr.s_addr = u32::from_ne_bytes(dst.octets());
        // SAFETY: `packet` is valid for reads of its length; `sa` is a valid sockaddr_in.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                libc::MSG_DONTWAIT,
                (&sa as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        n >= 0
    }
}

/// xorshift64: deterministic test randomness.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    /// A random unicast, locally administered MAC.
    pub fn mac(&mut self) -> [u8; 6] {
        let b = self.next().to_le_bytes();
        [(b[0] & 0xfc) | 0x02, b[1], b[2], b[3], b[4], b[5]]
    }
}

pub const BCAST: [u8; 6] = [0xff; 6];

pub fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

pub fn csum_add(mut sum: u32, data: &[u8]) -> u32 {
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += u32::from(w);
    }
    sum
}

pub fn csum_fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A well-formed IPv4 header (checksum right) followed by `payload`.
pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload: &[u8]) -> Vec<u8> {
    let total = (20 + payload.len()) as u16;
    let mut h = vec![0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, proto, 0, 0];
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    let c = csum_fold(csum_add(0, &h));
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

/// Recomputes the IPv4 header checksum after a header field was changed.
pub fn fix_ipv4_csum(p: &mut [u8]) {
    let ihl = usize::from(p[0] & 0x0f) * 4;
    if ihl < 20 || p.len() < ihl {
        return;
    }
    p[10] = 0;
    p[11] = 0;
    let c = csum_fold(csum_add(0, &p[..ihl]));
    p[10..12].copy_from_slice(&c.to_be_bytes());
}

pub fn udp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::with_capacity(8 + payload.len());
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]); // no checksum (allowed for IPv4)
    u.extend_from_slice(payload);
    ipv4(src, dst, 17, &u)
}

/// IPv4 + TCP with `flags`, data offset `doff` (words) and a correct checksum.
pub fn tcp(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    flags: u8,
    seq: u32,
    doff: u8,
) -> Vec<u8> {
    let mut t = Vec::with_capacity(20);
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&seq.to_be_bytes());
    t.extend_from_slice(&0u32.to_be_bytes());
    t.push(doff << 4);
    t.push(flags);
    t.extend_from_slice(&64240u16.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 0]);
    let mut sum = csum_add(0, &src.octets());
    sum = csum_add(sum, &dst.octets());
    sum = csum_add(sum, &[0, 6]);
    sum = csum_add(sum, &(t.len() as u16).to_be_bytes());
    let c = csum_fold(csum_add(sum, &t));
    t[16..18].copy_from_slice(&c.to_be_bytes());
    ipv4(src, dst, 6, &t)
}

/// IPv6 header with a claimed payload length (possibly a lie), then `payload`.
pub fn ipv6(src: [u8; 16], dst: [u8; 16], next: u8, claimed_len: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&claimed_len.to_be_bytes());
    p.push(next);
    p.push(255);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(payload);
    p
}

/// ICMPv6 message with a correct checksum, in an IPv6 packet with the true length.
pub fn icmp6(src: [u8; 16], dst: [u8; 16], msg: &[u8]) -> Vec<u8> {
    let mut m = msg.to_vec();
    if m.len() >= 4 {
        m[2] = 0;
        m[3] = 0;
        let mut sum = csum_add(0, &src);
        sum = csum_add(sum, &dst);
        sum = csum_add(sum, &(m.len() as u32).to_be_bytes());
        sum = csum_add(sum, &[0, 0, 0, 58]);
        let c = csum_fold(csum_add(sum, &m));
        m[2..4].copy_from_slice(&c.to_be_bytes());
    }
    ipv6(src, dst, 58, m.len() as u16, &m)
}

pub fn link_local(mac: [u8; 6]) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[0] = 0xfe;
    a[1] = 0x80;
    a[8] = mac[0] ^ 0x02;
    a[9] = mac[1];
    a[10] = mac[2];
    a[11] = 0xff;
    a[12] = 0xfe;
    a[13] = mac[3];
    a[14] = mac[4];
    a[15] = mac[5];
    a
}
