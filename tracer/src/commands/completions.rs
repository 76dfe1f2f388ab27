//! `cfstrace completions SHELL`: the shell's completion script, written by clap_complete from
//! the same clap definition as `--help`, so it never drifts from the flags.
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::CommandFactory as _;
use clap_complete::Shell;

use crate::cli::{Cli, CompletionsArgs, VERSION};

pub fn run(a: &CompletionsArgs) -> Result<ExitCode> {
    crate::render::stdout::print_bytes(&script(a.shell))
        .context("printing the completion script")?;
    Ok(ExitCode::SUCCESS)
}

/// The script for `shell`, without hidden commands such as the storm's worker.
pub fn script(shell: Shell) -> Vec<u8> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut visible(Cli::command()), "cfstrace", &mut out);
    out
}

/// The command with its visible subcommands only: some of clap_complete's generators (bash,
/// zsh, fish) complete hidden subcommands too, and clap cannot remove one, so the command is
/// rebuilt from what completion reads (name, version, about, arguments, subcommands).
fn visible(cmd: clap::Command) -> clap::Command {
    let mut out = clap::Command::new("cfstrace")
        .version(VERSION)
        .args(cmd.get_arguments().cloned())
        .subcommands(cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    if let Some(a) = cmd.get_about() {
        out = out.about(a.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ValueEnum as _;

    #[test]
    fn every_shell_gets_a_script_naming_the_commands() {
        for &shell in Shell::value_variants() {
            let s = String::from_utf8(script(shell)).expect("UTF-8");
            for word in ["cfstrace", "record", "report", "watch", "fail-under"] {
                assert!(s.contains(word), "{shell}: no {word:?} in\n{s}");
            }
            assert!(
                !s.contains("__spin"),
                "{shell}: the hidden worker is completed"
            );
        }
    }
}
