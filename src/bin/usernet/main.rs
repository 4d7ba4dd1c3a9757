//! The `usernet` command line. One file per subcommand.

#![warn(clippy::undocumented_unsafe_blocks)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod attach;
mod bridge;
mod capture;
mod cni;
mod ctl;
mod demo;
mod events;
mod gendoc;
mod netavark;
mod policy;
mod port_limit;
mod render;
mod run;
mod slirp;
mod up;

/// Container and VM networking in userspace: a learning L2 switch over TAP, AF_PACKET and
/// in-memory ports, driven by mio event loops.
#[derive(Parser, Debug)]
#[command(name = "usernet", version, about, long_about = None)]
struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. `debug` or `usernet=trace`; default `info`
    /// (or $RUST_LOG).
    #[arg(long, global = true)]
    log: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Build throw-away namespaces, join them to a network, move data through the switch,
    /// print counters, remove everything.
    Demo(demo::Args),
    /// Ad-hoc L2 switch between TAP devices and existing interfaces (no gateway).
    Bridge(bridge::Args),
    /// Run networks and ports from a TOML config file.
    Up(up::Args),
    /// Run a command in its own user + network namespace with NAT, DNS and port forwards
    /// (rootless, like pasta or slirp4netns).
    Run(run::Args),
    /// Talk to a running instance over its control socket.
    Ctl(ctl::Args),
    /// slirp4netns-compatible mode (also when this binary is invoked as `slirp4netns`).
    Slirp4netns(slirp::Args),
    /// Join a network namespace to a running `usernet up` (a TAP created inside it).
    Attach(attach::Args),
    /// Remove an endpoint added by `attach`.
    Detach(attach::DetachArgs),
    /// Print a shell completion script (bash, elvish, fish, powershell, zsh) to stdout.
    #[command(hide = true)]
    Completions(gendoc::CompletionsArgs),
    /// Print the man page (roff) to stdout, or write one per subcommand with --dir.
    #[command(hide = true)]
    Man(gendoc::ManArgs),
}

fn init_logging(filter: Option<&str>) {
    let env = filter
        .map(str::to_string)
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(env))
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// Stops `handle` on SIGINT or SIGTERM.
pub(crate) fn stop_on_signals(handle: usernet::Handle) -> anyhow::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])?;
    std::thread::Builder::new()
        .name("usernet-signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                tracing::info!("signal {sig}: shutting down");
                handle.shutdown();
            }
        })?;
    Ok(())
}

/// The `--socket` option shared by the daemons and `ctl`.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct SocketArg {
    /// Control socket path [default: $USERNET_SOCKET, /run/usernet/usernet.sock for root,
    /// else $XDG_RUNTIME_DIR/usernet.sock; without them an error, never a path in /tmp]
    #[arg(long)]
    socket: Option<PathBuf>,
}

impl SocketArg {
    pub(crate) fn path(&self) -> anyhow::Result<PathBuf> {
        match &self.socket {
            Some(p) => Ok(p.clone()),
            None => Ok(usernet::control::server::default_socket_path()?),
        }
    }
}

fn main() -> ExitCode {
    // NAT's 1-2 MiB flow buffers go back to the system when their flows end.
    usernet::nat::release_big_buffers_promptly();
    // A CNI runtime runs plugins by name with CNI_COMMAND set: this binary is the plugin then.
    if let Some(code) = cni::main_if_plugin() {
        return ExitCode::from(code);
    }
    // netavark runs its plugins as `NAME info|create|setup NETNS|teardown NETNS`.
    let args: Vec<String> = std::env::args().collect();
    if let Some(code) = netavark::main_if_plugin(&args) {
        return ExitCode::from(code);
    }
    // Invoked as `slirp4netns` (a symlink): slirp4netns's command line, exactly.
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let as_slirp = std::path::Path::new(&argv0)
        .file_name()
        .is_some_and(|n| n == "slirp4netns");
    // `-v`/`--version` as slirp4netns prints it (runtimes parse these fields), before the
    // positional arguments are required.
    let slirp_args = if as_slirp {
        args.get(1..)
    } else {
        args.get(2..)
            .filter(|_| args.get(1).is_some_and(|a| a == "slirp4netns"))
    };
    if slirp_args.is_some_and(slirp::wants_version) {
        print!("{}", slirp::version_text());
        return ExitCode::SUCCESS;
    }
    if as_slirp {
        let s = <slirp::Standalone as clap::Parser>::parse();
        init_logging(std::env::var("RUST_LOG").ok().as_deref().or(Some("warn")));
        return match slirp::run(s.args) {
            Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
            Err(e) => {
                eprintln!("slirp4netns (usernet): {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let cli = Cli::parse();
    // The demo prints its own report; keep the log to warnings unless asked.
    let quiet = matches!(cli.cmd, Cmd::Demo(_) | Cmd::Run(_) | Cmd::Slirp4netns(_))
        && std::env::var_os("RUST_LOG").is_none();
    init_logging(cli.log.as_deref().or(quiet.then_some("warn")));
    let r = match cli.cmd {
        Cmd::Demo(a) => demo::run(a),
        Cmd::Bridge(a) => bridge::run(a),
        Cmd::Up(a) => up::run(a),
        Cmd::Ctl(a) => ctl::run(a),
        Cmd::Attach(a) => attach::run(a),
        Cmd::Detach(a) => attach::detach(a),
        Cmd::Completions(a) => gendoc::completions(a),
        Cmd::Man(a) => gendoc::man(a),
        Cmd::Slirp4netns(a) => match slirp::run(a) {
            Ok(code) => return ExitCode::from(code.clamp(0, 255) as u8),
            Err(e) => Err(e),
        },
        Cmd::Run(a) => match run::run(a) {
            Ok(code) => return ExitCode::from(code.clamp(0, 255) as u8),
            Err(e) => Err(e),
        },
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("usernet: {e:#}");
            ExitCode::FAILURE
        }
    }
}
