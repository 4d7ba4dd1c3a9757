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
    #[arg(long)]
    netns: String,
    /// Endpoint (port) name, also its DNS name [default: the namespace's name or "pid-PID"].
    #[arg(long)]
    name: Option<String>,
    /// Network to join.
    #[arg(long, default_value = "net0")]
    network: String,
    /// Interface name inside the namespace.
    #[arg(long, default_value = "eth0")]
    ifname: String,
    /// MTU of the TAP.
    #[arg(long)]
    mtu: Option<u32>,
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

pub fn run(a: Args) -> anyhow::Result<()> {
    let (path, default_name) = resolve(&a.netns);
    // The daemon opens the path in its own mount namespace: make it absolute.
    let path = std::fs::canonicalize(&path).unwrap_or(path);
    let mut p = PortSpec::new(&a.network, a.name.as_deref().unwrap_or(&default_name));
    p.netns = Some(path);
    p.ifname = Some(a.ifname);
    p.mtu = a.mtu;
    let v = request(&a.socket.path(), &Request::AddPort { port: p.clone() })?;
    println!("attached {} as port {} (id {})", a.netns, p.name, v["id"]);
    Ok(())
}

pub fn detach(a: DetachArgs) -> anyhow::Result<()> {
    request(
        &a.socket.path(),
        &Request::RemovePort {
            name: a.name.clone(),
        },
    )?;
    println!("detached {}", a.name);
    Ok(())
}
