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
//!
//! This file runs the steps and prints the report; `dhcp_client.rs` is the DHCP client of
//! step 1, `probes.rs` the DNS, HTTP, ping and bulk-TCP probes of the other steps.

use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hickory_proto::op::ResponseCode;
use usernet::control::api::Request;
use usernet::gateway::GatewayConfig;
use usernet::gateway::dns::Upstreams;
use usernet::{Engine, EngineConfig, Handle, PortSpec};

mod dhcp_client;
mod probes;
use dhcp_client::ClientLease;
use probes::{HttpServer, http_get, ping, rcode, resolve, transfer};

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
    if !rustix::process::geteuid().is_root() {
        bail!("the demo creates network namespaces and TAP devices: run it as root");
    }
    let t0 = Instant::now();
    let tag = format!("{:x}", std::process::id());
    println!("usernet demo");
    // The engine and the Ctrl-C handler come first, so that an interrupt at any later point
    // unwinds through the guards below. On the way out the namespace names go first (`ip netns
    // del`), then the engine: its TAP descriptors were the namespaces' last users.
    let mut cfg = EngineConfig::default();
    cfg.loops = a.loops.clamp(1, 64);
    let engine = Engine::start(cfg)?;
    let h = engine.handle();
    crate::stop_on_signals(h.clone())?;
    let ns_web = Netns::new(format!("usernet-demo-{tag}-web"))?;
    let ns_client = Netns::new(format!("usernet-demo-{tag}-client"))?;
    step(
        "namespaces",
        format!("{} and {} (throw-away)", ns_web.name, ns_client.name),
    );
    check(&h)?;
    let mut gw_cfg = GatewayConfig::new("demo", SUBNET.parse()?);
    gw_cfg.domain = DOMAIN.into();
    // No upstream resolvers: names outside the network get SERVFAIL, nothing leaves the host.
    gw_cfg.upstreams = Upstreams::Explicit(vec![]);
    h.add_network_with("demo", Default::default(), None, Some(gw_cfg))?;
    let gw = h
        .gateway("demo")
        .ok_or_else(|| anyhow::anyhow!("the demo network has no gateway"))?;
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
        crate::render::stats_table(stats.as_array().map(Vec::as_slice).unwrap_or(&[]))
    );
    let fdb = serde_json::to_value(h.fdb(Some("demo"))?)?;
    println!("\nlearned MACs (as `usernet ctl fdb`):");
    print!(
        "{}",
        crate::render::render(&Request::Fdb { network: None }, &fdb)
    );
    let l = serde_json::to_value(h.leases(Some("demo"))?)?;
    println!("\nDHCP leases (as `usernet ctl leases`):");
    print!(
        "{}",
        crate::render::render(&Request::Leases { network: None }, &l)
    );
    let d = serde_json::to_value(h.dns_list(Some("demo"))?)?;
    println!("\nDNS records (as `usernet ctl dns ls`; port names and DHCP hostnames):");
    print!(
        "{}",
        crate::render::render(&Request::DnsLs { network: None }, &d)
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

/// Publishes web's port 80 on a free loopback port (spliced or not), fetches the page through
/// it from the host and prints the step.
fn forward_step(h: &Handle, splice: bool) -> anyhow::Result<()> {
    let free = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port();
    let spec = format!("127.0.0.1:{free}:{HTTP_PORT}/tcp").parse()?;
    let mut forward = usernet::nat::forward::Forward::new("demo", spec, "web");
    forward.splice = splice;
    let fwd = h.add_forward(&forward)?;
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
