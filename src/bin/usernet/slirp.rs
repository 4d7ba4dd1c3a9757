//! `usernet slirp4netns`: a drop-in for slirp4netns (also when the binary is invoked under that
//! name), for container runtimes that start slirp4netns today (RootlessKit, Podman).
//!
//! Same command line (`PID|PATH [TAPNAME]` and the options below), same defaults (10.0.2.0/24,
//! gateway and host loopback .2, DNS .3, guest .100, DHCP .15–.30), same ready-fd protocol
//! (write "1", close), exit-fd (exit when it hangs up or becomes readable) and the same JSON API
//! on `--api-socket` (`add_hostfwd`, `list_hostfwd`, `remove_hostfwd`; one request per
//! connection; `{"return": ...}` or `{"error": {"desc": ...}}`). Underneath it is usernet:
//! a network with a gateway and NAT, the TAP as its only endpoint.
//!
//! Unlike slirp4netns, the sandbox is on by default (as in pasta): once the TAP, the API socket
//! and the threads are set up, capabilities are dropped and the seccomp allowlist installed.
//! `--enable-seccomp` is accepted (the allowlist is on anyway); `--enable-sandbox` adds what
//! slirp4netns's does: a private mount namespace whose root holds only `/etc` and `/run`, and
//! CAP_NET_BIND_SERVICE kept; `--disable-sandbox` opts out of all of it. Port forwards added
//! through the API afterwards only bind sockets, which the allowlist permits.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use rustix::event::{PollFd, PollFlags};
use serde_json::{Value, json};
use usernet::bridge::PortPolicy;
use usernet::control::api::fdb_config;
use usernet::gateway::GatewayConfig;
use usernet::nat::forward::{Forward, ForwardSpec, Proto};
use usernet::spawn::{IfConfig, tap_in_namespace};
use usernet::{Engine, EngineConfig, Handle};

/// slirp4netns's command line.
#[derive(clap::Args, Debug)]
#[command(
    about = "User-mode networking for unprivileged network namespaces (slirp4netns-compatible, by usernet)"
)]
pub struct Args {
    /// Target: PID (default) or a netns path with --netns-type=path.
    #[arg(value_name = "PID|PATH")]
    target: String,
    /// Name of the TAP to create in the namespace.
    #[arg(value_name = "TAPNAME", default_value = "tap0")]
    tapname: String,
    /// Bring up the interface: IP 10.0.2.100 (or CIDR + 100), default route via .2.
    #[arg(short = 'c', long = "configure")]
    configure: bool,
    /// FD to terminate usernet when it is closed (or becomes readable).
    #[arg(short = 'e', long = "exit-fd", value_name = "FD")]
    exit_fd: Option<RawFd>,
    /// FD to write "1" to, then close, when the network is configured.
    #[arg(short = 'r', long = "ready-fd", value_name = "FD")]
    ready_fd: Option<RawFd>,
    /// MTU (default 1500, max 65521).
    #[arg(short = 'm', long = "mtu", default_value_t = 1500)]
    mtu: u32,
    /// Prohibit connecting to 127.0.0.1:* on the host through 10.0.2.2.
    #[arg(long = "disable-host-loopback")]
    disable_host_loopback: bool,
    /// Network CIDR (default 10.0.2.0/24; prefix at most /25).
    #[arg(long = "cidr", default_value = "10.0.2.0/24")]
    cidr: String,
    /// Network namespace type: pid or path.
    #[arg(long = "netns-type", default_value = "pid", value_parser = ["pid", "path"])]
    netns_type: String,
    /// User namespace to join first (default: the target PID's, for --netns-type=pid).
    #[arg(long = "userns-path", value_name = "PATH")]
    userns_path: Option<PathBuf>,
    /// API socket path (add_hostfwd, list_hostfwd, remove_hostfwd).
    #[arg(short = 'a', long = "api-socket", value_name = "PATH")]
    api_socket: Option<PathBuf>,
    /// Enable IPv6: prefix fd00::/64, gateway fd00::2 (the host's ::1 unless
    /// --disable-host-loopback), DNS fd00::3; with -c the guest gets fd00::100/64 too.
    #[arg(short = '6', long = "enable-ipv6")]
    enable_ipv6: bool,
    /// As slirp4netns: a new mount namespace whose root holds only /etc and /run, and all
    /// capabilities dropped but CAP_NET_BIND_SERVICE (usernet's seccomp sandbox is on anyway).
    #[arg(long = "enable-sandbox")]
    enable_sandbox: bool,
    /// Accepted for slirp4netns compatibility: the seccomp allowlist is on by default.
    #[arg(long = "enable-seccomp")]
    enable_seccomp: bool,
    /// usernet only: do not sandbox (by default capabilities are dropped and the seccomp
    /// allowlist installed once the network is set up, as pasta does).
    #[arg(long = "disable-sandbox", conflicts_with_all = ["enable_sandbox", "enable_seccomp"])]
    disable_sandbox: bool,
    /// Outgoing IPv4 address to bind NAT sockets to.
    #[arg(long = "outbound-addr", value_name = "IPv4")]
    outbound_addr: Option<Ipv4Addr>,
    /// Outgoing IPv6 address to bind NAT sockets to.
    #[arg(long = "outbound-addr6", value_name = "IPv6")]
    outbound_addr6: Option<std::net::Ipv6Addr>,
    /// Disable the built-in DNS server at .3.
    #[arg(long = "disable-dns")]
    disable_dns: bool,
    /// MAC address of the TAP.
    #[arg(long = "macaddress", value_name = "MAC")]
    macaddress: Option<String>,
}

/// `--cidr`, checked as slirp4netns checks it (and with its messages, which its tests match):
/// `A.B.C.D/N`, N in 1..=25 (the guest is the network address + 100), A.B.C.D the network.
fn parse_cidr(text: &str) -> anyhow::Result<ipnet::Ipv4Net> {
    let net: ipnet::Ipv4Net = text
        .parse()
        .map_err(|_| anyhow::anyhow!("invalid CIDR: {text}"))?;
    if !(1..=25).contains(&net.prefix_len()) {
        bail!("invalid CIDR: {text}: prefix length needs to be 1-25");
    }
    if net.addr() != net.network() {
        bail!(
            "invalid CIDR: CIDR needs to be a network address like {}, not like {text}",
            net.trunc()
        );
    }
    Ok(net)
}

/// The slirp4netns version usernet's slirp4netns mode matches (options, defaults, API).
pub const COMPAT_VERSION: &str = "1.2.0";

/// slirp4netns's IPv6 prefix (a /64), gateway, DNS and guest addresses.
const PREFIX6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0);
const GATEWAY6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
const DNS6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 3);
const GUEST6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x100);

/// The capability slirp4netns's `--enable-sandbox` keeps.
const CAP_NET_BIND_SERVICE: u32 = 10;

/// The highest `slirp4netns_config` version slirp4netns 1.2.0 reports (runtimes read it).
const SLIRP_CONFIG_VERSION_MAX: u32 = 4;

/// True when slirp4netns would print its version for these arguments (`-v` or `--version`
/// anywhere, as getopt finds it).
pub fn wants_version(args: &[String]) -> bool {
    args.iter().any(|a| a == "-v" || a == "--version")
}

/// What `slirp4netns --version` prints, field by field as slirp4netns 1.2.0 prints them, with
/// usernet's own values where slirp4netns names a library it links.
pub fn version_text() -> String {
    format!(
        "slirp4netns version {COMPAT_VERSION}+usernet-{}\n\
         commit: none (usernet {})\n\
         libslirp: none (usernet's own NAT)\n\
         SLIRP_CONFIG_VERSION_MAX: {SLIRP_CONFIG_VERSION_MAX}\n\
         libseccomp: none (seccompiler)\n",
        env!("CARGO_PKG_VERSION"),
        env!("CARGO_PKG_VERSION"),
    )
}

/// Parses argv when the binary was invoked as `slirp4netns`.
#[derive(clap::Parser, Debug)]
#[command(name = "slirp4netns", disable_version_flag = true)]
pub struct Standalone {
    #[command(flatten)]
    pub args: Args,
}

fn owned(fd: RawFd) -> anyhow::Result<OwnedFd> {
    // SAFETY: the descriptor number came from our caller; the borrow is used only for the
    // F_GETFD check below, which fails cleanly (EBADF) if it is not open.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    if rustix::io::fcntl_getfd(borrowed).is_err() {
        bail!("fd {fd} is not open");
    }
    // SAFETY: the caller handed this descriptor to us to own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn run(a: Args) -> anyhow::Result<i32> {
    let cidr = parse_cidr(&a.cidr)?;
    if !(68..=65521).contains(&a.mtu) {
        bail!("--mtu {}: must be 68..=65521", a.mtu);
    }
    let base = u32::from(cidr.network());
    let at = |n: u32| Ipv4Addr::from(base + n);
    let (gw, dns, guest) = (at(2), at(3), at(100));
    let netns = match a.netns_type.as_str() {
        "path" => PathBuf::from(&a.target),
        _ => {
            let pid: u32 = a
                .target
                .parse()
                .context("target must be a PID (or use --netns-type=path)")?;
            PathBuf::from(format!("/proc/{pid}/ns/net"))
        }
    };
    let userns = a.userns_path.clone().or_else(|| {
        (a.netns_type == "pid").then(|| PathBuf::from(format!("/proc/{}/ns/user", a.target)))
    });
    let mac = a
        .macaddress
        .as_deref()
        .map(str::parse::<usernet::wire::Mac>)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--macaddress: {e}"))?
        // With -c usernet picks the MAC (random, as the kernel would) so the gateway knows
        // the guest's address up front.
        .or_else(|| a.configure.then(usernet::link::ifconfig::random_mac));
    let ready = a.ready_fd.map(owned).transpose()?;
    let exit = a.exit_fd.map(owned).transpose()?;
    // Before any thread: joining a user namespace needs a single-threaded helper.
    let tap = tap_in_namespace(
        &netns,
        userns.as_deref(),
        &a.tapname,
        a.mtu,
        mac,
        a.configure.then_some(IfConfig {
            addr: guest,
            prefix: cidr.prefix_len(),
            gateway: gw,
            // As slirp4netns since --cidr6: the guest is prefix::100 (1.2.0 relied on SLAAC,
            // which the gateway's router advertisements still give too).
            addr6: a.enable_ipv6.then_some((GUEST6, 64)),
        }),
    )?;
    // The API socket is bound before the sandbox's file system hides its directory.
    let api_listener = match &a.api_socket {
        Some(p) => Some(Api::bind(p)?),
        None => None,
    };
    if a.enable_sandbox {
        // As slirp4netns: a private mount namespace whose root holds only /etc and /run. Still
        // single-threaded here (a mount namespace is per thread).
        usernet::sandbox::enter_minimal_root().context("--enable-sandbox")?;
    }
    eprintln!("starting usernet (slirp4netns mode), MTU={}", a.mtu);
    let mut cfg = EngineConfig::default();
    cfg.max_frame = a.mtu as usize + 22;
    let engine = Engine::start(cfg)?;
    let h = engine.handle();
    let net = "slirp4netns";
    let mut g = GatewayConfig::new(net, cidr);
    g.addr = gw;
    // --disable-dns: 10.0.2.3 stays (ARP, ping) but answers no DNS; queries time out, as
    // slirp4netns's test expects (slirp4netns itself would send them out to 10.0.2.3).
    g.dns_addr = Some(dns);
    g.dns_silent = a.disable_dns;
    g.dhcp_range = Some((at(15), at(30)));
    g.mtu = a.mtu.min(65535) as u16;
    g.host_loopback = !a.disable_host_loopback;
    g.outbound4 = a.outbound_addr;
    g.outbound6 = a.outbound_addr6;
    // slirp4netns's IPv6 layout: prefix fd00::/64, gateway (and the host's ::1) fd00::2, DNS
    // fd00::3, guest fd00::100.
    g.ipv6 = a
        .enable_ipv6
        .then(|| ipnet::Ipv6Net::new(PREFIX6, 64).ok())
        .flatten();
    g.ipv6_gateway = Some(GATEWAY6);
    g.dns_addr6 = Some(DNS6);
    h.add_network_with(net, fdb_config(None, None), None, Some(g))?;
    // With -c the guest's addresses are usernet's: owned by the port and known to the gateway
    // from the start (names and forwards work before the guest sends anything).
    let configured: Vec<IpAddr> = if a.configure {
        let mut v = vec![IpAddr::V4(guest)];
        if a.enable_ipv6 {
            v.push(IpAddr::V6(GUEST6));
        }
        v
    } else {
        Vec::new()
    };
    let mut policy = PortPolicy::default();
    policy.allowed_ips = configured.clone();
    let id = h.add_port(net, "guest", policy, Box::new(tap))?;
    if let (Some(m), false) = (mac, configured.is_empty()) {
        h.announce_addresses(id, m, configured)?;
    }
    let _api = api_listener.map(|l| l.start(h.clone(), guest));
    crate::stop_on_signals(h.clone())?;
    if let Some(fd) = exit {
        let h2 = h.clone();
        std::thread::spawn(move || {
            let half = rustix::event::Timespec {
                tv_sec: 0,
                tv_nsec: 500_000_000,
            };
            loop {
                let mut pfd = [PollFd::new(&fd, PollFlags::IN | PollFlags::HUP)];
                let r = rustix::event::poll(&mut pfd, Some(&half));
                if matches!(r, Ok(n) if n > 0) || h2.is_stopped() {
                    break;
                }
            }
            h2.shutdown();
        });
    }
    if !a.disable_sandbox {
        // Every descriptor is open: from here on no capabilities, no new files, and only the
        // system calls of the datapath. `--enable-sandbox` keeps CAP_NET_BIND_SERVICE, as
        // slirp4netns does (API forwards to host ports below 1024 when run as root).
        let keep: &[u32] = if a.enable_sandbox {
            &[CAP_NET_BIND_SERVICE]
        } else {
            &[]
        };
        usernet::sandbox::apply_keeping(keep).context("applying the sandbox")?;
    }
    if let Some(fd) = ready {
        let mut f = std::fs::File::from(fd);
        f.write_all(b"1").context("writing the ready fd")?;
    }
    engine.wait();
    Ok(0)
}

/// The slirp4netns JSON API on a UNIX socket; the socket file is removed on drop.
struct Api {
    path: PathBuf,
}

impl Drop for Api {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The API socket, bound and not yet served.
struct ApiListener {
    listener: std::os::unix::net::UnixListener,
    api: Api,
}

impl Api {
    /// Binds the API socket (0600: the API adds port forwards).
    fn bind(path: &std::path::Path) -> anyhow::Result<ApiListener> {
        let _ = std::fs::remove_file(path);
        let l = usernet::control::server::bind_private(path)
            .with_context(|| format!("api socket {}", path.display()))?;
        l.set_nonblocking(true)?;
        Ok(ApiListener {
            listener: l,
            api: Api {
                path: path.to_path_buf(),
            },
        })
    }
}

impl ApiListener {
    /// Serves the API on a thread; the socket file is removed when the returned value drops.
    fn start(self, h: Handle, guest: Ipv4Addr) -> Api {
        let l = self.listener;
        std::thread::spawn(move || {
            while !h.is_stopped() {
                match l.accept() {
                    Ok((mut c, _)) => {
                        let _ = c.set_nonblocking(false);
                        let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                        let mut buf = Vec::new();
                        let mut chunk = [0u8; 4096];
                        let req: Result<Value, String> = loop {
                            match c.read(&mut chunk) {
                                Ok(0) => {
                                    break serde_json::from_slice(&buf)
                                        .map_err(|_| "cannot parse JSON".to_string());
                                }
                                Ok(n) => {
                                    buf.extend_from_slice(&chunk[..n]);
                                    if let Ok(v) = serde_json::from_slice(&buf) {
                                        break Ok(v);
                                    }
                                    if buf.len() > 65536 {
                                        break Err("too large message".into());
                                    }
                                }
                                // A client that stops writing without closing.
                                Err(_) => break Err("cannot parse JSON".into()),
                            }
                        };
                        let resp = match req {
                            Ok(v) => api(&h, &v, guest),
                            Err(e) => json!({"error": {"desc": format!("bad request: {e}")}}),
                        };
                        let _ = c.write_all(reply(&resp).as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        self.api
    }
}

fn err(desc: impl Into<String>) -> Value {
    json!({"error": {"desc": desc.into()}})
}

/// A request's reply, as slirp4netns 1.2.0 writes it (its key order; `list_hostfwd` replies
/// `{"entries": [...]}` without a `return` wrapper, as slirp4netns does and its tests expect).
fn reply(v: &Value) -> String {
    match v.get("entries").and_then(Value::as_array) {
        Some(entries) => {
            let items: Vec<String> = entries
                .iter()
                .map(|e| {
                    format!(
                        "{{\"id\":{},\"proto\":{},\"host_addr\":{},\"host_port\":{},\"guest_addr\":{},\"guest_port\":{}}}",
                        e["id"], e["proto"], e["host_addr"], e["host_port"], e["guest_addr"], e["guest_port"]
                    )
                })
                .collect();
            format!("{{\"entries\":[{}]}}", items.join(","))
        }
        None => v.to_string(),
    }
}

/// One slirp4netns API request, answered as slirp4netns 1.2.0 answers it (the same error texts:
/// `bad request: add_hostfwd: bad arguments.FIELD`, `slirp_add_hostfwd failed`, ...).
fn api(h: &Handle, req: &Value, guest: Ipv4Addr) -> Value {
    if !req.is_object() {
        return err("bad request: json_object() failed");
    }
    let args = &req["arguments"];
    match req["execute"].as_str() {
        Some("add_hostfwd") => {
            let proto = match args["proto"].as_str() {
                Some("tcp") | None => Proto::Tcp,
                Some("udp") => Proto::Udp,
                Some(_) => return err("bad request: add_hostfwd: bad arguments.proto"),
            };
            // IPv4 only, as in slirp4netns 1.2.0.
            let Ok(host_addr) = args["host_addr"]
                .as_str()
                .unwrap_or("0.0.0.0")
                .parse::<Ipv4Addr>()
            else {
                return err("bad request: add_hostfwd: bad arguments.host_addr");
            };
            // Podman 4.3 sends `"guest_addr": ""`: the default guest, as slirp4netns takes it.
            let guest_addr = match args["guest_addr"].as_str() {
                None | Some("") => guest,
                Some(a) => match a.parse::<Ipv4Addr>() {
                    Ok(a) => a,
                    Err(_) => return err("bad request: add_hostfwd: bad arguments.guest_addr"),
                },
            };
            let port = |k: &str| {
                args[k]
                    .as_u64()
                    .and_then(|p| u16::try_from(p).ok())
                    .filter(|p| *p != 0)
            };
            let Some(hp) = port("host_port") else {
                return err("bad request: add_hostfwd: bad arguments.host_port");
            };
            let Some(gp) = port("guest_port") else {
                return err("bad request: add_hostfwd: bad arguments.guest_port");
            };
            // hp and gp are not 0 (checked above), so this does not fail.
            let Ok(spec) = ForwardSpec::single(proto, Some(IpAddr::V4(host_addr)), hp, gp) else {
                return err("bad request: add_hostfwd: bad arguments.host_port");
            };
            match h.add_forward(&Forward::new("slirp4netns", spec, &guest_addr.to_string())) {
                Ok(info) => json!({"return": {"id": info.id}}),
                Err(e) => {
                    eprintln!("add_hostfwd: {e}");
                    err("bad request: add_hostfwd: slirp_add_hostfwd failed")
                }
            }
        }
        Some("list_hostfwd") => {
            let entries: Vec<Value> = h
                .forwards(Some("slirp4netns"))
                .unwrap_or_default()
                .iter()
                .filter_map(|f| {
                    let s: ForwardSpec = f.publish.parse().ok()?;
                    Some(json!({
                        "id": f.id,
                        "proto": s.proto.as_str(),
                        "host_addr": s.bind_ip().to_string(),
                        "host_port": s.host_ports.0,
                        "guest_addr": f.to,
                        "guest_port": s.guest_ports.0,
                    }))
                })
                .collect();
            json!({"entries": entries})
        }
        Some("remove_hostfwd") => match args["id"].as_u64() {
            Some(id) => match h.remove_forward(&id.to_string()) {
                Ok(_) => json!({"return": {}}),
                Err(_) => err("bad request: remove_hostfwd: bad arguments.id"),
            },
            None => err("bad request: remove_hostfwd: bad arguments.id"),
        },
        Some(_) => err("bad request: unknown execute"),
        None => err("bad request: no execute found"),
    }
}
