//! VXLAN ports in the control plane: opening one for a [`PortSpec`] (the network's FDB aging,
//! its gateway's MAC, the gateway's announced MTU lowered to the inner MTU), and the run-time
//! operations on its remotes (`ctl vxlan NAME remotes|add-remote|rm-remote`).

use std::net::IpAddr;
use std::sync::Arc;

use super::{Handle, PortSpec};
use crate::error::{Error, Result};
use crate::link::vxlan::{RemoteInfo, VxlanLink, VxlanShared, VxlanSpec};
use crate::wire::Mac;

impl Handle {
    /// Opens the link of a VXLAN port of `spec.network` (its sockets bound; not added yet).
    pub(super) fn open_vxlan(&self, spec: &PortSpec, v: &VxlanSpec) -> Result<VxlanLink> {
        let aging_ms = self
            .dp
            .bridge()
            .topology()
            .network_by_name(&spec.network)
            .map(|n| n.net.fdb.config().aging_ms)
            .ok_or_else(|| crate::bridge::BridgeError::NoSuchNetwork(spec.network.clone()))?;
        let gw_mac = self
            .node
            .gateways
            .lock()
            .get(&spec.network)
            .map(|g| g.cfg.mac);
        let what = format!("{} (vxlan {} on {}:{})", spec.name, v.vni, v.local, v.port);
        Ok(VxlanLink::open(v, aging_ms, gw_mac, &what)?.0)
    }

    /// Registers a VXLAN port that was added, and makes its network's gateway announce its
    /// inner MTU when that is smaller than the network's.
    pub(super) fn vxlan_added(&self, network: &str, name: &str, v: Arc<VxlanShared>) {
        if let Some(g) = self.node.gateways.lock().get(network) {
            let mtu = u16::try_from(v.mtu()).unwrap_or(u16::MAX);
            if mtu < g.announced_mtu() {
                tracing::info!(
                    network,
                    port = name,
                    mtu,
                    "the gateway announces the VXLAN inner MTU"
                );
                g.lower_announced_mtu(mtu);
            }
        }
        self.node.vxlan.lock().insert(name.to_string(), v);
    }

    fn vxlan_port(&self, port: &str) -> Result<Arc<VxlanShared>> {
        if let Some(v) = self.node.vxlan.lock().get(port) {
            return Ok(v.clone());
        }
        if self.dp.bridge().topology().port_by_name(port).is_some() {
            return Err(Error::invalid(
                "port",
                format!("{port:?} is not a VXLAN port"),
            ));
        }
        Err(crate::bridge::BridgeError::NoSuchPort(port.to_string()).into())
    }

    /// The remote VTEPs of VXLAN port `port`, with their MAC counts and counters.
    pub fn vxlan_remotes(&self, port: &str) -> Result<Vec<RemoteInfo>> {
        Ok(self.vxlan_port(port)?.remotes())
    }

    /// Adds a remote VTEP to VXLAN port `port`.
    pub fn vxlan_add_remote(&self, port: &str, remote: IpAddr) -> Result<()> {
        self.vxlan_port(port)?
            .add_remote(remote)
            .map_err(|e| Error::invalid("remote", format!("{e} (port {port:?})")))
    }

    /// Removes a remote VTEP from VXLAN port `port` and forgets the MACs learned behind it.
    pub fn vxlan_rm_remote(&self, port: &str, remote: IpAddr) -> Result<()> {
        self.vxlan_port(port)?
            .remove_remote(remote)
            .map_err(|e| Error::invalid("remote", format!("{e} of port {port:?}")))
    }

    /// The VTEP behind which `mac` was last seen on VXLAN port `port` (None for other ports).
    pub(super) fn vtep_of(&self, port: &str, mac: Mac) -> Option<IpAddr> {
        self.node
            .vxlan
            .lock()
            .get(port)
            .and_then(|v| v.vtep_of(mac))
    }

    /// The counters of VXLAN port `port` (None for other ports).
    pub(super) fn vxlan_stats(&self, port: &str) -> Option<crate::link::vxlan::VxlanStats> {
        self.node.vxlan.lock().get(port).map(|v| v.stats())
    }
}

#[cfg(test)]
mod tests {
    use crate::control::api::handle_line;
    use crate::control::networks::NetworkSpec;
    use crate::engine::EngineConfig;
    use crate::{Engine, PortSpec};

    #[test]
    #[cfg(feature = "toml")]
    fn config_key_parses_and_errors_name_the_field() {
        let cfg = crate::config::Config::parse(
            "[[network]]\nname = \"n\"\n[[port]]\nnetwork = \"n\"\nname = \"vx\"\n\
             vxlan = { vni = 42, local = \"192.0.2.1\", remotes = [\"192.0.2.2\"] }\n",
        )
        .expect("parses");
        let v = cfg.port[0].vxlan.as_ref().expect("vxlan");
        assert_eq!((v.vni, v.port, v.mtu), (42, 4789, None));
        for (bad, field) in [
            ("vni = 16777216, local = \"192.0.2.1\"", "port[0].vxlan.vni"),
            ("vni = 1, local = \"0.0.0.0\"", "port[0].vxlan.local"),
            (
                "vni = 1, local = \"192.0.2.1\", remotes = [\"2001:db8::1\"]",
                "port[0].vxlan.remotes[0]",
            ),
            (
                "vni = 1, local = \"192.0.2.1\", mtu = 10",
                "port[0].vxlan.mtu",
            ),
            (
                "vni = 1, local = \"192.0.2.1\", port = 0",
                "port[0].vxlan.port",
            ),
        ] {
            let e = crate::config::Config::parse(&format!(
                "[[network]]\nname = \"n\"\n[[port]]\nnetwork = \"n\"\nname = \"vx\"\nvxlan = {{ {bad} }}\n"
            ))
            .expect_err(bad)
            .to_string();
            assert!(e.contains(field), "{bad}: {e}");
        }
        let e = crate::config::Config::parse(
            "[[network]]\nname = \"n\"\n[[port]]\nnetwork = \"n\"\nname = \"vx\"\ntap = \"t\"\n\
             vxlan = { vni = 42, local = \"192.0.2.1\" }\n",
        )
        .expect_err("two backends")
        .to_string();
        assert!(e.contains("exactly one"), "{e}");
    }

    #[test]
    fn runtime_remotes_over_the_api_and_the_gateway_mtu() {
        let engine = Engine::start(EngineConfig::default()).expect("engine");
        let h = engine.handle();
        let mut n = NetworkSpec::new("n");
        n.gateway = true;
        n.dns_upstreams = Some(vec!["127.0.0.1:9".into()]);
        h.create_network(&n, "network").expect("network");
        assert_eq!(h.gateway("n").expect("gw").announced_mtu(), 1500);
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("free port")
            .port();
        let mut spec = PortSpec::new("n", "vx");
        let mut v = crate::link::vxlan::VxlanSpec::new(42, "127.0.0.1".parse().expect("ip"));
        v.port = port;
        v.mtu = Some(1400);
        spec.vxlan = Some(v);
        h.attach(&spec).expect("vxlan port");
        assert_eq!(h.gateway("n").expect("gw").announced_mtu(), 1400);
        let ok = |line: &str| {
            let r = handle_line(&h, line);
            assert_eq!(r["ok"], true, "{line}: {r}");
            r["result"].clone()
        };
        let err = |line: &str| {
            let r = handle_line(&h, line);
            assert_eq!(r["ok"], false, "{line}: {r}");
            r["error"].as_str().unwrap_or_default().to_string()
        };
        ok(r#"{"op":"vxlan_add_remote","port":"vx","remote":"127.0.0.2"}"#);
        let r = ok(r#"{"op":"vxlan_remotes","port":"vx"}"#);
        assert_eq!(r[0]["remote"], "127.0.0.2");
        let e = err(r#"{"op":"vxlan_add_remote","port":"vx","remote":"127.0.0.2"}"#);
        assert!(e.contains("remote") && e.contains("already"), "{e}");
        let e = err(r#"{"op":"vxlan_add_remote","port":"vx","remote":"::1"}"#);
        assert!(e.contains("remote") && e.contains("family"), "{e}");
        let e = err(r#"{"op":"vxlan_remotes","port":"gw.n"}"#);
        assert!(e.contains("port") && e.contains("not a VXLAN port"), "{e}");
        let e = err(r#"{"op":"vxlan_remotes","port":"nope"}"#);
        assert!(e.contains("nope"), "{e}");
        ok(r#"{"op":"vxlan_rm_remote","port":"vx","remote":"127.0.0.2"}"#);
        let e = err(r#"{"op":"vxlan_rm_remote","port":"vx","remote":"127.0.0.2"}"#);
        assert!(e.contains("remote") && e.contains("not a remote"), "{e}");
        let stats = ok(r#"{"op":"stats"}"#);
        let row = stats
            .as_array()
            .and_then(|a| a.iter().find(|r| r["port"] == "vx"))
            .cloned()
            .expect("vx row");
        assert_eq!(row["vxlan"]["mtu"], 1400);
        h.remove_port("vx").expect("remove");
        assert!(h.vxlan_remotes("vx").is_err());
        engine.shutdown();
    }
}
