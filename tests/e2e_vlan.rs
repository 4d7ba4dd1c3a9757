//! End-to-end tests of 802.1Q VLANs with the real kernel: a trunk AF_PACKET port to a namespace
//! with Linux VLAN subinterfaces (`eth0.10`, `eth0.20`), each VLAN reaching only its network,
//! tags intact both ways (checked with a capture socket in that namespace); frames tagged with
//! a VLAN the trunk does not map dropped and counted; a tagged frame on an access port kept in
//! its network; tagged guests on TAP and AF_PACKET access ports talking through usernet. Need
//! root; skipped (or failed, with USERNET_REQUIRE_PRIV=1) otherwise.
//!
//! VLAN subinterfaces are the kernel's (`ip link add link eth0 name eth0.10 type vlan id 10`)
//! where it has them. Kernels built without `CONFIG_VLAN_8021Q` (some CI VMs) get the same
//! thing in userspace ([`VlanIf`]): a TAP named `eth0.10` whose frames go out on `eth0`
//! tagged, in the bytes, and which receives `eth0`'s frames of VLAN 10 (the tag read from
//! `PACKET_AUXDATA`, where the kernel's receive path puts it either way). Seen from usernet's
//! side of the wire, the two are the same: tagged frames on a veth, the tag moved out of the
//! frame by the kernel on receive.

mod common;

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::raw::RawEth;
use common::{Netns, Veth, require_root, wait_readable};
use usernet::frame::{Frame, FramePool};
use usernet::link::Link;
use usernet::link::netns::run_in_netns;
use usernet::link::tap::{TapLink, TapOptions};

fn netns_port(net: &str, name: &str, ns: &Netns) -> String {
    format!(
        "[[port]]\nnetwork = \"{net}\"\nname = \"{name}\"\nnetns = \"{}\"\n",
        ns.path().display()
    )
}

/// `ping -I ifname dst`, two quick tries: true if answered.
fn ping_via(ns: &Netns, ifname: &str, dst: &str) -> bool {
    ns.exec(&["ping", "-c", "2", "-i", "0.2", "-W", "2", "-I", ifname, dst])
        .status
        .success()
}

fn mac_of(ns: &Netns, ifname: &str) -> [u8; 6] {
    let s = ns.exec_ok(&["cat", &format!("/sys/class/net/{ifname}/address")]);
    let mut m = [0u8; 6];
    for (i, p) in s.trim().split(':').enumerate().take(6) {
        m[i] = u8::from_str_radix(p, 16).expect("hex");
    }
    m
}

/// The MAC `ns` resolved `ip` to on `ifname`, if any.
fn neigh_mac(ns: &Netns, ifname: &str, ip: &str) -> Option<[u8; 6]> {
    let out = ns.exec_ok(&["ip", "neigh", "show", ip, "dev", ifname]);
    let ll = out
        .split_whitespace()
        .skip_while(|w| *w != "lladdr")
        .nth(1)?;
    let mut m = [0u8; 6];
    for (i, p) in ll.split(':').enumerate().take(6) {
        m[i] = u8::from_str_radix(p, 16).ok()?;
    }
    Some(m)
}

/// A VLAN subinterface `eth0.VID` of `eth0` in a namespace: the kernel's, or (kernel without
/// 802.1Q support) a TAP with a thread tagging and untagging for it. See the module docs.
struct VlanIf {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for VlanIf {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Adds VLAN subinterface `eth0.VID` with `cidr` in `ns`, up.
fn vlan_if(ns: &Netns, vid: u16, cidr: &str) -> VlanIf {
    let name = format!("eth0.{vid}");
    let vid_s = vid.to_string();
    let kernel = common::ip_output(&[
        "-n", &ns.name, "link", "add", "link", "eth0", "name", &name, "type", "vlan", "id", &vid_s,
    ]);
    let stop = Arc::new(AtomicBool::new(false));
    let mut thread = None;
    if !kernel.status.success() {
        eprintln!(
            "no kernel VLAN devices ({}): {name} in {} is a userspace one",
            String::from_utf8_lossy(&kernel.stderr).trim(),
            ns.name
        );
        let trunk = Capture::open(ns, "eth0");
        let mut opts = TapOptions::default();
        opts.vnet_hdr = false;
        opts.offload = false;
        let tap = TapLink::create_in_netns(&ns.path(), &name, &opts).expect("TAP for the VLAN");
        let stop = stop.clone();
        thread = Some(std::thread::spawn(move || {
            userspace_vlan(trunk, tap, vid, &stop)
        }));
    }
    ns.ip(&["addr", "add", cidr, "dev", &name]);
    ns.ip(&["link", "set", &name, "up"]);
    VlanIf { stop, thread }
}

/// The userspace VLAN device: frames of VLAN `vid` on the trunk go to the TAP untagged; the
/// TAP's frames go out on the trunk tagged `vid`. Runs until `stop`.
fn userspace_vlan(trunk: Capture, mut tap: TapLink, vid: u16, stop: &AtomicBool) {
    let pool = FramePool::new(2048, 64);
    let mut got = Vec::new();
    while !stop.load(Ordering::Acquire) {
        let mut pfd = [
            libc::pollfd {
                fd: trunk.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: tap.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds for the duration of the call.
        unsafe { libc::poll(pfd.as_mut_ptr(), 2, 100) };
        for _ in 0..64 {
            let Some(c) = trunk.recv_one() else { break };
            if !c.outgoing && c.vid == Some(vid) {
                let mut q = VecDeque::from([Frame::from_slice(&c.data)]);
                let _ = tap.send_batch(&mut q);
            }
        }
        got.clear();
        if tap.recv_batch(&pool, &mut got, 64).is_err() {
            return;
        }
        for f in got.drain(..) {
            let d = f.data();
            if d.len() < 14 {
                continue;
            }
            let mut out = d[..12].to_vec();
            out.extend([0x81, 0x00]);
            out.extend(vid.to_be_bytes());
            out.extend(&d[12..]);
            trunk.send(&out);
        }
    }
}

/// The daemon's counters of port `name`.
fn port_stats(d: &Daemon, name: &str) -> serde_json::Value {
    d.ctl(&["stats"])
        .as_array()
        .expect("array")
        .iter()
        .find(|r| r["port"] == name)
        .map(|r| r["stats"].clone())
        .unwrap_or_else(|| panic!("no port {name} in stats"))
}

fn drop_of(st: &serde_json::Value, reason: &str) -> u64 {
    st["drops"][reason].as_u64().unwrap_or(0)
}

/// A frame seen by a [`Capture`].
#[derive(Debug)]
struct Captured {
    /// Sent by the namespace itself (`PACKET_OUTGOING`).
    outgoing: bool,
    /// The outer VLAN id the kernel took off (`PACKET_AUXDATA`), if the frame had a tag.
    vid: Option<u16>,
    /// The frame as the socket read it (without that outer tag).
    data: Vec<u8>,
}

/// An AF_PACKET socket in a namespace reading every frame of one interface, with the VLAN tag
/// the kernel moved to `PACKET_AUXDATA`: what is on the wire, tags included.
struct Capture {
    fd: OwnedFd,
}

impl Capture {
    fn open(ns: &Netns, ifname: &'static str) -> Capture {
        run_in_netns(&ns.path(), move || {
            let name = std::ffi::CString::new(ifname).expect("name");
            // SAFETY: a NUL-terminated name.
            let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
            if ifindex == 0 {
                return Err(std::io::Error::last_os_error());
            }
            let proto = (libc::ETH_P_ALL as u16).to_be();
            // SAFETY: plain socket(2); the fd is owned right away.
            let raw = unsafe {
                libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                    i32::from(proto),
                )
            };
            if raw < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: a fresh descriptor nobody else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            let one: libc::c_int = 1;
            // SAFETY: a c_int option of its size.
            let rc = unsafe {
                libc::setsockopt(
                    raw,
                    libc::SOL_PACKET,
                    libc::PACKET_AUXDATA,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: sockaddr_ll is plain data; zero is valid.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto;
            sll.sll_ifindex = ifindex;
            // SAFETY: a valid sockaddr_ll of the size given.
            let rc = unsafe {
                libc::bind(
                    raw,
                    (&sll as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(Capture { fd })
        })
        .expect("capture socket in namespace")
    }

    /// Frames read until none came for `quiet_ms` (at most 2000 frames / 10 s).
    fn frames(&self, quiet_ms: i32) -> Vec<Captured> {
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while out.len() < 2000 && Instant::now() < deadline {
            if !wait_readable(self.fd.as_raw_fd(), quiet_ms) {
                break;
            }
            if let Some(c) = self.recv_one() {
                out.push(c);
            }
        }
        out
    }

    /// Sends `frame` on the interface as it is (best effort).
    fn send(&self, frame: &[u8]) {
        // SAFETY: `frame` is valid for reads of its length; the socket is bound.
        unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                libc::MSG_DONTWAIT,
            )
        };
    }

    fn recv_one(&self) -> Option<Captured> {
        let mut buf = vec![0u8; 2048];
        let mut ctrl = [0u64; 16];
        // SAFETY: sockaddr_ll is plain data; zero is valid.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: msghdr is plain data; zero is valid.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&mut sll as *mut libc::sockaddr_ll).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = ctrl.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&ctrl) as _;
        // SAFETY: every pointer in `msg` points at a live buffer of the size given.
        let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
        if n < 0 {
            return None;
        }
        buf.truncate(n as usize);
        let mut vid = None;
        // SAFETY: the kernel filled `msg`; the CMSG walk stays inside `ctrl`.
        let mut c = unsafe { libc::CMSG_FIRSTHDR(&msg) };
        while !c.is_null() {
            // SAFETY: a non-null cmsghdr inside `ctrl`.
            let h = unsafe { &*c };
            if h.cmsg_level == libc::SOL_PACKET && h.cmsg_type == libc::PACKET_AUXDATA {
                // SAFETY: the kernel wrote a whole tpacket_auxdata there.
                let aux = unsafe {
                    std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::tpacket_auxdata>())
                };
                if aux.tp_status & libc::TP_STATUS_VLAN_VALID != 0 {
                    vid = Some(aux.tp_vlan_tci & 0x0fff);
                }
            }
            // SAFETY: as above.
            c = unsafe { libc::CMSG_NXTHDR(&msg, c) };
        }
        let outgoing = sll.sll_pkttype == libc::PACKET_OUTGOING;
        if outgoing && vid.is_none() && buf.len() >= 16 && buf[12..14] == [0x81, 0x00] {
            // Sent with the tag in the bytes (a device without VLAN offload).
            vid = Some(u16::from_be_bytes([buf[14], buf[15]]) & 0x0fff);
        }
        Some(Captured {
            outgoing,
            vid,
            data: buf,
        })
    }
}

/// A broadcast frame from `src` carrying `marker` in its payload, with the given tags
/// (outermost first) in the bytes.
fn marked_frame(src: [u8; 6], tags: &[(u16, u16)], marker: &[u8]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend(src);
    for (tpid, vid) in tags {
        f.extend(tpid.to_be_bytes());
        f.extend(vid.to_be_bytes());
    }
    f.extend([0x88, 0xb5]); // local experimental EtherType
    f.extend(marker);
    f.resize(f.len().max(64), 0);
    f
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The trunk lab: networks net10 (gateway 10.91.10.1) and net20 (no gateway, same addresses
/// on purpose), access guests g10 and g20 both at 10.91.10.2, and namespace `h` on a trunk
/// AF_PACKET port (net10 = VLAN 10, net20 = VLAN 20) with `eth0.10` at 10.91.10.5 and
/// `eth0.20` at 10.91.10.6.
struct Lab {
    d: Daemon,
    g10: Netns,
    g20: Netns,
    h: Netns,
    _vlans: Vec<VlanIf>,
    _veth: Veth,
}

fn trunk_lab() -> Lab {
    let g10 = Netns::new("vg");
    let g20 = Netns::new("vg");
    let h = Netns::new("vh");
    // No IPv6 in h: its eth0 then sends nothing untagged of its own (the trunk has no native
    // network, so that would count as unmapped_vlan).
    for k in ["all", "default"] {
        h.exec_ok(&[
            "sysctl",
            "-qw",
            &format!("net.ipv6.conf.{k}.disable_ipv6=1"),
        ]);
    }
    let veth = Veth::new("vt");
    veth.move_b(&h, Some("eth0"));
    let d = Daemon::start(&format!(
        "[[network]]\nname = \"net10\"\nsubnet = \"10.91.10.0/24\"\nipv6 = \"off\"\n\
         dns_upstreams = [\"127.0.0.1:9\"]\n\
         [[network]]\nname = \"net20\"\ngateway = false\n\
         {}{}[[port]]\nname = \"trunk\"\npacket = \"{}\"\ntrunk = {{ net10 = 10, net20 = 20 }}\n",
        netns_port("net10", "g10", &g10),
        netns_port("net20", "g20", &g20),
        veth.a
    ));
    for g in [&g10, &g20] {
        g.ip(&["addr", "add", "10.91.10.2/24", "dev", "eth0"]);
        g.ip(&["link", "set", "lo", "up"]);
    }
    h.exec_ok(&["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0"]);
    h.exec_ok(&["sysctl", "-qw", "net.ipv4.conf.default.rp_filter=0"]);
    let vlans = vec![
        vlan_if(&h, 10, "10.91.10.5/24"),
        vlan_if(&h, 20, "10.91.10.6/24"),
    ];
    Lab {
        d,
        g10,
        g20,
        h,
        _vlans: vlans,
        _veth: veth,
    }
}

#[test]
fn trunk_packet_port_keeps_each_vlan_in_its_network() {
    if !require_root("trunk_packet_port_keeps_each_vlan_in_its_network") {
        return;
    }
    let lab = trunk_lab();
    let (d, h) = (&lab.d, &lab.h);
    let cap = Capture::open(h, "eth0");

    // VLAN 10 is net10: its gateway and its guest answer.
    assert!(
        ping_via(h, "eth0.10", "10.91.10.1"),
        "eth0.10 -> net10's gateway\n{}",
        d.log()
    );
    assert!(ping_via(h, "eth0.10", "10.91.10.2"), "eth0.10 -> g10");
    // The same address on VLAN 20 is net20's guest, not net10's.
    assert!(ping_via(h, "eth0.20", "10.91.10.2"), "eth0.20 -> g20");
    let (m10, m20) = (mac_of(&lab.g10, "eth0"), mac_of(&lab.g20, "eth0"));
    assert_eq!(neigh_mac(h, "eth0.10", "10.91.10.2"), Some(m10));
    assert_eq!(neigh_mac(h, "eth0.20", "10.91.10.2"), Some(m20));
    // net10's gateway does not answer on VLAN 20.
    assert!(
        !ping_via(h, "eth0.20", "10.91.10.1"),
        "net10's gateway answered on VLAN 20"
    );

    // On the wire: what usernet sent into the trunk carries the VLAN of its network, and what
    // h's subinterfaces sent left tagged.
    let frames = cap.frames(300);
    let from = |m: [u8; 6]| {
        frames
            .iter()
            .filter(move |c| !c.outgoing && c.data.len() >= 12 && c.data[6..12] == m)
    };
    assert!(from(m10).count() > 0, "nothing from g10 on the trunk");
    assert!(from(m20).count() > 0, "nothing from g20 on the trunk");
    assert!(
        from(m10).all(|c| c.vid == Some(10)),
        "g10's frames must leave tagged 10: {:?}",
        from(m10).map(|c| c.vid).collect::<Vec<_>>()
    );
    assert!(
        from(m20).all(|c| c.vid == Some(20)),
        "g20's frames must leave tagged 20: {:?}",
        from(m20).map(|c| c.vid).collect::<Vec<_>>()
    );
    let gw: Vec<_> = frames
        .iter()
        .filter(|c| !c.outgoing && c.data.len() >= 42 && c.data[12..14] == [0x08, 0x06])
        .filter(|c| c.data[28..32] == [10, 91, 10, 1])
        .collect();
    assert!(!gw.is_empty(), "no ARP from net10's gateway on the trunk");
    assert!(
        gw.iter().all(|c| c.vid == Some(10)),
        "gateway ARP tags: {gw:?}"
    );
    let sent: Vec<_> = frames.iter().filter(|c| c.outgoing).collect();
    assert!(
        sent.iter().any(|c| c.vid == Some(10)) && sent.iter().any(|c| c.vid == Some(20)),
        "h's subinterfaces send tagged"
    );

    // Every frame the trunk received is forwarded or counted (h's own untagged IPv6 chatter on
    // eth0, with no native network, as unmapped_vlan).
    let st = port_stats(d, "trunk");
    let drops: u64 = st["drops"]
        .as_object()
        .expect("drops")
        .iter()
        .filter(|(k, _)| {
            !["ring_full", "link_error", "bad_offload", "native_tagged"].contains(&k.as_str())
        })
        .filter_map(|(_, v)| v.as_u64())
        .sum();
    assert_eq!(
        st["rx_frames"].as_u64(),
        Some(st["forwarded"].as_u64().unwrap_or(0) + drops),
        "{st}"
    );
}

#[test]
fn trunk_drops_unmapped_vlans_and_access_ports_keep_tags_in_their_network() {
    if !require_root("trunk_drops_unmapped_vlans_and_access_ports_keep_tags_in_their_network") {
        return;
    }
    let lab = trunk_lab();
    let (d, h) = (&lab.d, &lab.h);
    // The trunk works (and its MAC is known) before the hostile part.
    assert!(
        ping_via(h, "eth0.10", "10.91.10.1"),
        "eth0.10 -> gateway\n{}",
        d.log()
    );
    let before = drop_of(&port_stats(d, "trunk"), "unmapped_vlan");

    // Raw frames into the trunk: VLAN 30 (not mapped), untagged (no native network), and
    // 802.1ad-tagged (not an 802.1Q trunk tag): each dropped and counted.
    let cap10 = Capture::open(&lab.g10, "eth0");
    let cap20 = Capture::open(&lab.g20, "eth0");
    let hm = mac_of(h, "eth0");
    let raw = RawEth::open(h, "eth0");
    let marker = b"usernet-vlan-unmapped";
    for tags in [&[(0x8100, 30)][..], &[], &[(0x88a8, 10)]] {
        for _ in 0..5 {
            raw.send_retry(&marked_frame(hm, tags, marker))
                .expect("send");
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let dropped = loop {
        let n = drop_of(&port_stats(d, "trunk"), "unmapped_vlan") - before;
        if n >= 15 || Instant::now() > deadline {
            break n;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(dropped, 15, "unmapped_vlan drops on the trunk");
    let leaked = |cap: &Capture| {
        cap.frames(300)
            .iter()
            .filter(|c| contains(&c.data, marker))
            .count()
    };
    assert_eq!(leaked(&cap10), 0, "an unmapped frame reached net10");
    assert_eq!(leaked(&cap20), 0, "an unmapped frame reached net20");

    // A frame tagged 10 (and a Q-in-Q one) on net20's access port stays in net20: g10 never
    // sees it, and on the trunk it leaves as net20's (tag 20), its own tags inside.
    let trunk_cap = Capture::open(h, "eth0");
    let g20m = mac_of(&lab.g20, "eth0");
    let raw20 = RawEth::open(&lab.g20, "eth0");
    let marker = b"usernet-vlan-access";
    raw20
        .send_retry(&marked_frame(g20m, &[(0x8100, 10)], marker))
        .expect("send");
    raw20
        .send_retry(&marked_frame(g20m, &[(0x88a8, 10), (0x8100, 10)], marker))
        .expect("send");
    let on_trunk: Vec<_> = trunk_cap
        .frames(500)
        .into_iter()
        .filter(|c| !c.outgoing && contains(&c.data, marker))
        .collect();
    assert_eq!(on_trunk.len(), 2, "{on_trunk:?}\n{}", d.log());
    assert!(
        on_trunk.iter().all(|c| c.vid == Some(20)),
        "outer tag must be net20's: {on_trunk:?}"
    );
    // The access frames' own tags are kept, untouched, inside.
    assert!(
        on_trunk
            .iter()
            .any(|c| c.data[12..16] == [0x81, 0x00, 0, 10])
    );
    assert!(
        on_trunk
            .iter()
            .any(|c| c.data[12..16] == [0x88, 0xa8, 0, 10])
    );
    assert_eq!(
        leaked(&cap10),
        0,
        "a tagged access frame crossed into net10"
    );
}

#[test]
fn tagged_guests_on_tap_and_packet_access_ports() {
    if !require_root("tagged_guests_on_tap_and_packet_access_ports") {
        return;
    }
    let a = Netns::new("va");
    let b = Netns::new("vb");
    let c = Netns::new("vc");
    let veth = Veth::new("vp");
    veth.move_b(&c, Some("eth0"));
    let d = Daemon::start(&format!(
        "[[network]]\nname = \"net0\"\ngateway = false\n{}{}\
         [[port]]\nnetwork = \"net0\"\nname = \"c\"\npacket = \"{}\"\n",
        netns_port("net0", "a", &a),
        netns_port("net0", "b", &b),
        veth.a
    ));
    let mut vlans = Vec::new();
    for (ns, ip) in [
        (&a, "10.92.0.1/24"),
        (&b, "10.92.0.2/24"),
        (&c, "10.92.0.3/24"),
    ] {
        ns.ip(&["link", "set", "eth0", "up"]);
        vlans.push(vlan_if(ns, 10, ip));
    }
    // TAP to TAP: the tag travels in the frame bytes.
    assert!(
        ping_via(&a, "eth0.10", "10.92.0.2"),
        "a.10 -> b.10 (TAP)\n{}",
        d.log()
    );
    // TAP to AF_PACKET and back: the packet port restores the tag the kernel took off.
    assert!(
        ping_via(&a, "eth0.10", "10.92.0.3"),
        "a.10 -> c.10 (AF_PACKET)\n{}",
        d.log()
    );
    assert!(ping_via(&c, "eth0.10", "10.92.0.2"), "c.10 -> b.10");
    // And learned under their VLAN.
    let fdb = d.ctl(&["fdb", "--network", "net0"]);
    let vlans: Vec<u64> = fdb
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|e| e["vlan"].as_u64())
        .collect();
    assert!(vlans.contains(&10), "FDB: {fdb}");
}
