//! `cargo xtask demo [-- ARGS]`: build cfstrace and run `cfstrace demo ARGS` as root.

use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};

use crate::cmd::{self, build_tracer, display};
use crate::setup;

pub fn run(args: &[String]) -> Result<ExitCode> {
    setup::ensure(setup::Needs::Build, true)?;
    let bin = build_tracer()?;

    let mut c = if cmd::is_root() {
        Command::new(&bin)
    } else if cmd::which("sudo").is_some() {
        println!("cfstrace demo needs root (BPF, cgroups); re-running it under sudo");
        let mut c = Command::new("sudo");
        c.arg(&bin);
        c
    } else {
        bail!(
            "cfstrace demo needs root (it loads BPF programs and creates cgroups) and sudo is not \
             installed: run `sudo {} demo` or run cargo xtask demo as root",
            bin.display()
        );
    };
    c.arg("demo").args(args).current_dir(cmd::workspace_root());
    println!("+ {}", display(&c));
    let status = c
        .status()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    Ok(exit_code_of(status))
}

/// Pass a child's exit status through (a signal death becomes 128 + signo, as a shell does).
pub fn exit_code_of(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    let code = status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1);
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
