//! `cfstrace report FILE`: read a capture, print its report (table or `--json`), draw it with
//! `--svg`, and judge `--fail-under` (exit 3 below it, 4 when it cannot be judged).
use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use crate::analysis::headroom::{EXIT_HEADROOM, EXIT_NOT_JUDGED};
use crate::capture::{self, CaptureError, CaptureReader};
use crate::cli::{GateArgs, ReportArgs, ShowArgs};
use crate::render::svg::{self, PlotData};
use crate::report::ReportError;
use crate::report::{self, GateVerdict, Report};

pub fn run(a: ReportArgs) -> Result<ExitCode> {
    let rep = print_report(&a.file, &a.show, a.gate)?;
    Ok(gate_code(&rep).unwrap_or(ExitCode::SUCCESS))
}

/// Read a capture, judge `--fail-under` into its `gate`, print the report (JSON or table) on
/// stdout, and draw it to `--svg` if asked.
pub fn print_report(file: &Path, show: &ShowArgs, gate: GateArgs) -> Result<Report> {
    let (mut rep, plot) = match &show.svg {
        Some(_) => {
            let (r, p) = report_with_plot(file)?;
            (r, Some(p))
        }
        None => (report::report_from_capture(file)?, None),
    };
    rep.set_highlight_under(show.highlight_under);
    if let Some(pct) = gate.fail_under {
        rep.set_gate(pct);
    }
    crate::render::print_report(&rep, show.json)?;
    if let (Some(out), Some(plot)) = (&show.svg, plot) {
        svg::write_svg(&rep, &plot, out)?;
        crate::info!("cfstrace: wrote plot {}", out.display());
    }
    Ok(rep)
}

/// Read a capture once and give both its report and its plot data.
fn report_with_plot(path: &Path) -> Result<(Report, PlotData), ReportError> {
    let name = path.display().to_string();
    let f = File::open(path).map_err(|source| CaptureError::Io {
        path: name.clone(),
        source,
    })?;
    let reader = CaptureReader::new(BufReader::with_capacity(1 << 20, f), &name)?;
    let mut plot = PlotData::new(reader.header().started_mono_ns);
    let rep = report::report_replaying(|sink| {
        capture::replay_reader(reader, &mut |l| {
            sink(l);
            plot.feed(l);
        })
    })?;
    Ok((rep, plot))
}

/// The exit status of a judged gate: 3 when it failed, 4 when it could not judge, None when
/// it passed or none was asked for (the caller's own status then). Says the verdict on
/// stderr in the sentence the JSON's `gate.why` holds.
pub fn gate_code(rep: &Report) -> Option<ExitCode> {
    let g = rep.gate.as_ref()?;
    let word = match g.verdict {
        GateVerdict::Pass => "pass",
        GateVerdict::Fail => "FAIL",
        GateVerdict::NotJudged => "NOT JUDGED",
    };
    // A pass is information (-q silences it); a fail or no verdict always shows.
    if g.verdict == GateVerdict::Pass {
        crate::info!("cfstrace: headroom gate {word}: {}", g.why);
    } else {
        let why = crate::model::escape::terminal(&g.why);
        eprintln!("cfstrace: headroom gate {word}: {why}");
    }
    gate_status(g.verdict).map(ExitCode::from)
}

/// A verdict's own exit status; None for a pass.
pub fn gate_status(v: GateVerdict) -> Option<u8> {
    match v {
        GateVerdict::Pass => None,
        GateVerdict::Fail => Some(EXIT_HEADROOM),
        GateVerdict::NotJudged => Some(EXIT_NOT_JUDGED),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_verdict_has_its_status() {
        assert_eq!(gate_status(GateVerdict::Pass), None);
        assert_eq!(gate_status(GateVerdict::Fail), Some(3));
        assert_eq!(gate_status(GateVerdict::NotJudged), Some(4));
        // Past 0 ok, 1 error, 2 usage, 3 headroom; not timeout(1)'s 124.
        assert!(![0, 1, 2, 3, 124].contains(&EXIT_NOT_JUDGED));
    }
}
