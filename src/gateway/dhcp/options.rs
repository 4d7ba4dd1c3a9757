//! The wire: checks and decoding of a client's message (the options area walked before
//! `dhcproto` reads it), and the options and encoding of a reply.

use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, HType, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};

use super::{
    DhcpError, DhcpServer, HEADER_LEN, IP_UDP_HEADER_LEN, MAGIC_COOKIE, MAX_MESSAGE_LEN,
    MIN_MAX_DATAGRAM, MIN_REPLY_LEN, OPTIONS_OFFSET, malformed,
};
use crate::wire::Mac;

/// A decoded, checked client request.
pub(super) struct Request {
    pub(super) msg: Message,
    pub(super) kind: MessageType,
    pub(super) mac: Mac,
    pub(super) requested: Option<Ipv4Addr>,
    pub(super) server_id: Option<Ipv4Addr>,
    pub(super) hostname: Option<String>,
    /// Largest DHCP message (UDP payload) the client accepts.
    pub(super) max_len: usize,
}

impl DhcpServer {
    // ---- reply construction ----

    /// A BOOTREPLY echoing the request's xid, flags, giaddr, htype and chaddr.
    pub(super) fn reply_header(
        &self,
        req: &Request,
        kind: MessageType,
        yiaddr: Ipv4Addr,
        ciaddr: Ipv4Addr,
    ) -> Message {
        let mut msg = Message::new_with_id(
            req.msg.xid(),
            ciaddr,
            yiaddr,
            Ipv4Addr::UNSPECIFIED,
            req.msg.giaddr(),
            &req.mac.0,
        );
        msg.set_opcode(Opcode::BootReply)
            .set_htype(req.msg.htype())
            .set_flags(req.msg.flags());
        let opts = msg.opts_mut();
        opts.insert(DhcpOption::MessageType(kind));
        opts.insert(DhcpOption::ServerIdentifier(self.cfg.server));
        msg
    }

    /// Network configuration options; lease times only with `lease` (not for INFORM).
    pub(super) fn add_config_options(&self, msg: &mut Message, lease: bool) {
        let cfg = &self.cfg;
        let opts = msg.opts_mut();
        if lease {
            let secs = cfg.lease_secs;
            opts.insert(DhcpOption::AddressLeaseTime(secs));
            opts.insert(DhcpOption::Renewal(secs / 2));
            let t2 = u64::from(secs) * 7 / 8;
            opts.insert(DhcpOption::Rebinding(u32::try_from(t2).unwrap_or(secs)));
        }
        opts.insert(DhcpOption::SubnetMask(cfg.subnet.netmask()));
        opts.insert(DhcpOption::BroadcastAddr(cfg.subnet.broadcast()));
        if let Some(r) = cfg.router {
            opts.insert(DhcpOption::Router(vec![r]));
        }
        if !cfg.dns.is_empty() {
            opts.insert(DhcpOption::DomainNameServer(cfg.dns.clone()));
        }
        if let Some(d) = &cfg.domain {
            opts.insert(DhcpOption::DomainName(d.clone()));
        }
        if !self.search.is_empty() {
            opts.insert(DhcpOption::DomainSearch(self.search.clone()));
        }
        if let Some(mtu) = cfg.mtu {
            opts.insert(DhcpOption::InterfaceMtu(mtu));
        }
    }
}

/// Encodes `msg`, leaving out optional options until it fits `max_len`, and pads it to the
/// BOOTP minimum. `None` only if dhcproto fails to encode (not reachable from input).
pub(super) fn encode_reply(mut msg: Message, max_len: usize) -> Option<Vec<u8>> {
    let droppable = [
        None,
        Some(OptionCode::DomainSearch),
        Some(OptionCode::DomainName),
        Some(OptionCode::InterfaceMtu),
    ];
    let mut buf = Vec::new();
    for drop in droppable {
        if let Some(code) = drop {
            msg.opts_mut().remove(code);
        }
        buf.clear();
        if let Err(e) = msg.encode(&mut Encoder::new(&mut buf)) {
            tracing::error!(error = %e, "dhcp: could not encode reply");
            return None;
        }
        if buf.len() <= max_len {
            break;
        }
    }
    if buf.len() < MIN_REPLY_LEN {
        buf.resize(MIN_REPLY_LEN, 0);
    }
    Some(buf)
}

/// Checks the options area of a DHCP message (what follows the magic cookie; error offsets
/// count from the start of the message) before `dhcproto` decodes it: the TLV structure, which
/// dhcproto does not report (it stops decoding at the first bad option and keeps what it read).
/// Returns which option codes occur. The server checks requests with it, and a DHCP client
/// (the demo's) checks replies the same way.
///
/// Also refuses the lengths on which dhcproto 0.15 `debug_assert!`s (a panic in debug builds):
/// rapid commit (80) not empty, client FQDN (81) under 3 bytes, client network interface (94)
/// not 3 bytes, bulk leasequery times (152-155) not 4 bytes. Lengths are checked per run of
/// adjacent same-code options, which dhcproto concatenates (RFC 3396) before decoding. A
/// missing END option is accepted when every option is complete.
pub fn scan_options(area: &[u8]) -> Result<[bool; 256], DhcpError> {
    let mut seen = [false; 256];
    // The current run of adjacent same-code options: (code, total length, offset).
    let mut run: Option<(u8, usize, usize)> = None;
    let end_run = |run: Option<(u8, usize, usize)>| match run {
        Some((code, len, at)) if !dhcproto_len_ok(code, len) => Err(malformed(format!(
            "option {code} at offset {at} has invalid length {len}"
        ))),
        _ => Ok(()),
    };
    let mut i = 0usize;
    while let Some(&code) = area.get(i) {
        match code {
            0 => {
                end_run(run.take())?;
                i += 1;
            }
            255 => break,
            _ => {
                let Some(&len) = area.get(i + 1) else {
                    return Err(malformed(format!(
                        "option {code} at offset {} has no length byte",
                        OPTIONS_OFFSET + i
                    )));
                };
                let end = i + 2 + usize::from(len);
                if end > area.len() {
                    return Err(malformed(format!(
                        "option {code} at offset {} claims {len} bytes but only {} remain",
                        OPTIONS_OFFSET + i,
                        area.len() - (i + 2)
                    )));
                }
                run = match run {
                    Some((c, total, at)) if c == code => Some((c, total + usize::from(len), at)),
                    prev => {
                        end_run(prev)?;
                        Some((code, usize::from(len), OPTIONS_OFFSET + i))
                    }
                };
                seen[usize::from(code)] = true;
                i = end;
            }
        }
    }
    // A missing END is accepted when every option is complete, like most servers do.
    end_run(run)?;
    Ok(seen)
}

/// Whether dhcproto 0.15 decodes option `code` of (concatenated) length `len` without hitting
/// one of its `debug_assert!`s: rapid commit (80) must be empty, client network interface (94)
/// 3 bytes, bulk leasequery times (152–155) 4 bytes, client FQDN (81) at least 3 bytes.
fn dhcproto_len_ok(code: u8, len: usize) -> bool {
    match code {
        80 => len == 0,
        81 => len >= 3,
        94 => len == 3,
        152..=155 => len == 4,
        _ => true,
    }
}

/// Decodes and checks a client message. `Ok(None)` for a BOOTREPLY.
pub(super) fn parse_request(payload: &[u8]) -> Result<Option<Request>, DhcpError> {
    if payload.len() < OPTIONS_OFFSET {
        return Err(malformed(format!(
            "{} bytes is shorter than the {OPTIONS_OFFSET}-byte header and magic cookie",
            payload.len()
        )));
    }
    if payload.len() > MAX_MESSAGE_LEN {
        return Err(malformed(format!(
            "{} bytes exceeds the {MAX_MESSAGE_LEN}-byte limit",
            payload.len()
        )));
    }
    let cookie = payload.get(HEADER_LEN..OPTIONS_OFFSET).unwrap_or_default();
    if cookie != MAGIC_COOKIE {
        return Err(malformed(format!(
            "magic cookie {cookie:02x?} is not 63:82:53:63"
        )));
    }
    let seen = scan_options(payload.get(OPTIONS_OFFSET..).unwrap_or_default())?;
    let msg = Message::decode(&mut Decoder::new(payload))
        .map_err(|e| malformed(format!("dhcproto could not decode it: {e}")))?;
    match msg.opcode() {
        Opcode::BootRequest => {}
        Opcode::BootReply => return Ok(None),
        Opcode::Unknown(op) => {
            return Err(malformed(format!(
                "op {op} is neither BOOTREQUEST (1) nor BOOTREPLY (2)"
            )));
        }
    }
    // Checked before `chaddr()`, which slices `[..hlen]` and panics for hlen > 16.
    if msg.hlen() != 6 {
        return Err(malformed(format!(
            "hlen {} is not 6 (Ethernet)",
            msg.hlen()
        )));
    }
    if msg.htype() != HType::Eth {
        return Err(malformed(format!(
            "htype {:?} is not Ethernet",
            msg.htype()
        )));
    }
    let mac = match <[u8; 6]>::try_from(msg.chaddr()) {
        Ok(b) => Mac(b),
        Err(_) => return Err(malformed("chaddr is not 6 bytes")),
    };
    if !mac.is_valid_source() {
        return Err(malformed(format!(
            "chaddr {mac} is not a unicast MAC address"
        )));
    }
    // An option dhcproto could not decode ends its decoding: everything after it is lost.
    // Refuse the message if that lost something the server acts on.
    for code in [
        OptionCode::MessageType,
        OptionCode::RequestedIpAddress,
        OptionCode::ServerIdentifier,
        OptionCode::MaxMessageSize,
    ] {
        if seen[usize::from(u8::from(code))] && !msg.opts().contains(code) {
            return Err(malformed(format!(
                "option {} is present but could not be decoded (bad length or an earlier \
                 undecodable option)",
                u8::from(code)
            )));
        }
    }
    let opts = msg.opts();
    let kind = opts
        .msg_type()
        .ok_or_else(|| malformed(format!("no message type option (53) from {mac}")))?;
    let requested = match opts.get(OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
        _ => None,
    };
    let server_id = match opts.get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
        _ => None,
    };
    let hostname = match opts.get(OptionCode::Hostname) {
        Some(DhcpOption::Hostname(h)) => Some(h.clone()),
        _ => None,
    };
    let max_datagram = match opts.get(OptionCode::MaxMessageSize) {
        Some(DhcpOption::MaxMessageSize(n)) => (*n).max(MIN_MAX_DATAGRAM),
        _ => MIN_MAX_DATAGRAM,
    };
    Ok(Some(Request {
        kind,
        mac,
        requested,
        server_id,
        hostname,
        max_len: usize::from(max_datagram) - IP_UDP_HEADER_LEN,
        msg,
    }))
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    /// A valid DISCOVER with `opts` as the raw options area.
    fn raw_with_options(opts: &[u8]) -> Vec<u8> {
        let mut b = enc(&msg(mac(1), MessageType::Discover));
        b.truncate(OPTIONS_OFFSET);
        b.extend_from_slice(opts);
        b
    }

    #[test]
    fn malformed_inputs_are_errors() {
        let mut s = server();
        let good = enc(&msg(mac(1), MessageType::Discover));
        let mut cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("10 bytes", good[..10].to_vec()),
            ("header only", good[..239].to_vec()),
            // 53 ok, then option 12 claiming 200 bytes with 5 present.
            (
                "option past end",
                raw_with_options(&[53, 1, 1, 12, 200, b'a', b'b', b'c', b'd', b'e']),
            ),
            ("length byte missing", raw_with_options(&[53, 1, 1, 12])),
            ("10 KB garbage", raw_with_options(&[0xab; 10 * 1024])),
            ("3 KB garbage", raw_with_options(&[0x7f; 3 * 1024])),
            ("no message type", raw_with_options(&[12, 1, b'x', 255])),
            // Message type with a bad length: dhcproto would drop it silently.
            ("bad option 53", raw_with_options(&[53, 0, 255])),
            (
                "bad option 50",
                raw_with_options(&[50, 3, 1, 2, 3, 53, 1, 1, 255]),
            ),
        ];
        let mut bad_op = good.clone();
        bad_op[0] = 3;
        cases.push(("wrong op", bad_op));
        for hlen in [0u8, 16, 17, 200, 255] {
            let mut b = good.clone();
            b[2] = hlen;
            cases.push(("hlen", b));
        }
        let mut bad_magic = good.clone();
        bad_magic[236] = 0;
        cases.push(("magic", bad_magic));
        let mut multicast = good.clone();
        multicast[28] = 0x01;
        cases.push(("multicast chaddr", multicast));
        let n = cases.len() as u64;
        for (what, b) in cases {
            match s.handle(&b, T0) {
                Err(DhcpError::Malformed(m)) => assert!(!m.is_empty(), "{what}"),
                other => panic!("{what}: expected Malformed, got {other:?}"),
            }
        }
        assert_eq!(s.stats().malformed, n);
        assert_eq!(s.stats().discover, 0);
        assert!(s.leases(T0).is_empty());
        // A BOOTREPLY (e.g. another server's reply) is ignored, not an error.
        let mut reply = good.clone();
        reply[0] = 2;
        assert_eq!(s.handle(&reply, T0), Ok(None));
        // A message without END but with complete options is accepted.
        assert!(
            s.handle(&raw_with_options(&[53, 1, 1]), T0)
                .unwrap()
                .is_some()
        );
    }

    /// Deterministic fuzzing: mutations of valid messages never panic.
    #[test]
    fn mutations_never_panic() {
        let mut s = server();
        let mut seeds = vec![enc(&msg(mac(1), MessageType::Discover))];
        let mut r = select(mac(2), ip(9), Some("fuzz"));
        r.opts_mut().insert(DhcpOption::MaxMessageSize(1500));
        r.opts_mut()
            .insert(DhcpOption::ParameterRequestList(vec![OptionCode::Router]));
        seeds.push(enc(&r));
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..20_000u64 {
            let mut b = seeds[(i % 2) as usize].clone();
            for _ in 0..(1 + rnd() % 8) {
                let len = b.len();
                match rnd() % 4 {
                    0 => {
                        let at = rnd() as usize % len;
                        b[at] = rnd() as u8;
                    }
                    1 => {
                        let at = OPTIONS_OFFSET + rnd() as usize % (len - OPTIONS_OFFSET).max(1);
                        b.truncate(at.min(len));
                    }
                    2 => b.extend((0..rnd() % 64).map(|_| rnd() as u8)),
                    _ => {
                        let at = OPTIONS_OFFSET.min(len) + rnd() as usize % 16;
                        if at < b.len() {
                            b[at] = rnd() as u8;
                        }
                    }
                }
            }
            if let Ok(Some(out)) = s.handle(&b, T0 + i * 1000) {
                assert!(out.payload.len() >= MIN_REPLY_LEN);
                dec(&out.payload);
            }
            s.expire(T0 + i * 1000);
        }
    }

    /// Every option code with short lengths and varied contents: no panic (dhcproto has
    /// `debug_assert!`s on some lengths), and a message is either handled or Malformed.
    #[test]
    fn every_option_code_and_length_is_safe() {
        let mut s = server();
        let fills: [fn(usize) -> u8; 3] = [|_| 0, |_| 0xff, |i| (i * 37 + 11) as u8];
        for code in 1..=254u8 {
            for len in 0..=18usize {
                for fill in fills {
                    for twice in [false, true] {
                        let mut o = vec![53, 1, 1, code, len as u8];
                        o.extend((0..len).map(fill));
                        if twice {
                            o.extend([code, 1, fill(len)]);
                        }
                        o.push(255);
                        let _ = s.handle(&raw_with_options(&o), T0);
                    }
                }
            }
        }
        // Lengths dhcproto would assert on are refused up front.
        for o in [&[80u8, 1, 0][..], &[94, 2, 1, 2], &[152, 3, 1, 2, 3]] {
            let mut v = vec![53, 1, 1];
            v.extend_from_slice(o);
            assert!(matches!(
                s.handle(&raw_with_options(&v), T0),
                Err(DhcpError::Malformed(_))
            ));
        }
        // ... but rapid commit as clients send it (empty) is fine.
        assert!(
            s.handle(&raw_with_options(&[53, 1, 1, 80, 0, 255]), T0)
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn oversized_reply_drops_search_list() {
        let mut cfg = base_cfg();
        cfg.search = (0..12)
            .map(|i| format!("domain-number-{i}.some-long-zone.example.org"))
            .collect();
        let mut s = DhcpServer::new(cfg).unwrap();
        let (offer, out) = discover(&mut s, mac(1), T0).unwrap();
        assert!(out.payload.len() <= 576 - 28, "{}", out.payload.len());
        assert!(opt(&offer, OptionCode::DomainSearch).is_none());
        assert!(opt(&offer, OptionCode::DomainName).is_some());
        // A client announcing a larger maximum gets the full list.
        let mut d = msg(mac(2), MessageType::Discover);
        d.opts_mut().insert(DhcpOption::MaxMessageSize(1500));
        let (offer, out) = send(&mut s, &d, T0).unwrap();
        assert!(out.payload.len() > 576 - 28);
        assert!(opt(&offer, OptionCode::DomainSearch).is_some());
    }
}
