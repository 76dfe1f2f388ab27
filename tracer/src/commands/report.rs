//! `cfstrace report FILE`: read a capture, print its report (table or `--json`), draw it with
//! `--svg`, and judge `--fail-under`.
use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use crate::analysis::headroom::{self, EXIT_HEADROOM, Verdict};
use crate::capture::{self, CaptureError, CaptureReader};
use crate::cli::{GateArgs, ReportArgs, ShowArgs};
use crate::render::svg::{self, PlotData};
use crate::report::ReportError;
use crate::report::{self, Report};

pub fn run(a: ReportArgs) -> Result<ExitCode> {
    let rep = print_report(&a.file, &a.show)?;
    Ok(gate_code(&rep, a.gate).unwrap_or(ExitCode::SUCCESS))
}

/// Read a capture, print its report (JSON or table) on stdout, and draw it to `--svg` if asked.
pub fn print_report(file: &Path, show: &ShowArgs) -> Result<Report> {
    let (mut rep, plot) = match &show.svg {
        Some(_) => {
            let (r, p) = report_with_plot(file)?;
            (r, Some(p))
        }
        None => (report::report_from_capture(file)?, None),
    };
    rep.set_highlight_under(show.highlight_under);
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

/// `--fail-under`: the gate's verdict on stderr, and exit status 3 when it fails.
pub fn gate_code(rep: &Report, gate: GateArgs) -> Option<ExitCode> {
    let pct = gate.fail_under?;
    match headroom::judge(rep.watchdog.thresh_s, rep.headroom_ns, pct) {
        Verdict::Pass { headroom_pct } => {
            crate::info!(
                "cfstrace: headroom {headroom_pct:.4}% of watchdog_thresh >= {pct}%: pass"
            );
            None
        }
        Verdict::Fail { headroom_pct } => {
            eprintln!("cfstrace: headroom {headroom_pct:.4}% of watchdog_thresh < {pct}%: FAIL");
            Some(ExitCode::from(EXIT_HEADROOM))
        }
        Verdict::Unknown { why } => {
            eprintln!("cfstrace: headroom gate not judged: {why}");
            None
        }
    }
}
