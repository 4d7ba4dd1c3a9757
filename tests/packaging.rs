//! What a distribution package ships besides the binary: shell completions and man pages
//! generated from the command line (`usernet completions SHELL`, `usernet man [--dir DIR]`),
//! the systemd units in packaging/, the license files. No privileges, no network.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_usernet");

fn run(args: &[&str]) -> Output {
    let out = Command::new(BIN).args(args).output().expect("runs usernet");
    assert!(
        out.status.success(),
        "usernet {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(args: &[&str]) -> String {
    String::from_utf8(run(args).stdout).expect("UTF-8 output")
}

/// The subcommands `usernet --help` lists (the hidden ones are not listed), without `help`.
fn subcommands() -> Vec<String> {
    let help = stdout(&["--help"]);
    let list: Vec<String> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| *n != "help")
        .map(str::to_owned)
        .collect();
    assert!(list.len() >= 8, "subcommands in --help: {list:?}\n{help}");
    assert!(!list.iter().any(|n| n == "man" || n == "completions"));
    list
}

fn has(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("usernet-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn completions_for_every_shell() {
    let bash = stdout(&["completions", "bash"]);
    assert!(
        bash.contains("complete "),
        "not a bash completion script:\n{bash}"
    );
    for sub in subcommands() {
        assert!(bash.contains(&sub), "bash completion lacks {sub}");
    }
    assert!(bash.contains("--netns"), "attach's options are completed");
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let s = stdout(&["completions", shell]);
        assert!(s.contains("attach"), "{shell} completion lacks attach");
    }
    let out = Command::new(BIN)
        .args(["completions", "tcsh"])
        .output()
        .expect("runs");
    assert!(!out.status.success(), "an unknown shell is an error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("tcsh"));
}

#[test]
fn man_page_lists_every_subcommand_and_renders() {
    let page = stdout(&["man"]);
    assert!(
        page.contains(".TH usernet 1"),
        "not a roff man page:\n{page}"
    );
    for sub in subcommands() {
        assert!(
            page.contains(&format!("usernet\\-{sub}")),
            "man page lacks {sub}"
        );
    }
    let dir = TempDir::new("man");
    let man1 = dir.0.join("man1");
    std::fs::create_dir_all(&man1).expect("man1");
    std::fs::write(man1.join("stdout.1"), &page).expect("write");
    run(&["man", "--dir", man1.to_str().expect("UTF-8 path")]);
    for sub in subcommands() {
        let p = man1.join(format!("usernet-{sub}.1"));
        let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(
            text.contains(&format!(".TH usernet-{sub} 1")),
            "{}",
            p.display()
        );
    }
    assert_eq!(
        std::fs::read_to_string(man1.join("usernet.1")).expect("usernet.1"),
        page,
        "--dir writes the same top page as stdout"
    );
    assert!(
        man1.join("usernet-ctl-port-add.1").exists(),
        "nested subcommands get pages"
    );
    if !has("man") {
        eprintln!("note: man(1) is not installed here: the pages were not rendered");
        return;
    }
    let mut pages: Vec<PathBuf> = std::fs::read_dir(&man1)
        .expect("read dir")
        .map(|e| e.expect("entry").path())
        .collect();
    pages.sort();
    for p in &pages {
        let out = Command::new("man")
            .args(["--warnings=all", "-l"])
            .arg(p)
            .env("MANWIDTH", "100")
            .output()
            .expect("runs man");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && err.trim().is_empty(),
            "man -l {}: {err}",
            p.display()
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("NAME") && text.contains("SYNOPSIS"),
            "{}:\n{text}",
            p.display()
        );
    }
}

fn repo_file(rel: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn systemd_units_run_up_and_verify() {
    let up = repo_file("packaging/usernet.service");
    assert!(up.contains("\nExecStart=/usr/bin/usernet up "), "{up}");
    let cni = repo_file("packaging/usernet-cni.service");
    // The command the CNI plugin itself would start (README, "CNI").
    assert!(
        cni.contains(
            "\nExecStart=/usr/bin/usernet up --cni-state /var/lib/usernet/cni --socket /run/usernet/cni.sock\n"
        ),
        "{cni}"
    );
    if !has("systemd-analyze") {
        eprintln!("note: systemd-analyze is not installed here: the units were not verified");
        return;
    }
    // verify checks that ExecStart is executable and that Documentation= pages exist: point
    // both at this build.
    let dir = TempDir::new("units");
    let man1 = dir.0.join("man/man1");
    std::fs::create_dir_all(&man1).expect("man1");
    run(&["man", "--dir", man1.to_str().expect("UTF-8 path")]);
    let mut units = Vec::new();
    for (name, text) in [("usernet.service", &up), ("usernet-cni.service", &cni)] {
        let p = dir.0.join(name);
        std::fs::write(&p, text.replace("/usr/bin/usernet", BIN)).expect("write unit");
        units.push(p);
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .env("MANPATH", dir.0.join("man"))
        .output()
        .expect("runs systemd-analyze");
    assert!(
        out.status.success(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn license_files_match_the_manifest() {
    let manifest = repo_file("Cargo.toml");
    assert!(manifest.contains("license = \"MIT OR Apache-2.0\""));
    let mit = repo_file("LICENSE-MIT");
    assert!(mit.contains("Permission is hereby granted, free of charge"));
    assert!(mit.contains("Copyright (c) the usernet developers"));
    let apache = repo_file("LICENSE-APACHE");
    assert!(apache.contains("Apache License") && apache.contains("Version 2.0, January 2004"));
    assert!(apache.contains("END OF TERMS AND CONDITIONS"));
}
