//! Real-kernel tests of the TAP and AF_PACKET links (root and network namespaces needed; they
//! skip otherwise, or fail with `USERNET_REQUIRE_PRIV=1`).
//!
//! Each test creates its own uniquely named interfaces and namespaces behind RAII guards, sends
//! frames with a private EtherType (0x88B5, "local experimental") and a per-test marker, and
//! looks for exactly those bytes, ignoring the IPv6 chatter the kernel sends on new interfaces.
//! Every wait is a bounded `poll`.

mod common;

use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use common::{Netns, Veth, ip, require_root, unique, wait_readable};
use usernet::frame::{Frame, FramePool, VnetHdr};
use usernet::link::packet::{PacketLink, PacketOptions};
use usernet::link::tap::{TapLink, TapOptions};
use usernet::link::{Link, LinkError, netns};

const WAIT: Duration = Duration::from_secs(2);

/// A broadcast frame of `len` bytes with EtherType 0x88B5 carrying `marker`.
fn test_frame(marker: u32, len: usize) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    f.extend_from_slice(&[0x88, 0xb5]);
    f.extend_from_slice(&marker.to_be_bytes());
    let mut i = 0u8;
    while f.len() < len {
        f.push(i);
        i = i.wrapping_add(1);
    }
    f
}

fn marker() -> u32 {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    (std::process::id() << 12) ^ N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// What a bounded receive loop saw.
#[derive(Debug, Default)]
struct Seen {
    found: Option<Frame>,
    oversize: usize,
}

/// Receives on `link` for up to `wait` (or until a frame equal to `want` arrives).
fn recv_for(link: &mut impl Link, pool: &FramePool, want: &[u8], wait: Duration) -> Seen {
    let deadline = Instant::now() + wait;
    let mut seen = Seen::default();
    let mut out = Vec::new();
    loop {
        out.clear();
        let st = link.recv_batch(pool, &mut out, 64).expect("recv_batch");
        seen.oversize += st.oversize;
        if let Some(pos) = out.iter().position(|f| f.data() == want) {
            seen.found = Some(out.swap_remove(pos));
            return seen;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return seen;
        }
        if st.drained {
            wait_readable(link.as_raw_fd(), left.as_millis().clamp(1, 200) as i32);
        }
    }
}

/// Receives until `link` reports an error (after any frames queued before it), a bounded
/// number of times.
fn first_error(link: &mut impl Link, pool: &FramePool) -> LinkError {
    let mut out = Vec::new();
    for _ in 0..16 {
        out.clear();
        match link.recv_batch(pool, &mut out, 64) {
            Err(e) => return e,
            Ok(st) if st.drained && st.frames == 0 => break,
            Ok(_) => {}
        }
    }
    panic!("recv_batch reported no error");
}

/// Sends `bytes` on `link` as one frame, asserting it was written.
fn send_one(link: &mut impl Link, bytes: &[u8]) {
    let mut q = VecDeque::from([Frame::from_slice(bytes)]);
    let st = link.send_batch(&mut q).expect("send_batch");
    assert_eq!((st.frames, st.bytes, st.errors), (1, bytes.len(), 0));
    assert!(q.is_empty());
}

/// Frames cross in both directions between `tap` and a packet link on its interface.
fn check_both_ways(tap: &mut TapLink, pkt: &mut PacketLink) {
    let pool = FramePool::new(1600, 64);
    let out = test_frame(marker(), 100);
    send_one(tap, &out);
    let seen = recv_for(pkt, &pool, &out, WAIT);
    assert!(
        seen.found.is_some(),
        "frame written to the TAP fd not seen on the interface"
    );

    let back = test_frame(marker(), 120);
    send_one(pkt, &back);
    let seen = recv_for(tap, &pool, &back, WAIT);
    let f = seen
        .found
        .expect("frame sent on the interface not read from the TAP fd");
    assert!(
        f.meta.vnet.is_plain(),
        "no offloads: plain vnet header, got {:?}",
        f.meta.vnet
    );
}

fn packet_opts() -> PacketOptions {
    let mut opts = PacketOptions::default();
    opts.up = false;
    opts.promisc = false;
    opts
}

#[test]
fn tap_in_host_ns_frames_both_ways() {
    if !require_root("tap_in_host_ns_frames_both_ways") {
        return;
    }
    let name = unique("ut");
    let mut tap = TapLink::create(&name, &TapOptions::default()).expect("create TAP");
    assert_eq!(tap.name(), name);
    assert_eq!(tap.kind(), "tap");
    assert!(tap.vnet_hdr(), "kernel offers IFF_VNET_HDR");
    assert!(tap.caps().vnet_hdr);
    assert_eq!(tap.caps().max_frame, 1500 + 18);
    let mut pkt = PacketLink::open(&name, &packet_opts()).expect("packet link on TAP");
    assert_eq!(pkt.ifname(), name);
    assert_eq!(pkt.ifindex(), netns::if_index(&name).expect("ifindex"));
    check_both_ways(&mut tap, &mut pkt);
}

#[test]
fn tap_without_vnet_hdr_frames_both_ways() {
    if !require_root("tap_without_vnet_hdr_frames_both_ways") {
        return;
    }
    let name = unique("ut");
    let mut opts = TapOptions::default();
    opts.vnet_hdr = false;
    opts.mtu = Some(9000);
    opts.up = true;
    let mut tap = TapLink::create(&name, &opts).expect("create TAP");
    assert!(!tap.vnet_hdr());
    assert_eq!(tap.caps().max_frame, 9000 + 18);
    assert_eq!(netns::mtu(&name).expect("mtu"), 9000);
    let mut pkt = PacketLink::open(&name, &packet_opts()).expect("packet link on TAP");
    assert_eq!(pkt.caps().max_frame, 9000 + 18);
    check_both_ways(&mut tap, &mut pkt);
}

#[test]
fn tap_in_netns_is_eth0_there() {
    if !require_root("tap_in_netns_is_eth0_there") {
        return;
    }
    let ns = Netns::new("ns");
    let mut opts = TapOptions::default();
    opts.mtu = Some(1234);
    let mut tap = TapLink::create_in_netns(&ns.path(), "eth0", &opts).expect("TAP in netns");
    assert_eq!(tap.name(), "eth0");
    assert_eq!(tap.caps().max_frame, 1234 + 18);
    let shown = ns.exec_ok(&["ip", "link", "show", "eth0"]);
    assert!(shown.contains("mtu 1234"), "{shown}");
    assert!(shown.contains(",UP"), "{shown}");
    // Adopting a copy of the fd reads the MTU in the TAP's namespace, not ours.
    let dup = tap.as_fd().try_clone_to_owned().expect("dup");
    let adopted = TapLink::from_fd(dup).expect("adopt fd of a TAP in another netns");
    assert_eq!(adopted.name(), "eth0");
    assert_eq!(adopted.caps(), tap.caps());
    drop(adopted);
    let mut pkt =
        PacketLink::open_in_netns(&ns.path(), "eth0", &packet_opts()).expect("packet in netns");
    check_both_ways(&mut tap, &mut pkt);
}

#[test]
fn tap_from_fd_adopts_name_and_vnet_hdr_size() {
    if !require_root("tap_from_fd_adopts_name_and_vnet_hdr_size") {
        return;
    }
    let name = unique("ua");
    // Open the TAP the way a runtime would: blocking fd, vnet header of 12 bytes.
    // SAFETY: valid NUL-terminated path.
    let raw = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    assert!(raw >= 0, "open /dev/net/tun");
    // SAFETY: fresh descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: zeroed ifreq is valid.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
    // SAFETY: TUNSETIFF with a valid ifreq.
    assert_eq!(unsafe { libc::ioctl(raw, libc::TUNSETIFF, &mut ifr) }, 0);
    let sz: libc::c_int = 12;
    // SAFETY: TUNSETVNETHDRSZ reads an int.
    assert_eq!(unsafe { libc::ioctl(raw, libc::TUNSETVNETHDRSZ, &sz) }, 0);

    let mut tap = TapLink::from_fd(fd).expect("adopt");
    assert_eq!(tap.name(), name);
    assert!(tap.vnet_hdr());
    assert_eq!(tap.caps().max_frame, 1500 + 18);
    // SAFETY: F_GETFL on an open fd.
    let fl = unsafe { libc::fcntl(tap.as_fd().as_raw_fd(), libc::F_GETFL) };
    assert!(fl & libc::O_NONBLOCK != 0, "adopted fd made non-blocking");

    netns::set_link_up(&name).expect("up");
    let mut pkt = PacketLink::open(&name, &packet_opts()).expect("packet link on TAP");
    check_both_ways(&mut tap, &mut pkt);

    // A frame sent with a virtio-net header keeps working with the 12-byte layout.
    let pool = FramePool::new(1600, 8);
    let bytes = test_frame(marker(), 90);
    let mut f = Frame::from_slice(&bytes);
    f.meta.vnet = VnetHdr::default();
    let st = tap.send_batch(&mut VecDeque::from([f])).expect("send");
    assert_eq!(st.frames, 1);
    assert!(recv_for(&mut pkt, &pool, &bytes, WAIT).found.is_some());
}

#[test]
fn from_fd_refuses_tun() {
    if !require_root("from_fd_refuses_tun") {
        return;
    }
    let name = unique("uu");
    // SAFETY: valid NUL-terminated path.
    let raw = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    assert!(raw >= 0);
    // SAFETY: fresh descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: zeroed ifreq is valid.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as i16;
    // SAFETY: TUNSETIFF with a valid ifreq.
    assert_eq!(unsafe { libc::ioctl(raw, libc::TUNSETIFF, &mut ifr) }, 0);
    let err = TapLink::from_fd(fd).expect_err("TUN is not TAP");
    assert!(err.to_string().contains("not a TAP"), "{err}");

    // Not a tun fd at all.
    let f = std::fs::File::open("/dev/null").expect("open /dev/null");
    assert!(TapLink::from_fd(OwnedFd::from(f)).is_err());
}

#[test]
fn deleted_tap_is_gone() {
    if !require_root("deleted_tap_is_gone") {
        return;
    }
    // Only a persistent TAP can be deleted while its fd is open: attach to one.
    let name = unique("ud");
    ip(&["tuntap", "add", "dev", &name, "mode", "tap"]);
    struct Del(String);
    impl Drop for Del {
        fn drop(&mut self) {
            let _ = common::ip_output(&["link", "del", &self.0]);
        }
    }
    let _guard = Del(name.clone());
    let mut tap = TapLink::create(&name, &TapOptions::default()).expect("attach");
    let pool = FramePool::new(1600, 8);
    let mut out = Vec::new();
    let st = tap.recv_batch(&pool, &mut out, 64).expect("empty recv");
    assert!(st.drained);

    ip(&["link", "del", &name]);
    // The fd reports an error condition to poll...
    assert!(
        wait_readable(tap.as_raw_fd(), 2000),
        "poll wakes up after deletion"
    );
    // ...reads fail with EBADFD, which is Gone.
    match tap.recv_batch(&pool, &mut out, 64) {
        Err(LinkError::Gone(e)) => assert_eq!(e.raw_os_error(), Some(libc::EBADFD)),
        other => panic!("expected Gone(EBADFD), got {other:?}"),
    }
    let mut q = VecDeque::from([Frame::from_slice(&test_frame(1, 64))]);
    assert!(matches!(tap.send_batch(&mut q), Err(LinkError::Gone(_))));
}

#[test]
fn tap_outlives_its_deleted_netns() {
    if !require_root("tap_outlives_its_deleted_netns") {
        return;
    }
    // `ip netns del` only unmounts the namespace; the TAP fd holds a reference to it, so the
    // namespace and its eth0 live on while the link is open. Nothing fails: reads just find
    // nothing (and writes succeed into the orphaned namespace).
    let ns = Netns::new("ns");
    let path = ns.path();
    let mut tap = TapLink::create_in_netns(&path, "eth0", &TapOptions::default()).expect("TAP");
    ns.delete();
    let pool = FramePool::new(1600, 8);
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_millis(300);
    while Instant::now() < deadline {
        let st = tap.recv_batch(&pool, &mut out, 64).expect("still readable");
        if st.drained {
            wait_readable(tap.as_raw_fd(), 50);
        }
    }
    send_one(&mut tap, &test_frame(marker(), 80));
}

#[test]
fn tap_down_drops_writes() {
    if !require_root("tap_down_drops_writes") {
        return;
    }
    let name = unique("ut");
    let mut opts = TapOptions::default();
    opts.up = false;
    let mut tap = TapLink::create(&name, &opts).expect("create TAP");
    let mut q: VecDeque<Frame> = (0..3)
        .map(|_| Frame::from_slice(&test_frame(7, 64)))
        .collect();
    let st = tap.send_batch(&mut q).expect("transient only");
    assert_eq!(
        (st.frames, st.errors),
        (0, 3),
        "writes to a down TAP fail with EIO"
    );
    assert!(q.is_empty());
}

#[test]
fn tap_oversize_is_counted() {
    if !require_root("tap_oversize_is_counted") {
        return;
    }
    let name = unique("ut");
    let mut tap = TapLink::create(&name, &TapOptions::default()).expect("create TAP");
    let mut pkt = PacketLink::open(&name, &packet_opts()).expect("packet link");
    let small = FramePool::new(200, 8);
    let big = test_frame(marker(), 600);
    send_one(&mut pkt, &big);
    let seen = recv_for(&mut tap, &small, &big, Duration::from_millis(500));
    assert!(seen.found.is_none());
    assert!(seen.oversize >= 1, "{seen:?}");
    // One byte over is still caught; a frame that exactly fills the buffer is not.
    let over = test_frame(marker(), 201);
    send_one(&mut pkt, &over);
    let seen = recv_for(&mut tap, &small, &over, Duration::from_millis(300));
    assert!(seen.found.is_none() && seen.oversize >= 1, "{seen:?}");
    let exact = test_frame(marker(), 200);
    send_one(&mut pkt, &exact);
    assert!(recv_for(&mut tap, &small, &exact, WAIT).found.is_some());
}

#[test]
fn packet_veth_roundtrip_and_no_echo() {
    if !require_root("packet_veth_roundtrip_and_no_echo") {
        return;
    }
    let veth = Veth::new("uv");
    let mut a = PacketLink::open(&veth.a, &packet_opts()).expect("open a");
    let mut b_opts = PacketOptions::default();
    b_opts.up = true;
    b_opts.promisc = true;
    let mut b = PacketLink::open(&veth.b, &b_opts).expect("open b");
    assert_eq!(a.kind(), "packet");
    assert!(a.caps().vnet_hdr, "PACKET_VNET_HDR on by default");
    let pool = FramePool::new(1600, 64);

    let bytes = test_frame(marker(), 200);
    send_one(&mut a, &bytes);
    let seen = recv_for(&mut b, &pool, &bytes, WAIT);
    let got = seen.found.expect("frame crosses the veth");
    assert_eq!(got.data(), &bytes[..], "byte for byte");
    let echo = recv_for(&mut a, &pool, &bytes, Duration::from_millis(300));
    assert!(
        echo.found.is_none(),
        "sender must not read its own frame back"
    );

    // A batch of frames, in order.
    let frames: Vec<Vec<u8>> = (0..20).map(|i| test_frame(marker(), 64 + i)).collect();
    let mut q: VecDeque<Frame> = frames.iter().map(|f| Frame::from_slice(f)).collect();
    let st = b.send_batch(&mut q).expect("send batch");
    assert_eq!(st.frames, 20);
    let mut got = Vec::new();
    let deadline = Instant::now() + WAIT;
    while got.len() < frames.len() && Instant::now() < deadline {
        let mut out = Vec::new();
        let st = a.recv_batch(&pool, &mut out, 64).expect("recv");
        got.extend(
            out.into_iter()
                .map(|f| f.data().to_vec())
                .filter(|d| frames.contains(d)),
        );
        if st.drained {
            wait_readable(a.as_raw_fd(), 100);
        }
    }
    assert_eq!(got, frames, "all frames, in order");
}

#[test]
fn packet_in_netns_peer() {
    if !require_root("packet_in_netns_peer") {
        return;
    }
    let ns = Netns::new("ns");
    let veth = Veth::new("uv");
    let inner = veth.move_b(&ns, Some("eth0"));
    let mut host = PacketLink::open(&veth.a, &packet_opts()).expect("host end");
    let mut guest =
        PacketLink::open_in_netns(&ns.path(), &inner, &packet_opts()).expect("netns end");
    let pool = FramePool::new(1600, 64);
    let bytes = test_frame(marker(), 300);
    send_one(&mut guest, &bytes);
    assert!(recv_for(&mut host, &pool, &bytes, WAIT).found.is_some());
    let bytes = test_frame(marker(), 310);
    send_one(&mut host, &bytes);
    assert!(recv_for(&mut guest, &pool, &bytes, WAIT).found.is_some());
}

#[test]
fn packet_oversize_is_counted() {
    if !require_root("packet_oversize_is_counted") {
        return;
    }
    let veth = Veth::new("uv");
    let mut a = PacketLink::open(&veth.a, &packet_opts()).expect("open a");
    let mut b = PacketLink::open(&veth.b, &packet_opts()).expect("open b");
    let small = FramePool::new(200, 8);
    let big = test_frame(marker(), 600);
    send_one(&mut a, &big);
    let seen = recv_for(&mut b, &small, &big, Duration::from_millis(500));
    assert!(seen.found.is_none());
    assert!(seen.oversize >= 1, "{seen:?}");
    let exact = test_frame(marker(), 200);
    send_one(&mut a, &exact);
    assert!(recv_for(&mut b, &small, &exact, WAIT).found.is_some());

    // Larger than the interface MTU: refused by the kernel, counted as a send error.
    let huge = test_frame(marker(), 3000);
    let mut q = VecDeque::from([Frame::from_slice(&huge)]);
    let st = a.send_batch(&mut q).expect("transient");
    assert_eq!((st.frames, st.errors), (0, 1));
}

#[test]
fn packet_flood_of_dropped_frames_is_read_within_a_budget() {
    if !require_root("packet_flood_of_dropped_frames_is_read_within_a_budget") {
        return;
    }
    let veth = Veth::new("uv");
    let mut a = PacketLink::open(&veth.a, &packet_opts()).expect("open a");
    let mut b_opts = packet_opts();
    b_opts.offload = false;
    let mut b = PacketLink::open(&veth.b, &b_opts).expect("open b");
    // Room on b for the whole flood.
    let size: libc::c_int = 64 << 20;
    // SAFETY: passes a c_int and its size.
    let rc = unsafe {
        libc::setsockopt(
            b.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_RCVBUFFORCE");
    // 3000 frames too large for b's pool: every one is read and dropped (oversize).
    let small = FramePool::new(200, 8);
    let flood = 3000;
    let mut q: VecDeque<Frame> = (0..flood)
        .map(|_| Frame::from_slice(&test_frame(marker(), 600)))
        .collect();
    let deadline = Instant::now() + WAIT;
    while !q.is_empty() && Instant::now() < deadline {
        a.send_batch(&mut q).expect("send");
    }
    assert!(q.is_empty(), "flood sent");
    assert!(wait_readable(b.as_fd().as_raw_fd(), 2000));
    std::thread::sleep(Duration::from_millis(100));
    let mut out = Vec::new();
    let budget = usernet::link::packet::read_budget(64);
    let st = b.recv_batch(&small, &mut out, 64).expect("recv_batch");
    // None of the flood fits the small pool; the kernel's own small frames on a new veth
    // (IPv6 router solicitations, MLD reports) may, and are no failure.
    assert!(
        out.iter().all(|f| f.len() < 600),
        "a flood frame was read into a 200-byte pool"
    );
    assert!(
        st.oversize > 0 && st.oversize <= budget && !st.drained,
        "one call consumed {} dropped frames of {flood} (budget {budget}), drained {}",
        st.oversize,
        st.drained
    );
    // The rest comes on later calls, each within the budget.
    let mut total = st.oversize;
    for _ in 0..flood {
        let st = b.recv_batch(&small, &mut out, 64).expect("recv_batch");
        assert!(st.oversize <= budget);
        total += st.oversize;
        if st.drained {
            break;
        }
    }
    assert!(total >= flood / 2, "{total} of {flood} read");
}

#[test]
fn packet_down_is_transient_deleted_is_gone() {
    if !require_root("packet_down_is_transient_deleted_is_gone") {
        return;
    }
    let veth = Veth::new("uv");
    let mut a = PacketLink::open(&veth.a, &packet_opts()).expect("open a");
    let mut b = PacketLink::open(&veth.b, &packet_opts()).expect("open b");
    let pool = FramePool::new(1600, 8);

    // Down: ENETDOWN once on receive, Transient; sends fail and are counted.
    ip(&["link", "set", &veth.b, "down"]);
    match first_error(&mut b, &pool) {
        LinkError::Transient(e) => assert_eq!(e.raw_os_error(), Some(libc::ENETDOWN)),
        other => panic!("expected Transient(ENETDOWN), got {other:?}"),
    }
    let mut q = VecDeque::from([Frame::from_slice(&test_frame(1, 64))]);
    let st = b.send_batch(&mut q).expect("transient");
    assert_eq!((st.frames, st.errors), (0, 1));

    // Up again: frames flow.
    ip(&["link", "set", &veth.b, "up"]);
    let bytes = test_frame(marker(), 100);
    let deadline = Instant::now() + WAIT;
    let mut arrived = false;
    while !arrived && Instant::now() < deadline {
        // The veth needs carrier on both ends; retry until the frame gets through.
        send_one(&mut a, &bytes);
        arrived = recv_for(&mut b, &pool, &bytes, Duration::from_millis(100))
            .found
            .is_some();
    }
    assert!(arrived, "frames flow after the interface comes back up");

    // Deleted while up: ENETDOWN, and the index is gone, so Gone.
    ip(&["link", "del", &veth.a]);
    match first_error(&mut b, &pool) {
        LinkError::Gone(e) => assert_eq!(e.raw_os_error(), Some(libc::ENETDOWN)),
        other => panic!("expected Gone(ENETDOWN), got {other:?}"),
    }
    let mut q = VecDeque::from([Frame::from_slice(&test_frame(1, 64))]);
    match b.send_batch(&mut q) {
        Err(LinkError::Gone(e)) => assert_eq!(e.raw_os_error(), Some(libc::ENXIO)),
        other => panic!("expected Gone(ENXIO) on send, got {other:?}"),
    }
}

#[test]
fn open_errors_name_the_interface() {
    if !require_root("open_errors_name_the_interface") {
        return;
    }
    let err = PacketLink::open("nosuchif0", &packet_opts()).expect_err("no such interface");
    assert!(err.to_string().contains("nosuchif0"), "{err}");
    let err = TapLink::create("bad/name", &TapOptions::default()).expect_err("invalid name");
    assert!(err.to_string().contains("bad/name"), "{err}");
    let err = TapLink::create_in_netns(
        std::path::Path::new("/run/netns/does-not-exist"),
        "eth0",
        &TapOptions::default(),
    )
    .expect_err("no such netns");
    assert!(err.to_string().contains("does-not-exist"), "{err}");
}

#[test]
fn packet_deleted_while_down_is_gone_on_send() {
    if !require_root("packet_deleted_while_down_is_gone_on_send") {
        return;
    }
    // The kernel posts ENETDOWN only when a running socket's interface goes down. If the
    // interface was already down (error consumed) when it is deleted, receive reports nothing
    // more; the next send fails with ENXIO, which is Gone.
    let veth = Veth::new("uv");
    let mut b = PacketLink::open(&veth.b, &packet_opts()).expect("open b");
    let pool = FramePool::new(1600, 8);
    let mut out = Vec::new();
    ip(&["link", "set", &veth.b, "down"]);
    assert!(matches!(
        first_error(&mut b, &pool),
        LinkError::Transient(_)
    ));
    ip(&["link", "del", &veth.a]);
    // Frames queued before the deletion may still be read; then the socket is just quiet.
    for _ in 0..10 {
        let st = b
            .recv_batch(&pool, &mut out, 64)
            .expect("no error left to report");
        if st.drained {
            break;
        }
    }
    let mut q = VecDeque::from([Frame::from_slice(&test_frame(1, 64))]);
    match b.send_batch(&mut q) {
        Err(LinkError::Gone(e)) => assert_eq!(e.raw_os_error(), Some(libc::ENXIO)),
        other => panic!("expected Gone(ENXIO), got {other:?}"),
    }
}
