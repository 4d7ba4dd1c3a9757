//! `usernet demo`: the main job on throw-away namespaces.
//!
//! Creates two network namespaces, gives each an `eth0` TAP created inside it and joined to the
//! network `demo`, addresses them 10.88.0.2 and 10.88.0.3, then: pings each way (ICMP echo over
//! a raw socket inside the namespace), moves a TCP stream from one to the other and checks every
//! byte arrived intact, and prints the per-port counters and the learned MACs. Everything it made
//! is removed on the way out, also on error or Ctrl-C.

use std::hash::Hasher;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use usernet::control::api::Request;
use usernet::link::netns::run_in_netns;
use usernet::{Engine, EngineConfig, PortSpec};

/// Arguments of `usernet demo`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// MiB to move through the switch in the TCP test.
    #[arg(long, default_value_t = 256)]
    mib: u64,
    /// Event-loop threads.
    #[arg(long, default_value_t = 1)]
    loops: usize,
}

/// A namespace made by `ip netns add`, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new(name: String) -> anyhow::Result<Netns> {
        ip(&["netns", "add", &name])?;
        let ns = Netns { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (install iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

pub fn run(a: Args) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the demo creates network namespaces and TAP devices: run it as root");
    }
    let t0 = Instant::now();
    let tag = format!("{:x}", std::process::id());
    println!("usernet demo");
    let ns_a = Netns::new(format!("usernet-demo-{tag}-a"))?;
    let ns_b = Netns::new(format!("usernet-demo-{tag}-b"))?;
    println!("  namespaces   {} and {}", ns_a.name, ns_b.name);

    let engine = Engine::start(EngineConfig {
        loops: a.loops.clamp(1, 64),
        ..EngineConfig::default()
    })?;
    let h = engine.handle();
    crate::stop_on_signals(h.clone())?;
    h.add_network("demo", Default::default())?;
    let addrs = [Ipv4Addr::new(10, 88, 0, 2), Ipv4Addr::new(10, 88, 0, 3)];
    for (ns, (port, addr)) in [&ns_a, &ns_b]
        .iter()
        .zip([("a", addrs[0]), ("b", addrs[1])])
    {
        let mut spec = PortSpec::new("demo", port);
        spec.netns = Some(ns.path());
        h.open_port(&spec)?;
        ip(&[
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ])?;
    }
    println!(
        "  network      demo: port a = eth0 in {} ({}), port b = eth0 in {} ({})",
        ns_a.name, addrs[0], ns_b.name, addrs[1]
    );

    for (from, to, label) in [(&ns_a, addrs[1], "a -> b"), (&ns_b, addrs[0], "b -> a")] {
        let rtts = ping(from.path(), to, 3)?;
        let shown: Vec<String> = rtts
            .iter()
            .map(|d| format!("{:.0} us", d.as_secs_f64() * 1e6))
            .collect();
        println!("  ping {label}  3/3 replies, rtt {}", shown.join(", "));
    }

    let (gbit, secs) = transfer(ns_b.path(), ns_a.path(), addrs[1], a.mib << 20)?;
    println!(
        "  tcp a -> b   {} MiB in {:.2} s = {:.2} Gbit/s, all bytes intact",
        a.mib, secs, gbit
    );

    let stats = serde_json::to_value(h.stats())?;
    println!("\nper-port counters (as `usernet ctl stats`):");
    print!(
        "{}",
        crate::ctl::stats_table(stats.as_array().map(Vec::as_slice).unwrap_or(&[]))
    );
    let fdb = serde_json::to_value(h.fdb(Some("demo"))?)?;
    println!("\nlearned MACs (as `usernet ctl fdb`):");
    print!(
        "{}",
        crate::ctl::render(&Request::Fdb { network: None }, &fdb)
    );

    if h.is_stopped() {
        bail!("interrupted");
    }
    engine.shutdown();
    drop(ns_a);
    drop(ns_b);
    println!(
        "\nremoved both namespaces and their TAPs; demo done in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Sends `n` ICMP echo requests from inside `netns` to `dst`; returns the round-trip times.
fn ping(netns: PathBuf, dst: Ipv4Addr, n: u16) -> anyhow::Result<Vec<Duration>> {
    let sock = run_in_netns(&netns, || {
        // SAFETY: plain socket(2) call; the result is checked and then owned.
        let fd = unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::IPPROTO_ICMP,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    })?;
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 200_000,
    };
    // SAFETY: sets SO_RCVTIMEO from a valid timeval of the right size.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
    }
    let id = (std::process::id() & 0xffff) as u16;
    let mut rtts = Vec::new();
    for seq in 1..=n {
        let payload = [0x55u8; 56];
        let hdr = etherparse::Icmpv4Header::with_checksum(
            etherparse::Icmpv4Type::EchoRequest(etherparse::IcmpEchoHeader { id, seq }),
            &payload,
        );
        let mut pkt = hdr.to_bytes().to_vec();
        pkt.extend_from_slice(&payload);
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(dst).to_be(),
            },
            sin_zero: [0; 8],
        };
        let start = Instant::now();
        // SAFETY: sends `pkt` to a valid sockaddr_in of the right size.
        let r = unsafe {
            libc::sendto(
                sock.as_raw_fd(),
                pkt.as_ptr().cast(),
                pkt.len(),
                0,
                (&sa as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if r < 0 {
            bail!("ping {dst}: {}", std::io::Error::last_os_error());
        }
        let deadline = start + Duration::from_secs(2);
        loop {
            if Instant::now() > deadline {
                bail!("ping {dst}: no reply to echo request {seq} within 2 s");
            }
            let mut buf = [0u8; 1500];
            // SAFETY: receives into a valid buffer of the given length.
            let got =
                unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if got < 0 {
                continue; // timeout tick; loop checks the deadline
            }
            let Ok(ip) = etherparse::Ipv4Slice::from_slice(&buf[..got as usize]) else {
                continue;
            };
            let Ok(icmp) = etherparse::Icmpv4Slice::from_slice(ip.payload().payload) else {
                continue;
            };
            if let etherparse::Icmpv4Type::EchoReply(e) = icmp.icmp_type()
                && e.id == id
                && e.seq == seq
                && ip.header().source_addr() == dst
            {
                rtts.push(start.elapsed());
                break;
            }
        }
    }
    Ok(rtts)
}

/// Streams `bytes` over TCP from `client_ns` to a listener in `server_ns`; checks a hash of the
/// received bytes against the sent ones. Returns (Gbit/s, seconds).
fn transfer(
    server_ns: PathBuf,
    client_ns: PathBuf,
    server: Ipv4Addr,
    bytes: u64,
) -> anyhow::Result<(f64, f64)> {
    let addr = SocketAddrV4::new(server, 5201);
    let listener = run_in_netns(&server_ns, move || TcpListener::bind(addr))?;
    let rx = std::thread::spawn(move || -> std::io::Result<(u64, u64)> {
        let (mut c, _) = listener.accept()?;
        c.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0u64;
        loop {
            let n = c.read(&mut buf)?;
            if n == 0 {
                return Ok((total, h.finish()));
            }
            h.write(&buf[..n]);
            total += n as u64;
        }
    });
    let mut stream = run_in_netns(&client_ns, move || {
        TcpStream::connect_timeout(&addr.into(), Duration::from_secs(5))
    })?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut block = vec![0u8; 1 << 16];
    let mut x: u32 = 0x1234_5678;
    for b in block.iter_mut() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < bytes {
        let n = (bytes - sent).min(block.len() as u64) as usize;
        // Vary the block so reordering or duplication would change the hash.
        block[0] = (sent >> 16) as u8;
        stream.write_all(&block[..n])?;
        h.write(&block[..n]);
        sent += n as u64;
    }
    stream.shutdown(std::net::Shutdown::Write)?;
    let (got, got_hash) = rx
        .join()
        .map_err(|_| anyhow::anyhow!("receiver thread panicked"))?
        .context("receiving")?;
    let secs = start.elapsed().as_secs_f64();
    if got != sent || got_hash != h.finish() {
        bail!("transfer corrupted: sent {sent} bytes, received {got}, hashes differ");
    }
    Ok((sent as f64 * 8.0 / secs / 1e9, secs))
}
