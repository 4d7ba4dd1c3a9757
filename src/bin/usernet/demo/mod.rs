//! `usernet demo`: the main job on throw-away namespaces.
//!
//! Creates two network namespaces, `web` and `client`, gives each an `eth0` TAP created inside
//! it and joined to the network `demo`, whose gateway (10.88.0.1) serves DHCP and DNS. Then,
//! one line per step:
//!
//! 1. each namespace gets its address by DHCP with usernet's own client
//!    ([`dhcp_client`]), sending its port name as hostname;
//! 2. pings: client to the gateway, client to web, web to client (ICMP echo over a raw socket
//!    inside the namespace);
//! 3. resolves `web.usernet` from inside the client namespace with a DNS query to the gateway,
//!    and shows that a name outside the network fails (SERVFAIL): the demo's gateway has no
//!    upstream resolvers, so nothing leaves the machine;
//! 4. serves a small HTML page over HTTP/1.1 from a thread listening inside the web namespace
//!    and fetches `http://web.usernet/` from the client namespace at the resolved address;
//! 5. NAT: fetches a page from a server on the host's loopback by the name `host.usernet`
//!    (the gateway's address, mapped to the host's 127.0.0.1) from the client namespace;
//! 6. port forward: publishes web:80 on the host (`-p 127.0.0.1:PORT:80`) and fetches the page
//!    from the host;
//! 7. streams `--mib` MiB of TCP from client to web and checks every byte arrived intact;
//!
//! and prints the per-port counters, the learned MACs, the DHCP leases and the DNS records with
//! the `usernet ctl` tables. Everything it made is removed on the way out, also on error or
//! Ctrl-C: the namespaces are RAII guards, the HTTP server thread stops when its guard drops,
//! the engine (bridge, ports, gateway) shuts down. Every wait is bounded.
//!
//! No traffic leaves the demo's namespaces and loopback: the gateway's DNS upstream list is
//! empty (`Upstreams::Explicit(vec![])`), never the host's resolv.conf.

use std::hash::Hasher;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use usernet::control::api::Request;
use usernet::gateway::GatewayConfig;
use usernet::gateway::dns::Upstreams;
use usernet::link::netns::run_in_netns;
use usernet::{Engine, EngineConfig, Handle, PortSpec};

mod dhcp_client;
use dhcp_client::ClientLease;

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

/// One line of the demo's report: what the step is, then what happened.
fn step(label: &str, what: impl std::fmt::Display) {
    println!("  {label:<14}{what}");
}

/// Fails once the engine was stopped (Ctrl-C), so the demo unwinds and cleans up.
fn check(h: &Handle) -> anyhow::Result<()> {
    if h.is_stopped() {
        bail!("interrupted");
    }
    Ok(())
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

const SUBNET: &str = "10.88.0.0/24";
const DOMAIN: &str = "usernet";
const DHCP_TIMEOUT: Duration = Duration::from_secs(5);
const HTTP_PORT: u16 = 80;
const TCP_PORT: u16 = 5201;

/// The page the web namespace serves.
const PAGE: &str = "<!doctype html>\n<html><head><title>usernet demo</title></head>\n\
<body><h1>Hello from the web namespace</h1>\n\
<p>Served over a usernet network, fetched by name.</p></body></html>\n";

pub fn run(a: Args) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the demo creates network namespaces and TAP devices: run it as root");
    }
    let t0 = Instant::now();
    let tag = format!("{:x}", std::process::id());
    println!("usernet demo");
    // The engine and the Ctrl-C handler come first, so that an interrupt at any later point
    // unwinds through the guards below. On the way out the namespace names go first (`ip netns
    // del`), then the engine: its TAP descriptors were the namespaces' last users.
    let engine = Engine::start(EngineConfig {
        loops: a.loops.clamp(1, 64),
        ..EngineConfig::default()
    })?;
    let h = engine.handle();
    crate::stop_on_signals(h.clone())?;
    let ns_web = Netns::new(format!("usernet-demo-{tag}-web"))?;
    let ns_client = Netns::new(format!("usernet-demo-{tag}-client"))?;
    step(
        "namespaces",
        format!("{} and {} (throw-away)", ns_web.name, ns_client.name),
    );
    check(&h)?;
    h.add_network("demo", Default::default())?;
    let mut gw_cfg = GatewayConfig::new("demo", SUBNET.parse()?);
    gw_cfg.domain = DOMAIN.into();
    // No upstream resolvers: names outside the network get SERVFAIL, nothing leaves the host.
    gw_cfg.upstreams = Upstreams::Explicit(vec![]);
    let gw = h.add_gateway(gw_cfg)?;
    let gw_addr = gw.cfg.addr;
    step(
        "network",
        format!(
            "demo, {SUBNET}, gateway {gw_addr} (ARP, ping, DHCP, DNS for *.{DOMAIN}; \
             no upstream DNS)"
        ),
    );
    for (ns, port) in [(&ns_web, "web"), (&ns_client, "client")] {
        let mut spec = PortSpec::new("demo", port);
        spec.netns = Some(ns.path());
        h.open_port(&spec)?;
    }
    step(
        "ports",
        format!(
            "web = eth0 in {}, client = eth0 in {} (TAPs made inside them)",
            ns_web.name, ns_client.name
        ),
    );

    // 1. Addresses by DHCP, the port name as hostname.
    let mut leases: Vec<ClientLease> = Vec::new();
    for (ns, name) in [(&ns_web, "web"), (&ns_client, "client")] {
        check(&h)?;
        let start = Instant::now();
        let l = dhcp_client::acquire(&ns.path(), "eth0", Some(name), DHCP_TIMEOUT)
            .with_context(|| format!("DHCP in the {name} namespace"))?;
        step(
            &format!("dhcp {name}"),
            format!(
                "{}/{} via DHCP in {}: router {}, dns {}, domain {}, lease {} s",
                l.addr,
                l.prefix_len,
                ms(start.elapsed()),
                l.router.map_or("-".into(), |r| r.to_string()),
                l.dns
                    .iter()
                    .map(Ipv4Addr::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
                l.domain.as_deref().unwrap_or("-"),
                l.lease_secs
            ),
        );
        leases.push(l);
    }
    let (web_addr, client_addr) = (leases[0].addr, leases[1].addr);

    // 2. Pings, on the addresses DHCP gave.
    for (label, who, from, to) in [
        ("ping gateway", "client", &ns_client, gw_addr),
        ("ping web", "client", &ns_client, web_addr),
        ("ping client", "web", &ns_web, client_addr),
    ] {
        check(&h)?;
        let rtts = ping(from.path(), to, 3)?;
        let shown: Vec<String> = rtts
            .iter()
            .map(|d| format!("{:.0} us", d.as_secs_f64() * 1e6))
            .collect();
        step(
            label,
            format!("{who} -> {to}: 3/3 replies, rtt {}", shown.join(", ")),
        );
    }

    // 3. Names, asked of the gateway from inside the client namespace.
    check(&h)?;
    let web_name = format!("web.{DOMAIN}");
    let ans = resolve(ns_client.path(), gw_addr, &web_name)?;
    if ans.code != ResponseCode::NoError || ans.addrs != [web_addr] {
        bail!(
            "DNS: {web_name} answered {} {:?}, expected {web_addr}",
            rcode(ans.code),
            ans.addrs
        );
    }
    step(
        "dns",
        format!(
            "client asks {gw_addr}: {web_name} A {} ({}, {})",
            ans.addrs
                .iter()
                .map(Ipv4Addr::to_string)
                .collect::<Vec<_>>()
                .join(","),
            if ans.authoritative {
                "authoritative"
            } else {
                "not authoritative"
            },
            ms(ans.took)
        ),
    );
    let outside = resolve(ns_client.path(), gw_addr, "example.com")?;
    step(
        "dns outside",
        format!(
            "example.com -> {} in {} (the demo gives the gateway no upstream resolver)",
            rcode(outside.code),
            ms(outside.took)
        ),
    );

    // 4. HTTP by name: a server thread in the web namespace, a GET from the client namespace.
    check(&h)?;
    let server = HttpServer::start(&ns_web.path(), HTTP_PORT, 8)?;
    // By the address the name resolved to (checked above to be the one web got by DHCP).
    let resolved = ans.addrs[0];
    let got = http_get(Some(ns_client.path()), resolved, HTTP_PORT, &web_name, "/")?;
    if got.status != 200 || got.body != PAGE {
        bail!(
            "HTTP: GET http://{web_name}/ gave status {} and a {}-byte body that is not the page",
            got.status,
            got.body.len()
        );
    }
    step(
        "http",
        format!(
            "client GET http://{web_name}/ ({resolved}:{HTTP_PORT}): {} {}, {}-byte page intact, \
             in {}",
            got.status,
            got.reason,
            got.body.len(),
            ms(got.took)
        ),
    );

    // 5. NAT: a server on the host's loopback, reached from the client by the name
    //    host.usernet (the gateway's address, mapped to the host's 127.0.0.1).
    check(&h)?;
    let host_srv = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let host_port = host_srv.local_addr()?.port();
    let host_http = HttpServer::serve(host_srv, 4)?;
    let hans = resolve(ns_client.path(), gw_addr, "host.usernet")?;
    let haddr = *hans.addrs.first().context("host.usernet did not resolve")?;
    let got = http_get(
        Some(ns_client.path()),
        haddr,
        host_port,
        "host.usernet",
        "/",
    )?;
    if got.status != 200 || got.body != PAGE {
        bail!(
            "NAT: GET http://host.usernet:{host_port}/ gave status {}",
            got.status
        );
    }
    step(
        "nat",
        format!(
            "client GET http://host.usernet:{host_port}/ ({haddr} -> host 127.0.0.1): {} {}, \
             page intact, in {}",
            got.status,
            got.reason,
            ms(got.took)
        ),
    );
    drop(host_http);

    // 6. Port forward (`-p 127.0.0.1:PORT:80` to the endpoint `web`), fetched from the host:
    //    through usernet's TCP stack, then spliced (relayed by the kernel from inside web's
    //    namespace).
    forward_step(&h, false)?;
    forward_step(&h, true)?;
    drop(server);

    // 7. Bulk TCP through the switch.
    check(&h)?;
    let (gbit, secs) = transfer(&h, ns_web.path(), ns_client.path(), web_addr, a.mib << 20)?;
    step(
        "tcp",
        format!(
            "client -> web {} MiB in {secs:.2} s = {gbit:.2} Gbit/s, all bytes intact",
            a.mib
        ),
    );
    check(&h)?;

    let stats = serde_json::to_value(h.stats())?;
    println!("\nper-port counters (as `usernet ctl stats`; gw.demo is the gateway):");
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
    let l = serde_json::to_value(h.leases(Some("demo"))?)?;
    println!("\nDHCP leases (as `usernet ctl leases`):");
    print!(
        "{}",
        crate::ctl::render(&Request::Leases { network: None }, &l)
    );
    let d = serde_json::to_value(h.dns_list(Some("demo"))?)?;
    println!("\nDNS records (as `usernet ctl dns ls`; port names and DHCP hostnames):");
    print!(
        "{}",
        crate::ctl::render(&Request::DnsLs { network: None }, &d)
    );

    check(&h)?;
    engine.shutdown();
    drop(ns_client);
    drop(ns_web);
    println!(
        "\nremoved both namespaces, their TAPs and the gateway; demo done in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The usual spelling of a DNS response code (`NOERROR`, `SERVFAIL`, ...).
fn rcode(c: ResponseCode) -> String {
    match c {
        ResponseCode::NoError => "NOERROR".into(),
        ResponseCode::FormErr => "FORMERR".into(),
        ResponseCode::ServFail => "SERVFAIL".into(),
        ResponseCode::NXDomain => "NXDOMAIN".into(),
        ResponseCode::Refused => "REFUSED".into(),
        other => other.to_string(),
    }
}

/// What the gateway answered to an A query.
struct DnsAnswer {
    code: ResponseCode,
    addrs: Vec<Ipv4Addr>,
    authoritative: bool,
    took: Duration,
}

/// Publishes web's port 80 on a free loopback port (spliced or not), fetches the page through
/// it from the host and prints the step.
fn forward_step(h: &Handle, splice: bool) -> anyhow::Result<()> {
    let free = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port();
    let fwd = h.add_forward(&usernet::nat::forward::Forward {
        network: "demo".into(),
        spec: format!("127.0.0.1:{free}:{HTTP_PORT}/tcp").parse()?,
        to: "web".into(),
        splice,
    })?;
    let (name, how) = if splice {
        ("splice", ", splice")
    } else {
        ("forward", "")
    };
    let got = http_get(None, Ipv4Addr::LOCALHOST, free, "localhost", "/")?;
    if got.status != 200 || got.body != PAGE {
        bail!(
            "{name}: GET http://127.0.0.1:{free}/ gave status {}",
            got.status
        );
    }
    step(
        name,
        format!(
            "host GET http://127.0.0.1:{free}/ -> web:{HTTP_PORT} (-p {}{how}): {} {}, page intact, in {}",
            fwd.publish,
            got.status,
            got.reason,
            ms(got.took)
        ),
    );
    Ok(())
}

/// Asks `server` for the A records of `name` over UDP from inside `netns` (three tries of 1 s).
fn resolve(netns: PathBuf, server: Ipv4Addr, name: &str) -> anyhow::Result<DnsAnswer> {
    let sock = run_in_netns(&netns, move || {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        s.connect((server, 53))?;
        s.set_read_timeout(Some(Duration::from_millis(200)))?;
        Ok(s)
    })?;
    let id = Message::query().metadata.id; // a random id
    let mut q = Message::new(id, MessageType::Query, OpCode::Query);
    q.metadata.recursion_desired = true;
    let qname = Name::from_ascii(format!("{name}."))?;
    q.queries.push(Query::query(qname.clone(), RecordType::A));
    let bytes = q.to_vec()?;
    let start = Instant::now();
    let mut buf = [0u8; 1500];
    for _ in 0..3 {
        sock.send(&bytes)?;
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline {
            let Ok(n) = sock.recv(&mut buf) else {
                continue; // timeout tick; the loop checks the deadline
            };
            let Ok(m) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            if m.metadata.id != id || m.metadata.message_type != MessageType::Response {
                continue;
            }
            let addrs = m
                .answers
                .iter()
                .filter(|r| r.name == qname)
                .filter_map(|r| match &r.data {
                    RData::A(a) => Some(a.0),
                    _ => None,
                })
                .collect();
            return Ok(DnsAnswer {
                code: m.metadata.response_code,
                addrs,
                authoritative: m.metadata.authoritative,
                took: start.elapsed(),
            });
        }
    }
    bail!("DNS: no answer from {server} for {name} within 3 s")
}

/// A small HTTP/1.1 server on a thread, listening inside a namespace; serves [`PAGE`] at `/`
/// and 404 elsewhere, at most `max` requests, and stops when dropped.
struct HttpServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    fn start(netns: &Path, port: u16, max: u32) -> anyhow::Result<HttpServer> {
        let listener = run_in_netns(netns, move || {
            TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))
        })?;
        Self::serve(listener, max)
    }

    /// Serves on an already bound listener.
    fn serve(listener: TcpListener, max: u32) -> anyhow::Result<HttpServer> {
        // Non-blocking and polled, so that the thread notices `stop` within 50 ms.
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("usernet-demo-http".into())
            .spawn(move || {
                let mut served = 0;
                while served < max && !flag.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((conn, _)) => {
                            served += 1;
                            if let Err(e) = serve(conn) {
                                tracing::warn!("demo HTTP server: {e}");
                            }
                        }
                        Err(_) => wait_readable(&listener, Duration::from_millis(50)),
                    }
                }
            })?;
        Ok(HttpServer {
            stop,
            thread: Some(thread),
        })
    }
}

/// Waits until `l` has a connection to accept, at most `max`.
fn wait_readable(l: &TcpListener, max: Duration) {
    let mut pfd = libc::pollfd {
        fd: l.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: polls one valid pollfd for at most `max`.
    let rc = unsafe { libc::poll(&mut pfd, 1, max.as_millis() as libc::c_int) };
    if rc < 0 {
        // EINTR or worse: do not spin.
        std::thread::sleep(max);
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Answers one request on `conn` (read and write each bounded by 2 s) and closes it.
fn serve(mut conn: TcpStream) -> std::io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    conn.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 8192 {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            break;
        }
        req.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&req);
    let mut first = head.lines().next().unwrap_or_default().split_whitespace();
    let (status, body) = match (first.next(), first.next()) {
        (Some("GET"), Some("/")) => ("200 OK", PAGE),
        (Some("GET"), _) => ("404 Not Found", "not found\n"),
        _ => ("400 Bad Request", "bad request\n"),
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\nServer: usernet-demo\r\nContent-Type: text/html; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(resp.as_bytes())
}

/// An HTTP response.
struct HttpResponse {
    status: u16,
    reason: String,
    body: String,
    took: Duration,
}

/// `GET path` with `Host: host` from inside `netns` (or the host) to `addr:port`; bounded by
/// 5 s per step.
fn http_get(
    netns: Option<PathBuf>,
    addr: Ipv4Addr,
    port: u16,
    host: &str,
    path: &str,
) -> anyhow::Result<HttpResponse> {
    let start = Instant::now();
    let to = SocketAddr::from((addr, port));
    let mut s = match netns {
        Some(ns) => run_in_netns(&ns, move || {
            TcpStream::connect_timeout(&to, Duration::from_secs(5))
        })?,
        None => TcpStream::connect_timeout(&to, Duration::from_secs(5))?,
    };
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: usernet-demo\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.take(1 << 20)
        .read_to_end(&mut raw)
        .context("reading the HTTP response")?;
    let took = start.elapsed();
    let text = String::from_utf8(raw).context("HTTP response is not UTF-8")?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("HTTP response without end of headers")?;
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let (Some(version), Some(code), reason) = (parts.next(), parts.next(), parts.next()) else {
        bail!("bad HTTP status line {status_line:?}");
    };
    if !version.starts_with("HTTP/1.") {
        bail!("bad HTTP status line {status_line:?}");
    }
    let status: u16 = code
        .parse()
        .with_context(|| format!("bad HTTP status line {status_line:?}"))?;
    let length = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok());
    if length.is_some_and(|n| n != body.len()) {
        bail!(
            "HTTP: Content-Length {length:?} but {} body bytes",
            body.len()
        );
    }
    Ok(HttpResponse {
        status,
        reason: reason.unwrap_or_default().to_string(),
        body: body.to_string(),
        took,
    })
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

/// How long the TCP transfer may make no progress.
const STALL: Duration = Duration::from_secs(10);

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock
            | std::io::ErrorKind::TimedOut
            | std::io::ErrorKind::Interrupted
    )
}

/// Streams `bytes` over TCP from `client_ns` to a listener in `server_ns`; checks a hash of the
/// received bytes against the sent ones. Returns (Gbit/s, seconds).
fn transfer(
    h: &Handle,
    server_ns: PathBuf,
    client_ns: PathBuf,
    server: Ipv4Addr,
    bytes: u64,
) -> anyhow::Result<(f64, f64)> {
    let addr = SocketAddrV4::new(server, TCP_PORT);
    let listener = run_in_netns(&server_ns, move || {
        let l = TcpListener::bind(addr)?;
        l.set_nonblocking(true)?;
        Ok(l)
    })?;
    let rh = h.clone();
    let rx = std::thread::spawn(move || -> anyhow::Result<(u64, u64)> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut c = loop {
            match listener.accept() {
                Ok((c, _)) => break c,
                Err(_) if Instant::now() < deadline => {
                    check(&rh)?;
                    wait_readable(&listener, Duration::from_millis(50));
                }
                Err(e) => return Err(e).context("no connection within 5 s"),
            }
        };
        c.set_nonblocking(false)?;
        c.set_read_timeout(Some(Duration::from_millis(500)))?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0u64;
        let mut progress = Instant::now();
        loop {
            match c.read(&mut buf) {
                Ok(0) => return Ok((total, h.finish())),
                Ok(n) => {
                    h.write(&buf[..n]);
                    total += n as u64;
                    progress = Instant::now();
                }
                Err(e) if is_timeout(&e) => {
                    check(&rh)?;
                    if progress.elapsed() > STALL {
                        bail!("nothing received for {} s", STALL.as_secs());
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    });
    let mut stream = run_in_netns(&client_ns, move || {
        TcpStream::connect_timeout(&addr.into(), Duration::from_secs(5))
    })?;
    stream.set_write_timeout(Some(Duration::from_millis(500)))?;
    let mut block = vec![0u8; 1 << 16];
    let mut x: u32 = 0x1234_5678;
    for b in block.iter_mut() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    let mut hash = std::collections::hash_map::DefaultHasher::new();
    let start = Instant::now();
    let mut sent = 0u64;
    let mut progress = Instant::now();
    while sent < bytes {
        let n = (bytes - sent).min(block.len() as u64) as usize;
        // Vary the block so reordering or duplication would change the hash.
        block[0] = (sent >> 16) as u8;
        let mut off = 0;
        while off < n {
            // Short timeouts, so that Ctrl-C and a stall are noticed within a second.
            match stream.write(&block[off..n]) {
                Ok(k) => {
                    off += k;
                    progress = Instant::now();
                }
                Err(e) if is_timeout(&e) => {
                    check(h)?;
                    if progress.elapsed() > STALL {
                        bail!(
                            "TCP transfer stalled: nothing sent for {} s",
                            STALL.as_secs()
                        );
                    }
                }
                Err(e) => return Err(e).context("sending"),
            }
        }
        hash.write(&block[..n]);
        sent += n as u64;
        if sent.is_multiple_of(16 << 20) {
            check(h)?;
        }
    }
    stream.shutdown(std::net::Shutdown::Write)?;
    let (got, got_hash) = rx
        .join()
        .map_err(|_| anyhow::anyhow!("receiver thread panicked"))?
        .context("receiving the TCP stream")?;
    let secs = start.elapsed().as_secs_f64();
    if got != sent || got_hash != hash.finish() {
        bail!("transfer corrupted: sent {sent} bytes, received {got}, hashes differ");
    }
    Ok((sent as f64 * 8.0 / secs / 1e9, secs))
}
