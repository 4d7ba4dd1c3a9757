//! `usernet attach` / `usernet detach`: join a namespace to a running instance, or remove it.

use std::path::PathBuf;

use usernet::PortSpec;
use usernet::control::api::Request;
use usernet::control::server::request;

use crate::SocketArg;

/// Arguments of `usernet attach`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The namespace: a path (/run/netns/NAME, /proc/PID/ns/net) or a PID.
    #[arg(long, required_unless_present_any = ["stream", "dgram", "vhost_user"], conflicts_with_all = ["stream", "dgram", "vhost_user"])]
    netns: Option<String>,
    /// Instead of a namespace: a UNIX socket path to listen on for a VM (QEMU
    /// `-netdev stream,addr.type=unix,addr.path=PATH`) or any peer with 4-byte length framing.
    #[arg(long, conflicts_with_all = ["dgram", "vhost_user"])]
    stream: Option<PathBuf>,
    /// Instead of a namespace: a UNIX datagram socket path to bind for a VM (QEMU
    /// `-netdev dgram,remote.type=unix,remote.path=PATH`, vfkit, gvproxy unixgram): one frame per
    /// datagram.
    #[arg(long, conflicts_with = "vhost_user")]
    dgram: Option<PathBuf>,
    /// The VM's own datagram socket path (QEMU's `local.path`) [default: learned from the first
    /// datagram].
    #[arg(long, requires = "dgram")]
    dgram_peer: Option<PathBuf>,
    /// Instead of a namespace: a UNIX socket path to listen on as a vhost-user-net backend (QEMU
    /// `-chardev socket,id=c0,path=PATH -netdev vhost-user,id=n0,chardev=c0`; the guest's memory
    /// must be shared: `-object memory-backend-memfd,share=on`).
    #[arg(long)]
    vhost_user: Option<PathBuf>,
    /// Endpoint (port) name, also its DNS name [default: the namespace's name or "pid-PID"].
    #[arg(long)]
    name: Option<String>,
    /// Network to join [default: net0].
    #[arg(long, conflicts_with = "trunk")]
    network: Option<String>,
    /// Instead of --network: an 802.1Q trunk port carrying these networks, tagged with these
    /// VLAN ids (NETWORK=VID,...).
    #[arg(long, value_name = "NET=VID,...", value_parser = usernet::control::ports::parse_trunk, conflicts_with_all = ["ips", "mac", "gateway", "routes"])]
    trunk: Option<std::collections::BTreeMap<String, u16>>,
    /// With --trunk: the network of untagged frames [default: none, they are dropped].
    #[arg(long, requires = "trunk")]
    native: Option<String>,
    /// Interface name inside the namespace.
    #[arg(long, default_value = "eth0")]
    ifname: String,
    /// MTU of the TAP [default: the network's, when addresses are configured].
    #[arg(long)]
    mtu: Option<u32>,
    /// Configure an address on the interface: ADDR/PREFIX, ADDR (the network's prefix), or
    /// `auto` (IPv4 from the network's DHCP pool, plus the SLAAC address of its IPv6
    /// prefix). Repeatable. Brings `lo` up and adds default routes via the network's gateway.
    #[arg(long = "ip", value_name = "ADDR[/PREFIX]|auto")]
    ips: Vec<usernet::control::AddrSpec>,
    /// MAC of the interface [default: random, locally administered].
    #[arg(long)]
    mac: Option<usernet::wire::Mac>,
    /// Default gateway instead of the network's (one per family; repeatable), or `none` for
    /// no default route.
    #[arg(long, value_name = "ADDR|none")]
    gateway: Vec<String>,
    /// Another destination routed through the gateway (CIDR; repeatable).
    #[arg(long = "route", value_name = "CIDR")]
    routes: Vec<ipnet::IpNet>,
    /// Create the TAP here (joining the namespace's user namespace, as for a rootless
    /// container) and pass it to the daemon over the control socket. Without it, this is done
    /// when the daemon answers that it may not enter the namespace (EPERM).
    #[arg(long, requires = "netns")]
    pass_fd: bool,
    /// The user namespace to join (implies `--pass-fd`) [default: the one that owns the
    /// netns].
    #[arg(long, value_name = "PATH", requires = "netns")]
    userns: Option<PathBuf>,
    #[command(flatten)]
    socket: SocketArg,
}

/// Arguments of `usernet detach`.
#[derive(clap::Args, Debug)]
pub struct DetachArgs {
    /// Endpoint (port) name given to `attach`.
    #[arg(long)]
    name: String,
    #[command(flatten)]
    socket: SocketArg,
}

fn resolve(netns: &str) -> (PathBuf, String) {
    if !netns.is_empty() && netns.bytes().all(|b| b.is_ascii_digit()) {
        return (
            PathBuf::from(format!("/proc/{netns}/ns/net")),
            format!("pid-{netns}"),
        );
    }
    let p = PathBuf::from(netns);
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "ns".into());
    (p, name)
}

/// A spec for `name` on the network or trunk the arguments give.
fn spec(a: &Args, name: &str) -> PortSpec {
    let mut p = PortSpec::new(
        a.network
            .as_deref()
            .unwrap_or(if a.trunk.is_some() { "" } else { "net0" }),
        name,
    );
    p.trunk = a.trunk.clone().unwrap_or_default();
    p.native = a.native.clone();
    p
}

/// `p` as an absolute path (relative to the current directory): the daemon resolves
/// socket paths in its own directory.
fn absolute(p: &std::path::Path) -> anyhow::Result<PathBuf> {
    Ok(if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()?.join(p)
    })
}

pub fn run(a: Args) -> anyhow::Result<()> {
    if let Some(sock) = &a.stream {
        let sock = absolute(sock)?;
        let name = a.name.clone().unwrap_or_else(|| "vm".into());
        let mut p = spec(&a, &name);
        p.stream = Some(sock.clone());
        request(&a.socket.path()?, &Request::AddPort { port: Box::new(p) })?;
        println!("listening on {} for port {name}", sock.display());
        return Ok(());
    }
    if let Some(sock) = &a.vhost_user {
        let sock = absolute(sock)?;
        let name = a.name.clone().unwrap_or_else(|| "vm".into());
        let mut p = spec(&a, &name);
        p.vhost_user = Some(sock.clone());
        request(&a.socket.path()?, &Request::AddPort { port: Box::new(p) })?;
        println!(
            "vhost-user backend listening on {} for port {name}",
            sock.display()
        );
        return Ok(());
    }
    if let Some(sock) = &a.dgram {
        let sock = absolute(sock)?;
        let peer = a.dgram_peer.as_deref().map(absolute).transpose()?;
        let name = a.name.clone().unwrap_or_else(|| "vm".into());
        let mut p = spec(&a, &name);
        p.dgram = Some(usernet::control::DgramSpec::Full(
            usernet::control::DgramAddrs {
                path: sock.clone(),
                peer,
            },
        ));
        request(&a.socket.path()?, &Request::AddPort { port: Box::new(p) })?;
        println!("bound {} for port {name}", sock.display());
        return Ok(());
    }
    let netns = a.netns.clone().unwrap_or_default();
    let (path, default_name) = resolve(&netns);
    // The daemon opens the path in its own mount namespace: make it absolute.
    let path = std::fs::canonicalize(&path).unwrap_or(path);
    let mut p = spec(&a, a.name.as_deref().unwrap_or(&default_name));
    p.netns = Some(path);
    p.ifname = Some(a.ifname);
    p.mtu = a.mtu;
    p.ips = a.ips;
    p.mac = a.mac;
    p.routes = a.routes;
    for g in &a.gateway {
        if g == "none" {
            p.default_route = Some(false);
        } else {
            p.gateway.push(
                g.parse().map_err(|_| {
                    anyhow::anyhow!("--gateway: {g:?} is not an IP address or `none`")
                })?,
            );
        }
    }
    let sock = a.socket.path()?;
    let v = if a.pass_fd || a.userns.is_some() {
        rootless(&sock, &p, a.userns.as_deref())?
    } else {
        match request(
            &sock,
            &Request::AddPort {
                port: Box::new(p.clone()),
            },
        ) {
            // The daemon may not enter the namespace (a rootless container's, and the daemon
            // runs unprivileged): create the TAP here and hand it over.
            Err(usernet::Error::Io(_, e)) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                rootless(&sock, &p, None)?
            }
            r => r?,
        }
    };
    println!("attached {netns} as port {} (id {})", p.name, v["id"]);
    if let Some(mac) = v["mac"].as_str() {
        println!("  mac {mac}");
    }
    for ip in v["ips"].as_array().into_iter().flatten() {
        println!("  address {}", ip.as_str().unwrap_or_default());
    }
    for g in v["gateways"].as_array().into_iter().flatten() {
        println!("  gateway {}", g.as_str().unwrap_or_default());
    }
    Ok(())
}

fn rootless(
    sock: &std::path::Path,
    p: &PortSpec,
    userns: Option<&std::path::Path>,
) -> anyhow::Result<serde_json::Value> {
    let att = usernet::control::rootless::attach_passing_fd(sock, p, userns)?;
    Ok(serde_json::to_value(att)?)
}

pub fn detach(a: DetachArgs) -> anyhow::Result<()> {
    request(
        &a.socket.path()?,
        &Request::RemovePort {
            name: a.name.clone(),
        },
    )?;
    println!("detached {}", a.name);
    Ok(())
}
