//! `cfstrace repro -- CMD`: record while a reproduction runs, then print the report, and exit
//! with CMD's status (or 3 when the `--fail-under` gate fails, 4 when it cannot judge).
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{Context as _, Result};

use crate::cli::ReproArgs;
use crate::commands::record::{self, RecordOptions};
use crate::commands::report::{gate_code, print_report};
use crate::session::child::resolve_command;
use crate::session::signals::Stop;

pub async fn run(a: ReproArgs) -> Result<ExitCode> {
    let mut stop = Stop::catch().context("catching the stop signals")?;
    if let Some(prog) = a.command.first() {
        resolve_command(prog)?;
    }
    let output = a
        .output
        .unwrap_or_else(|| default_capture_name(SystemTime::now()));
    crate::info!(
        "cfstrace: recording to {} while `{}` runs",
        output.display(),
        a.command.join(" ")
    );
    let opts = RecordOptions {
        tracer: a.trace.options(),
        duration: a.duration,
        output: output.clone(),
        command: a.command,
        progress: true,
    };
    let out = record::record(&opts, &mut stop)
        .await
        .with_context(|| format!("recording to {}", output.display()))?;
    crate::info!(
        "cfstrace: capture kept in {} ({} callbacks in {:.1}s, {} lost, stopped: {}); read it \
         again with `cfstrace report {}`",
        output.display(),
        out.periods,
        out.duration.as_secs_f64(),
        out.lost,
        out.reason.as_str().replace('_', " "),
        output.display()
    );
    let rep = print_report(&output, &a.show, a.gate)?;
    // The gate's 3 or 4 wins over CMD's status: a CI job reads one number.
    Ok(gate_code(&rep).unwrap_or(ExitCode::from(out.exit_code.unwrap_or(0))))
}

/// `cfstrace-repro-20260102T030405Z.jsonl`: the default capture name (in the current directory,
/// kept after the report so it can be read again or sent on).
pub fn default_capture_name(now: SystemTime) -> PathBuf {
    stamped_capture_name("cfstrace-repro-", now)
}

/// `<prefix>20260102T030405Z.jsonl`: a capture name that sorts by its UTC time (`repro`,
/// `storm`).
pub fn stamped_capture_name(prefix: &str, now: SystemTime) -> PathBuf {
    let stamp: String = humantime::format_rfc3339_seconds(now)
        .to_string()
        .chars()
        .filter(|c| !matches!(c, '-' | ':'))
        .collect();
    PathBuf::from(format!("{prefix}{stamp}.jsonl"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn capture_name_is_a_sortable_utc_stamp() {
        let t = UNIX_EPOCH + Duration::from_secs(1_767_323_045);
        assert_eq!(
            default_capture_name(t),
            PathBuf::from("cfstrace-repro-20260102T030405Z.jsonl")
        );
    }
}
