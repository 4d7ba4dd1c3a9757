//! `usernet completions SHELL` and `usernet man [--dir DIR]` (hidden): shell completions and
//! man pages generated from the clap definition, for packagers.

use std::path::PathBuf;

use anyhow::Context;
use clap::CommandFactory;

/// `usernet completions`.
#[derive(clap::Args, Debug)]
pub struct CompletionsArgs {
    /// The shell: bash, elvish, fish, powershell or zsh.
    shell: clap_complete::Shell,
}

/// `usernet man`.
#[derive(clap::Args, Debug)]
pub struct ManArgs {
    /// Write usernet.1 and one usernet-SUBCOMMAND.1 per subcommand into this directory instead
    /// of usernet.1 to stdout.
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// Writes the completion script for `a.shell` to stdout.
pub fn completions(a: CompletionsArgs) -> anyhow::Result<()> {
    let mut cmd = crate::Cli::command();
    clap_complete::generate(a.shell, &mut cmd, "usernet", &mut std::io::stdout());
    Ok(())
}

/// Writes the man page(s).
pub fn man(a: ManArgs) -> anyhow::Result<()> {
    let mut cmd = crate::Cli::command();
    // Sets each subcommand's display name ("usernet-up") and bin name ("usernet up").
    cmd.build();
    let Some(dir) = a.dir else {
        clap_mangen::Man::new(cmd).render(&mut std::io::stdout().lock())?;
        return Ok(());
    };
    write_pages(&cmd, &dir)
}

/// Writes `cmd`'s page as DIR/DISPLAY-NAME.1, then those of its subcommands (nested ones too:
/// `usernet-ctl-port.1`), except clap's own `help`.
fn write_pages(cmd: &clap::Command, dir: &std::path::Path) -> anyhow::Result<()> {
    let name = cmd.get_display_name().unwrap_or_else(|| cmd.get_name());
    let path = dir.join(format!("{name}.1"));
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .source(format!("usernet {}", env!("CARGO_PKG_VERSION")))
        .render(&mut out)?;
    std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        write_pages(sub, dir)?;
    }
    Ok(())
}
