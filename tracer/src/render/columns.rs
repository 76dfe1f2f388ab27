//! The cgroup table's columns, one definition for every terminal view (the report table, the
//! plain `watch` lines and the full-screen view): header, unit, width and how a cell is
//! written, `-` where the figure was not measured. A narrow terminal drops the columns that
//! matter least ([`Column::keep`]) but never renames one.
use std::fmt::Write as _;

use super::format::{comms, ellipsize_middle, headroom_pct, p50_max, pad};
use crate::report::{CgroupReport, Report, human_ns};

/// One column of the cgroup table, in the order they are shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Column {
    Cgroup,
    Workload,
    IrqOff,
    Periods,
    CbP50,
    CbP99,
    CbMax,
    UnthrottledPerPeriod,
    EnqueuedPerPeriod,
    CpusPerPeriod,
    Async,
    Quota,
    Headroom,
    Comm,
}

impl Column {
    /// Every column, in display order.
    pub const ALL: [Column; 14] = [
        Column::Cgroup,
        Column::Workload,
        Column::IrqOff,
        Column::Periods,
        Column::CbP50,
        Column::CbP99,
        Column::CbMax,
        Column::UnthrottledPerPeriod,
        Column::EnqueuedPerPeriod,
        Column::CpusPerPeriod,
        Column::Async,
        Column::Quota,
        Column::Headroom,
        Column::Comm,
    ];

    /// The header; ENQ/P reads RUN/P where enqueues are not probed and tasks made runnable
    /// stand in for them (tracepoint-only kernels).
    pub fn header(self, report: &Report) -> &'static str {
        match self {
            Column::Cgroup => "CGROUP",
            Column::Workload => "WORKLOAD",
            Column::IrqOff => "IRQOFF",
            Column::Periods => "PERIODS",
            Column::CbP50 => "CB p50",
            Column::CbP99 => "CB p99",
            Column::CbMax => "CB max",
            Column::UnthrottledPerPeriod => "UNTHR/P",
            Column::EnqueuedPerPeriod if runnable_for_enqueued(report) => "RUN/P",
            Column::EnqueuedPerPeriod => "ENQ/P",
            Column::CpusPerPeriod => "CPUS/P",
            Column::Async => "ASYNC",
            Column::Quota => "QUOTA",
            Column::Headroom => "HEADROOM",
            Column::Comm => "COMM",
        }
    }

    /// What a cell holds and in which unit (the README's list, `--help`-style).
    pub fn unit(self) -> &'static str {
        match self {
            Column::Cgroup => "cgroup path",
            Column::Workload => "YARN application, k8s pod, docker container or systemd unit",
            Column::IrqOff => "total time its period-timer callbacks held IRQs off (the ranking)",
            Column::Periods => "period-timer callbacks",
            Column::CbP50 | Column::CbP99 | Column::CbMax => "callback time, IRQs off",
            Column::UnthrottledPerPeriod => "cfs_rqs unthrottled per period, p50/max",
            Column::EnqueuedPerPeriod => {
                "entities enqueued (RUN/P: tasks made runnable) per period, p50/max"
            }
            Column::CpusPerPeriod => "CPUs it was unthrottled on per period, p50/max",
            Column::Async => "cfs_rqs unthrottled in CSDs on other CPUs (6.3+)",
            Column::Quota => "binding cpu quota/period (^: an ancestor's)",
            Column::Headroom => "% of watchdog_thresh left after its worst IRQs-off span",
            Column::Comm => "busiest processes",
        }
    }

    /// Width of a fixed column, minimum width of a stretching one.
    fn width(self) -> usize {
        match self {
            Column::Cgroup => 24,
            Column::Workload => 14,
            Column::IrqOff | Column::CbP50 | Column::CbP99 | Column::CbMax => 7,
            Column::Periods | Column::UnthrottledPerPeriod | Column::CpusPerPeriod => 7,
            Column::EnqueuedPerPeriod => 7,
            Column::Async => 5,
            Column::Quota => 11,
            Column::Headroom => 9,
            Column::Comm => 12,
        }
    }

    /// Rank for a narrow terminal, most needed first: who, how long IRQs were off, how much
    /// headroom is left, which quota binds; then the detail.
    fn keep(self) -> u8 {
        match self {
            Column::Cgroup => 0,
            Column::IrqOff => 1,
            Column::CbMax => 2,
            Column::Headroom => 3,
            Column::Quota => 4,
            Column::Periods => 5,
            Column::Workload => 6,
            Column::UnthrottledPerPeriod => 7,
            Column::EnqueuedPerPeriod => 8,
            Column::CbP99 => 9,
            Column::CpusPerPeriod => 10,
            Column::CbP50 => 11,
            Column::Async => 12,
            Column::Comm => 13,
        }
    }

    fn left_aligned(self) -> bool {
        matches!(self, Column::Cgroup | Column::Workload | Column::Comm)
    }

    /// The cell's text, before padding; `-` when not measured.
    pub fn cell(self, c: &CgroupReport, report: &Report) -> String {
        let dash = || "-".to_string();
        match self {
            // A newline in a path shows as `\n`: one row a cgroup.
            Column::Cgroup => c.name().replace('\n', "\\n"),
            Column::Workload => crate::report::workload_label(&c.workload).unwrap_or_else(dash),
            Column::IrqOff => human_ns(c.total_callback_ns),
            Column::Periods => c.periods.to_string(),
            Column::CbP50 => human_ns(c.callback_ns.p50),
            Column::CbP99 => human_ns(c.callback_ns.p99),
            Column::CbMax => human_ns(c.callback_ns.max),
            Column::UnthrottledPerPeriod => p50_max(c.unthrottled_per_period.as_ref()),
            Column::EnqueuedPerPeriod => p50_max(if runnable_for_enqueued(report) {
                c.runnable_per_period.as_ref()
            } else {
                c.enqueued_per_period.as_ref()
            }),
            Column::CpusPerPeriod => p50_max(c.spread.as_ref().map(|s| &s.per_period)),
            Column::Async => c
                .async_unthrottle
                .as_ref()
                .map_or_else(dash, |a| a.unthrottled.to_string()),
            Column::Quota => c.binding_quota().map_or_else(dash, |q| {
                format!(
                    "{}{}/{}",
                    if q.ancestor { "^" } else { "" },
                    us_short(q.quota_us),
                    us_short(q.period_us)
                )
            }),
            Column::Headroom => headroom_pct_cell(report, c.headroom_ns),
            Column::Comm => comms(c, 3),
        }
    }
}

/// Tasks made runnable stand in for enqueues where enqueue_* cannot be probed.
fn runnable_for_enqueued(report: &Report) -> bool {
    !report.figures.enqueued.available && report.figures.runnable.available
}

/// `99.9994%` of watchdog_thresh ([`headroom_pct`]), `-` when unknown.
pub fn headroom_pct_cell(report: &Report, h: Option<i64>) -> String {
    headroom_pct(report, h).unwrap_or_else(|| "-".to_string())
}

/// `20ms`, `1.5ms`, `500us`: a cgroup setting in microseconds.
pub fn us_short(us: u64) -> String {
    if us >= 1_000 && us.is_multiple_of(1_000) {
        format!("{}ms", us / 1_000)
    } else if us >= 1_000 {
        let s = format!("{:.3}", us as f64 / 1e3);
        format!("{}ms", s.trim_end_matches('0').trim_end_matches('.'))
    } else {
        format!("{us}us")
    }
}

/// The legend under a table that shows a per-period column: `0/2` is two figures, never "0 of
/// 2" (the spread summary's "2 of 2 CPUs in its worst period" is the second one).
pub const PER_PERIOD_LEGEND: &str =
    "x/y in UNTHR/P, ENQ/P, RUN/P, CPUS/P: median period / worst period";

/// The legend under a table that shows QUOTA.
pub const QUOTA_LEGEND: &str = "QUOTA: the cpu quota/period that binds; ^ marks an ancestor's \
                                (tighter than the cgroup's own)";

/// Which columns a table shows and how wide each is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    cols: Vec<(Column, usize)>,
}

/// The stretching columns' widths when the width is not limited (a report into a file).
const CGROUP_W: usize = 48;
const WORKLOAD_W: usize = 28;
/// At most this wide on a wide terminal: the rest goes to what follows the table.
const CGROUP_MAX_W: usize = 64;
const WORKLOAD_MAX_W: usize = 38;
const COMM_MAX_W: usize = 24;

impl Layout {
    /// Every column at its natural width (no terminal to fit).
    pub fn all() -> Layout {
        Layout {
            cols: Column::ALL
                .iter()
                .map(|&c| {
                    let w = match c {
                        Column::Cgroup => CGROUP_W,
                        Column::Workload => WORKLOAD_W,
                        Column::Comm => 0,
                        _ => c.width(),
                    };
                    (c, w)
                })
                .collect(),
        }
    }

    /// The most needed columns that fit in `width` characters for `report`'s cgroups; the
    /// spare width goes to the cgroup path, then the workload, then the comms, each up to
    /// what its longest cell needs.
    pub fn fit(width: usize, report: &Report) -> Layout {
        let mut ranked = Column::ALL;
        ranked.sort_by_key(|c| c.keep());
        let mut used = 0;
        let mut shown: Vec<Column> = Vec::new();
        for c in ranked {
            let need = c.width() + usize::from(!shown.is_empty());
            // The cgroup column always shows, cut if it must.
            if shown.is_empty() || used + need <= width {
                used += need;
                shown.push(c);
            }
        }
        let mut spare = width.saturating_sub(used);
        let mut widths: Vec<(Column, usize)> = Column::ALL
            .iter()
            .filter(|c| shown.contains(c))
            .map(|&c| (c, c.width()))
            .collect();
        let longest = |col: Column, max: usize| {
            report
                .cgroups
                .iter()
                .map(|c| col.cell(c, report).chars().count())
                .max()
                .unwrap_or(0)
                .min(max)
        };
        for (col, max) in [
            (Column::Cgroup, CGROUP_MAX_W),
            (Column::Workload, WORKLOAD_MAX_W),
            (Column::Comm, COMM_MAX_W),
        ] {
            let want = longest(col, max);
            if let Some((_, w)) = widths.iter_mut().find(|(c, _)| *c == col) {
                let add = spare.min(want.saturating_sub(*w));
                *w += add;
                spare -= add;
            }
        }
        Layout { cols: widths }
    }

    pub fn columns(&self) -> impl Iterator<Item = Column> + '_ {
        self.cols.iter().map(|(c, _)| *c)
    }

    pub fn shows(&self, col: Column) -> bool {
        self.columns().any(|c| c == col)
    }

    /// The header line.
    pub fn header(&self, report: &Report) -> String {
        self.line(|c| c.header(report).to_string())
    }

    /// A cgroup's row.
    pub fn row(&self, c: &CgroupReport, report: &Report) -> String {
        self.line(|col| col.cell(c, report))
    }

    /// Cells joined by a space, each padded to its width (paths ellipsized in the middle, the
    /// last column unpadded).
    fn line(&self, cell: impl Fn(Column) -> String) -> String {
        let mut out = String::new();
        let last = self.cols.len().saturating_sub(1);
        for (i, &(col, w)) in self.cols.iter().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            let text = cell(col);
            let text = if col.left_aligned() && w > 0 {
                ellipsize_middle(&text, w)
            } else {
                text
            };
            if i == last {
                if col.left_aligned() {
                    out.push_str(&text);
                } else {
                    let _ = write!(out, "{text:>w$}");
                }
            } else if col.left_aligned() {
                out.push_str(&pad(&text, w));
            } else {
                let _ = write!(out, "{text:>w$}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn narrow_layouts_keep_the_ranking_and_fit() {
        let r = crate::report::build_report(
            &crate::report::fixtures::header(),
            &crate::report::fixtures::agg(),
            8_000_000_000,
            vec![],
        );
        for width in [40, 60, 80, 100, 120, 160, 200] {
            let l = Layout::fit(width, &r);
            let total: usize =
                l.cols.iter().map(|(_, w)| w).sum::<usize>() + l.cols.len().saturating_sub(1);
            assert!(total <= width, "{width}: {total} {l:?}");
            assert!(l.shows(Column::Cgroup));
        }
        let l80 = Layout::fit(80, &r);
        for c in [
            Column::IrqOff,
            Column::CbMax,
            Column::Headroom,
            Column::Quota,
        ] {
            assert!(l80.shows(c), "{c:?} at 80: {l80:?}");
        }
        assert!(Layout::fit(200, &r).columns().count() > l80.columns().count());
        // Wide: the longest path whole.
        let wide = Layout::fit(200, &r);
        let path = r.cgroups[0].name().into_owned();
        assert!(wide.row(&r.cgroups[0], &r).starts_with(&path), "{path}");
        assert_eq!(Layout::all().columns().count(), Column::ALL.len());
    }

    #[test]
    fn settings_in_short_units() {
        assert_eq!(us_short(20_000), "20ms");
        assert_eq!(us_short(1_500), "1.5ms");
        assert_eq!(us_short(500), "500us");
    }
}
