//! The server's state machine: [`DhcpServer::handle`] decodes a message, dispatches it to the
//! handler of its type (DISCOVER, REQUEST, RELEASE, DECLINE, INFORM) and encodes the reply;
//! see the diagram in the module documentation.

use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, Message, MessageType};

use super::options::{Request, encode_reply, parse_request};
use super::{
    Binding, DECLINE_HOLD_MS, DhcpConfig, DhcpError, DhcpOutput, DhcpServer, DhcpStats, LeaseState,
    NameEvent, OFFER_HOLD_MS, ReplyTo, malformed,
};
use crate::wire::Mac;

/// A built reply, before encoding.
struct Reply {
    msg: Message,
    to: ReplyTo,
    max_len: usize,
}

impl DhcpServer {
    /// Sets the addresses that other clients use (owned by other ports): the next messages
    /// handled neither offer nor acknowledge them.
    pub fn set_foreign(&mut self, foreign: std::collections::HashSet<Ipv4Addr>) {
        self.foreign = foreign;
    }

    /// Sets the interface MTU the next replies announce (option 26).
    pub fn set_mtu(&mut self, mtu: u16) {
        self.cfg.mtu = Some(mtu);
    }

    /// The validated configuration (subnet normalised, static hostnames sanitised).
    pub fn config(&self) -> &DhcpConfig {
        &self.cfg
    }

    /// Handles one DHCP message (the UDP payload a client sent to port 67).
    ///
    /// `Ok(None)` means nothing to send: a RELEASE or DECLINE, a REQUEST for another server, a
    /// BOOTREPLY, a message type a server does not answer, or a DISCOVER when the pool is
    /// exhausted. `Err(Malformed)` (counted in [`DhcpStats::malformed`]) for input that is not a
    /// well-formed DHCP request: too short or too long, wrong op code, bad magic cookie,
    /// `hlen != 6`, a non-unicast `chaddr`, an option running past the end, an undecodable
    /// essential option, no message type.
    pub fn handle(&mut self, payload: &[u8], now_ms: u64) -> Result<Option<DhcpOutput>, DhcpError> {
        self.purge(now_ms);
        let req = match parse_request(payload) {
            Ok(Some(req)) => req,
            Ok(None) => return Ok(None),
            Err(e) => {
                self.stats.malformed += 1;
                tracing::debug!(error = %e, len = payload.len(), "dhcp: rejected message");
                return Err(e);
            }
        };
        let mut names = Vec::new();
        let reply = match req.kind {
            MessageType::Discover => self.discover(&req, now_ms),
            MessageType::Request => self.request(&req, now_ms, &mut names)?,
            MessageType::Release => {
                self.release(&req, &mut names);
                None
            }
            MessageType::Decline => {
                self.decline(&req, now_ms, &mut names);
                None
            }
            MessageType::Inform => Some(self.inform(&req)),
            other => {
                tracing::debug!(mac = %req.mac, kind = ?other, "dhcp: ignoring message type");
                None
            }
        };
        let Some(reply) = reply else {
            self.pending.append(&mut names);
            return Ok(None);
        };
        let Some(payload) = encode_reply(reply.msg, reply.max_len) else {
            self.pending.append(&mut names);
            return Ok(None);
        };
        let mut all = std::mem::take(&mut self.pending);
        all.append(&mut names);
        Ok(Some(DhcpOutput {
            payload,
            to: reply.to,
            names: all,
        }))
    }

    /// Name events queued by messages that got no reply (RELEASE, DECLINE) or by lazy expiry,
    /// for a caller that wants them before the next reply or [`DhcpServer::expire`].
    pub fn drain_names(&mut self) -> Vec<NameEvent> {
        std::mem::take(&mut self.pending)
    }

    /// Message counters.
    pub fn stats(&self) -> DhcpStats {
        self.stats
    }

    // ---- message handlers ----

    fn discover(&mut self, req: &Request, now: u64) -> Option<Reply> {
        self.stats.discover += 1;
        let Some(ip) = self.choose_offer(req.mac, req.requested) else {
            self.stats.pool_exhausted += 1;
            tracing::warn!(mac = %req.mac, "dhcp: pool exhausted, DISCOVER unanswered");
            return None;
        };
        let mut names = Vec::new();
        match self.bindings.get_mut(&ip) {
            Some(b) if b.mac == req.mac => {
                if b.state == LeaseState::Offered {
                    b.expires_ms = now.saturating_add(OFFER_HOLD_MS);
                }
            }
            _ => {
                self.drop_mac(req.mac, &mut names);
                self.drop_ip(ip, &mut names);
                self.insert_binding(
                    ip,
                    Binding {
                        mac: req.mac,
                        state: LeaseState::Offered,
                        expires_ms: now.saturating_add(OFFER_HOLD_MS),
                        name: None,
                    },
                );
            }
        }
        self.pending.append(&mut names);
        self.stats.offer += 1;
        tracing::debug!(mac = %req.mac, %ip, "dhcp: OFFER");
        let mut msg = self.reply_header(req, MessageType::Offer, ip, Ipv4Addr::UNSPECIFIED);
        self.add_config_options(&mut msg, true);
        let to = reply_to(&req.msg, ip, req.mac);
        Some(Reply {
            msg,
            to,
            max_len: req.max_len,
        })
    }

    fn request(
        &mut self,
        req: &Request,
        now: u64,
        names: &mut Vec<NameEvent>,
    ) -> Result<Option<Reply>, DhcpError> {
        self.stats.request += 1;
        let ciaddr = req.msg.ciaddr();
        let ip = if let Some(sid) = req.server_id {
            if sid != self.cfg.server {
                // SELECTING another server: withdraw our offer, stay silent.
                if let Some(&ip) = self.by_mac.get(&req.mac)
                    && self
                        .bindings
                        .get(&ip)
                        .is_some_and(|b| b.state == LeaseState::Offered)
                {
                    self.drop_ip(ip, names);
                }
                tracing::debug!(mac = %req.mac, server = %sid, "dhcp: client chose another server");
                return Ok(None);
            }
            // SELECTING us.
            match req
                .requested
                .or((!ciaddr.is_unspecified()).then_some(ciaddr))
            {
                Some(ip) => ip,
                None => {
                    self.stats.malformed += 1;
                    return Err(malformed(format!(
                        "REQUEST from {} names this server but no address (option 50 or ciaddr)",
                        req.mac
                    )));
                }
            }
        } else if !ciaddr.is_unspecified() {
            // RENEWING (unicast) or REBINDING (broadcast).
            ciaddr
        } else if let Some(ip) = req.requested {
            // INIT-REBOOT.
            ip
        } else {
            self.stats.malformed += 1;
            return Err(malformed(format!(
                "REQUEST from {} has no server identifier, requested address or ciaddr",
                req.mac
            )));
        };
        match self.check(req.mac, ip) {
            Ok(()) => {
                self.commit(req, ip, now, names);
                self.stats.ack += 1;
                tracing::debug!(mac = %req.mac, %ip, "dhcp: ACK");
                let mut msg = self.reply_header(req, MessageType::Ack, ip, ciaddr);
                self.add_config_options(&mut msg, true);
                Ok(Some(Reply {
                    to: reply_to(&req.msg, ip, req.mac),
                    msg,
                    max_len: req.max_len,
                }))
            }
            Err(why) => {
                self.stats.nak += 1;
                tracing::debug!(mac = %req.mac, %ip, reason = why.text(), "dhcp: NAK");
                let mut msg = self.reply_header(
                    req,
                    MessageType::Nak,
                    Ipv4Addr::UNSPECIFIED,
                    Ipv4Addr::UNSPECIFIED,
                );
                msg.opts_mut()
                    .insert(DhcpOption::Message(why.text().to_string()));
                Ok(Some(Reply {
                    msg,
                    to: ReplyTo::Broadcast,
                    max_len: req.max_len,
                }))
            }
        }
    }

    fn release(&mut self, req: &Request, names: &mut Vec<NameEvent>) {
        self.stats.release += 1;
        if req.server_id.is_some_and(|s| s != self.cfg.server) {
            return;
        }
        let ip = req.msg.ciaddr();
        // A reservation is usernet's, not the client's, to give back.
        if self
            .bindings
            .get(&ip)
            .is_some_and(|b| b.mac == req.mac && b.state != LeaseState::Reserved)
        {
            tracing::debug!(mac = %req.mac, %ip, "dhcp: RELEASE");
            self.drop_ip(ip, names);
        }
    }

    fn decline(&mut self, req: &Request, now: u64, names: &mut Vec<NameEvent>) {
        self.stats.decline += 1;
        if req.server_id.is_some_and(|s| s != self.cfg.server) {
            return;
        }
        let Some(ip) = req.requested else {
            return;
        };
        // Only the client an address was given to may decline it (no pool draining by others).
        if self
            .bindings
            .get(&ip)
            .is_none_or(|b| b.mac != req.mac || b.state == LeaseState::Reserved)
        {
            return;
        }
        tracing::warn!(mac = %req.mac, %ip, "dhcp: DECLINE, address in use on the link");
        self.drop_ip(ip, names);
        let until = now.saturating_add(DECLINE_HOLD_MS);
        self.declined.insert(ip, until);
        self.next_deadline = self.next_deadline.min(until);
        if self.prev_by_ip.remove(&ip).is_some() && self.prev_by_mac.get(&req.mac) == Some(&ip) {
            self.prev_by_mac.remove(&req.mac);
        }
    }

    fn inform(&mut self, req: &Request) -> Reply {
        self.stats.inform += 1;
        self.stats.ack += 1;
        let ciaddr = req.msg.ciaddr();
        let mut msg = self.reply_header(req, MessageType::Ack, Ipv4Addr::UNSPECIFIED, ciaddr);
        self.add_config_options(&mut msg, false);
        Reply {
            msg,
            to: reply_to(&req.msg, Ipv4Addr::UNSPECIFIED, req.mac),
            max_len: req.max_len,
        }
    }
}

/// RFC 2131 §4.1 destination (no relays): NAKs are handled by the caller; `ciaddr` set →
/// unicast to it; broadcast flag → broadcast; no address to send to → broadcast; else unicast
/// to `yiaddr` at `chaddr`.
fn reply_to(req: &Message, yiaddr: Ipv4Addr, mac: Mac) -> ReplyTo {
    let ciaddr = req.ciaddr();
    if !ciaddr.is_unspecified() {
        ReplyTo::Unicast { ip: ciaddr, mac }
    } else if req.flags().broadcast() || yiaddr.is_unspecified() {
        ReplyTo::Broadcast
    } else {
        ReplyTo::Unicast { ip: yiaddr, mac }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::{MIN_REPLY_LEN, sanitize_hostname};
    use super::*;
    use dhcproto::v4;
    use dhcproto::v4::{Opcode, OptionCode};

    #[test]
    fn full_dora() {
        let mut s = server();
        let mut d = msg(mac(1), MessageType::Discover);
        d.set_xid(0x0102_0304).set_giaddr(Ipv4Addr::UNSPECIFIED);
        let (offer, out) = send(&mut s, &d, T0).unwrap();
        assert_eq!(offer.opcode(), Opcode::BootReply);
        assert_eq!(offer.xid(), 0x0102_0304);
        assert_eq!(offer.chaddr(), &mac(1).0);
        assert_eq!(offer.yiaddr(), ip(2));
        assert!(out.payload.len() >= MIN_REPLY_LEN);
        assert_eq!(
            out.to,
            ReplyTo::Unicast {
                ip: ip(2),
                mac: mac(1)
            }
        );
        assert!(out.names.is_empty());
        let want = [
            DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)),
            DhcpOption::Router(vec![SERVER]),
            DhcpOption::DomainNameServer(vec![SERVER]),
            DhcpOption::DomainName("usernet".into()),
            DhcpOption::InterfaceMtu(1400),
            DhcpOption::AddressLeaseTime(3600),
            DhcpOption::ServerIdentifier(SERVER),
            DhcpOption::Renewal(1800),
            DhcpOption::Rebinding(3150),
            DhcpOption::BroadcastAddr(ip(255)),
        ];
        for w in want {
            assert_eq!(opt(&offer, OptionCode::from(&w)), Some(&w));
        }
        match opt(&offer, OptionCode::DomainSearch) {
            Some(DhcpOption::DomainSearch(names)) => {
                let got: Vec<String> = names.iter().map(|n| n.to_ascii()).collect();
                assert_eq!(got, ["usernet.", "example.com."]);
            }
            other => panic!("no search list: {other:?}"),
        }
        let leases = s.leases(T0);
        assert_eq!(leases.len(), 1);
        assert_eq!(leases[0].state, LeaseState::Offered);
        assert_eq!(leases[0].expires_in_secs, 30);

        let (ack, out) = send(&mut s, &select(mac(1), ip(2), Some("web")), T0 + 100).unwrap();
        assert_eq!(kind(&ack), MessageType::Ack);
        assert_eq!(ack.yiaddr(), ip(2));
        assert_eq!(ack.xid(), 0xdead_beef);
        assert_eq!(
            opt(&ack, OptionCode::AddressLeaseTime),
            Some(&DhcpOption::AddressLeaseTime(3600))
        );
        assert_eq!(
            out.to,
            ReplyTo::Unicast {
                ip: ip(2),
                mac: mac(1)
            }
        );
        assert_eq!(
            out.names,
            [NameEvent::Register {
                name: "web".into(),
                ip: ip(2)
            }]
        );
        let l = &s.leases(T0 + 100)[0];
        assert_eq!(
            (
                l.mac,
                l.ip,
                l.hostname.as_deref(),
                l.state,
                l.is_static,
                l.expires_in_secs
            ),
            (mac(1), ip(2), Some("web"), LeaseState::Bound, false, 3600)
        );
        let st = s.stats();
        assert_eq!(
            (st.discover, st.offer, st.request, st.ack, st.nak),
            (1, 1, 1, 1, 0)
        );
        let json = serde_json::to_string(l).unwrap();
        assert!(
            json.contains("\"state\":\"bound\"") && json.contains("02:00:00:00:00:01"),
            "{json}"
        );
    }

    #[test]
    fn renew_extends_lease() {
        let mut s = server();
        let (a, _) = dora(&mut s, mac(1), Some("host"), T0);
        let t1 = T0 + 1_800_000;
        let mut r = msg(mac(1), MessageType::Request);
        r.set_ciaddr(a);
        let (ack, out) = send(&mut s, &r, t1).unwrap();
        assert_eq!(kind(&ack), MessageType::Ack);
        assert_eq!((ack.yiaddr(), ack.ciaddr()), (a, a));
        assert_eq!(out.to, ReplyTo::Unicast { ip: a, mac: mac(1) });
        assert!(
            out.names.is_empty(),
            "no re-registration of an unchanged name"
        );
        assert_eq!(s.leases(t1)[0].expires_in_secs, 3600);
        // Past the original expiry the lease is still there.
        let t2 = T0 + 3_700_000;
        assert!(s.expire(t2).is_empty());
        assert_eq!(s.leases(t2)[0].ip, a);
        // Renewing an address held by someone else is refused.
        dora(&mut s, mac(2), None, t2);
        let mut r = msg(mac(1), MessageType::Request);
        r.set_ciaddr(ip(3));
        let (nak, out) = send(&mut s, &r, t2).unwrap();
        assert_eq!(kind(&nak), MessageType::Nak);
        assert_eq!(out.to, ReplyTo::Broadcast);
    }

    #[test]
    fn init_reboot() {
        let mut s = server();
        let (a, _) = dora(&mut s, mac(1), None, T0);
        let reboot = |m: Mac, addr: Ipv4Addr| {
            let mut r = msg(m, MessageType::Request);
            r.opts_mut().insert(DhcpOption::RequestedIpAddress(addr));
            r
        };
        // Wrong subnet (a laptop moved networks): NAK, broadcast, with a reason.
        let (nak, out) = send(&mut s, &reboot(mac(1), Ipv4Addr::new(192, 168, 1, 50)), T0).unwrap();
        assert_eq!(kind(&nak), MessageType::Nak);
        assert_eq!(nak.yiaddr(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(
            opt(&nak, OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(SERVER))
        );
        assert!(
            matches!(opt(&nak, OptionCode::Message), Some(DhcpOption::Message(t)) if t.contains("subnet"))
        );
        assert_eq!(out.to, ReplyTo::Broadcast);
        // Its own address: ACK.
        let (ack, _) = send(&mut s, &reboot(mac(1), a), T0).unwrap();
        assert_eq!((kind(&ack), ack.yiaddr()), (MessageType::Ack, a));
        // Someone else's: NAK. Free and in the pool: ACK (e.g. after a server restart).
        assert_eq!(
            kind(&send(&mut s, &reboot(mac(2), a), T0).unwrap().0),
            MessageType::Nak
        );
        let (ack, _) = send(&mut s, &reboot(mac(2), ip(77)), T0).unwrap();
        assert_eq!((kind(&ack), ack.yiaddr()), (MessageType::Ack, ip(77)));
        // The server's own address, or an address outside the pool: NAK.
        assert_eq!(
            kind(&send(&mut s, &reboot(mac(3), SERVER), T0).unwrap().0),
            MessageType::Nak
        );
        assert_eq!(s.stats().nak, 3);
    }

    #[test]
    fn selecting_another_server_withdraws_offer() {
        let mut s = server();
        let (offer, _) = discover(&mut s, mac(1), T0).unwrap();
        let mut r = select(mac(1), offer.yiaddr(), None);
        r.opts_mut()
            .insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 88, 0, 254)));
        assert!(send(&mut s, &r, T0).is_none());
        assert!(s.leases(T0).is_empty());
        assert_eq!(discover(&mut s, mac(2), T0).unwrap().0.yiaddr(), ip(2));
    }

    #[test]
    fn inform_gets_options_without_address() {
        let mut s = server();
        let mut m = msg(mac(1), MessageType::Inform);
        m.set_ciaddr(ip(77));
        let (ack, out) = send(&mut s, &m, T0).unwrap();
        assert_eq!(kind(&ack), MessageType::Ack);
        assert_eq!(
            (ack.yiaddr(), ack.ciaddr()),
            (Ipv4Addr::UNSPECIFIED, ip(77))
        );
        assert_eq!(
            out.to,
            ReplyTo::Unicast {
                ip: ip(77),
                mac: mac(1)
            }
        );
        assert_eq!(
            opt(&ack, OptionCode::DomainNameServer),
            Some(&DhcpOption::DomainNameServer(vec![SERVER]))
        );
        assert!(opt(&ack, OptionCode::AddressLeaseTime).is_none());
        assert!(opt(&ack, OptionCode::Renewal).is_none());
        assert!(s.leases(T0).is_empty());
        assert_eq!((s.stats().inform, s.stats().ack), (1, 1));
    }

    #[test]
    fn hostname_sanitising() {
        let cases = [
            ("web", Some("web")),
            ("My-Host", Some("my-host")),
            ("host.example.com", Some("host")),
            ("under_score", Some("under-score")),
            ("name\0", Some("name")),
            ("a1-b2", Some("a1-b2")),
            ("-lead", None),
            ("trail-", None),
            ("", None),
            (".x", None),
            ("héllo", None),
            ("sp ace", None),
            ("x*", None),
        ];
        for (raw, want) in cases {
            assert_eq!(sanitize_hostname(raw).as_deref(), want, "{raw:?}");
        }
        assert_eq!(
            sanitize_hostname(&"a".repeat(63)).map(|s| s.len()),
            Some(63)
        );
        assert_eq!(sanitize_hostname(&"a".repeat(64)), None);

        // Name change on renew: unregister the old, register the new; invalid names ignored.
        let mut s = server();
        let (a, out) = dora(&mut s, mac(1), Some("bad name!"), T0);
        assert!(out.names.is_empty());
        assert_eq!(s.leases(T0)[0].hostname, None);
        let renew = |h: &str| {
            let mut r = msg(mac(1), MessageType::Request);
            r.set_ciaddr(a)
                .opts_mut()
                .insert(DhcpOption::Hostname(h.into()));
            r
        };
        let (_, out) = send(&mut s, &renew("First"), T0 + 1).unwrap();
        assert_eq!(
            out.names,
            [NameEvent::Register {
                name: "first".into(),
                ip: a
            }]
        );
        let (_, out) = send(&mut s, &renew("second"), T0 + 2).unwrap();
        assert_eq!(
            out.names,
            [
                NameEvent::Unregister {
                    name: "first".into(),
                    ip: a
                },
                NameEvent::Register {
                    name: "second".into(),
                    ip: a
                },
            ]
        );
        let (_, out) = send(&mut s, &renew("-invalid"), T0 + 3).unwrap();
        assert!(out.names.is_empty());
        assert_eq!(s.leases(T0 + 3)[0].hostname.as_deref(), Some("second"));
    }

    #[test]
    fn reply_addressing_rules() {
        let mut s = server();
        // Broadcast flag set: broadcast, and the flag is echoed.
        let mut d = msg(mac(1), MessageType::Discover);
        d.set_flags(v4::Flags::default().set_broadcast());
        let (offer, out) = send(&mut s, &d, T0).unwrap();
        assert_eq!(out.to, ReplyTo::Broadcast);
        assert!(offer.flags().broadcast());
        // No flag, no ciaddr: unicast to yiaddr at chaddr.
        let (_, out) = discover(&mut s, mac(2), T0).unwrap();
        assert_eq!(
            out.to,
            ReplyTo::Unicast {
                ip: ip(3),
                mac: mac(2)
            }
        );
        // ciaddr set wins over the broadcast flag.
        let (a, _) = dora(&mut s, mac(3), None, T0);
        let mut r = msg(mac(3), MessageType::Request);
        r.set_ciaddr(a)
            .set_flags(v4::Flags::default().set_broadcast());
        assert_eq!(
            send(&mut s, &r, T0).unwrap().1.to,
            ReplyTo::Unicast { ip: a, mac: mac(3) }
        );
        // NAK: always broadcast, even with ciaddr.
        let mut r = msg(mac(3), MessageType::Request);
        r.set_ciaddr(Ipv4Addr::new(172, 16, 0, 9));
        assert_eq!(send(&mut s, &r, T0).unwrap().1.to, ReplyTo::Broadcast);
        // giaddr is echoed.
        let mut d = msg(mac(4), MessageType::Discover);
        d.set_giaddr(ip(250));
        assert_eq!(send(&mut s, &d, T0).unwrap().0.giaddr(), ip(250));
    }
}
