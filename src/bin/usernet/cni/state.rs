//! The state directory: each attachment recorded as the API requests that recreate it, and the
//! replay a daemon started with `up --cni-state` runs.

use super::*;

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

pub(super) fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<(), CniError> {
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

pub(super) fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, String> {
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
