//! What the operator reads, drawn from a finished report (plus, for the live view's histograms,
//! the SVG's series and /metrics, the capture lines themselves): `text` (the table), `diff` (`cfstrace diff`),
//! `live` (the `watch` screen), `svg`, `prometheus` (/metrics), `columns`, the cgroup
//! table's columns both terminal views share, `format`, the cells and colours they share, and `stdout`, writes that end quietly on a closed pipe.
//! Knows nothing of the kernel: never imports `bpf`, `session` or aya, and nothing here feeds
//! back into the report.
pub mod columns;
pub mod diff;
pub mod forecast;
pub mod format;
pub mod live;
pub mod prometheus;
pub mod stdout;
pub mod svg;
pub mod text;

use crate::report::Report;

#[derive(Debug, thiserror::Error)]
pub enum PrintError {
    #[error("encoding the report: {0}")]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Stdout(#[from] stdout::StdoutError),
}

/// Print a report on stdout: pretty JSON, or the table (coloured on a terminal unless
/// `NO_COLOR` is set). A closed stdout ends it quietly ([`stdout::print`]).
pub fn print_report(rep: &Report, json: bool) -> Result<(), PrintError> {
    let text = if json {
        serde_json::to_string_pretty(rep)? + "\n"
    } else {
        let color = std::io::IsTerminal::is_terminal(&std::io::stdout())
            && std::env::var_os("NO_COLOR").is_none();
        text::render_text(rep, color)
    };
    Ok(stdout::print(&text)?)
}
