//! The plugin's operations on the daemon: ensure it runs, ADD, DEL, CHECK, STATUS, GC, and IPAM
//! delegation.

use super::*;
use state::{Record, read_json, write_json};

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
        // flock(LOCK_EX); released when `lock` is closed.
        lock.lock()
            .map_err(|e| CniError::io("locking the state directory", e))?;
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
                rustix::process::setsid()?;
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
pub(super) fn fixed(mut spec: PortSpec, a: &Attached) -> PortSpec {
    spec.mac = a.mac;
    spec.ips = a.ips.iter().map(|n| AddrSpec::Fixed(*n)).collect();
    spec
}

/// Runs the IPAM plugin `ipam.type` from `CNI_PATH` with the same environment and config.
pub(super) fn delegate_ipam(ipam: &Value, raw: &[u8], cmd: &str) -> Result<Value, CniError> {
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
