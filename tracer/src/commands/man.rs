//! `cfstrace man`: the manual pages, written by clap_mangen from the same clap definition as
//! `--help`: cfstrace(1) and one page a subcommand (cfstrace-record(1), ...), all on stdout
//! (one roff stream, `man -l -` shows it) or one file each with `--out DIR`.
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::CommandFactory as _;
use clap_mangen::Man;

use crate::cli::{Cli, ManArgs, VERSION};

pub fn run(a: &ManArgs) -> Result<ExitCode> {
    match &a.out {
        Some(dir) => {
            for p in write_pages(dir)? {
                crate::info!("cfstrace: wrote {}", p.display());
            }
        }
        None => crate::render::stdout::print_bytes(&pages()?).context("printing the manual")?,
    }
    Ok(ExitCode::SUCCESS)
}

/// cfstrace(1) first, then each visible subcommand's page, with their file names.
fn each_page() -> Vec<(String, Man)> {
    // No page for clap's `help` subcommand (every page has -h); built once so subcommands
    // know their full names (`cfstrace-record`).
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let subs: Vec<clap::Command> = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .cloned()
        .collect();
    std::iter::once(cmd)
        .chain(subs)
        .map(|c| {
            // The footer's source stays short (the commit is in the VERSION section): a long
            // one overprints the date.
            let man = dated(Man::new(c)).source(concat!("cfstrace ", env!("CARGO_PKG_VERSION")));
            (man.get_filename(), man)
        })
        .collect()
}

/// The commit's date (from `--version`), so the same commit gives the same page.
fn dated(man: Man) -> Man {
    match VERSION.rsplit_once(", ") {
        Some((_, date)) => man.date(date.trim_end_matches(')')),
        None => man,
    }
}

/// Every page, one roff stream.
pub fn pages() -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for (name, man) in each_page() {
        man.render(&mut out)
            .with_context(|| format!("rendering {name}"))?;
    }
    Ok(out)
}

/// One file a page in `dir` (created if missing); their paths.
pub fn write_pages(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    each_page()
        .into_iter()
        .map(|(name, man)| {
            man.generate_to(dir)
                .with_context(|| format!("writing {name} in {}", dir.display()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manual_covers_every_visible_command() {
        let roff = String::from_utf8(pages().unwrap()).unwrap();
        assert!(roff.contains(".TH cfstrace 1 "), "{roff}");
        assert!(
            !roff.contains(".TH cfstrace-help"),
            "no page for clap's help"
        );
        for sub in [
            "record",
            "report",
            "repro",
            "watch",
            "doctor",
            "demo",
            "diff",
            "completions",
            "man",
        ] {
            assert!(
                roff.contains(&format!(".TH cfstrace-{sub} 1")),
                "no page for {sub}"
            );
        }
        assert!(!roff.contains("__spin") && !roff.contains("\\_\\_spin"));
        assert!(roff.contains("\\-\\-fail\\-under"), "flags are documented");
    }

    #[test]
    fn out_dir_gets_one_file_a_page() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_pages(dir.path()).unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert!(names.contains(&"cfstrace.1".to_string()), "{names:?}");
        assert!(
            names.contains(&"cfstrace-record.1".to_string()),
            "{names:?}"
        );
        assert_eq!(
            names.len(),
            11,
            "cfstrace and 10 visible commands: {names:?}"
        );
    }
}
