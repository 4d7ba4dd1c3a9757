//! Interface configuration over rtnetlink: bring links up, set MTU, add addresses and routes.
//!
//! Messages are built with the rust-netlink crates (`netlink-packet-route` for the route family,
//! `netlink-sys` for the socket) rather than by running `ip`, so `usernet run` configures the
//! namespace it creates without any helper binary. Every request asks for an ACK, and a NACK
//! comes back as the kernel's errno, naming the operation.

use std::io;
use std::net::IpAddr;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope,
};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// An rtnetlink socket in the calling thread's network namespace.
pub struct Rtnl {
    sock: Socket,
    seq: u32,
}

impl std::fmt::Debug for Rtnl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rtnl").field("seq", &self.seq).finish()
    }
}

impl Rtnl {
    /// Opens the socket.
    pub fn open() -> io::Result<Rtnl> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        Ok(Rtnl { sock, seq: 1 })
    }

    fn request(&mut self, what: &str, msg: RouteNetlinkMessage, extra: u16) -> io::Result<()> {
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | extra;
        self.seq = self.seq.wrapping_add(1);
        header.sequence_number = self.seq;
        let mut m = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        m.finalize();
        let mut buf = vec![0u8; m.buffer_len()];
        m.serialize(&mut buf);
        self.sock.send(&buf, 0)?;
        loop {
            let (data, _) = self.sock.recv_from_full()?;
            let mut off = 0;
            while off < data.len() {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[off..])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = reply.header.length as usize;
                if reply.header.sequence_number == self.seq
                    && let NetlinkPayload::Error(e) = reply.payload
                {
                    return if e.code.is_none() {
                        Ok(())
                    } else {
                        let err = e.to_io();
                        Err(io::Error::new(err.kind(), format!("{what}: {err}")))
                    };
                }
                if len == 0 {
                    break;
                }
                off += len;
            }
        }
    }

    /// Sets a link up, and its MTU if given.
    pub fn link_up(&mut self, index: u32, mtu: Option<u32>) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        if let Some(mtu) = mtu {
            m.attributes.push(LinkAttribute::Mtu(mtu));
        }
        self.request(
            &format!("set link {index} up"),
            RouteNetlinkMessage::SetLink(m),
            0,
        )
    }

    /// Sets a link's MAC address (the link should be down).
    pub fn set_mac(&mut self, index: u32, mac: [u8; 6]) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::Address(mac.to_vec()));
        self.request(
            &format!("set link {index} address"),
            RouteNetlinkMessage::SetLink(m),
            0,
        )
    }

    /// Adds `addr/prefix` to the link with `index`.
    pub fn add_address(&mut self, index: u32, addr: IpAddr, prefix: u8) -> io::Result<()> {
        let mut m = AddressMessage::default();
        m.header.family = match addr {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        m.header.prefix_len = prefix;
        m.header.scope = AddressScope::Universe;
        m.header.index = index;
        m.attributes.push(AddressAttribute::Local(addr));
        m.attributes.push(AddressAttribute::Address(addr));
        if addr.is_ipv6() {
            // Usable at once: usernet hands the address out, nobody else on the link has it
            // (port security), so duplicate address detection would only delay the guest.
            m.header.flags = AddressHeaderFlags::Nodad;
            m.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        self.request(
            &format!("add address {addr}/{prefix}"),
            RouteNetlinkMessage::NewAddress(m),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Adds a route to `dst` via `gw` (same family).
    pub fn add_route(&mut self, dst: ipnet::IpNet, gw: IpAddr) -> io::Result<()> {
        let mut m = RouteMessage::default();
        m.header.address_family = match gw {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        m.header.destination_prefix_length = dst.prefix_len();
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.protocol = RouteProtocol::Static;
        m.header.scope = RouteScope::Universe;
        m.header.kind = RouteType::Unicast;
        if dst.prefix_len() > 0 {
            m.attributes
                .push(RouteAttribute::Destination(RouteAddress::from(
                    dst.network(),
                )));
        }
        m.attributes
            .push(RouteAttribute::Gateway(RouteAddress::from(gw)));
        self.request(
            &format!("add route {dst} via {gw}"),
            RouteNetlinkMessage::NewRoute(m),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Sends a dump request and collects every message of the answer.
    fn dump(&mut self, msg: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        self.seq = self.seq.wrapping_add(1);
        header.sequence_number = self.seq;
        let mut m = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        m.finalize();
        let mut buf = vec![0u8; m.buffer_len()];
        m.serialize(&mut buf);
        self.sock.send(&buf, 0)?;
        let mut out = Vec::new();
        loop {
            let (data, _) = self.sock.recv_from_full()?;
            let mut off = 0;
            while off < data.len() {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[off..])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = reply.header.length as usize;
                if reply.header.sequence_number == self.seq {
                    match reply.payload {
                        NetlinkPayload::Done(_) => return Ok(out),
                        NetlinkPayload::Error(e) => {
                            return Err(e.to_io());
                        }
                        NetlinkPayload::InnerMessage(m) => out.push(m),
                        _ => {}
                    }
                }
                if len == 0 {
                    break;
                }
                off += len;
            }
        }
    }

    /// The MTU of the interface that holds `addr` (an address configured on it), if any.
    pub fn mtu_of_address(&mut self, addr: IpAddr) -> io::Result<Option<u32>> {
        let mut am = AddressMessage::default();
        am.header.family = match addr {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        let index = self
            .dump(RouteNetlinkMessage::GetAddress(am))?
            .into_iter()
            .find_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a)
                    if a.attributes.iter().any(|at| {
                        matches!(at, AddressAttribute::Local(x) | AddressAttribute::Address(x) if *x == addr)
                    }) =>
                {
                    Some(a.header.index)
                }
                _ => None,
            });
        let Some(index) = index else {
            return Ok(None);
        };
        let mtu = self
            .dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))?
            .into_iter()
            .find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) if l.header.index == index => {
                    l.attributes.iter().find_map(|at| match at {
                        LinkAttribute::Mtu(m) => Some(*m),
                        _ => None,
                    })
                }
                _ => None,
            });
        Ok(mtu)
    }
}
