//! `cfstrace diff BEFORE AFTER`: read two captures, compare their reports, print the text or
//! `--json`, and with `--fail-worse` turn a worse verdict into exit status 3 (4 when the node
//! cannot be compared), the codes of the headroom gate.
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, Result};

use crate::analysis::headroom::{EXIT_HEADROOM, EXIT_NOT_JUDGED};
use crate::cli::DiffArgs;
use crate::diff::{self, Diff, VerdictKind};
use crate::render::{self, stdout};
use crate::report::{self, Report};

pub fn run(a: &DiffArgs) -> Result<ExitCode> {
    let before = read(&a.before, "before")?;
    // The same file twice is allowed (and gives "unchanged" throughout); read it once.
    let after = if a.after == a.before {
        before.clone()
    } else {
        read(&a.after, "after")?
    };
    let d = diff::diff(
        &before,
        &after,
        (
            &a.before.display().to_string(),
            &a.after.display().to_string(),
        ),
        a.noise,
    );
    let text = if a.json {
        serde_json::to_string_pretty(&d).context("encoding the diff")? + "\n"
    } else {
        let color = std::io::IsTerminal::is_terminal(&std::io::stdout())
            && std::env::var_os("NO_COLOR").is_none();
        render::diff::render_diff(&d, color)
    };
    stdout::print(&text)?;
    Ok(status(&d, a.fail_worse).map_or(ExitCode::SUCCESS, ExitCode::from))
}

fn read(path: &Path, which: &str) -> Result<Report> {
    report::report_from_capture(path)
        .with_context(|| format!("reading the {which} capture {}", path.display()))
}

/// `--fail-worse`'s status: 4 when the node is not comparable, 3 when anything got worse;
/// None without the flag or when nothing did.
pub fn status(d: &Diff, fail_worse: bool) -> Option<u8> {
    if !fail_worse {
        return None;
    }
    if d.node.verdict.verdict == VerdictKind::NotComparable {
        eprintln!(
            "cfstrace: diff NOT JUDGED: the node is not comparable: {}",
            crate::model::escape::terminal(&d.node.verdict.why)
        );
        return Some(EXIT_NOT_JUDGED);
    }
    if d.any_worse() {
        let worse = worse_list(d);
        eprintln!(
            "cfstrace: diff WORSE: {}",
            crate::model::escape::terminal(&worse)
        );
        return Some(EXIT_HEADROOM);
    }
    None
}

/// `node (worst span ...); /a (callback max ...)`.
fn worse_list(d: &Diff) -> String {
    let node = (d.node.verdict.verdict == VerdictKind::Worse)
        .then(|| format!("node ({})", d.node.verdict.why));
    node.into_iter()
        .chain(
            d.cgroups
                .iter()
                .filter(|c| c.verdict.verdict == VerdictKind::Worse)
                .map(|c| format!("{} ({})", c.before.name, c.verdict.why)),
        )
        .collect::<Vec<_>>()
        .join("; ")
}
