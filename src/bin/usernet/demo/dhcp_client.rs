//! A small DHCPv4 client for the namespaces `usernet demo` sets up, so that they get their
//! address from the network's gateway ([`usernet::gateway::dhcp`]) like any guest would. It
//! lives beside the demo, its only user.
//!
//! # Theory of operation
//!
//! [`acquire`] runs [`acquire_here`] on a helper thread that has joined the target namespace
//! ([`run_in_netns`]), which:
//!
//! 1. reads the interface's MAC ([`usernet::link::netns::hw_addr`]; Ethernet only) and brings
//!    it up;
//! 2. opens a UDP socket bound to `0.0.0.0:68` with `SO_BINDTODEVICE` (so it sends and receives
//!    only on that interface, whatever else the namespace has) and `SO_BROADCAST`;
//! 3. broadcasts a DISCOVER to `255.255.255.255:67` (source `0.0.0.0`: the interface has no
//!    address yet) with the BROADCAST flag set, its MAC as `chaddr`, the hostname (option 12),
//!    a parameter request list and a maximum message size. The flag makes the server broadcast
//!    its replies: a unicast to the offered address would be dropped by the kernel, because the
//!    interface does not have that address yet;
//! 4. takes the first OFFER that matches (BOOTREPLY, our `xid`, our `chaddr`, a server
//!    identifier and an address), then broadcasts a REQUEST for it (options 50 and 54, same `xid`)
//!    and waits for that server's ACK; a NAK starts over with a DISCOVER;
//! 5. configures the interface from the ACK, still inside the namespace, with the library's
//!    [`IfConfig`] (rtnetlink, as for `attach --ip`): the address with its prefix (the kernel
//!    adds the prefix route), the MTU if the server sent one, then the default route; an
//!    address or default route already there is kept, so no helper binary is needed.
//!
//! Each message is retransmitted after 250 ms, then 500 ms, 1 s and every 2 s after that, all
//! within the caller's `timeout`, which bounds the whole exchange: when it runs out, `acquire`
//! fails with a `TimedOut` I/O error naming the step it was waiting for. Every socket wait is a
//! receive timeout no longer than the time left.
//!
//! Messages are built and decoded with `dhcproto` ([`discover`], [`request`], [`parse_reply`]:
//! pure functions, unit-tested against the gateway's own server). Before `dhcproto` sees a reply
//! the fixed header is checked (length, op, `hlen`, `xid`, `chaddr`, magic cookie) and the options
//! area is walked once by the server's own check ([`usernet::gateway::dhcp::scan_options`]),
//! refusing truncated options and the lengths on which `dhcproto` 0.15 `debug_assert!`s; so a
//! malformed or foreign reply is ignored (logged at debug level), never a panic, and the wait
//! goes on.
//!
//! # Limits
//!
//! - One-shot: no renewal, rebinding or RELEASE. [`ClientLease::lease_secs`] says how long the
//!   address is good for; a long-lived user must call [`acquire`] again before it runs out (the
//!   gateway gives the same MAC the same address back).
//! - No ARP probe for address conflicts (no DECLINE): on a usernet network the gateway is the
//!   only DHCP server and the only one handing out addresses.
//! - The DNS servers and domain are returned, not written anywhere: the namespace shares the
//!   host's `/etc`, so writing `resolv.conf` is the caller's business.
//! - A reply without a subnet mask gets the classful one; a non-contiguous mask is refused.
//!   A lease without a lease time (option 51) reports `lease_secs` 0.
//! - An existing default route is kept; an address from an earlier lease stays on the
//!   interface beside the new one (addresses are added, not replaced).

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use dhcproto::v4::{DhcpOption, Flags, HType, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable};
use ipnet::{IpNet, Ipv4Net};
use usernet::gateway::dhcp::scan_options;
use usernet::link::ifconfig::{IfConfig, Route};
use usernet::link::netns::{hw_addr, run_in_netns, set_link_up, validate_ifname};
use usernet::wire::Mac;
use usernet::{Error, Result};

/// What the server gave us, as configured on the interface by [`acquire`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientLease {
    /// The leased address (`yiaddr`).
    pub addr: Ipv4Addr,
    /// Prefix length from the subnet mask (option 1; classful if absent).
    pub prefix_len: u8,
    /// Default router (first address of option 3).
    pub router: Option<Ipv4Addr>,
    /// DNS servers (option 6).
    pub dns: Vec<Ipv4Addr>,
    /// Domain name (option 15).
    pub domain: Option<String>,
    /// Interface MTU (option 26).
    pub mtu: Option<u16>,
    /// Lease time in seconds (option 51; 0 if the server sent none).
    pub lease_secs: u32,
    /// The server that granted it (option 54).
    pub server: Ipv4Addr,
}

/// First retransmission interval; doubled on each retransmission up to [`MAX_RETRANSMIT`].
const FIRST_RETRANSMIT: Duration = Duration::from_millis(250);
/// Longest retransmission interval.
const MAX_RETRANSMIT: Duration = Duration::from_secs(2);
/// Largest DHCP message we accept (and announce in option 57 as an IP datagram size).
const MAX_MESSAGE: usize = 1500;
/// Fixed BOOTP header length; the magic cookie follows it.
const HEADER_LEN: usize = 236;
/// Where the options start (after the magic cookie).
const OPTIONS_OFFSET: usize = HEADER_LEN + 4;
const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];

/// Gets an address for `ifname` in the namespace `netns` (a `/run/netns/NAME` or
/// `/proc/PID/ns/net` path) by DHCP and configures it there: address, prefix, MTU and default
/// route. `hostname` goes in option 12 (the gateway registers it in DNS). Gives up after
/// `timeout`.
pub fn acquire(
    netns: &Path,
    ifname: &str,
    hostname: Option<&str>,
    timeout: Duration,
) -> Result<ClientLease> {
    validate_ifname(ifname)?;
    check_hostname(hostname)?;
    let ifname = ifname.to_string();
    let hostname = hostname.map(str::to_string);
    run_in_netns(netns, move || {
        Ok(acquire_here(&ifname, hostname.as_deref(), timeout))
    })?
}

/// [`acquire`] in the calling thread's own network namespace.
pub fn acquire_here(
    ifname: &str,
    hostname: Option<&str>,
    timeout: Duration,
) -> Result<ClientLease> {
    validate_ifname(ifname)?;
    check_hostname(hostname)?;
    let what = |step: &str| format!("DHCP on {ifname}: {step}");
    let mac = hw_addr(ifname)?;
    set_link_up(ifname)?;
    let sock = client_socket(ifname).map_err(|e| Error::Io(what("opening UDP port 68"), e))?;
    let lease = exchange(&sock, mac, hostname, timeout, ifname)?;
    configure(ifname, &lease)?;
    Ok(lease)
}

fn check_hostname(hostname: Option<&str>) -> Result<()> {
    if let Some(h) = hostname
        && (h.is_empty() || h.len() > 63 || !h.bytes().all(|b| b.is_ascii_graphic()))
    {
        return Err(Error::invalid(
            "hostname",
            format!("{h:?} is not 1-63 printable ASCII characters"),
        ));
    }
    Ok(())
}

/// Runs DISCOVER/OFFER/REQUEST/ACK on `sock` until an ACK or `timeout`.
fn exchange(
    sock: &UdpSocket,
    mac: Mac,
    hostname: Option<&str>,
    timeout: Duration,
    ifname: &str,
) -> Result<ClientLease> {
    let io_err = |step: &str, e: io::Error| Error::Io(format!("DHCP on {ifname}: {step}"), e);
    let start = Instant::now();
    let deadline = start + timeout;
    let xid = random_u32();
    let dst = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
    let mut offer: Option<Offer> = None;
    let mut interval = FIRST_RETRANSMIT;
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let secs = start.elapsed().as_secs().min(u64::from(u16::MAX)) as u16;
        let msg = match &offer {
            None => discover(xid, mac, hostname, secs),
            Some(o) => request(xid, mac, hostname, secs, o),
        }
        .map_err(|e| io_err("encoding", io::Error::other(e)))?;
        sock.send_to(&msg, dst)
            .map_err(|e| io_err("sending to 255.255.255.255:67", e))?;
        let resend_at = (Instant::now() + interval).min(deadline);
        interval = (interval * 2).min(MAX_RETRANSMIT);
        // Wait for a matching reply until it is time to retransmit.
        let mut restart = false;
        loop {
            let now = Instant::now();
            if now >= resend_at {
                break;
            }
            sock.set_read_timeout(Some(resend_at - now))
                .map_err(|e| io_err("socket timeout", e))?;
            let n = match sock.recv_from(&mut buf) {
                Ok((n, _)) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    continue;
                }
                Err(e) => return Err(io_err("receiving", e)),
            };
            let reply = match parse_reply(&buf[..n], xid, mac) {
                Ok(r) => r,
                Err(why) => {
                    tracing::debug!(ifname, "DHCP client: ignoring a reply: {why}");
                    continue;
                }
            };
            match (&offer, reply) {
                (None, Reply::Offer(o)) => {
                    tracing::debug!(ifname, addr = %o.addr, server = %o.server, "DHCP OFFER");
                    offer = Some(o);
                    restart = true;
                    break;
                }
                (Some(o), Reply::Ack(lease))
                    if lease.server == o.server && lease.addr == o.addr =>
                {
                    tracing::debug!(ifname, addr = %lease.addr, "DHCP ACK");
                    return Ok(lease);
                }
                (Some(o), Reply::Nak { server, message })
                    if server.is_none_or(|s| s == o.server) =>
                {
                    tracing::debug!(ifname, ?message, "DHCP NAK; starting over");
                    offer = None;
                    restart = true;
                    // Do not spin on a server that NAKs at once.
                    std::thread::sleep(Duration::from_millis(100).min(resend_at - now));
                    break;
                }
                _ => tracing::debug!(ifname, "DHCP client: ignoring a reply for another state"),
            }
        }
        if restart {
            interval = FIRST_RETRANSMIT;
        }
        if Instant::now() >= deadline {
            let waiting = if offer.is_none() {
                "an OFFER"
            } else {
                "an ACK"
            };
            return Err(io_err(
                "no lease",
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no {waiting} within {:.1} s", timeout.as_secs_f64()),
                ),
            ));
        }
    }
}

/// An OFFER we may request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// The offered address.
    pub addr: Ipv4Addr,
    /// The offering server (option 54).
    pub server: Ipv4Addr,
}

/// A server reply addressed to us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// DHCPOFFER.
    Offer(Offer),
    /// DHCPACK with a lease.
    Ack(ClientLease),
    /// DHCPNAK.
    Nak {
        /// The server identifier, if sent.
        server: Option<Ipv4Addr>,
        /// The server's message (option 56), if sent.
        message: Option<String>,
    },
}

/// The options we ask for (option 55).
const WANTED: [OptionCode; 7] = [
    OptionCode::SubnetMask,
    OptionCode::Router,
    OptionCode::DomainNameServer,
    OptionCode::DomainName,
    OptionCode::InterfaceMtu,
    OptionCode::AddressLeaseTime,
    OptionCode::ServerIdentifier,
];

fn base_message(
    xid: u32,
    mac: Mac,
    hostname: Option<&str>,
    secs: u16,
    kind: MessageType,
) -> Message {
    let unspec = Ipv4Addr::UNSPECIFIED;
    let mut m = Message::new_with_id(xid, unspec, unspec, unspec, unspec, &mac.0);
    m.set_opcode(Opcode::BootRequest)
        .set_htype(HType::Eth)
        .set_secs(secs)
        .set_flags(Flags::default().set_broadcast());
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(kind));
    o.insert(DhcpOption::ParameterRequestList(WANTED.to_vec()));
    o.insert(DhcpOption::MaxMessageSize(MAX_MESSAGE as u16));
    if let Some(h) = hostname {
        o.insert(DhcpOption::Hostname(h.to_string()));
    }
    m
}

/// A DHCPDISCOVER from `mac` with the BROADCAST flag, `secs` seconds into the exchange.
pub fn discover(
    xid: u32,
    mac: Mac,
    hostname: Option<&str>,
    secs: u16,
) -> Result<Vec<u8>, dhcproto::error::EncodeError> {
    base_message(xid, mac, hostname, secs, MessageType::Discover).to_vec()
}

/// A DHCPREQUEST (SELECTING state) for `offer`, with the BROADCAST flag.
pub fn request(
    xid: u32,
    mac: Mac,
    hostname: Option<&str>,
    secs: u16,
    offer: &Offer,
) -> Result<Vec<u8>, dhcproto::error::EncodeError> {
    let mut m = base_message(xid, mac, hostname, secs, MessageType::Request);
    let o = m.opts_mut();
    o.insert(DhcpOption::RequestedIpAddress(offer.addr));
    o.insert(DhcpOption::ServerIdentifier(offer.server));
    m.to_vec()
}

/// Decodes a reply received on port 68 and checks it is for us (BOOTREPLY, `xid`, `mac`).
/// `Err` says why it must be ignored; nothing in `bytes` can make it panic.
pub fn parse_reply(bytes: &[u8], xid: u32, mac: Mac) -> std::result::Result<Reply, String> {
    if bytes.len() < OPTIONS_OFFSET {
        return Err(format!("{} bytes is too short", bytes.len()));
    }
    if bytes.len() > MAX_MESSAGE {
        return Err(format!("{} bytes is too long", bytes.len()));
    }
    // Fixed header, read by offset before dhcproto sees it (RFC 2131 §2).
    if bytes[0] != 2 {
        return Err(format!("op {} is not BOOTREPLY", bytes[0]));
    }
    if bytes[1] != 1 || bytes[2] != 6 {
        return Err(format!(
            "htype {} hlen {} is not Ethernet",
            bytes[1], bytes[2]
        ));
    }
    let got_xid = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    if got_xid != xid {
        return Err(format!("xid {got_xid:#x} is not ours ({xid:#x})"));
    }
    if bytes[28..34] != mac.0 {
        return Err("chaddr is not our MAC".into());
    }
    if bytes[HEADER_LEN..OPTIONS_OFFSET] != MAGIC_COOKIE {
        return Err("no DHCP magic cookie".into());
    }
    scan_options(&bytes[OPTIONS_OFFSET..]).map_err(|e| e.to_string())?;
    let msg = Message::decode(&mut Decoder::new(bytes)).map_err(|e| format!("undecodable: {e}"))?;
    let opts = msg.opts();
    let kind = opts.msg_type().ok_or("no message type (option 53)")?;
    let server = match opts.get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
        _ => None,
    };
    match kind {
        MessageType::Nak => Ok(Reply::Nak {
            server,
            message: match opts.get(OptionCode::Message) {
                Some(DhcpOption::Message(m)) => Some(m.clone()),
                _ => None,
            },
        }),
        MessageType::Offer | MessageType::Ack => {
            let addr = msg.yiaddr();
            if addr.is_unspecified() || addr.is_broadcast() || addr.is_multicast() {
                return Err(format!("{kind:?} without a usable address ({addr})"));
            }
            let server = server.ok_or_else(|| format!("{kind:?} without server identifier"))?;
            if kind == MessageType::Offer {
                return Ok(Reply::Offer(Offer { addr, server }));
            }
            let prefix_len = match opts.get(OptionCode::SubnetMask) {
                Some(DhcpOption::SubnetMask(m)) => {
                    mask_len(*m).ok_or_else(|| format!("subnet mask {m} is not contiguous"))?
                }
                _ => classful(addr),
            };
            let router = match opts.get(OptionCode::Router) {
                Some(DhcpOption::Router(r)) => r.first().copied(),
                _ => None,
            };
            let dns = match opts.get(OptionCode::DomainNameServer) {
                Some(DhcpOption::DomainNameServer(d)) => d.clone(),
                _ => Vec::new(),
            };
            let domain = match opts.get(OptionCode::DomainName) {
                Some(DhcpOption::DomainName(d)) => Some(d.trim_end_matches('\0').to_string()),
                _ => None,
            };
            let mtu = match opts.get(OptionCode::InterfaceMtu) {
                Some(DhcpOption::InterfaceMtu(m)) if *m >= 68 => Some(*m),
                _ => None,
            };
            let lease_secs = match opts.get(OptionCode::AddressLeaseTime) {
                Some(DhcpOption::AddressLeaseTime(t)) => *t,
                _ => 0,
            };
            Ok(Reply::Ack(ClientLease {
                addr,
                prefix_len,
                router,
                dns,
                domain,
                mtu,
                lease_secs,
                server,
            }))
        }
        other => Err(format!("unexpected message type {other:?}")),
    }
}

/// The prefix length of a contiguous netmask.
fn mask_len(mask: Ipv4Addr) -> Option<u8> {
    let m = u32::from(mask);
    (m.leading_ones() == m.count_ones()).then_some(m.count_ones() as u8)
}

/// The classful prefix length of `addr` (RFC 2131 §3.3 leaves a missing mask to the client).
fn classful(addr: Ipv4Addr) -> u8 {
    match addr.octets()[0] {
        0..=127 => 8,
        128..=191 => 16,
        _ => 24,
    }
}

fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    let n = rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty());
    if !matches!(n, Ok(n) if n == b.len()) {
        // Uniqueness, not secrecy, is what matters for an xid.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        return t ^ std::process::id().rotate_left(16);
    }
    u32::from_ne_bytes(b)
}

/// The UDP socket of the client: `0.0.0.0:68` on `ifname` only, broadcast allowed.
fn client_socket(ifname: &str) -> io::Result<UdpSocket> {
    use socket2::{Domain, Socket, Type};
    // Close-on-exec, as socket2 makes every socket.
    let sock = Socket::new(Domain::IPV4, Type::DGRAM, None)?;
    sock.set_broadcast(true)?;
    sock.set_reuse_address(true)?;
    // `ifname` is validated: no NUL, shorter than IFNAMSIZ.
    sock.bind_device(Some(ifname.as_bytes()))?;
    sock.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68).into())?;
    Ok(UdpSocket::from(sock))
}

/// Puts `lease` on `ifname` in the calling thread's namespace (see the module docs): the
/// address with its prefix and the MTU, then the default route, each with
/// [`IfConfig::apply`]. What is already there (a renewed lease) is kept.
fn configure(ifname: &str, lease: &ClientLease) -> Result<()> {
    let what = |step: &str| format!("DHCP on {ifname}: {step}");
    let net = Ipv4Net::new(lease.addr, lease.prefix_len)
        .map_err(|e| Error::invalid("prefix_len", e.to_string()))?;
    let mut addr = IfConfig::default();
    addr.mtu = lease.mtu.map(u32::from);
    addr.addrs = vec![IpNet::V4(net)];
    exists_ok(addr.apply(ifname))
        .map_err(|e| Error::Io(what(&format!("setting address {net}")), e))?;
    if let Some(r) = lease.router {
        let mut route = IfConfig::default();
        route.routes = vec![Route::default_via(IpAddr::V4(r))];
        exists_ok(route.apply(ifname))
            .map_err(|e| Error::Io(what(&format!("default route via {r}")), e))?;
    }
    Ok(())
}

/// `Ok` for "already exists" (an address or default route left by an earlier lease).
fn exists_ok(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use usernet::gateway::dhcp::{DhcpConfig, DhcpServer, ReplyTo};

    const MAC: Mac = Mac([0x02, 0, 0, 0, 0, 0x42]);

    fn server() -> DhcpServer {
        let mut cfg =
            DhcpConfig::for_subnet("10.88.0.0/24".parse().unwrap(), [10, 88, 0, 1].into());
        cfg.mtu = Some(1400);
        cfg.domain = Some("usernet".into());
        DhcpServer::new(cfg).unwrap()
    }

    /// The whole exchange against the gateway's own server, without I/O.
    #[test]
    fn exchange_with_the_gateway_server() {
        let mut srv = server();
        let xid = 0xdead_beef;
        let d = discover(xid, MAC, Some("web"), 0).unwrap();
        let out = srv.handle(&d, 0).unwrap().expect("an OFFER");
        assert_eq!(out.to, ReplyTo::Broadcast, "BROADCAST flag honoured");
        let Reply::Offer(offer) = parse_reply(&out.payload, xid, MAC).unwrap() else {
            panic!("not an offer");
        };
        assert_eq!(offer.server, Ipv4Addr::new(10, 88, 0, 1));
        let r = request(xid, MAC, Some("web"), 1, &offer).unwrap();
        let out = srv.handle(&r, 10).unwrap().expect("an ACK");
        assert_eq!(out.to, ReplyTo::Broadcast);
        let Reply::Ack(lease) = parse_reply(&out.payload, xid, MAC).unwrap() else {
            panic!("not an ack");
        };
        assert_eq!(
            lease,
            ClientLease {
                addr: offer.addr,
                prefix_len: 24,
                router: Some(Ipv4Addr::new(10, 88, 0, 1)),
                dns: vec![Ipv4Addr::new(10, 88, 0, 1)],
                domain: Some("usernet".into()),
                mtu: Some(1400),
                lease_secs: 3600,
                server: Ipv4Addr::new(10, 88, 0, 1),
            }
        );
        assert!(
            srv.leases(10)
                .iter()
                .any(|l| l.hostname.as_deref() == Some("web"))
        );
    }

    #[test]
    fn discover_fields() {
        let d = discover(7, MAC, Some("client"), 3).unwrap();
        let m = Message::decode(&mut Decoder::new(&d)).unwrap();
        assert_eq!(m.opcode(), Opcode::BootRequest);
        assert_eq!(m.xid(), 7);
        assert_eq!(m.secs(), 3);
        assert!(m.flags().broadcast());
        assert_eq!(m.chaddr(), &MAC.0);
        assert_eq!(m.opts().msg_type(), Some(MessageType::Discover));
        assert_eq!(
            m.opts().get(OptionCode::Hostname),
            Some(&DhcpOption::Hostname("client".into()))
        );
    }

    fn reply(kind: MessageType, xid: u32, mac: Mac) -> Message {
        let z = Ipv4Addr::UNSPECIFIED;
        let mut m = Message::new_with_id(xid, z, [10, 0, 0, 9].into(), z, z, &mac.0);
        m.set_opcode(Opcode::BootReply);
        let o = m.opts_mut();
        o.insert(DhcpOption::MessageType(kind));
        o.insert(DhcpOption::ServerIdentifier([10, 0, 0, 1].into()));
        m
    }

    #[test]
    fn ack_built_with_dhcproto() {
        let mut m = reply(MessageType::Ack, 1, MAC);
        let o = m.opts_mut();
        o.insert(DhcpOption::SubnetMask([255, 255, 0, 0].into()));
        o.insert(DhcpOption::Router(vec![
            [10, 0, 0, 1].into(),
            [10, 0, 0, 2].into(),
        ]));
        o.insert(DhcpOption::AddressLeaseTime(60));
        let Reply::Ack(l) = parse_reply(&m.to_vec().unwrap(), 1, MAC).unwrap() else {
            panic!("not an ack");
        };
        assert_eq!(
            (l.addr, l.prefix_len, l.lease_secs),
            ([10, 0, 0, 9].into(), 16, 60)
        );
        assert_eq!(l.router, Some([10, 0, 0, 1].into()));
        assert!(l.dns.is_empty() && l.domain.is_none() && l.mtu.is_none());
        // No mask: classful.
        let m = reply(MessageType::Ack, 1, MAC);
        let Reply::Ack(l) = parse_reply(&m.to_vec().unwrap(), 1, MAC).unwrap() else {
            panic!("not an ack");
        };
        assert_eq!((l.prefix_len, l.lease_secs), (8, 0));
    }

    #[test]
    fn foreign_or_bad_replies_are_refused() {
        let ok = reply(MessageType::Offer, 5, MAC).to_vec().unwrap();
        assert!(matches!(parse_reply(&ok, 5, MAC), Ok(Reply::Offer(_))));
        assert!(parse_reply(&ok, 6, MAC).is_err(), "other xid");
        assert!(
            parse_reply(&ok, 5, Mac([2, 0, 0, 0, 0, 1])).is_err(),
            "other chaddr"
        );
        let mut req = ok.clone();
        req[0] = 1;
        assert!(parse_reply(&req, 5, MAC).is_err(), "a BOOTREQUEST");
        let mut hlen = ok.clone();
        hlen[2] = 200;
        assert!(parse_reply(&hlen, 5, MAC).is_err(), "hlen > 16");
        let mut cookie = ok.clone();
        cookie[HEADER_LEN] = 0;
        assert!(parse_reply(&cookie, 5, MAC).is_err());
        let mut mask = reply(MessageType::Ack, 5, MAC);
        mask.opts_mut()
            .insert(DhcpOption::SubnetMask([255, 0, 255, 0].into()));
        assert!(
            parse_reply(&mask.to_vec().unwrap(), 5, MAC).is_err(),
            "non-contiguous"
        );
        let mut noserver = reply(MessageType::Offer, 5, MAC);
        noserver.opts_mut().remove(OptionCode::ServerIdentifier);
        assert!(parse_reply(&noserver.to_vec().unwrap(), 5, MAC).is_err());
        // Options dhcproto would debug_assert on, and a truncated option.
        for tail in [&[80u8, 1, 0, 255][..], &[94, 2, 0, 0, 255], &[12, 9, b'x']] {
            let mut b = ok[..OPTIONS_OFFSET].to_vec();
            b.extend_from_slice(&[53, 1, 2]);
            b.extend_from_slice(tail);
            assert!(parse_reply(&b, 5, MAC).is_err(), "tail {tail:?}");
        }
    }

    #[test]
    fn nak() {
        let mut m = reply(MessageType::Nak, 5, MAC);
        m.opts_mut().insert(DhcpOption::Message("no".into()));
        assert_eq!(
            parse_reply(&m.to_vec().unwrap(), 5, MAC).unwrap(),
            Reply::Nak {
                server: Some([10, 0, 0, 1].into()),
                message: Some("no".into())
            }
        );
    }

    /// Every truncation and every single-byte corruption of a real ACK is handled without a
    /// panic.
    #[test]
    fn mangled_replies_never_panic() {
        let mut srv = server();
        let d = discover(9, MAC, Some("x"), 0).unwrap();
        let offer = srv.handle(&d, 0).unwrap().unwrap().payload;
        for n in 0..offer.len() {
            let _ = parse_reply(&offer[..n], 9, MAC);
        }
        for i in 0..offer.len() {
            for v in [0u8, 1, 2, 3, 0x7f, 0xff] {
                let mut b = offer.clone();
                b[i] = v;
                let _ = parse_reply(&b, 9, MAC);
            }
        }
    }

    #[test]
    fn masks() {
        assert_eq!(mask_len([255, 255, 255, 0].into()), Some(24));
        assert_eq!(mask_len([0, 0, 0, 0].into()), Some(0));
        assert_eq!(mask_len([255, 255, 255, 255].into()), Some(32));
        assert_eq!(mask_len([255, 0, 255, 0].into()), None);
        assert!(check_hostname(Some("bad name")).is_err());
        assert!(check_hostname(Some("web")).is_ok());
    }
}
