//! `usernet ctl`: talk to a running instance over its control socket.

use std::path::PathBuf;

use clap::Subcommand;
use usernet::PortSpec;
use usernet::control::api::Request;
use usernet::control::server::request;
use usernet::wire::Mac;

use crate::SocketArg;
use crate::render::render;

/// Arguments of `usernet ctl`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    socket: SocketArg,
    /// Print the raw JSON result.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// List ports.
    Ports,
    /// List networks.
    Networks,
    /// Show learned and static MAC entries.
    Fdb {
        /// Only this network.
        #[arg(long)]
        network: Option<String>,
    },
    /// Per-port counters and drops by reason.
    Stats,
    /// Every counter in the Prometheus text exposition format (what `up --metrics` serves).
    Metrics,
    /// Add or remove a port at run time.
    #[command(subcommand)]
    Port(PortCmd),
    /// Add or remove a network at run time.
    #[command(subcommand)]
    Network(NetCmd),
    /// Add a static FDB entry.
    Mac {
        /// Port the MAC is behind.
        #[arg(long)]
        port: String,
        /// VLAN id.
        #[arg(long, default_value_t = 0)]
        vlan: u16,
        /// The MAC address.
        mac: Mac,
    },
    /// Gateways: addresses and counters.
    Gateway,
    /// DHCP leases.
    Leases {
        /// Only this network.
        #[arg(long)]
        network: Option<String>,
    },
    /// What each port owns: MACs and IP addresses, and how (port security).
    Owners {
        /// Only this network.
        #[arg(long)]
        network: Option<String>,
    },
    /// DNS records of the gateways.
    #[command(subcommand)]
    Dns(DnsCmd),
    /// Port forwards (Docker `-p`).
    #[command(subcommand)]
    Forward(FwdCmd),
    /// Follow the daemon's events (ports added and removed, leases granted and released,
    /// forwards added and removed, NAT refusals sampled), one line each, until Ctrl-C or
    /// --count (`--json`: one JSON object per line).
    Events {
        /// Stop after N events.
        #[arg(short = 'c', long)]
        count: Option<u64>,
    },
    /// Capture a port's frames (both directions, gateway and stream ports too) as pcapng, until
    /// Ctrl-C, --count or the port's removal.
    Capture {
        /// Port name.
        port: String,
        /// Write to FILE, or `-` for stdout (e.g. `-w - | tshark -r -`).
        #[arg(
            short = 'w',
            long = "write",
            value_name = "FILE|-",
            default_value = "-"
        )]
        write: String,
        /// Stop after N frames.
        #[arg(short = 'c', long)]
        count: Option<u64>,
        /// Bytes kept of each frame (default and most: 262144).
        #[arg(short = 's', long)]
        snaplen: Option<u32>,
        /// `pcapng` (frames with their direction, the port's name, the drop count) or `pcap`.
        #[arg(long, default_value = "pcapng", value_parser = ["pcapng", "pcap"])]
        format: String,
    },
    /// Policy rules of networks and ports: list with counters, add, remove, set a default.
    #[command(subcommand)]
    Policy(crate::policy::PolicyCmd),
    /// A VXLAN port's remote VTEPs: list, add, remove.
    Vxlan {
        /// The VXLAN port's name.
        name: String,
        #[command(subcommand)]
        op: VxlanCmd,
    },
    /// Cluster mode: the nodes (VTEPs, networks), the state of the etcd connection, the last
    /// revision seen, and this node's cluster networks (remotes, claimed addresses).
    Cluster,
    /// Stop the instance.
    Shutdown,
}

#[derive(Subcommand, Debug)]
enum VxlanCmd {
    /// List the remotes, with the MACs learned behind each and frames in and out.
    Remotes,
    /// Add a remote VTEP (its underlay address).
    AddRemote {
        /// The remote's address.
        remote: std::net::IpAddr,
    },
    /// Remove a remote VTEP; the MACs learned behind it are forgotten.
    RmRemote {
        /// The remote's address.
        remote: std::net::IpAddr,
    },
}

#[derive(Subcommand, Debug)]
enum FwdCmd {
    /// Publish a guest port: `[hostip:]hostport[-hostport]:guestport[-guestport][/tcp|/udp]`.
    Add {
        /// Network.
        #[arg(long)]
        network: String,
        /// The `-p` spec.
        publish: String,
        /// Endpoint name (port or DHCP hostname) or IP address; several, comma-separated
        /// (`web1,web2`), balance the connections over them.
        to: String,
        /// With several endpoints: `round_robin` (default), `least_conn` or `source_hash`.
        #[arg(long)]
        balance: Option<String>,
        /// Health-check the endpoints (TCP connect) with the defaults (1000 ms, 500 ms, 2, 2);
        /// implied by any `--health-*` flag.
        #[arg(long)]
        health: bool,
        /// Health checks: time between two checks (ms).
        #[arg(long)]
        health_interval_ms: Option<u64>,
        /// Health checks: a check not connected after this long failed (ms).
        #[arg(long)]
        health_timeout_ms: Option<u64>,
        /// Health checks: failed checks in a row that take an endpoint down.
        #[arg(long)]
        health_fall: Option<u32>,
        /// Health checks: good checks in a row that bring it back.
        #[arg(long)]
        health_rise: Option<u32>,
        /// TCP: relay loopback clients kernel-to-kernel from inside the port's namespace (`to`
        /// must be a netns port; the guest sees those from its own address, other clients keep
        /// theirs).
        #[arg(long)]
        splice: bool,
    },
    /// Remove a forward by id or spec.
    Rm {
        /// Id or `-p` spec as listed.
        forward: String,
    },
    /// List forwards.
    Ls {
        /// Only this network.
        #[arg(long)]
        network: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum DnsCmd {
    /// Add a record.
    Add {
        /// Network.
        #[arg(long)]
        network: String,
        /// Name (relative to the network's domain).
        name: String,
        /// Address (IPv4 or IPv6).
        addr: std::net::IpAddr,
    },
    /// Remove a name's records (or one address of it).
    Rm {
        /// Network.
        #[arg(long)]
        network: String,
        /// Name.
        name: String,
        /// Only this address.
        addr: Option<std::net::IpAddr>,
    },
    /// List records.
    Ls {
        /// Only this network.
        #[arg(long)]
        network: Option<String>,
    },
    /// Show the network's name policy; with any option, replace it (a name is exact, or
    /// `*.suffix` for every name below suffix; the most specific entry wins).
    Policy {
        /// Network.
        #[arg(long)]
        network: String,
        /// Action for names no entry matches.
        #[arg(long, value_parser = ["allow", "deny"])]
        default: Option<String>,
        /// A name to resolve (repeat).
        #[arg(long, value_name = "NAME")]
        allow: Vec<String>,
        /// A name to deny (repeat).
        #[arg(long, value_name = "NAME")]
        deny: Vec<String>,
        /// The answer to a denied query.
        #[arg(long, value_parser = ["nxdomain", "refused"])]
        answer: Option<String>,
        /// Remove the policy (every name allowed).
        #[arg(long, conflicts_with_all = ["default", "allow", "deny", "answer"])]
        clear: bool,
    },
}

#[derive(Subcommand, Debug)]
enum PortCmd {
    /// Add a port.
    Add {
        /// Network to join.
        #[arg(long, required_unless_present = "trunk", conflicts_with = "trunk")]
        network: Option<String>,
        /// Instead of --network: an 802.1Q trunk port carrying these networks, tagged with
        /// these VLAN ids (NETWORK=VID,...).
        #[arg(long, value_name = "NET=VID,...", value_parser = usernet::control::ports::parse_trunk)]
        trunk: Option<std::collections::BTreeMap<String, u16>>,
        /// With --trunk: the network of untagged frames [default: none, they are dropped].
        #[arg(long, requires = "trunk")]
        native: Option<String>,
        /// Port name.
        #[arg(long)]
        name: String,
        /// A TAP in usernet's namespace (created if missing).
        #[arg(long, conflicts_with_all = ["netns", "packet"])]
        tap: Option<String>,
        /// A namespace path (/run/netns/NAME, /proc/PID/ns/net): a TAP is created inside it.
        #[arg(long, conflicts_with = "packet")]
        netns: Option<PathBuf>,
        /// Interface name inside --netns.
        #[arg(long, requires = "netns")]
        ifname: Option<String>,
        /// An existing interface, attached with AF_PACKET.
        #[arg(long)]
        packet: Option<String>,
        /// MTU for a TAP usernet creates.
        #[arg(long)]
        mtu: Option<u32>,
        /// Turn TAP offloads (TSO, checksum) off for this port.
        #[arg(long)]
        no_offload: bool,
        /// Isolated port: reaches only non-isolated ports.
        #[arg(long)]
        isolated: bool,
    },
    /// Remove a port (closes its link; a TAP usernet created disappears).
    Rm {
        /// Port name.
        name: String,
    },
    /// Set a port's rate limits (token buckets; the limits given replace the port's, `--off`
    /// removes them).
    Limit(crate::port_limit::LimitArgs),
}

#[derive(Subcommand, Debug)]
enum NetCmd {
    /// Add a network.
    Add {
        /// Network name.
        name: String,
        /// FDB size cap.
        #[arg(long)]
        fdb_max_entries: Option<usize>,
        /// FDB aging in seconds (0 = never).
        #[arg(long)]
        fdb_aging: Option<u64>,
        /// Start a gateway (ARP, ICMP, DHCP, DNS, NDP/RA, NAT); implied by the options below.
        #[arg(long)]
        gateway: bool,
        /// Gateway IPv4 subnet (the gateway is its first host).
        #[arg(long)]
        subnet: Option<ipnet::Ipv4Net>,
        /// Gateway IPv6 /64 prefix, or "off".
        #[arg(long)]
        ipv6: Option<String>,
        /// DNS domain of the endpoints.
        #[arg(long)]
        domain: Option<String>,
        /// MTU announced by DHCP and RA.
        #[arg(long)]
        mtu: Option<u16>,
        /// DNS upstream `IP` or `IP:PORT` (repeatable).
        #[arg(long = "dns")]
        dns: Vec<String>,
        /// No NAT egress (Docker --internal).
        #[arg(long)]
        internal: bool,
        /// The gateway's address does not reach the host's loopback.
        #[arg(long)]
        disable_host_loopback: bool,
        /// Port security by default on the network's ports: `on` or `off` (default: on with a
        /// gateway, off without).
        #[arg(long, value_parser = parse_on_off)]
        port_security: Option<bool>,
        /// NAT may reach the cloud metadata service (169.254.169.254).
        #[arg(long)]
        allow_metadata: bool,
    },
    /// Remove a network and all its ports.
    Rm {
        /// Network name.
        name: String,
    },
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let req = match a.cmd {
        Cmd::Ports => Request::Ports {},
        Cmd::Networks => Request::Networks {},
        Cmd::Fdb { network } => Request::Fdb { network },
        Cmd::Stats => Request::Stats {},
        Cmd::Metrics => Request::Metrics {},
        Cmd::Port(PortCmd::Add {
            network,
            trunk,
            native,
            name,
            tap,
            netns,
            ifname,
            packet,
            mtu,
            no_offload,
            isolated,
        }) => {
            let mut p = PortSpec::new(network.as_deref().unwrap_or_default(), &name);
            p.trunk = trunk.unwrap_or_default();
            p.native = native;
            p.tap = tap;
            p.netns = netns;
            p.ifname = ifname;
            p.packet = packet;
            p.mtu = mtu;
            p.offload = no_offload.then_some(false);
            p.isolated = isolated;
            Request::AddPort { port: Box::new(p) }
        }
        Cmd::Port(PortCmd::Rm { name }) => Request::RemovePort { name },
        Cmd::Port(PortCmd::Limit(l)) => l.request(),
        Cmd::Network(NetCmd::Add {
            name,
            fdb_max_entries,
            fdb_aging,
            gateway,
            subnet,
            ipv6,
            domain,
            mtu,
            dns,
            internal,
            disable_host_loopback,
            port_security,
            allow_metadata,
        }) => Request::AddNetwork {
            name,
            fdb_max_entries,
            fdb_aging_secs: fdb_aging,
            gateway: gateway.then_some(true),
            subnet,
            ipv6,
            domain,
            mtu,
            dns_upstreams: (!dns.is_empty()).then_some(dns),
            internal: internal.then_some(true),
            host_loopback: disable_host_loopback.then_some(false),
            port_security,
            allow_metadata: allow_metadata.then_some(true),
            policy: None,
            dns_policy: None,
        },
        Cmd::Network(NetCmd::Rm { name }) => Request::RemoveNetwork { name },
        Cmd::Mac { port, vlan, mac } => Request::AddStaticMac { port, mac, vlan },
        Cmd::Gateway => Request::Gateways {},
        Cmd::Leases { network } => Request::Leases { network },
        Cmd::Owners { network } => Request::Owners { network },
        Cmd::Dns(DnsCmd::Add {
            network,
            name,
            addr,
        }) => Request::DnsAdd {
            network,
            name,
            addr,
        },
        Cmd::Dns(DnsCmd::Rm {
            network,
            name,
            addr,
        }) => Request::DnsRm {
            network,
            name,
            addr,
        },
        Cmd::Dns(DnsCmd::Ls { network }) => Request::DnsLs { network },
        Cmd::Dns(DnsCmd::Policy {
            network,
            default,
            allow,
            deny,
            answer,
            clear,
        }) => {
            use usernet::gateway::dns::{DenyAnswer, DnsAction, DnsPolicySpec};
            let set =
                default.is_some() || answer.is_some() || !allow.is_empty() || !deny.is_empty();
            let policy = set.then(|| {
                DnsPolicySpec::new(
                    if default.as_deref() == Some("deny") {
                        DnsAction::Deny
                    } else {
                        DnsAction::Allow
                    },
                    allow,
                    deny,
                    if answer.as_deref() == Some("refused") {
                        DenyAnswer::Refused
                    } else {
                        DenyAnswer::Nxdomain
                    },
                )
            });
            Request::DnsPolicy {
                network,
                policy,
                clear,
            }
        }
        Cmd::Forward(FwdCmd::Add {
            network,
            publish,
            to,
            splice,
            balance,
            health,
            health_interval_ms,
            health_timeout_ms,
            health_fall,
            health_rise,
        }) => {
            let spec = publish.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
            let to = to.split(',').map(|t| t.trim().to_string()).collect();
            let mut forward = usernet::nat::forward::Forward::to_many(&network, spec, to);
            forward.splice = splice;
            forward.balance = balance;
            let any = health_interval_ms.is_some()
                || health_timeout_ms.is_some()
                || health_fall.is_some()
                || health_rise.is_some();
            if health || any {
                let mut h = usernet::nat::balance::HealthSpec::default();
                h.interval_ms = health_interval_ms.unwrap_or(h.interval_ms);
                h.timeout_ms = health_timeout_ms.unwrap_or(h.timeout_ms.min(h.interval_ms));
                h.fall = health_fall.unwrap_or(h.fall);
                h.rise = health_rise.unwrap_or(h.rise);
                forward.health = Some(h);
            }
            Request::ForwardAdd { forward }
        }
        Cmd::Forward(FwdCmd::Rm { forward }) => Request::ForwardRm { forward },
        Cmd::Forward(FwdCmd::Ls { network }) => Request::ForwardLs { network },
        Cmd::Vxlan { name, op } => match op {
            VxlanCmd::Remotes => Request::VxlanRemotes { port: name },
            VxlanCmd::AddRemote { remote } => Request::VxlanAddRemote { port: name, remote },
            VxlanCmd::RmRemote { remote } => Request::VxlanRmRemote { port: name, remote },
        },
        Cmd::Policy(p) => p.request()?,
        Cmd::Cluster => Request::Cluster {},
        Cmd::Shutdown => Request::Shutdown {},
        Cmd::Events { count } => {
            // Not one answer: the connection carries the events.
            return crate::events::run(&a.socket.path()?, count, a.json);
        }
        Cmd::Capture {
            port,
            write,
            count,
            snaplen,
            format,
        } => {
            // Not one answer: the connection carries the capture.
            let format = match format.as_str() {
                "pcap" => usernet::capture::Format::Pcap,
                _ => usernet::capture::Format::Pcapng,
            };
            return crate::capture::run(&a.socket.path()?, port, &write, count, snaplen, format);
        }
    };
    let kind = req.clone();
    let v = request(&a.socket.path()?, &req)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    print!("{}", render(&kind, &v));
    Ok(())
}

/// `on`/`off` (also `true`/`false`) for a switch flag.
fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(format!("{s:?}: use on or off")),
    }
}
