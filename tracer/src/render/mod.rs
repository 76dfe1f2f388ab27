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

/// A report whose cgroup, comm and cmdline carry every hostile character of issue 15, and the
/// check every terminal rendering of it passes: each name shown escaped, none of its bytes
/// raw, cfstrace's own colours (SGR) the only escape sequences left.
#[cfg(test)]
pub(crate) mod hostile {
    use crate::analysis::Aggregator;
    use crate::model::records::test_header as header;
    use crate::model::records::{
        CaptureLine, CgroupFacts, CgroupRecord, PeriodRecord, ProcessInfo,
    };
    use crate::report::{Report, build_report};

    /// OSC retitle, clear screen, home, cursor up, a bare CR, a C1 CSI, a tab, DEL.
    pub const PATH: &str = "/evil\x1b]0;pwned\x07\x1b[2J\x1b[H\x1b[5A\rX\u{9b}31m\t\x7f";
    pub const COMM: &str = "c\x1b[2Jomm";
    pub const CMDLINE: &str = "run \x1b]0;t\x07 \r--now";

    pub fn report() -> Report {
        let mut agg = Aggregator::new();
        agg.feed(&CaptureLine::Cgroup(Box::new(CgroupRecord {
            facts: CgroupFacts {
                id: 42,
                path: Some(PATH.into()),
                workload: crate::model::workload::classify(PATH),
                processes: vec![ProcessInfo {
                    pid: 7,
                    comm: COMM.into(),
                    cmdline: Some(CMDLINE.into()),
                    cpu_ticks: 3,
                }],
                period_us: Some(10_000),
                quota_us: Some(2_000),
            },
            note: None,
            parents: None,
        })));
        for i in 0..20u64 {
            agg.feed(&CaptureLine::Period(PeriodRecord {
                ts_ns: 1_000_000 * (i + 1),
                cpu: (i % 3) as u32,
                duration_ns: 40_000 + i,
                cgroup_id: 42,
                quota_ns: 2_000_000,
                period_ns: 10_000_000,
                ..Default::default()
            }));
        }
        let mut r = build_report(&header(), &agg, 1_000_000_000, vec![PATH.to_string()]);
        r.hostname = format!("host{COMM}");
        r
    }

    /// `out` shows the path escaped and carries no control character but '\n' and the ESC
    /// of its own SGR colours (`ESC [ digits;... m`).
    pub fn assert_escaped(out: &str) {
        let shown = crate::model::escape::terminal(PATH);
        // A narrow column may cut the middle of the path: its tip at least.
        let tip = &shown[shown.len() - 20..];
        assert!(out.contains(tip), "{tip:?} not shown in\n{out}");
        let mut rest = out;
        while let Some(i) = rest.find(|c: char| c.is_control() && c != '\n') {
            let tail = &rest[i..];
            let sgr = tail
                .strip_prefix("\x1b[")
                .and_then(|t| {
                    t.find(|c: char| !(c.is_ascii_digit() || c == ';'))
                        .map(|n| &t[n..])
                })
                .filter(|t| t.starts_with('m'));
            let Some(after) = sgr else {
                panic!(
                    "a raw control at {:?} in\n{out:?}",
                    &tail[..tail.len().min(20)]
                );
            };
            rest = &after[1..];
        }
    }
}
