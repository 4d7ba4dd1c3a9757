//! The CNI plugin (CNI spec 1.0.0, with STATUS and GC from 1.1): `usernet` installed or linked as
//! `/opt/cni/bin/usernet` acts as the plugin whenever `CNI_COMMAND` is set.
//!
//! The datapath is a long-lived `usernet up` (the plugin's daemon, on its own socket,
//! [`DEFAULT_SOCKET`]); the plugin is a client of its control API. The first ADD on a machine
//! starts the daemon (detached: new session, no stdio) when its socket is absent. Everything an
//! ADD set up is recorded under the state directory ([`DEFAULT_STATE`]) as the API requests
//! that recreate it, and a daemon started with `up --cni-state DIR` replays them: a daemon
//! restart keeps networks, addresses, names and forwards (the container's interface comes back
//! with the same MAC and address).
//!
//! Per attachment: a TAP named `CNI_IFNAME` in `CNI_NETNS`, configured by usernet (address,
//! routes, MTU, `lo` up); the address from usernet's own pool (a reservation freed on DEL), or
//! from a delegated IPAM plugin (`ipam.type`, e.g. host-local); the container's name
//! (`K8S_POD_NAME` in `CNI_ARGS`, else the container id) and `runtimeConfig.aliases` in the
//! network's DNS; `runtimeConfig.portMappings` as forwards.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use usernet::control::api::Request;
use usernet::control::{AddrSpec, Attached, PortSpec};
use usernet::nat::forward::Forward;

/// The daemon's control socket unless the network config says `socket` (not the socket of a
/// user's own `usernet up`).
pub const DEFAULT_SOCKET: &str = "/run/usernet/cni.sock";
/// Where attachments are recorded unless the network config says `state_dir`.
pub const DEFAULT_STATE: &str = "/var/lib/usernet/cni";
/// CNI versions this plugin speaks.
pub const SUPPORTED: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// A CNI error: the spec's well-known codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    /// 1 incompatible version, 2 unsupported field, 3 unknown container, 4 invalid
    /// environment, 5 I/O, 6 decoding, 7 invalid network config, 11 try again later,
    /// 50 plugin not available.
    pub code: u32,
    /// What went wrong.
    pub msg: String,
    /// More about it.
    pub details: String,
}

impl CniError {
    fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }
    fn env(msg: impl Into<String>) -> Self {
        CniError::new(4, msg, "")
    }
    fn config(msg: impl Into<String>) -> Self {
        CniError::new(7, "invalid network config", msg)
    }
    fn io(what: impl Into<String>, e: impl std::fmt::Display) -> Self {
        CniError::new(5, what, e.to_string())
    }
    fn daemon(e: impl std::fmt::Display) -> Self {
        CniError::new(11, "usernet daemon refused the request", e.to_string())
    }
}

/// The network configuration on stdin (unknown keys are ignored: runtimes add their own).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct NetConf {
    /// CNI version of the config (and of the result).
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    /// Network name (the runtime's).
    #[serde(default)]
    pub name: String,
    /// Plugin type (`usernet`).
    #[serde(rename = "type", default)]
    pub kind: String,
    /// usernet network to join (default: `name`).
    #[serde(default)]
    pub network: Option<String>,
    /// Its IPv4 subnet (needed when the network does not exist yet).
    #[serde(default)]
    pub subnet: Option<ipnet::Ipv4Net>,
    /// IPv6 prefix, or "off".
    #[serde(default)]
    pub ipv6: Option<String>,
    /// MTU of the network and its interfaces.
    #[serde(default)]
    pub mtu: Option<u16>,
    /// DNS domain of the network.
    #[serde(default)]
    pub domain: Option<String>,
    /// Upstream resolvers of the network's DNS (default: the host's resolv.conf).
    #[serde(default)]
    pub dns_upstreams: Option<Vec<String>>,
    /// NAT may reach the host's loopback through the gateway address (default: yes).
    #[serde(default)]
    pub host_loopback: Option<bool>,
    /// The daemon's control socket.
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// Where attachments are recorded.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// Delegated IPAM (`{"type": "host-local", ...}`); absent: usernet's own pool.
    #[serde(default)]
    pub ipam: Option<Value>,
    /// Capability arguments from the runtime.
    #[serde(rename = "runtimeConfig", default)]
    pub runtime_config: RuntimeConfig,
    /// CHECK: the result of ADD.
    #[serde(
        rename = "prevResult",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub prev_result: Option<Value>,
    /// GC: the attachments still in use.
    #[serde(
        rename = "cni.dev/valid-attachments",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub valid_attachments: Option<Vec<ValidAttachment>>,
}

/// `runtimeConfig`: the capabilities usernet honours.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct RuntimeConfig {
    /// `portMappings`.
    #[serde(rename = "portMappings", default)]
    pub port_mappings: Vec<PortMapping>,
    /// `aliases`: network name → more DNS names of the container.
    #[serde(default)]
    pub aliases: BTreeMap<String, Vec<String>>,
}

/// One entry of the `portMappings` capability.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct PortMapping {
    /// Host port.
    #[serde(rename = "hostPort")]
    pub host_port: u16,
    /// Container port.
    #[serde(rename = "containerPort")]
    pub container_port: u16,
    /// `tcp` or `udp`.
    #[serde(default = "tcp")]
    pub protocol: String,
    /// Host address to bind (default: all).
    #[serde(rename = "hostIP", default)]
    pub host_ip: String,
}

fn tcp() -> String {
    "tcp".into()
}

/// One entry of `cni.dev/valid-attachments` (GC).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ValidAttachment {
    /// Container id.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// Interface name.
    #[serde(default)]
    pub ifname: String,
}

/// What the runtime asks for, whatever its plugin protocol (CNI or netavark).
#[derive(Debug, Clone)]
pub struct Want {
    /// Container id.
    pub container_id: String,
    /// Namespace path.
    pub netns: PathBuf,
    /// Interface name inside.
    pub ifname: String,
    /// The container's name (its DNS name).
    pub name: Option<String>,
    /// More DNS names.
    pub aliases: Vec<String>,
    /// Published ports.
    pub ports: Vec<PortMapping>,
    /// Fixed addresses (from IPAM), or empty for usernet's pool.
    pub ips: Vec<ipnet::IpNet>,
    /// Gateways (from IPAM).
    pub gateways: Vec<IpAddr>,
    /// The interface's MAC, if the runtime chose it.
    pub mac: Option<usernet::wire::Mac>,
}

/// An attachment as recorded in the state directory: enough to remove it, and the requests
/// that recreate it on a fresh daemon.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// Container id.
    pub container_id: String,
    /// Interface name.
    pub ifname: String,
    /// The runtime's network name.
    pub cni_network: String,
    /// usernet network.
    pub network: String,
    /// Port name.
    pub port: String,
    /// `add_port` with the fixed MAC and addresses it got.
    pub add_port: PortSpec,
    /// Extra DNS names.
    pub names: Vec<(String, IpAddr)>,
    /// Forwards (removed by their `-p` spec).
    pub forwards: Vec<Forward>,
    /// The result given to the runtime.
    pub result: Value,
    /// The config a delegated IPAM plugin got (DEL goes to it too).
    #[serde(default)]
    pub ipam_conf: Option<Value>,
}

/// `CNI_ARGS`: `K=V;K=V`.
pub fn cni_args(s: &str) -> BTreeMap<String, String> {
    s.split(';')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// A name usable as a port and DNS name: `[a-z0-9-]`, at most 63 characters.
pub fn dns_label(s: &str) -> Option<String> {
    let l: String = s
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let l = l.trim_matches('-').chars().take(63).collect::<String>();
    let l = l.trim_end_matches('-').to_string();
    (!l.is_empty()).then_some(l)
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Runs the plugin if `CNI_COMMAND` is set; returns the exit code.
pub fn main_if_plugin() -> Option<u8> {
    let cmd = std::env::var("CNI_COMMAND").ok()?;
    // Every command gets the config on stdin (VERSION: just `{"cniVersion": ...}`).
    let mut input = Vec::new();
    let _ = std::io::stdin().take(16 << 20).read_to_end(&mut input);
    let conf_version = serde_json::from_slice::<Value>(&input)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(Value::as_str)
                .map(String::from)
        })
        .unwrap_or_else(|| "1.0.0".into());
    let out = run(&cmd, &input);
    let mut stdout = std::io::stdout();
    match out {
        Ok(Some(v)) => {
            let _ = writeln!(stdout, "{v}");
            Some(0)
        }
        Ok(None) => Some(0),
        Err(e) => {
            let v = json!({
                "cniVersion": conf_version,
                "code": e.code,
                "msg": e.msg,
                "details": e.details,
            });
            let _ = writeln!(stdout, "{v}");
            Some(1)
        }
    }
}

fn run(cmd: &str, input: &[u8]) -> Result<Option<Value>, CniError> {
    if cmd == "VERSION" {
        return Ok(Some(json!({
            "cniVersion": "1.0.0",
            "supportedVersions": SUPPORTED,
        })));
    }
    let conf: NetConf = serde_json::from_slice(input)
        .map_err(|e| CniError::new(6, "cannot decode the network config", e.to_string()))?;
    if !SUPPORTED.contains(&conf.cni_version.as_str()) {
        return Err(CniError::new(
            1,
            "incompatible CNI version",
            format!(
                "cniVersion {:?}; supported: {}",
                conf.cni_version,
                SUPPORTED.join(", ")
            ),
        ));
    }
    if conf.name.is_empty() {
        return Err(CniError::config("`name` is missing"));
    }
    let ctx = Ctx::new(&conf);
    match cmd {
        "ADD" => {
            let want = want_from_env(&conf)?;
            ctx.locked(|| ctx.add(&conf, want, input)).map(Some)
        }
        "DEL" => {
            let cid = env("CNI_CONTAINERID")
                .ok_or_else(|| CniError::env("CNI_CONTAINERID is not set"))?;
            let ifname = env("CNI_IFNAME").unwrap_or_else(|| "eth0".into());
            ctx.locked(|| ctx.del(&conf, &cid, &ifname)).map(|()| None)
        }
        "CHECK" => {
            let cid = env("CNI_CONTAINERID")
                .ok_or_else(|| CniError::env("CNI_CONTAINERID is not set"))?;
            let ifname = env("CNI_IFNAME").ok_or_else(|| CniError::env("CNI_IFNAME is not set"))?;
            let netns = env("CNI_NETNS").ok_or_else(|| CniError::env("CNI_NETNS is not set"))?;
            ctx.check(&conf, &cid, &ifname, Path::new(&netns))
                .map(|()| None)
        }
        "STATUS" => ctx.status().map(|()| None),
        "GC" => ctx.locked(|| ctx.gc(&conf)).map(|()| None),
        other => Err(CniError::env(format!(
            "CNI_COMMAND {other:?} is not one of ADD, DEL, CHECK, VERSION, STATUS, GC"
        ))),
    }
}

fn want_from_env(conf: &NetConf) -> Result<Want, CniError> {
    let container_id =
        env("CNI_CONTAINERID").ok_or_else(|| CniError::env("CNI_CONTAINERID is not set"))?;
    let netns = env("CNI_NETNS").ok_or_else(|| CniError::env("CNI_NETNS is not set"))?;
    let ifname = env("CNI_IFNAME").ok_or_else(|| CniError::env("CNI_IFNAME is not set"))?;
    let netns = PathBuf::from(netns);
    if !netns.exists() {
        return Err(CniError::new(
            3,
            "container namespace does not exist",
            netns.display().to_string(),
        ));
    }
    let args = cni_args(&env("CNI_ARGS").unwrap_or_default());
    Ok(Want {
        container_id,
        netns,
        ifname,
        name: args.get("K8S_POD_NAME").cloned(),
        aliases: conf
            .runtime_config
            .aliases
            .get(&conf.name)
            .cloned()
            .unwrap_or_default(),
        ports: conf.runtime_config.port_mappings.clone(),
        ips: Vec::new(),
        gateways: Vec::new(),
        mac: None,
    })
}

/// Where the plugin's daemon and records are.
pub struct Ctx {
    /// Control socket.
    pub socket: PathBuf,
    /// State directory.
    pub state: PathBuf,
}

impl Ctx {
    /// From a network config (or the defaults).
    pub fn new(conf: &NetConf) -> Ctx {
        Ctx {
            socket: conf
                .socket
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET)),
            state: conf
                .state_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE)),
        }
    }

    fn record_path(&self, cid: &str, ifname: &str) -> PathBuf {
        let safe = |s: &str| s.replace(['/', '\0'], "_");
        self.state
            .join("attachments")
            .join(format!("{}-{}.json", safe(cid), safe(ifname)))
    }

    /// Runs `f` holding the state directory's lock (one plugin at a time per daemon).
    pub fn locked<T>(&self, f: impl FnOnce() -> Result<T, CniError>) -> Result<T, CniError> {
        std::fs::create_dir_all(self.state.join("attachments"))
            .map_err(|e| CniError::io(format!("creating {}", self.state.display()), e))?;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.state.join("lock"))
            .map_err(|e| CniError::io("opening the state lock", e))?;
        // SAFETY: flock on a descriptor we own; released when `lock` is closed.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } < 0 {
            return Err(CniError::io(
                "locking the state directory",
                std::io::Error::last_os_error(),
            ));
        }
        let r = f();
        drop(lock);
        r
    }

    fn request(&self, req: &Request) -> Result<Value, CniError> {
        usernet::control::server::request(&self.socket, req).map_err(CniError::daemon)
    }

    fn daemon_alive(&self) -> bool {
        std::os::unix::net::UnixStream::connect(&self.socket).is_ok()
    }

    /// Starts the daemon unless its socket answers: `usernet up --cni-state DIR --socket S`,
    /// detached (new session, stdio to its log file), then waits for the socket.
    pub fn ensure_daemon(&self) -> Result<(), CniError> {
        if self.daemon_alive() {
            return Ok(());
        }
        let exe =
            std::env::current_exe().map_err(|e| CniError::io("finding the usernet binary", e))?;
        if let Some(dir) = self.socket.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| CniError::io(format!("creating {}", dir.display()), e))?;
        }
        let log_path = self.state.join("daemon.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| CniError::io(format!("opening {}", log_path.display()), e))?;
        let log2 = log.try_clone().map_err(|e| CniError::io("daemon log", e))?;
        let mut cmd = Command::new(exe);
        cmd.arg("up")
            .arg("--cni-state")
            .arg(&self.state)
            .arg("--socket")
            .arg(&self.socket)
            .env_remove("CNI_COMMAND")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2));
        // SAFETY: setsid is async-signal-safe; the child detaches from the runtime's session
        // so it outlives the plugin and holds none of the runtime's pipes.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| CniError::io("starting the usernet daemon", e))?;
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if self.daemon_alive() {
                // Not waited for: it runs on in its own session (init reaps it).
                let _ = std::fs::write(self.state.join("daemon.pid"), child.id().to_string());
                std::mem::forget(child);
                return Ok(());
            }
            if let Ok(Some(st)) = child.try_wait() {
                return Err(CniError::new(
                    11,
                    "the usernet daemon exited at start",
                    format!("{st}; see {}", log_path.display()),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(CniError::new(
            11,
            "the usernet daemon did not come up",
            format!(
                "no socket {} after 15 s; see {}",
                self.socket.display(),
                log_path.display()
            ),
        ))
    }

    fn ensure_network(&self, conf: &NetConf) -> Result<String, CniError> {
        let name = conf.network.clone().unwrap_or_else(|| conf.name.clone());
        let nets = self.request(&Request::Networks {})?;
        let exists = nets
            .as_array()
            .into_iter()
            .flatten()
            .any(|n| n["name"] == name.as_str());
        let path = self.state.join("networks").join(format!("{name}.json"));
        if exists {
            return Ok(name);
        }
        let Some(subnet) = conf.subnet else {
            return Err(CniError::config(format!(
                "`subnet`: network {name:?} does not exist yet and needs one (e.g. \"10.89.0.0/24\")"
            )));
        };
        let req = serde_json::from_value::<Request>(json!({
            "op": "add_network",
            "name": name,
            "gateway": true,
            "subnet": subnet,
            "ipv6": conf.ipv6.clone().unwrap_or_else(|| "off".into()),
            "mtu": conf.mtu,
            "domain": conf.domain,
            "dns_upstreams": conf.dns_upstreams,
            "host_loopback": conf.host_loopback,
        }))
        .map_err(|e| CniError::config(e.to_string()))?;
        self.request(&req)?;
        write_json(&path, &req)?;
        Ok(name)
    }

    /// ADD: sets up the attachment and returns the CNI result.
    pub fn add(&self, conf: &NetConf, mut want: Want, raw: &[u8]) -> Result<Value, CniError> {
        let rec_path = self.record_path(&want.container_id, &want.ifname);
        self.ensure_daemon()?;
        if let Ok(rec) = read_json::<Record>(&rec_path) {
            let ports = self.request(&Request::Ports {})?;
            if ports
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p["name"] == rec.port.as_str())
            {
                // ADD again for an attachment that exists: the same answer.
                return Ok(rec.result);
            }
            let _ = std::fs::remove_file(&rec_path);
        }
        let network = self.ensure_network(conf)?;
        // Delegated IPAM: its addresses become fixed ones.
        let mut ipam_conf = None;
        let mut ipam_result = None;
        if let Some(ipam) = conf.ipam.as_ref().filter(|i| i.get("type").is_some()) {
            let r = delegate_ipam(ipam, raw, "ADD")?;
            for ip in r["ips"].as_array().into_iter().flatten() {
                let a = ip["address"].as_str().unwrap_or_default();
                want.ips.push(a.parse().map_err(|_| {
                    CniError::new(7, "IPAM plugin returned a bad address", a.to_string())
                })?);
                if let Some(g) = ip["gateway"].as_str().and_then(|g| g.parse().ok()) {
                    want.gateways.push(g);
                }
            }
            ipam_conf = Some(ipam.clone());
            ipam_result = Some(r);
        }
        let port = self.port_name(&want)?;
        let mut spec = PortSpec::new(&network, &port);
        spec.netns = Some(want.netns.clone());
        spec.ifname = Some(want.ifname.clone());
        spec.mtu = conf.mtu.map(u32::from);
        spec.ips = if want.ips.is_empty() {
            vec![AddrSpec::Auto]
        } else {
            want.ips.iter().map(|n| AddrSpec::Fixed(*n)).collect()
        };
        spec.gateway = want.gateways.clone();
        spec.mac = want.mac;
        let undo_ipam = |e: CniError| {
            if let Some(ipam) = &ipam_conf {
                let _ = delegate_ipam(ipam, raw, "DEL");
            }
            e
        };
        let attached: Attached = self
            .request(&Request::AddPort {
                port: Box::new(spec.clone()),
            })
            .and_then(|v| {
                serde_json::from_value(v)
                    .map_err(|e| CniError::new(6, "daemon answer", e.to_string()))
            })
            .map_err(undo_ipam)?;
        // From now on the port exists: undo removes it.
        let mut rec = Record {
            container_id: want.container_id.clone(),
            ifname: want.ifname.clone(),
            cni_network: conf.name.clone(),
            network: network.clone(),
            port: port.clone(),
            add_port: fixed(spec, &attached),
            names: Vec::new(),
            forwards: Vec::new(),
            result: Value::Null,
            ipam_conf: ipam_conf.clone(),
        };
        let r = self.finish_add(conf, &want, &attached, &mut rec, ipam_result.as_ref());
        match r {
            Ok(result) => {
                rec.result = result.clone();
                write_json(&rec_path, &rec).inspect_err(|_| self.undo(&rec))?;
                Ok(result)
            }
            Err(e) => {
                self.undo(&rec);
                Err(undo_ipam(e))
            }
        }
    }

    fn finish_add(
        &self,
        conf: &NetConf,
        want: &Want,
        attached: &Attached,
        rec: &mut Record,
        ipam_result: Option<&Value>,
    ) -> Result<Value, CniError> {
        let v4 = attached
            .ips
            .iter()
            .find(|n| n.addr().is_ipv4())
            .map(|n| n.addr());
        // Names: the container's, when the port could not take it, and its aliases.
        let mut names: Vec<String> = want.aliases.iter().filter_map(|a| dns_label(a)).collect();
        if let Some(n) = want.name.as_deref().and_then(dns_label)
            && n != rec.port
        {
            names.push(n);
        }
        for n in names {
            for ip in attached.ips.iter().map(|n| n.addr()) {
                self.request(&Request::DnsAdd {
                    network: rec.network.clone(),
                    name: n.clone(),
                    addr: ip,
                })?;
                rec.names.push((n.clone(), ip));
            }
        }
        for (i, pm) in want.ports.iter().enumerate() {
            let Some(to) = v4 else {
                return Err(CniError::config(format!(
                    "runtimeConfig.portMappings[{i}]: the container has no IPv4 address"
                )));
            };
            let proto = pm.protocol.to_ascii_lowercase();
            if proto != "tcp" && proto != "udp" {
                return Err(CniError::config(format!(
                    "runtimeConfig.portMappings[{i}].protocol: {:?} is not tcp or udp",
                    pm.protocol
                )));
            }
            let host = match pm.host_ip.as_str() {
                "" => String::new(),
                ip if ip.contains(':') => format!("[{ip}]:"),
                ip => format!("{ip}:"),
            };
            let publish = format!("{host}{}:{}/{proto}", pm.host_port, pm.container_port);
            let f: Forward = serde_json::from_value(json!({
                "network": rec.network,
                "publish": publish,
                "to": to.to_string(),
            }))
            .map_err(|e| CniError::config(format!("runtimeConfig.portMappings[{i}]: {e}")))?;
            self.request(&Request::ForwardAdd { forward: f.clone() })?;
            rec.forwards.push(f);
        }
        let gws = &attached.gateways;
        let gw_of = |a: &IpAddr| gws.iter().find(|g| g.is_ipv4() == a.is_ipv4()).copied();
        let old = conf.cni_version.starts_with("0.");
        let ips: Vec<Value> = attached
            .ips
            .iter()
            .map(|n| {
                let mut v = json!({ "address": n.to_string(), "interface": 0 });
                if let Some(g) = gw_of(&n.addr()) {
                    v["gateway"] = json!(g.to_string());
                }
                if old {
                    v["version"] = json!(if n.addr().is_ipv4() { "4" } else { "6" });
                }
                v
            })
            .collect();
        let routes: Vec<Value> = gws
            .iter()
            .map(|g| {
                json!({
                    "dst": if g.is_ipv4() { "0.0.0.0/0" } else { "::/0" },
                    "gw": g.to_string(),
                })
            })
            .collect();
        let net_gw = self.request(&Request::Gateways {}).ok().and_then(|v| {
            v.as_array()?
                .iter()
                .find(|g| g["network"] == rec.network.as_str())
                .cloned()
        });
        let mut dns = json!({});
        if let Some(g) = &net_gw {
            // The gateway serves DNS on its address (`ipv4` is ADDR/PREFIX).
            if let Some(a) = g
                .get("ipv4")
                .and_then(Value::as_str)
                .and_then(|a| a.split('/').next())
            {
                dns["nameservers"] = json!([a]);
            }
            if let Some(d) = g.get("domain").and_then(Value::as_str) {
                dns["domain"] = json!(d);
                dns["search"] = json!([d]);
            }
        } else if let Some(d) = ipam_result.and_then(|r| r.get("dns")) {
            dns = d.clone();
        }
        let mac = attached.mac.map(|m| m.to_string()).unwrap_or_default();
        let mut result = json!({
            "cniVersion": conf.cni_version,
            "interfaces": [{
                "name": want.ifname,
                "mac": mac,
                "sandbox": want.netns.display().to_string(),
            }],
            "ips": ips,
            "routes": routes,
            "dns": dns,
        });
        if let Some(mtu) = attached.mtu {
            result["interfaces"][0]["mtu"] = json!(mtu);
        }
        Ok(result)
    }

    /// The port's name: the container's name when free, else with the interface appended,
    /// else the container id's first 12 characters (and the interface).
    fn port_name(&self, want: &Want) -> Result<String, CniError> {
        let ports = self.request(&Request::Ports {})?;
        let taken = |n: &str| {
            ports
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p["name"] == n)
        };
        let id: String = want.container_id.chars().take(12).collect();
        let mut cands = Vec::new();
        if let Some(n) = want.name.as_deref().and_then(dns_label) {
            cands.push(n.clone());
            cands.push(format!("{n}-{}", want.ifname));
        }
        if let Some(n) = dns_label(&id) {
            cands.push(n.clone());
            cands.push(format!("{n}-{}", want.ifname));
        }
        cands
            .into_iter()
            .filter_map(|c| dns_label(&c))
            .find(|c| !taken(c))
            .ok_or_else(|| {
                CniError::new(
                    7,
                    "no usable port name",
                    format!("container {} ({:?})", want.container_id, want.name),
                )
            })
    }

    /// Removes what `rec` set up in the daemon (best effort).
    fn undo(&self, rec: &Record) {
        for f in &rec.forwards {
            let _ = self.request(&Request::ForwardRm {
                forward: f.spec.to_string(),
            });
        }
        for (n, ip) in &rec.names {
            let _ = self.request(&Request::DnsRm {
                network: rec.network.clone(),
                name: n.clone(),
                addr: Some(*ip),
            });
        }
        let _ = self.request(&Request::RemovePort {
            name: rec.port.clone(),
        });
    }

    /// DEL: idempotent; works when the namespace or the daemon is gone.
    pub fn del(&self, conf: &NetConf, cid: &str, ifname: &str) -> Result<(), CniError> {
        let path = self.record_path(cid, ifname);
        let rec = read_json::<Record>(&path).ok();
        if let Some(rec) = &rec {
            // The record goes first: a daemon restarted meanwhile must not bring it back.
            let _ = std::fs::remove_file(&path);
            if self.daemon_alive() {
                self.undo(rec);
            }
        }
        let ipam = rec
            .as_ref()
            .and_then(|r| r.ipam_conf.clone())
            .or_else(|| conf.ipam.clone().filter(|i| i.get("type").is_some()));
        if let Some(ipam) = ipam {
            let raw = serde_json::to_vec(conf).unwrap_or_default();
            delegate_ipam(&ipam, &raw, "DEL")?;
        }
        Ok(())
    }

    /// CHECK: the attachment exists in the daemon and in the namespace as ADD left it.
    pub fn check(
        &self,
        conf: &NetConf,
        cid: &str,
        ifname: &str,
        netns: &Path,
    ) -> Result<(), CniError> {
        let rec = read_json::<Record>(&self.record_path(cid, ifname)).map_err(|_| {
            CniError::new(
                3,
                "unknown container",
                format!("{cid}/{ifname} was not added by usernet"),
            )
        })?;
        if conf.prev_result.is_none() && !conf.cni_version.starts_with("0.3") {
            return Err(CniError::config("`prevResult` is missing"));
        }
        if !self.daemon_alive() {
            return Err(CniError::new(
                11,
                "the usernet daemon is not running",
                self.socket.display().to_string(),
            ));
        }
        let ports = self.request(&Request::Ports {})?;
        if !ports
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| p["name"] == rec.port.as_str())
        {
            return Err(CniError::new(3, "the container's port is gone", rec.port));
        }
        let want: Vec<String> = rec.add_port.ips.iter().map(|a| a.to_string()).collect();
        let name = ifname.to_string();
        let have = usernet::link::netns::run_in_netns(netns, move || {
            let idx = usernet::link::netns::if_index(&name)
                .map_err(|e| std::io::Error::new(e.source.kind(), e.to_string()))?;
            Ok(idx)
        })
        .map_err(|e| CniError::new(3, "the container's interface is gone", e.to_string()))?;
        let _ = have;
        let out = Command::new("ip")
            .args(["-n"])
            .arg(netns)
            .args(["-o", "addr", "show", "dev", ifname])
            .output();
        if let Ok(o) = out
            && o.status.success()
        {
            let text = String::from_utf8_lossy(&o.stdout);
            for w in &want {
                if !text.contains(w.as_str()) {
                    return Err(CniError::new(
                        7,
                        "the container's address changed",
                        format!("{w} is not on {ifname}"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// STATUS: ready when the daemon answers or can be started.
    pub fn status(&self) -> Result<(), CniError> {
        if self.daemon_alive() || std::env::current_exe().is_ok() {
            Ok(())
        } else {
            Err(CniError::new(
                50,
                "plugin not available",
                "cannot find the usernet binary",
            ))
        }
    }

    /// GC: removes this network's attachments the runtime no longer lists.
    pub fn gc(&self, conf: &NetConf) -> Result<(), CniError> {
        let Some(valid) = &conf.valid_attachments else {
            return Ok(());
        };
        let dir = self.state.join("attachments");
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let Ok(rec) = read_json::<Record>(&e.path()) else {
                continue;
            };
            if rec.cni_network != conf.name {
                continue;
            }
            let listed = valid.iter().any(|v| {
                v.container_id == rec.container_id
                    && (v.ifname.is_empty() || v.ifname == rec.ifname)
            });
            if !listed {
                let _ = std::fs::remove_file(e.path());
                if self.daemon_alive() {
                    self.undo(&rec);
                }
            }
        }
        Ok(())
    }
}

/// The spec with the MAC and addresses the port got, so a replay recreates it as it was.
fn fixed(mut spec: PortSpec, a: &Attached) -> PortSpec {
    spec.mac = a.mac;
    spec.ips = a.ips.iter().map(|n| AddrSpec::Fixed(*n)).collect();
    spec
}

/// Runs the IPAM plugin `ipam.type` from `CNI_PATH` with the same environment and config.
fn delegate_ipam(ipam: &Value, raw: &[u8], cmd: &str) -> Result<Value, CniError> {
    let kind = ipam["type"].as_str().unwrap_or_default();
    if kind.is_empty() || kind.contains('/') {
        return Err(CniError::config(format!(
            "ipam.type: {kind:?} is not a plugin name"
        )));
    }
    let dirs = env("CNI_PATH").unwrap_or_else(|| "/opt/cni/bin".into());
    let bin = dirs
        .split(':')
        .map(|d| Path::new(d).join(kind))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CniError::config(format!(
                "ipam.type: no plugin {kind:?} in CNI_PATH ({dirs})"
            ))
        })?;
    let mut child = Command::new(&bin)
        .env("CNI_COMMAND", cmd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| CniError::io(format!("running {}", bin.display()), e))?;
    if let Some(mut i) = child.stdin.take() {
        let _ = i.write_all(raw);
    }
    let out = child
        .wait_with_output()
        .map_err(|e| CniError::io(format!("running {}", bin.display()), e))?;
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    if !out.status.success() {
        return Err(CniError::new(
            v["code"].as_u64().unwrap_or(5) as u32,
            format!(
                "IPAM plugin {kind}: {}",
                v["msg"].as_str().unwrap_or("failed")
            ),
            v["details"]
                .as_str()
                .map(String::from)
                .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).into_owned()),
        ));
    }
    Ok(v)
}

fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<(), CniError> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)
            .map_err(|e| CniError::io(format!("creating {}", d.display()), e))?;
    }
    let tmp = path.with_extension("tmp");
    let data = serde_json::to_vec_pretty(v).map_err(|e| CniError::io("encoding state", e))?;
    std::fs::write(&tmp, data)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| CniError::io(format!("writing {}", path.display()), e))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, String> {
    let data = std::fs::read(path).map_err(|e| e.to_string())?;
    serde_json::from_slice(&data).map_err(|e| e.to_string())
}

/// Replays the recorded networks and attachments into a fresh daemon (`up --cni-state DIR`):
/// attachments whose namespace is gone are dropped.
pub fn replay(h: &usernet::Handle, dir: &Path) -> anyhow::Result<()> {
    let run = |req: Request| usernet::control::api::execute(h, req);
    for e in std::fs::read_dir(dir.join("networks"))
        .into_iter()
        .flatten()
        .flatten()
    {
        match read_json::<Request>(&e.path()) {
            Ok(req) => {
                if let Err(err) = run(req) {
                    tracing::warn!(file = %e.path().display(), "replaying network: {err}");
                }
            }
            Err(err) => tracing::warn!(file = %e.path().display(), "unreadable: {err}"),
        }
    }
    let mut n = 0;
    for e in std::fs::read_dir(dir.join("attachments"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if e.path().extension().is_none_or(|x| x != "json") {
            continue;
        }
        let rec = match read_json::<Record>(&e.path()) {
            Ok(r) => r,
            Err(err) => {
                tracing::warn!(file = %e.path().display(), "unreadable: {err}");
                continue;
            }
        };
        if rec.add_port.netns.as_ref().is_none_or(|p| !p.exists()) {
            tracing::info!(container = %rec.container_id, "namespace gone: attachment dropped");
            let _ = std::fs::remove_file(e.path());
            continue;
        }
        if let Err(err) = run(Request::AddPort {
            port: Box::new(rec.add_port.clone()),
        }) {
            tracing::warn!(container = %rec.container_id, "replaying port: {err}");
            continue;
        }
        for (name, addr) in &rec.names {
            let _ = run(Request::DnsAdd {
                network: rec.network.clone(),
                name: name.clone(),
                addr: *addr,
            });
        }
        for f in &rec.forwards {
            if let Err(err) = run(Request::ForwardAdd { forward: f.clone() }) {
                tracing::warn!(container = %rec.container_id, "replaying forward: {err}");
            }
        }
        n += 1;
    }
    tracing::info!(attachments = n, "CNI state replayed from {}", dir.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cni_args_split() {
        let a = cni_args("IgnoreUnknown=1;K8S_POD_NAME=web;K8S_POD_NAMESPACE=default");
        assert_eq!(a.get("K8S_POD_NAME").map(String::as_str), Some("web"));
        assert_eq!(a.get("IgnoreUnknown").map(String::as_str), Some("1"));
        assert!(cni_args("").is_empty());
    }

    #[test]
    fn labels() {
        assert_eq!(dns_label("Web_1").as_deref(), Some("web-1"));
        assert_eq!(dns_label("--").as_deref(), None);
        assert_eq!(dns_label(&"a".repeat(100)).map(|s| s.len()), Some(63));
    }

    #[test]
    fn conf_parses_podman_shape() {
        let c: NetConf = serde_json::from_str(
            r#"{"cniVersion":"1.0.0","name":"un","type":"usernet","subnet":"10.89.0.0/24",
               "runtimeConfig":{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp","hostIP":"127.0.0.1"}]},
               "someOtherKey":1}"#,
        )
        .expect("conf");
        assert_eq!(c.runtime_config.port_mappings[0].host_port, 8080);
        assert_eq!(
            c.subnet.map(|s| s.to_string()).as_deref(),
            Some("10.89.0.0/24")
        );
    }
}
