//! What the operator reads, drawn from a finished report (plus, for the live view's histograms,
//! the SVG's series and /metrics, the capture lines themselves): `text` (the table),
//! `live` (the `watch` screen), `svg`, `prometheus` (/metrics), and `format`, the cells and
//! colours the terminal views share. Knows nothing of the kernel: never imports `bpf`,
//! `session` or aya, and nothing here feeds back into the report.
pub mod format;
pub mod live;
pub mod prometheus;
pub mod svg;
pub mod text;

use crate::report::Report;

/// Print a report on stdout: pretty JSON, or the table (coloured on a terminal unless
/// `NO_COLOR` is set).
pub fn print_report(rep: &Report, json: bool) -> serde_json::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(rep)?);
    } else {
        let color = std::io::IsTerminal::is_terminal(&std::io::stdout())
            && std::env::var_os("NO_COLOR").is_none();
        print!("{}", text::render_text(rep, color));
    }
    Ok(())
}
