//! The report: the `cfstrace.report/1` document and its building.
//!
//! Built from an [`Aggregator`] (a replayed capture or a `watch` interval) and the capture
//! header's facts. The question it answers: which cgroup's period timer holds IRQs off the
//! longest, and how much of the hard-lockup watchdog's headroom is left.
//!
//! This room reads `analysis`, `capture` and `model` (and the events' `HOW_*` bits from
//! tracer-ebpf); it never calls into `render` (the text table, the live view, SVG and
//! Prometheus read a finished report) and never touches aya or a running session.
//!
//! - `model`: the document's types, and the one display-name rule for a cgroup;
//! - `figures`: what the kernel gave this run, and why not;
//! - `headroom`: what is left of watchdog_thresh, per CPU and for the node;
//! - `cgroup`: one cgroup's report;
//! - `precursors`: period changes and the kernel messages that explain them;
//! - `prose`: the sentences and units the document is written in;
//! - `forecast`: the lockup forecast, fitted from the work counted in each callback and span;
//! - `build`: `build_report`, which puts them together;
//! - `stream`: the `cfstrace.watch/1` lines `watch --json` prints, from each interval's report.
use std::path::Path;

use crate::analysis::Aggregator;
use crate::capture::{self, CaptureError, CaptureHeader, CaptureLine, ReplayStats};

mod build;
mod cgroup;
mod figures;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod forecast;
mod headroom;
mod model;
mod precursors;
mod prose;
pub mod stream;
#[cfg(test)]
mod tests;

pub use build::{build_report, partial_reason};
pub use figures::probe_how;
pub use headroom::{gate, headroom_alert};
pub use model::*;
pub use prose::{
    decimals_against, human_ns, plural_s, precursor_phrase, seconds, seconds_of, top_comms,
    workload_label,
};

pub const REPORT_SCHEMA: &str = "cfstrace.report/1";

/// `--highlight-under` when not given: headroom under 10 % of watchdog_thresh is highlighted.
pub const DEFAULT_HIGHLIGHT_PCT: f64 = 10.0;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Capture(#[from] CaptureError),
}

/// Replay a capture and build its report. The duration is the end line's, else the span of
/// the callbacks; the capture's warnings become the report's.
pub fn report_from_capture(path: &Path) -> Result<Report, ReportError> {
    report_replaying(|sink| capture::replay(path, &mut |l| sink(l)))
}

/// [`report_from_capture`] over a replay the caller runs: `replay` hands every line to the
/// sink it is given (and may show it to others too, as the SVG's series do).
pub fn report_replaying(
    replay: impl FnOnce(
        &mut dyn FnMut(&CaptureLine),
    ) -> Result<(CaptureHeader, ReplayStats), CaptureError>,
) -> Result<Report, ReportError> {
    let mut agg = Aggregator::new();
    let (header, stats) = replay(&mut |l| agg.feed(l))?;
    let duration_ns = agg.end().map_or_else(|| agg.span_ns(), |e| e.duration_ns);
    Ok(build_report(&header, &agg, duration_ns, stats.warnings))
}
