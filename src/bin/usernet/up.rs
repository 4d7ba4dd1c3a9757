//! `usernet up`: networks and ports from a config file.

use std::path::PathBuf;

use anyhow::Context;
use usernet::config::Config;
use usernet::{Engine, control};

use crate::SocketArg;

/// Arguments of `usernet up`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Config file (TOML; see README) [default: usernet.toml; none with --cni-state].
    #[arg(short = 'c', long = "config")]
    config: Option<PathBuf>,
    /// The CNI plugin's state directory: networks and attachments recorded there by the
    /// plugin are set up again at start (a restart keeps containers' addresses, names and
    /// forwards). The plugin starts its daemon with it.
    #[arg(long, value_name = "DIR")]
    cni_state: Option<PathBuf>,
    /// Once everything in the config is set up: drop capabilities and install a seccomp
    /// allowlist (no new files: TAP, netns and packet ports and spliced forwards are refused
    /// afterwards; stream ports and ordinary forwards still work).
    #[arg(long)]
    sandbox: bool,
    /// Serve Prometheus metrics over HTTP at http://ADDR:PORT/metrics (e.g. 127.0.0.1:9600);
    /// overrides `[engine] metrics`.
    #[arg(long, value_name = "ADDR:PORT")]
    metrics: Option<std::net::SocketAddr>,
    #[command(flatten)]
    socket: SocketArg,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let cfg = match (&a.config, &a.cni_state) {
        (Some(p), _) => Config::load(p)?,
        (None, Some(_)) => Config::default(),
        (None, None) => Config::load(std::path::Path::new("usernet.toml"))?,
    };
    let sock = a.socket.path()?;
    if a.sandbox && !cfg.service.is_empty() {
        anyhow::bail!(
            "service[0]: not with --sandbox (the service mesh relays with splice(2), which the \
             sandbox's allowlist does not have)"
        );
    }
    let engine = Engine::start(cfg.engine_config()).context("starting event loops")?;
    let h = engine.handle();
    cfg.apply(&h)?;
    if let Some(dir) = &a.cni_state {
        crate::cni::replay(&h, dir)?;
    }
    let _srv = control::server::serve(h.clone(), &sock)?;
    let _metrics = match a.metrics.or(cfg.engine.metrics) {
        Some(addr) => Some(control::metrics::serve(h.clone(), addr).with_context(|| {
            let key = if a.metrics.is_some() {
                "--metrics"
            } else {
                "engine.metrics"
            };
            format!("{key}: {addr}")
        })?),
        None => None,
    };
    crate::stop_on_signals(h)?;
    if a.sandbox {
        usernet::sandbox::apply().context("applying the sandbox")?;
    }
    tracing::info!(
        "up: {} network(s), {} port(s); control socket {}",
        cfg.network.len(),
        cfg.port.len(),
        sock.display()
    );
    engine.wait();
    Ok(())
}
