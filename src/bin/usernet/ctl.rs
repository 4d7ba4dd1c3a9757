//! `usernet ctl`: talk to a running instance over its control socket.

use std::path::PathBuf;

use clap::Subcommand;
use serde_json::Value;
use usernet::PortSpec;
use usernet::control::api::Request;
use usernet::control::server::request;
use usernet::wire::Mac;

use crate::SocketArg;

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

/// A port's NETWORK column: its network, or a trunk's `NET=VID,...` (and `NET=native`).
fn network_col(p: &Value) -> String {
    let Some(t) = p.get("trunk").filter(|t| !t.is_null()) else {
        return s(p, "network");
    };
    let mut parts: Vec<String> = t
        .get("vlans")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(n, v)| format!("{n}={v}"))
        .collect();
    if let Some(n) = t.get("native").and_then(Value::as_str) {
        parts.push(format!("{n}=native"));
    }
    parts.join(",")
}

fn s(v: &Value, k: &str) -> String {
    match v.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(o) => o.to_string(),
    }
}

pub(crate) fn table(head: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut w: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<width$}  ", width = w[i]));
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(head.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out.push_str(&line(r));
    }
    out
}

/// Human-readable output for a result.
pub(crate) fn render(req: &Request, v: &Value) -> String {
    let empty = Vec::new();
    let arr = v.as_array().unwrap_or(&empty);
    match req {
        Request::Ports {} => table(
            &["ID", "NAME", "NETWORK", "KIND", "LOOP", "ISOLATED", "LIMIT"],
            arr.iter()
                .map(|p| {
                    vec![
                        s(p, "id"),
                        s(p, "name"),
                        network_col(p),
                        s(p, "kind"),
                        s(p, "event_loop"),
                        s(p, "isolated"),
                        crate::port_limit::limit_col(p),
                    ]
                })
                .collect(),
        ),
        Request::Networks {} => table(
            &["NAME", "PORTS", "FDB", "FDB_MAX", "AGING_S"],
            arr.iter()
                .map(|n| {
                    let ports = n
                        .get("ports")
                        .and_then(Value::as_array)
                        .map(|a| {
                            a.iter()
                                .filter_map(Value::as_str)
                                .collect::<Vec<_>>()
                                .join(",")
                        })
                        .unwrap_or_default();
                    vec![
                        s(n, "name"),
                        ports,
                        s(n, "fdb_entries"),
                        s(n, "fdb_max_entries"),
                        s(n, "fdb_aging_secs"),
                    ]
                })
                .collect(),
        ),
        Request::Fdb { .. } => table(
            &["NETWORK", "VLAN", "MAC", "PORT", "AGE_S", "STATIC", "VTEP"],
            arr.iter()
                .map(|e| {
                    vec![
                        s(e, "network"),
                        s(e, "vlan"),
                        s(e, "mac"),
                        s(e, "port"),
                        format!(
                            "{:.1}",
                            e.get("age_secs").and_then(Value::as_f64).unwrap_or(0.0)
                        ),
                        s(e, "is_static"),
                        s(e, "vtep"),
                    ]
                })
                .collect(),
        ),
        Request::Stats {} => {
            let mut out = stats_table(arr);
            let vx: Vec<&Value> = arr.iter().filter(|r| r.get("vxlan").is_some()).collect();
            if !vx.is_empty() {
                out.push('\n');
                out.push_str(&table(
                    &[
                        "VXLAN_PORT",
                        "VNI",
                        "MTU",
                        "RX",
                        "TX",
                        "TX_DATAGRAMS",
                        "DROPS",
                    ],
                    vx.iter()
                        .map(|r| {
                            let v = &r["vxlan"];
                            vec![
                                s(r, "port"),
                                s(v, "vni"),
                                s(v, "mtu"),
                                s(v, "rx_frames"),
                                s(v, "tx_frames"),
                                s(v, "tx_datagrams"),
                                nonzero(v.get("drops")),
                            ]
                        })
                        .collect(),
                ));
            }
            out
        }
        Request::VxlanRemotes { .. } => table(
            &["REMOTE", "MACS", "RX_FRAMES", "TX_FRAMES"],
            arr.iter()
                .map(|r| {
                    vec![
                        s(r, "remote"),
                        s(r, "macs"),
                        s(r, "rx_frames"),
                        s(r, "tx_frames"),
                    ]
                })
                .collect(),
        ),
        Request::Metrics {} => v.as_str().unwrap_or_default().to_string(),
        Request::PolicyLs { .. } => crate::policy::render(v),
        Request::ForwardLs { .. } => table(
            &[
                "ID", "NETWORK", "PUBLISH", "BALANCE", "TO", "STATE", "LIVE", "CONNS",
            ],
            arr.iter()
                .flat_map(|f| {
                    let eps = f["endpoints"].as_array().cloned().unwrap_or_default();
                    let head = [
                        s(f, "id"),
                        s(f, "network"),
                        s(f, "publish"),
                        s(f, "balance"),
                    ];
                    let blank = || vec![String::new(); 4];
                    eps.into_iter()
                        .enumerate()
                        .map(|(i, e)| {
                            let mut row = if i == 0 { head.to_vec() } else { blank() };
                            row.extend([
                                s(&e, "to"),
                                s(&e, "state"),
                                s(&e, "live"),
                                s(&e, "connections"),
                            ]);
                            row
                        })
                        .collect::<Vec<_>>()
                })
                .collect(),
        ),
        Request::Owners { .. } => table(
            &["NETWORK", "PORT", "SECURITY", "MACS", "IPS"],
            arr.iter()
                .map(|o| {
                    let list = |k: &str| {
                        o[k].as_array()
                            .map(|v| {
                                v.iter()
                                    .map(|p| {
                                        format!(
                                            "{}({})",
                                            p[0].as_str().unwrap_or_default(),
                                            p[1].as_str().unwrap_or_default()
                                        )
                                    })
                                    .collect::<Vec<_>>()
                                    .join(",")
                            })
                            .unwrap_or_default()
                    };
                    vec![
                        s(o, "network"),
                        s(o, "port"),
                        if o["port_security"] == true {
                            "on"
                        } else {
                            "off"
                        }
                        .into(),
                        list("macs"),
                        list("ips"),
                    ]
                })
                .collect(),
        ),
        Request::Leases { .. } => table(
            &[
                "NETWORK",
                "MAC",
                "IP",
                "HOSTNAME",
                "STATE",
                "EXPIRES_S",
                "STATIC",
            ],
            arr.iter()
                .map(|l| {
                    vec![
                        s(l, "network"),
                        s(l, "mac"),
                        s(l, "ip"),
                        s(l, "hostname"),
                        s(l, "state"),
                        s(l, "expires_in_secs"),
                        s(l, "is_static"),
                    ]
                })
                .collect(),
        ),
        Request::DnsLs { .. } => table(
            &["NETWORK", "NAME", "ADDRESS"],
            arr.iter()
                .map(|r| vec![s(r, "network"), s(r, "name"), s(r, "addr")])
                .collect(),
        ),
        Request::DnsPolicy { .. } => {
            let p = v.get("policy").filter(|p| !p.is_null());
            let list = |k: &str| {
                p.and_then(|p| p.get(k))
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .unwrap_or_default()
            };
            let field = |k: &str, none: &str| {
                p.and_then(|p| p.get(k))
                    .and_then(Value::as_str)
                    .unwrap_or(none)
                    .to_string()
            };
            table(
                &["NETWORK", "DEFAULT", "ANSWER", "ALLOW", "DENY", "DENIED"],
                vec![vec![
                    s(v, "network"),
                    field("default", "allow"),
                    field("answer", "nxdomain"),
                    list("allow"),
                    list("deny"),
                    s(v, "denied"),
                ]],
            )
        }
        Request::Gateways {} => table(
            &["NETWORK", "MAC", "IPV4", "IPV6", "DOMAIN", "COUNTERS"],
            arr.iter()
                .map(|g| {
                    let c = g
                        .get("counters")
                        .and_then(Value::as_object)
                        .map(|m| {
                            m.iter()
                                .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
                                .map(|(k, n)| format!("{k}={n}"))
                                .collect::<Vec<_>>()
                                .join(",")
                        })
                        .unwrap_or_default();
                    vec![
                        s(g, "network"),
                        s(g, "mac"),
                        s(g, "ipv4"),
                        s(g, "ipv6"),
                        s(g, "domain"),
                        c,
                    ]
                })
                .collect(),
        ),
        _ => match v {
            Value::Null => "ok\n".to_string(),
            other => format!("{other}\n"),
        },
    }
}

/// The `ctl stats` table (also printed by the demo).
pub(crate) fn stats_table(rows: &[Value]) -> String {
    table(
        &[
            "PORT",
            "NETWORK",
            "RX_FRAMES",
            "RX_BYTES",
            "TX_FRAMES",
            "TX_BYTES",
            "FORWARDED",
            "DROPS",
        ],
        rows.iter()
            .map(|r| {
                let st = r.get("stats").cloned().unwrap_or(Value::Null);
                let drops = st
                    .get("drops")
                    .and_then(Value::as_object)
                    .map(|m| {
                        let mut d: Vec<String> = m
                            .iter()
                            .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
                            .map(|(k, n)| format!("{k}={n}"))
                            .collect();
                        if let Some(n) = r.get("capture_dropped").and_then(Value::as_u64)
                            && n > 0
                        {
                            d.push(format!("capture_dropped={n}"));
                        }
                        if d.is_empty() {
                            "-".into()
                        } else {
                            d.join(",")
                        }
                    })
                    .unwrap_or_default();
                vec![
                    s(r, "port"),
                    s(r, "network"),
                    s(&st, "rx_frames"),
                    s(&st, "rx_bytes"),
                    s(&st, "tx_frames"),
                    s(&st, "tx_bytes"),
                    s(&st, "forwarded"),
                    drops,
                ]
            })
            .collect(),
    )
}

/// The non-zero counters of an object as `k=n,...`, or `-`.
fn nonzero(m: Option<&Value>) -> String {
    let d: Vec<String> = m
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
                .map(|(k, n)| format!("{k}={n}"))
                .collect()
        })
        .unwrap_or_default();
    if d.is_empty() {
        "-".into()
    } else {
        d.join(",")
    }
}

/// `on`/`off` (also `true`/`false`) for a switch flag.
fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(format!("{s:?}: use on or off")),
    }
}
