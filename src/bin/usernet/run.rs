//! `usernet run`: a command in its own user + network namespace, networked by usernet (rootless).

use std::ffi::OsString;
use std::net::Ipv4Addr;

use anyhow::{Context, bail};
use rustix::process::{Pid, Signal, WaitOptions};
use usernet::bridge::PortPolicy;
use usernet::control::api::fdb_config;
use usernet::gateway::GatewayConfig;
use usernet::gateway::dns::Upstreams;
use usernet::nat::forward::{Forward, ForwardSpec, Proto};
use usernet::spawn::{SpawnOptions, spawn};
use usernet::{Engine, EngineConfig, control};

/// Arguments of `usernet run`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Publish a port of the command on the host, Docker `-p` grammar:
    /// `[hostip:]hostport[-hostport]:guestport[-guestport][/tcp|/udp]`. Repeatable.
    #[arg(short = 'p', long = "publish", value_name = "SPEC")]
    publish: Vec<String>,
    /// Network name.
    #[arg(long, default_value = "usernet")]
    network: String,
    /// The endpoint's name (DNS: NAME.usernet).
    #[arg(long, default_value = "guest")]
    name: String,
    /// IPv4 subnet; the gateway is .1, the command gets .100.
    #[arg(long, default_value = "10.88.0.0/24")]
    subnet: ipnet::Ipv4Net,
    /// MTU of the command's eth0.
    #[arg(long, default_value_t = 1500)]
    mtu: u32,
    /// DNS upstream `IP` or `IP:PORT` (repeatable; default: the host's /etc/resolv.conf).
    #[arg(long = "dns", value_name = "ADDR")]
    dns: Vec<String>,
    /// Do not map the gateway's address to the host's loopback.
    #[arg(long)]
    disable_host_loopback: bool,
    /// Also serve the control socket here (for `usernet ctl`).
    #[arg(long)]
    socket: Option<std::path::PathBuf>,
    /// Relay TCP forwards' loopback clients kernel-to-kernel (`splice`) from inside the
    /// command's namespace: much faster; the command sees those connections from its own
    /// address (other clients keep theirs). Needs the right to enter the namespace (root),
    /// for every connection: so also `--no-sandbox`.
    #[arg(long)]
    splice: bool,
    /// Adaptive busy-polling window in µs (`[engine] busy_poll_us`): lower latency, costs a
    /// CPU while traffic flows. 0 = off.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    busy_poll_us: u32,
    /// Do not sandbox usernet. By default, once the command's network is set up, usernet drops
    /// its capabilities, sets no-new-privs and installs its seccomp allowlist (as pasta does).
    #[arg(long)]
    no_sandbox: bool,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    cmd: Vec<OsString>,
}

pub fn run(a: Args) -> anyhow::Result<i32> {
    let subnet = a.subnet.trunc();
    let mut hosts = subnet.hosts();
    let gw: Ipv4Addr = hosts.next().context("subnet too small")?;
    let guest = subnet
        .hosts()
        .nth(99)
        .or_else(|| subnet.hosts().nth(1))
        .context("subnet too small")?;
    let forwards: Vec<ForwardSpec> = a
        .publish
        .iter()
        .map(|p| p.parse::<ForwardSpec>())
        .collect::<Result<_, _>>()?;
    if a.splice && !a.no_sandbox && forwards.iter().any(|f| f.proto == Proto::Tcp) {
        bail!(
            "--splice: a spliced forward enters the command's namespace for every connection, \
             which the sandbox forbids; add --no-sandbox to use it"
        );
    }
    let mut upstreams = Vec::new();
    for d in &a.dns {
        upstreams.push(
            usernet::config::parse_upstream(d)
                .with_context(|| format!("--dns {d:?}: expected IP or IP:PORT"))?,
        );
    }
    // The interface's MAC, chosen here so the gateway knows the command's address up front.
    let mac = usernet::link::ifconfig::random_mac();
    // Fork first, before any thread exists.
    let mut opts = SpawnOptions::default();
    opts.addr = guest;
    opts.prefix = subnet.prefix_len();
    opts.gateway = gw;
    opts.mtu = a.mtu;
    opts.resolv_conf = Some(format!("nameserver {gw}\nsearch usernet\n"));
    opts.mac = Some(mac);
    let mut child = spawn(&a.cmd, &opts)?;
    let pid = Pid::from_raw(child.pid).context("the child has no pid")?;
    let mut cfg = EngineConfig::default();
    cfg.max_frame = a.mtu as usize + 22;
    cfg.busy_poll = std::time::Duration::from_micros(a.busy_poll_us.into());
    let engine = Engine::start(cfg).context("starting event loops")?;
    let h = engine.handle();
    let setup = (|| -> anyhow::Result<()> {
        let mut g = GatewayConfig::new(&a.network, subnet);
        g.mtu = a.mtu.min(65535) as u16;
        g.host_loopback = !a.disable_host_loopback;
        g.dhcp_range = subnet.hosts().nth(1).zip(subnet.hosts().nth(98));
        if !upstreams.is_empty() {
            g.upstreams = Upstreams::Explicit(upstreams.clone());
        }
        h.add_network_with(&a.network, fdb_config(None, None), None, Some(g))?;
        let tap = child.tap.take().context("no TAP from the child")?;
        // The port owns its address from the start, and the gateway knows where it is: the
        // name and forwards work before the command sends anything.
        let mut policy = PortPolicy::default();
        policy.allowed_ips = vec![std::net::IpAddr::V4(guest)];
        let id = h.add_port(&a.network, &a.name, policy, Box::new(tap))?;
        h.announce_addresses(id, mac, vec![std::net::IpAddr::V4(guest)])?;
        h.set_port_netns(&a.name, format!("/proc/{pid}/ns/net").into());
        for spec in forwards {
            let splice = a.splice && spec.proto == Proto::Tcp;
            // A spliced forward names the port (its namespace); the records give its IP.
            let to = if splice {
                a.name.clone()
            } else {
                guest.to_string()
            };
            let mut forward = Forward::new(&a.network, spec, &to);
            forward.splice = splice;
            h.add_forward(&forward)?;
        }
        Ok(())
    })();
    let setup = setup.and_then(|()| {
        let srv = match &a.socket {
            Some(p) => Some(control::server::serve(h.clone(), p)?),
            None => None,
        };
        if !a.no_sandbox {
            // Every descriptor is open (the TAP, the forwards' host sockets, the control
            // socket): from here on no capabilities, no new files, only the datapath's
            // system calls. The command is not affected (it was forked before).
            usernet::sandbox::apply().context("applying the sandbox (--no-sandbox to skip)")?;
        }
        Ok(srv)
    });
    let _srv = match setup {
        Ok(srv) => srv,
        Err(e) => {
            let _ = rustix::process::kill_process(pid, Signal::KILL);
            let _ = rustix::process::waitpid(Some(pid), WaitOptions::empty());
            return Err(e);
        }
    };
    // Forward signals to the command.
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
        signal_hook::consts::SIGQUIT,
    ])?;
    let sig_handle = signals.handle();
    std::thread::spawn(move || {
        for sig in signals.forever() {
            if let Some(sig) = Signal::from_named_raw(sig) {
                let _ = rustix::process::kill_process(pid, sig);
            }
        }
    });
    child.start()?;
    let status = loop {
        match rustix::process::waitpid(Some(pid), WaitOptions::empty()) {
            Ok(Some((_, status))) => break Some(status),
            Ok(None) | Err(rustix::io::Errno::INTR) => continue,
            Err(_) => break None,
        }
    };
    sig_handle.close();
    engine.shutdown();
    Ok(match status {
        Some(s) if s.exited() => s.exit_status().unwrap_or(1),
        Some(s) if s.signaled() => 128 + s.terminating_signal().unwrap_or(0),
        Some(_) => 1,
        // Not waitable (as a zero status was read before).
        None => 0,
    })
}
